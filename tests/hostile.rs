//! Hostile servers and files against a running watcher, on every driver
//! (issue 10's findings 3 and 4, end to end):
//!
//! - the test kit's authority answers with absurd `Retry-After` values (a
//!   date in the year 10^12, deltas of 20 digits and more): nothing panics,
//!   the watcher keeps serving its token, plans each retry within the
//!   policy's `Retry-After` cap and makes it, and takes the next good answer;
//! - a grant lasting near `u64::MAX` seconds with `stale_fraction(1.0)`;
//! - a FIFO (made with `mkfifo`) at the path of the watcher's file cache, or
//!   at its lock path: `spawn()` and `get_token` return within seconds with
//!   the authority's token, the cache reporting the problem, instead of
//!   blocking in `open()`; the FIFO at the record's path is replaced by our
//!   record (a rename, which never opens it), the one at the lock path is
//!   left alone.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use common::Flavor;
use tokenkeeper_core::backoff::parse_retry_after;
use tokenkeeper_core::cache::decode_record;
use tokenkeeper_core::oauth2::OAuth2Client;
use tokenkeeper_core::{
    AccessToken, BackoffPolicy, CacheKey, CacheProblem, ClientId, ClientSecret, Event, FetchError,
    Jitter, LifetimePolicy, Origin, RefreshNow, Timestamp, TokenGrant,
};
use tokenkeeper_driver::{HttpSettings, OneShot, Source, Warning};
use tokenkeeper_testkit::{Authority, Client, Fault, RetryAfter};

per_driver!(
    absurd_retry_after_values_are_capped_and_retried,
    a_grant_lasting_near_u64_max_seconds_is_served,
    a_fifo_at_the_cache_path_never_hangs_spawn,
    a_fifo_at_the_lock_path_never_hangs_spawn,
    a_fifo_at_the_cache_path_never_hangs_get_token,
);

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Every event of a watcher, as its `on_event` hook saw it.
#[derive(Clone, Default)]
struct Events(Arc<Mutex<Vec<Event>>>);

impl Events {
    fn hook(&self) -> impl Fn(&Event) + Send + Sync + 'static {
        let events = Arc::clone(&self.0);
        move |event: &Event| events.lock().unwrap().push(event.clone())
    }

    fn all(&self) -> Vec<Event> {
        self.0.lock().unwrap().clone()
    }
}

fn now() -> Timestamp {
    Timestamp::from_system_time(SystemTime::now())
}

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().expect("mkfifo");
    assert!(status.success(), "mkfifo {}", path.display());
}

fn is_fifo(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_fifo())
}

/// Runs `f` on a thread; `None` if it has not returned within `limit`. A
/// call stuck opening `fifo` is then released (opening the other end gives
/// it an end of file), so that the test fails instead of hanging.
fn within<T: Send + 'static>(
    limit: Duration,
    fifo: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(value) => Some(value),
        Err(_) => {
            for _ in 0..10 {
                let _ = std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags_nonblock()
                    .open(fifo);
                let _ = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags_nonblock()
                    .open(fifo);
            }
            None
        }
    }
}

/// `O_NONBLOCK`, so that releasing a stuck reader cannot block the test.
trait NonBlocking {
    fn custom_flags_nonblock(&mut self) -> &mut Self;
}

impl NonBlocking for std::fs::OpenOptions {
    fn custom_flags_nonblock(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        // O_NONBLOCK on Linux.
        self.custom_flags(0o4000)
    }
}

fn authority(id: &str, secret: &str) -> Authority {
    let authority = Authority::start();
    authority.register_client(Client::new(id, secret).token_lifetime(Duration::from_secs(300)));
    authority
}

fn client(authority: &Authority, id: &str, secret: &str) -> OAuth2Client {
    OAuth2Client::client_credentials(
        authority.token_url(),
        ClientId::new(id),
        ClientSecret::new(secret),
    )
    .unwrap()
}

// ---------------------------------------------------------------------------
// Finding 3: absurd Retry-After values from a real server
// ---------------------------------------------------------------------------

/// The `Retry-After` values sent, each on a 503 or 429 with an empty body.
const ABSURD: [(u16, &str); 6] = [
    // The issue's: years * 86,400 overflowed in the backoff arithmetic.
    (503, "Sun, 06 Nov 1000000000000 08:49:37 GMT"),
    // A year past u64, and past i64 seconds.
    (503, "Sun, 06 Nov 18446744073709551616 08:49:37 GMT"),
    // Delta-seconds: u64::MAX, and forty digits (past any integer type).
    (429, "18446744073709551615"),
    (429, "9999999999999999999999999999999999999999"),
    // The last date the calendar has, and the obsolete RFC 850 and asctime
    // forms with absurd years.
    (503, "Fri, 31 Dec 9999 23:59:59 GMT"),
    (503, "Sun Nov  6 08:49:37 99999999999999"),
];

