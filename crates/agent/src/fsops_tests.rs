//! Unit tests of the file operations, on temporary directories (no root needed; as root they
//! still hold, since none of them relies on permissions).

use super::*;
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

fn base() -> (tempfile::TempDir, String) {
    let d = tempfile::tempdir().unwrap();
    let b = fs::canonicalize(d.path()).unwrap();
    (d, b.to_str().unwrap().to_string())
}

fn p(b: &str, rel: &str) -> String {
    format!("{b}/{rel}")
}

fn errno_of<T: std::fmt::Debug>(r: Result<T, FsError>) -> (i32, String) {
    let e = r.unwrap_err();
    (e.errno, e.message)
}

fn mkfifo(path: &str) {
    let c = CString::new(path).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path for the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
}

fn umask() -> u32 {
    let s = fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with("Umask:")).unwrap();
    u32::from_str_radix(line.split_whitespace().nth(1).unwrap(), 8).unwrap()
}

#[test]
fn relative_paths_and_nul_bytes_are_refused_by_every_op() {
    let mut w = Watcher::default();
    let bad = ["relative/x", "", "/a\0b"];
    for path in bad {
        let ops = [
            FsOp::Stat { path: path.into() },
            FsOp::List {
                path: path.into(),
                depth: 1,
            },
            FsOp::Mkdir { path: path.into() },
            FsOp::Move {
                from: path.into(),
                to: "/tmp/x".into(),
            },
            FsOp::Move {
                from: "/tmp".into(),
                to: path.into(),
            },
            FsOp::Remove { path: path.into() },
            FsOp::Open {
                path: path.into(),
                write: false,
            },
            FsOp::Open {
                path: path.into(),
                write: true,
            },
            FsOp::Watch {
                path: path.into(),
                recursive: true,
            },
        ];
        for op in ops {
            let (reply, fd) = run(&op, &mut w);
            assert!(fd.is_none());
            match reply {
                FsReply::Failed { errno, message } => {
                    assert_eq!(errno, libc::EINVAL, "{op:?}");
                    assert!(
                        message.contains("absolute") || message.contains("NUL"),
                        "{message}"
                    );
                }
                other => panic!("{op:?} gave {other:?}"),
            }
        }
    }
}

