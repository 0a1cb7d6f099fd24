//! Watchers on one runtime share one driver (issue 14: a watcher costs
//! what a key of a pool costs): one task or thread keeps all their tokens
//! fresh, each watcher still stops alone when its last handle is dropped,
//! and a driver that ended is replaced by the next watcher. Run against
//! every driver (tokio, async-std, smol, threads).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Flavor, eventually};
use tokenkeeper_core::{AccessToken, CacheKey, Jitter, LifetimePolicy, TokenGrant};
use tokenkeeper_driver::{
    BoxFuture, HttpSettings, HttpSetupError, Runtime, SharedExchange, Source, TokenWatcher,
    TokenWatcherBuilder,
};

/// A flavor's runtime that counts the tasks it is asked to spawn, and may
/// have its driver poll fetches itself, its tasks wait `lag` (blocking
/// their thread) before each poll, or poll each task once, `eager`ly, in
/// `spawn` itself before handing it on (as an executor may run a task at
/// once on the spawning thread).
#[derive(Clone)]
struct Counting<R> {
    inner: R,
    spawned: Arc<AtomicUsize>,
    /// Timers of ten minutes or more made: the driver's, waiting for a
    /// refresh (a first token's wait and a fetch's deadline are shorter).
    long_sleeps: Arc<AtomicUsize>,
    inline: Option<bool>,
    lag: Option<Duration>,
    eager: bool,
}

impl<R> Counting<R> {
    /// `inner`, counting, with a driver that polls fetches itself.
    fn inline(inner: R) -> Self {
        Counting {
            inner,
            spawned: Arc::default(),
            long_sleeps: Arc::default(),
            inline: Some(true),
            lag: None,
            eager: false,
        }
    }
}

/// A task whose every poll comes `lag` late.
struct Lagging {
    task: BoxFuture<'static, ()>,
    lag: Duration,
}

impl std::future::Future for Lagging {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        std::thread::sleep(self.lag);
        self.task.as_mut().poll(cx)
    }
}

impl<R: Runtime> Runtime for Counting<R> {
    type Wait = R::Wait;

    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn bind(&self) -> Option<Self> {
        Some(Counting {
            inner: self.inner.bind()?,
            spawned: Arc::clone(&self.spawned),
            long_sleeps: Arc::clone(&self.long_sleeps),
            inline: self.inline,
            lag: self.lag,
            eager: self.eager,
        })
    }

    fn driver_key(&self) -> Option<u64> {
        self.inner.driver_key()
    }

    fn spawn(&self, mut task: BoxFuture<'static, ()>) {
        self.spawned.fetch_add(1, Ordering::SeqCst);
        if self.eager {
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            if task.as_mut().poll(&mut cx).is_ready() {
                return;
            }
        }
        match self.lag {
            Some(lag) => self.inner.spawn(Box::pin(Lagging { task, lag })),
            None => self.inner.spawn(task),
        }
    }

    fn spawn_blocking(&self, work: Box<dyn FnOnce() + Send + 'static>) {
        self.inner.spawn_blocking(work);
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        if duration >= Duration::from_secs(600) {
            self.long_sleeps.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.sleep(duration)
    }

    fn polls_fetches_inline(&self) -> bool {
        self.inline
            .unwrap_or_else(|| self.inner.polls_fetches_inline())
    }

    fn exchange(&self, settings: &HttpSettings) -> Result<SharedExchange, HttpSetupError> {
        self.inner.exchange(settings)
    }
}

/// A source of tokens named after `n`, lasting `lifetime`, counting its
/// calls in `calls`.
fn numbered(n: usize, lifetime: Duration, calls: Arc<AtomicUsize>) -> Source {
    Source::from_fn(
        CacheKey::custom("shared-driver", &[&n.to_string()]),
        move |_| {
            let call = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                Ok(TokenGrant::bearer(
                    AccessToken::new(format!("token-{n}-{call}")),
                    Some(lifetime),
                ))
            }
        },
    )
}

/// [`numbered`], but each call waits a turn (its first poll is pending,
/// waking itself): a `spawn` cannot have the token from its own first poll
/// of the source, and drives the driver until it comes.
fn numbered_after_a_turn(n: usize, lifetime: Duration, calls: Arc<AtomicUsize>) -> Source {
    Source::from_fn(
        CacheKey::custom("shared-driver", &[&n.to_string()]),
        move |_| {
            let call = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                futures_lite::future::yield_now().await;
                Ok(TokenGrant::bearer(
                    AccessToken::new(format!("token-{n}-{call}")),
                    Some(lifetime),
                ))
            }
        },
    )
}

