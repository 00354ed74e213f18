"""Files through the SDK: write/read (multipart, octet-stream, gzip), list, exists, make_dir,
rename, remove, watch; paths stay inside the sandbox; errors are the SDK's exceptions; a full
disk is 507."""

import io
import os
import uuid

import pytest
from e2b import Sandbox
from e2b.exceptions import (
    InvalidArgumentException,
    NotEnoughSpaceException,
    NotFoundException,
    SandboxException,
    TemplateException,
)
from e2b.sandbox.filesystem.filesystem import FileType
from e2b.sandbox.filesystem.watch_handle import FilesystemEventType

from conftest import LEVEL, add_template, audit_events, wait_for


def test_write_and_read_back_text_bytes_and_large_files(sbx):
    info = sbx.files.write("hello.txt", "héllo\n")
    assert (info.name, info.path, info.type) == ("hello.txt", "/home/user/hello.txt", FileType.FILE)
    assert sbx.files.read("hello.txt") == "héllo\n"
    every_byte = bytes(range(256)) * 4
    sbx.files.write("/tmp/bytes.bin", every_byte)
    assert bytes(sbx.files.read("/tmp/bytes.bin", format="bytes")) == every_byte
    big = os.urandom(5 * 1024 * 1024 + 3)
    # A file object goes as application/octet-stream (envd >= 0.5.7), gzip on top.
    sbx.files.write("big.bin", io.BytesIO(big))
    assert bytes(sbx.files.read("big.bin", format="bytes")) == big
    sbx.files.write("big.gz.bin", big, gzip=True)
    assert bytes(sbx.files.read("big.gz.bin", format="bytes")) == big
    streamed = b"".join(sbx.files.read("big.bin", format="stream"))
    assert streamed == big
    # Inside, the command sees the same bytes.
    assert sbx.commands.run("cat hello.txt").stdout == "héllo\n"
    # (wc, not stat: coreutils 9's statx is EINVAL under gVisor 2022, docs/isolation-levels.md)
    assert sbx.commands.run("wc -c < big.bin").stdout == f"{len(big)}\n"
    # Several files in one multipart upload.
    infos = sbx.files.write_files([{"path": "m/one.txt", "data": "1"}, {"path": "m/two.txt", "data": b"2"}])
    assert sorted(i.path for i in infos) == ["/home/user/m/one.txt", "/home/user/m/two.txt"]
    assert sbx.files.read("m/two.txt") == "2"
    changed = [e for e in audit_events(sbx.sandbox_id) if e["type"] == "file.changed"]
    assert any(e["path"] == "/home/user/big.bin" and e["size"] == len(big) for e in changed), changed


def test_list_exists_make_dir_rename_remove(sbx):
    assert sbx.files.make_dir("d/e") is True
    assert sbx.files.make_dir("d/e") is False  # already there
    sbx.files.write("d/e/f.txt", "f")
    sbx.files.write("d/top.txt", "t")
    one = sorted((e.name, e.type) for e in sbx.files.list("d"))
    assert one == [("e", FileType.DIR), ("top.txt", FileType.FILE)]
    two = sorted(e.path for e in sbx.files.list("d", depth=2))
    assert two == ["/home/user/d/e", "/home/user/d/e/f.txt", "/home/user/d/top.txt"]
    entry = sbx.files.get_info("d/top.txt")
    assert (entry.size, entry.permissions, entry.owner) == (1, "-rw-r--r--", "user")
    assert entry.modified_time.year >= 2024
    assert sbx.files.exists("d/e/f.txt") and not sbx.files.exists("d/nope")
    moved = sbx.files.rename("d/e/f.txt", "d/g.txt")
    assert moved.path == "/home/user/d/g.txt"
    assert not sbx.files.exists("d/e/f.txt") and sbx.files.read("d/g.txt") == "f"
    sbx.commands.run("ln -s /etc/hostname d/link")
    link = sbx.files.get_info("d/link")
    assert link.type == FileType.SYMLINK and link.symlink_target == "/etc/hostname"
    sbx.files.remove("d")
    assert not sbx.files.exists("d")


