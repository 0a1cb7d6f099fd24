//! The thread adapter's own behaviour, beyond the shared conformance
//! scenarios: the one-shot `get_token`, `changed`, custom sources, event
//! hooks, and the HTTP client's rules.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tokenkeeper_blocking::{
    ChangedError, GetTokenConfig, GetTokenError, HttpSettings, Source, TokenWatcher, Warning,
    get_token,
};
use tokenkeeper_core::oauth2::{GrantType, OAuth2Client, TokenUrl};
use tokenkeeper_core::{
    AccessToken, CacheKey, ClientId, ClientSecret, Event, FetchError, Origin, TokenGrant,
};
use tokenkeeper_testkit::{Authority, Client, Fault};

const ID: &str = "blocking-client";
const SECRET: &str = "blocking-secret-4b1d";

fn authority(lifetime: Duration) -> Authority {
    let authority = Authority::start();
    authority.register_client(Client::new(ID, SECRET).token_lifetime(lifetime));
    authority
}

fn client(url: &str, secret: &str) -> OAuth2Client {
    OAuth2Client::new(
        TokenUrl::parse(url, false).expect("a loopback URL"),
        ClientId::new(ID),
        Some(ClientSecret::new(secret)),
        GrantType::ClientCredentials,
    )
}

fn access(obtained: &tokenkeeper_blocking::Obtained) -> String {
    obtained.token.access_token.expose_secret().to_owned()
}

#[test]
fn get_token_fetches_once_and_then_reads_the_cache() {
    let authority = authority(Duration::from_secs(300));
    let dir = tempfile::tempdir().unwrap();
    let config =
        GetTokenConfig::new(client(&authority.token_url(), SECRET)).file_cache_in(dir.path());
    let first = get_token(&config).expect("a token");
    assert_eq!(first.origin, Origin::Authority);
    assert!(first.warnings.is_empty(), "{:?}", first.warnings);
    let second = get_token(&config).expect("a token");
    assert!(matches!(second.origin, Origin::Cache { .. }));
    assert_eq!(access(&first), access(&second));
    assert_eq!(authority.request_count(), 1);

    // Without a cache every call asks.
    let uncached = GetTokenConfig::new(client(&authority.token_url(), SECRET));
    get_token(&uncached).unwrap();
    get_token(&uncached).unwrap();
    assert_eq!(authority.request_count(), 3);
}

#[test]
fn get_token_min_valid_forces_one_refresh() {
    let authority = authority(Duration::from_secs(60));
    let dir = tempfile::tempdir().unwrap();
    let base =
        GetTokenConfig::new(client(&authority.token_url(), SECRET)).file_cache_in(dir.path());
    let first = get_token(&base).unwrap();
    std::thread::sleep(Duration::from_millis(1_100));
    let same = get_token(&base.clone().min_valid(Duration::from_secs(30))).unwrap();
    assert_eq!(access(&same), access(&first));
    let newer = get_token(&base.clone().min_valid(Duration::from_secs(59))).unwrap();
    assert_ne!(access(&newer), access(&first));
    assert_eq!(newer.origin, Origin::Authority);
    assert_eq!(authority.request_count(), 2);
    // More than the authority ever grants: one fetch, and a warning.
    let short = get_token(&base.min_valid(Duration::from_secs(3_600))).unwrap();
    assert!(
        short
            .warnings
            .iter()
            .any(|w| matches!(w, Warning::ShortLived { .. })),
        "{:?}",
        short.warnings
    );
    assert_eq!(authority.request_count(), 3);
}

#[test]
fn get_token_serves_a_stale_token_when_its_refresh_fails() {
    // 2 s tokens go stale at 1 s.
    let authority = authority(Duration::from_secs(2));
    let dir = tempfile::tempdir().unwrap();
    let config =
        GetTokenConfig::new(client(&authority.token_url(), SECRET)).file_cache_in(dir.path());
    let first = get_token(&config).unwrap();
    std::thread::sleep(Duration::from_millis(1_100));
    authority.push_fault(Fault::status(503));
    let stale = get_token(&config).unwrap();
    assert_eq!(access(&stale), access(&first));
    assert!(
        matches!(
            stale.warnings.as_slice(),
            [Warning::RefreshFailed(FetchError::Status {
                status: 503,
                ..
            })]
        ),
        "{:?}",
        stale.warnings
    );
    assert_eq!(authority.request_count(), 2);
}

#[test]
fn get_token_errors_are_typed() {
    let authority = authority(Duration::from_secs(60));
    let rejected = get_token(&GetTokenConfig::new(client(
        &authority.token_url(),
        "wrong",
    )))
    .expect_err("a wrong secret");
    assert!(
        matches!(rejected, GetTokenError::Rejected(_)),
        "{rejected:?}"
    );
    assert!(
        rejected.to_string().contains("invalid_client"),
        "{rejected}"
    );
    assert_eq!(
        authority.request_count(),
        1,
        "permanent errors are not retried"
    );

    authority.set_down(true);
    let started = Instant::now();
    let down = get_token(
        &GetTokenConfig::new(client(&authority.token_url(), SECRET))
            .max_wait(Duration::from_millis(1_500)),
    )
    .expect_err("the authority is down");
    assert!(started.elapsed() < Duration::from_secs(5));
    match down {
        GetTokenError::Unavailable {
            last_error: Some(FetchError::Status { status: 503, .. }),
            ..
        } => {}
        other => panic!("{other:?}"),
    }
    assert!(
        authority.request_count() >= 3,
        "transient errors are retried"
    );
}

