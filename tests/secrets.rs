//! No secret in `Debug`, `Display`, errors, events or the `tracing` output,
//! on every driver.
//!
//! One process-wide subscriber records every span and event at TRACE level,
//! and the `log` records of crates that use `log` (the drivers' tasks run on
//! other threads: tokio workers, async-std's and smol's executors, plain
//! threads), into one buffer. Each test plants marker
//! secrets of its own (unique per test and run) as client secret, refresh
//! tokens, access tokens, an extra parameter and a query of the token URL,
//! runs a watcher through start, refresh, a failed fetch, a forced refresh
//! and shutdown, and then looks for its markers in the whole buffer and in
//! everything the API shows.

mod common;

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::{Flavor, Memory, fast_backoff};
use tokenkeeper_core::oauth2::{AuthMethod, OAuth2Client};
use tokenkeeper_core::{
    AccessToken, CacheKey, ClientId, ClientSecret, ErrorClass, Event, FetchError, Jitter,
    RefreshNow, RefreshToken, TokenGrant, TokenRecord,
};
use tokenkeeper_driver::{Runtime, Source, TokenWatcher};
use tokenkeeper_testkit::{Authority, Client, Fault};
use tracing_subscriber::util::SubscriberInitExt;

per_driver!(
    no_secret_of_an_oauth2_watcher_is_shown_or_logged,
    no_secret_of_a_custom_source_is_shown_or_logged,
);

// ---------------------------------------------------------------------------
// Capture
// ---------------------------------------------------------------------------

/// Everything every subscriber-visible span and event of this process wrote.
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

/// The process-wide subscriber, installed by the first test that asks.
fn captured() -> &'static Captured {
    static CAPTURED: OnceLock<Captured> = OnceLock::new();
    CAPTURED.get_or_init(|| {
        let captured = Captured::default();
        let writer = captured.clone();
        // Everything at TRACE, except ureq's wire tracing: ureq prints the
        // full request URL (query included) when its TRACE level is on, and
        // redacts it otherwise; that is its documented choice, not ours.
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("trace,ureq=debug"))
            .with_ansi(false)
            .with_thread_names(true)
            .with_writer(move || writer.clone())
            .finish();
        // Also takes the `log` records of the crates that use `log` (ureq).
        subscriber
            .try_init()
            .expect("no other global subscriber in this test binary");
        captured
    })
}

/// A marker secret: unique per test, driver and run.
fn marker(what: &str, flavor: &str) -> String {
    format!(
        "{what}-marker-{}-{:016x}",
        flavor.replace('-', ""),
        fastrand::u64(..)
    )
}

/// Asserts that no secret appears in the logs or in what was shown.
fn assert_hidden(name: &str, secrets: &[String], logs: &str, shown: &str) {
    for secret in secrets {
        assert!(!secret.is_empty(), "{name}: an empty secret");
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

/// The lines of the logs that belong to the watcher named `watcher`.
fn lines_of<'a>(logs: &'a str, watcher: &str) -> Vec<&'a str> {
    let field = format!("name={watcher}");
    logs.lines().filter(|l| l.contains(&field)).collect()
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Every event of a watcher, formatted as it came.
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
}

