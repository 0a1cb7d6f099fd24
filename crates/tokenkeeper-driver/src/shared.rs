//! The state the handles and the driver share, and the only code that
//! touches it: the token slot readers load, the change notifications
//! waiters listen to, the status snapshot, whether the watcher stopped, and
//! the commands handles send the driver.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::{ArcSwap, Guard};

use crate::dpop::DpopKey;
use crate::driver::{Request, RequestSender};
use crate::error::WatcherStopped;
use event_listener::Event;
use tokenkeeper_core::FetchError;
use tokenkeeper_core::pool::KeyId;
use tokenkeeper_core::{
    AccessToken, CacheKey, LifetimePolicy, Monotonic, Now, RefreshNow, Status, Timestamp,
    TokenGrant, TokenRecord,
};

/// Both clocks, as the core reads time: the wall clock, and a monotonic
/// reading (milliseconds since this process first looked), so that the
/// refresher's schedule survives a wall clock that steps.
pub(crate) fn now() -> Now {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    Now::new(
        SystemTime::now().into(),
        Monotonic::from_elapsed(origin.elapsed()),
    )
}

/// What a key's handles ask of the driver.
pub(crate) enum Command {
    RefreshNow(async_channel::Sender<RefreshNow>),
    /// A resource server refused this token.
    RefreshIfCurrent(AccessToken, async_channel::Sender<RefreshNow>),
    /// Stop this key (for a watcher, its driver).
    Shutdown,
    /// The key's status now (a pool's keys keep no snapshot).
    Status(async_channel::Sender<Option<Status>>),
}

/// A key's handles' way to its driver: the driver's queue and the key.
#[derive(Clone)]
pub(crate) struct Commands {
    requests: RequestSender,
    key: KeyId,
}

impl Commands {
    pub(crate) fn new(requests: RequestSender, key: KeyId) -> Self {
        Commands { requests, key }
    }

    /// Sends `command` for this key; `Err` once the driver has ended.
    pub(crate) async fn send(&self, command: Command) -> Result<(), WatcherStopped> {
        self.send_now(command)
    }

    /// [`send`](Self::send), from where nothing can wait (a `Drop`).
    pub(crate) fn send_now(&self, command: Command) -> Result<(), WatcherStopped> {
        self.requests
            .unbounded_send(Request::Key(self.key, command))
            .map_err(|_| WatcherStopped)
    }
}

/// The token readers get: one atomic pointer. It always holds a record;
/// "no token" is one placeholder record shared by every key of the
/// process, never handed out, so that a handed-out token needs no further
/// check.
///
/// Not padded to a cache line of its own: the rest of [`Shared`] is written
/// rarely (a status snapshot per refresh), and a pool holds one per key.
///
/// With it, the flag a read sets: in declared order and 16 bytes in all, so
/// that a read of a key not in the CPU's caches misses one line of
/// [`Shared`], not two (laid out freely, the flag landed 90 bytes from the
/// pointer). The handle count and the stopped flag fill the rest.
#[repr(C)]
struct Slot {
    current: ArcSwap<TokenRecord>,
    /// Read since the driver last asked (a pool evicts keys nobody reads).
    used: AtomicBool,
    stopped: AtomicBool,
    /// A watcher's handles: the last one dropped stops the key (a pool's
    /// keys have none). 32 bits, packed with the flags: four billion live
    /// handles would take a hundred gigabytes first.
    handles: AtomicU32,
}

/// The "no token" placeholder.
fn placeholder() -> &'static Arc<TokenRecord> {
    static NONE: OnceLock<Arc<TokenRecord>> = OnceLock::new();
    NONE.get_or_init(|| {
        Arc::new(LifetimePolicy::default().record(
            TokenGrant::bearer(AccessToken::new(String::new()), Some(Duration::ZERO)),
            Timestamp::EPOCH,
            None,
        ))
    })
}

impl Slot {
    fn empty() -> Self {
        Slot {
            current: ArcSwap::new(Arc::clone(placeholder())),
            used: AtomicBool::new(true),
            stopped: AtomicBool::new(false),
            handles: AtomicU32::new(0),
        }
    }
}

