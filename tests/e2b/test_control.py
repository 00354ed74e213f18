"""The control plane as the SDK uses it: create, info, list (filters, pages), timeout, connect,
kill; what a create may not ask for; keys and tokens checked."""

import datetime
import os
import re
import uuid

import pytest
from e2b import Sandbox, SandboxQuery, SandboxState
from e2b.exceptions import (
    AuthenticationException,
    SandboxException,
    SandboxNotFoundException,
    SandboxNotRunningException,
)
from packaging.version import Version

from conftest import DEFAULT_TEMPLATE, api


def test_create_reports_the_sandbox_and_the_envd_version(sbx):
    assert re.fullmatch(r"[0-9a-f]{16}", sbx.sandbox_id), sbx.sandbox_id
    # The version that gates the SDK's features (see crates/server/src/e2b/mod.rs).
    assert sbx._envd_version == Version("0.6.1")
    info = sbx.get_info()
    assert info.sandbox_id == sbx.sandbox_id
    assert info.template_id == DEFAULT_TEMPLATE
    assert info.state == SandboxState.RUNNING
    assert info.envd_version == "0.6.1"
    assert info.cpu_count >= 1 and info.memory_mb > 0
    assert info.allow_internet_access is False  # base has no network
    ttl = (info.end_at - info.started_at).total_seconds()
    assert 595 <= ttl <= 605, ttl
    assert sbx.is_running()


def test_metadata_and_env_vars_reach_the_sandbox():
    tag = uuid.uuid4().hex
    s = Sandbox.create(metadata={"suite": tag}, envs={"FROM_CREATE": "hello env"})
    try:
        assert s.get_info().metadata == {"suite": tag}
        assert s.commands.run("printf %s \"$FROM_CREATE\"").stdout == "hello env"
    finally:
        s.kill()


def test_list_filters_by_metadata_and_state_and_pages():
    tag = uuid.uuid4().hex
    a = Sandbox.create(metadata={"suite": tag, "n": "1"})
    b = Sandbox.create(metadata={"suite": tag, "n": "2 & more"})
    try:
        mine = Sandbox.list(query=SandboxQuery(metadata={"suite": tag})).next_items()
        assert sorted(s.sandbox_id for s in mine) == sorted([a.sandbox_id, b.sandbox_id])
        only_b = Sandbox.list(query=SandboxQuery(metadata={"suite": tag, "n": "2 & more"})).next_items()
        assert [s.sandbox_id for s in only_b] == [b.sandbox_id]
        assert Sandbox.list(query=SandboxQuery(metadata={"suite": "nope-" + tag})).next_items() == []
        paused = Sandbox.list(query=SandboxQuery(metadata={"suite": tag}, state=[SandboxState.PAUSED]))
        assert paused.next_items() == []
        # One per page: the x-next-token header drives the paginator.
        p = Sandbox.list(query=SandboxQuery(metadata={"suite": tag}), limit=1)
        first = p.next_items()
        assert len(first) == 1 and p.has_next
        second = p.next_items()
        assert len(second) == 1 and not p.has_next
        assert {first[0].sandbox_id, second[0].sandbox_id} == {a.sandbox_id, b.sandbox_id}
        # The deprecated v1 list answers too.
        status, body = api("/sandboxes?metadata=suite%3D" + tag)
        assert status == 200 and len(body) == 2, body
    finally:
        a.kill()
        b.kill()


def test_set_timeout_then_kill():
    s = Sandbox.create(timeout=600)
    s.set_timeout(30)
    info = s.get_info()
    left = (info.end_at - datetime.datetime.now(datetime.timezone.utc)).total_seconds()
    assert 20 <= left <= 31, left
    assert s.kill() is True
    assert Sandbox.kill(s.sandbox_id) is False  # already gone: 404
    with pytest.raises(SandboxNotFoundException):
        Sandbox.get_info(s.sandbox_id)
    assert s.is_running() is False
    with pytest.raises(SandboxNotRunningException):
        s.commands.run("true")
    assert s.sandbox_id not in [x.sandbox_id for x in Sandbox.list().next_items()]


