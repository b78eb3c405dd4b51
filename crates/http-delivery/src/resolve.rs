//! The DNS step of the SSRF guarantee: resolve once, check every address, and hand reqwest
//! exactly the addresses that were checked, so a second lookup (DNS rebinding) cannot
//! swap in a private address between the check and the connect.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::ssrf::{blocked_ip, blocked_name};

/// Turns a host name into socket addresses (port 0; reqwest fills in the URL's port).
pub(crate) type Lookup =
    Arc<dyn Fn(String) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>> + Send + Sync>;

/// The operating system's resolver, through tokio.
pub(crate) fn system_lookup() -> Lookup {
    Arc::new(|host: String| {
        Box::pin(async move { Ok(tokio::net::lookup_host((host.as_str(), 0)).await?.collect()) })
    })
}

/// A target the guard refused; kept as its own type so the client can tell it apart from
/// other connect errors in reqwest's error chain.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct BlockedTarget(pub(crate) String);

/// Fails when `addrs` is empty or any of them is blocked.
pub(crate) fn check_addrs(host: &str, addrs: &[SocketAddr]) -> Result<(), BlockedTarget> {
    if addrs.is_empty() {
        return Err(BlockedTarget(format!("host {host} resolves to no address")));
    }
    // One bad address refuses the whole name: connecting to "the others" would still let a
    // rebinding attacker win whenever the OS picks the bad one first.
    for addr in addrs {
        if let Some(reason) = blocked_ip(addr.ip()) {
            return Err(BlockedTarget(format!(
                "host resolves to {reason} ({})",
                addr.ip()
            )));
        }
    }
    Ok(())
}

/// reqwest's DNS resolver with the SSRF check built in.
pub(crate) struct GuardedResolver {
    allow_private: bool,
    lookup: Lookup,
}

impl GuardedResolver {
    /// Resolves with `lookup`, refusing blocked addresses unless `allow_private`.
    pub(crate) fn new(allow_private: bool, lookup: Lookup) -> Self {
        Self {
            allow_private,
            lookup,
        }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        let allow_private = self.allow_private;
        let lookup = Arc::clone(&self.lookup);
        Box::pin(async move {
            if !allow_private && blocked_name(&host) {
                return Err(
                    BlockedTarget(format!("host {host} is a local or metadata name")).into(),
                );
            }
            let addrs = lookup(host.clone()).await?;
            if allow_private {
                if addrs.is_empty() {
                    return Err(BlockedTarget(format!("host {host} resolves to no address")).into());
                }
            } else {
                check_addrs(&host, &addrs)?;
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    fn fixed(addrs: &[&str]) -> Lookup {
        let addrs: Vec<SocketAddr> = addrs.iter().map(|a| a.parse().unwrap()).collect();
        Arc::new(move |_| {
            let addrs = addrs.clone();
            Box::pin(async move { Ok(addrs) })
        })
    }

    async fn resolve(resolver: &GuardedResolver, host: &str) -> Result<Vec<SocketAddr>, String> {
        match resolver.resolve(Name::from_str(host).unwrap()).await {
            Ok(addrs) => Ok(addrs.collect()),
            Err(e) => {
                assert!(
                    e.downcast_ref::<BlockedTarget>().is_some()
                        || e.downcast_ref::<io::Error>().is_some()
                );
                Err(e.to_string())
            }
        }
    }

    #[test]
    fn check_addrs_refuses_any_blocked_address() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(check_addrs("h", &[a("8.8.8.8:0"), a("1.1.1.1:0")]).is_ok());
        let err = check_addrs("h", &[a("8.8.8.8:0"), a("[fd00::1]:0")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "host resolves to a private (unique local) address (fd00::1)"
        );
        let err = check_addrs("h", &[a("[::ffff:127.0.0.1]:0")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "host resolves to a loopback address (::ffff:127.0.0.1)"
        );
        assert!(check_addrs("h", &[]).is_err());
    }

    #[tokio::test]
    async fn resolver_returns_exactly_the_checked_addresses() {
        let resolver =
            GuardedResolver::new(false, fixed(&["93.184.216.34:0", "[2606:4700::1111]:0"]));
        let got = resolve(&resolver, "example.com").await.unwrap();
        assert_eq!(
            got,
            vec![
                "93.184.216.34:0".parse().unwrap(),
                "[2606:4700::1111]:0".parse().unwrap()
            ]
        );
    }

    #[tokio::test]
    async fn resolver_refuses_rebinding_and_names() {
        let resolver = GuardedResolver::new(false, fixed(&["93.184.216.34:0", "10.0.0.5:0"]));
        let err = resolve(&resolver, "rebind.example").await.unwrap_err();
        assert_eq!(err, "host resolves to a private address (10.0.0.5)");
        let err = resolve(&resolver, "localhost").await.unwrap_err();
        assert!(err.contains("localhost"), "{err}");
        let open = GuardedResolver::new(true, fixed(&["10.0.0.5:0"]));
        assert_eq!(
            resolve(&open, "rebind.example").await.unwrap(),
            vec!["10.0.0.5:0".parse().unwrap()]
        );
    }

    #[tokio::test]
    async fn system_resolution_is_checked() {
        // A real lookup whose answer is loopback wherever the tests run: getaddrinfo answers
        // numeric hosts and `localhost` itself.
        let resolver = GuardedResolver::new(false, system_lookup());
        let err = resolve(&resolver, "127.0.0.1").await.unwrap_err();
        assert_eq!(err, "host resolves to a loopback address (127.0.0.1)");
        let addrs = system_lookup()("localhost".to_owned()).await.unwrap();
        assert!(check_addrs("localhost", &addrs).is_err());
        let open = GuardedResolver::new(true, system_lookup());
        let got = resolve(&open, "127.0.0.1").await.unwrap();
        assert_eq!(got, vec!["127.0.0.1:0".parse().unwrap()]);
    }
}
