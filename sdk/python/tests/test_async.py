"""AsyncSandbox: the same basics as the synchronous client, with asyncio (asyncio.run per test,
no plugin)."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

import stockade
from conftest import Server, events_of


def test_async_run_callbacks_and_errors(server: Server) -> None:
    async def main() -> str:
        got: list[tuple[str, str]] = []

        async def on_err(t: str) -> None:  # a coroutine callback
            await asyncio.sleep(0)
            got.append(("err", t))

        async with stockade.AsyncSandbox(timeout=300) as s:
            r = await s.run(
                "echo a; sleep 0.2; echo b >&2; sleep 0.2; echo c; exit 2",
                on_stdout=lambda t: got.append(("out", t)),
                on_stderr=on_err,
            )
            assert (r.exit_code, r.stdout, r.stderr) == (2, "a\nc\n", "b\n")
            assert got == [("out", "a\n"), ("err", "b\n"), ("out", "c\n")]
            assert (await s.run(["printf", "%s", "x y"])).stdout == "x y"
            with pytest.raises(stockade.CommandNotFound) as e:
                await s.run("no-such-program-xyz")
            assert e.value.exit_code == 127
            with pytest.raises(stockade.TimeoutError) as t:
                await s.run("echo started; sleep 30", timeout=1)
            assert t.value.result is not None and t.value.result.stdout == "started\n"
            ev = await s.trace()
            assert [x.get("exit_code") for x in events_of(ev, "exec.exited")][:3] == [2, 0, 127]
            assert events_of(ev, "exec.started")[0]["argv"][:2] == ["/bin/sh", "-c"]
            return s.id

    sid = asyncio.run(main())
    assert server.trail(sid)[-1]["type"] == "sandbox.destroyed"

    async def gone() -> None:
        with pytest.raises(stockade.SandboxNotFound):
            await stockade.AsyncSandbox.connect(sid)
        assert sid not in [i.id for i in await stockade.AsyncSandbox.list()]

    asyncio.run(gone())


def test_async_files(server: Server) -> None:
    async def main() -> None:
        s = await stockade.AsyncSandbox.create()
        try:
            data = os.urandom(1024 * 1024) + bytes(range(256))
            e = await s.files.write("dir/blob.bin", data)
            assert e.size == len(data)
            assert await s.files.read("dir/blob.bin") == data
            await s.files.write("dir/t.txt", "ünïcode")
            assert await s.files.read_text("dir/t.txt") == "ünïcode"
            assert sorted(x.name for x in await s.files.list("dir")) == ["blob.bin", "t.txt"]
            await s.files.remove("dir/t.txt")
            assert not await s.files.exists("dir/t.txt")
            with pytest.raises(stockade.FileNotFound):
                await s.files.read("dir/t.txt")
        finally:
            await s.kill()

    asyncio.run(main())


def test_async_background_wait_kill_and_concurrency(server: Server) -> None:
    async def main() -> None:
        async with stockade.AsyncSandbox() as s:
            p = await s.run(["sleep", "30"], background=True)
            assert isinstance(p, stockade.AsyncCommandHandle) and p.pid > 0
            assert p.pid in [x.pid for x in await s.processes()]
            with pytest.raises(stockade.TimeoutError):
                await p.wait(timeout=0.3)
            assert await p.kill() is True
            r = await p.wait(timeout=10)
            assert (r.exit_code, r.signal) == (137, 9)
            assert await p.kill() is False
            q = await s.run("sleep 0.3; echo done", background=True)
            assert (await q.wait(timeout=30)).stdout == "done\n" and q.exit_code == 0
            # Three commands at once in one sandbox.
            t0 = time.monotonic()
            rs = await asyncio.gather(*(s.run(f"sleep 1; echo {i}") for i in range(3)))
            assert [x.stdout for x in rs] == ["0\n", "1\n", "2\n"]
            assert time.monotonic() - t0 < 2.9

    asyncio.run(main())


def test_async_wrong_key_and_not_created(server: Server) -> None:
    async def main() -> None:
        with pytest.raises(stockade.AuthenticationError) as e:
            async with stockade.AsyncSandbox(api_key="sk_wrong_key_123"):
                pass
        assert "stockade keys create" in str(e.value) and "sk_wrong_key_123" not in str(e.value)
        lazy = stockade.AsyncSandbox()
        with pytest.raises(stockade.ConfigurationError, match="async with"):
            await lazy.run("true")
        # Control: the right key (from the environment).
        assert isinstance(await stockade.AsyncSandbox.list(), list)

    asyncio.run(main())
