"""`stockade mcp` over stdio, driven by the official MCP Python SDK: the tools and their
schemas, each tool's real effect, the errors a model gets (missing command, timeout, missing
file, refused path, denied network with its audit event next to an allowed control), the
sandbox's lifetime (made on first use, fresh after reset, destroyed at end of input and after
the idle timeout)."""

import base64
import json
import os
import shutil
import signal
import subprocess

import anyio

from conftest import (
    PROBE,
    TOOLS,
    allowlist_policy,
    err,
    ok,
    run,
    stdio_client,
    stdio_state,
    text,
    trail,
    wait_for,
)


def code_langs(tools):
    """The languages run_code's schema offers (an enum, perhaps behind a $ref)."""
    schema = tools["run_code"].input_schema
    lang = schema["properties"]["language"]
    if "$ref" in lang:
        lang = schema["$defs"][lang["$ref"].rsplit("/", 1)[-1]]
    values = lang.get("enum") or [v.get("const") for v in lang.get("oneOf", [])]
    return set(values)


def test_tools_are_listed_with_schemas_and_descriptions():
    async def body():
        async with stdio_client(stdio_state()) as c:
            tools = {t.name: t for t in (await c.list_tools()).tools}
        assert set(tools) == TOOLS
        for t in tools.values():
            assert t.input_schema.get("type") == "object", t
            assert len(t.description or "") > 100, t.name
        rc = tools["run_command"].input_schema["properties"]
        assert {"command", "argv", "cwd", "timeout", "stdin", "env", "sandbox_id"} <= set(rc)
        assert "array" in rc["argv"]["type"] and rc["argv"]["items"]["type"] == "string"
        assert code_langs(tools) == {"python", "node", "bash"}
        code = tools["run_code"].input_schema
        assert set(code["required"]) == {"language", "code"}
        assert "64 KiB" in tools["run_command"].description
        assert set(tools["write_file"].input_schema["required"]) == {"path", "content"}

    run(body)


def test_run_command_returns_exact_output_and_exit_code():
    state = stdio_state()

    async def body():
        async with stdio_client(state) as c:
            r = ok(await c.call_tool("run_command", {"command": "echo hello"}))
            assert r["stdout"] == "hello\n"
            assert r["stderr"] == ""
            assert r["exit_code"] == 0
            assert r["stdout_truncated"] is False and r["stderr_truncated"] is False
            sid = r["sandbox_id"]
            # argv form (no shell: the $ stays literal), cwd, stdin, env.
            r = ok(await c.call_tool("run_command", {"argv": ["printf", "%s|", "a b", "$X"]}))
            assert r["stdout"] == "a b|$X|"
            r = ok(
                await c.call_tool(
                    "run_command",
                    {"command": "pwd; cat; echo $GREETING", "cwd": "/tmp", "stdin": "from stdin\n", "env": {"GREETING": "hi"}},
                )
            )
            assert r["stdout"] == "/tmp\nfrom stdin\nhi\n"
            assert r["sandbox_id"] == sid
            # A failing command: an error result carrying the code and both streams.
            res = await c.call_tool("run_command", {"command": "echo out; echo oops >&2; exit 3"})
            assert err(res).startswith("exit code 3: the command failed")
            assert res.structured_content["exit_code"] == 3
            assert res.structured_content["stdout"] == "out\n"
            assert res.structured_content["stderr"] == "oops\n"
        return sid

    sid = run(body)
    # The commands are in the sandbox's trail, which ended clean when the client went away.
    events = wait_for(
        "sandbox.destroyed", lambda: (lambda e: e if e[-1]["type"] == "sandbox.destroyed" else None)(trail(state, sid))
    )
    started = [e["argv"] for e in events if e["type"] == "exec.started"]
    assert ["/bin/sh", "-c", "echo hello"] in started
    assert ["printf", "%s|", "a b", "$X"] in started
    assert events[-1]["clean"] is True


