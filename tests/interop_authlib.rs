//! Every driver (tokio, async-std, smol, threads) against an authorization
//! server written with Authlib, the Python library (`interop/authlib/server.py`:
//! Flask, Authlib's `JWTBearerGrant`, `JWTBearerClientAssertion` as
//! `private_key_jwt`, `DeviceAuthorizationEndpoint` and `DeviceCodeGrant`):
//!
//! - the JWT bearer grant (RFC 7523 §2.1) with assertions the library signs
//!   (RS256 and ES256 keys, chosen by `kid` from the issuer's key set) and
//!   with an assertion file, replaced between two requests as a kubelet does;
//! - `private_key_jwt` client authentication (RFC 7523 §2.2) for
//!   `client_credentials`: a fresh `jti` per request, the audience checked
//!   (an assertion for another audience is refused), and an assertion made
//!   elsewhere (by the server's "platform" route) refused when replayed.
//!
//! `scripts/test-all.sh` installs Authlib in a virtualenv, starts the server
//! and exports `TOKENKEEPER_TEST_AUTHLIB_TOKEN_URL`,
//! `TOKENKEEPER_TEST_AUTHLIB_DEVICE_URL` and `TOKENKEEPER_TEST_AUTHLIB_KEY_DIR`.
//! Under a plain `cargo test` the tests start the server themselves with
//! `python3` (or `TOKENKEEPER_TEST_AUTHLIB_PYTHON`) when that Python has
//! Authlib and Flask, and fail with a hint otherwise.
//!
//! The server's test routes (`/test/...`) stand for what no client does: a
//! person approving a device code, a platform issuing a workload token,
//! introspection, and its log of token requests (each test marks its requests
//! with a scope of its own, as the tests of the four drivers run at once).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError, Weak, mpsc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::Flavor;
use serde_json::{Value, json};
use tokenkeeper_core::oauth2::OAuth2Client;
use tokenkeeper_core::oauth2::assertion::{
    AssertionAudience, ClientAssertionSettings, GrantAssertion,
};
use tokenkeeper_core::{BackoffPolicy, ClientId, ErrorClass, Jitter, RefreshNow};
use tokenkeeper_driver::assertion::{Assertion, ClientKey};
use tokenkeeper_driver::{SpawnError, TokenWatcher, TokenWatcherBuilder};
use tokenkeeper_testkit::authority::assertion::sign_test_assertion;

per_driver!(
    the_jwt_bearer_grant_with_assertions_the_library_signs,
    the_jwt_bearer_grant_with_an_assertion_file_replaced_between_requests,
    private_key_jwt_gets_client_credentials_with_a_fresh_jti_each_time,
    an_assertion_for_another_audience_is_refused,
    a_replayed_client_assertion_is_refused,
);

const TOKEN_URL_VAR: &str = "TOKENKEEPER_TEST_AUTHLIB_TOKEN_URL";
const DEVICE_URL_VAR: &str = "TOKENKEEPER_TEST_AUTHLIB_DEVICE_URL";
const KEY_DIR_VAR: &str = "TOKENKEEPER_TEST_AUTHLIB_KEY_DIR";
const PYTHON_VAR: &str = "TOKENKEEPER_TEST_AUTHLIB_PYTHON";

/// The clients registered in server.py.
const ISSUER: &str = "authlib-issuer";
const PKJWT_CLIENT: &str = "authlib-pkjwt-client";
const WORKLOAD_CLIENT: &str = "authlib-workload";

const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

// --- the server --------------------------------------------------------------------

/// A server process of ours, stopped on drop.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The Authlib server: the one the environment names, or one of ours.
#[allow(dead_code)] // the device URL is for the device tests
struct Authlib {
    token_url: String,
    device_url: String,
    key_dir: PathBuf,
    _process: Option<Process>,
    _keys: Option<tempfile::TempDir>,
}

impl Authlib {
    /// `http://127.0.0.1:PORT`, where the test routes are.
    fn origin(&self) -> &str {
        self.token_url
            .strip_suffix("/token")
            .unwrap_or_else(|| panic!("{TOKEN_URL_VAR} does not end in /token"))
    }

    fn key_pem(&self, kid: &str) -> String {
        let path = self.key_dir.join(format!("{kid}.pem"));
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
    }

    /// A key the server holds the public half of, with its `kid`.
    fn key(&self, kid: &str) -> ClientKey {
        ClientKey::from_pem_file(self.key_dir.join(format!("{kid}.pem")))
            .unwrap()
            .with_key_id(kid)
    }

