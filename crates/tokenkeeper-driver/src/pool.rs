//! Many tokens in one process: [`TokenPool`], a token per key (tenant,
//! scope, audience, downstream API, ...), all kept fresh by one driver.
//!
//! A pool is the watcher's driver with many keys: one task (or thread) and
//! one timer heap for every key, so idle wake-ups do not grow with the
//! number of keys; one HTTP client and TLS configuration for all; a cap on
//! token requests in flight with first-come, first-served queuing; idle keys
//! evicted. Reading a held key's token is a lock-free map lookup and one
//! atomic load. See `docs/pool.md`.

use std::fmt;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokenkeeper_core::pool::{KeyId, PoolConfig, RefresherPool};
use tokenkeeper_core::{
    BackoffPolicy, CacheKey, Health, Jitter, LifetimePolicy, RefreshNow, RefresherConfig, Status,
};

use crate::builder::{KeySettings, MIN_WAKE_INTERVAL, bind_key, fetch_deadline, prepare_key};
use crate::cache::AnyLayer;
use crate::driver::{BATCH, Driver, DriverParts, Inbox, KeyParts, NewRefresher, Request};
use crate::error::{SpawnError, TokenError, WatcherStopped};
use crate::http::{HttpSettings, SharedExchange};
use crate::publish::Publisher;
use crate::runtime::{self, Runtime, Waited, timeout, wait};
use crate::shared::{Command, Commands, First, Shared, now};
use crate::source::Source;
use crate::watcher::{Token, read};
use crate::{BlockingCacheLayer, CacheLayer};

/// What a pool's factory answers for a key: its token source, or why the
/// key cannot have one (shown to whoever asked for the key).
pub type KeyResult = Result<Source, String>;

type Factory<K> = Arc<dyn Fn(&K) -> KeyResult + Send + Sync>;
type LayerFactory<K> = Arc<dyn Fn(&K, &CacheKey) -> AnyLayer + Send + Sync>;

/// Settings of a [`TokenPool`]; start it with [`TokenPoolBuilder::build`].
pub struct TokenPoolBuilder<K, R> {
    runtime: R,
    factory: Factory<K>,
    layers: Vec<LayerFactory<K>>,
    http: HttpSettings,
    policy: Option<LifetimePolicy>,
    jitter: Jitter,
    backoff: Option<BackoffPolicy>,
    pool: PoolConfig,
    wake_interval: Duration,
    first_token_timeout: Duration,
    name: String,
    seed: Option<u64>,
}

impl<K, R> fmt::Debug for TokenPoolBuilder<K, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenPoolBuilder")
            .field("name", &self.name)
            .field("layers", &self.layers.len())
            .field("http", &self.http)
            .field("policy", &self.policy)
            .field("jitter", &self.jitter)
            .field("backoff", &self.backoff)
            .field("pool", &self.pool)
            .field("wake_interval", &self.wake_interval)
            .field("first_token_timeout", &self.first_token_timeout)
            .finish_non_exhaustive()
    }
}

impl<K, R: Runtime + Default> TokenPool<K, R>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    /// A pool whose keys get their token source from `factory` (called once
    /// per key, when the key is first asked for): an
    /// [`OAuth2Client`](tokenkeeper_core::oauth2::OAuth2Client) built for the
    /// key's tenant, scope or audience, or a custom [`Source`]. Everything
    /// that makes two keys' tokens different must be in `K`.
    pub fn builder<S, E>(
        factory: impl Fn(&K) -> Result<S, E> + Send + Sync + 'static,
    ) -> TokenPoolBuilder<K, R>
    where
        S: Into<Source>,
        E: fmt::Display,
    {
        TokenPoolBuilder::new(R::default(), factory)
    }
}

