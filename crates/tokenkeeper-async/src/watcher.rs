//! The handle users hold: [`TokenWatcher`], and the token it hands out.

use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use arc_swap::{ArcSwap, Guard};
use event_listener::Event;
use tokenkeeper_core::{
    AccessToken, CacheKey, LifetimePolicy, RefreshNow, Status, Timestamp, TokenGrant, TokenRecord,
};

use crate::builder::TokenWatcherBuilder;
use crate::error::{TokenError, WatcherStopped};
use crate::runtime::Runtime;
use crate::source::Source;

/// The wall clock, as the core reads time.
pub(crate) fn now() -> Timestamp {
    Timestamp::from_system_time(SystemTime::now())
}

/// What handles ask of the background task.
pub(crate) enum Command {
    RefreshNow(async_channel::Sender<RefreshNow>),
    Shutdown,
}

/// Rarely touched state: the status snapshot and why there is no token.
pub(crate) struct Cold {
    pub(crate) status: Status,
    pub(crate) expired_at: Option<Timestamp>,
}

/// The token readers get, alone in its cache lines (two, for CPUs that fetch
/// lines in pairs), so that writes to the rest of [`Shared`] never slow
/// readers down.
///
/// It always holds a record; "no token" is a placeholder record that is
/// never handed out, so that a handed-out token needs no further check.
#[repr(align(128))]
pub(crate) struct Slot {
    current: ArcSwap<TokenRecord>,
    none: Arc<TokenRecord>,
}

impl Slot {
    pub(crate) fn empty() -> Self {
        let placeholder = LifetimePolicy::default().record(
            TokenGrant::bearer(AccessToken::new(String::new()), Some(Duration::ZERO)),
            Timestamp::EPOCH,
            None,
        );
        let none = Arc::new(placeholder);
        Slot {
            current: ArcSwap::new(Arc::clone(&none)),
            none,
        }
    }

    /// The current token, if there is one (not for the hot path).
    pub(crate) fn get(&self) -> Option<Arc<TokenRecord>> {
        let current = self.current.load_full();
        (!Arc::ptr_eq(&current, &self.none)).then_some(current)
    }

    /// Publishes `token`, or withdraws the current one.
    pub(crate) fn set(&self, token: Option<Arc<TokenRecord>>) {
        self.current
            .store(token.unwrap_or_else(|| Arc::clone(&self.none)));
    }
}

/// Each new token, for the handles that wait for one: a version counter, the
/// latest token, and whether the background task has ended.
#[derive(Default)]
struct ChangeState {
    version: u64,
    latest: Option<Arc<TokenRecord>>,
    closed: bool,
}

/// The waiting side of token changes: runtime-agnostic (a mutex and an
/// [`Event`]), and off the hot path.
#[derive(Default)]
pub(crate) struct Changes {
    state: Mutex<ChangeState>,
    event: Event,
}

impl Changes {
    fn state(&self) -> MutexGuard<'_, ChangeState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new token: wakes every waiter.
    pub(crate) fn publish(&self, token: Arc<TokenRecord>) {
        {
            let mut state = self.state();
            state.version += 1;
            state.latest = Some(token);
        }
        self.event.notify(usize::MAX);
    }

    /// The background task has ended: wakes every waiter, for good.
    pub(crate) fn close(&self) {
        self.state().closed = true;
        self.event.notify(usize::MAX);
    }

    fn version(&self) -> u64 {
        self.state().version
    }

    /// Waits until `done` says yes to the state, which it is given under the
    /// lock each time it may have changed.
    async fn wait<T>(&self, mut done: impl FnMut(&ChangeState) -> Option<T>) -> T {
        loop {
            // Listen before looking, so that no notification is missed.
            let listener = self.event.listen();
            if let Some(value) = done(&self.state()) {
                return value;
            }
            listener.await;
        }
    }
}

/// State shared by the handles and the background task.
pub(crate) struct Shared {
    /// The token readers get: `None` before the first one, after it expired
    /// unreplaced, and once the watcher stopped.
    pub(crate) current: Slot,
    pub(crate) cold: Mutex<Cold>,
    /// Each new token; closed when the background task ends.
    pub(crate) changes: Changes,
    pub(crate) stopped: AtomicBool,
    pub(crate) key: CacheKey,
    pub(crate) name: String,
}

