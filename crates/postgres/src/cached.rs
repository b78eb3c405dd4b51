//! Prepared statements kept per connection for statements diesel would prepare anew on
//! every execution.
//!
//! diesel keeps a connection's prepared statement only for queries it can prove have one
//! SQL text for every set of bind values; it refuses `UPDATE`, upserts and raw
//! `sql_query`, so each execution of those costs a `Parse` (a round trip of its own, and a
//! parse and plan on the server) and a `Close`. [`Cached`] marks a statement whose SQL text
//! is fixed (or takes one of a few shapes, such as an `UPDATE` whose optional columns are
//! present or not) as safe to keep: the connection's cache then holds it by its SQL text,
//! and every later execution is one `Bind`/`Execute`.
//!
//! Never wrap a statement whose text grows with its input (a multi-row `VALUES` list, an
//! `IN (…)` of one placeholder per item): each distinct text would stay prepared for the
//! connection's life.

use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::QueryResult;

/// A statement kept prepared on its connection; see the module documentation.
#[derive(Debug, Clone, Copy)]
pub struct Cached<Q>(pub Q);

impl<Q: QueryFragment<Pg>> QueryFragment<Pg> for Cached<Q> {
    fn walk_ast<'b>(&'b self, pass: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        self.0.walk_ast(pass)
    }

    fn is_safe_to_cache_prepared(&self, _backend: &Pg) -> QueryResult<bool> {
        Ok(true)
    }
}

/// Keyed by SQL text: the wrapped types carry no static identity diesel could use.
impl<Q> QueryId for Cached<Q> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q: Query> Query for Cached<Q> {
    type SqlType = Q::SqlType;
}

/// `.cached()` on any statement: see [`Cached`].
pub trait CachedExt: Sized {
    /// Keeps this statement prepared on the connection that runs it.
    fn cached(self) -> Cached<Self> {
        Cached(self)
    }
}

impl<Q: QueryFragment<Pg>> CachedExt for Q {}
