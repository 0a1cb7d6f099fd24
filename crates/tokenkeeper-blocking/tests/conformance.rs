//! The shared adapter conformance scenarios, run against the thread adapter.

use std::sync::Arc;
use std::time::Duration;

use tokenkeeper_blocking::{SpawnError, TokenWatcher};
use tokenkeeper_core::{RefreshNow, Status, TokenRecord};
use tokenkeeper_testkit::conformance::{Adapter, ConformanceWatcher, SpawnFailure, WatcherSpec};

/// The thread adapter.
struct Blocking;

/// A [`TokenWatcher`] seen through the conformance interface.
struct Watcher(TokenWatcher);

impl ConformanceWatcher for Watcher {
    fn token(&self) -> Option<Arc<TokenRecord>> {
        self.0.token()
    }

    fn wait_changed(&self, timeout: Duration) -> bool {
        self.0.changed(Some(timeout)).is_ok()
    }

    fn status(&self) -> Status {
        self.0.status()
    }

    fn refresh_now(&self) -> RefreshNow {
        self.0.refresh_now()
    }

    fn shutdown(self) {
        self.0.shutdown();
    }
}

impl Adapter for Blocking {
    const NAME: &'static str = "blocking";
    type Watcher = Watcher;

    fn spawn(spec: WatcherSpec) -> Result<Watcher, SpawnFailure> {
        let mut builder = TokenWatcher::builder(spec.client)
            .lifetime_policy(spec.policy)
            .jitter(spec.jitter)
            .backoff(spec.backoff)
            .refresh_now_min_interval(spec.refresh_now_min_interval)
            .http(
                tokenkeeper_blocking::HttpSettings::default()
                    .request_timeout(spec.request_timeout)
                    .connect_timeout(spec.request_timeout),
            )
            .first_token_timeout(spec.first_token_timeout);
        if let Some(token) = spec.initial_refresh_token {
            builder = builder.initial_refresh_token(token);
        }
        if let Some(path) = spec.cache_file {
            builder = builder.file_cache(path);
        }
        builder
            .spawn()
            .map(Watcher)
            .map_err(|e: SpawnError| SpawnFailure {
                permanent: e.is_permanent(),
                message: e.to_string(),
            })
    }
}

tokenkeeper_testkit::conformance_tests!(Blocking);
