//! An event's JSON fields as OTLP attributes: nested objects become dotted keys
//! (`enforced.landlock_abi`), arrays become array values (of scalars, or of key-value lists for
//! arrays of objects), `null`s are left out. Integers are `int` values; an integer above
//! `i64::MAX` (which no field reaches in practice) is sent as its decimal string, never truncated.

use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, KeyValue, KeyValueList, any_value::Value,
};
use serde_json::Value as Json;

/// One attribute.
pub(crate) fn kv(key: impl Into<String>, value: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

pub(crate) fn string(s: impl Into<String>) -> Value {
    Value::StringValue(s.into())
}

/// The fields of a serialized event kind, without its `type` tag.
pub(crate) fn fields(kind: &crate::EventKind) -> serde_json::Map<String, Json> {
    match serde_json::to_value(kind) {
        Ok(Json::Object(mut m)) => {
            m.remove("type");
            m
        }
        // An internally tagged enum always serializes to an object.
        _ => serde_json::Map::new(),
    }
}

/// Appends `fields` to `out`, keys prefixed with `prefix.` (no prefix when empty), nested
/// objects flattened into dotted keys.
pub(crate) fn flatten_into(
    prefix: &str,
    fields: &serde_json::Map<String, Json>,
    out: &mut Vec<KeyValue>,
) {
    for (k, v) in fields {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            Json::Null => {}
            Json::Object(inner) => flatten_into(&key, inner, out),
            other => {
                if let Some(value) = any(other) {
                    out.push(kv(key, value));
                }
            }
        }
    }
}

/// A JSON value as an OTLP value; `None` for `null`.
fn any(v: &Json) -> Option<Value> {
    Some(match v {
        Json::Null => return None,
        Json::Bool(b) => Value::BoolValue(*b),
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::IntValue(i)
            } else if let Some(u) = n.as_u64() {
                Value::StringValue(u.to_string())
            } else {
                Value::DoubleValue(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Json::String(s) => Value::StringValue(s.clone()),
        Json::Array(items) => Value::ArrayValue(ArrayValue {
            values: items.iter().map(|x| AnyValue { value: any(x) }).collect(),
        }),
        Json::Object(m) => Value::KvlistValue(KeyValueList {
            values: m
                .iter()
                .filter_map(|(k, x)| any(x).map(|value| kv(k.clone(), value)))
                .collect(),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn flat(v: Json) -> Vec<(String, Value)> {
        let Json::Object(m) = v else { panic!() };
        let mut out = Vec::new();
        flatten_into("p", &m, &mut out);
        out.into_iter()
            .map(|kv| (kv.key, kv.value.unwrap().value.unwrap()))
            .collect()
    }

    #[test]
    fn nested_objects_become_dotted_keys_and_nulls_vanish() {
        let got = flat(json!({"a": {"b": {"c": 1}}, "n": null, "s": "x", "t": true}));
        assert_eq!(
            got,
            vec![
                ("p.a.b.c".into(), Value::IntValue(1)),
                ("p.s".into(), string("x")),
                ("p.t".into(), Value::BoolValue(true)),
            ]
        );
    }

    #[test]
    fn arrays_stay_arrays_and_objects_inside_them_are_kvlists() {
        let got = flat(json!({"a": ["x", 2], "o": [{"controller": "memory", "v": null}]}));
        assert_eq!(
            got[0],
            (
                "p.a".into(),
                Value::ArrayValue(ArrayValue {
                    values: vec![
                        AnyValue {
                            value: Some(string("x"))
                        },
                        AnyValue {
                            value: Some(Value::IntValue(2))
                        },
                    ]
                })
            )
        );
        assert_eq!(
            got[1],
            (
                "p.o".into(),
                Value::ArrayValue(ArrayValue {
                    values: vec![AnyValue {
                        value: Some(Value::KvlistValue(KeyValueList {
                            values: vec![kv("controller", string("memory"))]
                        }))
                    }]
                })
            )
        );
    }

    #[test]
    fn integers_above_i64_are_sent_whole_as_strings() {
        let got = flat(json!({"big": u64::MAX, "neg": -3, "f": 1.5}));
        assert_eq!(got[0].1, string(u64::MAX.to_string()));
        assert_eq!(got[1].1, Value::DoubleValue(1.5));
        assert_eq!(got[2].1, Value::IntValue(-3));
    }

    #[test]
    fn fields_drop_the_type_tag() {
        let m = fields(&crate::EventKind::FileRead { path: "a".into() });
        assert_eq!(m.keys().collect::<Vec<_>>(), vec!["path"]);
    }
}
