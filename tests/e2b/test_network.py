"""Network through the SDK: a template without network refuses a connection (specific errno,
recorded exit), a template with an allowlist lets its host through (the control) and refuses
another (a denied `net.*` event); create options that would change a template's network are
refused."""

import http.server
import threading

import pytest
from e2b import Sandbox
from e2b.exceptions import SandboxException

from conftest import LEVEL, add_template, audit_events

PROBE = """
import errno, socket, sys, urllib.request
host, port = sys.argv[1], int(sys.argv[2])
try:
    print(urllib.request.urlopen(f"http://{host}:{port}/", timeout=10).read().decode())
except Exception as e:
    print("refused:", type(e).__name__, e)
    sys.exit(3)
"""

DIRECT = """
import errno, socket, sys
failed = 0
for host in sys.argv[1:-1]:
    try:
        socket.create_connection((host, int(sys.argv[-1])), timeout=10)
        print(host, "connected")
    except OSError as e:
        print(host, errno.errorcode.get(e.errno, e.errno))
        failed += 1
sys.exit(4 if failed else 0)
"""


@pytest.fixture(scope="module")
def upstream():
    """An HTTP server on 127.0.0.2 (loopback, never the internet) and its hit count."""
    hits = []

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            body = b"hello from the upstream"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.2", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1], hits
    srv.shutdown()


def run_probe(sbx, script, *args):
    sbx.files.write("/tmp/probe.py", script)
    return sbx.commands.run("python3 /tmp/probe.py " + " ".join(map(str, args)))


def test_no_network_template_refuses_a_connection(upstream, sbx):
    port, hits = upstream
    before = len(hits)
    with pytest.raises(Exception) as e:
        run_probe(sbx, DIRECT, "127.0.0.2", "192.0.2.1", port)
    assert getattr(e.value, "exit_code", None) == 4, e.value
    # 127.0.0.2 is the sandbox's own loopback (nothing listens there), not the host's; any
    # other address has no route (gVisor's netstack says EHOSTUNREACH for it, Linux ENETUNREACH).
    no_route = "EHOSTUNREACH" if LEVEL == "gvisor" else "ENETUNREACH"
    assert e.value.stdout == f"127.0.0.2 ECONNREFUSED\n192.0.2.1 {no_route}\n", e.value.stdout
    assert len(hits) == before, "the sandbox reached the host's server"
    exits = [x for x in audit_events(sbx.sandbox_id) if x["type"] == "exec.exited"]
    assert any(x.get("exit_code") == 4 for x in exits), exits
    # Control: the host reaches the same server.
    import urllib.request

    assert urllib.request.urlopen(f"http://127.0.0.2:{port}/", timeout=10).read() == b"hello from the upstream"
    assert len(hits) == before + 1


def test_allowlist_template_lets_its_host_through_and_refuses_others(upstream, tmp_path):
    port, hits = upstream
    add_template(
        "netallow",
        f'[network]\nmode = "allowlist"\nallow = ["api.test:{port}"]\n'
        f'allow_private = ["127.0.0.2/32"]\n'
        f'[network.hosts]\n"api.test" = "127.0.0.2"\n"evil.test" = "127.0.0.2"\n',
        tmp_path,
    )
    s = Sandbox.create(template="netallow")
    try:
        before = len(hits)
        r = run_probe(s, PROBE, "api.test", port)
        assert r.stdout.strip() == "hello from the upstream"
        assert len(hits) == before + 1
        with pytest.raises(Exception) as e:
            run_probe(s, PROBE, "evil.test", port)
        assert getattr(e.value, "exit_code", None) == 3, e.value
        assert len(hits) == before + 1, "a name outside the allowlist reached the server"
        net = [x for x in audit_events(s.sandbox_id) if x["type"] in ("net.dns", "net.connect")]
        assert any(x.get("name") == "api.test" and x["decision"] == "allowed" for x in net), net
        assert any(x.get("name") == "evil.test" and x["decision"] == "denied" for x in net), net
        assert s.get_info().allow_internet_access is None  # an allowlist is neither
    finally:
        s.kill()
    # The template allows some network: asking for none, or for everything, is refused.
    with pytest.raises(SandboxException, match=r"400.*cannot narrow"):
        Sandbox.create(template="netallow", allow_internet_access=False)
    with pytest.raises(SandboxException, match=r"400.*allow_internet_access"):
        Sandbox.create(template="netallow", allow_internet_access=True)
    with pytest.raises(SandboxException, match=r"400.*allowOut"):
        Sandbox.create(template="netallow", network={"allow_out": ["other.test"]})
    # Control: an allowOut the template already allows is accepted.
    Sandbox.create(template="netallow", network={"allow_out": [f"api.test:{port}"]}).kill()
