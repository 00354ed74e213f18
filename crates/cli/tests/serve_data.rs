//! End-to-end tests of `stockade serve`'s native data plane (issue 7): the real binary on a free
//! port of 127.0.0.1, a fresh state directory, a key from `stockade keys create`; everything
//! through HTTP and WebSockets as a client sees it.
//!
//! Covered: exec over SSE (exact bytes, exit codes, signals, stdin, env/cwd, 127/126 refusals
//! next to a command that runs, timeout and output-limit kills, the audit events of each), exec
//! over the WebSocket (PTY: `tty`, `stty size` before and after a resize; stdin; re-attach by pid;
//! signals through the API), files (binary round trip, list/stat/mkdir/move/remove with exact
//! codes), hostile paths (`..`, absolute host paths, symlinks planted inside pointing at host
//! paths, /proc magic links: a canary planted on the host is never read nor written, next to a
//! control that reads a host file the sandbox may read), upload and download caps (413, nothing
//! left), a full disk (507, nothing left), watch, events, usage, credentials (key, access token,
//! other key, none), every documented route served, and that a sandbox cannot reach the API.
//! Runs as root (CI does): sandboxes need cgroups and user namespaces.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support_serve;

use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use stockade_audit::{EventKind, Limit};
use support_serve::*;

#[test]
fn exec_over_sse_exact_output_status_and_audit() {
    let srv = Server::start(&[]);
    let (id, _) = srv.create(&json!({}));

    // Exact bytes on each stream, exit 0, the started event first.
    let ev = srv
        .exec_sse(
            &id,
            &json!({"cmd": "printf 'hello\\n'; printf 'a\\000\\377b' >&2"}),
        )
        .unwrap();
    assert_eq!(ev[0].0, "started", "{ev:?}");
    assert!(ev[0].1["pid"].as_i64().unwrap() > 0);
    assert_eq!(output(&ev, "stdout"), b"hello\n");
    assert_eq!(output(&ev, "stderr"), b"a\0\xffb");
    let exit = exit_of(&ev);
    assert_eq!(exit["exit_code"], 0);
    assert_eq!(exit["end"], "exited");
    assert_eq!(exit["signal"], Value::Null);
    assert_eq!(exit["output_bytes"], 10);

    // Exit status, a signal, stdin, env and cwd.
    let exit = exit_of(&srv.exec_sse(&id, &json!({"cmd": "exit 3"})).unwrap());
    assert_eq!(exit["exit_code"], 3);
    let exit = exit_of(&srv.exec_sse(&id, &json!({"cmd": "kill -TERM $$"})).unwrap());
    assert_eq!(
        (exit["signal"].as_i64(), exit["exit_code"].as_i64()),
        (Some(15), Some(143))
    );
    let v = srv.exec_wait(
        &id,
        &json!({"argv": ["cat"], "stdin": "line one\nline two"}),
    );
    assert_eq!(v["stdout"], "line one\nline two");
    let v = srv.exec_wait(
        &id,
        &json!({"argv": ["sh", "-c", "echo $FOO; pwd"], "env": {"FOO": "bar"}, "cwd": "/tmp"}),
    );
    assert_eq!(v["stdout"], "bar\n/tmp\n", "{v}");
    // Without stdin, the process reads /dev/null (ends at once).
    let v = srv.exec_wait(&id, &json!({"argv": ["cat"]}));
    assert_eq!(
        (v["exit_code"].as_i64(), v["stdout"].as_str()),
        (Some(0), Some(""))
    );
    // Non-UTF-8 output keeps its exact bytes in stdout_b64.
    let v = srv.exec_wait(&id, &json!({"cmd": "printf '\\377\\376'"}));
    assert_eq!(unb64(v["stdout_b64"].as_str().unwrap()), b"\xff\xfe");

    // Refusals before any stream, next to a control that runs.
    let r = srv
        .exec_sse(&id, &json!({"argv": ["no-such-command-xyz"]}))
        .unwrap_err();
    assert_eq!(r.err(), (400, "command_not_found".into()), "{}", r.text());
    srv.sh(
        &id,
        "printf '#!/bin/sh\\necho ran\\n' > ~/script; chmod 644 ~/script",
    );
    let r = srv
        .exec_sse(&id, &json!({"argv": ["/home/sandbox/script"]}))
        .unwrap_err();
    assert_eq!(
        r.err(),
        (400, "command_not_executable".into()),
        "{}",
        r.text()
    );
    srv.sh(&id, "chmod 755 ~/script");
    let v = srv.exec_wait(&id, &json!({"argv": ["/home/sandbox/script"]}));
    assert_eq!(
        (v["exit_code"].as_i64(), v["stdout"].as_str()),
        (Some(0), Some("ran\n"))
    );
    for bad in [
        json!({}),
        json!({"argv": ["a"], "cmd": "b"}),
        json!({"cmd": "true", "timeout": 0}),
        json!({"cmd": "true", "cwd": "/x\u{0}"}),
        json!({"cmd": "true", "bogus": 1}),
        json!({"cmd": "true", "pty": {"rows": 24, "cols": 80}}),
    ] {
        let r = srv.exec_sse(&id, &bad).unwrap_err();
        assert_eq!(r.err(), (400, "bad_request".into()), "{bad}: {}", r.text());
    }

    // A timeout kills: end "timeout", SIGKILL, well before the command would have ended.
    let t0 = Instant::now();
    let exit = exit_of(
        &srv.exec_sse(&id, &json!({"cmd": "sleep 30", "timeout": 1}))
            .unwrap(),
    );
    assert_eq!(exit["end"], "timeout", "{exit}");
    assert_eq!(exit["signal"], 9);
    assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
    // Control: the same command with room to finish ends on its own.
    let exit = exit_of(
        &srv.exec_sse(&id, &json!({"cmd": "sleep 0.2", "timeout": 10}))
            .unwrap(),
    );
    assert_eq!(
        (exit["end"].as_str(), exit["exit_code"].as_i64()),
        (Some("exited"), Some(0))
    );

    // The audit trail of the sandbox, through the API.
    let events = srv.events(&id);
    let started = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::ExecStarted { .. }))
        .count();
    let exited: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::ExecExited {
                exit_code, signal, ..
            } => Some((e.exec_id.clone().unwrap(), *exit_code, *signal)),
            _ => None,
        })
        .collect();
    assert_eq!(started, exited.len(), "{events:#?}");
    assert!(exited.contains(&("e1".into(), Some(0), None)), "{exited:?}");
    assert!(exited.iter().any(|(_, c, _)| *c == Some(127)), "{exited:?}");
    assert!(exited.iter().any(|(_, c, _)| *c == Some(126)), "{exited:?}");
    assert!(exited.iter().any(|(_, _, s)| *s == Some(15)), "{exited:?}");
    assert!(
        events.iter().any(|e| matches!(
            e.kind,
            EventKind::LimitHit {
                limit: Limit::Timeout,
                ..
            }
        )),
        "{events:#?}"
    );
    assert!(events.iter().any(|e| matches!(
        &e.kind,
        EventKind::ExecStarted { argv, .. } if argv == &["no-such-command-xyz"]
    )));
    // ?since= gives only the newer ones.
    let last = events.last().unwrap().seq;
    let r = srv.get(
        &format!("/v1/sandboxes/{id}/events?since={}", last - 1),
        Auth::Key,
    );
    assert_eq!(r.json().as_array().unwrap().len(), 1);

    let u = srv
        .get(&format!("/v1/sandboxes/{id}/usage"), Auth::Key)
        .json();
    assert!(u["cpu_ns"].as_u64().unwrap() > 0, "{u}");
    assert!(u["memory_bytes"].as_u64().unwrap() > 0, "{u}");
}

