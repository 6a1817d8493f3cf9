//! A hand-written edge for the security suites: the operator's CA, a TLS channel that trusts
//! only it, and `Register` with a join token, speaking the real protocol over real sockets.

use anyhow::Context as _;
use decloud_proto as pb;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use pb::edge_client::EdgeClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::OPERATOR_NAMESPACE;
use crate::cluster::OperatorProcess;

/// The operator's CA from its Secret (what a joined edge keeps in its state directory).
pub async fn operator_ca(client: &Client) -> anyhow::Result<String> {
    let secret = Api::<Secret>::namespaced(client.clone(), OPERATOR_NAMESPACE)
        .get("decloud-operator-tls")
        .await?;
    let ca = secret
        .data
        .and_then(|d| d.get("ca.crt").cloned())
        .context("no ca.crt")?;
    Ok(String::from_utf8(ca.0)?)
}

/// A TLS channel to `op`'s edge endpoint trusting only `ca_pem`.
pub async fn channel(op: &OperatorProcess, ca_pem: &str) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(op.edge_url())?
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)))?
        .connect()
        .await?)
}

/// `Register` with `token` as provider `name`: the credential, or the operator's refusal.
pub async fn register(ch: &Channel, token: &str, name: &str) -> Result<String, tonic::Status> {
    let resp = EdgeClient::new(ch.clone())
        .register(pb::RegisterRequest {
            join_token: token.into(),
            provider_name: name.into(),
            ..Default::default()
        })
        .await?;
    Ok(resp.into_inner().credential)
}
