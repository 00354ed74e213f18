"""Sandbox.run: exact output and status, streamed callbacks, argv vs shell, 127, timeouts,
background processes."""

from __future__ import annotations

import threading
import time

import pytest

import stockade
from conftest import events_of


def test_shell_string_exact_stdout_stderr_and_exit_code(sbx: stockade.Sandbox) -> None:
    r = sbx.run("printf 'out 1\\nout 2\\n'; printf 'err\\n' >&2; exit 3")
    assert (r.exit_code, r.stdout, r.stderr) == (3, "out 1\nout 2\n", "err\n")
    assert r.end == "exited" and r.signal is None and not r.ok
    assert r.output_bytes == len("out 1\nout 2\nerr\n")
    ok = sbx.run("true")
    assert ok.exit_code == 0 and ok.ok and ok.stdout == ""


def test_argv_is_passed_verbatim_without_a_shell(sbx: stockade.Sandbox) -> None:
    r = sbx.run(["printf", "%s|", "a b", "$HOME", "'q'", "*"])
    assert r.stdout == "a b|$HOME|'q'|*|"
    # Control: the same through the shell is expanded.
    assert sbx.run("printf '%s|' $HOME").stdout == "/home/sandbox|"


def test_binary_output_exact_bytes(sbx: stockade.Sandbox) -> None:
    r = sbx.run(["printf", "\\377\\000\\376ok"])
    assert r.stdout_bytes == b"\xff\x00\xfeok"
    assert r.stdout == "\ufffd\x00\ufffdok"


def test_callbacks_receive_the_streamed_output_in_order(sbx: stockade.Sandbox) -> None:
    got: list[tuple[str, str, float]] = []
    script = "echo o1; sleep 0.2; echo e1 >&2; sleep 0.2; echo o2; sleep 0.2; echo e2 >&2; sleep 1; echo last"
    r = sbx.run(
        script,
        on_stdout=lambda t: got.append(("out", t, time.monotonic())),
        on_stderr=lambda t: got.append(("err", t, time.monotonic())),
    )
    ended = time.monotonic()
    assert [(s, t) for s, t, _ in got] == [
        ("out", "o1\n"),
        ("err", "e1\n"),
        ("out", "o2\n"),
        ("err", "e2\n"),
        ("out", "last\n"),
    ]
    assert "".join(t for s, t, _ in got if s == "out") == r.stdout
    assert "".join(t for s, t, _ in got if s == "err") == r.stderr
    # Streamed, not delivered at the end: "e2" came a second before the process ended.
    assert ended - got[3][2] > 0.7, got


def test_callbacks_never_split_a_utf8_character(sbx: stockade.Sandbox) -> None:
    got: list[str] = []
    # "é" is \303\251: its two bytes arrive in two chunks.
    r = sbx.run("printf '\\303'; sleep 0.3; printf '\\251\\n'", on_stdout=got.append)
    assert r.stdout == "é\n"
    assert "".join(got) == "é\n" and "\ufffd" not in "".join(got), got


def test_cwd_env_and_stdin(sbx: stockade.Sandbox) -> None:
    r = sbx.run("pwd; echo \"$GREETING\"; cat", cwd="/tmp", env={"GREETING": "hello there"}, stdin="from stdin")
    assert r.stdout == "/tmp\nhello there\nfrom stdin"
    # Control: without them, the home, no variable, empty stdin.
    assert sbx.run("pwd; echo \"[$GREETING]\"; cat").stdout == "/home/sandbox\n[]\n"


def test_exit_127_is_command_not_found(sbx: stockade.Sandbox) -> None:
    with pytest.raises(stockade.CommandNotFound) as e:
        sbx.run("no-such-program-xyz --flag")
    assert e.value.exit_code == 127
    assert e.value.result is not None and "not found" in e.value.stderr
    assert "no-such-program-xyz" in str(e.value) and "PATH" in str(e.value)
    # As argv, the sandbox refuses to start it: the same exception, from the server's 400.
    with pytest.raises(stockade.CommandNotFound) as e2:
        sbx.run(["no-such-program-xyz"])
    assert e2.value.exit_code == 127 and e2.value.status == 400 and e2.value.code == "command_not_found"
    # Control: a program that exists.
    assert sbx.run(["sh", "-c", "exit 0"]).exit_code == 0
    exits = [x.get("exit_code") for x in events_of(sbx.trace(), "exec.exited")]
    assert exits.count(127) == 2 and 0 in exits, exits


def test_exit_126_is_command_not_executable(sbx: stockade.Sandbox) -> None:
    sbx.files.write("script.sh", "#!/bin/sh\necho ran\n")  # mode 0644: not executable
    with pytest.raises(stockade.CommandNotExecutable) as e:
        sbx.run("./script.sh")
    assert e.value.exit_code == 126
    sbx.run("chmod +x script.sh")
    assert sbx.run("./script.sh").stdout == "ran\n"


