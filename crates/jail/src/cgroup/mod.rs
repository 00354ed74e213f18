//! cgroups v1 and v2 (stub, being written).
