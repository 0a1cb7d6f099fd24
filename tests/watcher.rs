//! The watcher against the test kit's authority and a few raw loopback
//! servers, written once and run against every driver (tokio, async-std,
//! smol, threads): real HTTP, real time, short-lived tokens.
//!
//! Beyond the conformance scenarios: the exact errors and status a watcher
//! reports, its timing, what its handles answer once it stopped, the request
//! on the wire, and custom token sources of both kinds.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant, SystemTime};

use common::{Flavor, eventually};
use tokenkeeper_core::oauth2::{AuthMethod, OAuth2Client};
use tokenkeeper_core::{
    AccessToken, BackoffPolicy, CacheKey, ClientId, ClientSecret, ErrorClass, Event, FetchError,
    Jitter, Origin, RefreshNow, TokenGrant, TokenState,
};
use tokenkeeper_driver::{
    ChangedError, HttpSettings, Runtime, Source, SpawnError, TokenError, TokenWatcher,
    TokenWatcherBuilder, WatcherStopped,
};
use tokenkeeper_testkit::{Authority, Client, Fault, Outcome, PresentedAuth, RetryAfter};

const SECRET: &str = "s3cret-never-logged-7c1e";

fn authority(client: Client) -> Authority {
    let authority = Authority::start();
    authority.register_client(client);
    authority
}

fn client_credentials(authority: &Authority, id: &str, secret: &str) -> OAuth2Client {
    OAuth2Client::client_credentials(
        authority.token_url(),
        ClientId::new(id),
        ClientSecret::new(secret),
    )
    .unwrap()
}

/// A builder with no jitter and a quick backoff (0.1 s doubling to 1 s), so
/// that tests run in seconds.
fn quick<F: Flavor>(source: impl Into<Source>) -> TokenWatcherBuilder<F::R> {
    F::builder(source)
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

fn spawn<F: Flavor>(builder: TokenWatcherBuilder<F::R>) -> TokenWatcher<F::R> {
    F::block_on(builder.spawn()).unwrap_or_else(|e| panic!("{}: spawn failed: {e:?}", F::NAME))
}

fn gap(a: SystemTime, b: SystemTime) -> Duration {
    b.duration_since(a).unwrap_or_default()
}

/// Runs `work` on a thread of its own and fails the test if it takes longer
/// than `limit`: a bound on the waits that have none (`changed`, ...).
fn within<T: Send + 'static>(limit: Duration, work: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(work());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|e| panic!("not done within {limit:?}: {e}"))
}

/// Every event the watcher's hook was called with, in order.
#[derive(Clone, Default)]
struct Events(Arc<Mutex<Vec<Event>>>);

impl Events {
    fn hook(&self) -> impl Fn(&Event) + Send + Sync + 'static {
        let events = Arc::clone(&self.0);
        move |event| events.lock().unwrap().push(event.clone())
    }

    fn all(&self) -> Vec<Event> {
        self.0.lock().unwrap().clone()
    }

    fn failures(&self) -> Vec<FetchError> {
        self.all()
            .into_iter()
            .filter_map(|e| match e {
                Event::FetchFailed { error, .. } => Some(error),
                _ => None,
            })
            .collect()
    }
}

fn spawn_returns_with_a_first_token<F: Flavor>() {
    let authority = authority(Client::new("svc", SECRET));
    let watcher = spawn::<F>(quick::<F>(client_credentials(&authority, "svc", SECRET)));

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
    assert_eq!(record.auth, PresentedAuth::Basic);
    assert!(record.authenticated);

    let status = watcher.status();
    assert_eq!(status.token_state, Some(TokenState::Fresh));
    assert_eq!(status.consecutive_failures, 0);
    assert!(status.last_error.is_none());
    assert!(status.last_success_at.is_some());
    assert!(!status.shut_down);
    assert!(!watcher.is_stopped());
    assert_eq!(watcher.name(), "svc");
    F::block_on(watcher.shutdown());
}

