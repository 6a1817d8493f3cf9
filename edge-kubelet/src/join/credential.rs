//! Joining a cluster and talking to the operator securely.
//!
//! `edge-kubelet join` dials the operator over TLS trusting nothing but the pinned CA hash
//! (kubeadm-style `sha256:<hex of the CA certificate's DER>`): the server must present its CA in
//! the chain, the CA must hash to the pin, and the serving certificate must chain to it for the
//! dialled name. It then calls `Register` with the join token and stores the per-provider
//! credential and the CA in the state directory (mode 0600). From then on every connection
//! trusts only that CA and every RPC carries `authorization: Bearer <credential>`.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use decloud_proto as pb;

use crate::{Error, Result};

/// File in the state directory holding the credential.
pub const CREDENTIAL_FILE: &str = "credential";
/// File in the state directory holding the operator's CA (PEM).
pub const CA_FILE: &str = "ca.crt";
/// File in the state directory holding the credential asked for by a join not yet answered.
pub const PENDING_CREDENTIAL_FILE: &str = "credential.pending";

/// The credential this edge asks for when joining as `provider`: the one a previous,
/// unanswered attempt asked for (so a retry is recognised), else a new random one, stored
/// (0600) before it is ever sent.
pub fn pending_credential(dir: &Path, provider: &str) -> Result<String> {
    use rand::Rng as _;
    let path = dir.join(PENDING_CREDENTIAL_FILE);
    match std::fs::read_to_string(&path) {
        Ok(c)
            if c.trim()
                .rsplit_once('.')
                .is_some_and(|(p, _)| p == provider) =>
        {
            return Ok(c.trim().to_string());
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(file_error(&path, e)),
    }
    let secret: [u8; 32] = rand::rng().random();
    let credential = format!("{provider}.{}", hex::encode(secret));
    std::fs::create_dir_all(dir).map_err(|e| file_error(dir, e))?;
    write_private(&path, credential.as_bytes())?;
    Ok(credential)
}

/// What an edge proves itself with, and the CA it trusts.
#[derive(Clone)]
pub struct EdgeCredential {
    /// Bearer credential (`<provider>.<secret>`).
    pub credential: String,
    /// The operator's CA (PEM); None only for a plaintext (`http://`) operator.
    pub ca_pem: Option<String>,
}

impl std::fmt::Debug for EdgeCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeCredential")
            .field("credential", &"<redacted>")
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "<pem>"))
            .finish()
    }
}

impl EdgeCredential {
    /// The `authorization` metadata value.
    pub fn bearer(&self) -> Result<MetadataValue<Ascii>> {
        format!("Bearer {}", self.credential)
            .parse()
            .map_err(|_| Error::InvalidInput("the stored credential is not ASCII".into()))
    }

    /// Adds the credential to `request`'s metadata.
    pub fn authorize<T>(&self, mut request: tonic::Request<T>) -> Result<tonic::Request<T>> {
        request
            .metadata_mut()
            .insert("authorization", self.bearer()?);
        Ok(request)
    }

    /// Reads the credential stored in `dir`, if the edge has joined.
    pub fn load(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(CREDENTIAL_FILE);
        let credential = match std::fs::read_to_string(&path) {
            Ok(c) => c.trim().to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(file_error(&path, e)),
        };
        let ca_path = dir.join(CA_FILE);
        let ca_pem = match std::fs::read_to_string(&ca_path) {
            Ok(c) => Some(c),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(file_error(&ca_path, e)),
        };
        Ok(Some(Self { credential, ca_pem }))
    }

    /// Stores the credential (and CA) in `dir`, readable by this user only.
    pub fn store(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| file_error(dir, e))?;
        if let Some(ca) = &self.ca_pem {
            write_private(&dir.join(CA_FILE), ca.as_bytes())?;
        }
        write_private(&dir.join(CREDENTIAL_FILE), self.credential.as_bytes())
    }
}

fn file_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::StateFile {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Writes `data` to `path` atomically with mode 0600.
fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp: PathBuf = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| file_error(&tmp, e))?;
    f.write_all(data).map_err(|e| file_error(&tmp, e))?;
    f.sync_all().map_err(|e| file_error(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| file_error(path, e))
}

/// Parses `sha256:<64 hex>`.
pub fn parse_ca_hash(s: &str) -> std::result::Result<[u8; 32], String> {
    let bad = || {
        format!(
            "--ca-hash {s:?} must be sha256:<64 hex digits>, as printed by `decloud-operator token create`"
        )
    };
    let hex = s.trim().strip_prefix("sha256:").ok_or_else(bad)?;
    let bytes = hex::decode(hex).map_err(|_| bad())?;
    bytes.try_into().map_err(|_| bad())
}

fn format_hash(h: &[u8]) -> String {
    format!("sha256:{}", hex::encode(h))
}

