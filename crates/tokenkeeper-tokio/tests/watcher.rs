//! The tokio watcher against the test kit's authority: real HTTP over
//! loopback, real time, short-lived tokens.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokenkeeper_core::oauth2::{AuthMethod, OAuth2Client};
use tokenkeeper_core::{
    AccessToken, BackoffPolicy, CacheError, CacheKey, ClientId, ClientSecret, EncodedRecord,
    ErrorClass, FetchError, Jitter, Layer, RefreshNow, RefreshToken, TokenGrant, TokenState,
};
use tokenkeeper_testkit::{Authority, Client, Fault, Outcome, RetryAfter};
use tokenkeeper_tokio::{
    BoxFuture, CacheLayer, HttpSettings, Source, SpawnError, TokenError, TokenWatcher,
    TokenWatcherBuilder, WatcherStopped,
};

const SECRET: &str = "s3cret-never-logged-7c1e";

fn authority(client: Client) -> Authority {
    let authority = Authority::start();
    authority.register_client(client);
    authority
}

fn client_credentials(authority: &Authority, id: &str, secret: &str) -> OAuth2Client {
    OAuth2Client::client_credentials(
        &authority.token_url(),
        ClientId::new(id),
        ClientSecret::new(secret),
    )
    .unwrap()
}

fn fast_backoff() -> BackoffPolicy {
    BackoffPolicy::builder()
        .floor(Duration::from_millis(50))
        .initial(Duration::from_millis(100))
        .cap(Duration::from_secs(1))
        .build()
        .unwrap()
}

/// A builder with no jitter and a quick backoff, so tests run in seconds.
fn quick(source: impl Into<Source>) -> TokenWatcherBuilder {
    TokenWatcher::builder(source)
        .jitter(Jitter::none())
        .backoff(fast_backoff())
        .first_token_timeout(Duration::from_secs(15))
}

fn gap(a: SystemTime, b: SystemTime) -> Duration {
    b.duration_since(a).unwrap_or_default()
}

