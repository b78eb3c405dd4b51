//! Consent records on PostgreSQL.

use async_trait::async_trait;
use diesel::dsl::{exists, not};
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::sql_types::{Bool, Nullable};
use diesel::upsert::excluded;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde_json::Value;
use stratum_consent::{
    ConsentError, ConsentFilter, ConsentRecord, ConsentStore, Purpose, SubjectId,
};
use stratum_core::{Journal, StoreError};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::map_query_error;
use crate::in_tx;
use crate::journal::record;
use crate::schema::{consent_records, tenants};
use crate::tx::{read_conn, TxError};
use crate::Pool;

type TxResult<T> = Result<T, TxError<ConsentError>>;

fn fail<T>(e: ConsentError) -> TxResult<T> {
    Err(TxError::Domain(e))
}

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = consent_records)]
struct ConsentRow {
    id: Uuid,
    tenant_id: Uuid,
    subject_id: String,
    purpose: String,
    granted: bool,
    granted_at: OffsetDateTime,
    revoked_at: Option<OffsetDateTime>,
    expires_at: Option<OffsetDateTime>,
    metadata: Value,
    created_at: OffsetDateTime,
    updated_at: OffsetDateTime,
    version: i64,
}

impl ConsentRow {
    fn into_domain(self) -> Result<ConsentRecord, StoreError> {
        let bad = |what: &str| {
            StoreError::internal(format!("consent record {} has a malformed {what}", self.id))
        };
        let subject_id = SubjectId::parse(&self.subject_id).map_err(|_| bad("subject_id"))?;
        let purpose = Purpose::parse(&self.purpose).map_err(|_| bad("purpose"))?;
        Ok(ConsentRecord {
            id: self.id,
            tenant_id: self.tenant_id,
            subject_id,
            purpose,
            granted: self.granted,
            granted_at: self.granted_at,
            revoked_at: self.revoked_at,
            expires_at: self.expires_at,
            metadata: self.metadata,
            created_at: self.created_at,
            updated_at: self.updated_at,
            version: self.version,
        })
    }

    fn from_domain(r: &ConsentRecord) -> Self {
        Self {
            id: r.id,
            tenant_id: r.tenant_id,
            subject_id: r.subject_id.as_str().to_owned(),
            purpose: r.purpose.as_str().to_owned(),
            granted: r.granted,
            granted_at: r.granted_at,
            revoked_at: r.revoked_at,
            expires_at: r.expires_at,
            metadata: r.metadata.clone(),
            created_at: r.created_at,
            updated_at: r.updated_at,
            version: r.version,
        }
    }
}

type Predicate = Box<dyn BoxableExpression<consent_records::table, Pg, SqlType = Nullable<Bool>>>;

/// Granted, not revoked and not expired at `at`: the one definition of an active grant.
fn active_at(at: OffsetDateTime) -> Predicate {
    Box::new(
        consent_records::granted
            .and(consent_records::revoked_at.is_null())
            .and(
                consent_records::expires_at
                    .is_null()
                    .or(consent_records::expires_at.gt(at)),
            ),
    )
}

/// Locks an active tenant row (shared), so it cannot be archived before the commit;
/// false when gone or archived.
async fn lock_active_tenant(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<bool> {
    let found: Option<Uuid> = tenants::table
        .find(id)
        .filter(tenants::status.eq(crate::status::TENANT_ACTIVE))
        .select(tenants::id)
        .for_share()
        .first(conn)
        .await
        .optional()?;
    Ok(found.is_some())
}

/// Consent records on PostgreSQL.
#[derive(Clone)]
pub struct PgConsentStore {
    pool: Pool,
}

impl PgConsentStore {
    /// Wires the store.
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }
}

#[async_trait]
impl ConsentStore for PgConsentStore {
    async fn find(
        &self,
        tenant_id: Uuid,
        subject_id: SubjectId,
        purpose: Purpose,
    ) -> Result<Option<ConsentRecord>, StoreError> {
        let mut conn = read_conn(&self.pool).await?;
        let row: Option<ConsentRow> = consent_records::table
            .filter(consent_records::tenant_id.eq(tenant_id))
            .filter(consent_records::subject_id.eq(subject_id.as_str()))
            .filter(consent_records::purpose.eq(purpose.as_str()))
            .select(ConsentRow::as_select())
            .first(&mut conn)
            .await
            .optional()
            .map_err(map_query_error)?;
        row.map(ConsentRow::into_domain).transpose()
    }

    async fn list(
        &self,
        tenant_id: Uuid,
        filter: ConsentFilter,
    ) -> Result<Vec<ConsentRecord>, StoreError> {
        let mut conn = read_conn(&self.pool).await?;
        let mut q = consent_records::table
            .filter(consent_records::tenant_id.eq(tenant_id))
            .into_boxed();
        if let Some(s) = &filter.subject_id {
            q = q.filter(consent_records::subject_id.eq(s.as_str().to_owned()));
        }
        if let Some(p) = &filter.purpose {
            q = q.filter(consent_records::purpose.eq(p.as_str().to_owned()));
        }
        if let Some(at) = filter.active_at {
            q = q.filter(active_at(at));
        }
        if let Some(at) = filter.inactive_at {
            q = q.filter(not(active_at(at)));
        }
        let rows: Vec<ConsentRow> = q
            .order((
                consent_records::created_at.desc(),
                consent_records::id.desc(),
            ))
            .select(ConsentRow::as_select())
            .load(&mut conn)
            .await
            .map_err(map_query_error)?;
        rows.into_iter().map(ConsentRow::into_domain).collect()
    }

