//! Which targets a delivery may reach: address ranges, sneaky IPv4 spellings and names that
//! must never be contacted, plus the [`UrlGuard`] adapter the webhook service calls when a
//! URL is registered.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use async_trait::async_trait;
use reqwest::Url;
use stratum_webhooks::{UrlGuard, WebhookUrl};

use crate::resolve::{check_addrs, system_lookup, Lookup};

/// Registration must not hang on a resolver that never answers.
const GUARD_LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

const V4_BLOCKED: &[(Ipv4Addr, u8, &str)] = &[
    (
        Ipv4Addr::new(0, 0, 0, 0),
        8,
        "an unspecified (\"this network\") address",
    ),
    (Ipv4Addr::new(10, 0, 0, 0), 8, "a private address"),
    (
        Ipv4Addr::new(100, 64, 0, 0),
        10,
        "a shared (carrier-grade NAT) address",
    ),
    (Ipv4Addr::new(127, 0, 0, 0), 8, "a loopback address"),
    (
        Ipv4Addr::new(169, 254, 0, 0),
        16,
        "a link-local (cloud metadata) address",
    ),
    (Ipv4Addr::new(172, 16, 0, 0), 12, "a private address"),
    (
        Ipv4Addr::new(192, 0, 0, 0),
        24,
        "a reserved (IETF protocol) address",
    ),
    (Ipv4Addr::new(192, 0, 2, 0), 24, "a documentation address"),
    (
        Ipv4Addr::new(192, 88, 99, 0),
        24,
        "a reserved (6to4 relay) address",
    ),
    (Ipv4Addr::new(192, 168, 0, 0), 16, "a private address"),
    (Ipv4Addr::new(198, 18, 0, 0), 15, "a benchmarking address"),
    (
        Ipv4Addr::new(198, 51, 100, 0),
        24,
        "a documentation address",
    ),
    (Ipv4Addr::new(203, 0, 113, 0), 24, "a documentation address"),
    (Ipv4Addr::new(224, 0, 0, 0), 4, "a multicast address"),
    (
        Ipv4Addr::new(255, 255, 255, 255),
        32,
        "the broadcast address",
    ),
    (Ipv4Addr::new(240, 0, 0, 0), 4, "a reserved address"),
];

const V6_BLOCKED: &[(Ipv6Addr, u8, &str)] = &[
    (
        Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0),
        96,
        "a NAT64 address",
    ),
    (
        Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0),
        48,
        "a NAT64 address",
    ),
    (
        Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0),
        64,
        "a discard-only address",
    ),
    (
        Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0),
        32,
        "a Teredo tunnel address",
    ),
    (
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0),
        32,
        "a documentation address",
    ),
    (
        Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0),
        7,
        "a private (unique local) address",
    ),
    (
        Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0),
        10,
        "a link-local address",
    ),
    (
        Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0),
        10,
        "a site-local address",
    ),
    (
        Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0),
        8,
        "a multicast address",
    ),
];

/// Why `ip` must not be contacted (e.g. `"a private address"`), or `None` when it may.
pub fn blocked_ip(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => blocked_v4(v4),
        IpAddr::V6(v6) => blocked_v6(v6),
    }
}

fn blocked_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let bits = u32::from(ip);
    V4_BLOCKED.iter().find_map(|&(net, prefix, reason)| {
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
        (bits & mask == u32::from(net) & mask).then_some(reason)
    })
}

fn blocked_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if ip.is_unspecified() {
        return Some("an unspecified address");
    }
    if ip.is_loopback() {
        return Some("a loopback address");
    }
    let bits = u128::from(ip);
    let low32 = Ipv4Addr::from((bits & 0xffff_ffff) as u32);
    // These prefixes only wrap an IPv4 address; the OS connects to that address, so it is
    // what must be judged.
    let top96 = bits >> 32;
    if top96 == 0xffff || top96 == 0 || top96 == 0xffff_0000 {
        return blocked_v4(low32);
    }
    if bits >> 112 == 0x2002 {
        let embedded = Ipv4Addr::from(((bits >> 80) & 0xffff_ffff) as u32);
        return blocked_v4(embedded);
    }
    V6_BLOCKED.iter().find_map(|&(net, prefix, reason)| {
        let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
        (bits & mask == u128::from(net) & mask).then_some(reason)
    })
}

