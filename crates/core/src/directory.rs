//! The tenant-directory port: what a domain outside tenancy needs to know about a tenant
//! (where it sits in the tree, whether it is active) to decide whether a caller may act on
//! it. Tenancy implements it; a service embedding `stratum-webhooks` or `stratum-consent`
//! implements it over its own notion of tenants.

use async_trait::async_trait;
use uuid::Uuid;

use crate::{Caller, StoreError, TenantPath};

/// What the directory knows of one tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantEntry {
    /// The tenant's id.
    pub id: Uuid,
    /// Its place in the tree: a caller sees it when the caller's subtree contains it.
    pub path: TenantPath,
    /// `false` once archived: visible to reads, closed to new resources.
    pub active: bool,
}

/// Looks tenants up by id.
///
/// ```
/// use async_trait::async_trait;
/// use stratum_core::{
///     Caller, StoreError, TenantDirectory, TenantDirectoryExt, TenantEntry, TenantPath,
/// };
/// use uuid::Uuid;
///
/// /// A directory with one fixed tenant.
/// struct OneTenant(Uuid);
///
/// #[async_trait]
/// impl TenantDirectory for OneTenant {
///     async fn find(&self, id: Uuid) -> Result<Option<TenantEntry>, StoreError> {
///         Ok((id == self.0).then(|| TenantEntry {
///             id,
///             path: TenantPath::root(id),
///             active: true,
///         }))
///     }
/// }
///
/// # async fn demo() -> Result<(), StoreError> {
/// let t = Uuid::now_v7();
/// let dir = OneTenant(t);
/// assert!(dir.visible_active(&Caller::system(), t).await?.is_some());
/// assert!(dir.visible(&Caller::system(), Uuid::now_v7()).await?.is_none());
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(demo()).unwrap();
/// ```
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait TenantDirectory: Send + Sync {
    /// The tenant `id`, archived or not; `None` when there is no such tenant.
    async fn find(&self, id: Uuid) -> Result<Option<TenantEntry>, StoreError>;
}

/// The visibility rules over a [`TenantDirectory`]: what every tenant-bound use case asks.
#[async_trait]
pub trait TenantDirectoryExt: TenantDirectory {
    /// The tenant when it exists and the caller's subtree contains it (archived or not).
    async fn visible(&self, caller: &Caller, id: Uuid) -> Result<Option<TenantEntry>, StoreError> {
        Ok(self
            .find(id)
            .await?
            .filter(|t| caller.actor.can_see(&t.path)))
    }

    /// The tenant when it is visible to the caller and active: where new resources may go.
    async fn visible_active(
        &self,
        caller: &Caller,
        id: Uuid,
    ) -> Result<Option<TenantEntry>, StoreError> {
        Ok(self.visible(caller, id).await?.filter(|t| t.active))
    }
}

impl<T: TenantDirectory + ?Sized> TenantDirectoryExt for T {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Actor, ActorKind, RequestMeta, Scope, TenantScope};

    fn scoped(path: &TenantPath) -> Caller {
        Caller {
            actor: Actor {
                kind: ActorKind::ApiKey(Uuid::now_v7()),
                scope: Scope::Read,
                tenant: Some(TenantScope {
                    id: path.leaf().unwrap_or_default(),
                    path: path.clone(),
                }),
            },
            meta: RequestMeta::default(),
        }
    }

    #[tokio::test]
    async fn visibility_follows_the_subtree_and_activity() {
        let (root, child, other) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let root_path = TenantPath::root(root);
        let child_path = root_path.child(child);
        let mut dir = MockTenantDirectory::new();
        let entries = [
            (child, child_path.clone(), false),
            (other, TenantPath::root(other), true),
        ];
        dir.expect_find().returning(move |id| {
            Ok(entries
                .iter()
                .find(|(i, _, _)| *i == id)
                .map(|(id, path, active)| TenantEntry {
                    id: *id,
                    path: path.clone(),
                    active: *active,
                }))
        });
        let caller = scoped(&root_path);
        let archived_child = dir.visible(&caller, child).await.unwrap();
        assert_eq!(archived_child.map(|t| t.path), Some(child_path));
        assert_eq!(dir.visible_active(&caller, child).await.unwrap(), None);
        assert_eq!(dir.visible(&caller, other).await.unwrap(), None);
        assert!(dir
            .visible_active(&Caller::system(), other)
            .await
            .unwrap()
            .is_some());
        assert_eq!(dir.visible(&caller, Uuid::now_v7()).await.unwrap(), None);
    }
}
