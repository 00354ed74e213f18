//! [`ByteSize`]: a byte count written with binary units.
//!
//! Accepted: a bare integer (bytes), or an integer followed by a unit, case-insensitive, with
//! optional spaces between: `B`, `K`/`KiB`, `M`/`MiB`, `G`/`GiB`, `T`/`TiB`. Every unit is binary
//! (`1K` = 1024), as with Docker and systemd. `KB`/`MB`/`GB`/`TB` are refused as ambiguous rather
//! than guessed. Fractions, signs and overflow are errors. Display picks the largest unit that
//! divides the value exactly, so `Display` then `FromStr` is the identity.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A number of bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;

impl ByteSize {
    /// `n` KiB (saturating).
    pub const fn kib(n: u64) -> ByteSize {
        ByteSize(n.saturating_mul(KIB))
    }
    /// `n` MiB (saturating).
    pub const fn mib(n: u64) -> ByteSize {
        ByteSize(n.saturating_mul(MIB))
    }
    /// `n` GiB (saturating).
    pub const fn gib(n: u64) -> ByteSize {
        ByteSize(n.saturating_mul(GIB))
    }
    /// The number of bytes.
    pub const fn bytes(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (unit, name) in [(TIB, "TiB"), (GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")] {
            // Units are powers of two: divisible means the low bits are clear.
            if n != 0 && n & (unit - 1) == 0 {
                return write!(f, "{}{}", n / unit, name);
            }
        }
        write!(f, "{n}B")
    }
}

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if t.is_empty() {
            return Err("empty size; write a number of bytes or a size like \"512MiB\"".into());
        }
        if t.starts_with('-') {
            return Err(format!("size {s:?} is negative; sizes are zero or more"));
        }
        let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, rest) = t.split_at(digits_end);
        if num.is_empty() {
            return Err(format!(
                "size {s:?} does not start with a number; write e.g. \"512MiB\" or \"1GiB\""
            ));
        }
        let unit = rest.trim_start();
        if unit.starts_with(['.', ',']) {
            return Err(format!(
                "size {s:?} has a fraction; use a whole number in a smaller unit, e.g. \"1536MiB\""
            ));
        }
        let mult = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "ki" | "kib" => KIB,
            "m" | "mi" | "mib" => MIB,
            "g" | "gi" | "gib" => GIB,
            "t" | "ti" | "tib" => TIB,
            "kb" | "mb" | "gb" | "tb" => {
                return Err(format!(
                    "size {s:?}: unit {unit:?} is ambiguous (1000 or 1024?); write {}iB",
                    &unit[..1].to_ascii_uppercase()
                ));
            }
            _ => {
                return Err(format!(
                    "size {s:?}: unknown unit {unit:?}; use B, KiB, MiB, GiB or TiB (K, M, G, T also mean KiB, MiB, GiB, TiB)"
                ));
            }
        };
        let n: u64 = num
            .parse()
            .map_err(|_| format!("size {s:?} is too large (at most 2^64-1 bytes)"))?;
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("size {s:?} is too large (at most 2^64-1 bytes)"))
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"512MiB\" or a number of bytes")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("size {v} is negative; sizes are zero or more")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<u64, String> {
        s.parse::<ByteSize>().map(|b| b.0)
    }

    #[test]
    fn parses_units() {
        assert_eq!(p("0"), Ok(0));
        assert_eq!(p("123"), Ok(123));
        assert_eq!(p("123B"), Ok(123));
        assert_eq!(p("1024K"), Ok(1 << 20));
        assert_eq!(p("512M"), Ok(512 << 20));
        assert_eq!(p("512MiB"), Ok(512 << 20));
        assert_eq!(p("512mib"), Ok(512 << 20));
        assert_eq!(p("2G"), Ok(2 << 30));
        assert_eq!(p("1GiB"), Ok(1 << 30));
        assert_eq!(p(" 1 GiB "), Ok(1 << 30));
        assert_eq!(p("3TiB"), Ok(3 << 40));
        assert_eq!(p("18446744073709551615"), Ok(u64::MAX));
    }

    #[test]
    fn rejects_bad_sizes() {
        assert!(p("").unwrap_err().contains("empty"));
        assert!(p("   ").unwrap_err().contains("empty"));
        assert!(p("-1").unwrap_err().contains("negative"));
        assert!(p("-1GiB").unwrap_err().contains("negative"));
        assert!(p("1.5GiB").unwrap_err().contains("fraction"));
        assert!(
            p("GiB")
                .unwrap_err()
                .contains("does not start with a number")
        );
        assert!(p("1GB").unwrap_err().contains("ambiguous"));
        assert!(p("1mb").unwrap_err().contains("write MiB"));
        assert!(p("1Gib2").unwrap_err().contains("unknown unit"));
        assert!(p("1GiBs").unwrap_err().contains("unknown unit"));
        assert!(p("1 G i B").unwrap_err().contains("unknown unit"));
        assert!(p("18446744073709551616").unwrap_err().contains("too large"));
        assert!(p("16777216TiB").unwrap_err().contains("too large"));
        assert!(
            p("99999999999999999999999GiB")
                .unwrap_err()
                .contains("too large")
        );
        assert!(p("+5").is_err());
        assert!(p("٣").is_err());
    }

    #[test]
    fn display_is_exact_and_round_trips() {
        assert_eq!(ByteSize::gib(1).to_string(), "1GiB");
        assert_eq!(ByteSize::mib(256).to_string(), "256MiB");
        assert_eq!(ByteSize::kib(512).to_string(), "512KiB");
        assert_eq!(ByteSize(123).to_string(), "123B");
        assert_eq!(ByteSize(0).to_string(), "0B");
        assert_eq!(ByteSize(1536 * MIB).to_string(), "1536MiB");
        assert_eq!(ByteSize(4 * TIB).to_string(), "4TiB");
        for n in [
            0,
            1,
            1023,
            1024,
            1025,
            MIB + 1,
            GIB,
            u64::MAX,
            u64::MAX - 1023,
        ] {
            let b = ByteSize(n);
            assert_eq!(b.to_string().parse::<ByteSize>(), Ok(b), "{n}");
        }
    }

    #[test]
    fn serde_accepts_strings_and_integers() {
        let v: ByteSize = serde_json::from_str("\"2G\"").unwrap();
        assert_eq!(v, ByteSize::gib(2));
        let v: ByteSize = serde_json::from_str("4096").unwrap();
        assert_eq!(v, ByteSize::kib(4));
        assert!(serde_json::from_str::<ByteSize>("-4").is_err());
        assert!(serde_json::from_str::<ByteSize>("1.5").is_err());
        assert_eq!(
            serde_json::to_string(&ByteSize::mib(3)).unwrap(),
            "\"3MiB\""
        );
    }
}
