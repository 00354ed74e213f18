//! Files for the tools: written through a temporary file renamed into place (a failed write
//! leaves the target as it was), read through a descriptor the agent opened inside the sandbox
//! (text, or base64 when the bytes are not UTF-8), listed. Every path is resolved by the agent
//! inside the sandbox, under its walls, as for the native API.

use super::ToolError;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use stockade_runtime::session::{Entry, EntryKind, FsOp, FsReply, Session, SessionError};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

/// An absolute path inside: absolute as given, `~`/relative under the sandbox's home.
pub fn resolve(home: &str, p: &str) -> Result<String, ToolError> {
    if p.is_empty() {
        return Err(ToolError::new(
            "path is empty: give an absolute path inside the sandbox, or one relative to its home",
        ));
    }
    if p.contains('\0') {
        return Err(ToolError::new("path contains a NUL byte"));
    }
    if p.len() > 4096 {
        return Err(ToolError::new("path is longer than 4096 bytes"));
    }
    let home = home.trim_end_matches('/');
    Ok(if p.starts_with('/') {
        p.to_string()
    } else if p == "~" || p == "." {
        home.to_string()
    } else if let Some(rest) = p.strip_prefix("~/").or_else(|| p.strip_prefix("./")) {
        format!("{home}/{rest}")
    } else {
        format!("{home}/{p}")
    })
}

/// A failed file operation, said so a model can act on it.
pub fn fs_error(path: &str, home: &str, e: SessionError) -> ToolError {
    let (errno, detail) = match e {
        SessionError::Fs { errno, message } => (errno, message),
        SessionError::Invalid(m) => {
            return ToolError::new(format!("path not allowed: {path}: {m}"));
        }
        SessionError::Gone => {
            return ToolError::new(
                "the sandbox has ended (reset, TTL or a limit); call again to start a new one",
            );
        }
        SessionError::ExecRefused { message, .. } => return ToolError::new(message),
        SessionError::Protocol(m) => {
            tracing::error!(error = %m, "mcp: agent protocol");
            return ToolError::new(
                "the sandbox's agent misbehaved; reset_sandbox starts a new sandbox",
            );
        }
    };
    // The agent's message may name a temporary file: say what the errno means instead.
    let detail = match errno {
        libc::EACCES => "permission denied".to_string(),
        libc::EPERM => "operation not permitted".to_string(),
        libc::EROFS => "read-only file system".to_string(),
        _ => detail,
    };
    let message = match errno {
        libc::ENOENT => format!(
            "file not found: {path} does not exist in the sandbox (relative paths are under the home {home}; list_files shows what is there)"
        ),
        libc::EACCES | libc::EPERM | libc::EROFS => format!(
            "path not allowed: {path} ({detail}). The sandbox can write under its home {home} and /tmp; the rest of its filesystem is read-only or hidden, and /proc and the host are out of reach"
        ),
        libc::ELOOP => format!(
            "path not allowed: {path} ({detail}): a symbolic link loop, or a link the sandbox does not follow (into /proc)"
        ),
        libc::EISDIR => format!("{path} is a directory (use list_files to see what is in it)"),
        libc::ENOTDIR => format!("{path}: a part of the path is not a directory ({detail})"),
        libc::ENOSPC | libc::EDQUOT => format!(
            "the sandbox's disk is full (its policy's limits.disk) while writing {path}: remove files you do not need (run_command rm ...) or write less; nothing was written"
        ),
        libc::EFBIG => format!("{path}: too large for the sandbox ({detail})"),
        libc::ENAMETOOLONG => format!("{path}: a name in the path is too long"),
        _ => format!("{path}: {detail}"),
    };
    ToolError {
        message,
        data: json!({ "path": path, "errno": errno }),
    }
}

