#!/usr/bin/env python3
"""Write an OCI bundle comparable to a default `stockade run` sandbox, for runc and runsc.

    oci-bundle.py DIR WORKSPACE [--no-userns] -- CMD [ARGS...]

The root is an empty read-only directory holding only mount points and the merged-usr symlinks
(bin, sbin, lib, lib64 -> usr/...); into it go a read-only bind of the host's /usr, a fresh /proc,
a tmpfs /dev with the OCI default device nodes, a tmpfs /tmp, and WORKSPACE bound read-write at
the same path as the working directory. Namespaces: user (container uids 0-65535 mapped to host
uids from 0x70000000, the process runs as 1000:1000 inside), mount, pid, network (loopback only),
ipc, uts, cgroup. No capabilities, no_new_privs, RLIMIT_NOFILE 1024, and stockade's default
cgroup limits (1 GiB memory, no swap, 1 CPU, 256 pids). No seccomp profile (runc's own default
spec has none; runsc filters the host syscalls of its own sentry instead). Nothing is downloaded.
"""
import json, os, sys

argv = sys.argv[1:]
if "--" not in argv or len(argv) < 4:
    sys.exit(__doc__)
sep = argv.index("--")
opts, cmd = argv[:sep], argv[sep + 1:]
userns = "--no-userns" not in opts
opts = [o for o in opts if o != "--no-userns"]
bundle, workspace = opts[0], os.path.abspath(opts[1])

rootfs = os.path.join(bundle, "rootfs")
for d in ("usr", "proc", "dev", "tmp", "etc", workspace.lstrip("/")):
    os.makedirs(os.path.join(rootfs, d), exist_ok=True)
for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
    if os.path.islink("/" + name):
        link = os.path.join(rootfs, name)
        if not os.path.lexists(link):
            os.symlink(os.readlink("/" + name).lstrip("/"), link)

ro = ["rbind", "ro", "nosuid", "nodev"]
mounts = [
    {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
    {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
    {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
    {"destination": "/usr", "type": "bind", "source": "/usr", "options": ro},
    {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777", "size=1g"]},
    {"destination": workspace, "type": "bind", "source": workspace, "options": ["rbind", "rw", "nosuid", "nodev"]},
]
namespaces = [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount", "cgroup")]
linux = {
    "namespaces": namespaces,
    "resources": {
        "devices": [{"allow": False, "access": "rwm"}],
        "memory": {"limit": 1 << 30, "swap": 1 << 30},
        "cpu": {"quota": 100000, "period": 100000},
        "pids": {"limit": 256},
    },
    "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware"],
    "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
}
if userns:
    namespaces.append({"type": "user"})
    linux["uidMappings"] = [{"containerID": 0, "hostID": 0x70000000, "size": 65536}]
    linux["gidMappings"] = [{"containerID": 0, "hostID": 0x70000000, "size": 65536}]
config = {
    "ociVersion": "1.0.2",
    "process": {
        "terminal": False,
        "user": {"uid": 1000, "gid": 1000},
        "args": cmd,
        "env": ["PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/tmp", "LANG=C.UTF-8"],
        "cwd": workspace,
        "capabilities": {k: [] for k in ("bounding", "effective", "permitted", "inheritable", "ambient")},
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
        "noNewPrivileges": True,
    },
    "root": {"path": "rootfs", "readonly": True},
    "hostname": "bench",
    "mounts": mounts,
    "linux": linux,
}
with open(os.path.join(bundle, "config.json"), "w") as f:
    json.dump(config, f, indent=1)
