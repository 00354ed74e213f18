"""The Connect protocol on the wire, without the SDK: envelopes, end-of-stream errors, unary
error bodies, keepalives; and the async SDK, whose watch_dir is the streaming WatchDir call."""

import asyncio
import json
import os
import struct
import urllib.parse
import http.client

from e2b import AsyncSandbox
from e2b.sandbox.filesystem.watch_handle import FilesystemEventType


def envd(sbx, method, body, stream=False, headers=None):
    """POST an envd call over HTTP/1.1: (status, content type, raw body)."""
    u = urllib.parse.urlparse(os.environ["E2B_SANDBOX_URL"])
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    payload = json.dumps(body).encode()
    if stream:
        payload = struct.pack(">BI", 0, len(payload)) + payload
    h = {
        "Content-Type": "application/connect+json" if stream else "application/json",
        "Connect-Protocol-Version": "1",
        "E2b-Sandbox-Id": sbx.sandbox_id,
        "E2b-Sandbox-Port": "49983",
        "X-Access-Token": sbx._envd_access_token,
    }
    h.update(headers or {})
    c.request("POST", method, payload, h)
    r = c.getresponse()
    return r.status, r.getheader("Content-Type"), r.read()


def frames(raw):
    """Split an enveloped body into (flags, JSON) pairs; the whole body must be envelopes."""
    out = []
    while raw:
        assert len(raw) >= 5, f"truncated envelope: {raw!r}"
        flags, n = struct.unpack(">BI", raw[:5])
        out.append((flags, json.loads(raw[5 : 5 + n])))
        raw = raw[5 + n :]
    return out


def test_start_stream_is_enveloped_with_keepalives_and_a_clean_end(sbx):
    status, ct, raw = envd(
        sbx,
        "/process.Process/Start",
        {"process": {"cmd": "/bin/sh", "args": ["-c", "sleep 2.5; printf hi"]}, "stdin": False},
        stream=True,
        headers={"Keepalive-Ping-Interval": "1"},
    )
    assert status == 200 and ct == "application/connect+json", (status, ct, raw)
    f = frames(raw)
    assert f[0][0] == 0 and "pid" in f[0][1]["event"]["start"], f
    kinds = [list(m["event"])[0] for flags, m in f[:-1]]
    assert kinds.count("keepalive") >= 2, kinds
    data = [m["event"]["data"]["stdout"] for _, m in f[:-1] if "data" in m["event"]]
    assert data == ["aGk="], f  # base64("hi")
    end = [m["event"]["end"] for _, m in f[:-1] if "end" in m["event"]]
    assert end == [{"exitCode": 0, "exited": True, "status": "exit status 0"}], f
    assert f[-1] == (2, {}), f  # end of stream, no error


def test_stream_errors_come_in_the_end_of_stream_envelope(sbx):
    status, ct, raw = envd(sbx, "/process.Process/Connect", {"process": {"pid": 999999}}, stream=True)
    assert status == 200 and ct == "application/connect+json"
    f = frames(raw)
    assert len(f) == 1 and f[0][0] == 2, f
    assert f[0][1]["error"]["code"] == "not_found", f
    status, ct, raw = envd(sbx, "/process.Process/Start", {"process": {"cmd": "/no/such/binary"}}, stream=True)
    f = frames(raw)
    assert f[-1][0] == 2 and f[-1][1]["error"]["code"] == "invalid_argument", f


def test_unary_errors_are_json_with_the_codes_status(sbx):
    status, ct, raw = envd(sbx, "/process.Process/SendSignal", {"process": {"pid": 999999}, "signal": "SIGNAL_SIGKILL"})
    assert status == 404 and ct == "application/json", (status, ct, raw)
    assert json.loads(raw)["code"] == "not_found"
    status, _, raw = envd(sbx, "/process.Process/SendSignal", {"process": {"pid": 1}, "signal": "SIGNAL_SIGHUP"})
    assert status == 501 and json.loads(raw)["code"] == "unimplemented", raw
    status, _, raw = envd(sbx, "/filesystem.Filesystem/Stat", {"path": "/nope"})
    assert status == 404 and json.loads(raw)["code"] == "not_found", raw
    status, _, raw = envd(sbx, "/filesystem.Filesystem/Stat", {"path": "~"})
    entry = json.loads(raw)["entry"]
    assert status == 200 and entry["path"] == "/home/user" and entry["type"] == "FILE_TYPE_DIRECTORY", raw
    # A streaming call sent as unary (and the reverse) is refused, not misread.
    status, _, raw = envd(sbx, "/process.Process/List", {}, stream=True)
    assert status == 501 and json.loads(raw)["code"] == "unimplemented", raw
    # A broken message is invalid_argument.
    status, _, raw = envd(sbx, "/filesystem.Filesystem/ListDir", {"path": "/", "depth": "x"})
    assert status == 400 and json.loads(raw)["code"] == "invalid_argument", raw


def test_async_sdk_commands_and_streaming_watch():
    async def main():
        s = await AsyncSandbox.create()
        try:
            r = await s.commands.run("echo async")
            assert r.stdout == "async\n"
            await s.files.make_dir("w")
            seen = []
            handle = await s.files.watch_dir("w", on_event=seen.append)
            await s.files.write("w/x.txt", "x")
            for _ in range(50):
                if any(e.name == "x.txt" and e.type == FilesystemEventType.CREATE for e in seen):
                    break
                await asyncio.sleep(0.1)
            await handle.stop()
            assert any(e.name == "x.txt" and e.type == FilesystemEventType.CREATE for e in seen), seen
        finally:
            await s.kill()

    asyncio.run(main())


def test_a_broken_gzip_upload_is_400_and_leaves_nothing(sbx):
    u = urllib.parse.urlparse(os.environ["E2B_SANDBOX_URL"])
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    c.request(
        "POST",
        "/files?path=broken.txt",
        b"\x1f\x8b\x08\x00not really gzip" * 100,
        {
            "Content-Type": "application/octet-stream",
            "Content-Encoding": "gzip",
            "E2b-Sandbox-Id": sbx.sandbox_id,
            "X-Access-Token": sbx._envd_access_token,
        },
    )
    r = c.getresponse()
    body = json.loads(r.read())
    assert r.status == 400 and body["code"] == 400 and "decompress" in body["message"], body
    assert not sbx.files.exists("broken.txt")
    # Control: a real gzip body is inflated into the file.
    import gzip

    c.request(
        "POST",
        "/files?path=fine.txt",
        gzip.compress(b"inflated"),
        {
            "Content-Type": "application/octet-stream",
            "Content-Encoding": "gzip",
            "E2b-Sandbox-Id": sbx.sandbox_id,
            "X-Access-Token": sbx._envd_access_token,
        },
    )
    r = c.getresponse()
    assert r.status == 200, r.read()
    assert json.loads(r.read()) == [{"name": "fine.txt", "type": "file", "path": "/home/user/fine.txt"}]
    assert sbx.files.read("fine.txt") == "inflated"
