//! Failure isolation, on every driver: a token source or a cache layer that
//! panics, a source that never answers, and a stop in the middle of a
//! refresh-token rotation. None of them may wedge the watcher, stop it, or
//! lose a rotated refresh token.
//!
//! Each scenario is written once and run by `per_driver!` against tokio,
//! async-std, smol and plain threads.

mod common;

use std::panic::PanicHookInfo;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::{Flavor, Memory, Slot, fast_backoff};
use tokenkeeper_core::cache::decode_record;
use tokenkeeper_core::oauth2::OAuth2Client;
use tokenkeeper_core::{
    AccessToken, CacheError, CacheKey, CacheProblem, ClientId, ClientSecret, EncodedRecord,
    ErrorClass, Event, FetchError, Jitter, Layer, LeaseOutcome, LeaseSettings, Origin, RefreshNow,
    RefreshToken, TokenGrant, TokenRecord,
};
use tokenkeeper_driver::{
    BlockingCacheLayer, BoxFuture, CacheLayer, GetTokenError, HttpSettings, HttpSetupError,
    Obtained, OneShot, Runtime, SharedExchange, Source, TokenError, TokenWatcher,
    TokenWatcherBuilder, Warning,
};
use tokenkeeper_testkit::{Authority, Client, Fault, Outcome};

per_driver!(
    a_panicking_async_source_is_retried,
    a_panicking_blocking_source_is_retried,
    a_panicking_blocking_cache_layer_is_a_cache_problem,
    a_panicking_async_cache_layer_is_a_cache_problem,
    a_cache_layer_whose_subscription_panics_is_left_without_one,
    an_async_source_that_never_answers_times_out,
    a_blocking_source_that_never_answers_times_out,
    an_authority_that_never_answers_times_out,
    the_effect_deadline_ends_a_fetch_the_driver_never_times_out,
    shutdown_during_a_rotation_keeps_the_rotated_token,
    drop_during_a_rotation_keeps_the_rotated_token,
    one_shot_a_panicking_async_source_is_retried,
    one_shot_a_panicking_blocking_source_is_retried,
    one_shot_a_source_that_always_panics_is_unavailable,
    one_shot_a_panicking_blocking_cache_layer_is_a_warning,
    one_shot_a_panicking_async_cache_layer_is_a_warning,
    one_shot_an_async_source_that_never_answers_times_out,
    one_shot_a_blocking_source_that_never_answers_times_out,
    one_shot_an_authority_that_never_answers_times_out,
    one_shot_ending_during_a_rotation_keeps_the_rotated_token,
);

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// The prefix of every panic this suite causes on purpose.
const DELIBERATE: &str = "isolation: deliberate panic";

/// Keeps the deliberate panics out of the test output; every other panic is
/// reported as usual.
fn quiet_deliberate_panics() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info: &PanicHookInfo<'_>| {
            let message = info
                .payload()
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| info.payload().downcast_ref::<&str>().copied())
                .unwrap_or_default();
            if !message.starts_with(DELIBERATE) {
                default(info);
            }
        }));
    });
}

fn deliberate(what: &str) -> ! {
    panic!("{DELIBERATE}: {what}")
}

fn grant(token: &str, life: Duration) -> TokenGrant {
    TokenGrant::bearer(AccessToken::new(token), Some(life))
}

fn key(test: &str, flavor: &str) -> CacheKey {
    CacheKey::custom("isolation", &[test, flavor])
}

/// Every event of a watcher, as its `on_event` hook saw it.
#[derive(Clone, Default)]
struct Events(Arc<Mutex<Vec<Event>>>);

impl Events {
    fn hook(&self) -> impl Fn(&Event) + Send + Sync + 'static {
        let events = Arc::clone(&self.0);
        move |event: &Event| events.lock().unwrap().push(event.clone())
    }

    fn count(&self, predicate: impl Fn(&Event) -> bool) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|e| predicate(e))
            .count()
    }

    fn fetch_failures(&self) -> Vec<(FetchError, ErrorClass, u32)> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                Event::FetchFailed {
                    error,
                    class,
                    consecutive_failures,
                    ..
                } => Some((error.clone(), *class, *consecutive_failures)),
                _ => None,
            })
            .collect()
    }

    fn shown(&self) -> String {
        format!("{:?}", self.0.lock().unwrap())
    }
}

/// Waits until `check` holds, looking every 20 ms, for at most `limit`.
fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The first token `watcher` serves other than `seen`, waiting up to 10 s;
/// `None` when none comes (or the watcher stops).
fn next_token<R: Runtime>(
    watcher: &TokenWatcher<R>,
    seen: &TokenRecord,
) -> Option<Arc<TokenRecord>> {
    let mut next = None;
    eventually(Duration::from_secs(10), || {
        next = watcher
            .token()
            .ok()
            .map(|t| t.into_arc())
            .filter(|t| **t != *seen);
        next.is_some() || watcher.is_stopped()
    });
    next
}

/// A door that blocked calls wait behind, opened when the test ends so that
/// no thread is left sleeping.
#[derive(Clone, Default)]
struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    fn wait(&self, limit: Duration) {
        let (open, changed) = &*self.0;
        let guard = open.lock().unwrap();
        let _unused = changed
            .wait_timeout_while(guard, limit, |open| !*open)
            .unwrap();
    }

    fn open(&self) {
        let (open, changed) = &*self.0;
        *open.lock().unwrap() = true;
        changed.notify_all();
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        if Arc::strong_count(&self.0) == 1 {
            self.open();
        }
    }
}

/// One stored record, shared by a pair of memory layers.
/// A cache in memory with async calls that need no reactor, so it runs on
/// every driver, plain threads included.
struct AsyncMemory(Slot);

impl CacheLayer for AsyncMemory {
    fn layer(&self) -> Layer {
        Layer::new("async memory")
    }
    fn read(&self) -> BoxFuture<'_, Result<Option<Vec<u8>>, CacheError>> {
        Box::pin(async move { Ok(self.0.lock().unwrap().clone()) })
    }
    fn write<'a>(&'a self, record: &'a EncodedRecord) -> BoxFuture<'a, Result<(), CacheError>> {
        Box::pin(async move {
            *self.0.lock().unwrap() = Some(record.bytes().to_vec());
            Ok(())
        })
    }
}

/// The lease of the broken layers: short, so that nothing lingers.
fn broken_lease() -> LeaseSettings {
    LeaseSettings {
        ttl: Duration::from_secs(5),
        retry: Duration::from_millis(100),
        hold_through_backoff: false,
    }
}

