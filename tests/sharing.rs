//! Tokens shared across drivers: a token one driver fetched is served by
//! every other driver from the same store, without asking the authority
//! again, and a store's lease keeps drivers starting together to one request.
//!
//! Through one file cache (its lock file is the lease), and through a real
//! Redis: the `TOKENKEEPER_TEST_REDIS_URL` that `scripts/test-all.sh`
//! exports, or a private `redis-server` started here. `BlockingRedisLayer`
//! (added with `.blocking_cache(..)`) works on every driver; `AsyncRedisLayer`
//! (`.cache(..)`) on the async ones, over tokio inside tokio and over smol
//! elsewhere (this package builds `tokenkeeper-redis` with both features, as
//! a program mixing runtimes would).

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant, SystemTime};

use common::{AsyncStd, Flavor, Smol, Threads, Tokio, fast_backoff};
use tokenkeeper_core::cache::encode_record;
use tokenkeeper_core::oauth2::OAuth2Client;
use tokenkeeper_core::{
    AccessToken, CacheKey, ClientId, ClientSecret, Event, Jitter, LeaseOutcome, LeaseSettings,
    LifetimePolicy, Timestamp, TokenGrant,
};
use tokenkeeper_driver::{Runtime, TokenWatcher, TokenWatcherBuilder};
use tokenkeeper_redis::{AsyncRedisLayer, BlockingRedisLayer, RedisSettings};
use tokenkeeper_testkit::{Authority, Client, Fault, RedisServer};

per_driver!(
    a_token_in_a_file_is_served_by_every_driver,
    a_file_lease_holder_serves_every_driver_starting_meanwhile,
    a_token_in_redis_is_served_by_every_driver,
    a_redis_lease_wait_ends_on_the_change_notification,
);

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

const CLIENT_ID: &str = "sharing-client";
const SECRET: &str = "sharing-secret-3b81";

fn authority() -> Authority {
    let authority = Authority::start();
    authority
        .register_client(Client::new(CLIENT_ID, SECRET).token_lifetime(Duration::from_secs(300)));
    authority
}

/// A client of `authority`; each scope is a cache key of its own.
fn client(authority: &Authority, scope: &str) -> OAuth2Client {
    OAuth2Client::client_credentials(
        authority.token_url(),
        ClientId::new(CLIENT_ID),
        ClientSecret::new(SECRET),
    )
    .unwrap()
    .scope(scope)
}

fn builder<G: Flavor>(client: &OAuth2Client) -> TokenWatcherBuilder<G::R> {
    G::builder(client.clone())
        .jitter(Jitter::none())
        .backoff(fast_backoff())
        .first_token_timeout(Duration::from_secs(20))
}

fn access_token<R: Runtime>(watcher: &TokenWatcher<R>) -> String {
    let token = watcher.token().expect("a token");
    token.access_token.expose_secret().to_owned()
}

/// Starts a watcher of driver `G`, takes its token, and shuts it down.
fn token_of<G: Flavor>(builder: TokenWatcherBuilder<G::R>, what: &str) -> String {
    let watcher = spawn_ok::<G>(builder, what);
    let token = access_token(&watcher);
    G::block_on(watcher.shutdown());
    token
}

fn spawn_ok<G: Flavor>(builder: TokenWatcherBuilder<G::R>, what: &str) -> TokenWatcher<G::R> {
    G::block_on(builder.spawn()).unwrap_or_else(|e| panic!("{} ({what}): {e}", G::NAME))
}

/// Something to do once with each driver.
trait EachDriver {
    fn run<G: Flavor>(&self) -> String;
}

/// Runs `job` with each driver, in turn; returns each driver's answer.
fn with_every_driver(job: &impl EachDriver) -> Vec<(&'static str, String)> {
    vec![
        (Tokio::NAME, job.run::<Tokio>()),
        (AsyncStd::NAME, job.run::<AsyncStd>()),
        (Smol::NAME, job.run::<Smol>()),
        (Threads::NAME, job.run::<Threads>()),
    ]
}

