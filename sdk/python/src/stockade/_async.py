"""The asyncio client: :class:`AsyncSandbox`, its :class:`AsyncFiles` and
:class:`AsyncCommandHandle`, the same shape as the synchronous ones with ``await``."""

from __future__ import annotations

import asyncio
import builtins
import inspect
import os
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, Literal, overload

import httpx

from ._common import (
    DEFAULT_RUN_TIMEOUT,
    STREAM_READ_TIMEOUT,
    CmdArg,
    ExecState,
    Retry,
    Settings,
    UNSET,
    SSEParser,
    Unset,
    backoff,
    check_id,
    check_result,
    check_ttl,
    create_body,
    describe_cmd,
    exec_body,
    run_timeout,
    json_body,
    may_retry,
    settings,
    transport_error,
)
from ._errors import (
    ConfigurationError,
    Context,
    ProcessNotFound,
    ProtocolError,
    SandboxNotFound,
    TimeoutError,
    error_from_response,
)
from ._models import AuditEvent, CommandResult, EntryInfo, ProcessInfo, SandboxInfo, Usage

#: A callback may be a plain function or a coroutine function.
AsyncOutputCallback = Callable[[str], Awaitable[Any] | Any]


class _AsyncHttp:
    def __init__(self, s: Settings) -> None:
        self.s = s
        self.client = httpx.AsyncClient(
            base_url=s.server, headers=s.headers(), timeout=s.request_timeout
        )

    async def close(self) -> None:
        await self.client.aclose()

    async def request(
        self,
        method: str,
        path: str,
        *,
        retry: Retry,
        context: Context,
        what: str,
        **kw: Any,
    ) -> httpx.Response:
        attempt = 0
        while True:
            try:
                resp = await self.client.request(method, path, **kw)
            except httpx.TransportError as e:
                if attempt < self.s.max_retries and may_retry(retry, e, None):
                    await asyncio.sleep(backoff(attempt))
                    attempt += 1
                    continue
                raise transport_error(e, self.s, what, retry, attempt + 1) from e
            if resp.status_code >= 400:
                if attempt < self.s.max_retries and may_retry(retry, None, resp.status_code):
                    await asyncio.sleep(backoff(attempt))
                    attempt += 1
                    continue
                raise error_from_response(resp.status_code, resp.content, context)
            return resp

    async def open_stream(self, path: str, body: dict[str, Any], what: str) -> httpx.Response:
        timeout = httpx.Timeout(
            self.s.request_timeout, read=max(STREAM_READ_TIMEOUT, self.s.request_timeout)
        )
        req = self.client.build_request("POST", path, json=body, timeout=timeout)
        try:
            resp = await self.client.send(req, stream=True)
        except httpx.TransportError as e:
            raise transport_error(e, self.s, what, Retry.NEVER) from e
        if resp.status_code >= 400:
            try:
                content = await resp.aread()
            finally:
                await resp.aclose()
            raise error_from_response(resp.status_code, content, Context.EXEC)
        return resp


async def _call(cb: AsyncOutputCallback | None, text: str) -> None:
    if cb is None:
        return
    r = cb(text)
    if inspect.isawaitable(r):
        await r


class _AsyncExecStream:
    def __init__(
        self, http: _AsyncHttp, resp: httpx.Response, state: ExecState, what: str
    ) -> None:
        self._http = http
        self._resp = resp
        self._lines: AsyncIterator[str] = resp.aiter_lines()
        self._sse = SSEParser()
        self.state = state
        self._what = what

    async def next_event(self) -> tuple[str, str] | None:
        try:
            async for line in self._lines:
                ev = self._sse.feed(line)
                if ev is not None:
                    return ev
        except httpx.TransportError as e:
            raise transport_error(e, self._http.s, self._what, Retry.NEVER) from e
        return None

    async def read_until_started(self) -> None:
        while not self.state.started:
            ev = await self.next_event()
            if ev is None:
                raise ProtocolError(f"{self._what}: the stream ended before the process started")
            self.state.handle(*ev)

    async def pump(
        self, on_stdout: AsyncOutputCallback | None, on_stderr: AsyncOutputCallback | None
    ) -> None:
        while self.state.exit is None:
            ev = await self.next_event()
            if ev is None:
                return
            for name, text in self.state.handle(*ev):
                await _call(on_stdout if name == "stdout" else on_stderr, text)

    async def close(self) -> None:
        await self._resp.aclose()


