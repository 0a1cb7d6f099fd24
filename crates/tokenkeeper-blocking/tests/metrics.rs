//! A real watcher's metrics, end to end: a thread watcher against the
//! testkit's authority, its counters read back through metrics-util's
//! debugging recorder and compared with the authority's request log.
//!
//! The recorder is the process's global one (the driver records from its
//! own thread). Taking a snapshot empties its counters, so every test adds
//! the snapshot into one shared tally, and each test's watcher has a name
//! of its own.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tokenkeeper_blocking::{TokenWatcher, TokenWatcherBuilder};
use tokenkeeper_core::oauth2::OAuth2Client;
use tokenkeeper_core::{
    BackoffPolicy, ClientId, ClientSecret, Health, HealthReason, Jitter, RefreshNow,
};
use tokenkeeper_driver::metrics as names;
use tokenkeeper_testkit::{Authority, Client, Fault, Outcome};

const SECRET: &str = "s3cret";

/// Every value recorded so far: counters added up, gauges as last set,
/// histogram samples, by name and sorted `key=value` labels.
#[derive(Default)]
struct Tally {
    counters: HashMap<(String, Vec<String>), u64>,
    gauges: HashMap<(String, Vec<String>), f64>,
    histograms: HashMap<(String, Vec<String>), Vec<f64>>,
}

struct Recorder {
    snapshotter: Snapshotter,
    tally: Mutex<Tally>,
}

/// Installs the recorder (before any watcher starts: what is recorded
/// before goes nowhere).
fn install() {
    drop(tally());
}

/// The tally, with the recorder's latest values added in.
fn tally() -> MutexGuard<'static, Tally> {
    static RECORDER: OnceLock<Recorder> = OnceLock::new();
    let recorder = RECORDER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder.install().expect("the only recorder of this test");
        Recorder {
            snapshotter,
            tally: Mutex::default(),
        }
    });
    let mut tally = recorder
        .tally
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    for (key, _, _, value) in recorder.snapshotter.snapshot().into_vec() {
        let key = key.key();
        let mut labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        let id = (key.name().to_owned(), labels);
        match value {
            DebugValue::Counter(n) => *tally.counters.entry(id).or_default() += n,
            DebugValue::Gauge(v) => {
                tally.gauges.insert(id, v.into_inner());
            }
            DebugValue::Histogram(samples) => tally
                .histograms
                .entry(id)
                .or_default()
                .extend(samples.into_iter().map(|v| v.into_inner())),
        }
    }
    tally
}

fn key(name: &str, watcher: &str, label: Option<&str>) -> (String, Vec<String>) {
    let mut labels = vec![format!("watcher={watcher}")];
    labels.extend(label.map(str::to_owned));
    labels.sort();
    (name.to_owned(), labels)
}

impl Tally {
    fn counter(&self, name: &str, watcher: &str, label: Option<&str>) -> u64 {
        let key = key(name, watcher, label);
        self.counters.get(&key).copied().unwrap_or(0)
    }

    fn gauge(&self, name: &str, watcher: &str, label: Option<&str>) -> Option<f64> {
        self.gauges.get(&key(name, watcher, label)).copied()
    }

    fn samples(&self, name: &str, watcher: &str) -> &[f64] {
        self.histograms
            .get(&key(name, watcher, None))
            .map_or(&[], Vec::as_slice)
    }

    /// The labels of every metric of `watcher`.
    fn labels_of(&self, watcher: &str) -> Vec<String> {
        let label = format!("watcher={watcher}");
        self.counters
            .keys()
            .chain(self.gauges.keys())
            .chain(self.histograms.keys())
            .filter(|(_, labels)| labels.contains(&label))
            .flat_map(|(_, labels)| labels.clone())
            .collect()
    }
}

fn authority(client: &str, lifetime: Duration) -> Authority {
    let authority = Authority::start();
    authority.register_client(Client::new(client, SECRET).token_lifetime(lifetime));
    authority
}

/// A watcher named `name` with quick retries (backoff up to `cap`) and no jitter.
fn builder(authority: &Authority, client: &str, name: &str, cap: Duration) -> TokenWatcherBuilder {
    let source = OAuth2Client::client_credentials(
        authority.token_url(),
        ClientId::new(client),
        ClientSecret::new(SECRET),
    )
    .unwrap();
    TokenWatcher::builder(source)
        .name(name)
        .jitter(Jitter::none())
        .backoff(
            BackoffPolicy::builder()
                .floor(Duration::from_millis(50))
                .initial(Duration::from_millis(100))
                .cap(cap)
                .build()
                .unwrap(),
        )
        .first_token_timeout(Duration::from_secs(15))
}

fn eventually(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    done()
}

/// Counts what the test's own `token()` calls got: served, none.
#[derive(Default)]
struct Reads(u64, u64);

impl Reads {
    fn read(&mut self, watcher: &TokenWatcher) -> bool {
        let got = watcher.token().is_ok();
        if got {
            self.0 += 1;
        } else {
            self.1 += 1;
        }
        got
    }
}