#[test]
fn output_limit_kills_and_says_so() {
    let srv = Server::start(&[]);
    let (id, _) = srv.create(&json!({"policy": "[limits]\nmax_output = \"64KiB\"\n"}));
    let ev = srv.exec_sse(&id, &json!({"cmd": "yes"})).unwrap();
    let exit = exit_of(&ev);
    assert_eq!(exit["end"], "output_limit", "{exit}");
    assert_eq!(exit["output_bytes"], 65536);
    assert_eq!(output(&ev, "stdout").len(), 65536);
    // Control: under the limit, all of it.
    let ev = srv
        .exec_sse(&id, &json!({"cmd": "head -c 60000 /dev/zero"}))
        .unwrap();
    assert_eq!(output(&ev, "stdout").len(), 60000);
    assert_eq!(exit_of(&ev)["end"], "exited");
}

#[test]
fn credentials_key_token_other_key_none() {
    let srv = Server::start(&[]);
    let (id, token) = srv.create(&json!({}));
    let other = Server::new_key(srv.state.path(), "other");
    let p = format!("/v1/sandboxes/{id}/exec?wait=true");
    let body = json!({"cmd": "echo ok"}).to_string();
    let run = |a| srv.req("POST", &p, a, Some(body.as_bytes()));
    // Controls: the owner's key and the sandbox's token work.
    assert_eq!(run(Auth::Key).json()["stdout"], "ok\n");
    assert_eq!(run(Auth::Token(&token)).json()["stdout"], "ok\n");
    assert_eq!(run(Auth::None).err(), (401, "unauthorized".into()));
    assert_eq!(
        run(Auth::Token("wrong")).err(),
        (401, "unauthorized".into())
    );
    // Another key cannot tell the sandbox exists.
    assert_eq!(run(Auth::OtherKey(&other)).err(), (404, "not_found".into()));
    let (id2, token2) = srv.create(&json!({}));
    // A token is good for its own sandbox only.
    let r = srv.req(
        "POST",
        &format!("/v1/sandboxes/{id2}/exec?wait=true"),
        Auth::Token(&token),
        Some(body.as_bytes()),
    );
    assert_eq!(r.err(), (401, "unauthorized".into()));
    let r = srv.get(&srv.files(&id2, "/etc/hostname"), Auth::Token(&token2));
    assert_eq!(r.status, 200, "{}", r.text());
    // The token is in no log or event.
    assert!(!srv.log().contains(&token));
    let trail = std::fs::read_to_string(
        srv.state
            .path()
            .join("sandboxes")
            .join(&id)
            .join("events.jsonl"),
    )
    .unwrap();
    let global = std::fs::read_to_string(srv.state.path().join("events.jsonl")).unwrap();
    assert!(!global.contains(&token) && !global.contains(&srv.key));
    assert!(trail.contains("exec.started") && !trail.contains(&token));
    assert!(!trail.contains(&srv.key));
}

