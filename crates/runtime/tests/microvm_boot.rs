//! Boots the microVM guest's check mode under TCG (root; needs `scripts/setup-microvm`'s assets
//! and the static guest binary: missing ones fail with the reason) with a view of one read-only
//! and one writable host directory, QEMU running as an unprivileged uid, and proves:
//! the marker arrives over the virtio-serial port; the read-only share is readable and refuses
//! writes with EROFS; a write to the writable share lands on the host owned by root; host files
//! outside the view (a canary under /root, /etc/shadow) are not reachable, and the share lists
//! nothing but the view's paths.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use stockade_jail::plan::{
    Accel, Bind, LandlockPlan, RootOp, SandboxPlan, WorkspaceKind, WorkspacePlan,
};
use stockade_runtime::microvm::{self, Assets, VmSpec};

const QEMU_UID: u32 = 65_533;

fn guest_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("STOCKADE_GUEST_BIN") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/x86_64-unknown-linux-gnu/release/stockade-guest")
}

fn plan(ro: &Path, rw: &Path) -> SandboxPlan {
    SandboxPlan {
        id: "microvm-boot-test".into(),
        uid_map: vec![],
        gid_map: vec![],
        idmap_host_uid: Some(QEMU_UID),
        uid: 1000,
        gid: 1000,
        hostname: "t".into(),
        scratch_bytes: 1 << 20,
        home: "/home/u".into(),
        rootfs: None,
        root_ops: vec![
            RootOp::Bind(Bind {
                source: ro.to_path_buf(),
                target: "/data".into(),
                writable: false,
                optional: false,
                idmap: false,
                device: false,
            }),
            RootOp::Bind(Bind {
                source: "/dev/null".into(),
                target: "/dev/null".into(),
                writable: true,
                optional: false,
                idmap: false,
                device: true,
            }),
        ],
        workspace: WorkspacePlan {
            host: rw.to_path_buf(),
            target: rw.to_path_buf(),
            kind: WorkspaceKind::Rw,
            pin: vec![],
            protect: vec![],
            idmap: true,
        },
        cwd: rw.to_path_buf(),
        argv: vec!["true".into()],
        env: vec![],
        rlimits: vec![],
        cgroup_procs: vec!["/sys/fs/cgroup/x/cgroup.procs".into()],
        cgroup_dirs: vec!["/sys/fs/cgroup/x".into()],
        landlock: LandlockPlan::default(),
        seccomp: None,
        egress: false,
        session: false,
        backend: None,
        vm_guest: false,
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Unmounts everything under `dir` (deepest first) in this thread's mount namespace.
fn unmount_all(dir: &Path) {
    let mounts = fs::read_to_string("/proc/thread-self/mountinfo").unwrap();
    let mut targets: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(PathBuf::from))
        .filter(|p| p.starts_with(dir))
        .collect();
    targets.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for t in targets {
        stockade_jail::sys::umount2(&t, libc::MNT_DETACH).unwrap();
    }
}

#[test]
fn check_mode_boots_with_a_view_of_exactly_the_plans_paths() {
    // SAFETY: geteuid takes no arguments and cannot fail.
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root");
    let assets = Assets::locate().unwrap_or_else(|e| panic!("{e}"));
    let bin = guest_bin();
    assert!(
        bin.is_file(),
        "the static guest binary {} is missing: run scripts/setup-microvm (or set STOCKADE_GUEST_BIN)",
        bin.display()
    );

    // Host side: a read-only dir with a file, a writable (root-owned) dir, a canary outside.
    let base = tempfile::Builder::new()
        .prefix("stockade-mvm-")
        .tempdir()
        .unwrap();
    let ro = base.path().join("ro");
    let rw = base.path().join("rw");
    fs::create_dir(&ro).unwrap();
    fs::create_dir(&rw).unwrap();
    fs::write(ro.join("hello"), b"hi from the host\n").unwrap();
    let canary = PathBuf::from(format!("/root/stockade-canary-{}", std::process::id()));
    fs::write(&canary, b"secret").unwrap();
    // Control: the canary is there and readable on the host.
    assert_eq!(fs::read(&canary).unwrap(), b"secret");
    let view = base.path().join("view");
    let cache = base.path().join("cache");

    // __vmm's situation: a private mount namespace (this thread's: unshare(CLONE_NEWNS) is per
    // thread here, and QEMU is spawned from this thread).
    stockade_jail::sys::unshare(libc::CLONE_NEWNS).unwrap();
    stockade_jail::sys::mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )
    .unwrap();

    let p = plan(&ro, &rw);
    let guest = microvm::build_view(&p, &view, QEMU_UID).unwrap_or_else(|e| panic!("{e}"));
    // The guest plan: sources under /host, no idmap, no cgroups, no backend; /dev stays.
    let host = |p: &Path| Path::new("/host").join(p.strip_prefix("/").unwrap());
    match &guest.root_ops[0] {
        RootOp::Bind(b) => assert_eq!(b.source, host(&ro)),
        o => panic!("{o:?}"),
    }
    match &guest.root_ops[1] {
        RootOp::Bind(b) => assert_eq!(b.source, PathBuf::from("/dev/null")),
        o => panic!("{o:?}"),
    }
    assert_eq!(guest.workspace.host, host(&rw));
    assert!(
        !guest.workspace.idmap && guest.cgroup_procs.is_empty() && guest.cgroup_dirs.is_empty()
    );

    let initramfs = assets.initramfs(&bin, Some(&cache)).unwrap();
    let console = base.path().join("console.log");
    let g = |p: &Path| host(p).display().to_string();
    let spec = VmSpec {
        memory: 256 << 20,
        cpus: 1,
        accel: Accel::Tcg,
        initramfs,
        view: view.clone(),
        console_log: Some(console.clone()),
        extra_cmdline: vec![
            format!("stockade.read={}", g(&ro.join("hello"))),
            format!("stockade.write={}", g(&ro.join("new"))),
            format!("stockade.write={}", g(&rw.join("out"))),
            format!("stockade.read={}", g(&canary)),
            "stockade.read=/host/etc/shadow".into(),
            "stockade.list=1".into(),
        ],
    };
    // The console log is written by QEMU as QEMU_UID.
    fs::write(&console, b"").unwrap();
    std::os::unix::fs::chown(&console, Some(QEMU_UID), Some(QEMU_UID)).unwrap();
    let t = Instant::now();
    let out = microvm::check_boot(&assets, &spec, Some(QEMU_UID), Duration::from_secs(60));
    let took = t.elapsed();
    let log = fs::read_to_string(&console).unwrap_or_default();
    unmount_all(&view);
    let _ = fs::remove_file(&canary);
    let out = out.unwrap_or_else(|e| panic!("{e}\nconsole:\n{log}"));
    eprintln!("boot to power-off: {took:?}\n{out}");

    let lines: Vec<&str> = out.lines().collect();
    // The marker, with the guest's uptime.
    let up: f64 = lines[0]
        .strip_prefix("STOCKADE-GUEST-UP ")
        .unwrap_or_else(|| panic!("{out}"))
        .parse()
        .unwrap();
    assert!(up > 0.0);
    let has = |l: &str| assert!(lines.contains(&l), "missing {l:?} in:\n{out}");
    // Read-only share: readable, writes refused with EROFS (30).
    has(&format!(
        "read {} ok {}",
        g(&ro.join("hello")),
        hex(b"hi from the host\n")
    ));
    has(&format!("write {} err {}", g(&ro.join("new")), libc::EROFS));
    assert!(!ro.join("new").exists());
    // Writable share: the file lands on the host, root-owned.
    has(&format!("write {} ok", g(&rw.join("out"))));
    let m = fs::metadata(rw.join("out")).unwrap();
    assert_eq!((m.uid(), m.gid()), (0, 0));
    assert_eq!(fs::read(rw.join("out")).unwrap(), b"written by the guest\n");
    // Outside the view: not there (ENOENT), though the canary exists on the host.
    has(&format!("read {} err {}", g(&canary), libc::ENOENT));
    has(&format!("read /host/etc/shadow err {}", libc::ENOENT));
    // The whole share: only the bound paths and their parent directories.
    let listed: Vec<PathBuf> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("list "))
        .map(PathBuf::from)
        .collect();
    assert!(listed.contains(&host(&ro.join("hello"))), "{out}");
    for l in &listed {
        let ok = host(&ro).starts_with(l)
            || host(&rw).starts_with(l)
            || l.starts_with(host(&ro))
            || l.starts_with(host(&rw));
        assert!(ok, "{} is visible in the share:\n{out}", l.display());
    }
    assert_eq!(lines.last(), Some(&"STOCKADE-GUEST-DONE"));
}

#[test]
fn probe_tcg_is_ok_here_and_cached() {
    let assets = Assets::locate().unwrap_or_else(|e| panic!("{e}"));
    let _ = fs::remove_file(assets.dir.join("probe-tcg"));
    microvm::probe(Accel::Tcg).unwrap_or_else(|e| panic!("{e}"));
    let cached = fs::read_to_string(assets.dir.join("probe-tcg")).unwrap();
    let boot_id = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    assert!(
        cached.starts_with(boot_id.trim()) && cached.ends_with("\nok"),
        "{cached:?}"
    );
    // A cached failure is returned as is (without running QEMU).
    let (key, _) = cached.split_once('\n').unwrap();
    fs::write(
        assets.dir.join("probe-tcg"),
        format!("{key}\nmicrovm: cached no"),
    )
    .unwrap();
    assert_eq!(
        microvm::probe(Accel::Tcg).unwrap_err(),
        "microvm: cached no"
    );
    fs::remove_file(assets.dir.join("probe-tcg")).unwrap();
    microvm::probe(Accel::Tcg).unwrap();
}
