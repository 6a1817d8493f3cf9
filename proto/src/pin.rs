//! The operator CA pin: kubeadm-style `sha256:<hex of the CA certificate's DER>`, printed by
//! `decloud-operator token create` and checked by `edge-kubelet join` during the handshake.

use sha2::{Digest, Sha256};

/// A pin of the operator's CA certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaPin([u8; 32]);

/// A string that is not `sha256:<64 hex digits>`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} must be sha256:<64 hex digits>, as printed by `decloud-operator token create`")]
pub struct PinError(pub String);

impl CaPin {
    const PREFIX: &'static str = "sha256:";

    /// The pin of a certificate given as DER.
    pub fn of_der(der: &[u8]) -> Self {
        Self(Sha256::digest(der).into())
    }

    /// Parses `sha256:<64 hex>` (surrounding white space allowed).
    pub fn parse(s: &str) -> Result<Self, PinError> {
        let bad = || PinError(s.to_string());
        let hex = s.trim().strip_prefix(Self::PREFIX).ok_or_else(bad)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex, &mut out).map_err(|_| bad())?;
        Ok(Self(out))
    }

    /// The raw digest.
    pub fn digest(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Display for CaPin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", Self::PREFIX, hex::encode(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_round_trip_and_refuse_garbage() {
        let pin = CaPin::of_der(b"cert");
        let text = pin.to_string();
        assert!(
            text.starts_with("sha256:") && text.len() == 7 + 64,
            "{text}"
        );
        assert_eq!(CaPin::parse(&text).unwrap(), pin);
        assert_eq!(CaPin::parse(&format!(" {text}\n")).unwrap(), pin);
        let hex = "ab".repeat(32);
        for bad in [
            hex.clone(),
            "sha256:abc".into(),
            format!("sha1:{hex}"),
            format!("sha256:{hex}00"),
        ] {
            assert!(CaPin::parse(&bad).is_err(), "{bad}");
        }
    }
}