/// What a key's handles read under its lock (`token()` never takes it):
/// each new token, for the handles that wait for one (a version counter, the
/// latest token, whether the driver has ended), and the rarely touched rest
/// (the status snapshot, why there is no token). One lock, not two: a
/// mutex and its padding are 16 bytes, in every key.
#[derive(Default)]
pub(crate) struct ChangeState {
    pub(crate) version: u64,
    pub(crate) latest: Option<Arc<TokenRecord>>,
    pub(crate) closed: bool,
    /// Refused for good before any token came (`invalid_client`, ...): a
    /// wait for a first token ends with it.
    pub(crate) refused: Option<Box<FetchError>>,
    /// Kept for a watcher, whose `status()` reads it without waiting; not
    /// for a key of a pool, whose status the driver computes when asked
    /// (a pool holds many keys, and asks rarely).
    status: Option<Box<Snapshot>>,
    expired_at: Option<Timestamp>,
}

/// What a watcher keeps of its refresher's status between changes: all but
/// the token's own state and expiry, which `status()` reads from the token
/// it finds then. A third of a `Status` (48 bytes, not 144), and the last
/// error boxed, since most watchers never have one.
struct Snapshot {
    last_error: Option<Box<(FetchError, Option<Timestamp>)>>,
    issued: Option<Timestamp>,
    stale: Option<Timestamp>,
    last_success_at: Option<Timestamp>,
    next_attempt: Option<Timestamp>,
    consecutive_failures: u32,
    fetch_in_flight: bool,
    shut_down: bool,
}

impl Snapshot {
    fn new(status: Status) -> Self {
        let mut snapshot = Snapshot {
            last_error: None,
            issued: None,
            stale: None,
            last_success_at: None,
            next_attempt: None,
            consecutive_failures: 0,
            fetch_in_flight: false,
            shut_down: false,
        };
        snapshot.update(status);
        snapshot
    }

    fn update(&mut self, status: Status) {
        let Status {
            token_state: _,
            issued,
            stale,
            expiry: _,
            last_error,
            last_error_at,
            consecutive_failures,
            last_success_at,
            next_attempt,
            fetch_in_flight,
            shut_down,
            ..
        } = status;
        self.last_error = match (last_error, self.last_error.take()) {
            (None, _) => None,
            (Some(error), Some(mut kept)) => {
                *kept = (error, last_error_at);
                Some(kept)
            }
            (Some(error), None) => Some(Box::new((error, last_error_at))),
        };
        self.issued = issued;
        self.stale = stale;
        self.last_success_at = last_success_at;
        self.next_attempt = next_attempt;
        self.consecutive_failures = consecutive_failures;
        self.fetch_in_flight = fetch_in_flight;
        self.shut_down = shut_down;
    }

    /// The status it was made of, but for the token's state and expiry.
    fn status(&self) -> Status {
        let mut status = Status::stopped();
        status.issued = self.issued;
        status.stale = self.stale;
        if let Some(error) = &self.last_error {
            status.last_error = Some(error.0.clone());
            status.last_error_at = error.1;
        }
        status.consecutive_failures = self.consecutive_failures;
        status.last_success_at = self.last_success_at;
        status.next_attempt = self.next_attempt;
        status.fetch_in_flight = self.fetch_in_flight;
        status.shut_down = self.shut_down;
        status
    }
}

/// How a key's wait for its first token ended.
pub(crate) enum First {
    Token,
    Refused(FetchError),
    Stopped,
}

/// State shared by the handles and the driver.
///
/// In declared order, the slot first: 16 bytes at a 16-byte boundary of
/// its allocation, so that they never straddle two cache lines.
#[repr(C)]
pub(crate) struct Shared {
    /// The token, and the flags and count that share its cache line.
    slot: Slot,
    changes: Mutex<ChangeState>,
    changed: Event,
    /// The key's number in its driver.
    id: KeyId,
    key: CacheKey,
    /// Shared by every key of a pool.
    name: Arc<str>,
    /// A slice, not a `Vec`: fixed once made, and eight bytes less a key.
    layer_names: Box<[String]>,
    dpop: Option<DpopKey>,
    /// `token()` calls, counted for the metrics.
    #[cfg(feature = "metrics")]
    reads: crate::metrics::Reads,
}

