#!/usr/bin/env bash
# The official MCP Python SDK (pinned) as the client of Stockade's MCP server: over stdio
# (`stockade mcp`, spawned by the tests) and over Streamable HTTP (`/mcp` on `stockade serve`).
#
#   tests/mcp/run.sh [pytest args...]
#
# Needs: root (sandboxes), python3 with venv (Debian: python3-venv), PyPI reachable on the first
# run (the venv is kept under target/mcp-venv), python3, bash and curl on the host (the sandboxes
# see the host's /usr). Builds nothing: the binary is $STOCKADE_BIN (default
# target/debug/stockade; build it with `cargo build -p stockade`).
#
# What it does: starts `stockade serve` on a free loopback port with a temporary state directory
# and a key from `stockade keys create`, runs pytest (the stdio tests spawn `stockade mcp` with
# their own state directories under the same temporary directory), stops the server with
# SIGTERM and fails unless it exited cleanly and every sandbox made anywhere (server and stdio)
# ended clean (`sandbox.destroyed` with clean=true in its audit trail, no cgroup left).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=../lib/leftovers.sh
source "$ROOT/tests/lib/leftovers.sh"
BIN=${STOCKADE_BIN:-$ROOT/target/debug/stockade}
VENV=${MCP_VENV:-$ROOT/target/mcp-venv}
MCP_VERSION=2.3.0
PYTEST_VERSION=9.2.0

fail() { echo "tests/mcp/run.sh: $*" >&2; exit 1; }

[[ -x $BIN ]] || fail "$BIN is not an executable: build it first (cargo build -p stockade) or set STOCKADE_BIN"
[[ $(id -u) == 0 ]] || fail "must run as root (stockade makes sandboxes)"
command -v python3 >/dev/null || fail "python3 is missing (Debian: apt-get install python3 python3-venv)"
for tool in bash curl; do
    command -v "$tool" >/dev/null || fail "$tool is missing on the host (the sandboxes use the host's; Debian: apt-get install $tool)"
done

if ! "$VENV/bin/python" -c "import mcp, pytest, importlib.metadata as m; \
        assert m.version('mcp') == '$MCP_VERSION' and m.version('pytest') == '$PYTEST_VERSION'" 2>/dev/null; then
    rm -rf "$VENV"
    python3 -m venv "$VENV" || fail "python3 -m venv failed (Debian: apt-get install python3-venv)"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "mcp==$MCP_VERSION" "pytest==$PYTEST_VERSION" \
        || fail "pip install mcp==$MCP_VERSION pytest==$PYTEST_VERSION failed"
fi
PY=$VENV/bin/python

WORK=$(mktemp -d /tmp/stockade-mcp.XXXXXX)
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

PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

KEY=$("$BIN" --state-dir "$STATE" keys create --name mcp-tests 2>/dev/null | head -n1)
[[ -n $KEY ]] || fail "stockade keys create printed no key"

"$BIN" --state-dir "$STATE" serve --listen "127.0.0.1:$PORT" >"$LOG" 2>&1 &
SERVER_PID=$!
ready=
for _ in $(seq 1 100); do
    if "$PY" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/health', timeout=1)" 2>/dev/null; then
        ready=1; break
    fi
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$LOG" >&2; fail "stockade serve exited at start"; }
    sleep 0.1
done
[[ -n $ready ]] || { cat "$LOG" >&2; fail "stockade serve did not answer /health within 10 s"; }

export STOCKADE_BIN=$BIN
export STOCKADE_STATE_DIR=$STATE
export STOCKADE_URL=http://127.0.0.1:$PORT
export STOCKADE_API_KEY=$KEY
export MCP_WORK=$WORK
unset STOCKADE_LOG || true

status=0
(cd "$ROOT/tests/mcp" && timeout 1200 "$PY" -m pytest -p no:cacheprovider -v "$@") || status=$?

# Stop the server and check that nothing was left behind, by it or by `stockade mcp`.
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

check_leftovers tests/mcp/run.sh "$LOG" "$STATE"/sandboxes/*/ "$WORK"/states/*/sandboxes/*/
made=$MADE
if [[ $made == 0 && $status == 0 ]]; then
    fail "no sandbox was made: the tests did not run"
fi
if [[ $status != 0 ]]; then
    echo "--- server log (last 80 lines) ---" >&2
    tail -n 80 "$LOG" >&2
fi
exit "$status"
