//! A loopback server on a tokio runtime of its own, in a thread of its own:
//! how the [`Authority`](crate::Authority) and the
//! [`ResourceServer`](crate::ResourceServer) run, so that they serve tests
//! written for any runtime, or none. Written once: start, wait until
//! connections are accepted, stop and join.

use std::future::Future;
use std::io;
use std::sync::{Mutex, PoisonError, mpsc};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

/// A running server thread; stopping it (or dropping the server that holds
/// it) ends its runtime, which cancels every connection task and closes
/// their sockets.
#[derive(Debug)]
pub(crate) struct ServerThread {
    stopper: Mutex<Option<Stopper>>,
}

#[derive(Debug)]
struct Stopper {
    stop: oneshot::Sender<()>,
    thread: JoinHandle<()>,
}

impl ServerThread {
    /// Starts a thread named `name` running `serve` on a current-thread
    /// runtime with `listeners` (non-blocking std sockets, turned into
    /// tokio's there) and a stop signal; returns once the listeners are
    /// registered, so that connections are accepted when it returns.
    /// `serve` returns when the stop signal comes (or the sender drops).
    pub(crate) fn start<F, Fut>(
        name: String,
        listeners: Vec<std::net::TcpListener>,
        serve: F,
    ) -> io::Result<ServerThread>
    where
        F: FnOnce(Vec<tokio::net::TcpListener>, oneshot::Receiver<()>) -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        let (ready_tx, ready_rx) = mpsc::channel::<io::Result<()>>();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            // The runtime lives and dies in this thread, so that dropping it
            // never happens inside the caller's runtime.
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    let _ = ready_tx.send(Err(error));
                    return;
                }
            };
            runtime.block_on(async move {
                let listeners: io::Result<Vec<_>> = listeners
                    .into_iter()
                    .map(tokio::net::TcpListener::from_std)
                    .collect();
                match listeners {
                    Ok(listeners) => {
                        let _ = ready_tx.send(Ok(()));
                        serve(listeners, stop_rx).await;
                    }
                    Err(error) => {
                        let _ = ready_tx.send(Err(error));
                    }
                }
            });
        })?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(ServerThread {
                stopper: Mutex::new(Some(Stopper {
                    stop: stop_tx,
                    thread,
                })),
            }),
            Ok(Err(error)) => {
                let _ = thread.join();
                Err(error)
            }
            Err(_) => {
                let _ = thread.join();
                Err(io::Error::other(
                    "the server thread ended before it started",
                ))
            }
        }
    }

    /// Stops the server and waits for its thread; `false` if the thread
    /// panicked. Idempotent: later calls do nothing and answer `true`.
    pub(crate) fn stop(&self) -> bool {
        let stopper = self
            .stopper
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        match stopper {
            Some(Stopper { stop, thread }) => {
                let _ = stop.send(());
                thread.join().is_ok()
            }
            None => true,
        }
    }
}
