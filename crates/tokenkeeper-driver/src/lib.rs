//! The driver of tokenkeeper, written once for every runtime: the loop that
//! drives the core's [`Refresher`](tokenkeeper_core::Refresher), the
//! [`TokenWatcher`] handles and their [`TokenWatcherBuilder`], the token
//! sources, the cache-layer traits, the HTTP settings, the one-shot
//! [`get_token`](TokenWatcherBuilder::get_token), and the logging of what happens.
//!
//! A runtime adapter supplies a [`Runtime`]: how to spawn a task, run
//! blocking work, sleep, how its users wait ([`Async`] futures or
//! [`Blocking`] calls), and its HTTP [`Exchange`]. Then it names the types
//! for its users:
//!
//! - `tokenkeeper-tokio`: `TokenWatcher = TokenWatcher<TokioRuntime>`, hyper
//!   over tokio sockets and tokio-rustls;
//! - `tokenkeeper-async-std`: `TokenWatcher<AsyncIoRuntime>`, for async-std
//!   and smol, hyper over async-io sockets and futures-rustls;
//! - `tokenkeeper-blocking`: `TokenWatcher<ThreadRuntime>`, plain threads and
//!   ureq.
//!
//! Applications depend on one of those, not on this crate. It is for adapter
//! authors, and for running a watcher on another executor: implement
//! [`Runtime`] and start it with [`TokenWatcherBuilder::new`].
//!
//! # The driver
//!
//! The driver is the core's canonical loop and nothing more: drain the
//! refresher's effects (each fetch a task of its own; each cache layer's
//! reads, writes and leases in order, in the layer's own task) and events
//! (tokens published to the handles with an atomic pointer swap, logged with
//! safe fields, passed to the [`on_event`](TokenWatcherBuilder::on_event)
//! hook), then wait for the first of a command from the handles, a finished
//! effect, a change announced by a cache layer and the refresher's deadline,
//! capped by the wake interval (a minute by default, so that a suspended
//! machine or a clock step is noticed), and feed what came back. No
//! staleness, jitter, backoff or grace arithmetic happens here: the
//! refresher decides, including the deadline of every outstanding effect
//! and how long a stopping watcher lets a refresh-token request finish.
//!
//! # What it guarantees, on every runtime
//!
//! - [`TokenWatcher::token`] never waits and takes no lock: one atomic load.
//! - [`TokenWatcherBuilder::spawn`] returns once a first token is held; a
//!   permanent refusal (`invalid_client`, ...) fails it at once, a source that
//!   keeps failing fails it after a configurable wait.
//! - The last valid token is served until it expires, whatever fails.
//! - The watchers of one runtime share one driver (see
//!   [`Runtime::driver_key`]): a watcher costs what a key of a
//!   [`TokenPool`] does, and idle wake-ups do not grow with their number.
//!   A token source must not block its thread, or it holds up the others
//!   (use a blocking source for work that blocks).
//! - Dropping the last handle, or [`TokenWatcher::shutdown`], stops the
//!   watcher with no new request; a request that spends a refresh token is
//!   let finish within the shutdown grace and its rotated token stored.
//!   Handles of a stopped watcher answer [`TokenError::Stopped`] or
//!   [`WatcherStopped`].
//! - A cache layer, token source or event hook that panics is answered with
//!   an error, never leaves the refresher waiting, never stops the driver.
//! - Secrets never appear in `Debug`, `Display`, errors or the `tracing`
//!   output (only fingerprints such as `fp:3a9c1e07`); URLs are logged as
//!   [`TokenUrl::redacted`](tokenkeeper_core::oauth2::TokenUrl::redacted)
//!   shows them (no query).
//!
//! # Health and metrics
//!
//! [`TokenWatcher::health`] sums the status up as ready, degraded or broken,
//! with the reason, for readiness probes; it reads a snapshot and never
//! calls the authority. With the feature `metrics`, every watcher counts
//! tokens, failures, reads and refresh times through the `metrics` facade
//! (module `metrics`, which lists the names).
//!
//! # Tracing
//!
//! The watchers of a runtime share one driver, which runs in a
//! `tokenkeeper.watchers` span; each fetch (naming its watcher), cache read,
//! write and lease has a span of its own (`tokenkeeper.fetch`,
//! `tokenkeeper.cache.read`, ...), with events for outcomes. Filter with
//! `RUST_LOG=tokenkeeper_driver=debug`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod assertion;
pub mod attach;
mod boxed;
mod builder;
mod cache;
pub mod device;
pub mod dpop;
mod driver;
mod error;
mod http;
mod hub;
mod jws;
#[cfg(feature = "metrics")]
pub mod metrics;
mod oneshot;
pub mod park;
pub mod pool;
pub mod proxy;
mod publish;
mod runtime;
mod shared;
mod source;
pub mod tls;
pub mod token_exchange;
mod watcher;

pub use builder::{MIN_WAKE_INTERVAL, TokenWatcherBuilder};
pub use cache::{BlockingCacheLayer, CacheLayer, Notifier, change_feed};
pub use error::{ChangedError, SpawnError, TokenError, WatcherStopped};
pub use http::{Exchange, HttpAnswer, HttpSettings, HttpSetupError, SharedExchange};
pub use oneshot::{GetTokenError, Obtained, OneShot, Warning};
pub use pool::{PoolHealth, TokenPool, TokenPoolBuilder};
pub use proxy::{ProxyConfig, ProxyError, ProxyRules, ProxyTarget};
pub use runtime::{
    Async, Blocking, BoxFuture, BoxStream, NotCompleted, Runtime, Sleeper, WaitStyle, Waited,
    timeout, unblock,
};
pub use source::{BlockingTokenSource, Source, TokenSource};
pub use watcher::{Token, TokenWatcher};

/// The engine driven here, re-exported for convenience.
pub use tokenkeeper_core as engine;

/// What every adapter re-exports to its users: the same names in every
/// runtime (each adapter adds its runtime and the `TokenWatcher` and
/// `TokenWatcherBuilder` aliases for it).
pub mod prelude {
    pub use crate::{
        BlockingCacheLayer, BlockingTokenSource, BoxFuture, BoxStream, CacheLayer, ChangedError,
        GetTokenError, HttpSettings, HttpSetupError, Notifier, Obtained, OneShot, PoolHealth,
        ProxyConfig, ProxyError, Sleeper, Source, SpawnError, Token, TokenError, TokenSource,
        Warning, WatcherStopped, change_feed,
    };
    // DPoP keys (`dpop::DpopKey`), for `TokenWatcherBuilder::dpop`.
    pub use crate::dpop;
    // Client assertions and the JWT bearer grant (`assertion::{Assertion, ClientKey}`).
    pub use crate::assertion;
    // Device login (`device::{DevicePrompt, DeviceLogin, DeviceLoginError}`).
    pub use crate::device;
    // Token exchange's subject and actor tokens (`token_exchange::ExchangeToken`).
    pub use crate::token_exchange;
    pub use tokenkeeper_core as engine;
    pub use tokenkeeper_core::{
        Event, FetchError, Health, HealthReason, RefreshNow, Status, TlsProblem, TokenRecord,
    };
}
