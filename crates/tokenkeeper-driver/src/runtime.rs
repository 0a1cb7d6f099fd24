//! What the driver needs from a runtime ([`Runtime`]), how the runtime's
//! users wait ([`WaitStyle`]), and the few runtime-agnostic task helpers
//! built on it.

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::FutureExt;

pub use crate::boxed::{BoxFuture, BoxStream};
use crate::http::{HttpSettings, HttpSetupError, SharedExchange};

/// The few things a watcher needs from a runtime: spawn a task, run blocking
/// work, sleep, say how its users wait, and make the HTTP exchange that
/// carries token requests.
///
/// Each adapter implements it once (`tokenkeeper-tokio` for tokio,
/// `tokenkeeper-async-std` for async-std and smol, `tokenkeeper-blocking` for
/// plain threads); everything else (the driving loop, the handles, the cache
/// layers, the settings) is this crate's and the same for every runtime. To
/// run a watcher on another executor, implement it for a small handle type
/// of your own and build the watcher with
/// [`TokenWatcherBuilder::new`](crate::TokenWatcherBuilder::new).
///
/// Spawned work is wrapped by this crate: a task that panics is caught and
/// logged, so implementations may simply detach what they spawn.
pub trait Runtime: Clone + Send + Sync + 'static {
    /// How the handles' waiting methods (`spawn`, `changed`, `shutdown`, ...)
    /// wait on this runtime: [`Async`] returns futures, [`Blocking`] blocks
    /// the calling thread.
    type Wait: WaitStyle;

    /// A short name for logs and the default `User-Agent`
    /// (`tokio`, `async-std`, `smol`, `threads`, ...).
    fn name(&self) -> &'static str;

    /// The runtime to start a watcher on, seen from the calling context, or
    /// `None` when it cannot run one from here (tokio: no runtime on this
    /// thread). Called once per watcher, when it starts. The default is the
    /// runtime itself.
    fn bind(&self) -> Option<Self> {
        Some(self.clone())
    }

    /// Runs `task` in the background until it completes. Nothing waits for
    /// its output; dropping the runtime may drop it unfinished.
    fn spawn(&self, task: BoxFuture<'static, ()>);

    /// Runs `work`, which blocks (file I/O, a blocking cache layer or token
    /// source), where it does not hold up async tasks.
    fn spawn_blocking(&self, work: Box<dyn FnOnce() + Send + 'static>);

    /// A future that completes after `duration`.
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()>;

    /// Whether the driver may poll its fetches (token requests, calls to an
    /// async source) itself, from the calling thread, instead of giving each
    /// a task of its own: true only when futures of this runtime's exchange
    /// never block the thread that polls them and may be polled here (tokio:
    /// the calling thread runs the watcher's runtime, whose reactor its
    /// sockets need). It saves a task and two hand-offs between threads per
    /// fetch, and lets `spawn` get a first token without any. The default,
    /// `false`, gives every fetch a task.
    fn polls_fetches_inline(&self) -> bool {
        false
    }

    /// Which driver a new watcher joins: watchers on runtimes that answer
    /// the same number (and of the same type) share one driver, a task or
    /// thread that keeps all their tokens fresh; `None`, the default, gives
    /// each watcher a driver of its own. Answer the same number only for
    /// runtimes that are interchangeable: the shared driver runs where the
    /// first watcher started it, and ends with that runtime.
    fn driver_key(&self) -> Option<u64> {
        None
    }

    /// The HTTP exchange for token requests, set up with `settings`.
    fn exchange(&self, settings: &HttpSettings) -> Result<SharedExchange, HttpSetupError>;
}

/// How a runtime's users wait: the one difference between an async adapter
/// and the thread adapter that shows in their API. Every waiting method of
/// this crate is written once as a future; the style turns it into what the
/// runtime's users expect.
pub trait WaitStyle: Send + Sync + 'static {
    /// What a waiting method returns for a result `T`: a future to `.await`
    /// ([`Async`]), or `T` itself ([`Blocking`]).
    type Out<'a, T: Send + 'a>;

    /// Turns the waiting future into what users get.
    fn wait<'a, T: Send + 'a>(future: BoxFuture<'a, T>) -> Self::Out<'a, T>;
}

/// Waiting methods return futures.
#[derive(Debug, Clone, Copy, Default)]
pub struct Async;

impl WaitStyle for Async {
    type Out<'a, T: Send + 'a> = BoxFuture<'a, T>;

    fn wait<'a, T: Send + 'a>(future: BoxFuture<'a, T>) -> BoxFuture<'a, T> {
        future
    }
}

/// Waiting methods block the calling thread (with [`park::block_on`](crate::park::block_on)).
#[derive(Debug, Clone, Copy, Default)]
pub struct Blocking;

impl WaitStyle for Blocking {
    type Out<'a, T: Send + 'a> = T;

    fn wait<'a, T: Send + 'a>(future: BoxFuture<'a, T>) -> T {
        crate::park::block_on(future)
    }
}

/// What a waiting method of a handle on the runtime `R` returns: a future
/// for async runtimes, the value itself for threads.
pub type Waited<'a, R, T> = <<R as Runtime>::Wait as WaitStyle>::Out<'a, T>;

/// Hands `future` to `R`'s wait style.
pub(crate) fn wait<'a, R: Runtime, T: Send + 'a>(
    future: impl Future<Output = T> + Send + 'a,
) -> Waited<'a, R, T> {
    <R::Wait as WaitStyle>::wait(Box::pin(future))
}

/// The watcher's timer, handed to cache layers whose change feed must wait
/// (before reconnecting to its store, say). Cheap to clone.
#[derive(Clone)]
pub struct Sleeper(Arc<dyn Fn(Duration) -> BoxFuture<'static, ()> + Send + Sync>);

impl fmt::Debug for Sleeper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sleeper")
    }
}

