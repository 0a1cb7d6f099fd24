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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::{Shared, WeakShared};
use tokenkeeper_core::pool::{KeyId, PoolConfig, RefresherPool};

use crate::driver::{Driver, DriverParts, Inbox, KeyParts, RequestSender};
use crate::runtime::{self, BoxFuture, Runtime};

/// A watchers' driver, as a future its task and a `spawn` waiting for a
/// first token can both poll: whoever waits drives it, so a token a cache
/// or a quick source has at once costs no hand-off between threads. Timers
/// it sets while a caller polls it are the runtime's to keep: tokio's and
/// async-io's follow the waker; the thread adapter's [`block_on`] hands
/// them back as the caller's wait returns.
///
/// [`block_on`]: crate::park::block_on
pub(crate) type Running = Shared<BoxFuture<'static, ()>>;

/// A running watchers' driver: its queue, its inbox, its next key number,
/// and the driver itself (weakly: it ends with its runtime's task).
struct Hub {
    requests: RequestSender,
    inbox: Arc<Inbox>,
    next_id: AtomicU64,
    running: Option<WeakShared<BoxFuture<'static, ()>>>,
}

/// What a watcher gets from [`join`].
pub(crate) struct Joined {
    /// The driver's queue.
    pub(crate) requests: RequestSender,
    /// The driver, to poll while waiting for the first token; `None` if it
    /// has ended already.
    pub(crate) running: Option<Running>,
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

/// Hands the key `parts(id)` makes to the driver of `runtime`'s watchers,
/// starting one if none runs. `parts` is called once, with the key's number
/// in that driver.
pub(crate) fn join<R: Runtime, T>(
    runtime: &R,
    wake_interval: Duration,
    parts: impl FnOnce(KeyId) -> (KeyParts, T),
) -> (Joined, T) {
    let Some(driver) = runtime.driver_key() else {
        let (parts, extra) = parts(KeyId::new(0));
        return (start(runtime, wake_interval, parts).joined(), extra);
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
    let (parts, extra) = match hubs.iter().position(|(k, _)| *k == key) {
        Some(found) => {
            let hub = &hubs[found].1;
            let id = KeyId::new(hub.next_id.fetch_add(1, Ordering::Relaxed));
            let (parts, extra) = parts(id);
            match hub.inbox.push_one(parts, &hub.requests) {
                Ok(()) => return (hub.joined(), extra),
                // Ended meanwhile: the key starts a driver of its own, under
                // the number it has.
                Err(parts) => {
                    hubs.swap_remove(found);
                    (*parts, extra)
                }
            }
        }
        None => parts(KeyId::new(0)),
    };
    let hub = start(runtime, wake_interval, parts);
    let joined = hub.joined();
    hubs.push((key, hub));
    (joined, extra)
}

impl Hub {
    fn joined(&self) -> Joined {
        Joined {
            requests: self.requests.clone(),
            running: self.running.as_ref().and_then(WeakShared::upgrade),
        }
    }
}

/// Starts a watchers' driver holding `first`.
fn start<R: Runtime>(runtime: &R, wake_interval: Duration, first: KeyParts) -> Arc<Hub> {
    let (requests_tx, requests_rx) = crate::driver::requests();
    let inbox = Arc::new(Inbox::new());
    let next_id = first.id.get() + 1;
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
    let running = run.shared();
    let weak = running.downgrade();
    runtime::spawn_detached(runtime, "watchers", running);
    Arc::new(Hub {
        requests: requests_tx,
        inbox,
        next_id: AtomicU64::new(next_id),
        running: weak,
    })
}
