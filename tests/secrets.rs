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
    planted_markers_in_every_input_reach_no_output,
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
    .extra_param("signed_request", assertion.as_str())
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
    .extra_param("signed_request", assertion.as_str())
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

// ---------------------------------------------------------------------------
// Every input channel against every output channel
// ---------------------------------------------------------------------------

/// The JSON string values of a cache file outside its two secret fields,
/// with their keys (recursively).
fn non_secret_fields(value: &serde_json::Value, key: &str, out: &mut Vec<(String, String)>) {
    match value {
        serde_json::Value::String(s) if key != "access_token" && key != "refresh_token" => {
            out.push((key.to_owned(), s.clone()));
        }
        serde_json::Value::Array(items) => {
            items.iter().for_each(|v| non_secret_fields(v, key, out));
        }
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                // A key naming a secret is itself not shown; only the
                // record's own token fields may hold one.
                non_secret_fields(v, k, out);
            }
        }
        _ => {}
    }
}

/// Standard base64 (RFC 4648, with padding), to look for a `Basic`
/// credential in the outputs.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// One test per driver: unique markers planted in every input channel —
/// the client secret (sent in the form, and in a `Basic` header), a client
/// assertion and another extra parameter, the token URL's query, the
/// refresh tokens and access tokens the authority issues, and response
/// bodies of every kind of status (a token in a 500 and a 200 the core
/// refuses, a 302 page, a 400 and a 401 echoing the request form and its
/// `Authorization` header, a form-encoded 429 error echoing the form, an
/// HTML 502 quoting a token, an error document whose description holds a
/// marker and control characters) — and searched for in every output
/// channel of the library: `Debug` of the builder, client, watcher,
/// tokens, status, cache key and events; `Display` and `Debug` of every
/// fetch error, spawn error, one-shot error and warning; the tracing
/// output at TRACE level; and the cache file's non-secret fields. (The
/// command's channels — stdout and stderr at `-vv`, `inspect --output
/// json` — are searched by `tokenkeeper-cli/tests/markers.rs` with the
/// same kinds of bodies.)
///
/// The description marker is the control: it is not a secret, so it must
/// be shown, escaped (no raw newline or escape character reaches a log
/// line), which shows the error channels were searched while they carried
/// the authority's text.
fn planted_markers_in_every_input_reach_no_output<F: Flavor>() {
    let captured = captured();
    let flavor = F::NAME;
    // The markers name no credential word (`secret`, `token`, ...): a body
    // that names one is hidden whole, so a marker that did would hide
    // itself and prove nothing.
    let m = |what: &str| marker(what, flavor);
    let client_id = format!("planted-{}", flavor.replace('-', ""));
    let basic_id = format!("planted-basic-{}", flavor.replace('-', ""));
    let secret = m("pcs");
    let assertion = m("pas");
    let extra = m("pex");
    let query = m("pqy");
    let at_500 = m("pat500");
    let rt_500 = m("prt500");
    let at_200_bad = m("pat200bad");
    let at_mac = m("patmac");
    let at_302 = m("pat302");
    let at_html = m("pathtml");
    let echo_extra = m("pechox");
    let description = m("pdesc");
    let name = format!("planted-{}", flavor.replace('-', ""));

    let authority = Authority::start();
    authority.register_client(
        Client::new(&client_id, &secret)
            .auth_method(tokenkeeper_testkit::AuthMethod::Post)
            .token_lifetime(Duration::from_secs(300)),
    );
    authority.register_client(
        Client::new(&basic_id, &secret)
            .auth_method(tokenkeeper_testkit::AuthMethod::Basic)
            .token_lifetime(Duration::from_secs(300)),
    );
    let initial = authority.issue_refresh_token(&client_id);
    let token_url = format!("{}?api_key={query}", authority.token_url());
    let client = OAuth2Client::refresh_token(
        token_url.as_str(),
        ClientId::new(client_id.as_str()),
        Some(ClientSecret::new(secret.as_str())),
    )
    .unwrap()
    .auth_method(AuthMethod::ClientSecretPost)
    .extra_param("signed_request", assertion.as_str())
    .unwrap()
    .extra_param("tenant_hint", extra.as_str())
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache_path = dir.path().join("token.json");
    let events = Events::default();
    let mut shown = String::new();

    // Every kind of answer, in order, before the next good one.
    let json = Some("application/json".to_owned());
    let faults = vec![
        Fault::Body {
            status: 500,
            content_type: json.clone(),
            body: format!(
                r#"{{"access_token":"{at_500}","refresh_token":"{rt_500}","token_type":"Bearer","expires_in":60}}"#
            ),
        },
        Fault::EchoRequest { status: 400 },
        Fault::Body {
            status: 429,
            content_type: Some("application/x-www-form-urlencoded".to_owned()),
            body: format!(
                "error=slow_down&error_description=later&client_secret={secret}&client_assertion={assertion}&x={echo_extra}"
            ),
        },
        Fault::Body {
            status: 502,
            content_type: Some("text/html".to_owned()),
            body: format!("<html><body>upstream said access_token={at_html}</body></html>"),
        },
        Fault::Body {
            status: 200,
            content_type: json.clone(),
            body: format!(r#"{{"access_token":"{at_200_bad}","expires_in":"soon"}}"#),
        },
        Fault::Body {
            status: 200,
            content_type: json.clone(),
            body: format!(r#"{{"access_token":"{at_mac}","token_type":"MAC","expires_in":60}}"#),
        },
        Fault::Body {
            status: 302,
            content_type: Some("text/plain".to_owned()),
            body: format!("moved; token {at_302}"),
        },
        Fault::Body {
            status: 503,
            content_type: json.clone(),
            body: format!(
                r#"{{"error":"temporarily_unavailable","error_description":"{description}\n\u001b[31mred"}}"#
            ),
        },
    ];
    let fault_count = faults.len();

    // Watcher A: refresh-token grant, secret in the form.
    let builder = F::builder(client.clone())
        .initial_refresh_token(RefreshToken::new(initial.clone()))
        .file_cache(&cache_path)
        .jitter(Jitter::none())
        .backoff(fast_backoff())
        .refresh_now_min_interval(Duration::from_millis(10))
        .first_token_timeout(Duration::from_secs(20))
        .name(name.as_str())
        .on_event(events.hook());
    shown.push_str(&format!(
        "{builder:?}\n{:?}\n{client:?}\n",
        Source::from(client.clone())
    ));
    let watcher = F::block_on(builder.spawn()).unwrap_or_else(|e| panic!("{name}: {e}"));
    shown.push_str(&show_watcher(&watcher));
    let first = watcher.token().unwrap().into_arc();
    authority.push_faults(faults);
    // `Joined` when the first record's write is still being answered.
    let forced = F::block_on(watcher.refresh_now());
    assert!(
        matches!(forced, Ok(RefreshNow::Started | RefreshNow::Joined)),
        "{name}: {forced:?}"
    );
    // Each failure is looked at while it is the last error.
    let end = Instant::now() + Duration::from_secs(30);
    let mut next = None;
    while Instant::now() < end && next.is_none() {
        shown.push_str(&show_watcher(&watcher));
        if let Some(error) = watcher.status().last_error {
            shown.push_str(&format!("{error}\n{error:?}\n"));
        }
        next = watcher
            .token()
            .ok()
            .map(|t| t.into_arc())
            .filter(|t| **t != *first);
        std::thread::sleep(Duration::from_millis(10));
    }
    let refreshed = next.unwrap_or_else(|| panic!("{name}: no token after the bad answers"));
    shown.push_str(&show_watcher(&watcher));
    assert_eq!(
        authority.pending_faults(),
        0,
        "{name}: not every answer was sent"
    );
    let forced = F::block_on(watcher.refresh_now());
    assert!(
        matches!(forced, Ok(RefreshNow::Started | RefreshNow::Joined)),
        "{name}: {forced:?}"
    );
    next_token(&watcher, &refreshed).unwrap_or_else(|| panic!("{name}: no forced refresh"));
    F::block_on(watcher.shutdown());
    shown.push_str(&show_watcher(&watcher));

    // Watcher B: client credentials, the secret in a `Basic` header, which
    // a 401 echoes.
    let basic = OAuth2Client::client_credentials(
        token_url.as_str(),
        ClientId::new(basic_id.as_str()),
        ClientSecret::new(secret.as_str()),
    )
    .unwrap()
    .extra_param("signed_request", assertion.as_str())
    .unwrap();
    authority.push_fault(Fault::EchoRequest { status: 401 });
    let refused = F::block_on(
        F::builder(basic.clone())
            .name(name.as_str())
            .on_event(events.hook())
            .first_token_timeout(Duration::from_secs(20))
            .spawn(),
    )
    .expect_err("a 401 is permanent");
    shown.push_str(&format!("{refused}\n{refused:?}\n{basic:?}\n"));
    // The `Basic` credential, and a piece of it that encodes secret bytes
    // only (a cut snippet could show part of it).
    let basic_credential = base64(format!("{basic_id}:{secret}").as_bytes());
    let secret_from = (basic_id.len() + 1).div_ceil(3) * 4;
    let basic_piece = basic_credential[secret_from..secret_from + 8].to_owned();

    // The one-shot, refused with an echo, then warned with one.
    authority.push_fault(Fault::EchoRequest { status: 400 });
    let one_shot = F::block_on(
        F::builder(client.clone())
            .initial_refresh_token(RefreshToken::new(initial.clone()))
            .name(name.as_str())
            .get_token(tokenkeeper_driver::OneShot::new()),
    );
    shown.push_str(&format!("{one_shot:?}\n"));
    if let Err(error) = &one_shot {
        shown.push_str(&format!("{error}\n"));
    }
    authority.push_fault(Fault::EchoRequest { status: 503 });
    let stale_ok = F::block_on(
        F::builder(basic)
            .file_cache(dir.path().join("basic.json"))
            .name(name.as_str())
            .get_token(
                tokenkeeper_driver::OneShot::new()
                    .backoff(fast_backoff())
                    .max_wait(Duration::from_secs(10)),
            ),
    )
    .unwrap_or_else(|e| panic!("{name}: {e}"));
    shown.push_str(&format!("{stale_ok:?}\n"));
    for warning in &stale_ok.warnings {
        shown.push_str(&format!("{warning}\n{warning:?}\n"));
    }
    shown.push_str(&events.all());

    // What was exercised: every answer was sent and seen as a failure.
    let failures = events.all();
    for wanted in [
        "500",
        "400",
        "429",
        "502",
        "InvalidBody",
        "UnsupportedTokenType",
        "302",
        "temporarily_unavailable",
        "401",
    ] {
        assert!(
            failures.contains(wanted),
            "{name}: no failure with {wanted:?}:\n{failures}"
        );
    }
    assert!(
        authority.requests().len() >= fault_count + 5,
        "{name}: {:?}",
        authority.requests()
    );
    // The control: the description is shown, escaped.
    assert!(
        failures.contains(&description),
        "{name}: the error description is not shown:\n{failures}"
    );
    assert!(
        !failures.contains('\u{1b}'),
        "{name}: a raw escape character reached the output"
    );
    // The test authority's own log lines (it logs the answers it was told
    // to send) are the test's, not an output of the library.
    let logs = captured
        .text()
        .lines()
        .filter(|l| !l.contains(" tokenkeeper_testkit::"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        logs.contains(&description),
        "{name}: the description is not logged"
    );
    for line in logs.lines().filter(|l| l.contains(&description)) {
        assert!(!line.contains('\u{1b}'), "{name}: {line}");
    }

    // The cache file: the current tokens in their fields, no marker in any
    // other field.
    let bytes = std::fs::read(&cache_path).unwrap();
    let record: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let mut fields = Vec::new();
    non_secret_fields(&record, "", &mut fields);
    assert!(!fields.is_empty(), "{name}");
    let issued = authority.issued_tokens();
    let mut secrets = vec![
        secret.clone(),
        assertion.clone(),
        extra.clone(),
        query.clone(),
        initial.clone(),
        basic_credential.clone(),
        basic_piece.clone(),
    ];
    for token in &issued {
        secrets.push(token.access_token.clone());
        secrets.extend(token.refresh_token.clone());
    }
    for (key, value) in &fields {
        for planted in &secrets {
            assert!(
                !value.contains(planted.as_str()),
                "{name}: a secret ({planted}) in the cache field {key}: {value}"
            );
        }
    }
    // Answers the core refused leave nothing anywhere, not even in the
    // cache file's token fields.
    let bad_answers = [
        at_500, rt_500, at_200_bad, at_mac, at_302, at_html, echo_extra,
    ];
    let file = String::from_utf8_lossy(&bytes);
    for planted in &bad_answers {
        assert!(
            !file.contains(planted.as_str()),
            "{name}: {planted} in the cache file"
        );
    }

    secrets.extend(bad_answers);
    assert_hidden(&name, &secrets, &logs, &shown);
}

/// An authority that quotes the client's secret inside an OAuth2
/// `error_description` does not get it shown: the refresher takes the
/// credentials it sent out of the error's text (`<redacted>`), so it appears
/// neither in the error's `Display`, nor in events, nor in the WARN log line
/// of the failure. The rest of the description is kept.
#[test]
fn a_secret_quoted_in_an_error_description_is_not_shown() {
    type F = common::Threads;
    let captured = captured();
    let name = "quoted-description";
    let secret = marker("qcs", F::NAME);
    let authority = Authority::start();
    authority.register_client(Client::new("quoted", &secret));
    let client = OAuth2Client::client_credentials(
        authority.token_url(),
        ClientId::new("quoted"),
        ClientSecret::new(secret.as_str()),
    )
    .unwrap();
    authority.push_fault(Fault::Body {
        status: 503,
        content_type: Some("application/json".into()),
        body: format!(
            r#"{{"error":"temporarily_unavailable","error_description":"the client secret {secret} is fine, try later"}}"#
        ),
    });
    let events = Events::default();
    let watcher = F::block_on(
        F::builder(client)
            .backoff(fast_backoff())
            .name(name)
            .on_event(events.hook())
            .first_token_timeout(Duration::from_secs(20))
            .spawn(),
    )
    .unwrap();
    let shown = format!("{}\n{:?}", events.all(), watcher.status());
    // (Threads: the call is the wait.)
    watcher.shutdown();
    assert!(events.all().contains("try later"), "{}", events.all());
    assert!(events.all().contains("<redacted>"), "{}", events.all());
    // The test authority's own log lines (it logs the answers it was told
    // to send) are the test's, not an output of the library.
    let logs = captured
        .text()
        .lines()
        .filter(|l| !l.contains(" tokenkeeper_testkit::"))
        .collect::<Vec<_>>()
        .join("\n");
    assert_hidden(name, &[secret], &logs, &shown);
}
