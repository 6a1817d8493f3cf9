//! Certificates over ACME (RFC 8555) for Workloads that name no Secret, with HTTP-01 answered
//! by the gateway itself.
//!
//! One certificate per host (one DNS name each), kept in a `kubernetes.io/tls` Secret
//! `decloud-acme-<sha256(host)>` in the operator's namespace, labelled [`ACME_LABEL`] and
//! annotated with its host, where tenants cannot touch it and every gateway replica (and the
//! next leader) finds it. The Secret also carries the issuance state every replica shares:
//!
//! - a lock ([`ACME_LOCK_ANNOTATION`], `<holder> <expiry>`) taken by an optimistic-concurrency
//!   write before an order starts: only its holder orders for the host until it clears it or
//!   it expires, the others serve what the Secret holds;
//! - failures in a row, the time before which no new order starts (exponential backoff from
//!   [`BACKOFF_BASE`] up to [`BACKOFF_MAX`]) and the ACME server's last error, for status.
//!
//! A certificate is renewed once two thirds of its lifetime have passed and served meanwhile.
//! What a tenant can make the gateway do is bounded: hosts are ordered only when their
//! Workload owns them by the routing rules (`decloud_crds::hosts`: granted custom hosts), one
//! host per certificate, at most [`AcmeConfig::orders_per_namespace_hour`] orders a namespace
//! in any hour, at most [`AcmeConfig::concurrent_orders`] orders at once, each within
//! [`ORDER_TIMEOUT`], and failed hosts back off.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use bytes::Bytes;
use decloud_crds::contracts::{
    ACME_ERROR_ANNOTATION, ACME_FAILURES_ANNOTATION, ACME_HOST_ANNOTATION, ACME_LABEL,
    ACME_LABEL_VALUE, ACME_LOCK_ANNOTATION, ACME_RETRY_AFTER_ANNOTATION,
};
use hyper_util::{client::legacy::Client as HyperClient, rt::TokioExecutor};
use instant_acme::{
    Account, AuthorizationStatus, BodyWrapper, BytesResponse, ChallengeType, HttpClient,
    Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{
    Api,
    api::{ObjectMeta, PostParams},
};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::problem::CertificateProblem;

/// Longest an order (account, challenge, finalize, download) may take.
pub const ORDER_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a lock outlives the order it guards (a crashed holder frees the host after this).
const LOCK_SLACK: Duration = Duration::from_secs(60);
/// First wait after a failed order; doubled per failure in a row.
pub const BACKOFF_BASE: Duration = Duration::from_secs(30);
/// Longest wait between failed orders.
pub const BACKOFF_MAX: Duration = Duration::from_secs(6 * 3600);
/// Longest ACME error kept for status (bytes).
const MAX_ERROR: usize = 1024;
/// Largest certificate chain accepted from the ACME server (PEM bytes).
const MAX_CHAIN_PEM: usize = 64 * 1024;
/// Challenge answers one gateway holds at once.
pub const MAX_CHALLENGES: usize = 1024;

/// Where the gateway answers HTTP-01 challenges (`/.well-known/acme-challenge/<token>` on
/// plain HTTP): the gateway's challenge table.
pub trait Http01Responder: Send + Sync {
    /// Answers `token` for `host` with `key_authorization` until withdrawn; false if the table
    /// is full.
    fn publish(&self, host: &str, token: &str, key_authorization: &str) -> bool;
    /// Stops answering `token`.
    fn withdraw(&self, token: &str);
}

/// Settings of the ACME issuer (all off unless the operator is given a directory).
#[derive(Clone, Debug)]
pub struct AcmeConfig {
    /// The ACME server's directory URL.
    pub directory: String,
    /// Account contacts (`mailto:` URIs).
    pub contact: Vec<String>,
    /// PEM roots to trust for the ACME server's own HTTPS, in place of the built-in ones
    /// (`None`: the Mozilla roots are not shipped, so a bundle is needed for any server).
    pub ca_bundle: Option<Vec<u8>>,
    /// Namespace of the certificate Secrets (the operator's).
    pub namespace: String,
    /// This replica's name in locks.
    pub identity: String,
    /// Order for hosts under the base domain too (default: granted custom hosts only; the
    /// base domain is better served by one wildcard certificate the platform supplies).
    pub base_domain_hosts: bool,
    /// Orders one namespace may start in any hour.
    pub orders_per_namespace_hour: usize,
    /// Orders running at once on this replica.
    pub concurrent_orders: usize,
}

/// What the ACME side says of a host's certificate.
#[derive(Debug)]
pub(crate) enum AcmeVerdict {
    /// Serve this Secret (the certificate may be being renewed meanwhile).
    Serve(Box<Secret>),
    /// No certificate to serve: why, for `CertificateReady`.
    Problem(CertificateProblem),
}

/// The ACME issuer: orders, renews and stores certificates.
pub struct Acme {
    config: AcmeConfig,
    client: kube::Client,
    responder: Arc<dyn Http01Responder>,
    http: Arc<dyn Fn() -> Box<dyn HttpClient> + Send + Sync>,
    account: tokio::sync::Mutex<Option<Account>>,
    slots: Arc<tokio::sync::Semaphore>,
    /// Orders started per namespace, for the hourly bound.
    started: Mutex<HashMap<String, VecDeque<Instant>>>,
    /// Hosts this replica orders for now.
    ordering: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for Acme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acme")
            .field("directory", &self.config.directory)
            .finish()
    }
}