/// The cap on an honoured `Retry-After` in this test.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(1);

fn absurd_retry_after_values_are_capped_and_retried<F: Flavor>() {
    let name = F::NAME;
    let authority = authority("absurd", "absurd-secret");
    let backoff = BackoffPolicy::builder()
        .floor(Duration::from_millis(20))
        .initial(Duration::from_millis(50))
        .cap(Duration::from_millis(500))
        .max_retry_after(MAX_RETRY_AFTER)
        .build()
        .unwrap();
    let events = Events::default();
    let watcher = F::block_on(
        F::builder(client(&authority, "absurd", "absurd-secret"))
            .jitter(Jitter::none())
            .backoff(backoff)
            .refresh_now_min_interval(Duration::from_millis(10))
            .first_token_timeout(Duration::from_secs(20))
            .on_event(events.hook())
            .spawn(),
    )
    .unwrap_or_else(|e| panic!("{name}: {e}"));
    let first = watcher.token().unwrap().into_arc();

    for (status, value) in ABSURD {
        authority.push_fault(Fault::retry_after(status, RetryAfter::Raw(value.into())));
    }
    let forced = F::block_on(watcher.refresh_now());
    assert_eq!(forced, Ok(RefreshNow::Started), "{name}");

    // Each failure is followed by a retry no sooner than the cap (the
    // Retry-After, saturated, is honoured up to it) and not much later;
    // meanwhile the first token is served and the watcher runs.
    let mut seen = 1;
    let mut next_attempts = Vec::new();
    while seen < 1 + ABSURD.len() {
        assert!(
            authority.wait_for_requests(seen + 1, Duration::from_secs(10)),
            "{name}: no retry after the Retry-After {:?} (the watcher is stopped: {}; status {:?})",
            ABSURD[seen - 1].1,
            watcher.is_stopped(),
            watcher.status()
        );
        seen += 1;
        let status = watcher.status();
        if let Some(next) = status.next_attempt {
            next_attempts.push((now(), next));
        }
        assert!(!watcher.is_stopped() && !status.shut_down, "{name}");
        assert_eq!(
            watcher.token().unwrap().into_arc(),
            first,
            "{name}: the valid token is served while the authority refuses"
        );
    }
    assert!(
        authority.wait_for_requests(2 + ABSURD.len(), Duration::from_secs(10)),
        "{name}: no request after the last absurd Retry-After"
    );
    let next = common_next_token(&watcher, &first)
        .unwrap_or_else(|| panic!("{name}: no token after the absurd answers"));
    assert_eq!(
        Some(next.access_token.expose_secret().to_owned()),
        authority.last_access_token(),
        "{name}"
    );

    // The gaps between the failed requests and their retries. A value the
    // core reads (saturated to the last instant it can represent) is
    // honoured up to the cap: the retry comes no sooner than the cap. One
    // it cannot read (the header is invalid) is ignored: the retry comes at
    // the backoff's pace. Either way, never later than the larger cap.
    let requests = authority.requests();
    assert_eq!(requests.len(), 2 + ABSURD.len(), "{name}: {requests:?}");
    let mut readings = Vec::new();
    for (n, pair) in requests[1..].windows(2).enumerate() {
        let gap = pair[1].at.duration_since(pair[0].at).unwrap_or_default();
        let value = ABSURD[n].1;
        let read = parse_retry_after(value, now()).is_some();
        readings.push(format!(
            "{value:?}: {} -> retry after {gap:?}",
            if read { "read" } else { "ignored" }
        ));
        let floor = if read {
            MAX_RETRY_AFTER - Duration::from_millis(50)
        } else {
            Duration::ZERO
        };
        assert!(
            gap >= floor && gap < MAX_RETRY_AFTER + Duration::from_secs(4),
            "{name}: {gap:?} between the answer with Retry-After {value:?} ({}) and its retry",
            if read { "read" } else { "ignored" }
        );
    }
    eprintln!("{name}: {readings:#?}");
    // The date is read (saturated), not ignored.
    assert!(parse_retry_after(ABSURD[0].1, now()).is_some());
    // The planned attempts were never years away.
    for (at, next) in &next_attempts {
        assert!(
            next.as_millis() <= at.as_millis() + 5_000,
            "{name}: next attempt planned at {next:?} (now {at:?})"
        );
    }
    // Each failure was an event with its status.
    let failures: Vec<u16> = events
        .all()
        .iter()
        .filter_map(|e| match e {
            Event::FetchFailed {
                error: FetchError::Status { status, .. },
                ..
            } => Some(*status),
            _ => None,
        })
        .collect();
    assert_eq!(
        failures,
        ABSURD.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        "{name}"
    );
    F::block_on(watcher.shutdown());
}

