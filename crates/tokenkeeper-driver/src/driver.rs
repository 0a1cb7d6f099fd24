//! The driver: the core's canonical loop, written once for every runtime,
//! for one key (a [`TokenWatcher`](crate::TokenWatcher)) or many (a
//! [`TokenPool`](crate::TokenPool)): a watcher is a pool of one.
//!
//! It drives the core's [`RefresherPool`] (one refresher per key, one timer
//! heap, the cap on fetches in flight), drains its effects (each fetch polled
//! by the driver itself, or a task of its own where the runtime's fetches may
//! block; each cache layer's reads, writes and leases in order, in the
//! layer's own task)
//! and events (handed to the [`Publisher`]), then waits for the earliest of a
//! command from the handles, a finished effect, a change announced by a
//! cache layer, and the refresher's deadline (capped by the wake interval,
//! so that a suspended machine or a clock step is noticed), and feeds what
//! happened back. Every decision about time (staleness, jitter, backoff,
//! leases, effect deadlines, the shutdown grace) is the refresher's; the
//! runtime only spawns, sleeps and carries out HTTP.

use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_lite::Stream;
use futures_lite::{FutureExt, StreamExt};
use futures_util::stream::FuturesUnordered;
use std::collections::VecDeque;

use tokenkeeper_core::Health;
use tokenkeeper_core::oauth2::TokenRequest;
use tokenkeeper_core::pool::{KeyId, KeyIdMap, RefresherPool, Removal};
use tokenkeeper_core::{
    CacheError, CacheErrorKind, Effect, EffectId, EncodedRecord, ErrorClass, Event, FetchError,
    Input, LeaseOutcome, Now, RefreshToken, Refresher, TokenGrant,
};
use tracing::{Instrument, Span, debug, error, info, info_span, trace, warn};

use crate::cache::AnyLayer;
use crate::dpop::DpopKey;
use crate::http::SharedExchange;
use crate::publish::Publisher;
use crate::runtime::{self, BoxFuture, Runtime, Sleeper, Task, timeout, unblock};
use crate::shared::{Command, Shared, now};
use crate::source::SourceKind;

/// How long a stopping watcher waits for its cache layers to finish (lease
/// releases, a last write) and its abandoned requests to end, before leaving
/// them behind.
const GRACE: Duration = Duration::from_secs(5);

/// The most queued requests, answers, and new keys taken in one turn of the
/// loop.
pub(crate) const BATCH: usize = 256;

/// The most entries a buffer of the driver's (events to publish, fetches
/// not polled yet) keeps between turns: a turn that gives a watcher its
/// first token allocates neither, and what a burst grew is given back.
const TURN_BUFFER_KEPT: usize = 16;

/// How the refresher's fetches are carried out.
// One per key, inside its `KeyState`, whose size a unit test pins: the
// `Http` variant is the larger, and both are never moved on a hot path.
#[allow(clippy::large_enum_variant)]
pub(crate) enum FetchWith {
    /// Token requests built by the core, sent over the runtime's HTTP stack.
    Http {
        exchange: SharedExchange,
        /// The key proofs are signed with, for DPoP-bound tokens.
        dpop: Option<DpopKey>,
        grant: &'static str,
        /// The token URL as logs show it (no query). A boxed `str`: eight
        /// bytes less, which takes a key's state down a malloc size class.
        url: Box<str>,
        /// The assertions requests need (RFC 7523), made in the fetch task;
        /// none for most clients.
        assertions: Option<Box<crate::assertion::Assertions>>,
    },
    /// A custom source, bounded by a timeout.
    Source {
        source: SourceKind,
        timeout: Duration,
    },
}

/// The queue of requests from the handles to their driver. futures'
/// channels allocate a node per message and nothing while empty: a watcher
/// (a driver of one key) should not hold a block of slots for the rare
/// command or answer.
pub(crate) type RequestSender = futures_channel::mpsc::UnboundedSender<Request>;
/// The driver's end of it.
pub(crate) type RequestReceiver = futures_channel::mpsc::UnboundedReceiver<Request>;
type AnswerSender = futures_channel::mpsc::UnboundedSender<Answer>;

/// A new queue of requests.
pub(crate) fn requests() -> (RequestSender, RequestReceiver) {
    futures_channel::mpsc::unbounded()
}

/// Something that happened outside the loop, on its way back to it.
enum Answer {
    /// An answer for a key's refresher. Boxed: the queue keeps its last
    /// node for good, and a node sized for an `Input` (about 200 bytes)
    /// would be kept by every watcher's driver.
    Input(KeyId, Box<Input>),
    /// A cache layer of a key announced a change.
    Changed(KeyId, usize),
}

/// What one cache layer is asked to do, in order.
enum LayerOp {
    Read(EffectId),
    Write(EffectId, EncodedRecord),
    Acquire(EffectId, Duration),
    Release,
}

/// What wakes the loop.
enum Wake {
    Request(Option<Request>),
    Answer(Answer),
    Timeout,
}

/// Answers an effect even when its work panics or is cancelled, so the
/// refresher hears back at once instead of at the effect's deadline.
struct Reply {
    answers: Option<AnswerSender>,
    key: KeyId,
    id: EffectId,
    /// The answer when the work never gave one: made only then, since its
    /// message is an allocation every fetch would otherwise pay for.
    otherwise: fn(EffectId) -> Input,
}

impl Reply {
    fn new(
        answers: &AnswerSender,
        key: KeyId,
        id: EffectId,
        otherwise: fn(EffectId) -> Input,
    ) -> Self {
        Reply {
            answers: Some(answers.clone()),
            key,
            id,
            otherwise,
        }
    }

    fn send(mut self, input: Input) {
        if let Some(answers) = self.answers.take() {
            let _ = answers.unbounded_send(Answer::Input(self.key, Box::new(input)));
        }
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if let Some(answers) = self.answers.take() {
            let input = (self.otherwise)(self.id);
            let _ = answers.unbounded_send(Answer::Input(self.key, Box::new(input)));
        }
    }
}

/// A message for a driver: a command for one of its keys, new keys, or
/// the end of them all.
pub(crate) enum Request {
    /// A command from the handles of one key.
    Key(KeyId, Command),
    /// New keys wait in the [`Inbox`], which was empty until now.
    Added,
    /// Stop every key, then end.
    ShutdownAll,
    /// How many keys are ready, degraded and broken.
    Health(async_channel::Sender<crate::PoolHealth>),
}

/// Everything one key is made of; built by the builders.
pub(crate) struct KeyParts {
    pub(crate) id: KeyId,
    pub(crate) refresher: NewRefresher,
    pub(crate) fetch: FetchWith,
    pub(crate) layers: Vec<AnyLayer>,
    pub(crate) publisher: Publisher,
    /// Run once the key has left the driver (a pool forgets it).
    pub(crate) forget: Option<Box<dyn FnOnce() + Send + Sync>>,
    /// The refresher's fetch its caller began (see [`first_turn`]), and
    /// the effect it answers, when it did not end at once.
    pub(crate) fetching: Option<(EffectId, StartedFetch)>,
}

/// A new key's refresher, or what the driver builds it from.
pub(crate) enum NewRefresher {
    /// A watcher's, built first for its first status.
    Built(Box<Refresher>),
    /// A pool's key's, built in the driver: its allocations are made (and
    /// later freed) on the driver's thread, not the caller's, whose
    /// allocator arena the driver would otherwise contend for.
    ToBuild {
        config: tokenkeeper_core::RefresherConfig,
        seed: u64,
    },
}