/// A blocking layer that panics on every call.
struct PanickingBlockingLayer;

impl BlockingCacheLayer for PanickingBlockingLayer {
    fn layer(&self) -> Layer {
        Layer::new("panics (blocking)").with_lease(broken_lease())
    }
    fn read(&self) -> Result<Option<Vec<u8>>, CacheError> {
        deliberate("blocking read")
    }
    fn write(&self, _: &EncodedRecord) -> Result<(), CacheError> {
        deliberate("blocking write")
    }
    fn try_acquire_lease(&self, _: Duration) -> LeaseOutcome {
        deliberate("blocking lease")
    }
    fn release_lease(&self) {
        deliberate("blocking release")
    }
}

/// An async layer that panics on every call: some when called, some when
/// their future is polled.
struct PanickingAsyncLayer;

impl CacheLayer for PanickingAsyncLayer {
    fn layer(&self) -> Layer {
        Layer::new("panics (async)").with_lease(broken_lease())
    }
    fn read(&self) -> BoxFuture<'_, Result<Option<Vec<u8>>, CacheError>> {
        deliberate("async read, when called")
    }
    fn write<'a>(&'a self, _: &'a EncodedRecord) -> BoxFuture<'a, Result<(), CacheError>> {
        Box::pin(async { deliberate("async write, when polled") })
    }
    fn try_acquire_lease(&self, _: Duration) -> BoxFuture<'_, LeaseOutcome> {
        Box::pin(async { deliberate("async lease, when polled") })
    }
    fn release_lease(&self) -> BoxFuture<'_, ()> {
        deliberate("async release, when called")
    }
}

/// A source of 2 s tokens named `<prefix>-<call>`, counting its calls.
fn counting_source(key: CacheKey, prefix: &'static str) -> (Source, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let source = Source::from_fn(key, move |_| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        async move { Ok(grant(&format!("{prefix}-{n}"), Duration::from_secs(2))) }
    });
    (source, calls)
}

fn access_token(record: &TokenRecord) -> String {
    record.access_token.expose_secret().to_owned()
}

/// The access token of the record stored in `slot`, if any.
fn stored_token(slot: &Slot, key: &CacheKey) -> Option<String> {
    let bytes = slot.lock().unwrap().clone()?;
    let record = decode_record(key, &bytes).expect("a valid record");
    Some(access_token(&record))
}

// ---------------------------------------------------------------------------
// (a) A token source that panics
// ---------------------------------------------------------------------------

/// Calls 0, 1 and 3 panic; the others answer with 2 s tokens.
const PANICKING_CALLS: [usize; 3] = [0, 1, 3];

/// An async source panicking once when called, then when polled.
fn a_panicking_async_source_is_retried<F: Flavor>() {
    quiet_deliberate_panics();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let source = Source::from_fn(key("panicking async source", F::NAME), move |_| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        if n == 0 {
            deliberate("async source, when called");
        }
        async move {
            if PANICKING_CALLS.contains(&n) {
                deliberate("async source, when polled");
            }
            Ok(grant(&format!("async-{n}"), Duration::from_secs(2)))
        }
    });
    a_panicking_source_is_retried::<F>(source, &calls, "async");
}

fn a_panicking_blocking_source_is_retried<F: Flavor>() {
    quiet_deliberate_panics();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let source = Source::from_blocking_fn(key("panicking blocking source", F::NAME), move |_| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        if PANICKING_CALLS.contains(&n) {
            deliberate("blocking source");
        }
        Ok(grant(&format!("blocking-{n}"), Duration::from_secs(2)))
    });
    a_panicking_source_is_retried::<F>(source, &calls, "blocking");
}

fn a_panicking_source_is_retried<F: Flavor>(source: Source, calls: &AtomicUsize, prefix: &str) {
    let name = F::NAME;
    let events = Events::default();
    let watcher = F::block_on(
        F::builder(source)
            .jitter(Jitter::none())
            .backoff(fast_backoff())
            .first_token_timeout(Duration::from_secs(20))
            .on_event(events.hook())
            .spawn(),
    )
    .unwrap_or_else(|e| panic!("{name}: no first token after two panics: {e}"));

    // Two panics, two transient failures, then the third call's token.
    let first = watcher.token().unwrap().into_arc();
    assert_eq!(access_token(&first), format!("{prefix}-2"));
    // (The next call comes when that token goes stale, after a second.)
    assert!(calls.load(Ordering::SeqCst) >= 3, "{name}");
    let failures = events.fetch_failures();
    assert!(failures.len() >= 2, "{name}: {failures:?}");
    for (n, (error, class, consecutive)) in failures.iter().take(2).enumerate() {
        assert_eq!(*class, ErrorClass::Transient, "{name}: {error}");
        assert!(error.to_string().contains("panicked"), "{name}: {error}");
        assert_eq!(*consecutive as usize, n + 1, "{name}: {failures:?}");
    }
    let status = watcher.status();
    assert!(
        matches!(
            &status.last_error,
            Some(FetchError::Source { class: ErrorClass::Transient, message }) if message.contains("panicked")
        ),
        "{name}: {status:?}"
    );
    assert!(status.last_error_at.is_some(), "{name}: {status:?}");
    assert_eq!(status.consecutive_failures, 0, "{name}: {status:?}");
    assert!(!status.shut_down && !watcher.is_stopped(), "{name}");

    // It goes on refreshing: the token goes stale after 1 s, call 3 panics,
    // call 4 answers.
    let next =
        next_token(&watcher, &first).unwrap_or_else(|| panic!("{name}: no refresh after a panic"));
    assert_eq!(access_token(&next), format!("{prefix}-4"));
    assert_eq!(events.fetch_failures().len(), 3, "{name}");
    assert!(!watcher.is_stopped(), "{name}");
    F::block_on(watcher.shutdown());
    assert!(watcher.is_stopped(), "{name}");
    assert!(
        matches!(watcher.token(), Err(TokenError::Stopped)),
        "{name}"
    );
}

// ---------------------------------------------------------------------------
// (b) A cache layer that panics
// ---------------------------------------------------------------------------

fn a_panicking_blocking_cache_layer_is_a_cache_problem<F: Flavor>() {
    quiet_deliberate_panics();
    let slot = Slot::default();
    let (source, calls) = counting_source(key("panicking blocking layer", F::NAME), "t");
    let builder = F::builder(source)
        .blocking_cache(PanickingBlockingLayer)
        .cache(AsyncMemory(Arc::clone(&slot)));
    a_panicking_cache_layer_is_a_cache_problem::<F>(builder, &slot, &calls);
}

