//! Policy errors: where (file, line, column, key or command-line flag) and what to do.

use std::fmt;
use std::ops::Range;

/// One problem with a policy.
///
/// Display: `origin[:line[:column]]: [key: ]message`. When the origin is a command-line flag
/// (it starts with `--`), the key is not repeated: `--memory: ...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyError {
    /// The file name given to [`crate::Policy::from_toml`], a flag such as `--memory`, or
    /// `policy` for a policy built in code.
    pub origin: String,
    /// 1-based line of the offending key or value, when it came from a file.
    pub line: Option<usize>,
    /// 1-based column (in characters) of the offending key or value.
    pub column: Option<usize>,
    /// Dotted key path such as `limits.memory` or `filesystem.mounts[1].path`.
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.origin)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        f.write_str(": ")?;
        if let Some(key) = self.key.as_ref().filter(|_| !self.origin.starts_with("--")) {
            write!(f, "{key}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for PolicyError {}

/// Every problem found, in file order. Never empty when returned as an error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl PolicyErrors {
    /// Sort by position (errors without a position last), then by key, for stable output.
    pub(crate) fn sorted(mut self) -> Self {
        self.0.sort_by(|a, b| {
            let ka = (a.line.is_none(), a.line, a.column, a.key.clone());
            let kb = (b.line.is_none(), b.line, b.column, b.key.clone());
            ka.cmp(&kb)
        });
        self
    }
}

/// A problem found by validation, before it is given a place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Issue {
    pub key: String,
    pub message: String,
}

impl Issue {
    pub(crate) fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Issue {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// 1-based line and column (in characters) of byte offset `at` in `src`. Offsets past the end
/// or inside a character are clamped, so this never panics.
pub(crate) fn line_col(src: &str, at: usize) -> (usize, usize) {
    let mut at = at.min(src.len());
    while !src.is_char_boundary(at) {
        at -= 1;
    }
    let before = &src[..at];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// An error located at a byte span of `src`.
pub(crate) fn at_span(
    src: &str,
    origin: &str,
    span: Option<Range<usize>>,
    key: Option<String>,
    message: String,
) -> PolicyError {
    let (line, column) = match span {
        Some(s) => {
            let (l, c) = line_col(src, s.start);
            (Some(l), Some(c))
        }
        None => (None, None),
    };
    PolicyError {
        origin: origin.to_string(),
        line,
        column,
        key,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_chars() {
        let s = "a = 1\nbé = \"x\"\n";
        assert_eq!(line_col(s, 0), (1, 1));
        assert_eq!(line_col(s, 4), (1, 5));
        assert_eq!(line_col(s, 6), (2, 1));
        assert_eq!(line_col(s, 11), (2, 5)); // 'é' is two bytes, one column
        assert_eq!(line_col(s, 8), (2, 2)); // inside 'é' clamps back
        assert_eq!(line_col(s, 999), (3, 1));
    }

    #[test]
    fn display_forms() {
        let e = PolicyError {
            origin: "policy.toml".into(),
            line: Some(3),
            column: Some(10),
            key: Some("limits.memory".into()),
            message: "too small".into(),
        };
        assert_eq!(e.to_string(), "policy.toml:3:10: limits.memory: too small");
        let f = PolicyError {
            origin: "--memory".into(),
            line: None,
            column: None,
            key: Some("limits.memory".into()),
            message: "too small".into(),
        };
        assert_eq!(f.to_string(), "--memory: too small");
        let all = PolicyErrors(vec![e, f]);
        assert_eq!(
            all.to_string(),
            "policy.toml:3:10: limits.memory: too small\n--memory: too small"
        );
    }
}