    /// A test route: `POST /test/ROUTE` with a form; the status and the body.
    fn post(&self, route: &str, form: &[(&str, &str)]) -> (u16, String) {
        http(self.origin(), "POST", &format!("/test/{route}"), form)
    }

    /// The log's entries for the requests marked with `scope`.
    fn requests(&self, scope: &str) -> Vec<Value> {
        let (status, body) = http(self.origin(), "GET", "/test/log", &[]);
        assert_eq!(
            status, 200,
            "{TOKEN_URL_VAR} must name interop/authlib/server.py"
        );
        let log: Vec<Value> = serde_json::from_str(&body).expect("a JSON log");
        log.into_iter()
            .filter(|entry| entry["scope"] == scope)
            .collect()
    }

    /// What the server knows of an access token it issued.
    fn introspect(&self, access_token: &str) -> Value {
        let (status, body) = self.post("introspect", &[("token", access_token)]);
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("JSON")
    }
}

fn authlib() -> Arc<Authlib> {
    static SHARED: Mutex<Weak<Authlib>> = Mutex::new(Weak::new());
    let mut shared = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(running) = shared.upgrade() {
        return running;
    }
    let started = Arc::new(start_authlib());
    *shared = Arc::downgrade(&started);
    started
}

fn start_authlib() -> Authlib {
    if let Ok(token_url) = std::env::var(TOKEN_URL_VAR) {
        let given = |name: &str| {
            std::env::var(name)
                .unwrap_or_else(|_| panic!("{TOKEN_URL_VAR} is set, so {name} must be too"))
        };
        return Authlib {
            token_url,
            device_url: given(DEVICE_URL_VAR),
            key_dir: given(KEY_DIR_VAR).into(),
            _process: None,
            _keys: None,
        };
    }
    let keys = tempfile::tempdir().expect("a temporary folder");
    let python = std::env::var_os(PYTHON_VAR).unwrap_or_else(|| "python3".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/authlib/server.py");
    let hint = format!(
        "{TOKEN_URL_VAR} is not set and {} cannot run interop/authlib/server.py (it needs \
         Authlib and Flask): run the interop tests through `scripts/test-all.sh`, which \
         installs them in a virtualenv and starts the server",
        python.to_string_lossy()
    );
    let mut child = Command::new(&python)
        .arg(script)
        .arg("--key-dir")
        .arg(keys.path())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{hint} ({e})"));
    let stdout = child.stdout.take().expect("piped stdout");
    let process = Process(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(origin) = line.strip_prefix("READY ") {
                let _ = tx.send(origin.trim().to_owned());
            }
        }
    });
    let origin = rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("{hint}"));
    Authlib {
        token_url: format!("{origin}/token"),
        device_url: format!("{origin}/device_authorization"),
        key_dir: keys.path().to_owned(),
        _process: Some(process),
        _keys: Some(keys),
    }
}

/// One HTTP/1.1 request with an optional form to a plain `http://` origin:
/// the status and the body.
fn http(origin: &str, method: &str, path: &str, form: &[(&str, &str)]) -> (u16, String) {
    let host = origin
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("not an http URL: {origin}"));
    let body = form
        .iter()
        .map(|(name, value)| format!("{}={}", form_encode(name), form_encode(value)))
        .collect::<Vec<_>>()
        .join("&");
    let mut stream = std::net::TcpStream::connect(host)
        .unwrap_or_else(|e| panic!("cannot connect to {host}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, body.to_owned())
}

fn form_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

// --- helpers --------------------------------------------------------------------------

/// A value no other test (of this run or an earlier one) uses.
fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!(
        "{prefix}-{}-{nanos:x}-{:x}",
        std::process::id(),
        fastrand::u32(..)
    )
}

fn now_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
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
        .refresh_now_min_interval(Duration::ZERO)
        .first_token_timeout(Duration::from_secs(20))
}

fn spawn<F: Flavor>(builder: TokenWatcherBuilder<F::R>) -> TokenWatcher<F::R> {
    F::block_on(builder.spawn()).unwrap_or_else(|e| panic!("{}: spawn failed: {e:?}", F::NAME))
}

