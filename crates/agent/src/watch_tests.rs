//! Unit tests of the watches, on temporary directories. inotify queues an event before the
//! syscall that caused it returns, so each check reads right after acting.

use super::*;
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};

fn base() -> (tempfile::TempDir, String) {
    let d = tempfile::tempdir().unwrap();
    let b = fs::canonicalize(d.path()).unwrap();
    (d, b.to_str().unwrap().to_string())
}

fn change(op: WatchOp, path: String) -> WatchEvent {
    WatchEvent::Change { op, path }
}

/// What creating a file with `fs::write` reports: created, then written (closed after writing).
fn written(path: String) -> [WatchEvent; 2] {
    [
        change(WatchOp::Create, path.clone()),
        change(WatchOp::Write, path),
    ]
}

/// The events of watch `id`.
fn of(events: Vec<(u64, WatchEvent)>, id: u64) -> Vec<WatchEvent> {
    events
        .into_iter()
        .filter(|(i, _)| *i == id)
        .map(|(_, e)| e)
        .collect()
}

#[test]
fn a_watch_reports_each_kind_of_change_with_the_absolute_path() {
    let (_d, b) = base();
    let mut w = Watcher::default();
    let id = w.watch(&b, false).unwrap();
    assert_eq!(id, 1, "ids start at 1");
    assert!(w.fd().is_some());
    let f = format!("{b}/f");

    fs::write(&f, b"x").unwrap();
    assert_eq!(of(w.read_events(), id), written(f.clone()));
    fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(of(w.read_events(), id), [change(WatchOp::Chmod, f.clone())]);
    let g = format!("{b}/g");
    fs::rename(&f, &g).unwrap();
    assert_eq!(
        of(w.read_events(), id),
        [
            change(WatchOp::Rename, f.clone()),
            change(WatchOp::Create, g.clone())
        ]
    );
    fs::remove_file(&g).unwrap();
    assert_eq!(of(w.read_events(), id), [change(WatchOp::Remove, g)]);
    // Nothing more queued.
    assert!(w.read_events().is_empty());

    // Not recursive: a subdirectory's creation is seen, what happens inside it is not.
    fs::create_dir(format!("{b}/sub")).unwrap();
    fs::write(format!("{b}/sub/inner"), b"").unwrap();
    assert_eq!(
        of(w.read_events(), id),
        [change(WatchOp::Create, format!("{b}/sub"))]
    );
    assert_eq!(w.wds.len(), 1);
}

#[test]
fn a_recursive_watch_follows_new_and_moved_directories_but_not_symlinks() {
    let (_d, b) = base();
    let (_o, outside) = base();
    fs::create_dir_all(format!("{b}/old/er")).unwrap();
    symlink(&outside, format!("{b}/link")).unwrap();
    let mut w = Watcher::default();
    let id = w.watch(&b, true).unwrap();
    assert_eq!(
        w.wds.len(),
        3,
        "the root, old, old/er; never the symlink's target"
    );

    fs::write(format!("{b}/old/er/f"), b"").unwrap();
    assert_eq!(of(w.read_events(), id), written(format!("{b}/old/er/f")));
    // Through the symlink: not watched.
    fs::write(format!("{outside}/nope"), b"").unwrap();
    assert!(w.read_events().is_empty());

    // A tree created after the watch: the directories are watched as they appear, and what
    // was made in them before their watch existed is reported from the scan.
    fs::create_dir_all(format!("{b}/n1/n2/n3")).unwrap();
    let ev = of(w.read_events(), id);
    for p in ["n1", "n1/n2", "n1/n2/n3"] {
        assert!(
            ev.contains(&change(WatchOp::Create, format!("{b}/{p}"))),
            "{p}: {ev:?}"
        );
    }
    fs::write(format!("{b}/n1/n2/n3/deep"), b"").unwrap();
    assert_eq!(
        of(w.read_events(), id),
        written(format!("{b}/n1/n2/n3/deep"))
    );

    // Renamed within the tree: events come with the new path.
    fs::rename(format!("{b}/old"), format!("{b}/new")).unwrap();
    assert_eq!(
        of(w.read_events(), id),
        [
            change(WatchOp::Rename, format!("{b}/old")),
            change(WatchOp::Create, format!("{b}/new"))
        ]
    );
    fs::write(format!("{b}/new/er/g"), b"").unwrap();
    assert_eq!(of(w.read_events(), id), written(format!("{b}/new/er/g")));

    // Moved out of the tree: no longer watched.
    fs::rename(format!("{b}/new"), format!("{outside}/moved")).unwrap();
    assert_eq!(
        of(w.read_events(), id),
        [change(WatchOp::Rename, format!("{b}/new"))]
    );
    fs::write(format!("{outside}/moved/er/h"), b"").unwrap();
    assert!(w.read_events().is_empty());

    // Deleted subdirectories are forgotten.
    fs::remove_dir_all(format!("{b}/n1")).unwrap();
    let _ = w.read_events();
    assert_eq!(w.wds.len(), 1, "only the root is left: {:?}", w.wds.keys());
}