/// The Secret holding `host`'s ACME certificate.
pub fn secret_name(host: &str) -> String {
    let digest = Sha256::digest(host.as_bytes());
    let hex: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
    format!("decloud-acme-{hex}")
}

fn unix_now() -> i64 {
    k8s_openapi::jiff::Timestamp::now().as_second()
}

fn rfc3339(unix: i64) -> String {
    k8s_openapi::jiff::Timestamp::from_second(unix)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| unix.to_string())
}

/// The wait after `failures` failed orders in a row.
pub fn backoff(failures: u32) -> Duration {
    let factor = 1u64 << failures.saturating_sub(1).min(20);
    BACKOFF_BASE
        .saturating_mul(u32::try_from(factor).unwrap_or(u32::MAX))
        .min(BACKOFF_MAX)
}

/// The ACME state a Secret records.
#[derive(Debug, Default, PartialEq, Eq)]
struct Recorded {
    /// The leaf's validity (Unix seconds), if the Secret holds a certificate for the host.
    validity: Option<(i64, i64)>,
    lock: Option<(String, i64)>,
    failures: u32,
    retry_after: i64,
    error: Option<String>,
}

fn annotation<'a>(secret: &'a Secret, key: &str) -> Option<&'a str> {
    secret
        .metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

impl Recorded {
    fn of(secret: &Secret, host: &str) -> Self {
        let lock = annotation(secret, ACME_LOCK_ANNOTATION).and_then(|l| {
            let (holder, expiry) = l.rsplit_once(' ')?;
            Some((holder.to_string(), expiry.parse().ok()?))
        });
        let ours = annotation(secret, ACME_HOST_ANNOTATION) == Some(host);
        Self {
            validity: ours.then(|| leaf_validity(secret)).flatten(),
            lock,
            failures: annotation(secret, ACME_FAILURES_ANNOTATION)
                .and_then(|f| f.parse().ok())
                .unwrap_or(0),
            retry_after: annotation(secret, ACME_RETRY_AFTER_ANNOTATION)
                .and_then(|f| f.parse().ok())
                .unwrap_or(0),
            error: annotation(secret, ACME_ERROR_ANNOTATION).map(str::to_string),
        }
    }
}

/// `notBefore` and `notAfter` of the first certificate of the Secret's `tls.crt`.
fn leaf_validity(secret: &Secret) -> Option<(i64, i64)> {
    let crt = secret.data.as_ref()?.get("tls.crt")?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&crt.0).ok()?;
    let cert = pem.parse_x509().ok()?;
    let v = cert.validity();
    Some((v.not_before.timestamp(), v.not_after.timestamp()))
}

