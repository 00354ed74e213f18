//! The QEMU command line of one microVM.

use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use stockade_jail::plan::Accel;

use super::assets::Assets;

/// TCG's translation cache in MiB (QEMU's default is 1 GiB of address space, committed as it
/// fills); measured: see docs/microvm.md.
pub const TCG_TB_SIZE_MIB: u32 = 64;

/// One microVM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmSpec {
    /// Guest memory in bytes (rounded down to MiB; at least 64 MiB).
    pub memory: u64,
    pub cpus: u32,
    pub accel: Accel,
    /// The initramfs (`Assets::initramfs`).
    pub initramfs: PathBuf,
    /// The host directory shared as the guest's `/host` (`build_view`).
    pub view: PathBuf,
    /// The guest console (kernel messages, ttyS0): this file, else QEMU's stderr.
    pub console_log: Option<PathBuf>,
    /// Extra kernel command line words (e.g. `stockade.check=1`).
    pub extra_cmdline: Vec<String>,
}

/// The host's TSC frequency in kHz (for the guest's `tsc_early_khz=`: without it some TCG boots
/// hang calibrating the TSC). From /proc/cpuinfo's "cpu MHz".
pub fn host_tsc_khz() -> Option<u64> {
    let s = fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz = s
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim();
    let (int, frac) = mhz.split_once('.').unwrap_or((mhz, "0"));
    let frac3: String = frac.chars().chain("000".chars()).take(3).collect();
    let khz = int.parse::<u64>().ok()? * 1000 + frac3.parse::<u64>().ok()?;
    (khz > 0).then_some(khz)
}

/// Kernel command line words that shorten the guest's boot, each measured under TCG (see
/// docs/microvm.md, "Boot time"): `cryptomgr.notests` skips the crypto self-tests (the largest
/// single initcall, ~0.5 s of emulated time); the rest skip probes of hardware microvm does not
/// have (PCI, a second to fourth UART, the PS/2 controller) and the IO-APIC timer check.
pub const FAST_BOOT: &str =
    "cryptomgr.notests pci=off 8250.nr_uarts=1 i8042.noaux i8042.nokbd no_timer_check";

/// The kernel command line.
pub fn kernel_cmdline(spec: &VmSpec) -> String {
    let mut c = format!("console=ttyS0 panic=-1 quiet rdinit=/init {FAST_BOOT}");
    if spec.accel == Accel::Tcg
        && let Some(khz) = host_tsc_khz()
    {
        c.push_str(&format!(" tsc_early_khz={khz}"));
    }
    for w in &spec.extra_cmdline {
        c.push(' ');
        c.push_str(w);
    }
    c
}