/// What the driver keeps of a key beside its refresher.
struct KeyState {
    fetch: FetchWith,
    publisher: Publisher,
    forget: Option<Box<dyn FnOnce() + Send + Sync>>,
    /// Its cache layers and their workers; `None` for a key without (most
    /// keys of a pool), which so costs nothing for them.
    layers: Option<Box<KeyLayers>>,
}

/// A key's cache layers and what runs them.
struct KeyLayers {
    layers: Vec<AnyLayer>,
    workers: Vec<async_channel::Sender<LayerOp>>,
    worker_tasks: Vec<Task>,
    /// Whether the key is stopping, for its layers' workers.
    stopping: Arc<AtomicBool>,
}

/// A key that has left, kept until its cache layers' workers have finished
/// what they were given (a last write, a lease release): only then are its
/// handles told it stopped, so that whoever waits for the stop finds the
/// record stored.
struct Leaving {
    /// Held, never read: dropping it marks the key stopped.
    #[allow(dead_code)]
    publisher: Publisher,
    worker_tasks: Vec<Task>,
}

/// How much earlier than asked a kept timer may fire: a turn that asks for
/// a deadline this close after the kept timer's keeps it (and may wake
/// this much early, to find nothing due and sleep the rest).
const TIMER_SLACK_MS: u64 = 5;

/// The driver's timer and when it fires. Most turns ask for the deadline
/// the last one asked for (the wake interval, or the same refresh), a few
/// microseconds later: keeping the timer spares the runtime a timer made,
/// registered and cancelled per turn (a `spawn` runs a turn or two).
struct Timer {
    /// Milliseconds on the turn clock's monotonic axis (see `clock`).
    fires_at: u64,
    sleep: BoxFuture<'static, ()>,
}

/// A fetch the driver polls itself, with the key it is for.
struct KeyedFetch {
    key: KeyId,
    future: BoxFuture<'static, ()>,
}

impl Future for KeyedFetch {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        self.future.as_mut().poll(cx)
    }
}

/// New keys on their way to a driver (a pool's, or the watchers').
///
/// Keys are created on the callers' threads, often many at once: through
/// the request queue each would cost a message (a node allocated by the
/// caller and freed by the driver, which contends for the caller's
/// allocator arena) and a wake-up. Here a key is one push under a lock the
/// driver takes once per turn, and the buffer is reused, never freed on
/// the other thread.
///
/// Only a key that wants the driver before it would wake by itself sends
/// [`Request::Added`] (one per batch taken in): a watcher whose `spawn`
/// brought its first token itself needs the driver only by its refresh,
/// and a thousand such spawns in a row wake the driver's thread every
/// [`BATCH`] keys rather than every key (a wake-up is a system call on the
/// caller's thread). The driver says when it will wake ([`Inbox::plan`])
/// and looks at the inbox at every turn and before it waits: a key pushed
/// after that look sees the plan it waits by.
///
/// Order is kept: the driver takes every waiting key in before it acts on
/// any request, so a command for a key always finds it added.
pub(crate) struct Inbox {
    /// `None` once the driver stopped taking keys.
    keys: std::sync::Mutex<Option<Waiting>>,
    /// Keys wait: set by a push and cleared by the driver's take, under the
    /// lock, and read by the driver without it.
    has_keys: AtomicBool,
    /// When the driver will wake by itself (on the monotonic clock, in
    /// milliseconds): `0` until it first waits, `u64::MAX` when it waits
    /// for nothing but its queues.
    plan: AtomicU64,
}

struct Waiting {
    keys: VecDeque<KeyParts>,
    /// An `Added` was sent since the driver last took keys.
    announced: bool,
}

/// The driver no longer takes keys.
pub(crate) struct Closed;

