//! End-to-end tests of the CLI client of `stockade serve` (`stockade create|exec|cp|kill`, `ls`
//! and `trace` with `--server`): the real binary as server and as client, on 127.0.0.1.
//!
//! Covered: create prints the id alone (the token only with --show-token, on stderr), exec
//! (output on the right streams, exit status, 127, stdin with -i, a PTY with -t, a signal passed
//! on), cp both ways with exact bytes (and nothing left locally when a download fails), ls and
//! trace through the server, kill; the errors a user meets: no key, a wrong key, no server, an
//! unknown sandbox, a quota (the server's message).
//! Runs as root (CI does): sandboxes need cgroups and user namespaces.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support_serve;

use serde_json::json;
use std::io::Write;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};
use support_serve::*;

fn out(o: &Output) -> (Option<i32>, String, String) {
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn run(srv: &Server, args: &[&str]) -> (Option<i32>, String, String) {
    // A missing binary is an error here (spawn fails), so 127 can only be the command's.
    let o = srv.client(args).stdin(Stdio::null()).output().unwrap();
    out(&o)
}

fn run_with_stdin(srv: &Server, args: &[&str], input: &[u8]) -> Output {
    let mut c = srv
        .client(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(input).unwrap();
    c.wait_with_output().unwrap()
}

#[test]
fn create_exec_cp_ls_trace_kill() {
    let srv = Server::start(&[]);

    // create: the id alone on stdout; the token only when asked, on stderr.
    let (code, id, err) = run(&srv, &["create", "--meta", "team=a", "-e", "GREETING=hi"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(id.ends_with('\n'));
    let id = id.trim().to_string();
    assert!(
        id.len() == 16 && id.bytes().all(|c| c.is_ascii_hexdigit()),
        "{id:?}"
    );
    assert!(!err.contains("token"), "{err}");
    let (code, id2, err) = run(&srv, &["create", "--show-token", "--timeout", "120"]);
    assert_eq!(code, Some(0), "{err}");
    let token = err
        .lines()
        .find_map(|l| l.strip_prefix("access token: "))
        .unwrap_or_else(|| panic!("{err}"));
    let r = srv.post(
        &format!("/v1/sandboxes/{}/exec?wait=true", id2.trim()),
        Auth::Token(token),
        &json!({"cmd": "echo via-token"}),
    );
    assert_eq!(r.json()["stdout"], "via-token\n", "the printed token works");

    // exec: streams apart, the exit status, the sandbox's env.
    let (code, o, e) = run(
        &srv,
        &[
            "exec",
            &id,
            "--",
            "sh",
            "-c",
            "echo $GREETING; echo err >&2; exit 7",
        ],
    );
    assert_eq!((code, o.as_str(), e.as_str()), (Some(7), "hi\n", "err\n"));
    let (code, _, e) = run(&srv, &["exec", &id, "--", "no-such-command-xyz"]);
    assert_eq!(code, Some(127), "{e}");
    assert!(e.contains("command_not_found"), "{e}");
    let (code, o, _) = run(
        &srv,
        &[
            "exec",
            "-e",
            "X=1",
            "-w",
            "/tmp",
            &id,
            "--",
            "sh",
            "-c",
            "echo $X; pwd",
        ],
    );
    assert_eq!((code, o.as_str()), (Some(0), "1\n/tmp\n"));
    // -i: local stdin to the command.
    let o = run_with_stdin(
        &srv,
        &["exec", "-i", &id, "--", "sh", "-c", "cat; echo end"],
        b"from stdin\n",
    );
    assert_eq!(out(&o).0, Some(0), "{}", out(&o).2);
    assert_eq!(out(&o).1, "from stdin\nend\n");
    // -t: a terminal inside (the local stdin is not one here, so no raw mode).
    let (code, o, e) = run(&srv, &["exec", "-t", &id, "--", "sh", "-c", "tty; exit 4"]);
    assert_eq!(code, Some(4), "{e}");
    assert!(o.starts_with("/dev/pts/"), "{o:?}");
    // A signal to the client is passed on to the command: its status is the client's.
    let mut c = srv
        .client(&["exec", &id, "--", "sleep", "60"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let p = srv
            .get(&format!("/v1/sandboxes/{id}/processes"), Auth::Key)
            .json();
        if p["processes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["argv"][0] == "sleep")
        {
            break;
        }
        assert!(Instant::now() < until, "sleep never started: {p}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: kill with the pid of our own child, not reaped yet.
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    let st = c.wait().unwrap();
    assert_eq!(st.code(), Some(143));

    // cp: in and out, exact bytes; `-` for stdin/stdout; into a directory by name.
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let local = dir.path().join("data.bin");
    std::fs::write(&local, &data).unwrap();
    let remote = format!("{id}:/tmp/in/data.bin");
    let (code, _, e) = run(&srv, &["cp", local.to_str().unwrap(), &remote]);
    assert_eq!(code, Some(0), "{e}");
    let back = dir.path().join("back.bin");
    let (code, _, e) = run(&srv, &["cp", &remote, back.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{e}");
    assert!(read(&back) == data, "round trip");
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let (code, _, e) = run(&srv, &["cp", &remote, sub.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{e}");
    assert!(read(&sub.join("data.bin")) == data);
    let o = srv.client(&["cp", &remote, "-"]).output().unwrap();
    assert!(o.stdout == data);
    let o = run_with_stdin(&srv, &["cp", "-", &format!("{id}:from-stdin")], b"piped");
    assert_eq!(out(&o).0, Some(0), "{}", out(&o).2);
    assert_eq!(
        srv.get(&srv.files(&id, "from-stdin"), Auth::Key).body,
        b"piped"
    );
    // A failed download: a clear error, nothing left locally.
    let missing = dir.path().join("missing.bin");
    let (code, _, e) = run(
        &srv,
        &["cp", &format!("{id}:/nope"), missing.to_str().unwrap()],
    );
    assert_eq!(code, Some(125));
    assert!(e.contains("not found (404)"), "{e}");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        3,
        "nothing left"
    );

    // ls and trace through the server.
    let url = srv.url("");
    let (code, o, e) = run(&srv, &["ls", "--server", &url]);
    assert_eq!(code, Some(0), "{e}");
    let row = o
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{o}"));
    assert!(row.contains("team=a") && row.contains("base"), "{row}");
    let (_, o, _) = run(&srv, &["ls", "--server", &url, "--json"]);
    let ids: Vec<String> = o
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(
        ids.contains(&id) && ids.contains(&id2.trim().to_string()),
        "{ids:?}"
    );
    let (code, o, e) = run(&srv, &["trace", "--server", &url, &id]);
    assert_eq!(code, Some(0), "{e}");
    assert!(o.contains(&format!("sandbox {id}")), "{o}");
    assert!(o.contains("exec e1: sh -c"), "{o}");
    let (_, o, _) = run(&srv, &["trace", "--server", &url, "--json", &id]);
    let events: Vec<stockade_audit::Event> = o
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(events.len() > 5 && events.iter().all(|e| e.sandbox_id == id));

    // kill: gone from the list; a second kill is a clear 404.
    let (code, _, e) = run(&srv, &["kill", &id]);
    assert_eq!(code, Some(0), "{e}");
    let (_, o, _) = run(&srv, &["ls", "--server", &url]);
    assert!(!o.contains(&id), "{o}");
    let (code, _, e) = run(&srv, &["kill", &id]);
    assert_eq!(code, Some(125));
    assert!(e.contains("not found (404)"), "{e}");
}

#[test]
fn client_errors_say_what_to_do() {
    let srv = Server::start(&["--max-per-key", "1"]);

    // No key: said before any request, with where to get one.
    let o = srv
        .client(&["create"])
        .env_remove("STOCKADE_API_KEY")
        .output()
        .unwrap();
    let (code, _, e) = out(&o);
    assert_eq!(code, Some(125));
    assert!(
        e.contains("STOCKADE_API_KEY") && e.contains("stockade keys create"),
        "{e}"
    );
    // A wrong key: the server's 401, with the same advice.
    let o = srv
        .client(&["create"])
        .env("STOCKADE_API_KEY", "sk_wrong")
        .output()
        .unwrap();
    let (code, _, e) = out(&o);
    assert_eq!(code, Some(125));
    assert!(e.contains("(401)") && e.contains("STOCKADE_API_KEY"), "{e}");
    assert!(!e.contains("sk_wrong"), "the key is not echoed: {e}");
    // No server there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (code, _, e) = run(
        &srv,
        &["ls", "--server", &format!("http://127.0.0.1:{closed}")],
    );
    assert_eq!(code, Some(125));
    assert!(e.contains("cannot reach the server"), "{e}");
    let (code, _, e) = run(&srv, &["kill", "--server", "ftp://x", "0123456789abcdef"]);
    assert_eq!(code, Some(125));
    assert!(e.contains("expected a URL"), "{e}");
    // Not an id; an unknown id.
    let (code, _, e) = run(&srv, &["exec", "../x", "--", "true"]);
    assert_eq!(code, Some(125));
    assert!(e.contains("not a sandbox id"), "{e}");
    let (code, _, e) = run(&srv, &["exec", "0123456789abcdef", "--", "true"]);
    assert_eq!(code, Some(125));
    assert!(e.contains("not found (404)"), "{e}");
    // A quota: the first create is the control, the second shows the server's message.
    let (code, _, e) = run(&srv, &["create"]);
    assert_eq!(code, Some(0), "{e}");
    let (code, _, e) = run(&srv, &["create"]);
    assert_eq!(code, Some(125));
    assert!(e.contains("(429)"), "{e}");
    // A local policy error names the file, line and column before anything is sent.
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let p = dir.path().join("bad.toml");
    std::fs::write(&p, "[limits]\nmemory = \"lots\"\n").unwrap();
    let (code, _, e) = run(&srv, &["create", "--policy", p.to_str().unwrap()]);
    assert_eq!(code, Some(125));
    assert!(e.contains("bad.toml:2:"), "{e}");
}
