"""The values the API returns, as frozen dataclasses (parsed from the server's JSON)."""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

from ._errors import ProtocolError

EntryKind = Literal["file", "dir", "symlink", "other"]
ExecEnd = Literal["exited", "timeout", "output_limit", "sandbox_ended"]


def _time(v: Any, what: str) -> datetime:
    if not isinstance(v, str):
        raise ProtocolError(f"{what}: expected an RFC 3339 time, got {v!r}")
    try:
        return datetime.fromisoformat(v)
    except ValueError as e:
        raise ProtocolError(f"{what}: expected an RFC 3339 time, got {v!r}") from e


def _opt_int(d: Mapping[str, Any], k: str) -> int | None:
    v = d.get(k)
    return v if isinstance(v, int) else None


def _req(d: Mapping[str, Any], k: str, what: str) -> Any:
    try:
        return d[k]
    except (KeyError, TypeError) as e:
        raise ProtocolError(f"{what}: the server's answer has no `{k}`") from e


@dataclass(frozen=True)
class Usage:
    """Resource use from the sandbox's cgroup; a figure the host cannot give is None."""

    cpu_ns: int | None
    memory_bytes: int | None
    memory_peak_bytes: int | None
    pids: int | None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Usage:
        return cls(
            cpu_ns=_opt_int(d, "cpu_ns"),
            memory_bytes=_opt_int(d, "memory_bytes"),
            memory_peak_bytes=_opt_int(d, "memory_peak_bytes"),
            pids=_opt_int(d, "pids"),
        )


@dataclass(frozen=True)
class SandboxInfo:
    """A sandbox as the server describes it (``GET /v1/sandboxes/{id}``)."""

    id: str
    template: str
    state: str
    created_at: datetime
    expires_at: datetime
    metadata: dict[str, str]
    #: Only from :meth:`Sandbox.info` (``GET /v1/sandboxes/{id}``); None in lists.
    usage: Usage | None = None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> SandboxInfo:
        w = "sandbox"
        usage = d.get("usage")
        return cls(
            id=str(_req(d, "id", w)),
            template=str(_req(d, "template", w)),
            state=str(_req(d, "state", w)),
            created_at=_time(_req(d, "created_at", w), "created_at"),
            expires_at=_time(_req(d, "expires_at", w), "expires_at"),
            metadata={str(k): str(v) for k, v in (d.get("metadata") or {}).items()},
            usage=Usage.from_json(usage) if isinstance(usage, dict) else None,
        )


@dataclass(frozen=True)
class EntryInfo:
    """A file, directory or symlink inside the sandbox (lstat: a final symlink is not followed)."""

    name: str
    #: Absolute inside the sandbox.
    path: str
    kind: EntryKind
    size: int
    #: ``st_mode & 0o7777``.
    mode: int
    uid: int
    gid: int
    modified_at: datetime
    #: As stored, not resolved (symlinks only).
    symlink_target: str | None = None

    @property
    def is_dir(self) -> bool:
        return self.kind == "dir"

    @property
    def is_file(self) -> bool:
        return self.kind == "file"

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> EntryInfo:
        w = "file entry"
        kind = str(_req(d, "kind", w))
        if kind not in ("file", "dir", "symlink", "other"):
            kind = "other"
        mtime = int(_req(d, "mtime", w)) + int(d.get("mtime_nsec") or 0) / 1e9
        target = d.get("symlink_target")
        return cls(
            name=str(_req(d, "name", w)),
            path=str(_req(d, "path", w)),
            kind=kind,  # type: ignore[arg-type]  # checked just above
            size=int(_req(d, "size", w)),
            mode=int(_req(d, "mode", w)),
            uid=int(_req(d, "uid", w)),
            gid=int(_req(d, "gid", w)),
            modified_at=datetime.fromtimestamp(mtime, tz=timezone.utc),
            symlink_target=str(target) if target is not None else None,
        )


@dataclass(frozen=True)
class ProcessInfo:
    """A process started through the API that is still running."""

    pid: int
    exec_id: str
    argv: list[str]
    cwd: str | None
    tag: str | None
    pty: bool

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ProcessInfo:
        w = "process"
        return cls(
            pid=int(_req(d, "pid", w)),
            exec_id=str(_req(d, "exec_id", w)),
            argv=[str(a) for a in _req(d, "argv", w)],
            cwd=d.get("cwd"),
            tag=d.get("tag"),
            pty=bool(d.get("pty")),
        )


