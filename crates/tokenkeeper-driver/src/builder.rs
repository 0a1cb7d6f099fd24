//! Configuring and starting a [`TokenWatcher`]: the one settings struct of
//! every adapter.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokenkeeper_core::{
    BackoffPolicy, CacheKey, Event, Jitter, LifetimePolicy, RefreshToken, Refresher,
    RefresherConfig,
};
use tokenkeeper_fs::{FileCache, FileLayer};

use crate::cache::{AnyLayer, BlockingCacheLayer, CacheLayer};
use crate::dpop::DpopKey;
use crate::driver::{FetchWith, FirstTurn, KeyParts, NewRefresher};
use crate::error::SpawnError;
use crate::http::{HttpSettings, HttpSetupError};
use crate::publish::{EventHook, Publisher};
use crate::runtime::{Runtime, Waited, timeout, wait};
use crate::shared::{Commands, First, Shared, now};
use crate::source::{Source, SourceKind};
use crate::watcher::TokenWatcher;
use futures_lite::FutureExt;

/// The shortest wake interval accepted: the loop never polls faster.
pub const MIN_WAKE_INTERVAL: Duration = Duration::from_millis(10);

/// How long a custom source's answer (or an HTTP exchange) may take past its
/// own timeout before the refresher gives up on it: the exchange should
/// always answer first.
const FETCH_DEADLINE_MARGIN: Duration = Duration::from_secs(5);

impl<R: Runtime + Default> TokenWatcher<R> {
    /// Starts building a watcher for `source`: an
    /// [`OAuth2Client`](tokenkeeper_core::oauth2::OAuth2Client), or a
    /// [`Source`] of your own. It runs on `R::default()` unless
    /// [`TokenWatcherBuilder::runtime`] says otherwise.
    pub fn builder(source: impl Into<Source>) -> TokenWatcherBuilder<R> {
        TokenWatcherBuilder::new(R::default(), source)
    }
}

/// A cache layer as configured; file layers in a folder get their file name
/// from the cache key when the watcher starts.
#[derive(Clone)]
enum LayerSpec {
    Layer(AnyLayer),
    FileIn(PathBuf),
    DefaultFile,
}

impl LayerSpec {
    fn describe(&self) -> String {
        match self {
            LayerSpec::Layer(layer) => layer.layer().name().to_owned(),
            LayerSpec::FileIn(dir) => format!("file in {}", dir.display()),
            LayerSpec::DefaultFile => "file in the default folder".to_owned(),
        }
    }

    fn resolve(self, key: &CacheKey) -> Result<AnyLayer, SpawnError> {
        Ok(match self {
            LayerSpec::Layer(layer) => layer,
            LayerSpec::FileIn(dir) => AnyLayer::Blocking(Arc::new(FileLayer::in_dir(dir, key))),
            LayerSpec::DefaultFile => {
                let dir = FileLayer::default_dir().ok_or(SpawnError::NoCacheDir)?;
                AnyLayer::Blocking(Arc::new(FileLayer::in_dir(dir, key)))
            }
        })
    }
}

/// Configures a [`TokenWatcher`] that runs on the runtime `R`; made by
/// [`TokenWatcher::builder`] or [`TokenWatcherBuilder::new`]. The same
/// builder, with the same names and meanings, in every adapter.
///
/// Every setting has a default: the lifetime policy, jitter and backoff of
/// `tokenkeeper-core`, no cache layer, [`HttpSettings::default`], a wake-up
/// at least once a minute, 30 s for the first token, 5 s of shutdown grace.
pub struct TokenWatcherBuilder<R> {
    runtime: R,
    source: Source,
    config: RefresherConfig,
    layers: Vec<LayerSpec>,
    http: HttpSettings,
    wake_interval: Duration,
    first_token_timeout: Duration,
    name: Option<String>,
    seed: Option<u64>,
    on_event: Option<EventHook>,
    dpop: Option<DpopKey>,
}

