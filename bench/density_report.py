#!/usr/bin/env python3
"""Tables and plot from OUT/density.json (bench/density.py); in a full run, into BENCHMARKS.md
(section density) and bench/plots/density.png.

    density_report.py OUT SMOKE
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as bl  # noqa: E402

out, smoke = sys.argv[1], sys.argv[2] == "1"
d = json.load(open(os.path.join(out, "density.json")))
base = d["baseline"] if "baseline" in d else None
levels = d["levels"]
HOST = ("supervisor", "launcher", "agent")


def per_sandbox(m):
    n = m["alive"]
    p = m["processes"]
    kern_all = None
    if m.get("kmem_bench_cgroup") is not None and base and base.get("kmem_bench_cgroup") is not None:
        kern_all = m["kmem_bench_cgroup"] - base["kmem_bench_cgroup"]
    pss = sum(p[r]["Pss"] for r in HOST)
    total = pss + (kern_all if kern_all is not None else m["kmem_sandbox_cgroups"])
    return {
        "pss": {r: p[r]["Pss"] / n for r in HOST},
        "pss_host": pss / n,
        "rss_host": sum(p[r]["Rss"] for r in HOST) / n,
        "procs": sum(p[r]["n"] for r in HOST) / n,
        "kmem_sbx": m["kmem_sandbox_cgroups"] / n,
        "kmem_all": kern_all / n if kern_all is not None else None,
        "total": total / n,
        "workload_pss": p["workload"]["Pss"] / n,
    }


mem = ["| alive | PSS supervisor | PSS launcher | PSS agent (PID 1) | RSS of the three | kernel, sandbox cgroups | "
       "kernel, all | **host memory per sandbox** | workload `sleep` PSS |",
       "|---|---|---|---|---|---|---|---|---|"]
lat = ["| alive | stockade start median | p95 | vs 1 alive | control: bwrap median | stockade / bwrap | "
       "vs 1 alive, relative to the control | time to fill |",
       "|---|---|---|---|---|---|---|---|"]


def lats(m):
    """Start latencies of stockade and of the bwrap control, both passes."""
    return m["latency"] + m.get("latency_down", []), m.get("bwrap_latency", []) + m.get("bwrap_latency_down", [])


if base:
    lat.append(f"| 0 | {bl.ms(bl.median(base['latency']))} | {bl.ms(bl.q(base['latency'], 0.95))} | | "
               f"{bl.ms(bl.median(base.get('bwrap_latency', [])))} | "
               f"{bl.median(base['latency']) / bl.median(base.get('bwrap_latency', [1])):.2f}× | | |")
ref = bl.median(lats(levels[0])[0]) if levels else None
ref_rel = ref / bl.median(lats(levels[0])[1]) if levels and lats(levels[0])[1] else None
rows = []
for m in levels:
    s = per_sandbox(m)
    rows.append((m, s))
    mem.append(f"| {m['alive']} | " + " | ".join(bl.mib(s["pss"][r]) for r in HOST) +
               f" | {bl.mib(s['rss_host'])} | {bl.mib(s['kmem_sbx'])} | "
               f"{bl.mib(s['kmem_all']) if s['kmem_all'] is not None else '–'} | **{bl.mib(s['total'])}** | "
               f"{bl.mib(s['workload_pss'])} |")
    st_l, bw_l = lats(m)
    med = bl.median(st_l)
    rel = med / bl.median(bw_l) if bw_l else float("nan")
    lat.append(f"| {m['alive']} | {bl.ms(med)} | {bl.ms(bl.q(st_l, 0.95))} | {med / ref:.2f}× | "
               f"{bl.ms(bl.median(bw_l))} | {rel:.2f}× | {rel / ref_rel if ref_rel else float('nan'):.2f}× | "
               f"{m.get('fill_seconds', 0):.1f} s |")

notes = []
st = d.get("stopped")
if st:
    notes.append(f"**Stopped** before {st['level']} alive ({st['alive']} running): `{st['error']}`.")
for m in levels:
    s = m.get("stopped_above")
    if s and s["count"]:
        notes.append(f"Going back down to {m['alive']}: {s['count']} supervisors SIGTERMed and reaped in {s['seconds']:.1f} s.")
td = d.get("teardown") or {}
if td:
    clean = not (td["processes_left"] or td["cgroups_left"] or td["not_destroyed_cleanly"] or td["hung_supervisors"])
    notes.append(f"Teardown of the rest (SIGTERM to each supervisor): {td['seconds']:.1f} s; "
                 + ("nothing left (no process, no cgroup; every `sandbox.destroyed` clean)." if clean else
                    f"**left over**: processes {td['processes_left'][:10]}, cgroups {td['cgroups_left'][:5]}, "
                    f"unclean {td['not_destroyed_cleanly'][:5]}, hung supervisors {td['hung_supervisors'][:5]}."))
goals = []
if rows:
    m, s = rows[-1]
    goals.append(f"- host memory per idle sandbox at {m['alive']} alive: **{bl.mib(s['total'])}** "
                 f"(goal ≤ 2 MiB: {'met' if s['total'] <= 2 * 1048576 else 'not met'})")
    st_l, bw_l = lats(m)
    g = bl.median(st_l) / ref
    short = "" if m["alive"] >= 500 else f"; only {m['alive']} alive reached"
    gr = f", **{bl.median(st_l) / bl.median(bw_l) / ref_rel:.2f}×** relative to the bwrap control" if bw_l and ref_rel else ""
    goals.append(f"- start latency at {m['alive']} alive / at {levels[0]['alive']} alive: **{g:.2f}×** as measured{gr} "
                 f"(goal ≤ 1.5× from 1 to 500: {'met' if g <= 1.5 else 'not met'} as measured{short})")
n_probe = len(levels[0]["latency"]) if levels else 0
body = "\n".join([
    f"Machine: {d['machine']}, started {d.get('started_at', '?')}, load average before/after "
    f"{' '.join(d.get('load_before', []))} / {' '.join(d.get('load_after', []))}. "
    f"Memory cgroups: {d['cgroup']}. Start latency: {n_probe} sequential "
    f"`stockade run -- /bin/true` at each level, launch to exit, taking turns with as many bwrap runs "
    f"(the control), on the way up and again on the way back down (so {2 * n_probe if levels and levels[0].get('latency_down') else n_probe} "
    f"of each per level, fewer at the top).", "",
    "Memory per idle sandbox (`stockade run -- sleep infinity`), averaged over the sandboxes alive:", "",
    "\n".join(mem), "", "\n".join(lat), "", *notes, "", "Goals (issue 5):", *goals])

plt = bl.pyplot()
png = os.path.join(out if smoke else bl.PLOTS, "density.png")
if plt is not None and rows:
    os.makedirs(os.path.dirname(png), exist_ok=True)
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    xs = [m["alive"] for m, _ in rows]
    med = [bl.median(lats(m)[0]) * 1000 for m, _ in rows]
    lo = [bl.q(lats(m)[0], 0.05) * 1000 for m, _ in rows]
    hi = [bl.q(lats(m)[0], 0.95) * 1000 for m, _ in rows]
    a.plot(xs, med, "o-", label="median")
    a.fill_between(xs, lo, hi, alpha=0.2, label="p5–p95")
    if base:
        a.axhline(bl.median(base["latency"]) * 1000, ls="--", c="gray", lw=1, label="0 alive (median)")
    bw = [bl.median(lats(m)[1]) * 1000 for m, _ in rows]
    a.plot(xs, bw, "s:", c="gray", label="bwrap control (median)")
    a.set_xscale("log")
    a.set_xticks(xs)
    a.set_xticklabels([str(x) for x in xs])
    a.set_ylim(bottom=0)
    a.set_xlabel("idle sandboxes alive")
    a.set_ylabel("ms")
    a.set_title("start latency of stockade run -- /bin/true")
    a.legend(fontsize=8)
    a.grid(alpha=0.3)
    bottom = [0.0] * len(rows)
    parts = [("PSS supervisor", lambda s: s["pss"]["supervisor"]), ("PSS launcher", lambda s: s["pss"]["launcher"]),
             ("PSS agent", lambda s: s["pss"]["agent"]),
             ("kernel", lambda s: s["kmem_all"] if s["kmem_all"] is not None else s["kmem_sbx"])]
    idx = range(len(rows))
    for label, f in parts:
        v = [f(s) / 1048576 for _, s in rows]
        b.bar(idx, v, bottom=bottom, label=label)
        bottom = [x + y for x, y in zip(bottom, v)]
    b.axhline(2, ls="--", c="red", lw=1, label="goal 2 MiB")
    b.set_xticks(list(idx))
    b.set_xticklabels([str(x) for x in xs])
    b.set_xlabel("idle sandboxes alive")
    b.set_ylabel("MiB per sandbox")
    b.set_title("host memory per idle sandbox")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=80)
    plt.close(fig)
    print(f"plot: {png}")
else:
    png = None
    print("plot: skipped (matplotlib not installed, or no level reached)")

print(body)
if not smoke:
    if png:
        body += "\n\n![start latency and memory vs sandboxes alive](bench/plots/density.png)"
    bl.write_section("density", body)
