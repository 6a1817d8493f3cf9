use super::*;

fn t(code: i32) -> TerminatedInfo {
    TerminatedInfo::new(code, false, String::new(), 1_000, 2_000)
}

fn bo() -> BackoffPolicy {
    BackoffPolicy {
        initial: Duration::from_secs(1),
        max: Duration::from_secs(8),
        pull_error_hold: Duration::from_millis(500),
    }
}

#[test]
fn transitions_table() {
    use ContainerEvent as E;
    use ContainerLifecycle as S;
    use RestartPolicy::*;
    let pull_failed = E::ImagePullFailed {
        reason: "ErrImagePull".into(),
        message: "no such host".into(),
    };
    let err_pull = S::ErrImagePull {
        reason: "ErrImagePull".into(),
        message: "no such host".into(),
        attempts: 1,
    };
    let pull_backoff = S::ImagePullBackOff {
        message: "no such host".into(),
        attempts: 1,
    };
    let running = S::Running {
        started_unix_millis: 1_000,
    };
    let crash = |code| S::CrashLoopBackOff {
        last: t(code),
        attempts: 1,
    };
    #[rustfmt::skip]
    let table: Vec<(S, E, RestartPolicy, S, Action)> = vec![
        (S::Pulling, E::ImageReady, Always, S::Creating, Action::CreateAndStart),
        (S::Pulling, pull_failed.clone(), Always, err_pull.clone(), Action::Wait(Duration::from_millis(500))),
        (err_pull.clone(), E::TimerFired, Always, pull_backoff.clone(), Action::Wait(Duration::from_secs(1))),
        (pull_backoff.clone(), E::TimerFired, Never, S::Pulling, Action::PullImage),
        (S::Creating, E::Started { at_unix_millis: 1_000 }, Never, running.clone(), Action::None),
        (S::Creating, E::CreateFailed { message: "bad".into() }, Never,
            S::CreateError { message: "bad".into(), attempts: 1 }, Action::Wait(Duration::from_secs(1))),
        (S::CreateError { message: "bad".into(), attempts: 1 }, E::TimerFired, Never, S::Creating, Action::CreateAndStart),
        (S::Creating, E::ConfigFailed { message: "secret \"s\" not found".into() }, Never,
            S::ConfigError { message: "secret \"s\" not found".into() }, Action::None),
        (S::ConfigError { message: "m".into() }, E::TimerFired, Never, S::Creating, Action::CreateAndStart),
        // Restart policy decides what an exit means.
        (running.clone(), E::Exited(t(3)), Never, S::Terminated(t(3)), Action::None),
        (running.clone(), E::Exited(t(0)), Never, S::Terminated(t(0)), Action::None),
        (running.clone(), E::Exited(t(3)), Always, crash(3), Action::Wait(Duration::from_secs(1))),
        (running.clone(), E::Exited(t(0)), Always, crash(0), Action::Wait(Duration::from_secs(1))),
        (running.clone(), E::Exited(t(3)), OnFailure, crash(3), Action::Wait(Duration::from_secs(1))),
        (running.clone(), E::Exited(t(0)), OnFailure, S::Terminated(t(0)), Action::None),
        (crash(3), E::TimerFired, Always, S::Creating, Action::Restart),
        // Stale or out-of-order events change nothing.
        (running.clone(), E::TimerFired, Always, running.clone(), Action::None),
        (S::Pulling, E::Exited(t(1)), Always, S::Pulling, Action::None),
        (S::Terminated(t(3)), E::TimerFired, Never, S::Terminated(t(3)), Action::None),
        (S::Terminated(t(3)), E::Started { at_unix_millis: 5 }, Never, S::Terminated(t(3)), Action::None),
    ];
    for (i, (from, event, policy, want_state, want_action)) in table.into_iter().enumerate() {
        let (got_state, got_action) = transition(&from, &event, policy, &bo());
        assert_eq!(
            (got_state, got_action),
            (want_state, want_action),
            "row {i}: {from:?} --{event:?}/{policy:?}-->"
        );
    }
}

