//! Settings of the Workload controller.

use decloud_crds::{
    Workload,
    tcp_ports::{PortClaim, assign_ports, key_of, wants_port},
};

/// Settings of the Workload controller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Domain under which Workloads without `expose.host` get `<name>.<namespace>.<base_domain>`.
    pub base_domain: String,
    /// How `status.url` is formed from the host; `{host}` is replaced by it.
    pub url_template: String,
    /// Raw TCP exposure; `None`: off (TCP Workloads are refused with `TcpDisabled`).
    pub tcp: Option<TcpConfig>,
}

/// How TCP Workloads get gateway ports (the gateway applies the same settings).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpConfig {
    /// The gateway's TCP ports.
    pub range: decloud_crds::tcp_ports::TcpPortRange,
    /// Ports one namespace may hold.
    pub per_namespace: usize,
    /// The host clients reach the ports on (`status.url` is `tcp://<host>:<port>`).
    pub host: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            base_domain: "decloud.localhost".into(),
            url_template: "http://{host}".into(),
            tcp: None,
        }
    }
}

impl Config {
    /// The gateway port claim of `workload` among `workloads` (`None` unless it is exposed
    /// over TCP).
    pub fn tcp_claim<'a>(
        &self,
        workload: &Workload,
        workloads: impl IntoIterator<Item = &'a Workload>,
    ) -> Option<PortClaim> {
        if !wants_port(workload) {
            return None;
        }
        let (range, cap) = self
            .tcp
            .as_ref()
            .map_or((None, 0), |t| (Some(t.range), t.per_namespace));
        assign_ports(workloads, range, cap).remove(&key_of(workload))
    }

    /// `tcp://<host>:<port>`.
    pub fn tcp_url(&self, port: u16) -> String {
        let host = self.tcp.as_ref().map_or("", |t| t.host.as_str());
        format!("tcp://{host}:{port}")
    }

    /// The public URL of a Workload.
    pub fn url(&self, workload: &Workload) -> String {
        let host = workload.public_host(&self.base_domain);
        self.url_template.replace("{host}", &host)
    }
}
