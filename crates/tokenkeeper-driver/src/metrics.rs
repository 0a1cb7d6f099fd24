//! Counters, gauges and a histogram of every watcher, through the
//! [`metrics`](https://docs.rs/metrics/0.24) facade (feature `metrics`, off
//! by default).
//!
//! Install any recorder (a Prometheus or OpenTelemetry exporter, say)
//! before spawning watchers; without one, recording costs next to nothing
//! and goes nowhere. Every metric carries one label, `watcher`: the
//! watcher's name ([`TokenWatcherBuilder::name`](crate::TokenWatcherBuilder::name);
//! by default the client id, or `custom`). Give watchers distinct names:
//! counters of watchers with the same name add up, but their gauges
//! overwrite each other. No label ever holds a token, a secret or a
//! per-request value.
//!
//! | name | kind | labels | what |
//! |------|------|--------|------|
//! | `tokenkeeper_tokens_retrieved_total` | counter | `origin` = `authority` or `cache` | new tokens taken into use: fetched from the authority, or read from a cache layer (another process fetched it) |
//! | `tokenkeeper_retrieval_failures_total` | counter | `class` = `transient` or `permanent` | failed fetches, by [`ErrorClass`] |
//! | `tokenkeeper_refreshes_late_total` | counter | | new tokens that came only after the previous one had expired: readers had a gap with no token |
//! | `tokenkeeper_reads_total` | counter | `served` = `fresh`, `stale` or `none` | [`TokenWatcher::token`](crate::TokenWatcher::token) calls: a token handed out before or after its stale time (the grace period), or none (an error) |
//! | `tokenkeeper_forced_refreshes_total` | counter | | [`refresh_now`](crate::TokenWatcher::refresh_now) and [`refresh_if_current`](crate::TokenWatcher::refresh_if_current) calls that started a refresh or joined one under way (not the rate-limited or superseded ones) |
//! | `tokenkeeper_lease_waits_total` | counter | | times another process held the fleet's lease, so this one waited and re-read the cache instead of fetching |
//! | `tokenkeeper_refresh_seconds` | histogram | | how long a refresh took: from its first token request to the new token from the authority, retries and backoff included (a refresh that succeeds at once measures the authority's latency) |
//! | `tokenkeeper_health` | gauge | `state` = `ready`, `degraded` or `broken` | 1 for the watcher's current [`Health`](tokenkeeper_core::Health), 0 for the others; all 0 once it has stopped |
//! | `tokenkeeper_consecutive_failures` | gauge | | failed fetches since the last success |
//!
//! How they are taken:
//!
//! - Reads are counted on the hot path with one relaxed atomic add to
//!   counters of the watcher's own (in cache lines of their own, away from
//!   the token), and handed to the recorder by the driver after each turn
//!   of its loop, at least once per wake interval (a minute by default).
//!   `token()` reads no clock, so whether a token handed out is fresh or
//!   stale is as the driver last saw it: a token that turned stale since
//!   its last turn counts as fresh until the next one.
//! - The health gauges too are set after each turn of the loop, so they
//!   can lag as long: [`TokenWatcher::health`](crate::TokenWatcher::health)
//!   is always current.
//! - The events (tokens, failures, lease waits) are counted as the driver
//!   publishes them; forced refreshes when the driver answers the call.
//! - Without the feature none of this is compiled: `token()` is one atomic
//!   load and nothing else.
//!
//! ```
//! use tokenkeeper_driver::metrics;
//!
//! assert_eq!(metrics::TOKENS_RETRIEVED, "tokenkeeper_tokens_retrieved_total");
//! assert_eq!(metrics::LABEL_WATCHER, "watcher");
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use ::metrics::{Label, Unit, counter, describe_counter, describe_gauge, describe_histogram};
use ::metrics::{gauge, histogram};
use tokenkeeper_core::{ErrorClass, Event, Origin, Status, TokenState};

use crate::shared::{Shared, now};