/// Tokens go stale at half their (short) lifetime.
fn stale_at_half_life() -> LifetimePolicy {
    LifetimePolicy::builder()
        .stale_fraction(0.5)
        .min_stale_window(Duration::from_millis(100))
        .build()
        .unwrap()
}

const WATCHERS: usize = 40;

fn watchers_share_one_driver_and_stop_alone<F: Flavor>() {
    let spawned = Arc::new(AtomicUsize::new(0));
    let runtime = Counting {
        inner: F::runtime(),
        spawned: Arc::clone(&spawned),
        long_sleeps: Arc::default(),
        inline: None,
        lag: None,
        eager: false,
    };
    let calls: Vec<Arc<AtomicUsize>> = (0..WATCHERS).map(|_| Arc::default()).collect();
    // Refreshed at half their lifetime: every 0.4 s.
    let lifetime = Duration::from_millis(800);
    let watchers: Vec<TokenWatcher<Counting<F::R>>> = (0..WATCHERS)
        .map(|n| {
            let builder =
                TokenWatcherBuilder::new(runtime.clone(), numbered(n, lifetime, calls[n].clone()))
                    .lifetime_policy(stale_at_half_life())
                    .jitter(Jitter::none());
            F::block_on(builder.spawn())
                .unwrap_or_else(|e| panic!("{}: spawn failed: {e:?}", F::NAME))
        })
        .collect();
    for (n, watcher) in watchers.iter().enumerate() {
        let token = watcher.token().expect("a first token");
        assert!(
            token
                .access_token
                .expose_secret()
                .starts_with(&format!("token-{n}-")),
            "{}: watcher {n} holds another's token",
            F::NAME
        );
    }

    // One driver for them all: the only tasks are it and, on runtimes whose
    // driver does not poll fetches itself, one per fetch. A driver each
    // would be WATCHERS more.
    let fetch_tasks = if F::runtime()
        .bind()
        .is_some_and(|r| r.polls_fetches_inline())
    {
        0
    } else {
        WATCHERS
    };
    let drivers = spawned.load(Ordering::SeqCst).saturating_sub(fetch_tasks);
    if F::runtime().driver_key().is_some() {
        assert_eq!(drivers, 1, "{}: tasks spawned beyond fetches", F::NAME);
    } else {
        assert_eq!(drivers, WATCHERS, "{}: a driver each", F::NAME);
    }

    // The first half's last handles are dropped: those watchers stop and
    // make no more requests, while the others keep refreshing.
    let mut watchers = watchers;
    let kept = watchers.split_off(WATCHERS / 2);
    drop(watchers);
    let dropped_at: Vec<usize> = calls[..WATCHERS / 2]
        .iter()
        .map(|c| c.load(Ordering::SeqCst))
        .collect();
    assert!(
        eventually(Duration::from_secs(10), || {
            calls[WATCHERS / 2..]
                .iter()
                .all(|c| c.load(Ordering::SeqCst) >= 3)
        }),
        "{}: the kept watchers refreshed: {:?}",
        F::NAME,
        calls
            .iter()
            .map(|c| c.load(Ordering::SeqCst))
            .collect::<Vec<_>>()
    );
    for (n, at) in dropped_at.iter().enumerate() {
        // A refresh already under way when the handle went may finish.
        assert!(
            calls[n].load(Ordering::SeqCst) <= at + 1,
            "{}: dropped watcher {n} kept refreshing",
            F::NAME
        );
    }
    for (n, watcher) in kept.iter().enumerate() {
        assert!(!watcher.is_stopped(), "{}: watcher {n} stopped", F::NAME);
        assert!(watcher.token().is_ok());
    }

    // Every watcher gone: the driver ends; the next watcher starts another.
    drop(kept);
    std::thread::sleep(Duration::from_millis(200));
    let again = F::block_on(
        TokenWatcherBuilder::new(
            runtime.clone(),
            numbered(0, Duration::from_secs(3600), Arc::default()),
        )
        .spawn(),
    )
    .unwrap_or_else(|e| panic!("{}: spawn after the driver ended: {e:?}", F::NAME));
    assert!(again.token().is_ok());
    F::block_on(again.shutdown());
    assert!(again.is_stopped());
}

