use super::*;
use decloud_crds::{LabelSelectorRequirement, SelectorOperator};

pub(crate) fn provider(name: &str) -> Candidate {
    Candidate {
        name: name.into(),
        labels: BTreeMap::new(),
        readiness: Readiness::Ready,
        reliability_permille: 990,
        allocatable: Allocatable {
            cpu_millis: Some(2000),
            memory_bytes: Some(4 << 30),
            pods: Some(10),
            storage_bytes: None,
        },
        used: Resources::default(),
        replicas: 0,
        available_until: None,
    }
}

fn with(name: &str, f: impl FnOnce(&mut Candidate)) -> Candidate {
    let mut c = provider(name);
    f(&mut c);
    c
}

fn small() -> Resources {
    Resources::pod(100, 32 << 20)
}

fn region(value: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(
        "topology.kubernetes.io/region".to_string(),
        value.to_string(),
    )])
}

struct Case {
    name: &'static str,
    candidates: Vec<Candidate>,
    count: usize,
    spread: Spread,
    selector: Option<LabelSelector>,
    node_selector: BTreeMap<String, String>,
    per_replica: Resources,
    want: &'static [&'static str],
    want_unplaced: usize,
}

impl Default for Case {
    fn default() -> Self {
        Self {
            name: "",
            candidates: vec![],
            count: 1,
            spread: Spread::Required,
            selector: None,
            node_selector: BTreeMap::new(),
            per_replica: small(),
            want: &[],
            want_unplaced: 0,
        }
    }
}

#[test]
fn place_replicas_table() {
    let eu = LabelSelector {
        match_labels: region("eu-west"),
        ..Default::default()
    };
    let not_us = LabelSelector {
        match_expressions: vec![LabelSelectorRequirement {
            key: "topology.kubernetes.io/region".into(),
            operator: SelectorOperator::NotIn,
            values: vec!["us-east".into()],
        }],
        ..Default::default()
    };
    let cases = vec![
        Case {
            name: "ties break by name",
            candidates: vec![provider("c"), provider("a"), provider("b")],
            count: 2,
            want: &["a", "b"],
            ..Default::default()
        },
        Case {
            name: "selector by labels",
            candidates: vec![
                with("a", |c| c.labels = region("us-east")),
                with("b", |c| c.labels = region("eu-west")),
                provider("c"),
            ],
            count: 2,
            selector: Some(eu.clone()),
            want: &["b"],
            want_unplaced: 1,
            ..Default::default()
        },
        Case {
            name: "selector by expression; a missing label passes NotIn",
            candidates: vec![
                with("a", |c| c.labels = region("us-east")),
                with("b", |c| c.labels = region("eu-west")),
                provider("c"),
            ],
            count: 2,
            selector: Some(not_us),
            want: &["b", "c"],
            ..Default::default()
        },
        Case {
            name: "not ready and cordoned are excluded",
            candidates: vec![
                with("a", |c| c.readiness = Readiness::NotReady),
                with("b", |c| c.readiness = Readiness::Cordoned),
                provider("c"),
            ],
            count: 3,
            want: &["c"],
            want_unplaced: 2,
            ..Default::default()
        },
        Case {
            name: "reliability wins over allocation and name",
            candidates: vec![
                with("a", |c| c.reliability_permille = 900),
                with("b", |c| {
                    c.reliability_permille = 999;
                    c.used = Resources::pod(1500, 1 << 30);
                }),
                with("c", |c| c.reliability_permille = 950),
            ],
            count: 3,
            want: &["b", "c", "a"],
            ..Default::default()
        },
        Case {
            name: "least allocated among equally reliable",
            candidates: vec![
                with("a", |c| c.used = Resources::pod(1000, 0)),
                with("b", |c| c.used = Resources::pod(500, 0)),
                provider("c"),
            ],
            count: 3,
            want: &["c", "b", "a"],
            ..Default::default()
        },
        Case {
            name: "required spread skips providers already running a replica",
            candidates: vec![with("a", |c| c.replicas = 1), provider("b")],
            count: 2,
            want: &["b"],
            want_unplaced: 1,
            ..Default::default()
        },
        Case {
            name: "preferred spread fills distinct providers first, then shares",
            candidates: vec![with("a", |c| c.replicas = 1), provider("b")],
            count: 3,
            spread: Spread::Preferred,
            want: &["b", "a", "b"],
            ..Default::default()
        },
        Case {
            name: "fewer replicas beats reliability under preferred spread",
            candidates: vec![
                with("a", |c| {
                    c.replicas = 1;
                    c.reliability_permille = 999;
                }),
                with("b", |c| c.reliability_permille = 100),
            ],
            count: 1,
            spread: Spread::Preferred,
            want: &["b"],
            ..Default::default()
        },
        Case {
            name: "cpu capacity",
            candidates: vec![
                with("a", |c| c.used = Resources::pod(1950, 0)),
                provider("b"),
            ],
            count: 2,
            want: &["b"],
            want_unplaced: 1,
            ..Default::default()
        },
        Case {
            name: "memory capacity counts placed replicas",
            candidates: vec![with("a", |c| c.allocatable.memory_bytes = Some(64 << 20))],
            count: 3,
            spread: Spread::Preferred,
            want: &["a", "a"],
            want_unplaced: 1,
            ..Default::default()
        },
        Case {
            name: "pod count capacity",
            candidates: vec![with("a", |c| {
                c.allocatable.pods = Some(3);
                c.used.pods = 3;
            })],
            want: &[],
            want_unplaced: 1,
            ..Default::default()
        },
        Case {
            name: "unreported dimensions are unbounded",
            candidates: vec![with("a", |c| c.allocatable = Allocatable::default())],
            count: 2,
            spread: Spread::Preferred,
            per_replica: Resources::pod(64_000, 1 << 40),
            want: &["a", "a"],
            ..Default::default()
        },
        Case {
            name: "nothing to place",
            candidates: vec![provider("a")],
            count: 0,
            want: &[],
            ..Default::default()
        },
    ];
    for case in cases {
        let got = place_replicas(
            &case.candidates,
            &PlacementRequest {
                count: case.count,
                per_replica: case.per_replica,
                spread: case.spread,
                selector: case.selector.as_ref(),
                node_selector: &case.node_selector,
            },
        );
        assert_eq!(got.chosen, case.want, "{}", case.name);
        assert_eq!(
            got.shortage.as_ref().map_or(0, |s| s.unplaced),
            case.want_unplaced,
            "{}",
            case.name
        );
    }
}