/// Polls `condition` every 10 ms for up to `limit`.
async fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    condition()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_returns_with_a_first_token() {
    let authority = authority(Client::new("svc", SECRET));
    let watcher = quick(client_credentials(&authority, "svc", SECRET))
        .spawn()
        .await
        .unwrap();

    let token = watcher.token().unwrap();
    assert_eq!(
        token.access_token.expose_secret(),
        authority.last_access_token().unwrap()
    );
    assert!(token.authorization_header_value().starts_with("Bearer "));
    drop(token);
    assert_eq!(authority.request_count(), 1);
    let record = &authority.requests()[0];
    assert_eq!(record.grant_type.as_deref(), Some("client_credentials"));
    assert!(record.authenticated);

    let status = watcher.status();
    assert_eq!(status.token_state, Some(TokenState::Fresh));
    assert_eq!(status.consecutive_failures, 0);
    assert!(status.last_error.is_none());
    assert!(!status.shut_down);
    watcher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_authentication_works_too() {
    let authority =
        authority(Client::new("svc", SECRET).auth_method(tokenkeeper_testkit::AuthMethod::Post));
    let client =
        client_credentials(&authority, "svc", SECRET).auth_method(AuthMethod::ClientSecretPost);
    let watcher = quick(client).spawn().await.unwrap();
    assert!(watcher.token().is_ok());
    assert_eq!(
        authority.requests()[0].auth,
        tokenkeeper_testkit::PresentedAuth::Post
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refreshes_in_the_background_at_the_stale_time() {
    // A 3 s token goes stale at half its life (it is shorter than twice the
    // 30 s minimum stale window); no jitter: the refresh is due at 1.5 s.
    let authority = authority(Client::new("svc", SECRET).token_lifetime(Duration::from_secs(3)));
    let watcher = quick(client_credentials(&authority, "svc", SECRET))
        .spawn()
        .await
        .unwrap();
    let first = watcher.token().unwrap().into_arc();

    let next = tokio::time::timeout(Duration::from_secs(5), watcher.changed())
        .await
        .expect("a refresh within 5 s")
        .unwrap();
    assert_ne!(next.access_token, first.access_token);
    assert_eq!(watcher.token().unwrap().access_token, next.access_token);

    let requests = authority.requests();
    assert_eq!(requests.len(), 2);
    let between = gap(requests[0].at, requests[1].at);
    assert!(
        between >= Duration::from_millis(1400) && between < Duration::from_millis(2900),
        "refreshed {between:?} after the first fetch"
    );
    watcher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_the_last_token_through_an_outage_until_it_expires() {
    let authority = authority(Client::new("svc", SECRET).token_lifetime(Duration::from_secs(4)));
    let watcher = quick(client_credentials(&authority, "svc", SECRET))
        .spawn()
        .await
        .unwrap();
    let first = watcher.token().unwrap().into_arc();
    authority.set_down(true);

    // Stale at 2 s: refreshes fail, the token is still served.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert_eq!(watcher.token().unwrap().access_token, first.access_token);
    let status = watcher.status();
    assert!(status.consecutive_failures >= 1, "{status:?}");
    assert_eq!(status.token_state, Some(TokenState::Stale));
    assert!(matches!(
        status.last_error,
        Some(FetchError::Status { status: 503, .. })
    ));

    // Past its expiry it is withdrawn, with the reason.
    assert!(
        eventually(Duration::from_secs(3), || watcher.token().is_err()).await,
        "the expired token is still served"
    );
    match watcher.token() {
        Err(
            error @ TokenError::Unavailable {
                expired_at: Some(at),
            },
        ) => {
            assert_eq!(at, first.expiry);
            assert!(error.to_string().contains("expired at"), "{error}");
            assert!(watcher.status().consecutive_failures >= 1);
        }
        other => panic!("{other:?}"),
    }
    let failed = authority.count_where(|r| r.outcome == Outcome::Down);
    // Backoff: 0.1 s doubling to 1 s, over about 2.5 s of outage.
    assert!(
        (2..=15).contains(&failed),
        "{failed} requests during the outage"
    );

    authority.set_down(false);
    let next = tokio::time::timeout(Duration::from_secs(5), watcher.changed())
        .await
        .expect("recovers once the authority is back")
        .unwrap();
    assert_ne!(next.access_token, first.access_token);
    assert!(watcher.token().is_ok());
    assert_eq!(watcher.status().consecutive_failures, 0);
    watcher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured() {
    let authority = authority(Client::new("svc", SECRET));
    authority.push_fault(Fault::retry_after(429, RetryAfter::Seconds(2)));
    let started = Instant::now();
    let watcher = quick(client_credentials(&authority, "svc", SECRET))
        .spawn()
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(1900));
    let requests = authority.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(requests[0].status, Some(429));
    let between = gap(requests[0].at, requests[1].at);
    assert!(
        between >= Duration::from_millis(1900),
        "retried after {between:?} despite Retry-After: 2"
    );
    assert!(matches!(
        watcher.status().last_error,
        Some(FetchError::Status {
            status: 429,
            retry_after: Some(_),
            ..
        })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_error_fails_spawn_at_once_and_is_not_repeated() {
    let authority = authority(Client::new("svc", SECRET));
    let started = Instant::now();
    let error = quick(client_credentials(&authority, "svc", "wrong-secret-4d2a"))
        .first_token_timeout(Duration::from_secs(30))
        .spawn()
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(error.is_permanent(), "{error:?}");
    let SpawnError::Rejected { error: fetch } = &error else {
        panic!("{error:?}")
    };
    assert_eq!(fetch.class(), ErrorClass::Permanent);
    assert_eq!(fetch.oauth_error().unwrap().error, "invalid_client");
    let shown = format!("{error} {error:?}");
    assert!(!shown.contains("wrong-secret"), "{shown}");

    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(authority.request_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_gives_up_after_the_wait_with_the_last_error() {
    let authority = authority(Client::new("svc", SECRET));
    authority.set_down(true);
    let started = Instant::now();
    let error = quick(client_credentials(&authority, "svc", SECRET))
        .first_token_timeout(Duration::from_millis(1500))
        .spawn()
        .await
        .unwrap_err();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(6),
        "{waited:?}"
    );
    match &error {
        SpawnError::TimedOut {
            waited,
            last_error: Some(FetchError::Status { status: 503, .. }),
        } => assert_eq!(*waited, Duration::from_millis(1500)),
        other => panic!("{other:?}"),
    }
    assert!(!error.is_permanent());
    assert!(error.to_string().contains("503"), "{error}");
    // The watcher was stopped: no further attempt.
    let count = authority.request_count();
    assert!(count >= 2, "retried with backoff meanwhile: {count}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(authority.request_count(), count);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_returns_at_once_and_the_token_comes_later() {
    let authority = authority(Client::new("svc", SECRET));
    authority.set_down(true);
    let watcher = quick(client_credentials(&authority, "svc", SECRET))
        .start()
        .unwrap();
    assert!(matches!(
        watcher.token(),
        Err(TokenError::Unavailable { expired_at: None })
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    authority.set_down(false);
    let token = tokio::time::timeout(Duration::from_secs(5), watcher.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(watcher.token().unwrap().access_token, token.access_token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_answer_is_cut_off_and_retried() {
    let authority = authority(Client::new("svc", SECRET));
    authority.push_fault(Fault::OversizedBody { bytes: 1 << 20 });
    let client = client_credentials(&authority, "svc", SECRET).max_body_bytes(16 * 1024);
    let watcher = quick(client).spawn().await.unwrap();
    assert!(watcher.token().is_ok());
    assert_eq!(authority.request_count(), 2);
    assert_eq!(
        watcher.status().last_error,
        Some(FetchError::BodyTooLarge { limit: 16 * 1024 })
    );
}

/// A server that streams a chunked body with no `Content-Length`, so the cap
/// must cut the stream itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_oversized_answer_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/token", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = socket.read(&mut buf).await;
                let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
                if socket.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = vec![b' '; 1024];
                for _ in 0..64 {
                    let size = format!("{:x}\r\n", chunk.len());
                    if socket.write_all(size.as_bytes()).await.is_err()
                        || socket.write_all(&chunk).await.is_err()
                        || socket.write_all(b"\r\n").await.is_err()
                    {
                        return;
                    }
                }
                let _ = socket.write_all(b"0\r\n\r\n").await;
            });
        }
    });
    let client = OAuth2Client::client_credentials(&url, ClientId::new("c"), ClientSecret::new("s"))
        .unwrap()
        .max_body_bytes(8 * 1024);
    let error = quick(client)
        .first_token_timeout(Duration::from_millis(800))
        .spawn()
        .await
        .unwrap_err();
    match error {
        SpawnError::TimedOut {
            last_error: Some(FetchError::BodyTooLarge { limit }),
            ..
        } => assert_eq!(limit, 8 * 1024),
        other => panic!("{other:?}"),
    }
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_answer_times_out_and_is_retried() {
    let authority = authority(Client::new("svc", SECRET));
    authority.push_fault(Fault::Delay(Duration::from_secs(3)));
    let started = Instant::now();
    let watcher = quick(client_credentials(&authority, "svc", SECRET))
        .http(HttpSettings::new().request_timeout(Duration::from_millis(300)))
        .spawn()
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        watcher.status().last_error,
        Some(FetchError::Timeout {
            after: Duration::from_millis(300)
        })
    );
    // The authority saw the client hang up: nothing was issued for it.
    assert!(
        eventually(Duration::from_secs(5), || {
            authority.requests().first().map(|r| r.outcome.clone()) == Some(Outcome::Abandoned)
        })
        .await,
        "{:?}",
        authority.requests()
    );
    assert_eq!(authority.issued_tokens().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_is_a_transient_transport_error() {
    let authority = authority(Client::new("svc", SECRET));
    authority.push_fault(Fault::DropConnection);
    let watcher = quick(client_credentials(&authority, "svc", SECRET))
        .spawn()
        .await
        .unwrap();
    assert!(watcher.token().is_ok());
    match watcher.status().last_error {
        Some(FetchError::Transport { message }) => assert!(!message.is_empty()),
        other => panic!("{other:?}"),
    }
    assert_eq!(authority.request_count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_is_not_followed() {
    let authority = authority(Client::new("svc", SECRET));
    authority.push_fault(Fault::status(302));
    let watcher = quick(client_credentials(&authority, "svc", SECRET))
        .spawn()
        .await
        .unwrap();
    assert!(matches!(
        watcher.status().last_error,
        Some(FetchError::Status { status: 302, .. })
    ));
    assert_eq!(authority.request_count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_handle_stops_without_another_request() {
    let authority = authority(Client::new("svc", SECRET).token_lifetime(Duration::from_secs(2)));
    let watcher = quick(client_credentials(&authority, "svc", SECRET))
        .spawn()
        .await
        .unwrap();
    let other = watcher.clone();
    drop(watcher);
    // One handle left: the watcher lives on.
    assert!(other.token().is_ok());
    assert!(!other.is_stopped());
    drop(other);
    // The refresh was due at 1 s, the expiry at 2 s.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert_eq!(authority.request_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_watcher_says_so() {
    let authority = authority(Client::new("svc", SECRET));
    let watcher = quick(client_credentials(&authority, "svc", SECRET))
        .spawn()
        .await
        .unwrap();
    let other = watcher.clone();
    watcher.shutdown().await;
    assert!(other.is_stopped());
    assert!(matches!(other.token(), Err(TokenError::Stopped)));
    assert_eq!(other.refresh_now().await, Err(WatcherStopped));
    assert_eq!(other.changed().await, Err(WatcherStopped));
    assert!(other.status().shut_down);
    // Idempotent.
    other.shutdown().await;
    assert_eq!(authority.request_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_now_is_rate_limited() {
    let authority = authority(Client::new("svc", SECRET));
    let watcher = quick(client_credentials(&authority, "svc", SECRET))
        .refresh_now_min_interval(Duration::from_secs(2))
        .spawn()
        .await
        .unwrap();
    let first = watcher.token().unwrap().into_arc();

    assert_eq!(watcher.refresh_now().await, Ok(RefreshNow::Started));
    let next = tokio::time::timeout(Duration::from_secs(5), watcher.changed_from(&first))
        .await
        .unwrap()
        .unwrap();
    assert_ne!(next.access_token, first.access_token);
    assert_eq!(authority.request_count(), 2);

    // Too soon: refused, and nothing is sent.
    for _ in 0..5 {
        assert!(matches!(
            watcher.refresh_now().await,
            Ok(RefreshNow::RateLimited { .. })
        ));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(authority.request_count(), 2);

    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(watcher.refresh_now().await, Ok(RefreshNow::Started));
    assert!(
        eventually(Duration::from_secs(5), || authority.request_count() == 3).await,
        "{}",
        authority.request_count()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_refresh_token_rotates_and_is_never_reused() {
    let authority = authority(Client::new("svc", SECRET).token_lifetime(Duration::from_secs(2)));
    let initial = authority.issue_refresh_token("svc");
    let client = OAuth2Client::refresh_token(
        &authority.token_url(),
        ClientId::new("svc"),
        Some(ClientSecret::new(SECRET)),
    )
    .unwrap();
    let watcher = quick(client)
        .initial_refresh_token(RefreshToken::new(initial.clone()))
        .spawn()
        .await
        .unwrap();
    for _ in 0..3 {
        tokio::time::timeout(Duration::from_secs(5), watcher.changed())
            .await
            .unwrap()
            .unwrap();
    }
    assert!(authority.count_by_grant("refresh_token") >= 4);
    assert_eq!(authority.refresh_token_reuses(), 0);
    assert!(!authority.refresh_token_is_live(&initial));
    assert_eq!(authority.live_refresh_tokens("svc").len(), 1);
    watcher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_cache_is_reused_by_the_next_watcher() {
    let dir = tempfile::tempdir().unwrap();
    let authority = authority(Client::new("svc", SECRET));
    let first = quick(client_credentials(&authority, "svc", SECRET))
        .file_cache_in(dir.path())
        .spawn()
        .await
        .unwrap();
    let token = first.token().unwrap().into_arc();
    first.shutdown().await;

    let second = quick(client_credentials(&authority, "svc", SECRET))
        .file_cache_in(dir.path())
        .spawn()
        .await
        .unwrap();
    assert_eq!(second.token().unwrap().access_token, token.access_token);
    assert_eq!(authority.request_count(), 1);
    let file = dir.path().join(format!("{}.json", second.cache_key().id()));
    let stored = std::fs::read_to_string(&file).unwrap();
    assert!(stored.contains("tokenkeeper-cache-record"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_sharing_a_file_cache_fetch_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.json");
    let authority = authority(Client::new("svc", SECRET));
    let spawns = (0..4).map(|_| {
        quick(client_credentials(&authority, "svc", SECRET))
            .file_cache(&path)
            .spawn()
    });
    let watchers: Vec<TokenWatcher> = futures_join_all(spawns).await;
    let tokens: Vec<_> = watchers
        .iter()
        .map(|w| w.token().unwrap().access_token.clone())
        .collect();
    assert!(tokens.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(authority.request_count(), 1);
}

async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<TokenWatcher>
where
    F: std::future::Future<Output = Result<TokenWatcher, SpawnError>> + Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.unwrap().unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_source_is_driven_like_the_endpoint() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let source = Source::from_fn(CacheKey::custom("test", &["custom"]), move |refresh| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        async move {
            assert!(refresh.is_none());
            match n {
                0 => panic!("a source that panics must not wedge the watcher"),
                1 => Err(FetchError::Source {
                    message: "busy".into(),
                    class: ErrorClass::Transient,
                }),
                _ => Ok(TokenGrant::bearer(
                    AccessToken::new(format!("custom-{n}")),
                    Some(Duration::from_secs(2)),
                )),
            }
        }
    });
    let watcher = quick(source).spawn().await.unwrap();
    assert_eq!(
        watcher.token().unwrap().access_token.expose_secret(),
        "custom-2"
    );
    assert!(matches!(
        watcher.status().last_error,
        Some(FetchError::Source { .. })
    ));
    let next = tokio::time::timeout(Duration::from_secs(4), watcher.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.access_token.expose_secret(), "custom-3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_custom_source_times_out() {
    let source = Source::from_fn(CacheKey::custom("test", &["slow"]), |_| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Err(FetchError::Source {
            message: "unreachable".into(),
            class: ErrorClass::Transient,
        })
    });
    let error = quick(source)
        .http(HttpSettings::new().request_timeout(Duration::from_millis(200)))
        .first_token_timeout(Duration::from_millis(700))
        .spawn()
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            SpawnError::TimedOut {
                last_error: Some(FetchError::Timeout { .. }),
                ..
            }
        ),
        "{error:?}"
    );
}

/// A layer in memory that counts calls, and panics when told to.
#[derive(Default)]
struct Memory {
    record: Mutex<Option<Vec<u8>>>,
    reads: AtomicUsize,
    writes: AtomicUsize,
    panic_on_read: bool,
}

/// The layer over a shared [`Memory`].
#[derive(Clone)]
struct MemoryLayer(Arc<Memory>);

impl CacheLayer for MemoryLayer {
    fn layer(&self) -> Layer {
        Layer::new("memory")
    }

    fn read(&self) -> BoxFuture<'_, Result<Option<Vec<u8>>, CacheError>> {
        Box::pin(async move {
            self.0.reads.fetch_add(1, Ordering::SeqCst);
            assert!(!self.0.panic_on_read, "a broken cache layer");
            Ok(self.0.record.lock().unwrap().clone())
        })
    }

    fn write<'a>(&'a self, record: &'a EncodedRecord) -> BoxFuture<'a, Result<(), CacheError>> {
        Box::pin(async move {
            self.0.writes.fetch_add(1, Ordering::SeqCst);
            *self.0.record.lock().unwrap() = Some(record.bytes().to_vec());
            Ok(())
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_cache_layers_are_read_in_order_and_all_written() {
    let dir = tempfile::tempdir().unwrap();
    let authority = authority(Client::new("svc", SECRET));
    let broken = Arc::new(Memory {
        panic_on_read: true,
        ..Memory::default()
    });
    let memory = Arc::new(Memory::default());
    let watcher = quick(client_credentials(&authority, "svc", SECRET))
        .cache(MemoryLayer(Arc::clone(&broken)))
        .cache(MemoryLayer(Arc::clone(&memory)))
        .file_cache_in(dir.path())
        .spawn()
        .await
        .unwrap();
    assert!(watcher.token().is_ok());
    assert_eq!(authority.request_count(), 1);
    assert!(broken.reads.load(Ordering::SeqCst) >= 1);
    assert!(
        eventually(Duration::from_secs(5), || {
            broken.writes.load(Ordering::SeqCst) == 1 && memory.writes.load(Ordering::SeqCst) == 1
        })
        .await
    );
    watcher.shutdown().await;

    // A new watcher finds the token in the memory layer.
    let again = quick(client_credentials(&authority, "svc", SECRET))
        .cache(MemoryLayer(Arc::clone(&memory)))
        .spawn()
        .await
        .unwrap();
    assert_eq!(
        again.token().unwrap().access_token.expose_secret(),
        authority.last_access_token().unwrap()
    );
    assert_eq!(authority.request_count(), 1);
}

/// A writer into a shared buffer, for capturing tracing output.
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

/// Everything runs on this thread (current-thread runtime, no file layer),
/// so the thread's default subscriber sees every span and event.
#[tokio::test(flavor = "current_thread")]
async fn no_secret_in_debug_display_errors_or_traces() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);

    let authority = authority(Client::new("svc", SECRET).token_lifetime(Duration::from_secs(2)));
    let initial = authority.issue_refresh_token("svc");
    let client = OAuth2Client::refresh_token(
        &authority.token_url(),
        ClientId::new("svc"),
        Some(ClientSecret::new(SECRET)),
    )
    .unwrap();
    authority.push_fault(Fault::status(503));
    let memory = Arc::new(Memory::default());
    let builder = quick(client.clone())
        .initial_refresh_token(RefreshToken::new(initial.clone()))
        .cache(MemoryLayer(Arc::clone(&memory)))
        .name("svc-watcher");
    let mut shown = format!("{builder:?}");
    let watcher = builder.spawn().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), watcher.changed())
        .await
        .unwrap()
        .unwrap();
    assert!(watcher.refresh_now().await.is_ok());
    let token = watcher.token().unwrap();
    shown.push_str(&format!(
        "{watcher:?} {token:?} {:?} {:?}",
        watcher.status(),
        Source::from(client)
    ));
    drop(token);
    watcher.shutdown().await;
    shown.push_str(&format!(
        "{:?} {}",
        watcher.token(),
        watcher.token().unwrap_err()
    ));

    // A refusal, shown every way.
    let wrong = quick(client_credentials(&authority, "svc", "wrong-secret-99ab"))
        .spawn()
        .await
        .unwrap_err();
    shown.push_str(&format!("{wrong} {wrong:?}"));

    let logs = captured.text();
    assert!(logs.contains("tokenkeeper.fetch"), "{logs}");
    assert!(logs.contains("new token"), "{logs}");
    assert!(logs.contains("fp:"), "{logs}");
    assert!(!memory.record.lock().unwrap().is_none());

    let mut secrets = vec![SECRET.to_owned(), "wrong-secret-99ab".to_owned(), initial];
    for issued in authority.issued_tokens() {
        secrets.push(issued.access_token);
        secrets.extend(issued.refresh_token);
    }
    assert!(secrets.len() >= 5);
    for secret in &secrets {
        assert!(
            !logs.contains(secret.as_str()),
            "{secret} in the logs:\n{logs}"
        );
        assert!(!shown.contains(secret.as_str()), "{secret} shown:\n{shown}");
    }
}
