"""What the sync and async clients share: settings, retry rules, request bodies, the exec
event stream's state machine, and how a finished process becomes a result or an exception."""

from __future__ import annotations

import base64
import binascii
import codecs
import json
import os
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal

import httpx

from ._version import __version__ as _version
from ._errors import (
    KEY_HINT,
    SERVER_HINT,
    CommandFailed,
    CommandNotExecutable,
    CommandNotFound,
    ConfigurationError,
    AuthenticationError,
    OutputLimitExceeded,
    ProtocolError,
    SandboxEnded,
    SandboxNotFound,
    ServerUnreachable,
    StockadeError,
    TimeoutError,
)
from ._models import CommandResult, ExecEnd

#: Seconds a plain request (not a process's output stream) may take before it is abandoned.
DEFAULT_REQUEST_TIMEOUT = 60.0
#: Retries of a request that is safe to retry (see :class:`Retry`).
DEFAULT_MAX_RETRIES = 3
#: Default ``timeout`` of a foreground :meth:`Sandbox.run`, in seconds.
DEFAULT_RUN_TIMEOUT = 60.0
#: The server sends a keep-alive comment every 15 s on an event stream: silence this long means
#: the connection is dead.
STREAM_READ_TIMEOUT = 60.0

CmdArg = str | Sequence[str]


class Unset(Enum):
    """The default of an argument whose default depends on another one."""

    UNSET = 0


UNSET = Unset.UNSET


def run_timeout(timeout: float | None | Unset, background: bool) -> float | None:
    """``run``'s default timeout: 60 s in the foreground, the policy's in the background."""
    if timeout is UNSET:
        return None if background else DEFAULT_RUN_TIMEOUT
    return timeout
Stream = Literal["stdout", "stderr"]


@dataclass(frozen=True)
class Settings:
    """Where the server is and how to talk to it; the key is never shown in a repr."""

    server: str
    api_key: str = field(repr=False)
    request_timeout: float
    max_retries: int

    def headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self.api_key}",
            "User-Agent": f"stockade-python/{_version}",
        }


def settings(
    server: str | None,
    api_key: str | None,
    request_timeout: float | None,
    max_retries: int | None,
) -> Settings:
    """Arguments first, then ``STOCKADE_SERVER`` / ``STOCKADE_API_KEY``."""
    url = server or os.environ.get("STOCKADE_SERVER") or ""
    if not url:
        raise ConfigurationError(
            "no server: set STOCKADE_SERVER (or pass server=) to the URL of `stockade serve`, "
            "e.g. http://127.0.0.1:3000"
        )
    if not url.startswith(("http://", "https://")):
        raise ConfigurationError(
            f"server {url!r}: expected a URL such as http://127.0.0.1:3000 (STOCKADE_SERVER or server=)"
        )
    key = api_key if api_key is not None else os.environ.get("STOCKADE_API_KEY", "")
    if not key:
        raise AuthenticationError(f"no API key: {KEY_HINT}")
    rt = DEFAULT_REQUEST_TIMEOUT if request_timeout is None else float(request_timeout)
    if not rt > 0:
        raise ConfigurationError(f"request_timeout {request_timeout!r}: expected seconds > 0")
    mr = DEFAULT_MAX_RETRIES if max_retries is None else int(max_retries)
    if mr < 0:
        raise ConfigurationError(f"max_retries {max_retries!r}: expected 0 or more")
    return Settings(url.rstrip("/"), key, rt, mr)


class Retry(Enum):
    """When a failed request may be sent again.

    - ``IDEMPOTENT`` (GET, DELETE): on any connection error, a timeout, or 502/503/504.
    - ``UNSENT`` (other POST/PUT): only when the connection could not be made, so the server
      never saw the request.
    - ``NEVER`` (create a sandbox, start a process): never; a second try could do it twice.
    """

    IDEMPOTENT = "idempotent"
    UNSENT = "unsent"
    NEVER = "never"


RETRY_STATUSES = frozenset({502, 503, 504})


def may_retry(policy: Retry, exc: BaseException | None, status: int | None) -> bool:
    if policy is Retry.NEVER:
        return False
    if exc is not None:
        if policy is Retry.UNSENT:
            return unsent(exc)
        return isinstance(exc, httpx.TransportError)
    return policy is Retry.IDEMPOTENT and status in RETRY_STATUSES


def backoff(attempt: int) -> float:
    """Seconds before retry number ``attempt`` (0-based): 0.25, 0.5, 1, 2, 2..."""
    return float(min(2.0, 0.25 * (2**attempt)))


