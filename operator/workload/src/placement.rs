//! Choosing providers for new replicas: a pure function over a snapshot of the providers.

pub(crate) use decloud_crds::contracts::{ARCH_LABEL, OS_LABEL};
use std::collections::BTreeMap;

use decloud_crds::{
    LabelSelector, Spread,
    pods::PodRequests,
    quantity::{format_bytes, format_millis},
};

/// Whether a label key is answered by a provider's platform rather than its labels.
pub(crate) fn is_platform_key(key: &str) -> bool {
    key == ARCH_LABEL || key == OS_LABEL
}

/// CPU, memory, pod count and persistent storage, as integers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Resources {
    /// Millicores.
    pub cpu_millis: i64,
    /// Bytes.
    pub memory_bytes: i64,
    /// Pods.
    pub pods: i64,
    /// Bytes of persistent volumes (`volumeClaimTemplates`) held on the provider.
    pub storage_bytes: i64,
}

impl Resources {
    /// What one pod with these CPU and memory requests takes.
    pub(crate) fn pod(cpu_millis: i64, memory_bytes: i64) -> Self {
        Self {
            cpu_millis,
            memory_bytes,
            pods: 1,
            storage_bytes: 0,
        }
    }

    /// Persistent volumes of `bytes`, and nothing else.
    pub(crate) fn storage(bytes: i64) -> Self {
        Self {
            storage_bytes: bytes,
            ..Self::default()
        }
    }

    /// Sum of two; saturates instead of wrapping.
    pub(crate) fn plus(self, other: Self) -> Self {
        Self {
            cpu_millis: self.cpu_millis.saturating_add(other.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_add(other.memory_bytes),
            pods: self.pods.saturating_add(other.pods),
            storage_bytes: self.storage_bytes.saturating_add(other.storage_bytes),
        }
    }

    /// Human-readable form for messages ("cpu 100m, memory 32Mi", then ", storage 1Gi" when
    /// there are persistent volumes).
    pub(crate) fn describe(self) -> String {
        let storage = if self.storage_bytes > 0 {
            format!(", storage {}", format_bytes(self.storage_bytes))
        } else {
            String::new()
        };
        format!(
            "cpu {}, memory {}{storage}",
            format_millis(self.cpu_millis),
            format_bytes(self.memory_bytes)
        )
    }
}

impl From<PodRequests> for Resources {
    /// One pod with these requests.
    fn from(r: PodRequests) -> Self {
        Self::pod(r.cpu_millis, r.memory_bytes)
    }
}

/// What a provider may hold; `None` for a dimension it does not report (unbounded).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Allocatable {
    /// Millicores.
    pub cpu_millis: Option<i64>,
    /// Bytes.
    pub memory_bytes: Option<i64>,
    /// Pods.
    pub pods: Option<i64>,
    /// Bytes of storage offered (`--storage`), which persistent volumes take.
    pub storage_bytes: Option<i64>,
}

impl Allocatable {
    /// Whether `used + extra` stays within every reported dimension (storage only when `extra`
    /// takes some: a provider over its offer still runs stateless replicas).
    pub(crate) fn fits(&self, used: Resources, extra: Resources) -> bool {
        let total = used.plus(extra);
        self.cpu_millis.is_none_or(|c| total.cpu_millis <= c)
            && self.memory_bytes.is_none_or(|m| total.memory_bytes <= m)
            && self.pods.is_none_or(|p| total.pods <= p)
            && (extra.storage_bytes == 0
                || self.storage_bytes.is_none_or(|b| total.storage_bytes <= b))
    }

    /// Average share of CPU and memory in use, in thousandths (lower is emptier); dimensions
    /// without a bound or with no capacity count as empty.
    fn allocated_permille(&self, used: Resources) -> i64 {
        let share = |used: i64, cap: Option<i64>| match cap {
            Some(cap) if cap > 0 => used.saturating_mul(1000) / cap,
            _ => 0,
        };
        (share(used.cpu_millis, self.cpu_millis) + share(used.memory_bytes, self.memory_bytes)) / 2
    }
}