#[test]
fn the_limit_is_enforced_and_a_refused_watch_leaves_nothing() {
    let (_d, b) = base();
    for d in ["a", "b", "c", "d"] {
        fs::create_dir(format!("{b}/{d}")).unwrap();
    }
    let mut w = Watcher::new(3);
    let e = w.watch(&b, true).unwrap_err();
    assert_eq!(e.errno, libc::ENOSPC);
    assert!(
        e.message.contains("more than 3 directories"),
        "{}",
        e.message
    );
    assert!(w.wds.is_empty() && w.watches.is_empty());
    // The refused watch used no id; a smaller one fits and gets 1.
    assert_eq!(w.watch(&format!("{b}/a"), true).unwrap(), 1);
    // Two watches of the same directory share its kernel watch.
    assert_eq!(w.watch(&format!("{b}/a"), false).unwrap(), 2);
    assert_eq!(w.wds.len(), 1);
    w.watch(&format!("{b}/b"), false).unwrap();
    w.watch(&format!("{b}/c"), false).unwrap();
    assert_eq!(
        w.watch(&format!("{b}/d"), false).unwrap_err().errno,
        libc::ENOSPC
    );

    // A recursive watch that reaches the limit later reports an overflow.
    let (_d2, b2) = base();
    let mut w = Watcher::new(2);
    let id = w.watch(&b2, true).unwrap();
    fs::create_dir(format!("{b2}/one")).unwrap();
    fs::create_dir(format!("{b2}/two")).unwrap();
    let ev = of(w.read_events(), id);
    assert_eq!(
        ev,
        [
            change(WatchOp::Create, format!("{b2}/one")),
            change(WatchOp::Create, format!("{b2}/two")),
            WatchEvent::Overflow
        ]
    );
}

#[test]
fn a_deleted_or_moved_root_is_gone_and_unwatch_is_idempotent() {
    let (_d, b) = base();
    fs::create_dir_all(format!("{b}/w/sub")).unwrap();
    fs::create_dir(format!("{b}/m")).unwrap();
    let mut w = Watcher::default();
    let deleted = w.watch(&format!("{b}/w"), true).unwrap();
    let moved = w.watch(&format!("{b}/m"), false).unwrap();
    fs::remove_dir_all(format!("{b}/w")).unwrap();
    let ev = of(w.read_events(), deleted);
    assert_eq!(ev.last(), Some(&WatchEvent::Gone), "{ev:?}");
    assert_eq!(ev.iter().filter(|e| **e == WatchEvent::Gone).count(), 1);
    fs::rename(format!("{b}/m"), format!("{b}/m2")).unwrap();
    assert_eq!(of(w.read_events(), moved), [WatchEvent::Gone]);
    assert!(w.watches.is_empty() && w.wds.is_empty());
    // Unwatching an ended watch is fine; an id never given is not.
    w.unwatch(deleted).unwrap();
    assert_eq!(w.unwatch(99).unwrap_err().errno, libc::ENOENT);
    assert_eq!(w.unwatch(0).unwrap_err().errno, libc::ENOENT);

    // Unwatch removes its kernel watches; no events come after.
    let id = w.watch(&b, true).unwrap();
    assert_eq!(id, 3, "ids are never reused");
    w.unwatch(id).unwrap();
    assert!(w.wds.is_empty());
    fs::write(format!("{b}/after"), b"").unwrap();
    assert!(w.read_events().is_empty());
}

#[test]
fn a_queue_overflow_reaches_every_watch() {
    let (_d, b) = base();
    fs::create_dir(format!("{b}/x")).unwrap();
    let mut w = Watcher::default();
    let a = w.watch(&b, false).unwrap();
    let c = w.watch(&format!("{b}/x"), false).unwrap();
    let mut out = Vec::new();
    w.handle(-1, ReadFlags::QUEUE_OVERFLOW, None, &mut out);
    assert_eq!(out, [(a, WatchEvent::Overflow), (c, WatchEvent::Overflow)]);
}

#[test]
fn watching_needs_an_absolute_directory() {
    let (_d, b) = base();
    fs::write(format!("{b}/file"), b"").unwrap();
    let mut w = Watcher::default();
    assert_eq!(w.watch("rel", false).unwrap_err().errno, libc::EINVAL);
    assert_eq!(
        w.watch(&format!("{b}/file"), false).unwrap_err().errno,
        libc::ENOTDIR
    );
    assert_eq!(
        w.watch(&format!("{b}/none"), true).unwrap_err().errno,
        libc::ENOENT
    );
    assert!(
        w.fd().is_none(),
        "no inotify instance before a watch succeeds"
    );
}