/// The first token other than `seen`, waiting up to 10 s.
fn common_next_token<R: tokenkeeper_driver::Runtime>(
    watcher: &tokenkeeper_driver::TokenWatcher<R>,
    seen: &Arc<tokenkeeper_core::TokenRecord>,
) -> Option<Arc<tokenkeeper_core::TokenRecord>> {
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        if let Ok(token) = watcher.token() {
            let token = token.into_arc();
            if token != *seen {
                return Some(token);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// The second overflow: a custom source granting a lifetime near
/// `u64::MAX` seconds, with a policy that goes stale at the very end of it.
fn a_grant_lasting_near_u64_max_seconds_is_served<F: Flavor>() {
    let name = F::NAME;
    let source = Source::from_blocking_fn(CacheKey::custom("hostile", &["u64 max", name]), |_| {
        Ok(TokenGrant::bearer(
            AccessToken::new("forever"),
            Some(Duration::from_secs(u64::MAX - 1)),
        ))
    });
    let policy = LifetimePolicy::builder()
        .stale_fraction(1.0)
        .build()
        .unwrap();
    let watcher = F::block_on(
        F::builder(source)
            .lifetime_policy(policy)
            .first_token_timeout(Duration::from_secs(20))
            .spawn(),
    )
    .unwrap_or_else(|e| panic!("{name}: {e}"));
    let token = watcher.token().unwrap().into_arc();
    assert_eq!(token.access_token.expose_secret(), "forever", "{name}");
    assert!(token.is_usable_at(now()), "{name}");
    std::thread::sleep(Duration::from_millis(300));
    let status = watcher.status();
    assert!(!watcher.is_stopped() && !status.shut_down, "{name}");
    assert_eq!(status.last_error, None, "{name}: {status:?}");
    assert_eq!(
        F::block_on(watcher.refresh_now()),
        Ok(RefreshNow::Started),
        "{name}"
    );
    F::block_on(watcher.shutdown());
}

// ---------------------------------------------------------------------------
// Finding 4: a FIFO at the cache path
// ---------------------------------------------------------------------------

/// Within this, `spawn()` returns (it used to block for good on `open()`).
const SPAWN_LIMIT: Duration = Duration::from_secs(10);

fn a_fifo_at_the_cache_path_never_hangs_spawn<F: Flavor>() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token.json");
    mkfifo(&path);
    fifo_never_hangs_spawn::<F>(&path, &path);
}

fn a_fifo_at_the_lock_path_never_hangs_spawn<F: Flavor>() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token.json");
    let lock = tokenkeeper_fs::FileCache::new(&path)
        .lock_path()
        .to_path_buf();
    mkfifo(&lock);
    fifo_never_hangs_spawn::<F>(&path, &lock);
}

/// A watcher with a file cache at `path`, where `fifo` is a FIFO (the
/// record or its lock file): the first token comes from the authority
/// within the first-token timeout's order of time, the layer's problem is
/// an event naming the FIFO, and the FIFO is never opened.
fn fifo_never_hangs_spawn<F: Flavor>(path: &Path, fifo: &Path) {
    let name = F::NAME;
    let authority = authority("fifo", "fifo-secret");
    let events = Events::default();
    let builder = F::builder(client(&authority, "fifo", "fifo-secret"))
        .file_cache(path)
        .jitter(Jitter::none())
        .http(HttpSettings::new().request_timeout(Duration::from_secs(5)))
        .first_token_timeout(Duration::from_secs(3))
        .on_event(events.hook());
    let started = Instant::now();
    let spawned = within(SPAWN_LIMIT, fifo, move || F::block_on(builder.spawn()))
        .unwrap_or_else(|| panic!("{name}: spawn() blocked on a FIFO for {SPAWN_LIMIT:?}"));
    let took = started.elapsed();
    let watcher = spawned.unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(took < Duration::from_secs(5), "{name}: {took:?}");
    let key = watcher.cache_key().clone();
    let served = watcher
        .token()
        .unwrap()
        .access_token
        .expose_secret()
        .to_owned();
    assert_eq!(
        watcher
            .token()
            .ok()
            .map(|t| t.access_token.expose_secret().to_owned()),
        authority.last_access_token(),
        "{name}"
    );
    assert_eq!(authority.request_count(), 1, "{name}");

    // The problem is reported, naming the path and what is wrong with it.
    let fifo_name = fifo.file_name().unwrap().to_string_lossy().into_owned();
    let mentioned = |events: &[Event]| {
        events.iter().any(|e| {
            matches!(e, Event::CacheProblem { layer: 0, problem }
                if matches!(problem, CacheProblem::Read(_) | CacheProblem::Write(_) | CacheProblem::Lease(_))
                    && format!("{problem:?}").contains("FIFO")
                    && format!("{problem:?}").contains(&fifo_name))
        })
    };
    let end = Instant::now() + Duration::from_secs(5);
    while !mentioned(&events.all()) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        mentioned(&events.all()),
        "{name}: no cache problem naming the FIFO: {:?}",
        events.all()
    );
    let stopping = Instant::now();
    let stopped = within(SPAWN_LIMIT, fifo, move || {
        F::block_on(watcher.shutdown());
        watcher.is_stopped()
    });
    assert_eq!(stopped, Some(true), "{name}: shutdown blocked on the FIFO");
    assert!(stopping.elapsed() < Duration::from_secs(5), "{name}");
    // What is left: at the record's path, the FIFO was refused for reading
    // and replaced (renamed over, never opened) by our record; a FIFO at
    // the lock path is left alone (never opened, never replaced) while the
    // record is stored beside it.
    assert_our_record(name, path, &key, &served);
    if fifo != path {
        assert!(
            is_fifo(fifo),
            "{name}: the FIFO at the lock path was replaced"
        );
    }
}

