//! The thread adapter of tokenkeeper, for programs without an async runtime.
//!
//! Two ways to get a token:
//!
//! - [`TokenWatcher`]: one background thread drives the core
//!   [`Refresher`](tokenkeeper_core::Refresher) and keeps a token fresh;
//!   [`TokenWatcher::token`] returns it without waiting or locking.
//! - [`get_token`]: a one-shot call for programs that run and exit (a command,
//!   a cron job): it drives the same refresher on the calling thread until it
//!   has a usable token, reusing a file cache between runs so that most runs
//!   never touch the network, and making one request between all the processes
//!   that share the cache.
//!
//! HTTP goes through [`ureq`] 3 over rustls (ring provider, set on the client
//! alone), with connect and whole-request timeouts, no redirects and a capped
//! body ([`HttpSettings`]). Caches are [`CacheLayer`]s; the file cache of
//! `tokenkeeper-fs` is the built-in one, and its lock file is the lease.
//! There is no async runtime anywhere in this crate's dependencies.
//!
//! # The driving loop
//!
//! The watcher's thread is the core's canonical loop: carry out the
//! refresher's effects (cache reads, writes and leases on the thread itself,
//! in order; token requests on a short-lived worker thread whose answer comes
//! back over the same channel), publish its events, then wait on the channel
//! for `min(deadline - now, max_sleep)` and feed back what arrives: a fetch's
//! answer, a forced refresh, a stop, or the timeout. `max_sleep` (60 s by
//! default) makes the thread look at the wall clock at least once a minute,
//! so that a suspended machine or a clock step is noticed. All staleness,
//! jitter and backoff decisions are the refresher's.
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
//! if let Some(token) = watcher.token() {
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

mod cache;
mod engine;
mod http;
mod oneshot;
mod source;
mod watcher;

pub use cache::CacheLayer;
pub use http::HttpSettings;
pub use oneshot::{GetTokenConfig, GetTokenError, Obtained, Warning, get_token};
pub use source::{Source, TokenSource};
pub use watcher::{ChangedError, SpawnError, TokenWatcher, TokenWatcherBuilder};

/// The core crate, re-exported for convenience.
pub use tokenkeeper_core as core;
/// The file cache crate, re-exported for convenience.
pub use tokenkeeper_fs as fs;
