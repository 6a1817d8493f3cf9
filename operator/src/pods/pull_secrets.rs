//! `imagePullSecrets`: the credentials for an image's registry, taken from the
//! `kubernetes.io/dockerconfigjson` (or legacy `kubernetes.io/dockercfg`) Secrets a pod names,
//! matched as kubelet's credential keyring does: the entry's host (with `*` matching one DNS
//! label), its port (equal, or both absent) and its path (a prefix of the image's repository).

use std::collections::BTreeMap;

use base64::Engine as _;
use decloud_proto as pb;
use serde::Deserialize;

/// Docker Hub's registry host, as images without a host name are pulled from.
const DOCKER_HUB: &str = "docker.io";

/// Longest `.dockerconfigjson` parsed (a Secret holds at most 1 MiB anyway).
const MAX_CONFIG_BYTES: usize = 256 * 1024;

/// Most registry entries one Secret may hold that are looked at.
const MAX_ENTRIES: usize = 256;

#[derive(Deserialize)]
struct DockerConfigJson {
    #[serde(default)]
    auths: BTreeMap<String, Entry>,
}

#[derive(Deserialize, Default)]
struct Entry {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    auth: String,
}

/// The registry host (with port, if any) and the repository path of `image`.
pub(crate) fn image_registry(image: &str) -> (String, String) {
    let name = image.split('@').next().unwrap_or(image);
    let (first, rest) = match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first.to_string(), rest.to_string())
        }
        _ => (DOCKER_HUB.to_string(), name.to_string()),
    };
    // The tag goes; a port stays in the host.
    let path = match rest.rsplit_once(':') {
        Some((p, tag)) if !tag.contains('/') => p.to_string(),
        _ => rest,
    };
    (first.to_ascii_lowercase(), path)
}

/// `key` of a config entry (`https://host:port/path`, `host`, `*.host`) as (host, port, path).
fn parse_key(key: &str) -> (String, Option<String>, String) {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let (hostport, path) = key.split_once('/').unwrap_or((key, ""));
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => (h, Some(p.to_string())),
        _ => (hostport, None),
    };
    let mut host = host.to_ascii_lowercase();
    // Docker Hub's historic names.
    if host == "index.docker.io" || host == "registry-1.docker.io" {
        host = DOCKER_HUB.into();
    }
    let path = path.trim_end_matches('/');
    // `https://index.docker.io/v1/`: the API version is no repository path.
    let path = if path == "v1" || path == "v2" {
        ""
    } else {
        path
    };
    (host, port, path.to_string())
}

fn host_matches(pattern: &str, host: &str) -> bool {
    let (p, h): (Vec<&str>, Vec<&str>) = (pattern.split('.').collect(), host.split('.').collect());
    p.len() == h.len() && p.iter().zip(&h).all(|(p, h)| *p == "*" || p == h)
}

/// Whether config entry `key` applies to `image`.
pub(crate) fn key_matches(key: &str, image: &str) -> bool {
    let (image_hostport, image_path) = image_registry(image);
    let (image_host, image_port) = match image_hostport.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), Some(p.to_string())),
        None => (image_hostport, None),
    };
    let (host, port, path) = parse_key(key);
    host_matches(&host, &image_host)
        && port == image_port
        && (path.is_empty() || image_path == path || image_path.starts_with(&format!("{path}/")))
}

/// The entries of one pull Secret's data: (key, username, password).
fn entries(data: &BTreeMap<String, Vec<u8>>) -> Vec<(String, String, String)> {
    let parsed: BTreeMap<String, Entry> = if let Some(json) = data.get(".dockerconfigjson") {
        if json.len() > MAX_CONFIG_BYTES {
            return Vec::new();
        }
        match serde_json::from_slice::<DockerConfigJson>(json) {
            Ok(c) => c.auths,
            Err(_) => return Vec::new(),
        }
    } else if let Some(json) = data.get(".dockercfg") {
        if json.len() > MAX_CONFIG_BYTES {
            return Vec::new();
        }
        serde_json::from_slice(json).unwrap_or_default()
    } else {
        return Vec::new();
    };
    parsed
        .into_iter()
        .take(MAX_ENTRIES)
        .filter_map(|(key, e)| {
            if !e.username.is_empty() || !e.password.is_empty() {
                return Some((key, e.username, e.password));
            }
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(e.auth.trim())
                .ok()?;
            let text = String::from_utf8(decoded).ok()?;
            let (user, pass) = text.split_once(':')?;
            Some((key, user.to_string(), pass.to_string()))
        })
        .collect()
}

