//! Webhook signatures: Stratum's own `X-Stratum-Signature` and Standard Webhooks'
//! `webhook-signature`, for senders and for receivers.
//!
//! Both are HMAC-SHA256 but keyed differently: `X-Stratum-Signature` uses the secret's
//! UTF-8 bytes as given (a `whsec_` prefix included), while the Standard Webhooks signature
//! uses the base64-decoded part after `whsec_` for such secrets (else the UTF-8 bytes), so
//! that off-the-shelf Standard Webhooks libraries verify it unchanged.

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use ring::hmac;

use crate::error::CryptoError;
use crate::tokens::{constant_time_eq, random_bytes};

/// How far (in seconds, either way) a signed timestamp may be from the receiver's clock.
pub const DEFAULT_TOLERANCE_SECS: i64 = 300;

/// Prefix of secrets in the Standard Webhooks format.
pub const WHSEC_PREFIX: &str = "whsec_";

const STRATUM_SIG_PREFIX: &str = "sha256=";
const STANDARD_VERSION: &str = "v1";

// Other Standard Webhooks implementations emit secrets and signatures with or without
// padding; accept both rather than reject a valid key over formatting.
const STANDARD_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// The signature headers of one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signatures {
    /// Unix seconds, sent as `X-Stratum-Timestamp` and `webhook-timestamp`.
    pub timestamp: i64,
    /// The `X-Stratum-Signature` value: `sha256=<hex>`.
    pub stratum: String,
    /// The `webhook-signature` value: `v1,<base64>`.
    pub standard: String,
}

/// `sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`, the `X-Stratum-Signature` value.
pub fn sign_stratum(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    format!(
        "{STRATUM_SIG_PREFIX}{}",
        hex::encode(stratum_tag(secret, timestamp, body))
    )
}

/// The HMAC key for Standard Webhooks: base64-decoded after `whsec_`, else the UTF-8 bytes.
///
/// `InvalidSecret` when the part after `whsec_` is empty or not base64.
pub fn signing_key_bytes(secret: &str) -> Result<Vec<u8>, CryptoError> {
    match secret.strip_prefix(WHSEC_PREFIX) {
        Some(encoded) => STANDARD_LENIENT
            .decode(encoded)
            .ok()
            .filter(|key| !key.is_empty())
            .ok_or(CryptoError::InvalidSecret),
        None => Ok(secret.as_bytes().to_vec()),
    }
}

/// `v1,<base64 HMAC-SHA256(key, "<msg_id>.<timestamp>.<body>")>`, the `webhook-signature` value.
pub fn sign_standard(key: &[u8], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    format!(
        "{STANDARD_VERSION},{}",
        STANDARD.encode(standard_tag(key, msg_id, timestamp, body))
    )
}