/// `tokenkeeper_tokens_retrieved_total{origin}`: new tokens, by origin.
pub const TOKENS_RETRIEVED: &str = "tokenkeeper_tokens_retrieved_total";
/// `tokenkeeper_retrieval_failures_total{class}`: failed fetches, by class.
pub const RETRIEVAL_FAILURES: &str = "tokenkeeper_retrieval_failures_total";
/// `tokenkeeper_refreshes_late_total`: new tokens that came after the
/// previous one had expired.
pub const REFRESHES_LATE: &str = "tokenkeeper_refreshes_late_total";
/// `tokenkeeper_reads_total{served}`: `token()` calls, by what they got.
pub const READS: &str = "tokenkeeper_reads_total";
/// `tokenkeeper_forced_refreshes_total`: forced refreshes started or joined.
pub const FORCED_REFRESHES: &str = "tokenkeeper_forced_refreshes_total";
/// `tokenkeeper_lease_waits_total`: waits for another process's lease.
pub const LEASE_WAITS: &str = "tokenkeeper_lease_waits_total";
/// `tokenkeeper_refresh_seconds`: how long refreshes took, in seconds.
pub const REFRESH_SECONDS: &str = "tokenkeeper_refresh_seconds";
/// `tokenkeeper_health{state}`: 1 for the current health, 0 for the others.
pub const HEALTH: &str = "tokenkeeper_health";
/// `tokenkeeper_consecutive_failures`: failed fetches since the last success.
pub const CONSECUTIVE_FAILURES: &str = "tokenkeeper_consecutive_failures";

/// The label every metric carries: the watcher's name.
pub const LABEL_WATCHER: &str = "watcher";

/// The health states of [`HEALTH`], in its `state` label.
const HEALTH_STATES: [&str; 3] = ["ready", "degraded", "broken"];

/// Tells the recorder what each metric is (once per watcher: cheap, and a
/// recorder installed late still hears it from the next watcher).
fn describe() {
    describe_counter!(
        TOKENS_RETRIEVED,
        "New tokens taken into use, from the authority or a cache layer."
    );
    describe_counter!(RETRIEVAL_FAILURES, "Failed token fetches, by error class.");
    describe_counter!(
        REFRESHES_LATE,
        "New tokens that came only after the previous one had expired."
    );
    describe_counter!(
        READS,
        "token() calls: a fresh or stale token handed out, or none."
    );
    describe_counter!(
        FORCED_REFRESHES,
        "Forced refreshes (refresh_now, refresh_if_current) started or joined."
    );
    describe_counter!(
        LEASE_WAITS,
        "Waits because another process held the fleet's lease."
    );
    describe_histogram!(
        REFRESH_SECONDS,
        Unit::Seconds,
        "From a refresh's first token request to its new token, retries included."
    );
    describe_gauge!(
        HEALTH,
        "1 for the watcher's current health state (ready, degraded, broken)."
    );
    describe_gauge!(
        CONSECUTIVE_FAILURES,
        "Failed token fetches since the last success."
    );
}

/// A watcher's `token()` calls, counted on the hot path: kept in
/// [`Shared`], in cache lines of their own so that counting never slows
/// the token's own line down.
#[derive(Default)]
#[repr(align(128))]
pub(crate) struct Reads {
    fresh: AtomicU64,
    stale: AtomicU64,
    none: AtomicU64,
    /// Whether the token held is past its stale time, as the driver last saw.
    serving_stale: AtomicBool,
}