class AsyncCommandHandle:
    """A process started with ``await sbx.run(..., background=True)``; its output is read by
    an asyncio task."""

    def __init__(
        self,
        sandbox: AsyncSandbox,
        cmd: CmdArg,
        stream: _AsyncExecStream,
        timeout: float | None,
        on_stdout: AsyncOutputCallback | None,
        on_stderr: AsyncOutputCallback | None,
    ) -> None:
        self._sandbox = sandbox
        self._cmd = cmd
        self._stream = stream
        self._timeout = timeout
        self._task: asyncio.Task[CommandResult] = asyncio.get_running_loop().create_task(
            self._run(on_stdout, on_stderr), name=f"stockade-exec-{stream.state.pid}"
        )

    async def _run(
        self, on_stdout: AsyncOutputCallback | None, on_stderr: AsyncOutputCallback | None
    ) -> CommandResult:
        try:
            await self._stream.pump(on_stdout, on_stderr)
            return self._stream.state.result()
        finally:
            await self._stream.close()

    @property
    def pid(self) -> int:
        return self._stream.state.pid

    @property
    def exec_id(self) -> str:
        return self._stream.state.exec_id

    @property
    def done(self) -> bool:
        return self._task.done()

    @property
    def exit_code(self) -> int | None:
        if not self._task.done() or self._task.cancelled() or self._task.exception():
            return None
        return self._task.result().exit_code

    @property
    def stdout(self) -> str:
        return bytes(self._stream.state.out).decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        return bytes(self._stream.state.err).decode("utf-8", "replace")

    async def wait(self, timeout: float | None = None) -> CommandResult:
        """As :meth:`CommandHandle.wait`."""
        try:
            result = await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except builtins.TimeoutError:
            raise TimeoutError(
                f"`{describe_cmd(self._cmd)}` (pid {self.pid}) is still running after "
                f"{timeout:g} s; wait longer, or kill() it"
            ) from None
        check_result(result, self._cmd, self._timeout, check=False)
        return result

    async def signal(self, signal: int) -> bool:
        return await self._sandbox.signal(self.pid, signal)

    async def kill(self) -> bool:
        return await self.signal(9)

    def __repr__(self) -> str:
        return (
            f"AsyncCommandHandle(pid={self.pid}, cmd={describe_cmd(self._cmd)!r}, "
            f"done={self.done})"
        )