impl Shared {
    pub(crate) fn new(
        id: KeyId,
        key: CacheKey,
        name: impl Into<Arc<str>>,
        layer_names: Box<[String]>,
        status: Option<Status>,
        dpop: Option<DpopKey>,
    ) -> Self {
        Shared {
            slot: Slot::empty(),
            changes: Mutex::new(ChangeState {
                status: status.map(|status| Box::new(Snapshot::new(status))),
                ..ChangeState::default()
            }),
            changed: Event::new(),
            id,
            key,
            name: name.into(),
            layer_names,
            dpop,
            #[cfg(feature = "metrics")]
            reads: crate::metrics::Reads::default(),
        }
    }

    /// The read counters of the metrics.
    #[cfg(feature = "metrics")]
    #[inline]
    pub(crate) fn reads(&self) -> &crate::metrics::Reads {
        &self.reads
    }

    /// The DPoP key, for DPoP-bound tokens.
    pub(crate) fn dpop(&self) -> Option<&DpopKey> {
        self.dpop.as_ref()
    }

    fn change_state(&self) -> MutexGuard<'_, ChangeState> {
        self.changes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    // ---- readers ----

    /// The current token: one atomic load. `Err` hands the placeholder back
    /// when there is none.
    #[inline]
    pub(crate) fn load(&self) -> Result<Guard<Arc<TokenRecord>>, Guard<Arc<TokenRecord>>> {
        let guard = self.slot.current.load();
        if Arc::ptr_eq(&guard, placeholder()) {
            Err(guard)
        } else {
            Ok(guard)
        }
    }

    /// The current token, reference-counted (not for the hot path).
    pub(crate) fn current(&self) -> Option<Arc<TokenRecord>> {
        let current = self.slot.current.load_full();
        (!Arc::ptr_eq(&current, placeholder())).then_some(current)
    }

    pub(crate) fn expired_at(&self) -> Option<Timestamp> {
        self.change_state().expired_at
    }

    /// The status snapshot, for a watcher's key (`None` for a pool's),
    /// without the token's state and expiry (see [`status_now`](Self::status_now)).
    pub(crate) fn status(&self) -> Option<Status> {
        self.change_state().status.as_deref().map(Snapshot::status)
    }

    /// The key's number in its driver.
    pub(crate) fn id(&self) -> KeyId {
        self.id
    }

    pub(crate) fn is_stopped(&self) -> bool {
        self.slot.stopped.load(Ordering::Acquire)
    }

