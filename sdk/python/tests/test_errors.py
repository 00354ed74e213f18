"""Errors that say what to do (401, 429, an unreachable server) and retries only where safe."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import stockade
from conftest import Server, free_port, stockade_bin


def test_wrong_key_is_authentication_error_and_the_right_key_works(server: Server) -> None:
    wrong = "sk_this_is_not_a_valid_key_0123456789"
    for call in (
        lambda: stockade.Sandbox(api_key=wrong),
        lambda: stockade.Sandbox.list(api_key=wrong),
        lambda: stockade.Sandbox.connect("0123456789abcdef", api_key=wrong),
    ):
        with pytest.raises(stockade.AuthenticationError) as e:
            call()
        msg = str(e.value)
        assert e.value.status == 401 and e.value.code == "unauthorized"
        assert "STOCKADE_API_KEY" in msg and "stockade keys create" in msg, msg
        assert wrong not in msg and server.key not in msg
    # Control: the right key, explicitly and from the environment.
    assert isinstance(stockade.Sandbox.list(api_key=server.key), list)
    with stockade.Sandbox() as s:
        # A key that is not the owner's cannot reach the sandbox either.
        with pytest.raises(stockade.AuthenticationError):
            stockade.Sandbox.connect(s.id, api_key=wrong)
        # Another valid key does not see it: 404, never 403.
        other = server.cli("keys", "create", "--name", "other").splitlines()[0].strip()
        with pytest.raises(stockade.SandboxNotFound):
            stockade.Sandbox.connect(s.id, api_key=other)
        assert s.id not in [i.id for i in stockade.Sandbox.list(api_key=other)]


@pytest.fixture
def small_server() -> Iterator[Server]:
    """A second server whose key may hold one sandbox at a time."""
    srv = Server(stockade_bin(), "--max-per-key", "1")
    try:
        yield srv
    finally:
        srv.stop_and_check()


def test_quota_429_carries_the_servers_message(small_server: Server) -> None:
    kw: dict[str, Any] = {"server": small_server.url, "api_key": small_server.key}
    first = stockade.Sandbox(**kw)
    try:
        with pytest.raises(stockade.QuotaExceeded) as e:
            stockade.Sandbox(**kw)
        # The message is the server's own, next to what to do about it.
        status, body = small_server.api("POST", "/v1/sandboxes", {})
        assert status == 429, body
        assert e.value.status == 429 and e.value.code == "too_many_sandboxes"
        assert e.value.server_message == body["error"]["message"]
        assert body["error"]["message"] in str(e.value)
        assert "kill" in str(e.value) and "--max-per-key" in str(e.value)
    finally:
        first.kill()
    # Control: with the first one gone, a create succeeds.
    with stockade.Sandbox(**kw) as again:
        assert again.run("echo ok").stdout == "ok\n"


def test_unreachable_server_says_where_it_looked(server: Server) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    for call in (
        lambda: stockade.Sandbox(server=url),
        lambda: stockade.Sandbox.list(server=url, max_retries=1),
    ):
        with pytest.raises(stockade.ServerUnreachable) as e:
            call()
        assert isinstance(e.value, ConnectionError)
        assert url in str(e.value) and "STOCKADE_SERVER" in str(e.value)
        assert server.key not in str(e.value)
    with pytest.raises(stockade.ConfigurationError, match="expected a URL"):
        stockade.Sandbox(server="127.0.0.1:3000")


class Fake:
    """A stand-in server that counts requests: 503 on GET/DELETE, 201 on create, and a
    connection dropped mid-answer on exec."""

    def __init__(self) -> None:
        self.hits: list[tuple[str, str]] = []
        fake = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _record(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                if n:
                    self.rfile.read(n)
                fake.hits.append((self.command, self.path.split("?")[0]))

            def _json(self, status: int, doc: Any) -> None:
                raw = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self) -> None:
                self._record()
                self._json(503, {"error": {"code": "unavailable", "message": "warming up"}})

            do_DELETE = do_GET

            def do_POST(self) -> None:
                self._record()
                if self.path == "/v1/sandboxes":
                    self._json(201, {
                        "id": "00000000000000aa", "template": "base", "state": "running",
                        "access_token": "t", "created_at": "2026-01-01T00:00:00Z",
                        "expires_at": "2026-01-01T00:05:00Z", "metadata": {},
                    })
                elif self.path.endswith("/exec"):
                    # Headers promise a stream, then the connection drops before any event.
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.send_header("Content-Length", "1000")
                    self.end_headers()
                    self.wfile.write(b"event: started\n")
                    self.wfile.flush()
                    self.close_connection = True
                else:
                    self._json(503, {"error": {"code": "unavailable", "message": "busy"}})

            def log_message(self, *a: Any) -> None:
                pass

        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}"
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def count(self, method: str, path: str) -> int:
        return sum(1 for h in self.hits if h == (method, path))


@pytest.fixture
def fake() -> Iterator[Fake]:
    f = Fake()
    yield f
    f.srv.shutdown()


def test_retries_only_where_safe(fake: Fake) -> None:
    kw: dict[str, Any] = {"server": fake.url, "api_key": "sk_fake", "max_retries": 2}
    # An idempotent GET is retried on 503: 1 + 2 tries, then the server's error.
    with pytest.raises(stockade.ServerError) as e:
        stockade.Sandbox.list(**kw)
    assert fake.count("GET", "/v1/sandboxes") == 3
    assert e.value.status == 503 and "warming up" in str(e.value)
    s = stockade.Sandbox(**kw)
    assert fake.count("POST", "/v1/sandboxes") == 1  # a create is sent once
    # An exec whose connection breaks is not sent again: it could run twice.
    with pytest.raises((stockade.ServerUnreachable, stockade.ProtocolError)) as e2:
        s.run("echo once")
    assert fake.count("POST", "/v1/sandboxes/00000000000000aa/exec") == 1
    assert "not retried" in str(e2.value) or "ended before" in str(e2.value), str(e2.value)
    # A POST that reached the server and got 503 is not retried either.
    with pytest.raises(stockade.ServerError):
        s.set_timeout(10)
    assert fake.count("POST", "/v1/sandboxes/00000000000000aa/timeout") == 1
    # DELETE is idempotent: retried.
    with pytest.raises(stockade.ServerError):
        s.kill()
    assert fake.count("DELETE", "/v1/sandboxes/00000000000000aa") == 3
    # No retries at all with max_retries=0.
    with pytest.raises(stockade.ServerError):
        stockade.Sandbox.list(server=fake.url, api_key="sk_fake", max_retries=0)
    assert fake.count("GET", "/v1/sandboxes") == 4
