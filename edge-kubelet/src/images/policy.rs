//! Which images a provider lets run on its machine (`--allowed-images`).
//!
//! A pattern is a glob where `*` matches any run of characters (`/` included), or a prefix when
//! it ends in `/` or `:` (`ghcr.io/acme/` admits everything under it). Images are matched both
//! as written and in Docker's normalised form (`busybox` is `docker.io/library/busybox:latest`),
//! so `docker.io/library/*` admits `busybox`. No pattern: every image is allowed.

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use crate::error::{Error, Result};

/// The waiting reason of a container whose image the provider refuses.
pub(crate) const IMAGE_NOT_ALLOWED: &str = "ImageNotAllowed";

/// Most patterns one flag takes, and the longest pattern.
pub(crate) const MAX_PATTERNS: usize = 64;
const MAX_PATTERN_LEN: usize = 255;

/// Refuses more than [`MAX_PATTERNS`] patterns for `flag`, or one longer than 255 bytes.
pub(crate) fn check_patterns(flag: &str, patterns: &[String]) -> Result<()> {
    if patterns.len() > MAX_PATTERNS {
        return Err(Error::InvalidInput(format!(
            "{} {flag} patterns; at most {MAX_PATTERNS}",
            patterns.len()
        )));
    }
    if let Some(p) = patterns.iter().find(|p| p.len() > MAX_PATTERN_LEN) {
        return Err(Error::InvalidInput(format!(
            "{flag} {:.40}…: longer than {MAX_PATTERN_LEN} bytes",
            p
        )));
    }
    Ok(())
}

/// The provider's image allow-list.
#[derive(Clone, Debug, Default)]
pub struct ImagePolicy {
    patterns: Vec<String>,
    globs: GlobSet,
}

impl ImagePolicy {
    /// A policy admitting images matching any of `patterns` (all images if empty).
    pub fn new(patterns: impl IntoIterator<Item = String>) -> Self {
        let patterns: Vec<String> = patterns
            .into_iter()
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect();
        let mut set = GlobSetBuilder::new();
        for p in &patterns {
            match glob_of(p) {
                Ok(g) => {
                    set.add(g);
                }
                // Cannot happen with escaped input; a pattern that fails admits nothing.
                Err(e) => tracing::warn!(pattern = %p, error = %e, "ignoring image pattern"),
            }
        }
        let globs = set.build().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "image patterns unusable; admitting no image");
            GlobSet::empty()
        });
        Self { patterns, globs }
    }

    /// Whether `image` matches one of the patterns (false when there are none).
    pub(crate) fn matches(&self, image: &str) -> bool {
        !self.patterns.is_empty() && self.allows(image)
    }

    /// Whether `image` may run here.
    pub(crate) fn allows(&self, image: &str) -> bool {
        if self.patterns.is_empty() {
            return true;
        }
        self.globs.is_match(image) || self.globs.is_match(normalise(image))
    }

    /// `Ok` if `image` may run, else an [`Error::ImagePull`] with reason [`IMAGE_NOT_ALLOWED`].
    pub(crate) fn check(&self, image: &str) -> Result<()> {
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
pub(crate) fn normalise(image: &str) -> String {
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

/// The glob of one `--allowed-images` pattern: only `*` is special (and matches `/` too); a
/// pattern ending in `/` or `:` without `*` is a prefix.
fn glob_of(pattern: &str) -> std::result::Result<globset::Glob, globset::Error> {
    let mut glob = String::with_capacity(pattern.len() + 1);
    for (i, part) in pattern.split('*').enumerate() {
        // `**` is one `*` here, as in any other position.
        if i > 0 && !glob.ends_with('*') {
            glob.push('*');
        }
        glob.push_str(&globset::escape(part));
    }
    if !pattern.contains('*') && (pattern.ends_with('/') || pattern.ends_with(':')) {
        glob.push('*');
    }
    GlobBuilder::new(&glob)
        .literal_separator(false)
        .backslash_escape(false)
        .build()
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
    fn pattern_lists_are_bounded() {
        let ok = vec!["decloud-test/*".to_string(); MAX_PATTERNS];
        assert!(check_patterns("--lend-local-image", &ok).is_ok());
        let many = vec!["x".to_string(); MAX_PATTERNS + 1];
        assert!(check_patterns("--lend-local-image", &many).is_err());
        let long = vec!["x".repeat(MAX_PATTERN_LEN + 1)];
        let e = check_patterns("--lend-local-image", &long).unwrap_err();
        assert!(e.to_string().contains("longer than"), "{e}");
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

    fn glob(pattern: &[u8], s: &[u8]) -> bool {
        let pattern = std::str::from_utf8(pattern).unwrap();
        glob_of(pattern)
            .unwrap()
            .compile_matcher()
            .is_match(std::str::from_utf8(s).unwrap())
    }

    #[test]
    fn glob_is_linear_on_hostile_input() {
        let p = "*a*a*a*a*a*a*a*a*a*b";
        let s = "a".repeat(5000);
        assert!(!glob(p.as_bytes(), s.as_bytes()));
        assert!(glob(b"a*c", b"abbbc") && !glob(b"a*c", b"abbb") && glob(b"*", b""));
    }

    #[test]
    fn only_the_star_is_special_and_it_crosses_slashes() {
        assert!(glob(b"ghcr.io/*", b"ghcr.io/acme/web:1"));
        assert!(glob(b"a**b", b"a/x/b"));
        assert!(glob(b"a[b]", b"a[b]") && !glob(b"a[b]", b"ab"));
        assert!(glob(b"a?", b"a?") && !glob(b"a?", b"ab"));
        assert!(glob(b"a{b,c}", b"a{b,c}") && !glob(b"a{b,c}", b"ab"));
        assert!(glob(br"a\*", br"a\xyz"));
    }
}
