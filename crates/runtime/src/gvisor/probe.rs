//! Which runsc platform works on this host: tried in order systrap (fast, newer runsc), kvm
//! (needs usable hardware virtualization; hangs where /dev/kvm exists but cannot run a guest, so
//! it gets a short deadline), ptrace (works everywhere, slowest), by running `/bin/true` in a
//! throwaway container whose root is the host's `/`, read-only. The answer is cached per boot
//! (and per runsc binary) so sandboxes do not pay for it.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Platforms in order of preference, each with how long a trivial container may take.
const PLATFORMS: [(&str, Duration); 3] = [
    ("systrap", Duration::from_secs(10)),
    ("kvm", Duration::from_secs(5)),
    ("ptrace", Duration::from_secs(20)),
];
/// The cache file (root-only directory).
const CACHE_DIR: &str = "/run/stockade";
const CACHE_FILE: &str = "gvisor-platform";

/// The runsc binary: `$STOCKADE_RUNSC`, else `runsc` on PATH.
pub fn runsc_binary() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("STOCKADE_RUNSC").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("STOCKADE_RUNSC={}: no such file", p.display()))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join("runsc"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            "runsc (gVisor) is not installed: install it (Debian: `apt-get install runsc`) or set \
             STOCKADE_RUNSC to its path"
                .to_string()
        })
}

/// A key that changes with the boot and the runsc binary.
fn cache_key(runsc: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let m = std::fs::metadata(runsc).ok()?;
    Some(format!(
        "{} {} {} {}",
        boot.trim(),
        runsc.display(),
        m.size(),
        m.mtime()
    ))
}

/// The runsc platform that works on this host (e.g. "ptrace"), or why gVisor cannot run here.
/// Cached per boot in /run/stockade/gvisor-platform (only a success is cached).
pub fn probe() -> Result<String, String> {
    let runsc = runsc_binary()?;
    let key = cache_key(&runsc);
    let cache = Path::new(CACHE_DIR).join(CACHE_FILE);
    if let (Some(k), Ok(text)) = (&key, std::fs::read_to_string(&cache))
        && let Some((ck, platform)) = text.trim_end().rsplit_once('\t')
        && ck == k
        && PLATFORMS.iter().any(|(p, _)| *p == platform)
    {
        return Ok(platform.to_string());
    }
    let platform = probe_uncached(&runsc)?;
    if let Some(k) = key {
        use std::os::unix::fs::DirBuilderExt;
        let _ = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(CACHE_DIR);
        let tmp = cache.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, format!("{k}\t{platform}\n")).is_ok() {
            let _ = std::fs::rename(&tmp, &cache);
        }
    }
    Ok(platform)
}

/// Tries each platform now (no cache); the first that runs `/bin/true` wins.
pub fn probe_uncached(runsc: &Path) -> Result<String, String> {
    // SAFETY: geteuid takes no arguments and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err("the gvisor level needs stockade to run as root (runsc run)".into());
    }
    let work = std::env::temp_dir().join(format!(
        "stockade-gvisor-probe-{}-{}",
        std::process::id(),
        crate::container::random_u64()
    ));
    let r = try_all(runsc, &work);
    let _ = std::fs::remove_dir_all(&work);
    r
}

/// Writes the probe's bundle (the host's `/bin/true` on a read-only `/`) under `work`:
/// (bundle, state root).
fn probe_bundle(work: &Path) -> Result<(PathBuf, PathBuf), String> {
    let bundle = work.join("bundle");
    let state = work.join("state");
    std::fs::create_dir_all(&bundle).map_err(|e| format!("{}: {e}", bundle.display()))?;
    std::fs::create_dir_all(&state).map_err(|e| format!("{}: {e}", state.display()))?;
    let config = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false, "user": {"uid": 0, "gid": 0}, "args": ["/bin/true"],
            "env": [], "cwd": "/", "noNewPrivileges": true,
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
        },
        "root": {"path": "/", "readonly": true},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {"namespaces": [
            {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "network"},
        ]},
    });
    std::fs::write(bundle.join("config.json"), config.to_string())
        .map_err(|e| format!("writing the probe bundle: {e}"))?;
    Ok((bundle, state))
}

/// One platform tried: its name, and how long `/bin/true` took on it or why it failed.
pub type PlatformTry = (&'static str, Result<Duration, String>);

/// Every platform tried now, in the probe's order and with its time limits, for a report
/// (`stockade doctor`): how long `/bin/true` took on each, or why it failed. Needs root.
pub fn try_each(runsc: &Path) -> Result<Vec<PlatformTry>, String> {
    // SAFETY: geteuid takes no arguments and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err("the gvisor level (and this check) needs root".into());
    }
    let work = std::env::temp_dir().join(format!(
        "stockade-gvisor-probe-{}-{}",
        std::process::id(),
        crate::container::random_u64()
    ));
    let r = probe_bundle(&work).map(|(bundle, state)| {
        PLATFORMS
            .iter()
            .enumerate()
            .map(|(i, (platform, limit))| {
                let id = format!("stockade-probe-{}-{i}", std::process::id());
                let start = Instant::now();
                let r = try_one(runsc, platform, &state, &bundle, &id, *limit);
                (*platform, r.map(|()| start.elapsed()))
            })
            .collect()
    });
    let _ = std::fs::remove_dir_all(&work);
    r
}

fn try_all(runsc: &Path, work: &Path) -> Result<String, String> {
    let (bundle, state) = probe_bundle(work)?;
    let mut why = Vec::new();
    for (i, (platform, limit)) in PLATFORMS.iter().enumerate() {
        let id = format!("stockade-probe-{}-{i}", std::process::id());
        match try_one(runsc, platform, &state, &bundle, &id, *limit) {
            Ok(()) => return Ok(platform.to_string()),
            Err(e) => why.push(format!("{platform}: {e}")),
        }
    }
    Err(format!(
        "no runsc platform works on this host ({}); systrap needs a newer runsc (2023 or later), \
         kvm needs usable hardware virtualization (/dev/kvm with VT-x/AMD-V exposed), ptrace \
         needs ptrace allowed for root (no seccomp/LSM blocking it)",
        why.join("; ")
    ))
}

fn try_one(
    runsc: &Path,
    platform: &str,
    state: &Path,
    bundle: &Path,
    id: &str,
    limit: Duration,
) -> Result<(), String> {
    if platform == "kvm" && !Path::new("/dev/kvm").exists() {
        return Err("no /dev/kvm".into());
    }
    std::fs::create_dir_all(state).map_err(|e| format!("{}: {e}", state.display()))?;
    let mut child = super::runsc_command(runsc, platform, state, bundle, id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting {}: {e}", runsc.display()))?;
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if start.elapsed() < limit => std::thread::sleep(Duration::from_millis(20)),
            _ => break None,
        }
    };
    let Some(status) = status else {
        let _ = child.kill();
        super::cleanup(runsc, state, id);
        let _ = child.wait();
        return Err(format!("did not finish within {} s", limit.as_secs()));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    super::cleanup(runsc, state, id);
    if status.success() {
        Ok(())
    } else {
        let last = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim()
            .to_string();
        Err(format!("{status}: {last}"))
    }
}