/// Whether a provider may take new replicas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Readiness {
    /// Connected and accepting work.
    Ready,
    /// Connected, but its owner asked for no new work.
    Cordoned,
    /// Not connected (pending, unreachable, revoked).
    NotReady,
}

/// One provider as placement sees it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Candidate {
    /// Provider name.
    pub name: String,
    /// Provider labels, matched against the Workload's provider and node selectors; its
    /// [`ARCH_LABEL`] and [`OS_LABEL`] are those of its reported platform (absent if none).
    pub labels: BTreeMap<String, String>,
    /// Readiness for new work.
    pub readiness: Readiness,
    /// Uptime ratio in thousandths (`0.997` -> 997); unknown counts as 0.
    pub reliability_permille: i64,
    /// Capacity the cluster may use.
    pub allocatable: Allocatable,
    /// Requests of every pod bound to the provider, including this Workload's.
    pub used: Resources,
    /// Active replicas of this Workload on the provider.
    pub replicas: usize,
    /// When its owner's schedule next takes it away (Unix seconds; `None`: no end known).
    /// Placement prefers providers that stay available longer.
    pub available_until: Option<i64>,
}

/// What to place.
#[derive(Clone, Debug)]
pub(crate) struct PlacementRequest<'a> {
    /// How many new replicas.
    pub count: usize,
    /// Requests of one replica (`pods` = 1).
    pub per_replica: Resources,
    /// Spread mode.
    pub spread: Spread,
    /// Provider selector, if any.
    pub selector: Option<&'a LabelSelector>,
    /// The template's `nodeSelector`: every entry must match.
    pub node_selector: &'a BTreeMap<String, String>,
}

impl PlacementRequest<'_> {
    fn admits(&self, c: &Candidate) -> bool {
        self.selector.is_none_or(|s| s.matches(&c.labels))
            && self
                .node_selector
                .iter()
                .all(|(k, v)| c.labels.get(k) == Some(v))
    }

    /// The platform asked for (`kubernetes.io/arch=arm64`, …), from either selector.
    fn platform(&self) -> Vec<(&str, &str)> {
        let mut wanted: Vec<(&str, &str)> = self
            .node_selector
            .iter()
            .chain(self.selector.iter().flat_map(|s| s.match_labels.iter()))
            .filter(|(k, _)| is_platform_key(k))
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        wanted
    }
}

/// Why some replicas found no provider.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Shortage {
    /// Replicas left without a provider.
    pub unplaced: usize,
    /// Ready, non-cordoned providers matching the selector.
    pub matching: usize,
    /// Of those, how many already run a replica (spread Required).
    pub busy: usize,
    /// Of those, how many lack free capacity for one more replica.
    pub full: usize,
    /// The requests of one replica.
    pub per_replica: Resources,
    /// The platform asked for (`kubernetes.io/arch=arm64`), if any.
    pub platform: Vec<String>,
    /// Ready, non-cordoned providers excluded because they run (or reported) another platform.
    pub other_platform: usize,
}

