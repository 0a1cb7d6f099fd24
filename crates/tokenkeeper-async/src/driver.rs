//! The background task: the core's driving loop, and nothing more.
//!
//! It drains the refresher's effects (starting each as a task, or handing it
//! to the worker of its cache layer) and events (publishing tokens to the
//! handles), then waits for the earliest of the refresher's deadline (or the
//! wake interval), a finished effect, a change announced by a cache layer,
//! and a command from the handles, and feeds what happened back. Every
//! decision about time (staleness, jitter, backoff, leases) is the
//! refresher's.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_lite::{FutureExt, StreamExt};
use tokenkeeper_core::oauth2::TokenRequest;
use tokenkeeper_core::{
    CacheError, CacheErrorKind, Effect, EffectId, EncodedRecord, ErrorClass, Event, FetchError,
    LeaseOutcome, Origin, RefreshToken, Refresher, Status, TokenGrant,
};
use tracing::{Instrument, Span, debug, error, info, info_span, trace, warn};

use crate::cache::CacheLayer;
use crate::http::{HttpAnswer, HttpClient};
use crate::runtime::{self, Runtime, Sleeper, Task, timeout};
use crate::source::TokenSource;
use crate::watcher::{Command, Shared, now};

/// How long a stopping watcher waits for its cache layers to finish (lease
/// releases, a last write) and its abandoned requests to end, before leaving
/// them behind.
const GRACE: Duration = Duration::from_secs(5);

/// How the refresher's fetches are carried out.
pub(crate) enum FetchWith<R> {
    /// Token requests built by the core, sent over HTTP.
    Http {
        client: Box<HttpClient<R>>,
        limit: usize,
        grant: &'static str,
    },
    /// A custom source, bounded by a timeout.
    Custom {
        source: Arc<dyn TokenSource>,
        timeout: Duration,
    },
}

/// Something that happened outside the loop, on its way back to it: a
/// finished effect, or a cache layer's change notification.
enum Answer {
    CacheRead {
        id: EffectId,
        result: Result<Option<Vec<u8>>, CacheError>,
    },
    CacheWritten {
        id: EffectId,
        result: Result<(), CacheError>,
    },
    Lease {
        id: EffectId,
        outcome: LeaseOutcome,
    },
    Http {
        id: EffectId,
        result: Result<HttpAnswer, FetchError>,
    },
    Grant {
        id: EffectId,
        result: Result<TokenGrant, FetchError>,
    },
    Changed {
        layer: usize,
    },
}

/// What one cache layer is asked to do, in order.
enum LayerOp {
    Read(EffectId),
    Write(EffectId, EncodedRecord),
    Acquire(EffectId, Duration),
    Release,
}

struct LayerWorker {
    ops: async_channel::Sender<LayerOp>,
    task: Task,
}

/// What wakes the loop.
enum Wake {
    Command(Option<Command>),
    Answer(Answer),
    Timeout,
}

/// Publishes what the refresher reports to the handles. Dropping it (when the
/// task ends, even by a panic, or when its runtime drops it) marks the
/// watcher stopped.
pub(crate) struct Publisher {
    shared: Arc<Shared>,
    first: Option<async_channel::Sender<Result<(), FetchError>>>,
}

impl Publisher {
    pub(crate) fn new(
        shared: Arc<Shared>,
        first: async_channel::Sender<Result<(), FetchError>>,
    ) -> Self {
        Publisher {
            shared,
            first: Some(first),
        }
    }

    fn event(&mut self, event: Event, layer_names: &[String]) {
        let layer_name = |layer: usize| layer_names.get(layer).map_or("?", String::as_str);
        match event {
            Event::TokenChanged { token, origin } => {
                let from = match origin {
                    Origin::Cache { layer } => layer_name(layer),
                    _ => "authority",
                };
                info!(
                    token = %token.access_token.fingerprint(),
                    refresh_token = ?token.refresh_token.as_ref().map(|t| t.fingerprint()),
                    from,
                    issued = %token.issued,
                    stale = %token.stale,
                    expiry = %token.expiry,
                    "new token"
                );
                self.shared.current.set(Some(Arc::clone(&token)));
                self.shared.changes.publish(token);
                if let Some(first) = self.first.take() {
                    let _ = first.try_send(Ok(()));
                }
            }
            Event::TokenExpired { expiry } => {
                warn!(%expiry, "the token expired before it could be replaced");
                self.shared.current.set(None);
                self.shared.cold().expired_at = Some(expiry);
            }
            Event::FetchFailed {
                error,
                class,
                consecutive_failures,
                retry_at,
            } => {
                if class == ErrorClass::Permanent {
                    error!(%error, consecutive_failures, %retry_at, "the token source refused");
                    if self.shared.current.get().is_none()
                        && let Some(first) = self.first.take()
                    {
                        let _ = first.try_send(Err(error));
                    }
                } else {
                    warn!(%error, consecutive_failures, %retry_at, "fetching a token failed");
                }
            }
            Event::CacheProblem { layer, problem } => {
                warn!(
                    layer,
                    name = layer_name(layer),
                    ?problem,
                    "cache layer problem"
                );
            }
            Event::LeaseBusy { layer, retry_at } => {
                debug!(layer, name = layer_name(layer), %retry_at, "lease held elsewhere; will re-read");
            }
            Event::Stopped => info!("stopped"),
            other => debug!(event = ?other, "refresher event"),
        }
    }