def test_files_written_read_and_listed():
    async def body():
        async with stdio_client(stdio_state()) as c:
            r = ok(await c.call_tool("write_file", {"path": "notes/a.txt", "content": "line one\nline two\n"}))
            assert r["path"] == "/home/sandbox/notes/a.txt" and r["created"] is True and r["bytes"] == 18
            r = ok(await c.call_tool("read_file", {"path": "/home/sandbox/notes/a.txt"}))
            assert (r["content"], r["encoding"], r["size"], r["truncated"]) == ("line one\nline two\n", "utf-8", 18, False)
            # Replaced as a whole.
            r = ok(await c.call_tool("write_file", {"path": "notes/a.txt", "content": "new"}))
            assert r["created"] is False
            assert ok(await c.call_tool("read_file", {"path": "notes/a.txt"}))["content"] == "new"
            # The sandbox's own processes see the file the tool wrote.
            assert ok(await c.call_tool("run_command", {"command": "cat notes/a.txt"}))["stdout"] == "new"
            # Binary: base64 both ways.
            blob = bytes(range(256))
            ok(await c.call_tool("write_file", {"path": "b.bin", "content": base64.b64encode(blob).decode(), "encoding": "base64"}))
            r = ok(await c.call_tool("read_file", {"path": "b.bin"}))
            assert r["encoding"] == "base64" and base64.b64decode(r["content"]) == blob
            # In parts: offset and max_bytes, next_offset.
            r = ok(await c.call_tool("read_file", {"path": "notes/a.txt", "max_bytes": 2}))
            assert (r["content"], r["truncated"], r["next_offset"]) == ("ne", True, 2)
            r = ok(await c.call_tool("read_file", {"path": "notes/a.txt", "offset": 2}))
            assert (r["content"], r["truncated"]) == ("w", False)
            # Listed, at depth 1 and 2.
            r = ok(await c.call_tool("list_files", {}))
            got = {(e["path"], e["kind"]) for e in r["entries"]}
            assert ("/home/sandbox/notes", "dir") in got and ("/home/sandbox/b.bin", "file") in got
            assert ("/home/sandbox/notes/a.txt", "file") not in got
            r = ok(await c.call_tool("list_files", {"depth": 2}))
            sizes = {e["path"]: e["size"] for e in r["entries"]}
            assert sizes["/home/sandbox/notes/a.txt"] == 3 and sizes["/home/sandbox/b.bin"] == 256

    run(body)


def test_run_code_in_python_bash_and_node():
    async def body():
        async with stdio_client(stdio_state()) as c:
            r = ok(await c.call_tool("run_code", {"language": "python", "code": "import sys\nprint(sum(range(10)), sys.argv[1:])", "args": ["x"]}))
            assert r["stdout"] == "45 ['x']\n" and r["interpreter"] == "python3"
            r = ok(await c.call_tool("run_code", {"language": "bash", "code": "read v; echo \"got $v\"; echo ${BASH_VERSINFO[0]} > /dev/null", "stdin": "it\n"}))
            assert r["stdout"] == "got it\n"
            res = await c.call_tool("run_code", {"language": "python", "code": "raise SystemExit(4)"})
            assert err(res).startswith("exit code 4") and res.structured_content["exit_code"] == 4
            res = await c.call_tool("run_code", {"language": "node", "code": "console.log(6 * 7)"})
            if shutil.which("node", path="/usr/local/bin:/usr/bin:/bin"):
                assert ok(res)["stdout"] == "42\n"
            else:
                # No node on this host (so none in the sandbox): said so, with 127.
                assert "node is not installed in this sandbox (exit code 127)" in err(res)
                assert res.structured_content["exit_code"] == 127
            # The temporary file is gone afterwards.
            r = ok(await c.call_tool("run_command", {"command": "ls -A /tmp"}))
            assert ".stockade-code" not in r["stdout"]

    run(body)