fn a_panicking_async_cache_layer_is_a_cache_problem<F: Flavor>() {
    quiet_deliberate_panics();
    let slot = Slot::default();
    let (source, calls) = counting_source(key("panicking async layer", F::NAME), "t");
    let builder = F::builder(source)
        .cache(PanickingAsyncLayer)
        .blocking_cache(Memory(Arc::clone(&slot)));
    a_panicking_cache_layer_is_a_cache_problem::<F>(builder, &slot, &calls);
}

/// `builder` has a layer 0 that panics on every call and a working layer 1
/// in `slot`.
fn a_panicking_cache_layer_is_a_cache_problem<F: Flavor>(
    builder: TokenWatcherBuilder<F::R>,
    slot: &Slot,
    calls: &AtomicUsize,
) {
    let name = F::NAME;
    let events = Events::default();
    let watcher = F::block_on(
        builder
            .jitter(Jitter::none())
            .backoff(fast_backoff())
            .first_token_timeout(Duration::from_secs(20))
            .on_event(events.hook())
            .spawn(),
    )
    .unwrap_or_else(|e| panic!("{name}: no token past a panicking layer: {e}"));
    let first = watcher.token().unwrap().into_arc();
    assert_eq!(access_token(&first), "t-0", "{name}");
    let key = watcher.cache_key().clone();

    let problem = |wanted: fn(&CacheProblem) -> bool| {
        move |event: &Event| {
            matches!(event, Event::CacheProblem { layer: 0, problem } if wanted(problem)
                && format!("{problem:?}").contains("panicked"))
        }
    };
    let read = problem(|p| matches!(p, CacheProblem::Read(_)));
    let lease = problem(|p| matches!(p, CacheProblem::Lease(_)));
    let write = problem(|p| matches!(p, CacheProblem::Write(_)));
    assert!(
        eventually(Duration::from_secs(5), || events.count(write) >= 1),
        "{name}: no write problem reported: {}",
        events.shown()
    );
    assert!(events.count(read) >= 1, "{name}: {}", events.shown());
    assert!(events.count(lease) >= 1, "{name}: {}", events.shown());
    assert_eq!(
        events.count(|e| matches!(e, Event::CacheProblem { layer: 1, .. })),
        0,
        "{name}: the working layer has no problem: {}",
        events.shown()
    );
    // The working layer got the token all the same.
    assert!(
        eventually(Duration::from_secs(5), || stored_token(slot, &key)
            .as_deref()
            == Some("t-0")),
        "{name}: the working layer was not written"
    );
    assert!(!watcher.is_stopped(), "{name}");

    // It goes on refreshing (after 1 s) through the same broken layer.
    let next = next_token(&watcher, &first)
        .unwrap_or_else(|| panic!("{name}: no refresh past a panicking layer"));
    assert_eq!(access_token(&next), "t-1", "{name}");
    assert!(
        eventually(Duration::from_secs(5), || events.count(write) >= 2),
        "{name}: {}",
        events.shown()
    );
    assert!(
        eventually(Duration::from_secs(5), || stored_token(slot, &key)
            .as_deref()
            == Some("t-1")),
        "{name}: the working layer was not written again"
    );
    assert!(calls.load(Ordering::SeqCst) >= 2, "{name}");
    assert!(
        !watcher.is_stopped() && !watcher.status().shut_down,
        "{name}"
    );
    F::block_on(watcher.shutdown());
    assert!(watcher.is_stopped(), "{name}");
}

/// A file-like layer whose change subscription panics: without
/// notifications, the layer still works.
struct SubscriptionPanics(Slot);

impl BlockingCacheLayer for SubscriptionPanics {
    fn layer(&self) -> Layer {
        Layer::new("subscription panics (blocking)")
    }
    fn read(&self) -> Result<Option<Vec<u8>>, CacheError> {
        Ok(self.0.lock().unwrap().clone())
    }
    fn write(&self, record: &EncodedRecord) -> Result<(), CacheError> {
        *self.0.lock().unwrap() = Some(record.bytes().to_vec());
        Ok(())
    }
    fn subscribe(&self, _: Box<dyn Fn() + Send + Sync>) -> Option<Box<dyn Send>> {
        deliberate("blocking subscribe")
    }
}

/// An async layer whose change feed panics when asked for.
struct FeedPanics;

impl CacheLayer for FeedPanics {
    fn layer(&self) -> Layer {
        Layer::new("feed panics (async)")
    }
    fn read(&self) -> BoxFuture<'_, Result<Option<Vec<u8>>, CacheError>> {
        Box::pin(async { Ok(None) })
    }
    fn write<'a>(&'a self, _: &'a EncodedRecord) -> BoxFuture<'a, Result<(), CacheError>> {
        Box::pin(async { Ok(()) })
    }
    fn changes(
        self: Arc<Self>,
        _: tokenkeeper_driver::Sleeper,
    ) -> Option<tokenkeeper_driver::BoxStream<'static, ()>> {
        deliberate("async changes")
    }
}

fn a_cache_layer_whose_subscription_panics_is_left_without_one<F: Flavor>() {
    quiet_deliberate_panics();
    let name = F::NAME;
    let slot = Slot::default();
    let (source, _calls) = counting_source(key("subscription panics", F::NAME), "t");
    let watcher = F::block_on(
        F::builder(source)
            .blocking_cache(SubscriptionPanics(Arc::clone(&slot)))
            .cache(FeedPanics)
            .jitter(Jitter::none())
            .backoff(fast_backoff())
            .first_token_timeout(Duration::from_secs(20))
            .spawn(),
    )
    .unwrap_or_else(|e| panic!("{name}: a panicking subscription stopped the watcher: {e}"));
    let first = watcher.token().unwrap().into_arc();
    assert_eq!(access_token(&first), "t-0", "{name}");
    let key = watcher.cache_key().clone();
    assert!(
        eventually(Duration::from_secs(5), || stored_token(&slot, &key)
            .is_some()),
        "{name}: the layer was not written"
    );
    let next = next_token(&watcher, &first).unwrap_or_else(|| panic!("{name}: no refresh"));
    assert_eq!(access_token(&next), "t-1", "{name}");
    assert!(!watcher.is_stopped(), "{name}");
    F::block_on(watcher.shutdown());
}

