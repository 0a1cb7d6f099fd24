//! What the async adapters of tokenkeeper share, written once and for any
//! runtime: the [`TokenWatcher`] handles, the background task that drives the
//! core's [`Refresher`](tokenkeeper_core::Refresher), the async
//! [`CacheLayer`] trait, and the HTTP exchange (hyper 1 + rustls) that
//! carries token requests.
//!
//! An adapter supplies a [`Runtime`]: how to spawn a task, run blocking work,
//! sleep, and open a connection (TCP, plus TLS for `https`). Then it names
//! the types for its users:
//!
//! - `tokenkeeper-tokio`: `TokenWatcher = TokenWatcher<TokioRuntime>`, over
//!   tokio sockets and tokio-rustls;
//! - `tokenkeeper-async-std`: `TokenWatcher = TokenWatcher<AsyncIoRuntime>`,
//!   for async-std and smol, over async-io sockets and futures-rustls.
//!
//! Applications depend on one of those, not on this crate. It is for adapter
//! authors, and for running a watcher on another executor: implement
//! [`Runtime`] and start it with [`TokenWatcherBuilder::new`].
//!
//! # The background task
//!
//! The task is the core's canonical loop and nothing more: drain the
//! refresher's effects (each fetch a task of its own; each cache layer's
//! reads, writes and leases in order, in the layer's own task) and events
//! (tokens published to the handles with an atomic pointer swap), then wait
//! for the first of a command from the handles, a finished effect, a change
//! announced by a cache layer ([`CacheLayer::changes`]) and the refresher's
//! deadline, capped by the wake interval (a minute by default, so that a
//! suspended machine or a clock step is noticed), and feed what came back.
//! No staleness, jitter or backoff arithmetic happens here.
//!
//! # What it guarantees
//!
//! - [`TokenWatcher::token`] never waits and takes no lock.
//! - [`TokenWatcherBuilder::spawn`] returns once a first token is held; a
//!   permanent refusal (`invalid_client`, ...) fails it at once, a source that
//!   keeps failing fails it after a configurable wait.
//! - The last valid token is served until it expires, whatever fails.
//! - Dropping the last handle, or [`TokenWatcher::shutdown`], ends the task
//!   with no further request; a handle of a stopped watcher says so with
//!   [`TokenError::Stopped`] or [`WatcherStopped`].
//! - A cache layer or token source that panics is answered with an error,
//!   never leaves the refresher waiting.
//! - Secrets never appear in `Debug`, `Display`, errors or the `tracing`
//!   output (only fingerprints such as `fp:3a9c1e07`).
//!
//! # HTTP
//!
//! One hyper HTTP/1.1 exchange per token request, over a fresh connection
//! (token requests come minutes apart), with the connection driven alongside
//! the request so that nothing runtime-specific is spawned. rustls with the
//! *ring* provider, set on each client configuration and never installed as
//! a process default; webpki roots, and the system's with the `native-roots`
//! feature. Connect and whole-exchange timeouts, no redirects (a `3xx` is an
//! error status), a response size cap
//! ([`FetchError::BodyTooLarge`](tokenkeeper_core::FetchError::BodyTooLarge)).
//! See [`HttpSettings`] and [`HttpClient`].
//!
//! # Tracing
//!
//! The task runs in a `tokenkeeper.watcher` span; each fetch, cache read,
//! write and lease has a span of its own (`tokenkeeper.fetch`,
//! `tokenkeeper.cache.read`, ...), with events for outcomes.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod builder;
mod cache;
mod driver;
mod error;
mod http;
mod runtime;
mod source;
mod watcher;

pub use builder::TokenWatcherBuilder;
pub use cache::{CacheLayer, FileCacheLayer, Notifier, change_feed};
pub use error::{SpawnError, TokenError, WatcherStopped};
pub use http::{HttpAnswer, HttpClient, HttpSettings, HttpSetupError};
pub use runtime::{BoxFuture, BoxStream, Endpoint, Runtime, Sleeper, Tls};
pub use source::{Source, TokenSource};
pub use watcher::{Token, TokenWatcher};

/// The engine driven here, re-exported for convenience.
pub use tokenkeeper_core as core;
