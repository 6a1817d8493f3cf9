//! A bench cluster: the real control plane, one real operator (with the gateway when the
//! operator has it) and real edge-kubelets each on a Docker engine of its own.

use std::time::Duration;

use anyhow::Context as _;
use decloud_crds::contracts::{node_name, provider_of_node};
use decloud_crds::{Provider, ProviderPhase};
use kube::Api;

use crate::{
    TestEnv,
    cluster::{ContainerSweeper, EdgeProcess, OperatorProcess, busybox_image},
    eventually,
};

/// Control plane, operator and Docker edges of one scenario; torn down on drop.
pub struct BenchCluster {
    /// The edges (index = provider `bench-<run>-<i>`).
    pub edges: Vec<Option<EdgeProcess>>,
    /// Provider names, by index.
    pub names: Vec<String>,
    /// Removes the edges' containers on drop.
    pub sweeper: ContainerSweeper,
    /// The operator.
    pub operator: OperatorProcess,
    /// Port of the operator's public HTTP gateway.
    pub gateway_port: u16,
    /// Arguments the operator was started with (for restarts).
    pub operator_args: Vec<String>,
    /// The control plane (dropped last).
    pub env: TestEnv,
}

impl BenchCluster {
    /// Starts the control plane, the operator (`extra` arguments) and `edges` Docker edges,
    /// and waits until every provider is Ready.
    pub async fn start(tag: &str, edges: usize, extra: &[&str]) -> anyhow::Result<Self> {
        let env = TestEnv::start().await?;
        busybox_image()?;
        let operator_args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let operator = OperatorProcess::start(&env, extra).await?;
        let gateway_port = operator.gateway_port;
        let run = std::process::id();
        let names: Vec<String> = (0..edges).map(|i| format!("{tag}-{run}-{i}")).collect();
        let nodes: Vec<String> = names.iter().map(|n| node_name(n)).collect();
        let sweeper = ContainerSweeper::new(&env, &nodes);
        let mut procs = Vec::new();
        for n in &names {
            procs.push(Some(EdgeProcess::start(&env, &operator, n, &[])?));
        }
        let cluster = BenchCluster {
            edges: procs,
            names,
            sweeper,
            operator,
            gateway_port,
            operator_args,
            env,
        };
        for i in 0..edges {
            cluster
                .wait_provider_ready(i, Duration::from_secs(60))
                .await?;
        }
        Ok(cluster)
    }

    /// Waits until provider `i` is Ready.
    pub async fn wait_provider_ready(&self, i: usize, timeout: Duration) -> anyhow::Result<()> {
        let api = Api::<Provider>::all(self.env.client());
        let name = &self.names[i];
        eventually(timeout, || async {
            let p = api.get(name).await?;
            let phase = p.status.map(|s| s.phase);
            anyhow::ensure!(phase == Some(ProviderPhase::Ready), "{name}: {phase:?}");
            Ok(())
        })
        .await
        .with_context(|| format!("provider {name} not Ready"))
    }

    /// Index of the provider behind node `node`.
    pub fn index_of_node(&self, node: &str) -> Option<usize> {
        let name = provider_of_node(node)?;
        self.names.iter().position(|n| n == name)
    }

    /// SIGKILLs edge `i` (its containers keep running, as on a crashed machine).
    pub fn kill_edge(&mut self, i: usize) {
        if let Some(mut e) = self.edges[i].take() {
            e.child.kill();
        }
    }

    /// (Re)starts edge `i` with its state folder.
    pub fn start_edge(&mut self, i: usize) -> anyhow::Result<()> {
        self.edges[i] = Some(EdgeProcess::start(
            &self.env,
            &self.operator,
            &self.names[i],
            &[],
        )?);
        Ok(())
    }
}

impl Drop for BenchCluster {
    fn drop(&mut self) {
        for e in self.edges.iter_mut().flatten() {
            e.child.kill();
        }
        self.sweeper.sweep();
    }
}
