//! Humane durations: `"30s"`, `"1500ms"`, `"2h"`, `"1h30m"`, `"7d"`, or a bare integer of seconds.
//!
//! Units: `d`, `h`, `m`, `s`, `ms`, `us`, `ns`. A compound is written largest unit first, each unit
//! at most once (`"1h30m"`, not `"30m1h"`). Signs, fractions, empty input and overflow are errors.
//! [`format_duration`] writes the shortest compound of whole units, so format then parse is the
//! identity for every `Duration`.

use std::fmt;
use std::time::Duration;

const UNITS: [(&str, u128); 7] = [
    ("d", 86_400_000_000_000),
    ("h", 3_600_000_000_000),
    ("m", 60_000_000_000),
    ("s", 1_000_000_000),
    ("ms", 1_000_000),
    ("us", 1_000),
    ("ns", 1),
];

/// Parse a humane duration. A bare integer means seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty duration; write e.g. \"30s\", \"10m\" or \"1h30m\"".into());
    }
    if t.starts_with('-') {
        return Err(format!("duration {s:?} is negative"));
    }
    if t.bytes().all(|b| b.is_ascii_digit()) {
        let secs: u64 = t
            .parse()
            .map_err(|_| format!("duration {s:?} is too large"))?;
        return Ok(Duration::from_secs(secs));
    }
    let mut total: u128 = 0;
    let mut rest = t;
    let mut last_unit = 0usize; // index into UNITS that the next unit must be after
    let mut first = true;
    while !rest.is_empty() {
        let n_end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if n_end == 0 {
            if rest.starts_with(['.', ',']) {
                return Err(format!(
                    "duration {s:?} has a fraction; use a smaller unit, e.g. \"1500ms\""
                ));
            }
            return Err(format!(
                "duration {s:?} is malformed; write e.g. \"30s\", \"10m\" or \"1h30m\""
            ));
        }
        let (num, after) = rest.split_at(n_end);
        let u_end = after
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(u_end);
        if unit.is_empty() {
            return Err(if next.starts_with(['.', ',']) {
                format!("duration {s:?} has a fraction; use a smaller unit, e.g. \"1500ms\"")
            } else {
                format!("duration {s:?}: number {num} has no unit; use d, h, m, s or ms")
            });
        }
        let Some(idx) = UNITS.iter().position(|(name, _)| *name == unit) else {
            return Err(format!(
                "duration {s:?}: unknown unit {unit:?}; use d, h, m, s, ms, us or ns"
            ));
        };
        if !first && idx <= last_unit {
            return Err(format!(
                "duration {s:?}: units must go from largest to smallest, each once (e.g. \"1h30m\")"
            ));
        }
        first = false;
        last_unit = idx;
        let n: u128 = num
            .parse()
            .map_err(|_| format!("duration {s:?} is too large"))?;
        let nanos = n
            .checked_mul(UNITS[idx].1)
            .and_then(|v| v.checked_add(total))
            .ok_or_else(|| format!("duration {s:?} is too large"))?;
        total = nanos;
        rest = next;
    }
    let secs =
        u64::try_from(total / 1_000_000_000).map_err(|_| format!("duration {s:?} is too large"))?;
    // The remainder is < 1e9 and so fits in u32.
    let sub = u32::try_from(total % 1_000_000_000).unwrap_or(0);
    Ok(Duration::new(secs, sub))
}

/// Format a duration as the shortest compound of whole units (`"10m"`, `"1h30m"`, `"1s500ms"`).
pub fn format_duration(d: Duration) -> String {
    let mut n = d.as_nanos();
    if n == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (name, size) in UNITS {
        let q = n / size;
        if q > 0 {
            out.push_str(&q.to_string());
            out.push_str(name);
            n %= size;
        }
    }
    out
}

/// `#[serde(with = "crate::duration::humane")]`: a humane string out; a string or whole seconds in.
pub mod humane {
    use super::*;
    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"30s\" or \"1h30m\", or whole seconds")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
                Ok(Duration::from_secs(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
                u64::try_from(v)
                    .map(Duration::from_secs)
                    .map_err(|_| E::custom(format!("duration {v} is negative")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                parse_duration(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn parses() {
        assert_eq!(parse_duration("30s"), Ok(ms(30_000)));
        assert_eq!(parse_duration("1500ms"), Ok(ms(1500)));
        assert_eq!(parse_duration("2h"), Ok(ms(7_200_000)));
        assert_eq!(parse_duration("1h30m"), Ok(ms(5_400_000)));
        assert_eq!(parse_duration("10m"), Ok(ms(600_000)));
        assert_eq!(parse_duration("7d"), Ok(ms(7 * 86_400_000)));
        assert_eq!(parse_duration("45"), Ok(ms(45_000)));
        assert_eq!(parse_duration(" 1m30s "), Ok(ms(90_000)));
        assert_eq!(parse_duration("1s500ms"), Ok(ms(1500)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("3us"), Ok(Duration::from_micros(3)));
        assert_eq!(
            parse_duration("18446744073709551615"),
            Ok(Duration::from_secs(u64::MAX))
        );
    }

    #[test]
    fn rejects() {
        let e = |s: &str| parse_duration(s).unwrap_err();
        assert!(e("").contains("empty"));
        assert!(e("-5s").contains("negative"));
        assert!(e("-5").contains("negative"));
        assert!(e("1.5h").contains("fraction"));
        assert!(e("5x").contains("unknown unit \"x\""));
        assert!(e("5 min").contains("has no unit") || e("5 min").contains("malformed"));
        assert!(e("5mins").contains("unknown unit"));
        assert!(e("1h30").contains("has no unit"));
        assert!(e("30m1h").contains("largest to smallest"));
        assert!(e("1m1m").contains("largest to smallest"));
        assert!(e("h").contains("malformed"));
        assert!(e("18446744073709551616").contains("too large"));
        assert!(e("99999999999999999999999999999999999999999d").contains("too large"));
        assert!(e("213503982334602d").contains("too large"));
        assert!(e("+5s").contains("malformed"));
    }

    #[test]
    fn formats_and_round_trips() {
        assert_eq!(format_duration(ms(600_000)), "10m");
        assert_eq!(format_duration(ms(5_400_000)), "1h30m");
        assert_eq!(format_duration(ms(1500)), "1s500ms");
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert_eq!(format_duration(ms(86_400_000)), "1d");
        for d in [
            Duration::ZERO,
            Duration::from_nanos(1),
            Duration::new(3661, 1_001_001),
            Duration::from_secs(u64::MAX / 2),
        ] {
            assert_eq!(parse_duration(&format_duration(d)), Ok(d), "{d:?}");
        }
    }
}
