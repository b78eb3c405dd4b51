//! What every stored string and JSON value must satisfy: PostgreSQL keeps neither U+0000
//! in `text` nor `\u0000` in `jsonb`, so a NUL would surface as a database error (a 500).
//! Domain constructors call these once, at the edge of the domain.

use serde_json::Value;

/// Why a value cannot be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextError {
    /// Where in the value: the field itself, or `field.key[2]` inside a JSON value.
    pub path: String,
    /// What is wrong.
    pub message: &'static str,
}

/// The message every NUL refusal carries.
pub const NUL_MESSAGE: &str = "must not contain the NUL character (U+0000)";

/// Deepest nesting a stored JSON value may have. Stored values come back wrapped (in
/// audit states, event payloads), and a reader's recursion limit must still hold then.
pub const MAX_JSON_DEPTH: usize = 64;

/// The message every too-deep refusal carries.
pub const DEPTH_MESSAGE: &str = "must not nest arrays and objects more than 64 levels deep";

/// Refuses a string containing U+0000.
pub fn check_str(field: &str, s: &str) -> Result<(), TextError> {
    if s.contains('\0') {
        return Err(TextError {
            path: field.to_owned(),
            message: NUL_MESSAGE,
        });
    }
    Ok(())
}

/// Refuses a JSON value with U+0000 in any string or object key, or nested deeper than
/// [`MAX_JSON_DEPTH`]; the error names the first offending place (`metadata.a.b[3]`).
pub fn check_json(field: &str, v: &Value) -> Result<(), TextError> {
    if depth(v) > MAX_JSON_DEPTH {
        return Err(TextError {
            path: field.to_owned(),
            message: DEPTH_MESSAGE,
        });
    }
    match find_nul(v) {
        None => Ok(()),
        Some(rest) => Err(TextError {
            path: format!("{field}{rest}"),
            message: NUL_MESSAGE,
        }),
    }
}

/// How deeply arrays and objects nest in `v` (a scalar is 0, `[]` is 1).
pub fn depth(v: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(v, 0usize)];
    while let Some((v, d)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(map) => Box::new(map.values()),
            _ => continue,
        };
        deepest = deepest.max(d + 1);
        stack.extend(children.map(|c| (c, d + 1)));
    }
    deepest
}

/// The path (relative, `.key` / `[i]`) of the first U+0000 inside `v`, if any.
pub fn find_nul(v: &Value) -> Option<String> {
    // Iterative, so a deeply nested body cannot overflow the stack.
    let mut stack: Vec<(String, &Value)> = vec![(String::new(), v)];
    while let Some((path, v)) = stack.pop() {
        match v {
            Value::String(s) if s.contains('\0') => return Some(path),
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate().rev() {
                    stack.push((format!("{path}[{i}]"), item));
                }
            }
            Value::Object(map) => {
                let mut children = Vec::with_capacity(map.len());
                for (k, item) in map {
                    let shown = k.replace('\0', "\\u0000");
                    let p = format!("{path}.{shown}");
                    if k.contains('\0') {
                        return Some(p);
                    }
                    children.push((p, item));
                }
                stack.extend(children.into_iter().rev());
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strings() {
        assert!(check_str("name", "Acme").is_ok());
        assert!(check_str("name", "").is_ok());
        for bad in ["\0", "a\0", "\0b", "a\0b", "é\u{0}"] {
            let e = check_str("name", bad).unwrap_err();
            assert_eq!(e.path, "name");
        }
    }

    #[test]
    fn json_values_at_any_depth() {
        assert!(check_json("metadata", &json!({"a": [1, "x", {"b": null}]})).is_ok());
        let cases = [
            (json!("a\u{0}"), "v"),
            (json!({"a": "\u{0}"}), "v.a"),
            (json!({"a\u{0}": 1}), "v.a\\u0000"),
            (json!({"a": [1, 2, "x\u{0}"]}), "v.a[2]"),
            (json!([[{"k": ["\u{0}"]}]]), "v[0][0].k[0]"),
        ];
        for (value, path) in cases {
            assert_eq!(check_json("v", &value).unwrap_err().path, path, "{value}");
        }
    }

    #[test]
    fn nesting_is_bounded() {
        assert_eq!(depth(&json!(1)), 0);
        assert_eq!(depth(&json!([])), 1);
        assert_eq!(depth(&json!({"a": [1, {"b": []}]})), 4);
        let mut v = json!(1);
        for _ in 0..MAX_JSON_DEPTH {
            v = json!([v]);
        }
        assert!(check_json("v", &v).is_ok());
        let e = check_json("v", &json!({ "k": v })).unwrap_err();
        assert_eq!((e.path.as_str(), e.message), ("v", DEPTH_MESSAGE));
    }

    #[test]
    fn deep_nesting_does_not_overflow() {
        let mut v = json!("\u{0}");
        for _ in 0..100_000 {
            v = Value::Array(vec![v]);
        }
        assert!(find_nul(&v).is_some());
        // Dropping a deeply nested value recurses in serde_json; leak it instead.
        std::mem::forget(v);
    }
}
