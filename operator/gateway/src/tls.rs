//! HTTPS at the gateway: certificates by host, checked before they are served, and the rustls
//! resolver that picks one by SNI.
//!
//! [`CertStore`] is keyed by host and knows which Workload (`namespace/name`) each certificate
//! was installed for. Today the Workload controller fills it from the `kubernetes.io/tls`
//! Secrets that Workloads name ([`load_tls_secret`]); an ACME issuer would fill it the same
//! way. At handshake time [`SniResolver`] serves a certificate only while that Workload still
//! owns the host by the gateway's own routing (`decloud_crds::hosts`) and the certificate is
//! within its validity: a certificate never outlives the ownership it was checked against.
//!
//! Unknown SNI, or no SNI, gets no certificate and the handshake fails: there is no default
//! certificate, so the gateway never answers HTTPS for a host with a certificate that does not
//! name it.

use std::{
    collections::HashMap,
    sync::{Arc, PoisonError, RwLock},
};

use decloud_crds::hosts::pattern_matches;
use k8s_openapi::api::core::v1::Secret;
use rustls::{
    crypto::ring::sign::any_supported_type,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

use crate::routes::Routes;

/// The Secret type a user-supplied certificate must have.
pub const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";
/// Largest `tls.crt` or `tls.key` accepted (PEM bytes).
pub const MAX_PEM_BYTES: usize = 64 * 1024;
/// Most certificates in a chain (leaf included).
pub const MAX_CHAIN: usize = 8;

/// Why a certificate cannot be served for a host. [`CertError::reason`] is the
/// `CertificateReady` condition's reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    /// Not a usable `kubernetes.io/tls` Secret, or its PEM is malformed, too large, or has a
    /// key rustls cannot sign with or that does not match the certificate.
    #[error("{0}")]
    Invalid(String),
    /// The leaf certificate's DNS names do not cover the host.
    #[error("the certificate does not cover host {host} (it names {names})")]
    HostNotCovered {
        /// The host served.
        host: String,
        /// The certificate's DNS names, comma-separated (or "no DNS name").
        names: String,
    },
    /// Past the certificate's `notAfter`.
    #[error("the certificate expired (notAfter {not_after})")]
    Expired {
        /// `notAfter`, RFC 3339.
        not_after: String,
    },
    /// Before the certificate's `notBefore`.
    #[error("the certificate is not valid yet (notBefore {not_before})")]
    NotYetValid {
        /// `notBefore`, RFC 3339.
        not_before: String,
    },
}

impl CertError {
    /// The condition reason: `InvalidCertificate`, `HostNotCovered`, `Expired`, `NotYetValid`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "InvalidCertificate",
            Self::HostNotCovered { .. } => "HostNotCovered",
            Self::Expired { .. } => "Expired",
            Self::NotYetValid { .. } => "NotYetValid",
        }
    }
}

/// A certificate checked for one host, ready to serve.
#[derive(Clone, Debug)]
pub struct LoadedCert {
    /// Chain and signing key.
    pub key: Arc<CertifiedKey>,
    /// The leaf's `notBefore`, Unix seconds.
    pub not_before: i64,
    /// The leaf's `notAfter`, Unix seconds.
    pub not_after: i64,
}

fn rfc3339(unix: i64) -> String {
    k8s_openapi::jiff::Timestamp::from_second(unix)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| unix.to_string())
}

