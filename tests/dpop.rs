//! DPoP (RFC 9449) at the token endpoint, on every driver, end to end: the
//! driver's key signs the proof the core's claims describe, and the test
//! authority checks it independently (signature with the header's key,
//! `typ`, `htm`, `htu`, `iat`, replay of `jti`, and its nonce when it asks
//! for one) and binds the token to the key's thumbprint.

mod common;

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::{Flavor, fast_backoff};
use serde_json::Value;
use tokenkeeper_core::oauth2::OAuth2Client;
use tokenkeeper_core::{
    ClientId, ClientSecret, Event, Jitter, RefreshNow, RefreshToken, TokenRecord,
};
use tokenkeeper_driver::dpop::DpopKey;
use tokenkeeper_driver::{Runtime, TokenWatcher, TokenWatcherBuilder};
use tokenkeeper_testkit::authority::dpop::{KeyAlgorithm, private_key_pem};
use tokenkeeper_testkit::{
    Authority, Client, DpopError, DpopNonces, DpopProof, DpopVerdict, RequestRecord,
};
use tracing_subscriber::util::SubscriberInitExt;

per_driver!(
    the_first_token_request_carries_a_valid_proof_of_either_algorithm,
    the_nonce_dance_is_two_requests_and_no_failure,
    later_requests_send_the_latest_nonce,
    refresh_tokens_rotate_through_nonce_retries,
    no_proof_id_is_ever_sent_twice,
    dpop_and_bearer_watchers_never_share_a_cached_token,
    no_secret_of_a_dpop_watcher_is_shown_or_logged,
);

const SECRET: &str = "dpop-client-secret";

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// An authority with one client that must send DPoP proofs (and one that
/// may), and these nonce rules.
fn authority(nonces: DpopNonces) -> Authority {
    let authority = Authority::builder().dpop_nonces(nonces).start();
    authority.register_client(Client::new("dpop-svc", SECRET).require_dpop(true));
    authority.register_client(Client::new("either-svc", SECRET));
    authority
}

fn client(authority: &Authority, id: &str) -> OAuth2Client {
    OAuth2Client::client_credentials(
        authority.token_url().as_str(),
        ClientId::new(id),
        ClientSecret::new(SECRET),
    )
    .unwrap()
}

/// The failed fetches a watcher reported.
#[derive(Clone, Default)]
struct Failures(Arc<Mutex<Vec<String>>>);

impl Failures {
    fn hook(&self) -> impl Fn(&Event) + Send + Sync + 'static {
        let failures = Arc::clone(&self.0);
        move |event: &Event| {
            if let Event::FetchFailed { error, .. } = event {
                failures.lock().unwrap().push(error.to_string());
            }
        }
    }

    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

fn builder<F: Flavor>(client: OAuth2Client, key: &DpopKey) -> TokenWatcherBuilder<F::R> {
    F::builder(client)
        .dpop(key.clone())
        .jitter(Jitter::none())
        .backoff(fast_backoff())
        .refresh_now_min_interval(Duration::from_millis(10))
        .first_token_timeout(Duration::from_secs(20))
}

fn spawn<F: Flavor>(builder: TokenWatcherBuilder<F::R>) -> TokenWatcher<F::R> {
    F::block_on(builder.spawn()).unwrap_or_else(|e| panic!("{}: spawn failed: {e}", F::NAME))
}

fn keys() -> [DpopKey; 2] {
    [
        DpopKey::generate_es256().unwrap(),
        DpopKey::generate_ed25519().unwrap(),
    ]
}

/// Waits up to 10 s for a token other than `seen` (a refresh published
/// before this call is seen too).
fn next_token<R: Runtime>(watcher: &TokenWatcher<R>, seen: &TokenRecord) -> Arc<TokenRecord> {
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        if let Ok(token) = watcher.token()
            && *token != *seen
        {
            return token.into_arc();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("no new token within 10 s: {:?}", watcher.status());
}

/// Forces a refresh (once the 10 ms rate limit allows) and waits for its
/// token.
fn forced_refresh<F: Flavor>(watcher: &TokenWatcher<F::R>) -> Arc<TokenRecord> {
    let before = watcher.token().unwrap().into_arc();
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        match F::block_on(watcher.refresh_now()) {
            Ok(RefreshNow::Started | RefreshNow::Joined) => break,
            Ok(RefreshNow::RateLimited { .. }) if Instant::now() < end => {
                std::thread::sleep(Duration::from_millis(5));
            }
            other => panic!("{}: {other:?}", F::NAME),
        }
    }
    next_token(watcher, &before)
}

