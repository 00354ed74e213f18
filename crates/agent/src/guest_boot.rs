//! Early boot of a microVM guest: what `stockade-guest` does first when it is the VM's `/init`
//! (PID 1 of the guest kernel, started from the initramfs that `stockade_runtime::microvm` writes).
//!
//! `boot()` leaves the initramfs for a tmpfs root (pivot_root(2), which the jail uses, refuses
//! to run on the initial rootfs), mounts /proc, /sys, /dev (devtmpfs, devpts, shm),
//! /sys/fs/cgroup, loads the kernel modules listed in `/stockade/modules.load` in order,
//! mounts the host's one 9p share (`host`) at `/host`, and returns the virtio-serial port named
//! `stockade.ctrl` opened read-write: the tunnel's byte stream to the host.
//!
//! With `stockade.check=1` on the kernel command line it is a self-test instead: it writes
//! `STOCKADE-GUEST-UP <uptime>` to the port, runs the probes the command line asks for
//! (`stockade.read=P`, `stockade.write=P`, `stockade.list=1`), one result line each, then
//! `STOCKADE-GUEST-DONE`, and powers off. The runtime's `microvm_boot` test drives it.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use stockade_jail::sys;

/// The port name the host gives the control channel (`-device virtserialport,name=...`).
pub const CTRL_PORT: &str = "stockade.ctrl";
/// Where the host's share is mounted in the guest; the guest plan's host paths are under it.
pub const HOST_MOUNT: &str = "/host";
/// The 9p mount tag of the host's share.
pub const SHARE_TAG: &str = "host";
/// The first line the check mode writes.
pub const CHECK_MARKER: &str = "STOCKADE-GUEST-UP";
/// The last line the check mode writes.
pub const CHECK_DONE: &str = "STOCKADE-GUEST-DONE";
/// The 9p mount options (measured under TCG, see docs/microvm.md).
pub const SHARE_OPTIONS: &str = "trans=virtio,version=9p2000.L,msize=262144,cache=mmap";

const MODULES_DIR: &str = "/stockade/modules";
const MODULES_LOAD: &str = "/stockade/modules.load";
const PORT_WAIT: Duration = Duration::from_secs(10);

fn err(what: impl std::fmt::Display) -> impl FnOnce(io::Error) -> String {
    move |e| format!("guest boot: {what}: {e}")
}

fn mount(
    src: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> Result<(), String> {
    let c = |s: &str| std::ffi::CString::new(s).map_err(|_| format!("guest boot: NUL in {s:?}"));
    let (src_c, fs_c, data_c) = (c(src)?, c(fstype)?, c(data)?);
    fs::create_dir_all(target).map_err(err(format!("creating {target}")))?;
    sys::mount(
        Some(&src_c),
        Path::new(target),
        Some(&fs_c),
        flags,
        (!data.is_empty()).then_some(data_c.as_c_str()),
    )
    .map_err(err(format!("mounting {fstype} on {target}")))
}

/// Boots the guest (see the module docs) and returns the control port, or powers off in check
/// mode. Call it only as PID 1 of a Stockade microVM.
pub fn boot() -> Result<fs::File, String> {
    if std::process::id() != 1 {
        return Err("guest boot: not PID 1 of a microVM".into());
    }
    // The modules are read from the initramfs, then removed from it (their memory is freed).
    load_modules()?;
    switch_root()?;
    const NOSUID_NODEV_NOEXEC: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    mount("proc", "/proc", "proc", NOSUID_NODEV_NOEXEC, "")?;
    mount("sysfs", "/sys", "sysfs", NOSUID_NODEV_NOEXEC, "")?;
    mount(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        "mode=0755",
    )?;
    mount(
        "devpts",
        "/dev/pts",
        "devpts",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        "newinstance,ptmxmode=0666,mode=0620",
    )?;
    mount("shm", "/dev/shm", "tmpfs", NOSUID_NODEV_NOEXEC, "mode=1777")?;
    mount(
        "cgroup2",
        "/sys/fs/cgroup",
        "cgroup2",
        NOSUID_NODEV_NOEXEC,
        "",
    )?;
    mount(
        "tmpfs",
        "/tmp",
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=1777",
    )?;
    mount("tmpfs", "/run", "tmpfs", NOSUID_NODEV_NOEXEC, "mode=0755")?;
    mount(SHARE_TAG, HOST_MOUNT, "9p", libc::MS_NODEV, SHARE_OPTIONS)?;
    let port = open_port(CTRL_PORT)?;
    let cmdline = fs::read_to_string("/proc/cmdline").map_err(err("reading /proc/cmdline"))?;
    if cmdline.split_whitespace().any(|a| a == "stockade.check=1") {
        let mut port = port;
        let _ = check(&mut port, &cmdline);
        power_off();
    }
    Ok(port)
}

/// Loads `/stockade/modules.load`'s modules in order with finit_module(2).
fn load_modules() -> Result<(), String> {
    let list = match fs::read_to_string(MODULES_LOAD) {
        Ok(l) => l,
        // A kernel with everything built in needs none.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(err(MODULES_LOAD)(e)),
    };
    for name in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let p = Path::new(MODULES_DIR).join(name);
        let f = fs::File::open(&p).map_err(err(format!("opening {}", p.display())))?;
        match sys::finit_module(&f) {
            Ok(()) => {}
            // Built in after all, or loaded already as another one's dependency.
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(err(format!("loading {}", p.display()))(e)),
        }
        drop(f);
        let _ = fs::remove_file(&p);
    }
    Ok(())
}

