//! stockade-jail