impl Reads {
    /// A token was handed out.
    #[inline]
    pub(crate) fn served(&self) {
        let counter = if self.serving_stale.load(Ordering::Relaxed) {
            &self.stale
        } else {
            &self.fresh
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// No token was handed out.
    #[inline]
    pub(crate) fn none(&self) {
        self.none.fetch_add(1, Ordering::Relaxed);
    }

    /// Fresh, stale and none, so far.
    fn totals(&self) -> [u64; 3] {
        [
            self.fresh.load(Ordering::Relaxed),
            self.stale.load(Ordering::Relaxed),
            self.none.load(Ordering::Relaxed),
        ]
    }
}

/// The driver's side of a watcher's metrics: held by its
/// [`Publisher`](crate::publish::Publisher), which hands it each status
/// snapshot and each event.
pub(crate) struct WatcherMetrics {
    watcher: Label,
    /// The read totals already handed to the recorder.
    flushed: [u64; 3],
    /// When the refresh under way made its first request.
    refresh_started: Option<Instant>,
    /// The token expired and none has come since.
    expired: bool,
}

impl WatcherMetrics {
    pub(crate) fn new(name: &str) -> Self {
        describe();
        WatcherMetrics {
            watcher: watcher_label(name),
            flushed: [0; 3],
            refresh_started: None,
            expired: false,
        }
    }

    /// After each turn of the driver's loop: hands the reads counted since
    /// the last turn to the recorder, tells readers whether the token is
    /// stale, sets the health gauges, and notes a refresh's first request.
    pub(crate) fn status(&mut self, shared: &Shared, status: &Status) {
        let reads = shared.reads();
        reads.serving_stale.store(
            status.token_state == Some(TokenState::Stale),
            Ordering::Relaxed,
        );
        let totals = reads.totals();
        for ((served, total), flushed) in ["fresh", "stale", "none"]
            .into_iter()
            .zip(totals)
            .zip(&mut self.flushed)
        {
            let labels = [self.watcher.clone(), Label::new("served", served)];
            counter!(READS, labels.iter()).increment(total.saturating_sub(*flushed));
            *flushed = total;
        }

        if status.fetch_in_flight && self.refresh_started.is_none() {
            self.refresh_started = Some(Instant::now());
        }

        let health = status.health(now());
        self.set_health(Some(health.as_str()));
        gauge!(CONSECUTIVE_FAILURES, self.labels()).set(f64::from(status.consecutive_failures));
    }

    /// Each event the driver publishes.
    pub(crate) fn event(&mut self, event: &Event) {
        match event {
            Event::TokenChanged { origin, .. } => {
                let origin = match origin {
                    Origin::Authority => "authority",
                    _ => "cache",
                };
                let labels = [self.watcher.clone(), Label::new("origin", origin)];
                counter!(TOKENS_RETRIEVED, labels.iter()).increment(1);
                if std::mem::take(&mut self.expired) {
                    counter!(REFRESHES_LATE, self.labels()).increment(1);
                }
                // A token from a cache ends the refresh too (another
                // process fetched it), but measures no request of ours.
                if let Some(started) = self.refresh_started.take()
                    && origin == "authority"
                {
                    histogram!(REFRESH_SECONDS, self.labels()).record(started.elapsed());
                }
            }
            Event::TokenExpired { .. } => self.expired = true,
            Event::FetchFailed { class, .. } => {
                let class = match class {
                    ErrorClass::Permanent => "permanent",
                    _ => "transient",
                };
                let labels = [self.watcher.clone(), Label::new("class", class)];
                counter!(RETRIEVAL_FAILURES, labels.iter()).increment(1);
            }
            Event::LeaseBusy { .. } => counter!(LEASE_WAITS, self.labels()).increment(1),
            Event::Stopped => {
                self.refresh_started = None;
                self.set_health(None);
            }
            _ => {}
        }
    }

    fn labels(&self) -> std::slice::Iter<'_, Label> {
        std::slice::from_ref(&self.watcher).iter()
    }

    /// 1 for `current`, 0 for the other states (all 0 for `None`).
    fn set_health(&self, current: Option<&str>) {
        for state in HEALTH_STATES {
            let labels = [self.watcher.clone(), Label::new("state", state)];
            let value = if Some(state) == current { 1.0 } else { 0.0 };
            gauge!(HEALTH, labels.iter()).set(value);
        }
    }
}

/// A forced refresh started or joined one: called where the handle hears
/// the driver's answer.
pub(crate) fn forced_refresh(name: &str) {
    counter!(FORCED_REFRESHES, [watcher_label(name)].iter()).increment(1);
}

fn watcher_label(name: &str) -> Label {
    Label::new(LABEL_WATCHER, Arc::<str>::from(name))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use ::metrics_util::CompositeKey;
    use ::metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
    use tokenkeeper_core::{
        AccessToken, CacheKey, FetchError, LifetimePolicy, Refresher, RefresherConfig, Timestamp,
        TokenGrant, TokenRecord,
    };

    use super::*;

    /// What the recorder holds: counters and gauges by name and labels
    /// (sorted `key=value` pairs), histograms as their samples.
    #[derive(Default, Debug)]
    struct Seen {
        counters: HashMap<(String, Vec<String>), u64>,
        gauges: HashMap<(String, Vec<String>), f64>,
        histograms: HashMap<(String, Vec<String>), Vec<f64>>,
    }

    impl Seen {
        /// Adds a snapshot (which empties the recorder's counters).
        fn take(&mut self, snapshotter: &Snapshotter) {
            for (key, _, _, value) in snapshotter.snapshot().into_vec() {
                let id = id(&key);
                match value {
                    DebugValue::Counter(n) => *self.counters.entry(id).or_default() += n,
                    DebugValue::Gauge(v) => {
                        self.gauges.insert(id, v.into_inner());
                    }
                    DebugValue::Histogram(v) => self
                        .histograms
                        .entry(id)
                        .or_default()
                        .extend(v.into_iter().map(|v| v.into_inner())),
                }
            }
        }

        fn counter(&self, name: &str, labels: &[&str]) -> u64 {
            let key = (
                name.to_owned(),
                labels.iter().map(|l| l.to_string()).collect(),
            );
            self.counters.get(&key).copied().unwrap_or(0)
        }

        fn gauge(&self, name: &str, labels: &[&str]) -> Option<f64> {
            let key = (
                name.to_owned(),
                labels.iter().map(|l| l.to_string()).collect(),
            );
            self.gauges.get(&key).copied()
        }
    }

    fn id(key: &CompositeKey) -> (String, Vec<String>) {
        let key = key.key();
        let mut labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        (key.name().to_owned(), labels)
    }

    const T0: Timestamp = Timestamp::from_secs(1_700_000_000);

    fn shared(name: &str) -> Arc<Shared> {
        let key = CacheKey::custom("metrics", &[]);
        let refresher = Refresher::new(RefresherConfig::custom(key.clone()), 1, T0);
        Arc::new(Shared::new(
            tokenkeeper_core::pool::KeyId::new(0),
            key,
            name,
            Box::default(),
            Some(refresher.status(T0)),
            None,
        ))
    }

    fn record(token: &str) -> Arc<TokenRecord> {
        Arc::new(LifetimePolicy::default().record(
            TokenGrant::bearer(AccessToken::new(token), Some(Duration::from_secs(600))),
            Timestamp::from_system_time(std::time::SystemTime::now()),
            None,
        ))
    }

    /// What a watcher's publisher holds, and hands each status and event.
    struct Publisher {
        shared: Arc<Shared>,
        metrics: WatcherMetrics,
    }

    impl Publisher {
        fn status(&mut self, status: Status) {
            self.metrics.status(&self.shared, &status);
        }

        fn event(&mut self, event: Event) {
            self.metrics.event(&event);
        }
    }

    fn publisher(shared: &Arc<Shared>) -> Publisher {
        Publisher {
            shared: Arc::clone(shared),
            metrics: WatcherMetrics::new(shared.name()),
        }
    }

    fn changed(token: &str, origin: Origin) -> Event {
        Event::TokenChanged {
            token: record(token),
            origin,
        }
    }

    fn failed(class: ErrorClass, n: u32) -> Event {
        Event::FetchFailed {
            error: FetchError::Source {
                message: "down".into(),
                class,
            },
            class,
            consecutive_failures: n,
            retry_at: T0,
        }
    }

    /// A status snapshot with a token in the given state.
    fn status(state: Option<TokenState>, fetch_in_flight: bool, failures: u32) -> Status {
        let wall = Timestamp::from_system_time(std::time::SystemTime::now());
        let mut status = shared("s").status().expect("a watcher's status");
        status.token_state = state;
        status.issued = state.map(|_| wall);
        status.stale = state.map(|_| wall.saturating_add(Duration::from_secs(450)));
        status.expiry = state.map(|_| wall.saturating_add(Duration::from_secs(600)));
        status.consecutive_failures = failures;
        if failures > 0 {
            status.last_error = Some(FetchError::Source {
                message: "down".into(),
                class: ErrorClass::Transient,
            });
        }
        status.fetch_in_flight = fetch_in_flight;
        status
    }

    const W: &str = "watcher=svc";

    #[test]
    fn events_become_counters_labelled_by_watcher() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let mut seen = Seen::default();
        ::metrics::with_local_recorder(&recorder, || {
            let shared = shared("svc");
            let mut publisher = publisher(&shared);
            publisher.event(changed("secret-1", Origin::Authority));
            publisher.event(changed("secret-2", Origin::Cache { layer: 0 }));
            publisher.event(failed(ErrorClass::Transient, 1));
            publisher.event(failed(ErrorClass::Transient, 2));
            publisher.event(failed(ErrorClass::Permanent, 3));
            publisher.event(Event::LeaseBusy {
                layer: 0,
                retry_at: T0,
            });
            publisher.event(changed("secret-3", Origin::Authority));
        });
        seen.take(&snapshotter);
        let origin = |o| seen.counter(TOKENS_RETRIEVED, &[o, W]);
        assert_eq!(origin("origin=authority"), 2);
        assert_eq!(origin("origin=cache"), 1);
        let class = |c| seen.counter(RETRIEVAL_FAILURES, &[c, W]);
        assert_eq!(class("class=transient"), 2);
        assert_eq!(class("class=permanent"), 1);
        assert_eq!(seen.counter(LEASE_WAITS, &[W]), 1);
        // No token expired in between: no refresh was late.
        assert_eq!(seen.counter(REFRESHES_LATE, &[W]), 0);
        // Every metric carries the watcher's name, and nothing else
        // (no token in any label).
        for (name, labels) in seen.counters.keys() {
            assert!(labels.contains(&W.to_owned()), "{name} {labels:?}");
            assert!(
                labels.iter().all(|l| !l.contains("secret")),
                "{name} {labels:?}"
            );
        }
    }

