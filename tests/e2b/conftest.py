"""Shared fixtures: the server `run.sh` started, its native API (for audit events), sandboxes.

Every test needs the environment run.sh sets; without it a test fails with the reason (it never
passes by not running).

Isolation level: `run.sh --level gvisor|microvm` adds a template at that level and sets
STOCKADE_E2B_LEVEL and STOCKADE_E2B_TEMPLATE; the SDK's default template (`Sandbox.create()`
without `template=`) is then that one, templates the tests add get the same level, and every
sandbox a fixture makes is checked to run at it (`sandbox.created`). Without the flag: `base`,
the container level.
"""

import json
import os
import subprocess
import time
import urllib.error
import urllib.request

import pytest
from e2b import AsyncSandbox, Sandbox

NEEDED = ("E2B_API_KEY", "E2B_API_URL", "E2B_SANDBOX_URL", "STOCKADE_BIN", "STOCKADE_STATE_DIR")

# The level every sandbox of the suite runs at and the template the SDK uses by default.
LEVEL = os.environ.get("STOCKADE_E2B_LEVEL") or "container"
DEFAULT_TEMPLATE = os.environ.get("STOCKADE_E2B_TEMPLATE") or "base"
Sandbox.default_template = DEFAULT_TEMPLATE
AsyncSandbox.default_template = DEFAULT_TEMPLATE


@pytest.fixture(scope="session", autouse=True)
def environment():
    missing = [v for v in NEEDED if not os.environ.get(v)]
    if missing:
        pytest.fail(f"run these tests with tests/e2b/run.sh (missing {', '.join(missing)})")


def api(path, method="GET", body=None, headers=None, base=None):
    """A raw HTTP/1.1 call to the server: (status, parsed JSON body or text)."""
    url = (base or os.environ["E2B_API_URL"]) + path
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    h = {"Authorization": "Bearer " + os.environ.get("E2B_API_KEY", "")}
    if body is not None and not isinstance(body, bytes):
        h["Content-Type"] = "application/json"
    h.update(headers or {})
    h = {k: v for k, v in h.items() if v is not None}
    req = urllib.request.Request(url, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


def audit_events(sandbox_id):
    """The sandbox's audit trail through the native API (`GET /v1/sandboxes/{id}/events`)."""
    status, body = api(f"/v1/sandboxes/{sandbox_id}/events")
    assert status == 200, f"events of {sandbox_id}: {status} {body}"
    return body


def wait_for(what, check, timeout=15.0, every=0.2):
    end = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > end:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def stockade(*args):
    """Runs the stockade CLI on the server's state directory; returns stdout (fails on error)."""
    r = subprocess.run(
        [os.environ["STOCKADE_BIN"], "--state-dir", os.environ["STOCKADE_STATE_DIR"], *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, f"stockade {' '.join(args)}: {r.returncode}\n{r.stderr}"
    return r.stdout


def at_level(policy_toml):
    """`policy_toml` at the suite's level (unchanged at the container level)."""
    if LEVEL == "container":
        return policy_toml
    out = f'level = "{LEVEL}"\n' + policy_toml
    if LEVEL == "microvm":
        assert "[security]" not in policy_toml, "merge allow_emulated into the test's [security]"
        out += "\n[security]\nallow_emulated = true\n"
    return out


def assert_level(sandbox_id):
    """The sandbox runs at the suite's level: its `sandbox.created` says so."""
    created = [e for e in audit_events(sandbox_id) if e["type"] == "sandbox.created"]
    assert len(created) == 1, created
    assert created[0]["enforced"]["level"] == LEVEL, created[0]["enforced"]


def add_template(name, policy_toml, tmp_path):
    p = tmp_path / f"{name}.toml"
    p.write_text(at_level(policy_toml))
    stockade("template", "add", name, "--policy", str(p))


@pytest.fixture
def sbx():
    s = Sandbox.create(timeout=600)
    try:
        assert_level(s.sandbox_id)
        yield s
    finally:
        s.kill()
