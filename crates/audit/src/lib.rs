//! Stratum audit: the audit entry, its filters and the read side of the log; the write
//! side ([`trail`]: the [`AuditSink`] port a change's transaction appends through, the
//! [`Redaction`] rules, the fan-out [`Audience`]); and the tamper-evident chain the entries
//! are sealed into ([`chain`]).

#![warn(missing_docs)]

pub mod chain;
pub mod trail;

use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;
use serde_json::Value;
use stratum_core::timefmt::rfc3339;
use stratum_core::{Caller, Limit, Scope, StoreError, TenantPath};
use thiserror::Error;
use time::OffsetDateTime;
use uuid::Uuid;

pub use chain::VerifyReport;
pub use trail::{Audience, AuditRecord, AuditSink, AuditTrail, EventRecord, Redaction};

/// One audit entry.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditEntry {
    /// Id.
    pub id: Uuid,
    /// The tenant the change belongs to.
    pub tenant_id: Option<Uuid>,
    /// Who: an API key id, `bootstrap` or `system`.
    pub actor_id: String,
    /// `api_key` or `system`.
    pub actor_type: String,
    /// e.g. `tenant.created`.
    pub action: String,
    /// e.g. `tenant`.
    pub resource_type: String,
    /// The resource's id.
    pub resource_id: Option<String>,
    /// State before, redacted.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub before_state: Option<Value>,
    /// State after, redacted.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub after_state: Option<Value>,
    /// `request_id`, `ip`, `user_agent`.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub metadata: Value,
    /// When.
    #[serde(with = "rfc3339")]
    pub created_at: OffsetDateTime,
    /// Position in the hash chain (1, 2, 3, …); null until sealed.
    pub seq: Option<i64>,
    /// hex SHA-256 of the previous entry's hash and this entry's canonical JSON; null
    /// until sealed.
    pub hash: Option<String>,
}

/// What `GET /audit-logs` filters on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditFilter {
    /// Only this tenant's entries.
    pub tenant_id: Option<Uuid>,
    /// Only this action.
    pub action: Option<String>,
    /// Only this resource type.
    pub resource_type: Option<String>,
    /// Only this actor.
    pub actor_id: Option<String>,
    /// At or after.
    pub from: Option<OffsetDateTime>,
    /// At or before.
    pub to: Option<OffsetDateTime>,
}

impl AuditFilter {
    /// Refuses text filters PostgreSQL cannot compare (U+0000).
    pub fn validate(&self) -> Result<(), AuditError> {
        for (field, v) in [
            ("action", &self.action),
            ("resource_type", &self.resource_type),
            ("actor_id", &self.actor_id),
        ] {
            if let Some(v) = v {
                stratum_core::text::check_str(field, v).map_err(|e| AuditError::Invalid {
                    field,
                    message: e.message,
                })?;
            }
        }
        Ok(())
    }
}

/// Why reading the log failed.
#[derive(Debug, Error)]
pub enum AuditError {
    /// No such entry, or not visible.
    #[error("audit entry not found")]
    NotFound,
    /// The cursor names no entry.
    #[error("cursor does not name an audit entry")]
    BadCursor,
    /// The filter's tenant is unknown or invisible.
    #[error("tenant not found")]
    TenantNotFound,
    /// `from` is after `to`.
    #[error("from must not be after to")]
    BadRange,
    /// A filter value cannot occur in the log (it holds U+0000).
    #[error("{field}: {message}")]
    Invalid {
        /// The offending query parameter.
        field: &'static str,
        /// What is wrong.
        message: &'static str,
    },
    /// The caller's key lacks the scope this needs.
    #[error("{0}")]
    Forbidden(String),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<stratum_core::Forbidden> for AuditError {
    fn from(e: stratum_core::Forbidden) -> Self {
        Self::Forbidden(e.0)
    }
}

/// The read side of the audit log.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait AuditLog: Send + Sync {
    /// Matching entries newest first (`created_at`, then `id`, descending), strictly
    /// after the entry `cursor` in that order, limited to tenants under `subtree` when
    /// given. `Ok(None)` when `cursor` names no entry.
    async fn list(
        &self,
        filter: AuditFilter,
        subtree: Option<TenantPath>,
        cursor: Option<Uuid>,
        limit: i64,
    ) -> Result<Option<Vec<AuditEntry>>, StoreError>;

