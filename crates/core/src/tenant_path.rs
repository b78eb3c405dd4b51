//! Materialized tenant paths: `/<root>/<child>/.../<self>/`.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Where a tenant sits in the tree; a subtree is every path that starts with this one.
///
/// ```
/// use stratum_core::TenantPath;
/// use uuid::Uuid;
///
/// let (root, child) = (Uuid::now_v7(), Uuid::now_v7());
/// let parent = TenantPath::root(root);
/// let path = parent.child(child);
/// assert!(parent.contains(&path) && !path.contains(&parent));
/// assert_eq!(path.leaf(), Some(child));
/// assert_eq!(TenantPath::parse(path.as_str()), Some(path));
/// assert_eq!(TenantPath::parse("/not-a-uuid/"), None);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(value_type = String, example = "/0190a1b2-0000-7000-8000-000000000001/"))]
#[serde(transparent)]
pub struct TenantPath(String);

impl TenantPath {
    /// The path of a root tenant.
    pub fn root(id: Uuid) -> Self {
        Self(format!("/{id}/"))
    }

    /// The path of `id` placed under `self`.
    pub fn child(&self, id: Uuid) -> Self {
        Self(format!("{}{id}/", self.0))
    }

    /// Reads a stored path; `None` when it is not of the form `/<uuid>/.../`.
    pub fn parse(raw: &str) -> Option<Self> {
        let inner = raw.strip_prefix('/')?.strip_suffix('/')?;
        if inner.is_empty() || inner.split('/').any(|p| Uuid::parse_str(p).is_err()) {
            return None;
        }
        Some(Self(raw.to_owned()))
    }

    /// The stored form.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Ids from the root down to and including this tenant.
    pub fn ids(&self) -> Vec<Uuid> {
        self.0
            .split('/')
            .filter(|p| !p.is_empty())
            .filter_map(|p| Uuid::parse_str(p).ok())
            .collect()
    }

    /// The tenant this path ends at.
    pub fn leaf(&self) -> Option<Uuid> {
        self.ids().last().copied()
    }

    /// Depth in the tree: 0 for a root.
    pub fn depth(&self) -> usize {
        self.ids().len().saturating_sub(1)
    }

    /// True when `other` is this tenant or one of its descendants.
    pub fn contains(&self, other: &TenantPath) -> bool {
        other.0.starts_with(&self.0)
    }
}

impl std::fmt::Display for TenantPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn subtree_membership() {
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let pa = TenantPath::root(a);
        let pb = pa.child(b);
        let pc = TenantPath::root(c);
        assert!(pa.contains(&pa));
        assert!(pa.contains(&pb));
        assert!(!pb.contains(&pa));
        assert!(!pa.contains(&pc));
        assert_eq!(pb.ids(), vec![a, b]);
        assert_eq!(pb.depth(), 1);
        assert_eq!(pb.leaf(), Some(b));
    }

    #[test]
    fn parse_rejects_garbage() {
        assert!(TenantPath::parse("/x/").is_none());
        assert!(TenantPath::parse("").is_none());
        assert!(TenantPath::parse("//").is_none());
        let p = TenantPath::root(Uuid::now_v7());
        assert_eq!(TenantPath::parse(p.as_str()), Some(p));
    }

    proptest! {
        #[test]
        fn a_prefix_of_ids_never_contains_a_sibling(n in 1usize..6, m in 1usize..6) {
            let ids: Vec<Uuid> = (0..n).map(|_| Uuid::now_v7()).collect();
            let mut p = TenantPath::root(ids[0]);
            for id in &ids[1..] { p = p.child(*id); }
            let mut q = TenantPath::root(Uuid::now_v7());
            for _ in 1..m { q = q.child(Uuid::now_v7()); }
            prop_assert!(!p.contains(&q) && !q.contains(&p));
            prop_assert_eq!(p.ids(), ids);
        }
    }
}
