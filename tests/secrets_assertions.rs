//! No key and no assertion in `Debug`, `Display`, errors, events, the
//! `tracing` output or the cache file, on every driver: the inputs of client
//! authentication by assertion and of the JWT bearer grant (RFC 7523).
//!
//! One process-wide subscriber records every span and event at TRACE level
//! into one buffer (as tests/secrets.rs does for the other inputs). Each
//! test plants markers of its own: a line of text in the private key's PEM
//! file (where a reader that echoed the file would show it) besides the
//! key's own base64 lines, the client secret that keys HS256 assertions, and
//! claims of an assertion made elsewhere (read from a file, and from a
//! callback), and the tokens a token exchange presents (a subject token
//! file rotated and then refused, an actor token from a callback, another
//! watcher's token in a chain, and that watcher's client secret). It runs
//! watchers through start, a forced refresh, a refusal, an expired
//! assertion and shutdown, and looks for its markers everywhere.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Flavor, fast_backoff};
use tokenkeeper_core::oauth2::assertion::GrantAssertion;
use tokenkeeper_core::oauth2::exchange::{ACCESS_TOKEN_TYPE, JWT_TOKEN_TYPE, TokenExchange};
use tokenkeeper_core::oauth2::{AuthMethod, OAuth2Client};
use tokenkeeper_core::{ClientId, ClientSecret, Event, Jitter, TokenRecord};
use tokenkeeper_driver::assertion::{Assertion, AssertionError, ClientKey};
use tokenkeeper_driver::{Runtime, Source, TokenWatcher};
use tokenkeeper_testkit::authority::assertion::{public_jwk_from_pem, sign_test_assertion};
use tokenkeeper_testkit::authority::dpop::{KeyAlgorithm, private_key_pem};
use tokenkeeper_testkit::{Authority, Client};
use tracing_subscriber::util::SubscriberInitExt;

per_driver!(no_key_or_assertion_is_shown_or_logged);

/// Everything every span and event of this process wrote.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn captured() -> &'static Captured {
    static CAPTURED: OnceLock<Captured> = OnceLock::new();
    CAPTURED.get_or_init(|| {
        let captured = Captured::default();
        let writer = captured.clone();
        // ureq prints whole request URLs at its own TRACE level (its choice;
        // tests/secrets.rs explains): kept at debug as there.
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("trace,ureq=debug"))
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish()
            .try_init()
            .expect("no other global subscriber in this test binary");
        captured
    })
}

fn marker(what: &str, flavor: &str) -> String {
    format!(
        "{what}-marker-{}-{:016x}",
        flavor.replace('-', ""),
        fastrand::u64(..)
    )
}

fn assert_hidden(name: &str, secrets: &[String], logs: &str, shown: &str) {
    for secret in secrets {
        assert!(
            secret.len() >= 16,
            "{name}: a marker too short to mean anything"
        );
        if let Some(at) = logs.find(secret.as_str()) {
            let line = logs[..at].rfind('\n').map_or(0, |n| n + 1);
            let end = logs[at..].find('\n').map_or(logs.len(), |n| at + n);
            panic!(
                "{name}: a secret ({secret}) is in the logs:\n{}",
                &logs[line..end]
            );
        }
        assert!(
            !shown.contains(secret.as_str()),
            "{name}: a secret ({secret}) was shown:\n{shown}"
        );
    }
}

/// Every event of a watcher, shown as `Debug` and, for failures, `Display`.
#[derive(Clone, Default)]
struct Events(Arc<Mutex<Vec<String>>>);

impl Events {
    fn hook(&self) -> impl Fn(&Event) + Send + Sync + 'static {
        let events = Arc::clone(&self.0);
        move |event: &Event| {
            let mut shown = format!("{event:?}");
            if let Event::FetchFailed { error, .. } = event {
                shown.push_str(&format!(" / {error}"));
            }
            events.lock().unwrap().push(shown);
        }
    }

    fn all(&self) -> String {
        self.0.lock().unwrap().join("\n")
    }

    fn failures(&self) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.starts_with("FetchFailed"))
            .count()
    }
}

fn show<R: Runtime>(watcher: &TokenWatcher<R>) -> String {
    let token = watcher.token();
    let status = watcher.status();
    let last = status.last_error.as_ref().map(ToString::to_string);
    format!(
        "{watcher:?}\n{token:?}\n{status:?}\n{last:?}\n{:?}\n{}",
        watcher.cache_key(),
        watcher.health()
    )
}

