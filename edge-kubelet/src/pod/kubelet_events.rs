//! Kubelet's events, with kubelet's reasons and words (`pkg/kubelet/events`, the image manager
//! and `kuberuntime`), for what happens to a pod's containers on this edge: pure functions of
//! the lifecycle's transitions and of pull outcomes.

use std::time::Duration;

use decloud_proto as pb;

use super::lifecycle::ContainerLifecycle;
use crate::error::Error;

/// One event, before it is addressed to its pod and container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KubeletEvent {
    /// `Warning` (else `Normal`).
    pub(crate) warning: bool,
    /// Kubelet's reason.
    pub(crate) reason: &'static str,
    /// Kubelet's message.
    pub(crate) message: String,
}

fn normal(reason: &'static str, message: String) -> KubeletEvent {
    KubeletEvent {
        warning: false,
        reason,
        message,
    }
}

fn warning(reason: &'static str, message: String) -> KubeletEvent {
    KubeletEvent {
        warning: true,
        reason,
        message,
    }
}

/// A pull begins.
pub(crate) fn pulling(image: &str) -> KubeletEvent {
    normal("Pulling", format!("Pulling image {image:?}"))
}

/// A pull succeeded after `took`.
pub(crate) fn pulled(image: &str, took: Duration, size: u64) -> KubeletEvent {
    let took = Duration::from_millis(took.as_millis().try_into().unwrap_or(u64::MAX));
    normal(
        "Pulled",
        format!(
            "Successfully pulled image {image:?} in {} ({} including waiting). Image size: {size} bytes.",
            go_duration(took),
            go_duration(took)
        ),
    )
}

/// No pull was needed.
pub(crate) fn already_present(image: &str) -> KubeletEvent {
    normal(
        "Pulled",
        format!("Container image {image:?} already present on machine"),
    )
}

/// The image could not be had: kubelet's event for the cause, then `Failed` "Error: <reason>".
pub(crate) fn pull_failed(image: &str, e: &Error) -> Vec<KubeletEvent> {
    match e {
        Error::ImagePull {
            reason: "ErrImageNeverPull",
            message,
        } => vec![
            warning("ErrImageNeverPull", message.clone()),
            warning("Failed", "Error: ErrImageNeverPull".into()),
        ],
        Error::ImagePull { reason, message } if *reason == "ErrImagePull" => vec![
            warning(
                "Failed",
                format!("Failed to pull image {image:?}: {message}"),
            ),
            warning("Failed", "Error: ErrImagePull".into()),
        ],
        Error::ImagePull { reason, message } => {
            vec![warning("Failed", format!("Error: {reason}: {message}"))]
        }
        other => vec![
            warning("Failed", format!("Failed to pull image {image:?}: {other}")),
            warning("Failed", "Error: ErrImagePull".into()),
        ],
    }
}

/// A running container is stopped.
pub(crate) fn killing(container: &str) -> KubeletEvent {
    normal("Killing", format!("Stopping container {container}"))
}

/// The events of one lifecycle transition of `container` (of the pod `pod_desc`, kubelet's
/// `name_namespace(uid)`).
pub(crate) fn of_transition(
    from: &ContainerLifecycle,
    to: &ContainerLifecycle,
    container: &pb::ContainerSpec,
    pod_desc: &str,
) -> Vec<KubeletEvent> {
    use ContainerLifecycle as S;
    let name = &container.name;
    match (from, to) {
        (S::ErrImagePull { .. }, S::ImagePullBackOff { .. }) => vec![
            normal(
                "BackOff",
                format!("Back-off pulling image {:?}", container.image),
            ),
            warning("Failed", "Error: ImagePullBackOff".into()),
        ],
        (S::Creating, S::Running { .. }) => vec![
            normal("Created", format!("Created container: {name}")),
            normal("Started", format!("Started container {name}")),
        ],
        (S::Creating, S::CreateError { message, .. } | S::ConfigError { message }) => {
            vec![warning("Failed", format!("Error: {message}"))]
        }
        (S::Running { .. }, S::CrashLoopBackOff { .. }) => vec![warning(
            "BackOff",
            format!("Back-off restarting failed container {name} in pod {pod_desc}"),
        )],
        _ => vec![],
    }
}

