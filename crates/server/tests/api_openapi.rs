//! The OpenAPI document: served without a key, and naming exactly the routes actix serves.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly by design"
)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use actix_web::http::{Method, StatusCode};
use common::{app, call, call_any, harness, ADMIN};
use regex_lite::Regex;
use serde_json::Value;

fn document() -> Value {
    serde_json::from_str(&stratum_api::openapi::pretty_json().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_document_is_served_without_a_key() {
    let h = harness().await;
    let app = app!(h);

    let r = call(&app, Method::GET, "/api/v1/openapi.json", None, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let ctype = r.headers.get("content-type").unwrap().to_str().unwrap();
    assert!(ctype.starts_with("application/json"), "{ctype}");
    let openapi = r.body["openapi"].as_str().unwrap_or_default();
    assert!(openapi.starts_with("3.1"), "openapi = {openapi:?}");
    assert_eq!(r.body["info"]["title"], "Stratum");
    assert_eq!(r.body, document(), "served = `stratum openapi`");

    // A key does not change the answer, and the scope next to it still demands one.
    let r = call(&app, Method::GET, "/api/v1/openapi.json", Some(ADMIN), None).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = call_any(&app, Method::GET, "/api/v1/tenants", None, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // The error body the server sends has the documented shape.
    let doc = document();
    let schemas = &doc["components"]["schemas"];
    let error_props = schemas["ErrorObject"]["properties"].as_object().unwrap();
    for k in r.body.as_object().unwrap().keys() {
        assert!(
            schemas["ErrorBody"]["properties"].get(k).is_some(),
            "undocumented {k}"
        );
    }
    for k in r.body["error"].as_object().unwrap().keys() {
        assert!(error_props.contains_key(k), "undocumented error.{k}");
    }
    for k in schemas["ErrorObject"]["required"].as_array().unwrap() {
        assert!(r.body["error"].get(k.as_str().unwrap()).is_some(), "{k}");
    }
}

#[test]
fn public_paths_have_no_security_and_the_rest_need_a_key() {
    let doc = document();
    assert_eq!(
        doc["security"],
        serde_json::json!([{"api_key": []}, {"bearer": []}])
    );
    let public = stratum_api::openapi::PUBLIC_PATHS;
    for (path, method, op) in operations(&doc) {
        if public.contains(&path.as_str()) {
            assert_eq!(op["security"], serde_json::json!([]), "{method} {path}");
        } else {
            assert!(
                op.get("security").is_none(),
                "{method} {path} overrides security"
            );
            for status in ["401", "403", "429", "503"] {
                assert!(
                    op["responses"].get(status).is_some(),
                    "{method} {path} documents no {status}"
                );
            }
        }
    }
}

fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if HTTP_METHODS.contains(&method.as_str()) {
                out.push((path.clone(), method.to_uppercase(), op.clone()));
            }
        }
    }
    out
}

const HTTP_METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

// ---------------------------------------------------------------------------------------
// Route extraction. actix offers no public route table, so the registrations are read from
// crates/api/src/*.rs: `web::resource("/p")` followed by `.route(web::get()...)`s,
// `.route("/p", web::get()...)`, and `#[get("/p")]`-style handler macros. A module's routes
// get the prefix of the `web::scope("...")` inside which lib.rs configures that module's
// `routes` (directly, or through a local fn configured inside the scope); registrations in
// lib.rs itself get the prefix of the scopes they sit in. Anything the parser cannot place
// fails the test rather than being skipped.

type Route = (String, String);

fn api_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../api/src")
}

