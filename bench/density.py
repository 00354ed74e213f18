#!/usr/bin/env python3
"""Density: host memory per idle sandbox, and start latency, with N sandboxes alive.

    density.py BIN OUT LEVELS PROBES SMOKE      (run by bench/density.sh)

For each N in LEVELS (ascending) it tops the population up to N idle sandboxes
(`stockade run --timeout 30m -- sleep infinity`, one shared workspace and state directory),
waits until every one has written its `exec.started` audit event, lets them settle, and measures:
  - PSS and RSS (/proc/PID/smaps_rollup) of every host process stockade runs for them: the
    `stockade run` supervisor, the `stockade __launch` helper, the sandbox's PID 1 agent; the
    workload (`sleep`) is reported apart;
  - kernel memory charged to the sandboxes' cgroups (v1 memory.kmem.usage_in_bytes, v2
    memory.stat `kernel`), and, on cgroup v1, the kernel memory charged to a cgroup made for this
    benchmark that holds the supervisors too (namespaces, mounts, page tables and sockets are
    charged to whichever process allocated them, often before the sandbox joins its cgroup);
  - the start latency (launch to exit) of PROBES more `stockade run -- /bin/true`, one at a time,
    taking turns with as many bwrap runs (a control for the machine's own load).
After the highest level it goes back down level by level (SIGTERM to the newest supervisors) and
probes the start latency again at each, so every level is probed at two moments of the run.
Then it SIGTERMs every supervisor and checks that nothing is left: no process, no cgroup of any
of these sandboxes, and a clean `sandbox.destroyed` for each. A level that cannot be reached is
reported with the first error, and the levels above it are skipped.
Results: OUT/density.json; the table on stdout (bench/density.sh puts it into BENCHMARKS.md).
"""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as bl  # noqa: E402

BIN, OUT, LEVELS, PROBES, SMOKE = os.path.abspath(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] == "1"
LEVELS = [int(x) for x in LEVELS.split(",")]
SETTLE = 0.5 if SMOKE else 3.0
PAGE = os.sysconf("SC_PAGE_SIZE")


def log(*a):
    print("density:", *a, file=sys.stderr, flush=True)


# --- cgroups -------------------------------------------------------------------------------
def memory_hierarchy():
    """(version, mount point, own cgroup path) of the memory controller."""
    mounts = {}
    for line in open("/proc/self/mountinfo"):
        pre, post = line.split(" - ", 1)
        fstype, _src, sopts = post.split()[:3]
        mp = pre.split()[4]
        if fstype == "cgroup" and "memory" in sopts.split(","):
            mounts["v1"] = mp
        elif fstype == "cgroup2":
            mounts.setdefault("v2", mp)
    for line in open("/proc/self/cgroup"):
        hid, ctrls, path = line.rstrip("\n").split(":", 2)
        if "memory" in ctrls.split(",") and "v1" in mounts:
            return "v1", mounts["v1"], path
    for line in open("/proc/self/cgroup"):
        hid, ctrls, path = line.rstrip("\n").split(":", 2)
        if hid == "0" and "v2" in mounts:
            return "v2", mounts["v2"], path
    return None, None, None


def read_int(path, default=0):
    try:
        return int(open(path).read().split()[0])
    except (OSError, ValueError, IndexError):
        return default


def kmem(dirpath, version):
    if version == "v1":
        return read_int(os.path.join(dirpath, "memory.kmem.usage_in_bytes"))
    try:
        for line in open(os.path.join(dirpath, "memory.stat")):
            k, v = line.split()
            if k == "kernel":
                return int(v)
    except OSError:
        pass
    return 0


def usage(dirpath, version):
    return read_int(os.path.join(dirpath, "memory.usage_in_bytes" if version == "v1" else "memory.current"))


