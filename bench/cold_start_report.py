#!/usr/bin/env python3
"""Merge the hyperfine rounds of bench/cold-start.sh into one table (median, p95, ratio to bwrap)
and a plot of the start-latency distribution per tool; in a full run, write both into
BENCHMARKS.md (section cold-start) and bench/plots/cold-start.png.

    cold_start_report.py OUT SMOKE ROUNDS RUNS WARMUP LOAD_BEFORE LOAD_AFTER
"""
import glob
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as bl  # noqa: E402

out, smoke, rounds, runs, warmup, load_before, load_after = sys.argv[1:8]
smoke = smoke == "1"

times = {"true": {}, "py": {}}
for w in times:
    for path in sorted(glob.glob(os.path.join(out, f"cold-start-{w}-r*.json"))):
        for r in json.load(open(path))["results"]:
            times[w].setdefault(r["command"], []).extend(r["times"])
names = list(times["true"])
json.dump(times, open(os.path.join(out, "cold-start-times.json"), "w"))
skipped = [l.strip() for l in open(os.path.join(out, "cold-start-skipped.txt")) if l.strip()]

BW = "bwrap (same namespaces)"
ST = "stockade run (all walls)"
GV = "runsc (gVisor ptrace)"


def med(w, n):
    return bl.median(times[w].get(n, []))


lines = ["| command | `/bin/true` median | p95 | ratio to bwrap | `python3 -c pass` median | p95 | ratio to bwrap |",
         "|---|---|---|---|---|---|---|"]
for n in names:
    cells = [n]
    for w in ("true", "py"):
        t = times[w][n]
        cells += [bl.ms(bl.median(t)), bl.ms(bl.q(t, 0.95)), f"{bl.median(t) / med(w, BW):.2f}×"]
    lines.append("| " + " | ".join(cells) + " |")
table = "\n".join(lines)

goals = []
for w, label in (("true", "`/bin/true`"), ("py", "`python3 -c pass`")):
    r = med(w, ST) / med(w, BW)
    goals.append(f"- {label}: stockade (all walls) / bwrap = **{r:.2f}×** (goal ≤ 1.2×: "
                 f"{'met' if r <= 1.2 else 'not met'})")
    if GV in times[w]:
        g = med(w, GV) / med(w, ST)
        goals.append(f"- {label}: runsc / stockade (all walls) = **{g:.1f}×** (goal ≥ 20×: "
                     f"{'met' if g >= 20 else 'not met'})")
    else:
        goals.append(f"- {label}: runsc not measured ({'; '.join(s for s in skipped if s.startswith('runsc')) or 'absent'})")
n_runs = len(times["true"][names[0]])
body = [f"Machine: {bl.machine()}. {n_runs} runs per command ({rounds} rounds of {runs}, each after "
        f"{warmup} warm-ups; the commands take turns round by round), `hyperfine -N`. "
        f"Load average before/after: {load_before} / {load_after}.", "", table, ""]
if skipped:
    body += ["Not measured: " + "; ".join(skipped) + ".", ""]
body += ["Goals (issue 5):", *goals]

plt = bl.pyplot()
png = os.path.join(out if smoke else bl.PLOTS, "cold-start.png")
if plt is not None:
    os.makedirs(os.path.dirname(png), exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.42 * len(names) + 1.4), sharey=True)
    for ax, (w, title) in zip(axes, (("true", "/bin/true"), ("py", "python3 -c pass"))):
        data = [[t * 1000 for t in times[w][n]] for n in names]
        ax.boxplot(data, vert=False, whis=(5, 95), showfliers=True, widths=0.6,
                   flierprops={"markersize": 2, "alpha": 0.4})
        ax.set_xscale("log")
        ax.set_title(f"cold start of {title}")
        ax.set_xlabel("ms, launch to exit (box: p25–p75, whiskers: p5–p95)")
        ax.grid(axis="x", which="both", alpha=0.3)
    axes[0].set_yticks(range(1, len(names) + 1))
    axes[0].set_yticklabels(names, fontsize=8)
    axes[0].invert_yaxis()
    fig.tight_layout()
    fig.savefig(png, dpi=80)
    plt.close(fig)
    print(f"plot: {png}")
else:
    print("plot: skipped (matplotlib not installed: apt-get install python3-matplotlib)")
    png = None

text = "\n".join(body)
print(text)
if not smoke:
    if png:
        text += "\n\n![cold start per tool](bench/plots/cold-start.png)"
    bl.write_section("cold-start", text)