/// Whether `G` runs async cache layers that need a reactor (Redis).
fn is_async<G: Flavor>() -> bool {
    G::NAME != Threads::NAME
}

// ---------------------------------------------------------------------------
// One file
// ---------------------------------------------------------------------------

/// Serves the token of `client` from the file cache at `path`.
struct FromFile<'a> {
    client: &'a OAuth2Client,
    path: &'a Path,
}

impl EachDriver for FromFile<'_> {
    fn run<G: Flavor>(&self) -> String {
        token_of::<G>(builder::<G>(self.client).file_cache(self.path), "file")
    }
}

fn a_token_in_a_file_is_served_by_every_driver<F: Flavor>() {
    let authority = authority();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.json");
    let client = client(&authority, "file");

    let stored = FromFile {
        client: &client,
        path: &path,
    }
    .run::<F>();
    assert_eq!(authority.request_count(), 1, "{}", F::NAME);
    assert_eq!(authority.last_access_token().as_ref(), Some(&stored));

    for (driver, served) in with_every_driver(&FromFile {
        client: &client,
        path: &path,
    }) {
        assert_eq!(served, stored, "{driver} serves what {} stored", F::NAME);
    }
    assert_eq!(
        authority.request_count(),
        1,
        "{}: {:?}",
        F::NAME,
        authority.requests()
    );
}

/// Starts a watcher of `G` on the file at `path` once `start` lets it, and
/// returns its token and how often it found the lease held by another.
fn cold_start<G: Flavor>(
    client: OAuth2Client,
    path: PathBuf,
    start: Arc<Barrier>,
) -> (String, usize) {
    let busy = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&busy);
    let builder = builder::<G>(&client)
        .file_cache(path)
        .on_event(move |event| {
            if matches!(event, Event::LeaseBusy { .. }) {
                seen.fetch_add(1, Ordering::SeqCst);
            }
        });
    start.wait();
    let token = token_of::<G>(builder, "cold start");
    (token, busy.load(Ordering::SeqCst))
}

/// Starts one watcher of every driver on the cold file at `path`, together,
/// and returns each one's token and lease-busy count.
fn start_every_driver_together(
    client: &OAuth2Client,
    path: &Path,
) -> Vec<(&'static str, (String, usize))> {
    let start = Arc::new(Barrier::new(4));
    let spawn = |name: &'static str,
                 run: fn(OAuth2Client, PathBuf, Arc<Barrier>) -> (String, usize)| {
        let (client, path, start) = (client.clone(), path.to_path_buf(), Arc::clone(&start));
        (name, std::thread::spawn(move || run(client, path, start)))
    };
    let threads = vec![
        spawn(Tokio::NAME, cold_start::<Tokio>),
        spawn(AsyncStd::NAME, cold_start::<AsyncStd>),
        spawn(Smol::NAME, cold_start::<Smol>),
        spawn(Threads::NAME, cold_start::<Threads>),
    ];
    threads
        .into_iter()
        .map(|(name, thread)| {
            (
                name,
                thread.join().unwrap_or_else(|_| panic!("{name} failed")),
            )
        })
        .collect()
}

/// `F` takes the file's lease and fetches (slowly); meanwhile one watcher
/// of every driver starts on the same file. They wait on the lease, and
/// serve the token `F` stores: one request in all.
fn a_file_lease_holder_serves_every_driver_starting_meanwhile<F: Flavor>() {
    let authority = authority();
    authority.push_fault(Fault::Delay(Duration::from_millis(1500)));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.json");
    let client = client(&authority, "lease");

    let first = {
        let (client, path) = (client.clone(), path.clone());
        std::thread::spawn(move || cold_start::<F>(client, path, Arc::new(Barrier::new(1))))
    };
    assert!(
        authority.wait_for_requests(1, Duration::from_secs(10)),
        "{}: no request",
        F::NAME
    );
    let others = start_every_driver_together(&client, &path);
    let (holder, _) = first.join().expect("the lease holder");
    assert_eq!(authority.last_access_token().as_ref(), Some(&holder));
    for (driver, (token, busy)) in others {
        assert_eq!(token, holder, "{driver} serves what {} fetched", F::NAME);
        assert!(busy >= 1, "{driver} did not wait on {}'s lease", F::NAME);
    }
    assert_eq!(
        authority.request_count(),
        1,
        "{}: {:?}",
        F::NAME,
        authority.requests()
    );
}

