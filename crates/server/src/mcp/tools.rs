//! The tools' handlers: arguments checked before any sandbox is made, the sandbox resolved
//! ([`super::sandboxes`]), the work done, the result or the error a model can act on. Their
//! parameters and descriptions are in [`super::params`].

use super::exec::{self, CommandRequest};
use super::files;
use super::params::*;
use super::{
    Current, DEFAULT_COMMAND_TIMEOUT, DEFAULT_READ_BYTES, MAX_LIST_ENTRIES, MAX_READ_BYTES,
    MAX_WRITE_BYTES, StockadeMcp, ToolError, error_result, error_with_note, ok_result,
};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::CallToolResult;
use rmcp::service::RequestContext;
use rmcp::{RoleServer, tool, tool_router};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;

/// A command's timeout: default 120 s (or the policy's limit if lower), at most the limit.
fn timeout(asked: Option<f64>, max: Duration) -> Result<Duration, ToolError> {
    match asked {
        None => Ok(DEFAULT_COMMAND_TIMEOUT.min(max)),
        Some(t) if !t.is_finite() || t <= 0.0 => Err(ToolError::new(format!(
            "timeout {t}: give seconds, more than 0 (default 120)"
        ))),
        Some(t) if t > max.as_secs_f64() => Err(ToolError::new(format!(
            "timeout {t} s is over this sandbox's limit of {} s (its policy's limits.timeout): pass at most {}",
            max.as_secs(),
            max.as_secs()
        ))),
        Some(t) => Ok(Duration::from_secs_f64(t)),
    }
}

fn env_list(env: Option<BTreeMap<String, String>>) -> Vec<(String, String)> {
    env.unwrap_or_default().into_iter().collect()
}

/// Sandbox-dependent checks of a command request, once the sandbox is known.
fn command_request(
    c: &Current,
    argv: Vec<String>,
    cwd: Option<String>,
    t: Option<f64>,
    stdin: Option<String>,
    env: Vec<(String, String)>,
) -> Result<CommandRequest, ToolError> {
    let cwd = match cwd {
        Some(d) => Some(files::resolve(c.session().home(), &d)?),
        None => None,
    };
    Ok(CommandRequest {
        argv,
        cwd,
        timeout: timeout(t, c.max_timeout)?,
        stdin,
        env,
    })
}

