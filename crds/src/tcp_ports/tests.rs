use super::*;

/// `(namespace, name, created day, requested port, recorded port)`.
type Spec = (&'static str, &'static str, u8, Option<i32>, Option<i32>);

fn wl((ns, name, day, request, recorded): Spec) -> Workload {
    let mut expose = serde_json::json!({"port": 7000, "protocol": "TCP"});
    if let Some(p) = request {
        expose["tcpPort"] = p.into();
    }
    let mut w: Workload = serde_json::from_value(serde_json::json!({
        "apiVersion": "decloud.dev/v1alpha1", "kind": "Workload",
        "metadata": {"name": name, "namespace": ns,
                     "creationTimestamp": format!("2026-01-{day:02}T00:00:00Z")},
        "spec": {"template": {"spec": {"containers": [
            {"name": "c", "image": "x", "ports": [{"containerPort": 7000}]}]}},
            "expose": expose}
    }))
    .expect("valid workload");
    if let Some(p) = recorded {
        w.status = Some(crate::WorkloadStatus {
            tcp_port: Some(p),
            ..Default::default()
        });
    }
    w
}

fn show(claims: &BTreeMap<WorkloadKey, PortClaim>) -> Vec<String> {
    claims
        .iter()
        .map(|(k, c)| {
            let who = format!("{}/{}", k.0, k.1);
            match c {
                PortClaim::Assigned(p) => format!("{who}={p}"),
                PortClaim::Refused { reason, .. } => format!("{who}:{reason}"),
            }
        })
        .collect()
}

const RANGE: TcpPortRange = TcpPortRange {
    first: 30000,
    last: 30002,
};

#[test]
fn assignments() {
    let cases: Vec<(&str, Vec<Spec>, usize, Vec<&str>)> = vec![
        (
            "lowest free ports, oldest first",
            vec![("a", "x", 2, None, None), ("a", "y", 1, None, None)],
            4,
            vec!["a/x=30001", "a/y=30000"],
        ),
        (
            "a recorded port stays its holder's though an older one arrives later",
            vec![
                ("a", "new", 5, None, Some(30000)),
                ("b", "old", 1, None, None),
            ],
            4,
            vec!["a/new=30000", "b/old=30001"],
        ),
        (
            "a request for a held port is refused, the holder keeps it",
            vec![
                ("a", "holder", 1, None, Some(30001)),
                ("b", "thief", 2, Some(30001), None),
            ],
            4,
            vec!["a/holder=30001", "b/thief:PortTaken"],
        ),
        (
            "two recording the same port (forged status): the older keeps it",
            vec![
                ("a", "old", 1, None, Some(30001)),
                ("b", "forger", 2, None, Some(30001)),
            ],
            4,
            vec!["a/old=30001", "b/forger=30000"],
        ),
        (
            "a free requested port is honoured",
            vec![("a", "x", 1, Some(30002), None)],
            4,
            vec!["a/x=30002"],
        ),
        (
            "out of range: requested or recorded",
            vec![
                ("a", "x", 1, Some(22), None),
                ("a", "y", 2, None, Some(8080)),
            ],
            4,
            vec!["a/x:PortOutOfRange", "a/y=30000"],
        ),
        (
            "range exhausted",
            vec![
                ("a", "w", 1, None, None),
                ("b", "x", 2, None, None),
                ("c", "y", 3, None, None),
                ("d", "z", 4, None, None),
            ],
            4,
            vec!["a/w=30000", "b/x=30001", "c/y=30002", "d/z:NoPortAvailable"],
        ),
        (
            "the namespace cap",
            vec![
                ("a", "w", 1, None, None),
                ("a", "x", 2, None, None),
                ("a", "y", 3, None, Some(30002)),
                ("b", "z", 4, None, None),
            ],
            2,
            vec![
                "a/w=30000",
                "a/x:PortQuotaExceeded",
                "a/y=30002",
                "b/z=30001",
            ],
        ),
        (
            "changing the request moves off the recorded port",
            vec![("a", "x", 1, Some(30002), Some(30000))],
            4,
            vec!["a/x=30002"],
        ),
    ];
    for (what, specs, cap, want) in cases {
        let wls: Vec<Workload> = specs.into_iter().map(wl).collect();
        assert_eq!(show(&assign_ports(&wls, Some(RANGE), cap)), want, "{what}");
    }
}