#[test]
fn websocket_pty_resize_stdin_and_reattach() {
    let srv = Server::start(&[]);
    let (id, _) = srv.create(&json!({}));
    let ws_path = format!("/v1/sandboxes/{id}/exec/ws");

    // A PTY: a terminal, its size, then a resize seen by the next `stty size`.
    let mut ws = srv.ws(&ws_path, Auth::Key).unwrap();
    ws.send(json!({
        "argv": ["sh", "-c", "tty; stty size; read x; stty size; echo got:$x"],
        "pty": {"rows": 30, "cols": 100}
    }));
    let (out, msgs) = ws.until(|_, out| out.contains("30 100"));
    assert!(msgs[0]["started"]["pid"].as_i64().unwrap() > 0, "{msgs:?}");
    let tty_line = out.lines().next().unwrap().trim();
    assert!(
        tty_line.starts_with("/dev/pts/") && tty_line[9..].parse::<u32>().is_ok(),
        "{out:?}"
    );
    assert!(
        msgs.iter().all(|m| m.get("stdout").is_none()),
        "a PTY has one stream"
    );
    ws.send(json!({"resize": {"rows": 40, "cols": 120}}));
    ws.send(json!({"stdin": b64(b"go\n")}));
    let (out, msgs) = ws.until(|v, _| v.get("exit").is_some());
    assert!(out.contains("40 120"), "{out:?}");
    assert!(out.contains("got:go"), "{out:?}");
    assert_eq!(msgs.last().unwrap()["exit"]["exit_code"], 0);
    assert!(ws.recv().is_none(), "closed after exit");

    // Without a PTY: stdin as binary messages, EOF with close_stdin, stderr apart.
    let mut ws = srv.ws(&ws_path, Auth::Key).unwrap();
    ws.send(json!({"cmd": "cat; echo done >&2"}));
    ws.send_binary(b"\x00\x01raw\n");
    ws.send(json!({"close_stdin": true}));
    let (_, msgs) = ws.until(|v, _| v.get("exit").is_some());
    let stdout: Vec<u8> = msgs
        .iter()
        .filter_map(|m| m["stdout"].as_str())
        .flat_map(unb64)
        .collect();
    let stderr: Vec<u8> = msgs
        .iter()
        .filter_map(|m| m["stderr"].as_str())
        .flat_map(unb64)
        .collect();
    assert_eq!(stdout, b"\x00\x01raw\n");
    assert_eq!(stderr, b"done\n");

    // A refused start is an error message, then the socket closes.
    let mut ws = srv.ws(&ws_path, Auth::Key).unwrap();
    ws.send(json!({"argv": ["no-such-command-xyz"]}));
    let v = ws.recv().unwrap();
    assert_eq!(v["error"]["code"], "command_not_found", "{v}");
    assert!(ws.recv().is_none());
    // No credentials: refused before the upgrade.
    assert_eq!(srv.ws(&ws_path, Auth::None).err().map(|e| e.0), Some(401));

    // Re-attach: the client goes away, the process runs on, a new client talks to it by pid.
    let mut ws = srv.ws(&ws_path, Auth::Key).unwrap();
    ws.send(json!({"argv": ["sh", "-c", "read x; echo got:$x"], "tag": "waiter"}));
    let pid = ws.recv().unwrap()["started"]["pid"].as_i64().unwrap();
    drop(ws);
    std::thread::sleep(Duration::from_millis(300));
    let list = srv
        .get(&format!("/v1/sandboxes/{id}/processes"), Auth::Key)
        .json();
    let p = list["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == pid)
        .unwrap_or_else(|| panic!("{pid} not running: {list}"))
        .clone();
    assert_eq!(p["tag"], "waiter");
    assert_eq!(p["argv"], json!(["sh", "-c", "read x; echo got:$x"]));
    let mut ws = srv
        .ws(&format!("/v1/sandboxes/{id}/exec/{pid}/ws"), Auth::Key)
        .unwrap();
    assert_eq!(ws.recv().unwrap()["started"]["pid"], pid);
    ws.send(json!({"stdin": b64(b"again\n")}));
    let (out, msgs) = ws.until(|v, _| v.get("exit").is_some());
    assert_eq!(out, "got:again\n");
    assert_eq!(msgs.last().unwrap()["exit"]["exit_code"], 0);
    let list = srv
        .get(&format!("/v1/sandboxes/{id}/processes"), Auth::Key)
        .json();
    assert!(
        list["processes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["pid"] != pid)
    );
    let r = srv.ws(&format!("/v1/sandboxes/{id}/exec/{pid}/ws"), Auth::Key);
    assert_eq!(r.err().map(|e| e.0), Some(404), "an ended process");

    // A signal through the API reaches the process's group.
    let mut ws = srv.ws(&ws_path, Auth::Key).unwrap();
    ws.send(json!({"argv": ["sleep", "60"]}));
    let pid = ws.recv().unwrap()["started"]["pid"].as_i64().unwrap();
    let sig = |n: i64| {
        srv.post(
            &format!("/v1/sandboxes/{id}/processes/{pid}/signal"),
            Auth::Key,
            &json!({ "signal": n }),
        )
    };
    assert_eq!(sig(99).err(), (400, "bad_request".into()));
    assert_eq!(sig(15).status, 204);
    let (_, msgs) = ws.until(|v, _| v.get("exit").is_some());
    let exit = &msgs.last().unwrap()["exit"];
    assert_eq!(
        (exit["signal"].as_i64(), exit["exit_code"].as_i64()),
        (Some(15), Some(143))
    );
    let r = srv.post(
        &format!("/v1/sandboxes/{id}/processes/999999/signal"),
        Auth::Key,
        &json!({"signal": 15}),
    );
    assert_eq!(r.err(), (404, "not_found".into()));
}

#[test]
fn files_round_trip_and_exact_codes() {
    let srv = Server::start(&[]);
    let (id, _) = srv.create(&json!({}));
    let f = |p: &str| srv.files(&id, p);
    let data: Vec<u8> = (0..(1u32 << 20) + 7)
        .map(|i| (i * 7 + i / 251) as u8)
        .collect();

    // Relative paths are under the home; parents are created; 201 then 200 on replace.
    let r = srv.req("PUT", &f("d1/blob.bin"), Auth::Key, Some(&data));
    assert_eq!(r.status, 201, "{}", r.text());
    let e = r.json();
    assert_eq!(e["path"], "/home/sandbox/d1/blob.bin");
    assert_eq!(e["size"].as_u64(), Some(data.len() as u64));
    assert_eq!(e["kind"], "file");
    let back = srv.get(&f("/home/sandbox/d1/blob.bin"), Auth::Key);
    assert_eq!(back.status, 200);
    assert!(back.body == data, "binary round trip");
    // The sandbox sees the same bytes.
    let sum = srv.sh(&id, "sha256sum ~/d1/blob.bin | cut -d' ' -f1");
    let host_sum = {
        let p = srv.state.path().join("blob");
        std::fs::write(&p, &data).unwrap();
        let o = std::process::Command::new("sha256sum")
            .arg(&p)
            .output()
            .unwrap();
        String::from_utf8(o.stdout)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(sum.trim(), host_sum);
    let r = srv.req("PUT", &f("~/d1/blob.bin"), Auth::Key, Some(b"short"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(srv.get(&f("d1/blob.bin"), Auth::Key).body, b"short");
    // No temporary file left next to it.
    let list = srv
        .get(&format!("/v1/sandboxes/{id}/files/list?path=d1"), Auth::Key)
        .json();
    let names: Vec<_> = list["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["blob.bin"], "{list}");
    assert_eq!(list["truncated"], false);

    // stat, mkdir (201 then 200), list with depth, move, remove.
    let st = srv.get(
        &format!("/v1/sandboxes/{id}/files/stat?path=d1/blob.bin"),
        Auth::Key,
    );
    assert_eq!(st.json()["size"], 5);
    let mk = |p: &str| {
        srv.post(
            &format!("/v1/sandboxes/{id}/files/mkdir"),
            Auth::Key,
            &json!({"path": p}),
        )
    };
    let r = mk("d2/a/b");
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["created"], true);
    assert_eq!(r.json()["entry"]["kind"], "dir");
    let r = mk("d2/a/b");
    assert_eq!(
        (r.status, r.json()["created"].as_bool()),
        (200, Some(false))
    );
    let r = mk("d1/blob.bin/x");
    assert_eq!(r.err(), (400, "not_a_directory".into()), "{}", r.text());
    let r = srv.get(
        &format!("/v1/sandboxes/{id}/files/list?path=d2&depth=3"),
        Auth::Key,
    );
    let paths: Vec<_> = r.json()["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap().to_string())
        .collect();
    assert!(
        paths.contains(&"/home/sandbox/d2/a/b".to_string()),
        "{paths:?}"
    );
    let r = srv.get(
        &format!("/v1/sandboxes/{id}/files/list?path=d2&depth=0"),
        Auth::Key,
    );
    assert_eq!(r.err(), (400, "bad_request".into()));
    let mv = |from: &str, to: &str| {
        srv.post(
            &format!("/v1/sandboxes/{id}/files/move"),
            Auth::Key,
            &json!({"from": from, "to": to}),
        )
    };
    let r = mv("d1/blob.bin", "d2/a/b/moved.bin");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["path"], "/home/sandbox/d2/a/b/moved.bin");
    assert_eq!(
        srv.get(&f("d1/blob.bin"), Auth::Key).err(),
        (404, "not_found".into())
    );
    assert_eq!(srv.get(&f("d2/a/b/moved.bin"), Auth::Key).body, b"short");
    assert_eq!(mv("nope", "x").err(), (404, "not_found".into()));
    // Errors with their codes.
    assert_eq!(
        srv.get(&f("d2"), Auth::Key).err().0,
        400,
        "a directory is not downloaded"
    );
    let r = srv.req("PUT", &f("d2"), Auth::Key, Some(b"x"));
    assert_eq!(r.err(), (400, "is_a_directory".into()));
    let r = srv.req("PUT", &f("/usr/bin/planted"), Auth::Key, Some(b"x"));
    assert_eq!(r.err(), (403, "forbidden".into()), "{}", r.text());
    assert!(!std::path::Path::new("/usr/bin/planted").exists());
    assert_eq!(
        srv.get(&f(""), Auth::Key).err(),
        (400, "bad_request".into())
    );
    assert_eq!(
        srv.get(&format!("/v1/sandboxes/{id}/files"), Auth::Key)
            .err(),
        (400, "bad_request".into()),
        "no path"
    );
    let r = srv.req("DELETE", &f("d2"), Auth::Key, None);
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(
        srv.get(&format!("/v1/sandboxes/{id}/files/stat?path=d2"), Auth::Key)
            .err(),
        (404, "not_found".into())
    );
    assert_eq!(
        srv.req("DELETE", &f("d2"), Auth::Key, None).err(),
        (404, "not_found".into())
    );

    // Each upload is on the audit trail (path and size, never the content).
    let events = srv.events(&id);
    let written: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::FileChanged { path, size, .. } => Some((path.clone(), *size)),
            _ => None,
        })
        .collect();
    assert!(
        written.contains(&("/home/sandbox/d1/blob.bin".into(), data.len() as u64)),
        "{written:?}"
    );
    assert!(
        written.contains(&("/home/sandbox/d1/blob.bin".into(), 5)),
        "{written:?}"
    );
}

#[test]
fn hostile_paths_never_reach_the_host() {
    let srv = Server::start(&[]);
    let (id, _) = srv.create(&json!({}));
    // Canaries on the host, outside the sandbox's view: under /opt and in the server's state dir.
    let dir = HostDir(std::path::PathBuf::from(format!(
        "/opt/stockade-canary-{}",
        std::process::id()
    )));
    std::fs::create_dir_all(&dir.0).unwrap();
    let canary = dir.0.join("secret");
    let secret = format!("CANARY-{}-{:?}", std::process::id(), Instant::now());
    std::fs::write(&canary, &secret).unwrap();
    let state_canary = srv.state.path().join("canary-secret");
    std::fs::write(&state_canary, &secret).unwrap();
    let c = canary.to_str().unwrap();
    let d = dir.0.to_str().unwrap();

    // Control: a host file the sandbox may read (the base template's read-only view of /usr)
    // comes back byte for byte; so the probes below are not failing for another reason.
    let r = srv.get(&srv.files(&id, "/usr/lib/os-release"), Auth::Key);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, read(std::path::Path::new("/usr/lib/os-release")));
    // Control: the host itself can read the canary.
    assert_eq!(std::fs::read_to_string(&canary).unwrap(), secret);

    // Symlinks planted from inside, pointing at host paths and at /proc magic links.
    srv.sh(
        &id,
        &format!(
            "ln -s {c} ~/to_canary; ln -s /proc/1/root ~/to_root; ln -s / ~/to_slash; \
             ln -s {d}/planted ~/to_planted; ln -s /proc/self/cwd ~/to_cwd; echo inside > ~/mine"
        ),
    );
    let state_c = state_canary.to_str().unwrap();
    let reads: &[(&str, u16, &str)] = &[
        (c, 404, "not_found"),
        (&format!("../../../../..{c}"), 404, "not_found"),
        (&format!("/home/sandbox/../..{c}"), 404, "not_found"),
        (state_c, 404, "not_found"),
        ("to_canary", 404, "not_found"),
        (&format!("to_slash{c}"), 404, "not_found"),
        (&format!("to_root{c}"), 400, "bad_request"),
        (&format!("/proc/1/root{c}"), 400, "bad_request"),
        (&format!("/proc/self/root{c}"), 400, "bad_request"),
        ("/proc/1/cwd/mine", 400, "bad_request"),
        ("to_cwd/mine", 400, "bad_request"),
    ];
    for (p, status, code) in reads {
        for route in ["files", "files/stat", "files/list"] {
            let r = srv.get(
                &format!("/v1/sandboxes/{id}/{route}?path={}", enc(p)),
                Auth::Key,
            );
            assert!(!r.text().contains(&secret), "{route} {p} leaked the canary");
            if route == "files" {
                assert_eq!(
                    (r.status, r.code().as_str()),
                    (*status, *code),
                    "{p}: {}",
                    r.text()
                );
            } else if route == "files/stat" && *p == "to_canary" {
                // lstat of the link itself: it exists inside, and says where it points.
                assert_eq!(r.json()["kind"], "symlink");
            } else {
                assert_ne!(r.status, 200, "{route} {p}: {}", r.text());
            }
        }
    }
    // The sandbox's own view of a link out: dangling (the host path does not exist inside).
    let v = srv.exec_wait(&id, &json!({"cmd": "cat ~/to_canary"}));
    assert_eq!(v["exit_code"], 1);
    assert!(!v["stdout"].as_str().unwrap().contains(&secret));

    // Writes: through a link to a host path, at an absolute host path, through magic links,
    // and a move out; the host is never written, the canary never changed.
    let writes: &[(&str, u16, &str)] = &[
        (&format!("{d}/planted2"), 403, "forbidden"),
        (&format!("/proc/1/root{d}/planted3"), 400, "bad_request"),
        (&format!("to_root{d}/planted4"), 400, "bad_request"),
        (c, 403, "forbidden"),
    ];
    for (p, status, code) in writes {
        let r = srv.req("PUT", &srv.files(&id, p), Auth::Key, Some(b"pwned"));
        assert_eq!(
            (r.status, r.code().as_str()),
            (*status, *code),
            "PUT {p}: {}",
            r.text()
        );
    }
    // Uploading over a planted link replaces the link inside; nothing reaches its target.
    let r = srv.req(
        "PUT",
        &srv.files(&id, "to_planted"),
        Auth::Key,
        Some(b"pwned"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["kind"], "file");
    let r = srv.post(
        &format!("/v1/sandboxes/{id}/files/move"),
        Auth::Key,
        &json!({"from": "mine", "to": format!("/proc/1/root{d}/moved")}),
    );
    assert_eq!(r.err(), (403, "forbidden".into()), "{}", r.text());
    let r = srv.req("DELETE", &srv.files(&id, c), Auth::Key, None);
    assert_eq!(r.err(), (404, "not_found".into()));
    let r = srv.req(
        "DELETE",
        &srv.files(&id, &format!("to_slash{d}")),
        Auth::Key,
        None,
    );
    assert_eq!(r.err(), (404, "not_found".into()));
    let mut host: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    host.sort();
    assert_eq!(host, ["secret"], "nothing written on the host");
    assert_eq!(std::fs::read_to_string(&canary).unwrap(), secret);
    assert_eq!(std::fs::read_to_string(&state_canary).unwrap(), secret);
}

/// Sends a raw HTTP/1.1 PUT: `len` announced (or chunked), `body_len` bytes offered; the answer.
fn raw_put(port: u16, path: &str, key: &str, len: Option<u64>, body_len: u64) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    // A server that stopped reading makes writes fail instead of blocking forever.
    s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut head = format!(
        "PUT {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n"
    );
    match len {
        Some(n) => head.push_str(&format!("Content-Length: {n}\r\n\r\n")),
        None => head.push_str("Transfer-Encoding: chunked\r\n\r\n"),
    }
    s.write_all(head.as_bytes()).unwrap();
    let chunk = vec![b'z'; 1 << 20];
    let mut sent = 0u64;
    // The server may answer and close before taking everything: a failed write ends the body.
    while sent < body_len {
        let n = (body_len - sent).min(chunk.len() as u64) as usize;
        let ok = if len.is_none() {
            s.write_all(format!("{n:x}\r\n").as_bytes())
                .and_then(|()| s.write_all(&chunk[..n]))
                .and_then(|()| s.write_all(b"\r\n"))
        } else {
            s.write_all(&chunk[..n])
        };
        if ok.is_err() {
            break;
        }
        sent += n as u64;
    }
    if len.is_none() {
        let _ = s.write_all(b"0\r\n\r\n");
    }
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no answer: {text:?}"));
    (status, text)
}

#[test]
fn upload_and_download_caps_and_a_full_disk() {
    let srv = Server::start(&[]);
    let (id, _) = srv.create(&json!({}));
    let cap: u64 = 100 << 20;
    srv.sh(&id, "echo original > ~/target");
    let path = srv.files(&id, "target");

    // Announced over the cap: refused before a byte is read.
    let (status, text) = raw_put(srv.port, &path, &srv.key, Some(cap + 1), 0);
    assert_eq!(status, 413, "{text}");
    assert!(
        text.contains("too_large") && text.contains("--max-upload"),
        "{text}"
    );
    // Streamed (chunked) past the cap: stopped at it.
    let (status, text) = raw_put(srv.port, &path, &srv.key, None, cap + (2 << 20));
    assert_eq!(status, 413, "{text}");
    // What remains: the target as it was, and no temporary file.
    assert_eq!(srv.get(&path, Auth::Key).body, b"original\n");
    assert_eq!(srv.sh(&id, "ls -A ~ | grep -c upload || true").trim(), "0");
    // Control: at the cap exactly, accepted.
    let (status, text) = raw_put(srv.port, &path, &srv.key, Some(cap), cap);
    assert_eq!(status, 200, "{text}");
    assert_eq!(srv.sh(&id, "stat -c %s ~/target").trim(), cap.to_string());
    srv.sh(&id, "rm ~/target");

    // Download cap (256 MiB): a sparse file over it is refused; under it, served.
    srv.sh(&id, "truncate -s 300M ~/sparse; truncate -s 2M ~/small");
    let r = srv.get(&srv.files(&id, "sparse"), Auth::Key);
    assert_eq!(r.err(), (413, "too_large".into()), "{}", r.text());
    assert!(r.text().contains("--max-download"));
    let r = srv.get(&srv.files(&id, "small"), Auth::Key);
    assert_eq!((r.status, r.body.len()), (200, 2 << 20));

    // A full disk: 507, nothing left; control: a small file fits.
    let (id, _) = srv.create(&json!({"policy": "[limits]\ndisk = \"4MiB\"\n"}));
    let big = vec![7u8; 8 << 20];
    let r = srv.req("PUT", &srv.files(&id, "big"), Auth::Key, Some(&big));
    assert_eq!(r.err(), (507, "disk_full".into()), "{}", r.text());
    assert_eq!(
        srv.get(&srv.files(&id, "big"), Auth::Key).err(),
        (404, "not_found".into())
    );
    let list = srv
        .get(&format!("/v1/sandboxes/{id}/files/list?path=~"), Auth::Key)
        .json();
    assert_eq!(list["entries"], json!([]), "the temporary file was removed");
    let r = srv.req(
        "PUT",
        &srv.files(&id, "small"),
        Auth::Key,
        Some(&big[..1 << 20]),
    );
    assert_eq!(r.status, 201, "{}", r.text());
}

#[test]
fn watch_sees_changes() {
    let srv = Server::start(&[]);
    let (id, _) = srv.create(&json!({}));
    srv.sh(&id, "mkdir -p ~/w/sub");
    let s = Stream::open(
        &srv,
        &format!("/v1/sandboxes/{id}/files/watch?path=w&recursive=true"),
    );
    let head = s.until(Duration::from_secs(20), |l| {
        l.starts_with("event: watching")
    });
    assert!(head[0].contains(" 200 "), "{head:?}");
    srv.sh(&id, "touch ~/w/new.txt; echo x > ~/w/sub/deep.txt");
    let lines = s.until(Duration::from_secs(20), |l| {
        l.contains("\"path\":\"/home/sandbox/w/sub/deep.txt\"")
    });
    assert!(
        lines.iter().any(|l| l.contains("\"op\":\"create\"")
            && l.contains("\"path\":\"/home/sandbox/w/new.txt\"")),
        "{lines:#?}"
    );
    // Watching what does not exist: 404 before any stream.
    let r = srv.get(
        &format!("/v1/sandboxes/{id}/files/watch?path=nope"),
        Auth::Key,
    );
    assert_eq!(r.err(), (404, "not_found".into()));
}

#[test]
fn sandboxes_cannot_reach_the_api() {
    let srv = Server::start(&[]);
    let (id, _) = srv.create(&json!({}));
    // Control on the host: the API answers.
    assert_eq!(srv.get("/health", Auth::None).status, 200);
    // Control inside: python3 runs.
    let v = srv.exec_wait(&id, &json!({"argv": ["python3", "-c", "print(6*7)"]}));
    assert_eq!(
        (v["exit_code"].as_i64(), v["stdout"].as_str()),
        (Some(0), Some("42\n"))
    );
    for host in ["127.0.0.1", "localhost"] {
        let code = format!(
            "import urllib.request\ntry:\n    urllib.request.urlopen('http://{host}:{}/health', timeout=5)\n    print('REACHED')\nexcept Exception as e:\n    print('refused', type(e).__name__, e)\n    raise SystemExit(3)",
            srv.port
        );
        let v = srv.exec_wait(&id, &json!({"argv": ["python3", "-c", code]}));
        let out = v["stdout"].as_str().unwrap();
        assert_eq!(v["exit_code"], 3, "{host}: {v}");
        assert!(!out.contains("REACHED"), "{out}");
        assert!(
            out.contains("Connection refused")
                || out.contains("unreachable")
                || out.contains("Name or service"),
            "{host}: {out}"
        );
    }
}

#[test]
fn every_documented_route_is_served_and_needs_credentials() {
    let srv = Server::start(&[]);
    let (id, _) = srv.create(&json!({}));
    let r = srv.get("/openapi.json", Auth::Key);
    assert_eq!(r.status, 200);
    let doc = r.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    let mut n = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            let p = path.replace("{id}", &id).replace("{pid}", "1")
                + if path.contains("/files") {
                    "?path=/tmp"
                } else {
                    ""
                };
            let body = (method == "post" || method == "put").then_some(b"{}" as &[u8]);
            let r = srv.req(&method.to_uppercase(), &p, Auth::None, body);
            n += 1;
            if path == "/health" || path == "/openapi.json" {
                assert_ne!(r.status, 404, "{method} {path}");
                continue;
            }
            assert_eq!(
                r.err(),
                (401, "unauthorized".into()),
                "{method} {path}: {}",
                r.text()
            );
        }
    }
    assert!(n >= 20, "{n} operations");
}
