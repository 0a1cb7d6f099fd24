//! The async-std/smol watcher against the test kit's authority and a few
//! raw loopback servers: real HTTP, real time, short-lived tokens.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use futures_lite::FutureExt;
use tokenkeeper_async_std::{
    AsyncIoRuntime, BoxFuture, CacheLayer, HttpSettings, Source, SpawnError, TokenError,
    TokenWatcher, TokenWatcherBuilder, WatcherStopped,
};
use tokenkeeper_core::oauth2::OAuth2Client;
use tokenkeeper_core::{
    AccessToken, BackoffPolicy, CacheError, CacheKey, ClientId, ClientSecret, EncodedRecord,
    ErrorClass, FetchError, Jitter, Layer, RefreshNow, RefreshToken, TokenGrant, TokenState,
};
use tokenkeeper_testkit::{Authority, Client, Fault, Outcome};

const SECRET: &str = "s3cret-never-logged-a51f";

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

/// A builder with no jitter and a quick backoff, so tests run in seconds.
fn quick(source: impl Into<Source>) -> TokenWatcherBuilder {
    TokenWatcher::builder(source)
        .jitter(Jitter::none())
        .backoff(
            BackoffPolicy::builder()
                .floor(Duration::from_millis(50))
                .initial(Duration::from_millis(100))
                .cap(Duration::from_secs(1))
                .build()
                .unwrap(),
        )
        .first_token_timeout(Duration::from_secs(15))
}

fn block_on<T>(future: impl Future<Output = T>) -> T {
    async_std::task::block_on(future)
}

/// Runs `future` for at most `limit`.
async fn within<T>(limit: Duration, future: impl Future<Output = T>) -> Option<T> {
    async { Some(future.await) }
        .or(async {
            async_io::Timer::after(limit).await;
            None
        })
        .await
}

/// Polls `condition` every 10 ms for up to `limit`.
async fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        async_io::Timer::after(Duration::from_millis(10)).await;
    }
    condition()
}

/// A loopback server that answers each connection with `answer`, after
/// sending the request it read (head and body) down the channel.
fn raw_server(answer: &'static [u8]) -> (String, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let request = read_request(&stream);
                let _ = tx.send(request);
                let _ = stream.write_all(answer);
            });
        }
    });
    (base, rx)
}

fn read_request(stream: &TcpStream) -> String {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return head;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0; length];
    let _ = reader.read_exact(&mut body);
    head + &String::from_utf8_lossy(&body)
}

