//! The async-std and smol adapter of tokenkeeper: a [`TokenWatcher`] keeps an
//! OAuth2 access token fresh in the background, so the code that calls your
//! APIs reads it with one atomic load and never waits on the token authority.
//!
//! It is the same watcher as `tokenkeeper-tokio`'s, with the same shape and
//! guarantees (both are [`tokenkeeper_driver`]'s), on a runtime built on
//! `async-io`, and with no tokio runtime anywhere in the dependency tree:
//!
//! - the watcher's tasks run on async-std's executor (feature `async-std`,
//!   the default) or smol's (feature `smol`), chosen with
//!   [`AsyncIoRuntime`];
//! - HTTP is hyper 1 over async-io sockets, TLS is futures-rustls (rustls
//!   with the *ring* provider, webpki roots);
//! - the file cache of `tokenkeeper-fs` runs on the runtime's blocking pool;
//! - a Redis layer shared by a fleet is `tokenkeeper_redis::AsyncRedisLayer`
//!   with its `smol` and `async-layer` features, whose change notifications
//!   wake a watcher waiting for another's lease.
//!
//! async-std is no longer developed; smol is its successor and shares its
//! reactor, so code moving from one to the other keeps its watcher.
//!
//! # Quick start
//!
//! ```
//! use std::time::Duration;
//! use tokenkeeper_core::oauth2::OAuth2Client;
//! use tokenkeeper_core::{ClientId, ClientSecret};
//! use tokenkeeper_async_std::{HttpSettings, TokenWatcher};
//! # use tokenkeeper_testkit::{Authority, Client};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let authority = Authority::start();
//! # authority.register_client(Client::new("my-service", "s3cret"));
//! # let token_url = authority.token_url();
//! # let cache_dir = tempfile::tempdir()?;
//! async_std::task::block_on(async {
//!     let client = OAuth2Client::client_credentials(
//!         &token_url, // e.g. "https://auth.example.com/oauth/token"
//!         ClientId::new("my-service"),
//!         ClientSecret::new("s3cret"),
//!     )?
//!     .scope("read");
//!
//!     let watcher = TokenWatcher::builder(client)
//!         .file_cache_in(cache_dir.path()) // reuse the token across restarts
//!         .http(HttpSettings::new().request_timeout(Duration::from_secs(10)))
//!         .spawn() // returns once a first token is held
//!         .await?;
//!
//!     // On every outgoing request:
//!     let token = watcher.token()?;
//!     let header = token.authorization_header_value();
//! #   assert!(header.starts_with("Bearer "));
//! #   drop(token);
//!
//!     // After a 401 from the resource server (rate-limited):
//!     watcher.refresh_now().await?;
//!
//!     // For health checks:
//!     assert_eq!(watcher.status().consecutive_failures, 0);
//!
//!     watcher.shutdown().await; // or drop every handle
//!     Ok(())
//! })
//! # }
//! ```
//!
//! On smol, pick its executor (the global one here; [`AsyncIoRuntime::smol_on`]
//! takes your own):
//!
//! ```
//! # use tokenkeeper_core::oauth2::OAuth2Client;
//! # use tokenkeeper_core::{ClientId, ClientSecret};
//! use tokenkeeper_async_std::{AsyncIoRuntime, TokenWatcher};
//! # use tokenkeeper_testkit::{Authority, Client};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let authority = Authority::start();
//! # authority.register_client(Client::new("my-service", "s3cret"));
//! # let client = OAuth2Client::client_credentials(
//! #     &authority.token_url(), ClientId::new("my-service"), ClientSecret::new("s3cret"))?;
//! smol::block_on(async {
//!     let watcher = TokenWatcher::builder(client)
//!         .runtime(AsyncIoRuntime::smol())
//!         .spawn()
//!         .await?;
//!     assert!(watcher.token().is_ok());
//!     Ok(())
//! })
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
//! - One background task keeps every watcher of an executor fresh (smol: of
//!   its global executor; an executor of yours gives each watcher a task): it
//!   sleeps until the next deadline of any of them, and at most a minute
//!   (configurable), so a suspended machine or a clock step is noticed.
//! - Dropping the last handle, or [`TokenWatcher::shutdown`], stops the
//!   watcher with no further request.
//! - Secrets never appear in `Debug`, `Display`, errors or the `tracing`
//!   output (only fingerprints such as `fp:3a9c1e07`).
//!
//! See `docs/async-std.md` for the guide, and `examples/watch.rs`.
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

mod runtime;

pub use runtime::{AsyncIoRuntime, Connection};
pub use tokenkeeper_driver::prelude::*;

/// Keeps a token fresh in the background on async-std or smol, and hands it
/// out without waiting. See [`tokenkeeper_driver::TokenWatcher`] for its
/// methods.
pub type TokenWatcher = tokenkeeper_driver::TokenWatcher<AsyncIoRuntime>;

/// Configures a [`TokenWatcher`]; made by [`TokenWatcher::builder`]. See
/// [`tokenkeeper_driver::TokenWatcherBuilder`] for its settings.
pub type TokenWatcherBuilder = tokenkeeper_driver::TokenWatcherBuilder<AsyncIoRuntime>;

/// Tokens for many keys (tenants, scopes, audiences, ...), kept fresh by one
/// driver; made by [`TokenPool::builder`]. See
/// [`tokenkeeper_driver::TokenPool`] for its methods and `docs/pool.md`.
pub type TokenPool<K> = tokenkeeper_driver::TokenPool<K, AsyncIoRuntime>;

/// Configures a [`TokenPool`]. See [`tokenkeeper_driver::TokenPoolBuilder`]
/// for its settings.
pub type TokenPoolBuilder<K> = tokenkeeper_driver::TokenPoolBuilder<K, AsyncIoRuntime>;
