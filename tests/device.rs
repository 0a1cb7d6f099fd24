//! Device login (the device authorization grant, RFC 8628) on every driver,
//! against the test authority, with the person played by the test: the
//! login polls at the announced interval until approval and stores the
//! token where a later `get_token` built the same way refreshes it without
//! the person; `slow_down` grows the interval for good (the authority itself
//! answers `slow_down` to a poll that comes too soon, so a second `slow_down`
//! in the log would show a client that did not obey); a refusal and an
//! expiry end the login with their errors and no further poll; the device
//! code never shows in `Debug`, `Display`, errors or the logs.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::Flavor;
use tokenkeeper_core::oauth2::discovery::Issuer;
use tokenkeeper_core::oauth2::{OAuth2Client, TokenUrl};
use tokenkeeper_core::{ClientId, ClientSecret, Origin};
use tokenkeeper_driver::OneShot;
use tokenkeeper_driver::device::{DeviceEndpoint, DeviceLogin, DeviceLoginError, DevicePrompt};
use tokenkeeper_testkit::authority::{Outcome, RequestRecord};
use tokenkeeper_testkit::{Authority, Client};
use tracing_subscriber::util::SubscriberInitExt;

per_driver!(
    approval_after_pending_polls_is_stored_and_refreshed_without_the_person,
    slow_down_grows_the_interval_for_every_later_poll,
    a_refusal_ends_the_login,
    expiry_ends_the_login_whoever_notices_it,
    a_client_that_is_not_a_refresh_token_client_is_refused_before_any_request,
    an_issuer_client_takes_both_endpoints_from_the_metadata,
    the_device_code_never_shows,
);

const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// An authority announcing a 1 s interval, and its client.
fn setup() -> (Authority, OAuth2Client, TokenUrl) {
    let authority = Authority::start();
    authority.set_device_interval(Duration::from_secs(1));
    authority.register_client(
        Client::new("tv", "tv-secret-value").token_lifetime(Duration::from_secs(600)),
    );
    let client = OAuth2Client::refresh_token(
        authority.token_url(),
        ClientId::new("tv"),
        Some(ClientSecret::new("tv-secret-value")),
    )
    .unwrap()
    .scope("offline_access");
    let endpoint = TokenUrl::parse(&authority.device_authorization_url(), false).unwrap();
    (authority, client, endpoint)
}

fn polls(authority: &Authority) -> Vec<RequestRecord> {
    authority
        .requests()
        .into_iter()
        .filter(|r| r.grant_type.as_deref() == Some(DEVICE_GRANT))
        .collect()
}

fn refused_with(record: &RequestRecord) -> Option<&str> {
    match &record.outcome {
        Outcome::Rejected { error } => Some(error),
        _ => None,
    }
}

/// Plays the person: once `after_polls` polls were answered, calls `act`
/// with the waiting user code.
fn person(
    authority: &Arc<Authority>,
    after_polls: usize,
    act: impl FnOnce(&Authority, &str) + Send + 'static,
) -> std::thread::JoinHandle<()> {
    let authority = Arc::clone(authority);
    std::thread::spawn(move || {
        let ready = authority.wait_until(Duration::from_secs(60), |log| {
            log.iter()
                .filter(|r| {
                    r.grant_type.as_deref() == Some(DEVICE_GRANT)
                        && !matches!(r.outcome, Outcome::Pending)
                })
                .count()
                >= after_polls
        });
        assert!(ready, "the login did not poll {after_polls} times");
        let codes = authority.pending_user_codes();
        assert_eq!(codes.len(), 1, "{codes:?}");
        act(&authority, &codes[0]);
    })
}

/// A prompt recorder for the login's callback.
fn recorder() -> (
    Arc<Mutex<Option<DevicePrompt>>>,
    impl FnOnce(&DevicePrompt) + Send + 'static,
) {
    let seen = Arc::new(Mutex::new(None));
    let into = Arc::clone(&seen);
    (seen, move |prompt: &DevicePrompt| {
        *into.lock().unwrap() = Some(prompt.clone());
    })
}