/// An endpoint for `operator`: TLS trusting only `ca_pem` for `https://`, plaintext for
/// `http://` (which must have no CA).
pub fn endpoint(operator: &str, ca_pem: Option<&str>) -> Result<Endpoint> {
    let endpoint = Endpoint::from_shared(operator.to_string())
        .map_err(|e| Error::InvalidInput(format!("--operator {operator}: {e}")))?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5));
    let https = operator.starts_with("https://");
    match (https, ca_pem) {
        (true, Some(ca)) => Ok(endpoint
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))?),
        (true, None) => Err(Error::InvalidInput(format!(
            "{operator} is https but this edge has no pinned CA; join with --ca-hash"
        ))),
        (false, _) if operator.starts_with("http://") => {
            tracing::warn!(%operator, "talking to the operator over INSECURE plaintext");
            Ok(endpoint)
        }
        (false, _) => Err(Error::InvalidInput(format!(
            "--operator {operator} must start with https:// (or http:// for a plaintext debug operator)"
        ))),
    }
}

/// How long dialling the operator may take in all: TCP, TLS and HTTP/2 handshakes.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Dials `endpoint`, giving up after [`DIAL_TIMEOUT`]. The endpoint's own connect timeout
/// covers only the TCP handshake; a connection the server's kernel queued but never completed
/// (its accept queue overflowed during a reconnect storm) would otherwise hang until the
/// server's SYN-ACK retransmissions (~31 s) and hold the edge back that long.
pub async fn connect(endpoint: Endpoint) -> Result<tonic::transport::Channel> {
    tokio::time::timeout(DIAL_TIMEOUT, endpoint.connect())
        .await
        .map_err(|_| Error::Timeout(DIAL_TIMEOUT))?
        .map_err(Error::from)
}