/// When a certificate valid from `not_before` to `not_after` is renewed: at two thirds of its
/// lifetime.
pub fn renew_at(not_before: i64, not_after: i64) -> i64 {
    not_before + (not_after - not_before).max(0) * 2 / 3
}

fn problem(reason: &str, message: String) -> CertificateProblem {
    CertificateProblem {
        reason: reason.into(),
        message,
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

impl Acme {
    /// An issuer on `config`, storing Secrets with `client` and answering challenges through
    /// `responder`. Fails if the CA bundle holds no usable certificate.
    pub fn new(
        config: AcmeConfig,
        client: kube::Client,
        responder: Arc<dyn Http01Responder>,
    ) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        if let Some(pem) = &config.ca_bundle {
            use rustls_pki_types::{CertificateDer, pem::PemObject};
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| format!("the ACME CA bundle is not PEM: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("the ACME CA bundle holds an unusable root: {e}"))?;
            }
        }
        if roots.is_empty() {
            return Err("the ACME CA bundle holds no certificate (give --acme-ca-bundle)".into());
        }
        let roots = Arc::new(roots);
        let http = Arc::new(move || -> Box<dyn HttpClient> {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let tls = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("ring supports the default protocol versions")
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
            let connector = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls)
                .https_only()
                .enable_http1()
                .enable_http2()
                .build();
            Box::new(AcmeHttp(
                HyperClient::builder(TokioExecutor::new()).build(connector),
            ))
        });
        Ok(Self {
            slots: Arc::new(tokio::sync::Semaphore::new(config.concurrent_orders.max(1))),
            config,
            client,
            responder,
            http,
            account: tokio::sync::Mutex::new(None),
            started: Mutex::default(),
            ordering: Mutex::default(),
        })
    }

    /// Whether the issuer orders for `host` (its Workload names no Secret).
    pub(crate) fn covers(&self, host: &str, base_domain: &str) -> bool {
        let base = base_domain.trim_end_matches('.');
        let under_base = host == base || host.ends_with(&format!(".{base}"));
        self.config.base_domain_hosts || !under_base
    }

    /// The certificate verdict for `host`, which a Workload of `namespace` owns: the stored
    /// certificate, or why there is none yet. Starts an order (in the background) when one is
    /// due and allowed.
    pub(crate) async fn certificate(
        self: &Arc<Self>,
        namespace: &str,
        host: &str,
    ) -> kube::Result<AcmeVerdict> {
        let api = Api::<Secret>::namespaced(self.client.clone(), &self.config.namespace);
        let name = secret_name(host);
        let existing = api.get_opt(&name).await?;
        let now = unix_now();
        let recorded = existing
            .as_ref()
            .map(|s| Recorded::of(s, host))
            .unwrap_or_default();
        let serving = existing.clone().filter(|_| {
            recorded
                .validity
                .is_some_and(|(nb, na)| nb <= now && now < na)
        });
        let or_serve = |p: CertificateProblem| match &serving {
            Some(s) => AcmeVerdict::Serve(Box::new(s.clone())),
            None => AcmeVerdict::Problem(p),
        };
        if let Some((nb, na)) = recorded.validity
            && now < renew_at(nb, na)
            && serving.is_some()
        {
            return Ok(AcmeVerdict::Serve(Box::new(existing.unwrap_or_default())));
        }
        let ours = self.locked_here(host);
        // A lock under this replica's name that it does not hold is a previous run's (same
        // identity after a restart): taken over at once rather than waited out.
        if let Some((holder, expiry)) = &recorded.lock
            && (ours || (*expiry > now && holder != &self.config.identity))
        {
            let by = if holder == &self.config.identity {
                "this gateway".to_string()
            } else {
                format!("gateway replica {holder}")
            };
            return Ok(or_serve(problem(
                "AcmePending",
                format!("a certificate for {host} is being ordered from the ACME server ({by})"),
            )));
        }
        if recorded.retry_after > now {
            let error = recorded.error.clone().unwrap_or_default();
            let reason = if error.contains("rateLimited") {
                "AcmeRateLimited"
            } else {
                "AcmeOrderFailed"
            };
            return Ok(or_serve(problem(
                reason,
                format!(
                    "ordering a certificate for {host} failed {} time(s) in a row: {error}; next attempt at {}",
                    recorded.failures,
                    rfc3339(recorded.retry_after)
                ),
            )));
        }
        if let Some(recent) = self.over_budget(namespace) {
            return Ok(or_serve(problem(
                "AcmeRateLimited",
                format!(
                    "namespace {namespace} started {recent} certificate orders in the last hour, \
                     the most allowed; the order for {host} waits"
                ),
            )));
        }
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            return Ok(or_serve(problem(
                "AcmePending",
                format!(
                    "the order for {host} waits for one of the gateway's {} order slots",
                    self.config.concurrent_orders
                ),
            )));
        };
        if !self.lock(&api, &name, host, existing).await? {
            return Ok(or_serve(problem(
                "AcmePending",
                format!("another gateway replica is ordering a certificate for {host}"),
            )));
        }
        self.count_order(namespace);
        let this = self.clone();
        let ordered = host.to_string();
        info!(%host, %namespace, "ordering a certificate over ACME");
        tokio::spawn(async move {
            let host = ordered;
            let _slot = slot;
            let result = match tokio::time::timeout(ORDER_TIMEOUT, this.order(&host)).await {
                Ok(r) => r,
                Err(_) => Err(format!(
                    "the order did not complete within {}s",
                    ORDER_TIMEOUT.as_secs()
                )),
            };
            if let Err(e) = &result {
                warn!(%host, error = %e, "ACME order failed");
            } else {
                info!(%host, "ACME certificate issued");
            }
            if let Err(e) = this.record(&host, result).await {
                warn!(%host, error = %e, "could not store the ACME result");
            }
            this.ordering
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&host);
        });
        Ok(or_serve(problem(
            "AcmePending",
            format!("a certificate for {host} is being ordered from the ACME server"),
        )))
    }

    fn locked_here(&self, host: &str) -> bool {
        self.ordering
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(host)
    }

    /// Orders `namespace` started in the last hour, if that is the most allowed.
    fn over_budget(&self, namespace: &str) -> Option<usize> {
        let mut started = self.started.lock().unwrap_or_else(PoisonError::into_inner);
        let q = started.entry(namespace.to_string()).or_default();
        while q
            .front()
            .is_some_and(|t| t.elapsed() > Duration::from_secs(3600))
        {
            q.pop_front();
        }
        let n = q.len();
        (n >= self.config.orders_per_namespace_hour).then_some(n)
    }

    fn count_order(&self, namespace: &str) {
        let mut started = self.started.lock().unwrap_or_else(PoisonError::into_inner);
        // Bounded by the namespaces that own hosts; emptied queues go.
        started.retain(|_, q| !q.is_empty());
        started
            .entry(namespace.to_string())
            .or_default()
            .push_back(Instant::now());
    }

    /// Takes the host's lock by a conditional write (create, or replace at the read
    /// resourceVersion); false if another replica wrote first.
    async fn lock(
        &self,
        api: &Api<Secret>,
        name: &str,
        host: &str,
        existing: Option<Secret>,
    ) -> kube::Result<bool> {
        let expiry = unix_now() + (ORDER_TIMEOUT + LOCK_SLACK).as_secs() as i64;
        let lock = format!("{} {expiry}", self.config.identity);
        let result = match existing {
            Some(mut s) => {
                let ann = s.metadata.annotations.get_or_insert_with(BTreeMap::new);
                ann.insert(ACME_LOCK_ANNOTATION.into(), lock);
                ann.insert(ACME_HOST_ANNOTATION.into(), host.into());
                api.replace(name, &PostParams::default(), &s).await
            }
            None => {
                let secret = Secret {
                    metadata: ObjectMeta {
                        name: Some(name.into()),
                        namespace: Some(self.config.namespace.clone()),
                        labels: Some(BTreeMap::from([(
                            ACME_LABEL.into(),
                            ACME_LABEL_VALUE.into(),
                        )])),
                        annotations: Some(BTreeMap::from([
                            (ACME_HOST_ANNOTATION.into(), host.into()),
                            (ACME_LOCK_ANNOTATION.into(), lock),
                        ])),
                        ..Default::default()
                    },
                    type_: Some("kubernetes.io/tls".into()),
                    data: Some(BTreeMap::from([
                        ("tls.crt".into(), ByteString(Vec::new())),
                        ("tls.key".into(), ByteString(Vec::new())),
                    ])),
                    ..Default::default()
                };
                api.create(&PostParams::default(), &secret).await
            }
        };
        match result {
            Ok(_) => {
                self.ordering
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(host.to_string());
                Ok(true)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Stores an order's outcome on the host's Secret and clears the lock.
    async fn record(
        &self,
        host: &str,
        result: Result<(String, String), String>,
    ) -> kube::Result<()> {
        let api = Api::<Secret>::namespaced(self.client.clone(), &self.config.namespace);
        let name = secret_name(host);
        for _ in 0..5 {
            let Some(mut s) = api.get_opt(&name).await? else {
                return Ok(());
            };
            let failures = Recorded::of(&s, host).failures;
            let ann = s.metadata.annotations.get_or_insert_with(BTreeMap::new);
            ann.remove(ACME_LOCK_ANNOTATION);
            match &result {
                Ok((chain, key)) => {
                    ann.remove(ACME_FAILURES_ANNOTATION);
                    ann.remove(ACME_RETRY_AFTER_ANNOTATION);
                    ann.remove(ACME_ERROR_ANNOTATION);
                    s.data = Some(BTreeMap::from([
                        ("tls.crt".into(), ByteString(chain.clone().into_bytes())),
                        ("tls.key".into(), ByteString(key.clone().into_bytes())),
                    ]));
                }
                Err(e) => {
                    let failures = failures.saturating_add(1);
                    let retry = unix_now() + backoff(failures).as_secs() as i64;
                    ann.insert(ACME_FAILURES_ANNOTATION.into(), failures.to_string());
                    ann.insert(ACME_RETRY_AFTER_ANNOTATION.into(), retry.to_string());
                    ann.insert(ACME_ERROR_ANNOTATION.into(), truncate(e.clone(), MAX_ERROR));
                }
            }
            match api.replace(&name, &PostParams::default(), &s).await {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(e)) if e.code == 409 => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The ACME account, created on first use.
    async fn account(&self) -> Result<Account, instant_acme::Error> {
        let mut account = self.account.lock().await;
        if let Some(a) = account.as_ref() {
            return Ok(a.clone());
        }
        let contact: Vec<&str> = self.config.contact.iter().map(String::as_str).collect();
        let (a, _credentials) = Account::builder_with_http((self.http)())
            .create(
                &NewAccount {
                    contact: &contact,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                self.config.directory.clone(),
                None,
            )
            .await?;
        *account = Some(a.clone());
        Ok(a)
    }

    /// One order for `host`: the certificate chain and its key, both PEM.
    async fn order(&self, host: &str) -> Result<(String, String), String> {
        let acme_err = |what: &str, e: instant_acme::Error| format!("{what}: {e}");
        let account = self
            .account()
            .await
            .map_err(|e| acme_err("ACME account", e))?;
        let identifiers = [Identifier::Dns(host.to_string())];
        let mut order = account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .map_err(|e| acme_err("new order", e))?;
        let mut tokens = Vec::new();
        let answered = async {
            let mut auths = order.authorizations();
            while let Some(auth) = auths.next().await {
                let mut auth = auth.map_err(|e| acme_err("authorization", e))?;
                match auth.status {
                    AuthorizationStatus::Valid => continue,
                    AuthorizationStatus::Pending => {}
                    other => return Err(format!("authorization is {other:?}")),
                }
                let mut challenge = auth
                    .challenge(ChallengeType::Http01)
                    .ok_or("the ACME server offers no http-01 challenge")?;
                let key_auth = challenge.key_authorization();
                if !self
                    .responder
                    .publish(host, &challenge.token, key_auth.as_str())
                {
                    return Err("the gateway's challenge table is full".to_string());
                }
                tokens.push(challenge.token.clone());
                challenge
                    .set_ready()
                    .await
                    .map_err(|e| acme_err("challenge", e))?;
            }
            Ok::<(), String>(())
        }
        .await;
        let ready = match answered {
            Ok(()) => order
                .poll_ready(
                    &RetryPolicy::new()
                        .initial_delay(Duration::from_millis(250))
                        .timeout(Duration::from_secs(90)),
                )
                .await
                .map_err(|e| acme_err("validation", e)),
            Err(e) => Err(e),
        };
        for token in &tokens {
            self.responder.withdraw(token);
        }
        match ready? {
            OrderStatus::Ready => {}
            status => {
                // Say why: the failed challenge's problem, as the ACME server put it.
                let mut why = format!("the order became {status:?}");
                let mut auths = order.authorizations();
                while let Some(Ok(auth)) = auths.next().await {
                    for c in &auth.challenges {
                        if let Some(p) = &c.error {
                            why = format!("{why}: {p}");
                        }
                    }
                }
                return Err(why);
            }
        }
        let key = order
            .finalize()
            .await
            .map_err(|e| acme_err("finalize", e))?;
        let chain = order
            .poll_certificate(&RetryPolicy::new().timeout(Duration::from_secs(60)))
            .await
            .map_err(|e| acme_err("certificate", e))?;
        if chain.len() > MAX_CHAIN_PEM {
            return Err(format!(
                "the ACME server sent a {}-byte chain; at most {MAX_CHAIN_PEM} are accepted",
                chain.len()
            ));
        }
        Ok((chain, key))
    }
}

/// instant-acme's HTTP client: hyper over rustls with the configured roots.
struct AcmeHttp(
    HyperClient<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        BodyWrapper<Bytes>,
    >,
);

impl HttpClient for AcmeHttp {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let fut = self.0.request(req);
        Box::pin(async move {
            match fut.await {
                Ok(rsp) => Ok(BytesResponse::from(rsp)),
                Err(e) => Err(instant_acme::Error::Other(Box::new(e))),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        assert_eq!(backoff(1), BACKOFF_BASE);
        assert_eq!(backoff(2), BACKOFF_BASE * 2);
        assert_eq!(backoff(3), BACKOFF_BASE * 4);
        assert_eq!(backoff(60), BACKOFF_MAX);
    }

    #[test]
    fn renewal_is_due_at_two_thirds_of_the_lifetime() {
        assert_eq!(renew_at(0, 90), 60);
        assert_eq!(renew_at(100, 100), 100);
    }

    #[test]
    fn secret_names_are_short_and_per_host() {
        let long = format!("{}.example.net", "a".repeat(63));
        assert!(secret_name(&long).len() <= 63);
        assert_ne!(secret_name("a.example.net"), secret_name("b.example.net"));
    }

    #[test]
    fn recorded_state_reads_the_lock_and_backoff() {
        let mut s = Secret::default();
        s.metadata.annotations = Some(BTreeMap::from([
            (ACME_HOST_ANNOTATION.into(), "a.example.net".into()),
            (ACME_LOCK_ANNOTATION.into(), "op-1 1700".into()),
            (ACME_FAILURES_ANNOTATION.into(), "3".into()),
            (ACME_RETRY_AFTER_ANNOTATION.into(), "1800".into()),
        ]));
        let r = Recorded::of(&s, "a.example.net");
        assert_eq!(r.lock, Some(("op-1".into(), 1700)));
        assert_eq!((r.failures, r.retry_after), (3, 1800));
        assert_eq!(r.validity, None);
    }

    #[test]
    fn long_errors_are_cut() {
        let e = truncate("é".repeat(2000), MAX_ERROR);
        assert!(e.len() <= MAX_ERROR + '…'.len_utf8());
    }
}
