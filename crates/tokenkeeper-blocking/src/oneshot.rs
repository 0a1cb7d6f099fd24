//! A token now, for programs that run and exit: [`get_token`].

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokenkeeper_core::{
    BackoffPolicy, CacheProblem, Event, FetchError, Jitter, LifetimePolicy, Origin, RefreshNow,
    RefreshToken, Refresher, TokenRecord, TokenState,
};

use crate::cache::{CacheLayer, CacheSpec};
use crate::engine::{Engine, Fetcher, now, trace_event};
use crate::http::{HttpClient, HttpSettings};
use crate::source::Source;

/// What [`get_token`] does: where the token comes from, which caches it
/// shares, how much validity is enough, and how long it may take.
///
/// ```no_run
/// use std::time::Duration;
/// use tokenkeeper_blocking::{GetTokenConfig, get_token};
/// use tokenkeeper_core::oauth2::OAuth2Client;
/// use tokenkeeper_core::{ClientId, ClientSecret};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let client = OAuth2Client::client_credentials(
///     "https://auth.example.com/oauth/token",
///     ClientId::new("my-service"),
///     ClientSecret::new(std::env::var("CLIENT_SECRET")?),
/// )?;
/// let config = GetTokenConfig::new(client)
///     .default_file_cache()
///     .min_valid(Duration::from_secs(60));
/// let obtained = get_token(&config)?;
/// for warning in &obtained.warnings {
///     eprintln!("warning: {warning}");
/// }
/// println!("{}", obtained.token.access_token.expose_secret());
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct GetTokenConfig {
    source: Source,
    caches: Vec<CacheSpec>,
    default_cache: bool,
    policy: LifetimePolicy,
    jitter: Jitter,
    backoff: BackoffPolicy,
    initial_refresh_token: Option<RefreshToken>,
    http: HttpSettings,
    min_valid: Duration,
    max_wait: Duration,
    seed: Option<u64>,
}

impl fmt::Debug for GetTokenConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GetTokenConfig")
            .field("source", &self.source)
            .field("caches", &self.caches)
            .field("default_cache", &self.default_cache)
            .field("policy", &self.policy)
            .field("jitter", &self.jitter)
            .field("backoff", &self.backoff)
            .field("http", &self.http)
            .field("min_valid", &self.min_valid)
            .field("max_wait", &self.max_wait)
            .finish_non_exhaustive()
    }
}

/// The backoff of a one-shot call: quick retries within its short wait, and
/// lease waits re-read every 100–200 ms.
fn one_shot_backoff() -> BackoffPolicy {
    BackoffPolicy::builder()
        .floor(Duration::from_millis(100))
        .initial(Duration::from_millis(500))
        .cap(Duration::from_secs(4))
        .build()
        .unwrap_or_default()
}

impl GetTokenConfig {
    /// Tokens from `source` (an [`OAuth2Client`](tokenkeeper_core::oauth2::OAuth2Client)
    /// or a [`Source`]), with no cache, no minimum validity and a 15 s wait.
    ///
    /// Unlike a watcher's, the default jitter is none: a one-shot call refreshes
    /// a cached token only once it is stale, so that every call within a
    /// token's fresh period is served from the cache. Backoff retries are quick
    /// (0.5 s, doubling, at most 4 s).
    pub fn new(source: impl Into<Source>) -> Self {
        GetTokenConfig {
            source: source.into(),
            caches: Vec::new(),
            default_cache: false,
            policy: LifetimePolicy::default(),
            jitter: Jitter::none(),
            backoff: one_shot_backoff(),
            initial_refresh_token: None,
            http: HttpSettings::default(),
            min_valid: Duration::ZERO,
            max_wait: Duration::from_secs(15),
            seed: None,
        }
    }

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

    /// Adds a file cache in `dir`, named after the source's cache key.
    pub fn file_cache_in(mut self, dir: impl Into<PathBuf>) -> Self {
        self.caches.push(CacheSpec::FileIn(dir.into()));
        self
    }

    /// Adds a file cache in the per-user cache folder, named after the
    /// source's cache key. Without such a folder (neither `XDG_CACHE_HOME` nor
    /// `HOME` set) [`get_token`] fails with [`GetTokenError::NoCacheDir`].
    pub fn default_file_cache(mut self) -> Self {
        self.default_cache = true;
        self
    }

    /// A cached token with less than this left before expiry is not good
    /// enough: a newer one is fetched (default zero: any usable token).
    pub fn min_valid(mut self, min_valid: Duration) -> Self {
        self.min_valid = min_valid;
        self
    }

