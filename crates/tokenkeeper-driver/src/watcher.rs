//! The handle users hold: [`TokenWatcher`], and the token it hands out.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::Guard;
use futures_lite::FutureExt;
use tokenkeeper_core::{CacheKey, Health, RefreshNow, Status, TokenRecord};

use crate::error::{ChangedError, TokenError, WatcherStopped};
use crate::runtime::{Runtime, Waited, wait};
use crate::shared::{Command, Commands, Shared};

/// Keeps an OAuth2 access token (or a token from your own source) fresh in
/// the background, and hands it out without waiting.
///
/// Build one with [`TokenWatcher::builder`] (or
/// [`TokenWatcherBuilder::new`](crate::TokenWatcherBuilder::new) for a
/// runtime of your own). Handles are
/// cheap to clone; the watcher stops when
/// [`TokenWatcher::shutdown`] is called or the last handle is dropped, and
/// makes no request after that (except letting a refresh-token request in
/// flight finish, so that a rotated refresh token is never lost).
///
/// `R` is the [`Runtime`] the driver runs on; the adapters name the type for
/// theirs (`tokenkeeper_tokio::TokenWatcher`,
/// `tokenkeeper_async_std::TokenWatcher`, `tokenkeeper_blocking::TokenWatcher`).
/// The methods that wait ([`changed`](Self::changed),
/// [`refresh_now`](Self::refresh_now), [`shutdown`](Self::shutdown), ...)
/// return futures on async runtimes and block on the thread runtime; every
/// other method is the same everywhere and works from any thread.
pub struct TokenWatcher<R> {
    shared: Arc<Shared>,
    commands: Commands,
    runtime: R,
}

impl<R: Clone> Clone for TokenWatcher<R> {
    fn clone(&self) -> Self {
        self.shared.hold();
        TokenWatcher {
            shared: Arc::clone(&self.shared),
            commands: self.commands.clone(),
            runtime: self.runtime.clone(),
        }
    }
}

impl<R> Drop for TokenWatcher<R> {
    fn drop(&mut self) {
        if self.shared.release() {
            // The last handle: the key stops, as `shutdown` would stop it.
            // Its driver may be every watcher's, so the key is told, not
            // the driver.
            let _ = self.commands.send_now(Command::Shutdown);
        }
    }
}

impl<R> fmt::Debug for TokenWatcher<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let token = self.shared.current();
        f.debug_struct("TokenWatcher")
            .field("name", &self.shared.name())
            .field("cache_key", self.shared.key())
            .field(
                "token",
                &token.as_ref().map(|t| t.access_token.fingerprint()),
            )
            .field("stopped", &self.shared.is_stopped())
            .finish()
    }
}

