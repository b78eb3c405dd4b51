//! Rows written with SQL, for tests that need a webhook or a backlog without going through
//! the services (or need them back-dated, inactive, or by the thousand).

use diesel::sql_types::{Array, Bool, Nullable, Text, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::sql::{conn, exec_on};

/// A webhook row to insert: global or a tenant's, its subscriptions, whether it is active.
/// Its URL is `https://example.com/<id>` and its secret a placeholder no test decrypts.
#[derive(Debug, Clone)]
pub struct WebhookRow {
    /// Its id.
    pub id: Uuid,
    /// Its tenant; `None` for a global webhook.
    pub tenant: Option<Uuid>,
    /// The event types it subscribes to.
    pub events: Vec<String>,
    /// Whether it receives deliveries.
    pub active: bool,
}

impl WebhookRow {
    /// An active global webhook subscribed to `tenant.updated`.
    pub fn new() -> Self {
        Self {
            id: Uuid::now_v7(),
            tenant: None,
            events: vec!["tenant.updated".to_owned()],
            active: true,
        }
    }

    /// Belonging to `tenant` (`None`: global).
    pub fn tenant(mut self, tenant: Option<Uuid>) -> Self {
        self.tenant = tenant;
        self
    }

    /// Subscribed to `events`.
    pub fn events(mut self, events: &[&str]) -> Self {
        self.events = events.iter().map(|e| (*e).to_owned()).collect();
        self
    }

    /// Active or not.
    pub fn active(mut self, active: bool) -> Self {
        self.active = active;
        self
    }

    /// Inserts it through `url`; returns its id.
    pub async fn insert(&self, url: &str) -> Uuid {
        self.insert_on(&mut conn(url).await).await
    }

    /// Inserts it on `c`; returns its id.
    pub async fn insert_on(&self, c: &mut AsyncPgConnection) -> Uuid {
        diesel::sql_query(
            "INSERT INTO webhooks (id, tenant_id, url, events, secret_encrypted, active)
             VALUES ($1, $2, 'https://example.com/' || $1, $3, 'v1:x:y', $4)",
        )
        .bind::<SqlUuid, _>(self.id)
        .bind::<Nullable<SqlUuid>, _>(self.tenant)
        .bind::<Array<Text>, _>(&self.events)
        .bind::<Bool, _>(self.active)
        .execute(c)
        .await
        .unwrap_or_else(|e| panic!("inserting webhook {}: {e}", self.id));
        self.id
    }
}

impl Default for WebhookRow {
    fn default() -> Self {
        Self::new()
    }
}

/// `n` pending deliveries to `webhook`, one `tenant.updated` event each (payload `{"n": i}`),
/// in one statement on `url`.
pub async fn enqueue(url: &str, webhook: Uuid, n: usize) {
    enqueue_on(&mut conn(url).await, webhook, n).await;
}

/// [`enqueue`] on `c`.
pub async fn enqueue_on(c: &mut AsyncPgConnection, webhook: Uuid, n: usize) {
    exec_on(
        c,
        &format!(
            "WITH ev AS (
                 INSERT INTO webhook_events (id, event_type, payload)
                 SELECT stratum_uuid_v7(), 'tenant.updated', jsonb_build_object('n', g)
                   FROM generate_series(1, {n}) g
                 RETURNING id)
             INSERT INTO webhook_deliveries (id, webhook_id, event_id, event_type)
             SELECT stratum_uuid_v7(), '{webhook}', ev.id, 'tenant.updated' FROM ev"
        ),
    )
    .await;
}

/// An active root tenant named `T` with `slug`, through `url`; returns its id.
pub async fn tenant(url: &str, slug: &str) -> Uuid {
    tenant_on(&mut conn(url).await, slug).await
}

/// [`tenant`] on `c`.
pub async fn tenant_on(c: &mut AsyncPgConnection, slug: &str) -> Uuid {
    let id = Uuid::now_v7();
    exec_on(
        c,
        &format!(
            "INSERT INTO tenants (id, name, slug, ancestry_path, depth, metadata)
             VALUES ('{id}', 'T', '{slug}', '/{id}/', 0, '{{}}')"
        ),
    )
    .await;
    id
}
