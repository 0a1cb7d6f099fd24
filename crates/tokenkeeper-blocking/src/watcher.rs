//! The watcher: one background thread keeps a token fresh; readers take it
//! without a lock.

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use tokenkeeper_core::{
    BackoffPolicy, ErrorClass, Event, FetchError, Jitter, LifetimePolicy, RefreshNow, RefreshToken,
    Refresher, Status, TokenRecord,
};

use crate::cache::{CacheLayer, CacheSpec};
use crate::engine::{self, Answer, Engine, FetchJob, Fetcher, now, trace_event};
use crate::http::{HttpClient, HttpSettings};
use crate::source::Source;

/// A callback that sees every event of the refresher, on the driver thread.
type EventHook = Arc<dyn Fn(&Event) + Send + Sync>;

/// Why [`TokenWatcherBuilder::spawn`] gave up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnError {
    /// The authority rejected the client or grant: a permanent error, not
    /// retried by `spawn`.
    #[error("{0}")]
    Rejected(FetchError),
    /// No token within the configured wait.
    #[error("no token within {waited:?}{}", last_error.as_ref().map(|e| format!("; last error: {e}")).unwrap_or_default())]
    TimedOut {
        /// How long `spawn` waited.
        waited: Duration,
        /// The last fetch error, if any.
        last_error: Option<FetchError>,
    },
    /// The default cache folder was asked for, but neither `XDG_CACHE_HOME`
    /// nor `HOME` is set.
    #[error("no cache folder: neither XDG_CACHE_HOME nor HOME is set")]
    NoCacheDir,
    /// The driver thread could not be started.
    #[error("could not start the watcher thread: {0}")]
    Thread(#[source] std::io::Error),
}

impl SpawnError {
    /// Whether the authority rejected the client or grant.
    pub fn is_permanent(&self) -> bool {
        matches!(self, SpawnError::Rejected(_))
    }
}

/// Why [`TokenWatcher::changed`] returned without a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChangedError {
    /// The wait ended before the token changed.
    #[error("the token did not change within the wait")]
    TimedOut,
    /// The watcher has stopped: the token will not change again.
    #[error("the watcher has stopped")]
    Stopped,
}

/// Configures a [`TokenWatcher`]. Made by [`TokenWatcher::builder`].
#[derive(Clone)]
pub struct TokenWatcherBuilder {
    source: Source,
    caches: Vec<CacheSpec>,
    default_cache: bool,
    policy: LifetimePolicy,
    jitter: Jitter,
    backoff: BackoffPolicy,
    refresh_now_min_interval: Option<Duration>,
    initial_refresh_token: Option<RefreshToken>,
    http: HttpSettings,
    max_sleep: Duration,
    first_token_timeout: Duration,
    shutdown_grace: Duration,
    seed: Option<u64>,
    on_event: Option<EventHook>,
}

impl fmt::Debug for TokenWatcherBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenWatcherBuilder")
            .field("source", &self.source)
            .field("caches", &self.caches)
            .field("default_cache", &self.default_cache)
            .field("policy", &self.policy)
            .field("jitter", &self.jitter)
            .field("backoff", &self.backoff)
            .field("http", &self.http)
            .field("max_sleep", &self.max_sleep)
            .field("first_token_timeout", &self.first_token_timeout)
            .finish_non_exhaustive()
    }
}

impl TokenWatcherBuilder {
    /// Adds a cache layer; layers are read in the order they are added.
    pub fn cache(mut self, layer: impl CacheLayer) -> Self {
        self.caches.push(CacheSpec::Layer(Arc::new(layer)));
        self
    }

    /// Adds a shared cache layer.
    pub fn cache_arc(mut self, layer: Arc<dyn CacheLayer>) -> Self {
        self.caches.push(CacheSpec::Layer(layer));
        self
    }

    /// Adds a file cache at `path` (locked through `<path>.lock`).
    pub fn file_cache(mut self, path: impl Into<PathBuf>) -> Self {
        self.caches.push(CacheSpec::FileAt(path.into()));
        self
    }

    /// Adds a file cache in `dir`, in a file named after the source's cache
    /// key, so different clients never share a file.
    pub fn file_cache_in(mut self, dir: impl Into<PathBuf>) -> Self {
        self.caches.push(CacheSpec::FileIn(dir.into()));
        self
    }

