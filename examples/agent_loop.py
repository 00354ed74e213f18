#!/usr/bin/env python3
"""An LLM-style agent loop on a Stockade sandbox, with a scripted "model" (no model is called).

Each turn the "model" reads the conversation so far and answers like a model with one tool
would: either a Python script to run (the tool call) or a final answer. The loop writes the
script into the sandbox, runs it, and feeds the result (exit code, stdout, stderr) back as the
tool's answer. The sandbox's network is an allowlist: the model's script fetches one allowed URL
and one that is not allowed, and sees the second refused. At the end the loop prints the
sandbox's audit trace: every command and every network decision, with its reason.

Needs the Python SDK (`pip install ./sdk/python`) and a server:

    export STOCKADE_SERVER=http://127.0.0.1:3000 STOCKADE_API_KEY=sk_...   # stockade keys create
    python3 examples/agent_loop.py

By default the sandbox gets an inline policy whose network allows example.com only; the script
fetches https://example.com/ (allowed: the server's host needs internet access for this one)
and https://evil.example.net/ (refused by the sandbox's gateway: not in the allowlist).

Without internet access, use a template that maps a test name to a local server (an inline
policy may not map names to addresses: only the operator can, in a template):

    cat > agent-net.toml <<'EOF'
    [network]
    mode = "allowlist"
    allow = ["api.test:8080"]
    allow_private = ["127.0.0.2/32"]
    [network.hosts]
    "api.test" = "127.0.0.2"
    "evil.test" = "127.0.0.2"
    EOF
    stockade template add agent-net --policy agent-net.toml
    python3 -m http.server 8080 --bind 127.0.0.2 &
    python3 examples/agent_loop.py --template agent-net \\
        --allowed-url http://api.test:8080/ --denied-url http://evil.test:8080/

(`evil.test` resolves to the same server, and is still refused: the allowlist decides, not
the address.) Exit status: 0 when the model gave its final answer.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from dataclasses import dataclass
from typing import Any

from stockade import AuditEvent, CommandResult, Sandbox, StockadeError

INLINE_POLICY = """
[network]
mode = "allowlist"
allow = ["example.com"]
"""

FETCH = '''
import hashlib, json, sys, urllib.request

for url in sys.argv[1:]:
    try:
        with urllib.request.urlopen(url, timeout=15) as r:
            body = r.read()
        with open("page.html", "wb") as f:
            f.write(body)
        print(json.dumps({"url": url, "ok": True, "status": r.status, "bytes": len(body),
                          "sha256": hashlib.sha256(body).hexdigest()}))
    except Exception as e:
        print(json.dumps({"url": url, "ok": False, "error": f"{type(e).__name__}: {e}"}))
'''

ANALYZE = '''
import json
text = open("page.html", encoding="utf-8", errors="replace").read()
lines = [l.strip() for l in text.splitlines() if l.strip()]
print(json.dumps({"words": len(text.split()), "lines": len(lines),
                  "first_line": lines[0][:80] if lines else ""}))
'''


@dataclass
class Turn:
    """What the model said: a tool call (a script to run) or a final answer."""

    thought: str
    script: str | None = None
    filename: str | None = None
    args: tuple[str, ...] = ()
    final: str | None = None


class ScriptedModel:
    """Stands in for an LLM: answers from a script, but reads the tool results it is given."""

    def __init__(self, allowed_url: str, denied_url: str) -> None:
        self.allowed, self.denied = allowed_url, denied_url

    def respond(self, messages: list[dict[str, Any]]) -> Turn:
        tool_results = [m for m in messages if m["role"] == "tool"]
        if not tool_results:
            return Turn(
                thought=f"I will fetch {self.allowed} and, to check the sandbox, {self.denied}.",
                script=FETCH,
                filename="fetch.py",
                args=(self.allowed, self.denied),
            )
        fetched = self._json_lines(tool_results[0]["content"]["stdout"])
        by_url = {f.get("url"): f for f in fetched}
        ok, refused = by_url.get(self.allowed, {}), by_url.get(self.denied, {})
        if not ok.get("ok"):
            return Turn(
                thought="The allowed URL failed: I cannot go on.",
                final=f"I could not fetch {self.allowed}: {ok.get('error', 'no result')}.",
            )
        if len(tool_results) == 1:
            return Turn(
                thought=f"Got {ok['bytes']} bytes. Now I count the words of the page.",
                script=ANALYZE,
                filename="analyze.py",
            )
        stats = self._json_lines(tool_results[1]["content"]["stdout"])[0]
        return Turn(
            thought="I have what I need.",
            final=(
                f"{self.allowed} answered {ok['status']} with {ok['bytes']} bytes "
                f"({stats['words']} words, {stats['lines']} lines; first line: "
                f"{stats['first_line']!r}). {self.denied} was refused inside the sandbox: "
                f"{refused.get('error', 'no result')}."
            ),
        )

    @staticmethod
    def _json_lines(text: str) -> list[dict[str, Any]]:
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def run_tool(sbx: Sandbox, turn: Turn) -> CommandResult:
    """The model's tool call: its script, written into the sandbox and run there."""
    assert turn.script is not None and turn.filename is not None
    sbx.files.write(turn.filename, textwrap.dedent(turn.script).lstrip())
    return sbx.run(
        ["python3", turn.filename, *turn.args],
        on_stdout=lambda t: print(textwrap.indent(t.rstrip("\n"), "    | "), flush=True),
        on_stderr=lambda t: print(textwrap.indent(t.rstrip("\n"), "    ! "), flush=True),
        timeout=60,
    )