impl<R> TokenWatcher<R> {
    pub(crate) fn new(shared: Arc<Shared>, commands: Commands, runtime: R) -> Self {
        shared.hold();
        TokenWatcher {
            shared,
            commands,
            runtime,
        }
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    /// The current token, without waiting and without a lock: one atomic
    /// load, the same cost in every adapter.
    ///
    /// The returned [`Token`] borrows a slot of the watcher's lock-free
    /// storage: use it at once (read the header value, say) and drop it, or
    /// keep it longer with [`Token::into_arc`].
    ///
    /// Errors when there is no usable token (none yet, or the last one
    /// expired before it could be replaced; the watcher keeps trying) or the
    /// watcher has stopped. A token is withdrawn as soon as the driver sees
    /// it expire (it wakes at the expiry); to check against the clock
    /// yourself, use [`TokenRecord::is_usable_at`].
    #[inline]
    pub fn token(&self) -> Result<Token, TokenError> {
        read(&self.shared)
    }

    /// The refresher's state: the current token's times, the last error, the
    /// failures in a row, the next planned attempt. Cheap; for health checks.
    pub fn status(&self) -> Status {
        self.shared.status_now()
    }

    /// The watcher's health: [`Health::Ready`], or [`Health::Degraded`] /
    /// [`Health::Broken`] with the reason (see [`Status::health`] for the
    /// rules). It reads the status snapshot and the token held, and the
    /// clock: no I/O, no lock held for long, no call to the authority.
    ///
    /// For probes:
    ///
    /// - **Readiness**: ready when the health is not broken (tokens are
    ///   being served), or, stricter, only when it is
    ///   [`Health::Ready`]: the application's choice. A broken watcher
    ///   either has no token or was refused for good
    ///   ([`HealthReason::Refused`](tokenkeeper_core::HealthReason::Refused):
    ///   the credentials need fixing, and the token in hand will expire).
    /// - **Liveness**: do not fail it on [`Health::Degraded`]: the
    ///   watcher is riding out a transient failure from its token's grace
    ///   period and recovers by itself, and a restart would lose the token
    ///   it still serves. Restarting does not fix a broken one either,
    ///   unless its configuration changes.
    /// - **Never call the authority from a probe**: a probe that fetches a
    ///   token multiplies the load on the authority by the number of
    ///   instances and probe rate, and fails when it is rate-limited.
    ///   `health()` is cheap enough to call on every probe.
    ///
    /// Log [`Health`]'s `Display` freely: it never shows a secret.
    pub fn health(&self) -> Health {
        self.shared.health()
    }

    /// Whether the driver has ended.
    pub fn is_stopped(&self) -> bool {
        self.shared.is_stopped()
    }

    /// The key under which tokens are cached.
    pub fn cache_key(&self) -> &CacheKey {
        self.shared.key()
    }

    /// The watcher's name, as it appears in logs.
    pub fn name(&self) -> &str {
        self.shared.name()
    }

    /// The runtime the driver runs on.
    pub(crate) fn runtime(&self) -> &R {
        &self.runtime
    }

    /// The name of cache layer `layer`.
    pub(crate) fn layer_name(&self, layer: usize) -> String {
        self.shared.layer_name(layer).to_owned()
    }
}

impl<R: Runtime> TokenWatcher<R> {
    /// Waits for the next token (one published after this call starts
    /// waiting) and returns it. Errors when the watcher stops first.
    ///
    /// A token published between an earlier read and this call is not
    /// waited for; to wait for a token other than one you hold, without that
    /// race, use [`TokenWatcher::changed_from`].
    pub fn changed(&self) -> Waited<'_, R, Result<Arc<TokenRecord>, WatcherStopped>> {
        let shared = &self.shared;
        let seen = shared.version();
        wait::<R, _>(shared.wait(move |state| {
            if state.version > seen {
                Some(state.latest.clone().ok_or(WatcherStopped))
            } else if state.closed {
                Some(Err(WatcherStopped))
            } else {
                None
            }
        }))
    }

