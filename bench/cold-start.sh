#!/usr/bin/env bash
# Cold start of a sandboxed /bin/true, side by side in one run: stockade (container level, all
# walls up: namespaces, pivot_root, seccomp, Landlock, cgroup limits), stockade with seccomp and
# Landlock off (to show their cost), bubblewrap with equivalent namespaces, and a bare `unshare`.
# Measured with hyperfine; medians, p95 and the ratio to bwrap go into BENCHMARKS.md.
#   bench/cold-start.sh           full run (100 runs each), rewrites the table in BENCHMARKS.md
#   bench/cold-start.sh --smoke   3 runs each, prints the table, writes nothing (CI)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=100
smoke=0
if [ "${1:-}" = "--smoke" ]; then runs=3; smoke=1; fi

for tool in hyperfine bwrap; do
  if ! command -v "$tool" >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq hyperfine bubblewrap >/dev/null
    else
      echo "need $tool (apt-get install hyperfine bubblewrap)" >&2; exit 1
    fi
  fi
done
cargo build --release --quiet
bin="$PWD/target/release/stockade"
out="$PWD/bench/out"
mkdir -p "$out"
ws=$(mktemp -d /tmp/stockade-bench.XXXXXX)
state=$(mktemp -d /var/tmp/stockade-bench-state.XXXXXX)
trap 'rm -rf "$ws" "$state"' EXIT
cd "$ws"
export STOCKADE_STATE_DIR="$state"

# bwrap with the namespaces stockade creates (user, pid, net, ipc, uts, cgroup, mount) and a
# comparable root: read-only /usr, the merged-usr symlinks, fresh /proc, minimal /dev, tmpfs /tmp.
bwrap_cmd="bwrap --unshare-all --die-with-parent --ro-bind /usr /usr --symlink usr/bin /bin --symlink usr/lib /lib --symlink usr/lib64 /lib64 --symlink usr/sbin /sbin --proc /proc --dev /dev --tmpfs /tmp --bind $ws $ws --chdir $ws /bin/true"
hyperfine -N --warmup 3 --runs "$runs" --export-json "$out/cold-start.json" \
  -n "stockade run (all walls)" "$bin run -- /bin/true" \
  -n "stockade run (no audit)" "$bin run --no-audit -- /bin/true" \
  -n "stockade run (no seccomp, no landlock)" "$bin run --seccomp off --landlock off --allow-weaker-isolation -- /bin/true" \
  -n "bwrap (same namespaces)" "$bwrap_cmd" \
  -n "unshare (namespaces only)" "unshare --user --map-root-user --net --pid --ipc --uts --mount --fork /bin/true" \
  >"$out/cold-start.txt"

python3 - "$out/cold-start.json" "$smoke" "$OLDPWD/BENCHMARKS.md" <<'PY'
import json, statistics, sys, platform, os, subprocess, datetime
data = json.load(open(sys.argv[1]))["results"]
smoke = sys.argv[2] == "1"
def q(xs, p):
    xs = sorted(xs); k = (len(xs) - 1) * p; f = int(k); c = min(f + 1, len(xs) - 1)
    return xs[f] + (xs[c] - xs[f]) * (k - f)
rows = {r["command"]: r["times"] for r in data}
bw = statistics.median(rows["bwrap (same namespaces)"])
lines = ["| command | median | p95 | min | ratio to bwrap median |", "|---|---|---|---|---|"]
for name, t in rows.items():
    med = statistics.median(t)
    lines.append(f"| {name} | {med*1000:.2f} ms | {q(t,0.95)*1000:.2f} ms | {min(t)*1000:.2f} ms | {med/bw:.2f}× |")
table = "\n".join(lines)
print(table)
if smoke:
    sys.exit(0)
cpu = next((l.split(":",1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
mem = next((l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal")), "0")
machine = f"{os.cpu_count()} vCPU {cpu}, {int(mem)//1024//1024} GiB, kernel {platform.release()}, {datetime.date.today()}"
section = f"<!-- cold-start:begin -->\nMachine: {machine}. {len(next(iter(rows.values())))} runs each after 3 warm-ups, `hyperfine -N`.\n\n{table}\n<!-- cold-start:end -->"
path = sys.argv[3]
text = open(path).read() if os.path.exists(path) else "# Benchmarks\n\n<!-- cold-start:begin -->\n<!-- cold-start:end -->\n"
a = text.index("<!-- cold-start:begin -->"); b = text.index("<!-- cold-start:end -->") + len("<!-- cold-start:end -->")
open(path, "w").write(text[:a] + section + text[b:])
print(f"wrote {path}")
PY
