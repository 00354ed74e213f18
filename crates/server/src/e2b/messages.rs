//! envd's messages (`process/process.proto`, `filesystem/filesystem.proto`) in their protobuf
//! JSON form: lowerCamelCase names (the proto names are accepted too), oneofs as optional
//! fields of which exactly one must be set, `bytes` as base64, enums by name, 64-bit integers
//! as strings. Unknown fields are ignored, as envd's own decoder does.

use super::connect::RpcError;
use super::pbjson;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

// ---- process.Process ------------------------------------------------------------------------

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct ProcessConfig {
    #[serde(default)]
    pub cmd: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub envs: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize)]
pub struct PtySizeMsg {
    #[serde(default, deserialize_with = "pbjson::u32_any")]
    pub cols: u32,
    #[serde(default, deserialize_with = "pbjson::u32_any")]
    pub rows: u32,
}

#[derive(Clone, Copy, Debug, Default, Deserialize)]
pub struct Pty {
    #[serde(default)]
    pub size: Option<PtySizeMsg>,
}

#[derive(Debug, Default, Deserialize)]
pub struct StartRequest {
    #[serde(default)]
    pub process: Option<ProcessConfig>,
    #[serde(default)]
    pub pty: Option<Pty>,
    #[serde(default)]
    pub tag: Option<String>,
    /// Absent means true (envd's backwards compatibility: older SDKs always had stdin).
    #[serde(default)]
    pub stdin: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct ProcessSelectorMsg {
    #[serde(default, deserialize_with = "pbjson::opt_u32_any")]
    pub pid: Option<u32>,
    #[serde(default)]
    pub tag: Option<String>,
}

/// Which process a call is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    Pid(u32),
    Tag(String),
}

impl Selector {
    pub fn from_msg(m: Option<ProcessSelectorMsg>) -> Result<Selector, RpcError> {
        match m.map(|m| (m.pid, m.tag)) {
            Some((Some(pid), None)) => Ok(Selector::Pid(pid)),
            Some((None, Some(tag))) => Ok(Selector::Tag(tag)),
            Some((Some(_), Some(_))) => Err(RpcError::invalid(
                "process selector: give either pid or tag, not both",
            )),
            _ => Err(RpcError::invalid(
                "process selector: pid or tag is required",
            )),
        }
    }
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Selector::Pid(p) => write!(f, "process with pid {p}"),
            Selector::Tag(t) => write!(f, "process with tag {t:?}"),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct ConnectRequest {
    #[serde(default)]
    pub process: Option<ProcessSelectorMsg>,
}

#[derive(Debug, Default, Deserialize)]
pub struct UpdateRequest {
    #[serde(default)]
    pub process: Option<ProcessSelectorMsg>,
    #[serde(default)]
    pub pty: Option<Pty>,
}

#[derive(Debug, Default, Deserialize)]
pub struct ProcessInputMsg {
    #[serde(default, deserialize_with = "opt_b64")]
    pub stdin: Option<Vec<u8>>,
    #[serde(default, deserialize_with = "opt_b64")]
    pub pty: Option<Vec<u8>>,
}

fn opt_b64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
    pbjson::bytes_b64(d).map(Some)
}

/// Input for a process: its stdin pipe or its terminal.
#[derive(Debug, PartialEq, Eq)]
pub enum Input {
    Stdin(Vec<u8>),
    Pty(Vec<u8>),
}