    /// Like [`changed`](Self::changed), but gives up after `timeout` with
    /// [`ChangedError::TimedOut`].
    pub fn changed_within(
        &self,
        timeout: Duration,
    ) -> Waited<'_, R, Result<Arc<TokenRecord>, ChangedError>> {
        let shared = &self.shared;
        let seen = shared.version();
        let changed = shared.wait(move |state| {
            if state.version > seen {
                Some(state.latest.clone().ok_or(ChangedError::Stopped))
            } else if state.closed {
                Some(Err(ChangedError::Stopped))
            } else {
                None
            }
        });
        let sleep = self.runtime.sleep(timeout);
        wait::<R, _>(changed.or(async move {
            sleep.await;
            Err(ChangedError::TimedOut)
        }))
    }

    /// Waits until the watcher has published a token other than `seen` and
    /// returns it, at once if it already has. The race-free way to wait for
    /// the result of [`TokenWatcher::refresh_now`].
    pub fn changed_from<'a>(
        &'a self,
        seen: &'a TokenRecord,
    ) -> Waited<'a, R, Result<Arc<TokenRecord>, WatcherStopped>> {
        wait::<R, _>(self.changed_from_async(seen))
    }

    /// [`changed_from`](Self::changed_from) as a future, whatever the
    /// runtime's wait style (for [`attach`](crate::attach)).
    pub(crate) async fn changed_from_async(
        &self,
        seen: &TokenRecord,
    ) -> Result<Arc<TokenRecord>, WatcherStopped> {
        self.shared
            .wait(move |state| match &state.latest {
                Some(token) if **token != *seen => Some(Ok(Arc::clone(token))),
                _ if state.closed => Some(Err(WatcherStopped)),
                _ => None,
            })
            .await
    }

    /// The current token, waiting for one when there is none (for a token
    /// exchange that presents this watcher's token: a chain).
    pub(crate) async fn usable_token_async(&self) -> Result<Arc<TokenRecord>, WatcherStopped> {
        loop {
            // The version first: a token published after it is read is seen.
            let seen = self.shared.version();
            match read(&self.shared) {
                Ok(token) => return Ok(token.into_arc()),
                Err(TokenError::Stopped) => return Err(WatcherStopped),
                Err(_) => {}
            }
            self.shared
                .wait(move |state| (state.version > seen || state.closed).then_some(()))
                .await;
            if self.shared.is_stopped() {
                return Err(WatcherStopped);
            }
        }
    }

    /// Asks for a token newer than the current one, typically after a
    /// resource server answered 401 to it. Rate-limited by
    /// [`TokenWatcherBuilder::refresh_now_min_interval`](crate::TokenWatcherBuilder::refresh_now_min_interval): too soon after the
    /// last one, the answer is [`RefreshNow::RateLimited`] and nothing is sent.
    /// Returns once the refresh has started (or was refused), not when it
    /// finished; [`TokenWatcher::changed_from`] waits for the new token.
    /// A stopped (or stopping) watcher answers [`WatcherStopped`].
    pub fn refresh_now(&self) -> Waited<'_, R, Result<RefreshNow, WatcherStopped>> {
        wait::<R, _>(self.refresh_now_async())
    }

    /// The DPoP key tokens are bound to, when the watcher was built with
    /// [`dpop`](crate::TokenWatcherBuilder::dpop): middleware signs a proof
    /// for each resource request with it
    /// ([`DpopKey::resource_proof`](crate::dpop::DpopKey::resource_proof)) and
    /// sends the token as `Authorization: DPoP <token>`.
    pub fn dpop_key(&self) -> Option<&crate::dpop::DpopKey> {
        self.shared.dpop()
    }

    /// Tells the watcher a resource server refused `token` (a 401): what
    /// middleware calls, and all that a burst of refusals needs.
    ///
    /// If `token` is no longer the current one, answers
    /// [`RefreshNow::Replaced`] and nothing happens: retry with the current
    /// token. If a refresh is under way, joins it ([`RefreshNow::Joined`],
    /// not rate-limited), and the refresh will not settle for a cached
    /// record that holds `token`. Otherwise it is
    /// [`refresh_now`](Self::refresh_now), rate-limited. A burst of
    /// refusals of one token so makes one token request, fleet-wide where
    /// the caches share a lease. Wait for the new token with
    /// [`changed_from`](Self::changed_from).
    pub fn refresh_if_current(
        &self,
        token: &TokenRecord,
    ) -> Waited<'_, R, Result<RefreshNow, WatcherStopped>> {
        wait::<R, _>(self.refresh_if_current_async(token))
    }

    /// [`refresh_if_current`](Self::refresh_if_current) as a future,
    /// whatever the runtime's wait style (for [`attach`](crate::attach)).
    pub(crate) fn refresh_if_current_async(
        &self,
        token: &TokenRecord,
    ) -> impl Future<Output = Result<RefreshNow, WatcherStopped>> + Send + '_ {
        let refused = token.access_token.clone();
        self.command_reply(move |reply| Command::RefreshIfCurrent(refused, reply))
    }

    /// [`refresh_now`](Self::refresh_now) as a future.
    pub(crate) async fn refresh_now_async(&self) -> Result<RefreshNow, WatcherStopped> {
        self.command_reply(Command::RefreshNow).await
    }

    /// Sends a command that replies with a [`RefreshNow`], and waits for it.
    async fn command_reply(
        &self,
        command: impl FnOnce(async_channel::Sender<RefreshNow>) -> Command,
    ) -> Result<RefreshNow, WatcherStopped> {
        let (reply, answer) = async_channel::bounded(1);
        self.commands
            .send(command(reply))
            .await
            .map_err(|_| WatcherStopped)?;
        match answer.recv().await {
            Ok(RefreshNow::ShutDown) | Err(_) => Err(WatcherStopped),
            Ok(outcome) => {
                #[cfg(feature = "metrics")]
                if matches!(outcome, RefreshNow::Started | RefreshNow::Joined) {
                    crate::metrics::forced_refresh(self.shared.name());
                }
                Ok(outcome)
            }
        }
    }

    /// Stops the driver and waits until it has ended: a request that spends
    /// a refresh token is allowed to finish (within the shutdown grace) and
    /// its rotated token stored, other requests are abandoned, leases are
    /// released, and every handle's [`token`](TokenWatcher::token) answers
    /// [`TokenError::Stopped`] from then on. Idempotent.
    pub fn shutdown(&self) -> Waited<'_, R, ()> {
        wait::<R, _>(self.stop_async())
    }

    /// [`shutdown`](Self::shutdown) as a future, for this crate's own
    /// futures whatever the runtime's wait style.
    pub(crate) async fn stop_async(&self) {
        self.ask_to_stop().await;
        self.stopped().await;
    }

    /// Tells the driver to stop, without waiting for it.
    pub(crate) async fn ask_to_stop(&self) {
        // A closed channel means the driver is ending already.
        let _ = self.commands.send(Command::Shutdown).await;
    }

    /// Waits until the driver has stopped.
    pub(crate) async fn stopped(&self) {
        self.shared.wait(|state| state.closed.then_some(())).await;
    }
}

