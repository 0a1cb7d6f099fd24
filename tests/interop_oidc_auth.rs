//! Issue 12's ways to authenticate against an independently written
//! authority, on every driver: `oidc-provider` 9 (see `interop/oidc-auth.mjs`
//! for what it checks and what the script adds), over plain HTTP on loopback.
//!
//! - Client assertions: `private_key_jwt` with an RS256 key (with its `kid`)
//!   and with an ES256 key (without one, and with the issuer as the
//!   audience), and `client_secret_jwt` (HS256). oidc-provider verifies the
//!   signature, `iss`, `aud`, `exp` and refuses a `jti` it has seen, so a
//!   forced refresh that succeeds shows that each request carried a new
//!   assertion; an assertion file sent twice is refused and the file
//!   replaced by rename is read at the next request; a key the client did not
//!   register is refused for good.
//! - Discovery: a client made from the issuer finds the token endpoint in
//!   oidc-provider's own document; an issuer spelled otherwise (a trailing
//!   slash) or one with no document is a permanent error.
//! - The device grant: the person (played through oidc-auth.mjs's test
//!   routes, against the provider's own store) approves, refuses, or lets the
//!   codes expire; `slow_down` is obeyed; the stored refresh token is used
//!   later without the person.
//! - Token exchange (a grant handler oidc-auth.mjs registers): platform JWTs
//!   from files (subject and actor, the subject rotated), another watcher's
//!   token (a chain), and permanent refusals.
//!
//! The request log of oidc-auth.mjs shows what each request carried.
//!
//! `scripts/test-all.sh` starts the server and exports
//! `TOKENKEEPER_TEST_OIDC_AUTH_ISSUER` with the client ids, key files and
//! secrets that go with it (see its header). Under a plain `cargo test`, the
//! tests start `node interop/oidc-auth.mjs` themselves (one process shared by
//! the tests running at the same time, its keys in a temporary folder) when
//! the npm packages are installed (`interop/node_modules`), and fail with a
//! hint otherwise.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::Flavor;
use common::interop::{
    Node, http_request, http_request_with, jwt_claims, sha256, shared, start_node,
    tokenkeeper_binary,
};
use serde_json::Value;
use tokenkeeper_core::oauth2::assertion::{AssertionAudience, ClientAssertionSettings};
use tokenkeeper_core::oauth2::discovery::{DiscoveryError, Issuer, Metadata, WellKnown};
use tokenkeeper_core::oauth2::exchange::{
    ACCESS_TOKEN_TYPE, JWT_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT_TYPE, TokenExchange,
};
use tokenkeeper_core::oauth2::{AuthMethod, OAuth2Client, TokenUrl};
use tokenkeeper_core::{
    BackoffPolicy, ClientId, ClientSecret, Event, FetchError, Jitter, RefreshNow, Timestamp,
    TokenRecord,
};
use tokenkeeper_driver::assertion::{Assertion, ClientKey};
use tokenkeeper_driver::device::{DeviceLogin, DeviceLoginError, DevicePrompt};
use tokenkeeper_driver::{OneShot, TokenWatcher, TokenWatcherBuilder};
use tokenkeeper_testkit::authority::assertion::sign_test_assertion;
use tokenkeeper_testkit::authority::dpop::{KeyAlgorithm, private_key_pem};

const ISSUER_VAR: &str = "TOKENKEEPER_TEST_OIDC_AUTH_ISSUER";
const RS256_ID_VAR: &str = "TOKENKEEPER_TEST_OIDC_AUTH_RS256_CLIENT_ID";
const RS256_KEY_VAR: &str = "TOKENKEEPER_TEST_OIDC_AUTH_RS256_KEY";
const ES256_ID_VAR: &str = "TOKENKEEPER_TEST_OIDC_AUTH_ES256_CLIENT_ID";
const ES256_KEY_VAR: &str = "TOKENKEEPER_TEST_OIDC_AUTH_ES256_KEY";
const HS256_ID_VAR: &str = "TOKENKEEPER_TEST_OIDC_AUTH_HS256_CLIENT_ID";
const HS256_SECRET_VAR: &str = "TOKENKEEPER_TEST_OIDC_AUTH_HS256_SECRET";
const DEVICE_ID_VAR: &str = "TOKENKEEPER_TEST_OIDC_AUTH_DEVICE_CLIENT_ID";
const EXPIRING_DEVICE_ID_VAR: &str = "TOKENKEEPER_TEST_OIDC_AUTH_EXPIRING_DEVICE_CLIENT_ID";
const EXCHANGE_ID_VAR: &str = "TOKENKEEPER_TEST_OIDC_AUTH_EXCHANGE_CLIENT_ID";
const EXCHANGE_SECRET_VAR: &str = "TOKENKEEPER_TEST_OIDC_AUTH_EXCHANGE_CLIENT_SECRET";
const PLATFORM_KEY_VAR: &str = "TOKENKEEPER_TEST_OIDC_AUTH_PLATFORM_KEY";

/// The key ids oidc-auth.mjs registers with the RS256 and ES256 keys.
const RS256_KID: &str = "interop-rs256";

/// oidc-provider with the clients of oidc-auth.mjs.
struct OidcAuth {
    issuer: String,
    rs256_id: String,
    rs256_key: PathBuf,
    es256_id: String,
    es256_key: PathBuf,
    hs256_id: String,
    hs256_secret: String,
    device_id: String,
    expiring_device_id: String,
    exchange_id: String,
    exchange_secret: String,
    platform_key: PathBuf,
    _node: Option<Node>,
    _keys: Option<tempfile::TempDir>,
}

fn oidc_auth() -> Arc<OidcAuth> {
    static SHARED: Mutex<Weak<OidcAuth>> = Mutex::new(Weak::new());
    shared(&SHARED, start_oidc_auth)
}

