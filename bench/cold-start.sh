#!/usr/bin/env bash
# Cold start of a sandboxed `/bin/true` and `python3 -c pass`, side by side in one run, measured
# with hyperfine (launch to exit of the whole tool):
#   stockade run (container level: user/mount/pid/net/ipc/uts/cgroup namespaces, pivot_root,
#     seccomp, Landlock, cgroup limits, audit trail), also without the audit trail, with the
#     network allowlist on (egress gateway, a loopback test host), both, and without
#     seccomp+Landlock (to show their cost);
#   bwrap with the same namespaces and a comparable root;
#   runc and runsc (gVisor, --platform=ptrace --network=none, the only platform that works on
#     this machine kind) on an OCI bundle built by bench/oci-bundle.py (same namespaces, root and
#     cgroup limits as stockade's defaults);
#   firejail --noprofile --net=none, and firejail --net=none with its default profile;
#   a bare `unshare` (namespaces only) as the floor.
# Peers that are not installed or fail a first run are reported as such and left out.
# To spread the noise of a shared machine evenly, the runs are taken in rounds (every command
# once per round, in turn) and merged.
#   bench/cold-start.sh           10 rounds x 10 runs per command; table + plot into BENCHMARKS.md
#   bench/cold-start.sh --smoke   1 round x 3 runs, prints the table, writes nothing (CI)
source "$(dirname "$0")/lib.sh"
rounds=10 runs=10 warmup=2
[ "$smoke" = 1 ] && rounds=1 runs=3 warmup=1
require hyperfine hyperfine bwrap bubblewrap
build

tmp=$(mktemp -d /tmp/stockade-bench.XXXXXX)
chmod 755 "$tmp"   # runc's and runsc's mapped root must reach the bundle and the workspace
ws="$tmp/ws" state="$tmp/state" runc_root="$tmp/runc" runsc_root="$tmp/runsc"
mkdir -p "$ws" "$state"
trap 'rm -rf "$tmp"' EXIT
cd "$ws"

# The allowlist variant: one loopback test host, as in crates/cli/tests/egress.rs (nothing
# listens there: this measures the start of the gateway, the agent's DNS and its listeners).
cat >"$tmp/allowlist.toml" <<'EOF'
[network]
mode = "allowlist"
allow = ["api.test:8080"]
allow_private = ["127.0.0.2/32"]

[network.hosts]
"api.test" = "127.0.0.2"
EOF

python=/usr/bin/python3
s="$bin run --state-dir $state"
declare -a names cmd_true cmd_py
add() { names+=("$1"); cmd_true+=("$2"); cmd_py+=("$3"); }
add "stockade run (all walls)" "$s -- /bin/true" "$s -- $python -c pass"
add "stockade run (no audit)" "$s --no-audit -- /bin/true" "$s --no-audit -- $python -c pass"
add "stockade run (allowlist)" "$s --policy $tmp/allowlist.toml -- /bin/true" "$s --policy $tmp/allowlist.toml -- $python -c pass"
add "stockade run (allowlist, no audit)" "$s --policy $tmp/allowlist.toml --no-audit -- /bin/true" "$s --policy $tmp/allowlist.toml --no-audit -- $python -c pass"
w="--seccomp off --landlock off --allow-weaker-isolation"
add "stockade run (no seccomp, no landlock)" "$s $w -- /bin/true" "$s $w -- $python -c pass"
# bwrap with the namespaces stockade creates (user, pid, net, ipc, uts, cgroup, mount) and a
# comparable root: read-only /usr, the merged-usr symlinks, fresh /proc, minimal /dev, tmpfs
# /tmp, the workspace bound read-write.
b="bwrap --unshare-all --die-with-parent --ro-bind /usr /usr --symlink usr/bin /bin --symlink usr/lib /lib --symlink usr/lib64 /lib64 --symlink usr/sbin /sbin --proc /proc --dev /dev --tmpfs /tmp --bind $ws $ws --chdir $ws"
add "bwrap (same namespaces)" "$b /bin/true" "$b $python -c pass"
skipped=()
for w in true py; do
  if [ "$w" = true ]; then c=(/bin/true); else c=("$python" -c pass); fi
  "$py" "$repo/bench/oci-bundle.py" "$tmp/bundle-$w" "$ws" -- "${c[@]}"
done
# probe NAME CMD_TRUE CMD_PY: add a peer if both commands run once successfully
probe() {
  local err
  if ! command -v "${2%% *}" >/dev/null 2>&1; then skipped+=("$1: not installed"); return; fi
  for c in "$2" "$3"; do
    # shellcheck disable=SC2086
    if ! err=$($c 2>&1 >/dev/null); then
      skipped+=("$1: failed: $(echo "$err" | tail -1 | cut -c1-200)"); return
    fi
  done
  add "$1" "$2" "$3"
}
# runc and runsc: one bundle per workload (bench/oci-bundle.py), state under $tmp; `run` deletes
# the container when it exits, so the id is reused run after run.
probe "runc (OCI bundle)" "runc --root $runc_root run --bundle $tmp/bundle-true bench-true" \
  "runc --root $runc_root run --bundle $tmp/bundle-py bench-py"
probe "runsc (gVisor ptrace)" "runsc --root $runsc_root --platform=ptrace --network=none run --bundle $tmp/bundle-true bench-true" \
  "runsc --root $runsc_root --platform=ptrace --network=none run --bundle $tmp/bundle-py bench-py"
probe "firejail (--noprofile)" "firejail --quiet --noprofile --net=none /bin/true" "firejail --quiet --noprofile --net=none $python -c pass"
probe "firejail (default profile)" "firejail --quiet --net=none /bin/true" "firejail --quiet --net=none $python -c pass"
u="unshare --user --map-root-user --net --pid --ipc --uts --mount --cgroup --fork"
add "unshare (namespaces only)" "$u /bin/true" "$u $python -c pass"

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
rm -f "$out"/cold-start-*.json
for r in $(seq 1 "$rounds"); do
  for w in true py; do
    args=()
    for i in "${!names[@]}"; do
      if [ "$w" = true ]; then args+=(-n "${names[$i]}" "${cmd_true[$i]}"); else args+=(-n "${names[$i]}" "${cmd_py[$i]}"); fi
    done
    echo "cold start: round $r/$rounds, $([ "$w" = true ] && echo /bin/true || echo 'python3 -c pass'), ${#names[@]} commands x $runs runs" >&2
    hyperfine -N --style none --warmup "$warmup" --runs "$runs" --export-json "$out/cold-start-$w-r$r.json" "${args[@]}" >/dev/null
  done
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

printf '%s\n' "${skipped[@]}" >"$out/cold-start-skipped.txt"
"$py" "$repo/bench/cold_start_report.py" "$out" "$smoke" "$rounds" "$runs" "$warmup" "$load_before" "$load_after"