/// Forces a refresh and waits for the new token.
fn refresh<F: Flavor>(watcher: &TokenWatcher<F::R>) {
    let before = watcher
        .token()
        .unwrap()
        .access_token
        .expose_secret()
        .to_owned();
    match F::block_on(watcher.refresh_now()) {
        Ok(RefreshNow::Started | RefreshNow::Joined) => {}
        other => panic!("{}: refresh_now: {other:?}", F::NAME),
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while watcher.token().unwrap().access_token.expose_secret() == before {
        assert!(
            std::time::Instant::now() < deadline,
            "{}: no new token within 20 s",
            F::NAME
        );
        let _ = F::block_on(watcher.changed_within(Duration::from_millis(500)));
    }
}

/// The OAuth error code of a refusal at spawn.
fn refusal(error: &SpawnError) -> Option<(&str, ErrorClass)> {
    match error {
        SpawnError::Rejected { error } => error
            .oauth_error()
            .map(|oauth| (oauth.error.as_str(), error.class())),
        _ => None,
    }
}

// --- the JWT bearer grant ------------------------------------------------------------

fn the_jwt_bearer_grant_with_assertions_the_library_signs<F: Flavor>() {
    let a = authlib();
    for (kid, alg) in [("issuer-rs256", "RS256"), ("issuer-es256", "ES256")] {
        let scope = unique("bearer");
        let subject = unique("user");
        let client = OAuth2Client::jwt_bearer(
            &a.token_url,
            ClientId::new(ISSUER),
            GrantAssertion::signed(ISSUER, subject.as_str()),
        )
        .unwrap()
        .scope(scope.as_str());
        let watcher = spawn::<F>(quick::<F>(client).grant_assertion(Assertion::signed(a.key(kid))));
        let token = watcher.token().unwrap();
        // The token is the subject's, issued by the grant.
        let seen = a.introspect(token.access_token.expose_secret());
        assert_eq!(seen["active"], true, "{}: {seen}", F::NAME);
        assert_eq!(seen["sub"], subject.as_str(), "{seen}");
        assert_eq!(seen["grant_type"], JWT_BEARER, "{seen}");
        assert_eq!(seen["scope"], scope.as_str(), "{seen}");
        // What the assertion said, as Authlib read it.
        let requests = a.requests(&scope);
        assert_eq!(requests.len(), 1, "{requests:?}");
        let assertion = &requests[0]["assertion"];
        assert_eq!(assertion["alg"], alg, "{assertion}");
        assert_eq!(assertion["kid"], kid, "{assertion}");
        assert_eq!(assertion["iss"], ISSUER, "{assertion}");
        assert_eq!(assertion["aud"], a.token_url.as_str(), "{assertion}");
        assert!(requests[0].get("client_assertion").is_none());
        F::block_on(watcher.shutdown());
    }
    // A subject the server does not know: refused for good.
    let client = OAuth2Client::jwt_bearer(
        &a.token_url,
        ClientId::new(ISSUER),
        GrantAssertion::signed(ISSUER, "mallory"),
    )
    .unwrap();
    let error = F::block_on(
        quick::<F>(client)
            .grant_assertion(Assertion::signed(a.key("issuer-es256")))
            .spawn(),
    )
    .unwrap_err();
    assert_eq!(
        refusal(&error),
        Some(("invalid_grant", ErrorClass::Permanent)),
        "{}: {error:?}",
        F::NAME
    );
}

fn the_jwt_bearer_grant_with_an_assertion_file_replaced_between_requests<F: Flavor>() {
    let a = authlib();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    let subject = unique("user");
    let pem = a.key_pem("issuer-es256");
    // Written elsewhere (a platform), renamed into place as the kubelet does.
    let write = |jti: &str| {
        let now = now_seconds();
        let assertion = sign_test_assertion(
            &pem,
            Some("issuer-es256"),
            &json!({"iss": ISSUER, "sub": subject, "aud": a.token_url,
                    "iat": now, "exp": now + 600, "jti": jti}),
        )
        .unwrap();
        let staged = dir.path().join("token.new");
        std::fs::write(&staged, assertion).unwrap();
        std::fs::rename(&staged, &file).unwrap();
    };
    let (first, second) = (unique("jti"), unique("jti"));
    write(&first);
    let scope = unique("bearer-file");
    let client = OAuth2Client::jwt_bearer(
        &a.token_url,
        ClientId::new(ISSUER),
        GrantAssertion::external("authlib-platform"),
    )
    .unwrap()
    .scope(scope.as_str());
    let watcher = spawn::<F>(quick::<F>(client).grant_assertion(Assertion::file(&file)));
    write(&second);
    refresh::<F>(&watcher);
    let seen = a.introspect(watcher.token().unwrap().access_token.expose_secret());
    assert_eq!(seen["sub"], subject.as_str(), "{}: {seen}", F::NAME);
    let jtis: Vec<Value> = a
        .requests(&scope)
        .iter()
        .map(|entry| entry["assertion"]["jti"].clone())
        .collect();
    assert_eq!(jtis, [json!(first), json!(second)], "{}", F::NAME);
    F::block_on(watcher.shutdown());
}

// --- private_key_jwt -------------------------------------------------------------------

fn private_key_jwt_gets_client_credentials_with_a_fresh_jti_each_time<F: Flavor>() {
    let a = authlib();
    for (kid, alg) in [("client-rs256", "RS256"), ("client-es256", "ES256")] {
        let scope = unique("pkjwt");
        let client = OAuth2Client::private_key_jwt(&a.token_url, ClientId::new(PKJWT_CLIENT))
            .unwrap()
            .scope(scope.as_str());
        let watcher =
            spawn::<F>(quick::<F>(client).client_assertion(Assertion::signed(a.key(kid))));
        // Authlib refuses a jti it has seen: each refresh needs a new one.
        refresh::<F>(&watcher);
        refresh::<F>(&watcher);
        let seen = a.introspect(watcher.token().unwrap().access_token.expose_secret());
        assert_eq!(seen["client_id"], PKJWT_CLIENT, "{}: {seen}", F::NAME);
        assert_eq!(seen["grant_type"], "client_credentials", "{seen}");
        let requests = a.requests(&scope);
        assert_eq!(requests.len(), 3, "{requests:?}");
        let mut jtis = Vec::new();
        for entry in &requests {
            assert_eq!(entry["status"], 200, "{entry}");
            assert_eq!(entry["basic"], false, "{entry}");
            let assertion = &entry["client_assertion"];
            assert_eq!(assertion["alg"], alg, "{assertion}");
            assert_eq!(assertion["kid"], kid, "{assertion}");
            assert_eq!(assertion["iss"], PKJWT_CLIENT, "{assertion}");
            assert_eq!(assertion["sub"], PKJWT_CLIENT, "{assertion}");
            assert_eq!(assertion["aud"], a.token_url.as_str(), "{assertion}");
            jtis.push(assertion["jti"].as_str().expect("a jti").to_owned());
        }
        jtis.sort();
        jtis.dedup();
        assert_eq!(jtis.len(), 3, "{}: a jti was used twice", F::NAME);
        F::block_on(watcher.shutdown());
    }
}

fn an_assertion_for_another_audience_is_refused<F: Flavor>() {
    let a = authlib();
    let scope = unique("pkjwt-aud");
    let client = OAuth2Client::private_key_jwt(&a.token_url, ClientId::new(PKJWT_CLIENT))
        .unwrap()
        .scope(scope.as_str())
        .client_assertion_settings(ClientAssertionSettings::default().audience(
            AssertionAudience::Issuer("https://elsewhere.example".into()),
        ));
    let error = F::block_on(
        quick::<F>(client)
            .client_assertion(Assertion::signed(a.key("client-es256")))
            .spawn(),
    )
    .unwrap_err();
    assert_eq!(
        refusal(&error),
        Some(("invalid_client", ErrorClass::Permanent)),
        "{}: {error:?}",
        F::NAME
    );
    let requests = a.requests(&scope);
    assert_eq!(requests.len(), 1, "refused once, not retried: {requests:?}");
    assert_eq!(
        requests[0]["client_assertion"]["aud"], "https://elsewhere.example",
        "{requests:?}"
    );
}

fn a_replayed_client_assertion_is_refused<F: Flavor>() {
    let a = authlib();
    // A workload token the platform issued (signed by a key only the server
    // holds), in a file the platform does not renew in time.
    let (status, token) = a.post("platform-token", &[("ttl", "600")]);
    assert_eq!(status, 200, "{token}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, &token).unwrap();
    let client = |scope: &str| {
        OAuth2Client::private_key_jwt(&a.token_url, ClientId::new(WORKLOAD_CLIENT))
            .unwrap()
            .scope(scope)
    };
    let first_scope = unique("workload");
    let watcher = spawn::<F>(quick::<F>(client(&first_scope)).client_assertion_file(&file));
    let seen = a.introspect(watcher.token().unwrap().access_token.expose_secret());
    assert_eq!(seen["client_id"], WORKLOAD_CLIENT, "{}: {seen}", F::NAME);
    F::block_on(watcher.shutdown());
    // The same assertion again: Authlib has seen its jti.
    let second_scope = unique("workload");
    let error = F::block_on(
        quick::<F>(client(&second_scope))
            .client_assertion_file(&file)
            .spawn(),
    )
    .unwrap_err();
    assert_eq!(
        refusal(&error),
        Some(("invalid_client", ErrorClass::Permanent)),
        "{}: {error:?}",
        F::NAME
    );
    let (first, second) = (a.requests(&first_scope), a.requests(&second_scope));
    assert_eq!(
        first[0]["client_assertion"]["jti"], second[0]["client_assertion"]["jti"],
        "the same assertion both times"
    );
    assert_eq!(second[0]["error"], "invalid_client", "{second:?}");
}
