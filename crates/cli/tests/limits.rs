//! End-to-end tests of the limits of `stockade run` (memory, pids, timeout, output, disk) and of
//! exit-status propagation, against the real binary and real cgroup v1 hierarchies. Each limit is
//! hit and checked by its exact exit code, errno and message, next to a control showing the same
//! workload succeeds without the limit.

// A test crate: helpers outside #[test] fns panic on failure too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support_limits;

use support_limits::{Out, require_root, run, tempdir};

// ---------------------------------------------------------------------------------------------
// 1. memory

const ALLOC_2GIB: &str = r#"
b = bytearray(2 << 30)
for i in range(0, len(b), 4096):
    b[i] = 1
print("touched", len(b), flush=True)
"#;

#[test]
fn memory_2gib_allocation_under_256mib_is_killed() {
    require_root("memory limit");
    let ws = tempdir();

    let control = run(
        ws.path(),
        &["--memory", "3GiB"],
        &["python3", "-c", ALLOC_2GIB],
    );
    control.expect_code(0);
    assert_eq!(
        control.stdout_str(),
        format!("touched {}\n", 2u64 << 30),
        "control: {}",
        control.context()
    );
    assert!(
        control.stockade_lines().is_empty(),
        "control: no stockade message expected: {}",
        control.context()
    );

    let limited = run(
        ws.path(),
        &["--memory", "256MiB"],
        &["python3", "-c", ALLOC_2GIB],
    );
    limited
        .expect_code(137)
        .expect_stderr_line("stockade: killed: memory limit 256MiB reached");
    assert!(
        !limited.stdout_str().contains("touched"),
        "the allocation must not complete: {}",
        limited.context()
    );
}

// ---------------------------------------------------------------------------------------------
// 2. pids

/// Forks children that sleep, up to 100; prints "errno E N" at the first failed fork (N forks
/// done) or "ok N".
const FORK_BOMB: &str = r#"
import os, time
n = 0
try:
    while n < 100:
        pid = os.fork()
        if pid == 0:
            time.sleep(120)
            os._exit(0)
        n += 1
    print("ok", n, flush=True)
except OSError as e:
    print("errno", e.errno, n, flush=True)
"#;