/// Both signatures of a delivery.
///
/// `stratum` is keyed with the whole secret string's UTF-8 bytes, `whsec_` prefix included;
/// `standard` with [`signing_key_bytes`] of the secret. `InvalidSecret` for a malformed
/// `whsec_` secret.
///
/// A sender signs once per attempt; a receiver holding the same secret verifies either header:
///
/// ```
/// use stratum_crypto::{generate_whsec, sign_delivery, verify_standard, verify_stratum};
///
/// let secret = generate_whsec();
/// let body = br#"{"event":"tenant.created","data":{"id":"t_1"}}"#;
/// let now = 1_700_000_000;
/// let sigs = sign_delivery(&secret, "dlv_1", now, body)?;
/// assert!(sigs.stratum.starts_with("sha256="));
/// assert!(sigs.standard.starts_with("v1,"));
///
/// let timestamp = sigs.timestamp.to_string();
/// verify_stratum(secret.as_bytes(), &timestamp, &sigs.stratum, body, now, 300)?;
/// verify_standard(&secret, "dlv_1", &timestamp, &sigs.standard, body, now, 300)?;
/// // Another secret does not verify.
/// let other = generate_whsec();
/// assert!(verify_standard(&other, "dlv_1", &timestamp, &sigs.standard, body, now, 300).is_err());
/// # Ok::<(), stratum_crypto::CryptoError>(())
/// ```
pub fn sign_delivery(
    secret: &str,
    delivery_id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<Signatures, CryptoError> {
    let key = signing_key_bytes(secret)?;
    Ok(Signatures {
        timestamp,
        stratum: sign_stratum(secret.as_bytes(), timestamp, body),
        standard: sign_standard(&key, delivery_id, timestamp, body),
    })
}

/// A new webhook secret: `whsec_` and the padded standard base64 of 32 random bytes.
pub fn generate_whsec() -> String {
    format!("{WHSEC_PREFIX}{}", STANDARD.encode(random_bytes(32)))
}

/// Verifies an `X-Stratum-Signature` as a receiver.
///
/// The timestamp is checked first: unparseable or further than `tolerance_secs` from
/// `now_unix` gives `TimestampOutOfTolerance`. A header without `sha256=` gives
/// `MissingSignature`; a signature that does not match gives `SignatureMismatch`.
///
/// ```
/// use stratum_crypto::{sign_stratum, verify_stratum, CryptoError, DEFAULT_TOLERANCE_SECS};
///
/// let secret = b"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// let body = br#"{"id":"evt_1"}"#;
/// let sent_at = 1_700_000_000;
/// let header = sign_stratum(secret, sent_at, body);
/// let check = |body: &[u8], now: i64| {
///     verify_stratum(secret, "1700000000", &header, body, now, DEFAULT_TOLERANCE_SECS)
/// };
///
/// assert_eq!(check(body, sent_at + 10), Ok(()));
/// // One altered byte of the body fails.
/// assert_eq!(check(br#"{"id":"evt_2"}"#, sent_at + 10), Err(CryptoError::SignatureMismatch));
/// // So does a replay ten minutes later (the timestamp is checked first).
/// assert_eq!(check(body, sent_at + 600), Err(CryptoError::TimestampOutOfTolerance));
/// ```
pub fn verify_stratum(
    secret: &[u8],
    timestamp_header: &str,
    signature_header: &str,
    body: &[u8],
    now_unix: i64,
    tolerance_secs: i64,
) -> Result<(), CryptoError> {
    let timestamp = check_timestamp(timestamp_header, now_unix, tolerance_secs)?;
    let hex_sig = signature_header
        .trim()
        .strip_prefix(STRATUM_SIG_PREFIX)
        .ok_or(CryptoError::MissingSignature)?;
    let given = hex::decode(hex_sig).map_err(|_| CryptoError::SignatureMismatch)?;
    let expected = stratum_tag(secret, timestamp, body);
    if constant_time_eq(expected.as_ref(), &given) {
        Ok(())
    } else {
        Err(CryptoError::SignatureMismatch)
    }
}

/// Verifies a Standard Webhooks `webhook-signature` as a receiver.
///
/// The header may list several space-separated `v1,<base64>` signatures (as during a
/// secret rotation); any match passes and other versions are ignored. `InvalidSecret` for a
/// malformed `whsec_` secret; timestamp errors as in [`verify_stratum`]; `MissingSignature`
/// when no `v1` entry is present, else `SignatureMismatch`.
///
/// The reference vector of the Standard Webhooks specification verifies, alone or next to a
/// signature made with a retired secret:
///
/// ```
/// use stratum_crypto::{verify_standard, CryptoError};
///
/// let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// let (id, ts, body) = ("msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", br#"{"test": 2432232314}"#);
/// let signature = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
/// let now = 1_614_265_330;
///
/// assert_eq!(verify_standard(secret, id, ts, signature, body, now, 300), Ok(()));
/// let rotating = format!("v1,bm90IHRoaXMgb25l {signature}");
/// assert_eq!(verify_standard(secret, id, ts, &rotating, body, now, 300), Ok(()));
/// assert_eq!(
///     verify_standard(secret, id, ts, "v2,whatever", body, now, 300),
///     Err(CryptoError::MissingSignature)
/// );
/// ```
pub fn verify_standard(
    secret: &str,
    msg_id: &str,
    timestamp_header: &str,
    signature_header: &str,
    body: &[u8],
    now_unix: i64,
    tolerance_secs: i64,
) -> Result<(), CryptoError> {
    let key = signing_key_bytes(secret)?;
    let timestamp = check_timestamp(timestamp_header, now_unix, tolerance_secs)?;
    let expected = standard_tag(&key, msg_id, timestamp, body);
    let mut saw_v1 = false;
    for entry in signature_header.split_whitespace() {
        let Some((STANDARD_VERSION, encoded)) = entry.split_once(',') else {
            continue;
        };
        saw_v1 = true;
        if let Ok(given) = STANDARD_LENIENT.decode(encoded) {
            if constant_time_eq(expected.as_ref(), &given) {
                return Ok(());
            }
        }
    }
    Err(if saw_v1 {
        CryptoError::SignatureMismatch
    } else {
        CryptoError::MissingSignature
    })
}

fn check_timestamp(header: &str, now_unix: i64, tolerance_secs: i64) -> Result<i64, CryptoError> {
    let timestamp: i64 = header
        .trim()
        .parse()
        .map_err(|_| CryptoError::TimestampOutOfTolerance)?;
    let tolerance = u64::try_from(tolerance_secs).unwrap_or(0);
    if now_unix.abs_diff(timestamp) > tolerance {
        return Err(CryptoError::TimestampOutOfTolerance);
    }
    Ok(timestamp)
}

fn stratum_tag(secret: &[u8], timestamp: i64, body: &[u8]) -> hmac::Tag {
    let mut ctx = hmac::Context::with_key(&hmac::Key::new(hmac::HMAC_SHA256, secret));
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    ctx.sign()
}

fn standard_tag(key: &[u8], msg_id: &str, timestamp: i64, body: &[u8]) -> hmac::Tag {
    let mut ctx = hmac::Context::with_key(&hmac::Key::new(hmac::HMAC_SHA256, key));
    ctx.update(msg_id.as_bytes());
    ctx.update(b".");
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    ctx.sign()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // The reference vector published with the Standard Webhooks libraries.
    const REF_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const REF_MSG_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const REF_TS: i64 = 1_614_265_330;
    const REF_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const REF_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    const SECRET: &str = "my-webhook-secret-0123";
    const TS: i64 = 1_700_000_000;
    const BODY: &[u8] = br#"{"id":"evt_1","event":"tenant.created"}"#;
    // Computed independently with Python:
    // hmac.new(b"my-webhook-secret-0123",
    //          b'1700000000.{"id":"evt_1","event":"tenant.created"}', hashlib.sha256).hexdigest()
    const STRATUM_SIG: &str =
        "sha256=336ac7583de2a77036ae49aec07e8d51420c215a365f5a7f1511ecec17d48171";

    #[test]
    fn standard_webhooks_reference_vector() {
        let key = signing_key_bytes(REF_SECRET).unwrap();
        assert_eq!(sign_standard(&key, REF_MSG_ID, REF_TS, REF_BODY), REF_SIG);
        verify_standard(
            REF_SECRET,
            REF_MSG_ID,
            "1614265330",
            REF_SIG,
            REF_BODY,
            REF_TS,
            DEFAULT_TOLERANCE_SECS,
        )
        .unwrap();
    }

    #[test]
    fn stratum_scheme_matches_independent_computation() {
        assert_eq!(sign_stratum(SECRET.as_bytes(), TS, BODY), STRATUM_SIG);
        verify_stratum(SECRET.as_bytes(), "1700000000", STRATUM_SIG, BODY, TS, 300).unwrap();
    }

    #[test]
    fn sign_delivery_keys_each_scheme_differently() {
        let sigs = sign_delivery(REF_SECRET, REF_MSG_ID, REF_TS, REF_BODY).unwrap();
        assert_eq!(sigs.timestamp, REF_TS);
        assert_eq!(sigs.standard, REF_SIG);
        // Python: hmac.new(b"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        //                  b'1614265330.{"test": 2432232314}', hashlib.sha256).hexdigest()
        assert_eq!(
            sigs.stratum,
            "sha256=2e37df5d4a028c51a7f3133d64ae1e300d2c2c900f1b1d49d4369ad2530f8964"
        );

        let plain = sign_delivery(SECRET, "dlv_1", TS, BODY).unwrap();
        assert_eq!(plain.stratum, STRATUM_SIG);
        assert_eq!(
            plain.standard,
            sign_standard(SECRET.as_bytes(), "dlv_1", TS, BODY)
        );
    }

    #[test]
    fn signing_key_bytes_cases() {
        assert_eq!(signing_key_bytes("plain").unwrap(), b"plain");
        assert_eq!(signing_key_bytes("whsec_aGVsbG8=").unwrap(), b"hello");
        assert_eq!(signing_key_bytes("whsec_aGVsbG8").unwrap(), b"hello");
        for bad in ["whsec_", "whsec_!!!", "whsec_aGVs bG8=", "whsec_aGVsbG8-"] {
            assert_eq!(
                signing_key_bytes(bad),
                Err(CryptoError::InvalidSecret),
                "{bad}"
            );
        }
        assert_eq!(
            sign_delivery("whsec_", "d", TS, BODY),
            Err(CryptoError::InvalidSecret)
        );
    }

    #[test]
    fn generated_whsec_is_usable() {
        let s = generate_whsec();
        let encoded = s.strip_prefix("whsec_").unwrap();
        assert!(encoded.ends_with('='), "padded: {s}");
        assert_eq!(STANDARD.decode(encoded).unwrap().len(), 32);
        assert_eq!(signing_key_bytes(&s).unwrap().len(), 32);
        assert_ne!(s, generate_whsec());
    }

    #[test]
    fn verify_stratum_rejections() {
        let key = SECRET.as_bytes();
        let ok = |ts: &str, sig: &str, body: &[u8], now: i64| {
            verify_stratum(key, ts, sig, body, now, DEFAULT_TOLERANCE_SECS)
        };
        assert_eq!(
            verify_stratum(b"wrong secret", "1700000000", STRATUM_SIG, BODY, TS, 300),
            Err(CryptoError::SignatureMismatch)
        );
        assert_eq!(
            ok("1700000000", STRATUM_SIG, b"{\"id\":\"evt_2\"}", TS),
            Err(CryptoError::SignatureMismatch)
        );
        assert_eq!(
            ok("1700000000", STRATUM_SIG, BODY, TS + 301),
            Err(CryptoError::TimestampOutOfTolerance)
        );
        assert_eq!(
            ok("1700000000", STRATUM_SIG, BODY, TS - 301),
            Err(CryptoError::TimestampOutOfTolerance)
        );
        assert_eq!(ok("1700000000", STRATUM_SIG, BODY, TS + 300), Ok(()));
        assert_eq!(ok("1700000000", STRATUM_SIG, BODY, TS - 300), Ok(()));
        // A replay with a fresh timestamp header but the old signature must fail.
        assert_eq!(
            ok("1700000100", STRATUM_SIG, BODY, TS),
            Err(CryptoError::SignatureMismatch)
        );
        assert_eq!(
            ok("yesterday", STRATUM_SIG, BODY, TS),
            Err(CryptoError::TimestampOutOfTolerance)
        );
        assert_eq!(
            ok("", STRATUM_SIG, BODY, TS),
            Err(CryptoError::TimestampOutOfTolerance)
        );
        assert_eq!(
            ok("1700000000", "", BODY, TS),
            Err(CryptoError::MissingSignature)
        );
        assert_eq!(
            ok(
                "1700000000",
                &STRATUM_SIG.replace("sha256=", "sha1="),
                BODY,
                TS
            ),
            Err(CryptoError::MissingSignature)
        );
        assert_eq!(
            ok("1700000000", "sha256=zz", BODY, TS),
            Err(CryptoError::SignatureMismatch)
        );
        assert_eq!(
            ok(
                "1700000000",
                &STRATUM_SIG[..STRATUM_SIG.len() - 2],
                BODY,
                TS
            ),
            Err(CryptoError::SignatureMismatch)
        );
        assert_eq!(
            verify_stratum(key, "1700000000", STRATUM_SIG, BODY, TS + 10, 0),
            Err(CryptoError::TimestampOutOfTolerance)
        );
        // Extreme clocks must not overflow the distance computation.
        assert_eq!(
            verify_stratum(key, "1700000000", STRATUM_SIG, BODY, i64::MIN, i64::MAX),
            Err(CryptoError::TimestampOutOfTolerance)
        );
        assert_eq!(
            verify_stratum(key, "1700000000", STRATUM_SIG, BODY, i64::MAX, i64::MAX),
            Ok(())
        );
    }

    #[test]
    fn verify_standard_rejections() {
        let v = |secret: &str, ts: &str, sig: &str, body: &[u8], now: i64| {
            verify_standard(
                secret,
                REF_MSG_ID,
                ts,
                sig,
                body,
                now,
                DEFAULT_TOLERANCE_SECS,
            )
        };
        let ts = "1614265330";
        assert_eq!(
            v(&generate_whsec(), ts, REF_SIG, REF_BODY, REF_TS),
            Err(CryptoError::SignatureMismatch)
        );
        assert_eq!(
            v(REF_SECRET, ts, REF_SIG, br#"{"test": 2432232315}"#, REF_TS),
            Err(CryptoError::SignatureMismatch)
        );
        assert_eq!(
            verify_standard(REF_SECRET, "msg_other", ts, REF_SIG, REF_BODY, REF_TS, 300),
            Err(CryptoError::SignatureMismatch)
        );
        assert_eq!(
            v(REF_SECRET, ts, REF_SIG, REF_BODY, REF_TS + 301),
            Err(CryptoError::TimestampOutOfTolerance)
        );
        assert_eq!(
            v(REF_SECRET, "1614265331", REF_SIG, REF_BODY, REF_TS),
            Err(CryptoError::SignatureMismatch)
        );
        assert_eq!(
            v(REF_SECRET, "soon", REF_SIG, REF_BODY, REF_TS),
            Err(CryptoError::TimestampOutOfTolerance)
        );
        assert_eq!(
            v(REF_SECRET, ts, "", REF_BODY, REF_TS),
            Err(CryptoError::MissingSignature)
        );
        assert_eq!(
            v(
                REF_SECRET,
                ts,
                &REF_SIG.replace("v1,", "v2,"),
                REF_BODY,
                REF_TS
            ),
            Err(CryptoError::MissingSignature)
        );
        assert_eq!(
            v(REF_SECRET, ts, "v1,@@@", REF_BODY, REF_TS),
            Err(CryptoError::SignatureMismatch)
        );
        assert_eq!(
            v("whsec_", ts, REF_SIG, REF_BODY, REF_TS),
            Err(CryptoError::InvalidSecret)
        );
    }

    #[test]
    fn verify_standard_accepts_any_of_several_signatures() {
        let ts = "1614265330";
        let other = sign_standard(b"old key", REF_MSG_ID, REF_TS, REF_BODY);
        for header in [
            format!("{other} {REF_SIG}"),
            format!("{REF_SIG} {other}"),
            format!("v2,abc {other}  {REF_SIG}"),
            format!("v1a,xyz {}", REF_SIG.trim_end_matches('=')),
        ] {
            assert_eq!(
                verify_standard(REF_SECRET, REF_MSG_ID, ts, &header, REF_BODY, REF_TS, 300),
                Ok(()),
                "{header}"
            );
        }
        assert_eq!(
            verify_standard(
                REF_SECRET,
                REF_MSG_ID,
                ts,
                &format!("{other} v2,{}", &REF_SIG[3..]),
                REF_BODY,
                REF_TS,
                300
            ),
            Err(CryptoError::SignatureMismatch)
        );
    }

    proptest! {
        #[test]
        fn prop_sign_then_verify(
            secret in "[ -~]{1,64}",
            msg_id in "[a-zA-Z0-9_]{1,32}",
            timestamp in 0i64..4_000_000_000,
            skew in -300i64..=300,
            body in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let sigs = sign_delivery(&secret, &msg_id, timestamp, &body);
            // Printable secrets can start with "whsec_" followed by non-base64; skip those.
            prop_assume!(sigs.is_ok());
            let sigs = sigs.unwrap();
            let ts = timestamp.to_string();
            let now = timestamp + skew;
            prop_assert_eq!(
                verify_stratum(secret.as_bytes(), &ts, &sigs.stratum, &body, now, 300),
                Ok(())
            );
            prop_assert_eq!(
                verify_standard(&secret, &msg_id, &ts, &sigs.standard, &body, now, 300),
                Ok(())
            );
        }

        #[test]
        fn prop_altered_body_rejected(
            body in proptest::collection::vec(any::<u8>(), 1..128),
            idx in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let secret = generate_whsec();
            let sigs = sign_delivery(&secret, "dlv_1", TS, &body).unwrap();
            let mut altered = body.clone();
            altered[idx.index(body.len())] ^= 1 << bit;
            let ts = TS.to_string();
            prop_assert_eq!(
                verify_stratum(secret.as_bytes(), &ts, &sigs.stratum, &altered, TS, 300),
                Err(CryptoError::SignatureMismatch)
            );
            prop_assert_eq!(
                verify_standard(&secret, "dlv_1", &ts, &sigs.standard, &altered, TS, 300),
                Err(CryptoError::SignatureMismatch)
            );
        }
    }
}
