//! Discovery from real-looking mountinfo and /proc/self/cgroup for v1, v2 and hybrid hosts.

use std::path::Path;

use super::fake::put;
use crate::cgroup::{CgroupError, Controller, Layout, Version};

pub(super) const HYBRID_MOUNTINFO: &str = "\
24 30 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
";

pub(super) const HYBRID_CGROUP: &str = "\
9:name=systemd:/
8:pids:/
4:memory:/process_api/e442
3:cpuset:/
2:cpu,cpuacct:/
0::/
";

pub(super) const V2_MOUNTINFO: &str = "\
25 30 0:23 / /proc rw,nosuid,nodev,noexec,relatime shared:14 - proc proc rw
33 24 0:28 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

/// Lays out the hybrid host's mount points under `root` (so cgroup.controllers can be read).
pub(super) fn hybrid(root: &Path) -> Layout {
    put(
        root,
        "sys/fs/cgroup/unified/cgroup.controllers",
        "hugetlb\n",
    );
    Layout::from_sources(HYBRID_MOUNTINFO, HYBRID_CGROUP, root).unwrap()
}

#[test]
fn hybrid_places_controllers_on_v1_and_lists_cgroup2() {
    let t = tempfile::tempdir().unwrap();
    let l = hybrid(t.path());
    let cg = t.path().join("sys/fs/cgroup");
    assert_eq!(
        l.controller(Controller::Memory),
        Some((Version::V1, cg.join("memory/process_api/e442").as_path()))
    );
    assert_eq!(
        l.controller(Controller::Cpu),
        Some((Version::V1, cg.join("cpu,cpuacct").as_path()))
    );
    assert_eq!(
        l.controller(Controller::Pids),
        Some((Version::V1, cg.join("pids").as_path()))
    );
    assert_eq!(
        l.cpuacct.as_ref().map(|p| p.own.clone()),
        Some(cg.join("cpu,cpuacct"))
    );
    assert_eq!(
        l.summary(),
        "hybrid: memory=v1 cpu=v1 pids=v1 (cgroup2 has: hugetlb)"
    );
}

#[test]
fn v2_only_host_uses_unified_for_what_the_root_offers() {
    let t = tempfile::tempdir().unwrap();
    put(
        t.path(),
        "sys/fs/cgroup/cgroup.controllers",
        "cpuset cpu io memory pids\n",
    );
    let l = Layout::from_sources(
        V2_MOUNTINFO,
        "0::/user.slice/user-1000.slice/session-3.scope\n",
        t.path(),
    )
    .unwrap();
    let own = t
        .path()
        .join("sys/fs/cgroup/user.slice/user-1000.slice/session-3.scope");
    for c in Controller::ALL {
        assert_eq!(l.controller(c), Some((Version::V2, own.as_path())));
    }
    assert_eq!(
        l.summary(),
        "v2: memory=v2 cpu=v2 pids=v2 (cgroup2 has: cpuset cpu io memory pids)"
    );
}

#[test]
fn v2_controller_not_offered_is_absent() {
    let t = tempfile::tempdir().unwrap();
    put(t.path(), "sys/fs/cgroup/cgroup.controllers", "memory\n");
    let l = Layout::from_sources(V2_MOUNTINFO, "0::/\n", t.path()).unwrap();
    assert!(l.controller(Controller::Memory).is_some());
    assert_eq!(l.controller(Controller::Pids), None);
    assert_eq!(
        l.summary(),
        "v2: memory=v2 cpu=none pids=none (cgroup2 has: memory)"
    );
}

#[test]
fn v1_only_host_without_pids() {
    let mi = "\
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
";
    let l = Layout::from_sources(mi, "4:memory:/a\n1:cpu:/\n", Path::new("/fake")).unwrap();
    assert_eq!(l.summary(), "v1: memory=v1 cpu=v1 pids=none");
    assert_eq!(
        l.controller(Controller::Memory),
        Some((Version::V1, Path::new("/fake/sys/fs/cgroup/memory/a")))
    );
}

#[test]
fn mount_root_is_stripped_from_the_cgroup_path() {
    // A container that bind-mounts its own memory cgroup at the usual place.
    let mi = "35 31 0:32 /docker/abc /sys/fs/cgroup/memory ro,nosuid - cgroup cgroup rw,memory\n";
    let l = Layout::from_sources(mi, "4:memory:/docker/abc/inner\n", Path::new("/p")).unwrap();
    assert_eq!(
        l.controller(Controller::Memory),
        Some((Version::V1, Path::new("/p/sys/fs/cgroup/memory/inner")))
    );
}

#[test]
fn cgroup_outside_the_visible_hierarchy_is_not_used() {
    let mi = "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
    let l = Layout::from_sources(mi, "4:memory:/../elsewhere\n", Path::new("/p")).unwrap();
    assert_eq!(l.controller(Controller::Memory), None);
    assert!(
        l.summary().contains("leaves the visible hierarchy"),
        "{}",
        l.summary()
    );

    let mi = "35 31 0:32 /docker/abc /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
    let l = Layout::from_sources(mi, "4:memory:/docker/other\n", Path::new("/p")).unwrap();
    assert_eq!(l.controller(Controller::Memory), None);
    assert!(
        l.summary().contains("outside mount root"),
        "{}",
        l.summary()
    );
}

#[test]
fn escaped_mount_points_are_decoded() {
    let mi = "35 31 0:32 / /sys/fs/cgroup/my\\040mem rw - cgroup cgroup rw,memory\n";
    let l = Layout::from_sources(mi, "4:memory:/\n", Path::new("/p")).unwrap();
    assert_eq!(
        l.controller(Controller::Memory),
        Some((Version::V1, Path::new("/p/sys/fs/cgroup/my mem")))
    );
}

#[test]
fn malformed_inputs_are_errors_not_guesses() {
    let e = Layout::from_sources(
        "garbage line without separator\n",
        "0::/\n",
        Path::new("/p"),
    );
    assert!(matches!(e, Err(CgroupError::Parse { .. })), "{e:?}");
    let e = Layout::from_sources(V2_MOUNTINFO, "no colons here\n", Path::new("/p"));
    assert!(matches!(e, Err(CgroupError::Parse { .. })), "{e:?}");
}

#[test]
fn hybrid_systemd_only_v1_is_not_a_controller() {
    let mi = "\
40 31 0:37 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
";
    let t = tempfile::tempdir().unwrap();
    put(
        t.path(),
        "sys/fs/cgroup/unified/cgroup.controllers",
        "memory pids\n",
    );
    let l = Layout::from_sources(mi, "1:name=systemd:/x\n0::/x\n", t.path()).unwrap();
    assert_eq!(
        l.summary(),
        "v2: memory=v2 cpu=none pids=v2 (cgroup2 has: memory pids)"
    );
}