fn approval_after_pending_polls_is_stored_and_refreshed_without_the_person<F: Flavor>() {
    let (authority, client, endpoint) = setup();
    let authority = Arc::new(authority);
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache.json");
    let (seen, present) = recorder();
    let approver = person(&authority, 2, |a, code| assert!(a.approve_device(code)));
    let login: DeviceLogin = F::block_on(
        F::builder(client.clone())
            .file_cache(&cache)
            .device_login(endpoint, present),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", F::NAME));
    approver.join().unwrap();

    // The person was shown the code the authority handed out, and where.
    let prompt = seen.lock().unwrap().clone().expect("the prompt was shown");
    assert!(
        prompt.verification_uri.starts_with(&authority.base_url()),
        "{prompt:?}"
    );
    assert_eq!(
        prompt.uri_to_show(),
        format!("{}?user_code={}", prompt.verification_uri, prompt.user_code)
    );
    assert!(prompt.expires_in > Duration::from_secs(500));

    // Pending answers, then the token, one poll per interval.
    let log = polls(&authority);
    assert_eq!(log.len(), login.polls as usize, "{}", F::NAME);
    assert!(log.len() >= 3, "{log:?}");
    for record in &log[..log.len() - 1] {
        assert_eq!(
            refused_with(record),
            Some("authorization_pending"),
            "{record:?}"
        );
    }
    let Outcome::Issued {
        access_token,
        refresh_token: Some(refresh_token),
    } = &log[log.len() - 1].outcome
    else {
        panic!("{:?}", log[log.len() - 1]);
    };
    assert_eq!(login.token.access_token.expose_secret(), access_token);
    assert_eq!(
        login.token.refresh_token.as_ref().unwrap().expose_secret(),
        refresh_token
    );
    assert!(login.warnings.is_empty(), "{:?}", login.warnings);
    for pair in log.windows(2) {
        let gap = pair[1].at.duration_since(pair[0].at).unwrap_or_default();
        assert!(gap >= Duration::from_millis(900), "polled after {gap:?}");
    }

    // A later run with the same builder settings finds it, with no request...
    let before = authority.request_count();
    let cached = F::block_on(
        F::builder(client.clone())
            .file_cache(&cache)
            .get_token(OneShot::new()),
    )
    .unwrap();
    assert!(
        matches!(cached.origin, Origin::Cache { .. }),
        "{:?}",
        cached.origin
    );
    assert_eq!(cached.token.access_token, login.token.access_token);
    assert_eq!(authority.request_count(), before);
    // ...and, when its token is not good enough, refreshes with the refresh
    // token the login stored: no person needed.
    let refreshed = F::block_on(
        F::builder(client)
            .file_cache(&cache)
            .get_token(OneShot::new().min_valid(Duration::from_secs(3_600))),
    )
    .unwrap();
    assert_ne!(refreshed.token.access_token, login.token.access_token);
    let refreshes: Vec<RequestRecord> = authority
        .requests()
        .into_iter()
        .filter(|r| r.grant_type.as_deref() == Some("refresh_token"))
        .collect();
    assert_eq!(refreshes.len(), 1, "{refreshes:?}");
    assert_eq!(
        refreshes[0].refresh_token.as_deref(),
        Some(refresh_token.as_str())
    );
    assert!(matches!(refreshes[0].outcome, Outcome::Issued { .. }));
}

fn slow_down_grows_the_interval_for_every_later_poll<F: Flavor>() {
    let (authority, client, endpoint) = setup();
    let authority = Arc::new(authority);
    authority.force_slow_down(1);
    let approver = person(&authority, 3, |a, code| assert!(a.approve_device(code)));
    let (_, present) = recorder();
    let login = F::block_on(F::builder(client).device_login(endpoint, present)).unwrap();
    approver.join().unwrap();
    // The authority answers slow_down on its own to a poll that comes
    // sooner than the code's interval (grown to 6 s by the first): the log
    // shows exactly the one forced, then pending answers.
    let log = polls(&authority);
    let answers: Vec<Option<&str>> = log.iter().map(refused_with).collect();
    assert_eq!(
        answers[..3],
        [
            Some("slow_down"),
            Some("authorization_pending"),
            Some("authorization_pending")
        ],
        "{}: {log:?}",
        F::NAME
    );
    assert!(matches!(log[log.len() - 1].outcome, Outcome::Issued { .. }));
    assert_eq!(login.interval, Duration::from_secs(6));
    assert_eq!(login.polls as usize, log.len());
}

fn a_refusal_ends_the_login<F: Flavor>() {
    let (authority, client, endpoint) = setup();
    let authority = Arc::new(authority);
    let person = person(&authority, 1, |a, code| assert!(a.deny_device(code)));
    let (_, present) = recorder();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache.json");
    let error = F::block_on(
        F::builder(client)
            .file_cache(&cache)
            .device_login(endpoint, present),
    )
    .unwrap_err();
    person.join().unwrap();
    assert_eq!(error, DeviceLoginError::Denied, "{}", F::NAME);
    assert!(error.to_string().contains("refused"), "{error}");
    let log = polls(&authority);
    assert_eq!(
        refused_with(&log[log.len() - 1]),
        Some("access_denied"),
        "{log:?}"
    );
    // No poll after the refusal, and nothing stored.
    std::thread::sleep(Duration::from_millis(1_500));
    assert_eq!(polls(&authority).len(), log.len());
    assert!(!cache.exists());
}

fn expiry_ends_the_login_whoever_notices_it<F: Flavor>() {
    // The authority says so (expired_token)...
    let (authority, client, endpoint) = setup();
    let authority = Arc::new(authority);
    let person = person(&authority, 1, |a, code| assert!(a.expire_device(code)));
    let (_, present) = recorder();
    let error = F::block_on(F::builder(client.clone()).device_login(endpoint.clone(), present))
        .unwrap_err();
    person.join().unwrap();
    assert_eq!(error, DeviceLoginError::Expired, "{}", F::NAME);
    let log = polls(&authority);
    assert_eq!(refused_with(&log[log.len() - 1]), Some("expired_token"));

    // ...or the codes' lifetime runs out between polls: no poll is sent
    // after it.
    authority.clear_requests();
    authority.set_device_code_lifetime(Duration::from_secs(2));
    authority.set_device_interval(Duration::from_secs(5));
    let started = Instant::now();
    let (_, present) = recorder();
    let error = F::block_on(F::builder(client).device_login(endpoint, present)).unwrap_err();
    assert_eq!(error, DeviceLoginError::Expired);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(polls(&authority).is_empty(), "{:?}", polls(&authority));
    assert!(error.to_string().contains("expired"), "{error}");
}

fn a_client_that_is_not_a_refresh_token_client_is_refused_before_any_request<F: Flavor>() {
    let (authority, _, endpoint) = setup();
    let credentials = OAuth2Client::client_credentials(
        authority.token_url(),
        ClientId::new("tv"),
        ClientSecret::new("tv-secret-value"),
    )
    .unwrap();
    let (_, present) = recorder();
    let error = F::block_on(F::builder(credentials).device_login(endpoint, present)).unwrap_err();
    assert!(
        matches!(error, DeviceLoginError::Unsupported(_)),
        "{error:?}"
    );
    assert!(error.to_string().contains("refresh_token"), "{error}");
    assert_eq!(authority.request_count(), 0);
    // A device authorization URL that is no such endpoint says so.
    let (_, client, _) = setup();
    let nowhere = TokenUrl::parse(&format!("{}/nowhere", authority.base_url()), false).unwrap();
    let (_, present) = recorder();
    let error = F::block_on(F::builder(client).device_login(nowhere, present)).unwrap_err();
    assert!(
        matches!(error, DeviceLoginError::NotADeviceEndpoint(_)),
        "{}: {error:?}",
        F::NAME
    );
    assert!(error.to_string().contains("HTTP 404"), "{error}");
}

fn an_issuer_client_takes_both_endpoints_from_the_metadata<F: Flavor>() {
    let (authority, _, endpoint) = setup();
    let authority = Arc::new(authority);
    authority.move_token_endpoint("/tenant-1/oauth2/token");
    let issuer = authority.discovery_issuer();
    let client = OAuth2Client::refresh_token(
        &issuer,
        ClientId::new("tv"),
        Some(ClientSecret::new("tv-secret-value")),
    )
    .unwrap()
    .with_issuer(Issuer::parse(&issuer, false).unwrap())
    .scope("offline_access");
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache.json");
    let approver = person(&authority, 1, |a, code| assert!(a.approve_device(code)));
    let (_, present) = recorder();
    let login = F::block_on(
        F::builder(client.clone())
            .file_cache(&cache)
            .device_login(DeviceEndpoint::FromMetadata, present),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", F::NAME));
    approver.join().unwrap();
    assert!(login.token.refresh_token.is_some());
    // One metadata request; the codes from the endpoint it names, the polls
    // at the token endpoint it names.
    assert_eq!(
        authority.metadata_request_count(),
        1,
        "{:?}",
        authority.requests()
    );
    let log = authority.requests();
    assert!(
        log.iter().any(|r| r.path == endpoint.as_url().path()),
        "{log:?}"
    );
    for poll in polls(&authority) {
        assert_eq!(poll.path, "/tenant-1/oauth2/token");
    }
    // A later run of the same client finds the login.
    let later = F::block_on(
        F::builder(client)
            .file_cache(&cache)
            .get_token(OneShot::new()),
    )
    .unwrap();
    assert!(
        matches!(later.origin, Origin::Cache { .. }),
        "{:?}",
        later.origin
    );
    assert_eq!(later.token.access_token, login.token.access_token);

    // A client with a token URL has no metadata to take the endpoint from.
    let (_, plain, _) = setup();
    let (_, present) = recorder();
    let error = F::block_on(F::builder(plain).device_login(DeviceEndpoint::FromMetadata, present))
        .unwrap_err();
    assert!(
        matches!(error, DeviceLoginError::Unsupported(_)),
        "{error:?}"
    );
}

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

/// Installs (once) a subscriber recording every span and event at TRACE
/// (ureq's own wire tracing, which prints whole requests, excepted).
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

fn the_device_code_never_shows<F: Flavor>() {
    let captured = captured();
    let (authority, client, endpoint) = setup();
    let authority = Arc::new(authority);
    // A refused login...
    let device_code = Arc::new(Mutex::new(None));
    let seen_code = Arc::clone(&device_code);
    let person = person(&authority, 1, move |a, code| {
        *seen_code.lock().unwrap() = a.device_code_of(code);
        assert!(a.deny_device(code));
    });
    let (seen, present) = recorder();
    let error = F::block_on(F::builder(client.clone()).device_login(endpoint.clone(), present))
        .unwrap_err();
    person.join().unwrap();
    let code = device_code.lock().unwrap().clone().expect("a device code");
    assert!(code.len() >= 16);
    let prompt = seen.lock().unwrap().clone().unwrap();
    // And a successful login, whose token and record hold no device code.
    let approver = person_approving(&authority);
    let (_, present) = recorder();
    let login = F::block_on(F::builder(client).device_login(endpoint, present)).unwrap();
    let second = approver.join().unwrap().expect("a device code");
    let logs = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    assert!(
        logs.contains("tokenkeeper.device"),
        "no device login span in the logs"
    );
    let shown = format!("{error:?} {error} {prompt:?} {login:?}");
    for secret in [&code, &second] {
        assert!(!shown.contains(secret.as_str()), "{}: {shown}", F::NAME);
        assert!(
            !logs.contains(secret.as_str()),
            "{}: the logs hold the device code",
            F::NAME
        );
    }
    let refresh = login.token.refresh_token.as_ref().unwrap().expose_secret();
    assert!(
        !logs.contains(refresh),
        "{}: the logs hold the refresh token",
        F::NAME
    );
    assert!(!shown.contains(refresh));
}

/// Approves the next login after its first poll; returns its device code.
fn person_approving(authority: &Arc<Authority>) -> std::thread::JoinHandle<Option<String>> {
    let authority = Arc::clone(authority);
    std::thread::spawn(move || {
        let started = authority.requests().len();
        let ready = authority.wait_until(Duration::from_secs(60), |log| {
            log[started.min(log.len())..].iter().any(|r| {
                r.grant_type.as_deref() == Some(DEVICE_GRANT)
                    && !matches!(r.outcome, Outcome::Pending)
            })
        });
        assert!(ready);
        let code = authority.pending_user_codes().pop()?;
        let device_code = authority.device_code_of(&code);
        authority.approve_device(&code);
        device_code
    })
}