    /// One entry with the path of its tenant (for visibility); `None` when unknown.
    async fn get(&self, id: Uuid) -> Result<Option<(AuditEntry, Option<TenantPath>)>, StoreError>;

    /// The path of a tenant, for checking a filter's visibility; `None` when unknown.
    async fn tenant_path(&self, tenant_id: Uuid) -> Result<Option<TenantPath>, StoreError>;

    /// Sealed entries matching `filter` in chain order (`seq` ascending), with `seq`
    /// greater than `after_seq`, limited to tenants under `subtree` when given.
    async fn export_page(
        &self,
        filter: AuditFilter,
        subtree: Option<TenantPath>,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<AuditEntry>, StoreError>;

    /// Recomputes the whole chain, from the purge checkpoint (or genesis) to the head, on
    /// one consistent snapshot.
    async fn verify_chain(&self) -> Result<VerifyReport, StoreError>;
}

/// Reading the audit log with the caller's visibility.
pub struct AuditService {
    log: Arc<dyn AuditLog>,
}

impl AuditService {
    /// Wires the service.
    pub fn new(log: Arc<dyn AuditLog>) -> Self {
        Self { log }
    }

    /// A page of entries and the cursor of the next page, if more remain.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use std::sync::Arc;
    /// use stratum_audit::{AuditFilter, AuditService, MockAuditLog};
    /// use stratum_core::{Caller, Limit};
    ///
    /// let mut log = MockAuditLog::new();
    /// // The service asks for one entry more than the page to learn whether more remain.
    /// log.expect_list()
    ///     .withf(|filter, subtree, cursor, limit| {
    ///         filter.action.as_deref() == Some("tenant.created")
    ///             && subtree.is_none() // a global caller sees every tenant
    ///             && cursor.is_none()
    ///             && *limit == 11
    ///     })
    ///     .returning(|_, _, _, _| Ok(Some(Vec::new())));
    /// let audit = AuditService::new(Arc::new(log));
    /// let filter = AuditFilter { action: Some("tenant.created".into()), ..Default::default() };
    /// let limit = Limit::new(Some(10), 50, 100).unwrap();
    /// let (page, next) = audit.list(&Caller::system(), filter, None, limit).await.unwrap();
    /// assert!(page.is_empty() && next.is_none());
    /// # });
    /// ```
    pub async fn list(
        &self,
        caller: &Caller,
        filter: AuditFilter,
        cursor: Option<Uuid>,
        limit: Limit,
    ) -> Result<(Vec<AuditEntry>, Option<Uuid>), AuditError> {
        caller.require(Scope::Read)?;
        self.check_filter(caller, &filter).await?;
        if let Some(c) = cursor {
            // A cursor the caller cannot see is answered like one that does not exist, so
            // the answer reveals nothing about other tenants' entries.
            let visible = self
                .log
                .get(c)
                .await?
                .is_some_and(|(_, path)| caller.actor.can_see_owned_by(path.as_ref()));
            if !visible {
                return Err(AuditError::BadCursor);
            }
        }
        let mut rows = self
            .log
            .list(
                filter,
                caller.actor.subtree().cloned(),
                cursor,
                limit.as_i64() + 1,
            )
            .await?
            .ok_or(AuditError::BadCursor)?;
        let next = stratum_core::next_page(&mut rows, limit, |e| e.id);
        Ok((rows, next))
    }

    /// Checks an export's filter for the caller (range, tenant visibility) and returns the
    /// subtree the export is limited to.
    pub async fn export_scope(
        &self,
        caller: &Caller,
        filter: &AuditFilter,
    ) -> Result<Option<TenantPath>, AuditError> {
        caller.require(Scope::Read)?;
        self.check_filter(caller, filter).await?;
        Ok(caller.actor.subtree().cloned())
    }