def test_reset_gives_a_fresh_sandbox():
    state = stdio_state()

    async def body():
        async with stdio_client(state) as c:
            first = ok(await c.call_tool("write_file", {"path": "keep.txt", "content": "x"}))["sandbox_id"]
            r = ok(await c.call_tool("reset_sandbox", {}))
            assert r["destroyed"] == first and r["sandbox_id"] != first
            res = await c.call_tool("read_file", {"path": "keep.txt"})
            assert err(res).startswith("file not found: /home/sandbox/keep.txt")
            assert res.structured_content["sandbox_id"] == r["sandbox_id"]
            return first

    first = run(body)
    old = trail(state, first)
    assert old[-1]["type"] == "sandbox.destroyed" and old[-1]["reason"] == "killed" and old[-1]["clean"]


def test_get_audit_mentions_what_ran():
    async def body():
        async with stdio_client(stdio_state()) as c:
            r = ok(await c.call_tool("get_audit", {}))
            assert r["sandbox_id"] is None  # nothing ran yet: no sandbox was made for it
            ok(await c.call_tool("run_command", {"command": "echo audit-me"}))
            await c.call_tool("run_command", {"argv": ["false"]})
            ok(await c.call_tool("write_file", {"path": "w.txt", "content": "12345"}))
            res = await c.call_tool("get_audit", {})
            a = ok(res)
            t = text(res)
            assert "$ /bin/sh -c 'echo audit-me'  -> exit 0" in t, t
            assert "$ false  -> exit 1" in t, t
            assert "created /home/sandbox/w.txt (5 bytes)" in t, t
            cmds = [(x["command"], x["exit_code"]) for x in a["commands"]]
            assert cmds == [("/bin/sh -c 'echo audit-me'", 0), ("false", 1)]
            assert a["sandbox"]["isolation"]

    run(body)


def test_missing_command_is_a_tool_error_with_127():
    async def body():
        async with stdio_client(stdio_state()) as c:
            res = await c.call_tool("run_command", {"argv": ["no-such-program-xyz"]})
            assert err(res).startswith("command not found (exit code 127): `no-such-program-xyz`")
            assert res.structured_content["exit_code"] == 127
            res = await c.call_tool("run_command", {"command": "no-such-program-xyz --help"})
            assert err(res).startswith("exit code 127: command not found")
            assert "no-such-program-xyz" in res.structured_content["stderr"]
            # Control: the server is fine and the same sandbox runs what exists.
            assert ok(await c.call_tool("run_command", {"argv": ["true"]}))["exit_code"] == 0

    run(body)


def test_timeout_truncation_and_bad_arguments_are_tool_errors():
    async def body():
        async with stdio_client(stdio_state()) as c:
            res = await c.call_tool("run_command", {"command": "echo started; sleep 30", "timeout": 1})
            assert err(res).startswith("timeout: the command ran for 1 s, its time limit, and was killed")
            assert res.structured_content["end"] == "timeout" and res.structured_content["stdout"] == "started\n"
            # Past the policy's limit: refused before anything runs.
            assert "over this sandbox's limit of 600 s" in err(await c.call_tool("run_command", {"command": "true", "timeout": 100000}))
            # 200000 bytes of output: 64 KiB come back (head and tail), flagged; not an error.
            r = ok(await c.call_tool("run_command", {"command": "head -c 200000 /dev/zero | tr '\\0' a; echo END"}))
            assert r["stdout_truncated"] is True and r["stdout_bytes"] == 200004
            assert len(r["stdout"]) < 66 * 1024 and r["stdout"].endswith("aaaaEND\n")
            assert "bytes left out" in r["stdout"]
            # Arguments the schema refuses: tool errors a model can read, not protocol errors.
            assert "nothing to run" in err(await c.call_tool("run_command", {}))
            assert "not both" in err(await c.call_tool("run_command", {"command": "true", "argv": ["true"]}))
            assert "unknown field" in err(await c.call_tool("run_command", {"cmd": "true"}))
            assert "unknown variant" in err(await c.call_tool("run_code", {"language": "cobol", "code": "x"}))
            # Still serving.
            assert ok(await c.call_tool("run_command", {"command": "echo alive"}))["stdout"] == "alive\n"

    run(body)