fn start_oidc_auth() -> OidcAuth {
    if let Ok(issuer) = std::env::var(ISSUER_VAR) {
        let given = |name: &str| {
            std::env::var(name)
                .unwrap_or_else(|_| panic!("{ISSUER_VAR} is set, so {name} must be too"))
        };
        return OidcAuth {
            issuer,
            rs256_id: given(RS256_ID_VAR),
            rs256_key: given(RS256_KEY_VAR).into(),
            es256_id: given(ES256_ID_VAR),
            es256_key: given(ES256_KEY_VAR).into(),
            hs256_id: given(HS256_ID_VAR),
            hs256_secret: given(HS256_SECRET_VAR),
            device_id: given(DEVICE_ID_VAR),
            expiring_device_id: given(EXPIRING_DEVICE_ID_VAR),
            exchange_id: given(EXCHANGE_ID_VAR),
            exchange_secret: given(EXCHANGE_SECRET_VAR),
            platform_key: given(PLATFORM_KEY_VAR).into(),
            _node: None,
            _keys: None,
        };
    }
    let keys = tempfile::tempdir().expect("a temporary folder");
    let args = ["--key-dir".into(), keys.path().as_os_str().to_owned()];
    let (node, issuer) = start_node("oidc-auth.mjs", &args, ISSUER_VAR);
    // The clients and secrets registered in oidc-auth.mjs, and the keys it
    // wrote for them.
    OidcAuth {
        issuer,
        rs256_id: "interop-rs256-client".into(),
        rs256_key: keys.path().join("rs256-client.pem"),
        es256_id: "interop-es256-client".into(),
        es256_key: keys.path().join("es256-client.pem"),
        hs256_id: "interop-hs256-client".into(),
        hs256_secret: "interop-hs256-secret-that-is-long-enough-for-hs256".into(),
        device_id: "interop-device-client".into(),
        expiring_device_id: "interop-device-expiring-client".into(),
        exchange_id: "interop-exchange-client".into(),
        exchange_secret: "interop-exchange-secret".into(),
        platform_key: keys.path().join("platform.pem"),
        _node: Some(node),
        _keys: Some(keys),
    }
}

impl OidcAuth {
    fn token_url(&self) -> String {
        format!("{}/token", self.issuer)
    }

    /// What oidc-auth.mjs logged of the requests that arrived at or after
    /// `since` (milliseconds since the epoch) and that `select` picks.
    fn requests_since(&self, since: u128, select: impl Fn(&Value) -> bool) -> Vec<Value> {
        let (status, body) = http_request("GET", &format!("{}/interop/requests", self.issuer));
        assert_eq!(
            status, 200,
            "{ISSUER_VAR} must name interop/oidc-auth.mjs, which logs requests: {body}"
        );
        let log: Vec<Value> = serde_json::from_str(&body).expect("a JSON log");
        log.into_iter()
            .filter(|entry| {
                entry["at"]
                    .as_u64()
                    .is_some_and(|at| u128::from(at) >= since)
            })
            .filter(|entry| select(entry))
            .collect()
    }
}

fn epoch_millis() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
}

fn quick<F: Flavor>(client: OAuth2Client) -> TokenWatcherBuilder<F::R> {
    F::builder(client)
        .jitter(Jitter::none())
        .backoff(
            BackoffPolicy::builder()
                .floor(Duration::from_millis(50))
                .initial(Duration::from_millis(100))
                .cap(Duration::from_secs(2))
                .build()
                .unwrap(),
        )
        .first_token_timeout(Duration::from_secs(20))
        .refresh_now_min_interval(Duration::from_millis(10))
}

fn spawn<F: Flavor>(builder: TokenWatcherBuilder<F::R>) -> TokenWatcher<F::R> {
    F::block_on(builder.spawn()).unwrap_or_else(|e| panic!("{}: spawn failed: {e:?}", F::NAME))
}

