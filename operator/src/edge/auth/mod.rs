//! Who is calling: the authentication seam of every edge RPC, join tokens, per-provider
//! credentials and the throttle on refused attempts.

mod authenticator;
mod credentials;
mod throttle;
mod tokens;

#[cfg(test)]
pub(crate) use authenticator::TrustingAuthenticator;
pub(crate) use authenticator::{EdgeAuthenticator, Lookup};
pub(crate) use credentials::{
    CredentialAuthenticator, credential_hash, credential_provider, is_revoked, new_credential,
    same, sha256_hex,
};
pub(crate) use throttle::FailedAuthThrottle;
pub(crate) use tokens::{
    TokenCache, clean_expired_tokens, create_token, list_tokens, revoke_token,
};