/// The proof a logged request carried, and what the authority made of it.
fn proof_of(record: &RequestRecord) -> (DpopProof, DpopVerdict) {
    let check = record
        .dpop
        .clone()
        .unwrap_or_else(|| panic!("request {} carried no DPoP proof", record.seq));
    let proof = check
        .proof
        .unwrap_or_else(|| panic!("request {} carried an unreadable proof", record.seq));
    (proof, check.verdict)
}

fn cnf_jkt(token: &TokenRecord) -> Option<&str> {
    token.extra.get("cnf")?.get("jkt")?.as_str()
}

// ---------------------------------------------------------------------------
// The proof, the binding, the record
// ---------------------------------------------------------------------------

fn the_first_token_request_carries_a_valid_proof_of_either_algorithm<F: Flavor>() {
    for key in keys() {
        let name = format!("{} {}", F::NAME, key.algorithm());
        let authority = authority(DpopNonces::NotRequired);
        let failures = Failures::default();
        let watcher = spawn::<F>(
            builder::<F>(client(&authority, "dpop-svc"), &key).on_event(failures.hook()),
        );

        let requests = authority.requests();
        assert_eq!(requests.len(), 1, "{name}: {requests:#?}");
        let (proof, verdict) = proof_of(&requests[0]);
        assert_eq!(verdict, DpopVerdict::Accepted, "{name}");
        assert_eq!(proof.alg, key.algorithm(), "{name}");
        // The authority computed the thumbprint of the key in the header.
        assert_eq!(proof.jkt, key.thumbprint(), "{name}");
        assert_eq!(&proof.jwk, key.public_jwk(), "{name}");
        assert_eq!(
            (proof.htm.as_str(), proof.htu.as_str()),
            ("POST", authority.token_url().as_str()),
            "{name}"
        );
        assert_eq!((proof.nonce, proof.ath), (None, None), "{name}");

        let token = watcher.token().unwrap();
        assert_eq!(token.token_type, "DPoP", "{name}");
        assert_eq!(cnf_jkt(&token), Some(key.thumbprint()), "{name}");
        assert_eq!(
            authority.dpop_binding(token.access_token.expose_secret()),
            Some(key.thumbprint().to_owned()),
            "{name}"
        );
        assert_eq!(
            watcher.dpop_key().map(DpopKey::thumbprint),
            Some(key.thumbprint()),
            "{name}"
        );
        assert!(failures.all().is_empty(), "{name}: {:?}", failures.all());
        drop(token);
        F::block_on(watcher.shutdown());
    }
}

// ---------------------------------------------------------------------------
// Nonces
// ---------------------------------------------------------------------------

fn the_nonce_dance_is_two_requests_and_no_failure<F: Flavor>() {
    let authority = authority(DpopNonces::Required);
    let key = DpopKey::generate_es256().unwrap();
    let failures = Failures::default();
    let watcher =
        spawn::<F>(builder::<F>(client(&authority, "dpop-svc"), &key).on_event(failures.hook()));
    let nonce = authority.dpop_nonce().unwrap();

    let requests = authority.requests();
    assert_eq!(requests.len(), 2, "{}: {requests:#?}", F::NAME);
    assert_eq!(requests[0].status, Some(400));
    assert_eq!(
        proof_of(&requests[0]).1,
        DpopVerdict::Refused(DpopError::NonceRequired { presented: None })
    );
    let (second, verdict) = proof_of(&requests[1]);
    assert_eq!(verdict, DpopVerdict::Accepted, "{}", F::NAME);
    assert_eq!(second.nonce.as_deref(), Some(nonce.as_str()));
    assert_eq!(watcher.token().unwrap().token_type, "DPoP");
    assert!(
        failures.all().is_empty(),
        "{}: {:?}",
        F::NAME,
        failures.all()
    );
    let status = watcher.status();
    assert_eq!(
        (status.consecutive_failures, status.last_error),
        (0, None),
        "{}",
        F::NAME
    );

    // The authority changes its nonce: the next refresh asks once with the
    // old one, is told the new one, and asks again at once.
    let rotated = authority.rotate_dpop_nonce().unwrap();
    forced_refresh::<F>(&watcher);
    let requests = authority.requests();
    assert_eq!(requests.len(), 4, "{}: {requests:#?}", F::NAME);
    assert_eq!(
        proof_of(&requests[2]).1,
        DpopVerdict::Refused(DpopError::NonceRequired {
            presented: Some(nonce)
        })
    );
    let (fourth, verdict) = proof_of(&requests[3]);
    assert_eq!(verdict, DpopVerdict::Accepted);
    assert_eq!(fourth.nonce, Some(rotated));
    assert!(
        failures.all().is_empty(),
        "{}: {:?}",
        F::NAME,
        failures.all()
    );
    F::block_on(watcher.shutdown());
}