/// Checks a `kubernetes.io/tls` Secret for `host` at `now` (Unix seconds): its type, the size
/// of its PEM, the chain (at most [`MAX_CHAIN`], leaf first), a private key rustls can sign
/// with that matches the leaf, the leaf's DNS names against `host` (a `*.` name covers exactly
/// one label) and its validity period.
pub fn load_tls_secret(secret: &Secret, host: &str, now: i64) -> Result<LoadedCert, CertError> {
    let invalid = |m: String| CertError::Invalid(m);
    let kind = secret.type_.as_deref().unwrap_or("Opaque");
    if kind != TLS_SECRET_TYPE {
        return Err(invalid(format!(
            "the Secret has type {kind}, not {TLS_SECRET_TYPE}"
        )));
    }
    let data = secret.data.as_ref();
    let field = |name: &str| -> Result<&[u8], CertError> {
        let bytes = data
            .and_then(|d| d.get(name))
            .map(|b| b.0.as_slice())
            .filter(|b| !b.is_empty())
            .ok_or_else(|| invalid(format!("the Secret has no {name}")))?;
        if bytes.len() > MAX_PEM_BYTES {
            return Err(invalid(format!(
                "{name} is {} bytes; at most {MAX_PEM_BYTES} are accepted",
                bytes.len()
            )));
        }
        Ok(bytes)
    };
    let (crt, key) = (field("tls.crt")?, field("tls.key")?);
    let mut chain = Vec::new();
    for cert in CertificateDer::pem_slice_iter(crt) {
        let cert = cert.map_err(|e| invalid(format!("tls.crt is not valid PEM: {e}")))?;
        if chain.len() == MAX_CHAIN {
            return Err(invalid(format!(
                "tls.crt holds more than {MAX_CHAIN} certificates"
            )));
        }
        chain.push(cert);
    }
    let Some(leaf) = chain.first() else {
        return Err(invalid("tls.crt holds no certificate".into()));
    };
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| invalid(format!("the leaf certificate cannot be parsed: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(key)
        .map_err(|e| invalid(format!("tls.key holds no usable private key: {e}")))?;
    let signer = any_supported_type(&key)
        .map_err(|e| invalid(format!("tls.key is not a key the gateway can use: {e}")))?;
    let certified = CertifiedKey::new(chain.clone(), signer);
    certified
        .keys_match()
        .map_err(|e| invalid(format!("tls.key does not belong to the certificate: {e}")))?;

    let names: Vec<String> = match parsed.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(invalid(format!("the subjectAltName cannot be parsed: {e}"))),
    };
    let host = host.to_ascii_lowercase();
    // Clients match the subjectAltName only (RFC 6125); the subject's CN does not count.
    if !names.iter().any(|n| pattern_matches(n, &host)) {
        let names = if names.is_empty() {
            "no DNS name".to_string()
        } else {
            let mut shown: Vec<&str> = names.iter().take(8).map(String::as_str).collect();
            if names.len() > shown.len() {
                shown.push("…");
            }
            shown.join(", ")
        };
        return Err(CertError::HostNotCovered { host, names });
    }
    let validity = parsed.validity();
    let (not_before, not_after) = (
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    );
    if now > not_after {
        return Err(CertError::Expired {
            not_after: rfc3339(not_after),
        });
    }
    if now < not_before {
        return Err(CertError::NotYetValid {
            not_before: rfc3339(not_before),
        });
    }
    Ok(LoadedCert {
        key: Arc::new(certified),
        not_before,
        not_after,
    })
}

// === impl CertStore ===

/// A certificate installed for one host.
#[derive(Clone, Debug)]
struct Installed {
    /// The Workload it was checked for, `namespace/name`.
    owner: String,
    cert: LoadedCert,
}

/// Certificates by host, shared by the gateway's HTTPS listener and whoever checks and
/// installs them (the Workload controller for user Secrets; an ACME issuer later). One entry
/// per host: at most one per exposed Workload.
#[derive(Clone, Default)]
pub struct CertStore {
    hosts: Arc<RwLock<HashMap<String, Installed>>>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("hosts", &self.len())
            .finish()
    }
}