/// Reads `host` as an IP address the way browsers and libc do, so that `2130706433`,
/// `0177.0.0.1`, `0x7f.1` and `[::1]` are all recognised as the addresses they are.
pub fn parse_ip_literal(host: &str) -> Option<IpAddr> {
    if let Some(inner) = host.strip_prefix('[') {
        return parse_v6(inner.strip_suffix(']')?).map(IpAddr::V6);
    }
    if host.contains(':') {
        return parse_v6(host).map(IpAddr::V6);
    }
    parse_v4(host).map(IpAddr::V4)
}

fn parse_v6(text: &str) -> Option<Ipv6Addr> {
    // A zone id (`fe80::1%eth0`) does not change which address is meant.
    let addr = text.split('%').next().unwrap_or(text);
    addr.parse().ok()
}

fn parse_v4(host: &str) -> Option<Ipv4Addr> {
    // WHATWG URL parsing accepts one trailing dot on an IPv4 host.
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        return None;
    }
    let parts = host
        .split('.')
        .map(parse_v4_part)
        .collect::<Option<Vec<u64>>>()?;
    let (last, leading) = parts.split_last()?;
    if leading.len() > 3 || leading.iter().any(|&p| p > 255) {
        return None;
    }
    // The last part fills every byte the leading parts did not: `127.1` is 127.0.0.1.
    let last_bytes = 4 - leading.len() as u32;
    if *last >= 1u64 << (8 * last_bytes) {
        return None;
    }
    let mut value = *last;
    for (i, &part) in leading.iter().enumerate() {
        value |= part << (8 * (3 - i as u32));
    }
    u32::try_from(value).ok().map(Ipv4Addr::from)
}

fn parse_v4_part(part: &str) -> Option<u64> {
    let (digits, radix) =
        if let Some(hex) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
            if hex.is_empty() {
                return Some(0);
            }
            (hex, 16)
        } else if part.len() > 1 && part.starts_with('0') {
            (&part[1..], 8)
        } else {
            (part, 10)
        };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    // Anything past u32 is out of range anyway; cap the length so parsing cannot overflow.
    let trimmed = digits.trim_start_matches('0');
    if trimmed.len() > 11 {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

/// Whether `host` is a name that always means this machine or a cloud metadata service.
pub fn blocked_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    host == "localhost" || host.ends_with(".localhost") || host == "metadata.google.internal"
}

/// The host of a delivery URL, classified for the guard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TargetHost {
    /// An address literal, in whatever spelling the URL used.
    Ip(IpAddr),
    /// A name that needs resolving.
    Name(String),
}

/// Extracts and classifies the host of `url`, or a user-facing reason it has none.
pub(crate) fn target_host(url: &Url) -> Result<TargetHost, String> {
    // The URL parser has already turned `2130706433` and friends into dotted form and kept
    // IPv6 in brackets; reading the text again also catches any spelling it let through.
    match url.host_str() {
        Some(host) if !host.is_empty() => Ok(match parse_ip_literal(host) {
            Some(ip) => TargetHost::Ip(ip),
            None => TargetHost::Name(host.to_owned()),
        }),
        _ => Err("url has no host".to_owned()),
    }
}

/// Refuses a literal or a well-known name before anything is resolved or sent.
pub(crate) fn precheck(host: &TargetHost) -> Result<(), String> {
    match host {
        TargetHost::Ip(ip) => match blocked_ip(*ip) {
            Some(reason) => Err(format!("host is {reason} ({ip})")),
            None => Ok(()),
        },
        TargetHost::Name(name) if blocked_name(name) => {
            Err(format!("host {name} is a local or metadata name"))
        }
        TargetHost::Name(_) => Ok(()),
    }
}

/// The [`UrlGuard`] adapter: refuses URLs whose host is, or resolves to, a blocked address.
#[derive(Debug, Clone, Copy)]
pub struct SsrfGuard {
    allow_private: bool,
}

impl SsrfGuard {
    /// `allow_private` lets every address through (local development and tests only).
    pub fn new(allow_private: bool) -> Self {
        Self { allow_private }
    }

    async fn check_with(&self, url: &str, lookup: &Lookup) -> Result<(), String> {
        let parsed = Url::parse(url).map_err(|e| format!("url is invalid: {e}"))?;
        let host = target_host(&parsed)?;
        if self.allow_private {
            return Ok(());
        }
        precheck(&host)?;
        let TargetHost::Name(name) = host else {
            return Ok(());
        };
        let addrs = tokio::time::timeout(GUARD_LOOKUP_TIMEOUT, lookup(name.clone()))
            .await
            .map_err(|_| format!("resolving host {name} timed out"))?
            .map_err(|e| format!("host {name} could not be resolved: {e}"))?;
        check_addrs(&name, &addrs).map_err(|blocked| blocked.to_string())
    }
}

