//! Tests of the seccomp policy: table and byte-format unit tests, and in-process probes that
//! fork a child, apply the filter and check the exact errno (with an unfiltered control).

/// `probe!(name, { body returning c_long }, control, filtered)`: one test per probe.
macro_rules! probe {
    ($test:ident, $body:block, $control:expr, $filtered:expr) => {
        #[test]
        fn $test() {
            fn call() -> libc::c_long $body
            check(stringify!($test), call, $control, $filtered);
        }
    };
}

mod bench;
mod conditional;
mod denials;
mod equiv;
mod interp;
mod probe;
mod unit;
mod workload;