class AsyncFiles:
    """As :class:`Files`, with ``await``."""

    def __init__(self, sandbox: AsyncSandbox) -> None:
        self._sbx = sandbox

    def _base(self) -> str:
        return f"/v1/sandboxes/{self._sbx.id}/files"

    async def write(self, path: str, data: str | bytes) -> EntryInfo:
        raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        r = await self._sbx._conn().request(
            "PUT",
            self._base(),
            params={"path": path},
            content=raw,
            headers={"Content-Type": "application/octet-stream"},
            retry=Retry.UNSENT,
            context=Context.FILE,
            what=f"write {path}",
        )
        return EntryInfo.from_json(json_body(r.content, "write"))

    async def read(self, path: str) -> bytes:
        r = await self._sbx._conn().request(
            "GET",
            self._base(),
            params={"path": path},
            retry=Retry.IDEMPOTENT,
            context=Context.FILE,
            what=f"read {path}",
        )
        return r.content

    async def read_text(self, path: str, encoding: str = "utf-8") -> str:
        return (await self.read(path)).decode(encoding)

    async def list(self, path: str = "~", depth: int = 1) -> builtins.list[EntryInfo]:
        r = await self._sbx._conn().request(
            "GET",
            f"{self._base()}/list",
            params={"path": path, "depth": depth},
            retry=Retry.IDEMPOTENT,
            context=Context.FILE,
            what=f"list {path}",
        )
        doc = json_body(r.content, "list")
        return [EntryInfo.from_json(e) for e in doc.get("entries", [])]

    async def stat(self, path: str) -> EntryInfo:
        r = await self._sbx._conn().request(
            "GET",
            f"{self._base()}/stat",
            params={"path": path},
            retry=Retry.IDEMPOTENT,
            context=Context.FILE,
            what=f"stat {path}",
        )
        return EntryInfo.from_json(json_body(r.content, "stat"))

    async def exists(self, path: str) -> bool:
        try:
            await self.stat(path)
        except SandboxNotFound:
            raise
        except FileNotFoundError:
            return False
        return True

    async def remove(self, path: str) -> None:
        await self._sbx._conn().request(
            "DELETE",
            self._base(),
            params={"path": path},
            retry=Retry.UNSENT,
            context=Context.FILE,
            what=f"remove {path}",
        )

    async def mkdir(self, path: str) -> bool:
        r = await self._sbx._conn().request(
            "POST",
            f"{self._base()}/mkdir",
            json={"path": path},
            retry=Retry.UNSENT,
            context=Context.FILE,
            what=f"mkdir {path}",
        )
        return bool(json_body(r.content, "mkdir").get("created"))

    async def move(self, src: str, dst: str) -> EntryInfo:
        r = await self._sbx._conn().request(
            "POST",
            f"{self._base()}/move",
            json={"from": src, "to": dst},
            retry=Retry.UNSENT,
            context=Context.FILE,
            what=f"move {src}",
        )
        return EntryInfo.from_json(json_body(r.content, "move"))