#[tool_router(vis = "pub(crate)")]
impl StockadeMcp {
    #[tool(
        name = "run_command",
        description = RUN_COMMAND,
        annotations(title = "Run a command in the sandbox", open_world_hint = true)
    )]
    async fn run_command(
        &self,
        Parameters(p): Parameters<RunCommand>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let _busy = self.busy();
        let argv = match (p.command, p.argv) {
            (Some(c), None) if !c.trim().is_empty() => vec!["/bin/sh".into(), "-c".into(), c],
            (None, Some(a)) if a.first().is_some_and(|x| !x.is_empty()) => a,
            (Some(_), Some(_)) => {
                return error_result(
                    ToolError::new(
                        "give either `command` (a shell command line) or `argv` (a list), not both",
                    ),
                    None,
                );
            }
            _ => {
                return error_result(
                    ToolError::new(
                        "nothing to run: give `command` (a shell command line, e.g. \"ls -la\") or `argv` (e.g. [\"ls\", \"-la\"])",
                    ),
                    None,
                );
            }
        };
        let (c, note) = match self.sandbox(&ctx, p.sandbox_id.as_deref()).await {
            Ok(x) => x,
            Err(e) => return error_result(e, None),
        };
        let req = match command_request(&c, argv, p.cwd, p.timeout, p.stdin, env_list(p.env)) {
            Ok(r) => r,
            Err(e) => return error_with_note(e, c.id(), note),
        };
        self.hold(&c, req.timeout);
        match exec::run(&c, req, ctx.ct.cancelled()).await {
            Ok(r) => exec::report(&c, r, note, BTreeMap::new()),
            Err(e) => error_with_note(e, c.id(), note),
        }
    }

    #[tool(
        name = "run_code",
        description = RUN_CODE,
        annotations(title = "Run code in the sandbox", open_world_hint = true)
    )]
    async fn run_code(
        &self,
        Parameters(p): Parameters<RunCode>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let _busy = self.busy();
        let (interp, ext, lang) = match p.language {
            Language::Python => ("python3", "py", "python"),
            Language::Node => ("node", "js", "node"),
            Language::Bash => ("bash", "sh", "bash"),
        };
        let (c, note) = match self.sandbox(&ctx, p.sandbox_id.as_deref()).await {
            Ok(x) => x,
            Err(e) => return error_result(e, None),
        };
        let s = c.session();
        let nonce = match getrandom::u64() {
            Ok(n) => n,
            Err(e) => return error_result(ToolError::new(format!("randomness: {e}")), None),
        };
        let mut path = format!("/tmp/.stockade-code-{nonce:016x}.{ext}");
        if let Err(first) = files::write(s, &path, p.code.as_bytes(), false).await {
            // No writable /tmp in this sandbox: its home, then.
            path = format!("{}/.stockade-code-{nonce:016x}.{ext}", s.home());
            if files::write(s, &path, p.code.as_bytes(), false)
                .await
                .is_err()
            {
                return error_result(
                    ToolError::new(format!(
                        "could not write the code into the sandbox: {}",
                        first.message
                    )),
                    Some(c.id()),
                );
            }
        }
        let mut argv = vec![interp.to_string(), path.clone()];
        argv.extend(p.args.unwrap_or_default());
        let req = match command_request(&c, argv, None, p.timeout, p.stdin, Vec::new()) {
            Ok(r) => r,
            Err(e) => {
                let _ = s.fs(stockade_runtime::session::FsOp::Remove { path }).await;
                return error_with_note(e, c.id(), note);
            }
        };
        self.hold(&c, req.timeout);
        let r = exec::run(&c, req, ctx.ct.cancelled()).await;
        let _ = s.fs(stockade_runtime::session::FsOp::Remove { path }).await;
        match r {
            Ok(r) => exec::report(
                &c,
                r,
                note,
                BTreeMap::from([("language", json!(lang)), ("interpreter", json!(interp))]),
            ),
            Err(mut e) if e.data["exit_code"] == 127 => {
                e.message = format!(
                    "{interp} is not installed in this sandbox (exit code 127), so {lang} code cannot run here: use another language (python, node or bash), or check what exists with run_command `which python3 node bash`"
                );
                error_with_note(e, c.id(), note)
            }
            Err(e) => error_with_note(e, c.id(), note),
        }
    }

    #[tool(
        name = "write_file",
        description = WRITE_FILE,
        annotations(title = "Write a file in the sandbox", destructive_hint = true)
    )]
    async fn write_file(
        &self,
        Parameters(p): Parameters<WriteFile>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let _busy = self.busy();
        let bytes = match p.encoding {
            None | Some(Encoding::Utf8) => p.content.into_bytes(),
            Some(Encoding::Base64) => match B64.decode(p.content.trim()) {
                Ok(b) => b,
                Err(e) => {
                    return error_result(
                        ToolError::new(format!(
                            "content is not valid base64 ({e}); send text with encoding \"utf-8\" (the default) or standard base64"
                        )),
                        None,
                    );
                }
            },
        };
        if bytes.len() > MAX_WRITE_BYTES {
            return error_result(
                ToolError::new(format!(
                    "the content is {} bytes; write_file takes at most {} MiB: write it in parts (e.g. several files joined with run_command cat) or generate it inside the sandbox",
                    bytes.len(),
                    MAX_WRITE_BYTES / (1024 * 1024)
                )),
                None,
            );
        }
        let (c, note) = match self.sandbox(&ctx, p.sandbox_id.as_deref()).await {
            Ok(x) => x,
            Err(e) => return error_result(e, None),
        };
        let path = match files::resolve(c.session().home(), &p.path) {
            Ok(x) => x,
            Err(e) => return error_with_note(e, c.id(), note),
        };
        match files::write(c.session(), &path, &bytes, true).await {
            Ok(created) => {
                let what = if created { "created" } else { "replaced" };
                let mut data = json!({
                    "sandbox_id": c.id(), "path": path, "bytes": bytes.len(), "created": created,
                });
                let mut text = format!("{what} {path} ({} bytes)", bytes.len());
                if let Some(n) = note {
                    text = format!("note: {n}\n{text}");
                    data["note"] = json!(n);
                }
                ok_result(text, data)
            }
            Err(e) => error_with_note(e, c.id(), note),
        }
    }

    #[tool(
        name = "read_file",
        description = READ_FILE,
        annotations(title = "Read a file from the sandbox", read_only_hint = true)
    )]
    async fn read_file(
        &self,
        Parameters(p): Parameters<ReadFile>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let _busy = self.busy();
        let max = p
            .max_bytes
            .unwrap_or(DEFAULT_READ_BYTES)
            .clamp(1, MAX_READ_BYTES);
        let (c, note) = match self.sandbox(&ctx, p.sandbox_id.as_deref()).await {
            Ok(x) => x,
            Err(e) => return error_result(e, None),
        };
        let path = match files::resolve(c.session().home(), &p.path) {
            Ok(x) => x,
            Err(e) => return error_with_note(e, c.id(), note),
        };
        let offset = p.offset.unwrap_or(0);
        let out = match files::read(c.session(), &path, offset, max).await {
            Ok(o) => o,
            Err(e) => return error_with_note(e, c.id(), note),
        };
        let (encoding, content, used) = files::encode(&out.bytes, out.truncated);
        let truncated = out.truncated || used < out.bytes.len();
        let next = out.offset + used as u64;
        let mut data = json!({
            "sandbox_id": c.id(), "path": path, "size": out.size, "offset": out.offset,
            "bytes": used, "encoding": encoding, "content": content, "truncated": truncated,
        });
        if truncated {
            data["next_offset"] = json!(next);
        }
        let mut head = if truncated {
            format!(
                "{path}: {} bytes, showing bytes {}-{} ({encoding}); pass offset={next} for the rest\n",
                out.size, out.offset, next
            )
        } else if encoding == "base64" {
            format!("{path}: {} bytes of binary data, as base64:\n", out.size)
        } else {
            String::new()
        };
        if let Some(n) = note {
            head = format!("note: {n}\n{head}");
            data["note"] = json!(n);
        }
        ok_result(format!("{head}{content}"), data)
    }

    #[tool(
        name = "list_files",
        description = LIST_FILES,
        annotations(title = "List files in the sandbox", read_only_hint = true)
    )]
    async fn list_files(
        &self,
        Parameters(p): Parameters<ListFiles>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let _busy = self.busy();
        let depth = p.depth.unwrap_or(1).clamp(1, 5);
        let (c, note) = match self.sandbox(&ctx, p.sandbox_id.as_deref()).await {
            Ok(x) => x,
            Err(e) => return error_result(e, None),
        };
        let path = match files::resolve(c.session().home(), p.path.as_deref().unwrap_or("~")) {
            Ok(x) => x,
            Err(e) => return error_with_note(e, c.id(), note),
        };
        let (mut entries, mut truncated) = match files::list(c.session(), &path, depth).await {
            Ok(x) => x,
            Err(e) => return error_with_note(e, c.id(), note),
        };
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        if entries.len() > MAX_LIST_ENTRIES {
            entries.truncate(MAX_LIST_ENTRIES);
            truncated = true;
        }
        let mut text = match &note {
            Some(n) => format!("note: {n}\n"),
            None => String::new(),
        };
        text.push_str(&format!("{path}: {} entries", entries.len()));
        if truncated {
            text.push_str(" (truncated: list a subdirectory for the rest)");
        }
        text.push('\n');
        for e in &entries {
            let j = files::entry_json(e);
            let kind = j["kind"].as_str().unwrap_or("");
            let suffix = match kind {
                "dir" => "/".to_string(),
                "symlink" => format!(" -> {}", e.symlink_target.as_deref().unwrap_or("?")),
                _ => format!("  {} bytes", e.size),
            };
            text.push_str(&format!("{kind:<7} {}{suffix}\n", e.path));
        }
        let mut data = json!({
            "sandbox_id": c.id(), "path": path, "depth": depth, "truncated": truncated,
            "entries": entries.iter().map(files::entry_json).collect::<Vec<_>>(),
        });
        if let Some(n) = note {
            data["note"] = json!(n);
        }
        ok_result(text, data)
    }

    #[tool(
        name = "reset_sandbox",
        description = RESET_SANDBOX,
        annotations(title = "Start over in a new sandbox", destructive_hint = true)
    )]
    async fn reset_sandbox(
        &self,
        Parameters(p): Parameters<ResetSandbox>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let _busy = self.busy();
        match self.reset(&ctx, p.sandbox_id.as_deref()).await {
            Ok((old, c)) => {
                let text = match &old {
                    Some(o) => format!(
                        "destroyed sandbox {o}; started a new, empty sandbox {}",
                        c.id()
                    ),
                    None => format!("started a new, empty sandbox {}", c.id()),
                };
                ok_result(text, json!({ "sandbox_id": c.id(), "destroyed": old }))
            }
            Err(e) => error_result(e, None),
        }
    }

    #[tool(
        name = "get_audit",
        description = GET_AUDIT,
        annotations(title = "What ran and what it touched", read_only_hint = true)
    )]
    async fn get_audit(
        &self,
        Parameters(p): Parameters<GetAudit>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let _busy = self.busy();
        let items = p
            .max_items
            .unwrap_or(super::audit::DEFAULT_ITEMS)
            .min(super::audit::MAX_ITEMS);
        let c = match self.peek(&ctx, p.sandbox_id.as_deref()).await {
            Ok(Some(c)) => c,
            Ok(None) if !self.has_session() => {
                return error_result(
                    ToolError::new(
                        "this server has no sessions (MCP 2026-07-28 over HTTP): pass the sandbox_id of an earlier result to see its audit trail",
                    ),
                    None,
                );
            }
            Ok(None) => {
                let prev = self.previous();
                return ok_result(
                    "no sandbox yet in this session: nothing has run (the first tool call that needs one starts it)".into(),
                    json!({ "sandbox_id": null, "previous_sandboxes": prev }),
                );
            }
            Err(e) => return error_result(e, None),
        };
        if c.session().audit_log().is_none() {
            return error_result(
                ToolError::new(
                    "this sandbox's policy turned its audit trail off (audit.enabled = false)",
                ),
                Some(c.id()),
            );
        }
        let events = exec::events_since(c.session(), 0).await;
        let (mut text, mut data) = super::audit::summarize(c.id(), &events, items);
        let hint = self.trail_hint(&c);
        text.push_str(&hint);
        text.push('\n');
        data["trail"] = json!(hint);
        let prev = self.previous();
        if !prev.is_empty() {
            text.push_str(&format!(
                "earlier sandboxes of this session: {}\n",
                prev.join(", ")
            ));
            data["previous_sandboxes"] = json!(prev);
        }
        ok_result(text, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts() {
        let max = Duration::from_secs(600);
        assert_eq!(timeout(None, max).unwrap(), Duration::from_secs(120));
        assert_eq!(
            timeout(None, Duration::from_secs(30)).unwrap(),
            Duration::from_secs(30)
        );
        assert_eq!(
            timeout(Some(1.5), max).unwrap(),
            Duration::from_millis(1500)
        );
        assert!(timeout(Some(0.0), max).is_err());
        assert!(timeout(Some(f64::NAN), max).is_err());
        let e = timeout(Some(601.0), max).unwrap_err();
        assert!(e.message.contains("at most 600"), "{}", e.message);
    }

    #[test]
    fn schemas_describe_every_field() {
        let s = serde_json::to_value(schemars::schema_for!(RunCommand)).unwrap();
        for f in [
            "command",
            "argv",
            "cwd",
            "timeout",
            "stdin",
            "env",
            "sandbox_id",
        ] {
            assert!(
                s["properties"][f]["description"]
                    .as_str()
                    .is_some_and(|d| d.len() > 20),
                "{f}: {s}"
            );
        }
        let s = serde_json::to_value(schemars::schema_for!(RunCode)).unwrap();
        let mut req: Vec<&str> = s["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        req.sort();
        assert_eq!(req, ["code", "language"]);
    }
}
