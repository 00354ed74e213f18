"""Commands through the SDK: exit codes, streamed output, background processes, stdin, kill,
re-attaching, timeouts, the acting user; each checked against the audit trail where it says
something."""

import hashlib
import time

import pytest
from e2b import CommandExitException
from e2b.exceptions import TimeoutException

from conftest import audit_events, wait_for


def test_output_reaches_the_callbacks_exactly(sbx):
    out, err = [], []
    r = sbx.commands.run(
        "printf 'a\\nb\\n'; printf 'only err' >&2; printf 'no newline at the end'",
        on_stdout=out.append,
        on_stderr=err.append,
    )
    assert r.exit_code == 0 and r.error is None
    assert "".join(out) == r.stdout == "a\nb\nno newline at the end"
    assert "".join(err) == r.stderr == "only err"


def test_large_output_is_streamed_whole(sbx):
    # 3 MiB of pseudo-random bytes as hex (6 MiB of text) in many chunks.
    cmd = "head -c 3145728 /dev/urandom | tee /tmp/blob | od -An -v -tx1 | tr -d ' \\n'"
    chunks = []
    r = sbx.commands.run(cmd, on_stdout=chunks.append, timeout=120)
    assert len(r.stdout) == 2 * 3 * 1024 * 1024
    assert len(chunks) > 1, "output should arrive in several data events"
    digest = sbx.commands.run("sha256sum /tmp/blob | cut -d' ' -f1").stdout.strip()
    assert hashlib.sha256(bytes.fromhex(r.stdout)).hexdigest() == digest


def test_a_failing_command_raises_with_its_exit_code_and_is_audited(sbx):
    with pytest.raises(CommandExitException) as e:
        sbx.commands.run("echo to-stderr >&2; exit 3")
    assert e.value.exit_code == 3
    assert e.value.stderr == "to-stderr\n"
    assert e.value.error == "exit status 3"
    # A missing binary is bash's 127, not a silent success.
    with pytest.raises(CommandExitException) as e:
        sbx.commands.run("definitely-not-a-command-xyz")
    assert e.value.exit_code == 127
    assert "command not found" in e.value.stderr
    events = audit_events(sbx.sandbox_id)
    exits = [x for x in events if x["type"] == "exec.exited"]
    assert any(x.get("exit_code") == 3 for x in exits), exits
    assert any(x.get("exit_code") == 127 for x in exits), exits
    started = [x for x in events if x["type"] == "exec.started"]
    assert any(x["argv"] == ["/bin/bash", "-l", "-c", "echo to-stderr >&2; exit 3"] for x in started)


def test_background_command_wait_and_kill(sbx):
    h = sbx.commands.run("sleep 120", background=True)
    assert h.pid in [p.pid for p in sbx.commands.list()]
    info = next(p for p in sbx.commands.list() if p.pid == h.pid)
    assert info.cmd == "/bin/bash" and info.args == ["-l", "-c", "sleep 120"]
    assert h.kill() is True
    with pytest.raises(CommandExitException) as e:
        h.wait()
    # As envd reports a killed process (Go's ProcessState).
    assert e.value.exit_code == -1
    assert e.value.error == "signal: killed"
    wait_for("the process to leave the list", lambda: h.pid not in [p.pid for p in sbx.commands.list()])
    assert sbx.commands.kill(h.pid) is False  # not found any more
    exits = [x for x in audit_events(sbx.sandbox_id) if x["type"] == "exec.exited"]
    assert any(x.get("signal") == 9 for x in exits), exits


def test_background_command_finishes_on_its_own(sbx):
    h = sbx.commands.run("sleep 0.5; echo done", background=True)
    r = h.wait()
    assert r.exit_code == 0 and r.stdout == "done\n"


def test_stdin_send_stream_and_close(sbx):
    h = sbx.commands.run("cat", background=True, stdin=True)
    h.send_stdin("first line\n")
    sbx.commands.send_stdin(h.pid, b"second \x00 line\n")
    sbx.commands.stream_input(h.pid, [b"third\n", "fourth\n"])
    h.close_stdin()
    r = h.wait()
    assert r.stdout == "first line\nsecond \x00 line\nthird\nfourth\n"
    # Without stdin=True the process reads EOF at once, and input is refused.
    h = sbx.commands.run("cat; echo eof", background=True)
    assert h.wait().stdout == "eof\n"


def test_connect_to_a_running_command_by_pid(sbx):
    h = sbx.commands.run("for i in 1 2 3 4 5 6; do echo line$i; sleep 0.3; done", background=True)
    time.sleep(0.5)
    again = sbx.commands.connect(h.pid)
    r = again.wait()
    assert r.exit_code == 0
    assert r.stdout.endswith("line6\n"), r.stdout
    assert h.wait().stdout.startswith("line1\n")


def test_the_command_timeout_kills_the_process(sbx):
    with pytest.raises(TimeoutException):
        sbx.commands.run("sleep 60; echo should-not-run > /tmp/late", timeout=2)
    # The server applied the same deadline to the process itself (as envd does).
    wait_for(
        "the timed-out process to be killed",
        lambda: all("sleep 60" not in " ".join(p.args) for p in sbx.commands.list()),
        timeout=10,
    )
    exits = [x for x in audit_events(sbx.sandbox_id) if x["type"] == "exec.exited"]
    assert any(x.get("signal") == 9 for x in exits), exits


def test_env_cwd_and_the_acting_user(sbx):
    r = sbx.commands.run('printf "%s|" "$FOO" "$PWD" "$(id -un)" "$HOME"', envs={"FOO": "bar"}, cwd="/tmp")
    assert r.stdout == "bar|/tmp|user|/home/user|"
    r = sbx.commands.run("pwd; id -u")
    assert r.stdout == "/home/user\n1000\n"
    # Relative cwd is under the home, as in envd.
    sbx.files.make_dir("work/dir")
    assert sbx.commands.run("pwd", cwd="work/dir").stdout == "/home/user/work/dir\n"
    # "root" is accepted but runs as the sandbox's user: uid 0 inside is not available.
    assert sbx.commands.run("id -u", user="root").stdout == "1000\n"
    with pytest.raises(Exception, match="no user"):
        sbx.commands.run("true", user="nobody-here")