/// Waits up to 10 s for a token other than `seen`.
fn next_token<R: Runtime>(
    watcher: &TokenWatcher<R>,
    seen: &TokenRecord,
) -> Option<Arc<TokenRecord>> {
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end && !watcher.is_stopped() {
        if let Some(token) = watcher.token().ok().map(|t| t.into_arc())
            && *token != *seen
        {
            return Some(token);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Everything a user can look at on a running watcher.
fn show_watcher<R: Runtime>(watcher: &TokenWatcher<R>) -> String {
    let token = watcher.token();
    let shown = format!(
        "{watcher:?}\n{:?}\n{:?}\n{:?}",
        token,
        watcher.status(),
        watcher.cache_key()
    );
    let record = token.map(|t| t.into_arc());
    match record {
        Ok(record) => format!("{shown}\n{record:?}\n{:?}", record.state_at_now()),
        Err(error) => format!("{shown}\n{error}"),
    }
}

trait StateAtNow {
    fn state_at_now(&self) -> tokenkeeper_core::TokenState;
}

impl StateAtNow for TokenRecord {
    fn state_at_now(&self) -> tokenkeeper_core::TokenState {
        self.state_at(tokenkeeper_core::Timestamp::from_system_time(
            std::time::SystemTime::now(),
        ))
    }
}

// ---------------------------------------------------------------------------
// An OAuth2 client
// ---------------------------------------------------------------------------

fn no_secret_of_an_oauth2_watcher_is_shown_or_logged<F: Flavor>() {
    let captured = captured();
    let flavor = F::NAME;
    let client_id = format!("secrets-{}", flavor.replace('-', ""));
    let client_secret = marker("clientsecret", flavor);
    let wrong_secret = marker("wrongsecret", flavor);
    let assertion = marker("assertion", flavor);
    let url_key = marker("urlkey", flavor);
    let name = format!("secrets-oauth2-{}", flavor.replace('-', ""));

    let authority = Authority::start();
    authority.register_client(
        Client::new(&client_id, &client_secret)
            .auth_method(tokenkeeper_testkit::AuthMethod::Post)
            .token_lifetime(Duration::from_secs(2)),
    );
    let initial = authority.issue_refresh_token(&client_id);
    let token_url = format!("{}?api_key={url_key}", authority.token_url());
    let client = OAuth2Client::refresh_token(
        token_url.as_str(),
        ClientId::new(client_id.as_str()),
        Some(ClientSecret::new(client_secret.as_str())),
    )
    .unwrap()
    .auth_method(AuthMethod::ClientSecretPost)
    .extra_param("client_assertion", assertion.as_str())
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let memory = Memory::default();
    let events = Events::default();

    let builder = F::builder(client.clone())
        .initial_refresh_token(RefreshToken::new(initial.clone()))
        .blocking_cache(memory.clone())
        .file_cache(dir.path().join("token.json"))
        .jitter(Jitter::none())
        .backoff(fast_backoff())
        .refresh_now_min_interval(Duration::from_millis(10))
        .first_token_timeout(Duration::from_secs(20))
        .name(name.as_str())
        .on_event(events.hook());
    let mut shown = format!(
        "{builder:?}\n{:?}\n{:?}",
        Source::from(client.clone()),
        client
    );

    // Start.
    let watcher = F::block_on(builder.spawn()).unwrap_or_else(|e| panic!("{name}: {e}"));
    shown.push_str(&show_watcher(&watcher));
    let first = watcher.token().unwrap().into_arc();

    // A failed fetch (an error answer with a body), then the refresh when
    // the 2 s token goes stale.
    authority.push_fault(Fault::oauth_error(
        503,
        "temporarily_unavailable",
        Some("the authority is busy"),
    ));
    let refreshed = next_token(&watcher, &first).unwrap_or_else(|| panic!("{name}: no refresh"));
    shown.push_str(&show_watcher(&watcher));
    let status = watcher.status();
    assert!(
        matches!(
            &status.last_error,
            Some(FetchError::OAuth { status: 503, .. })
        ),
        "{name}: {status:?}"
    );
    shown.push_str(&format!(
        "{}\n{:?}",
        status.last_error.as_ref().unwrap(),
        status.last_error
    ));

    // A forced refresh (or the scheduled one under way).
    let forced = F::block_on(watcher.refresh_now());
    assert!(
        matches!(forced, Ok(RefreshNow::Started | RefreshNow::Joined)),
        "{name}: {forced:?}"
    );
    next_token(&watcher, &refreshed).unwrap_or_else(|| panic!("{name}: no forced refresh"));
    shown.push_str(&show_watcher(&watcher));

    // Shutdown.
    F::block_on(watcher.shutdown());
    shown.push_str(&show_watcher(&watcher));
    let stopped = watcher.token().unwrap_err();
    shown.push_str(&format!("{stopped} {stopped:?}"));
    let refused = F::block_on(watcher.refresh_now()).unwrap_err();
    shown.push_str(&format!("{refused} {refused:?}"));

    // A refusal: a wrong secret fails the start.
    let wrong = OAuth2Client::client_credentials(
        token_url.as_str(),
        ClientId::new(client_id.as_str()),
        ClientSecret::new(wrong_secret.as_str()),
    )
    .unwrap()
    .auth_method(AuthMethod::ClientSecretPost)
    .extra_param("client_assertion", assertion.as_str())
    .unwrap();
    let rejected = F::block_on(
        F::builder(wrong)
            .name(name.as_str())
            .on_event(events.hook())
            .spawn(),
    )
    .unwrap_err();
    assert!(rejected.is_permanent(), "{name}: {rejected:?}");
    shown.push_str(&format!("{rejected} {rejected:?}"));
    shown.push_str(&events.all());

    // What was exercised.
    let issued = authority.issued_tokens();
    assert!(issued.len() >= 3, "{name}: {issued:?}");
    assert!(
        events.all().contains("temporarily_unavailable"),
        "{name}: {}",
        events.all()
    );
    assert!(memory.0.lock().unwrap().is_some(), "{name}");
    let logs = captured.text();
    let mine = lines_of(&logs, &name);
    for wanted in [
        "tokenkeeper.fetch",
        "tokenkeeper.cache.write",
        "new token",
        "fp:",
        "fetching a token failed",
        "shutdown asked for",
    ] {
        assert!(
            mine.iter().any(|l| l.contains(wanted)),
            "{name}: no {wanted:?} in the logs of this watcher:\n{}",
            mine.join("\n")
        );
    }
    assert!(
        mine.iter()
            .any(|l| l.contains(&format!("runtime=\"{}\"", F::runtime().name()))),
        "{name}"
    );

    // No secret anywhere.
    let mut secrets = vec![client_secret, wrong_secret, assertion, url_key, initial];
    for token in issued {
        secrets.push(token.access_token);
        secrets.extend(token.refresh_token);
    }
    assert_hidden(&name, &secrets, &logs, &shown);
}

// ---------------------------------------------------------------------------
// A custom source
// ---------------------------------------------------------------------------

fn no_secret_of_a_custom_source_is_shown_or_logged<F: Flavor>() {
    let captured = captured();
    let flavor = F::NAME;
    let name = format!("secrets-custom-{}", flavor.replace('-', ""));
    let access = marker("access", flavor);
    let refresh = marker("refresh", flavor);
    let initial = marker("initial", flavor);

    // Call 1 fails; every answer carries a new access and refresh token.
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let (a, r) = (access.clone(), refresh.clone());
    let source = Source::from_fn(CacheKey::custom("secrets", &[&name]), move |_current| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        let grant = TokenGrant::bearer(
            AccessToken::new(format!("{a}-{n}")),
            Some(Duration::from_secs(2)),
        )
        .with_refresh_token(RefreshToken::new(format!("{r}-{n}")));
        async move {
            if n == 1 {
                return Err(FetchError::Source {
                    message: "the upstream is busy".into(),
                    class: ErrorClass::Transient,
                });
            }
            Ok(grant)
        }
    });
    let memory = Memory::default();
    let events = Events::default();
    let builder = F::builder(source)
        .initial_refresh_token(RefreshToken::new(initial.as_str()))
        .blocking_cache(memory.clone())
        .jitter(Jitter::none())
        .backoff(fast_backoff())
        .refresh_now_min_interval(Duration::from_millis(10))
        .name(name.as_str())
        .on_event(events.hook());
    let mut shown = format!("{builder:?}");

    let watcher = F::block_on(builder.spawn()).unwrap_or_else(|e| panic!("{name}: {e}"));
    shown.push_str(&show_watcher(&watcher));
    let first = watcher.token().unwrap().into_arc();
    assert_eq!(first.access_token.expose_secret(), format!("{access}-0"));
    let refreshed = next_token(&watcher, &first).unwrap_or_else(|| panic!("{name}: no refresh"));
    assert_eq!(
        refreshed.access_token.expose_secret(),
        format!("{access}-2")
    );
    shown.push_str(&show_watcher(&watcher));
    let forced = F::block_on(watcher.refresh_now());
    assert!(
        matches!(forced, Ok(RefreshNow::Started | RefreshNow::Joined)),
        "{name}: {forced:?}"
    );
    next_token(&watcher, &refreshed).unwrap_or_else(|| panic!("{name}: no forced refresh"));
    shown.push_str(&show_watcher(&watcher));
    F::block_on(watcher.shutdown());
    shown.push_str(&show_watcher(&watcher));
    shown.push_str(&events.all());
    assert!(events.all().contains("upstream is busy"), "{name}");

    let logs = captured.text();
    let mine = lines_of(&logs, &name);
    for wanted in [
        "tokenkeeper.fetch",
        "new token",
        "fp:",
        "the token source failed",
    ] {
        assert!(
            mine.iter().any(|l| l.contains(wanted)),
            "{name}: no {wanted:?} in the logs of this watcher:\n{}",
            mine.join("\n")
        );
    }
    let made = calls.load(Ordering::SeqCst);
    assert!(made >= 4, "{name}: {made} calls");
    let mut secrets = vec![initial];
    for n in 0..made {
        secrets.push(format!("{access}-{n}"));
        secrets.push(format!("{refresh}-{n}"));
    }
    assert_hidden(&name, &secrets, &logs, &shown);
}
