//! Adapter conformance: the scenarios every adapter (tokio, async-std/smol,
//! blocking) runs unchanged against a real [`Authority`].
//!
//! An adapter's test file implements [`Adapter`] for a small marker type and
//! invokes [`conformance_tests!`](crate::conformance_tests), which expands to one
//! `#[test]` per scenario. Scenarios are plain blocking functions with real time
//! and short-lived tokens; an async adapter's watcher wrapper blocks on its
//! runtime inside each method.
//!
//! Every scenario runs over plain HTTP or, with `https` after the adapter, over
//! HTTPS: the [`Fixture`]'s authority then serves a certificate of
//! [`Pki::shared`] and each [`WatcherSpec`] carries a [`TlsSpec`] trusting its CA
//! (see [`Transport`]). The HTTPS expansion adds the RFC 8705 mutual-TLS
//! scenarios.
//!
//! ```ignore
//! struct Tokio;
//! impl tokenkeeper_testkit::conformance::Adapter for Tokio { /* ... */ }
//! tokenkeeper_testkit::conformance_tests!(tokio: Tokio);
//! tokenkeeper_testkit::conformance_tests!(tokio_https: Tokio, https);
//! ```

use std::cell::Cell;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokenkeeper_core::oauth2::OAuth2Client;
use tokenkeeper_core::{
    BackoffPolicy, Jitter, LifetimePolicy, RefreshNow, RefreshToken, Status, TokenRecord,
};

/// How a scenario wants its watcher built. Adapters map every field onto their
/// builder; none may be ignored.
#[derive(Debug, Clone)]
pub struct WatcherSpec {
    /// The OAuth2 client (its token URL is on loopback: plain `http`, or `https` when
    /// [`WatcherSpec::tls`] is set).
    pub client: OAuth2Client,
    /// The first refresh token, for the refresh-token grant.
    pub initial_refresh_token: Option<RefreshToken>,
    /// A file cache layer at this path (with its cross-process lease), if any.
    pub cache_file: Option<PathBuf>,
    /// Lifetime policy.
    pub policy: LifetimePolicy,
    /// Refresh jitter.
    pub jitter: Jitter,
    /// Error backoff.
    pub backoff: BackoffPolicy,
    /// Minimum interval between forced refreshes.
    pub refresh_now_min_interval: Duration,
    /// Whole-request timeout of the HTTP client.
    pub request_timeout: Duration,
    /// How long `spawn` waits for a first token before giving up.
    pub first_token_timeout: Duration,
    /// What to trust and present over HTTPS; `None` over plain HTTP.
    pub tls: Option<TlsSpec>,
    /// The client's assertion (RFC 7523 §2.2), for a client whose auth method is
    /// `PrivateKeyJwt` (a `ClientSecretJwt` client signs with its secret by itself).
    pub client_assertion: Option<AssertionSpec>,
    /// The JWT bearer grant's assertion (RFC 7523 §2.1), for a `jwt_bearer` client.
    pub grant_assertion: Option<AssertionSpec>,
    /// The file a token exchange's subject token is read from before every request
    /// (RFC 8693), for a `token_exchange` client.
    pub subject_token_file: Option<PathBuf>,
}

/// Where a [`WatcherSpec`]'s assertion comes from. Adapters map it onto theirs (a signed
/// assertion with a key from this PEM, or an assertion file).
#[derive(Clone)]
#[non_exhaustive]
pub enum AssertionSpec {
    /// Signed by the adapter with this PEM private key, naming `kid`, with `alg` (`RS256`,
    /// `PS256`, ... ; `None`: the key's own).
    Signed {
        /// The private key, PEM.
        pem: zeroize::Zeroizing<String>,
        /// The key id of the JWS header.
        kid: Option<String>,
        /// The algorithm, when the key has more than one.
        alg: Option<String>,
    },
    /// Read from this file before every request.
    File(PathBuf),
}

impl std::fmt::Debug for AssertionSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AssertionSpec::Signed { kid, alg, .. } => f
                .debug_struct("AssertionSpec::Signed")
                .field("kid", kid)
                .field("alg", alg)
                .finish_non_exhaustive(),
            AssertionSpec::File(path) => f.debug_tuple("AssertionSpec::File").field(path).finish(),
        }
    }
}

/// The TLS side of a [`WatcherSpec`]: extra roots to trust, and a client certificate to
/// present. Adapters map every field onto their HTTP settings.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct TlsSpec {
    /// A CA to trust, as PEM.
    pub ca_pem: Option<String>,
    /// A PEM file of CAs to trust.
    pub ca_file: Option<PathBuf>,
    /// A client certificate (chain and key) to present, from memory.
    pub client_identity: Option<Identity>,
    /// A client certificate (chain and key) to present, from PEM files.
    pub client_identity_files: Option<IdentityFiles>,
}

impl TlsSpec {
    /// Trusts this CA (PEM).
    pub fn trusting_pem(ca_pem: impl Into<String>) -> TlsSpec {
        TlsSpec {
            ca_pem: Some(ca_pem.into()),
            ..TlsSpec::default()
        }
    }

    /// Trusts the CAs of this PEM file.
    pub fn trusting_file(ca_file: impl Into<PathBuf>) -> TlsSpec {
        TlsSpec {
            ca_file: Some(ca_file.into()),
            ..TlsSpec::default()
        }
    }

    /// Presents this client certificate.
    pub fn client_identity(mut self, identity: Identity) -> TlsSpec {
        self.client_identity = Some(identity);
        self
    }

    /// Presents the client certificate of these files.
    pub fn client_identity_files(mut self, files: IdentityFiles) -> TlsSpec {
        self.client_identity_files = Some(files);
        self
    }
}

/// Which transport the fixtures of the scenarios use on the current thread.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Transport {
    /// Plain HTTP on `127.0.0.1` (the default).
    #[default]
    Http,
    /// HTTPS on `localhost`, with a server certificate of [`Pki::shared`].
    Https,
}

thread_local! {
    static TRANSPORT: Cell<Transport> = const { Cell::new(Transport::Http) };
}

/// The transport [`Fixture`]s made on this thread use.
pub fn transport() -> Transport {
    TRANSPORT.with(Cell::get)
}

/// Runs `f` with the [`Fixture`]s of this thread on `transport`, then restores the previous
/// one (also when `f` panics). [`conformance_tests!`](crate::conformance_tests) wraps every
/// scenario of an `https` expansion in it.
pub fn with_transport<R>(transport: Transport, f: impl FnOnce() -> R) -> R {
    struct Restore(Transport);
    impl Drop for Restore {
        fn drop(&mut self) {
            TRANSPORT.with(|cell| cell.set(self.0));
        }
    }
    let _restore = Restore(TRANSPORT.with(|cell| cell.replace(transport)));
    f()
}

/// Why `spawn` gave up, as the scenarios need to see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpawnFailure {
    /// The authority rejected the client or grant (a permanent error).
    pub permanent: bool,
    /// The adapter's error, displayed. Scenarios check it holds no secret.
    pub message: String,
}

/// A running watcher, seen through a blocking interface.
pub trait ConformanceWatcher: Send + Sync + 'static {
    /// The current token, without waiting; `None` when none is usable.
    fn token(&self) -> Option<Arc<TokenRecord>>;
    /// Waits up to `timeout` for the next token change; `true` if one came.
    fn wait_changed(&self, timeout: Duration) -> bool;
    /// The refresher's status.
    fn status(&self) -> Status;
    /// Asks for an early refresh.
    fn refresh_now(&self) -> RefreshNow;
    /// Stops the watcher and waits until its task or thread has ended.
    fn shutdown(self);
}

