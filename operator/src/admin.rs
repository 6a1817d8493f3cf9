//! The administrator's subcommands: join tokens and provider revocation.

use std::collections::BTreeSet;
use std::net::IpAddr;

use decloud_crds::Provider;
use decloud_crds::contracts::{CREDENTIAL_ANNOTATION, OPERATOR_FIELD_MANAGER, REVOKED_ANNOTATION};
use kube::api::{Api, Patch, PatchParams};

use crate::cli::TokenCommand;
use crate::edge::auth;
use crate::time::rfc3339;
use crate::{Error, Result, tls};

/// The cluster client (kubeconfig from KUBECONFIG, ~/.kube/config or in-cluster).
pub(crate) async fn kube_client() -> Result<kube::Client> {
    kube::Client::try_default().await.map_err(|e| {
        Error::Config(format!(
            "loading the Kubernetes configuration (KUBECONFIG, ~/.kube/config or in-cluster): {e}"
        ))
    })
}

pub(crate) fn default_sans(node_address: IpAddr, extra: &[String]) -> BTreeSet<String> {
    [
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        node_address.to_string(),
    ]
    .into_iter()
    .chain(extra.iter().cloned())
    .collect()
}

/// `decloud-operator token …`.
pub(crate) async fn token(cmd: TokenCommand) -> Result<()> {
    let client = kube_client().await?;
    match cmd {
        TokenCommand::Create {
            ttl,
            namespace,
            operator_url,
        } => {
            // The CA is made here if the operator has not run yet; it keeps it.
            let tls = tls::load_or_create(
                &client,
                &namespace,
                &default_sans(IpAddr::from([127, 0, 0, 1]), &[]),
            )
            .await?;
            let ca_hash = tls.ca_hash()?;
            let expires = jiff::Timestamp::now()
                .checked_add(
                    jiff::SignedDuration::try_from(ttl).unwrap_or(jiff::SignedDuration::MAX),
                )
                .map_err(|_| Error::Config("--ttl is too long".into()))?;
            let token = auth::create_token(&client, &namespace, expires).await?;
            println!("Join token: {token}");
            println!("Expires:    {}", rfc3339(expires));
            println!("CA hash:    {ca_hash}");
            let join = format!(
                "--operator {operator_url} --token {token} --ca-hash {ca_hash} --name <machine-name>"
            );
            println!(
                "Install and join a provider machine (as root; installs Docker from the \
                 distribution's packages when it is missing, then a systemd unit):"
            );
            println!("  curl -fsSLk {operator_url}/install.sh | sh -s -- {join}");
            println!(
                "(-k: the machine does not trust the operator's CA yet; the script checks the CA \
                 against the CA hash before it downloads anything. To check the script itself \
                 first:)"
            );
            println!(
                "  curl -fsSLko decloud-install.sh {operator_url}/install.sh && echo \"{}  decloud-install.sh\" | sha256sum -c - && sh decloud-install.sh {join}",
                crate::install::script_sha256()
            );
            println!("With edge-kubelet already on the machine (Docker installed):");
            println!("  edge-kubelet join {join}");
            println!("then keep it running with:");
            println!("  edge-kubelet run --operator {operator_url} --name <machine-name>");
        }
        TokenCommand::List { namespace } => {
            let now = jiff::Timestamp::now();
            println!("{:<24} {:<34} {:<22} STATE", "ID", "SECRET", "EXPIRES");
            for t in auth::list_tokens(&client, &namespace).await? {
                let expires = t.expires.map(rfc3339).unwrap_or_else(|| "never".into());
                let state = if t.expired(now) { "expired" } else { "valid" };
                println!("{:<24} {:<34} {:<22} {state}", t.id, t.secret, expires);
            }
        }
        TokenCommand::Revoke { id, namespace } => {
            if !auth::revoke_token(&client, &namespace, &id).await? {
                return Err(Error::Config(format!(
                    "no join token {id:?} in namespace {namespace}"
                )));
            }
            println!("join token {id} revoked");
        }
    }
    Ok(())
}

/// `decloud-operator provider revoke NAME`.
pub(crate) async fn revoke_provider(name: &str) -> Result<()> {
    let client = kube_client().await?;
    let api: Api<Provider> = Api::all(client);
    let now = rfc3339(jiff::Timestamp::now());
    let patch = serde_json::json!({"metadata": {"annotations": {
        REVOKED_ANNOTATION: now,
        CREDENTIAL_ANNOTATION: null,
    }}});
    let pp = PatchParams {
        field_manager: Some(OPERATOR_FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    api.patch(name, &pp, &Patch::Merge(&patch)).await?;
    println!(
        "provider {name} revoked: its credential no longer works and its session is closed; \
         `kubectl delete provider {name}` removes it (and lets a machine join under the name again)"
    );
    Ok(())
}