fn later_requests_send_the_latest_nonce<F: Flavor>() {
    // Each token uses the nonce up and its answer hands out the next one: a
    // driver that sent any nonce but the latest would be refused again.
    let authority = authority(DpopNonces::FreshPerToken);
    let key = DpopKey::generate_ed25519().unwrap();
    let failures = Failures::default();
    let watcher =
        spawn::<F>(builder::<F>(client(&authority, "dpop-svc"), &key).on_event(failures.hook()));
    for _ in 0..5 {
        let token = forced_refresh::<F>(&watcher);
        assert_eq!(token.token_type, "DPoP");
    }
    let requests = authority.requests();
    // The first nonce dance, then one request per refresh.
    assert_eq!(requests.len(), 7, "{}: {requests:#?}", F::NAME);
    assert_eq!(authority.count_by_status(400), 1, "{}", F::NAME);
    let nonces: Vec<String> = requests[1..]
        .iter()
        .map(|record| {
            let (proof, verdict) = proof_of(record);
            assert_eq!(verdict, DpopVerdict::Accepted, "{}", F::NAME);
            proof.nonce.expect("a nonce")
        })
        .collect();
    for (n, nonce) in nonces.iter().enumerate() {
        assert!(!nonces[..n].contains(nonce), "{}: {nonces:?}", F::NAME);
    }
    assert!(
        failures.all().is_empty(),
        "{}: {:?}",
        F::NAME,
        failures.all()
    );
    F::block_on(watcher.shutdown());
}

fn refresh_tokens_rotate_through_nonce_retries<F: Flavor>() {
    // A use_dpop_nonce answer spends nothing: the retry presents the same
    // refresh token, which the authority accepts once and rotates.
    let authority = authority(DpopNonces::Required);
    let initial = authority.issue_refresh_token("dpop-svc");
    let client = OAuth2Client::refresh_token(
        authority.token_url().as_str(),
        ClientId::new("dpop-svc"),
        Some(ClientSecret::new(SECRET)),
    )
    .unwrap();
    let key = DpopKey::generate_es256().unwrap();
    let failures = Failures::default();
    let watcher = spawn::<F>(
        builder::<F>(client, &key)
            .initial_refresh_token(RefreshToken::new(initial.clone()))
            .on_event(failures.hook()),
    );
    authority.rotate_dpop_nonce();
    forced_refresh::<F>(&watcher);
    forced_refresh::<F>(&watcher);
    let requests = authority.requests();
    // Two nonce dances (at the start and after the rotation), one plain refresh.
    assert_eq!(requests.len(), 5, "{}: {requests:#?}", F::NAME);
    assert_eq!(requests[0].refresh_token.as_deref(), Some(initial.as_str()));
    assert_eq!(requests[1].refresh_token, requests[0].refresh_token);
    assert_eq!(requests[3].refresh_token, requests[2].refresh_token);
    assert_eq!(authority.refresh_token_reuses(), 0, "{}", F::NAME);
    assert_eq!(authority.live_refresh_tokens("dpop-svc").len(), 1);
    let token = watcher.token().unwrap();
    assert_eq!(token.token_type, "DPoP");
    assert_eq!(
        token.refresh_token.as_ref().map(|rt| rt.expose_secret()),
        authority
            .live_refresh_tokens("dpop-svc")
            .first()
            .map(String::as_str)
    );
    assert!(
        failures.all().is_empty(),
        "{}: {:?}",
        F::NAME,
        failures.all()
    );
    drop(token);
    F::block_on(watcher.shutdown());
}