/// Every driver starts cold at once on one file: one request between them,
/// one token for all.
#[test]
fn concurrent_cold_starts_of_every_driver_make_one_request() {
    let authority = authority();
    // A slow answer widens the window in which they race.
    authority.push_fault(Fault::Delay(Duration::from_millis(800)));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("race.json");
    let client = client(&authority, "race");

    let started = start_every_driver_together(&client, &path);
    let first = &started[0].1.0;
    assert_eq!(authority.last_access_token().as_ref(), Some(first));
    for (driver, (token, _)) in &started {
        assert_eq!(token, first, "{driver}");
    }
    assert_eq!(authority.request_count(), 1, "{:?}", authority.requests());
}

// ---------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------

/// The Redis of this test: the shared one of `scripts/test-all.sh`, or a
/// private server (stopped when the test ends).
enum Redis {
    Shared(String),
    Private(RedisServer),
}

impl Redis {
    fn get() -> Self {
        match std::env::var("TOKENKEEPER_TEST_REDIS_URL") {
            Ok(url) if !url.is_empty() => Redis::Shared(url),
            _ => Redis::Private(RedisServer::start(&[])),
        }
    }

    /// Settings under a prefix of this test's own, so that tests sharing a
    /// server never share keys.
    fn settings(&self, test: &str) -> RedisSettings {
        let url = match self {
            Redis::Shared(url) => url.clone(),
            Redis::Private(server) => server.url(),
        };
        RedisSettings::new(&url)
            .expect("a valid Redis URL")
            .prefix(format!(
                "tokenkeeper-sharing:{test}:{:016x}:",
                fastrand::u64(..)
            ))
    }
}

/// How a watcher reaches Redis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layer {
    /// `BlockingRedisLayer`, through `.blocking_cache(..)`.
    Blocking,
    /// `AsyncRedisLayer`, through `.cache(..)`.
    Async,
}

fn with_redis<G: Flavor>(
    builder: TokenWatcherBuilder<G::R>,
    settings: &RedisSettings,
    layer: Layer,
) -> TokenWatcherBuilder<G::R> {
    let key = builder.cache_key().clone();
    match layer {
        Layer::Blocking => builder.blocking_cache(BlockingRedisLayer::new(settings.clone(), &key)),
        Layer::Async => {
            assert!(is_async::<G>(), "the async layer on {}", G::NAME);
            builder.cache(AsyncRedisLayer::new(settings.clone(), &key))
        }
    }
}

/// Serves the token of `client` from Redis, through `layer` (a driver that
/// cannot use it answers an empty string).
struct FromRedis<'a> {
    client: &'a OAuth2Client,
    settings: &'a RedisSettings,
    layer: Layer,
}

impl EachDriver for FromRedis<'_> {
    fn run<G: Flavor>(&self) -> String {
        if self.layer == Layer::Async && !is_async::<G>() {
            return String::new();
        }
        let builder = with_redis::<G>(builder::<G>(self.client), self.settings, self.layer);
        token_of::<G>(builder, &format!("{:?} Redis layer", self.layer))
    }
}