/// An adapter under test.
pub trait Adapter: 'static {
    /// Its name, for messages.
    const NAME: &'static str;
    /// Its watcher.
    type Watcher: ConformanceWatcher;
    /// Builds and starts a watcher; returns once a first token is held, or
    /// fails after `spec.first_token_timeout` (at once on a permanent error).
    fn spawn(spec: WatcherSpec) -> Result<Self::Watcher, SpawnFailure>;
}

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokenkeeper_core::cache::decode_record;
use tokenkeeper_core::oauth2::{AuthMethod as CoreAuthMethod, TokenUrl};
use tokenkeeper_core::{ClientId, ClientSecret, FetchError, RefresherConfig};

use crate::authority::assertion::{public_jwk_from_pem, sign_test_assertion};
use crate::authority::{
    Authority, Client, ClientAuth, Fault, PresentedAuth, RetryAfter, TlsSettings,
};
use crate::pki::{Identity, IdentityFiles, Pki};
use tokenkeeper_core::oauth2::assertion::GrantAssertion;

const CLIENT_ID: &str = "conformance-client";
const CLIENT_SECRET: &str = "conformance-secret-5f2a9c";

/// A running authority with one registered client, and a scratch folder. Over HTTPS (see
/// [`Transport`]) the authority presents a certificate of [`Pki::shared`], whose CA is
/// written to `ca.pem` in the folder.
pub struct Fixture {
    /// The authority.
    pub authority: Authority,
    /// A folder for cache files.
    pub dir: tempfile::TempDir,
    /// The CA file, over HTTPS.
    ca_file: Option<PathBuf>,
}

impl Fixture {
    /// An authority issuing tokens of `lifetime` to the conformance client, over the
    /// [`transport`] of this thread.
    pub fn new(lifetime: Duration) -> Self {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let (authority, ca_file) = match transport() {
            Transport::Http => (Authority::start(), None),
            Transport::Https => {
                let pki = Pki::shared();
                let files = pki.write_files(dir.path()).expect("the CA files");
                let authority = Authority::builder().tls(TlsSettings::new(&pki)).start();
                (authority, Some(files.ca))
            }
        };
        authority.register_client(Client::new(CLIENT_ID, CLIENT_SECRET).token_lifetime(lifetime));
        Fixture {
            authority,
            dir,
            ca_file,
        }
    }

    /// What a watcher needs to trust the authority: the CA file, over HTTPS.
    pub fn tls(&self) -> Option<TlsSpec> {
        self.ca_file.as_ref().map(TlsSpec::trusting_file)
    }

    /// A client-credentials client of the authority.
    pub fn client(&self) -> OAuth2Client {
        client_for(&self.authority.token_url(), CLIENT_SECRET)
    }

    /// A spec with fast backoff and short timeouts, fit for tests.
    pub fn spec(&self) -> WatcherSpec {
        WatcherSpec {
            client: self.client(),
            initial_refresh_token: None,
            cache_file: None,
            policy: LifetimePolicy::default(),
            jitter: Jitter::none(),
            backoff: fast_backoff(Duration::from_secs(2)),
            refresh_now_min_interval: Duration::from_secs(1),
            request_timeout: Duration::from_secs(2),
            first_token_timeout: Duration::from_secs(10),
            tls: self.tls(),
            client_assertion: None,
            grant_assertion: None,
            subject_token_file: None,
        }
    }

