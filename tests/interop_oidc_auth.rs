//! Issue 12's ways to authenticate against an independently written
//! authority, on every driver: `oidc-provider` 9 (see `interop/oidc-auth.mjs`
//! for what it checks and what the script adds), over plain HTTP on loopback.
//!
//! - `private_key_jwt` with an RS256 key (with its `kid`) and with an ES256
//!   key (without one, and with the issuer as the audience), and
//!   `client_secret_jwt` (HS256): oidc-provider verifies the signature, `iss`,
//!   `aud`, `exp` and refuses a `jti` it has seen, so a forced refresh that
//!   succeeds shows that each request carried a new assertion; its request
//!   log shows what each assertion claimed.
//!
//! `scripts/test-all.sh` starts the server and exports
//! `TOKENKEEPER_TEST_OIDC_AUTH_ISSUER` with the client ids, key files and
//! secrets that go with it (see its header). Under a plain `cargo test`, the
//! tests start `node interop/oidc-auth.mjs` themselves (one process shared by
//! the tests running at the same time, its keys in a temporary folder) when
//! the npm packages are installed (`interop/node_modules`), and fail with a
//! hint otherwise.

mod common;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::Flavor;
use common::node::{Node, http_request, shared, start_node};
use serde_json::Value;
use tokenkeeper_core::oauth2::assertion::{AssertionAudience, ClientAssertionSettings};
use tokenkeeper_core::oauth2::{AuthMethod, OAuth2Client};
use tokenkeeper_core::{BackoffPolicy, ClientId, ClientSecret, Jitter, RefreshNow, TokenRecord};
use tokenkeeper_driver::assertion::{Assertion, ClientKey};
use tokenkeeper_driver::{TokenWatcher, TokenWatcherBuilder};
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
const EXCHANGE_ID_VAR: &str = "TOKENKEEPER_TEST_OIDC_AUTH_EXCHANGE_CLIENT_ID";
const EXCHANGE_SECRET_VAR: &str = "TOKENKEEPER_TEST_OIDC_AUTH_EXCHANGE_CLIENT_SECRET";
const PLATFORM_KEY_VAR: &str = "TOKENKEEPER_TEST_OIDC_AUTH_PLATFORM_KEY";

/// The key ids oidc-auth.mjs registers with the RS256 and ES256 keys.
const RS256_KID: &str = "interop-rs256";

/// oidc-provider with the clients of oidc-auth.mjs.
// The device and exchange clients await the library's device login and token
// exchange.
#[allow(dead_code)]
struct OidcAuth {
    issuer: String,
    rs256_id: String,
    rs256_key: PathBuf,
    es256_id: String,
    es256_key: PathBuf,
    hs256_id: String,
    hs256_secret: String,
    device_id: String,
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

/// Checks what oidc-provider logged of a client's successful token requests
/// since `since`: at least `at_least` of them, each authenticated by
/// `method` with an assertion of `alg` (and `kid`), claiming the client as
/// `iss` and `sub`, for `aud`, living at most 60 s, every `jti` new.
fn assert_assertions_seen(
    o: &OidcAuth,
    since: u128,
    client_id: &str,
    expected: (&str, &str, Option<&str>, &str),
    at_least: usize,
) {
    let (method, alg, kid, aud) = expected;
    let seen = o.requests_since(since, |entry| {
        entry["client_id"] == client_id && entry["result"] == "ok"
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
    // (The refusal test sends keys with ids for this client at the same time.)
    let seen = o.requests_since(since, |entry| {
        entry["client_id"] == o.es256_id.as_str() && entry["assertion"]["kid"].is_null()
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
    let unique = |n: u32| format!("file-{}-{n}-{:x}", F::NAME, fastrand::u64(..));
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

per_driver!(
    an_assertion_file_is_read_before_every_request,
    private_key_jwt_rs256_gets_tokens,
    private_key_jwt_es256_for_the_issuer_gets_tokens,
    client_secret_jwt_gets_tokens,
    a_key_the_client_did_not_register_is_refused_for_good,
);
