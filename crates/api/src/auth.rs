//! Authentication: `X-API-Key` or `Authorization: Bearer`.

/// What the access log may show about the caller.
#[derive(Debug, Clone)]
pub struct AuthInfo {
    /// The key's id (`bootstrap` for the configured admin key).
    pub key_id: String,
}