#[test]
fn tokens_retrieved_match_the_authoritys_log_over_several_refreshes() {
    const NAME: &str = "e2e-refreshes";
    install();
    // 2 s tokens go stale (and are refreshed) at half their life.
    let authority = authority("metrics-refresh", Duration::from_secs(2));
    let watcher = builder(&authority, "metrics-refresh", NAME, Duration::from_secs(1))
        .spawn()
        .unwrap();
    assert!(watcher.health().is_ready(), "{}", watcher.health());
    let mut reads = Reads::default();
    for _ in 0..3 {
        assert!(reads.read(&watcher));
        let seen = watcher.token().unwrap().into_arc();
        reads.0 += 1;
        let next = watcher
            .changed_from(&seen)
            .expect("a refresh every second or so");
        assert_ne!(next.access_token, seen.access_token);
        assert!(reads.read(&watcher));
    }
    // Shut down just after a new token: the next request is a second away,
    // so none is cut off in flight.
    watcher.shutdown();

    let fetched = authority.count_by_status(200) as u64;
    assert_eq!(fetched, authority.request_count() as u64, "all succeeded");
    assert!(fetched >= 4, "{fetched} token requests");
    let tally = tally();
    assert_eq!(
        tally.counter(names::TOKENS_RETRIEVED, NAME, Some("origin=authority")),
        fetched
    );
    assert_eq!(
        tally.counter(names::TOKENS_RETRIEVED, NAME, Some("origin=cache")),
        0
    );
    let failures = ["class=transient", "class=permanent"]
        .map(|class| tally.counter(names::RETRIEVAL_FAILURES, NAME, Some(class)));
    assert_eq!(failures, [0, 0]);
    assert_eq!(tally.counter(names::REFRESHES_LATE, NAME, None), 0);
    // Each refresh was timed, from its request to its token.
    let samples = tally.samples(names::REFRESH_SECONDS, NAME);
    assert_eq!(samples.len() as u64, fetched, "{samples:?}");
    assert!(
        samples.iter().all(|s| (0.0..2.0).contains(s)),
        "{samples:?}"
    );
    // Every read, as the test made them (tokens are refreshed before they
    // go stale, so most were fresh).
    let served = ["served=fresh", "served=stale"]
        .map(|served| tally.counter(names::READS, NAME, Some(served)));
    assert_eq!(served[0] + served[1], reads.0, "{served:?}");
    assert_eq!(
        tally.counter(names::READS, NAME, Some("served=none")),
        reads.1
    );
    // Stopped: no health state is set any more.
    for state in ["ready", "degraded", "broken"] {
        let state = format!("state={state}");
        assert_eq!(
            tally.gauge(names::HEALTH, NAME, Some(&state)),
            Some(0.0),
            "{state}"
        );
    }
    // The watcher's name is the only value from outside in any label.
    for label in tally.labels_of(NAME) {
        let (name, _) = label.split_once('=').unwrap();
        assert!(
            ["watcher", "origin", "class", "served", "state"].contains(&name),
            "{label}"
        );
    }
}

#[test]
fn failures_are_counted_by_class_and_a_refusal_breaks_the_health() {
    const NAME: &str = "e2e-failures";
    install();
    let authority = authority("metrics-failures", Duration::from_secs(3600));
    // A permanent failure is retried at the backoff cap: 30 s, after the test.
    let watcher = builder(
        &authority,
        "metrics-failures",
        NAME,
        Duration::from_secs(30),
    )
    .spawn()
    .unwrap();
    authority.push_faults([
        Fault::status(503),
        Fault::status(503),
        Fault::oauth_error(400, "invalid_client", Some("the client was deleted")),
    ]);
    assert_eq!(watcher.refresh_now(), Ok(RefreshNow::Started));
    assert!(
        eventually(Duration::from_secs(10), || watcher.health().is_broken()),
        "{}",
        watcher.health()
    );
    let health = watcher.health();
    match &health {
        Health::Broken {
            reason:
                HealthReason::Refused {
                    consecutive_failures: 3,
                    error,
                },
        } => assert_eq!(error.oauth_error().unwrap().error, "invalid_client"),
        other => panic!("{other}"),
    }
    assert!(health.to_string().contains("invalid_client"), "{health}");
    // Broken, yet the token in hand is still served until it expires.
    assert!(watcher.token().is_ok());
    {
        let tally = tally();
        let state = |s: &str| tally.gauge(names::HEALTH, NAME, Some(&format!("state={s}")));
        assert_eq!(state("broken"), Some(1.0));
        assert_eq!(state("ready"), Some(0.0));
        assert_eq!(
            tally.gauge(names::CONSECUTIVE_FAILURES, NAME, None),
            Some(3.0)
        );
    }
    watcher.shutdown();

    assert_eq!(authority.pending_faults(), 0);
    let tally = tally();
    let count = |status| authority.count_by_status(status) as u64;
    assert_eq!(
        tally.counter(names::RETRIEVAL_FAILURES, NAME, Some("class=transient")),
        count(503)
    );
    assert_eq!(
        tally.counter(names::RETRIEVAL_FAILURES, NAME, Some("class=permanent")),
        count(400)
    );
    assert_eq!((count(503), count(400)), (2, 1));
    assert_eq!(
        tally.counter(names::TOKENS_RETRIEVED, NAME, Some("origin=authority")),
        count(200)
    );
    assert_eq!(tally.counter(names::FORCED_REFRESHES, NAME, None), 1);
    // The refresh never ended: nothing timed but the first fetch.
    assert_eq!(tally.samples(names::REFRESH_SECONDS, NAME).len(), 1);
}

