//! The tools' parameters (their JSON schemas come from these types and their doc comments)
//! and descriptions, written for a model: what the tool does, what comes back, its limits, and
//! how to recover from the usual errors.

use schemars::JsonSchema;
use serde::Deserialize;
use std::collections::BTreeMap;

const SANDBOX_ID_DOC: &str = "Only needed when this server has no sessions (MCP 2026-07-28 over HTTP): the sandbox_id of an earlier result, to keep working in that sandbox. Omit it otherwise.";

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunCommand {
    /// A shell command line, run with `/bin/sh -c` (pipes, redirects, `&&`, globs work). Give
    /// exactly one of `command` and `argv`.
    #[serde(default)]
    pub command: Option<String>,
    /// The program and its arguments, run directly without a shell, e.g. ["ls", "-la"]. Give
    /// exactly one of `command` and `argv`.
    #[serde(default)]
    pub argv: Option<Vec<String>>,
    /// Working directory: absolute, or relative to the sandbox's home (the default).
    #[serde(default)]
    pub cwd: Option<String>,
    /// Seconds before the command is killed. Default 120; at most the sandbox's limit
    /// (its policy's limits.timeout, 600 unless the operator changed it).
    #[serde(default)]
    pub timeout: Option<f64>,
    /// Text written to the command's standard input, followed by end of file. Without it,
    /// standard input is empty.
    #[serde(default)]
    pub stdin: Option<String>,
    /// Extra environment variables for this command.
    #[serde(default)]
    pub env: Option<BTreeMap<String, String>>,
    #[schemars(description = SANDBOX_ID_DOC)]
    #[serde(default)]
    pub sandbox_id: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    /// Python 3 (`python3`).
    Python,
    /// Node.js (`node`).
    Node,
    /// Bash (`bash`).
    Bash,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunCode {
    /// The language of `code`.
    pub language: Language,
    /// The program's source. It is written to a temporary file in the sandbox and run with the
    /// language's interpreter, from the sandbox's home.
    pub code: String,
    /// Arguments passed to the program.
    #[serde(default)]
    pub args: Option<Vec<String>>,
    /// Seconds before the program is killed. Default 120; at most the sandbox's limit.
    #[serde(default)]
    pub timeout: Option<f64>,
    /// Text written to the program's standard input, followed by end of file.
    #[serde(default)]
    pub stdin: Option<String>,
    #[schemars(description = SANDBOX_ID_DOC)]
    #[serde(default)]
    pub sandbox_id: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub enum Encoding {
    /// The content is the file's text.
    #[serde(rename = "utf-8")]
    Utf8,
    /// The content is base64 of the file's bytes (for binary files).
    #[serde(rename = "base64")]
    Base64,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteFile {
    /// Where to write: absolute, or relative to the sandbox's home. Missing directories are
    /// made. An existing file is replaced.
    pub path: String,
    /// The file's content (text, or base64 with encoding "base64").
    pub content: String,
    /// "utf-8" (default) or "base64".
    #[serde(default)]
    pub encoding: Option<Encoding>,
    #[schemars(description = SANDBOX_ID_DOC)]
    #[serde(default)]
    pub sandbox_id: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadFile {
    /// The file: absolute, or relative to the sandbox's home.
    pub path: String,
    /// Byte offset to start at (to read a large file in parts). Default 0.
    #[serde(default)]
    pub offset: Option<u64>,
    /// Most bytes to return: default 262144 (256 KiB), at most 1048576 (1 MiB).
    #[serde(default)]
    pub max_bytes: Option<u64>,
    #[schemars(description = SANDBOX_ID_DOC)]
    #[serde(default)]
    pub sandbox_id: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListFiles {
    /// The directory: absolute, or relative to the sandbox's home (the default).
    #[serde(default)]
    pub path: Option<String>,
    /// Levels to descend: 1 (default) lists the directory's own entries; at most 5.
    #[serde(default)]
    pub depth: Option<u32>,
    #[schemars(description = SANDBOX_ID_DOC)]
    #[serde(default)]
    pub sandbox_id: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetSandbox {
    #[schemars(
        description = "The sandbox to destroy, when this server has no sessions (MCP 2026-07-28 over HTTP). Omit it otherwise."
    )]
    #[serde(default)]
    pub sandbox_id: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GetAudit {
    /// Most entries of each kind (commands, network, files, ...) to show, the latest ones:
    /// default 50, at most 500.
    #[serde(default)]
    pub max_items: Option<usize>,
    #[schemars(description = SANDBOX_ID_DOC)]
    #[serde(default)]
    pub sandbox_id: Option<String>,
}

pub(crate) const RUN_COMMAND: &str = "Run a command in the sandbox (a throwaway Linux environment, isolated from the host) and wait for it to finish. \
Give `command` (a shell command line, run with /bin/sh -c) or `argv` (a program and its arguments, no shell). \
Returns the exit code, stdout, stderr and whether each was truncated: at most 64 KiB of each stream comes back (the first 16 KiB and the last 48 KiB, with the number of bytes left out); for more, redirect to a file and use read_file. \
The result is an error (isError) when the command did not exit 0, timed out (default 120 s, `timeout` up to the sandbox's limit), was killed by a limit (memory, output), or was refused network access; its first lines say why. \
Network: the sandbox reaches only what its policy allows; a refused name is reported as 'network: NAME is not in the allowlist (...)': do not retry it, work without it. \
Exit code 127 means the program is not installed: use another tool. Files persist between calls in the same sandbox; the working directory defaults to the sandbox's home.";

pub(crate) const RUN_CODE: &str = "Run a program written in python, node or bash: the code is written to a temporary file inside the sandbox and run with python3, node or bash from the sandbox's home, and the file is removed afterwards. \
Returns the exit code, stdout and stderr (at most 64 KiB of each; truncated flags say when more was written), like run_command, and is an error (isError) when the program fails, times out (default 120 s) or is refused network access. \
An interpreter that is not installed in the sandbox is reported with exit code 127: use another language, or check with run_command (`which python3 node bash`). \
To keep code for several runs, write it with write_file and run it with run_command.";

pub(crate) const WRITE_FILE: &str = "Write a file in the sandbox (creating missing directories; an existing file is replaced as a whole, and a failed write leaves it as it was). \
Paths are absolute or relative to the sandbox's home; the sandbox can write under its home and /tmp. Content is text, or base64 with encoding \"base64\" for binary data; at most 8 MiB. \
Returns the path, the bytes written and whether the file was created. Errors: 'path not allowed' (read-only or hidden location: write under the home or /tmp instead), 'disk is full' (the sandbox's disk limit: remove files).";

pub(crate) const READ_FILE: &str = "Read a file from the sandbox. Returns its content as text (encoding \"utf-8\"), or as base64 (encoding \"base64\") when it is binary, with its size. \
At most 256 KiB by default (max_bytes up to 1 MiB); when the file is longer, truncated is true and next_offset says where to continue (pass it as offset). \
Paths are absolute or relative to the sandbox's home. Errors: 'file not found' (check the path with list_files), 'is a directory' (use list_files), 'path not allowed' (outside what the sandbox may see).";

pub(crate) const LIST_FILES: &str = "List a directory in the sandbox (default: its home) with each entry's path, kind (file, dir, symlink), size, permissions and modification time; depth 1 (default) lists its own entries, up to 5 descends into subdirectories. \
At most 1000 entries are returned (truncated says when there were more: list a subdirectory instead). Errors: 'file not found', 'not a directory', 'path not allowed'.";

pub(crate) const RESET_SANDBOX: &str = "Destroy the sandbox (every process and file in it) and start a new, empty one with the same policy. \
Use it to start over from a clean state, or when the sandbox is stuck. Returns the new sandbox_id and the one destroyed. The destroyed sandbox's audit trail is kept on the server.";

pub(crate) const GET_AUDIT: &str = "Show the sandbox's audit trail: what ran (each command with its exit code and duration), its network activity and what the policy decided (allowed, or denied with a reason such as denied:not_in_allowlist), files changed, limits hit (memory, timeout, output, disk) and violations (syscalls or accesses the sandbox refused). \
Returns a compact text summary and the same as JSON (the latest max_items entries of each kind, default 50). Use it to check what a command actually did, or why something failed.";