def test_file_not_found_and_path_not_allowed():
    async def body():
        async with stdio_client(stdio_state()) as c:
            assert err(await c.call_tool("read_file", {"path": "missing.txt"})).startswith(
                "file not found: /home/sandbox/missing.txt does not exist"
            )
            msg = err(await c.call_tool("write_file", {"path": "/etc/stockade-mcp-test", "content": "x"}))
            assert msg.startswith("path not allowed: /etc/stockade-mcp-test (read-only file system)"), msg
            assert "is a directory" in err(await c.call_tool("read_file", {"path": "/home/sandbox"}))
            assert err(await c.call_tool("list_files", {"path": "/nonexistent-dir"})).startswith("file not found")
            # Control: the same write under the home works.
            ok(await c.call_tool("write_file", {"path": "stockade-mcp-test", "content": "x"}))
            r = ok(await c.call_tool("run_command", {"command": "test -e /etc/stockade-mcp-test; echo $?"}))
            assert r["stdout"] == "1\n"

    run(body)


def test_denied_network_is_a_tool_error_naming_the_host_and_audited(upstream, tmp_path):
    port, hits = upstream
    policy = tmp_path / "net.toml"
    policy.write_text(allowlist_policy(port))
    state = stdio_state()

    async def body():
        async with stdio_client(state, "--policy", str(policy)) as c:
            # Control: the allowed name reaches the upstream.
            before = len(hits)
            r = ok(await c.call_tool("run_code", {"language": "python", "code": PROBE, "args": ["api.test", str(port)]}))
            assert r["stdout"] == "hello from the upstream\n" and r["network_denied"] == []
            assert len(hits) == before + 1
            # The same probe to a name outside the allowlist: refused, and said so.
            res = await c.call_tool("run_code", {"language": "python", "code": PROBE, "args": ["evil.test", str(port)]})
            msg = err(res)
            assert msg.startswith(
                f"network: evil.test:{port} is not in the allowlist (the sandbox's network policy allows: api.test:{port})"
            ), msg
            assert res.structured_content["network_denied"] == [
                {"name": "evil.test", "port": port, "reason": "denied:not_in_allowlist"}
            ]
            assert len(hits) == before + 1, "a name outside the allowlist reached the upstream"
            # curl too.
            res = await c.call_tool("run_command", {"command": f"curl -sSf http://evil.test:{port}/"})
            assert err(res).startswith(f"network: evil.test:{port} is not in the allowlist")
            return res.structured_content["sandbox_id"]

    sid = run(body)
    net = [e for e in trail(state, sid) if e["type"] in ("net.dns", "net.connect")]
    assert any(e["name"] == "evil.test" and e["decision"] == "denied" and e["reason"] == "denied:not_in_allowlist" for e in net), net
    assert any(e["name"] == "api.test" and e["decision"] == "allowed" for e in net), net


def test_no_network_sandbox_says_so():
    async def body():
        async with stdio_client(stdio_state()) as c:
            res = await c.call_tool("run_command", {"command": "curl -sS http://api.example.com/"})
            msg = err(res)
            assert "network: this sandbox has no network access at all" in msg, msg
            assert res.structured_content["exit_code"] == 6  # curl: could not resolve host

    run(body)


def test_sandbox_is_made_on_first_use_and_destroyed_at_end_of_input():
    state = stdio_state()

    async def body():
        async with stdio_client(state) as c:
            await c.list_tools()
            assert not (state / "sandboxes").exists() or not any((state / "sandboxes").iterdir())
            return ok(await c.call_tool("run_command", {"command": "true"}))["sandbox_id"]

    sid = run(body)
    events = wait_for("the sandbox's end", lambda: (lambda e: e if e[-1]["type"] == "sandbox.destroyed" else None)(trail(state, sid)))
    assert events[-1]["clean"] is True
    assert [d.name for d in (state / "sandboxes").iterdir()] == [sid]


