#!/usr/bin/env python3
"""Scale: create -> exec -> destroy throughput (sandboxes per second) with P workers in parallel,
each running the same command back to back: `stockade run -- /bin/true` (all walls), and bwrap
with the same namespaces for comparison.

    scale.py BIN OUT LEVELS RUNS_PER_WORKER SMOKE     (run by bench/scale.sh)

Throughput = runs completed / wall time from the first launch to the last exit. The latency of
each run under that load (launch to exit) is kept too. Every run must exit 0.
"""
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as bl  # noqa: E402

BIN, OUT, LEVELS, PER, SMOKE = os.path.abspath(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] == "1"
LEVELS = [int(x) for x in LEVELS.split(",")]

tmp = tempfile.mkdtemp(prefix="stockade-scale.", dir="/tmp")
ws, state = os.path.join(tmp, "ws"), os.path.join(tmp, "state")
os.makedirs(ws)
os.makedirs(state)
tools = {
    "stockade run (all walls)": [BIN, "run", "--state-dir", state, "--", "/bin/true"],
    "bwrap (same namespaces)": ("bwrap --unshare-all --die-with-parent --ro-bind /usr /usr --symlink usr/bin /bin "
                                "--symlink usr/lib /lib --symlink usr/lib64 /lib64 --symlink usr/sbin /sbin --proc /proc "
                                f"--dev /dev --tmpfs /tmp --bind {ws} {ws} --chdir {ws} /bin/true").split(),
}


def run_level(cmd, workers):
    lat, errors = [], []
    lock = threading.Lock()

    def worker():
        for _ in range(PER):
            t0 = time.perf_counter()
            r = subprocess.run(cmd, cwd=ws, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            dt = time.perf_counter() - t0
            with lock:
                lat.append(dt)
                if r.returncode != 0:
                    errors.append(f"exit {r.returncode}: {r.stderr.decode().strip()[-300:]}")

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"workers": workers, "runs": len(lat), "wall": wall, "per_second": len(lat) / wall,
            "latency": lat, "errors": errors}


results = {"machine": bl.machine(), "load_before": bl.loadavg(), "tools": {}}
try:
    for name, cmd in tools.items():
        subprocess.run(cmd, cwd=ws, check=True, stdout=subprocess.DEVNULL)  # warm-up
    # levels outer, tools inner: both tools see the same machine state at each level
    for workers in LEVELS:
        for name, cmd in tools.items():
            r = run_level(cmd, workers)
            results["tools"].setdefault(name, []).append(r)
            print(f"scale: {name}, {workers} workers: {r['per_second']:.1f}/s, median latency "
                  f"{bl.ms(bl.median(r['latency']))}, {len(r['errors'])} errors", file=sys.stderr, flush=True)
            if r["errors"]:
                print(f"scale: first error: {r['errors'][0]}", file=sys.stderr)
finally:
    subprocess.run(["rm", "-rf", tmp])
results["load_after"] = bl.loadavg()
os.makedirs(OUT, exist_ok=True)
json.dump(results, open(os.path.join(OUT, "scale.json"), "w"), indent=1)

# report
names = list(results["tools"])
head = "| workers | " + " | ".join(f"{n}: per second | median latency" for n in names) + " | stockade / bwrap throughput |"
lines = [head, "|---" * (2 + 2 * len(names)) + "|"]
errs = []
for i, workers in enumerate(LEVELS):
    cells = [str(workers)]
    for n in names:
        r = results["tools"][n][i]
        cells += [f"{r['per_second']:.1f}", bl.ms(bl.median(r["latency"]))]
        if r["errors"]:
            errs.append(f"{n}, {workers} workers: {len(r['errors'])} of {r['runs']} runs failed, first: `{r['errors'][0]}`")
    s, b = (results["tools"][n][i]["per_second"] for n in names[:2])
    cells.append(f"{s / b:.2f}×")
    lines.append("| " + " | ".join(cells) + " |")
body = [f"Machine: {results['machine']}. {PER} runs per worker, back to back; load average before/after: "
        f"{' '.join(results['load_before'])} / {' '.join(results['load_after'])}.", "", "\n".join(lines)]
if errs:
    body += ["", "Failures: " + "; ".join(errs)]

plt = bl.pyplot()
png = os.path.join(OUT if SMOKE else bl.PLOTS, "scale.png")
if plt is not None:
    os.makedirs(os.path.dirname(png), exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for n in names:
        ax.plot(LEVELS, [r["per_second"] for r in results["tools"][n]], "o-", label=n)
    ax.set_xscale("log", base=2)
    ax.set_xticks(LEVELS)
    ax.set_xticklabels([str(x) for x in LEVELS])
    ax.set_ylim(bottom=0)
    ax.set_xlabel("parallel workers (2 vCPUs)")
    ax.set_ylabel("sandboxes per second")
    ax.set_title("create → exec /bin/true → destroy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=80)
    plt.close(fig)
    print(f"plot: {png}")
else:
    png = None
text = "\n".join(body)
print(text)
if not SMOKE:
    if png:
        text += "\n\n![throughput vs parallel workers](bench/plots/scale.png)"
    bl.write_section("scale", text)