def transport_error(
    exc: httpx.HTTPError, s: Settings, what: str, retry: Retry, tries: int = 1
) -> StockadeError:
    """A connection-level failure as this package's exception (never naming the key)."""
    after = f" after {tries} tries" if tries > 1 else ""
    if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
        return TimeoutError(
            f"{what}: the server at {s.server} did not answer in time{after} "
            f"({type(exc).__name__}); raise request_timeout= if it is busy"
        )
    if unsent(exc):
        return ServerUnreachable(f"{what}: cannot reach {s.server}{after} ({exc}); {SERVER_HINT}")
    why = (
        "" if retry is Retry.IDEMPOTENT
        else "; not retried, because doing it twice would not be safe"
    )
    return ServerUnreachable(
        f"{what}: the connection to {s.server} broke before the answer{after} "
        f"({type(exc).__name__}: {exc}){why}"
    )


def unsent(exc: BaseException) -> bool:
    """The request never reached the server: safe to send again whatever it is."""
    return isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))


def json_body(resp_content: bytes, what: str) -> Any:
    try:
        return json.loads(resp_content)
    except ValueError as e:
        raise ProtocolError(f"{what}: the server's answer is not JSON") from e


def create_body(
    template: str | None,
    policy: str | os.PathLike[str] | None,
    timeout: int | None,
    env: Mapping[str, str] | None,
    metadata: Mapping[str, str] | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if template is not None:
        body["template"] = template
    if policy is not None:
        if isinstance(policy, os.PathLike):
            with open(policy, encoding="utf-8") as f:
                body["policy"] = f.read()
        else:
            body["policy"] = policy
    if timeout is not None:
        check_ttl(timeout)
        body["timeout"] = timeout
    if env:
        body["env"] = _str_map(env, "env")
    if metadata:
        body["metadata"] = _str_map(metadata, "metadata")
    return body


def check_ttl(seconds: object) -> None:
    """A sandbox's time to live: whole seconds, 1 or more."""
    if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds < 1:
        raise ConfigurationError(f"timeout {seconds!r}: expected whole seconds, 1 or more")


_ID = re.compile(r"[0-9a-f]{16}")


def check_id(sandbox_id: object) -> None:
    """A sandbox id has the server's shape (it goes into URL paths)."""
    if not isinstance(sandbox_id, str) or not _ID.fullmatch(sandbox_id):
        raise SandboxNotFound(
            f"no sandbox {sandbox_id!r}: sandbox ids are 16 hex characters (Sandbox.list())"
        )


def _str_map(m: Mapping[str, str], what: str) -> dict[str, str]:
    for k, v in m.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise ConfigurationError(f"{what}: keys and values must be strings ({k!r}: {v!r})")
    return dict(m)


def exec_body(
    cmd: CmdArg,
    cwd: str | None,
    env: Mapping[str, str] | None,
    timeout: float | None,
    stdin: str | None,
    tag: str | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if isinstance(cmd, str):
        if not cmd.strip():
            raise ConfigurationError("cmd is empty: give a shell command line or an argv list")
        body["cmd"] = cmd
    else:
        argv = list(cmd)
        if not argv or not all(isinstance(a, str) for a in argv) or not argv[0]:
            raise ConfigurationError(
                f"cmd {cmd!r}: an argv list needs at least a program name, all strings"
            )
        body["argv"] = argv
    if cwd is not None:
        body["cwd"] = cwd
    if env:
        body["env"] = _str_map(env, "env")
    if timeout is not None:
        if not timeout > 0:
            raise ConfigurationError(f"timeout {timeout!r}: expected seconds > 0, or None")
        body["timeout"] = float(timeout)
    if stdin is not None:
        body["stdin"] = stdin
    if tag is not None:
        body["tag"] = tag
    return body


def describe_cmd(cmd: CmdArg) -> str:
    text = cmd if isinstance(cmd, str) else shlex.join(cmd)
    return text if len(text) <= 80 else text[:77] + "..."


class SSEParser:
    """Server-sent events, one line at a time (comments and keep-alives are skipped)."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []

    def feed(self, line: str) -> tuple[str, str] | None:
        """Returns ``(event, data)`` when ``line`` ends an event."""
        line = line.rstrip("\r\n")
        if not line:
            if not self._data and not self._event:
                return None
            ev = (self._event or "message", "\n".join(self._data))
            self._event, self._data = "", []
            return ev
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        return None


@dataclass
class ExecState:
    """What one process's event stream said so far."""

    cmd: CmdArg
    exec_id: str = ""
    pid: int = 0
    out: bytearray = field(default_factory=bytearray)
    err: bytearray = field(default_factory=bytearray)
    missed: int = 0
    exit: dict[str, Any] | None = None
    _dec: dict[str, codecs.IncrementalDecoder] = field(default_factory=dict)

    @property
    def started(self) -> bool:
        return self.pid != 0

    def handle(self, event: str, data: str) -> list[tuple[Stream, str]]:
        """Applies one event; returns the text chunks to pass to the callbacks, in order."""
        try:
            doc = json.loads(data) if data else {}
        except ValueError as e:
            raise ProtocolError(f"exec stream: event {event!r} carries no JSON") from e
        if event == "started":
            self.exec_id = str(doc.get("exec_id", ""))
            self.pid = int(doc.get("pid", 0))
            if not self.pid:
                raise ProtocolError("exec stream: `started` without a pid")
            return []
        if event in ("stdout", "stderr", "pty"):
            try:
                chunk = base64.b64decode(doc.get("data", ""), validate=True)
            except (binascii.Error, ValueError) as e:
                raise ProtocolError(f"exec stream: {event} data is not base64") from e
            name: Stream = "stderr" if event == "stderr" else "stdout"
            (self.err if name == "stderr" else self.out).extend(chunk)
            text = self._decoder(name).decode(chunk)
            return [(name, text)] if text else []
        if event == "lagged":
            self.missed += int(doc.get("missed_chunks", 0))
            return []
        if event == "exit":
            self.exit = doc
            chunks: list[tuple[Stream, str]] = []
            stream: Stream
            for stream in ("stdout", "stderr"):
                if stream in self._dec:
                    tail = self._dec[stream].decode(b"", final=True)
                    if tail:
                        chunks.append((stream, tail))
            return chunks
        return []  # an event type from a newer server: ignored

    def _decoder(self, name: str) -> codecs.IncrementalDecoder:
        d = self._dec.get(name)
        if d is None:
            d = codecs.getincrementaldecoder("utf-8")(errors="replace")
            self._dec[name] = d
        return d

    def result(self) -> CommandResult:
        if self.exit is None:
            raise ProtocolError(
                f"the output stream of `{describe_cmd(self.cmd)}` (pid {self.pid}) ended before "
                "the process did; it may still be running (Sandbox.processes())"
            )
        x = self.exit
        end = str(x.get("end", "exited"))
        if end not in ("exited", "timeout", "output_limit", "sandbox_ended"):
            end = "exited"
        end_l: ExecEnd = end  # type: ignore[assignment]  # checked just above
        sig = x.get("signal")
        return CommandResult(
            exit_code=int(x.get("exit_code", -1)),
            stdout=bytes(self.out).decode("utf-8", "replace"),
            stderr=bytes(self.err).decode("utf-8", "replace"),
            stdout_bytes=bytes(self.out),
            stderr_bytes=bytes(self.err),
            signal=int(sig) if isinstance(sig, int) else None,
            end=end_l,
            duration_ms=int(x.get("duration_ms", 0)),
            output_bytes=int(x.get("output_bytes", 0)),
            pid=self.pid,
            exec_id=self.exec_id,
            missed_chunks=self.missed,
        )


def check_result(r: CommandResult, cmd: CmdArg, timeout: float | None, check: bool) -> None:
    """Raises the exception a result stands for (see :meth:`Sandbox.run`)."""
    what = f"`{describe_cmd(cmd)}`"
    if r.end == "timeout":
        limit = f"its timeout ({timeout:g} s)" if timeout else "its policy's limits.timeout"
        raise TimeoutError(
            f"{what} was killed when {limit} ran out; pass a larger timeout= "
            "(or run it with background=True)",
            result=r,
        )
    if r.end == "output_limit":
        raise OutputLimitExceeded(
            f"{what} was killed for printing more than its policy's limits.max_output; "
            "write large output to a file and read it with sbx.files.read()",
            exit_code=r.exit_code,
            result=r,
        )
    if r.end == "sandbox_ended":
        raise SandboxEnded(
            f"{what}: the sandbox ended while it ran (killed, or its timeout passed; "
            "sbx.set_timeout() extends it)"
        )
    if r.exit_code == 127:
        last = r.stderr.strip().splitlines()[-1:] or ["command not found"]
        raise CommandNotFound(
            f"{what} exited with 127 ({last[0]}): the program is not in the sandbox; "
            "check its name and PATH, or use a template that has it",
            exit_code=127,
            result=r,
        )
    if r.exit_code == 126:
        raise CommandNotExecutable(
            f"{what} exited with 126: the program cannot be executed (permissions, format)",
            exit_code=126,
            result=r,
        )
    if check and r.exit_code != 0:
        raise CommandFailed(
            f"{what} exited with {r.exit_code}" + (f": {r.stderr.strip()[-300:]}" if r.stderr else ""),
            exit_code=r.exit_code,
            result=r,
        )
