//! Which registries the engine may be sent to. A pull makes the engine (on the host, with
//! the host's network) dial whatever host the image names; a tenant could aim it at the
//! volunteer's router, a service on the host (`127.0.0.1:2375`, the engine's own API on many
//! machines) or the cloud metadata address. So before any pull the registry host is checked:
//! an IP literal, `localhost`, or a name resolving into a range the egress policy denies is
//! refused with `ImageNotAllowed`, unless the volunteer lists it with `--allow-registry`
//! (a local mirror). Images without a registry (`busybox`, `acme/web`) go to the engine's
//! default registry and its configured mirrors, the volunteer's own choice.
//!
//! The name is resolved here and again by the engine: a name whose answers change between
//! the two (DNS rebinding) is not caught. Names resolving to several addresses are refused
//! if any one is denied.

use std::net::IpAddr;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::host::EgressPolicy;

/// The waiting reason of a refused image (shared with `--allowed-images`).
pub(crate) use super::policy::IMAGE_NOT_ALLOWED;

/// Longest a registry name may take to resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Most `--allow-registry` entries.
pub(crate) const MAX_ALLOWED_REGISTRIES: usize = 64;

/// The registry part of an image reference (`host[:port]`, lowercased), or `None` for the
/// engine's default registry. Docker's rule: the first path component is a registry if it
/// holds a `.` or a `:`, or is `localhost`.
pub(crate) fn registry_of(image: &str) -> Option<String> {
    let (first, rest) = image.split_once('/')?;
    if rest.is_empty() {
        return None;
    }
    (first.contains('.') || first.contains(':') || first == "localhost")
        .then(|| first.to_ascii_lowercase())
}

/// `host[:port]` split; IPv6 literals come bracketed (`[::1]:5000`).
fn host_of(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match registry.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => registry,
    }
}

/// What the registry check says before any resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The engine's default registry or an allowed one.
    Allowed,
    /// Refused, with why.
    Refused(String),
    /// A name: resolve it and check every address.
    Resolve { host: String },
}

/// The registry rules of one edge.
#[derive(Debug, Clone, Default)]
pub struct RegistryGuard {
    allowed: Vec<String>,
    egress: EgressPolicy,
}

impl RegistryGuard {
    /// `allowed`: `--allow-registry HOST[:PORT]` entries; `egress`: the ranges containers
    /// (and so pulls) may reach.
    pub fn new(allowed: &[String], egress: EgressPolicy) -> Result<Self> {
        if allowed.len() > MAX_ALLOWED_REGISTRIES {
            return Err(Error::InvalidInput(format!(
                "{} --allow-registry entries; at most {MAX_ALLOWED_REGISTRIES}",
                allowed.len()
            )));
        }
        let mut out = Vec::new();
        for a in allowed {
            let a = a.trim().to_ascii_lowercase();
            let ok = !a.is_empty()
                && a.len() <= 255
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-:[]_".contains(c));
            if !ok {
                return Err(Error::InvalidInput(format!(
                    "--allow-registry {a:?}: expected HOST or HOST:PORT"
                )));
            }
            out.push(a);
        }
        Ok(Self {
            allowed: out,
            egress,
        })
    }

    /// The check without the network (pure).
    pub(crate) fn verdict(&self, image: &str) -> Verdict {
        let Some(registry) = registry_of(image) else {
            return Verdict::Allowed;
        };
        let host = host_of(&registry).to_string();
        if self.allowed.iter().any(|a| *a == registry || *a == host) {
            return Verdict::Allowed;
        }
        let refuse = |why: &str| {
            Verdict::Refused(format!(
                "image {image:?}: registry {registry:?} {why}; this provider pulls only from \
                 registries on the public internet (or those it lists with --allow-registry)"
            ))
        };
        if host == "localhost" || host.ends_with(".localhost") {
            return refuse("is this machine");
        }
        if host.parse::<IpAddr>().is_ok() {
            return refuse("is an IP address");
        }
        Verdict::Resolve { host }
    }

    /// Whether every address in `addrs` may be dialled.
    pub(crate) fn addresses_ok(&self, addrs: &[IpAddr]) -> Option<IpAddr> {
        addrs.iter().copied().find(|a| !self.egress.allows(*a))
    }

