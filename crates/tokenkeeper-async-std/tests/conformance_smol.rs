//! The shared adapter conformance scenarios, run against the watcher on
//! smol: its tasks on a smol executor of the test's own (run by two threads
//! of its own, as an application would), its file calls on smol's blocking
//! pool, its timers and sockets on async-io. The scenarios are blocking; the
//! wrapper blocks with `smol::block_on` in each method.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures_lite::FutureExt;
use tokenkeeper_async_std::{AsyncIoRuntime, HttpSettings, TokenWatcher};
use tokenkeeper_core::{RefreshNow, Status, TokenRecord};
use tokenkeeper_testkit::conformance::{Adapter, ConformanceWatcher, SpawnFailure, WatcherSpec};

/// The adapter on smol.
struct Smol;

/// The test's executor: two threads run it for as long as the test process
/// lives.
fn executor() -> Arc<smol::Executor<'static>> {
    static EXECUTOR: OnceLock<Arc<smol::Executor<'static>>> = OnceLock::new();
    Arc::clone(EXECUTOR.get_or_init(|| {
        let executor = Arc::new(smol::Executor::new());
        for n in 0..2 {
            let runner = Arc::clone(&executor);
            std::thread::Builder::new()
                .name(format!("smol-executor-{n}"))
                .spawn(move || smol::block_on(runner.run(smol::future::pending::<()>())))
                .expect("an executor thread");
        }
        executor
    }))
}

/// A watcher, seen through the blocking conformance interface.
struct BlockingWatcher {
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
        let changed = smol::block_on(async {
            let wait = async {
                Some(match &seen {
                    Some(seen) => self.watcher.changed_from(seen).await,
                    None => self.watcher.changed().await,
                })
            };
            wait.or(async {
                smol::Timer::after(timeout).await;
                None
            })
            .await
        });
        match changed {
            Some(Ok(token)) => {
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
        smol::block_on(self.watcher.refresh_now()).unwrap_or(RefreshNow::ShutDown)
    }

    fn shutdown(self) {
        smol::block_on(self.watcher.shutdown());
    }
}

impl Adapter for Smol {
    const NAME: &'static str = "smol";
    type Watcher = BlockingWatcher;

    fn spawn(spec: WatcherSpec) -> Result<BlockingWatcher, SpawnFailure> {
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
            .runtime(AsyncIoRuntime::smol_on(executor()))
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
        match smol::block_on(builder.spawn()) {
            Ok(watcher) => {
                let first = watcher.token().ok().map(|t| t.into_arc());
                Ok(BlockingWatcher {
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

tokenkeeper_testkit::conformance_tests!(Smol);