const TOKEN_ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 68\r\nConnection: close\r\n\r\n{\"access_token\":\"raw-token-1\",\"token_type\":\"Bearer\",\"expires_in\":60}";

#[test]
fn the_request_on_the_wire_is_a_plain_http1_form_post() {
    let (base, requests) = raw_server(TOKEN_ANSWER);
    let client = OAuth2Client::client_credentials(
        &format!("http://{base}/oauth/token?tenant=t1"),
        ClientId::new("wire"),
        ClientSecret::new("wire-secret"),
    )
    .unwrap()
    .scope("read");
    let watcher = block_on(quick(client).spawn()).unwrap();
    assert_eq!(
        watcher.token().unwrap().access_token.expose_secret(),
        "raw-token-1"
    );
    let request = requests.recv_timeout(Duration::from_secs(5)).unwrap();
    let lower = request.to_ascii_lowercase();
    assert!(
        request.starts_with("POST /oauth/token?tenant=t1 HTTP/1.1\r\n"),
        "{request}"
    );
    assert!(
        lower.contains(&format!("\r\nhost: {base}\r\n")),
        "{request}"
    );
    assert!(
        lower.contains(&format!(
            "\r\nuser-agent: tokenkeeper-async-std/{}\r\n",
            env!("CARGO_PKG_VERSION")
        )),
        "{request}"
    );
    assert!(lower.contains("\r\nconnection: close\r\n"), "{request}");
    assert!(
        lower.contains("\r\ncontent-type: application/x-www-form-urlencoded\r\n"),
        "{request}"
    );
    assert!(lower.contains("\r\nauthorization: basic "), "{request}");
    assert!(
        request.ends_with("grant_type=client_credentials&scope=read"),
        "{request}"
    );
    block_on(watcher.shutdown());
}

#[test]
fn spawn_returns_with_a_first_token_and_refreshes_in_the_background() {
    // A 3 s token goes stale at half its life: the refresh is due at 1.5 s.
    let authority = authority(Client::new("svc", SECRET).token_lifetime(Duration::from_secs(3)));
    block_on(async {
        let watcher = quick(client_credentials(&authority, "svc", SECRET))
            .spawn()
            .await
            .unwrap();
        let first = watcher.token().unwrap().into_arc();
        assert_eq!(
            first.access_token.expose_secret(),
            authority.last_access_token().unwrap()
        );
        let status = watcher.status();
        assert_eq!(status.token_state, Some(TokenState::Fresh));
        assert_eq!(status.consecutive_failures, 0);

        let next = within(Duration::from_secs(5), watcher.changed())
            .await
            .expect("a refresh within 5 s")
            .unwrap();
        assert_ne!(next.access_token, first.access_token);
        assert_eq!(watcher.token().unwrap().access_token, next.access_token);
        assert_eq!(authority.request_count(), 2);
        watcher.shutdown().await;
    });
}

#[test]
fn host_names_are_resolved_off_the_executor() {
    let authority = authority(Client::new("svc", SECRET));
    let url = format!("http://localhost:{}/token", authority.addr().port());
    let client =
        OAuth2Client::client_credentials(&url, ClientId::new("svc"), ClientSecret::new(SECRET))
            .unwrap();
    // Both blocking pools: async-std's, and smol's.
    for runtime in [AsyncIoRuntime::async_std(), AsyncIoRuntime::smol()] {
        let watcher = block_on(quick(client.clone()).runtime(runtime).spawn()).unwrap();
        assert!(watcher.token().is_ok());
        block_on(watcher.shutdown());
    }
}

#[test]
fn https_to_a_server_that_does_not_speak_tls_is_a_transport_error() {
    let (base, _requests) = raw_server(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
    let client = OAuth2Client::client_credentials(
        &format!("https://{base}/token"),
        ClientId::new("c"),
        ClientSecret::new("s"),
    )
    .unwrap();
    let error = block_on(
        quick(client)
            .first_token_timeout(Duration::from_millis(600))
            .spawn(),
    )
    .unwrap_err();
    match error {
        SpawnError::TimedOut {
            last_error: Some(FetchError::Transport { message }),
            ..
        } => assert!(message.contains(&base), "{message}"),
        other => panic!("{other:?}"),
    }

    // Nobody listening: refused, as a transport error too.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let client = OAuth2Client::client_credentials(
        &format!("http://127.0.0.1:{port}/token"),
        ClientId::new("c"),
        ClientSecret::new("s"),
    )
    .unwrap();
    let error = block_on(
        quick(client)
            .first_token_timeout(Duration::from_millis(400))
            .spawn(),
    )
    .unwrap_err();
    assert!(
        matches!(
            error.fetch_error(),
            Some(FetchError::Transport { message }) if message.contains("could not connect")
        ),
        "{error:?}"
    );
}

/// A chunked body with no `Content-Length`: the cap must cut the stream.
#[test]
fn a_streamed_oversized_answer_is_cut_off() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/token", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let _ = read_request(&stream);
                let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
                if stream.write_all(head.as_bytes()).is_err() {
                    return;
                }
                let chunk = vec![b' '; 1024];
                for _ in 0..64 {
                    let size = format!("{:x}\r\n", chunk.len());
                    if stream.write_all(size.as_bytes()).is_err()
                        || stream.write_all(&chunk).is_err()
                        || stream.write_all(b"\r\n").is_err()
                    {
                        return;
                    }
                }
                let _ = stream.write_all(b"0\r\n\r\n");
            });
        }
    });
    let client = OAuth2Client::client_credentials(&url, ClientId::new("c"), ClientSecret::new("s"))
        .unwrap()
        .max_body_bytes(8 * 1024);
    let error = block_on(
        quick(client)
            .first_token_timeout(Duration::from_millis(800))
            .spawn(),
    )
    .unwrap_err();
    match error {
        SpawnError::TimedOut {
            last_error: Some(FetchError::BodyTooLarge { limit }),
            ..
        } => assert_eq!(limit, 8 * 1024),
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_announced_oversized_answer_is_refused_and_retried() {
    let authority = authority(Client::new("svc", SECRET));
    authority.push_fault(Fault::OversizedBody { bytes: 1 << 20 });
    let client = client_credentials(&authority, "svc", SECRET).max_body_bytes(16 * 1024);
    let watcher = block_on(quick(client).spawn()).unwrap();
    assert!(watcher.token().is_ok());
    assert_eq!(authority.request_count(), 2);
    assert_eq!(
        watcher.status().last_error,
        Some(FetchError::BodyTooLarge { limit: 16 * 1024 })
    );
}

#[test]
fn a_slow_answer_times_out_and_is_retried() {
    let authority = authority(Client::new("svc", SECRET));
    authority.push_fault(Fault::Delay(Duration::from_secs(3)));
    block_on(async {
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
    });
}

#[test]
fn a_dropped_connection_and_a_redirect_are_errors_and_retried() {
    let authority = authority(Client::new("svc", SECRET));
    authority.push_fault(Fault::DropConnection);
    authority.push_fault(Fault::status(302));
    let watcher = block_on(quick(client_credentials(&authority, "svc", SECRET)).spawn()).unwrap();
    assert!(watcher.token().is_ok());
    assert!(matches!(
        watcher.status().last_error,
        Some(FetchError::Status { status: 302, .. })
    ));
    assert_eq!(authority.request_count(), 3);
    assert_eq!(authority.requests()[0].outcome, Outcome::Dropped);
}

#[test]
fn a_permanent_error_fails_spawn_at_once() {
    let authority = authority(Client::new("svc", SECRET));
    let started = Instant::now();
    let error = block_on(
        quick(client_credentials(&authority, "svc", "wrong-secret-1c0d"))
            .first_token_timeout(Duration::from_secs(30))
            .spawn(),
    )
    .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(error.is_permanent(), "{error:?}");
    let shown = format!("{error} {error:?}");
    assert!(shown.contains("invalid_client"), "{shown}");
    assert!(!shown.contains("wrong-secret"), "{shown}");
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(authority.request_count(), 1);
}

#[test]
fn start_returns_at_once_and_the_token_comes_later_on_smol() {
    let authority = authority(Client::new("svc", SECRET));
    authority.set_down(true);
    smol::block_on(async {
        let watcher = quick(client_credentials(&authority, "svc", SECRET))
            .runtime(AsyncIoRuntime::smol())
            .start()
            .unwrap();
        assert!(matches!(
            watcher.token(),
            Err(TokenError::Unavailable {
                expired_at: None,
                ..
            })
        ));
        smol::Timer::after(Duration::from_millis(300)).await;
        authority.set_down(false);
        let token = within(Duration::from_secs(5), watcher.changed())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(watcher.token().unwrap().access_token, token.access_token);
        watcher.shutdown().await;
    });
}

#[test]
fn dropping_the_last_handle_stops_without_another_request() {
    let authority = authority(Client::new("svc", SECRET).token_lifetime(Duration::from_secs(2)));
    let watcher = block_on(quick(client_credentials(&authority, "svc", SECRET)).spawn()).unwrap();
    let other = watcher.clone();
    drop(watcher);
    assert!(other.token().is_ok());
    assert!(!other.is_stopped());
    drop(other);
    // The refresh was due at 1 s, the expiry at 2 s.
    std::thread::sleep(Duration::from_millis(3000));
    assert_eq!(authority.request_count(), 1);
}

#[test]
fn a_stopped_watcher_says_so() {
    let authority = authority(Client::new("svc", SECRET));
    block_on(async {
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
        other.shutdown().await;
    });
    assert_eq!(authority.request_count(), 1);
}

#[test]
fn refresh_now_is_rate_limited() {
    let authority = authority(Client::new("svc", SECRET));
    block_on(async {
        let watcher = quick(client_credentials(&authority, "svc", SECRET))
            .refresh_now_min_interval(Duration::from_secs(2))
            .spawn()
            .await
            .unwrap();
        let first = watcher.token().unwrap().into_arc();
        assert_eq!(watcher.refresh_now().await, Ok(RefreshNow::Started));
        let next = within(Duration::from_secs(5), watcher.changed_from(&first))
            .await
            .unwrap()
            .unwrap();
        assert_ne!(next.access_token, first.access_token);
        for _ in 0..5 {
            assert!(matches!(
                watcher.refresh_now().await,
                Ok(RefreshNow::RateLimited { .. })
            ));
        }
        async_io::Timer::after(Duration::from_millis(300)).await;
        assert_eq!(authority.request_count(), 2);
    });
}

#[test]
fn the_refresh_token_rotates_and_is_persisted_in_the_file_cache() {
    let dir = tempfile::tempdir().unwrap();
    let authority = authority(Client::new("svc", SECRET).token_lifetime(Duration::from_secs(2)));
    let initial = authority.issue_refresh_token("svc");
    let client = OAuth2Client::refresh_token(
        &authority.token_url(),
        ClientId::new("svc"),
        Some(ClientSecret::new(SECRET)),
    )
    .unwrap();
    block_on(async {
        let watcher = quick(client)
            .initial_refresh_token(RefreshToken::new(initial.clone()))
            .file_cache_in(dir.path())
            .spawn()
            .await
            .unwrap();
        for _ in 0..2 {
            within(Duration::from_secs(5), watcher.changed())
                .await
                .unwrap()
                .unwrap();
        }
        let latest = watcher.token().unwrap().into_arc();
        watcher.shutdown().await;
        let file = dir
            .path()
            .join(format!("{}.json", watcher.cache_key().id()));
        let stored = std::fs::read(&file).unwrap();
        let record = tokenkeeper_core::cache::decode_record(watcher.cache_key(), &stored).unwrap();
        assert_eq!(record.refresh_token, latest.refresh_token);
    });
    assert_eq!(authority.refresh_token_reuses(), 0);
    assert!(!authority.refresh_token_is_live(&initial));
}

#[test]
fn a_custom_source_that_panics_does_not_wedge_the_watcher() {
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
                    Some(Duration::from_secs(60)),
                )),
            }
        }
    });
    let watcher = block_on(quick(source).spawn()).unwrap();
    assert_eq!(
        watcher.token().unwrap().access_token.expose_secret(),
        "custom-2"
    );
    assert!(matches!(
        watcher.status().last_error,
        Some(FetchError::Source { .. })
    ));
}

