//! The microVM's host assets (written by `scripts/setup-microvm`) and the guest initramfs.

use std::fs;
use std::hash::{DefaultHasher, Hasher};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Default asset directory (root's); `$STOCKADE_MICROVM_DIR` overrides it.
pub const DEFAULT_DIR: &str = "/var/lib/stockade/microvm";
const SETUP_HINT: &str = "run scripts/setup-microvm (as root) to set up the microvm level";

/// What a microVM needs from the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assets {
    /// The asset directory.
    pub dir: PathBuf,
    /// Uncompressed PVH ELF kernel.
    pub kernel: PathBuf,
    /// Kernel modules in load order.
    pub modules: Vec<PathBuf>,
    /// `qemu-system-x86_64` (`$STOCKADE_QEMU` overrides the PATH lookup).
    pub qemu: PathBuf,
}

impl Assets {
    /// Finds the assets; the error names the missing piece and how to get it.
    pub fn locate() -> Result<Assets, String> {
        let dir = std::env::var_os("STOCKADE_MICROVM_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DIR));
        Self::locate_in(&dir)
    }

    /// [`Assets::locate`] with an explicit asset directory.
    pub fn locate_in(dir: &Path) -> Result<Assets, String> {
        let missing = |what: &str, p: &Path| {
            format!("microvm: {what} {} is missing; {SETUP_HINT}", p.display())
        };
        let kernel = dir.join("vmlinux");
        if !kernel.is_file() {
            return Err(missing("the guest kernel", &kernel));
        }
        let load = dir.join("modules.load");
        let list = fs::read_to_string(&load).map_err(|_| missing("the module list", &load))?;
        let mut modules = Vec::new();
        for name in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if name.contains('/') {
                return Err(format!(
                    "microvm: bad module name {name:?} in {}",
                    load.display()
                ));
            }
            let p = dir.join("modules").join(name);
            if !p.is_file() {
                return Err(missing("the kernel module", &p));
            }
            modules.push(p);
        }
        let qemu = find_qemu().ok_or_else(|| {
            format!("microvm: qemu-system-x86_64 was not found in PATH (or $STOCKADE_QEMU); {SETUP_HINT}")
        })?;
        Ok(Assets {
            dir: dir.to_path_buf(),
            kernel,
            modules,
            qemu,
        })
    }

    /// The guest initramfs for `guest_bin` (cached in `cache_dir`, default `<asset dir>/initramfs`,
    /// by the identity of its inputs), written on first use.
    pub fn initramfs(&self, guest_bin: &Path, cache_dir: Option<&Path>) -> Result<PathBuf, String> {
        let cache = cache_dir.map_or_else(|| self.dir.join("initramfs"), Path::to_path_buf);
        let key = initramfs_key(guest_bin, &self.modules)?;
        let out = cache.join(format!("initramfs-{key:016x}.cpio"));
        if out.is_file() {
            return Ok(out);
        }
        fs::create_dir_all(&cache)
            .map_err(|e| format!("microvm: creating {}: {e}", cache.display()))?;
        let tmp = cache.join(format!(".initramfs-{key:016x}.{}", std::process::id()));
        let written = (|| -> io::Result<()> {
            let mut f = io::BufWriter::new(fs::File::create(&tmp)?);
            write_initramfs(&mut f, guest_bin, &self.modules)?;
            f.into_inner()
                .map_err(io::IntoInnerError::into_error)?
                .sync_all()?;
            fs::rename(&tmp, &out)
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(format!("microvm: writing {}: {e}", out.display()));
        }
        // Older ones (another guest binary) are not used any more.
        if let Ok(rd) = fs::read_dir(&cache) {
            for e in rd.flatten() {
                let n = e.file_name();
                let n = n.to_string_lossy();
                if n.starts_with("initramfs-") && e.path() != out {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        Ok(out)
    }
}

fn find_qemu() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("STOCKADE_QEMU") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join("qemu-system-x86_64"))
        .find(|p| p.is_file())
}

/// The cache key: every input's path, device, inode, size and modification time (a rebuilt
/// guest binary or a re-run setup changes it).
fn initramfs_key(guest_bin: &Path, modules: &[PathBuf]) -> Result<u64, String> {
    let mut h = DefaultHasher::new();
    h.write(b"stockade-initramfs-v1");
    for p in std::iter::once(guest_bin).chain(modules.iter().map(PathBuf::as_path)) {
        let m = fs::metadata(p).map_err(|e| format!("microvm: {}: {e}", p.display()))?;
        h.write(p.as_os_str().as_encoded_bytes());
        for v in [
            m.dev(),
            m.ino(),
            m.size(),
            m.mtime() as u64,
            m.mtime_nsec() as u64,
        ] {
            h.write_u64(v);
        }
    }
    Ok(h.finish())
}

/// Writes the initramfs (cpio "newc", uncompressed: the kernel then only copies it, which boots
/// faster under TCG than decompressing): `/init` = the guest binary, `/stockade/modules/*.ko`
/// and `/stockade/modules.load` (their order), plus the directories.
pub fn write_initramfs(
    out: &mut impl Write,
    guest_bin: &Path,
    modules: &[PathBuf],
) -> io::Result<()> {
    let mut w = Cpio { out, ino: 1 };
    w.dir("stockade")?;
    w.dir("stockade/modules")?;
    let mut load = String::new();
    for m in modules {
        let name = m
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "module path has no name"))?
            .to_string_lossy()
            .into_owned();
        w.file(&format!("stockade/modules/{name}"), 0o644, &fs::read(m)?)?;
        load.push_str(&name);
        load.push('\n');
    }
    w.file("stockade/modules.load", 0o644, load.as_bytes())?;
    w.file("init", 0o755, &fs::read(guest_bin)?)?;
    w.trailer()
}