// ---------------------------------------------------------------------------
// (c) A source that never answers
// ---------------------------------------------------------------------------

/// The request timeout of these scenarios.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(300);

/// Less than the driver's grace for abandoned work (5 s): a stop that waits
/// for a hung call instead of abandoning it takes longer.
const PROMPT: Duration = Duration::from_secs(4);

fn an_async_source_that_never_answers_times_out<F: Flavor>() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    // Call 1 answers; every other call never does.
    let source = Source::from_fn(key("async never answers", F::NAME), move |_| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        async move {
            if n != 1 {
                std::future::pending::<()>().await;
            }
            Ok(grant(&format!("async-{n}"), Duration::from_secs(300)))
        }
    });
    a_source_that_never_answers_times_out::<F>(source, &calls, "async");
}

fn a_blocking_source_that_never_answers_times_out<F: Flavor>() {
    let gate = Gate::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let door = gate.clone();
    // Call 1 answers; every other call sleeps far longer than the request
    // timeout (until the test ends).
    let source = Source::from_blocking_fn(key("blocking never answers", F::NAME), move |_| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        if n != 1 {
            door.wait(Duration::from_secs(120));
        }
        Ok(grant(&format!("blocking-{n}"), Duration::from_secs(300)))
    });
    a_source_that_never_answers_times_out::<F>(source, &calls, "blocking");
    gate.open();
}

fn a_source_that_never_answers_times_out<F: Flavor>(
    source: Source,
    calls: &AtomicUsize,
    prefix: &str,
) {
    let name = F::NAME;
    let events = Events::default();
    let started = Instant::now();
    let watcher = F::block_on(
        F::builder(source)
            .http(HttpSettings::new().request_timeout(REQUEST_TIMEOUT))
            .jitter(Jitter::none())
            .backoff(fast_backoff())
            .refresh_now_min_interval(Duration::from_millis(10))
            .first_token_timeout(Duration::from_secs(20))
            .on_event(events.hook())
            .spawn(),
    )
    .unwrap_or_else(|e| panic!("{name}: no token after a hung call: {e}"));
    let waited = started.elapsed();
    assert_eq!(
        access_token(&watcher.token().unwrap()),
        format!("{prefix}-1")
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2, "{name}");
    // The hung call was given up at the request timeout, reported as a
    // transient timeout, and retried after a backoff.
    let failures = events.fetch_failures();
    assert_eq!(failures.len(), 1, "{name}: {failures:?}");
    assert_eq!(
        failures[0].0,
        FetchError::Timeout {
            after: REQUEST_TIMEOUT
        },
        "{name}"
    );
    assert_eq!(failures[0].1, ErrorClass::Transient, "{name}");
    assert!(waited >= REQUEST_TIMEOUT, "{name}: {waited:?}");
    assert_eq!(
        watcher.status().last_error,
        Some(FetchError::Timeout {
            after: REQUEST_TIMEOUT
        }),
        "{name}"
    );

    // A refresh that hangs does not hold up a shutdown.
    assert_eq!(
        F::block_on(watcher.refresh_now()),
        Ok(RefreshNow::Started),
        "{name}"
    );
    assert!(
        eventually(Duration::from_secs(5), || calls.load(Ordering::SeqCst) == 3),
        "{name}: the refresh did not start"
    );
    let stopping = Instant::now();
    F::block_on(watcher.shutdown());
    let took = stopping.elapsed();
    assert!(took < PROMPT, "{name}: shutdown took {took:?}");
    assert!(watcher.is_stopped(), "{name}");
    assert!(
        matches!(watcher.token(), Err(TokenError::Stopped)),
        "{name}"
    );
}

/// Over HTTP: the authority holds its first answer far longer than the
/// request timeout.
fn an_authority_that_never_answers_times_out<F: Flavor>() {
    let name = F::NAME;
    let authority = Authority::start();
    authority.register_client(Client::new("hung", "hung-secret"));
    authority.push_fault(Fault::Delay(Duration::from_secs(60)));
    let client = OAuth2Client::client_credentials(
        authority.token_url(),
        ClientId::new("hung"),
        ClientSecret::new("hung-secret"),
    )
    .unwrap();
    let events = Events::default();
    let watcher = F::block_on(
        F::builder(client)
            .http(
                HttpSettings::new()
                    .request_timeout(REQUEST_TIMEOUT)
                    .connect_timeout(REQUEST_TIMEOUT),
            )
            .jitter(Jitter::none())
            .backoff(fast_backoff())
            .refresh_now_min_interval(Duration::from_millis(10))
            .first_token_timeout(Duration::from_secs(20))
            .on_event(events.hook())
            .spawn(),
    )
    .unwrap_or_else(|e| panic!("{name}: no token after a hung request: {e}"));
    assert_eq!(
        watcher.token().ok().map(|t| access_token(&t)),
        authority.last_access_token(),
        "{name}"
    );
    assert_eq!(authority.request_count(), 2, "{name}");
    let failures = events.fetch_failures();
    assert_eq!(failures.len(), 1, "{name}: {failures:?}");
    assert!(
        matches!(failures[0].0, FetchError::Timeout { .. }),
        "{name}: {failures:?}"
    );
    assert_eq!(failures[0].1, ErrorClass::Transient, "{name}");

    // A hung refresh does not hold up a shutdown either.
    authority.push_fault(Fault::Delay(Duration::from_secs(60)));
    assert_eq!(
        F::block_on(watcher.refresh_now()),
        Ok(RefreshNow::Started),
        "{name}"
    );
    assert!(
        authority.wait_for_requests(3, Duration::from_secs(5)),
        "{name}"
    );
    let stopping = Instant::now();
    F::block_on(watcher.shutdown());
    let took = stopping.elapsed();
    assert!(took < PROMPT, "{name}: shutdown took {took:?}");
    assert!(watcher.is_stopped(), "{name}");
}

/// A runtime whose timers of one exact length never fire: the driver's own
/// timeout of a source call (the request timeout) is lost, as a driver bug
/// would lose it. Everything else is `R`'s.
#[derive(Clone)]
struct LosesTimers<R> {
    inner: R,
    never: Duration,
}

impl<R: Runtime> Runtime for LosesTimers<R> {
    type Wait = R::Wait;

    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn bind(&self) -> Option<Self> {
        let never = self.never;
        self.inner.bind().map(|inner| LosesTimers { inner, never })
    }