fn post_authentication_works_too<F: Flavor>() {
    let authority =
        authority(Client::new("svc", SECRET).auth_method(tokenkeeper_testkit::AuthMethod::Post));
    let client =
        client_credentials(&authority, "svc", SECRET).auth_method(AuthMethod::ClientSecretPost);
    let watcher = spawn::<F>(quick::<F>(client));
    assert!(watcher.token().is_ok());
    let record = &authority.requests()[0];
    assert_eq!(record.auth, PresentedAuth::Post);
    assert!(record.authenticated);
    F::block_on(watcher.shutdown());
}

fn refreshes_in_the_background_at_the_stale_time<F: Flavor>() {
    // A 3 s token goes stale at half its life (it is shorter than twice the
    // 30 s minimum stale window); no jitter: the refresh is due at 1.5 s.
    let authority = authority(Client::new("svc", SECRET).token_lifetime(Duration::from_secs(3)));
    let watcher = spawn::<F>(quick::<F>(client_credentials(&authority, "svc", SECRET)));
    let first = watcher.token().unwrap().into_arc();

    let waiter = watcher.clone();
    let next = within(Duration::from_secs(5), move || {
        F::block_on(waiter.changed())
    })
    .unwrap();
    assert_ne!(next.access_token, first.access_token);
    assert_eq!(watcher.token().unwrap().access_token, next.access_token);

    let requests = authority.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    let between = gap(requests[0].at, requests[1].at);
    assert!(
        between >= Duration::from_millis(1400) && between < Duration::from_millis(2900),
        "{}: refreshed {between:?} after the first fetch",
        F::NAME
    );
    F::block_on(watcher.shutdown());
}

fn serves_the_last_token_through_an_outage_until_it_expires<F: Flavor>() {
    let authority = authority(Client::new("svc", SECRET).token_lifetime(Duration::from_secs(4)));
    let watcher = spawn::<F>(quick::<F>(client_credentials(&authority, "svc", SECRET)));
    let first = watcher.token().unwrap().into_arc();
    authority.set_down(true);

    // Stale at 2 s: refreshes fail, the token is still served.
    std::thread::sleep(Duration::from_millis(3000));
    assert_eq!(watcher.token().unwrap().access_token, first.access_token);
    let status = watcher.status();
    assert!(status.consecutive_failures >= 1, "{status:?}");
    assert_eq!(status.token_state, Some(TokenState::Stale));
    assert!(
        matches!(
            status.last_error,
            Some(FetchError::Status { status: 503, .. })
        ),
        "{status:?}"
    );
    assert!(status.last_error_at.is_some());
    assert!(
        status.next_attempt.is_some() || status.fetch_in_flight,
        "{status:?}"
    );

    // Past its expiry it is withdrawn, with the reason.
    assert!(
        eventually(Duration::from_secs(3), || watcher.token().is_err()),
        "{}: the expired token is still served",
        F::NAME
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
        other => panic!("{}: {other:?}", F::NAME),
    }
    let failed = authority.count_where(|r| r.outcome == Outcome::Down);
    // Backoff: 0.1 s doubling to 1 s, over about 2.5 s of outage.
    assert!(
        (2..=15).contains(&failed),
        "{}: {failed} requests during the outage",
        F::NAME
    );

    authority.set_down(false);
    let changed = F::block_on(watcher.changed_within(Duration::from_secs(5)));
    let next = changed.expect("recovers once the authority is back");
    assert_ne!(next.access_token, first.access_token);
    assert!(watcher.token().is_ok());
    assert_eq!(watcher.status().consecutive_failures, 0);
    F::block_on(watcher.shutdown());
}

fn retry_after_is_honoured<F: Flavor>() {
    let authority = authority(Client::new("svc", SECRET));
    authority.push_fault(Fault::retry_after(429, RetryAfter::Seconds(2)));
    let started = Instant::now();
    let watcher = spawn::<F>(quick::<F>(client_credentials(&authority, "svc", SECRET)));
    assert!(started.elapsed() >= Duration::from_millis(1900));
    let requests = authority.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(requests[0].status, Some(429));
    let between = gap(requests[0].at, requests[1].at);
    assert!(
        between >= Duration::from_millis(1900),
        "{}: retried after {between:?} despite Retry-After: 2",
        F::NAME
    );
    assert!(matches!(
        watcher.status().last_error,
        Some(FetchError::Status {
            status: 429,
            retry_after: Some(_),
            ..
        })
    ));
    F::block_on(watcher.shutdown());
}

