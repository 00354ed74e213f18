//! Protobuf JSON mapping details (<https://protobuf.dev/programming-guides/json/>) that serde
//! does not give by itself: integers may come as numbers or strings, `bytes` are base64
//! (standard or URL-safe, padded or not), enums by name or number, and 64-bit integers are
//! written as strings.

use base64::Engine;
use serde::de::{self, Deserializer, Visitor};
use serde::ser::Serializer;
use std::fmt;

/// An unsigned 32-bit field (number or decimal string).
pub fn u32_any<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = d.deserialize_any(IntVisitor)?;
    u32::try_from(v).map_err(|_| de::Error::custom(format!("{v} is out of range for uint32")))
}

/// An optional unsigned 32-bit field.
pub fn opt_u32_any<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<u32>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an unsigned integer or null")
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            u32_any(d).map(Some)
        }
    }
    d.deserialize_option(V)
}

struct IntVisitor;

impl Visitor<'_> for IntVisitor {
    type Value = i128;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an integer (number or decimal string)")
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<i128, E> {
        Ok(i128::from(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<i128, E> {
        Ok(i128::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<i128, E> {
        if v.fract() == 0.0 && v.abs() < 9.0e15 {
            // Exact: integral and within f64's exact integer range.
            Ok(v as i128)
        } else {
            Err(E::custom(format!("{v} is not an integer")))
        }
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<i128, E> {
        if v.is_empty() || v.len() > 20 {
            return Err(E::custom("not an integer"));
        }
        v.parse::<i128>()
            .map_err(|_| E::custom(format!("{v:?} is not an integer")))
    }
}

/// Base64 `bytes` (accepts the standard and URL-safe alphabets, with or without padding).
pub fn bytes_b64<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = Vec<u8>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("base64 bytes")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<u8>, E> {
            decode_b64(v).ok_or_else(|| E::custom("bytes field is not valid base64"))
        }
    }
    d.deserialize_str(V)
}

pub fn decode_b64(v: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let url = v.contains(['-', '_']);
    let padded = v.ends_with('=');
    let engine = match (url, padded) {
        (false, true) => &STANDARD,
        (false, false) => &STANDARD_NO_PAD,
        (true, true) => &URL_SAFE,
        (true, false) => &URL_SAFE_NO_PAD,
    };
    engine.decode(v).ok()
}

/// Writes `bytes` as standard padded base64.
pub fn ser_b64<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
}

/// Writes a 64-bit integer as a decimal string (the mapping's rule for int64/uint64).
pub fn ser_i64_str<S: Serializer>(v: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&v.to_string())
}

/// An enum given by its name or number: returns the number, looking names up in `names`.
pub fn enum_value(v: &serde_json::Value, names: &[(&str, i32)]) -> Option<i32> {
    match v {
        serde_json::Value::Number(n) => n.as_i64().and_then(|n| i32::try_from(n).ok()),
        serde_json::Value::String(s) => names.iter().find(|(n, _)| n == s).map(|(_, v)| *v),
        serde_json::Value::Null => Some(0),
        _ => None,
    }
}

/// `google.protobuf.Timestamp` as RFC 3339 with nanoseconds, UTC.
pub fn timestamp(secs: i64, nsec: u32) -> Option<String> {
    let secs = u64::try_from(secs).ok()?;
    let t =
        std::time::UNIX_EPOCH.checked_add(std::time::Duration::new(secs, nsec.min(999_999_999)))?;
    Some(humantime::format_rfc3339_nanos(t).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct T {
        #[serde(deserialize_with = "u32_any")]
        n: u32,
        #[serde(default, deserialize_with = "bytes_b64")]
        b: Vec<u8>,
    }

    #[test]
    fn integers_and_bytes() {
        let t: T = serde_json::from_str(r#"{"n":"42","b":"aGk="}"#).unwrap();
        assert_eq!((t.n, t.b.as_slice()), (42, &b"hi"[..]));
        let t: T = serde_json::from_str(r#"{"n":42.0,"b":"aGk"}"#).unwrap();
        assert_eq!((t.n, t.b.as_slice()), (42, &b"hi"[..]));
        assert!(serde_json::from_str::<T>(r#"{"n":-1}"#).is_err());
        assert!(serde_json::from_str::<T>(r#"{"n":4294967296}"#).is_err());
        assert!(serde_json::from_str::<T>(r#"{"n":1.5}"#).is_err());
        assert!(serde_json::from_str::<T>(r#"{"n":1,"b":"@@"}"#).is_err());
        assert_eq!(decode_b64("-_8").unwrap(), vec![0xfb, 0xff]);
    }

    #[test]
    fn enums_and_times() {
        let names = [("SIGNAL_SIGKILL", 9), ("SIGNAL_SIGTERM", 15)];
        assert_eq!(
            enum_value(&serde_json::json!("SIGNAL_SIGKILL"), &names),
            Some(9)
        );
        assert_eq!(enum_value(&serde_json::json!(15), &names), Some(15));
        assert_eq!(enum_value(&serde_json::json!("SIGHUP"), &names), None);
        assert_eq!(
            timestamp(1_704_067_200, 5).unwrap(),
            "2024-01-01T00:00:00.000000005Z"
        );
    }
}