/// tokio: each runtime has its own driver, and watchers on a runtime that is
/// dropped stop, without touching those of another.
#[test]
fn tokio_runtimes_keep_their_own_drivers() {
    let first = ::tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let second = ::tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let hour = Duration::from_secs(3600);
    let on_first = first
        .block_on(
            tokenkeeper_tokio::TokenWatcher::builder(numbered(1, hour, Arc::default())).spawn(),
        )
        .unwrap();
    let second_calls = Arc::new(AtomicUsize::new(0));
    let on_second = second
        .block_on(
            tokenkeeper_tokio::TokenWatcher::builder(numbered(2, hour, Arc::clone(&second_calls)))
                .spawn(),
        )
        .unwrap();
    drop(first);
    assert!(
        eventually(Duration::from_secs(5), || on_first.is_stopped()),
        "the watcher of a dropped runtime says it stopped"
    );
    assert!(!on_second.is_stopped());
    let seen = on_second.token().unwrap().into_arc();
    let outcome = second.block_on(on_second.refresh_now()).unwrap();
    assert_eq!(outcome, tokenkeeper_core::RefreshNow::Started);
    let next = second.block_on(on_second.changed_from(&seen)).unwrap();
    assert!(next.access_token.expose_secret().starts_with("token-2-1"));
    assert_eq!(second_calls.load(Ordering::SeqCst), 2);
    second.block_on(on_second.shutdown());
}

/// Threads: a `spawn` that drove the shared driver (its first token
/// published in the caller's `block_on`, while the driver's own thread found
/// it busy) hands it back. The thread adapter's timers belong to the
/// `block_on` that polls them, so unless the caller's `block_on` wakes the
/// driver as it returns, the driver's thread never hears of the refresh
/// deadline set in the caller, and the watcher makes no second request.
#[test]
fn threads_a_spawn_that_drove_the_driver_hands_it_back() {
    let runtime = Counting {
        inner: tokenkeeper_blocking::ThreadRuntime,
        spawned: Arc::default(),
        long_sleeps: Arc::default(),
        // Fetches polled by whoever polls the driver: the caller, here.
        inline: Some(true),
        // The driver's own thread is always second to poll it.
        lag: Some(Duration::from_millis(50)),
        eager: false,
    };
    // A first watcher starts the driver, which then idles on its thread.
    // (A wake interval of its own keeps it apart from the other tests'.)
    let apart = Duration::from_secs(59);
    let first = TokenWatcherBuilder::new(
        runtime.clone(),
        numbered(100, Duration::from_secs(3600), Arc::default()),
    )
    .wake_interval(apart)
    .spawn()
    .expect("a first watcher");
    // Held again after its spawn (every poll of the driver's thread comes
    // 50 ms late): the driver idles on its own thread.
    std::thread::sleep(Duration::from_millis(300));
    // The second's first token is published in the caller's poll, and the
    // hook holds that poll for 300 ms: the driver's own thread, woken by
    // the fetch's answer, polls meanwhile and finds the driver busy.
    let calls = Arc::new(AtomicUsize::new(0));
    // Answered a turn later: the caller drives the driver to get it.
    let slow = numbered_after_a_turn(101, Duration::from_millis(1000), Arc::clone(&calls));
    let held = Arc::new(AtomicUsize::new(0));
    let second = TokenWatcherBuilder::new(runtime, slow)
        .wake_interval(apart)
        .lifetime_policy(stale_at_half_life())
        .jitter(Jitter::none())
        .on_event(move |event| {
            if matches!(event, tokenkeeper_core::Event::TokenChanged { .. })
                && held.fetch_add(1, Ordering::SeqCst) == 0
            {
                std::thread::sleep(Duration::from_millis(300));
            }
        })
        .spawn()
        .expect("a second watcher");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // Stale after 0.5 s: refreshed by the driver's own thread.
    assert!(
        eventually(Duration::from_secs(3), || calls.load(Ordering::SeqCst) >= 2),
        "no refresh after spawn: {} calls",
        calls.load(Ordering::SeqCst)
    );
    second.shutdown();
    first.shutdown();
}