impl Inbox {
    pub(crate) fn new() -> Self {
        Inbox {
            keys: std::sync::Mutex::new(Some(Waiting {
                keys: VecDeque::new(),
                announced: false,
            })),
            has_keys: AtomicBool::new(false),
            plan: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Waiting>> {
        self.keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Hands `keys` to the driver and wakes it.
    pub(crate) fn push(
        &self,
        keys: impl IntoIterator<Item = KeyParts>,
        requests: &RequestSender,
    ) -> Result<(), Closed> {
        let mut inbox = self.lock();
        let Some(waiting) = inbox.as_mut() else {
            return Err(Closed);
        };
        if requests.is_closed() {
            // The driver has ended without closing the inbox (it panicked):
            // keys pushed now would wait for it for ever.
            *inbox = None;
            return Err(Closed);
        }
        let before = waiting.keys.len();
        waiting.keys.extend(keys);
        if waiting.keys.len() == before {
            return Ok(());
        }
        self.has_keys.store(true, Ordering::SeqCst);
        if !self.announce(waiting, requests) {
            // The driver has ended: these keys will never be taken.
            *inbox = None;
            return Err(Closed);
        }
        Ok(())
    }

    /// Sends `Added` unless one is on its way; whether the driver is there.
    fn announce(&self, waiting: &mut Waiting, requests: &RequestSender) -> bool {
        if !waiting.announced {
            if requests.unbounded_send(Request::Added).is_err() {
                return false;
            }
            waiting.announced = true;
        }
        true
    }

    /// Up to `n` waiting keys, into `into`; whether more are left.
    fn take(&self, n: usize, into: &mut Vec<KeyParts>) -> bool {
        let mut inbox = self.lock();
        let Some(waiting) = inbox.as_mut() else {
            return false;
        };
        let n = n.min(waiting.keys.len());
        into.extend(waiting.keys.drain(..n));
        waiting.announced = false;
        if waiting.keys.is_empty() && waiting.keys.capacity() > 4 * BATCH {
            // A burst is over: its room is not kept for the pool's life.
            waiting.keys = VecDeque::new();
        }
        let more = !waiting.keys.is_empty();
        self.has_keys.store(more, Ordering::SeqCst);
        more
    }

    /// Whether keys wait (read without the lock).
    fn has_keys(&self) -> bool {
        self.has_keys.load(Ordering::SeqCst)
    }

    /// The driver will wake by `at` (see [`Inbox::plan`]) if nothing
    /// wakes it sooner; whether keys wait, pushed before it said so, that
    /// it must take in first.
    fn plan(&self, at: Option<u64>) -> bool {
        self.plan.store(at.unwrap_or(u64::MAX), Ordering::SeqCst);
        self.has_keys()
    }

    /// Hands `parts` to the driver, or gives them back when it no longer
    /// takes keys. `needs_driver_by` is when the key first needs its
    /// driver (on the monotonic clock, in milliseconds): the driver is
    /// woken only if it would not wake by then anyway, or if many keys
    /// wait; `None` wakes it.
    pub(crate) fn push_one(
        &self,
        parts: KeyParts,
        requests: &RequestSender,
        needs_driver_by: Option<u64>,
    ) -> Result<(), Box<KeyParts>> {
        let mut inbox = self.lock();
        let Some(waiting) = inbox.as_mut() else {
            return Err(Box::new(parts));
        };
        if requests.is_closed() {
            *inbox = None;
            return Err(Box::new(parts));
        }
        waiting.keys.push_back(parts);
        // Stored before the plan is read, as the driver stores its plan
        // before it looks for keys: one of the two sees the other.
        self.has_keys.store(true, Ordering::SeqCst);
        let wanted = waiting.keys.len() >= BATCH
            || needs_driver_by.is_none_or(|by| by < self.plan.load(Ordering::SeqCst));
        if wanted && !self.announce(waiting, requests) {
            let parts = waiting.keys.pop_back();
            *inbox = None;
            self.has_keys.store(false, Ordering::SeqCst);
            return match parts {
                Some(parts) => Err(Box::new(parts)),
                None => Ok(()),
            };
        }
        Ok(())
    }

    /// Closes the inbox if no key waits in it; whether it did.
    fn close_if_empty(&self) -> bool {
        let mut inbox = self.lock();
        if inbox
            .as_ref()
            .is_some_and(|waiting| !waiting.keys.is_empty())
        {
            return false;
        }
        *inbox = None;
        true
    }

    /// Takes no more keys; those waiting are dropped (which marks them
    /// stopped).
    fn close(&self) {
        let waiting = self.lock().take();
        self.has_keys.store(false, Ordering::SeqCst);
        drop(waiting);
    }
}

/// Everything a driver is made of; built by the builders.
pub(crate) struct DriverParts<R> {
    pub(crate) runtime: R,
    pub(crate) pool: RefresherPool,
    pub(crate) requests: RequestReceiver,
    /// New keys (the first of a watchers' driver is added directly).
    pub(crate) inbox: Option<Arc<Inbox>>,
    pub(crate) wake_interval: Duration,
    /// Watchers' driver: it ends once its last key has left (closing its
    /// inbox); a pool's keeps going until its handles are gone.
    pub(crate) ends_when_empty: bool,
    /// For logs: the watcher's or pool's name.
    pub(crate) name: String,
}

pub(crate) struct Driver<R: Runtime> {
    runtime: R,
    pool: RefresherPool,
    keys: KeyIdMap<Box<KeyState>>,
    /// Keys that have left, waiting for their workers.
    leaving: Vec<Leaving>,
    /// Change feeds of cache layers, all keys'.
    feeds: Vec<Task>,
    /// Guards of blocking layers' subscriptions (in a mutex only to make
    /// the driver `Sync`).
    subscriptions: std::sync::Mutex<Vec<(KeyId, Box<dyn Send>)>>,
    answers_tx: AnswerSender,
    answers_rx: futures_channel::mpsc::UnboundedReceiver<Answer>,
    requests: Option<RequestReceiver>,
    inbox: Option<Arc<Inbox>>,
    /// The inbox holds keys the driver has not taken yet.
    keys_waiting: bool,
    /// Keys taken from the inbox, being added (a buffer kept between turns).
    taken: Vec<KeyParts>,
    /// Events to publish once a drain has carried out every effect (a
    /// buffer kept between turns while small).
    events: Vec<(KeyId, Event)>,
    /// Fetches in tasks of their own (runtimes whose fetches may block),
    /// with the key each is for: aborted when their key leaves.
    fetches: Vec<(KeyId, Task)>,
    /// Fetches the driver polls itself (see `Runtime::polls_fetches_inline`);
    /// made for the first and kept (a node of its own, once per driver,
    /// rather than made again for each watcher's first fetch).
    inline: Option<FuturesUnordered<KeyedFetch>>,
    /// Fetches started this turn, not polled yet (a buffer kept between
    /// turns): first polled once the turn's drain is done, so that a key
    /// that left in the same turn never makes its request.
    fresh: Vec<KeyedFetch>,
    /// The deadline's timer, kept between turns (see [`Timer`]).
    timer: Option<Timer>,
    /// The time of this turn: read when first needed after the driver last
    /// waited, and forgotten when it waits again. A turn takes microseconds;
    /// reading both clocks at every step of it cost more than the steps.
    clock: Option<Now>,
    wake_interval: Duration,
    ends_when_empty: bool,
    /// Every key was told to stop: the driver ends once they have left.
    closing: bool,
    /// The driver's span: its loop, and its keys' layers and fetches, log
    /// in it (made before the first key is added, so that the layers a
    /// watcher starts with are in it too).
    span: Span,
}

impl<R: Runtime> Driver<R> {
    pub(crate) fn new(parts: DriverParts<R>) -> Self {
        let (answers_tx, answers_rx) = futures_channel::mpsc::unbounded();
        let span = if parts.ends_when_empty {
            // Watchers, which share their runtime's driver: each key's
            // spans name its watcher.
            info_span!("tokenkeeper.watchers", runtime = parts.runtime.name())
        } else {
            info_span!(
                "tokenkeeper.pool",
                name = %parts.name,
                runtime = parts.runtime.name()
            )
        };
        Driver {
            runtime: parts.runtime,
            pool: parts.pool,
            keys: KeyIdMap::default(),
            leaving: Vec::new(),
            feeds: Vec::new(),
            subscriptions: std::sync::Mutex::new(Vec::new()),
            answers_tx,
            answers_rx,
            requests: Some(parts.requests),
            inbox: parts.inbox,
            keys_waiting: false,
            taken: Vec::new(),
            events: Vec::new(),
            fetches: Vec::new(),
            inline: None,
            fresh: Vec::new(),
            timer: None,
            clock: None,
            wake_interval: parts.wake_interval,
            ends_when_empty: parts.ends_when_empty,
            closing: false,
            span,
        }
    }

    /// Starts holding a key.
    pub(crate) fn add(&mut self, parts: KeyParts) {
        let KeyParts {
            id,
            refresher,
            fetch,
            layers,
            publisher,
            forget,
            fetching,
        } = parts;
        let mut layers = (!layers.is_empty()).then(|| {
            Box::new(KeyLayers {
                layers,
                workers: Vec::new(),
                worker_tasks: Vec::new(),
                stopping: Arc::new(AtomicBool::new(false)),
            })
        });
        if let Some(layers) = &mut layers {
            let span = self.span_of(publisher.shared());
            span.in_scope(|| self.start_layers(id, layers));
        }
        let state = Box::new(KeyState {
            fetch,
            publisher,
            forget,
            layers,
        });
        self.keys.insert(id, state);
        let at = self.now();
        let refresher = match refresher {
            NewRefresher::Built(refresher) => refresher,
            NewRefresher::ToBuild { config, seed } => Box::new(Refresher::new(config, seed, at)),
        };
        let inserted = match fetching {
            Some((effect, fetch)) => {
                let inserted = self.pool.insert_fetching(at, id, refresher, effect);
                if inserted.is_ok() {
                    self.start_started(id, effect, fetch);
                }
                inserted
            }
            None => self.pool.insert(at, id, refresher),
        };
        if inserted.is_err() {
            error!(%id, "driver bug: a key id used twice");
        }
    }

    /// The driver's task. Not an `async fn`, and the loop borrows the
    /// driver rather than taking it: an `async fn` keeps its argument and
    /// the local it moves into as two copies of the driver (rust-lang/rust
    /// #62958), and a watcher is one such task. The span is made here.
    pub(crate) fn run(mut self) -> impl Future<Output = ()> + Send + 'static {
        let span = self.span.clone();
        async move {
            self.run_loop().await;
            // Boxed: only a stopping driver needs its (large) state.
            Box::pin(self.finish()).await;
        }
        .instrument(span)
    }

    async fn run_loop(&mut self) {
        info!(keys = self.keys.len(), "started");
        loop {
            if self.keys_waiting || self.inbox_has_keys() {
                self.take_added(false);
            }
            self.drain();
            if self.pool.is_empty() && (self.closing || self.ends_when_empty) {
                // Watchers' driver: it ends once its last key has left,
                // unless a new one was pushed meanwhile (a watcher that
                // finds the inbox closed starts a new driver).
                match &self.inbox {
                    Some(inbox) if !self.closing && !inbox.close_if_empty() => {
                        self.keys_waiting = true;
                        continue;
                    }
                    _ => break,
                }
            }
            // Fetches that answer at once (an in-memory source, a token
            // another key's request brought) are taken in this turn: a
            // `spawn` then has its token in one turn, and its key is filed
            // under its refresh only, not under its fetch's deadline first.
            if self.poll_fetches_once().await {
                self.take_queued();
                continue;
            }
            // Measured on the monotonic clock: a wall clock that steps
            // cannot stretch or shrink it. One sleep for every key; none
            // while new keys wait (only what is ready already is taken in).
            let sleep_for = if self.keys_waiting {
                Duration::ZERO
            } else {
                let at = self.now();
                self.pool
                    .poll_sleep(at)
                    .map_or(self.wake_interval, |sleep| sleep.min(self.wake_interval))
            };
            let fires_at = wake_ms(self.now(), sleep_for);
            // Said before the driver waits, then the inbox looked at: a key
            // pushed since the last look either is seen now, or saw this
            // plan and woke the driver if it needs it sooner.
            if self
                .inbox
                .as_ref()
                .is_some_and(|inbox| inbox.plan(fires_at))
            {
                self.keys_waiting = true;
                continue;
            }
            let woke = self.wait(sleep_for, fires_at).await;
            self.clock = None;
            match woke {
                Wake::Request(request) => {
                    self.request(request);
                    self.take_queued();
                }
                Wake::Answer(answer) => {
                    self.answer(answer);
                    self.take_queued();
                }
                Wake::Timeout => {
                    let at = self.now();
                    let keys = &self.keys;
                    self.pool.handle_timeout(at, |key| {
                        keys.get(&key)
                            .is_some_and(|k| k.publisher.shared().take_used())
                    });
                }
            }
        }
    }

    /// The first of: a command (first, so a shutdown is never starved), a
    /// finished effect or change, the deadline; the fetches the driver polls
    /// itself make progress meanwhile (their answers come as finished effects).
    ///
    /// `fires_at` is when `sleep_for` ends, from [`wake_ms`].
    async fn wait(&mut self, sleep_for: Duration, fires_at: Option<u64>) -> Wake {
        let Driver {
            requests,
            answers_rx,
            runtime,
            inline,
            timer,
            ..
        } = self;
        // Drives the fetches the driver polls itself; they answer through
        // the answers channel, so this never completes.
        let fetching = std::future::poll_fn(|cx| {
            poll_inline(inline, cx);
            Poll::Pending
        });
        let command = async {
            match requests {
                Some(requests) => Wake::Request(requests.next().await),
                None => std::future::pending().await,
            }
        };
        let answer = async {
            match answers_rx.next().await {
                Some(answer) => Wake::Answer(answer),
                // The loop holds a sender: never closed.
                None => std::future::pending().await,
            }
        };
        // Made (unless the kept one will do) only once everything else is
        // pending; dropped once it has fired.
        let deadline = std::future::poll_fn(|cx| {
            let keep = matches!((&*timer, fires_at), (Some(kept), Some(at))
                if kept.fires_at <= at && at - kept.fires_at <= TIMER_SLACK_MS);
            let sleep = match (keep, fires_at) {
                (true, _) => timer.as_mut().map(|kept| &mut kept.sleep),
                (false, Some(fires_at)) => {
                    let sleep = runtime.sleep(sleep_for);
                    Some(&mut timer.insert(Timer { fires_at, sleep }).sleep)
                }
                // Beyond what the clock can count: a timer not kept.
                (false, None) => {
                    *timer = None;
                    None
                }
            };
            match sleep {
                Some(sleep) => sleep.as_mut().poll(cx).map(|()| {
                    *timer = None;
                    Wake::Timeout
                }),
                None => Poll::Pending,
            }
        });
        fetching.or(command).or(answer).or(deadline).await
    }

    /// Polls the fetches the driver polls itself, once; whether any ended
    /// (its answer is queued).
    ///
    /// A fetch started this turn is polled first on its own, with no waker:
    /// one that ends at once (an in-memory source) then never takes a place
    /// in the queue. One that waits is queued, and the queue polls it again,
    /// with its waker, straight after.
    async fn poll_fetches_once(&mut self) -> bool {
        let mut ended = false;
        if !self.fresh.is_empty() {
            let mut at_once = std::task::Context::from_waker(std::task::Waker::noop());
            for mut fetch in self.fresh.drain(..) {
                if fetch.future.as_mut().poll(&mut at_once).is_ready() {
                    ended = true;
                } else {
                    self.inline
                        .get_or_insert_with(FuturesUnordered::new)
                        .push(fetch);
                }
            }
            if self.fresh.capacity() > TURN_BUFFER_KEPT {
                self.fresh = Vec::new();
            }
        }
        if self.inline.is_none() {
            return ended;
        }
        std::future::poll_fn(|cx| Poll::Ready(poll_inline(&mut self.inline, cx))).await || ended
    }

    /// Takes in the requests and answers already queued, up to a bound, so
    /// that a burst (a pool's keys created together) costs one turn of the
    /// loop rather than one each.
    fn take_queued(&mut self) {
        for _ in 0..BATCH {
            match self.requests.as_mut().map(|r| r.try_recv()) {
                Some(Ok(request)) => self.request(Some(request)),
                Some(Err(futures_channel::mpsc::TryRecvError::Closed)) => self.request(None),
                _ => break,
            }
        }
        for _ in 0..BATCH {
            match self.answers_rx.try_recv() {
                Ok(answer) => self.answer(answer),
                Err(_) => break,
            }
        }
    }

    fn answer(&mut self, answer: Answer) {
        match answer {
            Answer::Input(key, input) => self.feed(key, *input),
            Answer::Changed(key, layer) => {
                trace!(%key, layer, "a cache layer announced a change");
                self.feed(key, Input::CacheChanged { layer });
            }
        }
    }

    fn feed(&mut self, key: KeyId, input: Input) {
        let at = self.now();
        if let Err(e) = self.pool.handle(at, key, input) {
            error!(%key, error = %e, "driver bug: the refresher refused an answer");
        }
    }

    /// Carries out every effect the refreshers ask for, refreshes the status
    /// snapshots of the keys that changed, publishes every event (the status
    /// first, so that whoever wakes up for a new token, `spawn` among them,
    /// sees the status that goes with it), and lets go of keys that left.
    /// Statuses are refreshed before effects are carried out too: whoever
    /// sees a request arrive at the authority sees the status that sent it.
    fn drain(&mut self) {
        let mut events = std::mem::take(&mut self.events);
        loop {
            let mut idle = true;
            self.publish_statuses();
            while let Some((key, effect)) = self.pool.poll_effect() {
                idle = false;
                self.dispatch(key, effect);
            }
            while let Some(event) = self.pool.poll_event() {
                idle = false;
                events.push(event);
            }
            if idle {
                break;
            }
        }
        self.publish_statuses();
        let mut removed = Vec::new();
        while let Some(gone) = self.pool.poll_removed() {
            // Its last status, before its last events (`Stopped`).
            if let Some(state) = self.keys.get_mut(&gone.key) {
                state.publisher.status(gone.status.clone());
            }
            removed.push((gone.key, gone.why));
        }
        for (key, event) in events.drain(..) {
            let span = self.key_span(key);
            if let Some(state) = self.keys.get_mut(&key) {
                span.in_scope(|| state.publisher.event(event));
            }
        }
        if events.capacity() <= TURN_BUFFER_KEPT {
            self.events = events;
        }
        for (key, why) in removed {
            self.let_go(key, why);
        }
        self.fetches.retain(|(_, task)| !task.is_finished());
        self.feeds.retain(|task| !task.is_finished());
        // Dropping a publisher marks its key's handles stopped.
        self.leaving
            .retain(|key| key.worker_tasks.iter().any(|task| !task.is_finished()));
    }

    /// A key has left the pool: its workers finish what they were given and
    /// end, its handles see it stopped, and a pool forgets it.
    fn let_go(&mut self, key: KeyId, why: Removal) {
        let span = self.key_span(key);
        let _entered = span.enter();
        let Some(state) = self.keys.remove(&key) else {
            return;
        };
        debug!(%key, ?why, "a key has left");
        // Its refresher has finished: no answer still to come is wanted.
        self.drop_fetches(key);
        let KeyState {
            publisher,
            forget,
            layers,
            ..
        } = *state;
        if let Some(forget) = forget {
            forget();
        }
        let Some(layers) = layers else {
            // Dropping the publisher marks the key's handles stopped.
            return;
        };
        layers.stopping.store(true, Ordering::Release);
        self.subscriptions
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|(owner, _)| *owner != key);
        // Closing the queues (dropping the senders) lets each worker finish
        // and end.
        let KeyLayers { worker_tasks, .. } = *layers;
        self.leaving.push(Leaving {
            publisher,
            worker_tasks,
        });
    }

    /// Adds keys waiting in the inbox: up to [`BATCH`] (a turn of the
    /// loop), or `all` of them.
    fn take_added(&mut self, all: bool) {
        let Some(inbox) = self.inbox.clone() else {
            return;
        };
        let mut taken = std::mem::take(&mut self.taken);
        loop {
            self.keys_waiting = inbox.take(BATCH, &mut taken);
            for parts in taken.drain(..) {
                self.add(parts);
            }
            if !(all && self.keys_waiting) {
                break;
            }
        }
        self.taken = taken;
    }

    /// Whether keys wait in the inbox, announced or not.
    fn inbox_has_keys(&self) -> bool {
        self.inbox.as_ref().is_some_and(|inbox| inbox.has_keys())
    }

    fn request(&mut self, request: Option<Request>) {
        let waiting = self.keys_waiting || self.inbox_has_keys();
        if waiting && !matches!(request, Some(Request::Added)) {
            // Whatever was asked after a key was pushed finds it added.
            self.take_added(true);
        }
        match request {
            Some(Request::Key(key, command)) => self.command(key, command),
            Some(Request::Added) => self.keys_waiting = true,
            Some(Request::Health(reply)) => {
                let at = self.now();
                let mut summary = crate::PoolHealth::default();
                for key in self.pool.keys() {
                    match self.pool.status(key, at).map(|status| status.health(at)) {
                        Some(Health::Ready) => summary.ready += 1,
                        Some(Health::Degraded { .. }) => summary.degraded += 1,
                        Some(_) => summary.broken += 1,
                        None => {}
                    }
                }
                let _ = reply.try_send(summary);
            }
            Some(Request::ShutdownAll) => {
                info!("shutdown asked for");
                self.stop_all();
            }
            None => {
                info!("the last handle was dropped");
                self.requests = None;
                self.stop_all();
            }
        }
    }

    fn command(&mut self, key: KeyId, command: Command) {
        let span = self.key_span(key);
        let _entered = span.enter();
        let now = self.now();
        match command {
            Command::RefreshNow(reply) => {
                let outcome = self.pool.refresh_now(now, key);
                info!(%key, ?outcome, "early refresh asked for");
                let _ = reply.try_send(outcome);
            }
            Command::RefreshIfCurrent(refused, reply) => {
                let outcome = self.pool.refresh_if_current(now, key, &refused);
                debug!(%key, ?outcome, "a resource server refused a token");
                let _ = reply.try_send(outcome);
            }
            Command::Shutdown => {
                info!(%key, "shutdown asked for");
                self.pool.remove(now, key);
            }
            Command::Status(reply) => {
                let _ = reply.try_send(self.pool.status(key, now));
            }
        }
    }

    /// Asks every refresher to stop; each finishes at once, or after letting
    /// a refresh-token request in flight finish (within its grace).
    fn stop_all(&mut self) {
        self.closing = true;
        // Keys asked for from now on are refused; those not taken yet are
        // dropped, which marks them stopped.
        if let Some(inbox) = &self.inbox {
            inbox.close();
        }
        self.keys_waiting = false;
        let at = self.now();
        self.pool.shutdown(at);
    }

    async fn finish(mut self) {
        for key in self.keys.keys().copied().collect::<Vec<_>>() {
            self.let_go(key, Removal::ShutDown);
        }
        // Nothing still running is needed any more: every refresher has finished.
        self.inline = None;
        self.fresh.clear();
        for task in self.fetches.iter().map(|(_, task)| task).chain(&self.feeds) {
            task.abort();
        }
        drop(std::mem::take(
            self.subscriptions
                .get_mut()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        ));
        let fetches = std::mem::take(&mut self.fetches);
        let feeds = std::mem::take(&mut self.feeds);
        let ended = timeout(&self.runtime, GRACE, async {
            for task in fetches.iter().map(|(_, task)| task).chain(&feeds) {
                task.join().await;
            }
        })
        .await;
        if ended.is_none() {
            warn!("a request or change feed did not end in time; left behind");
        }
        // The workers' queues are closed: each finishes what it was given
        // (lease releases, a last write) and ends; then its key's handles
        // learn that it stopped.
        for leaving in std::mem::take(&mut self.leaving) {
            for task in &leaving.worker_tasks {
                if timeout(&self.runtime, GRACE, task.join()).await.is_none() {
                    warn!("a cache layer did not finish in time; abandoned");
                    task.abort();
                }
            }
        }
    }

    fn start_layers(&mut self, key: KeyId, state: &mut KeyLayers) {
        let stopping = Arc::clone(&state.stopping);
        for (index, layer) in state.layers.iter().enumerate() {
            let name = layer.layer().name().to_owned();
            let (ops_tx, ops_rx) = async_channel::unbounded();
            let task = runtime::spawn(
                &self.runtime,
                "cache layer",
                serve_layer(
                    self.runtime.clone(),
                    key,
                    index,
                    name.clone(),
                    layer.clone(),
                    ops_rx,
                    self.answers_tx.clone(),
                    Arc::clone(&stopping),
                )
                // Its spans belong to this watcher's.
                .instrument(Span::current()),
            );
            state.workers.push(ops_tx);
            state.worker_tasks.push(task);
            match layer {
                AnyLayer::Async(layer) => {
                    let sleeper = Sleeper::of(self.runtime.clone());
                    let layer = Arc::clone(layer);
                    let changes =
                        std::panic::catch_unwind(AssertUnwindSafe(move || layer.changes(sleeper)));
                    let Some(mut feed) = changes.unwrap_or_else(|_| {
                        error!(layer = index, name = %name, "the cache layer's change feed panicked; going on without it");
                        None
                    }) else {
                        continue;
                    };
                    let answers = self.answers_tx.clone();
                    let span = info_span!("tokenkeeper.cache.changes", layer = index, name = %name);
                    let task = runtime::spawn(
                        &self.runtime,
                        "cache change feed",
                        async move {
                            while feed.next().await.is_some() {
                                if answers.unbounded_send(Answer::Changed(key, index)).is_err() {
                                    break;
                                }
                            }
                            debug!("the change feed ended");
                        }
                        .instrument(span),
                    );
                    self.feeds.push(task);
                }
                AnyLayer::Blocking(layer) => {
                    let answers = self.answers_tx.clone();
                    let notify = Box::new(move || {
                        let _ = answers.unbounded_send(Answer::Changed(key, index));
                    });
                    let subscribed =
                        std::panic::catch_unwind(AssertUnwindSafe(|| layer.subscribe(notify)))
                            .unwrap_or_else(|_| {
                                error!(layer = index, name = %name, "the cache layer's subscription panicked; going on without it");
                                None
                            });
                    if let Some(guard) = subscribed {
                        self.subscriptions
                            .get_mut()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .push((key, guard));
                    }
                }
            }
        }
    }

    /// The span a key's work logs in: for a watcher, one naming it (its
    /// name and cache key) inside the driver's; a pool's keys log in the
    /// pool's. Made when needed, a few times a refresh, and not kept: a
    /// span per key would cost memory for every key.
    fn span_of(&self, shared: &Shared) -> Span {
        if self.ends_when_empty {
            info_span!(parent: &self.span, "tokenkeeper.watcher", name = %shared.name(), key = %shared.key())
        } else {
            Span::none()
        }
    }

    /// [`span_of`](Self::span_of) a key held.
    fn key_span(&self, key: KeyId) -> Span {
        match self.keys.get(&key) {
            Some(state) => self.span_of(state.publisher.shared()),
            None => Span::none(),
        }
    }

    /// Refreshes the status snapshots of the keys whose refreshers changed.
    /// The time of this turn (see `clock`).
    fn now(&mut self) -> Now {
        *self.clock.get_or_insert_with(now)
    }

    fn publish_statuses(&mut self) {
        // The clock is read for the first key that needs it: most calls
        // find no key touched (the drain calls this every turn of its loop).
        while let Some(key) = self.pool.poll_touched() {
            // A pool's keys keep no snapshot: no status is worked out for them.
            if !self
                .keys
                .get(&key)
                .is_some_and(|state| state.publisher.wants_status())
            {
                continue;
            }
            let at = self.now();
            if let (Some(status), Some(state)) =
                (self.pool.status(key, at), self.keys.get_mut(&key))
            {
                state.publisher.status(status);
            }
        }
    }

    fn dispatch(&mut self, key: KeyId, effect: Effect) {
        let span = self.key_span(key);
        let _entered = span.enter();
        match effect {
            Effect::ReadCache { id, layer } => self.send_to_layer(key, layer, LayerOp::Read(id)),
            Effect::WriteCache { id, layer, record } => {
                self.send_to_layer(key, layer, LayerOp::Write(id, record));
            }
            Effect::AcquireLease { id, layer, ttl } => {
                self.send_to_layer(key, layer, LayerOp::Acquire(id, ttl));
            }
            Effect::ReleaseLease { layer } => self.send_to_layer(key, layer, LayerOp::Release),
            Effect::SendRequest {
                id,
                request,
                max_body,
            } => self.send_request(key, id, *request, max_body),
            Effect::Fetch { id, refresh_token } => self.fetch_from_source(key, id, refresh_token),
            other => error!(effect = ?other, "driver bug: an effect this driver does not know"),
        }
    }

    fn send_to_layer(&mut self, key: KeyId, layer: usize, op: LayerOp) {
        let worker = self
            .keys
            .get(&key)
            .and_then(|k| k.layers.as_ref())
            .and_then(|l| l.workers.get(layer));
        let sent = match worker {
            Some(worker) => worker.try_send(op).map_err(|e| e.into_inner()),
            None => Err(op),
        };
        if let Err(op) = sent {
            error!(layer, "the cache layer's worker is gone");
            let gone = || CacheError::new(CacheErrorKind::Unavailable, "the cache layer is gone");
            let input = match op {
                LayerOp::Read(id) => Input::CacheRead {
                    id,
                    result: Err(gone()),
                },
                LayerOp::Write(id, _) => Input::CacheWritten {
                    id,
                    result: Err(gone()),
                },
                LayerOp::Acquire(id, _) => Input::Lease {
                    id,
                    outcome: LeaseOutcome::Failed(gone()),
                },
                LayerOp::Release => return,
            };
            self.feed(key, input);
        }
    }

    fn send_request(&mut self, key: KeyId, id: EffectId, request: TokenRequest, max_body: usize) {
        let reply = Reply::new(&self.answers_tx, key, id, |id| Input::FetchFailed {
            id,
            error: FetchError::Transport {
                message: "the request was abandoned".into(),
            },
        });
        let Some(FetchWith::Http {
            exchange,
            dpop,
            grant,
            url,
            assertions,
        }) = self.keys.get(&key).map(|k| &k.fetch)
        else {
            error!("driver bug: an HTTP request for a custom source");
            return;
        };
        let exchange = Arc::clone(exchange);
        // Where it goes: the token endpoint, or, for a client made from an
        // issuer, the issuer's metadata (a GET) or the endpoint it named.
        let metadata = request.as_http().method() == http::Method::GET;
        let target =
            tokenkeeper_core::oauth2::TokenUrl::parse(&request.as_http().uri().to_string(), true)
                .map(|u| u.redacted())
                .unwrap_or_else(|_| url.to_string());
        // The core decided what the proof claims; the key signs it here,
        // with an id of its own (see `sign_with_fresh_id`).
        let proof = match (dpop, request.dpop_claims()) {
            (Some(key), Some(claims)) => match key.sign_with_fresh_id(claims) {
                Ok(proof) => http::HeaderValue::from_str(&proof).ok(),
                Err(e) => {
                    error!(error = %e, "could not sign a DPoP proof");
                    None
                }
            },
            _ => None,
        };
        // Likewise its assertions (RFC 7523), made in the task below:
        // files and callbacks may block.
        let (mut request, assertion) = match assertions {
            Some(assertions) => assertions.take(request, &self.runtime),
            None => crate::assertion::Assertions::default().take(request, &self.runtime),
        };
        if let Some(proof) = proof {
            request.headers_mut().insert("dpop", proof);
        }
        let span = info_span!(
            "tokenkeeper.fetch",
            %key,
            effect = %id,
            grant = *grant,
            url = %target,
        );
        self.start_fetch(
            key,
            async move {
                if metadata {
                    debug!("requesting the issuer's metadata");
                } else {
                    debug!("requesting a token");
                }
                // A chain keeps the bare request, to send again once the
                // upstream replaced a refused token.
                let again = assertion
                    .retries_after_upstream(&request)
                    .then(|| copy_request(&request));
                let request = match assertion.complete(request).await {
                    Ok(request) => request,
                    Err(error) => return reply.send(Input::FetchFailed { id, error }),
                };
                let started = LogTimer::start();
                let mut result = exchange.send(request, max_body).await;
                if let (Some(bare), Ok(answer)) = (again, &result)
                    && crate::token_exchange::is_invalid_grant(answer.status, &answer.body)
                {
                    debug!(
                        "the exchange was refused: the upstream watcher replaces its token first"
                    );
                    if assertion.upstream_replaced().await {
                        result = match assertion.complete(bare).await {
                            Ok(request) => exchange.send(request, max_body).await,
                            Err(error) => return reply.send(Input::FetchFailed { id, error }),
                        };
                    }
                }
                let elapsed_ms = started.elapsed_ms();
                let input = match result {
                    Ok(answer) => {
                        debug!(
                            status = answer.status,
                            bytes = answer.body.len(),
                            elapsed_ms,
                            metadata,
                            "the token endpoint answered"
                        );
                        Input::Response {
                            id,
                            status: answer.status,
                            headers: answer.headers.clone(),
                            body: answer.body.to_vec(),
                        }
                    }
                    Err(error) => {
                        warn!(%error, elapsed_ms, "no answer from the token endpoint");
                        Input::FetchFailed { id, error }
                    }
                };
                reply.send(input);
            }
            .instrument(span),
        );
    }

    /// Starts a fetch: polled by the driver itself where the runtime allows
    /// it (no task to spawn, no hand-off between threads), else in a task of
    /// its own. A panic is caught either way; its `Reply` then answers.
    fn start_fetch(&mut self, key: KeyId, fetch: impl Future<Output = ()> + Send + 'static) {
        if self.runtime.polls_fetches_inline() {
            // The queue is made with the driver's first fetch and kept,
            // though a fetch that ends at once never enters it: without it,
            // 100,000 watchers measured 100 bytes a watcher more resident
            // (glibc placed the caller's allocations in a second arena; why
            // was not found).
            self.inline.get_or_insert_with(FuturesUnordered::new);
            self.fresh.push(KeyedFetch {
                key,
                future: Box::pin(async move {
                    if AssertUnwindSafe(fetch).catch_unwind().await.is_err() {
                        error!(task = "fetch", "a tokenkeeper task panicked");
                    }
                }),
            });
        } else {
            self.fetches
                .push((key, runtime::spawn(&self.runtime, "fetch", fetch)));
        }
    }

    /// Drops the fetches still running for `key`, which has left: a hung
    /// request is not kept until its timeout, and a blocking call not begun
    /// yet never begins (see [`unblock`]).
    fn drop_fetches(&mut self, key: KeyId) {
        self.fetches.retain(|(owner, task)| {
            if *owner == key {
                task.abort();
            }
            *owner != key
        });
        // A queue of futures cannot give one back: it is rebuilt without
        // them, which is rare (a key leaving mid-request) and small (the cap
        // on fetches in flight).
        self.fresh.retain(|f| f.key != key);
        if let Some(inline) = self
            .inline
            .take_if(|inline| inline.iter().any(|f| f.key == key))
        {
            self.inline = Some(inline.into_iter().filter(|f| f.key != key).collect());
        }
    }

    fn fetch_from_source(&mut self, key: KeyId, id: EffectId, refresh_token: Option<RefreshToken>) {
        let Some(FetchWith::Source { source, timeout }) = self.keys.get(&key).map(|k| &k.fetch)
        else {
            error!("driver bug: a custom fetch for an OAuth2 source");
            return;
        };
        let span = fetch_span(key, id, refresh_token.as_ref());
        let fetch = source_fetch(
            self.runtime.clone(),
            source.clone(),
            *timeout,
            id,
            refresh_token,
        );
        self.start_started(key, id, Box::pin(fetch.instrument(span)));
    }

    /// Runs a custom source's fetch begun elsewhere (or here) to its end;
    /// its answer comes back as any other.
    fn start_started(&mut self, key: KeyId, id: EffectId, fetch: StartedFetch) {
        let reply = Reply::new(&self.answers_tx, key, id, source_gave_nothing);
        self.start_fetch(key, async move { reply.send(fetch.await) });
    }
}

/// When a sleep of `sleep_for` from `now` ends, on the monotonic clock in
/// milliseconds (`None` beyond what it counts): the turn's clock, since a
/// plan or a kept timer is compared to the millisecond, and one more
/// reading of the clock would buy nothing.
pub(crate) fn wake_ms(now: Now, sleep_for: Duration) -> Option<u64> {
    u64::try_from(sleep_for.as_millis())
        .ok()
        .and_then(|ms| now.mono.as_millis().checked_add(ms))
}

/// A custom source's fetch, already under way: its answer for the
/// refresher.
pub(crate) type StartedFetch = Pin<Box<dyn Future<Output = Input> + Send + 'static>>;

/// The answer to a custom source's fetch that never gave one.
fn source_gave_nothing(id: EffectId) -> Input {
    Input::Grant {
        id,
        result: Err(FetchError::Source {
            message: "the token source panicked or was cancelled".into(),
            class: ErrorClass::Transient,
        }),
    }
}

/// The span a custom source's fetch logs in.
fn fetch_span(key: KeyId, id: EffectId, refresh_token: Option<&RefreshToken>) -> Span {
    info_span!(
        "tokenkeeper.fetch",
        %key,
        effect = %id,
        source = "custom",
        refresh_token = ?refresh_token.map(|t| t.fingerprint()),
    )
}

/// Calls a custom source for the refresher's fetch `id`, within `limit`;
/// a source that panics is answered as one that failed.
async fn source_fetch<R: Runtime>(
    runtime: R,
    source: SourceKind,
    limit: Duration,
    id: EffectId,
    refresh_token: Option<RefreshToken>,
) -> Input {
    debug!("asking the token source");
    let started = LogTimer::start();
    let call = call_source(&runtime, source, refresh_token);
    let Some(result) = timeout(&runtime, limit, call).await else {
        return Input::Grant {
            id,
            result: Err(FetchError::Timeout { after: limit }),
        };
    };
    let Some(result) = result else {
        warn!("the token source panicked");
        return source_gave_nothing(id);
    };
    let elapsed_ms = started.elapsed_ms();
    match &result {
        Ok(grant) => debug!(
            token = %grant.access_token.fingerprint(),
            expires_in = ?grant.expires_in,
            elapsed_ms,
            "the token source answered"
        ),
        Err(error) => warn!(%error, elapsed_ms, "the token source failed"),
    }
    Input::Grant { id, result }
}

/// A watcher's first turn, taken by its `spawn` on the caller's thread
/// before the key reaches the driver: when the refresher's first effect is
/// a custom source's fetch, the caller starts it and polls it once. A
/// source that answers at once (one in memory, one with a token to hand)
/// gives the watcher its token with no turn of the driver: the driver's
/// task takes the key in afterwards, on a thread of its own, so that its
/// filing, timers and snapshots cost the caller nothing (as a runtime's
/// `spawn` leaves a task's first poll to a worker). A fetch that waits is
/// given back, to be handed to the driver with the key.
///
/// For keys without cache layers on runtimes whose driver polls fetches
/// itself; any other key, or a first effect of another kind, is left to
/// the driver untouched.
///
/// `at` is the time the refresher was made: its first answer, which comes
/// at once, is taken in at that time too (one reading of the clock less).
pub(crate) fn first_turn<R: Runtime>(
    runtime: &R,
    at: Now,
    refresher: &mut Refresher,
    fetch: &FetchWith,
    publisher: &mut Publisher,
) -> FirstTurn {
    let FetchWith::Source { source, timeout } = fetch else {
        return FirstTurn::Left;
    };
    if !runtime.polls_fetches_inline()
        || !matches!(refresher.peek_effect(), Some(Effect::Fetch { .. }))
    {
        return FirstTurn::Left;
    }
    let Some(Effect::Fetch { id, refresh_token }) = refresher.poll_effect() else {
        return FirstTurn::Left;
    };
    let shared = publisher.shared();
    let span = info_span!("tokenkeeper.watcher", name = %shared.name(), key = %shared.key());
    let _entered = span.enter();
    let fetch_span = fetch_span(shared.id(), id, refresh_token.as_ref());
    // Its metrics time the refresh from a status that shows it under way,
    // as the driver's would.
    #[cfg(feature = "metrics")]
    publisher.status(refresher.status(at));
    let source_fetch = source_fetch(runtime.clone(), source.clone(), *timeout, id, refresh_token);
    let mut started: StartedFetch = Box::pin(source_fetch.instrument(fetch_span));
    // Caught as the driver catches its fetches' panics: a spawn fails on
    // what its source says, never on a panic in it.
    let polled = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let mut at_once = std::task::Context::from_waker(std::task::Waker::noop());
        started.as_mut().poll(&mut at_once)
    }));
    let input = match polled {
        Ok(Poll::Ready(input)) => input,
        Ok(Poll::Pending) => return FirstTurn::Waiting(id, started),
        Err(_) => {
            error!(task = "fetch", "a tokenkeeper task panicked");
            source_gave_nothing(id)
        }
    };
    if let Err(e) = refresher.handle(at, input) {
        error!(error = %e, "driver bug: the refresher refused its first answer");
    }
    // The status first, as the driver publishes them: whoever sees the
    // token sees the status that goes with it.
    if publisher.wants_status() {
        publisher.status(refresher.status(at));
    }
    while let Some(event) = refresher.poll_event() {
        publisher.event(event);
    }
    // Effects the answer asked for are the driver's, at once.
    let needs_driver_by = match refresher.peek_effect() {
        Some(_) => None,
        None => refresher
            .poll_sleep(at)
            .and_then(|sleep| wake_ms(at, sleep)),
    };
    FirstTurn::Answered { needs_driver_by }
}