#[test]
fn stat_describes_files_dirs_and_symlinks_without_following() {
    let (_d, b) = base();
    fs::write(p(&b, "f"), b"hello").unwrap();
    fs::set_permissions(p(&b, "f"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::create_dir(p(&b, "d")).unwrap();
    symlink("d", p(&b, "l")).unwrap();
    symlink("/nonexistent", p(&b, "dangling")).unwrap();

    let f = stat(&p(&b, "f")).unwrap();
    assert_eq!(
        (f.name.as_str(), f.kind, f.size, f.mode),
        ("f", EntryKind::File, 5, 0o640)
    );
    assert_eq!(f.path, p(&b, "f"));
    assert!(f.mtime > 1_600_000_000);
    let d = stat(&p(&b, "d")).unwrap();
    assert_eq!(d.kind, EntryKind::Dir);
    let l = stat(&p(&b, "l")).unwrap();
    assert_eq!(l.kind, EntryKind::Symlink);
    assert_eq!(l.symlink_target.as_deref(), Some("d"));
    let dl = stat(&p(&b, "dangling")).unwrap();
    assert_eq!(dl.symlink_target.as_deref(), Some("/nonexistent"));
    // `..` and `.` resolve normally; the reply names the canonical path.
    let again = stat(&format!("{b}/d/../f")).unwrap();
    assert_eq!(again.path, p(&b, "f"));
    let dot = stat(&format!("{b}/d/.")).unwrap();
    assert_eq!(
        (dot.path.as_str(), dot.kind),
        (p(&b, "d").as_str(), EntryKind::Dir)
    );
    // Trailing slashes are ignored.
    assert_eq!(stat(&format!("{b}/d/")).unwrap().path, p(&b, "d"));
    // The root.
    let root = stat("/").unwrap();
    assert_eq!((root.name.as_str(), root.path.as_str()), ("/", "/"));

    let missing = p(&b, "nope");
    assert_eq!(
        errno_of(stat(&missing)),
        (
            libc::ENOENT,
            format!("{missing}: No such file or directory")
        )
    );
    let under_file = p(&b, "f/x");
    assert_eq!(errno_of(stat(&under_file)).0, libc::ENOTDIR);
}

#[test]
fn list_is_sorted_by_path_bounded_and_never_follows_symlinks_down() {
    let (_d, b) = base();
    for dir in ["a", "a/x", "a-b", "c", "outside"] {
        fs::create_dir(p(&b, dir)).unwrap();
    }
    for f in ["a/x/deep", "a/y", "c/z", "outside/secret", "top"] {
        fs::write(p(&b, f), b"").unwrap();
    }
    symlink(p(&b, "outside"), p(&b, "c/link")).unwrap();
    let root = p(&b, "");
    let root = root.trim_end_matches('/');

    let names = |v: &[Entry]| -> Vec<String> {
        v.iter()
            .map(|e| {
                e.path
                    .strip_prefix(&format!("{root}/"))
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    let (one, t) = list(root, 1, 100).unwrap();
    assert!(!t);
    assert_eq!(names(&one), ["a", "a-b", "c", "outside", "top"]);
    let (two, t) = list(root, 2, 100).unwrap();
    assert!(!t);
    // Component-wise order: a directory's entries follow it, before its next sibling.
    assert_eq!(
        names(&two),
        [
            "a",
            "a/x",
            "a/y",
            "a-b",
            "c",
            "c/link",
            "c/z",
            "outside",
            "outside/secret",
            "top"
        ]
    );
    let (all, _) = list(root, 10, 100).unwrap();
    assert!(names(&all).contains(&"a/x/deep".to_string()));
    // The symlink is listed as such and never entered.
    let link = all.iter().find(|e| e.path.ends_with("c/link")).unwrap();
    assert_eq!(link.kind, EntryKind::Symlink);
    assert!(!names(&all).iter().any(|n| n.starts_with("c/link/")));

    // Truncation: at most `limit`, the first in order, and `truncated` set.
    let (three, t) = list(root, 2, 3).unwrap();
    assert!(t);
    assert_eq!(names(&three), ["a", "a/x", "a/y"]);
    let (exact, t) = list(&p(&b, "a"), 1, 2).unwrap();
    assert!(!t, "exactly the limit is not truncated");
    assert_eq!(exact.len(), 2);

    // A symlinked directory asked for is followed (like ls).
    let (via, _) = list(&p(&b, "c/link"), 1, 100).unwrap();
    assert_eq!(via.len(), 1);
    assert_eq!(via[0].path, p(&b, "outside/secret"));

    assert_eq!(errno_of(list(root, 0, 10)).0, libc::EINVAL);
    assert_eq!(errno_of(list(&p(&b, "top"), 1, 10)).0, libc::ENOTDIR);
    assert_eq!(errno_of(list(&p(&b, "nope"), 1, 10)).0, libc::ENOENT);
}

#[test]
fn mkdir_creates_parents_and_says_whether_it_created() {
    let (_d, b) = base();
    let (created, e) = mkdir(&p(&b, "x/y/z")).unwrap();
    assert!(created);
    assert_eq!(
        (e.kind, e.path.as_str()),
        (EntryKind::Dir, p(&b, "x/y/z").as_str())
    );
    assert!(Path::new(&p(&b, "x/y/z")).is_dir());
    let (created, _) = mkdir(&p(&b, "x/y/z")).unwrap();
    assert!(!created);
    let (created, _) = mkdir(&p(&b, "x/y")).unwrap();
    assert!(!created);
    // `..` resolves normally.
    let (created, e) = mkdir(&format!("{b}/x/../w")).unwrap();
    assert!(created);
    assert_eq!(e.path, p(&b, "w"));
    // A symlink to a directory is followed, as mkdir -p does.
    symlink(p(&b, "w"), p(&b, "wl")).unwrap();
    assert!(!mkdir(&p(&b, "wl")).unwrap().0);
    // Something not a directory in the way.
    fs::write(p(&b, "file"), b"").unwrap();
    let (errno, msg) = errno_of(mkdir(&p(&b, "file")));
    assert_eq!(errno, libc::EEXIST);
    assert_eq!(msg, format!("{}: File exists", p(&b, "file")));
    assert_eq!(errno_of(mkdir(&p(&b, "file/sub"))).0, libc::ENOTDIR);
    // Nothing was left behind by the failures.
    assert!(!Path::new(&p(&b, "file/sub")).exists());
}

#[test]
fn move_renames_creating_parents_and_takes_them_back_on_failure() {
    let (_d, b) = base();
    fs::write(p(&b, "f"), b"data").unwrap();
    let e = rename(&p(&b, "f"), &p(&b, "new/dir/g")).unwrap();
    assert_eq!(
        (e.path.as_str(), e.kind, e.size),
        (p(&b, "new/dir/g").as_str(), EntryKind::File, 4)
    );
    assert!(!Path::new(&p(&b, "f")).exists());
    assert_eq!(fs::read(p(&b, "new/dir/g")).unwrap(), b"data");

    // A missing source fails first: no parent is created.
    let (errno, msg) = errno_of(rename(&p(&b, "missing"), &p(&b, "q/r/s")));
    assert_eq!(errno, libc::ENOENT);
    assert!(msg.starts_with(&p(&b, "missing")), "{msg}");
    assert!(!Path::new(&p(&b, "q")).exists());

    // A rename the kernel refuses (a directory into itself): the parents made for it go.
    fs::create_dir(p(&b, "d")).unwrap();
    let (errno, _) = errno_of(rename(&p(&b, "d"), &p(&b, "d/made/for/it")));
    assert_eq!(errno, libc::EINVAL);
    assert!(!Path::new(&p(&b, "d/made")).exists());

    // A symlink is moved as itself.
    symlink("new", p(&b, "l")).unwrap();
    let e = rename(&p(&b, "l"), &p(&b, "l2")).unwrap();
    assert_eq!(e.kind, EntryKind::Symlink);
    assert!(Path::new(&p(&b, "new/dir/g")).exists());
}

#[test]
fn remove_never_follows_symlinks() {
    let (_d, b) = base();
    fs::create_dir_all(p(&b, "keep/inner")).unwrap();
    fs::write(p(&b, "keep/inner/precious"), b"x").unwrap();
    fs::create_dir_all(p(&b, "tree/a/b")).unwrap();
    fs::write(p(&b, "tree/a/b/f"), b"x").unwrap();
    fs::write(p(&b, "tree/top"), b"x").unwrap();
    symlink(p(&b, "keep"), p(&b, "tree/a/to_keep")).unwrap();
    symlink(p(&b, "keep/inner/precious"), p(&b, "tree/file_link")).unwrap();
    symlink(p(&b, "keep"), p(&b, "dirlink")).unwrap();

    // A symlink to a directory: the link goes, the directory stays.
    remove(&p(&b, "dirlink")).unwrap();
    assert!(fs::symlink_metadata(p(&b, "dirlink")).is_err());
    assert!(Path::new(&p(&b, "keep/inner/precious")).exists());
    // A tree with symlinks out of it: the tree goes, what they point at stays.
    remove(&p(&b, "tree")).unwrap();
    assert!(!Path::new(&p(&b, "tree")).exists());
    assert!(Path::new(&p(&b, "keep/inner/precious")).exists());
    // A file.
    remove(&p(&b, "keep/inner/precious")).unwrap();
    assert!(!Path::new(&p(&b, "keep/inner/precious")).exists());
    let missing = p(&b, "gone");
    assert_eq!(
        errno_of(remove(&missing)),
        (
            libc::ENOENT,
            format!("{missing}: No such file or directory")
        )
    );
}

#[test]
fn remove_handles_deep_trees_without_recursion() {
    let (_d, b) = base();
    fs::create_dir(p(&b, "deep")).unwrap();
    // Deeper than the descriptor limit would allow if each level stayed open (built through
    // descriptors, one level at a time).
    let mut cur = rustix::fs::open(p(&b, "deep").as_str(), OFlags::PATH, Mode::empty()).unwrap();
    for _ in 0..1500 {
        rustix::fs::mkdirat(&cur, "d", Mode::from_raw_mode(0o755)).unwrap();
        cur = rustix::fs::openat(&cur, "d", OFlags::PATH, Mode::empty()).unwrap();
    }
    let leaf = rustix::fs::openat(
        &cur,
        "leaf",
        OFlags::WRONLY | OFlags::CREATE,
        Mode::from_raw_mode(0o644),
    )
    .unwrap();
    drop((leaf, cur));
    remove(&p(&b, "deep")).unwrap();
    assert!(!Path::new(&p(&b, "deep")).exists());
}

#[test]
fn open_hands_out_regular_files_only() {
    let (_d, b) = base();
    fs::write(p(&b, "f"), b"content").unwrap();
    let (fd, e) = open(&p(&b, "f"), false).unwrap();
    assert_eq!((e.kind, e.size), (EntryKind::File, 7));
    let fl = rustix::fs::fcntl_getfl(&fd).unwrap();
    assert!(!fl.contains(OFlags::NONBLOCK), "handed out blocking");
    assert!(!fl.contains(OFlags::WRONLY) && !fl.contains(OFlags::RDWR));
    let mut s = String::new();
    std::io::Read::read_to_string(&mut fs::File::from(fd), &mut s).unwrap();
    assert_eq!(s, "content");

    // Writing: parents made 0755, the file 0644 (before the umask), truncated.
    let target = p(&b, "new/sub/out");
    let (fd, e) = open(&target, true).unwrap();
    assert_eq!(
        (e.kind, e.size, e.path.as_str()),
        (EntryKind::File, 0, target.as_str())
    );
    assert_eq!(e.mode, 0o644 & !umask());
    std::io::Write::write_all(&mut fs::File::from(fd), b"abc").unwrap();
    assert_eq!(fs::read(&target).unwrap(), b"abc");
    let dir_mode = fs::metadata(p(&b, "new/sub")).unwrap().permissions().mode() & 0o7777;
    assert_eq!(dir_mode, 0o755 & !umask());
    let (_fd, e) = open(&target, true).unwrap();
    assert_eq!(e.size, 0);
    assert_eq!(fs::read(&target).unwrap(), b"");

    // A FIFO, for reading or writing: refused at once (no hang on a FIFO nobody writes or
    // reads), with EINVAL, and the FIFO is untouched.
    let fifo = p(&b, "fifo");
    mkfifo(&fifo);
    for write in [false, true] {
        assert_eq!(
            errno_of(open(&fifo, write)),
            (libc::EINVAL, format!("{fifo}: not a regular file"))
        );
    }
    // Through a symlink too.
    symlink(&fifo, p(&b, "fifolink")).unwrap();
    assert_eq!(errno_of(open(&p(&b, "fifolink"), false)).0, libc::EINVAL);
    // A device, a directory.
    assert_eq!(errno_of(open("/dev/null", false)).0, libc::EINVAL);
    assert_eq!(errno_of(open("/dev/null", true)).0, libc::EINVAL);
    assert_eq!(errno_of(open(&b, false)).0, libc::EINVAL);
    assert_eq!(errno_of(open(&p(&b, "new"), true)).0, libc::EINVAL);
    // A socket.
    let sock = p(&b, "sock");
    let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    assert_eq!(errno_of(open(&sock, false)).0, libc::EINVAL);
    // Missing for reading.
    assert_eq!(errno_of(open(&p(&b, "nope"), false)).0, libc::ENOENT);
    // A trailing slash names a directory.
    assert_eq!(errno_of(open(&p(&b, "made/for/it/"), true)).0, libc::EISDIR);
    assert!(!Path::new(&p(&b, "made")).exists());
    // A parent that is not a directory.
    assert_eq!(errno_of(open(&format!("{fifo}/x"), true)).0, libc::ENOTDIR);
    // A failed write open takes back the parents it made.
    let long = "n".repeat(300);
    let (errno, _) = errno_of(open(&p(&b, &format!("made/for/{long}")), true));
    assert_eq!(errno, libc::ENAMETOOLONG);
    assert!(!Path::new(&p(&b, "made")).exists());
}

#[test]
fn the_agents_own_proc_entries_are_not_reachable() {
    let (_d, b) = base();
    // Direct: nothing on procfs is served.
    for path in ["/proc/self/status", "/proc/self/environ", "/proc/1/cmdline"] {
        assert_eq!(errno_of(stat(path)).0, libc::EACCES, "{path}");
        assert_eq!(errno_of(open(path, false)).0, libc::EACCES, "{path}");
    }
    assert_eq!(
        errno_of(open("/proc/self/attr/current", true)).0,
        libc::EACCES
    );
    let (errno, msg) = errno_of(list("/proc", 1, 10));
    assert_eq!(errno, libc::EACCES);
    assert_eq!(msg, "/proc: file operations under /proc are not served");
    assert_eq!(
        errno_of(Watcher::default().watch("/proc", false)).0,
        libc::EACCES
    );
    // Planted links through the agent's descriptors (magic links) are never followed.
    fs::create_dir(p(&b, "outside")).unwrap();
    fs::write(p(&b, "outside/secret"), b"s").unwrap();
    let held = fs::File::open(p(&b, "outside")).unwrap();
    let magic = format!("/proc/self/fd/{}", held.as_raw_fd());
    symlink(&magic, p(&b, "planted")).unwrap();
    symlink("/proc/self/cwd", p(&b, "cwd")).unwrap();
    assert_eq!(errno_of(stat(&p(&b, "planted/secret"))).0, libc::ELOOP);
    assert_eq!(
        errno_of(open(&p(&b, "planted/secret"), false)).0,
        libc::ELOOP
    );
    assert_eq!(errno_of(list(&p(&b, "planted"), 1, 10)).0, libc::ELOOP);
    // A final component that is a magic link: refused as such, its target never looked at.
    symlink(&magic, p(&b, "fdlink")).unwrap();
    assert_eq!(errno_of(open(&p(&b, "fdlink"), false)).0, libc::ELOOP);
    assert_eq!(errno_of(open(&p(&b, "fdlink"), true)).0, libc::ELOOP);
    // Stat describes the link itself (lstat), which is harmless.
    assert_eq!(stat(&p(&b, "fdlink")).unwrap().kind, EntryKind::Symlink);
    assert_eq!(errno_of(open(&p(&b, "cwd/x"), true)).0, libc::ELOOP);
    assert_eq!(errno_of(mkdir(&p(&b, "planted/new"))).0, libc::ELOOP);
    // Control: the same file through its real path is served.
    assert!(open(&p(&b, "outside/secret"), false).is_ok());
}

#[test]
fn run_answers_each_op_with_its_reply() {
    let (_d, b) = base();
    let mut w = Watcher::default();
    let r = |op: FsOp, w: &mut Watcher| run(&op, w);
    assert!(matches!(
        r(FsOp::Mkdir { path: p(&b, "d") }, &mut w).0,
        FsReply::Mkdir { created: true, .. }
    ));
    let (reply, fd) = r(
        FsOp::Open {
            path: p(&b, "d/f"),
            write: true,
        },
        &mut w,
    );
    assert!(matches!(reply, FsReply::Opened { .. }) && fd.is_some());
    assert!(matches!(
        r(FsOp::Stat { path: p(&b, "d/f") }, &mut w).0,
        FsReply::Entry { .. }
    ));
    assert!(matches!(
        r(
            FsOp::List {
                path: b.clone(),
                depth: 2
            },
            &mut w
        )
        .0,
        FsReply::List {
            truncated: false,
            ..
        }
    ));
    assert!(matches!(
        r(
            FsOp::Move {
                from: p(&b, "d/f"),
                to: p(&b, "e/f")
            },
            &mut w
        )
        .0,
        FsReply::Moved { .. }
    ));
    assert_eq!(
        r(
            FsOp::Watch {
                path: b.clone(),
                recursive: true
            },
            &mut w
        )
        .0,
        FsReply::Watching { watch: 1 }
    );
    assert_eq!(r(FsOp::Unwatch { watch: 1 }, &mut w).0, FsReply::Unwatched);
    assert_eq!(
        r(FsOp::Remove { path: p(&b, "e") }, &mut w).0,
        FsReply::Removed
    );
    assert!(matches!(
        r(FsOp::Stat { path: p(&b, "e") }, &mut w).0,
        FsReply::Failed {
            errno: libc::ENOENT,
            ..
        }
    ));
}

#[test]
fn split_and_join() {
    assert_eq!(split("/"), ("/", None));
    assert_eq!(split("///"), ("/", None));
    assert_eq!(split("/a"), ("/", Some("a")));
    assert_eq!(split("/a/b/"), ("/a", Some("b")));
    assert_eq!(join("/", b"x"), "/x");
    assert_eq!(join("/a", b"x"), "/a/x");
    assert_eq!(strerror(libc::ENOENT), "No such file or directory");
}