    /// How long the call may take in all, retries and waiting for another
    /// process's fetch included (default 15 s). A single request may overrun
    /// it by up to its own timeout.
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = max_wait;
        self
    }

    /// Sets the lifetime policy.
    pub fn lifetime_policy(mut self, policy: LifetimePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Sets the refresh jitter (default none; see [`GetTokenConfig::new`]).
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// Sets the error backoff.
    pub fn backoff(mut self, backoff: BackoffPolicy) -> Self {
        self.backoff = backoff;
        self
    }

    /// The refresh token to start from (refresh-token grant). A newer one
    /// found in a cache wins; the one to keep for next time is
    /// [`Obtained::token`]'s `refresh_token`.
    pub fn initial_refresh_token(mut self, token: RefreshToken) -> Self {
        self.initial_refresh_token = Some(token);
        self
    }

    /// Sets the HTTP client's settings.
    pub fn http(mut self, settings: HttpSettings) -> Self {
        self.http = settings;
        self
    }

    /// Seeds the refresher (default: a random seed).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The source.
    pub fn source(&self) -> &Source {
        &self.source
    }
}

/// Something the caller should know about a token that was obtained all the
/// same.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Warning {
    /// Refreshing the cached token failed; the cached token is still valid and
    /// is returned.
    RefreshFailed(FetchError),
    /// The refresh did not finish within the wait (another process may still be
    /// at it); the cached token is still valid and is returned.
    RefreshTimedOut,
    /// The token has less validity left than asked for, and no better one
    /// could be had (the authority issues shorter-lived tokens).
    ShortLived {
        /// What is left.
        remaining: Duration,
    },
    /// A cache layer misbehaved (unreadable, unwritable, lease unavailable).
    Cache {
        /// The layer's name.
        layer: String,
        /// What happened.
        problem: CacheProblem,
    },
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Warning::RefreshFailed(error) => {
                write!(
                    f,
                    "refreshing the cached token failed ({error}); using the cached token"
                )
            }
            Warning::RefreshTimedOut => f.write_str(
                "the refresh did not finish in time; using the cached token, which is still valid",
            ),
            Warning::ShortLived { remaining } => write!(
                f,
                "the token is valid for only {} s more, less than asked for",
                remaining.as_secs()
            ),
            Warning::Cache { layer, problem } => match problem {
                CacheProblem::Read(e) => write!(f, "cache {layer}: cannot read: {}", e.message),
                CacheProblem::Unreadable(e) => {
                    write!(
                        f,
                        "cache {layer}: the stored record is unusable ({e}); replacing it"
                    )
                }
                CacheProblem::Write(e) => write!(f, "cache {layer}: cannot write: {}", e.message),
                CacheProblem::Lease(e) => {
                    write!(f, "cache {layer}: cannot take the lock: {}", e.message)
                }
                other => write!(f, "cache {layer}: {other:?}"),
            },
        }
    }
}

/// What [`get_token`] obtained.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Obtained {
    /// The token: usable when returned. Its `refresh_token`, if any, is the
    /// one to keep for the next run (the authority may have rotated it).
    pub token: Arc<TokenRecord>,
    /// Where it came from.
    pub origin: Origin,
    /// Things that went wrong without preventing a usable token.
    pub warnings: Vec<Warning>,
}

/// Why [`get_token`] could not obtain a usable token.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum GetTokenError {
    /// The authority rejected the client or grant (a permanent error: wrong
    /// credentials, a revoked refresh token, an unknown scope, ...).
    #[error("{0}")]
    Rejected(FetchError),
    /// The authority could not be reached or kept failing, and no usable token
    /// was at hand.
    #[error("no token within {} s{}", waited.as_secs_f32().round(), last_error.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
    Unavailable {
        /// How long the call waited.
        waited: Duration,
        /// The last failure, if a request was made.
        last_error: Option<FetchError>,
    },
    /// The default cache folder was asked for, but neither `XDG_CACHE_HOME`
    /// nor `HOME` is set.
    #[error("no cache folder: neither XDG_CACHE_HOME nor HOME is set")]
    NoCacheDir,
}

impl GetTokenError {
    /// The fetch error behind this one, if any.
    pub fn fetch_error(&self) -> Option<&FetchError> {
        match self {
            GetTokenError::Rejected(e) => Some(e),
            GetTokenError::Unavailable { last_error, .. } => last_error.as_ref(),
            GetTokenError::NoCacheDir => None,
        }
    }
}

