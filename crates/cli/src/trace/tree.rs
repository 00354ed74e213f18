//! The timeline tree of `stockade trace`: events grouped under their command, a relative-time
//! column, colour on request, and every string from the log escaped before it is printed.
//!
//! The same [`Renderer`] draws a whole log (knowing what comes next, so the last branch of each
//! level is `└─`) and a followed one (printing each event as it arrives). Tested below and, with
//! exact lines, by `crates/cli/tests/trace_cli.rs`.

use crate::ls::{fmt_bytes, fmt_ms, limit_name, parse_at, printable, shell_join};
use std::collections::{HashMap, HashSet};
use stockade_audit::{
    Change, Decision, DestroyReason, Enforcement, Event, EventKind, ViolationKind,
};

/// ANSI colour on or off.
#[derive(Clone, Copy, Debug)]
pub(super) struct Style {
    pub on: bool,
}

/// Colour on a terminal, unless `NO_COLOR` is set to anything but the empty string (no-color.org).
pub(super) fn colour_wanted(is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    is_terminal && no_color.is_none_or(|v| v.is_empty())
}

const BOLD: &str = "1";
const DIM: &str = "2";
const RED: &str = "1;31";
const GREEN: &str = "32";
const YELLOW: &str = "33";
const CYAN: &str = "36";