/// A cpio "newc" archive writer: 110-byte ASCII headers, names and data padded to 4 bytes.
struct Cpio<'a, W: Write> {
    out: &'a mut W,
    ino: u32,
}

impl<W: Write> Cpio<'_, W> {
    fn entry(&mut self, name: &str, mode: u32, nlink: u32, data: &[u8]) -> io::Result<()> {
        let size = u32::try_from(data.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file too large for cpio"))?;
        let namesize = name.len() + 1;
        let fields = [
            self.ino,
            mode,
            0,
            0,
            nlink,
            0,
            size,
            0,
            0,
            0,
            0,
            namesize as u32,
            0,
        ];
        self.ino += 1;
        let mut h = String::with_capacity(110);
        h.push_str("070701");
        for f in fields {
            h.push_str(&format!("{f:08x}"));
        }
        self.out.write_all(h.as_bytes())?;
        self.out.write_all(name.as_bytes())?;
        self.out.write_all(&[0])?;
        self.pad(110 + namesize)?;
        self.out.write_all(data)?;
        self.pad(data.len())
    }

    fn pad(&mut self, len: usize) -> io::Result<()> {
        self.out.write_all(&[0u8; 3][..(4 - len % 4) % 4])
    }

    fn dir(&mut self, name: &str) -> io::Result<()> {
        self.entry(name, libc::S_IFDIR | 0o755, 2, &[])
    }

    fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.entry(name, libc::S_IFREG | perm, 1, data)
    }

    fn trailer(&mut self) -> io::Result<()> {
        self.ino = 0;
        self.entry("TRAILER!!!", 0, 1, &[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_newc_layout() {
        let d = tempfile::tempdir().unwrap();
        let bin = d.path().join("guest");
        fs::write(&bin, b"ELF!x").unwrap();
        let m = d.path().join("virtio.ko");
        fs::write(&m, b"mod").unwrap();
        let mut out = Vec::new();
        write_initramfs(&mut out, &bin, &[m]).unwrap();
        assert_eq!(out.len() % 4, 0);
        // Walk the archive back: names, modes, sizes and contents.
        let mut at = 0;
        let mut seen = Vec::new();
        loop {
            let h = std::str::from_utf8(&out[at..at + 110]).unwrap();
            assert_eq!(&h[..6], "070701");
            let field = |i: usize| u32::from_str_radix(&h[6 + i * 8..14 + i * 8], 16).unwrap();
            let (mode, size, namesize) = (field(1), field(6) as usize, field(11) as usize);
            let name = std::str::from_utf8(&out[at + 110..at + 110 + namesize - 1]).unwrap();
            assert_eq!(out[at + 110 + namesize - 1], 0);
            let data_at = (at + 110 + namesize).div_ceil(4) * 4;
            let data = &out[data_at..data_at + size];
            seen.push((name.to_string(), mode, data.to_vec()));
            at = (data_at + size).div_ceil(4) * 4;
            if name == "TRAILER!!!" {
                break;
            }
        }
        assert_eq!(at, out.len());
        let names: Vec<&str> = seen.iter().map(|s| s.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "stockade",
                "stockade/modules",
                "stockade/modules/virtio.ko",
                "stockade/modules.load",
                "init",
                "TRAILER!!!"
            ]
        );
        assert_eq!(seen[4].1, libc::S_IFREG | 0o755);
        assert_eq!(seen[4].2, b"ELF!x");
        assert_eq!(seen[3].2, b"virtio.ko\n");
        assert_eq!(seen[0].1, libc::S_IFDIR | 0o755);
    }

    #[test]
    fn locate_names_the_missing_piece() {
        let d = tempfile::tempdir().unwrap();
        let e = Assets::locate_in(d.path()).unwrap_err();
        assert!(
            e.contains("vmlinux") && e.contains("scripts/setup-microvm"),
            "{e}"
        );
        fs::write(d.path().join("vmlinux"), "").unwrap();
        fs::write(d.path().join("modules.load"), "virtio.ko\n").unwrap();
        let e = Assets::locate_in(d.path()).unwrap_err();
        assert!(
            e.contains("modules/virtio.ko") && e.contains("scripts/setup-microvm"),
            "{e}"
        );
    }

    #[test]
    fn initramfs_is_cached_and_rebuilt_when_an_input_changes() {
        let d = tempfile::tempdir().unwrap();
        let bin = d.path().join("guest");
        fs::write(&bin, b"one").unwrap();
        let a = Assets {
            dir: d.path().to_path_buf(),
            kernel: d.path().join("vmlinux"),
            modules: vec![],
            qemu: PathBuf::from("/bin/true"),
        };
        let p1 = a.initramfs(&bin, None).unwrap();
        let t1 = fs::metadata(&p1).unwrap().modified().unwrap();
        assert_eq!(a.initramfs(&bin, None).unwrap(), p1);
        assert_eq!(fs::metadata(&p1).unwrap().modified().unwrap(), t1);
        std::thread::sleep(std::time::Duration::from_millis(10));
        fs::write(&bin, b"two!").unwrap();
        let p2 = a.initramfs(&bin, None).unwrap();
        assert_ne!(p1, p2);
        assert!(!p1.exists(), "the stale one is removed");
        assert!(fs::read(&p2).unwrap().windows(4).any(|w| w == b"two!"));
    }
}
