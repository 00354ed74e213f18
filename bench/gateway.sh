#!/usr/bin/env bash
# Egress gateway (issue 4), on loopback only, in one run:
#  1. the host-side handler alone (stockade_gateway::conn, transparent mode) between a client
#     and a server, against the same client talking to the server directly: added latency per
#     connection and bulk throughput (crates/gateway/examples/gateway_bench.rs);
#  2. end to end through a real sandbox with a network allowlist (agent DNS, the agent's
#     listener, the socket handed to the supervisor over SCM_RIGHTS, the gateway, the dial),
#     against the same Python client on the host talking directly (bench/gateway_e2e.py).
#   bench/gateway.sh           2000 connections, 2 GiB bulk (1000 and 1 GiB end to end); into BENCHMARKS.md
#   bench/gateway.sh --smoke   50 connections, 64 MiB (20 and 16 MiB end to end); prints, writes nothing
source "$(dirname "$0")/lib.sh"
if [ "$smoke" = 1 ]; then conns=50 mib=64 econns=20 emib=16; else conns=2000 mib=2048 econns=1000 emib=1024; fi
build
(cd "$src" && cargo run -q --release -p stockade-gateway --example gateway_bench "$conns" "$mib") >"$out/gateway-unit.md"
"$py" "$repo/bench/gateway_e2e.py" "$bin" "$out" "$econns" "$emib"
"$py" - "$out" "$smoke" <<'PY'
import json, os, sys
sys.path.insert(0, os.path.join(os.getcwd(), "bench"))
import benchlib as bl
out, smoke = sys.argv[1], sys.argv[2] == "1"
unit = open(os.path.join(out, "gateway-unit.md")).read().strip()
e = json.load(open(os.path.join(out, "gateway-e2e.json")))
d, s = e["direct"], e["sandbox"]
us = lambda x: f"{x * 1e6:.0f} µs"
gib = lambda r: f"{r['bulk_bytes'] / r['bulk_seconds'] / 2**30:.2f} GiB/s"
rows = ["| path (Python client) | connect+request p50 | p95 | bulk throughput (%d MiB) |" % e["mib"], "|---|---|---|---|",
        f"| direct loopback, on the host | {us(bl.median(d['latency']))} | {us(bl.q(d['latency'], .95))} | {gib(d)} |",
        f"| from inside a sandbox, through agent and gateway | {us(bl.median(s['latency']))} | {us(bl.q(s['latency'], .95))} | {gib(s)} |",
        f"| added by the sandbox path | {us(bl.median(s['latency']) - bl.median(d['latency']))} | "
        f"{us(bl.q(s['latency'], .95) - bl.q(d['latency'], .95))} | "
        f"{(d['bulk_seconds'] / d['bulk_bytes']) / (s['bulk_seconds'] / s['bulk_bytes']) * 100:.0f}% of direct |"]
body = "\n".join([
    f"Machine: {bl.machine()}.", "",
    "The host-side handler alone (Rust client and server, `stockade_gateway::conn` in transparent mode):", "",
    unit, "",
    f"End to end through a sandbox (`stockade run --policy` allowlisting `api.test` → 127.0.0.2; "
    f"{e['conns']} sequential connections, each resolved address reused; audit on, so each is a "
    f"`net.connect` event):", "",
    "\n".join(rows), "",
    f"A name lookup inside (glibc → the agent's DNS on 127.0.0.53 → the supervisor's decision): "
    f"p50 {us(bl.median(s['dns']))}, p95 {us(bl.q(s['dns'], .95))} ({len(s['dns'])} lookups).",
])
print(body)
if not smoke:
    bl.write_section("gateway", body)
PY