/// Moves a fresh tmpfs over the initramfs and makes it the root (the switch_root idiom):
/// pivot_root(2) fails on the initial rootfs, and the jail inside pivots into its own root.
fn switch_root() -> Result<(), String> {
    mount("root", "/newroot", "tmpfs", libc::MS_NOSUID, "mode=0755")?;
    std::env::set_current_dir("/newroot").map_err(err("entering /newroot"))?;
    sys::mount(Some(c"."), Path::new("/"), None, libc::MS_MOVE, None)
        .map_err(err("moving the new root over /"))?;
    std::os::unix::fs::chroot(".").map_err(err("chroot into the new root"))?;
    std::env::set_current_dir("/").map_err(err("entering /"))
}

/// Finds the virtio-serial port named `name` (the kernel creates it shortly after the
/// virtio_console module loaded) and opens it read-write.
fn open_port(name: &str) -> Result<fs::File, String> {
    let start = Instant::now();
    loop {
        if let Ok(dir) = fs::read_dir("/sys/class/virtio-ports") {
            for e in dir.flatten() {
                let n = fs::read_to_string(e.path().join("name")).unwrap_or_default();
                if n.trim_end() == name {
                    let dev = PathBuf::from("/dev").join(e.file_name());
                    return fs::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open(&dev)
                        .map_err(err(format!("opening {}", dev.display())));
                }
            }
        }
        if start.elapsed() > PORT_WAIT {
            return Err(format!(
                "guest boot: no virtio-serial port named {name} after {PORT_WAIT:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The check mode's probes; every result is one line on the port.
fn check(port: &mut fs::File, cmdline: &str) -> io::Result<()> {
    let uptime = fs::read_to_string("/proc/uptime").unwrap_or_default();
    let uptime = uptime.split_whitespace().next().unwrap_or("?");
    let mut out = format!("{CHECK_MARKER} {uptime}\n");
    let errno = |e: &io::Error| e.raw_os_error().unwrap_or(0);
    for arg in cmdline.split_whitespace() {
        if let Some(p) = arg.strip_prefix("stockade.read=") {
            match fs::read(p) {
                Ok(b) => out.push_str(&format!("read {p} ok {}\n", hex(&b))),
                Err(e) => out.push_str(&format!("read {p} err {}\n", errno(&e))),
            }
        } else if let Some(p) = arg.strip_prefix("stockade.write=") {
            let r = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(p)
                .and_then(|mut f| {
                    f.write_all(b"written by the guest\n")
                        .and_then(|()| f.sync_all())
                });
            match r {
                Ok(()) => out.push_str(&format!("write {p} ok\n")),
                Err(e) => out.push_str(&format!("write {p} err {}\n", errno(&e))),
            }
        } else if arg == "stockade.list=1" {
            let mut n = 0;
            list(Path::new(HOST_MOUNT), &mut out, &mut n);
        }
    }
    out.push_str(CHECK_DONE);
    out.push('\n');
    port.write_all(out.as_bytes())?;
    port.sync_all()
}

/// Every path under `dir` (depth-first, bounded), one `list <path>` line each.
fn list(dir: &Path, out: &mut String, n: &mut usize) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    let mut names: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
    names.sort();
    for p in names {
        *n += 1;
        if *n > 500 {
            return;
        }
        out.push_str(&format!("list {}\n", p.display()));
        if p.symlink_metadata().map(|m| m.is_dir()).unwrap_or(false) {
            list(&p, out, n);
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Syncs and powers the VM off (QEMU exits); never returns.
pub fn power_off() -> ! {
    // SAFETY: sync and reboot take no pointers; LINUX_REBOOT_CMD_POWER_OFF halts the machine
    // (ACPI S5 on QEMU microvm) and does not return when it succeeds.
    unsafe {
        libc::sync();
        libc::reboot(libc::LINUX_REBOOT_CMD_POWER_OFF);
    }
    // Powering off failed: PID 1 exiting panics the kernel, which (panic=-1, -no-reboot)
    // ends QEMU as well.
    std::process::exit(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_encodes_bytes() {
        assert_eq!(hex(b"\x00a\xff"), "0061ff");
    }

    #[test]
    fn boot_refuses_outside_pid_1() {
        let e = boot().unwrap_err();
        assert!(e.contains("not PID 1"), "{e}");
    }

    #[test]
    fn list_is_sorted_and_recursive() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("b")).unwrap();
        fs::write(d.path().join("b/x"), "").unwrap();
        fs::write(d.path().join("a"), "").unwrap();
        let mut out = String::new();
        let mut n = 0;
        list(d.path(), &mut out, &mut n);
        let p = d.path().display();
        assert_eq!(out, format!("list {p}/a\nlist {p}/b\nlist {p}/b/x\n"));
    }
}
