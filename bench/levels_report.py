"""Report of bench/levels.sh: start latency and memory per isolation level beside the runtime run
directly, with the ratios. Writes the `levels` section of BENCHMARKS.md unless smoke."""
import glob
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import machine, median, mib, ms, q, write_section  # noqa: E402

out, smoke, rounds, runs, mvm_runs, warmup, load_before, load_after, mem_reps = sys.argv[1:10]
smoke = smoke == "1"

times = {}
for level in ("container", "gvisor", "microvm"):
    for f in sorted(glob.glob(os.path.join(out, f"levels-{level}-r*.json"))):
        for r in json.load(open(f))["results"]:
            times.setdefault(r["command"], []).extend(r["times"])
            if any(c != 0 for c in r.get("exit_codes", [])):
                sys.exit(f"levels: {r['command']} exited non-zero")

mem = {}
for line in open(os.path.join(out, "levels-memory.txt")):
    name, _, v = line.strip().rpartition(" ")
    if not v.isdigit():
        sys.exit(f"levels: no memory figure for {name!r}: {line!r}")
    mem.setdefault(name, []).append(int(v))

rows = [
    # level, stockade, direct runtime
    ("container", "stockade container", "bwrap", "bwrap"),
    ("gvisor", "stockade gvisor", "runsc run (stockade bundle)", "runsc do"),
    ("gvisor", "stockade gvisor", "runsc do", "runsc do"),
    ("microvm (TCG)", "stockade microvm", "qemu direct", "qemu direct"),
]
mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731

lines = []
lines.append(f"Machine: {machine()}. Load average before/after the timings: {load_before} / {load_after}.")
lines.append(
    f"Start: `hyperfine -N`, {rounds} rounds (the commands of a level take turns), per round "
    f"{runs} runs after {warmup} warm-up for container and gvisor, {mvm_runs} for microvm; "
    f"launch to exit of `/bin/true`. Memory: peak of the sandbox's memory cgroup for `sleep 1` "
    f"(median of {mem_reps}); direct runs in a memory cgroup of their own."
)
lines.append("")
lines.append("| level | Stockade p50 | mean | direct runtime | p50 | mean | ratio p50 | ratio mean | Stockade peak memory | direct peak memory | ratio |")
lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
for level, st, direct, memdirect in rows:
    a, b = times.get(st, []), times.get(direct, [])
    ma, mb = median(mem.get(st, [])), median(mem.get(memdirect, []))
    lines.append(
        f"| {level} | {ms(q(a, .5))} | {ms(mean(a))} | {direct} | {ms(q(b, .5))} | {ms(mean(b))} | "
        f"{q(a, .5) / q(b, .5):.2f}× | {mean(a) / mean(b):.2f}× | {mib(ma)} | {mib(mb)} ({memdirect}) | {ma / mb:.2f}× |"
    )
lines.append("")
lines.append("Goal (issue 9): Stockade's overhead under 10% on top of each runtime (ratio ≤ 1.10×):")
for level, st, direct, _ in rows:
    a, b = times.get(st, []), times.get(direct, [])
    r = q(a, .5) / q(b, .5)
    lines.append(f"- {level}, vs {direct}: p50 **{r:.2f}×** ({'met' if r <= 1.10 else 'not met'})")
body = "\n".join(lines)
print(body)
for name, xs in sorted(times.items()):
    print(f"{name}: n={len(xs)}", file=sys.stderr)
if not smoke:
    write_section("levels", body)