/// Writes `bytes` to `path` (missing parents made); `record`: a `file.changed` event in the
/// trail. Returns whether the file was created.
pub async fn write(s: &Session, path: &str, bytes: &[u8], record: bool) -> Result<bool, ToolError> {
    let home = s.home().to_string();
    let err = |e| fs_error(path, &home, e);
    let Some((parent, name)) = path.rsplit_once('/') else {
        return Err(ToolError::new("path must be absolute"));
    };
    if name.is_empty() || name == "." || name == ".." {
        return Err(ToolError::new(format!(
            "{path}: name a file, not a directory"
        )));
    }
    let existed = match s
        .fs(FsOp::Stat {
            path: path.to_string(),
        })
        .await
    {
        Ok(FsReply::Entry { entry }) if entry.kind == EntryKind::Dir => {
            return Err(ToolError::new(format!(
                "{path} is a directory: name a file inside it"
            )));
        }
        Ok(_) => true,
        Err(SessionError::Fs { errno, .. }) if errno == libc::ENOENT => false,
        Err(SessionError::Fs { errno, .. }) if errno == libc::ENOTDIR => {
            return Err(ToolError::new(format!(
                "{path}: a part of the path is a file, not a directory"
            )));
        }
        Err(e) => return Err(err(e)),
    };
    let nonce = getrandom::u64().map_err(|e| ToolError::new(format!("randomness: {e}")))?;
    let parent = if parent.is_empty() { "" } else { parent };
    let tmp = format!("{parent}/.{name}.mcp-{nonce:016x}");
    let file = s.open_write(&tmp).await.map_err(err)?;
    let mut f = tokio::fs::File::from_std(file);
    let written = async {
        f.write_all(bytes).await?;
        f.flush().await
    }
    .await;
    // Every byte is in the file, or the error from inside says why not (above the container
    // level a full disk inside reaches this side as a broken pipe; its ENOSPC comes from here).
    let finished = s.finish_write(f.into_std().await).await;
    let failed = match (written, finished) {
        (Ok(()), Ok(())) => None,
        (_, Err(e @ SessionError::Fs { .. })) => Some(e),
        (Err(e), _) => Some(SessionError::Fs {
            errno: e.raw_os_error().unwrap_or(libc::EIO),
            message: e.to_string(),
        }),
        (Ok(()), Err(e)) => Some(e),
    };
    if let Some(e) = failed {
        let _ = s.fs(FsOp::Remove { path: tmp }).await;
        return Err(err(e));
    }
    match s
        .fs(FsOp::Move {
            from: tmp.clone(),
            to: path.to_string(),
        })
        .await
    {
        Ok(_) => {}
        Err(e) => {
            let _ = s.fs(FsOp::Remove { path: tmp }).await;
            return Err(err(e));
        }
    }
    if record {
        s.record_file_written(path, bytes.len() as u64, !existed);
    }
    Ok(!existed)
}

/// What `read_file` returns.
pub struct ReadOut {
    pub size: u64,
    pub offset: u64,
    pub bytes: Vec<u8>,
    pub truncated: bool,
}

/// Reads at most `max` bytes of a regular file from `offset`.
pub async fn read(s: &Session, path: &str, offset: u64, max: u64) -> Result<ReadOut, ToolError> {
    let home = s.home().to_string();
    let (entry, file) = match s.open_read(path).await {
        Ok(x) => x,
        Err(e) => {
            // Say what the path is when it is not a regular file (the agent refuses those).
            if let Ok(FsReply::Entry { entry }) = s
                .fs(FsOp::Stat {
                    path: path.to_string(),
                })
                .await
            {
                match entry.kind {
                    EntryKind::Dir => {
                        return Err(ToolError::new(format!(
                            "{path} is a directory (use list_files to see what is in it)"
                        )));
                    }
                    EntryKind::Other => {
                        return Err(ToolError::new(format!(
                            "{path} is not a regular file (a device, FIFO or socket): read_file reads regular files only"
                        )));
                    }
                    EntryKind::File | EntryKind::Symlink => {}
                }
            }
            return Err(fs_error(path, &home, e));
        }
    };
    let mut f = tokio::fs::File::from_std(file);
    let size = entry.size;
    if offset > 0 {
        f.seek(std::io::SeekFrom::Start(offset))
            .await
            .map_err(|e| ToolError::new(format!("{path}: seeking to {offset}: {e}")))?;
    }
    let mut bytes = Vec::new();
    // One more than asked for says whether there is more.
    (&mut f)
        .take(max + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| ToolError::new(format!("{path}: reading: {e}")))?;
    let truncated = bytes.len() as u64 > max;
    bytes.truncate(usize::try_from(max).unwrap_or(usize::MAX));
    Ok(ReadOut {
        size,
        offset,
        bytes,
        truncated,
    })
}