/// What a watcher's [`first_turn`] did.
pub(crate) enum FirstTurn {
    /// Nothing: the key's first effect is the driver's to carry out.
    Left,
    /// Started the fetch, which waits: it goes to the driver with the key.
    Waiting(EffectId, StartedFetch),
    /// The fetch answered, and its answer was handled and published: the
    /// key needs its driver by this time (see [`Inbox::push_one`]).
    Answered { needs_driver_by: Option<u64> },
}

/// How long a fetch took, for its log lines: the clock is read only when
/// they can be written (two readings a fetch, for an in-memory source a
/// good part of its cost).
struct LogTimer(Option<Instant>);

impl LogTimer {
    fn start() -> Self {
        LogTimer(
            (tracing::level_filters::LevelFilter::current() >= tracing::Level::WARN)
                .then(Instant::now),
        )
    }

    /// `None` (the field left out) when the logs were off at the start.
    fn elapsed_ms(&self) -> Option<u64> {
        self.0
            .map(|started| u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX))
    }
}

/// Polls the fetches a driver polls itself until none is ready or all have
/// ended; whether any ended (its answer is queued).
fn poll_inline(
    inline: &mut Option<FuturesUnordered<KeyedFetch>>,
    cx: &mut std::task::Context<'_>,
) -> bool {
    let Some(running) = inline.as_mut() else {
        return false;
    };
    let mut ended = false;
    while let Poll::Ready(Some(())) = Pin::new(&mut *running).poll_next(cx) {
        ended = true;
    }
    ended
}

