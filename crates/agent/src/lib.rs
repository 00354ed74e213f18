//! stockade-agent