    fn snapshot(&self, status: Status) {
        self.shared.cold().status = status;
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.shared.current.set(None);
        self.shared.cold().status.shut_down = true;
        self.shared.stopped.store(true, Ordering::Release);
        if std::thread::panicking() {
            error!("the token watcher's task panicked; the watcher has stopped");
        }
        // Wakes `changed` and `shutdown`, for good.
        self.shared.changes.close();
    }
}

/// Answers a fetch even when the work panics or is cancelled, so the
/// refresher never waits for an answer that cannot come.
struct Reply {
    id: EffectId,
    answers: Option<async_channel::Sender<Answer>>,
    /// The answer given when none was.
    otherwise: fn(EffectId) -> Answer,
}

impl Reply {
    fn send(mut self, answer: Answer) {
        if let Some(answers) = self.answers.take() {
            let _ = answers.try_send(answer);
        }
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if let Some(answers) = self.answers.take() {
            let _ = answers.try_send((self.otherwise)(self.id));
        }
    }
}

fn http_abandoned(id: EffectId) -> Answer {
    Answer::Http {
        id,
        result: Err(FetchError::Transport {
            message: "the request was abandoned".into(),
        }),
    }
}

fn source_abandoned(id: EffectId) -> Answer {
    Answer::Grant {
        id,
        result: Err(FetchError::Source {
            message: "the token source panicked or was cancelled".into(),
            class: ErrorClass::Transient,
        }),
    }
}

pub(crate) struct Driver<R: Runtime> {
    runtime: R,
    refresher: Refresher,
    fetch: FetchWith<R>,
    layers: Vec<Arc<dyn CacheLayer>>,
    layer_names: Vec<String>,
    workers: Vec<LayerWorker>,
    feeds: Vec<Task>,
    answers_tx: async_channel::Sender<Answer>,
    answers_rx: async_channel::Receiver<Answer>,
    commands: async_channel::Receiver<Command>,
    fetches: Vec<Task>,
    publisher: Publisher,
    wake_interval: Duration,
    stopping: Arc<AtomicBool>,
}

impl<R: Runtime> Driver<R> {
    pub(crate) fn new(
        runtime: R,
        refresher: Refresher,
        fetch: FetchWith<R>,
        layers: Vec<Arc<dyn CacheLayer>>,
        publisher: Publisher,
        commands: async_channel::Receiver<Command>,
        wake_interval: Duration,
    ) -> Self {
        let (answers_tx, answers_rx) = async_channel::unbounded();
        let layer_names = refresher
            .config()
            .layers()
            .iter()
            .map(|l| l.name().to_owned())
            .collect();
        Driver {
            runtime,
            refresher,
            fetch,
            layers,
            layer_names,
            workers: Vec::new(),
            feeds: Vec::new(),
            answers_tx,
            answers_rx,
            commands,
            fetches: Vec::new(),
            publisher,
            wake_interval,
            stopping: Arc::new(AtomicBool::new(false)),
        }
    }

    pub(crate) async fn run(self) {
        let span = info_span!(
            "tokenkeeper.watcher",
            name = %self.publisher.shared.name,
            key = %self.publisher.shared.key,
            runtime = self.runtime.name(),
        );
        self.run_loop().instrument(span).await;
    }

    async fn run_loop(mut self) {
        self.start_layers();
        info!(
            layers = self.workers.len(),
            feeds = self.feeds.len(),
            "started"
        );
        loop {
            self.drain();
            if self.refresher.is_finished() {
                break;
            }
            let sleep_for = match self.refresher.poll_timeout() {
                Some(deadline) => deadline.duration_since(now()).min(self.wake_interval),
                None => self.wake_interval,
            };
            match self.wait(sleep_for).await {
                Wake::Command(command) => self.command(command),
                Wake::Answer(answer) => self.feed(answer),
                Wake::Timeout => self.refresher.handle_timeout(now()),
            }
        }
        self.finish().await;
    }