/// Calls a custom source; `None` when it panicked.
async fn call_source<R: Runtime>(
    runtime: &R,
    source: SourceKind,
    refresh_token: Option<RefreshToken>,
) -> Option<Result<TokenGrant, FetchError>> {
    match source {
        SourceKind::Custom { source, .. } => {
            // A source may panic when called as well as when polled.
            let call =
                std::panic::catch_unwind(AssertUnwindSafe(|| source.fetch(refresh_token.as_ref())))
                    .ok()?;
            AssertUnwindSafe(call).catch_unwind().await.ok()
        }
        SourceKind::Blocking { source, .. } => {
            unblock(runtime, move || source.fetch(refresh_token.as_ref()))
                .await
                .ok()
        }
        SourceKind::OAuth2(_) => Some(Err(FetchError::Source {
            message: "an OAuth2 source is not called as a custom one".into(),
            class: ErrorClass::Permanent,
        })),
    }
}

/// Runs one layer's effects one at a time, in order. A call that panics is
/// answered with an error instead of leaving the refresher waiting.
#[allow(clippy::too_many_arguments)]
async fn serve_layer<R: Runtime>(
    runtime: R,
    key: KeyId,
    index: usize,
    name: String,
    layer: AnyLayer,
    ops: async_channel::Receiver<LayerOp>,
    answers: AnswerSender,
    stopping: Arc<AtomicBool>,
) {
    let mut holds_lease = false;
    while let Ok(op) = ops.recv().await {
        // Once stopping, nothing new is read or leased; writes and releases finish.
        let stopping = stopping.load(Ordering::Acquire);
        let input = match op {
            LayerOp::Read(id) => {
                if stopping {
                    continue;
                }
                let span =
                    info_span!("tokenkeeper.cache.read", layer = index, name = %name, effect = %id);
                let result = isolated(layer.read(&runtime), span.clone())
                    .await
                    .unwrap_or_else(|()| Err(panicked("read")));
                span.in_scope(|| match &result {
                    Ok(Some(bytes)) => debug!(bytes = bytes.len(), "found a record"),
                    Ok(None) => debug!("no record"),
                    Err(error) => warn!(%error, "could not read"),
                });
                Input::CacheRead { id, result }
            }
            LayerOp::Write(id, record) => {
                let span = info_span!(
                    "tokenkeeper.cache.write",
                    layer = index,
                    name = %name,
                    effect = %id,
                    bytes = record.bytes().len(),
                    expiry = %record.expiry(),
                );
                let result = isolated(layer.write(&runtime, &record), span.clone())
                    .await
                    .unwrap_or_else(|()| Err(panicked("write")));
                span.in_scope(|| match &result {
                    Ok(()) => debug!("stored the record"),
                    Err(error) => warn!(%error, "could not store the record"),
                });
                Input::CacheWritten { id, result }
            }
            LayerOp::Acquire(id, ttl) => {
                if stopping {
                    continue;
                }
                let span = info_span!("tokenkeeper.cache.lease", layer = index, name = %name, effect = %id, ttl_ms = ttl.as_millis() as u64);
                let outcome = isolated(layer.try_acquire_lease(&runtime, ttl), span.clone())
                    .await
                    .unwrap_or_else(|()| LeaseOutcome::Failed(panicked("lease")));
                holds_lease = outcome == LeaseOutcome::Acquired;
                span.in_scope(|| debug!(outcome = ?outcome, "asked for the lease"));
                Input::Lease { id, outcome }
            }
            LayerOp::Release => {
                release(&runtime, &layer, index, &name).await;
                holds_lease = false;
                continue;
            }
        };
        let _ = answers.unbounded_send(Answer::Input(key, Box::new(input)));
    }
    // A lease granted while the watcher was stopping is never known to the
    // refresher; give it back here.
    if holds_lease {
        release(&runtime, &layer, index, &name).await;
    }
}

