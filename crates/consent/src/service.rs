//! The consent use cases.

use std::sync::Arc;

use serde_json::Value;
use stratum_core::{new_id, Caller, Clock, Scope, TenantDirectory, TenantDirectoryExt};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::model::*;
use crate::ports::*;
use crate::ConsentError;

type Result<T> = std::result::Result<T, ConsentError>;

fn to_json<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// What `POST /tenants/:id/consent` carries.
#[derive(Debug, Clone, PartialEq)]
pub struct NewConsent {
    /// Whose consent.
    pub subject_id: String,
    /// For what.
    pub purpose: String,
    /// RFC 3339, in the future; `None` = no expiry.
    pub expires_at: Option<String>,
    /// Free-form object.
    pub metadata: Option<Value>,
}

/// What `GET /tenants/:id/consent` filters on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConsentQuery {
    /// Only this subject.
    pub subject_id: Option<String>,
    /// Only this purpose.
    pub purpose: Option<String>,
    /// `true`: only active grants; `false`: only revoked or expired ones.
    pub active: Option<bool>,
}

/// How often a grant retries after losing a race with a concurrent first grant.
const GRANT_ATTEMPTS: u32 = stratum_core::WRITE_ATTEMPTS;

/// Consent: grant, list, revoke, and the check other services ask.
pub struct ConsentService {
    tenants: Arc<dyn TenantDirectory>,
    store: Arc<dyn ConsentStore>,
    clock: Arc<dyn Clock>,
}