impl Sleeper {
    /// A sleeper made of a function returning a timer future.
    pub fn new(sleep: impl Fn(Duration) -> BoxFuture<'static, ()> + Send + Sync + 'static) -> Self {
        Sleeper(Arc::new(sleep))
    }

    /// The timer of `runtime`.
    pub fn of<R: Runtime>(runtime: R) -> Self {
        Sleeper::new(move |duration| runtime.sleep(duration))
    }

    /// A future that completes after `duration`.
    pub fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        (self.0)(duration)
    }
}

/// A task spawned with [`spawn`]: it can be cancelled and waited for.
/// Dropping the handle leaves the task running.
pub(crate) struct Task {
    cancel: async_channel::Sender<()>,
    done: async_channel::Receiver<()>,
}

impl Task {
    /// Asks the task to stop: its future is dropped at its next wake-up.
    pub(crate) fn abort(&self) {
        self.cancel.close();
    }

    /// Whether the task has ended (completed, panicked, cancelled, or dropped
    /// with its runtime).
    pub(crate) fn is_finished(&self) -> bool {
        self.done.is_closed()
    }

    /// Waits until the task has ended.
    pub(crate) async fn join(&self) {
        let _ = self.done.recv().await;
    }
}

/// Spawns `task` on `runtime` for good, catching a panic (logged as an
/// error, naming `what`): for a task that is never aborted or joined (a
/// driver, which ends by itself), so without [`spawn`]'s handle and the two
/// channels it costs.
pub(crate) fn spawn_detached<R: Runtime>(
    runtime: &R,
    what: &'static str,
    task: impl Future<Output = ()> + Send + 'static,
) {
    // Boxed first, as in `spawn`: the wrapper then holds a pointer, not a
    // second copy of the task's state.
    let task = Box::pin(task);
    runtime.spawn(Box::pin(async move {
        if AssertUnwindSafe(task).catch_unwind().await.is_err() {
            tracing::error!(task = what, "a tokenkeeper task panicked");
        }
    }));
}

/// Spawns `task` on `runtime`, catching a panic (logged as an error, naming
/// `what`) and ending it early when the returned [`Task`] is aborted.
pub(crate) fn spawn<R: Runtime>(
    runtime: &R,
    what: &'static str,
    task: impl Future<Output = ()> + Send + 'static,
) -> Task {
    // Boxed first: the wrapper below moves it into nested futures, which
    // would otherwise each hold a copy of its state (a driver's is
    // kilobytes, and a watcher is one such task).
    let task = Box::pin(task);
    let (cancel, cancelled) = async_channel::bounded::<()>(1);
    let (finished, done) = async_channel::bounded::<()>(1);
    // Held by the task, so that only `Task::abort` (never a dropped handle)
    // closes the channel.
    let keep_open = cancel.clone();
    runtime.spawn(Box::pin(async move {
        let _keep_open = keep_open;
        // Dropped when the task ends, however it ends: that closes `done`.
        let _finished = finished;
        let run = async move {
            if AssertUnwindSafe(task).catch_unwind().await.is_err() {
                tracing::error!(task = what, "a tokenkeeper task panicked");
            }
        };
        // Aborted before its first poll: it never runs.
        if cancelled.is_closed() {
            return;
        }
        let stop = async move {
            // Closed by `Task::abort`.
            let _ = cancelled.recv().await;
        };
        // The work first: a task that ends in its first poll never waits
        // on the stop signal (no listener made for it).
        run.or(stop).await;
    }));
    Task { cancel, done }
}

