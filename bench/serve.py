#!/usr/bin/env python3
"""`stockade serve` under load: API latency, many sandboxes alive, and a leak soak.

    serve.py BIN OUT MODE N [ALIVE]      (run by bench/serve.sh)

MODE latency: N cycles of create -> exec `echo hi` -> destroy over the native API, one at a time,
  with the warm pool off and then on (`--pool base=4`). Per phase and per cycle, the client's
  wall time and the server's own time (the `Server-Timing: app;dur=MS` header every response
  carries: from the request's arrival to the response's head). p50 and p99.
MODE alive: ALIVE sandboxes created (8 at a time), then each answers an exec of `echo $ID`
  (checked), server memory noted, then all destroyed.
MODE soak: N create/exec/destroy cycles (4 clients in parallel). Before (after a warm-up of 20
  cycles) and after, it counts the server's open descriptors, its threads, the host's mounts,
  stockade cgroup directories, stockade processes (launchers and agents), and the server's RSS.
  It fails (exit 1) unless descriptors, threads, mounts, cgroups and processes are back to their
  starting counts and RSS grew by less than 32 MiB.
Every mode checks every answer (status codes, the echoed text) and fails on the first wrong one.
The server runs with a fresh state directory; everything on 127.0.0.1.
"""
import concurrent.futures as cf
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as bl  # noqa: E402