fn next_token<R: Runtime>(watcher: &TokenWatcher<R>, seen: &TokenRecord) -> bool {
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        if watcher.token().ok().is_some_and(|t| *t.into_arc() != *seen) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn wait_for(mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn no_key_or_assertion_is_shown_or_logged<F: Flavor>() {
    let captured = captured();
    let flavor = F::NAME;
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::start();
    let mut shown = String::new();
    let mut secrets = Vec::new();

    // --- private_key_jwt with a key from a PEM file holding a marker line.
    let pem = private_key_pem(KeyAlgorithm::Es256).unwrap();
    let pem_marker = marker("pemfile", flavor);
    let key_path = dir.path().join("client-key.pem");
    std::fs::write(&key_path, format!("{pem_marker}\n{}", pem.as_str())).unwrap();
    secrets.push(pem_marker.clone());
    secrets.extend(
        pem.lines()
            .filter(|l| !l.starts_with("-----") && l.len() >= 16)
            .map(str::to_owned),
    );
    let pkj_id = format!("pkj-{}", flavor.replace('-', ""));
    let mut jwk = public_jwk_from_pem(&pem).unwrap();
    jwk["kid"] = serde_json::json!("kid-1");
    authority.register_client(
        Client::private_key_jwt(&pkj_id, jwk).token_lifetime(Duration::from_secs(300)),
    );
    let key = ClientKey::from_pem_file(&key_path)
        .expect("a PEM file with a line before the key")
        .with_key_id("kid-1");
    shown.push_str(&format!("{key:?}\n{:?}\n", Assertion::signed(key.clone())));
    let events = Events::default();
    let cache = dir.path().join("pkj.json");
    let builder = F::builder(
        OAuth2Client::private_key_jwt(authority.token_url(), ClientId::new(&pkj_id)).unwrap(),
    )
    .client_assertion(Assertion::signed(key))
    .backoff(fast_backoff())
    .jitter(Jitter::none())
    .refresh_now_min_interval(Duration::from_millis(100))
    .file_cache(&cache)
    .on_event(events.hook());
    shown.push_str(&format!("{builder:?}\n"));
    let watcher = F::block_on(builder.spawn()).expect("a first token");
    let first = watcher.token().unwrap().into_arc();
    let _ = F::block_on(watcher.refresh_now());
    assert!(next_token(&watcher, &first), "{flavor}: no refresh");
    // The authority forgets the key: a refusal, shown and logged.
    let other = private_key_pem(KeyAlgorithm::Es256).unwrap();
    authority.register_client(Client::private_key_jwt(
        &pkj_id,
        public_jwk_from_pem(&other).unwrap(),
    ));
    std::thread::sleep(Duration::from_millis(150));
    let _ = F::block_on(watcher.refresh_now());
    assert!(wait_for(|| events.failures() >= 1), "{flavor}: no refusal");
    shown.push_str(&show(&watcher));
    F::block_on(watcher.shutdown());
    shown.push_str(&std::fs::read_to_string(&cache).unwrap());

    // A file that is no key, holding a marker: the error names the file only.
    let bad_marker = marker("badkey", flavor);
    let bad = dir.path().join("bad.pem");
    std::fs::write(
        &bad,
        format!("-----BEGIN PRIVATE KEY-----\n{bad_marker}\n-----END PRIVATE KEY-----\n"),
    )
    .unwrap();
    secrets.push(bad_marker);
    let error = ClientKey::from_pem_file(&bad).unwrap_err();
    shown.push_str(&format!("{error}\n{error:?}\n"));
    let error = ClientKey::from_jwk(&format!(
        r#"{{"kty":"EC","crv":"P-256","d":"{}"}}"#,
        secrets[0]
    ))
    .unwrap_err();
    shown.push_str(&format!("{error}\n{error:?}\n"));

    // --- client_secret_jwt: the secret keys HS256 and never travels.
    let hmac_secret = marker("hmacsecret", flavor);
    secrets.push(hmac_secret.clone());
    let hs_id = format!("hs-{}", flavor.replace('-', ""));
    authority.register_client(Client::client_secret_jwt(&hs_id, &hmac_secret));
    let builder = F::builder(
        OAuth2Client::client_credentials(
            authority.token_url(),
            ClientId::new(&hs_id),
            ClientSecret::new(&hmac_secret),
        )
        .unwrap()
        .auth_method(AuthMethod::ClientSecretJwt),
    )
    .backoff(fast_backoff())
    .file_cache(dir.path().join("hs.json"))
    .on_event(events.hook());
    shown.push_str(&format!("{builder:?}\n"));
    let watcher = F::block_on(builder.spawn()).expect("a first token");
    shown.push_str(&show(&watcher));
    F::block_on(watcher.shutdown());
    shown.push_str(&std::fs::read_to_string(dir.path().join("hs.json")).unwrap());
    let wrong = F::block_on(
        F::builder(
            OAuth2Client::client_credentials(
                authority.token_url(),
                ClientId::new(&hs_id),
                ClientSecret::new(format!("{hmac_secret}-wrong")),
            )
            .unwrap()
            .auth_method(AuthMethod::ClientSecretJwt),
        )
        .spawn(),
    )
    .expect_err("a wrong HMAC key is refused");
    shown.push_str(&format!("{wrong}\n{wrong:?}\n"));

    // --- the JWT bearer grant with assertions made elsewhere: a file, then a callback.
    let issuer = "https://platform.example";
    let platform = private_key_pem(KeyAlgorithm::EdDsa).unwrap();
    authority.register_assertion_issuer(issuer, public_jwk_from_pem(&platform).unwrap());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let assertion = |claim: &str, jti: &str, exp: u64| {
        sign_test_assertion(
            &platform,
            None,
            &serde_json::json!({
                "iss": issuer, "sub": "workload", "aud": authority.token_url(),
                "iat": now, "exp": exp, "jti": jti, "secret_claim": claim,
            }),
        )
        .unwrap()
    };
    let claim = marker("claim", flavor);
    let fresh = assertion(&claim, &marker("jti", flavor), now + 600);
    let signature = fresh.rsplit('.').next().unwrap().to_owned();
    secrets.extend([claim.clone(), fresh.clone(), signature]);
    let token_path = dir.path().join("projected-token");
    std::fs::write(&token_path, &fresh).unwrap();
    let bearer = OAuth2Client::jwt_bearer(
        authority.token_url(),
        ClientId::new("workload-client"),
        GrantAssertion::external("projected-token"),
    )
    .unwrap();
    let builder =
        F::builder(Source::oauth2(bearer.clone()).grant_assertion(Assertion::file(&token_path)))
            .backoff(fast_backoff())
            .refresh_now_min_interval(Duration::from_millis(100))
            .file_cache(dir.path().join("bearer.json"))
            .on_event(events.hook());
    shown.push_str(&format!("{builder:?}\n"));
    let watcher = F::block_on(builder.spawn()).expect("a first token");
    // Expired underneath: a typed error, retried, shown without the assertion.
    let expired = assertion(&claim, &marker("jti", flavor), now - 3600);
    secrets.push(expired.clone());
    std::fs::write(&token_path, &expired).unwrap();
    let before = events.failures();
    std::thread::sleep(Duration::from_millis(150));
    let _ = F::block_on(watcher.refresh_now());
    assert!(
        wait_for(|| events.failures() > before),
        "{flavor}: no failure"
    );
    let status = watcher.status();
    assert!(
        status
            .last_error
            .as_ref()
            .is_some_and(|e| e.to_string().contains("expired") && e.is_permanent()),
        "{flavor}: {status:?}"
    );
    shown.push_str(&show(&watcher));
    F::block_on(watcher.shutdown());
    shown.push_str(&std::fs::read_to_string(dir.path().join("bearer.json")).unwrap());

    let given = assertion(&claim, &marker("jti", flavor), now + 600);
    secrets.push(given.clone());
    let from_callback = given.clone();
    let watcher = F::block_on(
        F::builder(
            Source::oauth2(bearer)
                .grant_assertion(Assertion::from_fn(move || Ok(from_callback.clone()))),
        )
        .on_event(events.hook())
        .spawn(),
    )
    .expect("a first token");
    shown.push_str(&show(&watcher));
    F::block_on(watcher.shutdown());
    let refused = F::block_on(
        F::builder(
            Source::oauth2(
                OAuth2Client::private_key_jwt(authority.token_url(), ClientId::new(&pkj_id))
                    .unwrap(),
            )
            .client_assertion(Assertion::from_fn({
                let claim = claim.clone();
                move || {
                    Err(AssertionError::misconfigured(format!(
                        "no assertion {}",
                        claim.len()
                    )))
                }
            })),
        )
        .spawn(),
    )
    .expect_err("a failing callback");
    shown.push_str(&format!("{refused}\n{refused:?}\n"));

    // --- token exchange (RFC 8693): a subject token from a file, rotated
    // underneath and then refused, an actor token from a callback, and a
    // chain presenting another watcher's token.
    let subject_one = marker("subjectone", flavor);
    let subject_two = marker("subjecttwo", flavor);
    let subject_refused = marker("subjectrefused", flavor);
    let actor = marker("actortoken", flavor);
    secrets.extend([
        subject_one.clone(),
        subject_two.clone(),
        subject_refused.clone(),
        actor.clone(),
    ]);
    for token in [&subject_one, &subject_two] {
        authority.accept_exchange_token(JWT_TOKEN_TYPE, token, "workload");
    }
    authority.accept_exchange_token(ACCESS_TOKEN_TYPE, &actor, "deployer");
    let subject_path = dir.path().join("subject-token");
    std::fs::write(&subject_path, &subject_one).unwrap();
    let exchange = OAuth2Client::token_exchange(
        authority.token_url(),
        ClientId::new("exchanger"),
        TokenExchange::new(JWT_TOKEN_TYPE).actor(ACCESS_TOKEN_TYPE),
    )
    .unwrap()
    .audience("https://api.example");
    let builder = F::builder(exchange.clone())
        .subject_token_file(&subject_path)
        .actor_token_fn("deployer", {
            let actor = actor.clone();
            move || Ok(actor.clone())
        })
        .backoff(fast_backoff())
        .refresh_now_min_interval(Duration::from_millis(100))
        .file_cache(dir.path().join("exchange.json"))
        .on_event(events.hook());
    shown.push_str(&format!(
        "{builder:?}\n{:?}\n",
        builder.cache_key().description()
    ));
    let watcher = F::block_on(builder.spawn()).expect("a first exchanged token");
    let first = watcher.token().unwrap().into_arc();
    std::fs::write(&subject_path, &subject_two).unwrap();
    std::thread::sleep(Duration::from_millis(150));
    let _ = F::block_on(watcher.refresh_now());
    assert!(
        next_token(&watcher, &first),
        "{flavor}: no exchange refresh"
    );
    std::fs::write(&subject_path, &subject_refused).unwrap();
    let before = events.failures();
    std::thread::sleep(Duration::from_millis(150));
    let _ = F::block_on(watcher.refresh_now());
    assert!(
        wait_for(|| events.failures() > before),
        "{flavor}: no refusal of the exchange"
    );
    shown.push_str(&show(&watcher));
    F::block_on(watcher.shutdown());
    shown.push_str(&std::fs::read_to_string(dir.path().join("exchange.json")).unwrap());
    // A chain: the upstream's tokens are secrets too.
    let upstream_id = format!("upstream-{}", flavor.replace('-', ""));
    let upstream_secret = marker("upstreamsecret", flavor);
    secrets.push(upstream_secret.clone());
    authority.register_client(Client::new(&upstream_id, &upstream_secret));
    let upstream = F::block_on(
        F::builder(
            OAuth2Client::client_credentials(
                authority.token_url(),
                ClientId::new(&upstream_id),
                ClientSecret::new(&upstream_secret),
            )
            .unwrap(),
        )
        .spawn(),
    )
    .expect("an upstream token");
    let upstream_token = upstream
        .token()
        .unwrap()
        .access_token
        .expose_secret()
        .to_owned();
    assert!(upstream_token.len() >= 16, "{upstream_token:?}");
    secrets.push(upstream_token);
    let chained = F::block_on(
        F::builder(
            OAuth2Client::token_exchange(
                authority.token_url(),
                ClientId::new("exchanger"),
                TokenExchange::new(ACCESS_TOKEN_TYPE),
            )
            .unwrap(),
        )
        .subject_token_from(&upstream)
        .on_event(events.hook())
        .spawn(),
    )
    .expect("a chained token");
    shown.push_str(&format!(
        "{:?}\n",
        Source::oauth2(exchange).subject_token(
            tokenkeeper_driver::token_exchange::ExchangeToken::watcher(&upstream)
        )
    ));
    shown.push_str(&show(&chained));
    F::block_on(chained.shutdown());
    F::block_on(upstream.shutdown());

    shown.push_str(&events.all());
    let logs = captured.text();
    assert!(
        logs.contains("tokenkeeper.fetch"),
        "{flavor}: the fetches were not traced at all"
    );
    assert_hidden(flavor, &secrets, &logs, &shown);
}
