//! Tenants, config entries, permission policies, API keys.

use serde::Serialize;
use serde_json::{Map, Value};
use stratum_core::timefmt::{rfc3339, rfc3339_opt};
use stratum_core::{Scope, TenantPath};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::TenancyError;

/// A node of the tenant tree.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Tenant {
    /// Id.
    pub id: Uuid,
    /// `None` for a root.
    pub parent_id: Option<Uuid>,
    /// Display name.
    pub name: String,
    /// Unique handle.
    pub slug: String,
    /// `/<root>/.../<id>/`.
    pub ancestry_path: TenantPath,
    /// 0 for a root.
    pub depth: i32,
    /// Free-form object.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub metadata: Value,
    /// `active` or `archived`.
    pub status: TenantStatus,
    /// When archived.
    #[serde(with = "rfc3339_opt")]
    pub deleted_at: Option<OffsetDateTime>,
    /// Created.
    #[serde(with = "rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last changed.
    #[serde(with = "rfc3339")]
    pub updated_at: OffsetDateTime,
    /// Changes with every write; the resource's `ETag`. Not part of the JSON shape.
    #[serde(skip)]
    pub version: i64,
}

/// Whether a tenant is live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum TenantStatus {
    /// Live.
    Active,
    /// Deleted through the API; kept for history.
    Archived,
}

impl TenantStatus {
    /// The stored name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Archived => "archived",
        }
    }

    /// Parses a stored name; `None` for a name that is not a status.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(Self::Active),
            "archived" => Some(Self::Archived),
            _ => None,
        }
    }
}

/// Refuses a string PostgreSQL cannot store (U+0000).
pub fn validate_text(field: &'static str, s: &str) -> Result<(), TenancyError> {
    stratum_core::text::check_str(field, s).map_err(|e| TenancyError::invalid(field, e.message))
}

/// Refuses a JSON value PostgreSQL cannot store (U+0000 in any string or key).
pub fn validate_json(field: &'static str, v: &Value) -> Result<(), TenancyError> {
    stratum_core::text::check_json(field, v)
        .map_err(|e| TenancyError::invalid(field, format!("{} (at {})", e.message, e.path)))
}

/// Deepest allowed tenant: a root is depth 0, so 32 levels below a root (API.md "Limits").
pub const MAX_DEPTH: usize = 32;

/// Refuses a tenant deeper than [`MAX_DEPTH`].
pub fn validate_depth(field: &'static str, depth: usize) -> Result<(), TenancyError> {
    if depth > MAX_DEPTH {
        return Err(TenancyError::invalid(
            field,
            format!("the tenant tree is at most {MAX_DEPTH} levels deep below a root"),
        ));
    }
    Ok(())
}

/// An API key label: at most 255 characters, storable.
pub fn validate_key_name(name: Option<String>) -> Result<Option<String>, TenancyError> {
    if let Some(n) = &name {
        if n.chars().count() > 255 {
            return Err(TenancyError::invalid(
                "name",
                "must be at most 255 characters",
            ));
        }
        validate_text("name", n)?;
    }
    Ok(name)
}

/// A validated tenant name: 1–255 characters, not blank.
pub fn validate_name(name: &str) -> Result<String, TenancyError> {
    validate_text("name", name)?;
    let trimmed = name.trim();
    if trimmed.is_empty() || name.chars().count() > 255 {
        return Err(TenancyError::invalid(
            "name",
            "must be 1-255 characters and not blank",
        ));
    }
    Ok(trimmed.to_owned())
}

/// A validated slug: `^[a-z][a-z0-9_]{0,62}$`.
pub fn validate_slug(slug: &str) -> Result<String, TenancyError> {
    let mut chars = slug.chars();
    let ok = slug.len() <= 63
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !ok {
        return Err(TenancyError::invalid(
            "slug",
            "must match ^[a-z][a-z0-9_]{0,62}$",
        ));
    }
    Ok(slug.to_owned())
}

/// Metadata must be a JSON object.
pub fn validate_metadata(field: &'static str, v: Option<Value>) -> Result<Value, TenancyError> {
    match v {
        None | Some(Value::Null) => Ok(Value::Object(Map::new())),
        Some(v @ Value::Object(_)) => {
            validate_json(field, &v)?;
            Ok(v)
        }
        Some(_) => Err(TenancyError::invalid(field, "must be a JSON object")),
    }
}

