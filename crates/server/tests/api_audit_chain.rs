//! The tamper-evident audit log over HTTP: `seq`/`hash` on entries, `GET /audit-logs/verify`
//! and the streamed NDJSON export.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly by design"
)]

mod common;

use actix_web::http::{Method, StatusCode};
use actix_web::test::{call_service, read_body, TestRequest};
use common::{app, call, harness, sql, TestApp, ADMIN};
use serde_json::{json, Value};

/// The export's lines, parsed, and its content type.
async fn export<S: TestApp<B>, B: actix_web::body::MessageBody>(
    app: &S,
    query: &str,
    key: &str,
) -> (StatusCode, String, Vec<Value>) {
    let res = call_service(
        app,
        TestRequest::get()
            .uri(&format!("/api/v1/audit-logs/export{query}"))
            .insert_header(("X-API-Key", key))
            .to_request(),
    )
    .await;
    let status = res.status();
    let ctype = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = String::from_utf8(read_body(res).await.to_vec()).unwrap();
    let lines = if status == StatusCode::OK {
        body.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    } else {
        Vec::new()
    };
    (status, ctype, lines)
}

#[tokio::test(flavor = "multi_thread")]
async fn entries_are_sealed_verified_and_exported() {
    let h = harness().await;
    let app = app!(h);
    let mut tenants = Vec::new();
    for slug in ["a", "b"] {
        let t = call(
            &app,
            Method::POST,
            "/api/v1/tenants",
            Some(ADMIN),
            Some(json!({"name": slug, "slug": slug})),
        )
        .await;
        tenants.push(t.body["id"].as_str().unwrap().to_owned());
    }
    let listed = call(&app, Method::GET, "/api/v1/audit-logs", Some(ADMIN), None).await;
    assert!(listed.body[0]["seq"].is_null() && listed.body[0]["hash"].is_null());

    // Unsealed entries are not exported yet; sealing numbers them in commit order.
    let (status, ctype, lines) = export(&app, "", ADMIN).await;
    assert_eq!(
        (status, ctype.as_str(), lines.len()),
        (StatusCode::OK, "application/x-ndjson", 0)
    );
    assert_eq!(stratum_postgres::seal_pass(&h.pool).await.unwrap(), 2);
    let listed = call(&app, Method::GET, "/api/v1/audit-logs", Some(ADMIN), None).await;
    assert_eq!(listed.body[0]["seq"], 2);
    assert_eq!(listed.body[0]["hash"].as_str().unwrap().len(), 64);

    // More than one page of the export, written straight through the journal function.
    sql::exec(
        &h.db.url,
        "SELECT stratum_record(stratum_uuid_v7(), NULL, 'system', 'system', 'test.bulk', 'test',
                               g::text, NULL, jsonb_build_object('n', g, 'f', g / 3.0), '{}',
                               NULL, NULL, NULL, NULL, NULL)
           FROM generate_series(1, 2100) g",
    )
    .await;
    stratum_postgres::seal_pass(&h.pool).await.unwrap();

    let v = call(
        &app,
        Method::GET,
        "/api/v1/audit-logs/verify",
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(v.status, StatusCode::OK);
    assert_eq!(v.body["ok"], true, "{}", v.body);
    assert_eq!(v.body["verified"], 2102);
    assert_eq!(v.body["head"]["seq"], 2102);
    assert!(v.body["first_bad"].is_null());

    let (_, _, lines) = export(&app, "", ADMIN).await;
    assert_eq!(lines.len(), 2102);
    let seqs: Vec<i64> = lines.iter().map(|l| l["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, (1..=2102).collect::<Vec<_>>());
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let offline = stratum_audit::chain::verify_ndjson(text.as_bytes()).unwrap();
    assert_eq!(serde_json::to_value(&offline).unwrap(), v.body);

    // Filters as the list; a tenant-scoped key sees its own subtree only.
    let (_, _, only_a) = export(&app, &format!("?tenant_id={}", tenants[0]), ADMIN).await;
    assert_eq!(only_a.len(), 1);
    let (_, _, bulk) = export(&app, "?action=test.bulk", ADMIN).await;
    assert_eq!(bulk.len(), 2100);
    let scoped = call(
        &app,
        Method::POST,
        "/api/v1/api-keys",
        Some(ADMIN),
        Some(json!({"tenant_id": tenants[1], "scopes": ["admin"]})),
    )
    .await;
    let scoped_key = scoped.body["plaintext_key"].as_str().unwrap().to_owned();
    stratum_postgres::seal_pass(&h.pool).await.unwrap();
    let (status, _, mine) = export(&app, "", &scoped_key).await;
    assert_eq!(status, StatusCode::OK);
    assert!(mine.iter().all(|l| l["tenant_id"] == tenants[1].as_str()));
    assert!(!mine.is_empty());
    let (status, _, _) = export(&app, &format!("?tenant_id={}", tenants[0]), &scoped_key).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = export(&app, "?from=yesterday", ADMIN).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Verify is for global admin keys only.
    let denied = call(
        &app,
        Method::GET,
        "/api/v1/audit-logs/verify",
        Some(&scoped_key),
        None,
    )
    .await;
    assert_eq!(
        (denied.status, denied.code()),
        (StatusCode::FORBIDDEN, "FORBIDDEN")
    );

    // Tampering shows in both verifiers at the same entry.
    sql::exec(
        &h.db.url,
        "UPDATE audit_logs SET after_state = '{\"n\": 0}' WHERE seq = 1000",
    )
    .await;
    let v = call(
        &app,
        Method::GET,
        "/api/v1/audit-logs/verify",
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(v.body["ok"], false);
    assert_eq!(v.body["first_bad"]["seq"], 1000);
    assert_eq!(v.body["first_bad"]["reason"], "changed");
    let (_, _, lines) = export(&app, "", ADMIN).await;
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let offline = stratum_audit::chain::verify_ndjson(text.as_bytes()).unwrap();
    let bad = offline.first_bad.unwrap();
    assert_eq!((bad.seq, bad.reason.as_str()), (Some(1000), "changed"));
    assert_eq!(offline.verified, 999);
}
