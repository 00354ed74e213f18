"""sbx.files: exact bytes both ways, listing, removal, the errors of a missing path or a
full disk."""

from __future__ import annotations

import hashlib
import os

import pytest

import stockade
from conftest import Server, events_of


def test_write_read_binary_exact(sbx: stockade.Sandbox) -> None:
    data = bytes(range(256)) * 64 + os.urandom(3 * 1024 * 1024 + 17)
    e = sbx.files.write("data/blob.bin", data)
    assert (e.path, e.kind, e.size) == ("/home/sandbox/data/blob.bin", "file", len(data))
    assert sbx.files.read("data/blob.bin") == data
    assert sbx.files.read("/home/sandbox/data/blob.bin") == data  # absolute: the same file
    # What a process inside sees is the same bytes.
    r = sbx.run(["sha256sum", "data/blob.bin"])
    assert r.stdout.split()[0] == hashlib.sha256(data).hexdigest()
    # And a file a process wrote reads back exactly.
    sbx.run("printf '\\000\\377\\n' > made.bin")
    assert sbx.files.read("made.bin") == b"\x00\xff\n"


def test_write_text_and_read_text(sbx: stockade.Sandbox) -> None:
    sbx.files.write("notes.txt", "héllo wörld ✓\n")
    assert sbx.files.read("notes.txt") == "héllo wörld ✓\n".encode()
    assert sbx.files.read_text("notes.txt") == "héllo wörld ✓\n"
    assert sbx.run("cat notes.txt").stdout == "héllo wörld ✓\n"
    sbx.files.write("notes.txt", "replaced")  # replaced, not appended
    assert sbx.files.read_text("notes.txt") == "replaced"
    changed = [e["path"] for e in events_of(sbx.trace(), "file.changed")]
    assert "/home/sandbox/notes.txt" in changed, changed


def test_list_stat_mkdir_move_remove(sbx: stockade.Sandbox) -> None:
    assert sbx.files.mkdir("proj/src") is True
    assert sbx.files.mkdir("proj/src") is False
    sbx.files.write("proj/a.txt", "aa")
    sbx.files.write("proj/src/b.py", "print(1)\n")
    top = {e.name: e for e in sbx.files.list("proj")}
    assert set(top) == {"a.txt", "src"}
    assert top["a.txt"].is_file and top["a.txt"].size == 2 and top["a.txt"].path == "/home/sandbox/proj/a.txt"
    assert top["src"].is_dir
    deep = {e.path for e in sbx.files.list("proj", depth=2)}
    assert deep == {"/home/sandbox/proj/a.txt", "/home/sandbox/proj/src", "/home/sandbox/proj/src/b.py"}
    assert sbx.files.stat("proj/src/b.py").size == 9
    moved = sbx.files.move("proj/a.txt", "proj/c.txt")
    assert moved.path == "/home/sandbox/proj/c.txt"
    assert sbx.files.exists("proj/c.txt") and not sbx.files.exists("proj/a.txt")
    sbx.files.remove("proj/c.txt")
    assert not sbx.files.exists("proj/c.txt")
    sbx.files.remove("proj")  # a directory with everything under it
    assert not sbx.files.exists("proj")
    assert sbx.run("ls -A /home/sandbox").stdout == ""


def test_missing_path_is_file_not_found(sbx: stockade.Sandbox) -> None:
    for call in (
        lambda: sbx.files.read("nope/missing.txt"),
        lambda: sbx.files.remove("missing.txt"),
        lambda: sbx.files.list("missing-dir"),
        lambda: sbx.files.stat("missing.txt"),
    ):
        with pytest.raises(stockade.FileNotFound) as e:
            call()
        assert isinstance(e.value, FileNotFoundError)
        assert e.value.status == 404 and e.value.code == "not_found"
        assert "missing" in str(e.value)
    # Control: once written, the same path reads.
    sbx.files.write("nope/missing.txt", "here")
    assert sbx.files.read("nope/missing.txt") == b"here"


def test_directory_errors(sbx: stockade.Sandbox) -> None:
    sbx.files.mkdir("d")
    with pytest.raises(stockade.InvalidRequest, match="not a regular file"):
        sbx.files.read("d")
    sbx.files.write("f", "x")
    with pytest.raises(stockade.NotADirectory) as e:
        sbx.files.list("f")
    assert isinstance(e.value, NotADirectoryError) and e.value.code == "not_a_directory"
    with pytest.raises(stockade.NotADirectory):
        sbx.files.write("f/inside.txt", "x")


def test_full_disk_is_disk_full_and_keeps_the_old_file(server: Server) -> None:
    with stockade.Sandbox(policy='[limits]\ndisk = "2MiB"\n') as s:
        s.files.write("keep.txt", "old content")
        with pytest.raises(stockade.DiskFull) as e:
            s.files.write("keep.txt", b"x" * (4 * 1024 * 1024))
        assert e.value.status == 507 and "limits.disk" in str(e.value)
        assert s.files.read("keep.txt") == b"old content"
        # Control: a small write still fits.
        s.files.write("small.txt", b"y" * 1024)
        assert s.files.stat("small.txt").size == 1024
