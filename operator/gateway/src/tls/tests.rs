use super::*;
use crate::routes::tests::{pod, routes, workload};
use k8s_openapi::ByteString;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

/// A CA, and leaves it signs.
pub(crate) struct TestCa {
    pub(crate) pem: String,
    params: CertificateParams,
    key: KeyPair,
}

impl TestCa {
    pub(crate) fn new() -> Self {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let pem = params.self_signed(&key).expect("ca").pem();
        Self { pem, params, key }
    }

    /// `(tls.crt, tls.key)` of a leaf for `names`, valid from `from` to `until` (years).
    pub(crate) fn leaf(&self, names: &[&str], from: i32, until: i32) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("params");
        p.not_before = rcgen::date_time_ymd(from, 1, 1);
        p.not_after = rcgen::date_time_ymd(until, 1, 1);
        let cert = p
            .signed_by(&key, &Issuer::from_params(&self.params, &self.key))
            .expect("leaf");
        (format!("{}{}", cert.pem(), self.pem), key.serialize_pem())
    }
}

pub(crate) fn secret(kind: &str, crt: &str, key: &str) -> Secret {
    let mut s = Secret {
        type_: Some(kind.into()),
        ..Default::default()
    };
    s.data = Some(
        [
            ("tls.crt".to_string(), ByteString(crt.as_bytes().to_vec())),
            ("tls.key".to_string(), ByteString(key.as_bytes().to_vec())),
        ]
        .into(),
    );
    s
}

/// 2026-06-01, inside the test leaves' usual validity.
const NOW: i64 = 1_780_272_000;

#[test]
fn a_valid_certificate_for_the_host_loads() {
    let ca = TestCa::new();
    let (crt, key) = ca.leaf(&["shop.example.org"], 2025, 2030);
    let c = load_tls_secret(
        &secret(TLS_SECRET_TYPE, &crt, &key),
        "shop.example.org",
        NOW,
    )
    .expect("loads");
    assert_eq!(c.key.cert.len(), 2, "leaf and CA");
    let (crt, key) = ca.leaf(&["*.example.org"], 2025, 2030);
    load_tls_secret(
        &secret(TLS_SECRET_TYPE, &crt, &key),
        "Shop.example.org",
        NOW,
    )
    .expect("a wildcard covers one label");
}

#[test]
fn a_certificate_not_naming_the_host_is_refused() {
    let ca = TestCa::new();
    for (names, host) in [
        (&["other.example.org"][..], "shop.example.org"),
        (&["*.example.org"][..], "a.shop.example.org"),
        (&["*.example.org"][..], "example.org"),
        (&[][..], "shop.example.org"),
    ] {
        let (crt, key) = ca.leaf(names, 2025, 2030);
        let e = load_tls_secret(&secret(TLS_SECRET_TYPE, &crt, &key), host, NOW)
            .expect_err("not covered");
        assert_eq!(e.reason(), "HostNotCovered", "{names:?} {host}: {e}");
    }
}

#[test]
fn expired_and_future_certificates_are_refused() {
    let ca = TestCa::new();
    let (crt, key) = ca.leaf(&["shop.example.org"], 2020, 2022);
    let e = load_tls_secret(
        &secret(TLS_SECRET_TYPE, &crt, &key),
        "shop.example.org",
        NOW,
    )
    .expect_err("expired");
    assert_eq!(e.reason(), "Expired", "{e}");
    assert!(e.to_string().contains("2022-01-01"), "{e}");
    let (crt, key) = ca.leaf(&["shop.example.org"], 2029, 2030);
    let e = load_tls_secret(
        &secret(TLS_SECRET_TYPE, &crt, &key),
        "shop.example.org",
        NOW,
    )
    .expect_err("not yet");
    assert_eq!(e.reason(), "NotYetValid", "{e}");
}

#[test]
fn hostile_or_broken_secrets_are_invalid() {
    let ca = TestCa::new();
    let (crt, key) = ca.leaf(&["shop.example.org"], 2025, 2030);
    let (_, other_key) = ca.leaf(&["shop.example.org"], 2025, 2030);
    let huge = format!("{crt}{}", "x".repeat(MAX_PEM_BYTES));
    let long_chain = crt.repeat(MAX_CHAIN);
    let garbage = "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n";
    let cases = [
        (secret("Opaque", &crt, &key), "type Opaque"),
        (secret(TLS_SECRET_TYPE, &huge, &key), "at most 65536"),
        (secret(TLS_SECRET_TYPE, &long_chain, &key), "more than 8"),
        (secret(TLS_SECRET_TYPE, garbage, &key), "not valid PEM"),
        (secret(TLS_SECRET_TYPE, "", &key), "no tls.crt"),
        (
            secret(TLS_SECRET_TYPE, &crt, "nonsense"),
            "no usable private key",
        ),
        (secret(TLS_SECRET_TYPE, &crt, &other_key), "does not belong"),
        (Secret::default(), "not kubernetes.io/tls"),
    ];
    for (s, want) in cases {
        let e = load_tls_secret(&s, "shop.example.org", NOW).expect_err(want);
        assert_eq!(e.reason(), "InvalidCertificate", "{e}");
        assert!(e.to_string().contains(want), "{e} lacks {want:?}");
    }
}

fn loaded(ca: &TestCa, host: &str) -> LoadedCert {
    let (crt, key) = ca.leaf(&[host], 2025, 2100);
    load_tls_secret(&secret(TLS_SECRET_TYPE, &crt, &key), host, unix_now()).expect("loads")
}

#[test]
fn the_resolver_serves_a_certificate_only_for_the_hosts_owner() {
    let ca = TestCa::new();
    let r = routes(
        vec![
            workload("hello", 8080, None),
            workload("shop", 80, Some("shop.example.org")),
        ],
        vec![pod("hello-a", "hello", "p1", true)],
    );
    let store = CertStore::new();
    let resolver = SniResolver::new(store.clone(), r);
    let hello = "hello.default.decloud.localhost";
    assert!(resolver.certificate_for(hello).is_none(), "empty store");

    store.install("default/hello", hello, loaded(&ca, hello));
    assert!(resolver.certificate_for(hello).is_some());
    // The same certificate installed by a Workload that does not own the host is not served.
    store.install("default/shop", hello, loaded(&ca, hello));
    assert!(
        resolver.certificate_for(hello).is_none(),
        "default/shop does not own {hello}"
    );
    store.install("default/hello", hello, loaded(&ca, hello));
    // Installing another host for the same owner replaces the first.
    store.install(
        "default/hello",
        "x.default.decloud.localhost",
        loaded(&ca, hello),
    );
    assert!(resolver.certificate_for(hello).is_none(), "replaced");
    assert_eq!(store.len(), 1);
    store.remove_owner("default/hello");
    assert!(store.is_empty());
}

#[test]
fn the_resolver_stops_serving_an_expired_certificate() {
    let ca = TestCa::new();
    let host = "hello.default.decloud.localhost";
    let r = routes(vec![workload("hello", 8080, None)], vec![]);
    let store = CertStore::new();
    let resolver = SniResolver::new(store.clone(), r);
    let mut cert = loaded(&ca, host);
    cert.not_after = unix_now() - 1;
    store.install("default/hello", host, cert);
    assert!(resolver.certificate_for(host).is_none());
}
