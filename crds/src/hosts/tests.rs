use super::*;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

const BASE: &str = "decloud.localhost";

fn wl(ns: &str, name: &str, host: Option<&str>, created: &str) -> Workload {
    let mut wl: Workload = serde_json::from_value(serde_json::json!({
        "apiVersion": "decloud.dev/v1alpha1", "kind": "Workload",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"template": {"spec": {"containers": [
            {"name": "web", "image": "x", "ports": [{"containerPort": 80}]}]}},
            "expose": {"port": 80}}
    }))
    .expect("valid workload");
    wl.spec.expose.as_mut().expect("expose").host = host.map(Into::into);
    wl.metadata.creation_timestamp = Some(Time(created.parse().expect("timestamp")));
    wl
}

fn grants(ns: &str) -> Option<String> {
    match ns {
        "team-a" | "team-b" => Some("shop.example.org, *.example.net".into()),
        _ => None,
    }
}

fn owner(wls: &[Workload], host: &str) -> Option<String> {
    host_owner(wls, host, BASE, &grants)
        .map(|r| format!("{}/{}", r.namespace.unwrap_or_default(), r.name))
}

#[test]
fn the_oldest_claimant_owns_a_host_and_ties_go_by_namespace_then_name() {
    let a = wl(
        "team-a",
        "shop",
        Some("shop.example.org"),
        "2026-01-02T00:00:00Z",
    );
    let b = wl(
        "team-b",
        "shop",
        Some("shop.example.org"),
        "2026-01-01T00:00:00Z",
    );
    assert_eq!(
        owner(&[a.clone(), b.clone()], "shop.example.org").as_deref(),
        Some("team-b/shop")
    );
    let b_same_time = wl(
        "team-b",
        "shop",
        Some("shop.example.org"),
        "2026-01-02T00:00:00Z",
    );
    assert_eq!(
        owner(&[b_same_time.clone(), a.clone()], "shop.example.org").as_deref(),
        Some("team-a/shop"),
        "tie: namespace first"
    );
    let a2 = wl(
        "team-a",
        "aaa",
        Some("shop.example.org"),
        "2026-01-02T00:00:00Z",
    );
    assert_eq!(
        owner(&[a.clone(), a2.clone()], "shop.example.org").as_deref(),
        Some("team-a/aaa"),
        "then name"
    );
    assert_eq!(
        host_claim(&a, [&a, &b], BASE, &grants),
        HostClaim::Conflict {
            host: "shop.example.org".into(),
            owner: ObjectRef::new("shop").within("team-b")
        }
    );
    assert_eq!(
        host_claim(&b, [&a, &b], BASE, &grants),
        HostClaim::Owner("shop.example.org".into())
    );
}

#[test]
fn when_the_owner_goes_the_next_claimant_takes_over() {
    let a = wl(
        "team-a",
        "shop",
        Some("shop.example.org"),
        "2026-01-01T00:00:00Z",
    );
    let b = wl(
        "team-b",
        "shop",
        Some("shop.example.org"),
        "2026-01-02T00:00:00Z",
    );
    assert_eq!(
        owner(&[a.clone(), b.clone()], "shop.example.org").as_deref(),
        Some("team-a/shop")
    );
    // Being deleted: it claims nothing any more.
    let mut deleting = a.clone();
    deleting.metadata.deletion_timestamp = Some(Time("2026-01-03T00:00:00Z".parse().expect("ts")));
    assert_eq!(
        owner(&[deleting.clone(), b.clone()], "shop.example.org").as_deref(),
        Some("team-b/shop")
    );
    assert_eq!(
        host_claim(&b, [&deleting, &b], BASE, &grants),
        HostClaim::Owner("shop.example.org".into())
    );
    assert_eq!(
        host_claim(&deleting, [&deleting, &b], BASE, &grants),
        HostClaim::None
    );
    // Gone from the cache.
    assert_eq!(
        owner(std::slice::from_ref(&b), "shop.example.org").as_deref(),
        Some("team-b/shop")
    );
    // A Workload that stops exposing frees the host too.
    let mut unexposed = a.clone();
    unexposed.spec.expose = None;
    assert_eq!(
        owner(&[unexposed, b], "shop.example.org").as_deref(),
        Some("team-b/shop")
    );
}

