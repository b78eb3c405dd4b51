//! Set-up shared by the adapter tests of this crate (SQL helpers and row fixtures are in
//! `stratum_testkit`).
#![allow(dead_code, reason = "each test binary uses a different part")]

use serde_json::json;
use stratum_core::{Caller, Journal};
use stratum_tenancy::{Tenant, TenantChange};
use uuid::Uuid;

/// A change setting the name (and the slug, when given), journalled with the name and
/// version it replaced and the name it wrote.
pub fn rename(id: Uuid, name: &str, slug: Option<&str>) -> TenantChange {
    rename_then(id, name, slug, |journal, _| journal)
}

/// [`rename`], its journal passed through `then` (with the tenant as written) first.
pub fn rename_then(
    id: Uuid,
    name: &str,
    slug: Option<&str>,
    then: fn(Journal, &Tenant) -> Journal,
) -> TenantChange {
    let (name, slug) = (name.to_owned(), slug.map(str::to_owned));
    Box::new(move |before: &Tenant| {
        let mut after = before.clone();
        after.name = name;
        if let Some(s) = slug {
            after.slug = s;
        }
        let journal = Caller::system()
            .journal("tenant.updated", "tenant")
            .resource(id)
            .tenant(Some(id))
            .before(Some(
                json!({"name": before.name, "version": before.version}),
            ))
            .after(Some(json!({"name": after.name})));
        let journal = then(journal, &after);
        Ok(Some((after, journal)))
    })
}
