"""The synchronous client: :class:`Sandbox`, its :class:`Files` and :class:`CommandHandle`."""

from __future__ import annotations

import builtins
import os
import threading
import time
import weakref
from datetime import datetime
from collections.abc import Callable, Iterator, Mapping
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
    check_ttl,
    check_result,
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
    Context,
    ProcessNotFound,
    ProtocolError,
    SandboxNotFound,
    TimeoutError,
    error_from_response,
)
from ._models import AuditEvent, CommandResult, EntryInfo, ProcessInfo, SandboxInfo, Usage

OutputCallback = Callable[[str], Any]


class _Http:
    """One connection pool to the server, with the retry rules of :class:`Retry`."""

    def __init__(self, s: Settings) -> None:
        self.s = s
        self.client = httpx.Client(
            base_url=s.server, headers=s.headers(), timeout=s.request_timeout
        )

    def close(self) -> None:
        self.client.close()

    def request(
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
                resp = self.client.request(method, path, **kw)
            except httpx.TransportError as e:
                if attempt < self.s.max_retries and may_retry(retry, e, None):
                    time.sleep(backoff(attempt))
                    attempt += 1
                    continue
                raise transport_error(e, self.s, what, retry, attempt + 1) from e
            if resp.status_code >= 400:
                if attempt < self.s.max_retries and may_retry(retry, None, resp.status_code):
                    time.sleep(backoff(attempt))
                    attempt += 1
                    continue
                raise error_from_response(resp.status_code, resp.content, context)
            return resp

    def open_stream(self, path: str, body: dict[str, Any], what: str) -> httpx.Response:
        """Starts a process (never retried); the answer's body is the event stream."""
        timeout = httpx.Timeout(
            self.s.request_timeout, read=max(STREAM_READ_TIMEOUT, self.s.request_timeout)
        )
        req = self.client.build_request("POST", path, json=body, timeout=timeout)
        try:
            resp = self.client.send(req, stream=True)
        except httpx.TransportError as e:
            raise transport_error(e, self.s, what, Retry.NEVER) from e
        if resp.status_code >= 400:
            try:
                content = resp.read()
            finally:
                resp.close()
            raise error_from_response(resp.status_code, content, Context.EXEC)
        return resp


class _ExecStream:
    """A process's event stream being read: lines → events → :class:`ExecState`."""

    def __init__(self, http: _Http, resp: httpx.Response, state: ExecState, what: str) -> None:
        self._http = http
        self._resp = resp
        self._lines: Iterator[str] = resp.iter_lines()
        self._sse = SSEParser()
        self.state = state
        self._what = what

    def next_event(self) -> tuple[str, str] | None:
        try:
            for line in self._lines:
                ev = self._sse.feed(line)
                if ev is not None:
                    return ev
        except httpx.TransportError as e:
            raise transport_error(e, self._http.s, self._what, Retry.NEVER) from e
        return None

    def read_until_started(self) -> None:
        while not self.state.started:
            ev = self.next_event()
            if ev is None:
                raise ProtocolError(f"{self._what}: the stream ended before the process started")
            self.state.handle(*ev)

    def pump(self, on_stdout: OutputCallback | None, on_stderr: OutputCallback | None) -> None:
        """Reads to the end, calling the callbacks in the order the output came."""
        while self.state.exit is None:
            ev = self.next_event()
            if ev is None:
                return
            for name, text in self.state.handle(*ev):
                cb = on_stdout if name == "stdout" else on_stderr
                if cb is not None:
                    cb(text)

    def close(self) -> None:
        self._resp.close()


class CommandHandle:
    """A process started with ``run(..., background=True)``: it runs while your code goes on.

    Its output is read by a background thread (which also calls ``on_stdout``/``on_stderr``).
    """

    def __init__(
        self,
        sandbox: Sandbox,
        cmd: CmdArg,
        stream: _ExecStream,
        timeout: float | None,
        on_stdout: OutputCallback | None,
        on_stderr: OutputCallback | None,
    ) -> None:
        self._sandbox = sandbox
        self._cmd = cmd
        self._stream = stream
        self._timeout = timeout
        self._done = threading.Event()
        self._error: BaseException | None = None
        self._result: CommandResult | None = None
        self._thread = threading.Thread(
            target=self._run,
            args=(on_stdout, on_stderr),
            name=f"stockade-exec-{stream.state.pid}",
            daemon=True,
        )
        self._thread.start()

    def _run(self, on_stdout: OutputCallback | None, on_stderr: OutputCallback | None) -> None:
        try:
            self._stream.pump(on_stdout, on_stderr)
            self._result = self._stream.state.result()
        except BaseException as e:  # handed to wait()
            self._error = e
        finally:
            self._stream.close()
            self._done.set()

    @property
    def pid(self) -> int:
        """The process id inside the sandbox."""
        return self._stream.state.pid

    @property
    def exec_id(self) -> str:
        """Its id in the audit trail (``exec_id`` of its events)."""
        return self._stream.state.exec_id

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def exit_code(self) -> int | None:
        """None while it runs."""
        return self._result.exit_code if self._result else None

    @property
    def stdout(self) -> str:
        """What it printed so far."""
        return bytes(self._stream.state.out).decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        return bytes(self._stream.state.err).decode("utf-8", "replace")

    def wait(self, timeout: float | None = None) -> CommandResult:
        """Waits for the end; the result, or the same exceptions as a foreground ``run``.

        ``timeout`` (seconds) bounds the wait only: past it :class:`TimeoutError` is raised
        (with ``result`` None) and the process runs on.
        """
        if not self._done.wait(timeout):
            raise TimeoutError(
                f"`{describe_cmd(self._cmd)}` (pid {self.pid}) is still running after "
                f"{timeout:g} s; wait longer, or kill() it"
            )
        if self._error is not None:
            raise self._error
        assert self._result is not None
        check_result(self._result, self._cmd, self._timeout, check=False)
        return self._result

    def signal(self, signal: int) -> bool:
        """Sends a signal to its process group; False when it had already ended."""
        return self._sandbox._signal(self.pid, signal)

    def kill(self) -> bool:
        """SIGKILL; False when it had already ended. ``wait()`` then returns exit code 137."""
        return self.signal(9)

    def __repr__(self) -> str:
        return f"CommandHandle(pid={self.pid}, cmd={describe_cmd(self._cmd)!r}, done={self.done})"


class Files:
    """Files inside a sandbox: ``sbx.files``. Paths are absolute inside the sandbox or relative
    to its home (``~`` too); they are resolved inside, as the sandbox's user."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sbx = sandbox

    def _base(self) -> str:
        return f"/v1/sandboxes/{self._sbx.id}/files"

    def write(self, path: str, data: str | bytes) -> EntryInfo:
        """Creates or replaces a file (parents are created); str is written as UTF-8."""
        raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        r = self._sbx._http.request(
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

    def read(self, path: str) -> bytes:
        """The file's exact bytes."""
        r = self._sbx._http.request(
            "GET",
            self._base(),
            params={"path": path},
            retry=Retry.IDEMPOTENT,
            context=Context.FILE,
            what=f"read {path}",
        )
        return r.content

    def read_text(self, path: str, encoding: str = "utf-8") -> str:
        return self.read(path).decode(encoding)

    def list(self, path: str = "~", depth: int = 1) -> builtins.list[EntryInfo]:
        """The entries of a directory, ``depth`` levels down (1: its own entries)."""
        r = self._sbx._http.request(
            "GET",
            f"{self._base()}/list",
            params={"path": path, "depth": depth},
            retry=Retry.IDEMPOTENT,
            context=Context.FILE,
            what=f"list {path}",
        )
        doc = json_body(r.content, "list")
        return [EntryInfo.from_json(e) for e in doc.get("entries", [])]

    def stat(self, path: str) -> EntryInfo:
        r = self._sbx._http.request(
            "GET",
            f"{self._base()}/stat",
            params={"path": path},
            retry=Retry.IDEMPOTENT,
            context=Context.FILE,
            what=f"stat {path}",
        )
        return EntryInfo.from_json(json_body(r.content, "stat"))

    def exists(self, path: str) -> bool:
        try:
            self.stat(path)
        except SandboxNotFound:
            raise
        except FileNotFoundError:
            return False
        return True

    def remove(self, path: str) -> None:
        """Removes a file, a symlink, or a directory with everything under it."""
        self._sbx._http.request(
            "DELETE",
            self._base(),
            params={"path": path},
            retry=Retry.UNSENT,
            context=Context.FILE,
            what=f"remove {path}",
        )

    def mkdir(self, path: str) -> bool:
        """Creates a directory and its missing parents; False when it already existed."""
        r = self._sbx._http.request(
            "POST",
            f"{self._base()}/mkdir",
            json={"path": path},
            retry=Retry.UNSENT,
            context=Context.FILE,
            what=f"mkdir {path}",
        )
        return bool(json_body(r.content, "mkdir").get("created"))

    def move(self, src: str, dst: str) -> EntryInfo:
        r = self._sbx._http.request(
            "POST",
            f"{self._base()}/move",
            json={"from": src, "to": dst},
            retry=Retry.UNSENT,
            context=Context.FILE,
            what=f"move {src}",
        )
        return EntryInfo.from_json(json_body(r.content, "move"))


class Sandbox:
    """A sandbox on a ``stockade serve``: created by the constructor, destroyed by :meth:`kill`
    or by leaving its ``with`` block.

    ``server`` and ``api_key`` default to ``STOCKADE_SERVER`` and ``STOCKADE_API_KEY``.
    ``timeout`` is its time to live in seconds (the server's default is 300); ``policy`` is an
    inline policy (TOML text, or a path to a file) instead of the template's; ``env`` is added
    to every process's environment.
    """

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
        s = settings(server, api_key, request_timeout, max_retries)
        body = create_body(template, policy, timeout, env, metadata)
        http = _Http(s)
        try:
            r = http.request(
                "POST",
                "/v1/sandboxes",
                json=body,
                retry=Retry.NEVER,
                context=Context.SANDBOX,
                what="create a sandbox",
            )
            doc = json_body(r.content, "create")
            info = SandboxInfo.from_json(doc)
        except BaseException:
            http.close()
            raise
        self._setup(http, info, doc.get("access_token"))

    def _setup(self, http: _Http, info: SandboxInfo, access_token: str | None) -> None:
        self._http = http
        self._info = info
        self._killed = False
        self._access_token = access_token
        self._handles: weakref.WeakSet[CommandHandle] = weakref.WeakSet()
        self.files = Files(self)

    @classmethod
    def connect(
        cls,
        sandbox_id: str,
        *,
        server: str | None = None,
        api_key: str | None = None,
        request_timeout: float | None = None,
        max_retries: int | None = None,
    ) -> Sandbox:
        """A running sandbox of this API key, by id (:class:`SandboxNotFound` otherwise)."""
        check_id(sandbox_id)
        http = _Http(settings(server, api_key, request_timeout, max_retries))
        try:
            info = _get_info(http, sandbox_id)
        except BaseException:
            http.close()
            raise
        sbx = cls.__new__(cls)
        sbx._setup(http, info, None)
        return sbx

    @classmethod
    def list(
        cls,
        *,
        server: str | None = None,
        api_key: str | None = None,
        request_timeout: float | None = None,
        max_retries: int | None = None,
    ) -> builtins.list[SandboxInfo]:
        """The running sandboxes of this API key, oldest first."""
        http = _Http(settings(server, api_key, request_timeout, max_retries))
        try:
            r = http.request(
                "GET",
                "/v1/sandboxes",
                retry=Retry.IDEMPOTENT,
                context=Context.SANDBOX,
                what="list sandboxes",
            )
            doc = json_body(r.content, "list")
            return [SandboxInfo.from_json(d) for d in doc.get("sandboxes", [])]
        finally:
            http.close()

    # -- what it is ---------------------------------------------------------------------------

    @property
    def id(self) -> str:
        return self._info.id

    @property
    def template(self) -> str:
        return self._info.template

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self._info.metadata)

    @property
    def expires_at(self) -> datetime:
        """When the server destroys it (a timezone-aware datetime), as of the last answer."""
        return self._info.expires_at

    @property
    def access_token(self) -> str | None:
        """The token (returned once, at create) that authorises this sandbox's data plane only
        (``X-Access-Token``); None for a sandbox from :meth:`connect`."""
        return self._access_token

    @property
    def server(self) -> str:
        return self._http.s.server

    def __repr__(self) -> str:
        return f"Sandbox(id={self.id!r}, template={self.template!r})"

    def info(self) -> SandboxInfo:
        """Its current description, with resource ``usage``."""
        self._info = _get_info(self._http, self.id)
        return self._info

    def is_running(self) -> bool:
        try:
            self.info()
        except SandboxNotFound:
            return False
        return True

    def usage(self) -> Usage:
        r = self._http.request(
            "GET",
            f"/v1/sandboxes/{self.id}/usage",
            retry=Retry.IDEMPOTENT,
            context=Context.SANDBOX,
            what="usage",
        )
        return Usage.from_json(json_body(r.content, "usage"))

    # -- lifetime -----------------------------------------------------------------------------

    def set_timeout(self, seconds: int) -> SandboxInfo:
        """It now expires ``seconds`` from now (at most the server's ``--max-timeout``)."""
        check_ttl(seconds)
        r = self._http.request(
            "POST",
            f"/v1/sandboxes/{self.id}/timeout",
            json={"timeout": seconds},
            retry=Retry.UNSENT,
            context=Context.SANDBOX,
            what="set the timeout",
        )
        self._info = SandboxInfo.from_json(json_body(r.content, "timeout"))
        return self._info

    def kill(self) -> None:
        """Destroys it (every process stops; ``sandbox.destroyed`` is recorded). A sandbox that
        is already gone is not an error. Returns once it is gone."""
        if not self._killed:
            try:
                self._http.request(
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
            deadline = time.monotonic() + 5
            for h in builtins.list(self._handles):
                h._done.wait(max(0.0, deadline - time.monotonic()))
        self._http.close()

    def close(self) -> None:
        """Closes this client's connections; the sandbox runs on until its timeout."""
        self._http.close()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill()

    # -- processes ----------------------------------------------------------------------------

    @overload
    def run(
        self,
        cmd: CmdArg,
        *,
        background: Literal[False] = False,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        timeout: float | None = DEFAULT_RUN_TIMEOUT,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        stdin: str | None = None,
        tag: str | None = None,
        check: bool = False,
    ) -> CommandResult: ...

    @overload
    def run(
        self,
        cmd: CmdArg,
        *,
        background: Literal[True],
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        timeout: float | None = None,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        stdin: str | None = None,
        tag: str | None = None,
        check: bool = False,
    ) -> CommandHandle: ...

    def run(
        self,
        cmd: CmdArg,
        *,
        background: bool = False,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        timeout: float | None | Unset = UNSET,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        stdin: str | None = None,
        tag: str | None = None,
        check: bool = False,
    ) -> CommandResult | CommandHandle:
        """Runs a process: a ``str`` through ``/bin/sh -c``, a list as argv (no shell).

        Output reaches ``on_stdout``/``on_stderr`` as it comes (text; the exact bytes are in the
        result). ``timeout`` (seconds; None: the policy's ``limits.timeout``) kills the process
        when it passes: :class:`TimeoutError`. Exit 127 raises :class:`CommandNotFound`, 126
        :class:`CommandNotExecutable`; another non-zero status is returned, or raised as
        :class:`CommandFailed` with ``check=True``. With ``background=True`` it returns a
        :class:`CommandHandle` once the process started (its default timeout is then the
        policy's). ``stdin`` is fed to the process, then end of file.
        """
        timeout = run_timeout(timeout, background)
        body = exec_body(cmd, cwd, env, timeout, stdin, tag)
        what = f"run `{describe_cmd(cmd)}`"
        resp = self._http.open_stream(f"/v1/sandboxes/{self.id}/exec", body, what)
        stream = _ExecStream(self._http, resp, ExecState(cmd), what)
        try:
            stream.read_until_started()
        except BaseException:
            stream.close()
            raise
        if background:
            handle = CommandHandle(self, cmd, stream, timeout, on_stdout, on_stderr)
            self._handles.add(handle)
            return handle
        try:
            stream.pump(on_stdout, on_stderr)
        finally:
            stream.close()
        result = stream.state.result()
        check_result(result, cmd, timeout, check)
        return result

    def processes(self) -> builtins.list[ProcessInfo]:
        """Processes started through the API that still run."""
        r = self._http.request(
            "GET",
            f"/v1/sandboxes/{self.id}/processes",
            retry=Retry.IDEMPOTENT,
            context=Context.SANDBOX,
            what="list processes",
        )
        return [ProcessInfo.from_json(p) for p in json_body(r.content, "processes")["processes"]]

    def _signal(self, pid: int, signal: int) -> bool:
        try:
            self._http.request(
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

    def signal(self, pid: int, signal: int) -> bool:
        """Sends ``signal`` to the process group of ``pid``; False when it had already ended."""
        return self._signal(pid, signal)

    # -- audit --------------------------------------------------------------------------------

    def trace(self, since: int | None = None) -> builtins.list[AuditEvent]:
        """Its audit trail, oldest first (only events after sequence number ``since``):
        ``sandbox.created``, ``exec.started``/``exec.exited``, ``net.dns``/``net.connect`` with
        the decision and its reason, ``file.changed``, ``limit.hit``, ``violation``..."""
        params = {"since": since} if since is not None else None
        r = self._http.request(
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


def _get_info(http: _Http, sandbox_id: str) -> SandboxInfo:
    r = http.request(
        "GET",
        f"/v1/sandboxes/{sandbox_id}",
        retry=Retry.IDEMPOTENT,
        context=Context.SANDBOX,
        what=f"get sandbox {sandbox_id}",
    )
    return SandboxInfo.from_json(json_body(r.content, "sandbox"))