    /// One page of an export: sealed entries after `after_seq`, chain order.
    pub async fn export_page(
        &self,
        filter: AuditFilter,
        subtree: Option<TenantPath>,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<AuditEntry>, AuditError> {
        Ok(self
            .log
            .export_page(filter, subtree, after_seq, limit)
            .await?)
    }

    /// Verifies the whole chain: a global admin operation (admin scope, a key bound to no
    /// tenant).
    pub async fn verify(&self, caller: &Caller) -> Result<VerifyReport, AuditError> {
        caller.require_global_admin()?;
        Ok(self.log.verify_chain().await?)
    }

    async fn check_filter(&self, caller: &Caller, filter: &AuditFilter) -> Result<(), AuditError> {
        filter.validate()?;
        if let (Some(f), Some(t)) = (filter.from, filter.to) {
            if f > t {
                return Err(AuditError::BadRange);
            }
        }
        if let Some(t) = filter.tenant_id {
            let visible = self
                .log
                .tenant_path(t)
                .await?
                .is_some_and(|p| caller.actor.can_see(&p));
            if !visible {
                return Err(AuditError::TenantNotFound);
            }
        }
        Ok(())
    }

    /// One entry the caller may see.
    pub async fn get(&self, caller: &Caller, id: Uuid) -> Result<AuditEntry, AuditError> {
        caller.require(Scope::Read)?;
        match self.log.get(id).await? {
            Some((entry, path)) => {
                if caller.actor.can_see_owned_by(path.as_ref()) {
                    Ok(entry)
                } else {
                    Err(AuditError::NotFound)
                }
            }
            None => Err(AuditError::NotFound),
        }
    }
}

/// Replaces the values of `keys` (at any depth) with `"[REDACTED]"`: the
/// [`Redaction`] rule for these keys, applied once.
pub fn redact_keys(value: &mut Value, keys: &[&str]) {
    Redaction::keys(keys.iter().copied()).apply(value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use stratum_core::{Actor, ActorKind, RequestMeta, Scope, TenantScope};

    fn entry(id: Uuid) -> AuditEntry {
        AuditEntry {
            id,
            tenant_id: None,
            actor_id: "system".into(),
            actor_type: "system".into(),
            action: "tenant.created".into(),
            resource_type: "tenant".into(),
            resource_id: None,
            before_state: None,
            after_state: None,
            metadata: json!({}),
            created_at: OffsetDateTime::UNIX_EPOCH,
            seq: None,
            hash: None,
        }
    }

    fn scoped(path: TenantPath) -> Caller {
        Caller {
            actor: Actor {
                kind: ActorKind::ApiKey(Uuid::now_v7()),
                scope: Scope::Read,
                tenant: Some(TenantScope {
                    id: path.leaf().unwrap(),
                    path,
                }),
            },
            meta: RequestMeta::default(),
        }
    }

    #[test]
    fn redaction_reaches_nested_values() {
        let mut v = json!({"secret": "s", "a": [{"secret": "t", "x": 1}], "b": {"secret": null}});
        redact_keys(&mut v, &["secret"]);
        assert_eq!(
            v,
            json!({"secret": "[REDACTED]", "a": [{"secret": "[REDACTED]", "x": 1}], "b": {"secret": "[REDACTED]"}})
        );
    }

    #[tokio::test]
    async fn list_pages_and_passes_the_callers_subtree() {
        let path = TenantPath::root(Uuid::now_v7());
        let expected = path.clone();
        let ids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
        let rows: Vec<AuditEntry> = ids.iter().map(|i| entry(*i)).collect();
        let mut log = MockAuditLog::new();
        log.expect_list()
            .withf(move |_, subtree, cursor, limit| {
                subtree.as_ref() == Some(&expected) && cursor.is_none() && *limit == 3
            })
            .returning(move |_, _, _, _| Ok(Some(rows.clone())));
        let svc = AuditService::new(Arc::new(log));
        let (page, next) = svc
            .list(
                &scoped(path),
                AuditFilter::default(),
                None,
                Limit::new(Some(2), 50, 100).unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(page.len(), 2);
        assert_eq!(next, Some(ids[1]));
    }

    #[tokio::test]
    async fn a_foreign_cursor_is_answered_like_an_unknown_one() {
        let mine = TenantPath::root(Uuid::now_v7());
        let theirs = TenantPath::root(Uuid::now_v7());
        let foreign_id = Uuid::now_v7();
        let global_id = Uuid::now_v7();
        let mut log = MockAuditLog::new();
        log.expect_get().returning(move |id| {
            Ok(if id == foreign_id {
                Some((entry(id), Some(theirs.clone())))
            } else if id == global_id {
                Some((entry(id), None))
            } else {
                None
            })
        });
        log.expect_list().times(0);
        let svc = AuditService::new(Arc::new(log));
        let caller = scoped(mine);
        let limit = Limit::new(None, 50, 100).unwrap();
        for cursor in [foreign_id, global_id, Uuid::now_v7()] {
            let err = svc
                .list(&caller, AuditFilter::default(), Some(cursor), limit)
                .await
                .unwrap_err();
            assert!(matches!(err, AuditError::BadCursor), "{err:?}");
        }
    }

    #[tokio::test]
    async fn nul_in_a_text_filter_is_refused_before_the_store() {
        let mut log = MockAuditLog::new();
        log.expect_list().times(0);
        let svc = AuditService::new(Arc::new(log));
        let limit = Limit::new(None, 50, 100).unwrap();
        let filters = [
            (
                "action",
                AuditFilter {
                    action: Some("a\u{0}".into()),
                    ..Default::default()
                },
            ),
            (
                "actor_id",
                AuditFilter {
                    actor_id: Some("\u{0}".into()),
                    ..Default::default()
                },
            ),
            (
                "resource_type",
                AuditFilter {
                    resource_type: Some("x\u{0}y".into()),
                    ..Default::default()
                },
            ),
        ];
        for (name, f) in filters {
            let err = svc
                .list(&Caller::system(), f, None, limit)
                .await
                .unwrap_err();
            assert!(
                matches!(err, AuditError::Invalid { field, .. } if field == name),
                "{err:?}"
            );
        }
    }

    #[tokio::test]
    async fn unknown_cursor_and_foreign_tenant_are_refused() {
        let mut log = MockAuditLog::new();
        log.expect_get().returning(|_| Ok(None));
        log.expect_list().returning(|_, _, _, _| Ok(None));
        let foreign = TenantPath::root(Uuid::now_v7());
        log.expect_tenant_path()
            .returning(move |_| Ok(Some(foreign.clone())));
        let svc = AuditService::new(Arc::new(log));
        let caller = scoped(TenantPath::root(Uuid::now_v7()));
        let limit = Limit::new(None, 50, 100).unwrap();
        let err = svc
            .list(&caller, AuditFilter::default(), Some(Uuid::now_v7()), limit)
            .await
            .unwrap_err();
        assert!(matches!(err, AuditError::BadCursor));
        let filter = AuditFilter {
            tenant_id: Some(Uuid::now_v7()),
            ..Default::default()
        };
        let err = svc.list(&caller, filter, None, limit).await.unwrap_err();
        assert!(matches!(err, AuditError::TenantNotFound));
    }

    #[tokio::test]
    async fn exports_are_limited_to_the_callers_subtree() {
        let path = TenantPath::root(Uuid::now_v7());
        let foreign = TenantPath::root(Uuid::now_v7());
        let mut log = MockAuditLog::new();
        log.expect_tenant_path()
            .returning(move |_| Ok(Some(foreign.clone())));
        let svc = AuditService::new(Arc::new(log));
        let caller = scoped(path.clone());
        assert_eq!(
            svc.export_scope(&caller, &AuditFilter::default())
                .await
                .unwrap(),
            Some(path)
        );
        let filter = AuditFilter {
            tenant_id: Some(Uuid::now_v7()),
            ..Default::default()
        };
        let err = svc.export_scope(&caller, &filter).await.unwrap_err();
        assert!(matches!(err, AuditError::TenantNotFound));
        let backwards = AuditFilter {
            from: Some(OffsetDateTime::UNIX_EPOCH + time::Duration::days(1)),
            to: Some(OffsetDateTime::UNIX_EPOCH),
            ..Default::default()
        };
        let err = svc.export_scope(&caller, &backwards).await.unwrap_err();
        assert!(matches!(err, AuditError::BadRange));
        assert_eq!(
            svc.export_scope(&Caller::system(), &AuditFilter::default())
                .await
                .unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn scoped_callers_do_not_see_global_entries() {
        let mut log = MockAuditLog::new();
        log.expect_get().returning(|id| Ok(Some((entry(id), None))));
        let svc = AuditService::new(Arc::new(log));
        let err = svc
            .get(&scoped(TenantPath::root(Uuid::now_v7())), Uuid::now_v7())
            .await
            .unwrap_err();
        assert!(matches!(err, AuditError::NotFound));
        assert!(svc.get(&Caller::system(), Uuid::now_v7()).await.is_ok());
    }

    #[tokio::test]
    async fn only_a_global_admin_verifies_the_chain() {
        let mut log = MockAuditLog::new();
        // The chain is never read for a caller that may not verify it.
        log.expect_verify_chain().times(0);
        let svc = AuditService::new(Arc::new(log));
        let err = svc
            .verify(&scoped(TenantPath::root(Uuid::now_v7())))
            .await
            .unwrap_err();
        assert!(matches!(err, AuditError::Forbidden(_)), "{err:?}");
    }
}
