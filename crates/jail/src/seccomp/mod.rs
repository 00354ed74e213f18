//! TEMPORARY stub on main until the seccomp branch lands.
#[derive(Debug, thiserror::Error)]
#[error("seccomp: {0}")]
pub struct SeccompError(String);
pub struct SeccompProgram(Vec<u8>);
impl SeccompProgram {
    pub fn compile_default() -> Result<SeccompProgram, SeccompError> { Ok(SeccompProgram(Vec::new())) }
    pub fn to_bytes(&self) -> Vec<u8> { self.0.clone() }
    pub fn from_bytes(b: &[u8]) -> Result<SeccompProgram, SeccompError> { Ok(SeccompProgram(b.to_vec())) }
    pub fn apply(&self) -> Result<(), SeccompError> { Ok(()) }
    pub fn describe(&self) -> String { "stub".into() }
}