#[test]
fn redirects_are_not_followed_and_every_status_is_seen() {
    let authority = authority(Duration::from_secs(60));
    authority.push_fault(Fault::Status {
        status: 302,
        oauth_error: None,
        retry_after: None,
    });
    let watcher = TokenWatcher::builder(client(&authority.token_url(), SECRET))
        .backoff(
            tokenkeeper_core::BackoffPolicy::builder()
                .floor(Duration::from_millis(20))
                .initial(Duration::from_millis(50))
                .build()
                .unwrap(),
        )
        .spawn()
        .expect("a token after the redirect");
    let status = watcher.status();
    assert!(
        matches!(
            status.last_error,
            Some(FetchError::Status { status: 302, .. })
        ),
        "{status:?}"
    );
    assert_eq!(authority.request_count(), 2);
    watcher.shutdown();
}

#[test]
fn tls_uses_its_own_provider_and_installs_no_default() {
    let authority = authority(Duration::from_secs(60));
    // https to a plain-HTTP server: the TLS handshake fails, as a transport
    // error, and no process-wide crypto provider is left behind.
    let url = authority.token_url().replace("http://", "https://");
    let error =
        get_token(&GetTokenConfig::new(client(&url, SECRET)).max_wait(Duration::from_millis(300)))
            .expect_err("no TLS there");
    assert!(
        matches!(
            error.fetch_error(),
            Some(FetchError::Transport { .. } | FetchError::Timeout { .. })
        ),
        "{error:?}"
    );
    assert!(rustls::crypto::CryptoProvider::get_default().is_none());
}

#[test]
fn changed_times_out_and_reports_a_stop() {
    let authority = authority(Duration::from_secs(300));
    let watcher = TokenWatcher::builder(client(&authority.token_url(), SECRET))
        .spawn()
        .unwrap();
    assert_eq!(
        watcher
            .changed(Some(Duration::from_millis(100)))
            .unwrap_err(),
        ChangedError::TimedOut
    );
    let other = watcher.clone();
    let waiter = std::thread::spawn(move || other.changed(None));
    std::thread::sleep(Duration::from_millis(100));
    watcher.shutdown();
    assert_eq!(waiter.join().unwrap().unwrap_err(), ChangedError::Stopped);
}

#[test]
fn custom_sources_and_event_hooks() {
    let calls = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&calls);
    let source = Source::from_fn(CacheKey::custom("test", &["a"]), move |_refresh| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(TokenGrant::bearer(
            AccessToken::new(format!("custom-{n}")),
            Some(Duration::from_secs(2)),
        ))
    });
    let changes = Arc::new(AtomicU32::new(0));
    let seen = Arc::clone(&changes);
    let watcher = TokenWatcher::builder(source.clone())
        .http(HttpSettings::default())
        .on_event(move |event| {
            if matches!(event, Event::TokenChanged { .. }) {
                seen.fetch_add(1, Ordering::SeqCst);
            }
        })
        .spawn()
        .unwrap();
    assert_eq!(
        watcher.token().unwrap().access_token.expose_secret(),
        "custom-1"
    );
    let next = watcher.changed(Some(Duration::from_secs(3))).unwrap();
    assert_eq!(next.unwrap().access_token.expose_secret(), "custom-2");
    watcher.shutdown();
    assert!(changes.load(Ordering::SeqCst) >= 2);

    let obtained = get_token(&GetTokenConfig::new(source)).unwrap();
    assert!(
        obtained
            .token
            .access_token
            .expose_secret()
            .starts_with("custom-")
    );
}

#[test]
fn watchers_sharing_a_cold_file_cache_make_one_request() {
    let authority = authority(Duration::from_secs(300));
    authority.push_fault(Fault::Delay(Duration::from_millis(300)));
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("shared.json");
    let url = authority.token_url();
    let handles: Vec<_> = (0..6)
        .map(|_| {
            let cache = cache.clone();
            let url = url.clone();
            std::thread::spawn(move || {
                let watcher = TokenWatcher::builder(client(&url, SECRET))
                    .file_cache(cache)
                    .spawn()
                    .expect("a token");
                let token = watcher
                    .token()
                    .unwrap()
                    .access_token
                    .expose_secret()
                    .to_owned();
                watcher.shutdown();
                token
            })
        })
        .collect();
    let tokens: std::collections::BTreeSet<String> =
        handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    assert_eq!(authority.request_count(), 1, "{:?}", authority.requests());
}
