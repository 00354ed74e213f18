#!/usr/bin/env bash
# Start latency and memory per isolation level, each beside the runtime Stockade drives, run
# directly, in one run (issue 9: Stockade's own overhead on top of each runtime, goal < 10%):
#   container: stockade run -- /bin/true              vs bwrap with the same namespaces
#   gvisor:    stockade run --level gvisor -- /bin/true vs `runsc do /bin/true` and `runsc run` on
#              the bundle Stockade writes (gvisor::write_bundle_with_args: same mounts, the same
#              runsc flags as gvisor::runsc_command) with /bin/true as init
#   microvm:   stockade run --level microvm --allow-emulated -- /bin/true vs QEMU run directly
#              with Stockade's QEMU command (microvm::qemu_command: same kernel, initramfs,
#              devices, memory, kernel command line) booting the guest's check mode
#              (stockade.check=1: boot, mount the share, write a marker, power off)
# Start latency: hyperfine -N (launch to exit of the whole tool), the commands of a level taking
# turns in rounds. Memory: peak of the sandbox's memory cgroup (memory.max_usage_in_bytes, as
# Stockade's audit trail reports it: `peak_memory_bytes` of sandbox.ended) for `sleep 1`; the
# direct runs are put in a fresh v1 memory cgroup of their own and read the same way.
# Quiet period: while it measures it holds /tmp/stockade-quiet (its pid; a request to other work
# on the machine to hold off), and waits first while another run holds it (younger than 30 min).
#   bench/levels.sh           full run (about 6 minutes here under TCG); table into BENCHMARKS.md
#   bench/levels.sh --smoke   2 runs per command, asserts only that everything ran (exit 0)
source "$(dirname "$0")/lib.sh"
rounds=3 runs=10 warmup=1 mvm_runs=3 mem_reps=3
[ "$smoke" = 1 ] && rounds=1 runs=2 warmup=0 mvm_runs=2 mem_reps=1
require hyperfine hyperfine bwrap bubblewrap runsc runsc qemu-system-x86_64 qemu-system-x86
[ "$(id -u)" = 0 ] || { echo "$0: run as root (runsc, memory cgroups)" >&2; exit 1; }
if [ "${STOCKADE_BENCH_NO_BUILD:-0}" != 1 ]; then
  (cd "$src" && cargo build --release --quiet -p stockade && cargo build --release --quiet -p stockade-runtime --example levels_bench &&
    RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --quiet -p stockade-guest --target x86_64-unknown-linux-gnu)
fi
helper="$src/target/release/examples/levels_bench"
# the guest binary Stockade finds next to its own (the helper lives one directory deeper)
export STOCKADE_GUEST_BIN="${STOCKADE_GUEST_BIN:-$src/target/x86_64-unknown-linux-gnu/release/stockade-guest}"
[ -x "$helper" ] || { echo "$0: $helper missing (cargo build --release -p stockade-runtime --example levels_bench)" >&2; exit 1; }

while [ -e /tmp/stockade-quiet ] && [ -n "$(find /tmp/stockade-quiet -mmin -30 2>/dev/null)" ]; do
  echo "levels: /tmp/stockade-quiet is present, waiting" >&2; sleep 10
done

echo "$$ bench/levels.sh" >/tmp/stockade-quiet
tmp=$(mktemp -d /tmp/stockade-bench-levels.XXXXXX)
chmod 755 "$tmp"
ws="$tmp/ws" state="$tmp/state"
mkdir -p "$ws" "$state" "$tmp/view"
cg=/sys/fs/cgroup/memory/stockade-bench-levels-$$
cleanup() {
  [ -d "$cg" ] && rmdir "$cg" 2>/dev/null
  for r in "$tmp"/runsc*; do [ -d "$r" ] && runsc --root "$r" delete --force bench-true >/dev/null 2>&1; done
  rm -rf "$tmp"
  [ "$(cut -d' ' -f1 /tmp/stockade-quiet 2>/dev/null)" = $$ ] && rm -f /tmp/stockade-quiet
}
trap cleanup EXIT
cd "$ws"

s="$bin run --state-dir $state"
b="bwrap --unshare-all --die-with-parent --ro-bind /usr /usr --symlink usr/bin /bin --symlink usr/lib /lib --symlink usr/lib64 /lib64 --symlink usr/sbin /sbin --proc /proc --dev /dev --tmpfs /tmp --bind $ws $ws --chdir $ws"
"$helper" gvisor-bundle "$tmp/bundle" "$ws"
# gvisor::runsc_command's flags
runsc_run="runsc --root $tmp/runsc --platform ptrace --network none --ignore-cgroups --overlay2 none run --bundle $tmp/bundle bench-true"
runsc_do="runsc --root $tmp/runsc-do --platform=ptrace --network=none do"
# Stockade's guest RAM for the default 1 GiB limit (backend::vmm::guest_memory: limit - 192 MiB)
mapfile -t qemu < <("$helper" qemu-direct "$tmp/view" "$tmp/ctrl.out" 832)
# A private copy of the initramfs: Stockade replaces its cached one when the guest binary changes.
for i in "${!qemu[@]}"; do
  if [ "${qemu[$i]}" = -initrd ]; then
    cp "${qemu[$((i + 1))]}" "$tmp/initramfs.cpio"
    qemu[$((i + 1))]="$tmp/initramfs.cpio"
  fi