/// Runs `future` for at most `limit`; `None` when the time ran out first.
///
/// The clock starts only if the first poll leaves the work pending: most
/// work guarded here ends at once (a first token from an in-memory source,
/// a token already held), and a timer costs an allocation and a
/// registration with the runtime's timers. `limit` counts from the end of
/// that poll, which a future that does not block (as a future must not)
/// makes short: no clock is read for it.
pub async fn timeout<R: Runtime, T>(
    runtime: &R,
    limit: Duration,
    future: impl Future<Output = T>,
) -> Option<T> {
    let mut future = std::pin::pin!(future);
    if let Some(value) = futures_lite::future::poll_once(future.as_mut()).await {
        return Some(value);
    }
    let work = async { Some(future.await) };
    let clock = async {
        runtime.sleep(limit).await;
        None
    };
    work.or(clock).await
}

/// The blocking work panicked, or the runtime dropped it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotCompleted;

/// Runs blocking `work` on the runtime's blocking pool and waits for its
/// result.
///
/// Work whose future was dropped before the pool began it is skipped: a
/// stopped watcher's call to its source, queued behind busy threads, is not
/// made after the stop. Work already begun runs to its end (a thread cannot
/// be interrupted).
pub async fn unblock<R: Runtime, T: Send + 'static>(
    runtime: &R,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, NotCompleted> {
    let (tx, rx) = async_channel::bounded(1);
    runtime.spawn_blocking(Box::new(move || {
        // The only receiver is gone: nobody waits for this any more.
        if tx.is_closed() {
            return;
        }
        if let Ok(value) = std::panic::catch_unwind(AssertUnwindSafe(work)) {
            let _ = tx.try_send(value);
        }
    }));
    rx.recv().await.map_err(|_| NotCompleted)
}

#[cfg(test)]
pub(crate) mod testing {
    //! A runtime of plain threads, for unit tests: each task gets a thread
    //! running the park executor; it has no network.

    use super::*;

    /// Threads for everything; connects nowhere.
    #[derive(Debug, Clone, Default)]
    pub(crate) struct Threads;

    struct Refuse;

    impl crate::http::Exchange for Refuse {
        fn send(
            &self,
            _: http::Request<Vec<u8>>,
            _: usize,
        ) -> BoxFuture<'static, Result<crate::http::HttpAnswer, tokenkeeper_core::FetchError>>
        {
            Box::pin(async {
                Err(tokenkeeper_core::FetchError::Transport {
                    message: "this test runtime has no network".into(),
                })
            })
        }
    }

    impl Runtime for Threads {
        type Wait = Blocking;

        fn name(&self) -> &'static str {
            "threads"
        }

        fn driver_key(&self) -> Option<u64> {
            Some(0)
        }

        fn spawn(&self, task: BoxFuture<'static, ()>) {
            std::thread::spawn(move || crate::park::block_on(task));
        }

        fn spawn_blocking(&self, work: Box<dyn FnOnce() + Send + 'static>) {
            std::thread::spawn(work);
        }

        fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
            Box::pin(crate::park::sleep(duration))
        }

        fn exchange(&self, _: &HttpSettings) -> Result<SharedExchange, HttpSetupError> {
            Ok(Arc::new(Refuse))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::Threads;
    use super::*;
    use crate::park::block_on;
    use std::time::Instant;

    #[test]
    fn tasks_run_can_be_aborted_and_survive_panics() {
        let rt = Threads;
        let (tx, rx) = async_channel::unbounded();
        let done = spawn(&rt, "test", async move {
            let _ = tx.send(1).await;
        });
        assert_eq!(block_on(rx.recv()), Ok(1));
        block_on(done.join());
        assert!(done.is_finished());

        let forever = spawn(&rt, "test", futures_lite::future::pending());
        assert!(!forever.is_finished());
        forever.abort();
        block_on(forever.join());
        assert!(forever.is_finished());

        let panics = spawn(&rt, "test", async { panic!("boom") });
        block_on(panics.join());
        assert!(panics.is_finished());
    }

    #[test]
    fn timeouts_and_blocking_work() {
        let rt = Threads;
        let started = Instant::now();
        let late = block_on(timeout(
            &rt,
            Duration::from_millis(50),
            futures_lite::future::pending::<()>(),
        ));
        assert_eq!(late, None);
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert_eq!(
            block_on(timeout(&rt, Duration::from_secs(5), async { 7 })),
            Some(7)
        );
        assert_eq!(block_on(unblock(&rt, || 6 * 7)), Ok(42));
        assert_eq!(
            block_on(unblock(&rt, || -> u8 { panic!("blocking boom") })),
            Err(NotCompleted)
        );
        let sleeper = Sleeper::of(rt);
        let started = Instant::now();
        block_on(sleeper.sleep(Duration::from_millis(20)));
        assert!(started.elapsed() >= Duration::from_millis(20));
    }

    type BlockingWork = Box<dyn FnOnce() + Send>;

    /// Threads, but the work it is given waits in a queue until the test
    /// runs it: the moment between a task's spawn and its start, held open.
    /// It counts the timers it makes.
    #[derive(Clone, Default)]
    struct Queued {
        tasks: Arc<std::sync::Mutex<Vec<BoxFuture<'static, ()>>>>,
        work: Arc<std::sync::Mutex<Vec<BlockingWork>>>,
        sleeps: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Queued {
        fn run_queued(&self) {
            for task in std::mem::take(&mut *self.tasks.lock().unwrap()) {
                Threads.spawn(task);
            }
            for work in std::mem::take(&mut *self.work.lock().unwrap()) {
                work();
            }
        }
    }

    impl Runtime for Queued {
        type Wait = crate::runtime::Blocking;

        fn name(&self) -> &'static str {
            "queued"
        }

        fn spawn(&self, task: BoxFuture<'static, ()>) {
            self.tasks.lock().unwrap().push(task);
        }

        fn spawn_blocking(&self, work: Box<dyn FnOnce() + Send + 'static>) {
            self.work.lock().unwrap().push(work);
        }

        fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
            self.sleeps
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Threads.sleep(duration)
        }

        fn exchange(&self, settings: &HttpSettings) -> Result<SharedExchange, HttpSetupError> {
            Threads.exchange(settings)
        }
    }

    #[test]
    fn work_given_up_before_it_began_never_runs() {
        let rt = Queued::default();
        let ran = Arc::new(std::sync::atomic::AtomicUsize::new(0));

        // Blocking work queued behind busy threads, its waiter dropped.
        let counter = Arc::clone(&ran);
        let mut waiting = Box::pin(unblock(&rt, move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }));
        assert!(block_on(futures_lite::future::poll_once(waiting.as_mut())).is_none());
        drop(waiting);
        // A task aborted before its first poll.
        let counter = Arc::clone(&ran);
        let aborted = spawn(&rt, "test", async move {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        });
        aborted.abort();
        rt.run_queued();
        block_on(aborted.join());
        assert_eq!(ran.load(std::sync::atomic::Ordering::SeqCst), 0);

        // Work still waited for runs.
        let counter = Arc::clone(&ran);
        let mut waiting = Box::pin(unblock(&rt, move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            5
        }));
        assert!(block_on(futures_lite::future::poll_once(waiting.as_mut())).is_none());
        rt.run_queued();
        assert_eq!(block_on(waiting), Ok(5));
        assert_eq!(ran.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn a_timeout_makes_no_timer_for_work_done_at_once() {
        let rt = Queued::default();
        let sleeps = || rt.sleeps.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(
            block_on(timeout(&rt, Duration::from_secs(5), async { 3 })),
            Some(3)
        );
        assert_eq!(sleeps(), 0);
        // Pending at first: the clock starts, and still ends the wait.
        let (tx, rx) = async_channel::bounded::<u8>(1);
        let answered = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            tx.try_send(4)
        });
        assert_eq!(
            block_on(timeout(&rt, Duration::from_secs(5), rx.recv())),
            Some(Ok(4))
        );
        assert_eq!(sleeps(), 1);
        assert!(answered.join().unwrap().is_ok());
        let never = futures_lite::future::pending::<()>();
        assert_eq!(
            block_on(timeout(&rt, Duration::from_millis(10), never)),
            None
        );
        assert_eq!(sleeps(), 2);
    }
}