#[test]
fn shortage_message_all_in_use() {
    let candidates = vec![
        with("a", |c| c.replicas = 1),
        with("b", |c| c.replicas = 1),
        with("c", |c| c.replicas = 1),
    ];
    let got = place_replicas(
        &candidates,
        &PlacementRequest {
            count: 1,
            per_replica: small(),
            spread: Spread::Required,
            selector: None,
            node_selector: &BTreeMap::new(),
        },
    );
    let shortage = got.shortage.expect("shortage");
    assert_eq!(
        shortage.message(3, 4),
        "3/4 replicas placed: 1 needs a provider; 3 Ready providers match, all in use"
    );
}

#[test]
fn shortage_message_mixed_and_none() {
    let candidates = vec![
        with("a", |c| c.replicas = 1),
        with("b", |c| c.used = Resources::pod(2000, 0)),
    ];
    let request = PlacementRequest {
        count: 2,
        per_replica: small(),
        spread: Spread::Required,
        selector: None,
        node_selector: &BTreeMap::new(),
    };
    let shortage = place_replicas(&candidates, &request)
        .shortage
        .expect("shortage");
    assert_eq!(
        shortage.message(1, 3),
        "1/3 replicas placed: 2 need a provider; 2 Ready providers match, 1 already runs a replica, \
         1 lacks free capacity for cpu 100m, memory 32Mi"
    );
    let shortage = place_replicas(&[], &request).shortage.expect("shortage");
    assert_eq!(
        shortage.message(0, 2),
        "0/2 replicas placed: 2 need a provider; no Ready provider matches"
    );
}

fn arch(value: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(ARCH_LABEL.to_string(), value.to_string())])
}

#[test]
fn an_arm64_workload_is_never_placed_on_an_amd64_provider() {
    let candidates = vec![
        with("amd", |c| c.labels = arch("amd64")),
        // No platform reported: matches no explicit request.
        provider("unknown"),
    ];
    for (selector, node_selector) in [
        (None, arch("arm64")),
        (
            Some(LabelSelector {
                match_labels: arch("arm64"),
                ..Default::default()
            }),
            BTreeMap::new(),
        ),
    ] {
        let got = place_replicas(
            &candidates,
            &PlacementRequest {
                count: 1,
                per_replica: small(),
                spread: Spread::Preferred,
                selector: selector.as_ref(),
                node_selector: &node_selector,
            },
        );
        assert_eq!(got.chosen, Vec::<String>::new());
        assert_eq!(
            got.shortage.expect("shortage").message(0, 1),
            "0/1 replicas placed: 1 needs a provider; no Ready provider matches; \
             2 Ready providers are not kubernetes.io/arch=arm64"
        );
    }
    let mut candidates = candidates;
    candidates.push(with("arm", |c| c.labels = arch("arm64")));
    let got = place_replicas(
        &candidates,
        &PlacementRequest {
            count: 2,
            per_replica: small(),
            spread: Spread::Preferred,
            selector: None,
            node_selector: &arch("arm64"),
        },
    );
    assert_eq!(got.chosen, ["arm", "arm"]);
}

#[test]
fn other_node_selector_keys_match_provider_labels() {
    let candidates = vec![
        with("a", |c| c.labels = region("us-east")),
        with("b", |c| c.labels = region("eu-west")),
    ];
    let got = place_replicas(
        &candidates,
        &PlacementRequest {
            count: 1,
            per_replica: small(),
            spread: Spread::Required,
            selector: None,
            node_selector: &region("eu-west"),
        },
    );
    assert_eq!(got.chosen, ["b"]);
}

#[test]
fn prefers_providers_that_stay_available_longer() {
    let candidates = vec![
        with("closes-soon", |c| c.available_until = Some(1_000)),
        with("closes-later", |c| c.available_until = Some(2_000)),
        provider("no-schedule"),
    ];
    let request = PlacementRequest {
        count: 3,
        per_replica: small(),
        spread: Spread::Required,
        selector: None,
        node_selector: &BTreeMap::new(),
    };
    let p = place_replicas(&candidates, &request);
    assert_eq!(p.chosen, ["no-schedule", "closes-later", "closes-soon"]);
}
