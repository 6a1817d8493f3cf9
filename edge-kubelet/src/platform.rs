//! What this machine is, reported in `Hello.platform` the way kubelet reports `NodeSystemInfo`:
//! the virtual Node's `nodeInfo` and its `kubernetes.io/os` / `kubernetes.io/arch` labels come
//! from here, so an arm64 machine is not offered amd64 images.

use decloud_proto as pb;

/// This machine's platform; `container_runtime_version` is the runtime's own
/// (`docker://24.0.7`, see [`crate::runtime::ContainerRuntime::version`]).
pub(crate) fn detect(container_runtime_version: String) -> pb::Platform {
    pb::Platform {
        os: go_os(std::env::consts::OS).to_string(),
        architecture: go_arch(std::env::consts::ARCH).to_string(),
        kernel_version: sysinfo::System::kernel_version().unwrap_or_default(),
        os_image: os_image(),
        container_runtime_version,
    }
}

/// Rust's `std::env::consts::ARCH` in Kubernetes' (GOARCH) naming.
fn go_arch(rust_arch: &str) -> &str {
    match rust_arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
}

/// Rust's `std::env::consts::OS` in Kubernetes' (GOOS) naming.
fn go_os(rust_os: &str) -> &str {
    match rust_os {
        "macos" => "darwin",
        other => other,
    }
}

/// `PRETTY_NAME` from `/etc/os-release` (e.g. `Debian GNU/Linux 12 (bookworm)`), else what
/// the system says of itself.
fn os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|text| pretty_name(&text))
        .or_else(sysinfo::System::long_os_version)
        .unwrap_or_default()
}

fn pretty_name(os_release: &str) -> Option<String> {
    let value = os_release
        .lines()
        .find_map(|l| l.trim().strip_prefix("PRETTY_NAME="))?;
    let value = value.trim();
    let unquoted = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
        .unwrap_or(value);
    Some(unquoted.to_string()).filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn architectures_use_kubernetes_names() {
        for (rust, kube) in [
            ("x86_64", "amd64"),
            ("aarch64", "arm64"),
            ("arm", "arm"),
            ("x86", "386"),
            ("powerpc64", "ppc64le"),
            ("s390x", "s390x"),
            ("riscv64", "riscv64"),
        ] {
            assert_eq!(go_arch(rust), kube, "{rust}");
        }
        assert_eq!(go_os("linux"), "linux");
        assert_eq!(go_os("macos"), "darwin");
        assert_eq!(go_os("windows"), "windows");
        let here = detect("simulated://0".into());
        assert!(!here.architecture.is_empty() && here.architecture != "x86_64");
        assert_eq!(here.container_runtime_version, "simulated://0");
    }

    #[test]
    fn os_image_is_the_pretty_name() {
        let debian = "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\n";
        assert_eq!(
            pretty_name(debian).as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(pretty_name("PRETTY_NAME=Alpine").as_deref(), Some("Alpine"));
        assert_eq!(pretty_name("ID=x\n"), None);
        assert_eq!(pretty_name("PRETTY_NAME=\"\""), None);
    }
}