    /// Path of a cache file in the scratch folder.
    pub fn cache_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn client_for(token_url: &str, secret: &str) -> OAuth2Client {
    let url = TokenUrl::parse(token_url, false).expect("a loopback token URL");
    OAuth2Client::new(
        url,
        ClientId::new(CLIENT_ID),
        Some(ClientSecret::new(secret)),
        tokenkeeper_core::oauth2::GrantType::ClientCredentials,
    )
    .auth_method(CoreAuthMethod::ClientSecretBasic)
}

fn fast_backoff(cap: Duration) -> BackoffPolicy {
    BackoffPolicy::builder()
        .floor(Duration::from_millis(50))
        .initial(Duration::from_millis(100))
        .cap(cap)
        .build()
        .expect("valid backoff")
}

fn spawn_ok<A: Adapter>(spec: WatcherSpec) -> A::Watcher {
    match A::spawn(spec) {
        Ok(w) => w,
        Err(e) => panic!("{}: spawn failed: {e:?}", A::NAME),
    }
}

fn access(w: &impl ConformanceWatcher) -> Option<String> {
    w.token().map(|t| t.access_token.expose_secret().to_owned())
}

/// Waits until `f` holds, checking every 20 ms, for at most `timeout`.
fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits up to `timeout` for the watcher to hold a token other than `seen`: the race-free
/// way to wait for the result of a `refresh_now`, which may publish its token before a
/// `wait_changed` called afterwards starts looking.
fn replaced(w: &impl ConformanceWatcher, seen: &Option<String>, timeout: Duration) -> bool {
    eventually(timeout, || {
        access(w).is_some_and(|now| Some(&now) != seen.as_ref())
    })
}

fn gap(a: SystemTime, b: SystemTime) -> Duration {
    b.duration_since(a).unwrap_or_default()
}

/// Asserts that every request the authority received came over the transport of the
/// fixture: TLS exactly when it serves HTTPS.
fn assert_transport(fx: &Fixture) {
    let log = fx.authority.requests();
    assert!(
        log.iter()
            .all(|record| record.tls.is_some() == fx.authority.is_https()),
        "{log:?}"
    );
}

/// The first token is held when `spawn` returns, and it is the one issued.
pub fn first_token<A: Adapter>() {
    let fx = Fixture::new(Duration::from_secs(60));
    let w = spawn_ok::<A>(fx.spec());
    assert_eq!(access(&w), fx.authority.last_access_token(), "{}", A::NAME);
    assert_eq!(fx.authority.request_count(), 1);
    assert_transport(&fx);
    assert_eq!(fx.authority.count_by_grant("client_credentials"), 1);
    let status = w.status();
    assert_eq!(
        status.token_state,
        Some(tokenkeeper_core::TokenState::Fresh)
    );
    assert_eq!(status.consecutive_failures, 0);
    w.shutdown();
}

/// The token is replaced in the background at its jittered stale time.
pub fn background_refresh<A: Adapter>() {
    let fx = Fixture::new(Duration::from_secs(4));
    let mut spec = fx.spec();
    // 4 s tokens go stale at 2 s; jitter may move that up to 1 s earlier
    // (never before half the fresh period, 1 s).
    spec.jitter = Jitter::up_to(Duration::from_secs(5));
    let w = spawn_ok::<A>(spec);
    let first = w.token().expect("a first token");
    assert!(
        w.wait_changed(Duration::from_secs(6)),
        "{}: no refresh",
        A::NAME
    );
    let second = w.token().expect("a second token");
    assert_ne!(first.access_token, second.access_token);
    let log = fx.authority.requests();
    assert_eq!(log.len(), 2, "{log:?}");
    let earliest = first.issued.saturating_add(Duration::from_millis(900));
    let latest = first.stale.saturating_add(Duration::from_millis(800));
    let at = tokenkeeper_core::Timestamp::from_system_time(log[1].at);
    assert!(
        at >= earliest && at <= latest,
        "{}: refresh at {at}, expected within [{earliest}, {latest}]",
        A::NAME
    );
    w.shutdown();
}

/// While the authority is down the last token is served until it expires,
/// then nothing; when it returns a new token is held within one backoff cap.
pub fn grace_through_outage<A: Adapter>() {
    let fx = Fixture::new(Duration::from_secs(3));
    let w = spawn_ok::<A>(fx.spec());
    let first = w.token().expect("a first token");
    fx.authority.set_down(true);
    let expiry = first.expiry.to_system_time();
    while SystemTime::now() + Duration::from_millis(150) < expiry {
        assert_eq!(
            w.token().map(|t| t.access_token.clone()),
            Some(first.access_token.clone()),
            "{}: the last valid token must be served until it expires",
            A::NAME
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        eventually(Duration::from_secs(2), || w.token().is_none()),
        "{}: an expired token must not be served",
        A::NAME
    );
    let status = w.status();
    assert!(status.consecutive_failures >= 1, "{status:?}");
    assert!(status.last_error.is_some());
    fx.authority.set_down(false);
    let back = Instant::now();
    assert!(
        eventually(Duration::from_secs(4), || w.token().is_some()),
        "{}: no token after the outage",
        A::NAME
    );
    // One backoff cap (2 s) plus scheduling slack.
    assert!(
        back.elapsed() <= Duration::from_millis(3_000),
        "{:?}",
        back.elapsed()
    );
    w.shutdown();
}

/// `Retry-After` (both forms) is honoured, and retries back off exponentially
/// without ever coming sooner than the floor.
pub fn backoff_and_retry_after<A: Adapter>() {
    let fx = Fixture::new(Duration::from_secs(60));
    fx.authority.push_fault(Fault::Status {
        status: 503,
        oauth_error: None,
        retry_after: Some(RetryAfter::Seconds(2)),
    });
    let w = spawn_ok::<A>(fx.spec());
    let log = fx.authority.requests();
    assert_eq!(log.len(), 2, "{log:?}");
    assert!(
        gap(log[0].at, log[1].at) >= Duration::from_millis(1_950),
        "{log:?}"
    );
    w.shutdown();

    let fx = Fixture::new(Duration::from_secs(60));
    let when = SystemTime::now() + Duration::from_secs(3);
    fx.authority.push_fault(Fault::Status {
        status: 429,
        oauth_error: None,
        retry_after: Some(RetryAfter::HttpDate(when)),
    });
    let w = spawn_ok::<A>(fx.spec());
    let log = fx.authority.requests();
    assert_eq!(log.len(), 2, "{log:?}");
    // HTTP dates have whole seconds: the retry comes no sooner than `when`
    // less its fraction. (Measured from the date, not from the first
    // request: under load, over TLS, that request can come most of a second
    // after `when` was taken, and a gap from it proves nothing.)
    let since_epoch = when.duration_since(UNIX_EPOCH).expect("after 1970");
    let date = UNIX_EPOCH + Duration::from_secs(since_epoch.as_secs());
    assert!(
        log[1].at + Duration::from_millis(50) >= date,
        "retried before the Retry-After date: {log:?}"
    );
    w.shutdown();

    let fx = Fixture::new(Duration::from_secs(60));
    fx.authority.script(Fault::status(503), 4);
    let w = spawn_ok::<A>(fx.spec());
    let log = fx.authority.requests();
    assert_eq!(log.len(), 5, "{log:?}");
    assert_eq!(w.status().consecutive_failures, 0, "reset after success");
    for pair in log.windows(2) {
        let d = gap(pair[0].at, pair[1].at);
        // Floor 50 ms; ceilings 100, 200, 400, 800 ms (+ slack).
        assert!(d >= Duration::from_millis(45), "retry after {d:?}: {log:?}");
        assert!(
            d <= Duration::from_millis(1_500),
            "retry after {d:?}: {log:?}"
        );
    }
    w.shutdown();
}

/// A permanent error fails `spawn` at once with a typed error, shows no
/// secret, and is not retried before the backoff cap.
pub fn permanent_errors<A: Adapter>() {
    let fx = Fixture::new(Duration::from_secs(60));
    let mut spec = fx.spec();
    spec.client = client_for(&fx.authority.token_url(), "wrong-secret-77d1");
    spec.first_token_timeout = Duration::from_secs(20);
    let started = Instant::now();
    let err = match A::spawn(spec) {
        Ok(_) => panic!("{}: spawn succeeded with a wrong secret", A::NAME),
        Err(e) => e,
    };
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{}: not fast",
        A::NAME
    );
    assert!(err.permanent, "{err:?}");
    assert!(err.message.contains("invalid_client"), "{err:?}");
    assert!(!err.message.contains("wrong-secret-77d1"), "{err:?}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        fx.authority.request_count(),
        1,
        "a failed spawn leaves nothing running"
    );

    // A running watcher whose credentials get revoked keeps its token and
    // waits the full cap before asking again.
    let fx = Fixture::new(Duration::from_secs(2));
    let mut spec = fx.spec();
    spec.backoff = fast_backoff(Duration::from_secs(3));
    let w = spawn_ok::<A>(spec);
    fx.authority.register_client(
        Client::new(CLIENT_ID, "rotated-secret").token_lifetime(Duration::from_secs(2)),
    );
    assert!(
        eventually(Duration::from_secs(4), || w.status().last_error.is_some()),
        "{}: the refresh did not fail",
        A::NAME
    );
    let failed_at = fx.authority.request_count();
    std::thread::sleep(Duration::from_millis(2_300));
    assert_eq!(
        fx.authority.request_count(),
        failed_at,
        "{}: a permanent error was retried before the cap",
        A::NAME
    );
    let status = w.status();
    let error = status.last_error.expect("an error");
    assert!(error.is_permanent(), "{error:?}");
    assert_eq!(
        error.oauth_error().map(|e| e.error.as_str()),
        Some("invalid_client")
    );
    w.shutdown();
}

/// Rotated refresh tokens are used once each, persisted in the cache, and a
/// restart picks the newest one from the cache rather than the stale initial one.
pub fn refresh_token_rotation<A: Adapter>() {
    let fx = Fixture::new(Duration::from_secs(2));
    let initial = fx.authority.issue_refresh_token(CLIENT_ID);
    let cache = fx.cache_path("rotation.json");
    let url = TokenUrl::parse(&fx.authority.token_url(), false).expect("url");
    let client = OAuth2Client::new(
        url,
        ClientId::new(CLIENT_ID),
        Some(ClientSecret::new(CLIENT_SECRET)),
        tokenkeeper_core::oauth2::GrantType::RefreshToken,
    );
    let mut spec = fx.spec();
    spec.client = client.clone();
    spec.initial_refresh_token = Some(RefreshToken::new(initial.clone()));
    spec.cache_file = Some(cache.clone());
    let w = spawn_ok::<A>(spec.clone());
    for _ in 0..2 {
        assert!(
            w.wait_changed(Duration::from_secs(4)),
            "{}: no refresh",
            A::NAME
        );
    }
    w.shutdown();
    assert!(fx.authority.request_count() >= 3);
    assert_eq!(
        fx.authority.refresh_token_reuses(),
        0,
        "{:?}",
        fx.authority.requests()
    );
    let live = fx.authority.live_refresh_tokens(CLIENT_ID);
    assert_eq!(live.len(), 1, "{live:?}");
    let key = RefresherConfig::oauth2(client).cache_key().clone();
    let bytes = std::fs::read(&cache).expect("the cache file");
    let record = decode_record(&key, &bytes).expect("a valid record");
    assert_eq!(
        record.refresh_token.as_ref().map(|t| t.expose_secret()),
        Some(live[0].as_str()),
        "the newest refresh token is persisted"
    );
    // Restart after the cached token expired, with the spent initial token:
    // the cached refresh token wins.
    std::thread::sleep(
        record
            .expiry
            .to_system_time()
            .duration_since(SystemTime::now())
            .unwrap_or_default(),
    );
    let before = fx.authority.request_count();
    let w = spawn_ok::<A>(spec);
    assert_eq!(fx.authority.request_count(), before + 1);
    assert_eq!(
        fx.authority.refresh_token_reuses(),
        0,
        "{:?}",
        fx.authority.requests()
    );
    w.shutdown();
}

/// A restarted watcher serves the token from its file cache without a request.
pub fn file_cache_reuse<A: Adapter>() {
    let fx = Fixture::new(Duration::from_secs(120));
    let mut spec = fx.spec();
    spec.cache_file = Some(fx.cache_path("reuse.json"));
    let w = spawn_ok::<A>(spec.clone());
    let token = access(&w);
    w.shutdown();
    let w = spawn_ok::<A>(spec.clone());
    assert_eq!(access(&w), token, "{}: the cached token is served", A::NAME);
    assert_eq!(
        fx.authority.request_count(),
        1,
        "{}: no second request",
        A::NAME
    );
    w.shutdown();
    // A corrupt cache file is a miss, replaced by the next good record.
    std::fs::write(
        fx.cache_path("reuse.json"),
        b"{\"format\":\"tokenkeeper-cache-rec",
    )
    .expect("write");
    let w = spawn_ok::<A>(spec);
    assert_eq!(fx.authority.request_count(), 2);
    w.shutdown();
    let again = std::fs::read(fx.cache_path("reuse.json")).expect("read");
    assert!(again.starts_with(b"{\"format\":\"tokenkeeper-cache-record\""));
}

const CHILD_ENV: &str = "TOKENKEEPER_CONFORMANCE_CHILD";

/// The body of the helper process of [`cross_process_single_flight`]: builds a
/// watcher from the environment and prints its token. Does nothing unless
/// started by that scenario.
pub fn child_main<A: Adapter>() {
    let Ok(setup) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut parts = setup.splitn(3, '\n');
    let (url, cache, ca_file) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let spec = WatcherSpec {
        client: client_for(url, CLIENT_SECRET),
        initial_refresh_token: None,
        cache_file: Some(PathBuf::from(cache)),
        policy: LifetimePolicy::default(),
        jitter: Jitter::none(),
        backoff: fast_backoff(Duration::from_secs(2)),
        refresh_now_min_interval: Duration::from_secs(1),
        request_timeout: Duration::from_secs(5),
        first_token_timeout: Duration::from_secs(30),
        tls: (!ca_file.is_empty()).then(|| TlsSpec::trusting_file(ca_file)),
        client_assertion: None,
        grant_assertion: None,
        subject_token_file: None,
    };
    let w = spawn_ok::<A>(spec);
    println!("TOKEN={}", access(&w).unwrap_or_default());
    w.shutdown();
}

/// Processes sharing a cold file cache make one request between them and all
/// serve the same token.
///
/// `child` is the full name of the test that runs [`child_main`] for this
/// adapter (the macro passes it).
pub fn cross_process_single_flight<A: Adapter>(child: &str) {
    let fx = Fixture::new(Duration::from_secs(300));
    // Slow answers widen the window in which the processes race.
    fx.authority
        .push_fault(Fault::Delay(Duration::from_millis(500)));
    let cache = fx.cache_path("shared.json");
    let exe = std::env::current_exe().expect("the test binary");
    let children: Vec<_> = (0..8)
        .map(|_| {
            std::process::Command::new(&exe)
                .args([
                    "--exact",
                    child,
                    "--ignored",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(
                    CHILD_ENV,
                    format!(
                        "{}\n{}\n{}",
                        fx.authority.token_url(),
                        cache.display(),
                        fx.ca_file
                            .as_ref()
                            .map(|path| path.display().to_string())
                            .unwrap_or_default()
                    ),
                )
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("a child process")
        })
        .collect();
    let mut tokens = Vec::new();
    for child in children {
        let out = child.wait_with_output().expect("the child's output");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}: child failed: {stdout}\n{}",
            A::NAME,
            String::from_utf8_lossy(&out.stderr)
        );
        let token = stdout
            .lines()
            .find_map(|l| l.split_once("TOKEN=").map(|(_, t)| t.trim()))
            .unwrap_or_else(|| panic!("no token printed: {stdout}"))
            .to_owned();
        tokens.push(token);
    }
    assert_eq!(
        fx.authority.request_count(),
        1,
        "{}: {:?}",
        A::NAME,
        fx.authority.requests()
    );
    assert!(!tokens[0].is_empty());
    assert!(tokens.iter().all(|t| *t == tokens[0]), "{tokens:?}");
    assert_transport(&fx);
}

/// After `shutdown`, and after the last handle is dropped, no request is made.
pub fn shutdown_and_drop<A: Adapter>() {
    let fx = Fixture::new(Duration::from_secs(2));
    let w = spawn_ok::<A>(fx.spec());
    w.shutdown();
    std::thread::sleep(Duration::from_millis(2_500));
    assert_eq!(
        fx.authority.request_count(),
        1,
        "{}: request after shutdown",
        A::NAME
    );

    let fx = Fixture::new(Duration::from_secs(2));
    let w = spawn_ok::<A>(fx.spec());
    drop(w);
    std::thread::sleep(Duration::from_millis(2_500));
    assert_eq!(
        fx.authority.request_count(),
        1,
        "{}: request after drop",
        A::NAME
    );
}

/// `refresh_now` fetches a newer token, and is rate-limited.
pub fn forced_refresh_rate_limit<A: Adapter>() {
    let fx = Fixture::new(Duration::from_secs(300));
    let w = spawn_ok::<A>(fx.spec());
    let first = access(&w);
    assert!(matches!(
        w.refresh_now(),
        RefreshNow::Started | RefreshNow::Joined
    ));
    assert!(
        replaced(&w, &first, Duration::from_secs(3)),
        "{}: no forced refresh",
        A::NAME
    );
    assert_eq!(fx.authority.request_count(), 2);
    let second = access(&w);
    assert!(
        matches!(w.refresh_now(), RefreshNow::RateLimited { .. }),
        "{}",
        A::NAME
    );
    std::thread::sleep(Duration::from_millis(1_100));
    assert!(matches!(
        w.refresh_now(),
        RefreshNow::Started | RefreshNow::Joined
    ));
    assert!(replaced(&w, &second, Duration::from_secs(3)));
    assert_eq!(fx.authority.request_count(), 3);
    w.shutdown();
}

/// Every malformed answer ends in a typed error (and a retry), never a panic.
pub fn bad_answers<A: Adapter>() {
    type Check = fn(&FetchError) -> bool;
    let cases: Vec<(Fault, Check)> = vec![
        (Fault::MalformedJson, |e| {
            matches!(e, FetchError::InvalidBody { .. })
        }),
        (
            Fault::HtmlErrorPage { status: 502 },
            |e| matches!(e, FetchError::Status { status: 502, snippet, .. } if snippet.contains("502")),
        ),
        (Fault::EmptyBody { status: 200 }, |e| {
            matches!(e, FetchError::InvalidBody { .. })
        }),
        (
            Fault::OversizedBody {
                bytes: 2 * 1024 * 1024,
            },
            |e| matches!(e, FetchError::BodyTooLarge { .. }),
        ),
        (Fault::DropConnection, |e| {
            matches!(e, FetchError::Transport { .. })
        }),
        (Fault::Delay(Duration::from_secs(3)), |e| {
            matches!(e, FetchError::Timeout { .. })
        }),
        (
            Fault::Status {
                status: 500,
                oauth_error: Some(("server_error".into(), Some("try later".into()))),
                retry_after: None,
            },
            |e| matches!(e, FetchError::OAuth { status: 500, .. }),
        ),
    ];
    for (fault, check) in cases {
        let fx = Fixture::new(Duration::from_secs(60));
        fx.authority.push_fault(fault.clone());
        let mut spec = fx.spec();
        spec.request_timeout = Duration::from_secs(1);
        let w = spawn_ok::<A>(spec);
        let status = w.status();
        let error = status
            .last_error
            .unwrap_or_else(|| panic!("{fault:?}: no error recorded"));
        assert!(check(&error), "{}: {fault:?} gave {error:?}", A::NAME);
        assert!(!error.is_permanent(), "{fault:?}");
        assert_eq!(access(&w), fx.authority.last_access_token());
        w.shutdown();
    }
    // An absent `expires_in` is tolerated (default lifetime); an unknown token
    // type is a permanent error.
    let fx = Fixture::new(Duration::from_secs(60));
    fx.authority.push_fault(Fault::MissingExpiresIn);
    let w = spawn_ok::<A>(fx.spec());
    let t = w.token().expect("a token");
    assert_eq!(t.lifetime(), LifetimePolicy::default().default_lifetime());
    w.shutdown();
    let fx = Fixture::new(Duration::from_secs(60));
    fx.authority
        .push_fault(Fault::UnknownTokenType("MAC".into()));
    match A::spawn(fx.spec()) {
        Ok(_) => panic!("{}: a MAC token was accepted", A::NAME),
        Err(e) => assert!(e.permanent && e.message.contains("MAC"), "{e:?}"),
    }
}

const ASSERTION_CLIENT_ID: &str = "conformance-assertion-client";

/// The requests of the log for the token endpoint, in order.
fn token_requests(authority: &Authority) -> Vec<crate::authority::RequestRecord> {
    authority
        .requests()
        .into_iter()
        .filter(|record| record.path == "/token")
        .collect()
}

/// A `private_key_jwt` client of `fx`'s authority, whose key (PEM) is registered with the id
/// `kid`, and its spec.
fn private_key_jwt_spec(fx: &Fixture, pem: &str, kid: &str, alg: Option<&str>) -> WatcherSpec {
    let mut jwk = public_jwk_from_pem(pem).expect("a public key");
    jwk["kid"] = serde_json::json!(kid);
    fx.authority.register_client(
        Client::private_key_jwt(ASSERTION_CLIENT_ID, jwk).token_lifetime(Duration::from_secs(300)),
    );
    let client =
        OAuth2Client::private_key_jwt(fx.authority.token_url(), ClientId::new(ASSERTION_CLIENT_ID))
            .expect("a loopback token URL");
    let mut spec = fx.spec();
    spec.client = client;
    spec.client_assertion = Some(AssertionSpec::Signed {
        pem: zeroize::Zeroizing::new(pem.to_owned()),
        kid: Some(kid.to_owned()),
        alg: alg.map(str::to_owned),
    });
    spec
}

/// Asserts that every token request authenticated with a client assertion of `alg` and `kid`,
/// sent no secret, and that no two carried the same `jti`.
fn assert_assertion_auth<A: Adapter>(authority: &Authority, alg: &str, kid: Option<&str>) {
    let log = token_requests(authority);
    assert!(!log.is_empty(), "{}", A::NAME);
    let mut ids = std::collections::HashSet::new();
    for record in &log {
        assert_eq!(
            record.auth,
            PresentedAuth::Assertion,
            "{}: {record:?}",
            A::NAME
        );
        assert!(record.authenticated, "{}: {record:?}", A::NAME);
        let presented = record
            .client_assertion
            .as_ref()
            .expect("a client assertion");
        assert_eq!(presented.alg, alg, "{}", A::NAME);
        assert_eq!(presented.kid.as_deref(), kid, "{}", A::NAME);
        assert_eq!(presented.iss.as_deref(), Some(ASSERTION_CLIENT_ID));
        let jti = presented.jti.clone().expect("a jti");
        assert!(
            ids.insert(jti),
            "{}: a jti was sent twice: {log:?}",
            A::NAME
        );
    }
}

/// `private_key_jwt` (RFC 7523 §2.2) with an ES256 key and an RS256 key (PKCS#1 PEM): every
/// request carries a fresh assertion the authority verifies (signature, `kid`, `iss`, `sub`,
/// `aud`, `exp`, `jti` never seen), a forced refresh sends a new one, and a key the authority
/// does not know is a permanent `invalid_client`.
pub fn private_key_jwt<A: Adapter>() {
    let es256 =
        crate::authority::dpop::private_key_pem(crate::authority::dpop::KeyAlgorithm::Es256)
            .expect("a P-256 key");
    for (pem, alg, given) in [
        (es256.as_str(), "ES256", None),
        (
            crate::authority::assertion::rsa_keys::B_PKCS1,
            "RS256",
            None,
        ),
        (
            crate::authority::assertion::rsa_keys::A_PKCS8,
            "PS256",
            Some("PS256"),
        ),
    ] {
        let fx = Fixture::new(Duration::from_secs(300));
        let spec = private_key_jwt_spec(&fx, pem, "key-1", given);
        let w = spawn_ok::<A>(spec.clone());
        let first = access(&w);
        assert_eq!(first, fx.authority.last_access_token(), "{}", A::NAME);
        assert!(matches!(
            w.refresh_now(),
            RefreshNow::Started | RefreshNow::Joined
        ));
        assert!(
            replaced(&w, &first, Duration::from_secs(3)),
            "{}: no forced refresh",
            A::NAME
        );
        assert_assertion_auth::<A>(&fx.authority, alg, Some("key-1"));
        assert_transport(&fx);
        w.shutdown();

        // Registered under another key: refused for good, and the message says so.
        let other =
            crate::authority::dpop::private_key_pem(crate::authority::dpop::KeyAlgorithm::Es256)
                .expect("a P-256 key");
        let mut jwk = public_jwk_from_pem(&other).expect("a public key");
        jwk["kid"] = serde_json::json!("key-1");
        fx.authority
            .register_client(Client::private_key_jwt(ASSERTION_CLIENT_ID, jwk));
        match A::spawn(spec) {
            Ok(_) => panic!(
                "{}: an assertion signed with an unknown key was accepted",
                A::NAME
            ),
            Err(e) => assert!(
                e.permanent && e.message.contains("invalid_client"),
                "{}: {e:?}",
                A::NAME
            ),
        }
    }
}

/// `client_secret_jwt`: HS256 assertions keyed by the client secret, which never travels.
pub fn client_secret_jwt<A: Adapter>() {
    let fx = Fixture::new(Duration::from_secs(300));
    let secret = "conformance-hmac-secret-0b7d41";
    fx.authority
        .register_client(Client::client_secret_jwt(ASSERTION_CLIENT_ID, secret));
    let mut spec = fx.spec();
    spec.client = OAuth2Client::client_credentials(
        fx.authority.token_url(),
        ClientId::new(ASSERTION_CLIENT_ID),
        ClientSecret::new(secret),
    )
    .expect("a loopback token URL")
    .auth_method(CoreAuthMethod::ClientSecretJwt);
    let w = spawn_ok::<A>(spec.clone());
    let first = access(&w);
    assert!(matches!(
        w.refresh_now(),
        RefreshNow::Started | RefreshNow::Joined
    ));
    assert!(replaced(&w, &first, Duration::from_secs(3)), "{}", A::NAME);
    assert_assertion_auth::<A>(&fx.authority, "HS256", None);
    w.shutdown();
    // Another secret signs assertions the authority refuses.
    spec.client = OAuth2Client::client_credentials(
        fx.authority.token_url(),
        ClientId::new(ASSERTION_CLIENT_ID),
        ClientSecret::new("not-the-secret"),
    )
    .expect("a loopback token URL")
    .auth_method(CoreAuthMethod::ClientSecretJwt);
    match A::spawn(spec) {
        Ok(_) => panic!("{}: a wrong HMAC key was accepted", A::NAME),
        Err(e) => {
            assert!(
                e.permanent && e.message.contains("invalid_client"),
                "{}: {e:?}",
                A::NAME
            );
            assert!(!e.message.contains("not-the-secret"), "{e:?}");
        }
    }
}

/// The JWT bearer grant (RFC 7523 §2.1) with an assertion the adapter signs: the token is
/// issued for the assertion's subject, each request carries a new assertion, and two subjects
/// are cached apart.
pub fn jwt_bearer_grant<A: Adapter>() {
    let fx = Fixture::new(Duration::from_secs(300));
    let issuer = "https://issuer.conformance.example";
    let pem = crate::authority::dpop::private_key_pem(crate::authority::dpop::KeyAlgorithm::EdDsa)
        .expect("an Ed25519 key");
    fx.authority
        .register_assertion_issuer(issuer, public_jwk_from_pem(&pem).expect("a public key"));
    let client = |subject: &str| {
        OAuth2Client::jwt_bearer(
            fx.authority.token_url(),
            ClientId::new(ASSERTION_CLIENT_ID),
            GrantAssertion::signed(issuer, subject),
        )
        .expect("a loopback token URL")
        .scope("read")
    };
    let mut spec = fx.spec();
    spec.client = client("alice");
    spec.grant_assertion = Some(AssertionSpec::Signed {
        pem: pem.clone(),
        kid: None,
        alg: None,
    });
    let w = spawn_ok::<A>(spec.clone());
    let token = access(&w).expect("a token");
    let issued = fx.authority.issued_tokens();
    let last = issued.last().expect("an issued token");
    assert_eq!(
        (last.access_token.as_str(), last.subject.as_str()),
        (token.as_str(), "alice")
    );
    assert_eq!(
        last.grant_type,
        "urn:ietf:params:oauth:grant-type:jwt-bearer"
    );
    let first = Some(token);
    assert!(matches!(
        w.refresh_now(),
        RefreshNow::Started | RefreshNow::Joined
    ));
    assert!(replaced(&w, &first, Duration::from_secs(3)), "{}", A::NAME);
    let log = token_requests(&fx.authority);
    let ids: std::collections::HashSet<_> = log
        .iter()
        .map(|r| {
            r.grant_assertion
                .as_ref()
                .and_then(|a| a.jti.clone())
                .expect("a jti")
        })
        .collect();
    assert_eq!(ids.len(), log.len(), "{}: {log:?}", A::NAME);
    assert!(log.iter().all(|r| {
        r.grant_assertion
            .as_ref()
            .is_some_and(|a| a.alg == "EdDSA" && a.refused.is_none())
    }));
    w.shutdown();
    assert_ne!(
        RefresherConfig::oauth2(client("alice")).cache_key(),
        RefresherConfig::oauth2(client("bob")).cache_key()
    );
    // An issuer the authority does not know: invalid_grant, permanent.
    spec.client = OAuth2Client::jwt_bearer(
        fx.authority.token_url(),
        ClientId::new(ASSERTION_CLIENT_ID),
        GrantAssertion::signed("https://unknown.example", "alice"),
    )
    .expect("a loopback token URL");
    match A::spawn(spec) {
        Ok(_) => panic!("{}: an unknown issuer was accepted", A::NAME),
        Err(e) => assert!(
            e.permanent && e.message.contains("invalid_grant"),
            "{}: {e:?}",
            A::NAME
        ),
    }
}

/// Token exchange (RFC 8693) with the subject token read from a file before every request:
/// the token is issued for the subject the authority knows the subject token by, with the
/// issued token type in the record; the file replaced between refreshes is carried by the next
/// request; the cache key names the file, never the token.
pub fn token_exchange_grant<A: Adapter>() {
    use tokenkeeper_core::oauth2::exchange::{
        ACCESS_TOKEN_TYPE, JWT_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT_TYPE, TokenExchange,
    };
    let fx = Fixture::new(Duration::from_secs(300));
    let (one, two) = ("conformance-subject-one", "conformance-subject-two");
    fx.authority
        .accept_exchange_token(JWT_TOKEN_TYPE, one, "workload-one");
    fx.authority
        .accept_exchange_token(JWT_TOKEN_TYPE, two, "workload-two");
    let path = fx.cache_path("subject-token");
    replace_file(&path, one);
    let mut spec = fx.spec();
    spec.client = OAuth2Client::token_exchange(
        fx.authority.token_url(),
        ClientId::new(ASSERTION_CLIENT_ID),
        TokenExchange::new(JWT_TOKEN_TYPE).requested_token_type(ACCESS_TOKEN_TYPE),
    )
    .expect("a loopback token URL")
    .audience("https://api.conformance.example");
    spec.subject_token_file = Some(path.clone());
    let w = spawn_ok::<A>(spec);
    let record = w.token().expect("a token");
    assert_eq!(
        record.issued_token_type(),
        Some(ACCESS_TOKEN_TYPE),
        "{}",
        A::NAME
    );
    let last = fx.authority.last_issued().expect("an issued token");
    assert_eq!(
        (last.grant_type.as_str(), last.subject.as_str()),
        (TOKEN_EXCHANGE_GRANT_TYPE, "workload-one")
    );
    replace_file(&path, two);
    let first = Some(record.access_token.expose_secret().to_owned());
    assert!(matches!(
        w.refresh_now(),
        RefreshNow::Started | RefreshNow::Joined
    ));
    assert!(replaced(&w, &first, Duration::from_secs(3)), "{}", A::NAME);
    let log = token_requests(&fx.authority);
    let subjects: Vec<&str> = log
        .iter()
        .filter_map(|r| r.subject_token.as_ref().map(|(t, _)| t.as_str()))
        .collect();
    assert_eq!(subjects, [one, two], "{}", A::NAME);
    assert_eq!(
        fx.authority.last_issued().expect("a second token").subject,
        "workload-two"
    );
    w.shutdown();
}

/// Writes `text` to `path` as the kubelet does: a new file renamed over the old one.
fn replace_file(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("the new assertion file");
    std::fs::rename(&tmp, path).expect("the rename");
}

/// An assertion made elsewhere (a Kubernetes projected token, say) read from a file before
/// every request: a file replaced atomically between refreshes makes the next request carry
/// the new assertion; sending the same assertion twice is refused as a replay (and the last
/// token is kept); an expired assertion is a permanent, typed error before any request.
pub fn assertion_file_rotation<A: Adapter>() {
    let fx = Fixture::new(Duration::from_secs(300));
    let pem = crate::authority::dpop::private_key_pem(crate::authority::dpop::KeyAlgorithm::Es256)
        .expect("a P-256 key");
    let mut jwk = public_jwk_from_pem(&pem).expect("a public key");
    jwk["kid"] = serde_json::json!("platform-1");
    fx.authority.register_client(
        Client::private_key_jwt(ASSERTION_CLIENT_ID, jwk).token_lifetime(Duration::from_secs(300)),
    );
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let made = |jti: &str, exp: u64| {
        sign_test_assertion(
            &pem,
            Some("platform-1"),
            &serde_json::json!({
                "iss": ASSERTION_CLIENT_ID, "sub": ASSERTION_CLIENT_ID,
                "aud": fx.authority.token_url(), "iat": now, "exp": exp, "jti": jti,
            }),
        )
        .expect("a signed assertion")
    };
    let path = fx.dir.path().join("token");
    replace_file(&path, &made("projected-1", now + 600));
    let mut spec = fx.spec();
    spec.client =
        OAuth2Client::private_key_jwt(fx.authority.token_url(), ClientId::new(ASSERTION_CLIENT_ID))
            .expect("a loopback token URL");
    spec.client_assertion = Some(AssertionSpec::File(path.clone()));
    let w = spawn_ok::<A>(spec.clone());
    let first = access(&w);
    let jti_of = |record: &crate::authority::RequestRecord| {
        record.client_assertion.as_ref().and_then(|a| a.jti.clone())
    };
    assert_eq!(
        token_requests(&fx.authority)
            .iter()
            .map(jti_of)
            .collect::<Vec<_>>(),
        [Some("projected-1".to_owned())]
    );

    // The same file again: the authority refuses the replay; the token stays.
    assert!(matches!(
        w.refresh_now(),
        RefreshNow::Started | RefreshNow::Joined
    ));
    assert!(
        eventually(Duration::from_secs(3), || token_requests(&fx.authority)
            .len()
            == 2
            && w.status().consecutive_failures >= 1),
        "{}: {:?}",
        A::NAME,
        fx.authority.requests()
    );
    let replay = token_requests(&fx.authority)[1].clone();
    assert_eq!(jti_of(&replay).as_deref(), Some("projected-1"));
    assert!(
        matches!(
            replay
                .client_assertion
                .as_ref()
                .and_then(|a| a.refused.clone()),
            Some(crate::authority::AssertionError::Replayed(_))
        ),
        "{replay:?}"
    );
    assert_eq!(access(&w), first, "{}: the last token is kept", A::NAME);

    // Rotated underneath: the next request carries the new assertion.
    replace_file(&path, &made("projected-2", now + 600));
    std::thread::sleep(Duration::from_millis(1100));
    assert!(matches!(
        w.refresh_now(),
        RefreshNow::Started | RefreshNow::Joined | RefreshNow::RateLimited { .. }
    ));
    assert!(
        replaced(&w, &first, Duration::from_secs(5)),
        "{}: {:?}",
        A::NAME,
        fx.authority.requests()
    );
    let last = token_requests(&fx.authority)
        .last()
        .cloned()
        .expect("a request");
    assert_eq!(jti_of(&last).as_deref(), Some("projected-2"), "{}", A::NAME);
    assert!(last.authenticated);
    w.shutdown();

    // Expired: a typed, permanent error, and no request.
    replace_file(&path, &made("projected-3", now - 3600));
    let before = fx.authority.request_count();
    match A::spawn(spec) {
        Ok(_) => panic!("{}: an expired assertion started a watcher", A::NAME),
        Err(e) => assert!(
            e.permanent && e.message.contains("expired"),
            "{}: {e:?}",
            A::NAME
        ),
    }
    assert_eq!(fx.authority.request_count(), before, "{}", A::NAME);
}

const MTLS_CLIENT_ID: &str = "conformance-mtls-client";

/// A client-credentials client without a secret, authenticating with `method`.
fn mtls_client(token_url: &str, method: CoreAuthMethod) -> OAuth2Client {
    let url = TokenUrl::parse(token_url, false).expect("a loopback token URL");
    OAuth2Client::new(
        url,
        ClientId::new(MTLS_CLIENT_ID),
        None,
        tokenkeeper_core::oauth2::GrantType::ClientCredentials,
    )
    .auth_method(method)
}

/// A spec for `client` with the settings of [`Fixture::spec`], no cache and no TLS.
fn plain_spec(client: OAuth2Client) -> WatcherSpec {
    WatcherSpec {
        client,
        initial_refresh_token: None,
        cache_file: None,
        policy: LifetimePolicy::default(),
        jitter: Jitter::none(),
        backoff: fast_backoff(Duration::from_secs(2)),
        refresh_now_min_interval: Duration::from_secs(1),
        request_timeout: Duration::from_secs(2),
        first_token_timeout: Duration::from_secs(10),
        tls: None,
        client_assertion: None,
        grant_assertion: None,
        subject_token_file: None,
    }
}

/// Asserts that every request of the log authenticated with the certificate of `identity`
/// and sent no secret.
fn assert_certificate_auth<A: Adapter>(authority: &Authority, identity: &Identity) {
    let log = authority.requests();
    assert!(!log.is_empty());
    for record in &log {
        assert_eq!(
            record.auth,
            PresentedAuth::Certificate,
            "{}: a secret was sent, or no certificate: {record:?}",
            A::NAME
        );
        assert!(record.authenticated, "{}: {record:?}", A::NAME);
        let presented = record
            .tls
            .as_ref()
            .and_then(|tls| tls.client_certificate.as_ref())
            .unwrap_or_else(|| panic!("{}: no client certificate: {record:?}", A::NAME));
        assert_eq!(presented.x5t_s256, identity.x5t_s256(), "{}", A::NAME);
    }
}

/// RFC 8705 `tls_client_auth` over mutual TLS: the watcher presents a certificate of the
/// client CA whose subject CN is its client id (given as PEM), sends no secret, refreshes the
/// same way, and keys its cache by the certificate's thumbprint, to which the authority bound
/// the tokens. A certificate of the client CA for another id is a permanent `invalid_client`.
pub fn mtls_client_auth<A: Adapter>() {
    let pki = Pki::shared();
    let dir = tempfile::tempdir().expect("a temporary folder");
    let authority = Authority::builder()
        .tls(TlsSettings::new(&pki).client_auth(ClientAuth::Require))
        .start();
    authority.register_client(
        Client::tls_client_auth(MTLS_CLIENT_ID).token_lifetime(Duration::from_secs(300)),
    );
    let identity = pki.client_identity(MTLS_CLIENT_ID);
    let client = mtls_client(&authority.token_url(), CoreAuthMethod::TlsClientAuth);
    let cache = dir.path().join("mtls.json");
    let mut spec = plain_spec(client.clone());
    spec.cache_file = Some(cache.clone());
    spec.tls = Some(TlsSpec::trusting_pem(pki.ca_pem()).client_identity(identity.clone()));

    let w = spawn_ok::<A>(spec.clone());
    let first = access(&w);
    assert_eq!(first, authority.last_access_token(), "{}", A::NAME);
    assert!(matches!(
        w.refresh_now(),
        RefreshNow::Started | RefreshNow::Joined
    ));
    assert!(
        replaced(&w, &first, Duration::from_secs(3)),
        "{}: no forced refresh",
        A::NAME
    );
    assert_eq!(authority.request_count(), 2);
    assert_certificate_auth::<A>(&authority, &identity);
    let token = access(&w).expect("a token");
    assert_eq!(
        authority.token_binding(&token),
        Some(identity.x5t_s256()),
        "{}",
        A::NAME
    );
    w.shutdown();
    // The adapter took the same thumbprint as the authority: the record reads back only under
    // the key bound to it.
    let key = RefresherConfig::oauth2(client)
        .bound_to_certificate(identity.x5t_s256())
        .cache_key()
        .clone();
    let bytes = std::fs::read(&cache).expect("the cache file");
    let record = decode_record(&key, &bytes).expect("a record under the bound key");
    assert_eq!(record.access_token.expose_secret(), token);

    // A certificate of the client CA, but for another client id.
    spec.cache_file = None;
    spec.tls = Some(
        TlsSpec::trusting_pem(pki.ca_pem()).client_identity(pki.client_identity("someone-else")),
    );
    let before = authority.request_count();
    match A::spawn(spec) {
        Ok(_) => panic!("{}: another client's certificate was accepted", A::NAME),
        Err(e) => assert!(
            e.permanent && e.message.contains("invalid_client"),
            "{}: {e:?}",
            A::NAME
        ),
    }
    assert_eq!(authority.request_count(), before + 1);
}

/// RFC 8705 `self_signed_tls_client_auth`: the watcher presents a self-signed certificate
/// (from files) that the authority knows by its thumbprint, trusts the CA from a file, and
/// sends no secret; the token is bound to that certificate.
pub fn self_signed_mtls_client_auth<A: Adapter>() {
    let pki = Pki::shared();
    let dir = tempfile::tempdir().expect("a temporary folder");
    let authority = Authority::builder()
        .tls(TlsSettings::new(&pki).client_auth(ClientAuth::RequireAny))
        .start();
    let identity = pki.self_signed_client_identity(MTLS_CLIENT_ID);
    authority.register_client(
        Client::self_signed_tls_client_auth(MTLS_CLIENT_ID, identity.x5t_s256())
            .token_lifetime(Duration::from_secs(300)),
    );
    let files = pki.write_files(dir.path()).expect("the CA files");
    let identity_files = identity
        .write_files(dir.path(), "client")
        .expect("the client files");
    let mut spec = plain_spec(mtls_client(
        &authority.token_url(),
        CoreAuthMethod::SelfSignedTlsClientAuth,
    ));
    spec.tls = Some(TlsSpec::trusting_file(files.ca).client_identity_files(identity_files));

    let w = spawn_ok::<A>(spec);
    let token = access(&w).expect("a token");
    assert_eq!(Some(token.clone()), authority.last_access_token());
    assert_certificate_auth::<A>(&authority, &identity);
    assert_eq!(authority.token_binding(&token), Some(identity.x5t_s256()));
    w.shutdown();
}

/// Expands to a module `$name` holding one `#[test]` per conformance
/// scenario for an [`Adapter`]. Invoke it at the top level of a test file
/// (the cross-process scenario re-runs the test binary with
/// `--exact $name::conformance_child`).
///
/// `conformance_tests!(name: Adapter, https)` runs the same scenarios over HTTPS
/// (see [`Transport`]), and adds the mutual-TLS scenarios
/// ([`mtls_client_auth`], [`self_signed_mtls_client_auth`]).
#[macro_export]
macro_rules! conformance_tests {
    ($name:ident: $adapter:ty) => {
        $crate::conformance_tests!(@module $name, $adapter, Http, {});
    };
    ($name:ident: $adapter:ty, https) => {
        $crate::conformance_tests!(@module $name, $adapter, Https, {
            #[test]
            fn conformance_mtls_client_auth() {
                $crate::conformance::mtls_client_auth::<$adapter>();
            }
            #[test]
            fn conformance_self_signed_mtls_client_auth() {
                $crate::conformance::self_signed_mtls_client_auth::<$adapter>();
            }
        });
    };
    (@module $name:ident, $adapter:ty, $transport:ident, { $($extra:tt)* }) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            fn over<R>(f: impl FnOnce() -> R) -> R {
                $crate::conformance::with_transport(
                    $crate::conformance::Transport::$transport,
                    f,
                )
            }

            #[test]
            fn conformance_first_token() {
                over($crate::conformance::first_token::<$adapter>);
            }
            #[test]
            fn conformance_background_refresh() {
                over($crate::conformance::background_refresh::<$adapter>);
            }
            #[test]
            fn conformance_grace_through_outage() {
                over($crate::conformance::grace_through_outage::<$adapter>);
            }
            #[test]
            fn conformance_backoff_and_retry_after() {
                over($crate::conformance::backoff_and_retry_after::<$adapter>);
            }
            #[test]
            fn conformance_permanent_errors() {
                over($crate::conformance::permanent_errors::<$adapter>);
            }
            #[test]
            fn conformance_refresh_token_rotation() {
                over($crate::conformance::refresh_token_rotation::<$adapter>);
            }
            #[test]
            fn conformance_file_cache_reuse() {
                over($crate::conformance::file_cache_reuse::<$adapter>);
            }
            #[test]
            fn conformance_cross_process_single_flight() {
                over(|| {
                    $crate::conformance::cross_process_single_flight::<$adapter>(concat!(
                        stringify!($name),
                        "::conformance_child"
                    ))
                });
            }
            #[test]
            fn conformance_shutdown_and_drop() {
                over($crate::conformance::shutdown_and_drop::<$adapter>);
            }
            #[test]
            fn conformance_forced_refresh_rate_limit() {
                over($crate::conformance::forced_refresh_rate_limit::<$adapter>);
            }
            #[test]
            fn conformance_bad_answers() {
                over($crate::conformance::bad_answers::<$adapter>);
            }
            #[test]
            fn conformance_private_key_jwt() {
                over($crate::conformance::private_key_jwt::<$adapter>);
            }
            #[test]
            fn conformance_client_secret_jwt() {
                over($crate::conformance::client_secret_jwt::<$adapter>);
            }
            #[test]
            fn conformance_jwt_bearer_grant() {
                over($crate::conformance::jwt_bearer_grant::<$adapter>);
            }
            #[test]
            fn conformance_assertion_file_rotation() {
                over($crate::conformance::assertion_file_rotation::<$adapter>);
            }
            #[test]
            fn conformance_token_exchange_grant() {
                over($crate::conformance::token_exchange_grant::<$adapter>);
            }
            #[test]
            #[ignore = "helper process of conformance_cross_process_single_flight"]
            fn conformance_child() {
                $crate::conformance::child_main::<$adapter>();
            }

            $($extra)*
        }
    };
}
