//! Configuring and starting a [`TokenWatcher`].

use std::fmt;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokenkeeper_core::{
    BackoffPolicy, CacheKey, FetchError, Jitter, LifetimePolicy, RefreshToken, Refresher,
    RefresherConfig,
};
use tokenkeeper_fs::{FileCache, FileLayer};

use crate::cache::{CacheLayer, FileCacheLayer};
use crate::driver::{Driver, FetchWith, Publisher};
use crate::error::SpawnError;
use crate::http::{HttpClient, HttpSettings};
use crate::runtime::{self, Runtime, timeout};
use crate::source::{Source, SourceKind};
use crate::watcher::{Changes, Cold, Shared, Slot, TokenWatcher, now};

/// Room for commands from handles waiting for the task (refresh_now, shutdown).
const COMMAND_QUEUE: usize = 32;

/// The shortest wake interval accepted: the loop never polls faster.
const MIN_WAKE_INTERVAL: Duration = Duration::from_millis(100);

/// A cache layer as configured; file layers get the watcher's runtime when
/// it starts.
enum LayerSpec {
    Layer(Arc<dyn CacheLayer>),
    File(FileLayer),
}

impl LayerSpec {
    fn resolve<R: Runtime>(self, runtime: &R) -> Arc<dyn CacheLayer> {
        match self {
            LayerSpec::Layer(layer) => layer,
            LayerSpec::File(file) => Arc::new(FileCacheLayer::with_runtime(runtime.clone(), file)),
        }
    }

    fn describe(&self) -> tokenkeeper_core::Layer {
        match self {
            LayerSpec::Layer(layer) => layer.layer(),
            LayerSpec::File(_) => FileLayer::core_layer(),
        }
    }
}

/// Configures a [`TokenWatcher`] that runs on the runtime `R`; made by
/// [`TokenWatcher::builder`] or [`TokenWatcherBuilder::new`].
///
/// Every setting has a default: the lifetime policy, jitter and backoff of
/// `tokenkeeper-core`, no cache layer, [`HttpSettings::default`], a wake-up
/// at least once a minute, and 30 s for the first token.
pub struct TokenWatcherBuilder<R> {
    runtime: R,
    source: SourceKind,
    config: RefresherConfig,
    layers: Vec<LayerSpec>,
    http: HttpSettings,
    wake_interval: Duration,
    first_token_timeout: Duration,
    name: Option<String>,
    seed: Option<u64>,
}

