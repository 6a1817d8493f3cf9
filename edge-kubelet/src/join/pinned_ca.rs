//! Fetching the operator's CA during `join`, trusting nothing but its pin (kubeadm-style
//! `sha256:<hex of the CA certificate's DER>`, [`CaPin`]): the server must present its CA in
//! the chain, the CA must hash to the pin, and the serving certificate must chain to it for
//! the dialled name.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use base64::Engine as _;
use parking_lot::Mutex;

use decloud_proto::CaPin;

use crate::error::{Error, Result};

/// The CA the operator at `operator` presents, checked against `pin`; the serving certificate
/// must chain to it for the dialled host name.
pub(super) async fn fetch_pinned_ca(operator: &str, pin: CaPin) -> Result<String> {
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
    let outcome = verifier.outcome.lock().take();
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
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        // Base64 is ASCII: every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Accepts the server only if its chain holds a certificate hashing to the pin and the leaf
/// verifies against that certificate as the sole root; records the outcome.
#[derive(Debug)]
struct PinnedCaVerifier {
    pin: CaPin,
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
            .map(|c| CaPin::of_der(c.as_ref()).to_string())
            .collect();
        let ca = intermediates
            .iter()
            .find(|c| CaPin::of_der(c.as_ref()) == self.pin)
            .ok_or_else(|| {
                format!(
                    "the operator's CA does not match --ca-hash {}: it presented {}; refusing \
                     to talk to it (check the join command, or whether someone is in between)",
                    self.pin,
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
        *self.outcome.lock() = Some(result);
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

#[cfg(test)]
mod tests {
    use rustls::pki_types::pem::PemObject as _;

    use super::*;

    #[test]
    fn pem_is_standard_base64_in_64_column_lines() {
        let der: Vec<u8> = (0..=255u8).collect();
        let pem = pem_encode("CERTIFICATE", &der);
        let lines: Vec<&str> = pem.lines().collect();
        assert_eq!(lines.first(), Some(&"-----BEGIN CERTIFICATE-----"));
        assert_eq!(lines.last(), Some(&"-----END CERTIFICATE-----"));
        let body = &lines[1..lines.len() - 1];
        assert!(
            body[..body.len() - 1].iter().all(|l| l.len() == 64),
            "{pem}"
        );
        assert!(body.iter().all(|l| l.len() <= 64));
        assert!(body[0].starts_with("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8g"));
        let back = base64::engine::general_purpose::STANDARD
            .decode(body.concat())
            .unwrap();
        assert_eq!(back, der);
        let mut pems = rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes());
        assert_eq!(pems.next().unwrap().unwrap().as_ref(), der.as_slice());
    }
}
