//! tokenkeeper keeps OAuth2 access tokens fresh in the background.
//!
//! This facade re-exports the runtime-agnostic engine [`core`] (the crate
//! `tokenkeeper-core`); runtime adapters are enabled with cargo features as
//! they become available.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub use tokenkeeper_core as core;

/// The tokio adapter (the crate `tokenkeeper-tokio`): a `TokenWatcher` that
/// keeps a token fresh in a background task. Enabled by the `tokio` feature.
#[cfg(feature = "tokio")]
pub use tokenkeeper_tokio as tokio;

/// The thread adapter (the crate `tokenkeeper-blocking`): a `TokenWatcher`
/// driven by one background thread, and the one-shot `get_token`, for
/// programs without an async runtime. Enabled by the `blocking` feature.
#[cfg(feature = "blocking")]
pub use tokenkeeper_blocking as blocking;

/// The async-std adapter (the crate `tokenkeeper-async-std`): the same
/// `TokenWatcher` as the tokio adapter's, on async-std (or smol), with no
/// tokio runtime. Enabled by the `async-std` feature.
#[cfg(feature = "async-std")]
pub use tokenkeeper_async_std as async_std;
