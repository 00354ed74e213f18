//! Tests of the seccomp policy: table and byte-format unit tests, and in-process probes that
//! fork a child, apply the filter and check the exact errno (with an unfiltered control).

mod denials;
mod probe;
mod unit;
mod workload;