/// The QEMU command for `spec`. The kernel, the initramfs and the view directory are opened
/// here (by the caller, root) and handed to QEMU as inherited descriptors
/// (`/proc/self/fd/N`), so QEMU, which the caller runs as an unprivileged uid, needs no access
/// to their paths. stdin/stdout are the `stockade.ctrl` port's byte stream (the caller sets
/// them, e.g. to a socketpair end or pipes); stderr gets the guest console unless
/// `console_log` is set. No network device exists at all. The caller sets the uid/gid, the
/// cgroup and the process's lifetime.
pub fn qemu_command(assets: &Assets, spec: &VmSpec) -> Result<Command, String> {
    let open = |p: &Path, dir: bool| -> Result<OwnedFd, String> {
        let mut o = fs::OpenOptions::new();
        o.read(true);
        if dir {
            std::os::unix::fs::OpenOptionsExt::custom_flags(&mut o, libc::O_DIRECTORY);
        }
        o.open(p)
            .map(OwnedFd::from)
            .map_err(|e| format!("microvm: opening {}: {e}", p.display()))
    };
    let kernel = open(&assets.kernel, false)?;
    let initrd = open(&spec.initramfs, false)?;
    let view = open(&spec.view, true)?;
    let fd_path = |fd: &OwnedFd| format!("/proc/self/fd/{}", fd.as_raw_fd());
    let mib = (spec.memory >> 20).max(64);

    let mut c = Command::new(&assets.qemu);
    c.args(["-M", "microvm"]);
    match spec.accel {
        Accel::Kvm => c.args(["-accel", "kvm", "-cpu", "host"]),
        Accel::Tcg => c.args(["-accel", &format!("tcg,tb-size={TCG_TB_SIZE_MIB}")]),
    };
    c.args([
        "-m",
        &format!("{mib}M"),
        "-smp",
        &spec.cpus.max(1).to_string(),
    ]);
    c.args([
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-no-reboot",
        "-display",
        "none",
    ]);
    // QEMU's own seccomp filter: no exec/fork, no setuid, no obsolete or resource-control calls.
    c.args([
        "-sandbox",
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
    ]);
    c.args(["-kernel", &fd_path(&kernel), "-initrd", &fd_path(&initrd)]);
    c.args(["-append", &kernel_cmdline(spec)]);
    // Guest console on ttyS0 (the ISA serial port microvm has built in).
    let console = match &spec.console_log {
        Some(p) => format!("file,id=con,path={}", qemu_opt(&p.to_string_lossy())),
        // append: a regular file as stderr is not truncated.
        None => "file,id=con,path=/dev/stderr,append=on".to_string(),
    };
    c.args(["-chardev", &console, "-serial", "chardev:con"]);
    // The control port: QEMU's stdin/stdout, raw bytes; signal=off keeps a ^C byte a byte.
    c.args([
        "-chardev",
        "stdio,id=ctrl,signal=off",
        "-device",
        "virtio-serial-device,max_ports=2",
        "-device",
        "virtserialport,chardev=ctrl,name=stockade.ctrl",
    ]);
    // The one share: the view, served by QEMU as its own (unprivileged) uid; `none` = no
    // ownership changes are attempted (what lands on disk is decided by the view's idmap).
    c.args([
        "-fsdev",
        &format!(
            "local,id=view,path={},security_model=none,multidevs=remap",
            fd_path(&view)
        ),
        "-device",
        "virtio-9p-device,fsdev=view,mount_tag=host",
    ]);
    // Entropy for the guest's early getrandom (free: it reads the host's /dev/urandom).
    c.args(["-device", "virtio-rng-device"]);
    let fds = [kernel, initrd, view];
    // SAFETY: the closure runs in the forked child before exec and only calls fcntl(2) on
    // descriptors the closure owns (moved in; they stay open in the parent until the Command
    // is dropped), which is async-signal-safe.
    unsafe {
        c.pre_exec(move || {
            for fd in &fds {
                if libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    Ok(c)
}

/// Escapes a value for QEMU's option syntax (a comma is doubled).
fn qemu_opt(s: &str) -> String {
    s.replace(',', ",,")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsc_khz_is_read_from_cpuinfo() {
        let khz = host_tsc_khz().unwrap();
        assert!((100_000..10_000_000).contains(&khz), "{khz}");
    }

    #[test]
    fn command_line_has_no_network_and_one_share() {
        let d = tempfile::tempdir().unwrap();
        for f in ["vmlinux", "initrd"] {
            fs::write(d.path().join(f), "").unwrap();
        }
        let a = Assets {
            dir: d.path().to_path_buf(),
            kernel: d.path().join("vmlinux"),
            modules: vec![],
            qemu: PathBuf::from("/usr/bin/qemu-system-x86_64"),
        };
        let spec = VmSpec {
            memory: 256 << 20,
            cpus: 1,
            accel: Accel::Tcg,
            initramfs: d.path().join("initrd"),
            view: d.path().to_path_buf(),
            console_log: Some(PathBuf::from("/tmp/a,b")),
            extra_cmdline: vec!["stockade.check=1".into()],
        };
        let c = qemu_command(&a, &spec).unwrap();
        let args: Vec<String> = c
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        assert!(
            !joined.contains("-net") && !joined.contains("netdev"),
            "{joined}"
        );
        assert_eq!(args.iter().filter(|a| *a == "-fsdev").count(), 1);
        assert!(joined.contains("-nodefaults"));
        assert!(joined.contains("-sandbox on,"));
        assert!(joined.contains("path=/tmp/a,,b"));
        assert!(joined.contains(&format!("tcg,tb-size={TCG_TB_SIZE_MIB}")));
        assert!(joined.contains("-m 256M"));
        let append = &args[args.iter().position(|a| a == "-append").unwrap() + 1];
        assert!(append.starts_with(&format!(
            "console=ttyS0 panic=-1 quiet rdinit=/init {FAST_BOOT} tsc_early_khz="
        )));
        assert!(!FAST_BOOT.contains("  "), "{FAST_BOOT:?}");
        assert!(append.ends_with(" stockade.check=1"));
    }
}
