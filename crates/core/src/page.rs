//! Pagination limits.

use thiserror::Error;

/// A validated page size within `[1, max]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit(u32);

/// A page size outside its allowed range.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("limit must be between 1 and {max}")]
pub struct LimitError {
    /// The largest allowed value.
    pub max: u32,
}

impl Limit {
    /// Validates `requested` (or takes `default`) against `[1, max]`.
    ///
    /// ```
    /// use stratum_core::{Limit, LimitError};
    ///
    /// assert_eq!(Limit::new(None, 50, 100).unwrap().get(), 50);
    /// assert_eq!(Limit::new(Some(100), 50, 100).unwrap().get(), 100);
    /// assert_eq!(Limit::new(Some(0), 50, 100), Err(LimitError { max: 100 }));
    /// ```
    pub fn new(requested: Option<i64>, default: u32, max: u32) -> Result<Self, LimitError> {
        match requested {
            None => Ok(Self(default.min(max))),
            Some(n) if n >= 1 && n <= i64::from(max) => Ok(Self(n as u32)),
            Some(_) => Err(LimitError { max }),
        }
    }

    /// The size as a number.
    pub fn get(self) -> u32 {
        self.0
    }

    /// The size as an SQL `LIMIT`.
    pub fn as_i64(self) -> i64 {
        i64::from(self.0)
    }

    /// How many rows a keyset store fetches for a page of this size: one more than the
    /// page, so that the extra row tells a next page exists (see [`next_page`]).
    pub fn fetch(self) -> i64 {
        i64::from(self.0) + 1
    }
}

/// Why a store could not list a page.
#[derive(Debug, Error)]
pub enum PageError {
    /// The cursor names no row of this listing (unknown, or of another listing).
    #[error("the cursor names no row of this listing")]
    BadCursor,
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] crate::StoreError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_checked() {
        assert_eq!(Limit::new(None, 50, 100).unwrap().get(), 50);
        assert_eq!(Limit::new(Some(1), 50, 100).unwrap().get(), 1);
        assert_eq!(Limit::new(Some(100), 50, 100).unwrap().get(), 100);
        assert!(Limit::new(Some(0), 50, 100).is_err());
        assert!(Limit::new(Some(101), 50, 100).is_err());
        assert!(Limit::new(Some(-5), 50, 100).is_err());
    }
}

/// Cuts a keyset page fetched with `limit + 1` rows down to `limit`, returning the cursor of
/// the next page (the id of the last row kept) when more rows remain.
pub fn next_page<T>(
    rows: &mut Vec<T>,
    limit: Limit,
    id: impl Fn(&T) -> uuid::Uuid,
) -> Option<uuid::Uuid> {
    let n = limit.get() as usize;
    if rows.len() > n {
        rows.truncate(n);
        rows.last().map(id)
    } else {
        None
    }
}

#[cfg(test)]
mod next_page_tests {
    use super::*;

    #[test]
    fn only_a_page_with_more_behind_it_has_a_cursor() {
        let ids: Vec<uuid::Uuid> = (0..4).map(|_| uuid::Uuid::now_v7()).collect();
        let limit = Limit::new(Some(3), 50, 100).unwrap();
        let mut full = ids.clone();
        assert_eq!(next_page(&mut full, limit, |u| *u), Some(ids[2]));
        assert_eq!(full.len(), 3);
        let mut short = ids[..3].to_vec();
        assert_eq!(next_page(&mut short, limit, |u| *u), None);
        assert_eq!(short.len(), 3);
    }
}