fn a_permanent_error_fails_spawn_at_once_and_is_not_repeated<F: Flavor>() {
    let authority = authority(Client::new("svc", SECRET));
    let started = Instant::now();
    let error = F::block_on(
        quick::<F>(client_credentials(&authority, "svc", "wrong-secret-4d2a"))
            .first_token_timeout(Duration::from_secs(30))
            .spawn(),
    )
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
    assert_eq!(error.fetch_error(), Some(fetch));
    let shown = format!("{error} {error:?}");
    assert!(shown.contains("invalid_client"), "{shown}");
    assert!(!shown.contains("wrong-secret"), "{shown}");

    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(authority.request_count(), 1);
}

fn spawn_gives_up_after_the_wait_with_the_last_error<F: Flavor>() {
    let authority = authority(Client::new("svc", SECRET));
    authority.set_down(true);
    let started = Instant::now();
    let error = F::block_on(
        quick::<F>(client_credentials(&authority, "svc", SECRET))
            .first_token_timeout(Duration::from_millis(1500))
            .spawn(),
    )
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
        other => panic!("{}: {other:?}", F::NAME),
    }
    assert!(!error.is_permanent());
    assert!(error.to_string().contains("503"), "{error}");
    // The watcher was stopped: no further attempt.
    let count = authority.request_count();
    assert!(count >= 2, "retried with backoff meanwhile: {count}");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(authority.request_count(), count);
}

fn start_returns_at_once_and_the_token_comes_later<F: Flavor>() {
    let authority = authority(Client::new("svc", SECRET));
    authority.set_down(true);
    let watcher = quick::<F>(client_credentials(&authority, "svc", SECRET))
        .start()
        .unwrap();
    assert!(matches!(
        watcher.token(),
        Err(TokenError::Unavailable { expired_at: None })
    ));
    let waiter = watcher.clone();
    let next = std::thread::spawn(move || F::block_on(waiter.changed()));
    std::thread::sleep(Duration::from_millis(300));
    assert!(watcher.token().is_err());
    assert!(authority.count_where(|r| r.outcome == Outcome::Down) >= 1);
    authority.set_down(false);
    let token = within(Duration::from_secs(5), move || next.join().unwrap()).unwrap();
    assert_eq!(watcher.token().unwrap().access_token, token.access_token);
    F::block_on(watcher.shutdown());
}

fn an_announced_oversized_answer_is_refused_and_retried<F: Flavor>() {
    let authority = authority(Client::new("svc", SECRET));
    authority.push_fault(Fault::OversizedBody { bytes: 1 << 20 });
    let client = client_credentials(&authority, "svc", SECRET).max_body_bytes(16 * 1024);
    let watcher = spawn::<F>(quick::<F>(client));
    assert!(watcher.token().is_ok());
    assert_eq!(authority.request_count(), 2);
    assert_eq!(
        watcher.status().last_error,
        Some(FetchError::BodyTooLarge { limit: 16 * 1024 })
    );
    F::block_on(watcher.shutdown());
}

/// A chunked body with no `Content-Length`: the cap must cut the stream.
fn a_streamed_oversized_answer_is_cut_off<F: Flavor>() {
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
    let error = F::block_on(
        quick::<F>(client)
            .first_token_timeout(Duration::from_millis(800))
            .spawn(),
    )
    .unwrap_err();
    match error {
        SpawnError::TimedOut {
            last_error: Some(FetchError::BodyTooLarge { limit }),
            ..
        } => assert_eq!(limit, 8 * 1024),
        other => panic!("{}: {other:?}", F::NAME),
    }
}

