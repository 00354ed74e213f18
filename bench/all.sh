#!/usr/bin/env bash
# Every benchmark, side by side with the peers, in one run on this machine; results (tables with
# the machine description, and plots under bench/plots/) go into BENCHMARKS.md.
#   bench/all.sh               full run (about 5 minutes on 2 vCPUs, after the release build)
#   bench/all.sh --smoke       tiny counts, prints the tables, writes nothing into BENCHMARKS.md (CI)
#   bench/all.sh --no-install  do not apt-get the missing Debian packages
# As root it first installs what is missing: hyperfine, bubblewrap, runc, runsc (gVisor),
# firejail, python3-matplotlib (the plots). Run as root: the density benchmark makes a memory
# cgroup of its own, and the peers (runc, runsc) need it. Each part also runs alone:
#   bench/cold-start.sh   cold start of /bin/true and python3 -c pass, stockade vs peers
#   bench/gateway.sh      egress gateway latency and throughput, alone and through a sandbox
#   bench/density.sh      memory per idle sandbox and start latency with 1..500 alive
#   bench/scale.sh        create -> exec -> destroy throughput with 1..8 in parallel
set -euo pipefail
cd "$(dirname "$0")/.."
smoke=() install=1
for a in "$@"; do
  case "$a" in
    --smoke) smoke=(--smoke) ;;
    --no-install) install=0 ;;
    *) echo "usage: $0 [--smoke] [--no-install]" >&2; exit 2 ;;
  esac
done

need=()
for t in hyperfine:hyperfine bwrap:bubblewrap runc:runc runsc:runsc firejail:firejail; do
  command -v "${t%%:*}" >/dev/null 2>&1 || need+=("${t#*:}")
done
[ -x /usr/bin/python3 ] || need+=(python3)
/usr/bin/python3 -c 'import matplotlib' 2>/dev/null || need+=(python3-matplotlib)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$install" = 1 ] && [ "$(id -u)" = 0 ]; then
    echo "installing: ${need[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "missing Debian packages (run as root to install them): ${need[*]}; peers that are missing are left out" >&2
  fi
fi

# STOCKADE_BENCH_SRC=DIR measures the stockade of another checkout (see bench/lib.sh)
src="${STOCKADE_BENCH_SRC:-$PWD}"
(cd "$src" && cargo build --release --quiet -p stockade && cargo build --release --quiet -p stockade-gateway --example gateway_bench)
export STOCKADE_BENCH_NO_BUILD=1
start=$(date +%s)
for b in cold-start gateway density scale; do
  echo "== bench/$b.sh ${smoke[*]}" >&2
  t0=$(date +%s)
  "bench/$b.sh" "${smoke[@]}"
  echo "== bench/$b.sh: $(($(date +%s) - t0)) s" >&2
done
echo "== all benchmarks: $(($(date +%s) - start)) s" >&2