/// Tokio: a `spawn` future polled once and then kept unpolled (its first
/// token has not come) holds up no other watcher of its runtime. Wake-ups
/// meant for the driver go to a caller driving it only while that caller is
/// about to poll; once it has polled, the driver's task hears them too.
#[test]
fn tokio_a_spawn_kept_unpolled_holds_up_no_other_watcher() {
    let rt = ::tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    // Refreshed at half its lifetime: every 0.4 s.
    let refreshing = rt
        .block_on(
            tokenkeeper_tokio::TokenWatcher::builder(numbered(
                77,
                Duration::from_millis(800),
                Arc::clone(&calls),
            ))
            .lifetime_policy(stale_at_half_life())
            .jitter(Jitter::none())
            .spawn(),
        )
        .unwrap();
    // A watcher whose source never answers: its `spawn` waits, polled once.
    let never = Source::from_fn(CacheKey::custom("shared-driver", &["never"]), |_| {
        std::future::pending::<Result<TokenGrant, tokenkeeper_core::FetchError>>()
    });
    let mut waiting = Box::pin(tokenkeeper_tokio::TokenWatcher::builder(never).spawn());
    let polled = rt.block_on(futures_lite::future::poll_once(waiting.as_mut()));
    assert!(polled.is_none(), "no token could have come");
    let before = calls.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(1500));
    let after = calls.load(Ordering::SeqCst);
    assert!(
        after >= before + 2,
        "the other watcher stopped refreshing while a spawn was kept unpolled: {before} then {after} calls"
    );
    drop(waiting);
    rt.block_on(refreshing.shutdown());
}

/// Sets its flag when dropped: shows when a fetch's future is let go.
struct DropFlag(Arc<std::sync::atomic::AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// A watcher that stops while its request is in flight drops that request
/// as it leaves, though the driver it shared runs on for other watchers: its
/// source's future is dropped (a hung request is not kept until its timeout)
/// by the time `shutdown` returns, on every driver.
fn a_stopped_watchers_request_in_flight_is_dropped<F: Flavor>() {
    // Keeps the shared driver running after the other watcher leaves.
    let keeper =
        F::block_on(F::builder(numbered(0, Duration::from_secs(3600), Arc::default())).spawn())
            .unwrap_or_else(|e| panic!("{}: spawn failed: {e:?}", F::NAME));
    let calls = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (counter, flag) = (Arc::clone(&calls), Arc::clone(&dropped));
    let hung = Source::from_fn(CacheKey::custom("shared-driver", &["hung"]), move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
        let guard = DropFlag(Arc::clone(&flag));
        async move {
            std::future::pending::<()>().await;
            drop(guard);
            Ok(TokenGrant::bearer(AccessToken::new("never"), None))
        }
    });
    let watcher = F::builder(hung)
        .http(HttpSettings::new().request_timeout(Duration::from_secs(120)))
        .start()
        .unwrap_or_else(|e| panic!("{}: start failed: {e:?}", F::NAME));
    assert!(
        eventually(Duration::from_secs(10), || calls.load(Ordering::SeqCst)
            == 1),
        "{}: the source was not called",
        F::NAME
    );
    assert!(
        !dropped.load(Ordering::SeqCst),
        "{}: dropped early",
        F::NAME
    );
    F::block_on(watcher.shutdown());
    // A task of its own (threads) drops it at its next wake-up, which the
    // abort gives it at once; the limit is far below the request timeout.
    assert!(
        eventually(Duration::from_secs(5), || dropped.load(Ordering::SeqCst)),
        "{}: the stopped watcher's request is still held",
        F::NAME
    );
    assert!(
        keeper.token().is_ok() && !keeper.is_stopped(),
        "{}",
        F::NAME
    );
    F::block_on(keeper.shutdown());
}