/// A config key: 1–128 of `[A-Za-z0-9_.:-]`, starting alphanumeric.
pub fn validate_config_key(key: &str) -> Result<String, TenancyError> {
    let mut chars = key.chars();
    let ok = key.len() <= 128
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.:-".contains(c));
    if !ok {
        return Err(TenancyError::invalid(
            "key",
            "must be 1-128 of [A-Za-z0-9_.:-], starting alphanumeric",
        ));
    }
    Ok(key.to_owned())
}

/// A config value as stored: plain JSON, or encrypted for a sensitive key.
#[derive(Debug, Clone, PartialEq)]
pub enum StoredValue {
    /// Not sensitive.
    Plain(Value),
    /// Sensitive: the JSON text, encrypted with the keyring.
    Encrypted(String),
}

/// A config entry as stored on one tenant.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredConfigEntry {
    /// Owner.
    pub tenant_id: Uuid,
    /// Key.
    pub key: String,
    /// Value.
    pub value: StoredValue,
    /// Cannot be overridden below.
    pub locked: bool,
    /// Created.
    pub created_at: OffsetDateTime,
    /// Last changed.
    pub updated_at: OffsetDateTime,
    /// Changes with every write; the entry's `ETag`.
    pub version: i64,
}

/// A config entry with its value readable.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConfigEntry {
    /// Key.
    pub key: String,
    /// Value in clear (callers redact where needed).
    pub value: Value,
    /// The tenant that set it.
    pub source_tenant_id: Uuid,
    /// Set by an ancestor, not the tenant asked about.
    pub inherited: bool,
    /// Cannot be overridden below.
    pub locked: bool,
    /// Stored encrypted; shown redacted outside the config endpoints.
    pub sensitive: bool,
}

impl ConfigEntry {
    /// The entry with a sensitive value replaced by `"[REDACTED]"`.
    pub fn redacted(&self) -> Value {
        let mut v = serde_json::json!({
            "tenant_id": self.source_tenant_id,
            "key": self.key,
            "value": self.value,
            "locked": self.locked,
            "sensitive": self.sensitive,
        });
        if self.sensitive {
            v["value"] = Value::String(stratum_core::REDACTED.to_owned());
        }
        v
    }
}

/// How a permission policy propagates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "UPPERCASE")]
pub enum PermissionMode {
    /// Fixed for the whole subtree.
    Locked,
    /// Children inherit it unless they set their own.
    Inherited,
    /// Children decide.
    Delegated,
}

impl PermissionMode {
    /// Parses `LOCKED`, `INHERITED` or `DELEGATED`.
    pub fn parse(s: &str) -> Result<Self, TenancyError> {
        match s {
            "LOCKED" => Ok(Self::Locked),
            "INHERITED" => Ok(Self::Inherited),
            "DELEGATED" => Ok(Self::Delegated),
            _ => Err(TenancyError::invalid(
                "mode",
                "must be LOCKED, INHERITED or DELEGATED",
            )),
        }
    }

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Locked => "LOCKED",
            Self::Inherited => "INHERITED",
            Self::Delegated => "DELEGATED",
        }
    }
}

/// A permission policy on a tenant.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PermissionPolicy {
    /// Id.
    pub id: Uuid,
    /// Owner.
    pub tenant_id: Uuid,
    /// Permission name.
    pub key: String,
    /// Its value.
    pub value: Value,
    /// Propagation.
    pub mode: PermissionMode,
    /// Created.
    #[serde(with = "rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last changed.
    #[serde(with = "rfc3339")]
    pub updated_at: OffsetDateTime,
    /// Changes with every write; the resource's `ETag`. Not part of the JSON shape.
    #[serde(skip)]
    pub version: i64,
}

/// A permission key: 1–128 characters, no control characters.
pub fn validate_permission_key(key: &str) -> Result<String, TenancyError> {
    if key.is_empty() || key.chars().count() > 128 || key.chars().any(char::is_control) {
        return Err(TenancyError::invalid(
            "key",
            "must be 1-128 characters without control characters",
        ));
    }
    Ok(key.to_owned())
}