#[test]
fn a_token_after_an_outage_past_expiry_is_a_late_refresh() {
    const NAME: &str = "e2e-outage";
    install();
    let authority = authority("metrics-outage", Duration::from_secs(2));
    let watcher = builder(
        &authority,
        "metrics-outage",
        NAME,
        Duration::from_millis(500),
    )
    .spawn()
    .unwrap();
    let mut reads = Reads::default();
    assert!(reads.read(&watcher));
    authority.set_down(true);

    // The token goes stale, then expires: degraded, then broken.
    assert!(
        eventually(Duration::from_secs(5), || !reads.read(&watcher)),
        "the token is withdrawn at its expiry"
    );
    let health = watcher.health();
    assert!(
        matches!(
            health.reason(),
            Some(HealthReason::Expired {
                consecutive_failures: 1..,
                ..
            })
        ),
        "{health}"
    );
    for _ in 0..5 {
        assert!(!reads.read(&watcher));
    }

    authority.set_down(false);
    watcher
        .changed_within(Duration::from_secs(5))
        .expect("recovers once the authority is back");
    assert!(reads.read(&watcher));
    watcher.shutdown();

    let tally = tally();
    assert_eq!(tally.counter(names::REFRESHES_LATE, NAME, None), 1);
    let down = authority.count_where(|r| r.outcome == Outcome::Down) as u64;
    assert!(down >= 1);
    assert_eq!(
        tally.counter(names::RETRIEVAL_FAILURES, NAME, Some("class=transient")),
        down
    );
    assert_eq!(
        tally.counter(names::TOKENS_RETRIEVED, NAME, Some("origin=authority")),
        authority.count_by_status(200) as u64
    );
    assert_eq!(
        authority.count_by_status(200),
        2,
        "{:#?}",
        authority.requests()
    );
    let served = ["served=fresh", "served=stale"]
        .map(|served| tally.counter(names::READS, NAME, Some(served)));
    assert_eq!(served[0] + served[1], reads.0);
    assert_eq!(
        tally.counter(names::READS, NAME, Some("served=none")),
        reads.1
    );
    assert!(reads.1 >= 6);
}

/// A pool's keys count under the pool's name (never a label per key): the
/// tokens retrieved match the authority's log, over keys and refreshes,
/// and a refused key counts as a permanent failure.
#[test]
fn a_pools_counters_match_the_authoritys_log() {
    const NAME: &str = "e2e-pool";
    install();
    let authority = Authority::start();
    let tenants: Vec<String> = (0..5).map(|n| format!("pool-tenant-{n}")).collect();
    for tenant in &tenants {
        authority.register_client(
            Client::new(tenant.as_str(), SECRET).token_lifetime(Duration::from_secs(2)),
        );
    }
    let url = authority.token_url();
    let pool = tokenkeeper_blocking::TokenPool::<String>::builder(move |tenant: &String| {
        OAuth2Client::client_credentials(
            url.as_str(),
            ClientId::new(tenant.clone()),
            ClientSecret::new(SECRET),
        )
    })
    .name(NAME)
    .jitter(Jitter::none())
    .first_token_timeout(Duration::from_secs(15))
    .build()
    .unwrap();
    for tenant in &tenants {
        pool.get(tenant).expect("a token per tenant");
    }
    // An unknown tenant: invalid_client, for good.
    assert!(pool.get(&"pool-stranger".to_owned()).is_err());
    // Each 2 s token is refreshed once, a second or so in.
    assert!(eventually(Duration::from_secs(10), || {
        authority.count_by_status(200) >= 2 * tenants.len()
    }));
    pool.shutdown();

    let tally = tally();
    assert_eq!(
        tally.counter(names::TOKENS_RETRIEVED, NAME, Some("origin=authority")),
        authority.count_by_status(200) as u64
    );
    assert_eq!(
        tally.counter(names::RETRIEVAL_FAILURES, NAME, Some("class=permanent")),
        authority.count_where(|r| r.client_id.as_deref() == Some("pool-stranger")) as u64
    );
    for label in tally.labels_of(NAME) {
        assert!(
            !label.contains("pool-tenant") && !label.contains("pool-stranger"),
            "a per-key label: {label}"
        );
    }
}