/// `d` as Go prints a `time.Duration` truncated to milliseconds (`1.234s`, `850ms`, `2m3.5s`).
fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (h, rest) = (ms / 3_600_000, ms % 3_600_000);
    let (m, rest) = (rest / 60_000, rest % 60_000);
    let (s, frac) = (rest / 1000, rest % 1000);
    let mut secs = s.to_string();
    if frac > 0 {
        let f = format!("{frac:03}");
        secs = format!("{s}.{}", f.trim_end_matches('0'));
    }
    match (h, m) {
        (0, 0) => format!("{secs}s"),
        (0, m) => format!("{m}m{secs}s"),
        (h, m) => format!("{h}h{m}m{secs}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod::lifecycle::TerminatedInfo;

    fn spec() -> pb::ContainerSpec {
        pb::ContainerSpec {
            name: "app".into(),
            image: "busybox:1".into(),
            ..Default::default()
        }
    }

    #[test]
    fn transitions_word_events_as_kubelet() {
        use ContainerLifecycle as S;
        let crashed = S::CrashLoopBackOff {
            last: TerminatedInfo::new(1, false, String::new(), 1, 2),
            attempts: 1,
        };
        let running = S::Running {
            started_unix_millis: 1,
        };
        type Case = (S, S, Vec<(&'static str, &'static str)>);
        let cases: Vec<Case> = vec![
            (
                S::ErrImagePull {
                    reason: "ErrImagePull".into(),
                    message: "m".into(),
                    attempts: 1,
                },
                S::ImagePullBackOff {
                    message: "m".into(),
                    attempts: 1,
                },
                vec![
                    ("BackOff", "Back-off pulling image \"busybox:1\""),
                    ("Failed", "Error: ImagePullBackOff"),
                ],
            ),
            (
                S::Creating,
                running.clone(),
                vec![
                    ("Created", "Created container: app"),
                    ("Started", "Started container app"),
                ],
            ),
            (
                running.clone(),
                crashed,
                vec![(
                    "BackOff",
                    "Back-off restarting failed container app in pod web_default(u1)",
                )],
            ),
            (S::Pulling, S::Creating, vec![]),
        ];
        for (from, to, want) in cases {
            let got: Vec<(&str, String)> = of_transition(&from, &to, &spec(), "web_default(u1)")
                .into_iter()
                .map(|e| (e.reason, e.message))
                .collect();
            let want: Vec<(&str, String)> =
                want.into_iter().map(|(r, m)| (r, m.to_string())).collect();
            assert_eq!(got, want, "{from:?} -> {to:?}");
        }
    }

    #[test]
    fn pull_outcomes_word_events_as_kubelet() {
        let never = Error::ImagePull {
            reason: "ErrImageNeverPull",
            message: "Container image \"x:1\" is not present with pull policy of Never".into(),
        };
        let got: Vec<(bool, &str, String)> = pull_failed("x:1", &never)
            .into_iter()
            .map(|e| (e.warning, e.reason, e.message))
            .collect();
        assert_eq!(
            got,
            [
                (
                    true,
                    "ErrImageNeverPull",
                    "Container image \"x:1\" is not present with pull policy of Never".into()
                ),
                (true, "Failed", "Error: ErrImageNeverPull".into())
            ]
        );
        assert_eq!(
            pulled("x:1", Duration::from_millis(1234), 42).message,
            "Successfully pulled image \"x:1\" in 1.234s (1.234s including waiting). Image size: 42 bytes."
        );
        assert_eq!(
            already_present("x:1").message,
            "Container image \"x:1\" already present on machine"
        );
        assert_eq!(go_duration(Duration::from_millis(850)), "850ms");
        assert_eq!(go_duration(Duration::from_millis(123_500)), "2m3.5s");
    }
}
