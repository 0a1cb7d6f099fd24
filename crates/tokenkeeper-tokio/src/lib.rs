//! The tokio adapter of tokenkeeper: a [`TokenWatcher`] keeps an OAuth2 access
//! token fresh in the background, so the code that calls your APIs reads it
//! with one atomic load and never waits on the token authority.
//!
//! The watcher drives the sans-IO engine of [`tokenkeeper_core`]: the engine
//! decides when a token is stale, when to refresh (jittered) and when to retry
//! (exponential backoff, `Retry-After`), what to send to the token endpoint,
//! and what to read from and write to the cache layers. The effects are
//! carried out on tokio: tasks on your runtime, HTTP over hyper 1 on tokio
//! sockets with tokio-rustls, the file cache of `tokenkeeper-fs` on the
//! blocking pool, and any [`CacheLayer`] of your own (such as
//! `tokenkeeper_redis::AsyncRedisLayer`, feature `async-layer`).
//!
//! The watcher itself (its handles, its driver, its settings) is
//! [`tokenkeeper_driver`]'s, shared with every other adapter, and its HTTP
//! exchange is `tokenkeeper-hyper`'s, shared with the async-std/smol adapter;
//! this crate is its [`TokioRuntime`] and the names of its types.
//!
//! # Quick start
//!
//! ```
//! use std::time::Duration;
//! use tokenkeeper_core::oauth2::OAuth2Client;
//! use tokenkeeper_core::{ClientId, ClientSecret};
//! use tokenkeeper_tokio::{HttpSettings, TokenWatcher};
//! # use tokenkeeper_testkit::{Authority, Client};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let authority = Authority::start();
//! # authority.register_client(Client::new("my-service", "s3cret"));
//! # let token_url = authority.token_url();
//! # let cache_dir = tempfile::tempdir()?;
//! let client = OAuth2Client::client_credentials(
//!     &token_url, // e.g. "https://auth.example.com/oauth/token"
//!     ClientId::new("my-service"),
//!     ClientSecret::new("s3cret"),
//! )?
//! .scope("read");
//!
//! let watcher = TokenWatcher::builder(client)
//!     .file_cache_in(cache_dir.path()) // reuse the token across restarts
//!     .http(HttpSettings::new().request_timeout(Duration::from_secs(10)))
//!     .spawn() // returns once a first token is held
//!     .await?;
//!
//! // On every outgoing request:
//! let token = watcher.token()?;
//! let header = token.authorization_header_value();
//! # assert!(header.starts_with("Bearer "));
//! # drop(token);
//!
//! // After a 401 from the resource server (rate-limited):
//! watcher.refresh_now().await?;
//!
//! // For health checks:
//! let status = watcher.status();
//! assert_eq!(status.consecutive_failures, 0);
//!
//! watcher.shutdown().await; // or drop every handle
//! # Ok(())
//! # }
//! ```
//!
//! # What it guarantees
//!
//! - [`TokenWatcher::token`] never waits and takes no lock.
//! - [`TokenWatcherBuilder::spawn`] returns once a first token is held; a
//!   permanent refusal (`invalid_client`, ...) fails it at once, a source that
//!   keeps failing fails it after a configurable wait.
//! - The last valid token is served until it expires, whatever fails.
//! - One background task keeps every watcher of a runtime fresh: it sleeps
//!   until the next deadline of any of them, and at most a minute
//!   (configurable), so a suspended machine or a clock step is noticed. It
//!   ends after the last watcher.
//! - Dropping the last handle, or [`TokenWatcher::shutdown`], stops the
//!   watcher with no further request; a handle of a stopped watcher says so with
//!   [`TokenError::Stopped`] or [`WatcherStopped`].
//! - Secrets never appear in `Debug`, `Display`, errors or the `tracing`
//!   output (only fingerprints such as `fp:3a9c1e07`).
//!
//! # HTTP
//!
//! hyper 1 (HTTP/1.1), one connection per token request (requests come
//! minutes apart), on tokio sockets with tokio-rustls. rustls with the *ring*
//! provider, set on each client configuration and never installed as a
//! process default; webpki roots, and the system's with the `native-roots`
//! feature. Connect and whole-exchange timeouts, no redirects (a `3xx` is an
//! error status), a response size cap. See [`HttpSettings`].
//!
//! # Tracing
//!
//! The task runs in a `tokenkeeper.watchers` span; each fetch (naming its
//! watcher), cache read,
//! write and lease has a span of its own (`tokenkeeper.fetch`,
//! `tokenkeeper.cache.read`, ...), with events for outcomes. The events come
//! from the shared crate's modules: filter with `tokenkeeper=debug` (every
//! tokenkeeper crate) or `tokenkeeper_driver=debug`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod runtime;

pub use runtime::{Connection, TokioRuntime};
pub use tokenkeeper_driver::prelude::*;

/// Keeps a token fresh in a background task on tokio, and hands it out
/// without waiting. See [`tokenkeeper_driver::TokenWatcher`] for its methods.
pub type TokenWatcher = tokenkeeper_driver::TokenWatcher<TokioRuntime>;

/// Configures a [`TokenWatcher`]; made by [`TokenWatcher::builder`]. See
/// [`tokenkeeper_driver::TokenWatcherBuilder`] for its settings.
pub type TokenWatcherBuilder = tokenkeeper_driver::TokenWatcherBuilder<TokioRuntime>;

/// Tokens for many keys (tenants, scopes, audiences, ...), kept fresh by one
/// driver; made by [`TokenPool::builder`]. See
/// [`tokenkeeper_driver::TokenPool`] for its methods and `docs/pool.md`.
pub type TokenPool<K> = tokenkeeper_driver::TokenPool<K, TokioRuntime>;

/// Configures a [`TokenPool`]. See [`tokenkeeper_driver::TokenPoolBuilder`]
/// for its settings.
pub type TokenPoolBuilder<K> = tokenkeeper_driver::TokenPoolBuilder<K, TokioRuntime>;