impl Shared {
    pub(crate) fn cold(&self) -> MutexGuard<'_, Cold> {
        self.cold.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Keeps an OAuth2 access token (or a token from your own source) fresh in
/// the background, and hands it out without waiting.
///
/// Build one with [`TokenWatcher::builder`] (or
/// [`TokenWatcherBuilder::new`] for a runtime of your own). Handles are
/// cheap to clone and share one background task; the task ends when
/// [`TokenWatcher::shutdown`] is called or the last handle is dropped, and
/// makes no request after that.
///
/// `R` is the [`Runtime`] the task runs on; it only picks the builder, and
/// the adapters name the type for theirs (`tokenkeeper_tokio::TokenWatcher`,
/// `tokenkeeper_async_std::TokenWatcher`). Every method works from any
/// thread and any executor.
pub struct TokenWatcher<R> {
    pub(crate) shared: Arc<Shared>,
    pub(crate) commands: async_channel::Sender<Command>,
    pub(crate) runtime: PhantomData<fn() -> R>,
}

impl<R> Clone for TokenWatcher<R> {
    fn clone(&self) -> Self {
        TokenWatcher {
            shared: Arc::clone(&self.shared),
            commands: self.commands.clone(),
            runtime: PhantomData,
        }
    }
}

impl<R> fmt::Debug for TokenWatcher<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let token = self.shared.current.get();
        f.debug_struct("TokenWatcher")
            .field("name", &self.shared.name)
            .field("cache_key", &self.shared.key)
            .field(
                "token",
                &token.as_ref().map(|t| t.access_token.fingerprint()),
            )
            .field("stopped", &self.is_stopped())
            .finish()
    }
}

impl<R: Runtime + Default> TokenWatcher<R> {
    /// Starts building a watcher for `source`: an
    /// [`OAuth2Client`](tokenkeeper_core::oauth2::OAuth2Client), or a
    /// [`Source`] of your own. It runs on `R::default()` unless
    /// [`TokenWatcherBuilder::runtime`] says otherwise.
    pub fn builder(source: impl Into<Source>) -> TokenWatcherBuilder<R> {
        TokenWatcherBuilder::new(R::default(), source)
    }
}

impl<R> TokenWatcher<R> {
    /// The current token, without waiting and without a lock: one atomic
    /// load.
    ///
    /// The returned [`Token`] borrows a slot of the watcher's lock-free
    /// storage: use it at once (read the header value, say) and drop it, or
    /// keep it longer with [`Token::into_arc`].
    ///
    /// Errors when there is no usable token (the last one expired before it
    /// could be replaced; the watcher keeps trying) or the watcher has stopped.
    /// The token is withdrawn when the background task sees it expire; to
    /// check against the clock yourself, use [`TokenRecord::is_usable_at`].
    #[inline]
    pub fn token(&self) -> Result<Token, TokenError> {
        let slot = &self.shared.current;
        let guard = slot.current.load();
        if !Arc::ptr_eq(&guard, &slot.none) {
            Ok(Token { guard })
        } else {
            Err(self.no_token(guard))
        }
    }

    /// Why there is no token; out of line, so that `token` stays small
    /// enough to inline into the caller's loop.
    #[cold]
    #[inline(never)]
    fn no_token(&self, empty: Guard<Arc<TokenRecord>>) -> TokenError {
        drop(empty);
        if self.is_stopped() {
            return TokenError::Stopped;
        }
        TokenError::Unavailable {
            expired_at: self.shared.cold().expired_at,
        }
    }

    /// Waits for the next token (one published after this call starts
    /// waiting) and returns it. Errors when the watcher stops first.
    ///
    /// A token published between an earlier read and this call is not
    /// waited for; to wait for a token other than one you hold, without that
    /// race, use [`TokenWatcher::changed_from`].
    pub async fn changed(&self) -> Result<Arc<TokenRecord>, WatcherStopped> {
        let changes = &self.shared.changes;
        let seen = changes.version();
        changes
            .wait(|state| {
                if state.version > seen {
                    Some(state.latest.clone().ok_or(WatcherStopped))
                } else if state.closed {
                    Some(Err(WatcherStopped))
                } else {
                    None
                }
            })
            .await
    }