def test_idle_timeout_destroys_the_sandbox_and_the_next_call_gets_a_new_one():
    state = stdio_state()

    async def body():
        async with stdio_client(state, "--timeout", "2") as c:
            first = ok(await c.call_tool("write_file", {"path": "f", "content": "x"}))["sandbox_id"]
            await anyio.sleep(4.5)
            res = await c.call_tool("read_file", {"path": "f"})
            assert err(res).startswith("file not found")
            second = res.structured_content["sandbox_id"]
            assert second != first
            r = ok(await c.call_tool("run_command", {"command": "true"}))
            assert r["sandbox_id"] == second
            return first

    first = run(body)
    old = trail(state, first)
    hits = [e for e in old if e["type"] == "limit.hit"]
    assert hits and hits[0]["limit"] == "timeout" and "idle" in hits[0]["detail"], hits
    assert old[-1]["type"] == "sandbox.destroyed" and old[-1]["reason"] == "timeout" and old[-1]["clean"]


def test_legacy_handshake_over_stdio():
    async def body():
        async with stdio_client(stdio_state(), mode="legacy") as c:
            assert c.session.protocol_version == "2025-11-25"
            assert ok(await c.call_tool("run_command", {"command": "echo legacy"}))["stdout"] == "legacy\n"

    run(body)


def test_sigterm_destroys_the_sandbox_and_exits_0():
    """A client that stops the server with SIGTERM (raw JSON-RPC lines on the pipes)."""
    state = stdio_state()
    p = subprocess.Popen(
        [os.environ["STOCKADE_BIN"], "--state-dir", str(state), "mcp"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def call(msg, answer=True):
            p.stdin.write(json.dumps(msg) + "\n")
            p.stdin.flush()
            return json.loads(p.stdout.readline()) if answer else None

        init = call(
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}},
            }
        )
        assert init["result"]["serverInfo"]["name"] == "stockade"
        call({"jsonrpc": "2.0", "method": "notifications/initialized"}, answer=False)
        r = call({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "run_command", "arguments": {"command": "echo up"}}})
        assert r["result"]["structuredContent"]["stdout"] == "up\n", r
        sid = r["result"]["structuredContent"]["sandbox_id"]
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=30) == 0, p.stderr.read()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    last = trail(state, sid)[-1]
    assert last["type"] == "sandbox.destroyed" and last["clean"] is True, last


def test_memory_limit_kill_is_said_so(tmp_path):
    policy = tmp_path / "mem.toml"
    policy.write_text('[limits]\nmemory = "128MiB"\n')
    hog = "python3 -c 'x = bytearray({n} * 1024 * 1024); print(len(x) // 1048576)'"

    async def body():
        async with stdio_client(stdio_state(), "--policy", str(policy)) as c:
            # Control: well under the limit.
            assert ok(await c.call_tool("run_command", {"command": hog.format(n=16)}))["stdout"] == "16\n"
            res = await c.call_tool("run_command", {"command": hog.format(n=1024)})
            msg = err(res)
            assert msg.startswith("killed by SIGKILL (exit code 137): in this sandbox that is most often its memory limit (limits.memory = 128MiB"), msg
            assert res.structured_content["exit_code"] == 137
            # A signal of its own is said as such; the audit summary shows it too.
            res = await c.call_tool("run_command", {"command": "kill -SEGV $$"})
            assert err(res).startswith("killed by SIGSEGV (exit code 139)")
            t = text(await c.call_tool("get_audit", {}))
            assert "$ /bin/sh -c 'kill -SEGV $$'  -> killed by signal 11" in t, t
            # A working directory that does not exist.
            msg = err(await c.call_tool("run_command", {"command": "pwd", "cwd": "/nonexistent"}))
            assert msg.startswith("could not start the command (exit code 125): cannot enter /nonexistent"), msg

    run(body)
