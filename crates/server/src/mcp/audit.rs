//! `get_audit`: a compact account of a sandbox's audit trail for a model — what ran (with
//! exit codes), what it did on the network and what the policy decided, the files it changed,
//! the limits it hit and the violations recorded. The full trail stays in the state directory
//! (`stockade trace ID`, `GET /v1/sandboxes/{id}/events`).

use serde_json::{Value, json};
use std::collections::HashMap;
use stockade_audit::{Decision, Event, EventKind};

/// Most entries of each kind shown (the last ones; earlier ones are counted).
pub const DEFAULT_ITEMS: usize = 50;
pub const MAX_ITEMS: usize = 500;

fn name<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Shell-like display of an argv (quoted where needed), at most 300 characters.
fn show_argv(argv: &[String]) -> String {
    let mut s = argv
        .iter()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    if s.chars().count() > 300 {
        s = s.chars().take(300).collect::<String>() + "…";
    }
    s
}

/// Keeps the last `n` of `v` and says how many were left out.
fn last<T>(mut v: Vec<T>, n: usize) -> (Vec<T>, usize) {
    let omitted = v.len().saturating_sub(n);
    v.drain(..omitted);
    (v, omitted)
}

/// The summary as (text for the model, structured JSON).
pub fn summarize(sandbox_id: &str, events: &[Event], items: usize) -> (String, Value) {
    let mut commands: Vec<Value> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut network = Vec::new();
    let mut files = Vec::new();
    let mut limits = Vec::new();
    let mut violations: Vec<Value> = Vec::new();
    let mut secrets = Vec::new();
    let mut sandbox = json!({ "id": sandbox_id });
    for e in events {
        let exec = e.exec_id.clone().unwrap_or_default();
        match &e.kind {
            EventKind::SandboxCreated { enforced, .. } => {
                sandbox["created_at"] = json!(e.at);
                sandbox["isolation"] = json!(enforced.level);
            }
            EventKind::SandboxDestroyed { reason, clean, .. } => {
                sandbox["destroyed_at"] = json!(e.at);
                sandbox["destroyed_reason"] = json!(name(reason));
                sandbox["clean"] = json!(clean);
            }
            EventKind::ExecStarted { argv, cwd, .. } => {
                index.insert(exec.clone(), commands.len());
                commands.push(json!({
                    "exec_id": exec, "command": show_argv(argv), "cwd": cwd, "started_at": e.at,
                }));
            }
            EventKind::ExecExited {
                exit_code,
                signal,
                duration_ms,
                limit,
                output_bytes,
                ..
            } => {
                let Some(&i) = index.get(&exec) else {
                    continue;
                };
                let c = &mut commands[i];
                c["ended"] = json!(true);
                c["exit_code"] = json!(exit_code);
                if signal.is_some() {
                    c["signal"] = json!(signal);
                }
                c["duration_ms"] = json!(duration_ms);
                c["output_bytes"] = json!(output_bytes);
                if let Some(l) = limit {
                    c["limit"] = json!(name(l));
                }
            }
            EventKind::NetDns {
                name: n,
                qtype,
                decision,
                reason,
                ..
            } => network.push(json!({
                "at": e.at, "kind": "dns", "name": n, "qtype": qtype,
                "decision": name(decision), "reason": reason,
            })),
            EventKind::NetConnect {
                name: n,
                port,
                decision,
                reason,
                bytes_out,
                bytes_in,
                ..
            } => network.push(json!({
                "at": e.at, "kind": "connect", "name": n, "port": port,
                "decision": name(decision), "reason": reason,
                "bytes_out": bytes_out, "bytes_in": bytes_in,
            })),
            EventKind::FileChanged { path, change, size } => files.push(json!({
                "at": e.at, "path": path, "change": name(change), "size": size,
                "exec_id": e.exec_id,
            })),
            EventKind::FileRead { path } => files.push(json!({
                "at": e.at, "path": path, "change": "read", "exec_id": e.exec_id,
            })),
            EventKind::LimitHit {
                limit,
                value,
                detail,
            } => limits.push(json!({
                "at": e.at, "limit": name(limit), "value": value, "detail": detail,
                "exec_id": e.exec_id,
            })),
            EventKind::Violation { kind, detail, .. } => {
                // The same refusal repeated (a runtime probing a syscall) is one line.
                if let Some(v) = violations.last_mut()
                    && v["kind"] == json!(name(kind))
                    && v["detail"] == json!(detail)
                {
                    v["count"] = json!(v["count"].as_u64().unwrap_or(1) + 1);
                    continue;
                }
                violations.push(json!({
                    "at": e.at, "kind": name(kind), "detail": detail, "exec_id": e.exec_id,
                    "count": 1,
                }));
            }
            EventKind::SecretUsed { name: n, host, .. } => secrets.push(json!({
                "at": e.at, "secret": n, "used_for": host,
            })),
            EventKind::SecretRefused {
                name: n,
                destination,
                reason,
            } => secrets.push(json!({
                "at": e.at, "secret": n, "refused_for": destination, "reason": reason,
            })),
        }
    }
    let denied = network
        .iter()
        .filter(|n| n["decision"] == json!(name(&Decision::Denied)))
        .count();
    let (commands, c_om) = last(commands, items);
    let (network, n_om) = last(network, items);
    let (files, f_om) = last(files, items);
    let (limits, l_om) = last(limits, items);
    let (violations, v_om) = last(violations, items);
    let (secrets, s_om) = last(secrets, items);

    let mut t = format!(
        "audit trail of sandbox {sandbox_id}: {} events, {} commands, {} network decisions ({denied} denied), {} file events, {} limits hit, {} violations\n",
        events.len(),
        commands.len() + c_om,
        network.len() + n_om,
        files.len() + f_om,
        limits.len() + l_om,
        violations.len() + v_om,
    );
    let more = |t: &mut String, n: usize| {
        if n > 0 {
            t.push_str(&format!("  ({n} earlier not shown)\n"));
        }
    };
    t.push_str("commands:\n");
    more(&mut t, c_om);
    for c in &commands {
        let mut end = match (&c["ended"], &c["exit_code"], &c["signal"]) {
            (Value::Null, _, _) => "running".to_string(),
            (_, Value::Null, Value::Null) => "ended".to_string(),
            (_, Value::Null, sig) => format!("killed by signal {sig}"),
            (_, code, Value::Null) => format!("exit {code}"),
            (_, code, sig) => format!("exit {code} (signal {sig})"),
        };
        if let Some(l) = c["limit"].as_str() {
            end.push_str(&format!(" ({l} limit)"));
        }
        let ms = c["duration_ms"]
            .as_u64()
            .map(|m| format!(", {m} ms"))
            .unwrap_or_default();
        t.push_str(&format!(
            "  {} $ {}  -> {end}{ms}\n",
            c["exec_id"].as_str().unwrap_or(""),
            c["command"].as_str().unwrap_or("")
        ));
    }
    if !network.is_empty() || n_om > 0 {
        t.push_str("network:\n");
        more(&mut t, n_om);
        for n in &network {
            let port = n["port"]
                .as_u64()
                .map(|p| format!(":{p}"))
                .unwrap_or_default();
            t.push_str(&format!(
                "  {} {} {}{port} ({})\n",
                n["decision"].as_str().unwrap_or(""),
                n["kind"].as_str().unwrap_or(""),
                n["name"].as_str().unwrap_or(""),
                n["reason"].as_str().unwrap_or(""),
            ));
        }
    }
    if !files.is_empty() || f_om > 0 {
        t.push_str("files:\n");
        more(&mut t, f_om);
        for f in &files {
            let size = f["size"]
                .as_u64()
                .map(|s| format!(" ({s} bytes)"))
                .unwrap_or_default();
            t.push_str(&format!(
                "  {} {}{size}\n",
                f["change"].as_str().unwrap_or(""),
                f["path"].as_str().unwrap_or("")
            ));
        }
    }
    for (title, list, om) in [
        ("limits hit", &limits, l_om),
        ("violations", &violations, v_om),
    ] {
        if !list.is_empty() || om > 0 {
            t.push_str(&format!("{title}:\n"));
            more(&mut t, om);
            for x in list.iter() {
                let times = match x["count"].as_u64() {
                    Some(n) if n > 1 => format!(" (x{n})"),
                    _ => String::new(),
                };
                t.push_str(&format!(
                    "  {}: {}{times}\n",
                    x.get("limit")
                        .or(x.get("kind"))
                        .and_then(Value::as_str)
                        .unwrap_or(""),
                    x["detail"].as_str().unwrap_or("")
                ));
            }
        }
    }
    if !secrets.is_empty() || s_om > 0 {
        t.push_str("secrets:\n");
        more(&mut t, s_om);
        for s in &secrets {
            match s.get("refused_for") {
                Some(d) => t.push_str(&format!(
                    "  refused {} for {} ({})\n",
                    s["secret"].as_str().unwrap_or(""),
                    d.as_str().unwrap_or(""),
                    s["reason"].as_str().unwrap_or("")
                )),
                None => t.push_str(&format!(
                    "  used {} for {}\n",
                    s["secret"].as_str().unwrap_or(""),
                    s["used_for"].as_str().unwrap_or("")
                )),
            }
        }
    }
    let data = json!({
        "sandbox_id": sandbox_id,
        "sandbox": sandbox,
        "events": events.len(),
        "commands": commands,
        "network": network,
        "files": files,
        "limits": limits,
        "violations": violations,
        "secrets": secrets,
        "omitted": {
            "commands": c_om, "network": n_om, "files": f_om, "limits": l_om,
            "violations": v_om, "secrets": s_om,
        },
    });
    (t, data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use stockade_audit::Change;

    fn ev(seq: u64, exec: Option<&str>, kind: EventKind) -> Event {
        Event {
            schema_version: 1,
            seq,
            at: format!("2026-11-27T00:00:{seq:02}.000000Z"),
            sandbox_id: "0123456789abcdef".into(),
            exec_id: exec.map(str::to_string),
            kind,
        }
    }

    #[test]
    fn summary_pairs_commands_and_lists_denials() {
        let events = vec![
            ev(
                1,
                Some("e1"),
                EventKind::ExecStarted {
                    argv: vec!["sh".into(), "-c".into(), "echo hi".into()],
                    cwd: "/home/sandbox".into(),
                    env_names: vec![],
                },
            ),
            ev(
                2,
                Some("session"),
                EventKind::NetDns {
                    name: "api.example.com".into(),
                    qtype: "A".into(),
                    decision: Decision::Denied,
                    reason: "denied:not_in_allowlist".into(),
                    answers: vec![],
                },
            ),
            ev(
                3,
                Some("e1"),
                EventKind::ExecExited {
                    exit_code: Some(6),
                    signal: None,
                    duration_ms: 12,
                    cpu_time_ms: None,
                    peak_memory_bytes: None,
                    output_bytes: 40,
                    limit: None,
                },
            ),
            ev(
                4,
                None,
                EventKind::FileChanged {
                    path: "/home/sandbox/a.txt".into(),
                    change: Change::Created,
                    size: 5,
                },
            ),
        ];
        let (text, data) = summarize("0123456789abcdef", &events, DEFAULT_ITEMS);
        assert!(
            text.contains("e1 $ sh -c 'echo hi'  -> exit 6, 12 ms"),
            "{text}"
        );
        assert!(
            text.contains("denied dns api.example.com (denied:not_in_allowlist)"),
            "{text}"
        );
        assert!(
            text.contains("created /home/sandbox/a.txt (5 bytes)"),
            "{text}"
        );
        assert_eq!(data["commands"][0]["exit_code"], 6);
        assert_eq!(data["network"][0]["decision"], "denied");
        let (_, d1) = summarize("0123456789abcdef", &events, 0);
        assert_eq!(d1["omitted"]["commands"], 1);
    }
}
