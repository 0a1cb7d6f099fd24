//! The shared adapter conformance scenarios, run against the tokio watcher.
//!
//! The scenarios are blocking; the wrapper owns a multi-thread runtime (the
//! watcher's task runs on it) and blocks on it in each method.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokenkeeper_core::{RefreshNow, Status, TokenRecord};
use tokenkeeper_testkit::conformance::{Adapter, ConformanceWatcher, SpawnFailure, WatcherSpec};
use tokenkeeper_tokio::{HttpSettings, TokenWatcher};

/// The tokio adapter, for the conformance scenarios.
struct Tokio;

/// A watcher and the runtime it runs on.
struct BlockingWatcher {
    runtime: tokio::runtime::Runtime,
    watcher: TokenWatcher,
    /// The last token the scenario saw: "the next change" is relative to it.
    seen: Mutex<Option<Arc<TokenRecord>>>,
}

impl BlockingWatcher {
    fn remember(&self, token: &Arc<TokenRecord>) {
        *self.seen.lock().unwrap() = Some(Arc::clone(token));
    }
}

impl ConformanceWatcher for BlockingWatcher {
    fn token(&self) -> Option<Arc<TokenRecord>> {
        let token = self.watcher.token().ok()?.into_arc();
        self.remember(&token);
        Some(token)
    }

    fn wait_changed(&self, timeout: Duration) -> bool {
        let seen = self.seen.lock().unwrap().clone();
        let changed = self.runtime.block_on(async {
            let wait = async {
                match &seen {
                    Some(seen) => self.watcher.changed_from(seen).await,
                    None => self.watcher.changed().await,
                }
            };
            tokio::time::timeout(timeout, wait).await
        });
        match changed {
            Ok(Ok(token)) => {
                self.remember(&token);
                true
            }
            _ => false,
        }
    }

    fn status(&self) -> Status {
        self.watcher.status()
    }

    fn refresh_now(&self) -> RefreshNow {
        self.runtime
            .block_on(self.watcher.refresh_now())
            .unwrap_or(RefreshNow::ShutDown)
    }

    fn shutdown(self) {
        self.runtime.block_on(self.watcher.shutdown());
    }
}

impl Adapter for Tokio {
    const NAME: &'static str = "tokio";
    type Watcher = BlockingWatcher;

    fn spawn(spec: WatcherSpec) -> Result<BlockingWatcher, SpawnFailure> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let WatcherSpec {
            client,
            initial_refresh_token,
            cache_file,
            policy,
            jitter,
            backoff,
            refresh_now_min_interval,
            request_timeout,
            first_token_timeout,
        } = spec;
        let mut builder = TokenWatcher::builder(client)
            .lifetime_policy(policy)
            .jitter(jitter)
            .backoff(backoff)
            .refresh_now_min_interval(refresh_now_min_interval)
            .http(HttpSettings::new().request_timeout(request_timeout))
            .first_token_timeout(first_token_timeout);
        if let Some(token) = initial_refresh_token {
            builder = builder.initial_refresh_token(token);
        }
        if let Some(path) = cache_file {
            builder = builder.file_cache(path);
        }
        match runtime.block_on(builder.spawn()) {
            Ok(watcher) => {
                let first = watcher.token().ok().map(|t| t.into_arc());
                Ok(BlockingWatcher {
                    runtime,
                    watcher,
                    seen: Mutex::new(first),
                })
            }
            Err(error) => Err(SpawnFailure {
                permanent: error.is_permanent(),
                message: error.to_string(),
            }),
        }
    }
}

tokenkeeper_testkit::conformance_tests!(Tokio);