/// Whoever sees a request go out sees the status that sent it: the driver
/// publishes a key's status before it carries out the key's effects. Here
/// the fetch task runs inside `spawn`, before the driver's turn ends, and
/// the source reads its own watcher's status.
fn the_status_is_published_before_the_request_goes_out<F: Flavor>() {
    let runtime = Counting {
        inner: F::runtime(),
        spawned: Arc::default(),
        long_sleeps: Arc::default(),
        // Fetches in tasks of their own, run at once by `spawn`.
        inline: Some(false),
        lag: None,
        eager: true,
    };
    type Holder<R> = Arc<std::sync::Mutex<Option<TokenWatcher<Counting<R>>>>>;
    let holder: Holder<F::R> = Arc::default();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let calls = Arc::new(AtomicUsize::new(0));
    let (own, seen_by_source, counter) =
        (Arc::clone(&holder), Arc::clone(&seen), Arc::clone(&calls));
    let source = Source::from_fn(CacheKey::custom("shared-driver", &["status"]), move |_| {
        let call = counter.fetch_add(1, Ordering::SeqCst);
        if let Some(watcher) = own.lock().unwrap().as_ref() {
            let status = watcher.status();
            seen_by_source
                .lock()
                .unwrap()
                .push((status.fetch_in_flight, status.consecutive_failures));
        }
        async move {
            if call == 1 {
                return Err(tokenkeeper_core::FetchError::Transport {
                    message: "a failure to show in the next status".into(),
                });
            }
            Ok(TokenGrant::bearer(
                AccessToken::new(format!("status-{call}")),
                Some(Duration::from_secs(3600)),
            ))
        }
    });
    // A wake interval of its own keeps it off the other tests' drivers.
    let watcher = F::block_on(
        TokenWatcherBuilder::new(runtime, source)
            .wake_interval(Duration::from_secs(58))
            .spawn(),
    )
    .unwrap_or_else(|e| panic!("{}: spawn failed: {e:?}", F::NAME));
    *holder.lock().unwrap() = Some(watcher.clone());
    // Call 1 fails; call 2, forced too, must see that failure counted.
    let _ = F::block_on(watcher.refresh_now());
    let _ = F::block_on(watcher.refresh_now());
    assert!(
        eventually(Duration::from_secs(10), || calls.load(Ordering::SeqCst)
            >= 3),
        "{}: {} calls",
        F::NAME,
        calls.load(Ordering::SeqCst)
    );
    holder.lock().unwrap().take();
    assert_eq!(
        *seen.lock().unwrap(),
        [(true, 0), (true, 1)],
        "{}: the statuses the source saw (in flight, failures)",
        F::NAME
    );
    F::block_on(watcher.shutdown());
}

/// Turns of the driver that ask for the deadline the last one asked for
/// keep its timer: watchers joining a driver whose earliest refresh stays
/// the first watcher's make no timer each (the runtime's timers are
/// registered, cancelled and made again otherwise, a few a spawn).
fn turns_that_ask_for_the_same_deadline_keep_the_timer<F: Flavor>() {
    let long_sleeps = Arc::new(AtomicUsize::new(0));
    let runtime = Counting {
        inner: F::runtime(),
        spawned: Arc::default(),
        long_sleeps: Arc::clone(&long_sleeps),
        // Fetches answered in the turn that started them, on every driver.
        inline: Some(true),
        lag: None,
        eager: false,
    };
    // A wake interval of its own keeps it off the other tests' drivers, and
    // longer than the refreshes, so that the deadline is the refresh.
    // Sources that answer a turn later: each spawn drives the driver.
    let spawn = |n: usize, lifetime: Duration| {
        let source = numbered_after_a_turn(n, lifetime, Arc::default());
        let builder = TokenWatcherBuilder::new(runtime.clone(), source)
            .lifetime_policy(stale_at_half_life())
            .jitter(Jitter::none())
            .wake_interval(Duration::from_secs(5 * 3600 + 17));
        F::block_on(builder.spawn()).unwrap_or_else(|e| panic!("{}: spawn failed: {e:?}", F::NAME))
    };
    // Refreshed in an hour: the driver's deadline from now on (set by the
    // driver's own task if the spawn's turn did not reach it).
    let first = spawn(0, Duration::from_secs(2 * 3600));
    assert!(
        eventually(Duration::from_secs(5), || long_sleeps
            .load(Ordering::SeqCst)
            >= 1),
        "{}: the driver waits for the refresh",
        F::NAME
    );
    let after_first = long_sleeps.load(Ordering::SeqCst);
    // Refreshed in two hours: the earliest deadline stays the first's.
    let later: Vec<_> = (1..=20)
        .map(|n| spawn(n, Duration::from_secs(4 * 3600)))
        .collect();
    let made = long_sleeps.load(Ordering::SeqCst) - after_first;
    assert!(
        made <= 1,
        "{}: {made} timers made for 20 watchers whose refresh comes later",
        F::NAME
    );
    drop(later);
    drop(first);
}