fn a_slow_answer_times_out_and_is_retried<F: Flavor>() {
    let authority = authority(Client::new("svc", SECRET));
    authority.push_fault(Fault::Delay(Duration::from_secs(3)));
    let started = Instant::now();
    let watcher = spawn::<F>(
        quick::<F>(client_credentials(&authority, "svc", SECRET))
            .http(HttpSettings::new().request_timeout(Duration::from_millis(300))),
    );
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
        }),
        "{}: {:?}",
        F::NAME,
        authority.requests()
    );
    assert_eq!(authority.issued_tokens().len(), 1);
    F::block_on(watcher.shutdown());
}

/// A dropped connection is a transport error, a 503 an error status; both
/// are retried (a redirect is not: tests/tls.rs), and the event hook sees each
/// failure, the token and the stop, in order.
fn a_dropped_connection_and_a_server_error_are_retried<F: Flavor>() {
    let authority = authority(Client::new("svc", SECRET));
    authority.push_fault(Fault::DropConnection);
    authority.push_fault(Fault::status(503));
    let events = Events::default();
    let watcher = spawn::<F>(
        quick::<F>(client_credentials(&authority, "svc", SECRET)).on_event(events.hook()),
    );
    assert!(watcher.token().is_ok());
    assert!(matches!(
        watcher.status().last_error,
        Some(FetchError::Status { status: 503, .. })
    ));
    let requests = authority.requests();
    assert_eq!(requests.len(), 3, "{requests:?}");
    assert_eq!(requests[0].outcome, Outcome::Dropped);
    assert_eq!(requests[1].status, Some(503));

    match events.failures().as_slice() {
        [
            FetchError::Transport { message },
            FetchError::Status { status: 503, .. },
        ] => assert!(!message.is_empty()),
        other => panic!("{}: {other:?}", F::NAME),
    }
    let all = events.all();
    match all.iter().find(|e| !matches!(e, Event::FetchFailed { .. })) {
        Some(Event::TokenChanged { token, origin }) => {
            assert_eq!(*origin, Origin::Authority);
            assert_eq!(token.access_token, watcher.token().unwrap().access_token);
        }
        other => panic!("{}: {other:?} in {all:?}", F::NAME),
    }
    assert!(matches!(
        all[0],
        Event::FetchFailed {
            class: ErrorClass::Transient,
            consecutive_failures: 1,
            ..
        }
    ));
    F::block_on(watcher.shutdown());
    assert!(
        matches!(events.all().last(), Some(Event::Stopped)),
        "{:?}",
        events.all()
    );
}

fn dropping_the_last_handle_stops_without_another_request<F: Flavor>() {
    let authority = authority(Client::new("svc", SECRET).token_lifetime(Duration::from_secs(2)));
    let watcher = spawn::<F>(quick::<F>(client_credentials(&authority, "svc", SECRET)));
    let other = watcher.clone();
    drop(watcher);
    // One handle left: the watcher lives on.
    assert!(other.token().is_ok());
    assert!(!other.is_stopped());
    drop(other);
    // The refresh was due at 1 s, the expiry at 2 s.
    std::thread::sleep(Duration::from_millis(3000));
    assert_eq!(authority.request_count(), 1, "{}", F::NAME);
}

fn a_stopped_watcher_says_so<F: Flavor>() {
    let authority = authority(Client::new("svc", SECRET));
    let watcher = spawn::<F>(quick::<F>(client_credentials(&authority, "svc", SECRET)));
    let held = watcher.token().unwrap().into_arc();
    let other = watcher.clone();
    F::block_on(watcher.shutdown());
    assert!(other.is_stopped());
    assert_eq!(other.token().err(), Some(TokenError::Stopped));
    assert_eq!(
        other.token().unwrap_err().to_string(),
        "the token watcher has stopped"
    );
    assert_eq!(F::block_on(other.refresh_now()), Err(WatcherStopped));
    assert_eq!(F::block_on(other.changed()), Err(WatcherStopped));
    assert_eq!(
        F::block_on(other.changed_within(Duration::from_secs(5))),
        Err(ChangedError::Stopped)
    );
    assert_eq!(F::block_on(other.changed_from(&held)), Err(WatcherStopped));
    assert!(other.status().shut_down);
    // Idempotent.
    F::block_on(other.shutdown());
    F::block_on(watcher.shutdown());
    assert_eq!(authority.request_count(), 1);
}