impl<R> fmt::Debug for TokenWatcherBuilder<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenWatcherBuilder")
            .field("source", &self.source)
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
            .field("on_event", &self.on_event.is_some())
            .field("dpop", &self.dpop)
            .finish_non_exhaustive()
    }
}

impl<R: Runtime> TokenWatcherBuilder<R> {
    /// A builder for a watcher of `source` running on `runtime`. The
    /// adapters' `TokenWatcher::builder` calls this with their runtime.
    pub fn new(runtime: R, source: impl Into<Source>) -> Self {
        let source = source.into();
        TokenWatcherBuilder {
            runtime,
            config: source.refresher_config(),
            source,
            layers: Vec::new(),
            http: HttpSettings::default(),
            wake_interval: Duration::from_secs(60),
            first_token_timeout: Duration::from_secs(30),
            name: None,
            seed: None,
            on_event: None,
            dpop: None,
        }
    }

    /// The runtime the watcher runs on: its driver, its layers' work, its
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

    /// Adds an async cache layer (Redis, say). Layers are read in the order
    /// they are added, and written after every fetch. Async layers need an
    /// async runtime; on the thread adapter use
    /// [`blocking_cache`](Self::blocking_cache).
    pub fn cache(mut self, layer: impl CacheLayer) -> Self {
        self.layers
            .push(LayerSpec::Layer(AnyLayer::Async(Arc::new(layer))));
        self
    }

    /// Adds an async cache layer that is shared already.
    pub fn cache_arc(mut self, layer: Arc<dyn CacheLayer>) -> Self {
        self.layers.push(LayerSpec::Layer(AnyLayer::Async(layer)));
        self
    }

    /// Adds a cache layer whose calls block; they run where blocking is
    /// allowed (the runtime's blocking pool, or a thread).
    pub fn blocking_cache(mut self, layer: impl BlockingCacheLayer) -> Self {
        self.layers
            .push(LayerSpec::Layer(AnyLayer::Blocking(Arc::new(layer))));
        self
    }

    /// Adds a blocking cache layer that is shared already.
    pub fn blocking_cache_arc(mut self, layer: Arc<dyn BlockingCacheLayer>) -> Self {
        self.layers
            .push(LayerSpec::Layer(AnyLayer::Blocking(layer)));
        self
    }

    /// Adds a file cache layer in the file at `path`, with a cross-process
    /// lease (the lock file `<path>.lock`).
    pub fn file_cache(self, path: impl Into<PathBuf>) -> Self {
        self.blocking_cache(FileLayer::new(FileCache::new(path)))
    }

    /// Adds a file cache layer in `dir`, in a file named after the cache key,
    /// so that different clients never share a file.
    pub fn file_cache_in(mut self, dir: impl AsRef<Path>) -> Self {
        self.layers
            .push(LayerSpec::FileIn(dir.as_ref().to_path_buf()));
        self
    }

    /// Adds a file cache layer in the user's cache folder
    /// ([`FileLayer::default_dir`]: `$XDG_CACHE_HOME/tokenkeeper` or
    /// `~/.cache/tokenkeeper`), named after the cache key. Starting fails with
    /// [`SpawnError::NoCacheDir`] when there is no such folder.
    pub fn default_file_cache(mut self) -> Self {
        self.layers.push(LayerSpec::DefaultFile);
        self
    }

    /// HTTP client settings: timeouts, trusted roots, user agent.
    pub fn http(mut self, settings: HttpSettings) -> Self {
        self.http = settings;
        self
    }

    /// The longest the driver sleeps before it looks at the clock again
    /// (default 60 s, at least 10 ms), so a suspended machine or a clock step
    /// is noticed. Otherwise it sleeps until the refresher's next deadline.
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

