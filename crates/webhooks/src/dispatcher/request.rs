//! The signed request of one attempt.

use serde::Serialize;
use serde_json::Value;
use stratum_crypto::{sign_delivery, sign_standard, signing_key_bytes, CryptoError, Keyring};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{ClaimedDelivery, OutgoingRequest};

/// Why a delivery's request could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// The secret is encrypted under a key this process's keyring does not hold.
    #[error("webhook secret is encrypted under key {key_id}, which this process does not hold")]
    KeyUnavailable {
        /// The key id the stored secret names.
        key_id: String,
    },
    /// The stored secret is corrupt, tampered with, or not a usable signing secret.
    #[error("webhook secret cannot be decrypted: {0}")]
    SecretUnreadable(String),
    /// The event could not be encoded as JSON.
    #[error("event body cannot be encoded: {0}")]
    Body(String),
}

/// The JSON body a receiver gets; field order is the wire order.
#[derive(Serialize)]
struct Body<'a> {
    id: Uuid,
    event: &'a str,
    timestamp: String,
    tenant_id: Option<Uuid>,
    data: &'a Value,
}

fn decrypt(keyring: &Keyring, sealed: &str) -> Result<String, BuildError> {
    keyring.decrypt_str(sealed).map_err(|e| match e {
        CryptoError::KeyMismatch { found, .. } => BuildError::KeyUnavailable { key_id: found },
        other => BuildError::SecretUnreadable(other.to_string()),
    })
}

/// Builds the signed request for one attempt at `d` (body, both signature schemes, headers).
///
/// `webhook-signature` carries one `v1,<sig>` per secret that signs at `now`: the current
/// one first, then each previous secret not yet expired, separated by single spaces.
/// `X-Stratum-Signature` is made with the current secret only.
pub fn build_request(
    d: &ClaimedDelivery,
    keyring: &Keyring,
    now: OffsetDateTime,
) -> Result<OutgoingRequest, BuildError> {
    let secret = decrypt(keyring, &d.secret_encrypted)?;
    let body = serde_json::to_vec(&Body {
        id: d.event_id,
        event: &d.event_type,
        timestamp: stratum_core::timefmt::format(d.event_created_at),
        tenant_id: d.tenant_id,
        data: &d.payload,
    })
    .map_err(|e| BuildError::Body(e.to_string()))?;
    let delivery_id = d.id.to_string();
    let signatures = sign_delivery(&secret, &delivery_id, now.unix_timestamp(), &body)
        .map_err(|e| BuildError::SecretUnreadable(e.to_string()))?;
    let mut standard = signatures.standard;
    for previous in d.previous_secrets.iter().filter(|p| p.expires_at > now) {
        let key = signing_key_bytes(&decrypt(keyring, &previous.secret_encrypted)?)
            .map_err(|e| BuildError::SecretUnreadable(e.to_string()))?;
        standard.push(' ');
        standard.push_str(&sign_standard(
            &key,
            &delivery_id,
            signatures.timestamp,
            &body,
        ));
    }
    let timestamp = signatures.timestamp.to_string();
    let headers = vec![
        ("X-Stratum-Event".to_owned(), d.event_type.clone()),
        ("X-Stratum-Delivery".to_owned(), delivery_id.clone()),
        ("X-Stratum-Timestamp".to_owned(), timestamp.clone()),
        ("X-Stratum-Signature".to_owned(), signatures.stratum),
        ("webhook-id".to_owned(), delivery_id),
        ("webhook-timestamp".to_owned(), timestamp),
        ("webhook-signature".to_owned(), standard),
    ];
    Ok(OutgoingRequest {
        url: d.url.clone(),
        headers,
        body,
        attempt: u32::try_from(d.attempts).unwrap_or(0).saturating_add(1),
        trace_context: d.trace_context.clone(),
    })
}

/// A uniformly distributed number in `[0, 1)` for [`crate::RetryPolicy::delay`]'s jitter.
pub fn random_jitter() -> f64 {
    // The low 62 bits of a v4 UUID are random (the two above them are the variant);
    // 53 of them fill an f64 mantissa exactly.
    let (_, low) = Uuid::new_v4().as_u64_pair();
    let bits = (low & ((1 << 62) - 1)) >> 9;
    // `bits` < 2^53, so both conversions are exact.
    bits as f64 / (1u64 << 53) as f64
}