def test_check_raises_command_failed_on_nonzero(sbx: stockade.Sandbox) -> None:
    assert sbx.run("echo no >&2; exit 4").exit_code == 4
    with pytest.raises(stockade.CommandFailed) as e:
        sbx.run("echo no >&2; exit 4", check=True)
    assert e.value.exit_code == 4 and e.value.stderr == "no\n" and "exited with 4" in str(e.value)
    assert sbx.run("exit 0", check=True).exit_code == 0


def test_timeout_kills_the_process_and_raises(sbx: stockade.Sandbox) -> None:
    t0 = time.monotonic()
    with pytest.raises(stockade.TimeoutError) as e:
        sbx.run("echo started; sleep 30; echo never", timeout=1)
    took = time.monotonic() - t0
    assert took < 10, took
    assert isinstance(e.value, TimeoutError)  # the built-in too
    r = e.value.result
    assert r is not None and r.end == "timeout" and r.signal == 9 and r.exit_code == 137
    assert r.stdout == "started\n"
    assert "timeout" in str(e.value) and "timeout=" in str(e.value)
    ev = sbx.trace()
    hits = [x for x in events_of(ev, "limit.hit") if x.exec_id == r.exec_id]
    assert hits and hits[0]["limit"] == "timeout", ev
    assert not sbx.processes(), "the timed-out process still runs"
    # Control: the same command with time to spare.
    assert sbx.run("echo started; sleep 0.2; echo done", timeout=10).stdout == "started\ndone\n"


def test_background_process_wait(sbx: stockade.Sandbox) -> None:
    got: list[str] = []
    p = sbx.run("echo begin; sleep 1; echo done", background=True, on_stdout=got.append)
    assert isinstance(p, stockade.CommandHandle)
    assert p.pid > 0 and p.exec_id
    assert p.pid in [x.pid for x in sbx.processes()]
    assert p.exit_code is None and not p.done
    # The caller goes on while it runs.
    assert sbx.run("echo meanwhile").stdout == "meanwhile\n"
    r = p.wait(timeout=30)
    assert (r.exit_code, r.stdout) == (0, "begin\ndone\n")
    assert "".join(got) == "begin\ndone\n"
    assert p.done and p.exit_code == 0
    assert p.pid not in [x.pid for x in sbx.processes()]


def test_background_process_kill(sbx: stockade.Sandbox) -> None:
    p = sbx.run(["sleep", "30"], background=True)
    with pytest.raises(stockade.TimeoutError):
        p.wait(timeout=0.5)  # still running: the wait gives up, the process goes on
    assert p.pid in [x.pid for x in sbx.processes()]
    t0 = time.monotonic()
    assert p.kill() is True
    r = p.wait(timeout=10)
    assert time.monotonic() - t0 < 5
    assert (r.exit_code, r.signal) == (137, 9)
    assert sbx.processes() == []
    assert p.kill() is False  # already gone
    exited = [x for x in events_of(sbx.trace(), "exec.exited") if x.exec_id == p.exec_id]
    assert exited and exited[0].get("signal") == 9, exited


def test_background_processes_run_concurrently(sbx: stockade.Sandbox) -> None:
    t0 = time.monotonic()
    ps = [sbx.run(f"sleep 1; echo {i}", background=True) for i in range(3)]
    outs = [p.wait(timeout=30).stdout for p in ps]
    assert outs == ["0\n", "1\n", "2\n"]
    assert time.monotonic() - t0 < 2.9, "the processes ran one after another"


def test_threads_share_one_sandbox(sbx: stockade.Sandbox) -> None:
    results: dict[int, str] = {}

    def work(i: int) -> None:
        results[i] = sbx.run(["sh", "-c", f"echo {i}"]).stdout

    ts = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert results == {i: f"{i}\n" for i in range(4)}


def test_bad_arguments_fail_before_any_request(sbx: stockade.Sandbox) -> None:
    before = len(sbx.trace())
    for bad in ("", "   ", []):
        with pytest.raises(stockade.ConfigurationError):
            sbx.run(bad)
    with pytest.raises(stockade.ConfigurationError, match="timeout"):
        sbx.run("true", timeout=0)
    assert len(sbx.trace()) == before


def test_background_process_timeout(sbx: stockade.Sandbox) -> None:
    p = sbx.run("echo x; sleep 30", background=True, timeout=1)
    with pytest.raises(stockade.TimeoutError) as e:
        p.wait(timeout=15)
    r = e.value.result
    assert r is not None and (r.end, r.signal, r.stdout) == ("timeout", 9, "x\n")
    # Control: the same kind of process with no timeout ends on its own.
    q = sbx.run("sleep 0.2; echo y", background=True)
    assert q.wait(timeout=15).stdout == "y\n"