impl CertStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves `cert` for `host` on behalf of Workload `owner` (`namespace/name`), in place of
    /// whatever `owner` had installed before (for this or another host).
    pub fn install(&self, owner: &str, host: &str, cert: LoadedCert) {
        let mut hosts = self.hosts.write().unwrap_or_else(PoisonError::into_inner);
        hosts.retain(|h, i| i.owner != owner || h == host);
        hosts.insert(
            host.to_ascii_lowercase(),
            Installed {
                owner: owner.to_string(),
                cert,
            },
        );
    }

    /// Stops serving what `owner` installed.
    pub fn remove_owner(&self, owner: &str) {
        self.hosts
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, i| i.owner != owner);
    }

    /// Hosts with a certificate.
    pub fn len(&self) -> usize {
        self.hosts
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether no host has a certificate.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The certificate for `host` if Workload `owner` installed it and it is valid at `now`.
    fn serving(&self, host: &str, owner: &str, now: i64) -> Option<Arc<CertifiedKey>> {
        let hosts = self.hosts.read().unwrap_or_else(PoisonError::into_inner);
        let i = hosts.get(host)?;
        (i.owner == owner && i.cert.not_before <= now && now <= i.cert.not_after)
            .then(|| i.cert.key.clone())
    }
}

// === impl Http01Challenges ===

/// Where ACME HTTP-01 challenges are asked for on plain HTTP.
pub const ACME_CHALLENGE_PATH: &str = "/.well-known/acme-challenge/";
/// Challenge answers held at once.
pub const MAX_CHALLENGES: usize = 1024;
/// Longest challenge token accepted (base64url; RFC 8555 tokens are 43 characters).
const MAX_TOKEN: usize = 128;

/// The answers to ACME HTTP-01 challenges the gateway gives on plain HTTP
/// (`GET /.well-known/acme-challenge/<token>` for the host being validated), filled by the
/// ACME issuer while its orders run. At most [`MAX_CHALLENGES`]; a token answers only for the
/// host it was published for.
#[derive(Clone, Default)]
pub struct Http01Challenges {
    tokens: Arc<RwLock<HashMap<String, (String, String)>>>,
}

impl std::fmt::Debug for Http01Challenges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self
            .tokens
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        f.debug_struct("Http01Challenges")
            .field("tokens", &n)
            .finish()
    }
}

impl Http01Challenges {
    /// Answers `token` for `host` with `key_authorization`; false if the token is malformed
    /// or the table is full.
    pub fn publish(&self, host: &str, token: &str, key_authorization: &str) -> bool {
        let valid = !token.is_empty()
            && token.len() <= MAX_TOKEN
            && token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        let mut tokens = self.tokens.write().unwrap_or_else(PoisonError::into_inner);
        if !valid || (tokens.len() >= MAX_CHALLENGES && !tokens.contains_key(token)) {
            return false;
        }
        tokens.insert(
            token.to_string(),
            (host.to_ascii_lowercase(), key_authorization.to_string()),
        );
        true
    }

    /// Stops answering `token`.
    pub fn withdraw(&self, token: &str) {
        self.tokens
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(token);
    }

    /// The answer to `token` asked for on `host`, if one is published.
    pub(crate) fn answer(&self, host: &str, token: &str) -> Option<String> {
        let tokens = self.tokens.read().unwrap_or_else(PoisonError::into_inner);
        let (h, answer) = tokens.get(token)?;
        (h == host).then(|| answer.clone())
    }
}

/// Now, in Unix seconds.
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

// === impl SniResolver ===

/// Picks the certificate for a handshake's SNI: the host's, if the Workload that owns the host
/// now installed it.
pub(crate) struct SniResolver {
    store: CertStore,
    routes: Routes,
}

impl std::fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SniResolver")
            .field("store", &self.store)
            .finish()
    }
}

impl SniResolver {
    pub(crate) fn new(store: CertStore, routes: Routes) -> Self {
        Self { store, routes }
    }

    /// The certificate served for `host` (lower-case) now, if any.
    pub(crate) fn certificate_for(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        let owner = self.routes.owner(host)?;
        self.store.serving(host, &owner, unix_now())
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let host = hello
            .server_name()?
            .trim_end_matches('.')
            .to_ascii_lowercase();
        self.certificate_for(&host)
    }
}

/// The rustls server configuration of the HTTPS listener: certificates from `resolver`.
pub(crate) fn server_config(resolver: Arc<SniResolver>) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    // HTTP/2 (see `h2`) and HTTP/1.1, in the server's order of preference.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

#[cfg(test)]
pub(crate) mod tests;