async fn release<R: Runtime>(runtime: &R, layer: &AnyLayer, index: usize, name: &str) {
    let span = info_span!("tokenkeeper.cache.release", layer = index, name = %name);
    if layer.release_lease(runtime).instrument(span.clone()).await {
        span.in_scope(|| debug!("released the lease"));
    } else {
        span.in_scope(|| warn!(error = %panicked("lease release"), "could not release the lease"));
    }
}

/// Runs a layer's call in `span`; `Err` when it panicked.
async fn isolated<T>(work: impl Future<Output = T>, span: Span) -> Result<T, ()> {
    AssertUnwindSafe(work.instrument(span))
        .catch_unwind()
        .await
        .map_err(|_| ())
}

fn panicked(what: &str) -> CacheError {
    CacheError::new(
        CacheErrorKind::Other,
        format!("the cache layer's {what} panicked"),
    )
}

/// A copy of a request not yet completed, to complete and send again. Its
/// body may hold a client secret, as the request's own does: it goes
/// nowhere but to the exchange.
fn copy_request(request: &http::Request<Vec<u8>>) -> http::Request<Vec<u8>> {
    let mut copy = http::Request::new(request.body().clone());
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.headers_mut() = request.headers().clone();
    *copy.version_mut() = request.version();
    copy
}

#[cfg(test)]
mod tests {
    /// A key's state is boxed: at 120 bytes it takes a 128-byte chunk, at
    /// 128 a 144-byte one, in every watcher and every key of a pool (the
    /// feature `metrics` adds its own handles).
    #[test]
    #[cfg(all(target_pointer_width = "64", not(feature = "metrics")))]
    fn a_keys_state_stays_within_its_size_class() {
        let size = std::mem::size_of::<super::KeyState>();
        assert!(size <= 120, "{size}");
    }
}