/// A read of a key's token: one atomic load, the same for a watcher and a
/// key of a pool.
#[inline]
pub(crate) fn read(shared: &Shared) -> Result<Token, TokenError> {
    match shared.load() {
        Ok(guard) => {
            #[cfg(feature = "metrics")]
            shared.reads().served();
            Ok(Token { guard })
        }
        Err(empty) => Err(no_token(shared, empty)),
    }
}

/// Why there is no token; out of line, so that `read` stays small enough to
/// inline into the caller's loop.
#[cold]
#[inline(never)]
fn no_token(shared: &Shared, empty: Guard<Arc<TokenRecord>>) -> TokenError {
    drop(empty);
    #[cfg(feature = "metrics")]
    shared.reads().none();
    if shared.is_stopped() {
        return TokenError::Stopped;
    }
    TokenError::Unavailable {
        expired_at: shared.expired_at(),
    }
}

/// The current token, as handed out by [`TokenWatcher::token`]: a
/// [`TokenRecord`] (dereference it) held in the watcher's lock-free storage.
///
/// Meant to be used at once and dropped; holding many for long makes later
/// reads slower. Keep one with [`Token::into_arc`]. Its `Debug` shows only a
/// fingerprint of the secrets.
pub struct Token {
    guard: Guard<Arc<TokenRecord>>,
}

impl Token {
    /// The record, reference-counted, to keep beyond a quick use.
    #[inline]
    pub fn into_arc(self) -> Arc<TokenRecord> {
        Guard::into_inner(self.guard)
    }
}

impl Deref for Token {
    type Target = TokenRecord;

    #[inline]
    fn deref(&self) -> &TokenRecord {
        &self.guard
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("access_token", &self.access_token)
            .field("issued", &self.issued)
            .field("stale", &self.stale)
            .field("expiry", &self.expiry)
            .finish_non_exhaustive()
    }
}
