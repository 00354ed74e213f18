//! The microvm level: QEMU `-M microvm` with the static guest agent as init, driven by `__vmm`
//! (see `backend`). See docs/microvm.md.
//!
//! - [`Assets::locate`]: the kernel, its modules and QEMU (`scripts/setup-microvm`);
//! - [`Assets::initramfs`]: the guest's initramfs (`/init` = `stockade-guest`), cached;
//! - [`build_view`]: the one host directory the guest sees (its `/host`), and the guest plan;
//! - [`qemu_command`]: the QEMU command line;
//! - [`check_boot`]: boots the guest's check mode (probe, tests);
//! - [`probe`]: whether a microVM starts here with an accelerator (cached per host boot).

mod assets;
mod qemu;
mod view;

pub use assets::{Assets, DEFAULT_DIR, write_initramfs};
pub use qemu::{TCG_TB_SIZE_MIB, VmSpec, host_tsc_khz, kernel_cmdline, qemu_command};
pub use view::{GUEST_HOST_DIR, build_view, idmap_userns_with};

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use stockade_jail::plan::Accel;

/// The guest's check-mode marker (`stockade_agent::guest_boot::CHECK_MARKER`).
pub const CHECK_MARKER: &str = "STOCKADE-GUEST-UP";
/// The check mode's last line.
pub const CHECK_DONE: &str = "STOCKADE-GUEST-DONE";

/// Boots `spec` with `stockade.check=1` added and returns what the guest wrote on the control
/// port (the marker, the probes' lines, the done line) once QEMU exited, or why it failed
/// (QEMU's status and the guest console's tail). QEMU runs as `uid` (uid and gid) when given.
/// Killed after `timeout`.
pub fn check_boot(
    assets: &Assets,
    spec: &VmSpec,
    uid: Option<u32>,
    timeout: Duration,
) -> Result<String, String> {
    let mut spec = spec.clone();
    spec.extra_cmdline.insert(0, "stockade.check=1".into());
    let mut cmd = qemu_command(assets, &spec)?;
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(u) = uid {
        cmd.uid(u).gid(u);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("microvm: starting {}: {e}", assets.qemu.display()))?;
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        if let Some(o) = out.as_mut() {
            let _ = o.read_to_end(&mut s);
        }
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        if let Some(e) = err.as_mut() {
            let _ = e.read_to_end(&mut s);
        }
        s
    });
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if start.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(format!("microvm: waiting for QEMU: {e}")),
        }
    };
    drop(child.stdin.take());
    let out = String::from_utf8_lossy(&reader.join().unwrap_or_default()).into_owned();
    let err = String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned();
    let tail: String = {
        let lines: Vec<&str> = err.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    };
    match status {
        None => Err(format!(
            "microvm: no power-off within {timeout:?}; guest said {out:?}; console:\n{tail}"
        )),
        Some(_) if out.contains(CHECK_DONE) => Ok(out),
        Some(s) => Err(format!(
            "microvm: QEMU ended ({s}) before the guest's check finished; guest said {out:?}; console/QEMU:\n{tail}"
        )),
    }
}

/// Whether a microVM can be started here with `accel`, or why not. KVM is detected by trying:
/// a check-mode boot (10 s at most; needs the guest binary too); TCG needs the assets and
/// QEMU's TCG (the guest binary is `__vmm`'s to find). The answer is cached
/// per host boot (and kernel asset) in the asset directory.
pub fn probe(accel: Accel) -> Result<(), String> {
    let assets = Assets::locate()?;
    let name = match accel {
        Accel::Kvm => "kvm",
        Accel::Tcg => "tcg",
    };
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let kmtime = std::fs::metadata(&assets.kernel)
        .and_then(|m| m.modified())
        .map(|t| format!("{t:?}"))
        .unwrap_or_default();
    let key = format!("{}|{kmtime}", boot_id.trim());
    let cache = assets.dir.join(format!("probe-{name}"));
    if let Ok(s) = std::fs::read_to_string(&cache)
        && let Some((k, v)) = s.split_once('\n')
        && k == key
    {
        return if v == "ok" {
            Ok(())
        } else {
            Err(v.to_string())
        };
    }
    let result = probe_uncached(&assets, accel);
    let v = match &result {
        Ok(()) => "ok".to_string(),
        Err(e) => e.replace('\n', " "),
    };
    let tmp = cache.with_extension(format!("{}", std::process::id()));
    if std::fs::write(&tmp, format!("{key}\n{v}")).is_ok() {
        let _ = std::fs::rename(&tmp, &cache);
    }
    result
}

fn probe_uncached(assets: &Assets, accel: Accel) -> Result<(), String> {
    match accel {
        Accel::Tcg => {
            let out = std::process::Command::new(&assets.qemu)
                .args(["-accel", "help"])
                .output()
                .map_err(|e| format!("microvm: running {}: {e}", assets.qemu.display()))?;
            if String::from_utf8_lossy(&out.stdout)
                .lines()
                .any(|l| l.trim() == "tcg")
            {
                Ok(())
            } else {
                Err(format!(
                    "microvm: {} has no TCG accelerator",
                    assets.qemu.display()
                ))
            }
        }
        Accel::Kvm => {
            if let Err(e) = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/kvm")
            {
                return Err(format!(
                    "microvm: KVM is not available here (/dev/kvm: {e})"
                ));
            }
            let guest = crate::backend::guest_binary()?;
            let initramfs = assets.initramfs(&guest, None)?;
            let view = tempdir()?;
            let spec = VmSpec {
                memory: 128 << 20,
                cpus: 1,
                accel: Accel::Kvm,
                initramfs,
                view: view.clone(),
                console_log: None,
                extra_cmdline: vec![],
            };
            let r = check_boot(assets, &spec, None, Duration::from_secs(10));
            let _ = std::fs::remove_dir(&view);
            r.map(drop).map_err(|e| {
                format!(
                    "microvm: KVM cannot run a guest here (a test boot failed: {}); use TCG (policy: allow emulated)",
                    e.lines().next().unwrap_or_default()
                )
            })
        }
    }
}

fn tempdir() -> Result<PathBuf, String> {
    let p = std::env::temp_dir().join(format!("stockade-kvm-probe-{}", std::process::id()));
    std::fs::create_dir_all(&p).map_err(|e| format!("microvm: creating {}: {e}", p.display()))?;
    Ok(p)
}