#[test]
fn restart_rebuilds_the_same_allocation_and_deletion_frees_a_port() {
    let mut wls: Vec<Workload> = vec![
        wl(("a", "x", 1, None, None)),
        wl(("b", "y", 2, None, None)),
        wl(("c", "z", 3, Some(30002), None)),
    ];
    let first = assign_ports(&wls, Some(RANGE), 4);
    // Record what was assigned (as the controller does), then "restart" with the Workloads in
    // another order: same ports.
    for w in &mut wls {
        if let Some(PortClaim::Assigned(p)) = first.get(&key_of(w)) {
            w.status = Some(crate::WorkloadStatus {
                tcp_port: Some(i32::from(*p)),
                ..Default::default()
            });
        }
    }
    wls.reverse();
    assert_eq!(assign_ports(&wls, Some(RANGE), 4), first);
    // `a/x` goes (being deleted): its port is free for a newcomer; the others keep theirs.
    let gone = wls.iter_mut().find(|w| w.name_any() == "x").expect("x");
    gone.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
    ));
    wls.push(wl(("d", "new", 9, None, None)));
    assert_eq!(
        show(&assign_ports(&wls, Some(RANGE), 4)),
        ["b/y=30001", "c/z=30002", "d/new=30000"]
    );
}

#[test]
fn no_range_refuses_every_claim_and_http_workloads_claim_nothing() {
    let mut http = wl(("a", "web", 1, None, None));
    http.spec.expose.as_mut().expect("expose").protocol = None;
    let tcp = wl(("a", "x", 2, None, None));
    let wls = [http, tcp];
    assert_eq!(show(&assign_ports(&wls, None, 4)), ["a/x:TcpDisabled"]);
    assert_eq!(show(&assign_ports(&wls, Some(RANGE), 4)), ["a/x=30000"]);
}

#[test]
fn ranges_parse_within_bounds() {
    assert_eq!(
        "30000-30099".parse::<TcpPortRange>(),
        Ok(TcpPortRange {
            first: 30000,
            last: 30099
        })
    );
    assert!("7000".parse::<TcpPortRange>().is_ok());
    for bad in ["0-10", "10-5", "1-65535", "a-b", "", "30000-70000"] {
        assert!(bad.parse::<TcpPortRange>().is_err(), "{bad}");
    }
}

#[test]
fn a_waiting_request_gets_the_port_its_holder_gave_up() {
    let deleting = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
    );
    let mut echo = wl(("tcp-a", "echo", 1, Some(30001), Some(30001)));
    let wls = |echo: &Workload| {
        vec![
            echo.clone(),
            wl(("tcp-b", "thief", 2, Some(30001), None)),
            wl(("tcp-a", "second", 3, None, Some(30000))),
            wl(("tcp-a", "third", 4, None, None)),
            wl(("tcp-b", "last", 5, None, Some(30002))),
            wl(("tcp-b", "late", 6, None, None)),
        ]
    };
    assert_eq!(
        show(&assign_ports(&wls(&echo), Some(RANGE), 2)),
        [
            "tcp-a/echo=30001",
            "tcp-a/second=30000",
            "tcp-a/third:PortQuotaExceeded",
            "tcp-b/last=30002",
            "tcp-b/late:NoPortAvailable",
            "tcp-b/thief:PortTaken"
        ]
    );
    echo.metadata.deletion_timestamp = Some(deleting);
    assert_eq!(
        show(&assign_ports(&wls(&echo), Some(RANGE), 2)),
        [
            "tcp-a/second=30000",
            "tcp-a/third:NoPortAvailable",
            "tcp-b/last=30002",
            "tcp-b/late:PortQuotaExceeded",
            "tcp-b/thief=30001"
        ]
    );
}
