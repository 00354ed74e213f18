"""Exceptions: one class per thing a caller can act on, each message saying what to do.

Every exception is a :class:`StockadeError`. Those that come from an HTTP answer carry the
server's ``status``, its stable ``code`` (``not_found``, ``too_many_sandboxes``...) and its own
``server_message``. Where Python has a matching built-in, the class also derives from it, so
``except FileNotFoundError`` or ``except TimeoutError`` work as expected.

No message ever contains the API key or a sandbox's access token.
"""

from __future__ import annotations

import builtins
import json
from enum import Enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._models import CommandResult

KEY_HINT = "set STOCKADE_API_KEY (or pass api_key=) to a key from `stockade keys create`"
SERVER_HINT = "is `stockade serve` running there? Set STOCKADE_SERVER (or pass server=)"


class StockadeError(Exception):
    """Base class of every error this package raises."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        server_message: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        #: The HTTP status of the server's answer, if the error is one.
        self.status = status
        #: The server's stable snake_case error code, if any.
        self.code = code
        #: The server's own message, unchanged.
        self.server_message = server_message

    def __str__(self) -> str:
        return self.message


class ConfigurationError(StockadeError):
    """The client is missing a setting (no server URL) or got a bad argument."""


class AuthenticationError(StockadeError):
    """401: no API key, or one the server does not accept (wrong or revoked)."""


class PermissionDenied(StockadeError, builtins.PermissionError):
    """403: refused inside the sandbox (EACCES, EPERM, EROFS)."""


class InvalidRequest(StockadeError):
    """400: the request itself is wrong (a policy error with line:col, a bad path, a bad timeout)."""


class NotADirectory(InvalidRequest, builtins.NotADirectoryError):
    """400 ``not_a_directory``: a path component is not a directory."""


class IsADirectory(InvalidRequest, builtins.IsADirectoryError):
    """400 ``is_a_directory``: a file operation named a directory."""


class NotFound(StockadeError):
    """404: something does not exist (see the subclasses)."""


class SandboxNotFound(NotFound):
    """404: no such sandbox for this key: it was killed, its time ran out, or it is another key's."""


class SandboxEnded(SandboxNotFound):
    """410: the sandbox ended (destroyed or expired) while the request ran."""


class FileNotFound(NotFound, builtins.FileNotFoundError):
    """404 on a file route: no such path inside the sandbox."""


class ProcessNotFound(NotFound, builtins.ProcessLookupError):
    """404 on a process route: the process has already ended."""


class Conflict(StockadeError):
    """409: clashes with the current state."""


class FileExists(Conflict, builtins.FileExistsError):
    """409 ``already_exists``."""


class DirectoryNotEmpty(Conflict):
    """409 ``not_empty``."""


class AuditDisabled(Conflict):
    """409 ``audit_disabled``: the sandbox's policy turned auditing off, so it has no trace."""


class TooLarge(StockadeError):
    """413: over a size cap (the server's ``--max-upload`` / ``--max-download``)."""


class QuotaExceeded(StockadeError):
    """429: a sandbox quota (per key or in total) is reached; the message is the server's."""


class DiskFull(StockadeError):
    """507: the sandbox's disk budget is used up (ENOSPC inside)."""


class ServerError(StockadeError):
    """500/503 or an answer this client does not understand."""


class ServerUnreachable(StockadeError, builtins.ConnectionError):
    """The server could not be reached, or the connection broke before an answer came."""


