//! Tenancy's side of the [`TenantDirectory`] port other domains ask about tenants.

use std::sync::Arc;

use async_trait::async_trait;
use stratum_core::{StoreError, TenantDirectory, TenantEntry};
use uuid::Uuid;

use crate::{TenantStatus, TenantStore};

/// The tenant directory over a [`TenantStore`]: what webhooks and consent are wired with.
#[derive(Clone)]
pub struct StoreDirectory {
    store: Arc<dyn TenantStore>,
}

impl StoreDirectory {
    /// A directory answering from `store`.
    pub fn new(store: Arc<dyn TenantStore>) -> Self {
        Self { store }
    }
}

#[async_trait]
impl TenantDirectory for StoreDirectory {
    async fn find(&self, id: Uuid) -> Result<Option<TenantEntry>, StoreError> {
        Ok(self.store.get(id).await?.map(|t| TenantEntry {
            id: t.id,
            path: t.ancestry_path,
            active: t.status == TenantStatus::Active,
        }))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use stratum_core::TenantPath;
    use time::OffsetDateTime;

    use super::*;
    use crate::{MockTenantStore, Tenant};

    #[tokio::test]
    async fn entries_carry_path_and_activity() {
        let (parent, id) = (Uuid::now_v7(), Uuid::now_v7());
        let path = TenantPath::root(parent).child(id);
        let stored = Tenant {
            id,
            parent_id: Some(parent),
            name: "Acme".into(),
            slug: "acme".into(),
            ancestry_path: path.clone(),
            depth: 1,
            metadata: json!({}),
            status: TenantStatus::Archived,
            deleted_at: None,
            created_at: OffsetDateTime::UNIX_EPOCH,
            updated_at: OffsetDateTime::UNIX_EPOCH,
            version: 1,
        };
        let mut store = MockTenantStore::new();
        store
            .expect_get()
            .returning(move |asked| Ok((asked == id).then(|| stored.clone())));
        let dir = StoreDirectory::new(Arc::new(store));
        let entry = dir.find(id).await.unwrap();
        assert_eq!(
            entry,
            Some(TenantEntry {
                id,
                path,
                active: false
            })
        );
        assert_eq!(dir.find(parent).await.unwrap(), None);
    }
}