#[test]
fn reported_container_states() {
    use pb::container_state::State;
    let reason = |s: &ContainerLifecycle| match s.to_proto().state {
        Some(State::Waiting(w)) => format!("waiting:{}", w.reason),
        Some(State::Running(_)) => "running".into(),
        Some(State::Terminated(t)) => format!("terminated:{}:{}", t.reason, t.exit_code),
        None => "none".into(),
    };
    #[rustfmt::skip]
    let table = [
        (ContainerLifecycle::Pulling, "waiting:ContainerCreating"),
        (ContainerLifecycle::Creating, "waiting:ContainerCreating"),
        (ContainerLifecycle::ErrImagePull { reason: "ErrImagePull".into(), message: "m".into(), attempts: 1 }, "waiting:ErrImagePull"),
        (ContainerLifecycle::ImagePullBackOff { message: "m".into(), attempts: 1 }, "waiting:ImagePullBackOff"),
        (ContainerLifecycle::CreateError { message: "m".into(), attempts: 1 }, "waiting:CreateContainerError"),
        (ContainerLifecycle::ConfigError { message: "m".into() }, "waiting:CreateContainerConfigError"),
        (ContainerLifecycle::Running { started_unix_millis: 1 }, "running"),
        (ContainerLifecycle::CrashLoopBackOff { last: t(3), attempts: 1 }, "waiting:CrashLoopBackOff"),
        (ContainerLifecycle::Terminated(t(3)), "terminated:Error:3"),
        (ContainerLifecycle::Terminated(t(0)), "terminated:Completed:0"),
        (ContainerLifecycle::Terminated(TerminatedInfo::new(137, true, String::new(), 0, 1)), "terminated:OOMKilled:137"),
    ];
    for (state, want) in table {
        assert_eq!(reason(&state), want, "{state:?}");
    }
}

#[test]
fn pod_phase_table() {
    use ContainerLifecycle as S;
    use pb::PodPhase::*;
    let running = S::Running {
        started_unix_millis: 1,
    };
    let crash = S::CrashLoopBackOff {
        last: t(3),
        attempts: 2,
    };
    #[rustfmt::skip]
    let table: Vec<(Vec<(S, u32)>, pb::PodPhase)> = vec![
        (vec![], Pending),
        (vec![(S::Pulling, 0)], Pending),
        (vec![(running.clone(), 0), (S::Pulling, 0)], Pending),
        (vec![(running.clone(), 0)], Running),
        (vec![(crash.clone(), 1)], Running),
        (vec![(S::Creating, 2)], Running), // restarting, has run before
        (vec![(S::Terminated(t(3)), 0)], Failed),
        (vec![(S::Terminated(t(0)), 0)], Succeeded),
        (vec![(S::Terminated(t(0)), 0), (S::Terminated(t(1)), 0)], Failed),
        (vec![(S::Terminated(t(0)), 0), (running.clone(), 0)], Running),
    ];
    for (containers, want) in table {
        let got = pod_phase(containers.iter().map(|(s, r)| (s, *r)));
        assert_eq!(got, want, "{containers:?}");
    }
}

#[test]
fn backoff_grows_and_caps() {
    let b = bo();
    let got: Vec<u64> = (1..=6).map(|a| b.delay(a).as_secs()).collect();
    assert_eq!(got, vec![1, 2, 4, 8, 8, 8]);
}

#[test]
fn failure_memory_grows_crash_backoff_and_resets_on_success() {
    use ContainerEvent as E;
    use ContainerLifecycle as S;
    let b = bo();
    let mut mem = FailureMemory::default();
    let mut state = S::Running {
        started_unix_millis: 1_000,
    };
    let mut delays = vec![];
    for _ in 0..4 {
        let (next, action) = mem.step(&state, &E::Exited(t(3)), RestartPolicy::Always, &b);
        delays.push(action);
        let (next, action) = mem.step(&next, &E::TimerFired, RestartPolicy::Always, &b);
        assert_eq!(action, Action::Restart);
        let (next, _) = mem.step(
            &next,
            &E::Started { at_unix_millis: 3 },
            RestartPolicy::Always,
            &b,
        );
        state = next;
    }
    let secs = |a: &Action| match a {
        Action::Wait(d) => d.as_secs(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        delays.iter().map(secs).collect::<Vec<_>>(),
        vec![1, 2, 4, 8]
    );
    // A long healthy run resets the back-off.
    let long = TerminatedInfo::new(3, false, String::new(), 0, 60_000);
    let (_, action) = mem.step(&state, &E::Exited(long), RestartPolicy::Always, &b);
    assert_eq!(action, Action::Wait(Duration::from_secs(1)));
}

#[test]
fn failure_memory_counts_pull_failures() {
    use ContainerEvent as E;
    use ContainerLifecycle as S;
    let b = bo();
    let mut mem = FailureMemory::default();
    let failed = E::ImagePullFailed {
        reason: "ErrImagePull".into(),
        message: "m".into(),
    };
    let mut state = S::Pulling;
    let mut backoffs = vec![];
    for _ in 0..3 {
        let (s, _) = mem.step(&state, &failed, RestartPolicy::Always, &b);
        let (s, a) = mem.step(&s, &E::TimerFired, RestartPolicy::Always, &b);
        backoffs.push(a);
        let (s, a) = mem.step(&s, &E::TimerFired, RestartPolicy::Always, &b);
        assert_eq!(a, Action::PullImage);
        state = s;
    }
    assert_eq!(
        backoffs,
        vec![
            Action::Wait(Duration::from_secs(1)),
            Action::Wait(Duration::from_secs(2)),
            Action::Wait(Duration::from_secs(4))
        ]
    );
}
