//! The policy loader: `Policy::from_toml` on any text.

use stockade_policy::Policy;

const ORIGIN: &str = "fuzz.toml";

/// Loads `data` (lossily decoded as UTF-8) as a policy file and checks:
///
/// - the same text loads the same way twice (no hidden state);
/// - a policy that loads also validates, and `to_toml` prints text that loads again to an
///   equal policy with the same digest, and prints the same text again (a fixed point);
/// - a refusal lists at least one error, each naming the file, with a 1-based line and column
///   that lie inside the input (the column at most one past the end of its line).
pub fn policy(data: &[u8]) {
    let src = String::from_utf8_lossy(data);
    let first = Policy::from_toml(&src, ORIGIN);
    assert_eq!(
        first,
        Policy::from_toml(&src, ORIGIN),
        "loading the same text twice differs"
    );
    match first {
        Ok(p) => round_trip(&p),
        Err(errors) => {
            assert!(!errors.0.is_empty(), "a refusal with no error");
            for e in &errors.0 {
                check_position(&src, e);
            }
        }
    }
}

fn round_trip(p: &Policy) {
    if let Err(e) = p.validate() {
        panic!("a policy that loads does not validate:\n{e}");
    }
    let shown = p.to_toml();
    let back = match Policy::from_toml(&shown, "shown.toml") {
        Ok(b) => b,
        Err(e) => {
            panic!("to_toml printed a policy that does not load:\n{e}\n--- text ---\n{shown}")
        }
    };
    assert_eq!(
        &back, p,
        "to_toml then from_toml changed the policy:\n{shown}"
    );
    assert_eq!(
        back.digest(),
        p.digest(),
        "equal policies, different digests"
    );
    assert_eq!(back.to_toml(), shown, "to_toml is not a fixed point");
}

fn check_position(src: &str, e: &stockade_policy::PolicyError) {
    assert_eq!(e.origin, ORIGIN, "{e}");
    assert!(!e.message.is_empty(), "an error without a message: {e:?}");
    let (Some(line), Some(column)) = (e.line, e.column) else {
        panic!("an error from a file without a line and column: {e}");
    };
    let lines: Vec<&str> = src.split('\n').collect();
    assert!(
        line >= 1 && line <= lines.len(),
        "line {line} is outside the input ({} lines): {e}",
        lines.len()
    );
    let width = lines[line - 1].chars().count();
    assert!(
        column >= 1 && column <= width + 1,
        "column {column} is outside line {line} ({width} characters): {e}"
    );
}
