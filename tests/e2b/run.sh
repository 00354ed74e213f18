#!/usr/bin/env bash
# The official E2B Python SDK (pinned) against `stockade serve`: Stockade's E2B-compatible API
# is judged by a client nobody here wrote.
#
#   tests/e2b/run.sh [--level container|gvisor|microvm] [pytest args...]
#
# --level (or STOCKADE_E2B_LEVEL): the isolation level of every sandbox the suite makes. Above
# the container level a template `e2b-<level>` (base's policy with that `level`; microvm adds
# `security.allow_emulated = true`, since CI machines have QEMU's TCG only) is added before the
# server starts and becomes the SDK's default template (conftest.py sets
# `Sandbox.default_template` from STOCKADE_E2B_TEMPLATE); templates the tests add get the same
# level, and each fixture sandbox is checked to run at it. The debug-mode sandbox
# (test_debug.py) is the server's own `base` one: container level whatever the flag.
#
# Needs: root (sandboxes), python3 with venv (Debian: python3-venv), PyPI reachable on the first
# run (the venv is kept under target/e2b-venv). Builds nothing: the binary is $STOCKADE_BIN
# (default target/debug/stockade; build it with `cargo build -p stockade`).
#
# What it does: starts `stockade serve` on free loopback ports (main API and the SDK's debug-mode
# listener) with a temporary state directory and a key from `stockade keys create`, points the
# SDK at it with E2B_API_KEY / E2B_API_URL / E2B_SANDBOX_URL, runs pytest, stops the server with
# SIGTERM and fails unless the server exited cleanly and every sandbox it made ended clean
# (`sandbox.destroyed` with clean=true in its audit trail, no cgroup left).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=../lib/leftovers.sh
source "$ROOT/tests/lib/leftovers.sh"
BIN=${STOCKADE_BIN:-$ROOT/target/debug/stockade}
VENV=${E2B_VENV:-$ROOT/target/e2b-venv}
E2B_VERSION=2.63.0
PYTEST_VERSION=9.2.0

fail() { echo "tests/e2b/run.sh: $*" >&2; exit 1; }

LEVEL=${STOCKADE_E2B_LEVEL:-container}
if [[ ${1:-} == --level ]]; then
    [[ $# -ge 2 ]] || fail "--level needs a value: container, gvisor or microvm"
    LEVEL=$2
    shift 2
elif [[ ${1:-} == --level=* ]]; then
    LEVEL=${1#--level=}
    shift
fi
case $LEVEL in
    container | gvisor | microvm) ;;
    *) fail "unknown level $LEVEL (container, gvisor or microvm)" ;;
esac

[[ -x $BIN ]] || fail "$BIN is not an executable: build it first (cargo build -p stockade) or set STOCKADE_BIN"
[[ $(id -u) == 0 ]] || fail "must run as root (stockade serve makes sandboxes)"
command -v python3 >/dev/null || fail "python3 is missing (Debian: apt-get install python3 python3-venv)"

if ! "$VENV/bin/python" -c "import e2b, pytest, importlib.metadata as m; \
        assert m.version('e2b') == '$E2B_VERSION' and m.version('pytest') == '$PYTEST_VERSION'" 2>/dev/null; then
    rm -rf "$VENV"
    python3 -m venv "$VENV" || fail "python3 -m venv failed (Debian: apt-get install python3-venv)"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "e2b==$E2B_VERSION" "pytest==$PYTEST_VERSION" \
        || fail "pip install e2b==$E2B_VERSION pytest==$PYTEST_VERSION failed"
fi
PY=$VENV/bin/python

WORK=$(mktemp -d /tmp/stockade-e2b.XXXXXX)
STATE=$WORK/state
LOG=$WORK/server.log
SERVER_PID=
cleanup() {
    if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 60); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.5; done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
    if [[ -z ${KEEP_WORK:-} ]]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
DPORT=$(free_port)
[[ $PORT != "$DPORT" ]] || DPORT=$(free_port)

KEY=$("$BIN" --state-dir "$STATE" keys create --name e2b-tests 2>/dev/null | head -n1)
[[ -n $KEY ]] || fail "stockade keys create printed no key"

TEMPLATE=base
if [[ $LEVEL != container ]]; then
    TEMPLATE=e2b-$LEVEL
    {
        echo "level = \"$LEVEL\""
        if [[ $LEVEL == microvm ]]; then printf '[security]\nallow_emulated = true\n'; fi
    } >"$WORK/$TEMPLATE.toml"
    "$BIN" --state-dir "$STATE" template add "$TEMPLATE" --policy "$WORK/$TEMPLATE.toml" \
        || fail "stockade template add $TEMPLATE failed"
fi

"$BIN" --state-dir "$STATE" serve --listen "127.0.0.1:$PORT" --e2b-debug-listen "127.0.0.1:$DPORT" \
    >"$LOG" 2>&1 &
SERVER_PID=$!
ready=
for _ in $(seq 1 100); do
    if "$PY" -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$PORT/health', timeout=1)" 2>/dev/null; then
        ready=1; break
    fi
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$LOG" >&2; fail "stockade serve exited at start"; }
    sleep 0.1
done
[[ -n $ready ]] || { cat "$LOG" >&2; fail "stockade serve did not answer /health within 10 s"; }

export E2B_API_KEY=$KEY
export E2B_API_URL=http://127.0.0.1:$PORT
export E2B_SANDBOX_URL=http://127.0.0.1:$PORT
export STOCKADE_E2B_DEBUG_URL=http://127.0.0.1:$DPORT
export STOCKADE_BIN=$BIN
export STOCKADE_STATE_DIR=$STATE
export STOCKADE_E2B_LEVEL=$LEVEL
export STOCKADE_E2B_TEMPLATE=$TEMPLATE
unset E2B_DEBUG E2B_DOMAIN E2B_HTTP_VERSION || true

# A microVM boots in 5-12 s under TCG: the whole suite takes longer there.
LIMIT=1200
[[ $LEVEL == container ]] || LIMIT=3600
status=0
echo "tests/e2b/run.sh: level $LEVEL, default template $TEMPLATE" >&2
started=$SECONDS
(cd "$ROOT/tests/e2b" && timeout "$LIMIT" "$PY" -m pytest -p no:cacheprovider -v "$@") || status=$?
echo "tests/e2b/run.sh: pytest at level $LEVEL took $((SECONDS - started)) s (status $status)" >&2

# Stop the server and check it left nothing behind.
kill -TERM "$SERVER_PID"
stopped=
for _ in $(seq 1 120); do
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then stopped=1; break; fi
    sleep 0.5
done
if [[ -z $stopped ]]; then
    cat "$LOG" >&2
    fail "stockade serve did not stop within 60 s of SIGTERM"
fi
server_status=0
wait "$SERVER_PID" || server_status=$?
SERVER_PID=
if [[ $server_status != 0 ]]; then
    tail -n 50 "$LOG" >&2
    fail "stockade serve exited with status $server_status after SIGTERM"
fi

check_leftovers tests/e2b/run.sh "$LOG" "$STATE"/sandboxes/*/
made=$MADE
if [[ $made == 0 && $status == 0 ]]; then
    fail "no sandbox was made: the tests did not run"
fi
if [[ $status != 0 ]]; then
    echo "--- server log (last 80 lines) ---" >&2
    tail -n 80 "$LOG" >&2
fi
exit "$status"
