#!/usr/bin/env bash
# Secret injection (issue 6): what TLS interception costs, on loopback only, in one run
# (crates/gateway/examples/secrets_bench.rs). One rustls+hyper client and one HTTPS upstream
# (a test CA from rcgen, HTTP/1.1 and HTTP/2, a small JSON answer) on 127.0.0.2:
#   (a) the client straight to the upstream;
#   (b) through stockade_gateway::conn (transparent mode) as a plain allowed TLS tunnel;
#   (c) through the same gateway with an Interceptor and a secret bound to the host: the request's
#       `Authorization: Bearer <placeholder>` goes upstream with the real value (checked);
#   (b'), (c'): (b) and (c) with TCP_NODELAY set on the sandbox-side socket.
# For each: new-connection latency (connect + full TLS handshake + one request, p50/p95/p99) and
# requests per second on one kept-alive connection (HTTP/1.1 sequential, HTTP/2 16 streams),
# with CPU per request and the ratios of (c) to (b) and to (a).
#   bench/secrets.sh           1000 new connections and 40000 kept-alive requests per path and
#                              protocol (about 5 minutes on 2 vCPUs); into bench/out/secrets.md
#   bench/secrets.sh --smoke   20 and 400 (a few seconds after the build); into
#                              bench/out/smoke/secrets.md
source "$(dirname "$0")/lib.sh"
if [ "$smoke" = 1 ]; then
  args=(--smoke)
else
  args=(--conns 1000 --requests 40000 --rounds 5 --streams 16)
fi
table=$(cd "$src" && cargo run -q --release -p stockade-gateway --example secrets_bench -- "${args[@]}")
"$py" - "$out/secrets.md" "$table" <<'PY'
import os, sys
sys.path.insert(0, os.path.join(os.getcwd(), "bench"))
import benchlib as bl
path, table = sys.argv[1], sys.argv[2]
body = "\n".join([
    f"Machine: {bl.machine()}. Client, gateway and upstream in one process "
    "(`crates/gateway/examples/secrets_bench.rs`, run by `bench/secrets.sh`), all on 127.0.0.0/8: "
    "the upstream on 127.0.0.2 (rustls, ECDSA P-256 certificate from a test CA, "
    "HTTP/1.1 and HTTP/2 via hyper), each gateway on its own 127.0.0.1 listener with one thread "
    "per connection (`Gateway::handle_transparent`, as the supervisor runs it); (c) uses "
    "`Gateway::with_interceptor` with one secret bound to the host, its client trusting "
    "`Interceptor::ca_pem()` and the interceptor trusting the test CA upstream.",
    "",
    table.strip(),
])
if not os.path.exists(path):
    with open(path, "w") as f:
        f.write("## Secret injection: the cost of interception\n")
bl.write_section("secrets", body, path)
print(open(path).read())
PY