#[test]
fn an_older_claimant_that_may_not_serve_the_host_blocks_nobody() {
    let squatter = wl(
        "team-c",
        "shop",
        Some("shop.example.org"),
        "2020-01-01T00:00:00Z",
    );
    let b = wl(
        "team-b",
        "shop",
        Some("shop.example.org"),
        "2026-01-02T00:00:00Z",
    );
    assert_eq!(
        owner(&[squatter.clone(), b.clone()], "shop.example.org").as_deref(),
        Some("team-b/shop")
    );
    assert!(matches!(
        host_claim(&squatter, [&squatter, &b], BASE, &grants),
        HostClaim::NotAllowed(..)
    ));
    let other_zone = wl(
        "team-a",
        "x",
        Some("x.team-b.decloud.localhost"),
        "2020-01-01T00:00:00Z",
    );
    let own = wl("team-b", "x", None, "2026-01-01T00:00:00Z");
    assert_eq!(
        owner(&[other_zone, own], "x.team-b.decloud.localhost").as_deref(),
        Some("team-b/x")
    );
}

#[test]
fn wildcards_match_exactly_one_label() {
    assert!(pattern_matches("*.example.net", "a.example.net"));
    assert!(pattern_matches(" *.Example.NET ", "a.example.net"));
    assert!(!pattern_matches("*.example.net", "a.b.example.net"));
    assert!(!pattern_matches("*.example.net", "example.net"));
    assert!(!pattern_matches("*.example.net", "aexample.net"));
    assert!(!pattern_matches("*.example.net", ".example.net"));
    assert!(pattern_matches("shop.example.org", "shop.example.org"));
    assert!(!pattern_matches("shop.example.org", "a.shop.example.org"));
    assert!(!pattern_matches("", "shop.example.org"));
}

#[test]
fn under_the_base_domain_a_namespace_has_only_its_own_zone() {
    assert_eq!(admit_host("x.a.decloud.localhost", "a", BASE, None), Ok(()));
    assert_eq!(
        admit_host("y.x.a.decloud.localhost", "a", BASE, None),
        Ok(())
    );
    for host in [
        "x.b.decloud.localhost",
        "a.decloud.localhost",
        "decloud.localhost",
        "x.a.b.decloud.localhost",
        "xa.decloud.localhost",
    ] {
        assert!(admit_host(host, "a", BASE, None).is_err(), "{host}");
    }
    // A grant does not reach into the base domain.
    assert!(
        admit_host(
            "x.b.decloud.localhost",
            "a",
            BASE,
            Some("*.b.decloud.localhost")
        )
        .is_err()
    );
    // The default host is always allowed.
    let default = wl("a", "web", None, "2026-01-01T00:00:00Z");
    assert_eq!(
        host_claim(&default, [&default], BASE, &|_| None),
        HostClaim::Owner("web.a.decloud.localhost".into())
    );
}

#[test]
fn custom_hosts_need_a_grant() {
    assert_eq!(
        admit_host("shop.example.org", "a", BASE, Some("shop.example.org")),
        Ok(())
    );
    assert_eq!(
        admit_host(
            "x.example.net",
            "a",
            BASE,
            Some("shop.example.org,*.example.net")
        ),
        Ok(())
    );
    assert!(admit_host("shop.example.org", "a", BASE, None).is_err());
    assert!(admit_host("shop.example.org", "a", BASE, Some("")).is_err());
    assert!(admit_host("evil.example.org", "a", BASE, Some("shop.example.org")).is_err());
    assert!(admit_host("a.b.example.net", "a", BASE, Some("*.example.net")).is_err());
}

#[test]
fn hosts_are_validated() {
    assert!(is_valid_host("a-b.c0.example"));
    for bad in [
        "",
        "A.example",
        "-a.example",
        "a-.example",
        "a..b",
        "a.",
        "a_b.c",
        &"a".repeat(64),
        &"a.".repeat(127),
    ] {
        assert!(!is_valid_host(bad), "{bad:?}");
    }
    assert!(is_valid_host(&format!(
        "{}.{}",
        "a".repeat(63),
        "b".repeat(63)
    )));
}
