#!/usr/bin/env bash
# The Python SDK's tests: mypy --strict on the package and the example, then pytest against a
# real `stockade serve` that the tests start themselves (sdk/python/tests/conftest.py).
#
#   sdk/python/run-tests.sh [pytest args...]
#
# Needs: root (the server makes sandboxes), python3 >= 3.11 with venv (Debian: apt-get install
# python3-venv), PyPI reachable the first time (the venv is kept under target/sdk-venv and
# rebuilt when a pinned version changes). Builds nothing: the binary is $STOCKADE_BIN (default
# target/debug/stockade; build it with `cargo build -p stockade`).
#
# Anything missing is a failure with the reason, never a skip (a skipped test fails too).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BIN=${STOCKADE_BIN:-$ROOT/target/debug/stockade}
VENV=${STOCKADE_SDK_VENV:-$ROOT/target/sdk-venv}
PYTEST_VERSION=9.2.0
MYPY_VERSION=2.4.1
HTTPX_VERSION=0.28.1
HATCHLING_VERSION=1.33.0

fail() { echo "sdk/python/run-tests.sh: $*" >&2; exit 1; }

[[ -x $BIN ]] || fail "$BIN is not an executable: build it first (cargo build -p stockade) or set STOCKADE_BIN"
[[ $(id -u) == 0 ]] || fail "must run as root (stockade serve makes sandboxes)"
command -v python3 >/dev/null || fail "python3 is missing (Debian: apt-get install python3 python3-venv)"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || fail "python3 is $(python3 -V 2>&1): the SDK needs 3.11 or later"

want="pytest==$PYTEST_VERSION mypy==$MYPY_VERSION httpx==$HTTPX_VERSION hatchling==$HATCHLING_VERSION"
if ! "$VENV/bin/python" - "$want" 2>/dev/null <<'EOF'
import sys, importlib.metadata as m
for spec in sys.argv[1].split():
    name, version = spec.split("==")
    assert m.version(name) == version, spec
EOF
then
    rm -rf "$VENV"
    python3 -m venv "$VENV" || fail "python3 -m venv failed (Debian: apt-get install python3-venv)"
    # shellcheck disable=SC2086 # $want is a list of requirements
    "$VENV/bin/pip" install --quiet --disable-pip-version-check $want \
        || fail "pip install $want failed (is PyPI reachable?)"
fi
PY=$VENV/bin/python

# The package under test, installed as a user would (not editable), from this tree every run.
"$PY" -m pip install --quiet --disable-pip-version-check --no-build-isolation --no-deps \
    --force-reinstall "$HERE" || fail "pip install ./sdk/python failed"
"$PY" -c 'import stockade, pathlib; assert (pathlib.Path(stockade.__file__).parent / "py.typed").exists()' \
    || fail "the installed package has no py.typed"

echo "--- mypy --strict"
(cd "$HERE" && "$PY" -m mypy --strict src/stockade "$ROOT/examples/agent_loop.py") || fail "mypy --strict failed"

echo "--- pytest"
export STOCKADE_BIN=$BIN
unset STOCKADE_SERVER STOCKADE_API_KEY || true
status=0
(cd "$HERE" && timeout 1200 "$PY" -m pytest -v "$@") || status=$?
if [[ $status == 5 ]]; then
    fail "pytest collected no tests"
fi
exit "$status"
