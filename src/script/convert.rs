//! Values across the script boundary: JSON in, Rhai `Dynamic` out, and back.

use rhai::Dynamic;
use serde_json::Value;

/// A JSON value as a script sees it: objects become maps, `null` becomes `()`.
pub fn to_dynamic(value: &Value) -> Dynamic {
    // Serializing a JSON value cannot fail: every JSON shape has a Rhai counterpart.
    rhai::serde::to_dynamic(value).unwrap_or(Dynamic::UNIT)
}

/// A script value as JSON; `()` becomes `null`. Values with no JSON form (function
/// pointers, timestamps) are an error naming what was found.
pub fn from_dynamic(value: &Dynamic) -> Result<Value, String> {
    if value.is_unit() {
        return Ok(Value::Null);
    }
    rhai::serde::from_dynamic::<Value>(value)
        .map_err(|_| format!("a value of type {} cannot be stored", value.type_name()))
}

/// A script value as a map of fields, for the client functions that take one.
pub fn to_fields(call: &str, value: &Dynamic) -> Result<serde_json::Map<String, Value>, String> {
    match from_dynamic(value)? {
        Value::Object(map) => Ok(map),
        other => Err(format!(
            "{call}: expected a map of fields such as #{{ email: \"...\" }}, found {}",
            json_kind(&other)
        )),
    }
}

pub fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "()",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "a map",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trips_json() {
        let value = json!({"a": [1, 2.5, "x", null, true], "b": {"c": "d"}});
        let back = from_dynamic(&to_dynamic(&value)).unwrap();
        assert_eq!(back, value);
    }

    #[test]
    fn fields_must_be_a_map() {
        let err = to_fields("clients::create", &Dynamic::from(3_i64)).unwrap_err();
        assert!(err.contains("found a number"), "{err}");
    }
}
