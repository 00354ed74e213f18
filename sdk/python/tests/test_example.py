"""examples/agent_loop.py runs for real against the test server: a template with a network
allowlist maps `api.test` (allowed) and `evil.test` (not allowed) to a local HTTP server on
127.0.0.2; the example's output must show the fetched page, the refusal, and the audit trace
with both network decisions. The local server counts requests: the denied name never reaches it."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT, Server

BODY = b"<html>\nhello from the upstream\n<p>three more words</p>\n</html>\n"


@pytest.fixture
def upstream() -> Iterator[tuple[int, list[str]]]:
    hits: list[str] = []

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.headers.get("Host", ""))
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY)

        def log_message(self, *a: Any) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.2", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1], hits
    srv.shutdown()


def test_agent_loop_example(server: Server, upstream: tuple[int, list[str]], tmp_path: Path) -> None:
    port, hits = upstream
    policy = tmp_path / "agent-net.toml"
    policy.write_text(
        f'[network]\nmode = "allowlist"\nallow = ["api.test:{port}"]\n'
        'allow_private = ["127.0.0.2/32"]\n'
        '[network.hosts]\n"api.test" = "127.0.0.2"\n"evil.test" = "127.0.0.2"\n'
    )
    server.cli("template", "add", "agent-net", "--policy", str(policy))
    allowed, denied = f"http://api.test:{port}/", f"http://evil.test:{port}/"
    r = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "agent_loop.py"), "--template", "agent-net",
         "--allowed-url", allowed, "--denied-url", denied],
        capture_output=True, text=True, timeout=180, env=dict(os.environ),
    )
    out = r.stdout
    assert r.returncode == 0, f"exit {r.returncode}\n{out}\n{r.stderr}"
    # The loop: two tool calls whose output was streamed, then the model's final answer,
    # built from what the tools returned.
    assert "[tool] run python3 fetch.py" in out and "[tool] run python3 analyze.py" in out
    assert f'    | {{"url": "{allowed}", "ok": true, "status": 200, "bytes": {len(BODY)}' in out
    assert f"[final] {allowed} answered 200 with {len(BODY)} bytes (9 words, 4 lines; first line: '<html>')" in out
    assert f"{denied} was refused inside the sandbox: HTTPError: HTTP Error 403" in out
    # Only the allowed name reached the server.
    assert hits == [f"api.test:{port}"], hits
    # The trace: the commands and both network decisions with their reasons.
    trace = out.split("=== audit trace of sandbox ", 1)[1]
    assert "exec.started e1: python3 fetch.py " + allowed + " " + denied in trace
    assert "exec.exited e1: exit 0" in trace and "exec.started e2: python3 analyze.py" in trace
    assert f"net.connect: api.test:{port} allowed" in trace, trace
    assert f"net.connect: evil.test:{port} denied (denied:not_in_allowlist)" in trace, trace
    assert "file.changed: /home/sandbox/fetch.py created" in trace
    sid = trace.split(" ", 1)[0]
    assert server.trail(sid)[-1]["type"] == "sandbox.destroyed"  # the example's `with` killed it
    server.cli("template", "rm", "agent-net")
