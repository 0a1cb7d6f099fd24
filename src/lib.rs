//! tokenkeeper keeps OAuth2 access tokens fresh in the background, so the
//! code that calls your APIs never waits on the token authority and never
//! holds an expired token while a valid one could be had.
//!
//! This facade re-exports the sans-IO engine as [`engine`] (the crate
//! `tokenkeeper-core`) and each driver and layer behind a cargo feature:
//!
//! | feature       | module                | what                                                           |
//! |---------------|-----------------------|----------------------------------------------------------------|
//! | `tokio`       | `tokenkeeper::tokio`     | `TokenWatcher` on tokio (hyper, tokio-rustls)               |
//! | `async-std`   | `tokenkeeper::async_std` | the same watcher on async-std (hyper over async-io)         |
//! | `smol`        | `tokenkeeper::async_std` | the same watcher on smol (`AsyncIoRuntime::smol()`)         |
//! | `blocking`    | `tokenkeeper::blocking`  | the same watcher on plain threads (ureq), and `get_token`   |
//! | `driver`      | `tokenkeeper::driver`    | the shared driver, to run a watcher on a runtime of your own |
//! | `fs`          | `tokenkeeper::fs`        | the file cache (built into every driver already)            |
//! | `redis`       | `tokenkeeper::redis`     | one token per fleet through Redis, for the enabled drivers  |
//! | `native-roots`| —                        | trust the system's certificate store too, in every driver   |
//! | `metrics`     | `tokenkeeper::driver::metrics` | counters, gauges and a histogram through the `metrics` facade |
//!
//! Every driver is the same watcher (`driver::TokenWatcher`):
//! the same builder, `token()` (one atomic load), errors, status and events.
//! Switching runtime changes an import and the `.await`s.
//!
//! # Quick start (threads)
//!
//! ```
//! # #[cfg(feature = "blocking")]
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use tokenkeeper::blocking::TokenWatcher;
//! use tokenkeeper::engine::oauth2::OAuth2Client;
//! use tokenkeeper::engine::{ClientId, ClientSecret};
//! # let authority = tokenkeeper_testkit::Authority::start();
//! # authority.register_client(tokenkeeper_testkit::Client::new("my-service", "s3cret"));
//! # let token_url = authority.token_url();
//!
//! let client = OAuth2Client::client_credentials(
//!     token_url, // "https://auth.example.com/oauth/token"
//!     ClientId::new("my-service"),
//!     ClientSecret::new("s3cret"),
//! )?;
//! let watcher = TokenWatcher::builder(client).spawn()?;
//! let header = watcher.token()?.authorization_header_value();
//! assert!(header.starts_with("Bearer "));
//! watcher.shutdown();
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "blocking"))]
//! # fn main() {}
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use tokenkeeper_core as engine;

/// The tokio adapter (the crate `tokenkeeper-tokio`).
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub use tokenkeeper_tokio as tokio;

/// The thread adapter and the one-shot `get_token` (the crate
/// `tokenkeeper-blocking`).
#[cfg(feature = "blocking")]
#[cfg_attr(docsrs, doc(cfg(feature = "blocking")))]
pub use tokenkeeper_blocking as blocking;

/// The async-std and smol adapter (the crate `tokenkeeper-async-std`).
#[cfg(any(feature = "async-std", feature = "smol"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "async-std", feature = "smol"))))]
pub use tokenkeeper_async_std as async_std;

/// The shared driver (the crate `tokenkeeper-driver`).
#[cfg(feature = "driver")]
#[cfg_attr(docsrs, doc(cfg(feature = "driver")))]
pub use tokenkeeper_driver as driver;

/// The file cache (the crate `tokenkeeper-fs`).
#[cfg(feature = "fs")]
#[cfg_attr(docsrs, doc(cfg(feature = "fs")))]
pub use tokenkeeper_fs as fs;

/// The Redis layer (the crate `tokenkeeper-redis`).
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use tokenkeeper_redis as redis;

/// Every Rust block of the README and the guides in `docs/` compiles and runs
/// as a doctest of this crate, so what users copy first works.
#[cfg(doctest)]
mod markdown {
    #[doc = include_str!("../README.md")]
    struct Readme;
    #[doc = include_str!("../docs/tokio.md")]
    struct Tokio;
    #[doc = include_str!("../docs/async-std.md")]
    struct AsyncStd;
    #[doc = include_str!("../docs/blocking.md")]
    struct Blocking;
    #[doc = include_str!("../docs/redis.md")]
    struct Redis;
    #[doc = include_str!("../docs/cli.md")]
    struct Cli;
    #[doc = include_str!("../docs/embedding.md")]
    struct Embedding;
    #[doc = include_str!("../docs/performance.md")]
    struct Performance;
    #[doc = include_str!("../docs/middleware.md")]
    struct Middleware;
    #[doc = include_str!("../docs/deploy.md")]
    struct Deploy;
    #[doc = include_str!("../docs/dependencies.md")]
    struct Dependencies;
    #[doc = include_str!("../docs/observability.md")]
    struct Observability;
    #[doc = include_str!("../docs/pool.md")]
    struct Pool;
    #[doc = include_str!("../docs/authentication.md")]
    struct Authentication;
}