/// The watcher's first token, and the one a forced refresh brings.
fn token_and_forced_refresh<F: Flavor>(
    watcher: &TokenWatcher<F::R>,
) -> (Arc<TokenRecord>, Arc<TokenRecord>) {
    let first = watcher.token().unwrap().into_arc();
    let started = F::block_on(watcher.refresh_now());
    assert!(
        matches!(started, Ok(RefreshNow::Started | RefreshNow::Joined)),
        "{}: {started:?}",
        F::NAME
    );
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let current = watcher.token().unwrap().into_arc();
        if current.access_token != first.access_token {
            return (first, current);
        }
        assert!(
            Instant::now() < end,
            "{}: no refresh: {:?}",
            F::NAME,
            watcher.status()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// How the `jti` of an assertion a test made itself (not the library)
/// starts, so that checks of the library's assertions leave them out.
const OUTSIDE_JTI: &str = "outside-";

/// Checks what oidc-provider logged of a client's successful token requests
/// since `since` whose assertion the library made with this key id (the
/// tests run at the same time share the clients): at least `at_least` of
/// them, each authenticated by `method` with an assertion of `alg`, claiming
/// the client as `iss` and `sub`, for `aud`, living at most 60 s, every
/// `jti` new.
fn assert_assertions_seen(
    o: &OidcAuth,
    since: u128,
    client_id: &str,
    expected: (&str, &str, Option<&str>, &str),
    at_least: usize,
) {
    let (method, alg, kid, aud) = expected;
    let seen = o.requests_since(since, |entry| {
        let assertion = &entry["assertion"];
        entry["client_id"] == client_id
            && entry["result"] == "ok"
            && assertion["kid"].as_str() == kid
            && !assertion["jti"]
                .as_str()
                .is_some_and(|jti| jti.starts_with(OUTSIDE_JTI))
    });
    assert!(
        seen.len() >= at_least,
        "{client_id}: {} successful requests, expected {at_least}: {seen:?}",
        seen.len()
    );
    let mut jtis = Vec::new();
    for entry in &seen {
        assert_eq!(entry["grant_type"], "client_credentials", "{entry}");
        assert_eq!(entry["auth_method"], method, "{entry}");
        let assertion = &entry["assertion"];
        assert_eq!(assertion["alg"], alg, "{entry}");
        assert_eq!(assertion["kid"].as_str(), kid, "{entry}");
        assert_eq!(assertion["iss"], client_id, "{entry}");
        assert_eq!(assertion["sub"], client_id, "{entry}");
        assert_eq!(assertion["aud"], aud, "{entry}");
        let lifetime = assertion["lifetime"].as_i64().unwrap_or(i64::MAX);
        assert!((1..=60).contains(&lifetime), "{entry}");
        jtis.push(assertion["jti"].as_str().expect("a jti").to_owned());
    }
    let count = jtis.len();
    jtis.sort();
    jtis.dedup();
    assert_eq!(jtis.len(), count, "{client_id}: a jti was sent twice");
}

fn private_key_jwt_rs256_gets_tokens<F: Flavor>() {
    let o = oidc_auth();
    let since = epoch_millis();
    let key = ClientKey::from_pem_file(&o.rs256_key)
        .unwrap()
        .with_key_id(RS256_KID);
    let client = OAuth2Client::private_key_jwt(o.token_url(), ClientId::new(o.rs256_id.clone()))
        .unwrap()
        .scope("read");
    let watcher = spawn::<F>(quick::<F>(client).client_assertion(Assertion::signed(key)));
    let (first, refreshed) = token_and_forced_refresh::<F>(&watcher);
    for token in [&first, &refreshed] {
        assert_eq!(token.token_type, "Bearer", "{}", F::NAME);
        assert_eq!(token.lifetime(), Duration::from_secs(300), "{}", F::NAME);
    }
    F::block_on(watcher.shutdown());
    let expected = ("private_key_jwt", "RS256", Some(RS256_KID), &*o.token_url());
    assert_assertions_seen(&o, since, &o.rs256_id, expected, 2);
}

fn private_key_jwt_es256_for_the_issuer_gets_tokens<F: Flavor>() {
    let o = oidc_auth();
    let since = epoch_millis();
    // No key id: oidc-provider picks the client's key by its algorithm.
    let key = ClientKey::from_pem_file(&o.es256_key).unwrap();
    let client = OAuth2Client::private_key_jwt(o.token_url(), ClientId::new(o.es256_id.clone()))
        .unwrap()
        .scope("read write")
        .client_assertion_settings(
            ClientAssertionSettings::default()
                .audience(AssertionAudience::Issuer(o.issuer.clone()))
                .lifetime(Duration::from_secs(30)),
        );
    let watcher = spawn::<F>(quick::<F>(client).client_assertion(Assertion::signed(key)));
    let (first, _) = token_and_forced_refresh::<F>(&watcher);
    assert_eq!(first.scope.as_deref(), Some("read write"), "{}", F::NAME);
    F::block_on(watcher.shutdown());
    let expected = ("private_key_jwt", "ES256", None, &*o.issuer);
    assert_assertions_seen(&o, since, &o.es256_id, expected, 2);
    // (Other tests send assertions for this client at the same time.)
    let seen = o.requests_since(since, |entry| {
        let jti = entry["assertion"]["jti"].as_str().unwrap_or_default();
        entry["client_id"] == o.es256_id.as_str()
            && entry["assertion"]["kid"].is_null()
            && !jti.starts_with(OUTSIDE_JTI)
    });
    assert!(
        seen.iter()
            .all(|entry| entry["assertion"]["lifetime"].as_i64() <= Some(30)),
        "{seen:?}"
    );
}

fn client_secret_jwt_gets_tokens<F: Flavor>() {
    let o = oidc_auth();
    let since = epoch_millis();
    let client = OAuth2Client::client_credentials(
        o.token_url(),
        ClientId::new(o.hs256_id.clone()),
        ClientSecret::new(o.hs256_secret.clone()),
    )
    .unwrap()
    .auth_method(AuthMethod::ClientSecretJwt)
    .scope("read");
    let watcher = spawn::<F>(quick::<F>(client));
    token_and_forced_refresh::<F>(&watcher);
    F::block_on(watcher.shutdown());
    let expected = ("client_secret_jwt", "HS256", None, &*o.token_url());
    assert_assertions_seen(&o, since, &o.hs256_id, expected, 2);
}

fn a_key_the_client_did_not_register_is_refused_for_good<F: Flavor>() {
    let o = oidc_auth();
    let since = epoch_millis();
    // A key of the right kind, and a key id no one registered, to find its
    // requests in the log.
    let kid = format!("unregistered-{}-{:x}", F::NAME, fastrand::u64(..));
    let pem = private_key_pem(KeyAlgorithm::Es256).unwrap();
    let key = ClientKey::from_pem(pem.as_bytes())
        .unwrap()
        .with_key_id(kid.clone());
    let client =
        OAuth2Client::private_key_jwt(o.token_url(), ClientId::new(o.es256_id.clone())).unwrap();
    let error = F::block_on(
        quick::<F>(client)
            .client_assertion(Assertion::signed(key))
            .spawn(),
    )
    .unwrap_err();
    assert!(error.is_permanent(), "{}: {error:?}", F::NAME);
    let fetch = error.fetch_error().expect("a fetch error");
    assert_eq!(
        fetch.oauth_error().map(|e| e.error.as_str()),
        Some("invalid_client"),
        "{}: {fetch:?}",
        F::NAME
    );
    let seen = o.requests_since(since, |entry| entry["assertion"]["kid"] == kid.as_str());
    assert!(!seen.is_empty(), "{}: no request seen", F::NAME);
    assert!(
        seen.iter().all(|entry| entry["result"] == "invalid_client"),
        "{seen:?}"
    );
}

/// An assertion for the ES256 client made outside (as a platform would), with
/// this `jti`, living five minutes.
fn outside_assertion(o: &OidcAuth, jti: &str) -> String {
    let pem = std::fs::read_to_string(&o.es256_key).expect("the ES256 client's key");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let claims = serde_json::json!({
        "iss": o.es256_id, "sub": o.es256_id, "aud": o.token_url(),
        "iat": now, "exp": now + 300, "jti": jti,
    });
    sign_test_assertion(&pem, None, &claims).expect("a signed assertion")
}

/// Waits until oidc-provider logged `count` requests whose assertion had
/// this `jti`, and returns their results.
fn results_for_jti(o: &OidcAuth, since: u128, jti: &str, count: usize) -> Vec<String> {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let seen = o.requests_since(since, |entry| entry["assertion"]["jti"] == jti);
        if seen.len() >= count || Instant::now() >= end {
            return seen
                .iter()
                .map(|entry| entry["result"].as_str().unwrap_or_default().to_owned())
                .collect();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// oidc-provider takes a `jti` once: an assertion file sent again is refused
/// (`invalid_client`) while the last token is still served, and the file
/// replaced as a kubelet does (written aside, renamed over) is read at the
/// next request, which succeeds.
fn an_assertion_file_is_read_before_every_request<F: Flavor>() {
    let o = oidc_auth();
    let since = epoch_millis();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    let unique = |n: u32| format!("{OUTSIDE_JTI}{}-{n}-{:x}", F::NAME, fastrand::u64(..));
    let (first_jti, second_jti) = (unique(1), unique(2));
    std::fs::write(&file, outside_assertion(&o, &first_jti)).unwrap();
    let client =
        OAuth2Client::private_key_jwt(o.token_url(), ClientId::new(o.es256_id.clone())).unwrap();
    let watcher = spawn::<F>(quick::<F>(client).client_assertion_file(&file));
    let first = watcher.token().unwrap().into_arc();

    // The same file again: a replay.
    assert!(F::block_on(watcher.refresh_now()).is_ok());
    assert_eq!(
        results_for_jti(&o, since, &first_jti, 2),
        ["ok", "invalid_client"],
        "{}",
        F::NAME
    );
    assert_eq!(
        watcher.token().unwrap().access_token,
        first.access_token,
        "{}: the last token is served",
        F::NAME
    );

    // Rotated underneath, atomically.
    let aside = dir.path().join("token.new");
    std::fs::write(&aside, outside_assertion(&o, &second_jti)).unwrap();
    std::fs::rename(&aside, &file).unwrap();
    assert!(F::block_on(watcher.refresh_now()).is_ok());
    assert_eq!(
        results_for_jti(&o, since, &second_jti, 1),
        ["ok"],
        "{}",
        F::NAME
    );
    let end = Instant::now() + Duration::from_secs(20);
    while watcher.token().unwrap().access_token == first.access_token {
        assert!(Instant::now() < end, "{}: {:?}", F::NAME, watcher.status());
        std::thread::sleep(Duration::from_millis(10));
    }
    F::block_on(watcher.shutdown());
}

// --- discovery -------------------------------------------------------------------------

/// A client made from the issuer alone finds oidc-provider's token endpoint
/// in its discovery document: a private_key_jwt client's assertions are for
/// that endpoint, and a client with a secret and no method chosen gets one
/// the document lists (client_secret_basic).
fn discovery_from_the_issuer_finds_the_token_endpoint<F: Flavor>() {
    let o = oidc_auth();
    let since = epoch_millis();
    let key = ClientKey::from_pem_file(&o.rs256_key)
        .unwrap()
        .with_key_id(RS256_KID);
    let client = OAuth2Client::from_issuer(&o.issuer, ClientId::new(o.rs256_id.clone()), None)
        .unwrap()
        .auth_method(AuthMethod::PrivateKeyJwt)
        .scope("read");
    let watcher = spawn::<F>(quick::<F>(client).client_assertion(Assertion::signed(key)));
    token_and_forced_refresh::<F>(&watcher);
    F::block_on(watcher.shutdown());

    let client = OAuth2Client::from_issuer(
        &o.issuer,
        ClientId::new(o.exchange_id.clone()),
        Some(ClientSecret::new(o.exchange_secret.clone())),
    )
    .unwrap()
    .scope("read");
    let watcher = spawn::<F>(quick::<F>(client));
    assert!(watcher.token().is_ok(), "{}", F::NAME);
    F::block_on(watcher.shutdown());

    let expected = ("private_key_jwt", "RS256", Some(RS256_KID), &*o.token_url());
    assert_assertions_seen(&o, since, &o.rs256_id, expected, 2);
    let basic = o.requests_since(since, |entry| {
        entry["client_id"] == o.exchange_id.as_str() && entry["grant_type"] == "client_credentials"
    });
    assert!(!basic.is_empty(), "{}", F::NAME);
    for entry in &basic {
        assert_eq!(entry["auth_method"], "client_secret_basic", "{entry}");
        assert_eq!(entry["result"], "ok", "{entry}");
    }
    // Each watcher, without a cache, asked for the document.
    let documents = o.requests_since(since, |entry| entry["endpoint"] == "discovery");
    assert!(documents.len() >= 2, "{}: {documents:?}", F::NAME);
}

fn discovery_error(error: &tokenkeeper_driver::SpawnError) -> Option<&DiscoveryError> {
    match error.fetch_error()? {
        FetchError::Discovery { error, .. } => Some(error),
        _ => None,
    }
}

/// An issuer spelled with a trailing slash is not the issuer oidc-provider
/// names in its document (RFC 8414 §3.3 compares them exactly), and an
/// issuer with a path it does not serve has no document: both are
/// permanent, before any token request.
fn discovery_refuses_another_issuers_document<F: Flavor>() {
    let o = oidc_auth();
    let since = epoch_millis();
    let id = format!("discovery-{}-{:x}", F::NAME, fastrand::u64(..));
    let slashed = format!("{}/", o.issuer);
    let client = OAuth2Client::from_issuer(
        &slashed,
        ClientId::new(id.clone()),
        Some(ClientSecret::new("x")),
    )
    .unwrap();
    let error = F::block_on(quick::<F>(client).spawn()).unwrap_err();
    assert!(error.is_permanent(), "{}: {error:?}", F::NAME);
    assert!(
        matches!(
            discovery_error(&error),
            Some(DiscoveryError::IssuerMismatch { expected, found })
                if *expected == slashed && *found == o.issuer
        ),
        "{}: {error:?}",
        F::NAME
    );
    assert!(error.to_string().contains(&o.issuer), "{error}");

    let pathed = format!("{}/tenant", o.issuer);
    let client = OAuth2Client::from_issuer(
        &pathed,
        ClientId::new(id.clone()),
        Some(ClientSecret::new("x")),
    )
    .unwrap();
    let error = F::block_on(quick::<F>(client).spawn()).unwrap_err();
    assert!(error.is_permanent(), "{}: {error:?}", F::NAME);
    assert!(
        matches!(
            discovery_error(&error),
            Some(DiscoveryError::NotServed { .. })
        ),
        "{}: {error:?}",
        F::NAME
    );
    let tokens = o.requests_since(since, |entry| entry["client_id"] == id.as_str());
    assert!(tokens.is_empty(), "{tokens:?}");
}

// --- the device authorization grant -------------------------------------------------

/// The interval oidc-auth.mjs announces.
const DEVICE_INTERVAL: Duration = Duration::from_secs(1);

impl OidcAuth {
    /// oidc-provider's device authorization endpoint, as its discovery
    /// document names it, read with the library's parser (which checks the
    /// document's issuer).
    fn device_endpoint(&self) -> TokenUrl {
        let issuer = Issuer::parse(&self.issuer, false).unwrap();
        let url = issuer.metadata_url(WellKnown::OpenIdConfiguration);
        let (status, body) = http_request("GET", url.as_str());
        let metadata = Metadata::parse(
            &issuer,
            status,
            body.as_bytes(),
            1 << 20,
            Timestamp::from_system_time(SystemTime::now()),
        )
        .unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(metadata.token_endpoint().as_str(), self.token_url());
        metadata
            .device_authorization_endpoint()
            .expect("oidc-provider names its device authorization endpoint")
            .clone()
    }

    /// Plays the person at the browser: POST /test/device/ACTION.
    fn person(&self, action: &str, user_code: &str) {
        let url = format!("{}/test/device/{action}?user_code={user_code}", self.issuer);
        let (status, body) = http_request("POST", &url);
        assert_eq!(status, 204, "{action} {user_code}: {body}");
    }
}

fn device_client(o: &OidcAuth, client_id: &str) -> OAuth2Client {
    OAuth2Client::refresh_token(o.token_url(), ClientId::new(client_id), None)
        .unwrap()
        .scope("read offline_access")
}

/// A device login on its own thread whose prompt hands the user code to the
/// test, which then plays the person.
fn device_login_in_background<F: Flavor>(
    builder: TokenWatcherBuilder<F::R>,
    endpoint: TokenUrl,
) -> (
    std::sync::mpsc::Receiver<DevicePrompt>,
    std::thread::JoinHandle<Result<DeviceLogin, DeviceLoginError>>,
) {
    let (prompts, prompted) = std::sync::mpsc::channel();
    let login = std::thread::spawn(move || {
        F::block_on(
            builder.device_login(endpoint, move |prompt: &DevicePrompt| {
                let _ = prompts.send(prompt.clone());
            }),
        )
    });
    (prompted, login)
}

fn prompt_of(prompted: &std::sync::mpsc::Receiver<DevicePrompt>) -> DevicePrompt {
    prompted
        .recv_timeout(Duration::from_secs(20))
        .expect("the login shows a prompt")
}

/// The person approves after the login polled a while; the token comes with
/// a refresh token, stored where a later `get_token` built the same way
/// refreshes it with oidc-provider without the person. The login polls at the
/// announced interval: oidc-auth.mjs answers `slow_down` to a poll that comes
/// early, which would have grown the login's interval.
fn device_login_approved_by_the_person_then_refreshed_without_them<F: Flavor>() {
    let o = oidc_auth();
    let since = epoch_millis();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache.json");
    let client = device_client(&o, &o.device_id);
    let builder = quick::<F>(client.clone()).file_cache(&cache);
    let (prompted, login) = device_login_in_background::<F>(builder, o.device_endpoint());
    let prompt = prompt_of(&prompted);
    assert_eq!(
        prompt.verification_uri,
        format!("{}/device", o.issuer),
        "{}",
        F::NAME
    );
    assert_eq!(
        prompt.uri_to_show(),
        format!("{}/device?user_code={}", o.issuer, prompt.user_code)
    );
    std::thread::sleep(DEVICE_INTERVAL * 2 + Duration::from_millis(500));
    o.person("approve", &prompt.user_code);
    let login = login
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("{}: {e}", F::NAME));
    // At least one pending answer, then the token.
    assert!(login.polls >= 2, "{}: {} polls", F::NAME, login.polls);
    assert_eq!(login.interval, DEVICE_INTERVAL, "{}: slowed down", F::NAME);
    assert!(login.token.refresh_token.is_some(), "{}", F::NAME);
    assert_eq!(login.token.lifetime(), Duration::from_secs(300));
    assert!(login.warnings.is_empty(), "{:?}", login.warnings);

    // Later, with no person: the stored refresh token gets a new token.
    let refreshed = F::block_on(
        quick::<F>(client)
            .file_cache(&cache)
            .get_token(OneShot::new().min_valid(Duration::from_secs(3_600))),
    )
    .unwrap_or_else(|e| panic!("{}: {e:?}", F::NAME));
    assert_ne!(refreshed.token.access_token, login.token.access_token);
    assert!(refreshed.token.refresh_token.is_some(), "{}", F::NAME);
    let refreshes = o.requests_since(since, |entry| {
        entry["client_id"] == o.device_id.as_str() && entry["grant_type"] == "refresh_token"
    });
    assert!(
        refreshes.iter().any(|entry| entry["result"] == "ok"),
        "{refreshes:?}"
    );
}

/// A `slow_down` (the person's side asks for it once) grows the interval by
/// 5 s for the rest of the login: oidc-auth.mjs would answer `slow_down`
/// again to a poll that came sooner.
fn slow_down_from_oidc_provider_grows_the_interval<F: Flavor>() {
    let o = oidc_auth();
    let started = Instant::now();
    let builder = quick::<F>(device_client(&o, &o.device_id));
    let (prompted, login) = device_login_in_background::<F>(builder, o.device_endpoint());
    let prompt = prompt_of(&prompted);
    o.person("slow-down", &prompt.user_code);
    std::thread::sleep(DEVICE_INTERVAL * 2);
    o.person("approve", &prompt.user_code);
    let login = login
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("{}: {e}", F::NAME));
    let slower = DEVICE_INTERVAL + Duration::from_secs(5);
    assert_eq!(login.interval, slower, "{}", F::NAME);
    assert!(started.elapsed() >= slower, "{}", F::NAME);
    assert!(login.token.refresh_token.is_some(), "{}", F::NAME);
}

fn a_refusal_by_the_person_ends_the_device_login<F: Flavor>() {
    let o = oidc_auth();
    let builder = quick::<F>(device_client(&o, &o.device_id));
    let (prompted, login) = device_login_in_background::<F>(builder, o.device_endpoint());
    let prompt = prompt_of(&prompted);
    std::thread::sleep(DEVICE_INTERVAL);
    o.person("deny", &prompt.user_code);
    let error = login.join().unwrap().unwrap_err();
    assert_eq!(error, DeviceLoginError::Denied, "{}", F::NAME);
}

fn codes_nobody_approves_expire<F: Flavor>() {
    let o = oidc_auth();
    let builder = quick::<F>(device_client(&o, &o.expiring_device_id));
    let (prompted, login) = device_login_in_background::<F>(builder, o.device_endpoint());
    let prompt = prompt_of(&prompted);
    assert!(prompt.expires_in <= Duration::from_secs(3), "{prompt:?}");
    let error = login.join().unwrap().unwrap_err();
    assert_eq!(error, DeviceLoginError::Expired, "{}", F::NAME);
}

// --- token exchange ----------------------------------------------------------------

/// Who issues the platform's tokens (oidc-auth.mjs trusts its key).
const PLATFORM_ISSUER: &str = "urn:tokenkeeper:interop-platform";

/// A platform token for `sub`, meant for oidc-provider, signed by `pem`.
fn platform_token(o: &OidcAuth, pem: &str, sub: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let claims = serde_json::json!({
        "iss": PLATFORM_ISSUER, "sub": sub, "aud": o.issuer,
        "iat": now, "exp": now + 600,
    });
    sign_test_assertion(pem, None, &claims).expect("a signed platform token")
}

fn exchange_client(o: &OidcAuth, exchange: TokenExchange) -> OAuth2Client {
    OAuth2Client::token_exchange(
        o.token_url(),
        ClientId::new(o.exchange_id.clone()),
        exchange,
    )
    .unwrap()
    .with_client_secret(ClientSecret::new(o.exchange_secret.clone()))
}

/// What oidc-auth.mjs logs of a subject token: the start of its SHA-256.
fn digest_of(token: &str) -> String {
    use base64::Engine as _;
    let digest = sha256(token.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest)[..16].to_owned()
}

/// Workload identity: a platform token in a file, with an actor token in
/// another, exchanged for an access token for an audience and a resource;
/// the subject file replaced (renamed over) is read at the next request.
fn token_exchange_of_platform_tokens_from_files<F: Flavor>() {
    let o = oidc_auth();
    let since = epoch_millis();
    let pem = std::fs::read_to_string(&o.platform_key).expect("the platform's key");
    let dir = tempfile::tempdir().unwrap();
    let (subject_file, actor_file) = (dir.path().join("subject"), dir.path().join("actor"));
    let unique = format!("{}-{:x}", F::NAME, fastrand::u64(..));
    let (first, second) = (format!("app-{unique}"), format!("rotated-{unique}"));
    std::fs::write(&subject_file, platform_token(&o, &pem, &first)).unwrap();
    std::fs::write(&actor_file, platform_token(&o, &pem, "deployer")).unwrap();
    let client = exchange_client(
        &o,
        TokenExchange::new(JWT_TOKEN_TYPE)
            .actor(JWT_TOKEN_TYPE)
            .requested_token_type(ACCESS_TOKEN_TYPE),
    )
    .audience("urn:tokenkeeper:orders")
    .resource("https://orders.example/api")
    .scope("read");
    let watcher = spawn::<F>(
        quick::<F>(client)
            .subject_token_file(&subject_file)
            .actor_token_file(&actor_file),
    );
    let token = watcher.token().unwrap().into_arc();
    assert_eq!(
        token.issued_token_type(),
        Some(ACCESS_TOKEN_TYPE),
        "{}",
        F::NAME
    );
    assert_eq!(token.token_type, "Bearer", "{}", F::NAME);
    assert_eq!(token.scope.as_deref(), Some("read"), "{}", F::NAME);
    let claims = jwt_claims(token.access_token.expose_secret());
    assert_eq!(claims["sub"], first.as_str(), "{claims}");
    assert_eq!(claims["act"]["sub"], "deployer", "{claims}");
    assert_eq!(
        claims["aud"],
        serde_json::json!(["urn:tokenkeeper:orders", "https://orders.example/api"]),
        "{claims}"
    );
    assert_eq!(claims["client_id"], o.exchange_id.as_str(), "{claims}");

    // The platform rotates the token underneath.
    let aside = dir.path().join("subject.new");
    std::fs::write(&aside, platform_token(&o, &pem, &second)).unwrap();
    std::fs::rename(&aside, &subject_file).unwrap();
    assert!(F::block_on(watcher.refresh_now()).is_ok());
    let end = Instant::now() + Duration::from_secs(20);
    let rotated = loop {
        let current = watcher.token().unwrap().into_arc();
        if current.access_token != token.access_token {
            break current;
        }
        assert!(Instant::now() < end, "{}: {:?}", F::NAME, watcher.status());
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(
        jwt_claims(rotated.access_token.expose_secret())["sub"],
        second.as_str()
    );
    F::block_on(watcher.shutdown());
    let seen: Vec<(String, String)> = o
        .requests_since(since, |entry| {
            entry["subject"] == first.as_str() || entry["subject"] == second.as_str()
        })
        .iter()
        .map(|entry| {
            assert_eq!(entry["grant_type"], TOKEN_EXCHANGE_GRANT_TYPE, "{entry}");
            assert_eq!(entry["subject_token_type"], JWT_TOKEN_TYPE, "{entry}");
            assert_eq!(entry["actor_token_type"], JWT_TOKEN_TYPE, "{entry}");
            assert_eq!(entry["actor"], "deployer", "{entry}");
            assert_eq!(entry["requested_token_type"], ACCESS_TOKEN_TYPE, "{entry}");
            (
                entry["subject"].as_str().unwrap_or_default().to_owned(),
                entry["result"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let ok = |sub: &str| (sub.to_owned(), "ok".to_owned());
    assert_eq!(seen, [ok(&first), ok(&second)], "{}", F::NAME);
}

/// A chain: one watcher's client-credentials token from oidc-provider is the
/// subject token another watcher exchanges for a JWT (`token_type` N_A);
/// after the first refreshes, the next exchange sends its new token.
fn token_exchange_of_another_watchers_token<F: Flavor>() {
    let o = oidc_auth();
    let since = epoch_millis();
    let upstream_client = OAuth2Client::client_credentials(
        o.token_url(),
        ClientId::new(o.exchange_id.clone()),
        ClientSecret::new(o.exchange_secret.clone()),
    )
    .unwrap()
    .scope("read");
    let upstream = spawn::<F>(quick::<F>(upstream_client));
    let client = exchange_client(
        &o,
        TokenExchange::new(ACCESS_TOKEN_TYPE).requested_token_type(JWT_TOKEN_TYPE),
    )
    .audience("urn:tokenkeeper:reports");
    let downstream = spawn::<F>(quick::<F>(client).subject_token_from(&upstream));
    let (first_upstream, second_upstream) = token_and_forced_refresh::<F>(&upstream);
    let (first, second) = token_and_forced_refresh::<F>(&downstream);
    for token in [&first, &second] {
        assert_eq!(
            token.issued_token_type(),
            Some(JWT_TOKEN_TYPE),
            "{}",
            F::NAME
        );
        assert_eq!(token.token_type, "N_A", "{}", F::NAME);
        let claims = jwt_claims(token.access_token.expose_secret());
        assert_eq!(claims["sub"], o.exchange_id.as_str(), "{claims}");
        assert_eq!(claims["aud"], "urn:tokenkeeper:reports", "{claims}");
    }
    // Which upstream token each exchange carried.
    let digests = [
        digest_of(first_upstream.access_token.expose_secret()),
        digest_of(second_upstream.access_token.expose_secret()),
    ];
    let sent: Vec<String> = o
        .requests_since(since, |entry| {
            entry["grant_type"] == TOKEN_EXCHANGE_GRANT_TYPE
                && digests
                    .iter()
                    .any(|d| entry["subject_digest"] == d.as_str())
        })
        .iter()
        .map(|entry| {
            assert_eq!(entry["result"], "ok", "{entry}");
            entry["subject_digest"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert!(!sent.is_empty(), "{}: no exchange seen", F::NAME);
    assert_eq!(
        sent.last(),
        Some(&digests[1]),
        "{}: the last exchange did not send the upstream's current token",
        F::NAME
    );
    F::block_on(downstream.shutdown());
    F::block_on(upstream.shutdown());
}

/// A chain whose upstream token is revoked underneath (RFC 7009, while the
/// upstream still holds it as good): oidc-provider refuses the exchange
/// (`invalid_grant`), the upstream replaces exactly that token, and the
/// exchange is sent again with the new one within the same refresh, with no
/// failure reported.
fn a_revoked_upstream_token_is_replaced_before_the_exchange_is_sent_again<F: Flavor>() {
    use base64::Engine as _;
    let o = oidc_auth();
    let upstream_client = OAuth2Client::client_credentials(
        o.token_url(),
        ClientId::new(o.exchange_id.clone()),
        ClientSecret::new(o.exchange_secret.clone()),
    )
    .unwrap()
    .scope("read");
    let upstream = spawn::<F>(quick::<F>(upstream_client));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&failures);
    let client = exchange_client(&o, TokenExchange::new(ACCESS_TOKEN_TYPE))
        .audience("urn:tokenkeeper:chain");
    let downstream = spawn::<F>(quick::<F>(client).subject_token_from(&upstream).on_event(
        move |event| {
            if let Event::FetchFailed { error, .. } = event {
                seen.lock().unwrap().push(error.to_string());
            }
        },
    ));
    let revoked = upstream.token().unwrap().into_arc();
    let first = downstream.token().unwrap().into_arc();

    let credentials = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", o.exchange_id, o.exchange_secret));
    let (status, body) = http_request_with(
        "POST",
        &format!("{}/token/revocation", o.issuer),
        &[
            ("Authorization", &format!("Basic {credentials}")),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        &format!("token={}", revoked.access_token.expose_secret()),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        upstream.token().unwrap().access_token,
        revoked.access_token,
        "{}: the upstream does not know yet",
        F::NAME
    );

    assert!(F::block_on(downstream.refresh_now()).is_ok());
    let end = Instant::now() + Duration::from_secs(20);
    while downstream.token().unwrap().access_token == first.access_token {
        assert!(
            Instant::now() < end,
            "{}: {:?}",
            F::NAME,
            downstream.status()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let replaced = upstream.token().unwrap().into_arc();
    assert_ne!(replaced.access_token, revoked.access_token, "{}", F::NAME);
    let results = |token: &TokenRecord| -> Vec<String> {
        let digest = digest_of(token.access_token.expose_secret());
        o.requests_since(0, |entry| entry["subject_digest"] == digest.as_str())
            .iter()
            .map(|entry| entry["result"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    assert_eq!(results(&revoked), ["ok", "invalid_grant"], "{}", F::NAME);
    assert_eq!(results(&replaced), ["ok"], "{}", F::NAME);
    assert!(failures.lock().unwrap().is_empty(), "{failures:?}");
    F::block_on(downstream.shutdown());
    F::block_on(upstream.shutdown());
}

/// A subject token signed by a key the authority does not trust is refused
/// for good (`invalid_grant`), and so is an audience it does not serve
/// (`invalid_target`).
fn token_exchange_refusals_are_permanent<F: Flavor>() {
    let o = oidc_auth();
    let stranger = private_key_pem(KeyAlgorithm::Es256).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("subject");
    std::fs::write(&file, platform_token(&o, &stranger, "mallory")).unwrap();
    let client = exchange_client(&o, TokenExchange::new(JWT_TOKEN_TYPE));
    let error = F::block_on(quick::<F>(client).subject_token_file(&file).spawn()).unwrap_err();
    assert!(error.is_permanent(), "{}: {error:?}", F::NAME);
    let oauth = error.fetch_error().and_then(|e| e.oauth_error().cloned());
    assert_eq!(
        oauth.map(|e| e.error),
        Some("invalid_grant".into()),
        "{error:?}"
    );

    let pem = std::fs::read_to_string(&o.platform_key).unwrap();
    std::fs::write(&file, platform_token(&o, &pem, "app")).unwrap();
    let client = exchange_client(&o, TokenExchange::new(JWT_TOKEN_TYPE)).audience("urn:elsewhere");
    let error = F::block_on(quick::<F>(client).subject_token_file(&file).spawn()).unwrap_err();
    assert!(error.is_permanent(), "{}: {error:?}", F::NAME);
    let oauth = error.fetch_error().and_then(|e| e.oauth_error().cloned());
    assert_eq!(
        oauth.map(|e| e.error),
        Some("invalid_target".into()),
        "{error:?}"
    );
}

per_driver!(
    discovery_from_the_issuer_finds_the_token_endpoint,
    discovery_refuses_another_issuers_document,
    device_login_approved_by_the_person_then_refreshed_without_them,
    slow_down_from_oidc_provider_grows_the_interval,
    a_refusal_by_the_person_ends_the_device_login,
    codes_nobody_approves_expire,
    token_exchange_of_platform_tokens_from_files,
    token_exchange_of_another_watchers_token,
    token_exchange_refusals_are_permanent,
    a_revoked_upstream_token_is_replaced_before_the_exchange_is_sent_again,
    an_assertion_file_is_read_before_every_request,
    private_key_jwt_rs256_gets_tokens,
    private_key_jwt_es256_for_the_issuer_gets_tokens,
    client_secret_jwt_gets_tokens,
    a_key_the_client_did_not_register_is_refused_for_good,
);

// --- the command -------------------------------------------------------------------------

/// One finished run of the command.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// The command with these arguments in a clean environment: a home folder
/// of its own, and the client secret in TOKENKEEPER_CLIENT_SECRET when given.
fn command(home: &Path, secret: Option<&str>, args: &[&str]) -> Command {
    let mut cmd = Command::new(tokenkeeper_binary());
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("XDG_CACHE_HOME", home.join("cache"))
        .env("XDG_CONFIG_HOME", home.join("config"))
        .args(args)
        .stdin(Stdio::null());
    if let Some(secret) = secret {
        cmd.env("TOKENKEEPER_CLIENT_SECRET", secret);
    }
    cmd
}

fn run(home: &Path, secret: Option<&str>, args: &[&str]) -> Run {
    let out = command(home, secret, args)
        .output()
        .expect("the command runs");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A line of a PEM file's body: a piece of the key that must never show.
fn piece_of_key(pem_file: &Path) -> String {
    let pem = std::fs::read_to_string(pem_file).expect("the key file");
    pem.lines().nth(3).expect("a PEM body").to_owned()
}

/// `tokenkeeper token --issuer ... --auth-method private_key_jwt`: the token
/// endpoint from oidc-provider's document, an RS256 assertion for it, and
/// neither the key nor the assertion in the output, even at -vv.
#[test]
fn command_signs_private_key_jwt_for_the_discovered_endpoint() {
    let o = oidc_auth();
    let since = epoch_millis();
    let home = tempfile::tempdir().unwrap();
    let key = o.rs256_key.to_str().expect("a UTF-8 path");
    let args = [
        "token",
        "-vv",
        "--issuer",
        &o.issuer,
        "--client-id",
        &o.rs256_id,
        "--auth-method",
        "private_key_jwt",
        "--private-key",
        key,
        "--key-id",
        RS256_KID,
        "--scope",
        "read",
    ];
    let run = run(home.path(), None, &args);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let token = run.stdout.trim();
    assert!(!token.is_empty() && !token.contains('\n'), "{}", run.stdout);
    assert!(!run.stderr.contains(token), "the token is on stderr");
    let piece = piece_of_key(&o.rs256_key);
    assert!(!run.stdout.contains(&piece) && !run.stderr.contains(&piece));
    assert!(
        !run.stderr.contains("eyJ"),
        "a JWT on stderr: {}",
        run.stderr
    );
    let expected = ("private_key_jwt", "RS256", Some(RS256_KID), &*o.token_url());
    assert_assertions_seen(&o, since, &o.rs256_id, expected, 1);
}

/// `tokenkeeper login --device --issuer` against oidc-provider (both
/// endpoints from its document), the person approving through the test route
/// while the command polls; then `tokenkeeper token` with the same settings
/// refreshes with the cached refresh token, without the person.
#[test]
fn command_device_login_then_token_without_the_person() {
    let o = oidc_auth();
    let since = epoch_millis();
    let home = tempfile::tempdir().unwrap();
    let settings = [
        "--issuer",
        &o.issuer,
        "--client-id",
        &o.device_id,
        "--scope",
        "read offline_access",
    ];
    let mut login_args = vec!["login", "--device"];
    login_args.extend(settings);
    let mut login = command(home.path(), None, &login_args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the command starts");
    // The person reads the code on the terminal (stderr).
    let stderr = login.stderr.take().expect("piped stderr");
    let (lines, shown) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let _ = lines.send(line.clone());
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let end = Instant::now() + Duration::from_secs(30);
    let user_code = loop {
        let left = end.saturating_duration_since(Instant::now());
        let line = shown
            .recv_timeout(left)
            .expect("the command shows a user code");
        if let Some((_, rest)) = line.split_once("user_code=") {
            break rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
        }
    };
    std::thread::sleep(DEVICE_INTERVAL * 2);
    o.person("approve", &user_code);
    let status = login.wait().expect("the login ends");
    let stderr = reader.join().unwrap();
    assert!(status.success(), "{status}: {stderr}");

    let mut token_args = vec![
        "token",
        "-vv",
        "--grant",
        "device_code",
        "--min-valid",
        "3600",
    ];
    token_args.extend(settings);
    let run = run(home.path(), None, &token_args);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let token = run.stdout.trim();
    assert!(!token.is_empty(), "{}", run.stderr);
    assert!(!run.stderr.contains(token), "the token is on stderr");
    let refreshes = o.requests_since(since, |entry| {
        entry["client_id"] == o.device_id.as_str() && entry["grant_type"] == "refresh_token"
    });
    assert!(
        refreshes.iter().any(|entry| entry["result"] == "ok"),
        "{refreshes:?}"
    );
}

/// `tokenkeeper token --grant token_exchange`: a platform token from a file
/// exchanged for an audience; the subject token never shows.
#[test]
fn command_exchanges_a_platform_token() {
    let o = oidc_auth();
    let home = tempfile::tempdir().unwrap();
    let pem = std::fs::read_to_string(&o.platform_key).unwrap();
    let subject = format!("cli-{:x}", fastrand::u64(..));
    let platform = platform_token(&o, &pem, &subject);
    let file = home.path().join("subject-token");
    std::fs::write(&file, &platform).unwrap();
    let token_url = o.token_url();
    let args = [
        "token",
        "-vv",
        "--token-url",
        &token_url,
        "--client-id",
        &o.exchange_id,
        "--grant",
        "token_exchange",
        "--subject-token-file",
        file.to_str().unwrap(),
        "--subject-token-type",
        JWT_TOKEN_TYPE,
        "--audience",
        "urn:tokenkeeper:cli",
    ];
    let run = run(home.path(), Some(&o.exchange_secret), &args);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let claims = jwt_claims(run.stdout.trim());
    assert_eq!(claims["sub"], subject.as_str(), "{claims}");
    assert_eq!(claims["aud"], "urn:tokenkeeper:cli", "{claims}");
    for secret in [platform.as_str(), o.exchange_secret.as_str()] {
        assert!(!run.stdout.contains(secret) && !run.stderr.contains(secret));
    }
}
