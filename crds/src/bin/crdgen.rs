//! Writes the DeCloud CRD YAML to `crds/decloud.yaml` and `charts/decloud/crds/decloud.yaml`.
//!
//! Usage: `cargo run -p decloud-crds --bin crdgen [-- --check]`. With `--check` nothing is
//! written; it exits 1 if either file differs from what the Rust types generate.

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let check = std::env::args().any(|a| a == "--check");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let yaml = decloud_crds::crds_yaml()?;
    let mut drift = false;
    for rel in ["crds/decloud.yaml", "charts/decloud/crds/decloud.yaml"] {
        let path = root.join(rel);
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        if current == yaml {
            continue;
        }
        if check {
            eprintln!("crdgen: {rel} is out of date; run `cargo run -p decloud-crds --bin crdgen`");
            drift = true;
        } else {
            std::fs::create_dir_all(path.parent().expect("file has a parent"))?;
            std::fs::write(&path, &yaml)?;
            eprintln!("crdgen: wrote {rel}");
        }
    }
    if drift {
        std::process::exit(1);
    }
    Ok(())
}