BIN, OUT, MODE, N = os.path.abspath(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
ALIVE = int(sys.argv[5]) if len(sys.argv) > 5 else 200


def log(*a):
    print("serve-bench:", *a, file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Server:
    def __init__(self, extra=()):
        self.state = tempfile.mkdtemp(prefix="stockade-serve-bench-")
        out = subprocess.run([BIN, "keys", "create", "--name", "bench", "--state-dir", self.state],
                             check=True, capture_output=True, text=True).stdout
        m = re.search(r"\b((?:sk|e2b)_[A-Za-z0-9_-]{20,})", out)
        if not m:
            raise SystemExit(f"no key in the output of `stockade keys create`: {out!r}")
        self.key = m.group(1)
        self.port = free_port()
        self.proc = subprocess.Popen([BIN, "serve", "--listen", f"127.0.0.1:{self.port}",
                                      "--state-dir", self.state, "--max-sandboxes", str(max(ALIVE + 50, 250)),
                                      "--max-per-key", str(max(ALIVE + 50, 250)), *extra],
                                     stderr=open(os.path.join(self.state, "server.log"), "w"))
        until = time.time() + 30
        while time.time() < until:
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                c.request("GET", "/health")
                if c.getresponse().status == 200:
                    return
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise SystemExit(f"stockade serve exited with {self.proc.returncode}; see {self.state}/server.log")
            time.sleep(0.05)
        raise SystemExit("stockade serve did not answer /health in 30 s")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise SystemExit("stockade serve did not stop within 60 s of SIGTERM")
        if rc != 0:
            raise SystemExit(f"stockade serve exited with {rc} after SIGTERM")


class Client:
    def __init__(self, srv):
        self.srv = srv
        self.c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=120)

    def call(self, method, path, body=None, want=(200,)):
        hdr = {"Authorization": f"Bearer {self.srv.key}"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            hdr["Content-Type"] = "application/json"
        t0 = time.perf_counter()
        self.c.request(method, path, body=data, headers=hdr)
        r = self.c.getresponse()
        raw = r.read()
        wall = time.perf_counter() - t0
        if r.status not in want:
            raise SystemExit(f"{method} {path}: HTTP {r.status}: {raw[:500]!r}")
        st = r.getheader("Server-Timing") or ""
        m = re.search(r"dur=([0-9.]+)", st)
        server = float(m.group(1)) / 1000 if m else float("nan")
        return (json.loads(raw) if raw else None), wall, server

    def cycle(self, text="hi"):
        t = {}
        sb, t["create"], t["create_srv"] = self.call("POST", "/v1/sandboxes", {}, want=(201,))
        r, t["exec"], t["exec_srv"] = self.call("POST", f"/v1/sandboxes/{sb['id']}/exec?wait=true",
                                                {"argv": ["echo", text]})
        if r.get("exit_code") != 0 or r.get("stdout") != text + "\n":
            raise SystemExit(f"exec echo in {sb['id']}: unexpected answer {r!r}")
        _, t["destroy"], t["destroy_srv"] = self.call("DELETE", f"/v1/sandboxes/{sb['id']}", want=(204,))
        t["total"] = t["create"] + t["exec"] + t["destroy"]
        t["total_srv"] = t["create_srv"] + t["exec_srv"] + t["destroy_srv"]
        return t


class PerThread:
    """One keep-alive connection per thread (http.client connections are not thread-safe)."""

    def __init__(self, srv):
        self.srv = srv
        self.local = threading.local()

    def get(self):
        c = getattr(self.local, "c", None)
        if c is None:
            c = self.local.c = Client(self.srv)
        return c


def latency():
    rows = {}
    for label, extra in (("pool off", ()), ("pool on (base=4)", ("--pool", "base=4"))):
        srv = Server(extra)
        try:
            cl = Client(srv)
            if extra:
                time.sleep(3)  # let the pool fill
            for _ in range(3):
                cl.cycle()
            samples = []
            for i in range(N):
                samples.append(cl.cycle())
                if extra:
                    time.sleep(0.3)  # the pool refills between hand-outs, as with think time
            rows[label] = samples
        finally:
            srv.stop()
    lines = [f"Machine: {bl.machine()}; load average {' '.join(bl.loadavg())}.", "",
             f"{N} cycles each, one at a time. Server = the `Server-Timing` the server reports; client = wall time on the client (loopback HTTP/1.1 keep-alive).", "",
             "| pool | phase | server p50 | server p99 | client p50 | client p99 |",
             "|---|---|---|---|---|---|"]
    for label, samples in rows.items():
        for ph in ("create", "exec", "destroy", "total"):
            srv_s = [s[ph + "_srv"] for s in samples]
            cli_s = [s[ph] for s in samples]
            lines.append(f"| {label} | {ph} | {bl.ms(bl.q(srv_s, .5))} | {bl.ms(bl.q(srv_s, .99))} | "
                         f"{bl.ms(bl.q(cli_s, .5))} | {bl.ms(bl.q(cli_s, .99))} |")
    return "\n".join(lines), rows


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def counts(pid):
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    threads = len(os.listdir(f"/proc/{pid}/task"))
    mounts = sum(1 for _ in open("/proc/self/mountinfo"))
    cgroups = 0
    for root, dirs, _ in os.walk("/sys/fs/cgroup"):
        cgroups += sum(1 for d in dirs if d.startswith("stockade-") or (root.endswith("/stockade") and d))
    procs = 0
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                cmd = open(f"/proc/{p}/cmdline", "rb").read()
            except OSError:
                continue
            if b"__launch" in cmd:
                procs += 1
    return {"fds": fds, "threads": threads, "mounts": mounts, "cgroups": cgroups,
            "processes": procs, "rss_kib": rss_kib(pid)}


def settle(pid, base, keys=("fds", "threads", "mounts", "cgroups", "processes"), wait=10):
    until = time.time() + wait
    while True:
        now = counts(pid)
        if all(now[k] == base[k] for k in keys) or time.time() > until:
            return now
        time.sleep(0.2)


def alive():
    srv = Server()
    try:
        pt = PerThread(srv)
        ids = []
        t0 = time.time()

        def make(i):
            sb, _, _ = pt.get().call("POST", "/v1/sandboxes", {}, want=(201,))
            return sb["id"]
        with cf.ThreadPoolExecutor(8) as ex:
            for k in range(0, ALIVE, 8):
                ids += list(ex.map(make, range(k, min(ALIVE, k + 8))))
        fill = time.time() - t0
        mem = rss_kib(srv.proc.pid)
        t1 = time.time()

        def ask(i):
            sid = ids[i]
            r, wall, _ = pt.get().call("POST", f"/v1/sandboxes/{sid}/exec?wait=true", {"argv": ["echo", sid]})
            if r.get("stdout") != sid + "\n":
                raise SystemExit(f"sandbox {sid} answered {r!r}")
            return wall
        with cf.ThreadPoolExecutor(8) as ex:
            walls = list(ex.map(ask, range(len(ids))))
        answered = time.time() - t1
        lst, _, _ = Client(srv).call("GET", "/v1/sandboxes")
        listed = len(lst["sandboxes"])
        with cf.ThreadPoolExecutor(8) as ex:
            list(ex.map(lambda i: pt.get().call("DELETE", f"/v1/sandboxes/{ids[i]}", want=(204,)), range(len(ids))))
    finally:
        srv.stop()
    if listed < ALIVE:
        raise SystemExit(f"only {listed} of {ALIVE} sandboxes listed")
    return (f"{ALIVE} sandboxes alive at once: filled in {fill:.1f} s (8 clients); every one answered an exec "
            f"(all {len(walls)} in {answered:.1f} s, p50 {bl.ms(bl.q(walls, .5))}, p99 {bl.ms(bl.q(walls, .99))}); "
            f"server RSS with all alive {mem / 1024:.1f} MiB. Machine: {bl.machine()}.")


def soak():
    srv = Server()
    try:
        cls = [Client(srv) for _ in range(4)]
        for i in range(20):
            cls[i % 4].cycle()
        # Counted with no client connection open and the runtime's idle worker threads gone
        # (tokio keeps a blocking thread 10 s after its last task), before and after.
        for c in cls:
            c.c.close()
        time.sleep(12)
        base = counts(srv.proc.pid)
        t0 = time.time()
        done = [0]

        def worker(k):
            for i in range(k, N, 4):
                cls[k].cycle(f"c{i}")
                done[0] += 1
                if done[0] % 1000 == 0:
                    log(f"{done[0]} cycles, {time.time() - t0:.0f} s, {counts(srv.proc.pid)}")
        with cf.ThreadPoolExecutor(4) as ex:
            list(ex.map(worker, range(4)))
        took = time.time() - t0
        for c in cls:
            c.c.close()
        time.sleep(12)
        end = settle(srv.proc.pid, base, wait=20)
    finally:
        srv.stop()
    bad = [k for k in ("fds", "threads", "mounts", "cgroups", "processes") if end[k] != base[k]]
    grew = (end["rss_kib"] - base["rss_kib"]) / 1024
    line = (f"{N} create/exec/destroy cycles (4 clients) in {took:.0f} s ({N / took:.1f} cycles/s). "
            f"Before → after: " + ", ".join(f"{k} {base[k]} → {end[k]}" for k in base) +
            f" (RSS grew {grew:.1f} MiB). Machine: {bl.machine()}.")
    print(line)
    if bad or grew >= 32:
        raise SystemExit(f"soak: not back to the starting counts: {bad or ['rss']}")
    return line


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    if MODE == "latency":
        table, rows = latency()
        print(table)
        json.dump({k: v for k, v in rows.items()}, open(os.path.join(OUT, "serve-latency.json"), "w"))
    elif MODE == "alive":
        print(alive())
    elif MODE == "soak":
        soak()
    else:
        raise SystemExit(f"unknown mode {MODE}")
