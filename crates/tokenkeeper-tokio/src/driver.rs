//! The background task: the core's driving loop, and nothing more.
//!
//! It drains the refresher's effects (starting each as a task) and events
//! (publishing tokens to the handles), then waits for the earliest of the
//! refresher's deadline (or the wake interval), a finished effect, and a
//! command from the handles, and feeds what happened back. Every decision
//! about time (staleness, jitter, backoff, leases) is the refresher's.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokenkeeper_core::oauth2::TokenRequest;
use tokenkeeper_core::{
    CacheError, CacheErrorKind, EffectId, EncodedRecord, ErrorClass, Event, FetchError,
    LeaseOutcome, Origin, RefreshToken, Refresher, Status, TokenGrant, TokenRecord,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{Instrument, Span, debug, error, info, info_span, warn};

use crate::cache::CacheLayer;
use crate::http::{HttpAnswer, HttpClient};
use crate::source::TokenSource;
use crate::watcher::{Command, Shared, now};

/// How long a stopping watcher waits for its cache layers to finish (lease
/// releases, a last write) before abandoning them.
const LAYER_GRACE: Duration = Duration::from_secs(5);

/// How the refresher's fetches are carried out.
pub(crate) enum FetchWith {
    /// Token requests built by the core, sent over HTTP.
    Http {
        client: Box<HttpClient>,
        limit: usize,
        grant: &'static str,
    },
    /// A custom source, bounded by a timeout.
    Custom {
        source: Arc<dyn TokenSource>,
        timeout: Duration,
    },
}

/// A finished effect, on its way back to the loop.
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
}

/// What one cache layer is asked to do, in order.
enum LayerOp {
    Read(EffectId),
    Write(EffectId, EncodedRecord),
    Acquire(EffectId, Duration),
    Release,
}

struct LayerWorker {
    ops: mpsc::UnboundedSender<LayerOp>,
    task: JoinHandle<()>,
}

/// Publishes what the refresher reports to the handles. Dropping it (when the
/// task ends, even by a panic) marks the watcher stopped.
pub(crate) struct Publisher {
    shared: Arc<Shared>,
    changes: watch::Sender<Option<Arc<TokenRecord>>>,
    first: Option<oneshot::Sender<Result<(), FetchError>>>,
}

