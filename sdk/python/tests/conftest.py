"""A real `stockade serve` for the tests, started here.

Session fixture `server`: a temporary state directory, a key from `stockade keys create`, a free
loopback port; STOCKADE_SERVER / STOCKADE_API_KEY point at it. At the end: no sandbox of the
tests may still run, the server is stopped with SIGTERM and must exit 0, and every sandbox's
audit trail must end with a clean `sandbox.destroyed`.

Needs root (the server makes sandboxes) and the binary ($STOCKADE_BIN, default
target/debug/stockade). Without them every test FAILS with the reason; nothing is skipped (a
skipped test is turned into a failure below).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import stockade

ROOT = Path(__file__).resolve().parents[3]


def stockade_bin() -> str:
    b = os.environ.get("STOCKADE_BIN") or str(ROOT / "target" / "debug" / "stockade")
    if not (os.path.isfile(b) and os.access(b, os.X_OK)):
        pytest.fail(
            f"{b} is not an executable: build it (cargo build -p stockade) or set STOCKADE_BIN",
            pytrace=False,
        )
    if os.geteuid() != 0:
        pytest.fail("these tests must run as root (stockade serve makes sandboxes)", pytrace=False)
    return b


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """One `stockade serve` on its own state directory."""

    def __init__(self, bin_path: str, *extra: str) -> None:
        self.bin = bin_path
        self.work = Path(tempfile.mkdtemp(prefix="stockade-sdk-py."))
        self.state = self.work / "state"
        self.log_path = self.work / "server.log"
        self.key = self.cli("keys", "create", "--name", "sdk-tests").splitlines()[0].strip()
        assert self.key.startswith("sk_"), f"keys create printed {self.key!r}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [self.bin, "--state-dir", str(self.state), "serve", "--listen", f"127.0.0.1:{self.port}", *extra],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        end = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if self.proc.poll() is not None:
                pytest.fail(f"stockade serve exited at start:\n{self.log()}", pytrace=False)
            if time.monotonic() > end:
                self.proc.kill()
                pytest.fail(f"stockade serve did not answer /health in 15 s:\n{self.log()}", pytrace=False)
            time.sleep(0.1)

    def cli(self, *args: str) -> str:
        r = subprocess.run(
            [self.bin, "--state-dir", str(self.state), *args], capture_output=True, text=True, timeout=60
        )
        assert r.returncode == 0, f"stockade {' '.join(args)}: exit {r.returncode}\n{r.stderr}"
        return r.stdout

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def api(self, method: str, path: str, body: Any = None, key: str | None = None) -> tuple[int, Any]:
        """A raw call (urllib, not the SDK) to compare the SDK with what the server says."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", "Bearer " + (key or self.key))
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        return status, (json.loads(raw) if raw else None)

    def trail(self, sandbox_id: str, closed: bool = True) -> list[dict[str, Any]]:
        """A sandbox's audit trail read from the state directory (works after it is gone).

        A kill answers once every process of the sandbox is dead; the verified teardown that
        writes `sandbox.destroyed` finishes right after, in the background. With `closed`,
        wait (at most 10 s) until the trail ends with it."""
        p = self.state / "sandboxes" / sandbox_id / "events.jsonl"
        until = time.monotonic() + 10
        while True:
            events = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
            done = bool(events) and events[-1]["type"] == "sandbox.destroyed"
            if not closed or done or time.monotonic() > until:
                return events
            time.sleep(0.02)

    def stop_and_check(self) -> None:
        """Nothing may still run; SIGTERM → exit 0; every trail ends with a clean destroy."""
        problems: list[str] = []
        if self.proc.poll() is None:
            status, body = self.api("GET", "/v1/sandboxes")
            if status != 200:
                problems.append(f"listing sandboxes before shutdown: {status} {body}")
            elif body["sandboxes"]:
                ids = [s["id"] for s in body["sandboxes"]]
                problems.append(f"the tests left sandboxes running: {ids}")
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                rc = None
            if rc != 0:
                problems.append(f"stockade serve exited with {rc} after SIGTERM")
        else:
            problems.append(f"stockade serve died during the tests (status {self.proc.returncode})")
        self._log.close()
        made = 0
        sdir = self.state / "sandboxes"
        for d in sorted(sdir.iterdir()) if sdir.is_dir() else []:
            made += 1
            try:
                events = self.trail(d.name)
            except (OSError, ValueError) as e:
                problems.append(f"sandbox {d.name}: unreadable trail: {e}")
                continue
            last = events[-1] if events else None
            if not last or last.get("type") != "sandbox.destroyed" or last.get("clean") is not True:
                problems.append(f"sandbox {d.name}: its trail does not end with a clean sandbox.destroyed: {last}")
        if problems:
            pytest.fail(
                "\n".join(problems) + f"\n(kept: {self.work})\n--- server log ---\n{self.log()}",
                pytrace=False,
            )
        self.made = made
        shutil.rmtree(self.work, ignore_errors=True)


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    srv = Server(stockade_bin())
    saved = {k: os.environ.get(k) for k in ("STOCKADE_SERVER", "STOCKADE_API_KEY")}
    os.environ["STOCKADE_SERVER"] = srv.url
    os.environ["STOCKADE_API_KEY"] = srv.key
    try:
        yield srv
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        srv.stop_and_check()
        assert srv.made > 0, "no sandbox was made: the tests did not run"


@pytest.fixture
def sbx(server: Server) -> Iterator[stockade.Sandbox]:
    with stockade.Sandbox(timeout=600) as s:
        yield s


def events_of(events: list[stockade.AuditEvent], type_: str) -> list[stockade.AuditEvent]:
    return [e for e in events if e.type == type_]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A skipped test is a failure here: these tests either run their check or say why not."""
    rep = yield
    if rep.skipped:
        rep.outcome = "failed"
        rep.longrepr = f"skipped tests are not allowed in this suite: {rep.longrepr}"
    return rep