    fn spawn(&self, task: BoxFuture<'static, ()>) {
        self.inner.spawn(task);
    }

    fn spawn_blocking(&self, work: Box<dyn FnOnce() + Send + 'static>) {
        self.inner.spawn_blocking(work);
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        if duration == self.never {
            Box::pin(std::future::pending())
        } else {
            self.inner.sleep(duration)
        }
    }

    fn exchange(&self, settings: &HttpSettings) -> Result<SharedExchange, HttpSetupError> {
        self.inner.exchange(settings)
    }
}

/// The core's effect deadline is the backstop: a fetch that neither answers
/// nor is timed out by the driver fails at the deadline (the request timeout
/// plus a margin), and the next fetch is made.
fn the_effect_deadline_ends_a_fetch_the_driver_never_times_out<F: Flavor>() {
    let name = F::NAME;
    // An odd length no other timer of the driver has.
    let request_timeout = Duration::from_nanos(321_987_653);
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let source = Source::from_fn(key("effect deadline", F::NAME), move |_| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        async move {
            if n == 0 {
                std::future::pending::<()>().await;
            }
            Ok(grant(&format!("late-{n}"), Duration::from_secs(300)))
        }
    });
    let runtime = LosesTimers {
        inner: F::runtime(),
        never: request_timeout,
    };
    let events = Events::default();
    let watcher = F::block_on(
        TokenWatcherBuilder::new(runtime, source)
            .http(HttpSettings::new().request_timeout(request_timeout))
            .jitter(Jitter::none())
            .backoff(fast_backoff())
            .first_token_timeout(Duration::from_secs(30))
            .on_event(events.hook())
            .spawn(),
    )
    .unwrap_or_else(|e| panic!("{name}: the effect deadline did not end the hung fetch: {e}"));
    assert_eq!(access_token(&watcher.token().unwrap()), "late-1", "{name}");
    let failures = events.fetch_failures();
    assert_eq!(failures.len(), 1, "{name}: {failures:?}");
    match &failures[0] {
        (FetchError::Timeout { after }, ErrorClass::Transient, 1) => {
            assert!(*after > request_timeout, "{name}: {after:?}");
        }
        other => panic!("{name}: {other:?}"),
    }
    let stopping = Instant::now();
    F::block_on(watcher.shutdown());
    assert!(stopping.elapsed() < PROMPT, "{name}");
}

// ---------------------------------------------------------------------------
// (d) A stop in the middle of a refresh-token rotation
// ---------------------------------------------------------------------------

const ROTATING_CLIENT: &str = "rotating-client";
const ROTATING_SECRET: &str = "rotating-secret-61c0";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    Shutdown,
    DropLastHandle,
}

fn shutdown_during_a_rotation_keeps_the_rotated_token<F: Flavor>() {
    stop_during_a_rotation::<F>(Stop::Shutdown);
}

fn drop_during_a_rotation_keeps_the_rotated_token<F: Flavor>() {
    stop_during_a_rotation::<F>(Stop::DropLastHandle);
}

/// The refresh token stored in the cache file, if the file holds a record.
fn cached_refresh_token(path: &Path, key: &CacheKey) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    let record = decode_record(key, &bytes).expect("a valid record in the cache file");
    record.refresh_token.map(|t| t.expose_secret().to_owned())
}

/// An authority whose client rotates refresh tokens, the first refresh
/// token it issued, and an OAuth2 client that spends it.
fn rotating_client() -> (Authority, String, OAuth2Client) {
    let authority = Authority::start();
    authority.register_client(
        Client::new(ROTATING_CLIENT, ROTATING_SECRET).token_lifetime(Duration::from_secs(300)),
    );
    let initial = authority.issue_refresh_token(ROTATING_CLIENT);
    let client = OAuth2Client::refresh_token(
        authority.token_url(),
        ClientId::new(ROTATING_CLIENT),
        Some(ClientSecret::new(ROTATING_SECRET)),
    )
    .unwrap();
    (authority, initial, client)
}

fn stop_during_a_rotation<F: Flavor>(stop: Stop) {
    let name = F::NAME;
    let (authority, initial, client) = rotating_client();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rotation.json");
    // Every watcher is configured with the first refresh token; the cached
    // one, when there is one, wins.
    let builder = || {
        F::builder(client.clone())
            .initial_refresh_token(RefreshToken::new(initial.clone()))
            .file_cache(&path)
            .jitter(Jitter::none())
            .backoff(fast_backoff())
            .refresh_now_min_interval(Duration::from_millis(10))
            .http(HttpSettings::new().request_timeout(Duration::from_secs(10)))
            .first_token_timeout(Duration::from_secs(20))
    };

    let watcher = F::block_on(builder().spawn())
        .unwrap_or_else(|e| panic!("{name} ({stop:?}): no first token: {e}"));
    let key = watcher.cache_key().clone();
    assert_eq!(authority.request_count(), 1, "{name}");
    let first_rotation = authority.live_refresh_tokens(ROTATING_CLIENT);
    assert_eq!(first_rotation.len(), 1, "{name}");
    assert!(
        eventually(Duration::from_secs(5), || cached_refresh_token(&path, &key)
            .as_ref()
            == first_rotation.first()),
        "{name}: the first rotated refresh token was not stored"
    );

    // The next answer is held back for a second: the refresh, which spends
    // the cached refresh token, is in flight when the watcher is stopped.
    authority.push_fault(Fault::Delay(Duration::from_secs(1)));
    // `Joined` when the driver has not yet heard that the first record was
    // stored (the file is on disk before the layer's answer is read): the
    // refresh then starts right after.
    let forced = F::block_on(watcher.refresh_now());
    assert!(
        matches!(forced, Ok(RefreshNow::Started | RefreshNow::Joined)),
        "{name}: {forced:?}"
    );
    assert!(
        authority.wait_for_requests(2, Duration::from_secs(5)),
        "{name}: the refresh was not sent"
    );
    match stop {
        Stop::Shutdown => F::block_on(watcher.shutdown()),
        Stop::DropLastHandle => drop(watcher),
    }

    // The refresh was let finish...
    assert!(
        authority.wait_until(Duration::from_secs(10), |log| log
            .get(1)
            .is_some_and(|r| r.outcome != Outcome::Pending)),
        "{name} ({stop:?}): the refresh never ended"
    );
    let refresh = authority.requests()[1].clone();
    let Outcome::Issued {
        refresh_token: Some(rotated),
        ..
    } = &refresh.outcome
    else {
        panic!("{name} ({stop:?}): the refresh in flight was not let finish: {refresh:?}");
    };
    assert_eq!(
        authority.live_refresh_tokens(ROTATING_CLIENT),
        vec![rotated.clone()],
        "{name} ({stop:?})"
    );
    // ...and the refresh token it brought is in the cache file: at once
    // after `shutdown` returns, soon after the last handle is dropped.
    match stop {
        Stop::Shutdown => assert_eq!(
            cached_refresh_token(&path, &key).as_ref(),
            Some(rotated),
            "{name}: shutdown returned before the rotated token was stored"
        ),
        Stop::DropLastHandle => assert!(
            eventually(Duration::from_secs(10), || cached_refresh_token(
                &path, &key
            )
            .as_ref()
                == Some(rotated)),
            "{name}: the rotated refresh token was lost when the last handle was dropped"
        ),
    }

    // A new watcher starts from the cache (its token is still fresh: no
    // request), and its refresh spends the rotated refresh token.
    let again = F::block_on(builder().spawn())
        .unwrap_or_else(|e| panic!("{name} ({stop:?}): the restart failed: {e}"));
    assert_eq!(authority.request_count(), 2, "{name} ({stop:?})");
    assert_eq!(
        F::block_on(again.refresh_now()),
        Ok(RefreshNow::Started),
        "{name}"
    );
    assert!(
        authority.wait_until(Duration::from_secs(10), |log| log
            .get(2)
            .is_some_and(|r| r.outcome != Outcome::Pending)),
        "{name} ({stop:?}): the restarted watcher did not refresh"
    );
    let requests = authority.requests();
    assert_eq!(
        requests[2].refresh_token.as_ref(),
        Some(rotated),
        "{name} ({stop:?})"
    );
    assert!(
        matches!(requests[2].outcome, Outcome::Issued { .. }),
        "{name} ({stop:?}): {:?}",
        requests[2]
    );
    assert_eq!(authority.refresh_token_reuses(), 0, "{name}: {requests:?}");
    assert_eq!(
        authority.count_where(|r| matches!(r.outcome, Outcome::Rejected { .. })),
        0,
        "{name} ({stop:?}): {requests:?}"
    );
    F::block_on(again.shutdown());
}