def print_trace(sbx: Sandbox, events: list[AuditEvent]) -> None:
    print(f"\n=== audit trace of sandbox {sbx.id} ===")
    groups = [
        ("commands", ("exec.started", "exec.exited", "limit.hit")),
        ("network", ("net.dns", "net.connect")),
        ("files", ("file.changed", "file.read")),
        ("violations", ("violation",)),
    ]
    for title, types in groups:
        chosen = [e for e in events if e.type in types]
        print(f"{title}:")
        for e in chosen:
            print(f"  #{e.seq:<3} {e.describe()}")
        if not chosen:
            print("  (none)")


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--template", help="a template with a network allowlist (default: an inline policy allowing example.com)")
    ap.add_argument("--allowed-url", default="https://example.com/")
    ap.add_argument("--denied-url", default="https://evil.example.net/")
    ap.add_argument("--max-turns", type=int, default=5)
    a = ap.parse_args()

    model = ScriptedModel(a.allowed_url, a.denied_url)
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": f"Fetch {a.allowed_url}, tell me about it, and check that the "
                                    f"sandbox refuses {a.denied_url}."}
    ]
    print(f"[user] {messages[0]['content']}")
    try:
        options: dict[str, Any] = {"template": a.template} if a.template else {"policy": INLINE_POLICY}
        with Sandbox(timeout=300, metadata={"example": "agent_loop"}, **options) as sbx:
            print(f"[sandbox] {sbx.id} ({'template ' + a.template if a.template else 'inline allowlist policy'})")
            final = None
            for _ in range(a.max_turns):
                turn = model.respond(messages)
                print(f"[model] {turn.thought}")
                messages.append({"role": "assistant", "content": turn.thought})
                if turn.final is not None:
                    final = turn.final
                    break
                print(f"[tool] run python3 {turn.filename} {' '.join(turn.args)}".rstrip())
                r = run_tool(sbx, turn)
                print(f"[tool] exit {r.exit_code} after {r.duration_ms} ms")
                messages.append({
                    "role": "tool",
                    "content": {"exit_code": r.exit_code, "stdout": r.stdout, "stderr": r.stderr},
                })
            print(f"[final] {final or 'no answer within the turn limit'}")
            print_trace(sbx, sbx.trace())
            return 0 if final else 1
    except StockadeError as e:
        print(f"agent_loop: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
