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
//!   elsewhere (by the server's "platform" route) refused when replayed;
//! - a device login (RFC 8628) end to end, the person played through the
//!   server's test routes: approval after pending polls, the token stored
//!   with its refresh token and refreshed later without the person;
//!   `slow_down` obeyed (Authlib, as server.py configures it, answers
//!   `slow_down` again to a poll that comes too soon); a refusal and an expiry
//!   end the login;
//! - the `tokenkeeper` command's JWT bearer grant (`--grant jwt-bearer`), with
//!   a key file and with an assertion file, neither shown in its output.
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

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Weak, mpsc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::Flavor;
use common::interop::{http_request, shared, tokenkeeper_binary};
use serde_json::{Value, json};
use tokenkeeper_core::oauth2::assertion::{
    AssertionAudience, ClientAssertionSettings, GrantAssertion,
};
use tokenkeeper_core::oauth2::{OAuth2Client, TokenUrl};
use tokenkeeper_core::{BackoffPolicy, ClientId, ErrorClass, Jitter, Origin, RefreshNow};
use tokenkeeper_driver::assertion::{Assertion, ClientKey};
use tokenkeeper_driver::device::{DeviceLogin, DeviceLoginError, DevicePrompt};
use tokenkeeper_driver::{OneShot, SpawnError, TokenWatcher, TokenWatcherBuilder};
use tokenkeeper_testkit::authority::assertion::sign_test_assertion;

