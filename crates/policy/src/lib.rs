//! stockade-policy