/// Joins the cluster at `operator` once: checks the operator's CA against `ca_hash`, calls
/// `Register` with `token`, and stores the credential and CA in `state_dir`.
pub async fn join(
    operator: &str,
    token: &str,
    ca_hash: Option<&str>,
    request: pb::RegisterRequest,
    state_dir: &Path,
) -> Result<EdgeCredential> {
    let ca_pem = if operator.starts_with("https://") {
        let pin = ca_hash.ok_or_else(|| {
            Error::InvalidInput(
                "--ca-hash is required to join over TLS (it is printed by \
                 `decloud-operator token create`)"
                    .into(),
            )
        })?;
        let pin = parse_ca_hash(pin).map_err(Error::InvalidInput)?;
        Some(fetch_pinned_ca(operator, pin).await?)
    } else {
        None
    };
    let channel = connect(endpoint(operator, ca_pem.as_deref())?).await?;
    let mut client = pb::edge_client::EdgeClient::new(channel)
        .max_decoding_message_size(pb::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(pb::MAX_MESSAGE_BYTES);
    let name = request.provider_name.clone();
    let asked = pending_credential(state_dir, &name)?;
    let response = client
        .register(pb::RegisterRequest {
            join_token: token.to_string(),
            credential: asked,
            ..request
        })
        .await
        .map_err(|s| Error::JoinRefused {
            code: s.code(),
            message: s.message().to_string(),
        })?
        .into_inner();
    if response.provider_name != name || response.credential.is_empty() {
        return Err(Error::Session(format!(
            "the operator answered Register for {:?} with {:?} and no usable credential",
            name, response.provider_name
        )));
    }
    let cred = EdgeCredential {
        credential: response.credential,
        ca_pem,
    };
    cred.store(state_dir)?;
    let _ = std::fs::remove_file(state_dir.join(PENDING_CREDENTIAL_FILE));
    tracing::info!(provider = %name, state_dir = %state_dir.display(), "joined; credential stored");
    Ok(cred)
}

/// The CA the operator at `operator` presents, checked against `pin`; the serving certificate
/// must chain to it for the dialled host name.
pub async fn fetch_pinned_ca(operator: &str, pin: [u8; 32]) -> Result<String> {
    let uri: tonic::codegen::http::Uri = operator
        .parse()
        .map_err(|e| Error::InvalidInput(format!("--operator {operator}: {e}")))?;
    let host = uri
        .host()
        .ok_or_else(|| Error::InvalidInput(format!("--operator {operator} has no host")))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(443);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(PinnedCaVerifier {
        pin,
        provider: provider.clone(),
        outcome: Mutex::new(None),
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Session(format!("TLS set-up: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let server_name = ServerName::try_from(host.clone())
        .map_err(|e| Error::InvalidInput(format!("--operator host {host:?}: {e}")))?;
    let tcp = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    .map_err(|_| Error::Timeout(Duration::from_secs(5)))?
    .map_err(|e| Error::Session(format!("cannot reach {operator}: {e}")))?;
    let handshake = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(server_name, tcp),
    )
    .await
    .map_err(|_| Error::Timeout(Duration::from_secs(5)))?;
    let outcome = verifier
        .outcome
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    match (handshake, outcome) {
        (Ok(_), Some(Ok(ca))) => Ok(pem_encode("CERTIFICATE", ca.as_ref())),
        (_, Some(Err(why))) => Err(Error::Session(why)),
        (Err(e), _) => Err(Error::Session(format!(
            "TLS handshake with {operator} failed: {e}"
        ))),
        (Ok(_), None) => Err(Error::Session(
            "the TLS handshake did not check the operator's certificate".into(),
        )),
    }
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64_lite::encode;
    let b64 = encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Minimal standard base64 (no dependency needed for one PEM file).
mod base64_lite {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub(super) fn encode(data: &[u8]) -> String {
        let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
        for chunk in data.chunks(3) {
            let b = [
                chunk[0],
                chunk.get(1).copied().unwrap_or(0),
                chunk.get(2).copied().unwrap_or(0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}

/// Accepts the server only if its chain holds a certificate hashing to the pin and the leaf
/// verifies against that certificate as the sole root; records the outcome.
#[derive(Debug)]
struct PinnedCaVerifier {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
    outcome: Mutex<Option<std::result::Result<CertificateDer<'static>, String>>>,
}

impl PinnedCaVerifier {
    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> std::result::Result<CertificateDer<'static>, String> {
        let hashes: Vec<String> = intermediates
            .iter()
            .map(|c| format_hash(&Sha256::digest(c.as_ref())))
            .collect();
        let ca = intermediates
            .iter()
            .find(|c| Sha256::digest(c.as_ref()).as_slice() == self.pin)
            .ok_or_else(|| {
                format!(
                    "the operator's CA does not match --ca-hash {}: it presented {}; refusing \
                     to talk to it (check the join command, or whether someone is in between)",
                    format_hash(&self.pin),
                    if hashes.is_empty() {
                        "no CA certificate".to_string()
                    } else {
                        hashes.join(", ")
                    }
                )
            })?;
        let mut roots = RootCertStore::empty();
        roots
            .add(ca.clone().into_owned())
            .map_err(|e| format!("the pinned CA is not a usable certificate: {e}"))?;
        let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| e.to_string())?;
        webpki
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
            .map_err(|e| {
                format!("the operator's certificate does not verify against the pinned CA: {e}")
            })?;
        Ok(ca.clone().into_owned())
    }
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let result = self.verify(end_entity, intermediates, server_name, ocsp_response, now);
        let verdict = match &result {
            Ok(_) => Ok(ServerCertVerified::assertion()),
            Err(why) => Err(rustls::Error::General(why.clone())),
        };
        *self.outcome.lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
        verdict
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The labels of a Register request, from `--label` pairs.
pub fn register_request(
    name: &str,
    owner: &str,
    labels: HashMap<String, String>,
) -> pb::RegisterRequest {
    pb::RegisterRequest {
        join_token: String::new(),
        provider_name: name.to_string(),
        owner: owner.to_string(),
        labels,
        // Filled in by [`join`] from the state directory.
        credential: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retried_join_asks_for_the_same_credential() {
        let dir = tempfile::tempdir().unwrap();
        let first = pending_credential(dir.path(), "alice").unwrap();
        let (provider, secret) = first.rsplit_once('.').unwrap();
        assert_eq!(provider, "alice");
        assert_eq!(secret.len(), 64);
        assert!(secret.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(pending_credential(dir.path(), "alice").unwrap(), first);
        let path = dir.path().join(PENDING_CREDENTIAL_FILE);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Joining under another name asks for another credential.
        let bob = pending_credential(dir.path(), "bob").unwrap();
        assert!(bob.starts_with("bob.") && bob != first);
    }

    #[test]
    fn ca_hashes_parse() {
        let hex = "ab".repeat(32);
        assert_eq!(parse_ca_hash(&format!("sha256:{hex}")).unwrap(), [0xab; 32]);
        for bad in [hex.clone(), "sha256:abc".into(), format!("sha1:{hex}")] {
            assert!(parse_ca_hash(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn base64_matches_the_standard() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_lite::encode(input.as_bytes()), want);
        }
    }

    #[test]
    fn credentials_are_stored_privately() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        assert!(EdgeCredential::load(dir.path()).unwrap().is_none());
        let c = EdgeCredential {
            credential: "alice.abc".into(),
            ca_pem: Some("PEM".into()),
        };
        c.store(dir.path()).unwrap();
        for f in [CREDENTIAL_FILE, CA_FILE] {
            let mode = std::fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        let back = EdgeCredential::load(dir.path()).unwrap().unwrap();
        assert_eq!(back.credential, "alice.abc");
        assert_eq!(back.ca_pem.as_deref(), Some("PEM"));
        assert!(!format!("{back:?}").contains("alice.abc"));
        assert_eq!(back.bearer().unwrap().to_str().unwrap(), "Bearer alice.abc");
    }
}