/// The source without test modules and comment lines.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let text = match text.find("#[cfg(test)]\nmod ") {
        Some(i) => &text[..i],
        None => &text[..],
    };
    text.lines()
        .map(|l| {
            if l.trim_start().starts_with("//") {
                ""
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Index just past the `close` that balances the first `open` at or after `from`, skipping
/// string literals; `stop_at_semicolon` also ends the span at a top-level `;` and, when
/// `open` is never balanced, at the first unmatched `close` (a scope's enclosing call).
fn span_end(src: &str, from: usize, open: u8, close: u8, enclosing: bool) -> usize {
    let b = src.as_bytes();
    let mut depth: i64 = 0;
    let mut i = from;
    let mut seen_open = false;
    while i < b.len() {
        match b[i] {
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            c if c == open => {
                depth += 1;
                seen_open = true;
            }
            c if c == close => {
                depth -= 1;
                if depth == 0 && seen_open && !enclosing {
                    return i + 1;
                }
                if depth < 0 {
                    return i;
                }
            }
            b';' if enclosing && depth == 0 => return i,
            _ => {}
        }
        i += 1;
    }
    b.len()
}

/// `(start, end, prefix)` of every `web::scope("...")` chain in `src`.
fn scopes(src: &str) -> Vec<(usize, usize, String)> {
    let re = Regex::new(r#"web::scope\(\s*"([^"]*)"\s*\)"#).unwrap();
    re.captures_iter(src)
        .map(|c| {
            let m = c.get(0).unwrap();
            (
                m.start(),
                span_end(src, m.end(), b'(', b')', true),
                c[1].to_owned(),
            )
        })
        .collect()
}

fn prefix_at(scopes: &[(usize, usize, String)], pos: usize) -> String {
    scopes
        .iter()
        .filter(|(s, e, _)| *s <= pos && pos < *e)
        .map(|(_, _, p)| p.as_str())
        .collect()
}

/// `(method, path)` registrations of one file, with the file's own scope prefixes.
fn registrations(src: &str) -> Vec<Route> {
    let re = Regex::new(concat!(
        r#"web::resource\(\s*"(?P<res>[^"]*)"\s*\)"#,
        r#"|\.route\(\s*"(?P<rpath>[^"]*)"\s*,\s*web::(?P<rmethod>get|post|put|patch|delete|head)\(\)"#,
        r#"|#\[(?P<amethod>get|post|put|patch|delete|head)\(\s*"(?P<apath>[^"]*)""#,
        r#"|web::(?P<method>get|post|put|patch|delete|head)\(\)"#,
    ))
    .unwrap();
    let scopes = scopes(src);
    let mut out = Vec::new();
    let mut resource: Option<(String, usize, usize)> = None; // path, routes found, pos
    let close = |res: &Option<(String, usize, usize)>| {
        if let Some((p, n, _)) = res {
            assert!(*n > 0, "web::resource(\"{p}\") registers no method route");
        }
    };
    for c in re.captures_iter(src) {
        let pos = c.get(0).unwrap().start();
        if let Some(p) = c.name("res") {
            close(&resource);
            resource = Some((p.as_str().to_owned(), 0, pos));
        } else if let (Some(p), Some(m)) = (c.name("rpath"), c.name("rmethod")) {
            out.push((
                m.as_str().to_uppercase(),
                prefix_at(&scopes, pos) + p.as_str(),
            ));
        } else if let (Some(p), Some(m)) = (c.name("apath"), c.name("amethod")) {
            out.push((
                m.as_str().to_uppercase(),
                prefix_at(&scopes, pos) + p.as_str(),
            ));
        } else if let Some(m) = c.name("method") {
            let (p, n, rpos) = resource
                .as_mut()
                .unwrap_or_else(|| panic!("web::{}() outside a resource", &c["method"]));
            *n += 1;
            out.push((
                m.as_str().to_uppercase(),
                prefix_at(&scopes, *rpos) + p.as_str(),
            ));
        }
    }
    close(&resource);
    out
}

/// Module name -> the prefix lib.rs configures its `routes` under.
fn module_prefixes(lib: &str) -> BTreeMap<String, String> {
    let scopes = scopes(lib);
    let configure = Regex::new(r"\.configure\(\s*([A-Za-z_][\w:]*)\s*\)").unwrap();
    // Local fns configured inside a scope hand their prefix to what they configure.
    let mut fn_prefix: BTreeMap<String, String> = BTreeMap::new();
    for c in configure.captures_iter(lib) {
        let target = &c[1];
        if !target.contains("::") {
            let pos = c.get(0).unwrap().start();
            fn_prefix.insert(target.to_owned(), prefix_at(&scopes, pos));
        }
    }
    let mut spans: Vec<(usize, usize, String)> = scopes.clone();
    for (name, prefix) in &fn_prefix {
        let def = Regex::new(&format!(r"fn\s+{name}\s*\(")).unwrap();
        let m = def
            .find(lib)
            .unwrap_or_else(|| panic!("lib.rs configures {name} but defines no fn {name}"));
        let body_start = lib[m.end()..].find('{').unwrap() + m.end();
        spans.push((
            body_start,
            span_end(lib, body_start, b'{', b'}', false),
            prefix.clone(),
        ));
    }
    let mut out = BTreeMap::new();
    for c in configure.captures_iter(lib) {
        let Some((module, f)) = c[1].rsplit_once("::") else {
            continue;
        };
        if f != "routes" {
            continue;
        }
        let prefix = prefix_at(&spans, c.get(0).unwrap().start());
        if let Some(prev) = out.insert(module.to_owned(), prefix.clone()) {
            assert_eq!(
                prev, prefix,
                "{module}::routes configured under two prefixes"
            );
        }
    }
    out
}

/// Every (METHOD, path) actix serves, read from the source.
fn registered_routes() -> BTreeSet<Route> {
    let dir = api_src();
    let lib = code(&dir.join("lib.rs"));
    let prefixes = module_prefixes(&lib);
    let param = Regex::new(r"\{([A-Za-z_]\w*):[^}]*\}").unwrap();
    let mut all = Vec::new();
    for (m, p) in registrations(&lib) {
        all.push((m, p, "lib.rs".to_owned()));
    }
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .collect();
    files.sort();
    for file in files {
        let module = file.file_stem().unwrap().to_str().unwrap().to_owned();
        if module == "lib" {
            continue;
        }
        let regs = registrations(&code(&file));
        if regs.is_empty() {
            continue;
        }
        let prefix = prefixes.get(&module).unwrap_or_else(|| {
            panic!("{module}.rs registers routes but lib.rs never configures {module}::routes")
        });
        for (m, p) in regs {
            all.push((m, format!("{prefix}{p}"), format!("{module}.rs")));
        }
    }
    let mut set = BTreeSet::new();
    for (m, p, file) in all {
        let p = param.replace_all(&p, "{$1}").into_owned();
        assert!(
            set.insert((m.clone(), p.clone())),
            "{m} {p} registered twice ({file})"
        );
    }
    set
}

fn documented_routes() -> BTreeSet<Route> {
    operations(&document())
        .into_iter()
        .map(|(p, m, _)| (m, p))
        .collect()
}

#[test]
fn every_registered_route_is_documented_and_vice_versa() {
    let registered = registered_routes();
    let documented = documented_routes();
    // Guard against a parser that silently finds nothing.
    for known in [
        ("GET", "/health"),
        ("GET", "/metrics"),
        ("GET", "/api/v1/openapi.json"),
        ("POST", "/api/v1/tenants"),
        ("DELETE", "/api/v1/tenants/{id}/consent/{purpose}"),
        ("POST", "/api/v1/webhooks/deliveries/{delivery_id}/retry"),
        ("POST", "/api/v1/maintenance/rotate-encryption-key"),
    ] {
        let r = (known.0.to_owned(), known.1.to_owned());
        assert!(
            registered.contains(&r),
            "parser missed {known:?}: {registered:#?}"
        );
    }
    let undocumented: Vec<_> = registered.difference(&documented).collect();
    let unregistered: Vec<_> = documented.difference(&registered).collect();
    assert!(
        undocumented.is_empty() && unregistered.is_empty(),
        "registered but not in the OpenAPI document: {undocumented:#?}\n\
         documented but not registered with actix: {unregistered:#?}"
    );
}

#[test]
fn the_route_parser_understands_scopes_and_forms() {
    let src = r#"
        fn app() {
            App::new()
                .route("/open", web::get().to(x))
                .service(
                    web::scope("/v9")
                        .wrap(mw)
                        .route("/inner/{id:\d+}", web::post().to(y))
                        .service(web::resource("/r").route(web::get().to(a)).route(web::put().to(b))),
                )
                .service(web::resource("/after").route(web::delete().to(c)));
        }
    "#;
    let got: BTreeSet<Route> = registrations(src).into_iter().collect();
    let want: BTreeSet<Route> = [
        ("GET", "/open"),
        ("POST", "/v9/inner/{id:\\d+}"),
        ("GET", "/v9/r"),
        ("PUT", "/v9/r"),
        ("DELETE", "/after"),
    ]
    .into_iter()
    .map(|(m, p)| (m.to_owned(), p.to_owned()))
    .collect();
    assert_eq!(got, want);

    let lib = r#"
        fn app() {
            App::new()
                .configure(health::routes)
                .service(web::scope("/api/v1").wrap(auth).configure(routes))
        }
        pub fn routes(cfg: &mut web::ServiceConfig) {
            cfg.configure(tenants::routes).configure(webhooks::routes);
        }
    "#;
    let prefixes = module_prefixes(lib);
    assert_eq!(prefixes["health"], "");
    assert_eq!(prefixes["tenants"], "/api/v1");
    assert_eq!(prefixes["webhooks"], "/api/v1");
}
