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