impl<R> fmt::Debug for TokenWatcherBuilder<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenWatcherBuilder")
            .field("config", &self.config)
            .field(
                "layers",
                &self
                    .layers
                    .iter()
                    .map(LayerSpec::describe)
                    .collect::<Vec<_>>(),
            )
            .field("http", &self.http)
            .field("wake_interval", &self.wake_interval)
            .field("first_token_timeout", &self.first_token_timeout)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl<R: Runtime> TokenWatcherBuilder<R> {
    /// A builder for a watcher of `source` running on `runtime`. The
    /// adapters' `TokenWatcher::builder` calls this with their runtime.
    pub fn new(runtime: R, source: impl Into<Source>) -> Self {
        let source = source.into();
        let config = match &source.0 {
            SourceKind::OAuth2(client) => RefresherConfig::oauth2(client.clone()),
            SourceKind::Custom { key, .. } => RefresherConfig::custom(key.clone()),
        };
        TokenWatcherBuilder {
            runtime,
            source: source.0,
            config,
            layers: Vec::new(),
            http: HttpSettings::default(),
            wake_interval: Duration::from_secs(60),
            first_token_timeout: Duration::from_secs(30),
            name: None,
            seed: None,
        }
    }

    /// The runtime the watcher runs on: its task, its layers' work, its
    /// connections and timers.
    pub fn runtime(mut self, runtime: R) -> Self {
        self.runtime = runtime;
        self
    }

    /// When tokens go stale (default: at 75 % of their life, leaving at
    /// least 30 s).
    pub fn lifetime_policy(mut self, policy: LifetimePolicy) -> Self {
        self.config = self.config.lifetime_policy(policy);
        self
    }

    /// How far refreshes are moved earlier at random (default up to 60 s).
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.config = self.config.jitter(jitter);
        self
    }

    /// When to retry after a failure (default 1 s doubling to 5 min, with
    /// full jitter, honouring `Retry-After`).
    pub fn backoff(mut self, backoff: BackoffPolicy) -> Self {
        self.config = self.config.backoff(backoff);
        self
    }

    /// The shortest time between two refreshes forced with
    /// [`TokenWatcher::refresh_now`] (default 10 s).
    pub fn refresh_now_min_interval(mut self, interval: Duration) -> Self {
        self.config = self.config.refresh_now_min_interval(interval);
        self
    }

    /// The refresh token to start from, for the refresh-token grant (or a
    /// custom source that uses one). A newer one found in a cache layer wins;
    /// rotated ones are kept in the cache layers.
    pub fn initial_refresh_token(mut self, token: RefreshToken) -> Self {
        self.config = self.config.initial_refresh_token(token);
        self
    }

    /// Adds a cache layer. Layers are read in the order they are added, and
    /// written after every fetch.
    pub fn cache(mut self, layer: impl CacheLayer) -> Self {
        self.layers.push(LayerSpec::Layer(Arc::new(layer)));
        self
    }

    /// Adds a cache layer that is shared already.
    pub fn cache_arc(mut self, layer: Arc<dyn CacheLayer>) -> Self {
        self.layers.push(LayerSpec::Layer(layer));
        self
    }

    /// Adds a file cache layer in the file at `path`, with a cross-process
    /// lease (the lock file `<path>.lock`). Its file calls run on the
    /// runtime's blocking pool.
    pub fn file_cache(mut self, path: impl Into<PathBuf>) -> Self {
        let layer = FileLayer::new(FileCache::new(path));
        self.layers.push(LayerSpec::File(layer));
        self
    }

    /// Adds a file cache layer in `dir`, in a file named after the cache key,
    /// so that different clients never share a file. See
    /// [`tokenkeeper_fs::FileLayer::default_dir`] for a per-user folder.
    pub fn file_cache_in(mut self, dir: impl AsRef<Path>) -> Self {
        let layer = FileLayer::in_dir(dir, self.config.cache_key());
        self.layers.push(LayerSpec::File(layer));
        self
    }

    /// HTTP client settings: timeouts, trusted roots, user agent.
    pub fn http(mut self, settings: HttpSettings) -> Self {
        self.http = settings;
        self
    }

    /// The longest the background task sleeps before it looks at the clock
    /// again (default 60 s, at least 100 ms), so a suspended machine or a
    /// clock step is noticed. Otherwise it sleeps until the refresher's next
    /// deadline.
    pub fn wake_interval(mut self, interval: Duration) -> Self {
        self.wake_interval = interval.max(MIN_WAKE_INTERVAL);
        self
    }

    /// How long [`spawn`](Self::spawn) waits for a first token (default 30 s),
    /// retrying with backoff meanwhile. A permanent error ends the wait at once.
    pub fn first_token_timeout(mut self, timeout: Duration) -> Self {
        self.first_token_timeout = timeout;
        self
    }

    /// A name for the watcher's logs (default: the client id, or `custom`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Seeds the refresher's jitter and backoff (default: a random seed per
    /// watcher, so that a fleet spreads out). For reproducible tests only.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The key under which tokens are cached: build custom
    /// [`CacheLayer`]s for it.
    pub fn cache_key(&self) -> &CacheKey {
        self.config.cache_key()
    }

    /// Starts the watcher and waits until it holds a first token (from a cache
    /// layer or the source), retrying with backoff for up to
    /// [`first_token_timeout`](Self::first_token_timeout).
    ///
    /// Fails at once with [`SpawnError::Rejected`] when the source refuses for
    /// good (`invalid_client`, say), and with [`SpawnError::TimedOut`] (carrying
    /// the last error) when the wait runs out. Either way the watcher is
    /// stopped and makes no further request.
    pub async fn spawn(self) -> Result<TokenWatcher<R>, SpawnError> {
        let waited = self.first_token_timeout;
        let (watcher, first, runtime) = self.launch()?;
        let error = match timeout(&runtime, waited, first.recv()).await {
            Some(Ok(Ok(()))) => return Ok(watcher),
            Some(Ok(Err(error))) => SpawnError::Rejected { error },
            Some(Err(_)) => SpawnError::Stopped,
            None => SpawnError::TimedOut {
                waited,
                last_error: watcher.status().last_error,
            },
        };
        tracing::warn!(name = %watcher.name(), %error, "the token watcher did not start");
        watcher.shutdown().await;
        Err(error)
    }

    /// Starts the watcher without waiting for a token: [`TokenWatcher::token`]
    /// answers [`TokenError::Unavailable`](crate::TokenError::Unavailable)
    /// until one arrives, and [`TokenWatcher::changed`] waits for it. For
    /// services that must start while the authority is unreachable.
    ///
    /// Fails with [`SpawnError::NoRuntime`] when the runtime cannot start a
    /// task from here (tokio: outside a tokio runtime).
    pub fn start(self) -> Result<TokenWatcher<R>, SpawnError> {
        self.launch().map(|(watcher, _, _)| watcher)
    }

    #[allow(clippy::type_complexity)]
    fn launch(
        self,
    ) -> Result<
        (
            TokenWatcher<R>,
            async_channel::Receiver<Result<(), FetchError>>,
            R,
        ),
        SpawnError,
    > {
        let TokenWatcherBuilder {
            runtime,
            source,
            mut config,
            layers,
            http,
            wake_interval,
            first_token_timeout: _,
            name,
            seed,
        } = self;
        let runtime = runtime.bind().ok_or(SpawnError::NoRuntime)?;
        let layers: Vec<Arc<dyn CacheLayer>> =
            layers.into_iter().map(|l| l.resolve(&runtime)).collect();
        for layer in &layers {
            config = config.layer(layer.layer());
        }
        let key = config.cache_key().clone();
        let fetch = match source {
            SourceKind::OAuth2(client) => FetchWith::Http {
                client: Box::new(HttpClient::new(runtime.clone(), &http)?),
                limit: client.body_limit(),
                grant: client.grant().as_str(),
            },
            SourceKind::Custom { source, .. } => FetchWith::Custom {
                source,
                timeout: http.request_timeout,
            },
        };
        let name = name.unwrap_or_else(|| match config.source() {
            tokenkeeper_core::Source::OAuth2(client) => client.client_id().to_string(),
            _ => "custom".to_owned(),
        });

        let start = now();
        let refresher = Refresher::new(config, seed.unwrap_or_else(|| fastrand::u64(..)), start);
        let (commands_tx, commands_rx) = async_channel::bounded(COMMAND_QUEUE);
        let (first_tx, first_rx) = async_channel::bounded(1);
        let shared = Arc::new(Shared {
            current: Slot::empty(),
            cold: Mutex::new(Cold {
                status: refresher.status(start),
                expired_at: None,
            }),
            changes: Changes::default(),
            stopped: AtomicBool::new(false),
            key,
            name,
        });
        let publisher = Publisher::new(Arc::clone(&shared), first_tx);
        let driver = Driver::new(
            runtime.clone(),
            refresher,
            fetch,
            layers,
            publisher,
            commands_rx,
            wake_interval,
        );
        // The driver's own task is never aborted: it ends by itself once
        // stopped, or with its runtime.
        drop(runtime::spawn(&runtime, "watcher", driver.run()));
        Ok((
            TokenWatcher {
                shared,
                commands: commands_tx,
                runtime: PhantomData,
            },
            first_rx,
            runtime,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::testing::Threads;
    use tokenkeeper_core::oauth2::OAuth2Client;
    use tokenkeeper_core::{ClientId, ClientSecret};

    fn assert_send<T: Send>(_: &T) {}

    fn client() -> OAuth2Client {
        OAuth2Client::client_credentials(
            "http://127.0.0.1:9/token",
            ClientId::new("c"),
            ClientSecret::new("s"),
        )
        .unwrap()
    }

    /// Async applications spawn these futures on multi-threaded executors.
    #[test]
    fn the_futures_of_the_api_are_send() {
        let spawn = TokenWatcher::<Threads>::builder(client()).spawn();
        assert_send(&spawn);
        drop(spawn);
        let watcher = TokenWatcherBuilder::new(Threads, client()).start().unwrap();
        assert_send(&watcher);
        assert_send(&watcher.changed());
        assert_send(&watcher.refresh_now());
        assert_send(&watcher.shutdown());
        let record = tokenkeeper_core::LifetimePolicy::default().record(
            tokenkeeper_core::TokenGrant::bearer(
                tokenkeeper_core::AccessToken::new("t"),
                Some(Duration::from_secs(1)),
            ),
            now(),
            None,
        );
        assert_send(&watcher.changed_from(&record));
        futures_lite::future::block_on(watcher.shutdown());
        assert!(watcher.is_stopped());
    }

    #[test]
    fn settings_are_kept_and_shown_without_secrets() {
        let builder = TokenWatcherBuilder::new(Threads, client())
            .wake_interval(Duration::from_millis(1))
            .first_token_timeout(Duration::from_secs(3))
            .name("named")
            .file_cache("/nonexistent/cache.json");
        assert_eq!(builder.wake_interval, MIN_WAKE_INTERVAL);
        let shown = format!("{builder:?}");
        assert!(shown.contains("named") && shown.contains("file"), "{shown}");
        assert!(!shown.contains("\"s\""), "{shown}");
    }
}
