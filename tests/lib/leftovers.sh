# Sourced by tests/e2b/run.sh and tests/mcp/run.sh: after the server (or `stockade mcp`) has
# stopped, every sandbox it made must have ended clean.
#
#   check_leftovers NAME LOG DIR...
#
# DIR... are sandbox directories (`<state>/sandboxes/<id>/`; globs that matched nothing are
# skipped). Each must hold an audit trail whose last `sandbox.destroyed` says clean:true, and no
# cgroup of its id may remain. Prints "NAME: N sandboxes made, M leftovers" and exits 1 (with
# the tail of LOG) when anything was left. Sets MADE to the number of sandboxes seen.
check_leftovers() {
    local name=$1 log=$2 dir id last leftovers=0
    shift 2
    MADE=0
    for dir in "$@"; do
        [[ -d $dir ]] || continue
        id=$(basename "$dir")
        MADE=$((MADE + 1))
        last=$(grep '"sandbox.destroyed"' "$dir/events.jsonl" 2>/dev/null | tail -n1 || true)
        if [[ -z $last ]] || ! grep -q '"clean":true' <<<"$last"; then
            echo "leftover: sandbox $id ($dir) has no clean sandbox.destroyed event: ${last:-none}" >&2
            leftovers=$((leftovers + 1))
        fi
        if [[ -n $(find /sys/fs/cgroup -maxdepth 4 -type d -name "*$id*" 2>/dev/null) ]]; then
            echo "leftover: cgroup of sandbox $id still exists" >&2
            leftovers=$((leftovers + 1))
        fi
    done
    echo "$name: $MADE sandboxes made, $leftovers leftovers"
    if [[ $leftovers != 0 ]]; then
        tail -n 50 "$log" >&2
        echo "$name: sandboxes were left behind" >&2
        exit 1
    fi
}