#[test]
fn fork_bomb_stops_at_pids_limit() {
    require_root("pids limit");
    let ws = tempdir();

    let control = run(ws.path(), &["--pids", "256"], &["python3", "-c", FORK_BOMB]);
    control.expect_code(0);
    assert_eq!(
        control.stdout_str(),
        "ok 100\n",
        "control: 100 forks (> 32) under --pids 256: {}",
        control.context()
    );
    assert!(
        !control.stderr.contains("pids limit"),
        "control must not reach the pids limit: {}",
        control.context()
    );

    let limited = run(ws.path(), &["--pids", "32"], &["python3", "-c", FORK_BOMB]);
    limited.expect_code(0);
    let out = limited.stdout_str();
    let fields: Vec<&str> = out.split_whitespace().collect();
    assert!(
        fields.len() == 3 && fields[0] == "errno" && fields[1] == "11",
        "fork must fail with EAGAIN (11): {}",
        limited.context()
    );
    let forks: u32 = fields[2].parse().unwrap();
    assert!(
        (1..32).contains(&forks),
        "between 1 and 31 forks under --pids 32, got {forks}: {}",
        limited.context()
    );
    let line = limited
        .stockade_lines()
        .into_iter()
        .find(|l| l.starts_with("stockade: limit: pids limit 32 reached ("))
        .map(String::from);
    let line = line.unwrap_or_else(|| panic!("no pids limit line: {}", limited.context()));
    assert!(line.ends_with(" process creations refused)"), "{line}");
    let refused: u64 = line["stockade: limit: pids limit 32 reached (".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(refused >= 1, "{line}");
}

// ---------------------------------------------------------------------------------------------
// 3. timeout

#[test]
fn timeout_kills_a_sleep() {
    require_root("timeout");
    let ws = tempdir();

    let control = run(ws.path(), &["--timeout", "5s"], &["sleep", "0.1"]);
    control.expect_code(0);
    assert!(
        control.stockade_lines().is_empty(),
        "control: {}",
        control.context()
    );

    let limited = run(ws.path(), &["--timeout", "1s"], &["sleep", "30"]);
    limited
        .expect_code(137)
        .expect_stderr_line("stockade: killed: timeout 1s reached");
    assert!(
        limited.elapsed < std::time::Duration::from_secs(10),
        "a 1s timeout must end the run well within 10 s: {}",
        limited.context()
    );
}

// ---------------------------------------------------------------------------------------------
// 4. output

#[test]
fn output_limit_stops_yes_at_exactly_the_cap() {
    require_root("output limit");
    let ws = tempdir();
    // Deterministic, non-repeating bytes so truncation or corruption would show.
    let data: Vec<u8> = (0u32..20_000)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(ws.path().join("data.bin"), &data).unwrap();

    let control = run(
        ws.path(),
        &["--max-output", "10KiB"],
        &["head", "-c", "5000", "data.bin"],
    );
    control.expect_code(0);
    assert!(
        control.stdout == data[..5000],
        "control: 5000 bytes must pass intact: {}",
        control.context()
    );
    assert!(
        control.stockade_lines().is_empty(),
        "control: {}",
        control.context()
    );

    let limited = run(ws.path(), &["--max-output", "10KiB"], &["yes"]);
    limited
        .expect_code(137)
        .expect_stderr_line("stockade: stopped: output limit 10KiB reached");
    assert_eq!(
        limited.stdout.len(),
        10240,
        "stdout must be cut at exactly 10 KiB: {}",
        limited.context()
    );
    assert!(
        limited.stdout == b"y\n".repeat(5120),
        "the bytes passed must be yes's own: {}",
        limited.context()
    );
}

// ---------------------------------------------------------------------------------------------
// 5. disk

/// `python3 -c WRITER MODE PATH N PAUSE KEEP_GOING`: writes N MiB, 1 MiB per write(2) with fsync
/// and a pause, either into one file PATH (MODE "one") or into files PATH/f0, PATH/f1, ... (MODE
/// "many"). On an error it records the first errno and stops, or with KEEP_GOING=1 keeps trying
/// the remaining writes. Prints "result ok N" or "result errno E DONE" (DONE = MiB written).
const WRITER: &str = r#"
import os, sys, time
mode, path, n, pause, keep = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5] == "1"
chunk = b"x" * (1 << 20)
def write_all(fd, b):
    while b:
        b = b[os.write(fd, b):]
