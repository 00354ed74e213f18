#!/usr/bin/env bash
# Egress gateway (issue 4): added latency per connection and bulk throughput through
# stockade_gateway::conn on loopback, against direct loopback, in one run.
#   bench/gateway.sh           2000 connections, 2 GiB bulk
#   bench/gateway.sh --smoke   50 connections, 64 MiB
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--smoke" ]; then
  exec cargo run -q --release -p stockade-gateway --example gateway_bench 50 64
fi
exec cargo run -q --release -p stockade-gateway --example gateway_bench 2000 2048