@dataclass(frozen=True)
class CommandResult:
    """How a process ended and everything it printed.

    ``stdout``/``stderr`` are text (UTF-8, invalid sequences replaced); ``stdout_bytes`` /
    ``stderr_bytes`` are the exact bytes.
    """

    exit_code: int
    stdout: str
    stderr: str
    stdout_bytes: bytes = field(repr=False)
    stderr_bytes: bytes = field(repr=False)
    #: The signal that ended it (``exit_code`` is then 128 + signal).
    signal: int | None
    #: Why it ended: ``exited``, ``timeout``, ``output_limit`` or ``sandbox_ended``.
    end: ExecEnd
    duration_ms: int
    output_bytes: int
    pid: int
    exec_id: str
    #: Output chunks this client missed because it fell behind (0 normally).
    missed_chunks: int = 0

    @property
    def ok(self) -> bool:
        """True when the process exited with status 0."""
        return self.exit_code == 0 and self.end == "exited"


@dataclass(frozen=True)
class AuditEvent:
    """One event of a sandbox's audit trail (``docs/audit.md``).

    The common fields are attributes; the fields of each type (``argv`` and ``cwd`` for
    ``exec.started``, ``exit_code``/``signal`` for ``exec.exited``, ``name``/``port``/
    ``decision``/``reason`` for ``net.connect``, ``path``/``change`` for ``file.changed``...)
    are in ``fields``, also reachable as ``event["argv"]`` and ``event.get("signal")``.
    """

    type: str
    seq: int
    at: datetime
    sandbox_id: str
    #: The process it belongs to (``e1``...), ``session`` for the sandbox's own, or None.
    exec_id: str | None
    fields: dict[str, Any]

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> AuditEvent:
        w = "audit event"
        common = {"type", "seq", "at", "sandbox_id", "exec_id", "schema_version"}
        return cls(
            type=str(_req(d, "type", w)),
            seq=int(_req(d, "seq", w)),
            at=_time(_req(d, "at", w), "at"),
            sandbox_id=str(_req(d, "sandbox_id", w)),
            exec_id=d.get("exec_id"),
            fields={k: v for k, v in d.items() if k not in common},
        )

    def __getitem__(self, key: str) -> Any:
        return self.fields[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self.fields)

    def describe(self) -> str:
        """One line for people: ``exec.exited e2: exit 127``, ``net.connect evil.test:80
        denied (denied:not_in_allowlist)``..."""
        f = self.fields
        who = f" {self.exec_id}" if self.exec_id and self.exec_id != "session" else ""
        t = self.type
        if t == "exec.started":
            return f"exec.started{who}: {shlex.join(str(a) for a in f.get('argv', []))}"
        if t == "exec.exited":
            how = (
                f"signal {f['signal']}" if f.get("signal") is not None else f"exit {f.get('exit_code')}"
            )
            limit = f" (limit: {f['limit']})" if f.get("limit") else ""
            return f"exec.exited{who}: {how} after {f.get('duration_ms')} ms{limit}"
        if t == "net.connect":
            return (
                f"net.connect{who}: {f.get('name')}:{f.get('port')} {f.get('decision')} "
                f"({f.get('reason')}), {f.get('bytes_out')} B out, {f.get('bytes_in')} B in"
            )
        if t == "net.dns":
            return (
                f"net.dns{who}: {f.get('name')} {f.get('qtype')} {f.get('decision')} "
                f"({f.get('reason')})"
            )
        if t == "file.changed":
            return f"file.changed{who}: {f.get('path')} {f.get('change')} ({f.get('size')} B)"
        if t == "limit.hit":
            return f"limit.hit{who}: {f.get('limit')} {f.get('value')}: {f.get('detail')}"
        if t == "violation":
            return f"violation{who}: {f.get('kind')}: {f.get('detail')}"
        if t == "sandbox.created":
            return f"sandbox.created: workspace {f.get('workspace')} ({f.get('workspace_mode')})"
        if t == "sandbox.destroyed":
            return f"sandbox.destroyed: {f.get('reason')}, clean={f.get('clean')}"
        return f"{t}{who}: {json.dumps(f, sort_keys=True)}"
