//! Errors of a run, each mapped to the exit code stockade reports (docker/podman convention).

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Usage(String),
    #[error("workspace: {0}")]
    Workspace(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("launch: {0}")]
    Launch(String),
    /// The audit trail could not be written: the run is refused (or its result withheld).
    #[error("audit: {0}")]
    Audit(String),
    #[error("sandbox setup failed: {0}")]
    Setup(String),
    /// The command itself could not be run: 127 not found, 126 not executable.
    #[error("{message}")]
    Exec { code: i32, message: String },
}

impl RunError {
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::Exec { code, .. } => *code,
            _ => 125,
        }
    }
}
