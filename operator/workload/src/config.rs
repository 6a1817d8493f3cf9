//! Settings of the Workload controller.

/// Settings of the Workload controller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Domain under which Workloads without `expose.host` get `<name>.<namespace>.<base_domain>`.
    pub base_domain: String,
    /// How `status.url` is formed from the host; `{host}` is replaced by it.
    pub url_template: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            base_domain: "decloud.localhost".into(),
            url_template: "http://{host}".into(),
        }
    }
}

impl Config {
    /// The public URL of a Workload.
    pub fn url(&self, workload: &decloud_crds::Workload) -> String {
        let host = workload.public_host(&self.base_domain);
        self.url_template.replace("{host}", &host)
    }
}
