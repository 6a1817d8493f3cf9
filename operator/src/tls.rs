//! The operator's own CA and edge serving certificate, kept in the Secret
//! [`TLS_SECRET`] of the operator's namespace.
//!
//! The CA is made once and never rotated by the operator: edges pin its hash (kubeadm-style,
//! `sha256:<hex of the CA certificate's DER>`), so replacing it means re-joining every edge.
//! The serving certificate is re-issued from the same CA whenever it does not cover the names
//! asked for (`--tls-san`), which keeps the pin valid across restarts and new addresses.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::{Error, Result};
use decloud_crds::contracts::{OPERATOR_FIELD_MANAGER, SANS_ANNOTATION};
use decloud_proto::CaPin;

/// Name of the Secret holding the CA and the serving certificate.
pub(crate) const TLS_SECRET: &str = "decloud-operator-tls";
const CA_CN: &str = "decloud-operator CA";

/// The operator's TLS material (PEM).
#[derive(Clone, Debug)]
pub(crate) struct OperatorTls {
    /// The CA certificate edges pin.
    pub(crate) ca_pem: String,
    /// The serving certificate.
    pub(crate) cert_pem: String,
    /// The serving certificate's private key.
    pub(crate) key_pem: String,
}

impl OperatorTls {
    /// The pin edges check: `sha256:<hex of the CA certificate's DER>`.
    pub(crate) fn ca_hash(&self) -> Result<String> {
        ca_hash(&self.ca_pem)
    }

    /// The edge gRPC server's TLS settings. The chain sent is the serving certificate and the
    /// CA, so a joining edge can check the CA against its pin before it trusts anything.
    pub(crate) fn server_config(&self) -> tonic::transport::ServerTlsConfig {
        let chain = format!("{}{}", self.cert_pem, self.ca_pem);
        tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(chain, &self.key_pem))
    }
}

/// The CA pin (`sha256:<hex>`) of the first certificate in `pem`.
pub(crate) fn ca_hash(pem: &str) -> Result<String> {
    let der = CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| Error::Tls(format!("the CA certificate is not PEM: {e}")))?;
    Ok(CaPin::of_der(der.as_ref()).to_string())
}

fn tls_err(e: rcgen::Error) -> Error {
    Error::Tls(e.to_string())
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_CN);
    dn.push(DnType::OrganizationName, "DeCloud");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

/// A new CA: (certificate PEM, key PEM).
pub(crate) fn new_ca() -> Result<(String, String)> {
    let key = KeyPair::generate().map_err(tls_err)?;
    let cert = ca_params().self_signed(&key).map_err(tls_err)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A serving certificate for `sans` (DNS names or IP addresses) signed by the CA whose key is
/// `ca_key_pem`: (certificate PEM, key PEM).
pub(crate) fn issue_serving_cert(
    ca_key_pem: &str,
    sans: &BTreeSet<String>,
) -> Result<(String, String)> {
    let ca_key = KeyPair::from_pem(ca_key_pem).map_err(tls_err)?;
    let issuer = Issuer::new(ca_params(), ca_key);
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "decloud-operator");
    params.subject_alt_names = sans
        .iter()
        .map(|s| match s.parse::<IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => s.clone().try_into().map(SanType::DnsName).map_err(tls_err),
        })
        .collect::<Result<_>>()?;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate().map_err(tls_err)?;
    let cert = params.signed_by(&key, &issuer).map_err(tls_err)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn field(secret: &Secret, key: &str) -> Option<String> {
    let data = secret.data.as_ref()?.get(key)?;
    String::from_utf8(data.0.clone()).ok()
}

fn secret_sans(secret: &Secret) -> BTreeSet<String> {
    secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(SANS_ANNOTATION))
        .map(|s| {
            s.split(',')
                .filter(|x| !x.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn build_secret(
    namespace: &str,
    tls: &OperatorTls,
    ca_key: &str,
    sans: &BTreeSet<String>,
) -> Secret {
    let data = BTreeMap::from([
        (
            "ca.crt".to_string(),
            ByteString(tls.ca_pem.clone().into_bytes()),
        ),
        ("ca.key".to_string(), ByteString(ca_key.as_bytes().to_vec())),
        (
            "tls.crt".to_string(),
            ByteString(tls.cert_pem.clone().into_bytes()),
        ),
        (
            "tls.key".to_string(),
            ByteString(tls.key_pem.clone().into_bytes()),
        ),
    ]);
    Secret {
        metadata: ObjectMeta {
            name: Some(TLS_SECRET.into()),
            namespace: Some(namespace.into()),
            annotations: Some(BTreeMap::from([(
                SANS_ANNOTATION.to_string(),
                sans.iter().cloned().collect::<Vec<_>>().join(","),
            )])),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_string(),
                OPERATOR_FIELD_MANAGER.to_string(),
            )])),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Secret::default()
    }
}