impl Input {
    pub fn from_msg(m: Option<ProcessInputMsg>) -> Result<Input, RpcError> {
        match m.map(|m| (m.stdin, m.pty)) {
            Some((Some(d), None)) => Ok(Input::Stdin(d)),
            Some((None, Some(d))) => Ok(Input::Pty(d)),
            Some((Some(_), Some(_))) => Err(RpcError::invalid(
                "process input: give either stdin or pty, not both",
            )),
            _ => Err(RpcError::invalid("process input: stdin or pty is required")),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct SendInputRequest {
    #[serde(default)]
    pub process: Option<ProcessSelectorMsg>,
    #[serde(default)]
    pub input: Option<ProcessInputMsg>,
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamInputStart {
    #[serde(default)]
    pub process: Option<ProcessSelectorMsg>,
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamInputData {
    #[serde(default)]
    pub input: Option<ProcessInputMsg>,
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamInputRequest {
    #[serde(default)]
    pub start: Option<StreamInputStart>,
    #[serde(default)]
    pub data: Option<StreamInputData>,
    #[serde(default)]
    pub keepalive: Option<serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
pub struct SendSignalRequest {
    #[serde(default)]
    pub process: Option<ProcessSelectorMsg>,
    #[serde(default)]
    pub signal: serde_json::Value,
}

/// `process.Signal`: the only two envd accepts.
pub fn signal_number(v: &serde_json::Value) -> Result<i32, RpcError> {
    const NAMES: &[(&str, i32)] = &[
        ("SIGNAL_UNSPECIFIED", 0),
        ("SIGNAL_SIGTERM", 15),
        ("SIGNAL_SIGKILL", 9),
    ];
    match pbjson::enum_value(v, NAMES) {
        Some(9) => Ok(libc::SIGKILL),
        Some(15) => Ok(libc::SIGTERM),
        _ => Err(RpcError::new(
            super::connect::Code::Unimplemented,
            format!("invalid signal: {v} (SIGNAL_SIGTERM and SIGNAL_SIGKILL are supported)"),
        )),
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct CloseStdinRequest {
    #[serde(default)]
    pub process: Option<ProcessSelectorMsg>,
}

#[derive(Debug, Serialize)]
pub struct ProcessInfo {
    pub config: ProcessConfig,
    pub pid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ListResponse {
    pub processes: Vec<ProcessInfo>,
}

/// `process.ProcessEvent.EndEvent`, as envd fills it from Go's `os.ProcessState`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndEvent {
    pub exit_code: i32,
    pub exited: bool,
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One event of a process stream (the `StartResponse`/`ConnectResponse` body).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProcessEvent {
    Start { pid: u32 },
    Stdout(bytes::Bytes),
    Stderr(bytes::Bytes),
    Pty(bytes::Bytes),
    End(EndEvent),
    Keepalive,
}

impl ProcessEvent {
    /// `{"event": {...}}`.
    pub fn to_json(&self) -> serde_json::Value {
        use base64::Engine;
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let inner = match self {
            ProcessEvent::Start { pid } => serde_json::json!({ "start": { "pid": pid } }),
            ProcessEvent::Stdout(b) => serde_json::json!({ "data": { "stdout": b64(b) } }),
            ProcessEvent::Stderr(b) => serde_json::json!({ "data": { "stderr": b64(b) } }),
            ProcessEvent::Pty(b) => serde_json::json!({ "data": { "pty": b64(b) } }),
            ProcessEvent::End(e) => serde_json::json!({ "end": e }),
            ProcessEvent::Keepalive => serde_json::json!({ "keepalive": {} }),
        };
        serde_json::json!({ "event": inner })
    }
}

// ---- filesystem.Filesystem ------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
pub struct PathRequest {
    #[serde(default)]
    pub path: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct MoveRequest {
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub destination: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct ListDirRequest {
    #[serde(default)]
    pub path: String,
    #[serde(default, deserialize_with = "pbjson::u32_any")]
    pub depth: u32,
}

/// `WatchDirRequest` and `CreateWatcherRequest` (the same fields).
#[derive(Debug, Default, Deserialize)]
pub struct WatchRequest {
    #[serde(default)]
    pub path: String,
    #[serde(default)]
    pub recursive: bool,
    #[serde(default, alias = "include_entry", rename = "includeEntry")]
    pub include_entry: bool,
    #[serde(default, alias = "allow_network_mounts", rename = "allowNetworkMounts")]
    pub allow_network_mounts: bool,
}

#[derive(Debug, Default, Deserialize)]
pub struct WatcherIdRequest {
    #[serde(default, alias = "watcher_id", rename = "watcherId")]
    pub watcher_id: String,
}

/// `filesystem.EntryInfo`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EntryInfo {
    pub name: String,
    /// `FILE_TYPE_FILE`, `FILE_TYPE_DIRECTORY`, `FILE_TYPE_SYMLINK` or `FILE_TYPE_UNSPECIFIED`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub path: String,
    #[serde(serialize_with = "pbjson::ser_i64_str")]
    pub size: i64,
    pub mode: u32,
    pub permissions: String,
    pub owner: String,
    pub group: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub modified_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub symlink_target: Option<String>,
    pub is_symlink: bool,
}

/// `filesystem.EventType` names.
pub fn event_type(op: stockade_runtime::session::WatchOp) -> &'static str {
    use stockade_runtime::session::WatchOp;
    match op {
        WatchOp::Create => "EVENT_TYPE_CREATE",
        WatchOp::Write => "EVENT_TYPE_WRITE",
        WatchOp::Remove => "EVENT_TYPE_REMOVE",
        WatchOp::Rename => "EVENT_TYPE_RENAME",
        WatchOp::Chmod => "EVENT_TYPE_CHMOD",
    }
}

/// `filesystem.FilesystemEvent`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FilesystemEvent {
    /// The path relative to the watched directory.
    pub name: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entry: Option<EntryInfo>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_request_as_the_sdk_sends_it() {
        let r: StartRequest = serde_json::from_str(
            r#"{"process":{"cmd":"/bin/bash","args":["-l","-c","echo hi"],"envs":{"A":"b"},"cwd":"/x"},"stdin":false,"tag":"t"}"#,
        )
        .unwrap();
        let p = r.process.unwrap();
        assert_eq!(p.args, vec!["-l", "-c", "echo hi"]);
        assert_eq!(p.envs["A"], "b");
        assert_eq!(r.stdin, Some(false));
        let r: StartRequest = serde_json::from_str(
            r#"{"process":{"cmd":"/bin/bash"},"pty":{"size":{"cols":80,"rows":"24"}}}"#,
        )
        .unwrap();
        let size = r.pty.unwrap().size.unwrap();
        assert_eq!((size.cols, size.rows), (80, 24));
        assert_eq!(r.stdin, None);
    }

    #[test]
    fn selectors_and_inputs() {
        let r: SendInputRequest =
            serde_json::from_str(r#"{"process":{"pid":12},"input":{"stdin":"aGk="}}"#).unwrap();
        assert_eq!(Selector::from_msg(r.process).unwrap(), Selector::Pid(12));
        assert_eq!(
            Input::from_msg(r.input).unwrap(),
            Input::Stdin(b"hi".to_vec())
        );
        let r: SendInputRequest = serde_json::from_str(r#"{"process":{}}"#).unwrap();
        assert!(Selector::from_msg(r.process).is_err());
        assert!(Input::from_msg(r.input).is_err());
        let r: SendSignalRequest =
            serde_json::from_str(r#"{"process":{"tag":"x"},"signal":"SIGNAL_SIGKILL"}"#).unwrap();
        assert_eq!(signal_number(&r.signal).unwrap(), libc::SIGKILL);
        assert!(signal_number(&serde_json::json!("SIGNAL_UNSPECIFIED")).is_err());
    }

    /// Any JSON value where a message is expected is either decoded or refused, never a panic,
    /// and a decoded selector or input always names exactly one thing.
    #[test]
    fn random_json_messages_never_panic() {
        let values = [
            "null",
            "1",
            "-1",
            "1.5",
            "\"x\"",
            "\"aGk=\"",
            "\"@@\"",
            "{}",
            "[]",
            "true",
            "4294967296",
            "\"4294967295\"",
        ];
        let keys = [
            "pid",
            "tag",
            "stdin",
            "pty",
            "process",
            "input",
            "signal",
            "start",
            "data",
            "keepalive",
        ];
        let mut x: u64 = 0x0123_4567_89ab_cdef;
        let mut step = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..5000 {
            let mut obj = String::from("{");
            for i in 0..(step() % 4) {
                if i > 0 {
                    obj.push(',');
                }
                let k = keys[(step() % keys.len() as u64) as usize];
                let v = if step() % 3 == 0 {
                    format!(
                        "{{\"{}\":{}}}",
                        keys[(step() % keys.len() as u64) as usize],
                        values[(step() % values.len() as u64) as usize]
                    )
                } else {
                    values[(step() % values.len() as u64) as usize].to_string()
                };
                obj.push_str(&format!("\"{k}\":{v}"));
            }
            obj.push('}');
            if let Ok(r) = serde_json::from_str::<SendInputRequest>(&obj) {
                if let Ok(sel) = Selector::from_msg(r.process) {
                    assert!(matches!(sel, Selector::Pid(_) | Selector::Tag(_)));
                }
                let _ = Input::from_msg(r.input);
            }
            if let Ok(r) = serde_json::from_str::<StreamInputRequest>(&obj) {
                let _ = (r.start, r.data, r.keepalive);
            }
            if let Ok(r) = serde_json::from_str::<SendSignalRequest>(&obj) {
                let _ = signal_number(&r.signal);
            }
            let _ = serde_json::from_str::<StartRequest>(&obj);
        }
    }

    #[test]
    fn events_in_protobuf_json() {
        let e = ProcessEvent::Stdout(bytes::Bytes::from_static(b"hi\n"));
        assert_eq!(
            e.to_json().to_string(),
            r#"{"event":{"data":{"stdout":"aGkK"}}}"#
        );
        let e = ProcessEvent::End(EndEvent {
            exit_code: 3,
            exited: true,
            status: "exit status 3".into(),
            error: Some("exit status 3".into()),
        });
        assert_eq!(
            e.to_json().to_string(),
            r#"{"event":{"end":{"error":"exit status 3","exitCode":3,"exited":true,"status":"exit status 3"}}}"#
        );
        let w: WatchRequest =
            serde_json::from_str(r#"{"path":"/x","recursive":true,"includeEntry":true}"#).unwrap();
        assert!(w.recursive && w.include_entry && !w.allow_network_mounts);
        let w: WatcherIdRequest = serde_json::from_str(r#"{"watcher_id":"w1"}"#).unwrap();
        assert_eq!(w.watcher_id, "w1");
    }
}