impl ConsentService {
    /// Wires the service.
    pub fn new(
        tenants: Arc<dyn TenantDirectory>,
        store: Arc<dyn ConsentStore>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            tenants,
            store,
            clock,
        }
    }

    async fn visible_tenant(&self, caller: &Caller, tenant_id: Uuid) -> Result<()> {
        match self.tenants.visible_active(caller, tenant_id).await? {
            Some(_) => Ok(()),
            None => Err(ConsentError::TenantNotFound),
        }
    }

    /// Grants consent, or re-grants (re-activates and updates) the existing record.
    /// Returns the record and whether it was created.
    pub async fn grant(
        &self,
        caller: &Caller,
        tenant_id: Uuid,
        input: NewConsent,
    ) -> Result<(ConsentRecord, bool)> {
        caller.require(Scope::Write)?;
        let subject_id = SubjectId::parse(&input.subject_id)?;
        let purpose = Purpose::parse(&input.purpose)?;
        let now = self.clock.now();
        let expires_at = validate_expires_at(input.expires_at.as_deref(), now)?;
        let metadata = validate_metadata(input.metadata)?;
        self.visible_tenant(caller, tenant_id).await?;

        let mut attempt = 1;
        loop {
            let existing = self
                .store
                .find(tenant_id, subject_id.clone(), purpose.clone())
                .await?;
            let record = ConsentRecord {
                id: existing.as_ref().map_or_else(new_id, |e| e.id),
                tenant_id,
                subject_id: subject_id.clone(),
                purpose: purpose.clone(),
                granted: true,
                granted_at: now,
                revoked_at: None,
                expires_at,
                metadata: metadata.clone(),
                created_at: existing.as_ref().map_or(now, |e| e.created_at),
                updated_at: now,
                version: existing.as_ref().map_or(1, |e| e.version + 1),
            };
            let journal = caller
                .journal("consent.granted", "consent")
                .resource(record.id)
                .tenant(Some(tenant_id))
                .before(existing.as_ref().map(to_json))
                .after(Some(to_json(&record)));
            let expected = existing.as_ref().map(|e| e.version);
            match self
                .store
                .upsert_grant(record.clone(), expected, journal)
                .await
            {
                Ok(created) => return Ok((record, created)),
                // Another request created the record between our read and our write:
                // read again so the journal describes the record that really changes.
                Err(ConsentError::Conflict(_)) if attempt < GRANT_ATTEMPTS => attempt += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// The tenant's records, newest first.
    pub async fn list(
        &self,
        caller: &Caller,
        tenant_id: Uuid,
        query: ConsentQuery,
    ) -> Result<Vec<ConsentRecord>> {
        caller.require(Scope::Read)?;
        let subject_id = query
            .subject_id
            .as_deref()
            .map(SubjectId::parse)
            .transpose()?;
        let purpose = query.purpose.as_deref().map(Purpose::parse).transpose()?;
        self.visible_tenant(caller, tenant_id).await?;
        let now = self.clock.now();
        let filter = ConsentFilter {
            subject_id,
            purpose,
            active_at: (query.active == Some(true)).then_some(now),
            inactive_at: (query.active == Some(false)).then_some(now),
        };
        Ok(self.store.list(tenant_id, filter).await?)
    }

    /// Revokes the subject's active grant for `purpose`.
    pub async fn revoke(
        &self,
        caller: &Caller,
        tenant_id: Uuid,
        purpose: &str,
        subject_id: Option<&str>,
    ) -> Result<ConsentRecord> {
        caller.require(Scope::Write)?;
        let subject_id = SubjectId::parse(
            subject_id.ok_or_else(|| ConsentError::invalid("subject_id", "is required"))?,
        )?;
        let purpose = Purpose::parse(purpose)?;
        self.visible_tenant(caller, tenant_id).await?;
        let mut attempt = 1;
        loop {
            let now = self.clock.now();
            let before = self
                .store
                .find(tenant_id, subject_id.clone(), purpose.clone())
                .await?
                .filter(|r| r.is_active_at(now))
                .ok_or(ConsentError::NotFound)?;
            let after = ConsentRecord {
                granted: false,
                revoked_at: Some(now),
                updated_at: now,
                version: before.version + 1,
                ..before.clone()
            };
            let journal = caller
                .journal("consent.revoked", "consent")
                .resource(before.id)
                .tenant(Some(tenant_id))
                .before(Some(to_json(&before)))
                .after(Some(to_json(&after)));
            let revoked = self
                .store
                .revoke(
                    tenant_id,
                    subject_id.clone(),
                    purpose.clone(),
                    before.version,
                    now,
                    journal,
                )
                .await;
            match revoked {
                // Re-granted or changed since the read: read again so the journal is true.
                Err(ConsentError::Conflict(_)) if attempt < GRANT_ATTEMPTS => attempt += 1,
                other => return other,
            }
        }
    }

    /// True when the subject's consent to `purpose` holds at `at`: what other services ask
    /// before acting on a subject's data.
    pub async fn is_granted(
        &self,
        tenant_id: Uuid,
        subject_id: &SubjectId,
        purpose: &Purpose,
        at: OffsetDateTime,
    ) -> Result<bool> {
        Ok(self
            .store
            .is_granted(tenant_id, subject_id.clone(), purpose.clone(), at)
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use mockall::predicate::eq;
    use serde_json::json;
    use stratum_core::directory::MockTenantDirectory;
    use stratum_core::testing;
    use stratum_core::TenantEntry;
    use stratum_core::{Journal, RequestMeta, Scope, StoreError, TenantPath};
    use time::macros::datetime;
    use time::Duration;

    use super::*;

    const NOW: OffsetDateTime = datetime!(2026-01-31 09:15:00 UTC);
    const EARLIER: OffsetDateTime = datetime!(2025-06-01 12:00:00 UTC);

    /// How tenants are in the directory.
    #[derive(Clone, Copy, PartialEq)]
    enum TenantStatus {
        Active,
        Archived,
    }

    fn tenant(id: Uuid, status: TenantStatus) -> TenantEntry {
        TenantEntry {
            id,
            path: TenantPath::root(id),
            active: status == TenantStatus::Active,
        }
    }

    fn tenants_with(t: Option<TenantEntry>) -> Arc<dyn TenantDirectory> {
        let mut dir = MockTenantDirectory::new();
        dir.expect_find()
            .returning(move |id| Ok(t.clone().filter(|t| t.id == id)));
        Arc::new(dir)
    }

    fn clock() -> Arc<dyn Clock> {
        testing::fixed_clock(NOW)
    }

    fn service(tenant_id: Uuid, store: MockConsentStore) -> ConsentService {
        ConsentService::new(
            tenants_with(Some(tenant(tenant_id, TenantStatus::Active))),
            Arc::new(store),
            clock(),
        )
    }

    fn key_caller() -> Caller {
        testing::key_caller(
            Uuid::from_u128(7),
            Scope::Write,
            None,
            testing::meta("req-1", "203.0.113.9", "tests"),
        )
    }

    fn scoped_caller(to: Uuid) -> Caller {
        testing::key_caller(
            Uuid::from_u128(8),
            Scope::Write,
            Some(&TenantPath::root(to)),
            RequestMeta::default(),
        )
    }

    fn subject() -> SubjectId {
        SubjectId::parse("user-1").unwrap()
    }

    fn purpose() -> Purpose {
        Purpose::parse("marketing").unwrap()
    }

    fn new_consent() -> NewConsent {
        NewConsent {
            subject_id: "user-1".into(),
            purpose: "marketing".into(),
            expires_at: Some("2026-03-01T00:00:00Z".into()),
            metadata: Some(json!({"source": "signup"})),
        }
    }

    fn stored(tenant_id: Uuid) -> ConsentRecord {
        ConsentRecord {
            id: Uuid::from_u128(42),
            tenant_id,
            subject_id: subject(),
            purpose: purpose(),
            granted: true,
            granted_at: EARLIER,
            revoked_at: None,
            expires_at: None,
            metadata: json!({"source": "old"}),
            created_at: EARLIER,
            updated_at: EARLIER,
            version: 3,
        }
    }

    fn assert_journal(j: &Journal, action: &str, record_id: Uuid, tenant_id: Uuid) {
        assert_eq!(j.action, action);
        assert_eq!(j.resource_type, "consent");
        assert_eq!(j.resource_id, Some(record_id.to_string()));
        assert_eq!(j.tenant_id, Some(tenant_id));
        assert_eq!(j.actor_id, Uuid::from_u128(7).to_string());
        assert_eq!(j.actor_type, "api_key");
        assert_eq!(j.meta.request_id.as_deref(), Some("req-1"));
        assert_eq!(j.event, None, "consent is not a webhook event");
    }

    #[tokio::test]
    async fn first_grant_creates_and_journals() {
        let t = Uuid::now_v7();
        let mut store = MockConsentStore::new();
        store
            .expect_find()
            .with(eq(t), eq(subject()), eq(purpose()))
            .times(1)
            .returning(|_, _, _| Ok(None));
        store
            .expect_upsert_grant()
            .times(1)
            .withf(move |r, expected, j| {
                assert_journal(j, "consent.granted", r.id, t);
                assert_eq!(*expected, None, "a first grant expects no record");
                assert_eq!(r.version, 1);
                assert_eq!(j.before, None);
                assert_eq!(j.after, Some(to_json(r)));
                assert_eq!(
                    j.after.as_ref().unwrap()["expires_at"],
                    "2026-03-01T00:00:00.000Z"
                );
                true
            })
            .returning(|_, _, _| Ok(true));
        let (r, created) = service(t, store)
            .grant(&key_caller(), t, new_consent())
            .await
            .unwrap();
        assert!(created);
        assert_eq!(r.tenant_id, t);
        assert_eq!(
            (r.subject_id.as_str(), r.purpose.as_str()),
            ("user-1", "marketing")
        );
        assert!(r.granted && r.revoked_at.is_none());
        assert_eq!(r.granted_at, NOW);
        assert_eq!((r.created_at, r.updated_at), (NOW, NOW));
        assert_eq!(r.expires_at, Some(datetime!(2026-03-01 00:00:00 UTC)));
        assert_eq!(r.metadata, json!({"source": "signup"}));
        assert_eq!(r.id.get_version_num(), 7, "new records get UUIDv7 ids");
    }

    #[tokio::test]
    async fn regrant_reactivates_the_same_record() {
        let t = Uuid::now_v7();
        let old = ConsentRecord {
            granted: false,
            revoked_at: Some(EARLIER + Duration::days(1)),
            expires_at: Some(EARLIER + Duration::days(30)),
            ..stored(t)
        };
        let before = to_json(&old);
        let mut store = MockConsentStore::new();
        let found = old.clone();
        store
            .expect_find()
            .times(1)
            .returning(move |_, _, _| Ok(Some(found.clone())));
        store
            .expect_upsert_grant()
            .times(1)
            .withf(move |r, expected, j| {
                assert_journal(j, "consent.granted", old.id, t);
                assert_eq!(j.before.as_ref(), Some(&before));
                assert_eq!(j.after, Some(to_json(r)));
                assert_eq!(*expected, Some(old.version), "re-grants the version read");
                r.id == old.id && r.created_at == old.created_at && r.version == old.version + 1
            })
            .returning(|_, _, _| Ok(false));
        let input = NewConsent {
            expires_at: None,
            metadata: None,
            ..new_consent()
        };
        let (r, created) = service(t, store)
            .grant(&key_caller(), t, input)
            .await
            .unwrap();
        assert!(!created);
        assert_eq!(r.id, Uuid::from_u128(42));
        assert_eq!(r.created_at, EARLIER);
        assert!(r.granted);
        assert_eq!(r.revoked_at, None, "a new grant clears the revocation");
        assert_eq!(r.expires_at, None, "a new grant states its own expiry");
        assert_eq!(r.metadata, json!({}));
        assert_eq!((r.granted_at, r.updated_at), (NOW, NOW));
    }

    #[tokio::test]
    async fn grant_rereads_after_losing_a_race() {
        let t = Uuid::now_v7();
        let winner = stored(t);
        let mut store = MockConsentStore::new();
        let mut seq = mockall::Sequence::new();
        store
            .expect_find()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _, _| Ok(None));
        store
            .expect_upsert_grant()
            .times(1)
            .in_sequence(&mut seq)
            .withf(|_, expected, _| expected.is_none())
            .returning(|_, _, _| Err(ConsentError::Conflict("raced".into())));
        let found = winner.clone();
        store
            .expect_find()
            .times(1)
            .in_sequence(&mut seq)
            .returning(move |_, _, _| Ok(Some(found.clone())));
        store
            .expect_upsert_grant()
            .times(1)
            .in_sequence(&mut seq)
            .withf(move |r, expected, j| {
                j.resource_id == Some(winner.id.to_string())
                    && r.id == winner.id
                    && *expected == Some(winner.version)
                    && j.before.is_some()
            })
            .returning(|_, _, _| Ok(false));
        let (r, created) = service(t, store)
            .grant(&key_caller(), t, new_consent())
            .await
            .unwrap();
        assert!(!created);
        assert_eq!(r.id, Uuid::from_u128(42));
    }

    #[tokio::test]
    async fn grant_gives_up_after_repeated_conflicts() {
        let t = Uuid::now_v7();
        let mut store = MockConsentStore::new();
        let attempts = GRANT_ATTEMPTS as usize;
        store
            .expect_find()
            .times(attempts)
            .returning(|_, _, _| Ok(None));
        store
            .expect_upsert_grant()
            .times(attempts)
            .returning(|_, _, _| Err(ConsentError::Conflict("raced".into())));
        let err = service(t, store)
            .grant(&key_caller(), t, new_consent())
            .await
            .unwrap_err();
        assert!(matches!(err, ConsentError::Conflict(_)), "{err:?}");
    }

    #[tokio::test]
    async fn grant_validates_before_touching_anything() {
        let past = "2026-01-31T09:14:59.999Z".to_owned();
        let cases: Vec<(NewConsent, &str)> = vec![
            (
                NewConsent {
                    subject_id: String::new(),
                    ..new_consent()
                },
                "subject_id",
            ),
            (
                NewConsent {
                    subject_id: "x".repeat(256),
                    ..new_consent()
                },
                "subject_id",
            ),
            (
                NewConsent {
                    subject_id: "a\u{1b}b".into(),
                    ..new_consent()
                },
                "subject_id",
            ),
            (
                NewConsent {
                    purpose: "Marketing".into(),
                    ..new_consent()
                },
                "purpose",
            ),
            (
                NewConsent {
                    purpose: String::new(),
                    ..new_consent()
                },
                "purpose",
            ),
            (
                NewConsent {
                    expires_at: Some("next week".into()),
                    ..new_consent()
                },
                "expires_at",
            ),
            (
                NewConsent {
                    expires_at: Some("2026-01-31T09:15:00Z".into()),
                    ..new_consent()
                },
                "expires_at",
            ),
            (
                NewConsent {
                    expires_at: Some(past),
                    ..new_consent()
                },
                "expires_at",
            ),
            (
                NewConsent {
                    metadata: Some(json!(["not", "an", "object"])),
                    ..new_consent()
                },
                "metadata",
            ),
        ];
        for (input, expected) in cases {
            // No expectations: any call to the tenant or consent store would panic.
            let svc = ConsentService::new(
                Arc::new(MockTenantDirectory::new()),
                Arc::new(MockConsentStore::new()),
                clock(),
            );
            let t = Uuid::now_v7();
            match svc.grant(&key_caller(), t, input.clone()).await {
                Err(ConsentError::Validation { field, .. }) => {
                    assert_eq!(field, expected, "{input:?}")
                }
                other => panic!("{input:?} gave {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn invisible_archived_or_unknown_tenants_are_not_found() {
        let t = Uuid::now_v7();
        let cases = [
            (
                tenants_with(Some(tenant(t, TenantStatus::Active))),
                scoped_caller(Uuid::now_v7()),
            ),
            (
                tenants_with(Some(tenant(t, TenantStatus::Archived))),
                key_caller(),
            ),
            (tenants_with(None), key_caller()),
        ];
        for (tenants, caller) in cases {
            let svc = ConsentService::new(tenants, Arc::new(MockConsentStore::new()), clock());
            let grant = svc.grant(&caller, t, new_consent()).await;
            assert!(
                matches!(grant, Err(ConsentError::TenantNotFound)),
                "{grant:?}"
            );
            let list = svc.list(&caller, t, ConsentQuery::default()).await;
            assert!(
                matches!(list, Err(ConsentError::TenantNotFound)),
                "{list:?}"
            );
            let revoke = svc.revoke(&caller, t, "marketing", Some("user-1")).await;
            assert!(
                matches!(revoke, Err(ConsentError::TenantNotFound)),
                "{revoke:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_scoped_key_reaches_its_own_tenant() {
        let t = Uuid::now_v7();
        let mut store = MockConsentStore::new();
        store.expect_list().times(1).returning(|_, _| Ok(vec![]));
        let svc = service(t, store);
        assert!(svc
            .list(&scoped_caller(t), t, ConsentQuery::default())
            .await
            .unwrap()
            .is_empty());
    }

    #[tokio::test]
    async fn store_rejections_pass_through() {
        let t = Uuid::now_v7();
        let mut store = MockConsentStore::new();
        store.expect_find().returning(|_, _, _| Ok(None));
        store
            .expect_upsert_grant()
            .returning(|_, _, _| Err(ConsentError::TenantNotFound));
        let err = service(t, store)
            .grant(&key_caller(), t, new_consent())
            .await
            .unwrap_err();
        assert!(matches!(err, ConsentError::TenantNotFound), "{err:?}");

        let mut store = MockConsentStore::new();
        store
            .expect_find()
            .returning(|_, _, _| Err(StoreError::Unavailable));
        let err = service(t, store)
            .grant(&key_caller(), t, new_consent())
            .await
            .unwrap_err();
        assert!(
            matches!(err, ConsentError::Store(StoreError::Unavailable)),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn list_translates_active_into_filters() {
        let t = Uuid::now_v7();
        let cases = [
            (None, None, None),
            (Some(true), Some(NOW), None),
            (Some(false), None, Some(NOW)),
        ];
        for (active, active_at, inactive_at) in cases {
            let mut store = MockConsentStore::new();
            let expected = ConsentFilter {
                subject_id: Some(subject()),
                purpose: None,
                active_at,
                inactive_at,
            };
            let rec = stored(t);
            store
                .expect_list()
                .with(eq(t), eq(expected))
                .times(1)
                .returning(move |_, _| Ok(vec![rec.clone()]));
            let got = service(t, store)
                .list(
                    &key_caller(),
                    t,
                    ConsentQuery {
                        subject_id: Some("user-1".into()),
                        purpose: None,
                        active,
                    },
                )
                .await
                .unwrap();
            assert_eq!(got, vec![stored(t)]);
        }
    }

    #[tokio::test]
    async fn list_validates_its_filters() {
        let t = Uuid::now_v7();
        for (q, field) in [
            (
                ConsentQuery {
                    subject_id: Some(String::new()),
                    ..ConsentQuery::default()
                },
                "subject_id",
            ),
            (
                ConsentQuery {
                    purpose: Some("NOPE".into()),
                    ..ConsentQuery::default()
                },
                "purpose",
            ),
        ] {
            let err = service(t, MockConsentStore::new())
                .list(&key_caller(), t, q)
                .await
                .unwrap_err();
            assert!(
                matches!(err, ConsentError::Validation { field: f, .. } if f == field),
                "{err:?}"
            );
        }
    }

    #[tokio::test]
    async fn revoke_journals_before_and_after() {
        let t = Uuid::now_v7();
        let active = ConsentRecord {
            expires_at: Some(NOW + Duration::days(1)),
            ..stored(t)
        };
        let revoked = ConsentRecord {
            granted: false,
            revoked_at: Some(NOW),
            updated_at: NOW,
            version: active.version + 1,
            ..active.clone()
        };
        let mut store = MockConsentStore::new();
        let found = active.clone();
        store
            .expect_find()
            .times(1)
            .returning(move |_, _, _| Ok(Some(found.clone())));
        let (b, a) = (to_json(&active), to_json(&revoked));
        store
            .expect_revoke()
            .with(
                eq(t),
                eq(subject()),
                eq(purpose()),
                eq(active.version),
                eq(NOW),
                mockall::predicate::always(),
            )
            .times(1)
            .withf(move |_, _, _, _, _, j| {
                assert_journal(j, "consent.revoked", Uuid::from_u128(42), t);
                assert_eq!(j.before.as_ref(), Some(&b));
                assert_eq!(j.after.as_ref(), Some(&a));
                assert_eq!(a["revoked_at"], "2026-01-31T09:15:00.000Z");
                assert_eq!(a["granted"], false);
                true
            })
            .returning(move |_, _, _, _, _, _| Ok(revoked.clone()));
        let r = service(t, store)
            .revoke(&key_caller(), t, "marketing", Some("user-1"))
            .await
            .unwrap();
        assert_eq!(r.revoked_at, Some(NOW));
        assert!(!r.granted);
    }

    #[tokio::test]
    async fn revoke_needs_an_active_grant() {
        let t = Uuid::now_v7();
        let expired = ConsentRecord {
            expires_at: Some(NOW),
            ..stored(t)
        };
        let already = ConsentRecord {
            granted: false,
            revoked_at: Some(EARLIER),
            ..stored(t)
        };
        for found in [None, Some(expired), Some(already)] {
            let mut store = MockConsentStore::new();
            store
                .expect_find()
                .times(1)
                .returning(move |_, _, _| Ok(found.clone()));
            // No revoke expectation: reaching the store would panic.
            let err = service(t, store)
                .revoke(&key_caller(), t, "marketing", Some("user-1"))
                .await
                .unwrap_err();
            assert!(matches!(err, ConsentError::NotFound), "{err:?}");
        }
    }

    #[tokio::test]
    async fn revoke_passes_on_a_lost_race() {
        let t = Uuid::now_v7();
        let mut store = MockConsentStore::new();
        let found = stored(t);
        store
            .expect_find()
            .returning(move |_, _, _| Ok(Some(found.clone())));
        store
            .expect_revoke()
            .times(1)
            .returning(|_, _, _, _, _, _| Err(ConsentError::NotFound));
        let err = service(t, store)
            .revoke(&key_caller(), t, "marketing", Some("user-1"))
            .await
            .unwrap_err();
        assert!(matches!(err, ConsentError::NotFound), "{err:?}");
    }

    #[tokio::test]
    async fn revoke_rereads_after_a_version_conflict() {
        let t = Uuid::now_v7();
        let first = stored(t);
        // Re-granted between our read and our write: new metadata, newer version.
        let second = ConsentRecord {
            metadata: json!({"source": "regrant"}),
            granted_at: EARLIER + Duration::days(2),
            version: first.version + 2,
            ..stored(t)
        };
        let mut store = MockConsentStore::new();
        let mut seq = mockall::Sequence::new();
        let found = first.clone();
        store
            .expect_find()
            .times(1)
            .in_sequence(&mut seq)
            .returning(move |_, _, _| Ok(Some(found.clone())));
        let stale = first.version;
        store
            .expect_revoke()
            .times(1)
            .in_sequence(&mut seq)
            .withf(move |_, _, _, expected, _, _| *expected == stale)
            .returning(|_, _, _, _, _, _| Err(ConsentError::Conflict("changed".into())));
        let found = second.clone();
        store
            .expect_find()
            .times(1)
            .in_sequence(&mut seq)
            .returning(move |_, _, _| Ok(Some(found.clone())));
        let revoked = ConsentRecord {
            granted: false,
            revoked_at: Some(NOW),
            updated_at: NOW,
            version: second.version + 1,
            ..second.clone()
        };
        let (b, a) = (to_json(&second), to_json(&revoked));
        let current = second.version;
        let answer = revoked.clone();
        store
            .expect_revoke()
            .with(
                eq(t),
                eq(subject()),
                eq(purpose()),
                eq(current),
                eq(NOW),
                mockall::predicate::always(),
            )
            .times(1)
            .in_sequence(&mut seq)
            .withf(move |_, _, _, _, _, j| {
                assert_journal(j, "consent.revoked", Uuid::from_u128(42), t);
                assert_eq!(j.before.as_ref(), Some(&b), "the re-read state");
                assert_eq!(j.after.as_ref(), Some(&a));
                true
            })
            .returning(move |_, _, _, _, _, _| Ok(answer.clone()));
        let r = service(t, store)
            .revoke(&key_caller(), t, "marketing", Some("user-1"))
            .await
            .unwrap();
        assert_eq!(r, revoked);
    }

    #[tokio::test]
    async fn revoke_validates_subject_and_purpose() {
        let t = Uuid::now_v7();
        for (purpose, subject, field) in [
            ("marketing", None, "subject_id"),
            ("marketing", Some(""), "subject_id"),
            ("Bad Purpose", Some("user-1"), "purpose"),
        ] {
            let err = service(t, MockConsentStore::new())
                .revoke(&key_caller(), t, purpose, subject)
                .await
                .unwrap_err();
            assert!(
                matches!(err, ConsentError::Validation { field: f, .. } if f == field),
                "{err:?}"
            );
        }
    }

    #[tokio::test]
    async fn is_granted_asks_the_store_at_the_given_instant() {
        let t = Uuid::now_v7();
        let at = NOW + Duration::days(3);
        let mut store = MockConsentStore::new();
        store
            .expect_is_granted()
            .with(eq(t), eq(subject()), eq(purpose()), eq(at))
            .times(1)
            .returning(|_, _, _, _| Ok(true));
        store.expect_is_granted().returning(|_, _, _, _| Ok(false));
        let svc = service(t, store);
        assert!(svc.is_granted(t, &subject(), &purpose(), at).await.unwrap());
        assert!(!svc
            .is_granted(t, &subject(), &purpose(), NOW)
            .await
            .unwrap());
    }

    #[tokio::test]
    async fn a_read_scoped_caller_cannot_grant_or_revoke() {
        let t = Uuid::now_v7();
        let mut reader = key_caller();
        reader.actor.scope = Scope::Read;
        // No expectations: reaching the directory or the store panics the test.
        let svc = ConsentService::new(
            Arc::new(MockTenantDirectory::new()),
            Arc::new(MockConsentStore::new()),
            clock(),
        );
        let grant = svc.grant(&reader, t, new_consent()).await;
        assert!(
            matches!(&grant, Err(ConsentError::Forbidden(m)) if m == "this key lacks the 'write' scope"),
            "{grant:?}"
        );
        let revoke = svc.revoke(&reader, t, "marketing", Some("user-1")).await;
        assert!(
            matches!(revoke, Err(ConsentError::Forbidden(_))),
            "{revoke:?}"
        );
    }
}