/// The credential for `image` from the pull Secrets' data, in the pod's order (kubelet tries
/// them in turn; the first match is what a single pull can carry). The most specific key (the
/// longest path) of one Secret wins within it.
pub(crate) fn credential_for(
    image: &str,
    secrets: &[std::sync::Arc<BTreeMap<String, Vec<u8>>>],
) -> Option<pb::RegistryAuth> {
    for data in secrets {
        let mut matching: Vec<(String, String, String)> = entries(data)
            .into_iter()
            .filter(|(key, _, _)| key_matches(key, image))
            .collect();
        matching.sort_by_key(|(key, _, _)| std::cmp::Reverse(parse_key(key).2.len()));
        if let Some((key, username, password)) = matching.into_iter().next() {
            let (host, port, _) = parse_key(&key);
            let server = match port {
                Some(p) => format!("{host}:{p}"),
                None => host,
            };
            return Some(pb::RegistryAuth {
                server,
                username,
                password,
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn secret(json: &str) -> Arc<BTreeMap<String, Vec<u8>>> {
        Arc::new(BTreeMap::from([(
            ".dockerconfigjson".to_string(),
            json.as_bytes().to_vec(),
        )]))
    }

    #[test]
    fn registries_of_images() {
        for (image, host, path) in [
            ("busybox", "docker.io", "busybox"),
            ("busybox:1", "docker.io", "busybox"),
            ("library/busybox:1", "docker.io", "library/busybox"),
            ("localhost:5000/app:2", "localhost:5000", "app"),
            (
                "registry.example.org/team/app@sha256:ab",
                "registry.example.org",
                "team/app",
            ),
            (
                "Registry.Example.org:443/a/b:c",
                "registry.example.org:443",
                "a/b",
            ),
        ] {
            assert_eq!(image_registry(image), (host.into(), path.into()), "{image}");
        }
    }

    #[test]
    fn keys_match_as_kubelet_keyring() {
        let cases = [
            ("localhost:5000", "localhost:5000/app:1", true),
            ("localhost:5000", "localhost:5001/app:1", false),
            ("localhost", "localhost:5000/app:1", false),
            ("http://localhost:5000/v2/", "localhost:5000/app:1", true),
            ("https://index.docker.io/v1/", "busybox:1", true),
            ("docker.io", "library/busybox", true),
            ("*.example.org", "registry.example.org/a:1", true),
            ("*.example.org", "example.org/a:1", false),
            ("*.example.org", "a.b.example.org/a:1", false),
            (
                "registry.example.org/team",
                "registry.example.org/team/app:1",
                true,
            ),
            (
                "registry.example.org/team",
                "registry.example.org/teamx/app:1",
                false,
            ),
            (
                "registry.example.org/team",
                "registry.example.org/other/app:1",
                false,
            ),
            ("other.org", "registry.example.org/a:1", false),
        ];
        for (key, image, want) in cases {
            assert_eq!(key_matches(key, image), want, "{key} vs {image}");
        }
    }

    #[test]
    fn credentials_from_auth_or_fields_first_matching_secret_wins() {
        // "auth" is base64 of user:pass (a password may hold ':').
        let a = secret(r#"{"auths":{"localhost:5000":{"auth":"YWxpY2U6cGE6c3M="}}}"#);
        let b = secret(
            r#"{"auths":{"localhost:5000":{"username":"bob","password":"pw"},"localhost:5000/team":{"username":"team","password":"t"}}}"#,
        );
        let got = credential_for("localhost:5000/app:1", &[a.clone(), b.clone()]).unwrap();
        assert_eq!(
            (
                got.server.as_str(),
                got.username.as_str(),
                got.password.as_str()
            ),
            ("localhost:5000", "alice", "pa:ss")
        );
        let got = credential_for("localhost:5000/team/app:1", std::slice::from_ref(&b)).unwrap();
        assert_eq!(got.username, "team");
        assert!(credential_for("elsewhere.org/app:1", &[a, b]).is_none());
        // Garbage is no credential, never an error.
        for bad in [
            "not json",
            r#"{"auths":{"localhost:5000":{"auth":"!!"}}}"#,
            r#"{"auths":{"localhost:5000":{"auth":"bm9jb2xvbg=="}}}"#,
        ] {
            assert!(
                credential_for("localhost:5000/app", &[secret(bad)]).is_none(),
                "{bad}"
            );
        }
        // Legacy .dockercfg: entries at the top level.
        let legacy = Arc::new(BTreeMap::from([(
            ".dockercfg".to_string(),
            br#"{"localhost:5000":{"username":"old","password":"p"}}"#.to_vec(),
        )]));
        assert_eq!(
            credential_for("localhost:5000/x", &[legacy])
                .unwrap()
                .username,
            "old"
        );
    }
}
