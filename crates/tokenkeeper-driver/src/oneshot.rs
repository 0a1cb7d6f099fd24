//! A token now, for programs that run and exit:
//! [`TokenWatcherBuilder::get_token`]. It runs the same driver as a watcher,
//! and only decides when the token it holds is good enough to return.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokenkeeper_core::{
    BackoffPolicy, CacheProblem, Event, FetchError, Jitter, Origin, RefreshNow, TokenRecord,
    TokenState,
};

use crate::builder::TokenWatcherBuilder;
use crate::error::SpawnError;
use crate::runtime::{Runtime, Waited, timeout, wait};
use crate::shared::now;
use crate::watcher::TokenWatcher;

/// How [`TokenWatcherBuilder::get_token`] decides: how much validity is
/// enough, how long it may take, and how quickly it retries.
#[derive(Debug, Clone)]
pub struct OneShot {
    min_valid: Duration,
    max_wait: Duration,
    backoff: BackoffPolicy,
}

impl Default for OneShot {
    fn default() -> Self {
        OneShot {
            min_valid: Duration::ZERO,
            max_wait: Duration::from_secs(15),
            backoff: BackoffPolicy::builder()
                .floor(Duration::from_millis(100))
                .initial(Duration::from_millis(500))
                .cap(Duration::from_secs(4))
                .build()
                .unwrap_or_default(),
        }
    }
}

impl OneShot {
    /// No minimum validity, a 15 s wait, quick retries (0.5 s doubling to 4 s).
    pub fn new() -> Self {
        Self::default()
    }

    /// A cached token with less validity left than this is refreshed (once)
    /// before it is returned (default none).
    pub fn min_valid(mut self, min_valid: Duration) -> Self {
        self.min_valid = min_valid;
        self
    }

    /// The longest the call waits for a token (default 15 s).
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = max_wait;
        self
    }

    /// The retry policy within the wait (default: 0.5 s doubling to 4 s).
    pub fn backoff(mut self, backoff: BackoffPolicy) -> Self {
        self.backoff = backoff;
        self
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
            Warning::RefreshFailed(error) => write!(
                f,
                "refreshing the cached token failed ({error}); using the cached token"
            ),
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
                CacheProblem::Unreadable(e) => write!(
                    f,
                    "cache {layer}: the stored record is unusable ({e}); replacing it"
                ),
                CacheProblem::Write(e) => write!(f, "cache {layer}: cannot write: {}", e.message),
                CacheProblem::FromTheFuture { issued } => write!(
                    f,
                    "cache {layer}: the stored record claims to be issued at {issued}, in the future; distrusting and replacing it"
                ),
                CacheProblem::Lease(e) => {
                    write!(f, "cache {layer}: cannot take the lock: {}", e.message)
                }
                other => write!(f, "cache {layer}: {other:?}"),
            },
        }
    }
}

/// What [`TokenWatcherBuilder::get_token`] obtained.
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

/// Why [`TokenWatcherBuilder::get_token`] could not obtain a usable token.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum GetTokenError {
    /// The authority rejected the client or grant (a permanent error: wrong
    /// credentials, a revoked refresh token, an unknown scope, ...).
    #[error("{0}")]
    Rejected(FetchError),
    /// The token endpoint is misconfigured: its TLS certificate cannot be
    /// verified, or the URL is not a token endpoint
    /// ([`FetchError::is_misconfiguration`]).
    #[error("{0}")]
    Misconfigured(FetchError),
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
    /// The driver could not be started (the HTTP client could not be set up,
    /// say).
    #[error(transparent)]
    Start(SpawnError),
}

impl GetTokenError {
    /// The fetch error behind this one, if any.
    pub fn fetch_error(&self) -> Option<&FetchError> {
        match self {
            GetTokenError::Rejected(e) | GetTokenError::Misconfigured(e) => Some(e),
            GetTokenError::Unavailable { last_error, .. } => last_error.as_ref(),
            _ => None,
        }
    }
}

