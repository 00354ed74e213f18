"""`/mcp` on `stockade serve` over Streamable HTTP, driven by the official MCP Python SDK: the
API key is required (401 without it, next to the same request with it), an MCP session belongs
to its key, one sandbox per session destroyed when the session closes, sandbox_id handles when
the protocol has no sessions (2026-07-28), every tool, and a denied network call reported as a
tool error with its audit event (next to the allowed control)."""

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request

import anyio
from conftest import (
    PROBE,
    TOOLS,
    allowlist_policy,
    api,
    err,
    http_client,
    ok,
    run,
    server_events,
    stdio_state,
    stockade,
    text,
    trail,
    wait_for,
)

INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "raw-test", "version": "0"},
    },
}
ACCEPT = {"Accept": "application/json, text/event-stream"}


def sse_json(body):
    """The JSON-RPC message of a one-message SSE answer (or a JSON one)."""
    if isinstance(body, dict):
        return body
    datas = [line[5:].strip() for line in body.splitlines() if line.startswith("data:") and line[5:].strip()]
    assert datas, body
    return json.loads(datas[-1])


def test_unauthenticated_requests_get_401_and_the_key_gets_in():
    s, _, b = api("/mcp", "POST", INIT, headers={**ACCEPT, "Authorization": None})
    assert s == 401 and b["error"]["code"] == "unauthorized", (s, b)
    s, _, b = api("/mcp", "POST", INIT, headers=ACCEPT, key="sk_not_a_real_key")
    assert s == 401 and b["error"]["code"] == "unauthorized", (s, b)
    assert "sk_not_a_real_key" not in json.dumps(b)
    # Control: the same request with the key (as X-API-Key this time) opens a session.
    s, h, b = api("/mcp", "POST", INIT, headers={**ACCEPT, "Authorization": None, "X-API-Key": os.environ["STOCKADE_API_KEY"]})
    assert s == 200, (s, b)
    assert sse_json(b)["result"]["serverInfo"]["name"] == "stockade"
    sid = {k.lower(): v for k, v in h.items()}["mcp-session-id"]
    s, _, _ = api("/mcp", "DELETE", headers={"Mcp-Session-Id": sid})
    assert s == 204
    # The SDK with a wrong key fails to connect; with the right one it lists the tools.

    async def body():
        try:
            async with http_client(mode="legacy", key="sk_wrong") as c:
                await c.list_tools()
        except BaseException as e:  # the SDK raises from its task group
            return repr(e)
        return None

    assert run(body) is not None, "the SDK connected without a valid key"

    async def good():
        async with http_client(mode="legacy") as c:
            return {t.name for t in (await c.list_tools()).tools}

    assert run(good) == TOOLS


def test_a_session_belongs_to_the_key_that_opened_it():
    other = stockade("keys", "create", "--name", "mcp-other").strip().splitlines()[0]
    s, h, _ = api("/mcp", "POST", INIT, headers=ACCEPT)
    assert s == 200
    sid = {k.lower(): v for k, v in h.items()}["mcp-session-id"]
    hdr = {**ACCEPT, "Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"}
    s, _, _ = api("/mcp", "POST", {"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=hdr)
    assert s == 202
    listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}}
    s, _, b = api("/mcp", "POST", listing, headers=hdr, key=other)
    assert s == 404 and b["error"]["code"] == "not_found", (s, b)
    s, _, _ = api("/mcp", "DELETE", headers={"Mcp-Session-Id": sid}, key=other)
    assert s == 404
    # Control: its own key uses and closes it.
    s, _, b = api("/mcp", "POST", listing, headers=hdr)
    assert s == 200 and {t["name"] for t in sse_json(b)["result"]["tools"]} == TOOLS
    s, _, _ = api("/mcp", "DELETE", headers={"Mcp-Session-Id": sid})
    assert s == 204


def test_a_revoked_key_is_refused_at_once_in_its_open_session():
    out = stockade("keys", "create", "--name", "mcp-revoked")
    key = out.strip().splitlines()[0]
    key_id = next(r["id"] for r in json.loads(stockade("keys", "ls", "--json")) if r["name"] == "mcp-revoked")
    s, h, _ = api("/mcp", "POST", INIT, headers=ACCEPT, key=key)
    assert s == 200
    sid = {k.lower(): v for k, v in h.items()}["mcp-session-id"]
    hdr = {**ACCEPT, "Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"}
    assert api("/mcp", "POST", {"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=hdr, key=key)[0] == 202
    listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}}
    assert api("/mcp", "POST", listing, headers=hdr, key=key)[0] == 200
    stockade("keys", "revoke", key_id)
    s, _, b = api("/mcp", "POST", listing, headers=hdr, key=key)
    assert s == 401 and b["error"]["code"] == "unauthorized", (s, b)