impl<K, R: Runtime> TokenPoolBuilder<K, R>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    /// A builder on `runtime` (see [`TokenPool::builder`]).
    pub fn new<S, E>(
        runtime: R,
        factory: impl Fn(&K) -> Result<S, E> + Send + Sync + 'static,
    ) -> Self
    where
        S: Into<Source>,
        E: fmt::Display,
    {
        TokenPoolBuilder {
            runtime,
            factory: Arc::new(move |key: &K| {
                factory(key).map(Into::into).map_err(|e| e.to_string())
            }),
            layers: Vec::new(),
            http: HttpSettings::default(),
            policy: None,
            jitter: PoolConfig::default_jitter(),
            backoff: None,
            pool: PoolConfig::default(),
            wake_interval: Duration::from_secs(60),
            first_token_timeout: Duration::from_secs(30),
            name: "pool".to_owned(),
            seed: None,
        }
    }

    /// When every key's tokens go stale (see
    /// [`TokenWatcherBuilder::lifetime_policy`](crate::TokenWatcherBuilder::lifetime_policy)).
    pub fn lifetime_policy(mut self, policy: LifetimePolicy) -> Self {
        self.policy = Some(policy);
        self
    }

    /// How far each refresh may move before its stale time. Default for a
    /// pool: up to a tenth of the token's lifetime
    /// ([`PoolConfig::default_jitter`]), wider than a watcher's, because a
    /// pool's keys are often created together.
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// How failed fetches are retried, per key.
    pub fn backoff(mut self, backoff: BackoffPolicy) -> Self {
        self.backoff = Some(backoff);
        self
    }

    /// At most `n` token requests in flight at once for the whole pool
    /// (default 16); the rest wait their turn, first come, first served.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.pool = self.pool.max_in_flight(n);
        self
    }

    /// Removes keys nobody read for `idle` (between `idle` and twice that
    /// after the last read): their memory is freed and they make no more
    /// requests. Asked for again, a key starts afresh. Default: never.
    pub fn evict_idle_after(mut self, idle: Duration) -> Self {
        self.pool = self.pool.evict_idle_after(idle);
        self
    }

    /// A cache layer for each key, built from the key and its cache key
    /// (a file per key, a Redis layer under the key's name, ...): tokens
    /// and leases are shared fleet-wide per key.
    pub fn cache_for<L: CacheLayer>(
        mut self,
        layer: impl Fn(&K, &CacheKey) -> L + Send + Sync + 'static,
    ) -> Self {
        self.layers
            .push(Arc::new(move |key: &K, cache_key: &CacheKey| {
                AnyLayer::Async(Arc::new(layer(key, cache_key)))
            }));
        self
    }

    /// A blocking cache layer for each key (see
    /// [`cache_for`](Self::cache_for)).
    pub fn blocking_cache_for<L: BlockingCacheLayer>(
        mut self,
        layer: impl Fn(&K, &CacheKey) -> L + Send + Sync + 'static,
    ) -> Self {
        self.layers
            .push(Arc::new(move |key: &K, cache_key: &CacheKey| {
                AnyLayer::Blocking(Arc::new(layer(key, cache_key)))
            }));
        self
    }

    /// The HTTP settings, shared by every key: one client, one TLS
    /// configuration.
    pub fn http(mut self, settings: HttpSettings) -> Self {
        self.http = settings;
        self
    }

    /// The longest the driver sleeps (default 60 s, at least 10 ms), so that
    /// a suspended machine or a clock step is noticed.
    pub fn wake_interval(mut self, interval: Duration) -> Self {
        self.wake_interval = interval.max(MIN_WAKE_INTERVAL);
        self
    }

    /// How long [`TokenPool::get`] waits for a new key's first token
    /// (default 30 s).
    pub fn first_token_timeout(mut self, timeout: Duration) -> Self {
        self.first_token_timeout = timeout;
        self
    }

    /// The pool's name in logs and metrics (default `pool`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// A fixed seed for every key's jitter and backoff (the key's number is
    /// mixed in), for tests; default: drawn from the operating system.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Starts the pool's driver, holding no key yet. Fails when the
    /// runtime cannot start it from here or the HTTP settings are wrong.
    pub fn build(self) -> Result<TokenPool<K, R>, SpawnError> {
        let runtime = self.runtime.bind().ok_or(SpawnError::NoRuntime)?;
        let thumbprint = self.http.client_certificate_thumbprint()?;
        let mut tuning = RefresherConfig::custom(CacheKey::custom("tokenkeeper-pool", &[]))
            .jitter(self.jitter)
            .fetch_timeout(fetch_deadline(self.http.get_request_timeout()));
        if let Some(policy) = self.policy {
            tuning = tuning.lifetime_policy(policy);
        }
        if let Some(backoff) = self.backoff {
            tuning = tuning.backoff(backoff);
        }
        let (requests_tx, requests_rx) = crate::driver::requests();
        let (done_tx, done_rx) = async_channel::bounded::<()>(1);
        let inbox = Arc::new(Inbox::new());
        let driver = Driver::new(DriverParts {
            runtime: runtime.clone(),
            pool: RefresherPool::new(self.pool),
            requests: requests_rx,
            inbox: Some(Arc::clone(&inbox)),
            wake_interval: self.wake_interval,
            ends_when_empty: false,
            name: self.name.clone(),
        });
        let name = self.name.clone();
        runtime::spawn_detached(&runtime, "pool", async move {
            driver.run().await;
            drop(done_tx);
        });
        Ok(TokenPool {
            inner: Arc::new(Inner {
                map: papaya::HashMap::with_hasher(KeyHasher::default()),
                next_id: AtomicU64::new(0),
                requests: requests_tx,
                inbox,
                done: done_rx,
                factory: self.factory,
                layers: self.layers,
                exchange: std::sync::OnceLock::new(),
                http: self.http,
                thumbprint,
                tuning,
                first_token_timeout: self.first_token_timeout,
                seed: self.seed,
                name: name.into(),
                runtime,
            }),
        })
    }
}