// ---------------------------------------------------------------------------
// (e) The same failures under the one-shot `get_token`
// ---------------------------------------------------------------------------
//
// `builder.get_token(OneShot)` runs the same driver as a watcher and stops it
// before returning; each failure above that can happen within one call is
// run through it: a panicking source or cache layer, a source or authority
// that never answers, and the end of the call while a refresh-token grant is
// in flight. None may hang the call past its `max_wait` (plus the stop), make
// it panic, or lose a rotated refresh token; nothing may keep running after
// it returned.

/// A short wait for the calls that are meant to give up.
const ONE_SHOT_WAIT: Duration = Duration::from_millis(1_500);

fn one_shot<F: Flavor>(
    builder: TokenWatcherBuilder<F::R>,
    options: OneShot,
) -> (Result<Obtained, GetTokenError>, Duration) {
    let started = Instant::now();
    let result = F::block_on(builder.get_token(options.backoff(fast_backoff())));
    (result, started.elapsed())
}

/// Asserts that `calls` stays where it is for a while: nothing of the call
/// runs after it returned.
fn nothing_left_running(name: &str, calls: &AtomicUsize) {
    let before = calls.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        before,
        "{name}: the source is still being called after get_token returned"
    );
}

fn one_shot_a_panicking_async_source_is_retried<F: Flavor>() {
    quiet_deliberate_panics();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    // Call 0 panics when called, call 1 when polled; call 2 answers.
    let source = Source::from_fn(key("one-shot panicking async", F::NAME), move |_| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        if n == 0 {
            deliberate("one-shot async source, when called");
        }
        async move {
            if n == 1 {
                deliberate("one-shot async source, when polled");
            }
            Ok(grant(&format!("async-{n}"), Duration::from_secs(300)))
        }
    });
    one_shot_a_panicking_source_is_retried::<F>(source, &calls, "async");
}

fn one_shot_a_panicking_blocking_source_is_retried<F: Flavor>() {
    quiet_deliberate_panics();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let source = Source::from_blocking_fn(key("one-shot panicking blocking", F::NAME), move |_| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        if n < 2 {
            deliberate("one-shot blocking source");
        }
        Ok(grant(&format!("blocking-{n}"), Duration::from_secs(300)))
    });
    one_shot_a_panicking_source_is_retried::<F>(source, &calls, "blocking");
}

fn one_shot_a_panicking_source_is_retried<F: Flavor>(
    source: Source,
    calls: &AtomicUsize,
    prefix: &str,
) {
    let name = F::NAME;
    let (result, took) = one_shot::<F>(
        F::builder(source),
        OneShot::new().max_wait(Duration::from_secs(20)),
    );
    let obtained = result.unwrap_or_else(|e| panic!("{name}: no token after two panics: {e}"));
    assert_eq!(
        access_token(&obtained.token),
        format!("{prefix}-2"),
        "{name}"
    );
    assert_eq!(obtained.origin, Origin::Authority, "{name}");
    assert!(
        obtained.warnings.is_empty(),
        "{name}: {:?}",
        obtained.warnings
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3, "{name}");
    assert!(took < Duration::from_secs(10), "{name}: took {took:?}");
    nothing_left_running(name, calls);
}

/// A source that panics on every call: the call gives up at its wait with
/// the panic as its last error, and the source is not called again.
fn one_shot_a_source_that_always_panics_is_unavailable<F: Flavor>() {
    quiet_deliberate_panics();
    let name = F::NAME;
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let source = Source::from_blocking_fn(key("one-shot always panics", F::NAME), move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
        deliberate("one-shot source, every call")
    });
    let (result, took) = one_shot::<F>(F::builder(source), OneShot::new().max_wait(ONE_SHOT_WAIT));
    match &result {
        Err(GetTokenError::Unavailable {
            last_error:
                Some(FetchError::Source {
                    class: ErrorClass::Transient,
                    message,
                }),
            ..
        }) if message.contains("panicked") => {}
        other => panic!("{name}: {other:?}"),
    }
    assert!(
        took >= ONE_SHOT_WAIT && took < ONE_SHOT_WAIT + PROMPT,
        "{name}: took {took:?}"
    );
    assert!(calls.load(Ordering::SeqCst) >= 2, "{name}: retried");
    nothing_left_running(name, &calls);
}