    /// `Ok` if the engine may pull `image`; else [`Error::ImagePull`] with reason
    /// `ImageNotAllowed` (refused) or `ErrImagePull` (the name does not resolve).
    pub(crate) async fn check(&self, image: &str) -> Result<()> {
        let host = match self.verdict(image) {
            Verdict::Allowed => return Ok(()),
            Verdict::Refused(message) => {
                return Err(Error::ImagePull {
                    reason: IMAGE_NOT_ALLOWED,
                    message,
                });
            }
            Verdict::Resolve { host } => host,
        };
        let lookup = tokio::time::timeout(
            RESOLVE_TIMEOUT,
            tokio::net::lookup_host((host.as_str(), 443)),
        );
        let addrs: Vec<IpAddr> = match lookup.await {
            Ok(Ok(a)) => a.map(|s| s.ip()).collect(),
            Ok(Err(e)) => {
                return Err(Error::ImagePull {
                    reason: "ErrImagePull",
                    message: format!("registry {host:?} does not resolve: {e}"),
                });
            }
            Err(_) => {
                return Err(Error::ImagePull {
                    reason: "ErrImagePull",
                    message: format!("registry {host:?} did not resolve in {RESOLVE_TIMEOUT:?}"),
                });
            }
        };
        if let Some(bad) = self.addresses_ok(&addrs) {
            return Err(Error::ImagePull {
                reason: IMAGE_NOT_ALLOWED,
                message: format!(
                    "image {image:?}: registry {host:?} resolves to {bad}, an address this \
                     provider's containers may not reach (list it with --allow-registry for a \
                     local mirror)"
                ),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_part_of_references() {
        for (image, reg) in [
            ("busybox", None),
            ("busybox:1", None),
            ("acme/web:2", None),
            ("decloud-test/busybox:1", None),
            ("ghcr.io/acme/web", Some("ghcr.io")),
            ("127.0.0.1:2375/x:1", Some("127.0.0.1:2375")),
            ("10.1.2.3/x:1", Some("10.1.2.3")),
            ("localhost/x", Some("localhost")),
            ("LOCALHOST:5000/x", Some("localhost:5000")),
            ("[::1]:5000/x", Some("[::1]:5000")),
            ("x/", None),
        ] {
            assert_eq!(registry_of(image).as_deref(), reg, "{image}");
        }
    }

    #[test]
    fn verdicts_table() {
        let g = RegistryGuard::new(
            &["mirror.lan:5000".to_string(), "192.168.1.10".to_string()],
            EgressPolicy::default(),
        )
        .unwrap();
        let refused = |i: &str| matches!(g.verdict(i), Verdict::Refused(_));
        for (image, want_refused) in [
            ("127.0.0.1:2375/x:1", true),
            ("10.1.2.3/x:1", true),
            ("192.168.1.1/x", true),
            ("169.254.169.254/latest", true),
            ("8.8.8.8/x", true),
            ("[::1]:5000/x", true),
            ("[fe80::1]/x", true),
            ("localhost:5000/x", true),
            ("registry.localhost/x", true),
            ("busybox", false),
            ("decloud-test/busybox:1", false),
            ("mirror.lan:5000/x", false),
            ("192.168.1.10/x:1", false),
            ("192.168.1.10:5000/x:1", false),
        ] {
            assert_eq!(
                refused(image),
                want_refused,
                "{image}: {:?}",
                g.verdict(image)
            );
        }
        assert_eq!(
            g.verdict("ghcr.io/acme/web"),
            Verdict::Resolve {
                host: "ghcr.io".into()
            }
        );
        assert_eq!(g.verdict("mirror.lan:5000/x"), Verdict::Allowed);
        assert!(
            g.verdict("mirror.lan/x") != Verdict::Allowed,
            "port is part of the entry"
        );
    }

    #[test]
    fn resolved_addresses_are_checked_against_the_egress_policy() {
        let g = RegistryGuard::new(&[], EgressPolicy::default()).unwrap();
        let ips = |l: &[&str]| {
            l.iter()
                .map(|s| s.parse().unwrap())
                .collect::<Vec<IpAddr>>()
        };
        assert_eq!(
            g.addresses_ok(&ips(&["140.82.112.3", "2606:50c0::1"])),
            None
        );
        assert_eq!(
            g.addresses_ok(&ips(&["140.82.112.3", "192.168.1.1"])),
            Some("192.168.1.1".parse().unwrap())
        );
        assert!(g.addresses_ok(&ips(&["127.0.0.1"])).is_some());
    }

    #[tokio::test]
    async fn refusals_carry_the_reason_and_never_resolve() {
        let g = RegistryGuard::new(&[], EgressPolicy::default()).unwrap();
        for image in ["127.0.0.1:2375/x:1", "10.1.2.3/x:1"] {
            let e = g.check(image).await.unwrap_err();
            assert!(
                matches!(&e, Error::ImagePull { reason, .. } if *reason == IMAGE_NOT_ALLOWED),
                "{e}"
            );
        }
        // `localhost` resolves to loopback everywhere: refused before any lookup anyway.
        assert!(g.check("localhost:5000/x").await.is_err());
        assert!(g.check("busybox").await.is_ok());
    }

    #[test]
    fn allow_list_is_bounded_and_checked() {
        assert!(RegistryGuard::new(&["a b".into()], EgressPolicy::default()).is_err());
        assert!(RegistryGuard::new(&[String::new()], EgressPolicy::default()).is_err());
        let many = vec!["m.lan".to_string(); MAX_ALLOWED_REGISTRIES + 1];
        assert!(RegistryGuard::new(&many, EgressPolicy::default()).is_err());
    }
}