// ---------------------------------------------------------------------------
// Replay
// ---------------------------------------------------------------------------

fn no_proof_id_is_ever_sent_twice<F: Flavor>() {
    // The authority refuses a proof id it saw before. Two watchers of one
    // client, given the same seed (as reproducible tests do), each refresh
    // many times: every proof must carry an id of its own.
    let authority = authority(DpopNonces::NotRequired);
    let failures = Failures::default();
    let watchers: Vec<_> = keys()
        .iter()
        .map(|key| {
            spawn::<F>(
                builder::<F>(client(&authority, "dpop-svc"), key)
                    .seed(7)
                    .on_event(failures.hook()),
            )
        })
        .collect();
    for _ in 0..10 {
        for watcher in &watchers {
            forced_refresh::<F>(watcher);
        }
    }
    let requests = authority.requests();
    assert_eq!(requests.len(), 22, "{}", F::NAME);
    let mut ids = Vec::new();
    for record in &requests {
        let (proof, verdict) = proof_of(record);
        assert_eq!(verdict, DpopVerdict::Accepted, "{}", F::NAME);
        assert!(
            !ids.contains(&proof.jti),
            "{}: {} twice",
            F::NAME,
            proof.jti
        );
        ids.push(proof.jti);
    }
    assert!(
        failures.all().is_empty(),
        "{}: {:?}",
        F::NAME,
        failures.all()
    );
    for watcher in &watchers {
        F::block_on(watcher.shutdown());
    }
}

// ---------------------------------------------------------------------------
// The cache key
// ---------------------------------------------------------------------------

fn dpop_and_bearer_watchers_never_share_a_cached_token<F: Flavor>() {
    let authority = authority(DpopNonces::NotRequired);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token.json");
    let [key, other_key] = keys();
    let bearer = || {
        F::builder(client(&authority, "either-svc"))
            .file_cache(&file)
            .first_token_timeout(Duration::from_secs(20))
    };
    let bound =
        |key: &DpopKey| builder::<F>(client(&authority, "either-svc"), key).file_cache(&file);

    // The builder already tells the key the tokens are cached under.
    assert_ne!(bearer().cache_key(), bound(&key).cache_key(), "{}", F::NAME);
    assert_ne!(bound(&key).cache_key(), bound(&other_key).cache_key());
    assert!(
        bound(&key)
            .cache_key()
            .description()
            .contains(key.thumbprint())
    );

    let run = |builder: TokenWatcherBuilder<F::R>| {
        let watcher = spawn::<F>(builder);
        let token = watcher.token().unwrap().into_arc();
        let key = watcher.cache_key().clone();
        F::block_on(watcher.shutdown());
        (token, key)
    };
    let (first, bearer_key) = run(bearer());
    assert_eq!(
        (first.token_type.as_str(), cnf_jkt(&first)),
        ("Bearer", None)
    );
    assert_eq!(authority.request_count(), 1);

    // A DPoP watcher finds the bearer token in the file and does not use it.
    let (second, dpop_key) = run(bound(&key));
    assert_ne!(bearer_key, dpop_key);
    assert_eq!(authority.request_count(), 2, "{}", F::NAME);
    assert_eq!(second.token_type, "DPoP");
    assert_eq!(cnf_jkt(&second), Some(key.thumbprint()));
    assert_ne!(second.access_token, first.access_token);
    // Another watcher of the same key does (the cache works).
    let (again, _) = run(bound(&key));
    assert_eq!(again.access_token, second.access_token, "{}", F::NAME);
    assert_eq!(authority.request_count(), 2);
    // Nor the other way round, nor with another key.
    let (third, _) = run(bearer());
    assert_eq!(third.token_type, "Bearer", "{}", F::NAME);
    assert_eq!(authority.request_count(), 3);
    let (fourth, _) = run(bound(&other_key));
    assert_eq!(
        cnf_jkt(&fourth),
        Some(other_key.thumbprint()),
        "{}",
        F::NAME
    );
    assert_eq!(authority.request_count(), 4);
    let (fifth, _) = run(bound(&key));
    assert_eq!(cnf_jkt(&fifth), Some(key.thumbprint()), "{}", F::NAME);
    assert_eq!(authority.request_count(), 5);
    // Each token is bound where the record says.
    for token in [&first, &second, &third, &fourth, &fifth] {
        assert_eq!(
            authority
                .dpop_binding(token.access_token.expose_secret())
                .as_deref(),
            cnf_jkt(token)
        );
    }
}

