//! stockade-runtime