    /// Adds a file cache in the per-user cache folder
    /// ([`FileLayer::default_dir`](tokenkeeper_fs::FileLayer::default_dir)),
    /// named after the source's cache key. `spawn` fails with
    /// [`SpawnError::NoCacheDir`] when there is no such folder.
    pub fn default_file_cache(mut self) -> Self {
        self.default_cache = true;
        self
    }

    /// Sets the lifetime policy (when tokens go stale).
    pub fn lifetime_policy(mut self, policy: LifetimePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Sets the refresh jitter.
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// Sets the error backoff.
    pub fn backoff(mut self, backoff: BackoffPolicy) -> Self {
        self.backoff = backoff;
        self
    }

    /// The shortest time between two forced refreshes
    /// ([`TokenWatcher::refresh_now`]); the core's default is 10 s.
    pub fn refresh_now_min_interval(mut self, interval: Duration) -> Self {
        self.refresh_now_min_interval = Some(interval);
        self
    }

    /// The refresh token to start from (refresh-token grant). A newer one found
    /// in a cache wins.
    pub fn initial_refresh_token(mut self, token: RefreshToken) -> Self {
        self.initial_refresh_token = Some(token);
        self
    }

    /// Sets the HTTP client's settings.
    pub fn http(mut self, settings: HttpSettings) -> Self {
        self.http = settings;
        self
    }

    /// The longest the driver sleeps without looking at the clock (default
    /// 60 s), so that a suspended machine or a clock step is noticed.
    pub fn max_sleep(mut self, max_sleep: Duration) -> Self {
        self.max_sleep = max_sleep.max(Duration::from_millis(10));
        self
    }

    /// How long [`spawn`](Self::spawn) waits for a first token (default 30 s).
    pub fn first_token_timeout(mut self, timeout: Duration) -> Self {
        self.first_token_timeout = timeout;
        self
    }

    /// How long a shutdown waits for a fetch in flight that spends a refresh
    /// token (default 5 s), so that the rotated token it brings back is kept.
    /// Other fetches in flight are abandoned at once.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Seeds the refresher's jitter and backoff (default: a random seed per
    /// watcher, so that a fleet does not move in lockstep).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Calls `hook` with every event of the refresher (token changes, failed
    /// fetches, cache problems, lease waits), on the driver thread: keep it
    /// short. Tokens in events print as fingerprints.
    pub fn on_event(mut self, hook: impl Fn(&Event) + Send + Sync + 'static) -> Self {
        self.on_event = Some(Arc::new(hook));
        self
    }

    /// Starts the watcher and waits until it holds a first token. Fails at once
    /// when the authority rejects the client or grant, and after
    /// [`first_token_timeout`](Self::first_token_timeout) otherwise; either way
    /// nothing is left running.
    pub fn spawn(self) -> Result<TokenWatcher, SpawnError> {
        let timeout = self.first_token_timeout;
        let watcher = self.start()?;
        let started = Instant::now();
        let deadline = engine::deadline(started, timeout);
        let shared = &watcher.inner.shared;
        let mut state = shared.lock();
        let outcome = loop {
            if shared.token.load().is_some() {
                break Ok(());
            }
            if let Some(error) = &state.rejected {
                break Err(SpawnError::Rejected(error.clone()));
            }
            let left = engine::left(deadline);
            if left.is_zero() || state.stopped {
                break Err(SpawnError::TimedOut {
                    waited: started.elapsed(),
                    last_error: state.status.last_error.clone(),
                });
            }
            state = shared
                .cond
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        };
        let version = state.version;
        drop(state);
        match outcome {
            Ok(()) => {
                watcher.seen.store(version, Ordering::Release);
                Ok(watcher)
            }
            Err(error) => {
                watcher.shutdown();
                Err(error)
            }
        }
    }

    /// Starts the watcher without waiting for a first token: [`TokenWatcher::token`]
    /// is `None` until one arrives ([`TokenWatcher::changed`] tells when).
    pub fn start(self) -> Result<TokenWatcher, SpawnError> {
        let key = self.source.cache_key();
        let mut specs = self.caches.clone();
        if self.default_cache {
            let dir = tokenkeeper_fs::FileLayer::default_dir().ok_or(SpawnError::NoCacheDir)?;
            specs.push(CacheSpec::FileIn(dir));
        }
        let layers: Vec<Arc<dyn CacheLayer>> = specs.iter().map(|s| s.resolve(&key)).collect();
        let mut config = self
            .source
            .refresher_config()
            .lifetime_policy(self.policy.clone())
            .jitter(self.jitter)
            .backoff(self.backoff.clone());
        if let Some(interval) = self.refresh_now_min_interval {
            config = config.refresh_now_min_interval(interval);
        }
        if let Some(token) = &self.initial_refresh_token {
            config = config.initial_refresh_token(token.clone());
        }
        for layer in &layers {
            config = config.layer(layer.layer());
        }
        let seed = self.seed.unwrap_or_else(|| fastrand::u64(..));
        let refresher = Refresher::new(config, seed, now());
        let shared = Arc::new(Shared {
            token: ArcSwapOption::empty(),
            state: Mutex::new(SharedState {
                version: 0,
                status: refresher.status(now()),
                stopped: false,
                rejected: None,
            }),
            cond: Condvar::new(),
        });
        let engine = Engine::new(refresher, layers, self.source.clone());
        let fetcher = Fetcher::new(self.source.clone(), HttpClient::new(&self.http));
        let (tx, rx) = mpsc::channel();
        let driver = Driver {
            engine,
            fetcher,
            rx,
            tx: tx.clone(),
            shared: Arc::clone(&shared),
            hook: self.on_event.clone(),
            max_sleep: self.max_sleep,
            shutdown_grace: self.shutdown_grace,
            in_flight: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name("tokenkeeper-watcher".to_owned())
            .spawn(move || driver.run())
            .map_err(SpawnError::Thread)?;
        Ok(TokenWatcher {
            inner: Arc::new(Inner {
                shared,
                tx: Mutex::new(tx),
                thread: Mutex::new(Some(thread)),
            }),
            seen: AtomicU64::new(0),
        })
    }
}

/// Keeps one OAuth2 access token fresh on a background thread.
///
/// [`token`](Self::token) costs an atomic load and a clock read, never waits
/// and never returns an expired token. Clones share the watcher; the thread
/// ends when [`shutdown`](Self::shutdown) is called or the last clone is
/// dropped (without a further request).
///
/// ```no_run
/// use tokenkeeper_blocking::TokenWatcher;
/// use tokenkeeper_core::oauth2::OAuth2Client;
/// use tokenkeeper_core::{ClientId, ClientSecret};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let client = OAuth2Client::client_credentials(
///     "https://auth.example.com/oauth/token",
///     ClientId::new("my-service"),
///     ClientSecret::new(std::env::var("CLIENT_SECRET")?),
/// )?;
/// let watcher = TokenWatcher::builder(client).default_file_cache().spawn()?;
/// if let Some(token) = watcher.token() {
///     let _header = token.authorization_header_value();
/// }
/// watcher.shutdown();
/// # Ok(())
/// # }
/// ```
pub struct TokenWatcher {
    inner: Arc<Inner>,
    /// The version this handle last reported through `changed`.
    seen: AtomicU64,
}

impl Clone for TokenWatcher {
    fn clone(&self) -> Self {
        TokenWatcher {
            inner: Arc::clone(&self.inner),
            seen: AtomicU64::new(self.seen.load(Ordering::Acquire)),
        }
    }
}

impl fmt::Debug for TokenWatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let token = self.inner.shared.token.load();
        f.debug_struct("TokenWatcher")
            .field(
                "token",
                &token.as_ref().map(|t| t.access_token.fingerprint()),
            )
            .finish_non_exhaustive()
    }
}

