//! Random tokens, API keys and digests.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::digest;
use ring::rand::{SecureRandom as _, SystemRandom};
use subtle::ConstantTimeEq as _;

/// Prefix of every API key Stratum mints.
pub const API_KEY_PREFIX: &str = "sk_";

/// `bytes` random bytes from the OS, base64url without padding.
pub fn random_token(bytes: usize) -> String {
    URL_SAFE_NO_PAD.encode(random_bytes(bytes))
}

/// A new API key: `sk_` and 256 random bits.
pub fn generate_api_key() -> String {
    format!("{API_KEY_PREFIX}{}", random_token(32))
}

/// Length of the random part of a key: base64url of 32 bytes, unpadded.
const API_KEY_RANDOM_CHARS: usize = 43;

/// Whether `presented` has the shape of a key [`generate_api_key`] makes. A key of any
/// other shape cannot be stored, so it can be refused without hashing or a lookup.
pub fn is_api_key_shaped(presented: &str) -> bool {
    presented.strip_prefix(API_KEY_PREFIX).is_some_and(|rest| {
        rest.len() == API_KEY_RANDOM_CHARS
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

/// Lowercase hex SHA-256 of `input`.
pub fn sha256_hex(input: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, input))
}

/// Compares two byte strings in time independent of where they differ (`subtle`'s
/// `ConstantTimeEq`).
///
/// The lengths are not secret (digests and tags have fixed lengths), so unequal lengths
/// return early.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

#[allow(
    clippy::expect_used,
    reason = "without OS randomness no secret can be minted safely; failing loudly beats a weak key"
)]
pub(crate) fn random_bytes(len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    SystemRandom::new()
        .fill(&mut buf)
        .expect("the operating system's random number generator failed");
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_keys_have_the_key_shape_and_others_do_not() {
        for _ in 0..100 {
            assert!(is_api_key_shaped(&generate_api_key()));
        }
        let good = generate_api_key();
        for bad in [
            String::new(),
            "sk_".into(),
            good[..good.len() - 1].to_owned(),
            format!("{good}x"),
            good.replacen("sk_", "pk_", 1),
            format!("{}+", &good[..good.len() - 1]),
            format!("{}\u{0}", &good[..good.len() - 1]),
        ] {
            assert!(!is_api_key_shaped(&bad), "{bad}");
        }
    }
    use proptest::prelude::*;
    use std::collections::HashSet;

    #[test]
    fn random_token_has_expected_length_and_alphabet() {
        let t = random_token(32);
        assert_eq!(t.len(), 43);
        assert_eq!(URL_SAFE_NO_PAD.decode(&t).unwrap().len(), 32);
        assert!(t
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(random_token(0), "");
    }

    #[test]
    fn tokens_do_not_repeat() {
        let set: HashSet<String> = (0..100).map(|_| random_token(16)).collect();
        assert_eq!(set.len(), 100);
    }

    #[test]
    fn api_key_shape() {
        let k = generate_api_key();
        let rest = k.strip_prefix("sk_").unwrap();
        assert_eq!(URL_SAFE_NO_PAD.decode(rest).unwrap().len(), 32);
        assert_ne!(k, generate_api_key());
    }

    #[test]
    fn sha256_known_answer() {
        // FIPS 180-2 test vector for "abc".
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn constant_time_eq_cases() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"bbc"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"abc", b""));
    }

    proptest! {
        #[test]
        fn prop_constant_time_eq_matches_eq(a in proptest::collection::vec(any::<u8>(), 0..8),
                                            b in proptest::collection::vec(any::<u8>(), 0..8)) {
            prop_assert_eq!(constant_time_eq(&a, &b), a == b);
            prop_assert!(constant_time_eq(&a, &a.clone()));
        }
    }
}