#[async_trait]
impl UrlGuard for SsrfGuard {
    async fn check(&self, url: &WebhookUrl) -> Result<(), String> {
        self.check_with(url.as_str(), &system_lookup()).await
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use super::*;

    const BLOCKED: &[&str] = &[
        // IPv4 ranges, first and last addresses where it matters.
        "0.0.0.0",
        "0.255.255.255",
        "10.0.0.1",
        "10.255.255.255",
        "100.64.0.1",
        "100.127.255.254",
        "127.0.0.1",
        "127.255.255.254",
        "169.254.169.254",
        "172.16.0.1",
        "172.31.255.255",
        "192.0.0.8",
        "192.0.2.1",
        "192.168.1.1",
        "198.18.0.1",
        "198.19.255.255",
        "198.51.100.7",
        "203.0.113.9",
        "224.0.0.1",
        "239.255.255.250",
        "240.0.0.1",
        "255.255.255.255",
        // IPv6.
        "::",
        "::1",
        "fc00::1",
        "fd12:3456::1",
        "fe80::1",
        "febf::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
        "::127.0.0.1",
        "::10.1.2.3",
        "64:ff9b::8.8.8.8",
        "64:ff9b::a00:1",
        "2002:7f00:1::",
        "2002:a9fe:a9fe::1",
        "2001::1",
        "2001:0:4136:e378::1",
        "2001:db8::1",
        // Sneaky spellings.
        "2130706433",
        "0177.0.0.1",
        "0x7f.0.0.1",
        "0x7f000001",
        "0X7F000001",
        "127.1",
        "127.0.1",
        "0177.1",
        "0x7f.1",
        "017700000001",
        "127.0.0.1.",
        "0",
        "0x0",
        "167772161",
        "0xa9.0xfe.0xa9.0xfe",
        "0251.0376.0251.0376",
        "[::1]",
        "[::ffff:7f00:1]",
        "[fe80::1%25eth0]",
        "[::]",
    ];

    const ALLOWED: &[&str] = &[
        "8.8.8.8",
        "1.1.1.1",
        "93.184.216.34",
        "100.63.255.255",
        "100.128.0.0",
        "172.15.255.255",
        "172.32.0.0",
        "192.0.1.1",
        "198.17.255.255",
        "198.20.0.0",
        "223.255.255.255",
        "2606:4700::1111",
        "2001:4860:4860::8888",
        "[2606:4700::1111]",
        "::ffff:8.8.8.8",
        "2002:808:808::1",
        "134744072",
        "0x08.0x08.0x08.0x08",
        "1.1",
    ];

    #[test]
    fn blocked_table() {
        for host in BLOCKED {
            let ip = parse_ip_literal(host).unwrap_or_else(|| panic!("{host} should parse"));
            assert!(blocked_ip(ip).is_some(), "{host} ({ip}) should be blocked");
        }
    }

    #[test]
    fn allowed_table() {
        for host in ALLOWED {
            let ip = parse_ip_literal(host).unwrap_or_else(|| panic!("{host} should parse"));
            assert_eq!(blocked_ip(ip), None, "{host} ({ip}) should be allowed");
        }
    }

    #[test]
    fn spellings_mean_the_expected_address() {
        let v4 = |s: &str| parse_ip_literal(s);
        let lo = Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)));
        for s in [
            "2130706433",
            "0177.0.0.1",
            "0x7f.0.0.1",
            "0x7f000001",
            "127.1",
            "127.0.1",
            "0x7F.0.0.01",
        ] {
            assert_eq!(v4(s), lo, "{s}");
        }
        assert_eq!(v4("1.2.3.4"), Some(IpAddr::V4(Ipv4Addr::new(1, 2, 3, 4))));
        assert_eq!(v4("1.2.772"), Some(IpAddr::V4(Ipv4Addr::new(1, 2, 3, 4))));
        assert_eq!(v4("1.0x20304"), Some(IpAddr::V4(Ipv4Addr::new(1, 2, 3, 4))));
        assert_eq!(v4("[::1]"), Some(IpAddr::V6(Ipv6Addr::LOCALHOST)));
    }

    #[test]
    fn non_literals_are_not_ips() {
        for s in [
            "example.com",
            "",
            ".",
            "1.2.3.4.5",
            "256.0.0.1",
            "1.2.3.256",
            "1.2.65536",
            "4294967296",
            "08.0.0.1",
            "0x.0x.0x.0xg",
            "1..2",
            "99999999999999999999999",
            "[::1",
            "[example.com]",
            "127.0.0.1.nip.io",
            "-1",
            "+1",
        ] {
            assert_eq!(parse_ip_literal(s), None, "{s:?}");
        }
    }

    #[test]
    fn reasons_are_specific() {
        let r = |s: &str| blocked_ip(s.parse().unwrap());
        assert_eq!(r("10.0.0.5"), Some("a private address"));
        assert_eq!(r("127.0.0.1"), Some("a loopback address"));
        assert_eq!(r("::1"), Some("a loopback address"));
        assert_eq!(r("::ffff:127.0.0.1"), Some("a loopback address"));
        assert_eq!(
            r("169.254.169.254"),
            Some("a link-local (cloud metadata) address")
        );
        assert_eq!(r("2001::1"), Some("a Teredo tunnel address"));
    }

    #[test]
    fn names() {
        for n in [
            "localhost",
            "LOCALHOST",
            "localhost.",
            "foo.localhost",
            "a.b.LocalHost.",
            "metadata.google.internal",
            "Metadata.Google.Internal.",
        ] {
            assert!(blocked_name(n), "{n}");
        }
        for n in [
            "example.com",
            "localhost.example.com",
            "notlocalhost",
            "google.internal",
            "metadata.google.internal.example.com",
        ] {
            assert!(!blocked_name(n), "{n}");
        }
    }

    fn fake_lookup(addrs: Vec<&str>) -> Lookup {
        let addrs: Vec<SocketAddr> = addrs.iter().map(|a| a.parse().unwrap()).collect();
        Arc::new(move |_host| {
            let addrs = addrs.clone();
            Box::pin(async move { Ok(addrs) })
        })
    }

    async fn guard(allow_private: bool, url: &str) -> Result<(), String> {
        let url = WebhookUrl::parse(url, true).unwrap();
        SsrfGuard::new(allow_private).check(&url).await
    }

    #[tokio::test]
    async fn guard_refuses_literals_and_names() {
        for url in [
            "https://localhost/",
            "https://LocalHost./hook",
            "https://metadata.google.internal/computeMetadata/v1/",
            "https://127.0.0.1/",
            "https://2130706433/",
            "https://0x7f.1:8443/",
            "https://0177.0.0.1/",
            "https://[::1]/",
            "https://[::ffff:a00:1]/",
            "http://169.254.169.254/latest/meta-data/",
            "https://10.0.0.5/",
        ] {
            let err = guard(false, url).await.unwrap_err();
            assert!(!err.is_empty(), "{url}");
        }
        let err = guard(false, "https://10.0.0.5/").await.unwrap_err();
        assert_eq!(err, "host is a private address (10.0.0.5)");
    }

    #[tokio::test]
    async fn guard_allows_public_literals_and_private_when_configured() {
        assert_eq!(guard(false, "https://8.8.8.8/hook").await, Ok(()));
        assert_eq!(guard(false, "https://[2606:4700::1111]/hook").await, Ok(()));
        assert_eq!(guard(true, "https://127.0.0.1/hook").await, Ok(()));
        assert_eq!(guard(true, "https://localhost/hook").await, Ok(()));
    }

    #[tokio::test]
    async fn guard_refuses_names_that_do_not_resolve() {
        let guard = SsrfGuard::new(false);
        let err = guard
            .check_with("https://a.example/", &fake_lookup(vec![]))
            .await
            .unwrap_err();
        assert_eq!(err, "host a.example resolves to no address");
        // `.invalid` never resolves, with or without a network.
        let err = guard
            .check_with("https://unresolvable.invalid/", &system_lookup())
            .await
            .unwrap_err();
        assert!(err.contains("unresolvable.invalid"), "{err}");
    }

    #[tokio::test]
    async fn guard_refuses_a_name_if_any_address_is_blocked() {
        let guard = SsrfGuard::new(false);
        let err = guard
            .check_with(
                "https://rebind.example/",
                &fake_lookup(vec!["93.184.216.34:0", "10.0.0.5:0"]),
            )
            .await
            .unwrap_err();
        assert_eq!(err, "host resolves to a private address (10.0.0.5)");
        let ok = guard
            .check_with(
                "https://good.example/",
                &fake_lookup(vec!["93.184.216.34:0", "[2606:4700::1111]:0"]),
            )
            .await;
        assert_eq!(ok, Ok(()));
        let ok = SsrfGuard::new(true)
            .check_with("https://rebind.example/", &fake_lookup(vec!["10.0.0.5:0"]))
            .await;
        assert_eq!(ok, Ok(()));
    }
}
