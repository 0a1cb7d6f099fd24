//! Where a watcher's key is driven: the one driver its runtime runs for
//! every watcher (a pool whose keys are watchers), started by the first and
//! ended after the last.
//!
//! A driver per watcher cost a task, a timer and two queues each, and a
//! hand-off between threads to start: a process with thousands of watchers
//! paid for thousands of drivers. Shared, a watcher costs what a key of a
//! pool costs, and idle wake-ups do not grow with the number of watchers.
//!
//! Watchers share a driver only when their runtimes say they are the same
//! ([`Runtime::driver_key`]) and they want the same wake interval; a runtime
//! that does not say gives each watcher a driver of its own, as before.

use std::any::TypeId;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use futures_util::FutureExt;
use tokenkeeper_core::pool::{KeyId, PoolConfig, RefresherPool};

use crate::driver::{Driver, DriverParts, Inbox, KeyParts, RequestSender};
use crate::runtime::{self, BoxFuture, Runtime};

/// A watchers' driver that its task and a `spawn` waiting for a first token
/// can both poll: whoever waits drives it, so a token a cache or a quick
/// source has at once costs no hand-off between threads.
///
/// Unlike a `futures` `Shared`, which wakes every poller whenever the driver
/// is woken, this one wakes only the caller driving it while that caller is
/// about to poll (its key just handed over), and its task as well once the
/// callers have polled or stopped: a `spawn` whose token comes at once
/// costs no wake-up of another thread, and a `spawn` future kept unpolled
/// holds up no one. Timers the driver sets while a caller polls it wake it
/// through the same waker, so they reach its task; the thread adapter's
/// [`block_on`] hands its timers back as the caller's wait returns.
///
/// [`block_on`]: crate::park::block_on
pub(crate) struct Running(Arc<Driven>);

/// The driver's future, and where its wake-ups go. The wakers hold only
/// the latter: they outlive the future in the queues it listens to (which
/// its own handles keep), and must not keep it alive once its task is gone.
struct Driven {
    /// `None` while being polled, and once finished.
    future: Mutex<Option<BoxFuture<'static, ()>>>,
    baton: Arc<Baton>,
}

struct Baton {
    state: Mutex<BatonState>,
}

#[derive(Default)]
struct BatonState {
    polling: bool,
    finished: bool,
    /// Woken while being polled: the poller polls again.
    woken: bool,
    /// Woken on behalf of callers that may stop before polling: handed to
    /// the task if they do.
    unheard: bool,
    task: Option<Waker>,
    /// The callers driving it, with their wakers once they have polled.
    callers: Vec<(u64, Option<Waker>)>,
    next_caller: u64,
}

impl Baton {
    fn state(&self) -> MutexGuard<'_, BatonState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Wake for Baton {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Woken outside the lock (a waker may come back here), and with no
        // allocation for the one caller there usually is.
        let (first, rest): (Option<Waker>, Vec<Waker>) = {
            let mut state = self.state();
            if state.polling {
                state.woken = true;
                return;
            }
            if state.callers.is_empty() {
                (state.task.clone(), Vec::new())
            } else {
                state.unheard = true;
                // A caller about to poll (its key just handed over) will
                // hear it. Callers that have polled already might be kept
                // unpolled for a while: the task hears it too.
                let about_to_poll = state.callers.iter().any(|(_, w)| w.is_none());
                let task = state.task.clone().filter(|_| !about_to_poll);
                let mut wakers = state
                    .callers
                    .iter()
                    .filter_map(|(_, w)| w.clone())
                    .chain(task);
                (wakers.next(), wakers.collect())
            }
        };
        first.into_iter().chain(rest).for_each(Waker::wake);
    }
}

impl Running {
    fn new(future: BoxFuture<'static, ()>) -> Self {
        Running(Arc::new(Driven {
            future: Mutex::new(Some(future)),
            baton: Arc::new(Baton {
                state: Mutex::new(BatonState::default()),
            }),
        }))
    }