def test_errors_are_the_sdks_exceptions(sbx):
    with pytest.raises(NotFoundException):
        sbx.files.read("missing.txt")
    with pytest.raises(NotFoundException):
        sbx.files.list("missing-dir")
    with pytest.raises(NotFoundException):
        sbx.files.remove("missing.txt")
    sbx.files.make_dir("adir")
    with pytest.raises(InvalidArgumentException):
        sbx.files.read("adir")
    sbx.files.write("afile", "x")
    with pytest.raises(InvalidArgumentException):
        sbx.files.make_dir("afile")
    with pytest.raises(InvalidArgumentException):
        sbx.files.list("afile")
    # Metadata needs envd 0.6.2, above what stockade reports: the SDK refuses it itself.
    with pytest.raises(TemplateException):
        sbx.files.write("meta.txt", "x", metadata={"k": "v"})


def test_paths_stay_inside_the_sandbox(sbx):
    name = f"e2b-escape-{uuid.uuid4().hex}"
    sbx.files.write(f"/tmp/{name}", "inside")
    sbx.files.write(f"../../../../tmp/{name}-dots", "inside")
    # The sandbox sees them (control)...
    assert sbx.commands.run(f"cat /tmp/{name} /tmp/{name}-dots").stdout == "insideinside"
    # ...the host does not.
    assert not os.path.exists(f"/tmp/{name}") and not os.path.exists(f"/tmp/{name}-dots")
    # A symlink pointing out is resolved inside: the host file it names is not written.
    sbx.commands.run(f"ln -s /tmp/{name}-target link-out")
    sbx.files.write("link-out", "through the link")
    assert not os.path.exists(f"/tmp/{name}-target")
    # The host's files are not readable through the API: /etc/shadow of the sandbox is not the
    # host's (the sandbox has none, or one it cannot read).
    with pytest.raises(SandboxException):
        sbx.files.read("/etc/shadow")
    # The read-only system stays read-only.
    with pytest.raises(SandboxException):
        sbx.files.write("/usr/bin/e2b-test-should-fail", "x")


def test_watch_dir_sees_a_write(sbx):
    sbx.files.make_dir("watched")
    w = sbx.files.watch_dir("watched")
    sbx.files.write("watched/new.txt", "data")
    sbx.commands.run("echo more >> watched/new.txt; mkdir watched/sub")
    seen = []

    def got():
        seen.extend(w.get_new_events())
        names = {(e.name, e.type) for e in seen}
        return ("new.txt", FilesystemEventType.CREATE) in names and (
            "sub",
            FilesystemEventType.CREATE,
        ) in names and ("new.txt", FilesystemEventType.WRITE) in names

    wait_for(f"watch events (got {seen})", got)
    w.stop()
    with pytest.raises(SandboxException):
        w.get_new_events()
    # Recursive watches see changes below too.
    r = sbx.files.watch_dir("watched", recursive=True)
    sbx.files.write("watched/sub/deep.txt", "x")
    wait_for("a recursive event", lambda: any(e.name == "sub/deep.txt" for e in r.get_new_events()))
    r.stop()


def test_a_full_disk_is_507(tmp_path):
    # At gvisor runsc sizes /tmp, HOME and /dev/shm on their own, so the budget is split evenly
    # between them (docs/gvisor.md): HOME gets a third, so the budget is three times as large
    # there for the same room in HOME (still far below the 32 MiB that must not fit).
    disk = "24MiB" if LEVEL == "gvisor" else "8MiB"
    add_template("smalldisk", f'[limits]\ndisk = "{disk}"\n', tmp_path)
    s = Sandbox.create(template="smalldisk")
    try:
        s.files.write("small.txt", b"x" * 1024)  # control: a small write fits
        with pytest.raises(NotEnoughSpaceException):
            s.files.write("huge.bin", io.BytesIO(os.urandom(32 * 1024 * 1024)))
        # Nothing is left behind: no partial file eating the disk.
        assert not s.files.exists("huge.bin")
        # An existing file keeps its content when its replacement does not fit.
        with pytest.raises(NotEnoughSpaceException):
            s.files.write("small.txt", io.BytesIO(os.urandom(32 * 1024 * 1024)))
        assert s.files.read("small.txt") == "x" * 1024
        assert sorted(e.name for e in s.files.list(".")) == ["small.txt"]
        # The space is there again.
        s.files.write("again.bin", os.urandom(2 * 1024 * 1024))
        assert s.files.get_info("again.bin").size == 2 * 1024 * 1024
    finally:
        s.kill()