    async fn upsert_grant(
        &self,
        consent: ConsentRecord,
        expected: Option<i64>,
        journal: Journal,
    ) -> Result<bool, ConsentError> {
        in_tx!(self.pool, ConsentError, |conn| {
            if !lock_active_tenant(conn, consent.tenant_id).await? {
                return fail(ConsentError::TenantNotFound);
            }
            // Holding our own row (when it exists) makes "inserted or not" exact.
            let existed = consent_records::table
                .find(consent.id)
                .select(consent_records::id)
                .for_update()
                .first::<Uuid>(conn)
                .await
                .optional()?
                .is_some();
            if expected.is_some() && !existed {
                // The record read was purged meanwhile: the journal would describe a
                // state that is gone.
                return fail(ConsentError::Conflict(
                    "the consent record changed concurrently; retry".into(),
                ));
            }
            let mut row = ConsentRow::from_domain(&consent);
            row.version = 1;
            let upsert = diesel::insert_into(consent_records::table)
                .values(&row)
                .on_conflict((
                    consent_records::tenant_id,
                    consent_records::subject_id,
                    consent_records::purpose,
                ))
                .do_update()
                .set((
                    consent_records::granted.eq(excluded(consent_records::granted)),
                    consent_records::granted_at.eq(excluded(consent_records::granted_at)),
                    consent_records::revoked_at.eq(None::<OffsetDateTime>),
                    consent_records::expires_at.eq(excluded(consent_records::expires_at)),
                    consent_records::metadata.eq(excluded(consent_records::metadata)),
                    consent_records::updated_at.eq(excluded(consent_records::updated_at)),
                    consent_records::version.eq(consent_records::version + 1),
                ));
            // `ON CONFLICT … DO UPDATE … WHERE`: only the record the journal names, at the
            // version the journal's before-state describes. A row created concurrently
            // under another id, or changed since it was read, is left alone and reported,
            // so the audit entry stays true.
            let written = diesel::query_dsl::methods::FilterDsl::filter(
                upsert,
                consent_records::id
                    .eq(consent.id)
                    .and(consent_records::version.eq(expected.unwrap_or(0))),
            )
            .execute(conn)
            .await?;
            if written == 0 {
                return fail(ConsentError::Conflict(
                    "the consent record was created concurrently; retry".into(),
                ));
            }
            record(conn, &journal).await?;
            Ok(!existed)
        })
    }

    async fn revoke(
        &self,
        tenant_id: Uuid,
        subject_id: SubjectId,
        purpose: Purpose,
        expected: i64,
        at: OffsetDateTime,
        journal: Journal,
    ) -> Result<ConsentRecord, ConsentError> {
        in_tx!(self.pool, ConsentError, |conn| {
            let row: Option<ConsentRow> = diesel::update(
                consent_records::table
                    .filter(consent_records::tenant_id.eq(tenant_id))
                    .filter(consent_records::subject_id.eq(subject_id.as_str()))
                    .filter(consent_records::purpose.eq(purpose.as_str()))
                    .filter(consent_records::version.eq(expected))
                    .filter(active_at(at)),
            )
            .set((
                consent_records::granted.eq(false),
                consent_records::revoked_at.eq(Some(at)),
                consent_records::updated_at.eq(at),
                consent_records::version.eq(consent_records::version + 1),
            ))
            .returning(ConsentRow::as_returning())
            .get_result(conn)
            .await
            .optional()?;
            let Some(row) = row else {
                let still_active: bool = diesel::select(exists(
                    consent_records::table
                        .filter(consent_records::tenant_id.eq(tenant_id))
                        .filter(consent_records::subject_id.eq(subject_id.as_str()))
                        .filter(consent_records::purpose.eq(purpose.as_str()))
                        .filter(active_at(at)),
                ))
                .get_result(conn)
                .await?;
                return fail(if still_active {
                    ConsentError::Conflict("the consent record changed concurrently; retry".into())
                } else {
                    ConsentError::NotFound
                });
            };
            let revoked = row
                .into_domain()
                .map_err(|e| TxError::Domain(ConsentError::from(e)))?;
            record(conn, &journal).await?;
            Ok(revoked)
        })
    }

    async fn is_granted(
        &self,
        tenant_id: Uuid,
        subject_id: SubjectId,
        purpose: Purpose,
        at: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let mut conn = read_conn(&self.pool).await?;
        diesel::select(exists(
            consent_records::table
                .filter(consent_records::tenant_id.eq(tenant_id))
                .filter(consent_records::subject_id.eq(subject_id.as_str()))
                .filter(consent_records::purpose.eq(purpose.as_str()))
                .filter(active_at(at)),
        ))
        .get_result(&mut conn)
        .await
        .map_err(map_query_error)
    }
}
