//! The thread adapter of tokenkeeper, for programs without an async runtime.
//!
//! Two ways to get a token:
//!
//! - [`TokenWatcher`]: a background thread, which all watchers share, keeps
//!   a token fresh;
//!   [`TokenWatcher::token`] returns it without waiting or locking (one
//!   atomic load, as in every adapter).
//! - [`TokenWatcherBuilder::get_token`]: a one-shot call for programs that
//!   run and exit (a command, a cron job): it gets a usable token and stops,
//!   reusing a file cache between runs so that most runs never touch the
//!   network, and making one request between all the processes that share
//!   the cache.
//!
//! The watcher, its builder and the one-shot are [`tokenkeeper_driver`]'s,
//! the same as every other adapter's: this crate is its [`ThreadRuntime`]
//! (threads, with a park-based executor that needs no timer thread) and its
//! HTTP exchange (ureq 3 over rustls with the *ring* provider, trusting the
//! same roots as every adapter, no redirects, connect and whole-request
//! timeouts, a capped body). The methods that wait (`spawn`, `changed`,
//! `refresh_now`, `shutdown`, `get_token`) block the calling thread. There is
//! no async runtime anywhere in this crate's dependencies.
//!
//! ```no_run
//! use std::time::Duration;
//! use tokenkeeper_blocking::TokenWatcher;
//! use tokenkeeper_core::oauth2::OAuth2Client;
//! use tokenkeeper_core::{ClientId, ClientSecret};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let client = OAuth2Client::client_credentials(
//!     "https://auth.example.com/oauth/token",
//!     ClientId::new("my-service"),
//!     ClientSecret::new(std::env::var("CLIENT_SECRET")?),
//! )?
//! .scope("read");
//! let watcher = TokenWatcher::builder(client)
//!     .default_file_cache()
//!     .first_token_timeout(Duration::from_secs(10))
//!     .spawn()?;
//! // On every outgoing request:
//! if let Ok(token) = watcher.token() {
//!     let _authorization = token.authorization_header_value();
//! }
//! // After a 401 from the resource server:
//! let _ = watcher.refresh_now();
//! watcher.shutdown();
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod exchange;
mod runtime;
mod tls;

pub use runtime::ThreadRuntime;
pub use tokenkeeper_driver::prelude::*;

/// Keeps a token fresh on a background thread, and hands it out without
/// waiting. See [`tokenkeeper_driver::TokenWatcher`] for its methods.
pub type TokenWatcher = tokenkeeper_driver::TokenWatcher<ThreadRuntime>;

/// Configures a [`TokenWatcher`] (or a one-shot
/// [`get_token`](tokenkeeper_driver::TokenWatcherBuilder::get_token)); made
/// by [`TokenWatcher::builder`]. See
/// [`tokenkeeper_driver::TokenWatcherBuilder`] for its settings.
pub type TokenWatcherBuilder = tokenkeeper_driver::TokenWatcherBuilder<ThreadRuntime>;

/// Tokens for many keys (tenants, scopes, audiences, ...), kept fresh by one
/// driver; made by [`TokenPool::builder`]. See
/// [`tokenkeeper_driver::TokenPool`] for its methods and `docs/pool.md`.
pub type TokenPool<K> = tokenkeeper_driver::TokenPool<K, ThreadRuntime>;

/// Configures a [`TokenPool`]. See [`tokenkeeper_driver::TokenPoolBuilder`]
/// for its settings.
pub type TokenPoolBuilder<K> = tokenkeeper_driver::TokenPoolBuilder<K, ThreadRuntime>;

/// The file cache crate, re-exported for convenience.
pub use tokenkeeper_fs as fs;