/// What [`TokenPool::create`] found or made.
// A return value moved once into a batch: boxing the large variant would
// cost an allocation per new key.
#[allow(clippy::large_enum_variant)]
enum Created {
    /// The pool holds the key: its entry.
    Held(Arc<Shared>),
    /// A new entry, in the map, and what the driver needs for it.
    New(Arc<Shared>, KeyParts),
}

/// The key map's hasher: foldhash's quality variant, seeded at random per
/// process (as hashbrown's default is), for keys that may come from
/// requests. Hashing is a good part of a read of a held key: with std's
/// SipHash a read took 1.51x the floor's time (the `pool_read` bench,
/// paired rounds), with this 1.13x.
type KeyHasher = foldhash::quality::RandomState;

struct Inner<K, R> {
    map: papaya::HashMap<K, Arc<Shared>, KeyHasher>,
    next_id: AtomicU64,
    requests: crate::driver::RequestSender,
    /// New keys, on their way to the driver.
    inbox: Arc<Inbox>,
    /// Closed when the driver has ended.
    done: async_channel::Receiver<()>,
    factory: Factory<K>,
    layers: Vec<LayerFactory<K>>,
    /// One HTTP exchange for every key, made when the first OAuth2 key
    /// needs it.
    exchange: std::sync::OnceLock<SharedExchange>,
    http: HttpSettings,
    thumbprint: Option<String>,
    /// The settings every key's refresher shares (its source and key
    /// aside).
    tuning: RefresherConfig,
    first_token_timeout: Duration,
    seed: Option<u64>,
    name: Arc<str>,
    runtime: R,
}

/// Tokens for many keys, kept fresh by one driver. Cheap to clone; the
/// driver stops every key when the last handle is dropped or
/// [`shutdown`](Self::shutdown) is called.
///
/// - [`token`](Self::token) never waits: a held key's token (a lock-free
///   lookup and one atomic load), else an error, and a key not held yet
///   starts being fetched.
/// - [`get`](Self::get) waits for a new key's first token. A thousand
///   concurrent first calls for one key make one request.
pub struct TokenPool<K, R> {
    inner: Arc<Inner<K, R>>,
}

