"""The SDK's debug mode (E2B_DEBUG=true): no control plane, envd at the debug listener (run.sh
starts it on a free port and the test points E2B_SANDBOX_URL at it; by default the SDK uses
localhost:49983), no access token."""

import os

from e2b import Sandbox

from conftest import api


def test_debug_mode_runs_against_the_debug_listener(monkeypatch):
    url = os.environ["STOCKADE_E2B_DEBUG_URL"]
    monkeypatch.setenv("E2B_DEBUG", "true")
    monkeypatch.setenv("E2B_SANDBOX_URL", url)
    monkeypatch.delenv("E2B_API_KEY")
    s = Sandbox.create()
    assert s.sandbox_id == "debug_sandbox_id"
    r = s.commands.run("echo $((2+3)); id -un")
    assert r.stdout == "5\nuser\n"
    s.files.write("debug.txt", "kept")
    # A second client in debug mode reaches the same sandbox.
    again = Sandbox.create()
    assert again.files.read("debug.txt") == "kept"
    assert again.commands.run("cat debug.txt").stdout == "kept"
    assert s.kill() is True  # the SDK skips the control plane in debug mode
    assert again.files.read("debug.txt") == "kept"
    # Control: the main listener does not know the debug sandbox by that name.
    status, body = api(
        "/process.Process/List",
        "POST",
        b"{}",
        headers={"Authorization": None, "Content-Type": "application/json", "E2b-Sandbox-Id": "debug_sandbox_id"},
    )
    assert status == 502, body
