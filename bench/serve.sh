#!/usr/bin/env bash
# `stockade serve` under load (bench/serve.py says what is measured):
#   bench/serve.sh           latency (200 cycles, pool off/on), 200 alive, soak of 10,000 cycles;
#                            tables into BENCHMARKS.md (section serve)
#   bench/serve.sh --smoke   latency 10 cycles, 10 alive, soak of 100 cycles (asserts the leak
#                            checks too); prints, writes nothing (CI)
source "$(dirname "$0")/lib.sh"
cycles=200 alive=200 soak=10000
[ "$smoke" = 1 ] && cycles=10 alive=10 soak=100
build
lat=$("$py" "$repo/bench/serve.py" "$bin" "$out" latency "$cycles")
echo "$lat"
al=$("$py" "$repo/bench/serve.py" "$bin" "$out" alive 0 "$alive")
echo "$al"
sk=$("$py" "$repo/bench/serve.py" "$bin" "$out" soak "$soak")
echo "$sk"
if [ "$smoke" = 0 ]; then
  "$py" - "$lat" "$al" "$sk" <<'PY'
import sys
sys.path.insert(0, "bench")
import benchlib as bl
lat, al, sk = sys.argv[1:4]
bl.write_section("serve", "## stockade serve: API latency, sandboxes alive, leak soak\n\n"
                 "`bench/serve.sh` (what is measured: `bench/serve.py`). Goals (issue 7): p50 of create → exec `echo` → destroy under 5 ms with the warm pool and under 15 ms without, server-side; 200 alive each answering; 10,000 cycles back to the starting counts.\n\n"
                 + lat + "\n\n" + al + "\n\n" + sk + "\n")
PY
fi