impl<K, R> Clone for TokenPool<K, R> {
    fn clone(&self) -> Self {
        TokenPool {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<K: Hash + Eq, R> fmt::Debug for TokenPool<K, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenPool")
            .field("name", &self.inner.name)
            .field("keys", &self.inner.map.len())
            .finish_non_exhaustive()
    }
}

impl<K, R> TokenPool<K, R>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    R: Runtime,
{
    /// The key's current token, without waiting and without a lock. A key
    /// not held yet is started (its first token is fetched in the
    /// background) and answers [`TokenError::Unavailable`] until then; so
    /// does a key whose token expired unreplaced. A key whose source cannot
    /// be built answers [`TokenError::Stopped`].
    #[inline]
    pub fn token(&self, key: &K) -> Result<Token, TokenError> {
        if let Some(shared) = self.inner.map.pin().get(key) {
            shared.mark_used();
            return read(shared);
        }
        match self.entry(key) {
            Ok(shared) => read(&shared),
            Err(_) => Err(TokenError::Stopped),
        }
    }

    /// The key's current token, waiting for its first one if the key is
    /// new (single flight: every caller waits for the same request), up to
    /// the pool's first-token timeout. A permanent refusal
    /// (`invalid_client`, ...) ends the wait at once; the key stays in the
    /// pool, [`Health::Broken`], and its later calls answer the same error
    /// without waiting until it gets a token.
    pub fn get<'a>(&'a self, key: &'a K) -> Waited<'a, R, Result<Token, SpawnError>> {
        wait::<R, _>(async move {
            let shared = self.entry(key)?;
            shared.mark_used();
            if let Ok(token) = read(&shared) {
                return Ok(token);
            }
            let waited = self.inner.first_token_timeout;
            match timeout(&self.inner.runtime, waited, shared.first_token()).await {
                Some(First::Token) => match read(&shared) {
                    Ok(token) => Ok(token),
                    Err(_) => Err(SpawnError::Stopped),
                },
                Some(First::Refused(error)) => Err(SpawnError::permanent(error)),
                Some(First::Stopped) => Err(SpawnError::Stopped),
                None => Err(SpawnError::TimedOut {
                    waited,
                    last_error: self.status_of(&shared).await.and_then(|s| s.last_error),
                }),
            }
        })
    }

    /// Starts holding `key` now, without waiting (for keys known up front).
    pub fn insert(&self, key: K) -> Result<(), SpawnError> {
        self.entry(&key).map(drop)
    }

    /// Starts holding every key of `keys` now, without waiting: for many
    /// keys known up front. They are handed to the driver by the hundred
    /// (one lock each hundred rather than one a key). Keys the pool holds
    /// already are left as they are. Stops at the first key the factory
    /// refuses, with its error; the keys before it are held.
    pub fn insert_all(&self, keys: impl IntoIterator<Item = K>) -> Result<(), SpawnError> {
        // A batch is what the driver takes in one turn.
        let mut keys_sent = Vec::with_capacity(BATCH);
        let mut batch = Vec::with_capacity(BATCH);
        let mut refused = Ok(());
        for key in keys {
            match self.create(&key) {
                Ok(Created::Held(_)) => {}
                Ok(Created::New(_, parts)) => {
                    keys_sent.push(key);
                    batch.push(parts);
                    if batch.len() == BATCH {
                        self.hand_over(batch.drain(..), &keys_sent)?;
                        keys_sent.clear();
                    }
                }
                Err(error) => {
                    refused = Err(error);
                    break;
                }
            }
        }
        if !batch.is_empty() {
            self.hand_over(batch, &keys_sent)?;
        }
        refused
    }

    /// Whether the pool holds `key`.
    pub fn contains(&self, key: &K) -> bool {
        self.inner.map.pin().contains_key(key)
    }

