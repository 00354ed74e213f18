"""Python client for ``stockade serve``: run code an AI agent wrote in a throwaway sandbox.

    from stockade import Sandbox

    with Sandbox(template="base") as sbx:          # STOCKADE_SERVER, STOCKADE_API_KEY
        r = sbx.run("echo hi", on_stdout=print)
        sbx.files.write("data.txt", b"...")
        for ev in sbx.trace():
            print(ev.describe())

:class:`AsyncSandbox` is the same with ``async with`` and ``await``. Errors are
:class:`StockadeError` subclasses whose messages say what to do. See README.md.
"""

from ._async import AsyncCommandHandle, AsyncFiles, AsyncSandbox
from ._common import Retry
from ._errors import (
    AuditDisabled,
    AuthenticationError,
    CommandError,
    CommandFailed,
    CommandNotExecutable,
    CommandNotFound,
    ConfigurationError,
    Conflict,
    DirectoryNotEmpty,
    DiskFull,
    FileExists,
    FileNotFound,
    InvalidRequest,
    IsADirectory,
    NotADirectory,
    NotFound,
    OutputLimitExceeded,
    PermissionDenied,
    ProcessNotFound,
    ProtocolError,
    QuotaExceeded,
    SandboxEnded,
    SandboxNotFound,
    ServerError,
    ServerUnreachable,
    StockadeError,
    TimeoutError,
    TooLarge,
)
from ._models import (
    AuditEvent,
    CommandResult,
    EntryInfo,
    ProcessInfo,
    SandboxInfo,
    Usage,
)
from ._sync import CommandHandle, Files, Sandbox
from ._version import __version__

__all__ = [
    "AsyncCommandHandle",
    "AsyncFiles",
    "AsyncSandbox",
    "AuditDisabled",
    "AuditEvent",
    "AuthenticationError",
    "CommandError",
    "CommandFailed",
    "CommandHandle",
    "CommandNotExecutable",
    "CommandNotFound",
    "CommandResult",
    "ConfigurationError",
    "Conflict",
    "DirectoryNotEmpty",
    "DiskFull",
    "EntryInfo",
    "FileExists",
    "FileNotFound",
    "Files",
    "InvalidRequest",
    "IsADirectory",
    "NotADirectory",
    "NotFound",
    "OutputLimitExceeded",
    "PermissionDenied",
    "ProcessInfo",
    "ProcessNotFound",
    "ProtocolError",
    "QuotaExceeded",
    "Retry",
    "Sandbox",
    "SandboxEnded",
    "SandboxInfo",
    "SandboxNotFound",
    "ServerError",
    "ServerUnreachable",
    "StockadeError",
    "TimeoutError",
    "TooLarge",
    "Usage",
    "__version__",
]