done
qemu_cmd="${qemu[*]}"
case "$qemu_cmd" in *" "*" "*) ;; *) echo "$0: no QEMU command" >&2; exit 1 ;; esac

# The kernel command line has spaces: QEMU's argv goes through `xargs -0 -a FILE` (one more
# exec, about a millisecond against seconds of boot).
printf '%s\0' "${qemu[@]:1}" >"$tmp/qemu.argv"
qemu_direct="xargs -0 -a $tmp/qemu.argv ${qemu[0]}"

# Each command once, to fail early with its error.
check() {
  local name=$1; shift
  if ! "$@" >"$tmp/check.out" 2>&1 </dev/null; then
    echo "levels: $name failed:" >&2; tail -20 "$tmp/check.out" >&2; exit 1
  fi
}
check "stockade container" $s -- /bin/true
check bwrap $b /bin/true
check "stockade gvisor" $s --level gvisor -- /bin/true
check "runsc do" $runsc_do /bin/true
check "runsc run" $runsc_run
check "stockade microvm" $s --level microvm --allow-emulated -- /bin/true
rm -f "$tmp/ctrl.out"
check "qemu direct" $qemu_direct
grep -q STOCKADE-GUEST-DONE "$tmp/ctrl.out" || { echo "levels: the direct QEMU boot did not finish its check: $(cat "$tmp/ctrl.out")" >&2; exit 1; }

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
rm -f "$out"/levels-*.json
for r in $(seq 1 "$rounds"); do
  echo "levels: round $r/$rounds" >&2
  hyperfine -N --style none --warmup "$warmup" --runs "$runs" --export-json "$out/levels-container-r$r.json" \
    -n "stockade container" "$s -- /bin/true" -n "bwrap" "$b /bin/true" >/dev/null
  hyperfine -N --style none --warmup "$warmup" --runs "$runs" --export-json "$out/levels-gvisor-r$r.json" \
    -n "stockade gvisor" "$s --level gvisor -- /bin/true" -n "runsc do" "$runsc_do /bin/true" -n "runsc run (stockade bundle)" "$runsc_run" >/dev/null
  hyperfine -N --style none --warmup 0 --runs "$mvm_runs" --export-json "$out/levels-microvm-r$r.json" \
    -n "stockade microvm" "$s --level microvm --allow-emulated -- /bin/true" -n "qemu direct" "$qemu_direct" >/dev/null
done
grep -q STOCKADE-GUEST-DONE "$tmp/ctrl.out" || { echo "levels: the direct QEMU boots did not finish" >&2; exit 1; }
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

# Memory: the sandbox cgroup's peak (Stockade: from its audit trail), direct runs in our cgroup.
peak_stockade() {  # ARGS... -> bytes
  local before
  before=$(ls "$state/sandboxes" 2>/dev/null | wc -l)
  "$@" >/dev/null 2>&1 </dev/null || { echo "levels: $* failed" >&2; exit 1; }
  local ev
  ev=$(ls -t "$state"/sandboxes/*/events.jsonl | head -1)
  grep -o '"peak_memory_bytes":[0-9]*' "$ev" | tail -1 | cut -d: -f2
}
peak_direct() {  # ARGS... -> bytes
  mkdir "$cg"
  # shellcheck disable=SC2016
  sh -c 'echo $$ >"$0/cgroup.procs" && exec "$@"' "$cg" "$@" >/dev/null 2>&1 </dev/null || { rmdir "$cg"; echo "levels: $* failed" >&2; exit 1; }
  cat "$cg/memory.max_usage_in_bytes"
  rmdir "$cg"
}
: >"$out/levels-memory.txt"
for i in $(seq 1 "$mem_reps"); do
  {
    echo "stockade container $(peak_stockade $s -- sleep 1)"
    echo "bwrap $(peak_direct $b sleep 1)"
    echo "stockade gvisor $(peak_stockade $s --level gvisor -- sleep 1)"
    echo "runsc do $(peak_direct runsc --root "$tmp/runsc-do" --platform=ptrace --network=none --ignore-cgroups do sleep 1)"
    echo "stockade microvm $(peak_stockade $s --level microvm --allow-emulated -- sleep 1)"
    echo "qemu direct $(peak_direct "${qemu[@]}")"
  } >>"$out/levels-memory.txt"
done

"$py" "$repo/bench/levels_report.py" "$out" "$smoke" "$rounds" "$runs" "$mvm_runs" "$warmup" "$load_before" "$load_after" "$mem_reps"