impl Publisher {
    pub(crate) fn new(
        shared: Arc<Shared>,
        changes: watch::Sender<Option<Arc<TokenRecord>>>,
        first: oneshot::Sender<Result<(), FetchError>>,
    ) -> Self {
        Publisher {
            shared,
            changes,
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
                self.changes.send_replace(Some(token));
                if let Some(first) = self.first.take() {
                    let _ = first.send(Ok(()));
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
                        let _ = first.send(Err(error));
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
        // `changes` is dropped after this, which wakes `changed` and `shutdown`.
    }
}

/// Answers a custom fetch even when the source panics or the task is
/// cancelled, so the refresher never waits for an answer that cannot come.
struct FetchGuard {
    id: EffectId,
    answers: Option<mpsc::UnboundedSender<Answer>>,
}

impl FetchGuard {
    fn answer(mut self, result: Result<TokenGrant, FetchError>) {
        if let Some(answers) = self.answers.take() {
            let _ = answers.send(Answer::Grant {
                id: self.id,
                result,
            });
        }
    }
}

impl Drop for FetchGuard {
    fn drop(&mut self) {
        if let Some(answers) = self.answers.take() {
            let _ = answers.send(Answer::Grant {
                id: self.id,
                result: Err(FetchError::Source {
                    message: "the token source panicked or was cancelled".into(),
                    class: ErrorClass::Transient,
                }),
            });
        }
    }
}

pub(crate) struct Driver {
    refresher: Refresher,
    fetch: FetchWith,
    layers: Vec<Arc<dyn CacheLayer>>,
    layer_names: Vec<String>,
    workers: Vec<LayerWorker>,
    answers_tx: mpsc::UnboundedSender<Answer>,
    answers_rx: mpsc::UnboundedReceiver<Answer>,
    commands: mpsc::Receiver<Command>,
    fetches: JoinSet<()>,
    publisher: Publisher,
    wake_interval: Duration,
    stopping: Arc<AtomicBool>,
}

impl Driver {
    pub(crate) fn new(
        refresher: Refresher,
        fetch: FetchWith,
        layers: Vec<Arc<dyn CacheLayer>>,
        publisher: Publisher,
        commands: mpsc::Receiver<Command>,
        wake_interval: Duration,
    ) -> Self {
        let (answers_tx, answers_rx) = mpsc::unbounded_channel();
        let layer_names = refresher
            .config()
            .layers()
            .iter()
            .map(|l| l.name().to_owned())
            .collect();
        Driver {
            refresher,
            fetch,
            layers,
            layer_names,
            workers: Vec::new(),
            answers_tx,
            answers_rx,
            commands,
            fetches: JoinSet::new(),
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
        );
        self.run_loop().instrument(span).await;
    }

    async fn run_loop(mut self) {
        self.start_layers();
        info!(layers = self.workers.len(), "started");
        loop {
            self.drain();
            if self.refresher.is_finished() {
                break;
            }
            let sleep_for = match self.refresher.poll_timeout() {
                Some(deadline) => deadline.duration_since(now()).min(self.wake_interval),
                None => self.wake_interval,
            };
            tokio::select! {
                biased;
                command = self.commands.recv() => self.command(command),
                Some(answer) = self.answers_rx.recv() => self.feed(answer),
                () = tokio::time::sleep(sleep_for) => self.refresher.handle_timeout(now()),
            }
        }
        self.finish().await;
    }

    fn start_layers(&mut self) {
        for (index, layer) in self.layers.drain(..).enumerate() {
            let (ops, queue) = mpsc::unbounded_channel();
            let task = tokio::spawn(
                serve_layer(
                    index,
                    layer,
                    queue,
                    self.answers_tx.clone(),
                    Arc::clone(&self.stopping),
                )
                .instrument(Span::current()),
            );
            self.workers.push(LayerWorker { ops, task });
        }
    }

    /// Carries out every effect the refresher asks for and publishes every
    /// event, then refreshes the status snapshot.
    fn drain(&mut self) {
        loop {
            let mut idle = true;
            while let Some(effect) = self.refresher.poll_effect() {
                idle = false;
                self.dispatch(effect);
            }
            // The snapshot goes first, so that a handle woken by an event
            // (a first token, say) sees the status that goes with it.
            self.publisher.snapshot(self.refresher.status(now()));
            while let Some(event) = self.refresher.poll_event() {
                idle = false;
                self.publisher.event(event, &self.layer_names);
            }
            if idle {
                break;
            }
        }
        while self.fetches.try_join_next().is_some() {}
    }

    fn command(&mut self, command: Option<Command>) {
        match command {
            Some(Command::RefreshNow(reply)) => {
                let outcome = self.refresher.refresh_now(now());
                info!(?outcome, "early refresh asked for");
                let _ = reply.send(outcome);
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
        self.fetches.abort_all();
        self.refresher.shutdown(now());
    }

    async fn finish(mut self) {
        self.fetches.shutdown().await;
        for worker in std::mem::take(&mut self.workers) {
            let LayerWorker { ops, mut task } = worker;
            drop(ops);
            if tokio::time::timeout(LAYER_GRACE, &mut task).await.is_err() {
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
        };
        if let Err(e) = result {
            error!(error = %e, "driver bug: the refresher refused an answer");
        }
    }

    fn dispatch(&mut self, effect: tokenkeeper_core::Effect) {
        use tokenkeeper_core::Effect;
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
        if let Err(mpsc::error::SendError(op)) = worker.ops.send(op) {
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
        let FetchWith::Http {
            client,
            limit,
            grant,
        } = &self.fetch
        else {
            error!("driver bug: an HTTP request for a custom source");
            let error = FetchError::Transport {
                message: "this watcher has no HTTP client".into(),
            };
            if let Err(e) = self.refresher.handle_fetch_error(now(), id, error) {
                error!(error = %e, "driver bug: the refresher refused an answer");
            }
            return;
        };
        let (client, limit) = (HttpClient::clone(client), *limit);
        let request = request.into_http();
        // Scheme, host and path only: a query could carry anything.
        let uri = request.uri();
        let endpoint = format!(
            "{}://{}{}",
            uri.scheme_str().unwrap_or("?"),
            uri.authority().map_or("?", |a| a.as_str()),
            uri.path()
        );
        let span = info_span!(
            "tokenkeeper.fetch",
            effect = %id,
            grant = *grant,
            endpoint = %endpoint,
        );
        let answers = self.answers_tx.clone();
        self.fetches.spawn(
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
                let _ = answers.send(Answer::Http { id, result });
            }
            .instrument(span),
        );
    }

    fn fetch_custom(&mut self, id: EffectId, refresh_token: Option<RefreshToken>) {
        let guard = FetchGuard {
            id,
            answers: Some(self.answers_tx.clone()),
        };
        let FetchWith::Custom { source, timeout } = &self.fetch else {
            error!("driver bug: a custom fetch for an OAuth2 source");
            guard.answer(Err(FetchError::Source {
                message: "this watcher has no custom source".into(),
                class: ErrorClass::Permanent,
            }));
            return;
        };
        let (source, timeout) = (Arc::clone(source), *timeout);
        let span = info_span!(
            "tokenkeeper.fetch",
            effect = %id,
            source = "custom",
            refresh_token = ?refresh_token.as_ref().map(|t| t.fingerprint()),
        );
        self.fetches.spawn(
            async move {
                debug!("asking the token source");
                let started = Instant::now();
                let result =
                    match tokio::time::timeout(timeout, source.fetch(refresh_token.as_ref())).await
                    {
                        Ok(result) => result,
                        Err(_) => Err(FetchError::Timeout { after: timeout }),
                    };
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
                guard.answer(result);
            }
            .instrument(span),
        );
    }
}

/// Runs one layer's effects one at a time, in order. Each call runs in a task
/// of its own, so a layer that panics answers with an error instead of
/// leaving the refresher waiting.
async fn serve_layer(
    index: usize,
    layer: Arc<dyn CacheLayer>,
    mut ops: mpsc::UnboundedReceiver<LayerOp>,
    answers: mpsc::UnboundedSender<Answer>,
    stopping: Arc<AtomicBool>,
) {
    let name = layer.layer().name().to_owned();
    let mut holds_lease = false;
    while let Some(op) = ops.recv().await {
        // Once stopping, nothing new is read or leased; writes and releases finish.
        let stopping = stopping.load(Ordering::Acquire);
        match op {
            LayerOp::Read(id) => {
                if stopping {
                    continue;
                }
                let span =
                    info_span!("tokenkeeper.cache.read", layer = index, name = %name, effect = %id);
                let l = Arc::clone(&layer);
                let result = isolated(async move { l.read().await }, span.clone())
                    .await
                    .unwrap_or_else(|e| Err(panicked("read", &e)));
                span.in_scope(|| match &result {
                    Ok(Some(bytes)) => debug!(bytes = bytes.len(), "found a record"),
                    Ok(None) => debug!("no record"),
                    Err(error) => warn!(%error, "could not read"),
                });
                let _ = answers.send(Answer::CacheRead { id, result });
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
                let l = Arc::clone(&layer);
                let result = isolated(async move { l.write(&record).await }, span.clone())
                    .await
                    .unwrap_or_else(|e| Err(panicked("write", &e)));
                span.in_scope(|| match &result {
                    Ok(()) => debug!("stored the record"),
                    Err(error) => warn!(%error, "could not store the record"),
                });
                let _ = answers.send(Answer::CacheWritten { id, result });
            }
            LayerOp::Acquire(id, ttl) => {
                if stopping {
                    continue;
                }
                let span = info_span!("tokenkeeper.cache.lease", layer = index, name = %name, effect = %id, ttl_ms = ttl.as_millis() as u64);
                let l = Arc::clone(&layer);
                let outcome = isolated(async move { l.try_acquire_lease(ttl).await }, span.clone())
                    .await
                    .unwrap_or_else(|e| LeaseOutcome::Failed(panicked("lease", &e)));
                holds_lease = outcome == LeaseOutcome::Acquired;
                span.in_scope(|| debug!(outcome = ?outcome, "asked for the lease"));
                let _ = answers.send(Answer::Lease { id, outcome });
            }
            LayerOp::Release => {
                release(&layer, index, &name).await;
                holds_lease = false;
            }
        }
    }
    // A lease granted while the watcher was stopping is never known to the
    // refresher; give it back here.
    if holds_lease {
        release(&layer, index, &name).await;
    }
}

async fn release(layer: &Arc<dyn CacheLayer>, index: usize, name: &str) {
    let span = info_span!("tokenkeeper.cache.release", layer = index, name = %name);
    let l = Arc::clone(layer);
    match isolated(async move { l.release_lease().await }, span.clone()).await {
        Ok(()) => span.in_scope(|| debug!("released the lease")),
        Err(e) => span.in_scope(
            || warn!(error = %panicked("lease release", &e), "could not release the lease"),
        ),
    }
}

async fn isolated<T: Send + 'static>(
    work: impl Future<Output = T> + Send + 'static,
    span: Span,
) -> Result<T, tokio::task::JoinError> {
    tokio::spawn(work.instrument(span)).await
}

fn panicked(what: &str, error: &tokio::task::JoinError) -> CacheError {
    CacheError::new(
        CacheErrorKind::Other,
        format!("the cache layer's {what} did not complete: {error}"),
    )
}