impl Shortage {
    /// The `Degraded` message: "3/4 replicas placed: 1 needs a provider; 3 Ready providers
    /// match, all in use".
    pub(crate) fn message(&self, placed: usize, desired: usize) -> String {
        let needs = if self.unplaced == 1 {
            "1 needs a provider".to_string()
        } else {
            format!("{} need a provider", self.unplaced)
        };
        let providers = match self.matching {
            0 => "no Ready provider matches".to_string(),
            1 => "1 Ready provider matches".to_string(),
            n => format!("{n} Ready providers match"),
        };
        let detail = if self.matching == 0 {
            String::new()
        } else if self.busy == self.matching {
            ", all in use".to_string()
        } else {
            let mut parts = Vec::new();
            if self.busy > 0 {
                let verb = if self.busy == 1 { "runs" } else { "run" };
                parts.push(format!("{} already {verb} a replica", self.busy));
            }
            if self.full > 0 {
                let verb = if self.full == 1 { "lacks" } else { "lack" };
                parts.push(format!(
                    "{} {verb} free capacity for {}",
                    self.full,
                    self.per_replica.describe()
                ));
            }
            if parts.is_empty() {
                String::new()
            } else {
                format!(", {}", parts.join(", "))
            }
        };
        let platform = match self.other_platform {
            0 => String::new(),
            n => format!(
                "; {n} Ready provider{} not {}",
                if n == 1 { " is" } else { "s are" },
                self.platform.join(", ")
            ),
        };
        format!("{placed}/{desired} replicas placed: {needs}; {providers}{detail}{platform}")
    }
}

/// The providers chosen, one per new replica, and what could not be placed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Placement {
    /// Provider names, in placement order.
    pub chosen: Vec<String>,
    /// Set when fewer than `count` replicas were placed.
    pub shortage: Option<Shortage>,
}

/// Chooses a provider for each of `request.count` new replicas.
///
/// A provider qualifies when it is Ready, not cordoned, matches the provider selector and the
/// node selector (platform keys by its reported platform), has room for one more replica's
/// requests, and (spread Required) runs no replica of this Workload yet. Among
/// those, the best is the one with the fewest replicas of this Workload, then the one that stays
/// available longest (no schedule end beats any), then the most reliable,
/// then the least allocated, then the first by name — so the result depends on nothing but the
/// input.
pub(crate) fn place_replicas(
    candidates: &[Candidate],
    request: &PlacementRequest<'_>,
) -> Placement {
    let mut pool: Vec<Candidate> = candidates
        .iter()
        .filter(|c| c.readiness == Readiness::Ready)
        .filter(|c| request.admits(c))
        .cloned()
        .collect();
    let mut chosen = Vec::with_capacity(request.count);
    for placed in 0..request.count {
        let best = pool
            .iter_mut()
            .filter(|c| request.spread == Spread::Preferred || c.replicas == 0)
            .filter(|c| c.allocatable.fits(c.used, request.per_replica))
            .min_by(|a, b| {
                let key = |c: &Candidate| {
                    (
                        c.replicas,
                        std::cmp::Reverse(c.available_until.unwrap_or(i64::MAX)),
                        -c.reliability_permille,
                        c.allocatable
                            .allocated_permille(c.used.plus(request.per_replica)),
                    )
                };
                key(a).cmp(&key(b)).then_with(|| a.name.cmp(&b.name))
            });
        match best {
            Some(c) => {
                c.replicas += 1;
                c.used = c.used.plus(request.per_replica);
                chosen.push(c.name.clone());
            }
            None => {
                let busy = if request.spread == Spread::Required {
                    pool.iter().filter(|c| c.replicas > 0).count()
                } else {
                    0
                };
                let full = pool
                    .iter()
                    .filter(|c| request.spread == Spread::Preferred || c.replicas == 0)
                    .filter(|c| !c.allocatable.fits(c.used, request.per_replica))
                    .count();
                let platform = request.platform();
                let other_platform = candidates
                    .iter()
                    .filter(|c| c.readiness == Readiness::Ready)
                    .filter(|c| {
                        platform
                            .iter()
                            .any(|(k, v)| c.labels.get(*k).map(String::as_str) != Some(*v))
                    })
                    .count();
                return Placement {
                    chosen,
                    shortage: Some(Shortage {
                        unplaced: request.count - placed,
                        matching: pool.len(),
                        busy,
                        full,
                        per_replica: request.per_replica,
                        platform: platform.iter().map(|(k, v)| format!("{k}={v}")).collect(),
                        other_platform,
                    }),
                };
            }
        }
    }
    Placement {
        chosen,
        shortage: None,
    }
}

#[cfg(test)]
pub(crate) mod tests;