VERSION, MOUNT, OWN = memory_hierarchy()
own_dir = os.path.join(MOUNT, OWN.lstrip("/")) if MOUNT else None
bench_cg = None
if VERSION == "v1":
    # A cgroup of our own under the caller's: the supervisors start in it, stockade puts its
    # `stockade/<id>` cgroups under it, and its hierarchical kmem counter sees all of them.
    bench_cg = os.path.join(own_dir, f"stockade-bench-density-{os.getpid()}")
    try:
        os.mkdir(bench_cg)
        with open(os.path.join(bench_cg, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
    except OSError as e:
        log(f"cannot make a benchmark cgroup ({e}); kernel memory of the host processes not measured")
        bench_cg = None
sandbox_parent = os.path.join(bench_cg or own_dir or "/nonexistent", "stockade")


def sandbox_cgroups():
    try:
        return [os.path.join(sandbox_parent, d) for d in os.listdir(sandbox_parent)
                if os.path.isdir(os.path.join(sandbox_parent, d))]
    except OSError:
        return []


# --- processes -------------------------------------------------------------------------------
def proc_table():
    """pid -> (ppid, starttime) for every process."""
    t = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                s = open(f"/proc/{d}/stat").read()
            except OSError:
                continue
            f = s[s.rindex(")") + 2:].split()
            t[int(d)] = (int(f[1]), int(f[19]))
    return t


def children_map(table):
    ch = {}
    for pid, (ppid, _) in table.items():
        ch.setdefault(ppid, []).append(pid)
    return ch


def smaps(pid):
    r = {"Rss": 0, "Pss": 0}
    try:
        for line in open(f"/proc/{pid}/smaps_rollup"):
            k = line.split(":", 1)[0]
            if k in r:
                r[k] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return r


def is_pid1(pid):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("NSpid:"):
                ns = line.split()[1:]
                return len(ns) > 1 and ns[-1] == "1"
    except OSError:
        pass
    return False


def roles(sup, ch):
    """supervisor -> {role: [pids]} for supervisor, launcher, agent, workload."""
    r = {"supervisor": [sup], "launcher": [], "agent": [], "workload": []}
    stack = list(ch.get(sup, []))
    while stack:
        p = stack.pop()
        if is_pid1(p):
            r["agent"].append(p)
            todo = list(ch.get(p, []))
            while todo:
                w = todo.pop()
                r["workload"].append(w)
                todo.extend(ch.get(w, []))
        else:
            r["launcher"].append(p)
            stack.extend(ch.get(p, []))
    return r


# --- audit events ----------------------------------------------------------------------------
class Events:
    def __init__(self, path):
        self.path, self.pos, self.buf = path, 0, b""
        self.started, self.created, self.destroyed = set(), set(), {}

    def poll(self):
        try:
            with open(self.path, "rb") as f:
                f.seek(self.pos)
                data = f.read()
        except FileNotFoundError:
            return
        self.pos += len(data)
        data = self.buf + data
        lines = data.split(b"\n")
        self.buf = lines.pop()
        for line in lines:
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if e.get("type") == "exec.started" and e.get("argv") == ["sleep", "infinity"]:
                self.started.add(e["sandbox_id"])
            elif e.get("type") == "sandbox.created":
                self.created.add(e["sandbox_id"])
            elif e.get("type") == "sandbox.destroyed":
                self.destroyed[e["sandbox_id"]] = e


def find_cgroups(ids):
    """Every cgroup directory, in any hierarchy, named after one of these sandbox ids."""
    found = []
    for root, dirs, _ in os.walk("/sys/fs/cgroup"):
        found.extend(os.path.join(root, d) for d in dirs if d in ids)
        if root.count("/") > 9:
            dirs[:] = []
    return found


def meminfo_used():
    m = {}
    for line in open("/proc/meminfo"):
        k, v = line.split(":")
        m[k] = int(v.split()[0]) * 1024
    return m["MemTotal"] - m["MemAvailable"]


# --- the run ---------------------------------------------------------------------------------
tmp = tempfile.mkdtemp(prefix="stockade-density.", dir="/tmp")
ws, state, logs = (os.path.join(tmp, d) for d in ("ws", "state", "logs"))
for d in (ws, state, logs):
    os.makedirs(d)
events = Events(os.path.join(state, "events.jsonl"))
sups = []  # Popen of each idle sandbox's supervisor
HAVE_BWRAP = subprocess.run(["sh", "-c", "command -v bwrap"], stdout=subprocess.DEVNULL).returncode == 0
timeout = "30m"


def start_one(i):
    with open(os.path.join(logs, f"{i}.err"), "wb") as err:
        return subprocess.Popen([BIN, "run", "--state-dir", state, "--timeout", timeout, "--", "sleep", "infinity"],
                                cwd=ws, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)


def dead_error():
    for i, p in enumerate(sups):
        if p.poll() is not None:
            err = open(os.path.join(logs, f"{i}.err")).read().strip().splitlines()
            return f"sandbox {i + 1} exited with status {p.returncode}: {err[-1] if err else '(no message)'}"
    return None


BWRAP = ("bwrap --unshare-all --die-with-parent --ro-bind /usr /usr --symlink usr/bin /bin --symlink usr/lib /lib "
         "--symlink usr/lib64 /lib64 --symlink usr/sbin /sbin --proc /proc --dev /dev --tmpfs /tmp "
         f"--bind {ws} {ws} --chdir {ws} /bin/true").split()


def probe(n):
    """n start latencies of stockade, and (taking turns with it) of bwrap as a control: if bwrap
    slows down too, the machine did, not stockade."""
    ts, control = [], []
    for _ in range(n):
        for cmd, acc in (([BIN, "run", "--state-dir", state, "--", "/bin/true"], ts), (BWRAP, control)):
            if cmd is BWRAP and not HAVE_BWRAP:
                continue
            t0 = time.perf_counter()
            r = subprocess.run(cmd, cwd=ws, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            acc.append(time.perf_counter() - t0)
            if r.returncode != 0:
                raise RuntimeError(f"probe {cmd[0]} failed ({r.returncode}): {r.stderr.decode().strip()}")
    return ts, control


def measure(n_alive):
    table = proc_table()
    ch = children_map(table)
    sums = {role: {"Rss": 0, "Pss": 0, "n": 0} for role in ("supervisor", "launcher", "agent", "workload")}
    pids = []
    for p in sups:
        for role, ps in roles(p.pid, ch).items():
            for pid in ps:
                s = smaps(pid)
                sums[role]["Rss"] += s["Rss"]
                sums[role]["Pss"] += s["Pss"]
                sums[role]["n"] += 1
                pids.append((pid, table.get(pid, (0, 0))[1]))
    cgs = sandbox_cgroups()
    m = {
        "cgroup_dirs_found": len(find_cgroups(events.started)),
        "alive": n_alive,
        "processes": sums,
        "sandbox_cgroups": len(cgs),
        "kmem_sandbox_cgroups": sum(kmem(c, VERSION) for c in cgs),
        "usage_sandbox_cgroups": sum(usage(c, VERSION) for c in cgs),
        "kmem_bench_cgroup": kmem(bench_cg, VERSION) if bench_cg else None,
        "usage_bench_cgroup": usage(bench_cg, VERSION) if bench_cg else None,
        "host_used": meminfo_used(),
    }
    return m, pids


results = {"levels": [], "stopped": None, "teardown": None, "cgroup": VERSION, "bench_cgroup": bench_cg,
           "machine": bl.machine(), "started_at": time.strftime("%H:%M"), "load_before": bl.loadavg()}
all_pids = []
try:
    base, _ = measure(0)
    base["latency"], base["bwrap_latency"] = probe(PROBES)
    results["baseline"] = base
    log(f"0 alive: start median {bl.ms(bl.median(base['latency']))}")
    for level in LEVELS:
        t0 = time.monotonic()
        err = None
        while len(sups) < level and err is None:
            # at most 8 starting at once: the host has 2 CPUs
            while len(sups) - len(events.started) >= 8 and err is None:
                time.sleep(0.01)
                events.poll()
                err = dead_error()
            if err is None:
                try:
                    sups.append(start_one(len(sups)))
                except OSError as e:
                    err = f"cannot start sandbox {len(sups) + 1}: {e}"
        deadline = time.monotonic() + 60 + level * 0.5
        while err is None and len(events.started) < len(sups):
            if time.monotonic() > deadline:
                err = f"only {len(events.started)} of {len(sups)} sandboxes running after {deadline - t0:.0f} s"
                break
            time.sleep(0.02)
            events.poll()
            err = dead_error()
        if err:
            results["stopped"] = {"level": level, "alive": len(events.started), "error": err}
            log(f"stopped before {level} alive: {err}")
            break
        fill = time.monotonic() - t0
        time.sleep(SETTLE)
        err = dead_error()
        if err:
            results["stopped"] = {"level": level, "alive": len(events.started), "error": err}
            break
        m, all_pids = measure(level)
        m["fill_seconds"] = fill
        m["latency"], m["bwrap_latency"] = probe(PROBES)
        results["levels"].append(m)
        per = (sum(m["processes"][r]["Pss"] for r in ("supervisor", "launcher", "agent")) +
               (m["kmem_bench_cgroup"] - base["kmem_bench_cgroup"] if bench_cg else m["kmem_sandbox_cgroups"])) / level
        log(f"{level} alive (filled in {fill:.1f} s): {bl.mib(per)} per sandbox, start median "
            f"{bl.ms(bl.median(m['latency']))}")
    # Descending pass: back down to each lower level (SIGTERM to the newest supervisors) and
    # probe again, so that a drift of the machine's load over the run does not pass for growth.
    if not results["stopped"]:
        for m in reversed(results["levels"][:-1]):
            extra = [p for p in sups[m["alive"]:] if p.poll() is None]
            t0 = time.monotonic()
            for p in extra:
                p.send_signal(signal.SIGTERM)
            for p in extra:
                p.wait(timeout=120)
            m["stopped_above"] = {"count": len(extra), "seconds": time.monotonic() - t0}
            time.sleep(SETTLE)
            lat, ctl = probe(PROBES)
            m["latency_down"], m["bwrap_latency_down"] = lat, ctl
            log(f"back to {m['alive']} alive: start median {bl.ms(bl.median(lat))}")
except Exception as e:  # noqa: BLE001 - reported, then torn down
    results["stopped"] = {"level": None, "alive": len(events.started), "error": f"{type(e).__name__}: {e}"}
    log(f"error: {e}")
finally:
    # teardown: SIGTERM every supervisor, wait, then check that nothing is left
    t0 = time.monotonic()
    for p in sups:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    hung = []
    for p in sups:
        try:
            p.wait(timeout=max(1, 120 - (time.monotonic() - t0)))
        except subprocess.TimeoutExpired:
            hung.append(p.pid)
    down = time.monotonic() - t0
    time.sleep(0.2)
    events.poll()
    table = proc_table()
    left_procs = [pid for pid, st in all_pids if pid in table and table[pid][1] == st]
    ids = events.created
    left_cgroups = find_cgroups(ids)
    unclean = [i for i in ids if not events.destroyed.get(i, {}).get("clean")]
    results["teardown"] = {"sandboxes": len(sups), "seconds": down, "hung_supervisors": hung,
                           "processes_left": left_procs, "cgroups_left": left_cgroups,
                           "not_destroyed_cleanly": unclean}
    log(f"teardown of {len(sups)}: {down:.1f} s, processes left {len(left_procs)}, cgroups left "
        f"{len(left_cgroups)}, not cleanly destroyed {len(unclean)}")
    if bench_cg:
        with open(os.path.join(own_dir, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
        for d in (os.path.join(bench_cg, "stockade"), bench_cg):
            try:
                os.rmdir(d)
            except FileNotFoundError:
                pass
            except OSError as e:
                log(f"cannot remove {d}: {e}")
    subprocess.run(["rm", "-rf", tmp])

results["load_after"] = bl.loadavg()
os.makedirs(OUT, exist_ok=True)
with open(os.path.join(OUT, "density.json"), "w") as f:
    json.dump(results, f, indent=1)