    /// How many keys the pool holds.
    pub fn len(&self) -> usize {
        self.inner.map.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The key's status, if the pool holds it: asked of the driver, which
    /// keeps no snapshot per key (a pool holds many, and is asked rarely).
    /// No I/O, and it never calls the authority.
    pub fn status<'a>(&'a self, key: &'a K) -> Waited<'a, R, Option<Status>> {
        wait::<R, _>(async move {
            let shared = self.inner.map.pin().get(key).cloned()?;
            self.status_of(&shared).await
        })
    }

    /// The key's health, if the pool holds it: [`Health::Ready`], degraded
    /// (serving from the grace period, or failing transiently) or broken
    /// (a permanent error, or no token), with the reason. Safe to ask from
    /// every probe: it never calls the authority.
    pub fn health<'a>(&'a self, key: &'a K) -> Waited<'a, R, Option<Health>> {
        wait::<R, _>(async move {
            let shared = self.inner.map.pin().get(key).cloned()?;
            let status = self.status_of(&shared).await?;
            Some(status.health(now()))
        })
    }

    /// How many keys are ready, degraded and broken: computed by the driver
    /// in one pass, for probes and dashboards.
    pub fn health_summary(&self) -> Waited<'_, R, PoolHealth> {
        wait::<R, _>(async move {
            let (reply, answer) = async_channel::bounded(1);
            if self
                .inner
                .requests
                .unbounded_send(Request::Health(reply))
                .is_err()
            {
                return PoolHealth::default();
            }
            answer.recv().await.unwrap_or_default()
        })
    }

    async fn status_of(&self, shared: &Shared) -> Option<Status> {
        let (reply, answer) = async_channel::bounded(1);
        let commands = Commands::new(self.inner.requests.clone(), shared.id());
        commands.send(Command::Status(reply)).await.ok()?;
        answer.recv().await.ok().flatten()
    }