class AsyncSandbox:
    """As :class:`Sandbox`, for asyncio. The constructor does no I/O: the sandbox is created by
    ``async with AsyncSandbox(...) as sbx`` (killed when the block ends) or by
    ``sbx = await AsyncSandbox.create(...)``."""

    def __init__(
        self,
        template: str | None = None,
        *,
        policy: str | os.PathLike[str] | None = None,
        timeout: int | None = None,
        env: Mapping[str, str] | None = None,
        metadata: Mapping[str, str] | None = None,
        server: str | None = None,
        api_key: str | None = None,
        request_timeout: float | None = None,
        max_retries: int | None = None,
    ) -> None:
        self._settings = settings(server, api_key, request_timeout, max_retries)
        self._body: dict[str, Any] | None = create_body(template, policy, timeout, env, metadata)
        self._http: _AsyncHttp | None = None
        self._info: SandboxInfo | None = None
        self._access_token: str | None = None
        self._killed = False
        self._handles: weakref.WeakSet[AsyncCommandHandle] = weakref.WeakSet()
        self.files = AsyncFiles(self)

    async def _create(self) -> None:
        if self._info is not None:
            return
        http = _AsyncHttp(self._settings)
        try:
            r = await http.request(
                "POST",
                "/v1/sandboxes",
                json=self._body,
                retry=Retry.NEVER,
                context=Context.SANDBOX,
                what="create a sandbox",
            )
            doc = json_body(r.content, "create")
            self._info = SandboxInfo.from_json(doc)
        except BaseException:
            await http.close()
            raise
        self._http = http
        self._access_token = doc.get("access_token")

    @classmethod
    async def create(
        cls,
        template: str | None = None,
        *,
        policy: str | os.PathLike[str] | None = None,
        timeout: int | None = None,
        env: Mapping[str, str] | None = None,
        metadata: Mapping[str, str] | None = None,
        server: str | None = None,
        api_key: str | None = None,
        request_timeout: float | None = None,
        max_retries: int | None = None,
    ) -> AsyncSandbox:
        sbx = cls(
            template,
            policy=policy,
            timeout=timeout,
            env=env,
            metadata=metadata,
            server=server,
            api_key=api_key,
            request_timeout=request_timeout,
            max_retries=max_retries,
        )
        await sbx._create()
        return sbx

    @classmethod
    async def connect(
        cls,
        sandbox_id: str,
        *,
        server: str | None = None,
        api_key: str | None = None,
        request_timeout: float | None = None,
        max_retries: int | None = None,
    ) -> AsyncSandbox:
        check_id(sandbox_id)
        sbx = cls(server=server, api_key=api_key, request_timeout=request_timeout,
                  max_retries=max_retries)
        sbx._body = None
        http = _AsyncHttp(sbx._settings)
        try:
            sbx._info = await _get_info(http, sandbox_id)
        except BaseException:
            await http.close()
            raise
        sbx._http = http
        return sbx

    @classmethod
    async def list(
        cls,
        *,
        server: str | None = None,
        api_key: str | None = None,
        request_timeout: float | None = None,
        max_retries: int | None = None,
    ) -> builtins.list[SandboxInfo]:
        http = _AsyncHttp(settings(server, api_key, request_timeout, max_retries))
        try:
            r = await http.request(
                "GET",
                "/v1/sandboxes",
                retry=Retry.IDEMPOTENT,
                context=Context.SANDBOX,
                what="list sandboxes",
            )
            doc = json_body(r.content, "list")
            return [SandboxInfo.from_json(d) for d in doc.get("sandboxes", [])]
        finally:
            await http.close()

    def _conn(self) -> _AsyncHttp:
        if self._http is None:
            raise ConfigurationError(
                "this AsyncSandbox was not created yet: use `async with AsyncSandbox(...) as "
                "sbx` or `sbx = await AsyncSandbox.create(...)`"
            )
        return self._http

    def _i(self) -> SandboxInfo:
        self._conn()
        assert self._info is not None
        return self._info

    @property
    def id(self) -> str:
        return self._i().id

    @property
    def template(self) -> str:
        return self._i().template

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self._i().metadata)

    @property
    def expires_at(self) -> datetime:
        return self._i().expires_at

    @property
    def access_token(self) -> str | None:
        return self._access_token

    @property
    def server(self) -> str:
        return self._settings.server

    def __repr__(self) -> str:
        if self._info is None:
            return "AsyncSandbox(not created)"
        return f"AsyncSandbox(id={self._info.id!r}, template={self._info.template!r})"

    async def info(self) -> SandboxInfo:
        self._info = await _get_info(self._conn(), self.id)
        return self._info

    async def is_running(self) -> bool:
        try:
            await self.info()
        except SandboxNotFound:
            return False
        return True

    async def usage(self) -> Usage:
        r = await self._conn().request(
            "GET",
            f"/v1/sandboxes/{self.id}/usage",
            retry=Retry.IDEMPOTENT,
            context=Context.SANDBOX,
            what="usage",
        )
        return Usage.from_json(json_body(r.content, "usage"))

    async def set_timeout(self, seconds: int) -> SandboxInfo:
        check_ttl(seconds)
        r = await self._conn().request(
            "POST",
            f"/v1/sandboxes/{self.id}/timeout",
            json={"timeout": seconds},
            retry=Retry.UNSENT,
            context=Context.SANDBOX,
            what="set the timeout",
        )
        self._info = SandboxInfo.from_json(json_body(r.content, "timeout"))
        return self._info

    async def kill(self) -> None:
        http = self._conn()
        if not self._killed:
            try:
                await http.request(
                    "DELETE",
                    f"/v1/sandboxes/{self.id}",
                    retry=Retry.IDEMPOTENT,
                    context=Context.SANDBOX,
                    what="kill the sandbox",
                )
            except SandboxNotFound:
                pass
            self._killed = True
            # Background readers get their processes' ends before the connections close.
            tasks = [h._task for h in self._handles if not h._task.done()]
            if tasks:
                await asyncio.wait(tasks, timeout=5)
        await http.close()

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    async def __aenter__(self) -> AsyncSandbox:
        await self._create()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._http is not None:
            await self.kill()

    @overload
    async def run(
        self,
        cmd: CmdArg,
        *,
        background: Literal[False] = False,
        on_stdout: AsyncOutputCallback | None = None,
        on_stderr: AsyncOutputCallback | None = None,
        timeout: float | None = DEFAULT_RUN_TIMEOUT,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        stdin: str | None = None,
        tag: str | None = None,
        check: bool = False,
    ) -> CommandResult: ...

    @overload
    async def run(
        self,
        cmd: CmdArg,
        *,
        background: Literal[True],
        on_stdout: AsyncOutputCallback | None = None,
        on_stderr: AsyncOutputCallback | None = None,
        timeout: float | None = None,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        stdin: str | None = None,
        tag: str | None = None,
        check: bool = False,
    ) -> AsyncCommandHandle: ...

    async def run(
        self,
        cmd: CmdArg,
        *,
        background: bool = False,
        on_stdout: AsyncOutputCallback | None = None,
        on_stderr: AsyncOutputCallback | None = None,
        timeout: float | None | Unset = UNSET,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        stdin: str | None = None,
        tag: str | None = None,
        check: bool = False,
    ) -> CommandResult | AsyncCommandHandle:
        """As :meth:`Sandbox.run`; callbacks may be coroutine functions."""
        timeout = run_timeout(timeout, background)
        body = exec_body(cmd, cwd, env, timeout, stdin, tag)
        what = f"run `{describe_cmd(cmd)}`"
        http = self._conn()
        resp = await http.open_stream(f"/v1/sandboxes/{self.id}/exec", body, what)
        stream = _AsyncExecStream(http, resp, ExecState(cmd), what)
        try:
            await stream.read_until_started()
        except BaseException:
            await stream.close()
            raise
        if background:
            handle = AsyncCommandHandle(self, cmd, stream, timeout, on_stdout, on_stderr)
            self._handles.add(handle)
            return handle
        try:
            await stream.pump(on_stdout, on_stderr)
        finally:
            await stream.close()
        result = stream.state.result()
        check_result(result, cmd, timeout, check)
        return result

    async def processes(self) -> builtins.list[ProcessInfo]:
        r = await self._conn().request(
            "GET",
            f"/v1/sandboxes/{self.id}/processes",
            retry=Retry.IDEMPOTENT,
            context=Context.SANDBOX,
            what="list processes",
        )
        return [ProcessInfo.from_json(p) for p in json_body(r.content, "processes")["processes"]]

    async def signal(self, pid: int, signal: int) -> bool:
        try:
            await self._conn().request(
                "POST",
                f"/v1/sandboxes/{self.id}/processes/{pid}/signal",
                json={"signal": int(signal)},
                retry=Retry.UNSENT,
                context=Context.PROCESS,
                what=f"signal pid {pid}",
            )
        except ProcessNotFound:
            return False
        return True

    async def trace(self, since: int | None = None) -> builtins.list[AuditEvent]:
        params = {"since": since} if since is not None else None
        r = await self._conn().request(
            "GET",
            f"/v1/sandboxes/{self.id}/events",
            params=params,
            retry=Retry.IDEMPOTENT,
            context=Context.SANDBOX,
            what="read the audit trail",
        )
        doc = json_body(r.content, "events")
        if not isinstance(doc, builtins.list):
            raise ProtocolError("events: expected a JSON array")
        return [AuditEvent.from_json(e) for e in doc]


async def _get_info(http: _AsyncHttp, sandbox_id: str) -> SandboxInfo:
    r = await http.request(
        "GET",
        f"/v1/sandboxes/{sandbox_id}",
        retry=Retry.IDEMPOTENT,
        context=Context.SANDBOX,
        what=f"get sandbox {sandbox_id}",
    )
    return SandboxInfo.from_json(json_body(r.content, "sandbox"))