fn one_shot_a_panicking_blocking_cache_layer_is_a_warning<F: Flavor>() {
    quiet_deliberate_panics();
    let slot = Slot::default();
    let (source, calls) = counting_source(key("one-shot panicking blocking layer", F::NAME), "t");
    let builder = F::builder(source)
        .blocking_cache(PanickingBlockingLayer)
        .cache(AsyncMemory(Arc::clone(&slot)));
    one_shot_a_panicking_cache_layer_is_a_warning::<F>(builder, &slot, &calls);
}

fn one_shot_a_panicking_async_cache_layer_is_a_warning<F: Flavor>() {
    quiet_deliberate_panics();
    let slot = Slot::default();
    let (source, calls) = counting_source(key("one-shot panicking async layer", F::NAME), "t");
    let builder = F::builder(source)
        .cache(PanickingAsyncLayer)
        .blocking_cache(Memory(Arc::clone(&slot)));
    one_shot_a_panicking_cache_layer_is_a_warning::<F>(builder, &slot, &calls);
}

/// `builder` has a layer 0 that panics on every call and a working layer 1
/// in `slot`: the token comes from the source, the broken layer is a
/// warning, and the working layer holds the token when the call returns.
fn one_shot_a_panicking_cache_layer_is_a_warning<F: Flavor>(
    builder: TokenWatcherBuilder<F::R>,
    slot: &Slot,
    calls: &AtomicUsize,
) {
    let name = F::NAME;
    let key = builder.cache_key().clone();
    let (result, took) = one_shot::<F>(builder, OneShot::new().max_wait(Duration::from_secs(20)));
    let obtained =
        result.unwrap_or_else(|e| panic!("{name}: no token past a panicking layer: {e}"));
    assert_eq!(access_token(&obtained.token), "t-0", "{name}");
    assert_eq!(obtained.origin, Origin::Authority, "{name}");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "{name}");
    assert!(took < Duration::from_secs(10), "{name}: took {took:?}");
    let broken: Vec<_> = obtained
        .warnings
        .iter()
        .filter_map(|w| match w {
            Warning::Cache { layer, problem } => Some((layer.clone(), format!("{problem:?}"))),
            _ => None,
        })
        .collect();
    assert!(
        !broken.is_empty() && broken.iter().all(|(layer, problem)| layer.starts_with("panics")
            && problem.contains("panicked")),
        "{name}: {:?}",
        obtained.warnings
    );
    // Stored in the working layer before the call returned.
    assert_eq!(stored_token(slot, &key).as_deref(), Some("t-0"), "{name}");
}

fn one_shot_an_async_source_that_never_answers_times_out<F: Flavor>() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    // Call 1 answers; every other call never does.
    let source = || {
        let counter = Arc::clone(&counter);
        Source::from_fn(key("one-shot async never answers", F::NAME), move |_| {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                if n != 1 {
                    std::future::pending::<()>().await;
                }
                Ok(grant(&format!("async-{n}"), Duration::from_secs(300)))
            }
        })
    };
    one_shot_a_source_that_never_answers_times_out::<F>(source, &calls, "async");
}

fn one_shot_a_blocking_source_that_never_answers_times_out<F: Flavor>() {
    let gate = Gate::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    // Call 1 answers; every other call sleeps until the test ends.
    let source = || {
        let counter = Arc::clone(&counter);
        let door = gate.clone();
        Source::from_blocking_fn(key("one-shot blocking never answers", F::NAME), move |_| {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            if n != 1 {
                door.wait(Duration::from_secs(120));
            }
            Ok(grant(&format!("blocking-{n}"), Duration::from_secs(300)))
        })
    };
    one_shot_a_source_that_never_answers_times_out::<F>(source, &calls, "blocking");
    gate.open();
}