/// The one-shot: the token from the authority, and a warning naming the
/// FIFO, within seconds.
fn a_fifo_at_the_cache_path_never_hangs_get_token<F: Flavor>() {
    let name = F::NAME;
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("token.json");
    mkfifo(&path);
    let authority = authority("fifo-once", "fifo-secret");
    let builder = F::builder(client(&authority, "fifo-once", "fifo-secret")).file_cache(&path);
    let started = Instant::now();
    let result = within(SPAWN_LIMIT, &path, move || {
        F::block_on(builder.get_token(OneShot::new().max_wait(Duration::from_secs(3))))
    })
    .unwrap_or_else(|| panic!("{name}: get_token blocked on a FIFO for {SPAWN_LIMIT:?}"));
    let obtained = result.unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(started.elapsed() < Duration::from_secs(5), "{name}");
    assert_eq!(obtained.origin, Origin::Authority, "{name}");
    assert_eq!(
        Some(obtained.token.access_token.expose_secret().to_owned()),
        authority.last_access_token(),
        "{name}"
    );
    assert!(
        obtained
            .warnings
            .iter()
            .any(|w| matches!(w, Warning::Cache { .. })
                && w.to_string().contains("FIFO")
                && w.to_string().contains("token.json")),
        "{name}: {:?}",
        obtained.warnings
    );
    // Replaced by our record, which the next call reads without a request.
    let key = F::builder(client(&authority, "fifo-once", "fifo-secret"))
        .cache_key()
        .clone();
    let served = obtained.token.access_token.expose_secret().to_owned();
    assert_our_record(name, &path, &key, &served);
    let again = F::block_on(
        F::builder(client(&authority, "fifo-once", "fifo-secret"))
            .file_cache(&path)
            .get_token(OneShot::new()),
    )
    .unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(matches!(again.origin, Origin::Cache { .. }), "{name}");
    assert!(again.warnings.is_empty(), "{name}: {:?}", again.warnings);
    assert_eq!(authority.request_count(), 1, "{name}");
}

/// `path` is a regular file of mode 0600 holding a record of `key` whose
/// access token is `token`.
fn assert_our_record(name: &str, path: &Path, key: &CacheKey, token: &str) {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::symlink_metadata(path).unwrap();
    assert!(meta.file_type().is_file(), "{name}: {:?}", meta.file_type());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{name}");
    let record = decode_record(key, &std::fs::read(path).unwrap()).unwrap();
    assert_eq!(record.access_token.expose_secret(), token, "{name}");
}
