# Sourced by the bench/*.sh scripts: options, tools, the release build.
#   --smoke        tiny counts, prints the tables, writes nothing into BENCHMARKS.md or bench/plots
# Environment:
#   STOCKADE_BENCH_SRC=DIR      build and measure the stockade of another checkout, e.g. a clean
#                               `git worktree` of a commit (default: this one)
#   STOCKADE_BENCH_NO_BUILD=1   the release binary is already built (bench/all.sh builds once)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
smoke=0
for a in "$@"; do
  case "$a" in
    --smoke) smoke=1 ;;
    *) echo "usage: $0 [--smoke]" >&2; exit 2 ;;
  esac
done
repo="$PWD"
src=$(cd "${STOCKADE_BENCH_SRC:-$repo}" && pwd)
bin="$src/target/release/stockade"
# which stockade is measured, for the tables
STOCKADE_BENCH_REV="$(git -C "$src" rev-parse --short HEAD 2>/dev/null || echo unknown)"
[ -n "$(git -C "$src" status --porcelain -- crates Cargo.toml Cargo.lock 2>/dev/null)" ] && STOCKADE_BENCH_REV+=" with uncommitted changes"
export STOCKADE_BENCH_REV
out="$repo/bench/out"
[ "$smoke" = 1 ] && out="$repo/bench/out/smoke"
mkdir -p "$out"
# The system interpreter: Debian's python3-matplotlib is installed for it (a python3 earlier on
# PATH, e.g. from pyenv, would not see it).
py=/usr/bin/python3
[ -x "$py" ] || py=python3

# require TOOL PACKAGE...: fail with the apt-get line unless every TOOL is on PATH
require() {
  local missing=()
  while [ $# -gt 1 ]; do
    command -v "$1" >/dev/null 2>&1 || missing+=("$2")
    shift 2
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "$0: missing tools; install them with: apt-get install ${missing[*]} (or run bench/all.sh as root)" >&2
    exit 1
  fi
}

build() {
  if [ "${STOCKADE_BENCH_NO_BUILD:-0}" != 1 ]; then
    (cd "$src" && cargo build --release --quiet -p stockade)
  fi
}
