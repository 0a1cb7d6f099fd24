//! What the watcher needs from an async runtime ([`Runtime`]), and the few
//! runtime-agnostic task helpers built on it.

use std::fmt;
use std::future::Future;
use std::io;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::{FutureExt, Stream};
use rustls::pki_types::ServerName;

/// A boxed, sendable future: what the object-safe traits of this crate
/// ([`TokenSource`](crate::TokenSource), [`CacheLayer`](crate::CacheLayer),
/// [`Runtime`]) return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A boxed, sendable stream: what [`CacheLayer::changes`](crate::CacheLayer::changes)
/// returns.
pub type BoxStream<'a, T> = Pin<Box<dyn Stream<Item = T> + Send + 'a>>;

/// The few things a watcher needs from an async runtime: spawn a task, run
/// blocking work, sleep, and open a connection (TCP, with TLS for `https`)
/// to a token endpoint.
///
/// Each async adapter implements it once (`tokenkeeper-tokio` for tokio,
/// `tokenkeeper-async-std` for async-std and smol); everything else (the
/// driving loop, the handles, the HTTP exchange, the cache layers) is this
/// crate's and the same for every runtime. To run a watcher on another
/// executor, implement it for a small handle type of your own and build the
/// watcher with [`TokenWatcherBuilder::new`](crate::TokenWatcherBuilder::new).
///
/// Spawned work is wrapped by this crate: a task that panics is caught and
/// logged, so implementations may simply detach what they spawn.
pub trait Runtime: Clone + Send + Sync + 'static {
    /// A connection to a token endpoint, as hyper reads and writes it.
    type Io: hyper::rt::Read + hyper::rt::Write + Send + Unpin + 'static;

    /// A short name for logs and the default `User-Agent`
    /// (`tokio`, `async-std`, `smol`, ...).
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

    /// Runs `work`, which blocks (file I/O, DNS), where it does not hold up
    /// async tasks: the runtime's blocking pool.
    fn spawn_blocking(&self, work: Box<dyn FnOnce() + Send + 'static>);

    /// A future that completes after `duration`.
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()>;

    /// Opens a connection to `endpoint`: TCP to its host and port (resolving
    /// the name first, without blocking the executor), then, when
    /// [`Endpoint::tls`] is set, a TLS handshake with that configuration. The
    /// caller bounds the time it may take.
    fn connect(&self, endpoint: &Endpoint) -> BoxFuture<'static, io::Result<Self::Io>>;
}

/// Where [`Runtime::connect`] connects to.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Endpoint {
    /// The host: a DNS name, or an IP address (without brackets).
    pub host: String,
    /// The TCP port.
    pub port: u16,
    /// TLS to run over the connection, for `https`.
    pub tls: Option<Tls>,
}

/// The TLS half of an [`Endpoint`]: the client configuration (rustls with the
/// *ring* provider and the configured roots) and the name to verify.
#[derive(Clone)]
#[non_exhaustive]
pub struct Tls {
    /// The rustls client configuration.
    pub config: Arc<rustls::ClientConfig>,
    /// The server name to send (SNI) and to verify the certificate against.
    pub server_name: ServerName<'static>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
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

/// Spawns `task` on `runtime`, catching a panic (logged as an error, naming
/// `what`) and ending it early when the returned [`Task`] is aborted.
pub(crate) fn spawn<R: Runtime>(
    runtime: &R,
    what: &'static str,
    task: impl Future<Output = ()> + Send + 'static,
) -> Task {
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
        let stop = async move {
            // Closed by `Task::abort`.
            let _ = cancelled.recv().await;
        };
        run.or(stop).await;
    }));
    Task { cancel, done }
}

/// Runs `future` for at most `limit`; `None` when the time ran out first.
pub(crate) async fn timeout<R: Runtime, T>(
    runtime: &R,
    limit: Duration,
    future: impl Future<Output = T>,
) -> Option<T> {
    let work = async { Some(future.await) };
    let clock = async {
        runtime.sleep(limit).await;
        None
    };
    work.or(clock).await
}

/// The blocking work panicked, or the runtime dropped it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NotCompleted;

/// Runs blocking `work` on the runtime's blocking pool and waits for its
/// result.
pub(crate) async fn unblock<R: Runtime, T: Send + 'static>(
    runtime: &R,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, NotCompleted> {
    let (tx, rx) = async_channel::bounded(1);
    runtime.spawn_blocking(Box::new(move || {
        if let Ok(value) = std::panic::catch_unwind(AssertUnwindSafe(work)) {
            let _ = tx.try_send(value);
        }
    }));
    rx.recv().await.map_err(|_| NotCompleted)
}

#[cfg(test)]
pub(crate) mod testing {
    //! A runtime of plain threads, for unit tests: each task and each piece
    //! of blocking work gets a thread; timers are threads that sleep.

    use super::*;

    /// Threads for everything; connects nowhere.
    #[derive(Debug, Clone, Default)]
    pub(crate) struct Threads;

    /// No connection is ever made by this runtime.
    pub(crate) struct NoIo;

    impl hyper::rt::Read for NoIo {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            _: hyper::rt::ReadBufCursor<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    impl hyper::rt::Write for NoIo {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<io::Result<usize>> {
            std::task::Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    impl Runtime for Threads {
        type Io = NoIo;

        fn name(&self) -> &'static str {
            "threads"
        }

        fn spawn(&self, task: BoxFuture<'static, ()>) {
            std::thread::spawn(move || futures_lite::future::block_on(task));
        }

        fn spawn_blocking(&self, work: Box<dyn FnOnce() + Send + 'static>) {
            std::thread::spawn(work);
        }

        fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
            let (tx, rx) = async_channel::bounded::<()>(1);
            std::thread::spawn(move || {
                std::thread::sleep(duration);
                drop(tx);
            });
            Box::pin(async move {
                let _ = rx.recv().await;
            })
        }

        fn connect(&self, _: &Endpoint) -> BoxFuture<'static, io::Result<NoIo>> {
            Box::pin(async { Err(io::Error::from(io::ErrorKind::ConnectionRefused)) })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::Threads;
    use super::*;
    use futures_lite::future::block_on;
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
}