impl<R: Runtime> TokenWatcherBuilder<R> {
    /// Gets a usable token now and stops: for programs that run and exit.
    ///
    /// Runs the same driver as a watcher (with no jitter, the one-shot's
    /// quick backoff, and no rate limit on its one forced refresh) until it
    /// holds a good enough token or fails:
    ///
    /// - a cached token that is fresh and valid for at least
    ///   [`min_valid`](OneShot::min_valid) is returned without a request;
    /// - a stale one is refreshed; a fresh one with less than `min_valid`
    ///   left is refreshed by force (once). Either way, if the refresh fails,
    ///   the cached token is returned with a [`Warning::RefreshFailed`];
    /// - with no usable token, one is fetched under the caches' lease:
    ///   processes started together on a cold cache make one request, the
    ///   others wait and read what it stored;
    /// - a permanent error without a usable token is
    ///   [`GetTokenError::Rejected`] (or [`GetTokenError::Misconfigured`]) at once; transient ones are retried until
    ///   [`max_wait`](OneShot::max_wait), then [`GetTokenError::Unavailable`].
    ///
    /// Leases are released, and a rotated refresh token stored, before it
    /// returns.
    pub fn get_token(
        self,
        options: OneShot,
    ) -> Waited<'static, R, Result<Obtained, GetTokenError>> {
        let (events_tx, events) = async_channel::unbounded();
        let builder = self
            .jitter(Jitter::none())
            .backoff(options.backoff.clone())
            .refresh_now_min_interval(Duration::ZERO)
            .also_on_event(move |event| {
                let _ = events_tx.try_send(event.clone());
            });
        // Started when first polled, where the runtime can be bound.
        wait::<R, _>(async move {
            let watcher = builder.start().map_err(|e| match e {
                SpawnError::NoCacheDir => GetTokenError::NoCacheDir,
                other => GetTokenError::Start(other),
            })?;
            let began = Instant::now();
            let mut run = Run::new(options.min_valid);
            let runtime = watcher.runtime().clone();
            let outcome =
                timeout(&runtime, options.max_wait, run.until_done(&watcher, events)).await;
            // Leases released, a rotated refresh token stored.
            watcher.stop_async().await;
            let (token, origin) = match outcome {
                Some(result) => result?,
                None => match run.usable() {
                    Some(token) => {
                        run.warnings.push(Warning::RefreshTimedOut);
                        (token, run.origin)
                    }
                    None => {
                        return Err(GetTokenError::Unavailable {
                            waited: began.elapsed(),
                            last_error: run.last_error,
                        });
                    }
                },
            };
            let remaining = token.remaining_at(now().wall);
            if remaining < options.min_valid {
                run.warnings.push(Warning::ShortLived { remaining });
            }
            Ok(Obtained {
                token,
                origin,
                warnings: run.warnings,
            })
        })
    }
}

/// What the one-shot has seen so far.
struct Run {
    min_valid: Duration,
    current: Option<Arc<TokenRecord>>,
    origin: Origin,
    from_authority: bool,
    forced: bool,
    new_since_forced: bool,
    last_error: Option<FetchError>,
    warnings: Vec<Warning>,
}

impl Run {
    fn new(min_valid: Duration) -> Self {
        Run {
            min_valid,
            current: None,
            origin: Origin::Authority,
            from_authority: false,
            forced: false,
            new_since_forced: false,
            last_error: None,
            warnings: Vec::new(),
        }
    }

    fn usable(&self) -> Option<Arc<TokenRecord>> {
        let now = now().wall;
        self.current.clone().filter(|t| t.is_usable_at(now))
    }

    /// Follows the refresher's events until a good enough token or a
    /// failure that ends the call.
    async fn until_done<R: Runtime>(
        &mut self,
        watcher: &TokenWatcher<R>,
        events: async_channel::Receiver<Event>,
    ) -> Result<(Arc<TokenRecord>, Origin), GetTokenError> {
        while let Ok(event) = events.recv().await {
            match event {
                Event::TokenChanged { token, origin } => {
                    self.origin = origin;
                    self.from_authority |= origin == Origin::Authority;
                    self.new_since_forced |= self.forced;
                    self.current = Some(Arc::clone(&token));
                    let now = now().wall;
                    if token.state_at(now) != TokenState::Fresh {
                        // Stale: the refresher is refreshing it already.
                        continue;
                    }
                    if self.from_authority
                        || self.new_since_forced
                        || token.remaining_at(now) >= self.min_valid
                        || self.forced
                    {
                        return Ok((token, origin));
                    }
                    self.forced = true;
                    match watcher.refresh_now_async().await {
                        Ok(RefreshNow::Started | RefreshNow::Joined) => {}
                        // Not expected with no minimum interval; take what we have.
                        _ => return Ok((token, origin)),
                    }
                }
                Event::FetchFailed { error, .. } => {
                    if let Some(token) = self.usable() {
                        self.warnings.push(Warning::RefreshFailed(error));
                        return Ok((token, self.origin));
                    }
                    if error.is_permanent() {
                        return Err(if error.is_misconfiguration() {
                            GetTokenError::Misconfigured(error)
                        } else {
                            GetTokenError::Rejected(error)
                        });
                    }
                    self.last_error = Some(error);
                }
                Event::CacheProblem { layer, problem } => {
                    let layer = watcher.layer_name(layer);
                    self.warnings.push(Warning::Cache { layer, problem });
                }
                _ => {}
            }
        }
        Err(GetTokenError::Start(SpawnError::Stopped))
    }
}