    /// Waits until the watcher has published a token other than `seen` and
    /// returns it, at once if it already has. The race-free way to wait for
    /// the result of [`TokenWatcher::refresh_now`]:
    ///
    /// ```no_run
    /// # async fn f<R>(watcher: tokenkeeper_async::TokenWatcher<R>) -> Result<(), Box<dyn std::error::Error>> {
    /// let rejected = watcher.token()?.into_arc();
    /// // ... a resource server answered 401 to `rejected` ...
    /// watcher.refresh_now().await?;
    /// let fresh = watcher.changed_from(&rejected).await?;
    /// # let _ = fresh; Ok(()) }
    /// ```
    pub async fn changed_from(
        &self,
        seen: &TokenRecord,
    ) -> Result<Arc<TokenRecord>, WatcherStopped> {
        self.shared
            .changes
            .wait(|state| match &state.latest {
                Some(token) if **token != *seen => Some(Ok(Arc::clone(token))),
                _ if state.closed => Some(Err(WatcherStopped)),
                _ => None,
            })
            .await
    }

    /// The refresher's state: the current token's times, the last error, the
    /// failures in a row, the next planned attempt. Cheap; for health checks.
    pub fn status(&self) -> Status {
        let mut status = self.shared.cold().status.clone();
        let now = now();
        status.token_state = self.shared.current.get().map(|t| t.state_at(now));
        if self.is_stopped() {
            status.shut_down = true;
        }
        status
    }

    /// Asks for a token newer than the current one, typically after a
    /// resource server answered 401 to it. Rate-limited by
    /// [`TokenWatcherBuilder::refresh_now_min_interval`]: too soon after the
    /// last one, the answer is [`RefreshNow::RateLimited`] and nothing is sent.
    /// Returns once the refresh has started (or was refused), not when it
    /// finished; [`TokenWatcher::changed`] waits for the new token.
    pub async fn refresh_now(&self) -> Result<RefreshNow, WatcherStopped> {
        let (reply, answer) = async_channel::bounded(1);
        self.commands
            .send(Command::RefreshNow(reply))
            .await
            .map_err(|_| WatcherStopped)?;
        answer.recv().await.map_err(|_| WatcherStopped)
    }

    /// Stops the background task and waits until it has ended: requests in
    /// flight are abandoned, leases released, and every handle's
    /// [`token`](TokenWatcher::token) answers [`TokenError::Stopped`] from then
    /// on. Idempotent.
    pub async fn shutdown(&self) {
        // A closed channel means the task is ending already.
        let _ = self.commands.send(Command::Shutdown).await;
        self.shared
            .changes
            .wait(|state| state.closed.then_some(()))
            .await;
    }

    /// Whether the background task has ended.
    pub fn is_stopped(&self) -> bool {
        self.shared.stopped.load(Ordering::Acquire)
    }

    /// The key under which tokens are cached.
    pub fn cache_key(&self) -> &CacheKey {
        &self.shared.key
    }

    /// The watcher's name, as it appears in logs.
    pub fn name(&self) -> &str {
        &self.shared.name
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

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future::block_on;

    fn record(token: &str) -> Arc<TokenRecord> {
        Arc::new(LifetimePolicy::default().record(
            TokenGrant::bearer(AccessToken::new(token), Some(Duration::from_secs(60))),
            now(),
            None,
        ))
    }

    #[test]
    fn waiters_see_later_tokens_and_the_end() {
        let changes = Arc::new(Changes::default());
        let c = Arc::clone(&changes);
        let waiter = std::thread::spawn(move || {
            let seen = c.version();
            block_on(c.wait(|s| (s.version > seen).then(|| s.latest.clone())))
        });
        std::thread::sleep(Duration::from_millis(50));
        changes.publish(record("one"));
        let got = waiter.join().unwrap().unwrap();
        assert_eq!(got.access_token.expose_secret(), "one");

        let c = Arc::clone(&changes);
        let closer = std::thread::spawn(move || block_on(c.wait(|s| s.closed.then_some(()))));
        std::thread::sleep(Duration::from_millis(50));
        changes.close();
        closer.join().unwrap();
    }
}
