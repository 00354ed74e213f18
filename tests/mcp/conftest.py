"""Shared helpers: MCP clients (the official SDK) over stdio and over HTTP, the server's native
API, audit trails, and an upstream HTTP server on 127.0.0.2 for the network tests.

Every test needs the environment run.sh sets; without it a test fails with the reason (it never
passes by not running).
"""

import contextlib
import http.server
import json
import os
import pathlib
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request

import anyio
import httpx2
import pytest
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

NEEDED = ("STOCKADE_BIN", "STOCKADE_STATE_DIR", "STOCKADE_URL", "STOCKADE_API_KEY", "MCP_WORK")

TOOLS = {"run_command", "run_code", "write_file", "read_file", "list_files", "reset_sandbox", "get_audit"}


@pytest.fixture(scope="session", autouse=True)
def environment():
    missing = [v for v in NEEDED if not os.environ.get(v)]
    if missing:
        pytest.fail(f"run these tests with tests/mcp/run.sh (missing {', '.join(missing)})")


def run(fn, *args):
    """Runs an async test body."""
    return anyio.run(fn, *args)


# --- stdio ------------------------------------------------------------------------------------


def stdio_state():
    """A fresh state directory for one `stockade mcp` or an extra server (run.sh checks every
    sandbox under it for leftovers)."""
    base = pathlib.Path(os.environ["MCP_WORK"]) / "states"
    base.mkdir(exist_ok=True)
    return pathlib.Path(tempfile.mkdtemp(dir=base))


@contextlib.asynccontextmanager
async def stdio_client(state, *args, mode="auto"):
    """`stockade --state-dir STATE mcp ARGS` spawned by the SDK's stdio transport."""
    params = StdioServerParameters(
        command=os.environ["STOCKADE_BIN"], args=["--state-dir", str(state), "mcp", *args]
    )
    async with Client(params, mode=mode, read_timeout_seconds=120) as c:
        yield c


def trail(state, sandbox_id):
    """The audit events of a sandbox of `stockade mcp` (from its state directory)."""
    p = pathlib.Path(state) / "sandboxes" / sandbox_id / "events.jsonl"
    assert p.exists(), f"no audit trail at {p}"
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def wait_for(what, check, timeout=15.0, every=0.2):
    end = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > end:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


# --- HTTP -------------------------------------------------------------------------------------


def mcp_url(template=None, base=None):
    url = (base or os.environ["STOCKADE_URL"]) + "/mcp"
    return url + (f"?template={template}" if template else "")


@contextlib.asynccontextmanager
async def http_client(mode="auto", key=None, template=None, base=None):
    """The SDK's Streamable HTTP transport against `/mcp`, with the API key as a bearer token."""
    key = key or os.environ["STOCKADE_API_KEY"]
    hc = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=120)
    async with hc:
        async with Client(streamable_http_client(mcp_url(template, base), http_client=hc), mode=mode) as c:
            yield c


def api(path, method="GET", body=None, headers=None, key=None):
    """A raw call to the server: (status, headers, parsed JSON body or text)."""
    url = os.environ["STOCKADE_URL"] + path
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    h = {"Authorization": "Bearer " + (key or os.environ["STOCKADE_API_KEY"])}
    if body is not None and not isinstance(body, bytes):
        h["Content-Type"] = "application/json"
    h.update(headers or {})
    h = {k: v for k, v in h.items() if v is not None}
    req = urllib.request.Request(url, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            status, hdrs, raw = r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        status, hdrs, raw = e.code, dict(e.headers), e.read()
    try:
        return status, hdrs, json.loads(raw) if raw else None
    except ValueError:
        return status, hdrs, raw.decode(errors="replace")


def server_events(sandbox_id):
    """A served sandbox's audit trail, read from the server's state directory (it stays after
    the sandbox is destroyed)."""
    return trail(os.environ["STOCKADE_STATE_DIR"], sandbox_id)


def stockade(*args):
    """The stockade CLI on the server's state directory; returns stdout (fails on error)."""
    r = subprocess.run(
        [os.environ["STOCKADE_BIN"], "--state-dir", os.environ["STOCKADE_STATE_DIR"], *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, f"stockade {' '.join(args)}: {r.returncode}\n{r.stderr}"
    return r.stdout


# --- results ----------------------------------------------------------------------------------


def text(result):
    """All text content of a tool result."""
    return "\n".join(c.text for c in result.content if getattr(c, "type", "") == "text")


def ok(result):
    """The structured content of a successful result (fails with the result's text otherwise)."""
    assert not result.is_error, text(result)
    assert isinstance(result.structured_content, dict), result
    return result.structured_content


def err(result):
    """The first text block of an error result (fails if the result is not an error)."""
    assert result.is_error, f"expected a tool error, got: {text(result)}"
    return result.content[0].text


# --- network ----------------------------------------------------------------------------------

PROBE = """
import sys, urllib.request
host, port = sys.argv[1], int(sys.argv[2])
print(urllib.request.urlopen(f"http://{host}:{port}/", timeout=10).read().decode())
"""


@pytest.fixture(scope="session")
def upstream():
    """An HTTP server on 127.0.0.2 (loopback, never the internet) and its hit list."""
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


def allowlist_policy(port):
    """`api.test` allowed (it and `evil.test` both point at the upstream; only one may go)."""
    return (
        f'[network]\nmode = "allowlist"\nallow = ["api.test:{port}"]\n'
        f'allow_private = ["127.0.0.2/32"]\n'
        f'[network.hosts]\n"api.test" = "127.0.0.2"\n"evil.test" = "127.0.0.2"\n'
    )
