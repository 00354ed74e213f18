//! Helper of bench/levels.sh: the "direct" runs it compares Stockade with, built from the same
//! code Stockade uses, so that only Stockade's own overhead differs.
//!
//!   levels_bench gvisor-bundle DIR WORKSPACE
//!       writes the OCI bundle of a default-policy sandbox (`gvisor::write_bundle_with_args`,
//!       the same mounts) into DIR (must not exist) with `/bin/true` as the container init.
//!   levels_bench qemu-direct VIEW CTRL_FILE GUEST_MIB
//!       prints, one per line, the QEMU command (`microvm::qemu_command`) Stockade would run for
//!       a check-mode boot (`stockade.check=1`) of a GUEST_MIB guest with VIEW as the share, the
//!       inherited descriptors replaced by the assets' paths and the control port written to
//!       CTRL_FILE (Stockade wires it to its tunnel instead).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use stockade_jail::plan::Accel;
use stockade_runtime::plan::{self, Extras, HostFacts};
use stockade_runtime::{backend, gvisor, microvm};

fn usage() -> ! {
    eprintln!(
        "usage: levels_bench gvisor-bundle DIR WORKSPACE | qemu-direct VIEW CTRL_FILE GUEST_MIB"
    );
    std::process::exit(2)
}

fn facts(workspace: PathBuf) -> HostFacts {
    HostFacts {
        euid: 0,
        egid: 0,
        env: vec![],
        system_links: plan::system_links(),
        workspace,
        nonce: 1,
    }
}

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    match a.first().map(String::as_str) {
        Some("gvisor-bundle") if a.len() == 3 => {
            let ws = std::fs::canonicalize(&a[2]).unwrap();
            let policy = stockade_policy::Policy::default();
            let p = plan::build(
                &policy,
                &["/bin/true".to_string()],
                &facts(ws),
                Extras {
                    id: "levels-bench".into(),
                    ..Extras::default()
                },
            );
            let args = vec!["/bin/true".to_string()];
            gvisor::write_bundle_with_args(&p, Path::new(&a[1]), Path::new("/bin/true"), &args)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        Some("qemu-direct") if a.len() == 4 => {
            let assets = microvm::Assets::locate().unwrap_or_else(|e| panic!("{e}"));
            let guest = backend::guest_binary().unwrap_or_else(|e| panic!("{e}"));
            let initramfs = assets
                .initramfs(&guest, None)
                .unwrap_or_else(|e| panic!("{e}"));
            let mib: u64 = a[3].parse().unwrap_or_else(|_| usage());
            let spec = microvm::VmSpec {
                memory: mib << 20,
                cpus: 1,
                accel: Accel::Tcg,
                initramfs: initramfs.clone(),
                view: PathBuf::from(&a[1]),
                console_log: None,
                extra_cmdline: vec!["stockade.check=1".into()],
            };
            let c = microvm::qemu_command(&assets, &spec).unwrap_or_else(|e| panic!("{e}"));
            println!("{}", c.get_program().to_string_lossy());
            let mut prev = String::new();
            for arg in c.get_args() {
                let mut s = arg.to_string_lossy().into_owned();
                if prev == "-kernel" {
                    s = assets.kernel.display().to_string();
                } else if prev == "-initrd" {
                    s = initramfs.display().to_string();
                } else if s.starts_with("local,id=view,path=") {
                    s = s
                        .split(',')
                        .map(|p| {
                            if p.starts_with("path=") {
                                format!("path={}", a[1])
                            } else {
                                p.to_string()
                            }
                        })
                        .collect::<Vec<_>>()
                        .join(",");
                } else if s.starts_with("stdio,id=ctrl") {
                    s = format!("file,id=ctrl,path={}", a[2]);
                } else if s.starts_with("file,id=con,") {
                    s = "file,id=con,path=/dev/null".into();
                }
                println!("{s}");
                prev = arg.to_string_lossy().into_owned();
            }
        }
        _ => usage(),
    }
}
