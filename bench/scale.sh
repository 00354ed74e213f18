#!/usr/bin/env bash
# Scale: create -> exec -> destroy throughput of `stockade run -- /bin/true` with 1, 2, 4 and 8
# workers in parallel, beside bwrap with the same namespaces (bench/scale.py).
#   bench/scale.sh           60 runs per worker; table + plot into BENCHMARKS.md
#   bench/scale.sh --smoke   1 and 2 workers, 5 runs each; prints the table, writes nothing (CI)
source "$(dirname "$0")/lib.sh"
levels=1,2,4,8 per=60
[ "$smoke" = 1 ] && levels=1,2 per=5
require bwrap bubblewrap
build
"$py" "$repo/bench/scale.py" "$bin" "$out" "$levels" "$per" "$smoke"
