"""Create, connect, list, time to live, kill; the context manager; the audit trace."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest

import stockade
from conftest import Server, events_of


def test_context_manager_kills_the_sandbox(server: Server) -> None:
    with stockade.Sandbox() as s:
        sid = s.id
        assert len(sid) == 16
        # Control: while the block runs it exists, for a second client too.
        assert sid in [i.id for i in stockade.Sandbox.list()]
        other = stockade.Sandbox.connect(sid)
        assert other.run("echo alive").stdout == "alive\n"
        other.close()  # closes the client only: the sandbox runs on
        assert s.is_running()
    assert sid not in [i.id for i in stockade.Sandbox.list()]
    with pytest.raises(stockade.SandboxNotFound):
        stockade.Sandbox.connect(sid)
    last = server.trail(sid)[-1]
    assert last["type"] == "sandbox.destroyed" and last["reason"] == "killed" and last["clean"] is True


def test_context_manager_kills_when_the_block_raises(server: Server) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with stockade.Sandbox() as s:
            sid = s.id
            raise RuntimeError("boom")
    assert server.trail(sid)[-1]["type"] == "sandbox.destroyed"
    with pytest.raises(stockade.SandboxNotFound):
        stockade.Sandbox.connect(sid)


def test_create_options_reach_the_sandbox(server: Server) -> None:
    with stockade.Sandbox(
        template="base", timeout=120, env={"TOKEN_NAME": "abc"}, metadata={"job": "42"}
    ) as s:
        assert s.template == "base" and s.metadata == {"job": "42"}
        assert s.access_token  # returned once, at create
        assert "access_token" not in repr(s) and s.access_token not in repr(s)
        ttl = s.expires_at - datetime.now(timezone.utc)
        assert timedelta(seconds=100) < ttl <= timedelta(seconds=121), ttl
        assert s.run("echo $TOKEN_NAME").stdout == "abc\n"
        listed = [i for i in stockade.Sandbox.list() if i.id == s.id]
        assert listed and listed[0].metadata == {"job": "42"}
        info = s.info()
        assert info.usage is not None and info.state == "running"


def test_explicit_server_and_key_arguments(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STOCKADE_SERVER")
    monkeypatch.delenv("STOCKADE_API_KEY")
    with pytest.raises(stockade.ConfigurationError, match="STOCKADE_SERVER"):
        stockade.Sandbox()
    with pytest.raises(stockade.AuthenticationError, match="STOCKADE_API_KEY"):
        stockade.Sandbox(server=server.url)
    with stockade.Sandbox(server=server.url, api_key=server.key) as s:
        assert s.run("echo ok").stdout == "ok\n"


def test_set_timeout_and_expiry(server: Server) -> None:
    with stockade.Sandbox(timeout=60) as s:
        info = s.set_timeout(3000)
        left = info.expires_at - datetime.now(timezone.utc)
        assert timedelta(seconds=2900) < left <= timedelta(seconds=3001), left
        assert s.expires_at == info.expires_at
        with pytest.raises(stockade.InvalidRequest) as e:
            s.set_timeout(10**9)  # over the server's --max-timeout
        assert e.value.status == 400 and e.value.server_message and e.value.server_message in str(e.value)
    # The TTL is enforced by the server: a 2 s sandbox is gone after it.
    s = stockade.Sandbox(timeout=2)
    try:
        deadline = time.monotonic() + 15
        while s.is_running():
            assert time.monotonic() < deadline, "the sandbox outlived its timeout"
            time.sleep(0.5)
        with pytest.raises(stockade.SandboxNotFound):
            s.run("true")
        reasons = [e.get("reason") for e in server.trail(s.id) if e["type"] == "sandbox.destroyed"]
        assert reasons == ["timeout"], reasons
    finally:
        s.kill()  # already gone: not an error


def test_kill_is_idempotent_and_ends_everything(server: Server) -> None:
    s = stockade.Sandbox()
    p = s.run(["sleep", "60"], background=True)
    s.kill()
    s.kill()
    with pytest.raises(stockade.SandboxNotFound):
        stockade.Sandbox.connect(s.id)
    # The background process ended with the sandbox.
    with pytest.raises(stockade.SandboxEnded):
        p.wait(timeout=15)
    assert server.trail(s.id)[-1]["reason"] == "killed"


def test_unknown_and_malformed_ids(server: Server) -> None:
    with pytest.raises(stockade.SandboxNotFound) as e:
        stockade.Sandbox.connect("0123456789abcdef")
    assert e.value.status == 404 and "Sandbox.list()" in str(e.value)
    with pytest.raises(stockade.SandboxNotFound, match="16 hex"):
        stockade.Sandbox.connect("../../v1/sandboxes")


def test_policy_errors_are_invalid_request_with_the_servers_reason(server: Server) -> None:
    with pytest.raises(stockade.InvalidRequest) as e:
        stockade.Sandbox(policy="[network\nmode = 1\n")
    assert e.value.status == 400 and "1:" in str(e.value), str(e.value)
    with pytest.raises(stockade.InvalidRequest, match="network.hosts"):
        stockade.Sandbox(policy='[network]\nmode = "allowlist"\nallow = ["a.test"]\n[network.hosts]\n"a.test" = "127.0.0.2"\n')
    with pytest.raises(stockade.InvalidRequest):
        stockade.Sandbox(template="no-such-template")


def test_trace_shows_exec_started_and_exited(sbx: stockade.Sandbox) -> None:
    r = sbx.run("echo traced; exit 5")
    sbx.run(["sh", "-c", "kill -9 $$"])
    ev = sbx.trace()
    assert ev[0].type == "sandbox.created" and ev[0].sandbox_id == sbx.id
    assert [e.seq for e in ev] == sorted(e.seq for e in ev)
    started = [e for e in events_of(ev, "exec.started") if e.exec_id == r.exec_id]
    exited = [e for e in events_of(ev, "exec.exited") if e.exec_id == r.exec_id]
    assert started and started[0]["argv"] == ["/bin/sh", "-c", "echo traced; exit 5"]
    assert started[0]["cwd"] == "/home/sandbox"
    assert exited and exited[0]["exit_code"] == 5 and exited[0].get("signal") is None
    assert isinstance(exited[0].at, datetime) and exited[0].at >= started[0].at
    assert started[0].describe() == "exec.started " + r.exec_id + ": /bin/sh -c 'echo traced; exit 5'"
    assert exited[0].describe().startswith(f"exec.exited {r.exec_id}: exit 5 after ")
    killed = events_of(ev, "exec.exited")[-1]
    assert killed.get("signal") == 9 and "signal 9" in killed.describe()
    # since= returns only what came after.
    later = sbx.trace(since=exited[0].seq)
    assert later and all(e.seq > exited[0].seq for e in later)
    assert sbx.trace(since=ev[-1].seq) == []