    /// How long a stopping watcher lets a request that spends a refresh
    /// token finish, so that the rotated token it brings is stored (default
    /// 5 s). Other requests are abandoned at once.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.config = self.config.shutdown_grace(grace);
        self
    }

    /// A name for the watcher's logs (default: the client id, or `custom`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Asks for DPoP-bound tokens (RFC 9449), proving possession of `key`:
    /// each token request carries a proof signed with it (the server's
    /// nonce is followed), tokens are cached under a key that includes its
    /// thumbprint, and [`TokenWatcher::dpop_key`](crate::TokenWatcher::dpop_key)
    /// gives it to middleware, which signs a proof for each resource request.
    /// For an OAuth2 source only.
    pub fn dpop(mut self, key: DpopKey) -> Self {
        // Bound now, so that cache_key() already names the key's thumbprint
        // (a custom layer built for it must not hold bearer tokens).
        self.config = self.config.bound_to_dpop_key(key.thumbprint());
        self.dpop = Some(key);
        self
    }

    /// Seeds the refresher's jitter and backoff (default: a random seed per
    /// watcher, so that a fleet spreads out). For reproducible tests only.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Calls `hook` with every event of the refresher (a new token, a failed
    /// fetch, a cache problem, ...), on the driver, before the event is
    /// published. Keep it short; a hook that panics is logged and ignored.
    pub fn on_event(mut self, hook: impl Fn(&Event) + Send + Sync + 'static) -> Self {
        self.on_event = Some(Arc::new(hook));
        self
    }

    /// Adds `hook` after the one already set, if any.
    pub(crate) fn also_on_event(mut self, hook: impl Fn(&Event) + Send + Sync + 'static) -> Self {
        let first = self.on_event.take();
        self.on_event = Some(Arc::new(move |event: &Event| {
            if let Some(first) = &first {
                first(event);
            }
            hook(event);
        }));
        self
    }

    /// The key under which tokens are cached: build custom cache layers for
    /// it.
    pub fn cache_key(&self) -> &CacheKey {
        self.config.cache_key()
    }

    /// Starts the watcher and waits until it holds a first token (from a cache
    /// layer or the source), retrying with backoff for up to
    /// [`first_token_timeout`](Self::first_token_timeout).
    ///
    /// Fails at once with [`SpawnError::Rejected`] when the source refuses for
    /// good (`invalid_client`, say), with [`SpawnError::Misconfigured`] when
    /// the endpoint's certificate cannot be verified or the URL is not a
    /// token endpoint, and with [`SpawnError::TimedOut`] (carrying
    /// the last error) when the wait runs out. Either way the watcher is
    /// stopped and makes no further request.
    ///
    /// A custom source without cache layers is asked first on the
    /// caller's thread: when it answers at once (a token it holds, one made
    /// in memory), the watcher is returned with it, and the driver its
    /// runtime's watchers share takes the key in on its own thread, woken
    /// for it only if the key's refresh comes before the driver would wake
    /// anyway (or every 256 such keys). Otherwise, while it waits, the
    /// future drives that driver on the caller's thread, so a token that
    /// comes at once costs no hand-off between threads. The event hook
    /// may be called on either.
    pub fn spawn(self) -> Waited<'static, R, Result<TokenWatcher<R>, SpawnError>> {
        let waited = self.first_token_timeout;
        // Started when first polled, as an `async fn` would be: the runtime
        // is bound where the future runs (tokio: `rt.block_on(b.spawn())`).
        wait::<R, _>(async move {
            let (watcher, driving) = self.launch(true)?;
            // The caller's own first turn brought the token: the driver
            // takes the key in on its own thread.
            if driving.is_none() && watcher.shared().current().is_some() {
                return Ok(watcher);
            }
            // The caller drives the driver too while it waits (see
            // `hub::Running`); the driver's own task goes on when it stops.
            // Driven first: a token that comes in the caller's own turn is
            // then there at the first look, with no listener made for it.
            let drive = async {
                if let Some(driving) = driving {
                    driving.await;
                }
                std::future::pending().await
            };
            let first = watcher.shared().first_token();
            let outcome = timeout(watcher.runtime(), waited, drive.or(first)).await;
            let error = match outcome {
                Some(First::Token) => return Ok(watcher),
                Some(First::Refused(error)) => SpawnError::permanent(error),
                Some(First::Stopped) => SpawnError::Stopped,
                None => SpawnError::TimedOut {
                    waited,
                    last_error: watcher.status().last_error,
                },
            };
            tracing::warn!(name = %watcher.name(), %error, "the token watcher did not start");
            watcher.stop_async().await;
            Err(error)
        })
    }

    /// Starts the watcher without waiting for a token: [`TokenWatcher::token`]
    /// answers [`TokenError::Unavailable`](crate::TokenError::Unavailable)
    /// until one arrives, and [`TokenWatcher::changed`] waits for it. For
    /// services that must start while the authority is unreachable.
    ///
    /// Fails with [`SpawnError::NoRuntime`] when the runtime cannot start a
    /// driver from here (tokio: outside a tokio runtime).
    pub fn start(self) -> Result<TokenWatcher<R>, SpawnError> {
        self.launch(false).map(|(watcher, _)| watcher)
    }

    /// Hands the watcher's key to its runtime's watchers' driver
    /// ([`hub`](crate::hub)); returns its handle, and the driver for a
    /// `spawn` to drive while it waits. A `spawn` (`first`) takes the key's
    /// first turn itself ([`first_turn`](crate::driver::first_turn)) and
    /// needs the driver only if that brought no token.
    fn launch(
        self,
        first: bool,
    ) -> Result<(TokenWatcher<R>, Option<crate::hub::Driving>), SpawnError> {
        let TokenWatcherBuilder {
            runtime,
            source,
            config,
            layers,
            http,
            wake_interval,
            first_token_timeout: _,
            name,
            seed,
            on_event,
            dpop,
        } = self;
        let runtime = runtime.bind().ok_or(SpawnError::NoRuntime)?;
        let thumbprint = match source.oauth2_client() {
            Some(_) => http.client_certificate_thumbprint()?,
            None => None,
        };
        let settings = KeySettings {
            thumbprint: thumbprint.as_deref(),
            dpop: dpop.as_ref(),
            request_timeout: http.get_request_timeout(),
        };
        let config = bind_key(config, &settings)?;
        let key = config.cache_key().clone();
        let layers = layers
            .into_iter()
            .map(|spec| spec.resolve(&key))
            .collect::<Result<Vec<_>, _>>()?;
        let (config, fetch) = prepare_key(&source, config, &settings, &layers, || {
            runtime.exchange(&http)
        })?;
        let name: Arc<str> = match (name, source.oauth2_client()) {
            (Some(name), _) => name.into(),
            (None, Some(client)) => client.client_id().to_string().into(),
            // One copy for every unnamed custom source's watcher.
            (None, None) => {
                static CUSTOM: OnceLock<Arc<str>> = OnceLock::new();
                Arc::clone(CUSTOM.get_or_init(|| "custom".into()))
            }
        };
        let layer_names = layers.iter().map(|l| l.layer().name().to_owned()).collect();

        let start = now();
        let mut refresher =
            Refresher::new(config, seed.unwrap_or_else(|| fastrand::u64(..)), start);
        let status = refresher.status(start);
        let id = crate::hub::key_id();
        let shared = Arc::new(Shared::new(id, key, name, layer_names, Some(status), dpop));
        let mut publisher = Publisher::new(Arc::clone(&shared), on_event);
        let turn = if first && layers.is_empty() {
            crate::driver::first_turn(&runtime, start, &mut refresher, &fetch, &mut publisher)
        } else {
            FirstTurn::Left
        };
        // A `spawn` drives the driver while it waits for a first token, and
        // only then: one the first turn brought needs no driving.
        let (fetching, needs_driver_by, drive) = match turn {
            FirstTurn::Answered { needs_driver_by } if shared.current().is_some() => {
                (None, needs_driver_by, false)
            }
            FirstTurn::Answered { .. } | FirstTurn::Left => (None, None, first),
            FirstTurn::Waiting(id, fetch) => (Some((id, fetch)), None, first),
        };
        let parts = KeyParts {
            id,
            refresher: NewRefresher::Built(Box::new(refresher)),
            fetch,
            layers,
            publisher,
            forget: None,
            fetching,
        };
        let joined = crate::hub::join(&runtime, wake_interval, parts, drive, needs_driver_by);
        let commands = Commands::new(joined.requests, shared.id());
        Ok((TokenWatcher::new(shared, commands, runtime), joined.driving))
    }

    /// Authenticates the client with this JWT assertion (RFC 7523 §2.2):
    /// [`Assertion::signed`](crate::assertion::Assertion::signed) with a
    /// private key for a client whose auth method is
    /// [`PrivateKeyJwt`](tokenkeeper_core::oauth2::AuthMethod::PrivateKeyJwt)
    /// (or an HMAC key for
    /// [`ClientSecretJwt`](tokenkeeper_core::oauth2::AuthMethod::ClientSecretJwt),
    /// which otherwise signs with the client secret by itself), or an
    /// assertion made elsewhere. See [`Source::client_assertion`]; an
    /// assertion that does not fit the client fails the start with
    /// [`SpawnError::Assertion`].
    pub fn client_assertion(mut self, assertion: crate::assertion::Assertion) -> Self {
        self.source = self.source.client_assertion(assertion);
        self
    }

    /// Authenticates the client with the assertion in the file at `path`,
    /// read again before every token request (a Kubernetes projected
    /// service-account token, which the kubelet replaces underneath): see
    /// [`Assertion::file`](crate::assertion::Assertion::file).
    pub fn client_assertion_file(self, path: impl Into<PathBuf>) -> Self {
        self.client_assertion(crate::assertion::Assertion::file(path))
    }

    /// Authenticates the client with the assertion `callback` gives before
    /// every token request: see
    /// [`Assertion::from_fn`](crate::assertion::Assertion::from_fn).
    pub fn client_assertion_fn(
        self,
        callback: impl Fn() -> Result<String, crate::assertion::AssertionError> + Send + Sync + 'static,
    ) -> Self {
        self.client_assertion(crate::assertion::Assertion::from_fn(callback))
    }

    /// The assertion of the JWT bearer grant (RFC 7523 §2.1), for an
    /// [`OAuth2Client::jwt_bearer`](tokenkeeper_core::oauth2::OAuth2Client::jwt_bearer)
    /// client: see [`Source::grant_assertion`].
    pub fn grant_assertion(mut self, assertion: crate::assertion::Assertion) -> Self {
        self.source = self.source.grant_assertion(assertion);
        self
    }

    /// Where a token exchange's subject token comes from (RFC 8693): see
    /// [`Source::subject_token`] and [`token_exchange`](crate::token_exchange). A
    /// token exchange client without one fails the start with
    /// [`SpawnError::Assertion`].
    pub fn subject_token(mut self, token: crate::token_exchange::ExchangeToken) -> Self {
        self.source = self.source.subject_token(token);
        self.follow_exchange_labels()
    }

    /// The source labels the exchange's tokens (part of the cache key): the
    /// configuration, made from the client before, follows.
    fn follow_exchange_labels(mut self) -> Self {
        if let Some(exchange) = self
            .source
            .oauth2_client()
            .and_then(|client| client.get_token_exchange())
        {
            self.config = self.config.with_token_exchange(exchange.clone());
        }
        self
    }

    /// The subject token is in the file at `path`, read again before every
    /// request: see [`ExchangeToken::file`](crate::token_exchange::ExchangeToken::file).
    pub fn subject_token_file(self, path: impl Into<PathBuf>) -> Self {
        self.subject_token(crate::token_exchange::ExchangeToken::file(path))
    }

    /// The subject token is what `callback` gives before every request;
    /// `label` names it in cache keys: see
    /// [`ExchangeToken::from_fn`](crate::token_exchange::ExchangeToken::from_fn).
    pub fn subject_token_fn(
        self,
        label: impl Into<String>,
        callback: impl Fn() -> Result<String, crate::assertion::AssertionError> + Send + Sync + 'static,
    ) -> Self {
        self.subject_token(crate::token_exchange::ExchangeToken::from_fn(
            label, callback,
        ))
    }

    /// The subject token is `upstream`'s current token (a chain): see
    /// [`ExchangeToken::watcher`](crate::token_exchange::ExchangeToken::watcher).
    pub fn subject_token_from<U: Runtime>(self, upstream: &TokenWatcher<U>) -> Self {
        self.subject_token(crate::token_exchange::ExchangeToken::watcher(upstream))
    }

    /// Where a token exchange's actor token comes from: see
    /// [`Source::actor_token`].
    pub fn actor_token(mut self, token: crate::token_exchange::ExchangeToken) -> Self {
        self.source = self.source.actor_token(token);
        self.follow_exchange_labels()
    }

    /// The actor token is in the file at `path`, read again before every
    /// request.
    pub fn actor_token_file(self, path: impl Into<PathBuf>) -> Self {
        self.actor_token(crate::token_exchange::ExchangeToken::file(path))
    }

    /// The actor token is what `callback` gives before every request.
    pub fn actor_token_fn(
        self,
        label: impl Into<String>,
        callback: impl Fn() -> Result<String, crate::assertion::AssertionError> + Send + Sync + 'static,
    ) -> Self {
        self.actor_token(crate::token_exchange::ExchangeToken::from_fn(
            label, callback,
        ))
    }

    /// The actor token is `upstream`'s current token.
    pub fn actor_token_from<U: Runtime>(self, upstream: &TokenWatcher<U>) -> Self {
        self.actor_token(crate::token_exchange::ExchangeToken::watcher(upstream))
    }
}