    /// Drives the driver from a `spawn` until it ends (it is meant to be
    /// raced against the first token, and dropped then). The caller counts
    /// as driving from now on, before it first polls: made before its key
    /// is handed over, the hand-over wakes no other thread.
    pub(crate) fn drive(&self) -> Driving {
        let mut state = self.0.baton.state();
        let id = state.next_caller;
        state.next_caller += 1;
        state.callers.push((id, None));
        Driving {
            driven: Arc::clone(&self.0),
            id,
        }
    }

    /// Polls the driver once, unless someone else is polling it (who is
    /// told to poll again if it is woken meanwhile). `poller` is whoever
    /// polls: woken at once when the driver was woken during its poll, so
    /// that its executor, not a loop here, polls it again.
    fn poll_driver(driven: &Driven, poller: &Waker) -> Poll<()> {
        let baton = &driven.baton;
        let mut future = {
            let mut state = baton.state();
            if state.finished {
                return Poll::Ready(());
            }
            if state.polling {
                return Poll::Pending;
            }
            let Some(future) = driven.lock_future().take() else {
                return Poll::Pending;
            };
            state.polling = true;
            state.unheard = false;
            future
        };
        let waker = Waker::from(Arc::clone(baton));
        let polled = future.as_mut().poll(&mut Context::from_waker(&waker));
        let mut state = baton.state();
        state.polling = false;
        if polled.is_ready() {
            state.finished = true;
            let task = state.task.take();
            let wake: Vec<Waker> = state
                .callers
                .iter()
                .filter_map(|(_, w)| w.clone())
                .chain(task)
                .collect();
            drop(state);
            wake.into_iter().for_each(Waker::wake);
            return Poll::Ready(());
        }
        *driven.lock_future() = Some(future);
        if std::mem::take(&mut state.woken) {
            drop(state);
            poller.wake_by_ref();
        }
        Poll::Pending
    }
}

impl Driven {
    fn lock_future(&self) -> MutexGuard<'_, Option<BoxFuture<'static, ()>>> {
        self.future.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The driver's own task's side of a [`Running`].
struct TaskSide(Arc<Driven>);

impl Future for TaskSide {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        {
            let mut state = self.0.baton.state();
            if !state.task.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                state.task = Some(cx.waker().clone());
            }
        }
        Running::poll_driver(&self.0, cx.waker())
    }
}

/// A caller driving a [`Running`]; dropping it hands the driver back to its
/// task.
pub(crate) struct Driving {
    driven: Arc<Driven>,
    id: u64,
}

impl Future for Driving {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        {
            let mut state = self.driven.baton.state();
            let id = self.id;
            match state.callers.iter_mut().find(|(i, _)| *i == id) {
                Some((_, Some(waker))) => waker.clone_from(cx.waker()),
                Some((_, waker)) => *waker = Some(cx.waker().clone()),
                None => state.callers.push((id, Some(cx.waker().clone()))),
            }
        }
        Running::poll_driver(&self.driven, cx.waker())
    }
}

impl Drop for Driving {
    fn drop(&mut self) {
        let task = {
            let mut state = self.driven.baton.state();
            let id = self.id;
            state.callers.retain(|(i, _)| *i != id);
            // A wake-up meant for the callers that none of them acted on
            // is the task's now.
            if state.callers.is_empty() && std::mem::take(&mut state.unheard) {
                state.task.clone()
            } else {
                None
            }
        };
        if let Some(task) = task {
            task.wake();
        }
    }
}

/// A running watchers' driver: its queue, its inbox, and the driver
/// itself (weakly: it ends with its runtime's task).
struct Hub {
    requests: RequestSender,
    inbox: Arc<Inbox>,
    running: Weak<Driven>,
}

/// What a watcher gets from [`join`].
pub(crate) struct Joined {
    /// The driver's queue.
    pub(crate) requests: RequestSender,
    /// The driver, to poll while waiting for the first token (see
    /// [`Running`]), when asked for and still running. Dropping it hands
    /// the driver back to its task.
    pub(crate) driving: Option<Driving>,
}

/// Which watchers may share a hub.
#[derive(PartialEq, Eq)]
struct HubKey {
    runtime: TypeId,
    driver: u64,
    wake_interval: Duration,
}

/// The hubs running now. A handful at most (one per runtime and wake
/// interval), so a vector searched in order.
static HUBS: Mutex<Vec<(HubKey, Arc<Hub>)>> = Mutex::new(Vec::new());