// ---------------------------------------------------------------------------
// Secrets
// ---------------------------------------------------------------------------

/// Everything the process-wide subscriber wrote.
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

/// Installs (once) a subscriber that records every span and event at TRACE
/// level, except ureq's wire tracing (which prints whole requests at TRACE
/// by its own documented choice), and returns what it recorded.
fn captured() -> &'static Captured {
    static CAPTURED: OnceLock<Captured> = OnceLock::new();
    CAPTURED.get_or_init(|| {
        let captured = Captured::default();
        let writer = captured.clone();
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

/// The pieces of a PEM key that would give it away: the whole text, and
/// each line of its base64 body.
fn pem_secrets(pem: &str) -> Vec<String> {
    let mut secrets = vec![pem.trim().to_owned()];
    secrets.extend(
        pem.lines()
            .filter(|line| !line.starts_with("-----") && line.len() >= 16)
            .map(str::to_owned),
    );
    secrets
}

fn assert_hidden(name: &str, secrets: &[String], logs: &str, shown: &str) {
    for secret in secrets {
        assert!(!secret.is_empty());
        if let Some(at) = logs.find(secret.as_str()) {
            let start = logs[..at].rfind('\n').map_or(0, |n| n + 1);
            let end = logs[at..].find('\n').map_or(logs.len(), |n| at + n);
            panic!("{name}: a secret is in the logs:\n{}", &logs[start..end]);
        }
        assert!(
            !shown.contains(secret.as_str()),
            "{name}: a secret was shown:\n{shown}"
        );
    }
}

fn key_from_file(dir: &Path, algorithm: KeyAlgorithm) -> (DpopKey, String) {
    let pem = private_key_pem(algorithm).unwrap();
    let path = dir.join("dpop-key.pem");
    std::fs::write(&path, pem.as_bytes()).unwrap();
    let key = DpopKey::from_pkcs8_pem_file(&path).unwrap();
    (key, pem.to_string())
}

fn no_secret_of_a_dpop_watcher_is_shown_or_logged<F: Flavor>() {
    let captured = captured();
    for algorithm in [KeyAlgorithm::Es256, KeyAlgorithm::EdDsa] {
        let name = format!("{} {algorithm:?}", F::NAME);
        let dir = tempfile::tempdir().unwrap();
        let (key, pem) = key_from_file(dir.path(), algorithm);
        let authority = authority(DpopNonces::Required);
        let builder = builder::<F>(client(&authority, "dpop-svc"), &key)
            .file_cache(dir.path().join("token.json"));
        let mut shown = format!("{builder:?}\n{key:?}\n{:?}", key.public_jwk());

        let watcher = spawn::<F>(builder);
        forced_refresh::<F>(&watcher);
        let token = watcher.token().unwrap();
        shown.push_str(&format!(
            "{watcher:?}\n{token:?}\n{:?}\n{:?}\n{:?}",
            watcher.status(),
            watcher.dpop_key(),
            watcher.cache_key()
        ));
        drop(token);
        F::block_on(watcher.shutdown());

        let mut secrets = pem_secrets(&pem);
        secrets.push(SECRET.to_owned());
        secrets.extend(
            authority
                .issued_tokens()
                .into_iter()
                .map(|token| token.access_token),
        );
        assert!(secrets.len() >= 4, "{name}: {}", secrets.len());
        // What is shown names the key by its public parts.
        assert!(shown.contains(key.thumbprint()), "{name}: {shown}");
        let cached: Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("token.json")).unwrap()).unwrap();
        assert!(!cached.to_string().contains(pem.trim()), "{name}");
        let logs = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
        assert_hidden(&name, &secrets, &logs, &shown);
    }
}