impl Style {
    fn paint(self, sgr: &str, s: &str) -> String {
        if self.on && !s.is_empty() {
            format!("\x1b[{sgr}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }
}

/// What the renderer knows about the events after this one.
#[derive(Clone, Copy, Debug)]
pub(super) struct Hint {
    /// This event's top-level branch (its command, or itself) is the sandbox's last.
    top_last: bool,
    /// No later event of the same command.
    child_last: bool,
    /// `exec.started` with later events of its command / `sandbox.created` with any later event.
    has_children: bool,
}

impl Hint {
    /// While following, nothing is known about what comes next but that destroyed ends it all.
    pub(super) fn streaming(e: &Event) -> Hint {
        Hint {
            top_last: matches!(e.kind, EventKind::SandboxDestroyed { .. }),
            child_last: false,
            has_children: true,
        }
    }
}

/// The whole log as a tree: events grouped under their command (commands in order of their first
/// event), sandbox-level events between them where they happened.
pub(super) fn render_tree(id: &str, events: &[Event], style: Style) -> String {
    let mut groups: Vec<Vec<&Event>> = Vec::new();
    let mut by_exec: HashMap<&str, usize> = HashMap::new();
    for e in events {
        match e.exec_id.as_deref() {
            Some(x) => match by_exec.get(x) {
                Some(&g) => groups[g].push(e),
                None => {
                    by_exec.insert(x, groups.len());
                    groups.push(vec![e]);
                }
            },
            None => groups.push(vec![e]),
        }
    }
    let mut r = Renderer::new(id, style);
    let n = groups.len();
    for (gi, g) in groups.iter().enumerate() {
        for (j, e) in g.iter().enumerate() {
            let hint = Hint {
                top_last: gi + 1 == n,
                child_last: j + 1 == g.len(),
                has_children: if e.exec_id.is_some() {
                    j + 1 < g.len()
                } else {
                    gi + 1 < n
                },
            };
            r.event(e, hint);
        }
    }
    if events.is_empty() {
        r.bare_header("no events yet");
    }
    r.out
}

pub(super) struct Renderer<'a> {
    id: &'a str,
    style: Style,
    t0: Option<i64>,
    started: bool,
    current_exec: Option<String>,
    seen_execs: HashSet<String>,
    pub(super) out: String,
}

/// Width of the relative-time column.
const TIME_WIDTH: usize = 9;

impl<'a> Renderer<'a> {
    pub(super) fn new(id: &'a str, style: Style) -> Self {
        Renderer {
            id,
            style,
            t0: None,
            started: false,
            current_exec: None,
            seen_execs: HashSet::new(),
            out: String::new(),
        }
    }

    /// `   +1.2ms  TREE TEXT`; the time column is blank for detail lines.
    fn line(&mut self, at: Option<i64>, tree: &str, text: &str) {
        let time = match (at, self.t0) {
            (Some(a), Some(t0)) => rel(a - t0),
            _ => String::new(),
        };
        let s = self.style;
        let time = format!("{time:>TIME_WIDTH$}");
        let line = format!("{}  {}{text}", s.paint(DIM, &time), s.paint(DIM, tree));
        self.out.push_str(line.trim_end());
        self.out.push('\n');
    }

    fn bare_header(&mut self, note: &str) {
        let head = format!(
            "{} {}  ({note})",
            self.style.paint(BOLD, "sandbox"),
            self.style.paint(BOLD, &printable(self.id))
        );
        self.line(None, "", &head);
    }

    pub(super) fn event(&mut self, e: &Event, h: Hint) {
        let at = parse_at(&e.at);
        if !self.started {
            self.started = true;
            self.t0 = at;
            if let EventKind::SandboxCreated { .. } = &e.kind {
                return self.created(e, at, h.has_children);
            }
            self.bare_header("no sandbox.created event");
        }
        let s = self.style;
        let top = if h.top_last { "└─ " } else { "├─ " };
        let guide = if h.top_last { "   " } else { "│  " };
        match (e.exec_id.as_deref(), &e.kind) {
            (
                Some(x),
                EventKind::ExecStarted {
                    argv,
                    cwd,
                    env_names,
                },
            ) => {
                self.current_exec = Some(x.to_string());
                self.seen_execs.insert(x.to_string());
                let head = format!(
                    "{} {}",
                    s.paint(BOLD, &format!("exec {}:", printable(x))),
                    shell_join(argv)
                );
                self.line(at, top, &head);
                let env = if env_names.is_empty() {
                    "(none)".to_string()
                } else {
                    printable(&env_names.join(" ")).into_owned()
                };
                let sub = if h.has_children { "│ " } else { "  " };
                let detail = format!("cwd {} · env {env}", printable(cwd));
                self.line(None, &format!("{guide}{sub}"), &detail);
            }
            (Some(x), kind) => {
                if self.current_exec.as_deref() != Some(x) {
                    let head = if self.seen_execs.insert(x.to_string()) {
                        format!("exec {}: (no exec.started)", printable(x))
                    } else {
                        format!("exec {}: (continued)", printable(x))
                    };
                    self.line(None, top, &s.paint(BOLD, &head));
                    self.current_exec = Some(x.to_string());
                }
                let branch = if h.child_last { "└─ " } else { "├─ " };
                self.line(at, &format!("{guide}{branch}"), &describe(kind, s));
            }
            (None, kind) => {
                self.current_exec = None;
                self.line(at, top, &describe(kind, s));
            }
        }
    }

    /// `sandbox ID  created AT` and what was enforced.
    fn created(&mut self, e: &Event, at: Option<i64>, has_children: bool) {
        let EventKind::SandboxCreated {
            policy_digest,
            workspace,
            workspace_mode,
            enforced,
        } = &e.kind
        else {
            return;
        };
        let s = self.style;
        let head = format!(
            "{}  created {}",
            s.paint(BOLD, &format!("sandbox {}", printable(self.id))),
            printable(&e.at)
        );
        self.line(at, "", &head);
        let guide = if has_children { "│ " } else { "  " };
        let rows = [
            (
                "workspace",
                format!("{} ({})", printable(workspace), printable(workspace_mode)),
            ),
            ("policy", printable(policy_digest).into_owned()),
        ];
        for (k, v) in rows.into_iter().chain(enforcement(enforced, s)) {
            self.line(None, guide, &format!("{k:<10} {v}"));
        }
    }
}

/// The enforcement record as `key value` rows; missing protections stand out.
fn enforcement(en: &Enforcement, s: Style) -> Vec<(&'static str, String)> {
    let mut isolation = format!("{} · uid {} gid {}", printable(&en.level), en.uid, en.gid);
    isolation.push_str(&if en.no_new_privs {
        " · no_new_privs".to_string()
    } else {
        format!(" · {}", s.paint(RED, "no_new_privs OFF"))
    });
    isolation.push_str(&if en.capabilities_dropped {
        " · capabilities dropped".to_string()
    } else {
        format!(" · {}", s.paint(RED, "capabilities KEPT"))
    });
    let list = |v: Vec<String>| {
        if v.is_empty() {
            "(none)".to_string()
        } else {
            printable(&v.join(" · ")).into_owned()
        }
    };
    let weakened = if en.weakenings.is_empty() {
        "none".to_string()
    } else {
        s.paint(YELLOW, &printable(&en.weakenings.join("; ")))
    };
    vec![
        ("isolation", isolation),
        (
            "namespaces",
            printable(&en.namespaces.join(" ")).into_owned(),
        ),
        ("seccomp", printable(&en.seccomp).into_owned()),
        (
            "landlock",
            format!(
                "{} (kernel ABI {})",
                printable(&en.landlock),
                en.landlock_abi
            ),
        ),
        (
            "cgroups",
            list(
                en.cgroups
                    .iter()
                    .map(|c| format!("{} {}", c.controller, c.version))
                    .collect(),
            ),
        ),
        ("weakened", weakened),
    ]
}

/// One event as `label     text`.
fn describe(kind: &EventKind, s: Style) -> String {
    let p = |x: &str| printable(x).into_owned();
    let decision = |d: Decision| match d {
        Decision::Allowed => s.paint(GREEN, "allowed"),
        Decision::Denied => s.paint(RED, "denied"),
    };
    let (label_colour, text) = match kind {
        EventKind::SandboxCreated { policy_digest, .. } => (CYAN, p(policy_digest)),
        EventKind::SandboxDestroyed {
            reason,
            clean,
            leftovers,
            duration_ms,
            error,
        } => {
            let verdict = if *clean {
                s.paint(GREEN, "clean")
            } else if leftovers.is_empty() {
                s.paint(RED, "NOT clean")
            } else {
                s.paint(RED, &format!("NOT clean: {}", p(&leftovers.join(", "))))
            };
            let reason = reason_name(*reason);
            let reason = match reason {
                "exit" => reason.to_string(),
                _ => s.paint(YELLOW, reason),
            };
            let mut t = format!("{reason} · {verdict} · {}", fmt_ms(*duration_ms));
            if let Some(e) = error {
                t.push_str(&format!(" · {}", s.paint(RED, &format!("error: {}", p(e)))));
            }
            (CYAN, t)
        }
        EventKind::ExecStarted { argv, .. } => (CYAN, shell_join(argv)),
        EventKind::ExecExited {
            exit_code,
            signal,
            duration_ms,
            cpu_time_ms,
            peak_memory_bytes,
            output_bytes,
            limit,
        } => {
            let how = match (exit_code, signal) {
                (Some(0), _) => s.paint(GREEN, "exit 0"),
                (Some(c), _) => s.paint(RED, &format!("exit {c}")),
                (None, Some(sig)) => s.paint(RED, &format!("signal {sig}{}", signame(*sig))),
                (None, None) => "ended".to_string(),
            };
            let mut t = format!("{how} in {}", fmt_ms(*duration_ms));
            if let Some(c) = cpu_time_ms {
                t.push_str(&format!(" · cpu {}", fmt_ms(*c)));
            }
            if let Some(m) = peak_memory_bytes {
                t.push_str(&format!(" · peak {}", fmt_bytes(*m)));
            }
            t.push_str(&format!(" · output {}", fmt_bytes(*output_bytes)));
            if let Some(l) = limit {
                t.push_str(&format!(
                    " · {}",
                    s.paint(YELLOW, &format!("stopped by the {} limit", limit_name(*l)))
                ));
            }
            (CYAN, t)
        }
        EventKind::LimitHit {
            limit,
            value,
            detail,
        } => (
            YELLOW,
            format!("{} {}: {}", limit_name(*limit), p(value), p(detail)),
        ),
        EventKind::Violation {
            kind,
            detail,
            syscall,
            path,
            errno,
        } => {
            let mut t = violation_name(*kind).to_string();
            for x in [syscall, path].into_iter().flatten() {
                t.push(' ');
                t.push_str(&p(x));
            }
            if let Some(n) = errno {
                t.push_str(&format!(" errno {n}{}", errno_name(*n)));
            }
            (RED, format!("{t}: {}", p(detail)))
        }
        EventKind::FileChanged { path, change, size } => (
            CYAN,
            match change {
                Change::Deleted => format!("deleted {}", p(path)),
                Change::Created => format!("created {} ({})", p(path), fmt_bytes(*size)),
                Change::Modified => format!("modified {} ({})", p(path), fmt_bytes(*size)),
            },
        ),
        EventKind::FileRead { path } => (YELLOW, p(path)),
        EventKind::NetDns {
            name,
            qtype,
            decision: d,
            reason,
            answers,
        } => {
            let mut t = format!("{} {} {} ({})", p(name), p(qtype), decision(*d), p(reason));
            if !answers.is_empty() {
                t.push_str(&format!(" → {}", p(&answers.join(", "))));
            }
            (CYAN, t)
        }
        EventKind::NetConnect {
            name,
            port,
            decision: d,
            reason,
            bytes_out,
            bytes_in,
            duration_ms,
        } => (
            CYAN,
            format!(
                "{}:{port} {} ({}) · out {} · in {} · {}",
                p(name),
                decision(*d),
                p(reason),
                fmt_bytes(*bytes_out),
                fmt_bytes(*bytes_in),
                fmt_ms(*duration_ms)
            ),
        ),
        EventKind::SecretUsed { name, host, count } => {
            (CYAN, format!("{} → {} ×{count}", p(name), p(host)))
        }
        EventKind::SecretRefused {
            name,
            destination,
            reason,
        } => (
            RED,
            format!("{} → {} ({})", p(name), p(destination), p(reason)),
        ),
    };
    let label = format!("{:<12}", kind.type_name());
    format!("{} {text}", s.paint(label_colour, &label))
}

fn reason_name(r: DestroyReason) -> &'static str {
    match r {
        DestroyReason::Exit => "exit",
        DestroyReason::Timeout => "timeout",
        DestroyReason::Limit => "limit",
        DestroyReason::Killed => "killed",
        DestroyReason::Error => "error",
    }
}

fn violation_name(k: ViolationKind) -> &'static str {
    match k {
        ViolationKind::Syscall => "syscall",
        ViolationKind::Landlock => "landlock",
        ViolationKind::WriteOutsideWorkspace => "write_outside_workspace",
        ViolationKind::GitProtection => "git_protection",
    }
}