per_driver!(
    a_device_login_is_approved_stored_and_refreshed_without_the_person,
    slow_down_from_authlib_is_obeyed,
    a_device_login_ends_when_the_person_refuses_or_the_code_expires,
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
const DEVICE_CLIENT: &str = "authlib-device-client";

const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const DEVICE_CODE: &str = "urn:ietf:params:oauth:grant-type:device_code";

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

    /// A test route: `POST /test/ROUTE?PARAMETERS`; the status and the body.
    fn post(&self, route: &str, parameters: &[(&str, &str)]) -> (u16, String) {
        let query = parameters
            .iter()
            .map(|(name, value)| format!("{}={}", url_encode(name), url_encode(value)))
            .collect::<Vec<_>>()
            .join("&");
        http_request("POST", &format!("{}/test/{route}?{query}", self.origin()))
    }

    /// The log's entries for the requests marked with `scope`.
    fn requests(&self, scope: &str) -> Vec<Value> {
        let (status, body) = http_request("GET", &format!("{}/test/log", self.origin()));
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
    shared(&SHARED, start_authlib)
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

fn url_encode(text: &str) -> String {
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

// --- the device grant -------------------------------------------------------------------

/// A device login of the public client, its requests marked with a scope of
/// its own: the builder, the endpoint, the scope.
fn device_client<F: Flavor>(
    a: &Authlib,
    dir: &Path,
) -> (TokenWatcherBuilder<F::R>, TokenUrl, String) {
    let scope = unique("device");
    let client = OAuth2Client::refresh_token(&a.token_url, ClientId::new(DEVICE_CLIENT), None)
        .unwrap()
        .scope(scope.as_str());
    let endpoint = TokenUrl::parse(&a.device_url, false).unwrap();
    (
        quick::<F>(client).file_cache(dir.join("cache.json")),
        endpoint,
        scope,
    )
}

/// The device-code polls marked with `scope`: each one's error, or "ok".
fn polls(a: &Authlib, scope: &str) -> Vec<String> {
    a.requests(scope)
        .iter()
        .filter(|entry| entry["grant_type"] == DEVICE_CODE)
        .map(|entry| entry["error"].as_str().unwrap_or("ok").to_owned())
        .collect()
}

/// Plays the person: gets the user code from the prompt, waits until
/// `answers` polls were answered (any answer), then posts to `route` (one of
/// the server's /test/device/ routes) with it and `form`.
fn person(
    a: &Arc<Authlib>,
    scope: &str,
    answers: usize,
    route: &'static str,
    form: Vec<(&'static str, String)>,
) -> (
    impl FnOnce(&DevicePrompt) + Send + 'static,
    std::thread::JoinHandle<DevicePrompt>,
) {
    let (tx, rx) = mpsc::channel::<DevicePrompt>();
    let (a, scope) = (Arc::clone(a), scope.to_owned());
    let thread = std::thread::spawn(move || {
        let prompt = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the login showed its prompt");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while polls(&a, &scope).len() < answers {
            assert!(
                std::time::Instant::now() < deadline,
                "the login did not poll {answers} times"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        form.push(("user_code", &prompt.user_code));
        let (status, body) = a.post(&format!("device/{route}"), &form);
        assert_eq!(status, 200, "{route}: {body}");
        prompt
    });
    (
        move |prompt: &DevicePrompt| {
            let _ = tx.send(prompt.clone());
        },
        thread,
    )
}

fn a_device_login_is_approved_stored_and_refreshed_without_the_person<F: Flavor>() {
    let a = authlib();
    let dir = tempfile::tempdir().unwrap();
    let (builder, endpoint, scope) = device_client::<F>(&a, dir.path());
    let user = unique("user");
    let (present, person) = person(&a, &scope, 2, "approve", vec![("user", user.clone())]);
    let login: DeviceLogin = F::block_on(builder.device_login(endpoint, present))
        .unwrap_or_else(|e| panic!("{}: {e}", F::NAME));
    let prompt = person.join().unwrap();

    // The prompt shows what Authlib handed out.
    let origin = a.origin();
    assert_eq!(
        prompt.verification_uri,
        format!("{origin}/device"),
        "{prompt:?}"
    );
    assert_eq!(
        prompt.uri_to_show(),
        format!("{origin}/device?user_code={}", prompt.user_code)
    );
    assert!(prompt.expires_in > Duration::from_secs(500), "{prompt:?}");
    // Pending, pending, then the token; a poll a second (no slow_down).
    let answers = polls(&a, &scope);
    assert!(answers.len() >= 3, "{}: {answers:?}", F::NAME);
    let (last, pending) = answers.split_last().unwrap();
    assert_eq!(last, "ok", "{answers:?}");
    assert!(
        pending
            .iter()
            .all(|answer| answer == "authorization_pending"),
        "{answers:?}"
    );
    assert_eq!(login.polls as usize, answers.len());
    assert_eq!(login.interval, Duration::from_secs(1));
    assert!(login.warnings.is_empty(), "{:?}", login.warnings);
    let seen = a.introspect(login.token.access_token.expose_secret());
    assert_eq!(seen["sub"], user.as_str(), "{seen}");
    assert_eq!(seen["grant_type"], DEVICE_CODE, "{seen}");
    assert!(login.token.refresh_token.is_some(), "{}", F::NAME);

    // Later, with the same settings and no person: the stored token...
    let client = OAuth2Client::refresh_token(&a.token_url, ClientId::new(DEVICE_CLIENT), None)
        .unwrap()
        .scope(scope.as_str());
    let later = || quick::<F>(client.clone()).file_cache(dir.path().join("cache.json"));
    let cached = F::block_on(later().get_token(OneShot::new())).unwrap();
    assert!(
        matches!(cached.origin, Origin::Cache { .. }),
        "{:?}",
        cached.origin
    );
    // ...and, when it is not good enough, refreshed with the stored refresh token.
    let refreshed =
        F::block_on(later().get_token(OneShot::new().min_valid(Duration::from_secs(7_200))))
            .unwrap_or_else(|e| panic!("{}: {e}", F::NAME));
    assert_ne!(refreshed.token.access_token, login.token.access_token);
    let seen = a.introspect(refreshed.token.access_token.expose_secret());
    assert_eq!(seen["sub"], user.as_str(), "{seen}");
    assert_eq!(seen["grant_type"], "refresh_token", "{seen}");
    let refreshes: Vec<Value> = a
        .requests(&scope)
        .into_iter()
        .filter(|entry| entry["grant_type"] == "refresh_token")
        .collect();
    assert_eq!(refreshes.len(), 1, "{refreshes:?}");
    assert_eq!(refreshes[0]["status"], 200, "{refreshes:?}");
}

fn slow_down_from_authlib_is_obeyed<F: Flavor>() {
    let a = authlib();
    let dir = tempfile::tempdir().unwrap();
    let (builder, endpoint, scope) = device_client::<F>(&a, dir.path());
    // After the first answer, the next poll is told to slow down; the person
    // approves then, before the poll that follows (6 s later).
    let user_code = Arc::new(Mutex::new(None::<String>));
    let (present, first) = person(&a, &scope, 1, "slow-down", vec![("count", "1".into())]);
    let shown = Arc::clone(&user_code);
    let present = move |prompt: &DevicePrompt| {
        *shown.lock().unwrap() = Some(prompt.user_code.clone());
        present(prompt);
    };
    let approver = {
        let (a, scope, user_code) = (Arc::clone(&a), scope.clone(), Arc::clone(&user_code));
        std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while polls(&a, &scope).len() < 2 {
                assert!(std::time::Instant::now() < deadline, "no second poll");
                std::thread::sleep(Duration::from_millis(100));
            }
            let code = user_code.lock().unwrap().clone().expect("a user code");
            let (status, body) = a.post("device/approve", &[("user_code", &code)]);
            assert_eq!(status, 200, "{body}");
        })
    };
    let login = F::block_on(builder.device_login(endpoint, present))
        .unwrap_or_else(|e| panic!("{}: {e}", F::NAME));
    first.join().unwrap();
    approver.join().unwrap();
    let answers = polls(&a, &scope);
    // One slow_down only: Authlib would have answered slow_down again to a
    // poll less than the grown interval (6 s) after the last.
    assert_eq!(
        answers
            .iter()
            .filter(|answer| *answer == "slow_down")
            .count(),
        1,
        "{}: {answers:?}",
        F::NAME
    );
    assert_eq!(
        answers.last().map(String::as_str),
        Some("ok"),
        "{answers:?}"
    );
    assert_eq!(login.interval, Duration::from_secs(6), "{}", F::NAME);
}

fn a_device_login_ends_when_the_person_refuses_or_the_code_expires<F: Flavor>() {
    let a = authlib();
    for (route, expected, answer) in [
        ("deny", DeviceLoginError::Denied, "access_denied"),
        ("expire", DeviceLoginError::Expired, "expired_token"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (builder, endpoint, scope) = device_client::<F>(&a, dir.path());
        let (present, person) = person(&a, &scope, 1, route, Vec::new());
        let error = F::block_on(builder.device_login(endpoint, present)).unwrap_err();
        person.join().unwrap();
        assert_eq!(error, expected, "{}: {route}", F::NAME);
        // The answer ended the login: no poll after it.
        let answers = polls(&a, &scope);
        assert_eq!(
            answers.last().map(String::as_str),
            Some(answer),
            "{answers:?}"
        );
        std::thread::sleep(Duration::from_millis(1_500));
        assert_eq!(
            polls(&a, &scope),
            answers,
            "{}: polled after {answer}",
            F::NAME
        );
        assert!(!dir.path().join("cache.json").exists(), "nothing stored");
    }
}

// --- the command ----------------------------------------------------------------------

/// `tokenkeeper token -vv ARGS...` in a clean environment with a home folder
/// of its own: the exit code, stdout and stderr.
fn tokenkeeper(home: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(tokenkeeper_binary())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("XDG_CACHE_HOME", home.join("cache"))
        .env("XDG_CONFIG_HOME", home.join("config"))
        .args(["token", "-vv"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("the command runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `tokenkeeper token --grant jwt-bearer` against Authlib: with
/// `--private-key` (RS256, its kid) for a subject, then with
/// `--assertion-file` holding an ES256 assertion made elsewhere; Authlib
/// issues each token for the subject, and neither the key nor an assertion
/// shows in the output, even at -vv.
#[test]
fn command_jwt_bearer_grant_with_a_key_file_and_an_assertion_file() {
    let a = authlib();
    let home = tempfile::tempdir().unwrap();
    let key_file = a.key_dir.join("issuer-rs256.pem");
    let key_file = key_file.to_str().expect("a UTF-8 path");
    let (subject, scope) = (unique("user"), unique("cli-bearer"));
    let (code, stdout, stderr) = tokenkeeper(
        home.path(),
        &[
            "--grant",
            "jwt-bearer",
            "--token-url",
            &a.token_url,
            "--client-id",
            ISSUER,
            "--private-key",
            key_file,
            "--key-id",
            "issuer-rs256",
            "--assertion-subject",
            &subject,
            "--scope",
            &scope,
        ],
    );
    assert_eq!(code, Some(0), "{stderr}");
    let token = stdout.trim();
    let seen = a.introspect(token);
    assert_eq!(seen["sub"], subject.as_str(), "{seen}");
    assert_eq!(seen["grant_type"], JWT_BEARER, "{seen}");
    let requests = a.requests(&scope);
    assert_eq!(requests.len(), 1, "{requests:?}");
    let assertion = &requests[0]["assertion"];
    assert_eq!(
        (&assertion["alg"], &assertion["kid"], &assertion["iss"]),
        (&json!("RS256"), &json!("issuer-rs256"), &json!(ISSUER)),
        "{assertion}"
    );
    let piece_of_key = a.key_pem("issuer-rs256").lines().nth(3).unwrap().to_owned();
    for output in [&stdout, &stderr] {
        assert!(
            !output.contains(&piece_of_key),
            "the key is shown: {output}"
        );
        assert!(!output.contains("eyJ"), "a JWT is shown: {output}");
    }
    assert!(!stderr.contains(token), "the token is on stderr");

    // An assertion made elsewhere, in a file.
    let (subject, scope, jti) = (unique("user"), unique("cli-bearer-file"), unique("jti"));
    let now = now_seconds();
    let assertion = sign_test_assertion(
        &a.key_pem("issuer-es256"),
        Some("issuer-es256"),
        &json!({"iss": ISSUER, "sub": subject, "aud": a.token_url,
                "iat": now, "exp": now + 600, "jti": jti}),
    )
    .unwrap();
    let file = home.path().join("assertion.jwt");
    std::fs::write(&file, &assertion).unwrap();
    let (code, stdout, stderr) = tokenkeeper(
        home.path(),
        &[
            "--grant",
            "jwt-bearer",
            "--token-url",
            &a.token_url,
            "--client-id",
            ISSUER,
            "--assertion-file",
            file.to_str().unwrap(),
            "--scope",
            &scope,
        ],
    );
    assert_eq!(code, Some(0), "{stderr}");
    let seen = a.introspect(stdout.trim());
    assert_eq!(seen["sub"], subject.as_str(), "{seen}");
    let requests = a.requests(&scope);
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(
        requests[0]["assertion"]["jti"],
        jti.as_str(),
        "{requests:?}"
    );
    let signature = assertion.rsplit('.').next().unwrap();
    for output in [&stdout, &stderr] {
        assert!(
            !output.contains(signature),
            "the assertion is shown: {output}"
        );
    }
}
