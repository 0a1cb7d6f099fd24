//! The [`Runtime`] of this adapter: plain threads.

use std::sync::Arc;
use std::time::Duration;

use tokenkeeper_driver::{
    Blocking, BoxFuture, HttpSettings, HttpSetupError, Runtime, SharedExchange, park,
};

use crate::exchange::UreqExchange;

/// Plain threads: the driver and each fetch run on a thread of their own
/// (with [`park::block_on`], which sleeps with `park_timeout` and needs no
/// timer thread), blocking work on a thread too, HTTP with ureq. Waiting
/// methods block the calling thread.
#[derive(Debug, Clone, Copy, Default)]
pub struct ThreadRuntime;

impl Runtime for ThreadRuntime {
    type Wait = Blocking;

    fn name(&self) -> &'static str {
        "threads"
    }

    fn driver_key(&self) -> Option<u64> {
        // One thread keeps every watcher's tokens fresh.
        Some(0)
    }

    fn spawn(&self, task: BoxFuture<'static, ()>) {
        let started = std::thread::Builder::new()
            .name("tokenkeeper".to_owned())
            .spawn(move || park::block_on(task));
        if let Err(error) = started {
            // The task is dropped unrun: whoever waits for it sees it end.
            tracing::error!(%error, "could not start a tokenkeeper thread");
        }
    }

    fn spawn_blocking(&self, work: Box<dyn FnOnce() + Send + 'static>) {
        let started = std::thread::Builder::new()
            .name("tokenkeeper-blocking".to_owned())
            .spawn(work);
        if let Err(error) = started {
            tracing::error!(%error, "could not start a tokenkeeper thread");
        }
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        Box::pin(park::sleep(duration))
    }

    fn exchange(&self, settings: &HttpSettings) -> Result<SharedExchange, HttpSetupError> {
        Ok(Arc::new(UreqExchange::new(settings)?))
    }
}