done, err, fd = 0, None, None
for i in range(n):
    try:
        if mode == "one":
            if fd is None:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            write_all(fd, chunk)
            os.fsync(fd)
        else:
            f = os.open(os.path.join(path, "f%d" % i), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                write_all(f, chunk)
                os.fsync(f)
            finally:
                os.close(f)
        done += 1
    except OSError as e:
        if err is None:
            err = e.errno
        if not keep:
            break
    time.sleep(pause)
if err is None:
    print("result ok", done, flush=True)
else:
    print("result errno", err, done, flush=True)
"#;

fn writer(
    ws: &std::path::Path,
    disk: &str,
    mode: &str,
    path: &str,
    pause: &str,
    keep: &str,
) -> Out {
    run(
        ws,
        &["--disk", disk],
        &["python3", "-c", WRITER, mode, path, "64", pause, keep],
    )
}

/// "result errno E DONE" → (E, DONE); panics on anything else.
fn errno_result(out: &Out) -> (i32, u32) {
    let s = out.stdout_str();
    let f: Vec<&str> = s.split_whitespace().collect();
    assert!(
        f.len() == 4 && f[0] == "result" && f[1] == "errno",
        "expected a write error: {}",
        out.context()
    );
    (f[2].parse().unwrap(), f[3].parse().unwrap())
}

/// One 64 MiB file in /tmp under --disk 16MiB: the tmpfs is full, so write(2) fails with ENOSPC.
#[test]
fn disk_one_big_file_in_tmp_fails_with_enospc() {
    require_root("disk limit");
    let ws = tempdir();

    let control = writer(ws.path(), "256MiB", "one", "/tmp/big", "0", "0");
    control.expect_code(0);
    assert_eq!(
        control.stdout_str(),
        "result ok 64\n",
        "control: {}",
        control.context()
    );

    let limited = writer(ws.path(), "16MiB", "one", "/tmp/big", "0", "0");
    limited.expect_code(0);
    let (errno, done) = errno_result(&limited);
    assert_eq!(
        errno,
        libc::ENOSPC,
        "writing past --disk in /tmp must fail with ENOSPC (28): {}",
        limited.context()
    );
    assert!(done <= 16, "{}", limited.context());
}

/// 64 files of 1 MiB in /tmp under --disk 16MiB: ENOSPC once the budget's tmpfs is full.
#[test]
fn disk_many_files_in_tmp_fail_with_enospc() {
    require_root("disk limit");
    let ws = tempdir();

    let control = writer(ws.path(), "256MiB", "many", "/tmp", "0", "0");
    control.expect_code(0);
    assert_eq!(
        control.stdout_str(),
        "result ok 64\n",
        "control: {}",
        control.context()
    );

    let limited = writer(ws.path(), "16MiB", "many", "/tmp", "0", "0");
    limited.expect_code(0);
    let (errno, done) = errno_result(&limited);
    assert_eq!(
        errno,
        libc::ENOSPC,
        "filling /tmp past --disk must fail with ENOSPC (28): {}",
        limited.context()
    );
    assert!(done <= 16, "{}", limited.context());
}

fn assert_workspace_growth_stopped(limited: &Out) {
    limited
        .expect_code(137)
        .expect_stderr_line("stockade: stopped: disk limit 16MiB reached (workspace growth)");
    assert!(
        !limited.stdout_str().contains("result"),
        "the writer must be stopped before it finishes: {}",
        limited.context()
    );
}

/// An rw workspace growing by 64 files of 1 MiB, slowly (the watcher polls every ~0.5 s).
#[test]
fn disk_rw_workspace_growth_in_many_files_is_stopped() {
    require_root("disk limit");
    let ws = tempdir();
    let p = ws.path().display().to_string();

    let control = writer(ws.path(), "1GiB", "many", &p, "0.05", "1");
    control.expect_code(0);
    assert_eq!(
        control.stdout_str(),
        "result ok 64\n",
        "control: {}",
        control.context()
    );
    assert!(
        control.stockade_lines().is_empty(),
        "control: {}",
        control.context()
    );
    for i in 0..64 {
        std::fs::remove_file(ws.path().join(format!("f{i}"))).unwrap();
    }

    let limited = writer(ws.path(), "16MiB", "many", &p, "0.05", "1");
    assert_workspace_growth_stopped(&limited);
}

/// An rw workspace growing by one file appended to 1 MiB at a time, slowly, and the writer keeps
/// trying past any error: the run is stopped on the disk budget.
#[test]
fn disk_rw_workspace_growth_in_one_file_is_stopped() {
    require_root("disk limit");
    let ws = tempdir();
    let file = ws.path().join("grow.bin").display().to_string();

    let control = writer(ws.path(), "1GiB", "one", &file, "0.05", "1");
    control.expect_code(0);
    assert_eq!(
        control.stdout_str(),
        "result ok 64\n",
        "control: {}",
        control.context()
    );
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 64 << 20);
    std::fs::remove_file(&file).unwrap();

    let limited = writer(ws.path(), "16MiB", "one", &file, "0.05", "1");
    assert_workspace_growth_stopped(&limited);
}

// ---------------------------------------------------------------------------------------------
// 6. exit status

#[test]
fn exit_status_propagates() {
    require_root("exit status");
    let ws = tempdir();
    for (script, code) in [
        ("exit 3", 3),
        ("kill -TERM $$", 143),
        ("kill -KILL $$", 137),
        ("exit 0", 0),
    ] {
        let out = run(ws.path(), &[], &["sh", "-c", script]);
        out.expect_code(code);
        assert!(
            out.stockade_lines().is_empty(),
            "`{script}`: no stockade message expected: {}",
            out.context()
        );
    }
}