def test_every_tool_in_a_session_and_its_sandbox_ends_with_it():
    async def body():
        async with http_client(mode="legacy") as c:
            assert c.session.protocol_version == "2025-11-25"
            r = ok(await c.call_tool("run_command", {"command": "echo hello"}))
            assert r["stdout"] == "hello\n" and r["exit_code"] == 0
            first = r["sandbox_id"]
            # The sandbox is the key's, on the native API too.
            s, _, info = api(f"/v1/sandboxes/{first}")
            assert s == 200 and info["template"] == "base"
            ok(await c.call_tool("write_file", {"path": "dir/f.txt", "content": "über\n"}))
            r = ok(await c.call_tool("read_file", {"path": "dir/f.txt"}))
            assert r["content"] == "über\n" and r["sandbox_id"] == first
            r = ok(await c.call_tool("list_files", {"path": "dir"}))
            assert [e["path"] for e in r["entries"]] == ["/home/sandbox/dir/f.txt"]
            assert ok(await c.call_tool("run_code", {"language": "python", "code": "print(2**10)"}))["stdout"] == "1024\n"
            assert ok(await c.call_tool("run_code", {"language": "bash", "code": "echo $((6*7))"}))["stdout"] == "42\n"
            res = await c.call_tool("run_command", {"argv": ["no-such-program-xyz"]})
            assert "exit code 127" in err(res)
            a = await c.call_tool("get_audit", {})
            t = text(a)
            assert "$ /bin/sh -c 'echo hello'  -> exit 0" in t and "$ no-such-program-xyz  -> exit 127" in t, t
            r = ok(await c.call_tool("reset_sandbox", {}))
            assert r["destroyed"] == first
            second = r["sandbox_id"]
            assert err(await c.call_tool("read_file", {"path": "dir/f.txt"})).startswith("file not found")
            assert api(f"/v1/sandboxes/{first}")[0] == 404
            assert api(f"/v1/sandboxes/{second}")[0] == 200
            return first, second

    first, second = run(body)
    # The client closed its session (DELETE): the session's sandbox went with it.
    wait_for("the session's sandbox to be destroyed", lambda: api(f"/v1/sandboxes/{second}")[0] == 404)
    for sid in (first, second):
        ev = wait_for(f"{sid} destroyed", lambda: (lambda e: e if e[-1]["type"] == "sandbox.destroyed" else None)(server_events(sid)))
        assert ev[-1]["clean"] is True and ev[-1]["reason"] == "killed"


def test_without_sessions_sandbox_ids_are_handles():
    async def body():
        async with http_client(mode="auto") as c:
            assert c.session.protocol_version == "2026-07-28"
            res = await c.call_tool("write_file", {"path": "h.txt", "content": "handle"})
            r = ok(res)
            sid = r["sandbox_id"]
            assert f'pass sandbox_id="{sid}"' in r["note"]
            # With the handle: the same sandbox, its file.
            r = ok(await c.call_tool("read_file", {"path": "h.txt", "sandbox_id": sid}))
            assert r["content"] == "handle" and r["sandbox_id"] == sid and "note" not in r
            # Without it: another sandbox.
            other = ok(await c.call_tool("run_command", {"command": "test -e h.txt; echo $?"}))
            assert other["sandbox_id"] != sid and other["stdout"] == "1\n"
            # A handle that is not a sandbox of this key: a tool error that says what to do.
            msg = err(await c.call_tool("run_command", {"command": "true", "sandbox_id": "0123456789abcdef"}))
            assert msg.startswith('no sandbox "0123456789abcdef"') and "omit sandbox_id" in msg
            # Another key cannot use this key's sandbox by its id (nor learn that it exists).
            other_key = stockade("keys", "create", "--name", "mcp-handles").strip().splitlines()[0]
            async with http_client(mode="auto", key=other_key) as o:
                msg = err(await o.call_tool("read_file", {"path": "h.txt", "sandbox_id": sid}))
                assert msg.startswith(f'no sandbox "{sid}"'), msg
            assert ok(await c.call_tool("read_file", {"path": "h.txt", "sandbox_id": sid}))["content"] == "handle"
            # reset by handle.
            r = ok(await c.call_tool("reset_sandbox", {"sandbox_id": sid}))
            assert r["destroyed"] == sid
            assert api(f"/v1/sandboxes/{sid}")[0] == 404
            a = ok(await c.call_tool("get_audit", {"sandbox_id": other["sandbox_id"]}))
            assert a["commands"][0]["command"] == "/bin/sh -c 'test -e h.txt; echo $?'"
            return [other["sandbox_id"], r["sandbox_id"]]

    for sid in run(body):
        assert api(f"/v1/sandboxes/{sid}", "DELETE")[0] == 204