impl TokenWatcher {
    /// Starts configuring a watcher for `source` (an [`OAuth2Client`](tokenkeeper_core::oauth2::OAuth2Client)
    /// or a [`Source`]).
    pub fn builder(source: impl Into<Source>) -> TokenWatcherBuilder {
        TokenWatcherBuilder {
            source: source.into(),
            caches: Vec::new(),
            default_cache: false,
            policy: LifetimePolicy::default(),
            jitter: Jitter::default(),
            backoff: BackoffPolicy::default(),
            refresh_now_min_interval: None,
            initial_refresh_token: None,
            http: HttpSettings::default(),
            max_sleep: Duration::from_secs(60),
            first_token_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(5),
            seed: None,
            on_event: None,
        }
    }

    /// The current token, or `None` when none is usable. Never waits, never
    /// locks, never returns an expired token.
    pub fn token(&self) -> Option<Arc<TokenRecord>> {
        let token = self.inner.shared.token.load_full()?;
        token.is_usable_at(now()).then_some(token)
    }

    /// Waits for the token to change (a new token, or the current one expiring
    /// unreplaced) since this handle was made or last returned from `changed`,
    /// for at most `timeout` (`None`: as long as it takes). Returns the token
    /// now current, if usable.
    pub fn changed(
        &self,
        timeout: Option<Duration>,
    ) -> Result<Option<Arc<TokenRecord>>, ChangedError> {
        let shared = &self.inner.shared;
        let deadline = timeout.map(|t| engine::deadline(Instant::now(), t));
        let seen = self.seen.load(Ordering::Acquire);
        let mut state = shared.lock();
        loop {
            if state.version > seen {
                self.seen.store(state.version, Ordering::Release);
                drop(state);
                return Ok(self.token());
            }
            if state.stopped {
                return Err(ChangedError::Stopped);
            }
            state = match deadline {
                None => shared
                    .cond
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(deadline) => {
                    let left = engine::left(deadline);
                    if left.is_zero() {
                        return Err(ChangedError::TimedOut);
                    }
                    shared
                        .cond
                        .wait_timeout(state, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
    }

    /// The refresher's state: the current token's times, the last error, the
    /// consecutive failures and the next planned attempt.
    pub fn status(&self) -> Status {
        let shared = &self.inner.shared;
        let mut status = shared.lock().status.clone();
        let token = shared.token.load();
        let now = now();
        status.token_state = token.as_ref().map(|t| t.state_at(now));
        status
    }

    /// Asks for a token newer than the current one (after a resource server
    /// rejected it, say). Rate-limited; waits only for the driver thread to
    /// take the request, not for the new token ([`changed`](Self::changed)
    /// tells when it arrives).
    pub fn refresh_now(&self) -> RefreshNow {
        let (reply, answer) = mpsc::sync_channel(1);
        if !self.inner.send(Msg::RefreshNow(reply)) {
            return RefreshNow::ShutDown;
        }
        answer.recv().unwrap_or(RefreshNow::ShutDown)
    }

    /// Whether the watcher has stopped.
    pub fn is_stopped(&self) -> bool {
        self.inner.shared.lock().stopped
    }

    /// Stops the watcher (for every clone) and waits until its thread has
    /// ended. Leases are released; a fetch in flight that spends a refresh
    /// token is waited for (up to the shutdown grace) and its token stored.
    pub fn shutdown(self) {
        self.inner.send(Msg::Stop);
        let thread = self
            .inner
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(thread) = thread
            && thread.thread().id() != std::thread::current().id()
            && thread.join().is_err()
        {
            tracing::error!("the tokenkeeper watcher thread panicked");
        }
    }
}

struct Inner {
    shared: Arc<Shared>,
    tx: Mutex<Sender<Msg>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Inner {
    /// Sends to the driver thread; `false` when it has ended.
    fn send(&self, msg: Msg) -> bool {
        self.tx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .send(msg)
            .is_ok()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone: stop without a further request. The thread
        // ends by itself; nobody waits for it.
        self.send(Msg::Stop);
    }
}

/// What the watcher's handles and readers share with the driver thread.
struct Shared {
    token: ArcSwapOption<TokenRecord>,
    state: Mutex<SharedState>,
    cond: Condvar,
}

struct SharedState {
    /// Bumped on every token change (new token or expiry).
    version: u64,
    status: Status,
    stopped: bool,
    /// A permanent error before any token was held.
    rejected: Option<FetchError>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, SharedState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish(&self, event: &Event) {
        match event {
            Event::TokenChanged { token, .. } => {
                self.token.store(Some(Arc::clone(token)));
                let mut state = self.lock();
                state.version += 1;
                state.rejected = None;
                drop(state);
                self.cond.notify_all();
            }
            Event::TokenExpired { .. } => {
                self.token.store(None);
                self.lock().version += 1;
                self.cond.notify_all();
            }
            Event::FetchFailed { error, class, .. }
                if *class == ErrorClass::Permanent && self.token.load().is_none() =>
            {
                self.lock().rejected = Some(error.clone());
                self.cond.notify_all();
            }
            Event::Stopped => {
                self.lock().stopped = true;
                self.cond.notify_all();
            }
            _ => {}
        }
    }
}

enum Msg {
    Answer(Answer),
    RefreshNow(mpsc::SyncSender<RefreshNow>),
    /// A layer's store says someone stored a record.
    CacheChanged(usize),
    Stop,
}

/// The driver thread's state.
struct Driver {
    engine: Engine,
    fetcher: Fetcher,
    rx: Receiver<Msg>,
    tx: Sender<Msg>,
    shared: Arc<Shared>,
    hook: Option<EventHook>,
    max_sleep: Duration,
    shutdown_grace: Duration,
    /// Fetches in flight: their ids, and whether each spends a refresh token.
    in_flight: Vec<(tokenkeeper_core::EffectId, bool)>,
}

impl Driver {
    fn run(mut self) {
        let notify = Mutex::new(self.tx.clone());
        let notify = Arc::new(move |layer: usize| {
            let _ = notify
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .send(Msg::CacheChanged(layer));
        });
        let _subscriptions = self.engine.subscribe(move |layer| notify(layer));
        loop {
            self.drain();
            if self.engine.refresher.is_finished() {
                break;
            }
            let now = now();
            let wait = self
                .engine
                .refresher
                .poll_timeout()
                .map_or(self.max_sleep, |at| {
                    at.duration_since(now).min(self.max_sleep)
                });
            match self.rx.recv_timeout(wait) {
                Ok(Msg::Answer(answer)) => self.answered(answer),
                Ok(Msg::RefreshNow(reply)) => {
                    let outcome = self.engine.refresher.refresh_now(engine::now());
                    tracing::debug!(outcome = ?outcome, "forced refresh asked for");
                    let _ = reply.send(outcome);
                }
                Ok(Msg::CacheChanged(layer)) => {
                    self.engine
                        .refresher
                        .handle_cache_changed(engine::now(), layer);
                }
                Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => self.stop(),
                Err(RecvTimeoutError::Timeout) => {
                    self.engine.refresher.handle_timeout(engine::now());
                }
            }
        }
        // Make sure waiters learn that nothing more will come.
        self.shared.publish(&Event::Stopped);
    }

    /// Carries out effects (fetches on worker threads) and publishes events.
    fn drain(&mut self) {
        let fetcher = &self.fetcher;
        let tx = &self.tx;
        let in_flight = &mut self.in_flight;
        self.engine.drain_effects(&mut |job: FetchJob| {
            in_flight.push((job.id, job.spends_refresh_token));
            spawn_fetch(fetcher, tx, job);
        });
        let events: Vec<Event> =
            std::iter::from_fn(|| self.engine.refresher.poll_event()).collect();
        // The status first: whoever wakes up for a new token sees the status
        // that goes with it.
        let status = self.engine.refresher.status(engine::now());
        self.shared.lock().status = status;
        for event in &events {
            trace_event(&self.engine, event);
            self.shared.publish(event);
            if let Some(hook) = &self.hook {
                hook(event);
            }
        }
    }

    fn answered(&mut self, answer: Answer) {
        let id = match &answer {
            Answer::Http(id, _) | Answer::Grant(id, _) => *id,
        };
        self.in_flight.retain(|(i, _)| *i != id);
        self.engine.feed(answer);
    }

    /// Stops the refresher: first lets a fetch that spends a refresh token
    /// finish (within the grace), so the rotated token is stored.
    fn stop(&mut self) {
        let deadline = engine::deadline(Instant::now(), self.shutdown_grace);
        while self.in_flight.iter().any(|(_, spends)| *spends) {
            match self.rx.recv_timeout(engine::left(deadline)) {
                Ok(Msg::Answer(answer)) => {
                    self.answered(answer);
                    // Store what came back, but start nothing new.
                    self.engine.drain_effects(&mut |_job| {});
                }
                Ok(Msg::RefreshNow(reply)) => {
                    let _ = reply.send(RefreshNow::ShutDown);
                }
                Ok(Msg::Stop | Msg::CacheChanged(_)) => {}
                Err(_) => break,
            }
        }
        self.engine.refresher.shutdown(engine::now());
        // Release the leases; no fetch is started any more.
        self.engine.drain_effects(&mut |_job| {});
    }
}

fn spawn_fetch(fetcher: &Fetcher, tx: &Sender<Msg>, job: FetchJob) {
    let id = job.id;
    let fetcher = fetcher.clone();
    let reply = tx.clone();
    let spawned = std::thread::Builder::new()
        .name("tokenkeeper-fetch".to_owned())
        .spawn(move || {
            let answer = fetcher.run(job);
            // The driver may have stopped meanwhile; then nobody wants it.
            let _ = reply.send(Msg::Answer(answer));
        });
    if let Err(error) = spawned {
        let _ = tx.send(Msg::Answer(Answer::Grant(
            id,
            Err(FetchError::Transport {
                message: format!("could not start a thread for the request: {error}"),
            }),
        )));
    }
}