/// Every watcher's key number, whichever driver holds it: drawn before the
/// key knows its driver (a `spawn` takes its first turn before it joins
/// one, see [`first_turn`](crate::driver::first_turn)), and unique in any
/// driver it may end up in.
static NEXT_KEY: AtomicU64 = AtomicU64::new(0);

/// A number for a new watcher's key.
pub(crate) fn key_id() -> KeyId {
    KeyId::new(NEXT_KEY.fetch_add(1, Ordering::Relaxed))
}

/// Hands `parts` to the driver of `runtime`'s watchers, starting one if
/// none runs. With `drive`, the caller gets the driver to poll while it
/// waits for a first token; without, the driver's task takes the key in,
/// woken for it if it would not wake by `needs_driver_by` anyway (see
/// [`Inbox::push_one`]).
pub(crate) fn join<R: Runtime>(
    runtime: &R,
    wake_interval: Duration,
    parts: KeyParts,
    drive: bool,
    needs_driver_by: Option<u64>,
) -> Joined {
    let Some(driver) = runtime.driver_key() else {
        let (hub, driving) = start(runtime, wake_interval, parts, drive);
        return hub.joined(driving);
    };
    let key = HubKey {
        runtime: TypeId::of::<R>(),
        driver,
        wake_interval,
    };
    let mut hubs = HUBS.lock().unwrap_or_else(PoisonError::into_inner);
    // Hubs whose driver has ended (its last watcher left, or its runtime
    // was dropped) are forgotten.
    hubs.retain(|(_, hub)| !hub.requests.is_closed());
    let parts = match hubs.iter().position(|(k, _)| *k == key) {
        Some(found) => {
            let hub = &hubs[found].1;
            let driving = if drive {
                hub.running.upgrade().map(|driven| Running(driven).drive())
            } else {
                None
            };
            match hub.inbox.push_one(parts, &hub.requests, needs_driver_by) {
                Ok(()) => return hub.joined(driving),
                // Ended meanwhile: the key starts a driver of its own.
                Err(parts) => {
                    hubs.swap_remove(found);
                    *parts
                }
            }
        }
        None => parts,
    };
    let (hub, driving) = start(runtime, wake_interval, parts, drive);
    let joined = hub.joined(driving);
    hubs.push((key, hub));
    joined
}

impl Hub {
    fn joined(&self, driving: Option<Driving>) -> Joined {
        Joined {
            requests: self.requests.clone(),
            driving,
        }
    }
}

/// Starts a watchers' driver holding `first`, driven by the caller (with
/// `drive`) until it drops the [`Driving`], else by its task at once.
fn start<R: Runtime>(
    runtime: &R,
    wake_interval: Duration,
    first: KeyParts,
    drive: bool,
) -> (Arc<Hub>, Option<Driving>) {
    let (requests_tx, requests_rx) = crate::driver::requests();
    let inbox = Arc::new(Inbox::new());
    let mut driver = Driver::new(DriverParts {
        runtime: runtime.clone(),
        // Watchers were never capped together: each is its own client.
        pool: RefresherPool::new(PoolConfig::default().max_in_flight(usize::MAX)),
        requests: requests_rx,
        inbox: Some(Arc::clone(&inbox)),
        wake_interval,
        ends_when_empty: true,
        name: "watchers".to_owned(),
    });
    // Added before the driver runs, so that it does not end at once, empty.
    driver.add(first);
    // A panic is caught inside what is shared, so that it ends the driver
    // (logged) rather than reaching whoever happens to poll it.
    let run: BoxFuture<'static, ()> = Box::pin(
        std::panic::AssertUnwindSafe(driver.run())
            .catch_unwind()
            .map(|ended| {
                if ended.is_err() {
                    tracing::error!(task = "watchers", "a tokenkeeper task panicked");
                }
            }),
    );
    let running = Running::new(run);
    let weak = Arc::downgrade(&running.0);
    let driving = drive.then(|| running.drive());
    runtime::spawn_detached(runtime, "watchers", TaskSide(running.0));
    let hub = Arc::new(Hub {
        requests: requests_tx,
        inbox,
        running: weak,
    });
    (hub, driving)
}
