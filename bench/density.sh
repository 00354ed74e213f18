#!/usr/bin/env bash
# Density: host memory per idle sandbox and start latency with 1, 10, 100 and 500 sandboxes
# alive (what is measured and how: bench/density.py). Runs as root (it makes a memory cgroup of
# its own to see the kernel memory of the host processes; as another user that part is left out).
#   bench/density.sh           levels 1,10,100,500, 20 start-latency probes each; into BENCHMARKS.md
#   bench/density.sh --smoke   levels 1,3, 3 probes; prints the tables, writes nothing (CI)
source "$(dirname "$0")/lib.sh"
levels=1,10,100,500 probes=20
[ "$smoke" = 1 ] && levels=1,3 probes=3
build
"$py" "$repo/bench/density.py" "$bin" "$out" "$levels" "$probes" "$smoke"
"$py" "$repo/bench/density_report.py" "$out" "$smoke"
