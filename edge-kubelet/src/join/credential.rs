//! The credential an edge proves itself with, and the operator CA it trusts, stored in the
//! state directory readable by this user only (mode 0600).

use std::io::Write;
use std::path::{Path, PathBuf};

use tonic::metadata::{Ascii, MetadataValue};

use decloud_proto as pb;

use crate::error::{Error, Result};

/// File in the state directory holding the credential.
pub const CREDENTIAL_FILE: &str = "credential";
/// File in the state directory holding the operator's CA (PEM).
pub(crate) const CA_FILE: &str = "ca.crt";
/// File in the state directory holding the credential asked for by a join not yet answered.
pub(crate) const PENDING_CREDENTIAL_FILE: &str = "credential.pending";

/// The credential this edge asks for when joining as `provider`: the one a previous,
/// unanswered attempt asked for (so a retry is recognised), else a new random one, stored
/// (0600) before it is ever sent.
pub(crate) fn pending_credential(dir: &Path, provider: &str) -> Result<String> {
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
pub(crate) struct EdgeCredential {
    /// Bearer credential (`<provider>.<secret>`).
    pub(crate) credential: String,
    /// The operator's CA (PEM); None only for a plaintext (`http://`) operator.
    pub(crate) ca_pem: Option<String>,
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
    pub(crate) fn bearer(&self) -> Result<MetadataValue<Ascii>> {
        format!("Bearer {}", self.credential)
            .parse()
            .map_err(|_| Error::InvalidInput("the stored credential is not ASCII".into()))
    }

    /// Adds the credential to `request`'s metadata.
    pub(crate) fn authorize<T>(&self, mut request: tonic::Request<T>) -> Result<tonic::Request<T>> {
        request
            .metadata_mut()
            .insert(pb::CREDENTIAL_METADATA, self.bearer()?);
        Ok(request)
    }

    /// Reads the credential stored in `dir`, if the edge has joined.
    pub(crate) fn load(dir: &Path) -> Result<Option<Self>> {
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
    pub(crate) fn store(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| file_error(dir, e))?;
        if let Some(ca) = &self.ca_pem {
            write_private(&dir.join(CA_FILE), ca.as_bytes())?;
        }
        write_private(&dir.join(CREDENTIAL_FILE), self.credential.as_bytes())
    }
}

pub(super) fn file_error(path: &Path, e: impl std::fmt::Display) -> Error {
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