class TimeoutError(StockadeError, builtins.TimeoutError):  # noqa: A001 - deliberate, see docs
    """A time limit passed.

    From :meth:`Sandbox.run` (or a background process's ``wait``): the process was killed when
    its ``timeout`` ran out; ``result`` holds what it printed until then. From ``wait(timeout=)``:
    the process is still running (``result`` is None). From any request: the server did not
    answer in time.
    """

    def __init__(self, message: str, *, result: CommandResult | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        #: The killed process's result (output until the kill), when a process timed out.
        self.result = result


class CommandError(StockadeError):
    """A process ran (or was refused) in a way that :meth:`Sandbox.run` reports as an error.

    ``result`` is the full :class:`CommandResult` when the process ran; it is None when the
    sandbox refused to start it (``exit_code`` is still set).
    """

    def __init__(
        self,
        message: str,
        *,
        exit_code: int,
        result: CommandResult | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(message, **kw)
        self.exit_code = exit_code
        self.result = result

    @property
    def stdout(self) -> str:
        return self.result.stdout if self.result else ""

    @property
    def stderr(self) -> str:
        return self.result.stderr if self.result else ""


class CommandNotFound(CommandError):
    """Exit status 127: the program does not exist inside the sandbox (or is not on its PATH)."""


class CommandNotExecutable(CommandError):
    """Exit status 126: the program exists but cannot be executed (permissions, format)."""


class CommandFailed(CommandError):
    """A non-zero exit status, raised only with ``run(..., check=True)``."""


class OutputLimitExceeded(CommandError):
    """The process was killed for printing more than its policy's ``limits.max_output``."""


class ProtocolError(StockadeError):
    """The server's answer broke the protocol (a stream that ended too early, bad JSON)."""


class Context(Enum):
    """Which kind of thing a request was about: decides what a 404 means."""

    SANDBOX = "sandbox"
    FILE = "file"
    PROCESS = "process"
    EXEC = "exec"


def _parse_error(body: bytes) -> tuple[str | None, str]:
    try:
        doc = json.loads(body)
        err = doc["error"]
        return str(err["code"]), str(err["message"])
    except (ValueError, KeyError, TypeError):
        text = body.decode("utf-8", "replace").strip()
        return None, text[:500] or "(no body)"


def error_from_response(status: int, body: bytes, context: Context) -> StockadeError:
    """The exception for a failed answer (``status`` ≥ 400) of the native API."""
    code, msg = _parse_error(body)
    kw: dict[str, Any] = {"status": status, "code": code, "server_message": msg}
    head = f"{status} {code or 'error'}: {msg}"
    if status == 401:
        return AuthenticationError(f"{head}; {KEY_HINT}", **kw)
    if status == 403:
        return PermissionDenied(f"{head}; refused inside the sandbox, as its user", **kw)
    if status == 404:
        if msg.startswith(("no sandbox", "no such sandbox")) or context is Context.SANDBOX:
            return SandboxNotFound(
                f"{head}; it was killed, its timeout passed, or it belongs to another API key "
                "(Sandbox.list() shows yours)",
                **kw,
            )
        if context is Context.FILE:
            return FileNotFound(
                f"{head}; paths are absolute inside the sandbox or relative to its home", **kw
            )
        if context is Context.PROCESS:
            return ProcessNotFound(f"{head}; the process has already ended", **kw)
        return NotFound(head, **kw)
    if status == 409:
        if code == "already_exists":
            return FileExists(head, **kw)
        if code == "not_empty":
            return DirectoryNotEmpty(head, **kw)
        if code == "audit_disabled":
            return AuditDisabled(head, **kw)
        return Conflict(head, **kw)
    if status == 410:
        return SandboxEnded(f"{head}; create a new sandbox", **kw)
    if status == 413:
        return TooLarge(
            f"{head}; the server caps single transfers: --max-upload / --max-download", **kw
        )
    if status == 429:
        return QuotaExceeded(
            f"{head}; kill sandboxes you no longer need (Sandbox.list(), sbx.kill()) "
            "or ask the operator to raise --max-per-key / --max-sandboxes",
            **kw,
        )
    if status == 507:
        return DiskFull(
            f"{head}; remove files in the sandbox, or use a template with a larger limits.disk",
            **kw,
        )
    if status == 400:
        if code == "command_not_found":
            return CommandNotFound(
                f"{head}; exit 127: check the name, or install it in the template",
                exit_code=127,
                **kw,
            )
        if code == "command_not_executable":
            return CommandNotExecutable(
                f"{head}; exit 126: check its permissions and format", exit_code=126, **kw
            )
        if code == "not_a_directory":
            return NotADirectory(head, **kw)
        if code == "is_a_directory":
            return IsADirectory(head, **kw)
        return InvalidRequest(head, **kw)
    if status >= 500:
        return ServerError(f"{head}; the server's log has the details", **kw)
    return StockadeError(head, **kw)
