//! The committed CRD YAML (in `crds/` and the chart) must be what the Rust types generate.

#[test]
fn committed_crd_yaml_matches_the_rust_types() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let want = decloud_crds::crds_yaml().expect("CRDs serialize");
    for rel in ["crds/decloud.yaml", "charts/decloud/crds/decloud.yaml"] {
        let got = std::fs::read_to_string(root.join(rel)).unwrap_or_default();
        assert!(
            got == want,
            "{rel} has drifted from the Rust types: run `cargo run -p decloud-crds --bin crdgen`"
        );
    }
}