/// Loads the operator's TLS material from [`TLS_SECRET`] in `namespace`, creating the CA and
/// serving certificate on first use and re-issuing the serving certificate (same CA) when it
/// does not cover `sans`. Safe to run from several processes at once (creates and replaces are
/// conditional; the loser re-reads).
pub(crate) async fn load_or_create(
    client: &kube::Client,
    namespace: &str,
    sans: &BTreeSet<String>,
) -> Result<OperatorTls> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let pp = PostParams {
        field_manager: Some(OPERATOR_FIELD_MANAGER.into()),
        ..PostParams::default()
    };
    for _ in 0..5 {
        match api.get_opt(TLS_SECRET).await? {
            None => {
                let (ca_pem, ca_key) = new_ca()?;
                let (cert_pem, key_pem) = issue_serving_cert(&ca_key, sans)?;
                let tls = OperatorTls {
                    ca_pem,
                    cert_pem,
                    key_pem,
                };
                match api
                    .create(&pp, &build_secret(namespace, &tls, &ca_key, sans))
                    .await
                {
                    Ok(_) => {
                        tracing::info!(secret = %format!("{namespace}/{TLS_SECRET}"), "created the operator's CA and serving certificate");
                        return Ok(tls);
                    }
                    Err(kube::Error::Api(e)) if e.code == 409 => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            Some(secret) => {
                let (Some(ca_pem), Some(ca_key), Some(cert_pem), Some(key_pem)) = (
                    field(&secret, "ca.crt"),
                    field(&secret, "ca.key"),
                    field(&secret, "tls.crt"),
                    field(&secret, "tls.key"),
                ) else {
                    return Err(Error::Tls(format!(
                        "Secret {namespace}/{TLS_SECRET} lacks ca.crt, ca.key, tls.crt or \
                         tls.key; delete it to have a new CA made (every edge must then join \
                         again)"
                    )));
                };
                let have = secret_sans(&secret);
                if sans.is_subset(&have) {
                    return Ok(OperatorTls {
                        ca_pem,
                        cert_pem,
                        key_pem,
                    });
                }
                let all: BTreeSet<String> = have.union(sans).cloned().collect();
                let (cert_pem, key_pem) = issue_serving_cert(&ca_key, &all)?;
                let tls = OperatorTls {
                    ca_pem,
                    cert_pem,
                    key_pem,
                };
                let mut new = build_secret(namespace, &tls, &ca_key, &all);
                new.metadata.resource_version = secret.metadata.resource_version.clone();
                match api.replace(TLS_SECRET, &pp, &new).await {
                    Ok(_) => {
                        tracing::info!(sans = ?all, "re-issued the serving certificate (same CA)");
                        return Ok(tls);
                    }
                    Err(kube::Error::Api(e)) if e.code == 409 => continue,
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Err(Error::Tls(format!(
        "Secret {namespace}/{TLS_SECRET} kept changing under us; retry"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serving_cert_chains_to_the_ca_and_the_hash_is_stable() {
        let (ca_pem, ca_key) = new_ca().unwrap();
        let sans = BTreeSet::from(["localhost".to_string(), "127.0.0.1".to_string()]);
        let (cert_pem, key_pem) = issue_serving_cert(&ca_key, &sans).unwrap();
        assert!(cert_pem.contains("BEGIN CERTIFICATE") && key_pem.contains("PRIVATE KEY"));
        let h = ca_hash(&ca_pem).unwrap();
        assert!(h.starts_with("sha256:") && h.len() == 7 + 64, "{h}");
        assert_eq!(h, ca_hash(&format!("{ca_pem}{cert_pem}")).unwrap());
        assert!(ca_hash("not pem").is_err());
    }
}
