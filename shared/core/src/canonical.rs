//! JSON in one canonical text, for hashes and keys: objects keep the order they arrived
//! in (`serde_json`'s `preserve_order`, so the gateway passes JSON through unchanged), and
//! two objects that differ only in key order must still hash alike.

use serde_json::Value;

/// `value` as compact JSON with every object's keys sorted, recursively.
pub fn canonical_json(value: &Value) -> String {
    let mut out = Vec::new();
    write_canonical(value, &mut out).expect("writing to a Vec does not fail");
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

/// Writes [`canonical_json`]'s text to `out` (a hasher, say) without building a sorted
/// copy of `value` first.
pub fn write_canonical<W: std::io::Write>(value: &Value, out: &mut W) -> std::io::Result<()> {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            write_object(entries, out)
        }
        Value::Array(items) => {
            out.write_all(b"[")?;
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.write_all(b",")?;
                }
                write_canonical(item, out)?;
            }
            out.write_all(b"]")
        }
        scalar => serde_json::to_writer(out, scalar).map_err(std::io::Error::other),
    }
}

/// Writes an object of `entries`, already in key order, each value canonical.
pub fn write_object<W: std::io::Write>(
    entries: Vec<(&String, &Value)>,
    out: &mut W,
) -> std::io::Result<()> {
    out.write_all(b"{")?;
    for (i, (key, item)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.write_all(b",")?;
        }
        serde_json::to_writer(&mut *out, key).map_err(std::io::Error::other)?;
        out.write_all(b":")?;
        write_canonical(item, out)?;
    }
    out.write_all(b"}")
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

#[cfg(test)]
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
    fn the_written_text_is_the_sorted_copy_serialised() {
        let value: Value = serde_json::from_str(
            r#"{"z":[1,2.5,{"b":"\u00e9\n\"q\"","a":null}],"a":{"y":true,"x":-3},"m":"t"}"#,
        )
        .unwrap();
        assert_eq!(canonical_json(&value), sorted(&value).to_string());
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
