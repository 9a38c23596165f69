//! JSON in one canonical text, for hashes and keys: objects keep the order they arrived
//! in (`serde_json`'s `preserve_order`, so the gateway passes JSON through unchanged), and
//! two objects that differ only in key order must still hash alike.

use serde_json::Value;

/// `value` as compact JSON with every object's keys sorted, recursively.
pub fn canonical_json(value: &Value) -> String {
    sorted(value).to_string()
}

/// Where `value` holds a U+0000 (in a string or a key), as a path like `metadata.tags[2]`
/// under `root`. PostgreSQL stores no NUL in text or JSON while SQLite does, so every
/// field refuses it, alike on both backends.
pub fn nul_at(value: &Value, root: &str) -> Option<String> {
    match value {
        Value::String(s) if s.contains('\0') => Some(root.to_string()),
        Value::Object(map) => map.iter().find_map(|(key, item)| {
            let path = format!("{root}.{}", key.replace('\0', "\\u0000"));
            if key.contains('\0') {
                Some(path)
            } else {
                nul_at(item, &path)
            }
        }),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| nul_at(item, &format!("{root}[{i}]"))),
        _ => None,
    }
}

fn sorted(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k.clone(), sorted(v)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_is_found_in_strings_and_keys_with_its_path() {
        let clean: Value = serde_json::from_str(r#"{"a":["x",{"b":"y"}],"n":1}"#).unwrap();
        assert_eq!(nul_at(&clean, "metadata"), None);
        let in_value: Value = serde_json::from_str(r#"{"a":["x",{"b":"y\u0000"}]}"#).unwrap();
        assert_eq!(
            nul_at(&in_value, "metadata").as_deref(),
            Some("metadata.a[1].b")
        );
        let in_key: Value = serde_json::from_str(r#"{"k\u0000":1}"#).unwrap();
        assert_eq!(
            nul_at(&in_key, "metadata").as_deref(),
            Some("metadata.k\\u0000")
        );
    }

    #[test]
    fn key_order_does_not_change_the_canonical_text() {
        let a: Value =
            serde_json::from_str(r#"{"b":1,"a":{"y":[{"d":1,"c":2}],"x":null}}"#).unwrap();
        let b: Value =
            serde_json::from_str(r#"{"a":{"x":null,"y":[{"c":2,"d":1}]},"b":1}"#).unwrap();
        assert_ne!(a.to_string(), b.to_string(), "arrival order is kept");
        assert_eq!(canonical_json(&a), canonical_json(&b));
        assert_eq!(
            canonical_json(&a),
            r#"{"a":{"x":null,"y":[{"c":2,"d":1}]},"b":1}"#
        );
    }
}