def test_denied_network_over_http_is_a_tool_error_and_audited(upstream, tmp_path):
    port, hits = upstream
    p = tmp_path / "mcpnet.toml"
    p.write_text(allowlist_policy(port))
    stockade("template", "add", "mcpnet", "--policy", str(p))

    async def body():
        async with http_client(mode="legacy", template="mcpnet") as c:
            before = len(hits)
            r = ok(await c.call_tool("run_code", {"language": "python", "code": PROBE, "args": ["api.test", str(port)]}))
            assert r["stdout"] == "hello from the upstream\n"
            assert len(hits) == before + 1
            res = await c.call_tool("run_code", {"language": "python", "code": PROBE, "args": ["evil.test", str(port)]})
            assert err(res).startswith(
                f"network: evil.test:{port} is not in the allowlist (the sandbox's network policy allows: api.test:{port})"
            ), err(res)
            assert len(hits) == before + 1, "a name outside the allowlist reached the upstream"
            sid = res.structured_content["sandbox_id"]
            s, _, events = api(f"/v1/sandboxes/{sid}/events")
            assert s == 200
            return sid, events

    sid, events = run(body)
    net = [e for e in events if e["type"] in ("net.dns", "net.connect")]
    assert any(e["name"] == "evil.test" and e["decision"] == "denied" and e["reason"] == "denied:not_in_allowlist" for e in net), net
    assert any(e["name"] == "api.test" and e["decision"] == "allowed" for e in net), net


def test_unknown_template_is_refused():
    s, _, b = api("/mcp?template=no-such-template", "POST", INIT, headers=ACCEPT)
    assert s == 400 and "no-such-template" in b["error"]["message"], (s, b)
    s, _, b = api("/mcp?tmpl=base", "POST", INIT, headers=ACCEPT)
    assert s == 400 and "unknown query parameter" in b["error"]["message"], (s, b)


def test_shutdown_with_an_open_session_closes_it_and_destroys_its_sandbox():
    """A server of its own, stopped with SIGTERM while an SDK session (and its GET stream) is
    open: the stream is closed at once (no drain timeout), the session's sandbox destroyed."""
    state = stdio_state()
    bin_ = os.environ["STOCKADE_BIN"]
    key = subprocess.run(
        [bin_, "--state-dir", str(state), "keys", "create"], capture_output=True, text=True, check=True
    ).stdout.split()[0]
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    log = open(state / "server.log", "w")
    srv = subprocess.Popen([bin_, "--state-dir", str(state), "serve", "--listen", f"127.0.0.1:{port}"], stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for("the server", lambda: _healthy(base))

        async def body():
            sid = None
            try:
                async with http_client(mode="legacy", key=key, base=base) as c:
                    sid = ok(await c.call_tool("run_command", {"command": "echo up"}))["sandbox_id"]
                    srv.send_signal(signal.SIGTERM)
                    t0 = time.monotonic()
                    while srv.poll() is None and time.monotonic() - t0 < 30:
                        await anyio.sleep(0.1)
                    return sid, srv.poll(), time.monotonic() - t0
            except BaseException:  # the session's end (its DELETE) fails: the server is gone
                return sid, srv.wait(timeout=30), None

        sid, code, took = run(body)
        assert code == 0, open(state / "server.log").read()
        logtext = open(state / "server.log").read()
        assert "did not close in time" not in logtext, logtext
        last = trail(state, sid)[-1]
        assert last["type"] == "sandbox.destroyed" and last["clean"] is True and last["reason"] == "killed", last
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.wait()
        log.close()


def _healthy(base):
    try:
        urllib.request.urlopen(base + "/health", timeout=1)
        return True
    except OSError:
        return False
