#!/usr/bin/env python3
"""The egress gateway end to end, through a real sandbox: connection latency and bulk throughput
of a client inside `stockade run --policy <allowlist naming api.test>` against the same client on
the host talking to the server directly. Everything stays on 127.0.0.0/8: the server listens on
127.0.0.2; inside, `api.test` resolves (agent DNS on 127.0.0.53) to the agent's 127.1.x.y, whose
accepted sockets go to the supervisor's gateway over SCM_RIGHTS, which dials 127.0.0.2.

    gateway_e2e.py BIN OUT CONNS MIB

Both clients are the same Python code (/usr/bin/python3), so the difference is what the sandbox
path adds. Prints a JSON summary line and writes OUT/gateway-e2e.json.
"""
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading

BIN, OUT, CONNS, MIB = os.path.abspath(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
CHUNK = b"x" * (4 << 20)


def serve(lsock):
    while True:
        try:
            c, _ = lsock.accept()
        except OSError:
            return
        threading.Thread(target=handle, args=(c,), daemon=True).start()


def handle(c):
    with c:
        head = b""
        while b"\r\n\r\n" not in head:
            d = c.recv(65536)
            if not d:
                return
            head += d
        path = head.split(b" ", 2)[1]
        if path.startswith(b"/bulk/"):
            n = int(path[6:]) << 20
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % n)
            while n > 0:
                k = min(n, len(CHUNK))
                c.sendall(memoryview(CHUNK)[:k])
                n -= k
        else:
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")


# The client, run on the host (direct) and inside the sandbox (through the gateway).
CLIENT = r'''
import json, socket, sys, time
host, ip, port, conns, mib = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
dns = []
if ip == "-":
    for _ in range(min(conns, 200)):
        t0 = time.perf_counter(); ip = socket.gethostbyname(host); dns.append(time.perf_counter() - t0)
def fetch(path, buf):
    s = socket.create_connection((ip, port))
    s.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (path, host)).encode())
    n = 0
    while True:
        k = s.recv_into(buf)
        if not k:
            break
        n += k
    s.close()
    return n
buf = bytearray(1 << 20)
fetch("/", buf)  # warm-up
lat = []
for _ in range(conns):
    t0 = time.perf_counter(); n = fetch("/", buf); lat.append(time.perf_counter() - t0)
    assert n > 2, n
t0 = time.perf_counter(); n = fetch("/bulk/%d" % mib, buf); bulk = time.perf_counter() - t0
assert n >= mib << 20, n
print(json.dumps({"ip": ip, "dns": dns, "latency": lat, "bulk_bytes": n, "bulk_seconds": bulk}))
'''

lsock = socket.socket()
lsock.bind(("127.0.0.2", 0))
lsock.listen(128)
port = lsock.getsockname()[1]
threading.Thread(target=serve, args=(lsock,), daemon=True).start()

tmp = tempfile.mkdtemp(prefix="stockade-gw.", dir="/tmp")
ws, state = os.path.join(tmp, "ws"), os.path.join(tmp, "state")
os.makedirs(ws)
pol = os.path.join(tmp, "allowlist.toml")
with open(pol, "w") as f:
    f.write(f'[network]\nmode = "allowlist"\nallow = ["api.test:{port}"]\nallow_private = ["127.0.0.2/32"]\n'
            f'[network.hosts]\n"api.test" = "127.0.0.2"\n')
py = "/usr/bin/python3"
args = [str(port), str(CONNS), str(MIB)]
try:
    direct = subprocess.run([py, "-c", CLIENT, "api.test", "127.0.0.2", *args], check=True,
                            capture_output=True, text=True).stdout
    r = subprocess.run([BIN, "run", "--state-dir", state, "--policy", pol, "--",
                        py, "-c", CLIENT, "api.test", "-", *args], cwd=ws, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"gateway_e2e: the sandboxed client failed ({r.returncode}): {r.stderr.strip()}")
    sandboxed = r.stdout
finally:
    subprocess.run(["rm", "-rf", tmp])
    lsock.close()
res = {"direct": json.loads(direct), "sandbox": json.loads(sandboxed), "conns": CONNS, "mib": MIB}
os.makedirs(OUT, exist_ok=True)
json.dump(res, open(os.path.join(OUT, "gateway-e2e.json"), "w"))