fn a_token_in_redis_is_served_by_every_driver<F: Flavor>() {
    let redis = Redis::get();
    let settings = redis.settings(&format!("served-{}", F::NAME));
    let authority = authority();
    let mut expected = 0;

    for written_with in [Layer::Blocking, Layer::Async] {
        if written_with == Layer::Async && !is_async::<F>() {
            continue;
        }
        // Each direction is a key of its own.
        let client = client(&authority, &format!("written-with-{written_with:?}"));
        let stored = FromRedis {
            client: &client,
            settings: &settings,
            layer: written_with,
        }
        .run::<F>();
        expected += 1;
        assert_eq!(authority.request_count(), expected, "{}", F::NAME);
        assert_eq!(authority.last_access_token().as_ref(), Some(&stored));

        for read_with in [Layer::Blocking, Layer::Async] {
            let served = with_every_driver(&FromRedis {
                client: &client,
                settings: &settings,
                layer: read_with,
            });
            for (driver, token) in served {
                if read_with == Layer::Async && driver == Threads::NAME {
                    continue;
                }
                assert_eq!(
                    token,
                    stored,
                    "{driver} ({read_with:?} layer) serves what {} stored ({written_with:?} layer)",
                    F::NAME
                );
            }
        }
        assert_eq!(
            authority.request_count(),
            expected,
            "{}: {:?}",
            F::NAME,
            authority.requests()
        );
    }
}

fn a_redis_lease_wait_ends_on_the_change_notification<F: Flavor>() {
    for layer in [Layer::Blocking, Layer::Async] {
        if layer == Layer::Async && !is_async::<F>() {
            continue;
        }
        a_redis_lease_wait_ends_on_the_change_notification_through::<F>(layer);
    }
}

fn a_redis_lease_wait_ends_on_the_change_notification_through<F: Flavor>(layer: Layer) {
    let name = format!("{} ({layer:?} layer)", F::NAME);
    let redis = Redis::get();
    let authority = authority();
    let client = client(&authority, "lease");
    let key = CacheKey::for_client(&client);
    // Found taken, the lease is looked at again 5 to 10 s later, unless a
    // change notification comes first.
    let settings = redis
        .settings(&format!("notified-{}-{layer:?}", F::NAME))
        .lease(LeaseSettings {
            ttl: Duration::from_secs(30),
            retry: Duration::from_secs(10),
            hold_through_backoff: true,
        });
    // Another instance of the fleet holds the lease, as if it were fetching.
    let holder = BlockingRedisLayer::new(settings.clone(), &key);
    assert_eq!(
        holder.try_acquire(Duration::from_secs(30)),
        LeaseOutcome::Acquired
    );

    let busy = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&busy);
    let watcher = with_redis::<F>(builder::<F>(&client), &settings, layer)
        .on_event(move |event| {
            if matches!(event, Event::LeaseBusy { .. }) {
                seen.fetch_add(1, Ordering::SeqCst);
            }
        })
        .start()
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    // It finds the lease taken and settles into its wait, subscribed.
    let end = Instant::now() + Duration::from_secs(10);
    while busy.load(Ordering::SeqCst) == 0 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        busy.load(Ordering::SeqCst) >= 1,
        "{name}: never waited on the lease"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(watcher.token().is_err(), "{name}");

    // The holder stores the token it fetched.
    let record = LifetimePolicy::default().record(
        TokenGrant::bearer(
            AccessToken::new("from-the-lease-holder"),
            Some(Duration::from_secs(600)),
        ),
        Timestamp::from_system_time(SystemTime::now()),
        None,
    );
    let stored_at = Instant::now();
    holder.write(&encode_record(&key, &record)).unwrap();

    // Woken by the notification, well before its 5 s re-read.
    let limit = Duration::from_secs(4);
    let mut served = None;
    while served.is_none() && stored_at.elapsed() < limit {
        served = watcher
            .token()
            .ok()
            .map(|t| t.access_token.expose_secret().to_owned());
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        served.as_deref(),
        Some("from-the-lease-holder"),
        "{name}: not woken by the change within {limit:?}"
    );
    F::block_on(watcher.shutdown());
    holder.release().unwrap();
    assert_eq!(
        authority.request_count(),
        0,
        "{name}: {:?}",
        authority.requests()
    );
}