/// A `spawn` whose source answers at once has its token from its own
/// first poll of the source, and leaves its key to the driver's task,
/// waking it only if it would not wake in time by itself. A key whose
/// refresh comes before the driver's next wake-up wakes it: the watcher
/// is refreshed on time.
fn a_token_from_the_spawn_itself_is_refreshed_on_time<F: Flavor>() {
    // The caller's first turn is taken on every driver.
    let runtime = Counting::inline(F::runtime());
    // A wake interval of its own keeps it off the other tests' drivers.
    let apart = Duration::from_secs(4 * 3600 + 23);
    let spawn = |source: Source| {
        let builder = TokenWatcherBuilder::new(runtime.clone(), source)
            .lifetime_policy(stale_at_half_life())
            .jitter(Jitter::none())
            .wake_interval(apart);
        F::block_on(builder.spawn()).unwrap_or_else(|e| panic!("{}: spawn failed: {e:?}", F::NAME))
    };
    // The driver's next wake-up: this one's refresh, in an hour.
    let first = spawn(numbered(300, Duration::from_secs(2 * 3600), Arc::default()));
    assert!(
        eventually(Duration::from_secs(5), || runtime
            .long_sleeps
            .load(Ordering::SeqCst)
            >= 1),
        "{}: the driver waits for the refresh",
        F::NAME
    );
    // Stale in half a second, long before the driver would wake.
    let calls = Arc::new(AtomicUsize::new(0));
    let second = spawn(numbered(301, Duration::from_secs(1), Arc::clone(&calls)));
    assert_eq!(calls.load(Ordering::SeqCst), 1, "{}", F::NAME);
    let token = second.token().expect("a token at once");
    assert_eq!(token.access_token.expose_secret(), "token-301-0");
    assert!(
        eventually(Duration::from_secs(5), || calls.load(Ordering::SeqCst) >= 2),
        "{}: not refreshed: the driver was not woken for it",
        F::NAME
    );
    F::block_on(second.shutdown());
    F::block_on(first.shutdown());
}

/// Keys whose tokens came in their own `spawn` wait in the driver's inbox
/// until it wakes (up to a batch of them): a command sent for one right
/// after its spawn (a forced refresh, a shutdown) still finds it.
fn commands_right_after_spawn_find_their_keys<F: Flavor>() {
    let runtime = Counting::inline(F::runtime());
    let apart = Duration::from_secs(4 * 3600 + 29);
    // More than a batch (256): some keys wait in the inbox, unannounced.
    let calls: Vec<Arc<AtomicUsize>> = (0..300).map(|_| Arc::default()).collect();
    let watchers: Vec<_> = calls
        .iter()
        .enumerate()
        .map(|(n, calls)| {
            let source = numbered(400 + n, Duration::from_secs(4 * 3600), Arc::clone(calls));
            let builder = TokenWatcherBuilder::new(runtime.clone(), source).wake_interval(apart);
            F::block_on(builder.spawn())
                .unwrap_or_else(|e| panic!("{}: spawn failed: {e:?}", F::NAME))
        })
        .collect();
    // Asked from the last spawned back, so the first asked are the ones
    // most likely still waiting in the inbox.
    for (n, watcher) in watchers.iter().enumerate().rev().step_by(2) {
        let asked = F::block_on(watcher.refresh_now());
        assert!(
            matches!(asked, Ok(tokenkeeper_core::RefreshNow::Started)),
            "{}: watcher {n}: {asked:?}",
            F::NAME
        );
    }
    for (n, watcher) in watchers.iter().enumerate().rev().step_by(2) {
        assert!(
            eventually(Duration::from_secs(5), || {
                watcher
                    .token()
                    .is_ok_and(|t| t.access_token.expose_secret().ends_with("-1"))
            }),
            "{}: watcher {n} not refreshed",
            F::NAME
        );
    }
    // The others are shut down, each found, and none asked for more.
    for (n, watcher) in watchers.iter().enumerate().filter(|(n, _)| n % 2 == 0) {
        F::block_on(watcher.shutdown());
        assert!(watcher.is_stopped(), "{}: watcher {n}", F::NAME);
        assert_eq!(
            calls[n].load(Ordering::SeqCst),
            1,
            "{}: watcher {n}",
            F::NAME
        );
    }
}

per_driver!(
    a_token_from_the_spawn_itself_is_refreshed_on_time,
    commands_right_after_spawn_find_their_keys,
    turns_that_ask_for_the_same_deadline_keep_the_timer,
    the_status_is_published_before_the_request_goes_out,
    watchers_share_one_driver_and_stop_alone,
    a_stopped_watchers_request_in_flight_is_dropped,
);
