//! Generates the low-level client from the OpenAPI document the server serves
//! (`stratum openapi`, copied to `openapi.json` by `make clients-openapi`) with progenitor.
//!
//! The server publishes OpenAPI 3.1; progenitor reads 3.0 (through the `openapiv3` crate).
//! [`down_convert`] rewrites the few 3.1 constructs the document uses into their 3.0 forms and
//! refuses any other 3.1-only keyword, so a document the conversion does not understand fails
//! the build instead of producing a client that disagrees with the server.

use std::{env, fs, path::PathBuf};

use serde_json::{Map, Value};

fn main() {
    let spec_path = env::var_os("STRATUM_OPENAPI")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("openapi.json"));
    println!("cargo:rerun-if-env-changed=STRATUM_OPENAPI");
    println!("cargo:rerun-if-changed={}", spec_path.display());
    let text = fs::read_to_string(&spec_path).unwrap_or_else(|e| {
        panic!(
            "cannot read the OpenAPI document {}: {e}; run `make clients-openapi` at the \
             repository root (or point STRATUM_OPENAPI at the output of `stratum openapi`)",
            spec_path.display()
        )
    });
    let mut doc: Value = serde_json::from_str(&text).expect("the OpenAPI document is not JSON");
    down_convert(&mut doc);
    let spec: openapiv3::OpenAPI =
        serde_json::from_value(doc).expect("the converted document is not OpenAPI 3.0");
    let mut settings = progenitor::GenerationSettings::default();
    settings.with_interface(progenitor::InterfaceStyle::Builder);
    let mut generator = progenitor::Generator::new(&settings);
    let tokens = generator
        .generate_tokens(&spec)
        .expect("progenitor cannot generate a client from the document");
    let file: syn::File = syn::parse2(tokens).expect("generated code does not parse");
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap()).join("generated.rs");
    fs::write(out, prettyplease::unparse(&file)).unwrap();
}

/// Rewrites the OpenAPI 3.1 document into 3.0.3.
fn down_convert(doc: &mut Value) {
    doc["openapi"] = Value::from("3.0.3");
    if let Some(license) = doc
        .pointer_mut("/info/license")
        .and_then(Value::as_object_mut)
    {
        // 3.1 added `identifier`; 3.0 has `url` only.
        license.remove("identifier");
    }
    convert(doc);
}

/// Keywords of JSON Schema 2020-12 that 3.0 lacks and this conversion does not rewrite.
const UNSUPPORTED: &[&str] = &[
    "const",
    "prefixItems",
    "if",
    "then",
    "else",
    "dependentSchemas",
    "unevaluatedProperties",
    "unevaluatedItems",
    "$defs",
    "contentMediaType",
    "contentEncoding",
];

fn convert(value: &mut Value) {
    match value {
        Value::Array(items) => items.iter_mut().for_each(convert),
        Value::Object(map) => {
            convert_schema(map);
            for (key, v) in map.iter_mut() {
                if key != "example" && key != "examples" {
                    convert(v);
                }
            }
            // An optional parameter is absent when it has no value; the 3.1 document types
            // some as `[string, null]`, which 3.0 generators read as `Option<Option<_>>`.
            if map.contains_key("in") {
                if let Some(Value::Object(schema)) = map.get_mut("schema") {
                    schema.remove("nullable");
                }
            }
        }
        _ => {}
    }
}

/// Marks the code blocks of a description as text: they show JSON or paths, and rustdoc
/// would compile them as Rust doctests.
fn text_fences(description: &str) -> String {
    let mut inside = false;
    let lines: Vec<String> = description
        .lines()
        .map(|line| {
            let trimmed = line.trim_start();
            if !trimmed.starts_with("```") {
                return line.to_owned();
            }
            inside = !inside;
            if inside && trimmed.trim() == "```" {
                line.replacen("```", "```text", 1)
            } else {
                line.to_owned()
            }
        })
        .collect();
    lines.join("\n")
}

fn convert_schema(map: &mut Map<String, Value>) {
    if let Some(Value::String(d)) = map.get("description") {
        if d.contains("```") {
            let d = text_fences(d);
            map.insert("description".into(), Value::String(d));
        }
    }
    for keyword in UNSUPPORTED {
        if map.contains_key(*keyword) && map.contains_key("type") {
            panic!("OpenAPI 3.1 keyword `{keyword}` has no 3.0 form in this conversion");
        }
    }
    // `type: [T, "null"]` -> `type: T, nullable: true`; several non-null types -> any value.
    if let Some(Value::Array(types)) = map.get("type").cloned() {
        let nullable = types.iter().any(|t| t == "null");
        let rest: Vec<Value> = types.into_iter().filter(|t| t != "null").collect();
        match rest.as_slice() {
            [one] => {
                map.insert("type".into(), one.clone());
            }
            _ => {
                map.remove("type");
            }
        }
        if nullable {
            map.insert("nullable".into(), Value::Bool(true));
        }
    }
    // `oneOf: [{type: "null"}, S]` -> `allOf: [S], nullable: true`.
    for key in ["oneOf", "anyOf"] {
        if let Some(Value::Array(options)) = map.get(key).cloned() {
            let is_null = |o: &Value| o.get("type") == Some(&Value::from("null"));
            if options.iter().any(is_null) {
                let rest: Vec<Value> = options.into_iter().filter(|o| !is_null(o)).collect();
                map.remove(key);
                if rest.len() == 1 {
                    map.insert("allOf".into(), Value::Array(rest));
                } else {
                    map.insert(key.into(), Value::Array(rest));
                }
                map.insert("nullable".into(), Value::Bool(true));
            }
        }
    }
    // 3.0 ignores a `$ref`'s siblings; 3.1 documents put descriptions there.
    if map.contains_key("$ref") && map.len() > 1 {
        map.retain(|k, _| k == "$ref");
    }
    // `propertyNames` (3.1) restricts map keys; 3.0 has no such constraint.
    map.remove("propertyNames");
    // 3.1 `examples` in a schema is an array; 3.0 schemas have one `example`.
    if let Some(Value::Array(examples)) = map.get("examples").cloned() {
        if map.contains_key("type") || map.contains_key("properties") {
            map.remove("examples");
            if let Some(first) = examples.into_iter().next() {
                map.entry("example").or_insert(first);
            }
        }
    }
}