/// Text when the bytes are UTF-8 without NUL (an incomplete character cut at the end of a
/// chunk is left for the next read), else base64. Returns (encoding, content, bytes used).
pub fn encode(bytes: &[u8], cut: bool) -> (&'static str, String, usize) {
    let text_end = match std::str::from_utf8(bytes) {
        Ok(_) => Some(bytes.len()),
        // Only an incomplete last character, and only when the read was cut there.
        Err(e) if cut && e.error_len().is_none() && bytes.len() - e.valid_up_to() < 4 => {
            Some(e.valid_up_to())
        }
        Err(_) => None,
    };
    match text_end {
        Some(n) if !bytes[..n].contains(&0) => (
            "utf-8",
            String::from_utf8_lossy(&bytes[..n]).into_owned(),
            n,
        ),
        _ => ("base64", B64.encode(bytes), bytes.len()),
    }
}

/// Lists `path` `depth` levels down.
pub async fn list(s: &Session, path: &str, depth: u32) -> Result<(Vec<Entry>, bool), ToolError> {
    let home = s.home().to_string();
    match s
        .fs(FsOp::List {
            path: path.to_string(),
            depth,
        })
        .await
    {
        Ok(FsReply::List { entries, truncated }) => Ok((entries, truncated)),
        Ok(_) => Err(ToolError::new("unexpected answer from the sandbox's agent")),
        Err(SessionError::Fs { errno, .. }) if errno == libc::ENOTDIR => Err(ToolError::new(
            format!("{path} is a file, not a directory (read_file reads it)"),
        )),
        Err(e) => Err(fs_error(path, &home, e)),
    }
}

/// One entry as shown to a model.
pub fn entry_json(e: &Entry) -> Value {
    let kind = match e.kind {
        EntryKind::File => "file",
        EntryKind::Dir => "dir",
        EntryKind::Symlink => "symlink",
        EntryKind::Other => "other",
    };
    let mut v = json!({
        "path": e.path,
        "kind": kind,
        "size": e.size,
        "mode": format!("{:o}", e.mode),
        "modified": crate::service::rfc3339(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(e.mtime).unwrap_or(0))
        ),
    });
    if let Some(t) = &e.symlink_target {
        v["symlink_target"] = json!(t);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_under_home() {
        let h = "/home/sandbox";
        assert_eq!(resolve(h, "a.txt").unwrap(), "/home/sandbox/a.txt");
        assert_eq!(resolve(h, "./a/b").unwrap(), "/home/sandbox/a/b");
        assert_eq!(resolve(h, "~/x").unwrap(), "/home/sandbox/x");
        assert_eq!(resolve(h, "~").unwrap(), "/home/sandbox");
        assert_eq!(resolve(h, "/etc/passwd").unwrap(), "/etc/passwd");
        assert!(resolve(h, "").is_err());
        assert!(resolve(h, "a\0b").is_err());
    }

    #[test]
    fn text_or_base64() {
        assert_eq!(encode(b"hi\n", false), ("utf-8", "hi\n".to_string(), 3));
        let (enc, _, _) = encode(b"a\0b", false);
        assert_eq!(enc, "base64");
        let (enc, c, _) = encode(&[0xff, 0xfe], false);
        assert_eq!((enc, c.as_str()), ("base64", "//4="));
        // "é" is 2 bytes: a chunk cut after its first byte stays text, one byte short.
        let (enc, c, n) = encode("aé".as_bytes()[..2].as_ref(), true);
        assert_eq!((enc, c.as_str(), n), ("utf-8", "a", 1));
        // Not cut there: the same bytes are not text.
        assert_eq!(encode("aé".as_bytes()[..2].as_ref(), false).0, "base64");
    }
}