/// ` (SIGKILL)` for the common signals, empty otherwise.
fn signame(sig: i32) -> &'static str {
    match sig {
        1 => " (SIGHUP)",
        2 => " (SIGINT)",
        3 => " (SIGQUIT)",
        4 => " (SIGILL)",
        6 => " (SIGABRT)",
        7 => " (SIGBUS)",
        8 => " (SIGFPE)",
        9 => " (SIGKILL)",
        11 => " (SIGSEGV)",
        13 => " (SIGPIPE)",
        14 => " (SIGALRM)",
        15 => " (SIGTERM)",
        24 => " (SIGXCPU)",
        25 => " (SIGXFSZ)",
        31 => " (SIGSYS)",
        _ => "",
    }
}

/// ` (EPERM)` for the errnos the walls return, empty otherwise.
fn errno_name(n: i32) -> &'static str {
    match n {
        1 => " (EPERM)",
        2 => " (ENOENT)",
        13 => " (EACCES)",
        18 => " (EXDEV)",
        22 => " (EINVAL)",
        28 => " (ENOSPC)",
        30 => " (EROFS)",
        38 => " (ENOSYS)",
        95 => " (EOPNOTSUPP)",
        _ => "",
    }
}

/// `+12.3ms`, `+1.250s`, `+2m03.4s`, `+1h02m03s` (`-` for an event before the first).
fn rel(us: i64) -> String {
    let sign = if us < 0 { '-' } else { '+' };
    let us = us.unsigned_abs();
    let ms = us / 1000;
    let body = match us {
        0..1_000_000 => format!("{}.{}ms", ms, us % 1000 / 100),
        1_000_000..60_000_000 => format!("{}.{:03}s", ms / 1000, ms % 1000),
        60_000_000..3_600_000_000 => {
            format!("{}m{:02}.{}s", ms / 60_000, ms / 1000 % 60, ms % 1000 / 100)
        }
        _ => format!(
            "{}h{:02}m{:02}s",
            ms / 3_600_000,
            ms / 60_000 % 60,
            ms / 1000 % 60
        ),
    };
    format!("{sign}{body}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ls;
    use std::ffi::OsStr;
    use stockade_audit::SCHEMA_VERSION;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour_wanted(true, None));
        assert!(colour_wanted(true, Some(OsStr::new(""))));
        assert!(!colour_wanted(true, Some(OsStr::new("1"))));
        assert!(!colour_wanted(false, None));
        assert_eq!(Style { on: true }.paint(RED, "x"), "\x1b[1;31mx\x1b[0m");
        assert_eq!(Style { on: false }.paint(RED, "x"), "x");
    }

    #[test]
    fn relative_times() {
        assert_eq!(rel(0), "+0.0ms");
        assert_eq!(rel(12_345), "+12.3ms");
        assert_eq!(rel(1_250_000), "+1.250s");
        assert_eq!(rel(123_400_000), "+2m03.4s");
        assert_eq!(rel(3_723_000_000), "+1h02m03s");
        assert_eq!(rel(-1_500), "-1.5ms");
    }

    fn ev(seq: u64, us: i64, exec: Option<&str>, kind: EventKind) -> Event {
        Event {
            schema_version: SCHEMA_VERSION,
            seq,
            at: ls::format_utc(1_700_000_000_000_000 + us, true),
            sandbox_id: "s1".into(),
            exec_id: exec.map(str::to_string),
            kind,
        }
    }

    #[test]
    fn interleaved_commands_are_grouped_and_hostile_text_is_escaped() {
        let started = |a: &str| EventKind::ExecStarted {
            argv: vec![a.into()],
            cwd: "/w".into(),
            env_names: vec![],
        };
        let read = |p: &str| EventKind::FileRead { path: p.into() };
        let events = vec![
            ev(1, 0, Some("e1"), started("a")),
            ev(2, 1000, Some("e2"), started("b")),
            ev(3, 2000, Some("e1"), read("x\x1b[2Jy")),
            ev(4, 3000, None, read("top")),
        ];
        let plain = render_tree("s1", &events, Style { on: false });
        let want = [
            "           sandbox s1  (no sandbox.created event)",
            "   +0.0ms  ├─ exec e1: a",
            "           │  │ cwd /w · env (none)",
            "   +2.0ms  │  └─ file.read    x\\x1b[2Jy",
            "   +1.0ms  ├─ exec e2: b",
            "           │    cwd /w · env (none)",
            "   +3.0ms  └─ file.read    top",
        ];
        assert_eq!(plain.lines().collect::<Vec<_>>(), want, "{plain}");
        // Following prints in arrival order: a command's late event gets its header again.
        let mut r = Renderer::new("s1", Style { on: false });
        for e in &events {
            r.event(e, Hint::streaming(e));
        }
        assert!(
            r.out.contains("           ├─ exec e1: (continued)\n"),
            "{}",
            r.out
        );
        assert!(!r.out.contains('\x1b'), "{}", r.out);
        let coloured = render_tree("s1", &events, Style { on: true });
        assert!(coloured.contains("\x1b[1mexec e1:\x1b[0m"), "{coloured}");
        assert_eq!(coloured.matches("\x1b[2J").count(), 0, "{coloured}");
    }
}