fn refresh_now_is_rate_limited<F: Flavor>() {
    let authority = authority(Client::new("svc", SECRET));
    let watcher = spawn::<F>(
        quick::<F>(client_credentials(&authority, "svc", SECRET))
            .refresh_now_min_interval(Duration::from_secs(2)),
    );
    let first = watcher.token().unwrap().into_arc();

    assert_eq!(F::block_on(watcher.refresh_now()), Ok(RefreshNow::Started));
    let waiter = watcher.clone();
    let seen = Arc::clone(&first);
    let next = within(Duration::from_secs(5), move || {
        F::block_on(waiter.changed_from(&seen))
    })
    .unwrap();
    assert_ne!(next.access_token, first.access_token);
    assert_eq!(authority.request_count(), 2);
    // Already newer than `first`: answered at once.
    let again = F::block_on(watcher.changed_from(&first)).unwrap();
    assert_eq!(again.access_token, next.access_token);

    // Too soon: refused, and nothing is sent.
    for _ in 0..5 {
        assert!(matches!(
            F::block_on(watcher.refresh_now()),
            Ok(RefreshNow::RateLimited { .. })
        ));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(authority.request_count(), 2);

    std::thread::sleep(Duration::from_millis(2000));
    assert_eq!(F::block_on(watcher.refresh_now()), Ok(RefreshNow::Started));
    assert!(
        eventually(Duration::from_secs(5), || authority.request_count() == 3),
        "{}",
        authority.request_count()
    );
    F::block_on(watcher.shutdown());
}

fn changed_within_times_out_and_changed_reports_a_stop<F: Flavor>() {
    let authority = authority(Client::new("svc", SECRET).token_lifetime(Duration::from_secs(300)));
    let watcher = spawn::<F>(quick::<F>(client_credentials(&authority, "svc", SECRET)));
    let started = Instant::now();
    assert_eq!(
        F::block_on(watcher.changed_within(Duration::from_millis(100))),
        Err(ChangedError::TimedOut)
    );
    assert!(started.elapsed() >= Duration::from_millis(100));
    // Nothing newer than the current token: `changed_from` waits.
    let current = watcher.token().unwrap().into_arc();

    let waiters: Vec<_> = (0..3)
        .map(|n| {
            let other = watcher.clone();
            let current = Arc::clone(&current);
            std::thread::spawn(move || match n {
                0 => F::block_on(other.changed()).map(|_| ()),
                1 => F::block_on(other.changed_from(&current)).map(|_| ()),
                _ => F::block_on(other.changed_within(Duration::from_secs(30)))
                    .map(|_| ())
                    .map_err(|e| {
                        assert_eq!(e, ChangedError::Stopped);
                        WatcherStopped
                    }),
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    assert!(waiters.iter().all(|w| !w.is_finished()));
    F::block_on(watcher.shutdown());
    for waiter in waiters {
        let result = within(Duration::from_secs(5), move || waiter.join().unwrap());
        assert_eq!(result, Err(WatcherStopped));
    }
    assert_eq!(authority.request_count(), 1);
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

fn the_request_on_the_wire_is_a_plain_http1_form_post<F: Flavor>() {
    let (base, requests) = raw_server(TOKEN_ANSWER);
    let client = OAuth2Client::client_credentials(
        format!("http://{base}/oauth/token?tenant=t1"),
        ClientId::new("wire"),
        ClientSecret::new("wire-secret"),
    )
    .unwrap()
    .scope("read");
    let watcher = spawn::<F>(quick::<F>(client));
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
    let agent = format!(
        "\r\nuser-agent: tokenkeeper-{}/{}\r\n",
        F::runtime().name(),
        env!("CARGO_PKG_VERSION")
    );
    assert!(lower.contains(&agent), "{}: {request}", F::NAME);
    assert!(
        lower.contains("\r\ncontent-type: application/x-www-form-urlencoded\r\n"),
        "{request}"
    );
    assert!(lower.contains("\r\nauthorization: basic "), "{request}");
    assert!(
        request.ends_with("grant_type=client_credentials&scope=read"),
        "{request}"
    );
    F::block_on(watcher.shutdown());
}

fn host_names_are_resolved<F: Flavor>() {
    let authority = authority(Client::new("svc", SECRET));
    let url = format!("http://localhost:{}/token", authority.addr().port());
    let client =
        OAuth2Client::client_credentials(&url, ClientId::new("svc"), ClientSecret::new(SECRET))
            .unwrap();
    let watcher = spawn::<F>(quick::<F>(client));
    assert_eq!(
        watcher.token().unwrap().access_token.expose_secret(),
        authority.last_access_token().unwrap()
    );
    F::block_on(watcher.shutdown());
}

fn tls_to_a_plain_server_is_a_tls_error_and_a_refused_connection_a_transport_error<F: Flavor>() {
    let (base, _requests) = raw_server(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
    let client = OAuth2Client::client_credentials(
        format!("https://{base}/token"),
        ClientId::new("c"),
        ClientSecret::new("s"),
    )
    .unwrap();
    let error = F::block_on(
        quick::<F>(client)
            .first_token_timeout(Duration::from_millis(600))
            .spawn(),
    )
    .unwrap_err();
    // Not TLS on the other end: a misconfiguration (the URL's scheme or
    // port), failing spawn at once rather than retried as an outage.
    match &error {
        SpawnError::Misconfigured {
            error: FetchError::Tls { problem, .. },
        } => assert_eq!(*problem, tokenkeeper_core::TlsProblem::ProtocolMismatch),
        other => panic!("{}: {other:?}", F::NAME),
    }
    // The TLS stack brought its own crypto provider, and left no process
    // default behind.
    assert!(rustls::crypto::CryptoProvider::get_default().is_none());

    // Nobody listening: refused, as a transport error too.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let client = OAuth2Client::client_credentials(
        format!("http://127.0.0.1:{port}/token"),
        ClientId::new("c"),
        ClientSecret::new("s"),
    )
    .unwrap();
    let error = F::block_on(
        quick::<F>(client)
            .first_token_timeout(Duration::from_millis(400))
            .spawn(),
    )
    .unwrap_err();
    assert!(
        matches!(
            error.fetch_error(),
            Some(FetchError::Transport { message }) if !message.is_empty()
        ),
        "{}: {error:?}",
        F::NAME
    );
}

fn an_async_source_is_driven_like_the_endpoint<F: Flavor>() {
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
    let watcher = spawn::<F>(quick::<F>(source));
    assert_eq!(watcher.name(), "custom");
    assert_eq!(
        watcher.token().unwrap().access_token.expose_secret(),
        "custom-2"
    );
    assert!(matches!(
        watcher.status().last_error,
        Some(FetchError::Source { .. })
    ));
    // 2 s tokens go stale at 1 s.
    let next = F::block_on(watcher.changed_within(Duration::from_secs(4))).unwrap();
    assert_eq!(next.access_token.expose_secret(), "custom-3");
    F::block_on(watcher.shutdown());
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

fn a_slow_async_source_times_out<F: Flavor>() {
    let source = Source::from_fn(CacheKey::custom("test", &["slow"]), |_| {
        // The runtime's own timer: a source written for this runtime.
        let sleep = F::runtime().sleep(Duration::from_secs(30));
        async move {
            sleep.await;
            Err(FetchError::Source {
                message: "unreachable".into(),
                class: ErrorClass::Transient,
            })
        }
    });
    let error = F::block_on(
        quick::<F>(source)
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
        "{}: {error:?}",
        F::NAME
    );
}

fn a_blocking_source_and_the_event_hook<F: Flavor>() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let source = Source::from_blocking_fn(CacheKey::custom("test", &["blocking"]), move |_| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        // It blocks: it must not hold up the runtime's tasks.
        std::thread::sleep(Duration::from_millis(20));
        Ok(TokenGrant::bearer(
            AccessToken::new(format!("custom-{n}")),
            Some(Duration::from_secs(2)),
        ))
    });
    let events = Events::default();
    let watcher = spawn::<F>(quick::<F>(source).on_event(events.hook()));
    assert_eq!(
        watcher.token().unwrap().access_token.expose_secret(),
        "custom-1"
    );
    let next = F::block_on(watcher.changed_within(Duration::from_secs(3))).unwrap();
    assert_eq!(next.access_token.expose_secret(), "custom-2");
    F::block_on(watcher.shutdown());
    let changes: Vec<String> = events
        .all()
        .into_iter()
        .filter_map(|e| match e {
            Event::TokenChanged { token, origin } => {
                assert_eq!(origin, Origin::Authority);
                Some(token.access_token.expose_secret().to_owned())
            }
            _ => None,
        })
        .collect();
    assert_eq!(changes, ["custom-1", "custom-2"], "{}", F::NAME);
    assert!(events.failures().is_empty(), "{:?}", events.all());
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

fn a_slow_blocking_source_times_out<F: Flavor>() {
    let source = Source::from_blocking_fn(CacheKey::custom("test", &["slow-blocking"]), |_| {
        std::thread::sleep(Duration::from_secs(2));
        Err(FetchError::Source {
            message: "too late".into(),
            class: ErrorClass::Transient,
        })
    });
    let started = Instant::now();
    let error = F::block_on(
        quick::<F>(source)
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
        "{}: {error:?}",
        F::NAME
    );
    assert!(
        started.elapsed() < Duration::from_millis(1900),
        "{}: spawn waited for the blocked call: {:?}",
        F::NAME,
        started.elapsed()
    );
}

per_driver!(
    spawn_returns_with_a_first_token,
    post_authentication_works_too,
    refreshes_in_the_background_at_the_stale_time,
    serves_the_last_token_through_an_outage_until_it_expires,
    retry_after_is_honoured,
    a_permanent_error_fails_spawn_at_once_and_is_not_repeated,
    spawn_gives_up_after_the_wait_with_the_last_error,
    start_returns_at_once_and_the_token_comes_later,
    an_announced_oversized_answer_is_refused_and_retried,
    a_streamed_oversized_answer_is_cut_off,
    a_slow_answer_times_out_and_is_retried,
    a_dropped_connection_and_a_server_error_are_retried,
    dropping_the_last_handle_stops_without_another_request,
    a_stopped_watcher_says_so,
    refresh_now_is_rate_limited,
    changed_within_times_out_and_changed_reports_a_stop,
    the_request_on_the_wire_is_a_plain_http1_form_post,
    host_names_are_resolved,
    tls_to_a_plain_server_is_a_tls_error_and_a_refused_connection_a_transport_error,
    an_async_source_is_driven_like_the_endpoint,
    a_slow_async_source_times_out,
    a_blocking_source_and_the_event_hook,
    a_slow_blocking_source_times_out,
);

/// tokio only: a watcher on the runtime of the calling thread cannot start
/// outside one, and says so instead of panicking.
#[test]
fn tokio_outside_a_runtime_is_a_typed_error() {
    let authority = authority(Client::new("svc", SECRET));
    let client = client_credentials(&authority, "svc", SECRET);
    let builder = || {
        TokenWatcher::<tokenkeeper_tokio::TokioRuntime>::builder(client.clone())
            .first_token_timeout(Duration::from_secs(2))
    };
    assert!(matches!(builder().start(), Err(SpawnError::NoRuntime)));
    let spawned = futures_lite::future::block_on(builder().spawn());
    match spawned {
        Err(error @ SpawnError::NoRuntime) => {
            assert!(error.to_string().contains("tokio"), "{error}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(authority.request_count(), 0);

    // Within a runtime, the same builder works.
    let runtime = ::tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let watcher = runtime.block_on(builder().spawn()).unwrap();
    assert!(watcher.token().is_ok());
    runtime.block_on(watcher.shutdown());
    assert_eq!(authority.request_count(), 1);
}