/// A stored API key (never the key itself).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiKey {
    /// Id.
    pub id: Uuid,
    /// `None` = global.
    pub tenant_id: Option<Uuid>,
    /// Label.
    pub name: Option<String>,
    /// The first characters of the key, to recognise it.
    pub key_prefix: String,
    /// Scopes held.
    pub scopes: Vec<Scope>,
    /// Created.
    #[serde(with = "rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last used (updated at most once a minute).
    #[serde(with = "rfc3339_opt")]
    pub last_used_at: Option<OffsetDateTime>,
    /// Revoked.
    #[serde(with = "rfc3339_opt")]
    pub revoked_at: Option<OffsetDateTime>,
}

/// A key found by its digest, with what authentication needs.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyPrincipal {
    /// The key.
    pub key: ApiKey,
    /// The bound tenant's path (`None` for a global key).
    pub tenant_path: Option<TenantPath>,
}

/// Parses scope names; defaults to `read` when none are given.
pub fn parse_scopes(names: Option<&[String]>) -> Result<Vec<Scope>, TenancyError> {
    let names = match names {
        None => return Ok(vec![Scope::Read]),
        Some([]) => return Err(TenancyError::invalid("scopes", "must not be empty")),
        Some(n) => n,
    };
    let mut out = Vec::new();
    for n in names {
        let s = Scope::parse(n)
            .ok_or_else(|| TenancyError::invalid("scopes", format!("unknown scope '{n}'")))?;
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        for ok in ["a", "acme", "acme_2", &format!("a{}", "b".repeat(62))] {
            assert!(validate_slug(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "A",
            "1abc",
            "ac-me",
            "acme!",
            &format!("a{}", "b".repeat(63)),
        ] {
            assert!(validate_slug(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_and_metadata() {
        assert!(validate_name("  ").is_err());
        assert!(validate_name(&"x".repeat(256)).is_err());
        assert_eq!(validate_name(" Acme ").unwrap(), "Acme");
        assert!(validate_metadata("metadata", Some(serde_json::json!([1]))).is_err());
        assert_eq!(
            validate_metadata("metadata", None).unwrap(),
            serde_json::json!({})
        );
    }

    #[test]
    fn nul_is_refused_everywhere_it_could_be_stored() {
        let nul = "a\u{0}b";
        assert!(validate_name(nul).is_err());
        assert!(validate_slug(nul).is_err());
        assert!(validate_config_key(nul).is_err());
        assert!(validate_permission_key(nul).is_err());
        assert!(validate_key_name(Some(nul.into())).is_err());
        assert!(validate_key_name(Some("ok".into())).is_ok());
        let e = validate_metadata("metadata", Some(serde_json::json!({"a": {"b": [nul]}})))
            .unwrap_err();
        assert!(matches!(
            e,
            TenancyError::Validation { field: "metadata", ref message } if message.contains("metadata.a.b[0]")
        ));
        assert!(validate_json("value", &serde_json::json!({nul: 1})).is_err());
        assert!(validate_json("value", &serde_json::json!([1, "x"])).is_ok());
    }

    #[test]
    fn depth_limit() {
        assert!(validate_depth("parent_id", MAX_DEPTH).is_ok());
        assert!(validate_depth("parent_id", MAX_DEPTH + 1).is_err());
    }

    #[test]
    fn config_keys_modes_scopes() {
        assert!(validate_config_key("feature.x:y-z_1").is_ok());
        assert!(validate_config_key("_x").is_err());
        assert!(validate_config_key("a b").is_err());
        assert_eq!(
            PermissionMode::parse("LOCKED").unwrap(),
            PermissionMode::Locked
        );
        assert!(PermissionMode::parse("locked").is_err());
        assert_eq!(parse_scopes(None).unwrap(), vec![Scope::Read]);
        assert_eq!(
            parse_scopes(Some(&["admin".into(), "read".into()])).unwrap(),
            vec![Scope::Read, Scope::Admin]
        );
        assert!(parse_scopes(Some(&["root".into()])).is_err());
        assert!(parse_scopes(Some(&[])).is_err());
    }

    #[test]
    fn redaction_hides_sensitive_values() {
        let e = ConfigEntry {
            key: "db_password".into(),
            value: serde_json::json!("hunter2"),
            source_tenant_id: Uuid::now_v7(),
            inherited: false,
            locked: false,
            sensitive: true,
        };
        assert_eq!(e.redacted()["value"], "[REDACTED]");
        assert!(!e.redacted().to_string().contains("hunter2"));
    }
}