    /// Forces a refresh of `key` (rate-limited per key, see
    /// [`TokenWatcher::refresh_now`](crate::TokenWatcher::refresh_now)).
    pub fn refresh_now<'a>(
        &'a self,
        key: &'a K,
    ) -> Waited<'a, R, Result<RefreshNow, WatcherStopped>> {
        wait::<R, _>(async move {
            let entry = self
                .inner
                .map
                .pin()
                .get(key)
                .cloned()
                .ok_or(WatcherStopped)?;
            let commands = Commands::new(self.inner.requests.clone(), entry.id());
            let (reply, answer) = async_channel::bounded(1);
            commands.send(Command::RefreshNow(reply)).await?;
            match answer.recv().await {
                Ok(RefreshNow::ShutDown) | Err(_) => Err(WatcherStopped),
                Ok(outcome) => {
                    #[cfg(feature = "metrics")]
                    if matches!(outcome, RefreshNow::Started | RefreshNow::Joined) {
                        crate::metrics::forced_refresh(&self.inner.name);
                    }
                    Ok(outcome)
                }
            }
        })
    }

    /// Stops holding `key`: no more requests for it (a refresh-token request
    /// in flight is let finish), its memory freed. Asked for again, it
    /// starts afresh.
    pub fn remove(&self, key: &K) {
        if let Some(shared) = self.inner.map.pin().remove(key) {
            let _ = self
                .inner
                .requests
                .unbounded_send(Request::Key(shared.id(), Command::Shutdown));
        }
    }

    /// Stops every key and waits until the driver has ended. Idempotent.
    pub fn shutdown(&self) -> Waited<'_, R, ()> {
        wait::<R, _>(async move {
            let _ = self.inner.requests.unbounded_send(Request::ShutdownAll);
            let _ = self.inner.done.recv().await;
        })
    }

    /// The key's entry, created (and handed to the driver) if new. Only
    /// one caller creates it; the others find it.
    fn entry(&self, key: &K) -> Result<Arc<Shared>, SpawnError> {
        match self.create(key)? {
            Created::Held(entry) => Ok(entry),
            Created::New(entry, parts) => {
                self.hand_over([parts], std::slice::from_ref(key))?;
                Ok(entry)
            }
        }
    }

    /// The key's entry if the pool holds it; else a new one, in the map
    /// already, with what the driver needs to start holding it.
    fn create(&self, key: &K) -> Result<Created, SpawnError> {
        let map = self.inner.map.pin();
        if let Some(shared) = map.get(key) {
            return Ok(Created::Held(Arc::clone(shared)));
        }
        let source =
            (self.inner.factory)(key).map_err(|reason| SpawnError::InvalidKey { reason })?;
        let (parts, entry) = self.parts(key, source)?;
        match map.try_insert(key.clone(), Arc::clone(&entry)) {
            Ok(_) => Ok(Created::New(entry, parts)),
            // Another caller got there first: its entry is the key's.
            Err(occupied) => Ok(Created::Held(Arc::clone(occupied.current))),
        }
    }

    /// Hands new keys to the driver; when it has stopped taking keys, takes
    /// them out of the map again.
    fn hand_over(
        &self,
        parts: impl IntoIterator<Item = KeyParts>,
        keys: &[K],
    ) -> Result<(), SpawnError> {
        if self.inner.inbox.push(parts, &self.inner.requests).is_err() {
            let map = self.inner.map.pin();
            for key in keys {
                map.remove(key);
            }
            return Err(SpawnError::Stopped);
        }
        Ok(())
    }

    /// Everything the driver needs for a new key.
    fn parts(&self, key: &K, source: Source) -> Result<(KeyParts, Arc<Shared>), SpawnError> {
        let inner = &self.inner;
        // Every key's policy, jitter, backoff and timeouts: one shared copy.
        let config = source.refresher_config().tuned_like(&inner.tuning);
        let settings = KeySettings {
            thumbprint: inner.thumbprint.as_deref(),
            dpop: None,
            request_timeout: inner.http.get_request_timeout(),
        };
        let config = bind_key(config, &settings)?;
        let cache_key = config.cache_key().clone();
        let layers: Vec<AnyLayer> = inner
            .layers
            .iter()
            .map(|layer| layer(key, &cache_key))
            .collect();
        let (config, fetch) = prepare_key(&source, config, &settings, &layers, || {
            if let Some(exchange) = inner.exchange.get() {
                return Ok(Arc::clone(exchange));
            }
            let exchange = inner.runtime.exchange(&inner.http)?;
            Ok(Arc::clone(inner.exchange.get_or_init(|| exchange)))
        })?;
        let n = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let id = KeyId::new(n);
        let seed = match inner.seed {
            Some(seed) => seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            None => fastrand::u64(..),
        };
        let layer_names = layers.iter().map(|l| l.layer().name().to_owned()).collect();
        let shared = Arc::new(Shared::new(
            id,
            cache_key,
            Arc::clone(&inner.name),
            layer_names,
            None,
            None,
        ));
        let weak: Weak<Inner<K, R>> = Arc::downgrade(&self.inner);
        let forgotten = Arc::downgrade(&shared);
        let key = key.clone();
        let forget = Box::new(move || {
            // Removed from the map only if the entry is still this key's
            // (a key removed and asked for again has a new one).
            if let (Some(inner), Some(shared)) = (weak.upgrade(), forgotten.upgrade()) {
                inner
                    .map
                    .pin()
                    .remove_if(&key, |_, held| Arc::ptr_eq(held, &shared))
                    .ok();
            }
        });
        let parts = KeyParts {
            id,
            refresher: NewRefresher::ToBuild { config, seed },
            fetch,
            layers,
            publisher: Publisher::new(Arc::clone(&shared), None),
            forget: Some(forget),
            fetching: None,
        };
        Ok((parts, shared))
    }
}

/// How many of a pool's keys are ready, degraded and broken.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolHealth {
    /// Keys serving a fresh token.
    pub ready: usize,
    /// Keys serving from the grace period or failing transiently.
    pub degraded: usize,
    /// Keys with a permanent error or no token.
    pub broken: usize,
}
