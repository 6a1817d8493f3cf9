//! Types shared by both resources.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A standard Kubernetes condition, as in `metav1.Condition`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Condition type, e.g. `Ready` or `Available`.
    #[serde(rename = "type")]
    #[schemars(length(max = 316))]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    #[schemars(length(max = 16))]
    pub status: String,
    /// Machine-readable reason for the last transition, in CamelCase.
    #[serde(default)]
    #[schemars(length(max = 1024))]
    pub reason: String,
    /// Human-readable details.
    #[serde(default)]
    #[schemars(length(max = 32768))]
    pub message: String,
    /// When the status last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub last_transition_time: Option<String>,
    /// The `.metadata.generation` this condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl Condition {
    /// Whether the condition's status is `True`.
    pub fn is_true(&self) -> bool {
        self.status == "True"
    }
}

/// Finds a condition by type.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Replaces or adds `new`, keeping the old `lastTransitionTime` when the status did not change,
/// so that writing the same condition twice changes nothing.
pub fn set_condition(conditions: &mut Vec<Condition>, mut new: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old) => {
            if old.status == new.status {
                new.last_transition_time = old.last_transition_time.clone();
            }
            *old = new;
        }
        None => conditions.push(new),
    }
}

/// Resource usage accounted by the edges.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    /// CPU time consumed, in core-seconds.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub cpu_seconds: f64,
    /// Memory held over time, in gibibyte-hours (GiB × h).
    // Not `memoryGiBHours`: `kubectl describe` splits camelCase at every capital ("Memory Gi B
    // Hours").
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub memory_gibibyte_hours: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond(status: &str, time: &str) -> Condition {
        Condition {
            type_: "Ready".into(),
            status: status.into(),
            last_transition_time: Some(time.into()),
            ..Default::default()
        }
    }

    #[test]
    fn set_condition_keeps_transition_time_when_status_is_unchanged() {
        let mut conds = vec![cond("True", "t1")];
        set_condition(&mut conds, cond("True", "t2"));
        assert_eq!(conds[0].last_transition_time.as_deref(), Some("t1"));
        set_condition(&mut conds, cond("False", "t3"));
        assert_eq!(conds[0].last_transition_time.as_deref(), Some("t3"));
        assert_eq!(conds.len(), 1);
    }
}