    pub(crate) fn key(&self) -> &CacheKey {
        &self.key
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The name of cache layer `layer`, for logs and warnings.
    pub(crate) fn layer_name(&self, layer: usize) -> &str {
        self.layer_names.get(layer).map_or("?", String::as_str)
    }

    /// Notes a read, for eviction: a load, and a store only the first time
    /// after each check, so that readers do not fight over the line.
    #[inline]
    pub(crate) fn mark_used(&self) {
        if !self.slot.used.load(Ordering::Relaxed) {
            self.slot.used.store(true, Ordering::Relaxed);
        }
    }

    /// One more handle of a watcher.
    pub(crate) fn hold(&self) {
        self.slot.handles.fetch_add(1, Ordering::Relaxed);
    }

    /// One handle fewer; whether it was the last.
    pub(crate) fn release(&self) -> bool {
        self.slot.handles.fetch_sub(1, Ordering::AcqRel) == 1
    }

    /// Whether it was read since the last call.
    pub(crate) fn take_used(&self) -> bool {
        self.slot.used.swap(false, Ordering::Relaxed)
    }

    pub(crate) fn version(&self) -> u64 {
        self.change_state().version
    }

    /// Waits until `done` says yes to the change state, which it is given
    /// under the lock each time it may have changed. Runtime-agnostic (an
    /// [`Event`]), so every wait style can use it.
    pub(crate) async fn wait<T>(&self, mut done: impl FnMut(&ChangeState) -> Option<T>) -> T {
        // Done already (a `spawn` whose token came in its own turn of the
        // driver): no listener is made, which would allocate.
        if let Some(value) = done(&self.change_state()) {
            return value;
        }
        loop {
            // Listen before looking, so that no notification is missed.
            let listener = self.changed.listen();
            if let Some(value) = done(&self.change_state()) {
                return value;
            }
            listener.await;
        }
    }

    /// Waits until the key has its first token, was refused for good
    /// before getting one, or has stopped: the end of a `spawn` and of a
    /// pool's first `get` alike.
    pub(crate) async fn first_token(&self) -> First {
        self.wait(|state| {
            if state.latest.is_some() && !state.closed {
                Some(First::Token)
            } else if state.closed {
                Some(First::Stopped)
            } else {
                state.refused.as_deref().cloned().map(First::Refused)
            }
        })
        .await
    }

    /// The status as of now: the driver's snapshot, with the token readers
    /// get now (its state by the clock), and whether the driver has ended.
    pub(crate) fn status_now(&self) -> Status {
        let now = now().wall;
        let mut status = self.status().unwrap_or_else(Status::stopped);
        match self.current() {
            Some(token) => {
                status.token_state = Some(token.state_at(now));
                status.issued = Some(token.issued);
                status.stale = Some(token.stale);
                status.expiry = Some(token.expiry);
            }
            None => {
                let expired = self.expired_at();
                status.token_state = expired.map(|_| tokenkeeper_core::TokenState::Expired);
                status.expiry = expired;
            }
        }
        if self.is_stopped() {
            status.shut_down = true;
        }
        status
    }

    /// The health as of now (see [`Status::health`]).
    pub(crate) fn health(&self) -> tokenkeeper_core::Health {
        self.status_now().health(now())
    }

    // ---- the driver's side ----

    /// A new token: readers get it from now on, and waiters wake.
    pub(crate) fn publish(&self, token: Arc<TokenRecord>) {
        self.slot.current.store(Arc::clone(&token));
        {
            let mut state = self.change_state();
            state.version += 1;
            state.latest = Some(token);
            state.refused = None;
        }
        self.wake_waiters();
    }

    /// Wakes whoever waits for a change. Nobody, most of the time (and in
    /// every key of a pool that nobody waits on): then nothing is done, and
    /// nothing allocated. A waiter that starts listening after this look
    /// checks the state after that, under the lock, and sees the change.
    fn wake_waiters(&self) {
        if self.changed.total_listeners() > 0 {
            self.changed.notify(usize::MAX);
        }
    }

    /// Refused for good with no token: waiters for a first token stop
    /// waiting.
    pub(crate) fn refuse(&self, error: FetchError) {
        self.change_state().refused = Some(Box::new(error));
        self.wake_waiters();
    }

    /// The token expired unreplaced: readers get none.
    pub(crate) fn withdraw(&self, expired_at: Timestamp) {
        self.slot.current.store(Arc::clone(placeholder()));
        self.change_state().expired_at = Some(expired_at);
    }

    /// Whether it keeps a status snapshot (a watcher's key does).
    pub(crate) fn keeps_status(&self) -> bool {
        self.change_state().status.is_some()
    }

    pub(crate) fn set_status(&self, status: Status) {
        if let Some(kept) = &mut self.change_state().status {
            kept.update(status);
        }
    }

    /// The driver has ended: readers get [`TokenError::Stopped`](crate::TokenError::Stopped)
    /// and waiters wake, for good.
    pub(crate) fn close(&self) {
        self.slot.current.store(Arc::clone(placeholder()));
        if let Some(kept) = &mut self.change_state().status {
            kept.shut_down = true;
        }
        self.slot.stopped.store(true, Ordering::Release);
        {
            let mut state = self.change_state();
            state.closed = true;
            // The token goes now, whoever still holds this state (a pool's
            // map frees removed entries in batches, some time later).
            state.latest = None;
        }
        self.wake_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::park::block_on;

    /// What a key costs is mostly these sizes, each just inside a malloc
    /// size class (glibc: 16-byte steps, 8 bytes of header; `Shared` sits
    /// behind an `Arc`'s 16): a field more costs every watcher and every
    /// key of a pool 16 bytes.
    #[test]
    fn the_status_snapshot_gives_back_all_but_the_tokens_own_state() {
        let mut status = Status::stopped();
        status.token_state = Some(tokenkeeper_core::TokenState::Fresh);
        status.issued = Some(Timestamp::from_secs(10));
        status.stale = Some(Timestamp::from_secs(40));
        status.expiry = Some(Timestamp::from_secs(60));
        status.last_error = Some(FetchError::Transport {
            message: "refused".into(),
        });
        status.last_error_at = Some(Timestamp::from_secs(9));
        status.consecutive_failures = 3;
        status.last_success_at = Some(Timestamp::from_secs(10));
        status.next_attempt = Some(Timestamp::from_secs(40));
        status.fetch_in_flight = true;
        status.shut_down = false;
        let mut snapshot = Snapshot::new(status.clone());
        let mut expected = status.clone();
        // `status_now` reads these from the token it finds.
        expected.token_state = None;
        expected.expiry = None;
        assert_eq!(snapshot.status(), expected);
        // A later status without an error clears it; one with an error
        // reuses the box.
        status.last_error = None;
        status.last_error_at = None;
        snapshot.update(status.clone());
        assert!(snapshot.status().last_error.is_none() && snapshot.last_error.is_none());
        status.last_error = Some(FetchError::Transport {
            message: "again".into(),
        });
        status.last_error_at = Some(Timestamp::from_secs(70));
        snapshot.update(status.clone());
        assert_eq!(snapshot.status().last_error, status.last_error);
        assert_eq!(
            snapshot.status().last_error_at,
            Some(Timestamp::from_secs(70))
        );
    }

    #[test]
    #[cfg(all(target_pointer_width = "64", not(feature = "metrics")))]
    fn a_keys_state_stays_within_its_size_classes() {
        use std::mem::size_of;
        assert!(size_of::<Shared>() <= 136, "{}", size_of::<Shared>());
        assert!(
            size_of::<tokenkeeper_core::Refresher>() <= 360,
            "{}",
            size_of::<tokenkeeper_core::Refresher>()
        );
        assert!(size_of::<Snapshot>() <= 56, "{}", size_of::<Snapshot>());
        assert_eq!(size_of::<Option<Timestamp>>(), 8);
    }

    #[test]
    fn what_a_read_touches_lies_in_one_cache_line() {
        // 16 bytes at the start of `Shared`, which starts 16 bytes into a
        // 16-byte aligned allocation (after an `Arc`'s counts), or, with the
        // metrics' cache-line aligned counters, at a line of its own: never
        // split across two 64-byte lines.
        assert_eq!(std::mem::offset_of!(Shared, slot), 0);
        assert_eq!(std::mem::size_of::<Slot>(), 16);
        assert!(std::mem::offset_of!(Slot, used) < 16);
        let align = std::mem::align_of::<Shared>();
        assert!(align <= 16 || align.is_multiple_of(64), "{align}");
    }

    fn shared() -> Arc<Shared> {
        let refresher = tokenkeeper_core::Refresher::new(
            tokenkeeper_core::RefresherConfig::custom(CacheKey::custom("t", &[])),
            1,
            Timestamp::from_secs(1),
        );
        Arc::new(Shared::new(
            KeyId::new(0),
            CacheKey::custom("t", &[]),
            "t",
            Box::default(),
            Some(refresher.status(Timestamp::from_secs(1))),
            None,
        ))
    }

    fn record(token: &str) -> Arc<TokenRecord> {
        Arc::new(LifetimePolicy::default().record(
            TokenGrant::bearer(AccessToken::new(token), Some(Duration::from_secs(60))),
            Timestamp::from_secs(1),
            None,
        ))
    }

    #[test]
    fn waiters_see_later_tokens_and_the_end() {
        let shared = shared();
        assert!(shared.load().is_err());
        let s = Arc::clone(&shared);
        let waiter = std::thread::spawn(move || {
            let seen = s.version();
            block_on(s.wait(|c| (c.version > seen).then(|| c.latest.clone())))
        });
        std::thread::sleep(Duration::from_millis(50));
        shared.publish(record("one"));
        let got = waiter.join().unwrap().unwrap();
        assert_eq!(got.access_token.expose_secret(), "one");
        assert_eq!(
            shared.load().ok().unwrap().access_token.expose_secret(),
            "one"
        );
        shared.withdraw(Timestamp::from_secs(61));
        assert!(shared.load().is_err());
        assert_eq!(shared.expired_at(), Some(Timestamp::from_secs(61)));

        let s = Arc::clone(&shared);
        let closer = std::thread::spawn(move || block_on(s.wait(|c| c.closed.then_some(()))));
        std::thread::sleep(Duration::from_millis(50));
        shared.close();
        closer.join().unwrap();
        assert!(shared.is_stopped() && shared.status().is_some_and(|s| s.shut_down));
    }
}