#[test]
fn a_slow_custom_source_times_out() {
    let source = Source::from_fn(CacheKey::custom("test", &["slow"]), |_| async {
        async_io::Timer::after(Duration::from_secs(30)).await;
        Err(FetchError::Source {
            message: "unreachable".into(),
            class: ErrorClass::Transient,
        })
    });
    let error = block_on(
        quick(source)
            .http(HttpSettings::new().request_timeout(Duration::from_millis(200)))
            .first_token_timeout(Duration::from_millis(700))
            .spawn(),
    )
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

#[test]
fn cache_layers_are_read_in_order_and_all_written() {
    let dir = tempfile::tempdir().unwrap();
    let authority = authority(Client::new("svc", SECRET));
    let broken = Arc::new(Memory {
        panic_on_read: true,
        ..Memory::default()
    });
    let memory = Arc::new(Memory::default());
    block_on(async {
        let watcher = quick(client_credentials(&authority, "svc", SECRET))
            .cache(MemoryLayer(Arc::clone(&broken)))
            .cache(MemoryLayer(Arc::clone(&memory)))
            .file_cache_in(dir.path())
            .spawn()
            .await
            .unwrap();
        assert!(watcher.token().is_ok());
        assert_eq!(authority.request_count(), 1);
        assert!(
            eventually(Duration::from_secs(5), || {
                broken.writes.load(Ordering::SeqCst) == 1
                    && memory.writes.load(Ordering::SeqCst) == 1
            })
            .await
        );
        watcher.shutdown().await;

        // New watchers find the token: one in the memory layer, one in the file.
        let again = quick(client_credentials(&authority, "svc", SECRET))
            .cache(MemoryLayer(Arc::clone(&memory)))
            .spawn()
            .await
            .unwrap();
        let from_file = quick(client_credentials(&authority, "svc", SECRET))
            .runtime(AsyncIoRuntime::smol())
            .file_cache_in(dir.path())
            .spawn()
            .await
            .unwrap();
        let issued = authority.last_access_token().unwrap();
        assert_eq!(again.token().unwrap().access_token.expose_secret(), issued);
        assert_eq!(
            from_file.token().unwrap().access_token.expose_secret(),
            issued
        );
        assert_eq!(authority.request_count(), 1);
    });
}

#[test]
fn watchers_sharing_a_file_cache_fetch_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.json");
    let authority = authority(Client::new("svc", SECRET));
    authority.push_fault(Fault::Delay(Duration::from_millis(300)));
    let watchers: Vec<TokenWatcher> = block_on(async {
        let spawns: Vec<_> = (0..4)
            .map(|n| {
                let runtime = if n % 2 == 0 {
                    AsyncIoRuntime::async_std()
                } else {
                    AsyncIoRuntime::smol()
                };
                let builder = quick(client_credentials(&authority, "svc", SECRET))
                    .runtime(runtime)
                    .file_cache(&path);
                async_std::task::spawn(builder.spawn())
            })
            .collect();
        let mut watchers = Vec::new();
        for spawn in spawns {
            watchers.push(spawn.await.unwrap());
        }
        watchers
    });
    let tokens: Vec<_> = watchers
        .iter()
        .map(|w| w.token().unwrap().access_token.clone())
        .collect();
    assert!(tokens.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(authority.request_count(), 1);
}
