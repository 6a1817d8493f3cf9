//! Which images a provider lets run on its machine (`--allowed-images`).
//!
//! A pattern is a glob where `*` matches any run of characters (`/` included), or a prefix when
//! it ends in `/` or `:` (`ghcr.io/acme/` admits everything under it). Images are matched both
//! as written and in Docker's normalised form (`busybox` is `docker.io/library/busybox:latest`),
//! so `docker.io/library/*` admits `busybox`. No pattern: every image is allowed.

use crate::{Error, Result};

/// The waiting reason of a container whose image the provider refuses.
pub const IMAGE_NOT_ALLOWED: &str = "ImageNotAllowed";

/// The provider's image allow-list.
#[derive(Clone, Debug, Default)]
pub struct ImagePolicy {
    patterns: Vec<String>,
}

impl ImagePolicy {
    /// A policy admitting images matching any of `patterns` (all images if empty).
    pub fn new(patterns: impl IntoIterator<Item = String>) -> Self {
        Self {
            patterns: patterns
                .into_iter()
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect(),
        }
    }

    /// Whether `image` may run here.
    pub fn allows(&self, image: &str) -> bool {
        if self.patterns.is_empty() {
            return true;
        }
        let normal = normalise(image);
        self.patterns
            .iter()
            .any(|p| matches(p, image) || matches(p, &normal))
    }

    /// `Ok` if `image` may run, else an [`Error::ImagePull`] with reason [`IMAGE_NOT_ALLOWED`].
    pub fn check(&self, image: &str) -> Result<()> {
        if self.allows(image) {
            return Ok(());
        }
        Err(Error::ImagePull {
            reason: IMAGE_NOT_ALLOWED,
            message: format!(
                "image {image:?} is not allowed by this provider (--allowed-images {})",
                self.patterns.join(",")
            ),
        })
    }
}

/// Docker's full reference: registry, repository and tag (or digest).
pub fn normalise(image: &str) -> String {
    let (name, suffix) = match image.rsplit_once('@') {
        Some((n, digest)) => (n.to_string(), format!("@{digest}")),
        None => match image.rsplit_once(':') {
            Some((n, tag)) if !tag.contains('/') => (n.to_string(), format!(":{tag}")),
            _ => (image.to_string(), ":latest".to_string()),
        },
    };
    let first = name.split('/').next().unwrap_or_default();
    let has_registry =
        name.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let full = if has_registry {
        name
    } else if name.contains('/') {
        format!("docker.io/{name}")
    } else {
        format!("docker.io/library/{name}")
    };
    format!("{full}{suffix}")
}

fn matches(pattern: &str, image: &str) -> bool {
    if !pattern.contains('*') && (pattern.ends_with('/') || pattern.ends_with(':')) {
        return image.starts_with(pattern);
    }
    glob(pattern.as_bytes(), image.as_bytes())
}

/// `*`-only glob, iterative (no exponential back-tracking on hostile patterns).
fn glob(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if pi < p.len() && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_like_docker() {
        for (image, full) in [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("acme/web:2", "docker.io/acme/web:2"),
            ("ghcr.io/acme/web", "ghcr.io/acme/web:latest"),
            ("localhost:5000/x:1", "localhost:5000/x:1"),
            ("x@sha256:ab", "docker.io/library/x@sha256:ab"),
        ] {
            assert_eq!(normalise(image), full, "{image}");
        }
    }

    #[test]
    fn table() {
        let policy = ImagePolicy::new(
            [
                "docker.io/library/*",
                "ghcr.io/acme/",
                "decloud-test/busybox:1",
            ]
            .map(String::from),
        );
        for (image, ok) in [
            ("busybox", true),
            ("docker.io/library/nginx:1", true),
            ("ghcr.io/acme/web:3", true),
            ("ghcr.io/acmeevil/web", false),
            ("decloud-test/busybox:1", true),
            ("decloud-test/busybox:2", false),
            ("evil.example/miner", false),
            ("acme/web", false),
        ] {
            assert_eq!(policy.allows(image), ok, "{image}");
        }
        assert!(ImagePolicy::default().allows("anything"));
        let err = policy.check("evil.example/miner").unwrap_err();
        assert!(matches!(
            err,
            Error::ImagePull {
                reason: IMAGE_NOT_ALLOWED,
                ..
            }
        ));
    }

    #[test]
    fn glob_is_linear_on_hostile_input() {
        let p = "*a*a*a*a*a*a*a*a*a*b";
        let s = "a".repeat(5000);
        assert!(!glob(p.as_bytes(), s.as_bytes()));
        assert!(glob(b"a*c", b"abbbc") && !glob(b"a*c", b"abbb") && glob(b"*", b""));
    }
}