/// What a device login needs of a builder: exactly what a watcher built from
/// it would use (the runtime, the source and its assertions, the refresher
/// configuration with its final cache key, the resolved cache layers, the
/// HTTP settings), so that the record a login writes is the one the watcher
/// reads.
pub(crate) struct LoginParts<R> {
    pub(crate) runtime: R,
    pub(crate) source: Source,
    pub(crate) config: RefresherConfig,
    pub(crate) layers: Vec<AnyLayer>,
    pub(crate) http: HttpSettings,
    pub(crate) dpop: bool,
    pub(crate) name: Option<String>,
}

impl<R: Runtime> TokenWatcherBuilder<R> {
    /// Takes the builder apart for a device login ([`LoginParts`]), binding
    /// the key and resolving the layers as [`start`](Self::start) does.
    pub(crate) fn login_parts(self) -> Result<LoginParts<R>, SpawnError> {
        let runtime = self.runtime.bind().ok_or(SpawnError::NoRuntime)?;
        let thumbprint = match self.source.oauth2_client() {
            Some(_) => self.http.client_certificate_thumbprint()?,
            None => None,
        };
        let settings = KeySettings {
            thumbprint: thumbprint.as_deref(),
            dpop: self.dpop.as_ref(),
            request_timeout: self.http.get_request_timeout(),
        };
        let config = bind_key(self.config, &settings)?;
        let key = config.cache_key().clone();
        let layers = self
            .layers
            .into_iter()
            .map(|spec| spec.resolve(&key))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(LoginParts {
            runtime,
            source: self.source,
            config,
            layers,
            http: self.http,
            dpop: self.dpop.is_some(),
            name: self.name,
        })
    }
}