/// `source()` makes sources sharing `calls`, whose call 1 alone answers.
fn one_shot_a_source_that_never_answers_times_out<F: Flavor>(
    source: impl Fn() -> Source,
    calls: &AtomicUsize,
    prefix: &str,
) {
    let name = F::NAME;
    let http = || HttpSettings::new().request_timeout(REQUEST_TIMEOUT);
    // Call 0 hangs and is given up at the request timeout; call 1 answers.
    let (result, took) = one_shot::<F>(
        F::builder(source()).http(http()),
        OneShot::new().max_wait(Duration::from_secs(20)),
    );
    let obtained = result.unwrap_or_else(|e| panic!("{name}: no token after a hung call: {e}"));
    assert_eq!(
        access_token(&obtained.token),
        format!("{prefix}-1"),
        "{name}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2, "{name}");
    assert!(
        took >= REQUEST_TIMEOUT && took < Duration::from_secs(10),
        "{name}: took {took:?}"
    );

    // Every later call hangs: the call ends at its wait, with the timeout as
    // its last error, and does not wait for the hung calls to end.
    let (result, took) = one_shot::<F>(
        F::builder(source()).http(http()),
        OneShot::new().max_wait(ONE_SHOT_WAIT),
    );
    match &result {
        Err(GetTokenError::Unavailable {
            last_error: Some(FetchError::Timeout { after }),
            ..
        }) => assert_eq!(*after, REQUEST_TIMEOUT, "{name}"),
        other => panic!("{name}: {other:?}"),
    }
    assert!(
        took >= ONE_SHOT_WAIT && took < ONE_SHOT_WAIT + PROMPT,
        "{name}: took {took:?}"
    );
    assert!(calls.load(Ordering::SeqCst) >= 4, "{name}: retried");
    nothing_left_running(name, calls);
}

fn one_shot_an_authority_that_never_answers_times_out<F: Flavor>() {
    let name = F::NAME;
    let authority = Authority::start();
    authority.register_client(Client::new("hung-once", "hung-secret"));
    let client = OAuth2Client::client_credentials(
        authority.token_url(),
        ClientId::new("hung-once"),
        ClientSecret::new("hung-secret"),
    )
    .unwrap();
    let http = || {
        HttpSettings::new()
            .request_timeout(REQUEST_TIMEOUT)
            .connect_timeout(REQUEST_TIMEOUT)
    };
    // The first answer is held for a minute: given up, and the second
    // request answered.
    authority.push_fault(Fault::Delay(Duration::from_secs(60)));
    let (result, took) = one_shot::<F>(
        F::builder(client.clone()).http(http()),
        OneShot::new().max_wait(Duration::from_secs(20)),
    );
    let obtained = result.unwrap_or_else(|e| panic!("{name}: no token after a hung request: {e}"));
    assert_eq!(
        Some(access_token(&obtained.token)),
        authority.last_access_token(),
        "{name}"
    );
    assert_eq!(authority.request_count(), 2, "{name}");
    assert!(took < Duration::from_secs(10), "{name}: took {took:?}");

    // Every answer is held: the call ends at its wait with a timeout.
    authority.script(Fault::Delay(Duration::from_secs(60)), 50);
    let (result, took) = one_shot::<F>(
        F::builder(client).http(http()),
        OneShot::new().max_wait(ONE_SHOT_WAIT),
    );
    assert!(
        matches!(
            &result,
            Err(GetTokenError::Unavailable {
                last_error: Some(FetchError::Timeout { .. }),
                ..
            })
        ),
        "{name}: {result:?}"
    );
    assert!(
        took >= ONE_SHOT_WAIT && took < ONE_SHOT_WAIT + PROMPT,
        "{name}: took {took:?}"
    );
    let sent = authority.request_count();
    assert!(sent >= 4, "{name}: retried ({sent})");
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(authority.request_count(), sent, "{name}: still asking");
}

/// The call's wait ends while the forced refresh it made (a refresh-token
/// grant) is held by the authority: the cached token is returned with a
/// warning, and the call does not return before the rotated refresh token
/// the authority answered with is in the cache file; the next call spends
/// it.
fn one_shot_ending_during_a_rotation_keeps_the_rotated_token<F: Flavor>() {
    let name = F::NAME;
    let (authority, initial, client) = rotating_client();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rotation.json");
    let builder = || {
        F::builder(client.clone())
            .initial_refresh_token(RefreshToken::new(initial.clone()))
            .file_cache(&path)
            .http(HttpSettings::new().request_timeout(Duration::from_secs(10)))
    };
    let key = builder().cache_key().clone();

    let (first, _) = one_shot::<F>(builder(), OneShot::new());
    let first = first.unwrap_or_else(|e| panic!("{name}: no first token: {e}"));
    let first_rotation = authority.live_refresh_tokens(ROTATING_CLIENT);
    assert_eq!(first_rotation.len(), 1, "{name}");
    assert_eq!(
        cached_refresh_token(&path, &key).as_ref(),
        first_rotation.first(),
        "{name}: the first call returned before storing its rotated token"
    );

    // More validity than the cached token has: one forced refresh, whose
    // answer the authority holds for 2 s, past the call's 0.5 s wait.
    authority.push_fault(Fault::Delay(Duration::from_secs(2)));
    let (second, took) = one_shot::<F>(
        builder(),
        OneShot::new()
            .min_valid(Duration::from_secs(3_600))
            .max_wait(Duration::from_millis(500)),
    );
    let second = second.unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(
        access_token(&second.token),
        access_token(&first.token),
        "{name}"
    );
    assert!(
        second.warnings.contains(&Warning::RefreshTimedOut),
        "{name}: {:?}",
        second.warnings
    );
    assert_eq!(authority.request_count(), 2, "{name}");
    // The grant was let finish, and its rotated token stored, before return.
    let refresh = authority.requests()[1].clone();
    let Outcome::Issued {
        refresh_token: Some(rotated),
        ..
    } = &refresh.outcome
    else {
        panic!("{name}: the refresh in flight was not let finish: {refresh:?}");
    };
    assert!(took >= Duration::from_secs(2), "{name}: took {took:?}");
    assert_eq!(
        cached_refresh_token(&path, &key).as_ref(),
        Some(rotated),
        "{name}: get_token returned before the rotated token was stored"
    );

    // The next call refreshes with the rotated token: no reuse, no refusal.
    let (third, _) = one_shot::<F>(
        builder(),
        OneShot::new().min_valid(Duration::from_secs(3_600)),
    );
    let third = third.unwrap_or_else(|e| panic!("{name}: {e}"));
    let requests = authority.requests();
    assert_eq!(requests.len(), 3, "{name}: {requests:?}");
    assert_eq!(requests[2].refresh_token.as_ref(), Some(rotated), "{name}");
    assert_eq!(
        third.token.access_token.expose_secret(),
        authority.last_access_token().unwrap(),
        "{name}"
    );
    assert_eq!(authority.refresh_token_reuses(), 0, "{name}: {requests:?}");
    assert_eq!(
        authority.count_where(|r| matches!(r.outcome, Outcome::Rejected { .. })),
        0,
        "{name}: {requests:?}"
    );
}

/// `spawn` drives the watcher in the caller's task until the first token;
/// a caller that gives up that wait (its own timeout drops the future) must
/// not take the driver down with it: a refresh-token grant in flight still
/// finishes in a task of its own, and the rotated token is stored, not lost.
#[test]
fn tokio_a_spawn_given_up_during_its_first_rotation_keeps_the_rotated_token() {
    let (authority, initial, client) = rotating_client();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rotation.json");
    let builder = common::Tokio::builder(client)
        .initial_refresh_token(RefreshToken::new(initial.clone()))
        .file_cache(&path)
        .http(HttpSettings::new().request_timeout(Duration::from_secs(10)))
        .first_token_timeout(Duration::from_secs(20));
    let key = builder.cache_key().clone();

    // The first answer is held back for a second; the caller gives up after
    // 300 ms, while the grant that spends `initial` is in flight.
    authority.push_fault(Fault::Delay(Duration::from_secs(1)));
    let runtime = common::Tokio::runtime();
    let given_up = common::tokio_runtime().block_on(futures_lite::future::or(
        async { Some(builder.spawn().await) },
        async {
            runtime.sleep(Duration::from_millis(300)).await;
            None
        },
    ));
    assert!(
        given_up.is_none(),
        "the spawn was expected to be still waiting"
    );

    // The driver, now in a task of its own with no handle left, lets the
    // grant finish (its shutdown grace) and stores the rotated token.
    assert!(
        eventually(Duration::from_secs(8), || {
            let live = authority.live_refresh_tokens(ROTATING_CLIENT);
            live.len() == 1
                && live.first() != Some(&initial)
                && cached_refresh_token(&path, &key).as_ref() == live.first()
        }),
        "the rotated refresh token was lost: live {:?}",
        authority.live_refresh_tokens(ROTATING_CLIENT).len()
    );
    assert_eq!(authority.request_count(), 1);
}
