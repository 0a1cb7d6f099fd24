//! Adapter conformance: the scenarios every adapter (tokio, async-std/smol,
//! blocking) runs unchanged against a real [`Authority`](crate::Authority).
//!
//! An adapter's test file implements [`Adapter`] for a small marker type and
//! invokes [`conformance_tests!`](crate::conformance_tests), which expands to one
//! `#[test]` per scenario. Scenarios are plain blocking functions with real time
//! and short-lived tokens; an async adapter's watcher wrapper blocks on its
//! runtime inside each method.
//!
//! ```ignore
//! struct Tokio;
//! impl tokenkeeper_testkit::conformance::Adapter for Tokio { /* ... */ }
//! tokenkeeper_testkit::conformance_tests!(Tokio);
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokenkeeper_core::oauth2::OAuth2Client;
use tokenkeeper_core::{
    BackoffPolicy, Jitter, LifetimePolicy, RefreshNow, RefreshToken, Status, TokenRecord,
};

/// How a scenario wants its watcher built. Adapters map every field onto their
/// builder; none may be ignored.
#[derive(Debug, Clone)]
pub struct WatcherSpec {
    /// The OAuth2 client (token URL on loopback plain http).
    pub client: OAuth2Client,
    /// The first refresh token, for the refresh-token grant.
    pub initial_refresh_token: Option<RefreshToken>,
    /// A file cache layer at this path (with its cross-process lease), if any.
    pub cache_file: Option<PathBuf>,
    /// Lifetime policy.
    pub policy: LifetimePolicy,
    /// Refresh jitter.
    pub jitter: Jitter,
    /// Error backoff.
    pub backoff: BackoffPolicy,
    /// Minimum interval between forced refreshes.
    pub refresh_now_min_interval: Duration,
    /// Whole-request timeout of the HTTP client.
    pub request_timeout: Duration,
    /// How long `spawn` waits for a first token before giving up.
    pub first_token_timeout: Duration,
}

/// Why `spawn` gave up, as the scenarios need to see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpawnFailure {
    /// The authority rejected the client or grant (a permanent error).
    pub permanent: bool,
    /// The adapter's error, displayed. Scenarios check it holds no secret.
    pub message: String,
}

/// A running watcher, seen through a blocking interface.
pub trait ConformanceWatcher: Send + Sync + 'static {
    /// The current token, without waiting; `None` when none is usable.
    fn token(&self) -> Option<Arc<TokenRecord>>;
    /// Waits up to `timeout` for the next token change; `true` if one came.
    fn wait_changed(&self, timeout: Duration) -> bool;
    /// The refresher's status.
    fn status(&self) -> Status;
    /// Asks for an early refresh.
    fn refresh_now(&self) -> RefreshNow;
    /// Stops the watcher and waits until its task or thread has ended.
    fn shutdown(self);
}

/// An adapter under test.
pub trait Adapter: 'static {
    /// Its name, for messages.
    const NAME: &'static str;
    /// Its watcher.
    type Watcher: ConformanceWatcher;
    /// Builds and starts a watcher; returns once a first token is held, or
    /// fails after `spec.first_token_timeout` (at once on a permanent error).
    fn spawn(spec: WatcherSpec) -> Result<Self::Watcher, SpawnFailure>;
}