/// How long the refresher waits for a fetch whose HTTP exchange times out
/// after `request_timeout`.
pub(crate) fn fetch_deadline(request_timeout: Duration) -> Duration {
    request_timeout.saturating_add(FETCH_DEADLINE_MARGIN)
}

/// The tuning of a key built with every default: one copy for all such
/// watchers of the process, rather than one each (a pool's keys share their
/// pool's).
fn default_tuning() -> &'static RefresherConfig {
    static DEFAULT: std::sync::OnceLock<RefresherConfig> = std::sync::OnceLock::new();
    DEFAULT.get_or_init(|| {
        RefresherConfig::custom(CacheKey::custom("tokenkeeper-default-tuning", &[])).fetch_timeout(
            fetch_deadline(HttpSettings::default().get_request_timeout()),
        )
    })
}

/// What every key of a watcher or pool shares, for [`prepare_key`].
pub(crate) struct KeySettings<'a> {
    /// The client certificate's thumbprint, when there is one.
    pub(crate) thumbprint: Option<&'a str>,
    pub(crate) dpop: Option<&'a DpopKey>,
    pub(crate) request_timeout: Duration,
}

/// Binds a key's configuration to what its tokens are bound to: the client
/// certificate (RFC 8705) and the DPoP key (checked here, bound by the
/// builder). Its cache key is final after this. Written once for watchers
/// and pools.
pub(crate) fn bind_key(
    mut config: RefresherConfig,
    settings: &KeySettings<'_>,
) -> Result<RefresherConfig, SpawnError> {
    // Tokens may be bound to the client certificate (RFC 8705): its
    // thumbprint is part of the key and kept in the records.
    if let Some(client) = config.oauth2_client() {
        match settings.thumbprint {
            Some(thumbprint) => config = config.bound_to_certificate(thumbprint),
            None if client.get_auth_method().uses_client_certificate() => {
                return Err(SpawnError::Http(HttpSetupError::new(format!(
                    "the client authenticates with {}, which needs a client certificate: set one with HttpSettings::client_certificate_files",
                    client.get_auth_method().as_str()
                ))));
            }
            None => {}
        }
    }
    if settings.dpop.is_some() && config.oauth2_client().is_none() {
        return Err(SpawnError::Http(HttpSetupError::new(
            "DPoP is for OAuth2 sources: a custom source signs its own requests",
        )));
    }
    Ok(config)
}

