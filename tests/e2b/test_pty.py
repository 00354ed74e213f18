"""A terminal through the SDK: create, type into it, resize it, kill it."""

import threading

from e2b.sandbox.commands.command_handle import PtySize

from conftest import wait_for


def test_pty_input_resize_and_kill(sbx):
    p = sbx.pty.create(PtySize(rows=24, cols=80))
    data = bytearray()
    done = {}

    def read():
        try:
            done["result"] = p.wait(on_pty=data.extend)
        except Exception as e:  # the kill ends it with an exit exception
            done["error"] = e

    t = threading.Thread(target=read, daemon=True)
    t.start()
    sbx.pty.send_stdin(p.pid, b"echo $((6*7)); stty size\n")
    wait_for("the shell's answer", lambda: b"24 80" in data and b"42" in data)
    sbx.pty.resize(p.pid, PtySize(rows=30, cols=100))
    sbx.pty.send_stdin(p.pid, b"stty size; tty\n")
    # Both answers, whatever chunks they arrive in (a microVM's output crosses the tunnel).
    wait_for("the new size and the terminal's name", lambda: b"30 100" in data and b"/dev/pts/" in data)
    assert p.pid in [x.pid for x in sbx.commands.list()]
    assert sbx.pty.kill(p.pid) is True
    t.join(15)
    assert not t.is_alive(), "the terminal's stream did not end after the kill"
    assert getattr(done.get("error"), "exit_code", None) == -1, done
    assert p.pid not in [x.pid for x in sbx.commands.list()]


def test_pty_exit_ends_the_stream(sbx):
    p = sbx.pty.create(PtySize(rows=10, cols=40))
    sbx.pty.send_stdin(p.pid, b"exit 0\n")
    data = bytearray()
    r = p.wait(on_pty=data.extend)
    assert r.exit_code == 0
    assert b"exit" in data
