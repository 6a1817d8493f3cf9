//! `Register`: the one call that turns a join token into this provider's credential. The
//! credential asked for is stored before it is sent, so a retried join whose answer was lost
//! asks for the same one and is recognised.

use std::collections::HashMap;
use std::path::Path;

use decloud_proto as pb;
use pb::CaPin;

use super::credential::{EdgeCredential, PENDING_CREDENTIAL_FILE, pending_credential};
use super::dial::{connect, endpoint};
use super::pinned_ca::fetch_pinned_ca;
use crate::error::{Error, Result};

/// Joins the cluster at `operator` once: checks the operator's CA against `ca_hash`, calls
/// `Register` with `token`, and stores the credential and CA in `state_dir`.
pub(crate) async fn join(
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
        let pin = CaPin::parse(pin).map_err(|e| Error::InvalidInput(format!("--ca-hash {e}")))?;
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

/// The labels of a Register request, from `--label` pairs.
pub(crate) fn register_request(
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