/// Completes a key's refresher configuration (its cache layers, the fetch
/// deadline) and says how its fetches are carried out; `exchange` is asked
/// for the HTTP exchange only for OAuth2 sources.
pub(crate) fn prepare_key(
    source: &Source,
    mut config: RefresherConfig,
    settings: &KeySettings<'_>,
    layers: &[AnyLayer],
    exchange: impl FnOnce() -> Result<crate::http::SharedExchange, HttpSetupError>,
) -> Result<(RefresherConfig, FetchWith), SpawnError> {
    for layer in layers {
        config = config.layer(layer.layer());
    }
    let request_timeout = settings.request_timeout;
    config = config.fetch_timeout_shared_with(fetch_deadline(request_timeout), default_tuning());
    let fetch = match &source.0 {
        SourceKind::OAuth2(client) => FetchWith::Http {
            exchange: exchange()?,
            dpop: settings.dpop.cloned(),
            grant: client.grant().as_str(),
            url: client.token_url().redacted().into(),
            assertions: source
                .1
                .for_client(client)
                .map_err(|e| SpawnError::Assertion { error: e.into() })?
                .boxed(),
        },
        other => FetchWith::Source {
            source: other.clone(),
            timeout: request_timeout,
        },
    };
    Ok((config, fetch))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::testing::Threads;
    use tokenkeeper_core::oauth2::OAuth2Client;
    use tokenkeeper_core::{ClientId, ClientSecret};

    fn client() -> OAuth2Client {
        OAuth2Client::client_credentials(
            "http://127.0.0.1:9/token",
            ClientId::new("c"),
            ClientSecret::new("s3cr3t-value"),
        )
        .unwrap()
    }

    #[test]
    fn settings_are_kept_and_shown_without_secrets() {
        let builder = TokenWatcherBuilder::new(Threads, client())
            .wake_interval(Duration::from_millis(1))
            .first_token_timeout(Duration::from_secs(3))
            .name("named")
            .on_event(|_| {})
            .file_cache("/nonexistent/cache.json");
        assert_eq!(builder.wake_interval, MIN_WAKE_INTERVAL);
        let shown = format!("{builder:?}");
        assert!(shown.contains("named") && shown.contains("file"), "{shown}");
        assert!(!shown.contains("s3cr3t-value"), "{shown}");
    }
}