    #[test]
    fn a_token_after_an_expiry_is_a_late_refresh() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let mut seen = Seen::default();
        ::metrics::with_local_recorder(&recorder, || {
            let shared = shared("svc");
            let mut publisher = publisher(&shared);
            publisher.event(changed("one", Origin::Authority));
            publisher.event(Event::TokenExpired { expiry: T0 });
            publisher.event(failed(ErrorClass::Transient, 1));
            publisher.event(changed("two", Origin::Authority));
            // The next one replaces a live token: on time.
            publisher.event(changed("three", Origin::Authority));
            publisher.event(Event::TokenExpired { expiry: T0 });
            publisher.event(changed("four", Origin::Cache { layer: 0 }));
        });
        seen.take(&snapshotter);
        assert_eq!(seen.counter(REFRESHES_LATE, &[W]), 2);
    }

    #[test]
    fn reads_are_counted_and_handed_over_once() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let mut seen = Seen::default();
        ::metrics::with_local_recorder(&recorder, || {
            let shared = shared("svc");
            let mut publisher = publisher(&shared);
            let reads = shared.reads();
            reads.none();
            publisher.status(status(None, true, 0));
            reads.served();
            reads.served();
            publisher.status(status(Some(TokenState::Fresh), false, 0));
            seen.take(&snapshotter);
            assert_eq!(seen.counter(READS, &["served=fresh", W]), 2);
            assert_eq!(seen.counter(READS, &["served=none", W]), 1);

            // The driver saw the token go stale: reads count as stale.
            publisher.status(status(Some(TokenState::Stale), true, 2));
            for _ in 0..5 {
                reads.served();
            }
            publisher.status(status(Some(TokenState::Stale), true, 2));
            // Handed over again without new reads: nothing added.
            publisher.status(status(Some(TokenState::Stale), true, 2));
        });
        seen.take(&snapshotter);
        assert_eq!(seen.counter(READS, &["served=fresh", W]), 2);
        assert_eq!(seen.counter(READS, &["served=stale", W]), 5);
        assert_eq!(seen.counter(READS, &["served=none", W]), 1);
    }

    #[test]
    fn health_gauges_follow_the_status_and_clear_at_the_end() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let mut seen = Seen::default();
        let health = |seen: &Seen| {
            HEALTH_STATES.map(|s| {
                let state = format!("state={s}");
                seen.gauge(HEALTH, &[&state, W]).unwrap()
            })
        };
        ::metrics::with_local_recorder(&recorder, || {
            let shared = shared("svc");
            let mut publisher = publisher(&shared);
            publisher.status(status(Some(TokenState::Fresh), false, 0));
            seen.take(&snapshotter);
            assert_eq!(health(&seen), [1.0, 0.0, 0.0]);
            assert_eq!(seen.gauge(CONSECUTIVE_FAILURES, &[W]), Some(0.0));

            publisher.status(status(Some(TokenState::Fresh), false, 3));
            seen.take(&snapshotter);
            assert_eq!(health(&seen), [0.0, 1.0, 0.0]);
            assert_eq!(seen.gauge(CONSECUTIVE_FAILURES, &[W]), Some(3.0));

            publisher.status(status(None, true, 0));
            seen.take(&snapshotter);
            assert_eq!(health(&seen), [0.0, 0.0, 1.0]);

            publisher.event(Event::Stopped);
            seen.take(&snapshotter);
            assert_eq!(health(&seen), [0.0, 0.0, 0.0]);
        });
    }

    #[test]
    fn a_refresh_is_timed_from_its_first_request_to_its_token() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let mut seen = Seen::default();
        ::metrics::with_local_recorder(&recorder, || {
            let shared = shared("svc");
            let mut publisher = publisher(&shared);
            // A first request, failed, then a second one that succeeds.
            publisher.status(status(None, true, 0));
            std::thread::sleep(Duration::from_millis(30));
            publisher.status(status(None, false, 1));
            publisher.event(failed(ErrorClass::Transient, 1));
            publisher.status(status(None, true, 1));
            std::thread::sleep(Duration::from_millis(30));
            publisher.status(status(Some(TokenState::Fresh), false, 0));
            publisher.event(changed("one", Origin::Authority));
            // A refresh ended by a token from a cache is not timed.
            publisher.status(status(Some(TokenState::Fresh), true, 0));
            publisher.status(status(Some(TokenState::Fresh), false, 0));
            publisher.event(changed("two", Origin::Cache { layer: 0 }));
            // Nor is a token from a cache with no request of ours.
            publisher.event(changed("three", Origin::Authority));
        });
        seen.take(&snapshotter);
        let samples = &seen.histograms[&(REFRESH_SECONDS.to_owned(), vec![W.to_owned()])];
        assert_eq!(samples.len(), 1, "{samples:?}");
        assert!(
            (0.06..10.0).contains(&samples[0]),
            "from the first request, retries included: {samples:?}"
        );
    }

    #[test]
    fn forced_refreshes_are_counted_by_watcher() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let mut seen = Seen::default();
        ::metrics::with_local_recorder(&recorder, || {
            forced_refresh("svc");
            forced_refresh("svc");
            forced_refresh("other");
        });
        seen.take(&snapshotter);
        assert_eq!(seen.counter(FORCED_REFRESHES, &[W]), 2);
        assert_eq!(seen.counter(FORCED_REFRESHES, &["watcher=other"]), 1);
    }
}