def test_refresh_extends_and_connect_gives_its_own_token(sbx):
    status, _ = api(f"/sandboxes/{sbx.sandbox_id}/refreshes", "POST", {"duration": 900})
    assert status == 204
    left = (sbx.get_info().end_at - datetime.datetime.now(datetime.timezone.utc)).total_seconds()
    assert left > 850, left
    other = Sandbox.connect(sbx.sandbox_id)
    assert other.sandbox_id == sbx.sandbox_id
    assert other._envd_access_token and other._envd_access_token != sbx._envd_access_token
    other.files.write("from-connect.txt", "x")
    assert sbx.files.read("from-connect.txt") == "x"
    with pytest.raises(SandboxNotFoundException):
        Sandbox.connect("0123456789abcdef")


def test_create_refuses_what_it_cannot_honour():
    # base has no network: full internet access cannot be given (the control below: False is).
    with pytest.raises(SandboxException, match=r"400.*allow_internet_access"):
        Sandbox.create(allow_internet_access=True)
    with pytest.raises(SandboxException, match=r"400.*autoPause"):
        Sandbox.create(lifecycle={"on_timeout": "pause"})
    with pytest.raises(SandboxException, match=r"400.*allowPublicTraffic"):
        Sandbox.create(network={"allow_public_traffic": True})
    with pytest.raises(SandboxException, match=r"400.*allowOut"):
        Sandbox.create(network={"allow_out": ["pypi.org"]})
    with pytest.raises(SandboxException, match=r"400.*no template"):
        Sandbox.create(template="no-such-template")
    # Control: asking for what base already is works.
    s = Sandbox.create(allow_internet_access=False, network={"deny_out": ["0.0.0.0/0"]})
    s.kill()


def test_a_wrong_api_key_is_refused():
    with pytest.raises(AuthenticationException):
        Sandbox.list(api_key="sk_" + "0" * 43).next_items()
    with pytest.raises(AuthenticationException):
        Sandbox.create(api_key="e2b_" + "0" * 40)


def test_envd_checks_token_sandbox_and_port(sbx):
    def call(headers):
        h = {
            "Authorization": None,
            "Content-Type": "application/json",
            "E2b-Sandbox-Id": sbx.sandbox_id,
            "E2b-Sandbox-Port": "49983",
            "X-Access-Token": sbx._envd_access_token,
        }
        h.update(headers)
        return api("/process.Process/List", "POST", b"{}", headers=h)

    status, body = call({})
    assert status == 200 and body == {"processes": []}, body
    status, body = call({"X-Access-Token": "wrong"})
    assert status == 401, body
    status, body = call({"X-Access-Token": None})
    assert status == 401, body
    status, body = call({"E2b-Sandbox-Port": "8080"})
    assert status == 502 and "does not expose sandbox ports" in body["message"], body
    status, body = call({"E2b-Sandbox-Id": "0123456789abcdef"})
    assert status == 502 and "was not found" in body["message"], body
    # /health with the sandbox headers is envd's, not the native API's.
    status, body = api(
        "/health",
        headers={
            "Authorization": None,
            "E2b-Sandbox-Id": sbx.sandbox_id,
            "X-Access-Token": sbx._envd_access_token,
        },
    )
    assert status == 204, (status, body)
    status, body = api("/health", headers={"Authorization": None})
    assert status == 200 and body == {"status": "ok"}, body


def test_http11_works_as_well_as_http2(monkeypatch):
    monkeypatch.setenv("E2B_HTTP_VERSION", "1.1")
    s = Sandbox.create()
    try:
        assert s.connection_config.http_version == "1.1"
        assert s.commands.run("echo over http/1.1").stdout == "over http/1.1\n"
        s.files.write("h1.txt", "one")
        assert s.files.read("h1.txt") == "one"
    finally:
        s.kill()
    assert os.environ["E2B_HTTP_VERSION"] == "1.1"