    /// The first of: a command (first, so a shutdown is never starved), a
    /// finished effect or change, the deadline.
    async fn wait(&self, sleep_for: Duration) -> Wake {
        let command = async { Wake::Command(self.commands.recv().await.ok()) };
        let answer = async {
            match self.answers_rx.recv().await {
                Ok(answer) => Wake::Answer(answer),
                // The loop holds a sender: never closed.
                Err(_) => std::future::pending().await,
            }
        };
        let deadline = async {
            self.runtime.sleep(sleep_for).await;
            Wake::Timeout
        };
        command.or(answer).or(deadline).await
    }

    fn start_layers(&mut self) {
        let sleeper = Sleeper::of(self.runtime.clone());
        for (index, layer) in self.layers.drain(..).enumerate() {
            let (ops, queue) = async_channel::unbounded();
            let task = runtime::spawn(
                &self.runtime,
                "cache layer",
                serve_layer(
                    index,
                    Arc::clone(&layer),
                    queue,
                    self.answers_tx.clone(),
                    Arc::clone(&self.stopping),
                )
                .instrument(Span::current()),
            );
            self.workers.push(LayerWorker { ops, task });

            let feed =
                std::panic::catch_unwind(AssertUnwindSafe(|| layer.changes(sleeper.clone())));
            let mut feed = match feed {
                Ok(Some(feed)) => feed,
                Ok(None) => continue,
                Err(_) => {
                    error!(
                        layer = index,
                        "the cache layer panicked setting up its change feed"
                    );
                    continue;
                }
            };
            let answers = self.answers_tx.clone();
            let span = info_span!("tokenkeeper.cache.changes", layer = index, name = %self.layer_names.get(index).map_or("?", String::as_str));
            let task = runtime::spawn(
                &self.runtime,
                "cache change feed",
                async move {
                    while feed.next().await.is_some() {
                        trace!("the store announced a change");
                        if answers
                            .send(Answer::Changed { layer: index })
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                    debug!("the change feed ended");
                }
                .instrument(span),
            );
            self.feeds.push(task);
        }
    }

    /// Carries out every effect the refresher asks for, refreshes the status
    /// snapshot, and publishes every event: the status first, so that
    /// whoever wakes up for a new token (`spawn` among them) sees the status
    /// that goes with it.
    fn drain(&mut self) {
        let mut events = Vec::new();
        loop {
            let mut idle = true;
            while let Some(effect) = self.refresher.poll_effect() {
                idle = false;
                self.dispatch(effect);
            }
            while let Some(event) = self.refresher.poll_event() {
                idle = false;
                events.push(event);
            }
            if idle {
                break;
            }
        }
        self.publisher.snapshot(self.refresher.status(now()));
        for event in events {
            self.publisher.event(event, &self.layer_names);
        }
        self.fetches.retain(|task| !task.is_finished());
    }

    fn command(&mut self, command: Option<Command>) {
        match command {
            Some(Command::RefreshNow(reply)) => {
                let outcome = self.refresher.refresh_now(now());
                info!(?outcome, "early refresh asked for");
                let _ = reply.try_send(outcome);
            }
            Some(Command::Shutdown) => {
                info!("shutdown asked for");
                self.stop();
            }
            None => {
                info!("the last handle was dropped");
                self.stop();
            }
        }
    }

    fn stop(&mut self) {
        self.stopping.store(true, Ordering::Release);
        for fetch in &self.fetches {
            fetch.abort();
        }
        self.refresher.shutdown(now());
    }

    async fn finish(mut self) {
        for feed in &self.feeds {
            feed.abort();
        }
        let fetches = std::mem::take(&mut self.fetches);
        let feeds = std::mem::take(&mut self.feeds);
        let ended = timeout(&self.runtime, GRACE, async {
            for task in fetches.iter().chain(&feeds) {
                task.join().await;
            }
        })
        .await;
        if ended.is_none() {
            warn!("a request or change feed did not end in time; left behind");
        }
        for worker in std::mem::take(&mut self.workers) {
            let LayerWorker { ops, task } = worker;
            drop(ops);
            if timeout(&self.runtime, GRACE, task.join()).await.is_none() {
                warn!("a cache layer did not finish in time; abandoned");
                task.abort();
            }
        }
        // Dropping the publisher marks the watcher stopped.
    }

    fn feed(&mut self, answer: Answer) {
        let now = now();
        let result = match answer {
            Answer::CacheRead { id, result } => self.refresher.handle_cache_read(now, id, result),
            Answer::CacheWritten { id, result } => {
                self.refresher.handle_cache_written(now, id, result)
            }
            Answer::Lease { id, outcome } => self.refresher.handle_lease(now, id, outcome),
            Answer::Http {
                id,
                result: Ok(answer),
            } => self.refresher.handle_response(
                now,
                id,
                answer.status,
                &answer.headers,
                &answer.body,
            ),
            Answer::Http { id, result: Err(e) } => self.refresher.handle_fetch_error(now, id, e),
            Answer::Grant { id, result } => self.refresher.handle_grant(now, id, result),
            Answer::Changed { layer } => {
                self.refresher.handle_cache_changed(now, layer);
                Ok(())
            }
        };
        if let Err(e) = result {
            error!(error = %e, "driver bug: the refresher refused an answer");
        }
    }

    fn dispatch(&mut self, effect: Effect) {
        match effect {
            Effect::ReadCache { id, layer } => self.send_to_layer(layer, LayerOp::Read(id)),
            Effect::WriteCache { id, layer, record } => {
                self.send_to_layer(layer, LayerOp::Write(id, record));
            }
            Effect::AcquireLease { id, layer, ttl } => {
                self.send_to_layer(layer, LayerOp::Acquire(id, ttl));
            }
            Effect::ReleaseLease { layer } => self.send_to_layer(layer, LayerOp::Release),
            Effect::SendRequest { id, request } => self.send_request(id, request),
            Effect::Fetch { id, refresh_token } => self.fetch_custom(id, refresh_token),
            other => error!(effect = ?other, "driver bug: an effect this driver does not know"),
        }
    }

    fn send_to_layer(&mut self, layer: usize, op: LayerOp) {
        let Some(worker) = self.workers.get(layer) else {
            error!(layer, "driver bug: no such cache layer");
            return self.layer_gone(op);
        };
        if let Err(
            async_channel::TrySendError::Closed(op) | async_channel::TrySendError::Full(op),
        ) = worker.ops.try_send(op)
        {
            error!(layer, "the cache layer's worker is gone");
            self.layer_gone(op);
        }
    }

    /// Answers an effect no layer can carry out, so the refresher goes on.
    fn layer_gone(&mut self, op: LayerOp) {
        let gone = || CacheError::new(CacheErrorKind::Unavailable, "the cache layer is gone");
        let now = now();
        let result = match op {
            LayerOp::Read(id) => self.refresher.handle_cache_read(now, id, Err(gone())),
            LayerOp::Write(id, _) => self.refresher.handle_cache_written(now, id, Err(gone())),
            LayerOp::Acquire(id, _) => {
                self.refresher
                    .handle_lease(now, id, LeaseOutcome::Failed(gone()))
            }
            LayerOp::Release => Ok(()),
        };
        if let Err(e) = result {
            error!(error = %e, "driver bug: the refresher refused an answer");
        }
    }

    fn send_request(&mut self, id: EffectId, request: TokenRequest) {
        let reply = Reply {
            id,
            answers: Some(self.answers_tx.clone()),
            otherwise: http_abandoned,
        };
        let FetchWith::Http {
            client,
            limit,
            grant,
        } = &self.fetch
        else {
            error!("driver bug: an HTTP request for a custom source");
            reply.send(Answer::Http {
                id,
                result: Err(FetchError::Transport {
                    message: "this watcher has no HTTP client".into(),
                }),
            });
            return;
        };
        let (client, limit) = (HttpClient::clone(client), *limit);
        let request = request.into_http();
        let span = info_span!(
            "tokenkeeper.fetch",
            effect = %id,
            grant = *grant,
            // Scheme, host and path only: a query string may carry secrets.
            url = %format_args!(
                "{}://{}{}",
                request.uri().scheme_str().unwrap_or("https"),
                request.uri().authority().map_or("", |a| a.as_str()),
                request.uri().path()
            ),
        );
        let task = runtime::spawn(
            &self.runtime,
            "fetch",
            async move {
                debug!("requesting a token");
                let started = Instant::now();
                let result = client.send(request, limit).await;
                let elapsed_ms = started.elapsed().as_millis() as u64;
                match &result {
                    Ok(answer) => debug!(
                        status = answer.status,
                        bytes = answer.body.len(),
                        elapsed_ms,
                        "the token endpoint answered"
                    ),
                    Err(error) => warn!(%error, elapsed_ms, "no answer from the token endpoint"),
                }
                reply.send(Answer::Http { id, result });
            }
            .instrument(span),
        );
        self.fetches.push(task);
    }

    fn fetch_custom(&mut self, id: EffectId, refresh_token: Option<RefreshToken>) {
        let reply = Reply {
            id,
            answers: Some(self.answers_tx.clone()),
            otherwise: source_abandoned,
        };
        let FetchWith::Custom {
            source,
            timeout: limit,
        } = &self.fetch
        else {
            error!("driver bug: a custom fetch for an OAuth2 source");
            reply.send(Answer::Grant {
                id,
                result: Err(FetchError::Source {
                    message: "this watcher has no custom source".into(),
                    class: ErrorClass::Permanent,
                }),
            });
            return;
        };
        let (source, limit) = (Arc::clone(source), *limit);
        let runtime = self.runtime.clone();
        let span = info_span!(
            "tokenkeeper.fetch",
            effect = %id,
            source = "custom",
            refresh_token = ?refresh_token.as_ref().map(|t| t.fingerprint()),
        );
        let task = runtime::spawn(
            &self.runtime,
            "fetch",
            async move {
                debug!("asking the token source");
                let started = Instant::now();
                let result = timeout(&runtime, limit, source.fetch(refresh_token.as_ref()))
                    .await
                    .unwrap_or(Err(FetchError::Timeout { after: limit }));
                let elapsed_ms = started.elapsed().as_millis() as u64;
                match &result {
                    Ok(grant) => debug!(
                        token = %grant.access_token.fingerprint(),
                        expires_in = ?grant.expires_in,
                        elapsed_ms,
                        "the token source answered"
                    ),
                    Err(error) => warn!(%error, elapsed_ms, "the token source failed"),
                }
                reply.send(Answer::Grant { id, result });
            }
            .instrument(span),
        );
        self.fetches.push(task);
    }
}

/// Runs one layer's effects one at a time, in order. A call that panics is
/// answered with an error instead of leaving the refresher waiting.
async fn serve_layer(
    index: usize,
    layer: Arc<dyn CacheLayer>,
    ops: async_channel::Receiver<LayerOp>,
    answers: async_channel::Sender<Answer>,
    stopping: Arc<AtomicBool>,
) {
    let name = layer.layer().name().to_owned();
    let mut holds_lease = false;
    while let Ok(op) = ops.recv().await {
        // Once stopping, nothing new is read or leased; writes and releases finish.
        let stopping = stopping.load(Ordering::Acquire);
        match op {
            LayerOp::Read(id) => {
                if stopping {
                    continue;
                }
                let span =
                    info_span!("tokenkeeper.cache.read", layer = index, name = %name, effect = %id);
                let result = isolated(async { layer.read().await }, span.clone())
                    .await
                    .unwrap_or_else(|()| Err(panicked("read")));
                span.in_scope(|| match &result {
                    Ok(Some(bytes)) => debug!(bytes = bytes.len(), "found a record"),
                    Ok(None) => debug!("no record"),
                    Err(error) => warn!(%error, "could not read"),
                });
                let _ = answers.send(Answer::CacheRead { id, result }).await;
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
                let result = isolated(async { layer.write(&record).await }, span.clone())
                    .await
                    .unwrap_or_else(|()| Err(panicked("write")));
                span.in_scope(|| match &result {
                    Ok(()) => debug!("stored the record"),
                    Err(error) => warn!(%error, "could not store the record"),
                });
                let _ = answers.send(Answer::CacheWritten { id, result }).await;
            }
            LayerOp::Acquire(id, ttl) => {
                if stopping {
                    continue;
                }
                let span = info_span!("tokenkeeper.cache.lease", layer = index, name = %name, effect = %id, ttl_ms = ttl.as_millis() as u64);
                let outcome = isolated(async { layer.try_acquire_lease(ttl).await }, span.clone())
                    .await
                    .unwrap_or_else(|()| LeaseOutcome::Failed(panicked("lease")));
                holds_lease = outcome == LeaseOutcome::Acquired;
                span.in_scope(|| debug!(outcome = ?outcome, "asked for the lease"));
                let _ = answers.send(Answer::Lease { id, outcome }).await;
            }
            LayerOp::Release => {
                release(&*layer, index, &name).await;
                holds_lease = false;
            }
        }
    }
    // A lease granted while the watcher was stopping is never known to the
    // refresher; give it back here.
    if holds_lease {
        release(&*layer, index, &name).await;
    }
}

async fn release(layer: &dyn CacheLayer, index: usize, name: &str) {
    let span = info_span!("tokenkeeper.cache.release", layer = index, name = %name);
    match isolated(async { layer.release_lease().await }, span.clone()).await {
        Ok(()) => span.in_scope(|| debug!("released the lease")),
        Err(()) => span
            .in_scope(|| warn!(error = %panicked("lease release"), "could not release the lease")),
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