/// Gets a usable token now, on the calling thread.
///
/// Drives the same core [`Refresher`] a watcher runs, until it publishes a
/// good enough token or fails:
///
/// - a cached token that is fresh and valid for at least
///   [`min_valid`](GetTokenConfig::min_valid) is returned without a request;
/// - a stale one is refreshed; a fresh one with less than `min_valid` left is
///   refreshed by force (once). Either way, if the refresh fails, the cached
///   token is returned with a [`Warning::RefreshFailed`];
/// - with no usable token, one is fetched, under the cache's lease: processes
///   started together on a cold cache make one request, the others wait and
///   read what it stored;
/// - a permanent error without a usable token is [`GetTokenError::Rejected`]
///   at once; transient ones are retried with backoff until
///   [`max_wait`](GetTokenConfig::max_wait), then [`GetTokenError::Unavailable`].
///
/// Leases are released before it returns.
pub fn get_token(config: &GetTokenConfig) -> Result<Obtained, GetTokenError> {
    let started = Instant::now();
    let deadline = crate::engine::deadline(started, config.max_wait);
    let key = config.source.cache_key();
    let mut specs = config.caches.clone();
    if config.default_cache {
        let dir = tokenkeeper_fs::FileLayer::default_dir().ok_or(GetTokenError::NoCacheDir)?;
        specs.push(CacheSpec::FileIn(dir));
    }
    let layers: Vec<Arc<dyn CacheLayer>> = specs.iter().map(|s| s.resolve(&key)).collect();
    let mut refresher_config = config
        .source
        .refresher_config()
        .lifetime_policy(config.policy.clone())
        .jitter(config.jitter)
        .backoff(config.backoff.clone())
        .refresh_now_min_interval(Duration::ZERO);
    if let Some(token) = &config.initial_refresh_token {
        refresher_config = refresher_config.initial_refresh_token(token.clone());
    }
    for layer in &layers {
        refresher_config = refresher_config.layer(layer.layer());
    }
    let seed = config.seed.unwrap_or_else(|| fastrand::u64(..));
    let refresher = Refresher::new(refresher_config, seed, now());
    let mut run = OneShot {
        engine: Engine::new(refresher, layers, config.source.clone()),
        fetcher: Fetcher::new(config.source.clone(), HttpClient::new(&config.http)),
        warnings: Vec::new(),
    };
    let result = run.drive(config, started, deadline);
    run.finish();
    result.map(|(token, origin)| {
        let remaining = token.remaining_at(now());
        if remaining < config.min_valid {
            run.warnings.push(Warning::ShortLived { remaining });
        }
        Obtained {
            token,
            origin,
            warnings: run.warnings,
        }
    })
}

struct OneShot {
    engine: Engine,
    fetcher: Fetcher,
    warnings: Vec<Warning>,
}

impl OneShot {
    /// Carries out every effect, fetches included, until the refresher waits
    /// for time to pass.
    fn settle(&mut self) {
        loop {
            let mut jobs = Vec::new();
            self.engine.drain_effects(&mut |job| jobs.push(job));
            if jobs.is_empty() {
                return;
            }
            for job in jobs {
                let answer = self.fetcher.run(job);
                self.engine.feed(answer);
            }
        }
    }

    fn drive(
        &mut self,
        config: &GetTokenConfig,
        started: Instant,
        deadline: Option<Instant>,
    ) -> Result<(Arc<TokenRecord>, Origin), GetTokenError> {
        let mut origin = Origin::Authority;
        let mut from_authority = false;
        let mut forced = false;
        let mut new_since_forced = false;
        let mut last_error = None;
        loop {
            self.settle();
            let mut failed = None;
            while let Some(event) = self.engine.refresher.poll_event() {
                trace_event(&self.engine, &event);
                match event {
                    Event::TokenChanged { origin: o, .. } => {
                        origin = o;
                        from_authority |= o == Origin::Authority;
                        new_since_forced |= forced;
                    }
                    Event::FetchFailed { error, .. } => failed = Some(error),
                    Event::CacheProblem { layer, problem } => {
                        let layer = self.engine.layer_name(layer).to_owned();
                        self.warnings.push(Warning::Cache { layer, problem });
                    }
                    _ => {}
                }
            }
            let now = now();
            let current = self
                .engine
                .refresher
                .token()
                .filter(|t| t.is_usable_at(now))
                .cloned();
            if let Some(error) = failed {
                if let Some(token) = current {
                    self.warnings.push(Warning::RefreshFailed(error));
                    return Ok((token, origin));
                }
                if error.is_permanent() {
                    return Err(GetTokenError::Rejected(error));
                }
                last_error = Some(error);
            }
            if let Some(token) = &current
                && token.state_at(now) == TokenState::Fresh
            {
                if from_authority || new_since_forced || token.remaining_at(now) >= config.min_valid
                {
                    return Ok((Arc::clone(token), origin));
                }
                if !forced {
                    forced = true;
                    match self.engine.refresher.refresh_now(now) {
                        RefreshNow::Started | RefreshNow::Joined => continue,
                        // Not expected with no minimum interval; take what we have.
                        _ => return Ok((Arc::clone(token), origin)),
                    }
                }
            }
            let left = crate::engine::left(deadline);
            if left.is_zero() {
                return match current {
                    Some(token) => {
                        self.warnings.push(Warning::RefreshTimedOut);
                        Ok((token, origin))
                    }
                    None => Err(GetTokenError::Unavailable {
                        waited: started.elapsed(),
                        last_error,
                    }),
                };
            }
            let now = self::now();
            let wait = self
                .engine
                .refresher
                .poll_timeout()
                .map_or(left, |at| at.duration_since(now).min(left));
            // At least a millisecond: never a hot loop, whatever the clock does.
            std::thread::sleep(wait.max(Duration::from_millis(1)));
            self.engine.refresher.handle_timeout(self::now());
        }
    }

    /// Stops the refresher and releases its leases.
    fn finish(&mut self) {
        self.engine.refresher.shutdown(now());
        self.engine.drain_effects(&mut |_job| {});
        while let Some(event) = self.engine.refresher.poll_event() {
            trace_event(&self.engine, &event);
        }
    }
}
