//! What both drivers (the watcher's thread and the one-shot `get_token`) do
//! with the refresher's effects: cache effects are carried out at once on the
//! calling thread, in the order asked (so effects on one layer stay in order);
//! fetches are handed to the caller, who runs them inline or on a worker
//! thread and feeds the answer back. No staleness, jitter or backoff
//! arithmetic lives here: the refresher decides all of it.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokenkeeper_core::oauth2::TokenRequest;
use tokenkeeper_core::{
    CacheError, CacheErrorKind, Effect, EffectId, Event, FetchError, LeaseOutcome, MisuseError,
    Origin, RefreshToken, Refresher, Timestamp, TokenGrant,
};

use crate::cache::CacheLayer;
use crate::http::{HttpAnswer, HttpClient};
use crate::source::{Source, SourceKind};

/// The wall clock, as the core reads it.
pub(crate) fn now() -> Timestamp {
    Timestamp::from_system_time(SystemTime::now())
}

/// `from + wait`, or `None` (no deadline) when that is beyond what an
/// `Instant` can hold: an absurdly long wait is as good as forever.
pub(crate) fn deadline(from: Instant, wait: Duration) -> Option<Instant> {
    from.checked_add(wait)
}

/// Time left until `deadline` (`None`: forever, capped at a day).
pub(crate) fn left(deadline: Option<Instant>) -> Duration {
    match deadline {
        Some(at) => at.saturating_duration_since(Instant::now()),
        None => Duration::from_secs(86_400),
    }
}

/// A fetch the refresher asked for.
pub(crate) struct FetchJob {
    pub(crate) id: EffectId,
    kind: JobKind,
    /// Whether the request spends a refresh token.
    pub(crate) spends_refresh_token: bool,
}

enum JobKind {
    Http(Box<TokenRequest>),
    Custom(Option<RefreshToken>),
}

/// The answer to a fetch.
pub(crate) enum Answer {
    Http(EffectId, Result<HttpAnswer, FetchError>),
    Grant(EffectId, Result<TokenGrant, FetchError>),
}

/// Carries out fetches: HTTP for an OAuth2 source, the user's code otherwise.
#[derive(Clone)]
pub(crate) struct Fetcher {
    source: Source,
    http: HttpClient,
}

impl Fetcher {
    pub(crate) fn new(source: Source, http: HttpClient) -> Self {
        Fetcher { source, http }
    }

    pub(crate) fn run(&self, job: FetchJob) -> Answer {
        match (job.kind, &self.source.0) {
            (JobKind::Http(request), SourceKind::OAuth2(client)) => {
                let http = (*request).into_http();
                tracing::debug!(
                    effect = %job.id,
                    url = %http.uri(),
                    grant = client.grant().as_str(),
                    "requesting a token"
                );
                let result = self.http.send(http, client.body_limit());
                match &result {
                    Ok(answer) => tracing::debug!(
                        effect = %job.id,
                        status = answer.status,
                        bytes = answer.body.len(),
                        "the token endpoint answered"
                    ),
                    Err(error) => tracing::debug!(
                        effect = %job.id,
                        %error,
                        "no answer from the token endpoint"
                    ),
                }
                Answer::Http(job.id, result)
            }
            (JobKind::Custom(refresh_token), SourceKind::Custom { source, .. }) => {
                tracing::debug!(effect = %job.id, "asking the custom token source");
                Answer::Grant(job.id, source.fetch(refresh_token.as_ref()))
            }
            // The refresher asks for what its source calls for; a mismatch
            // would be a bug here, answered as a failed fetch.
            (_, _) => Answer::Grant(
                job.id,
                Err(FetchError::Source {
                    message: "the refresher asked for a fetch its source cannot do".to_owned(),
                    class: tokenkeeper_core::ErrorClass::Transient,
                }),
            ),
        }
    }
}

/// A refresher with its cache layers.
pub(crate) struct Engine {
    pub(crate) refresher: Refresher,
    layers: Vec<Arc<dyn CacheLayer>>,
    names: Vec<String>,
    source: Source,
}

fn report(result: Result<(), MisuseError>) {
    if let Err(error) = result {
        // A driver bug, not something the outside world can cause.
        tracing::error!(%error, "tokenkeeper driver answered an effect wrongly");
    }
}

impl Engine {
    pub(crate) fn new(
        refresher: Refresher,
        layers: Vec<Arc<dyn CacheLayer>>,
        source: Source,
    ) -> Self {
        let names = refresher
            .config()
            .layers()
            .iter()
            .map(|l| l.name().to_owned())
            .collect();
        Engine {
            refresher,
            layers,
            names,
            source,
        }
    }

    /// Subscribes to every layer's change notifications; `notify` is called
    /// with the layer's index. The guards end them when dropped.
    pub(crate) fn subscribe(
        &self,
        notify: impl Fn(usize) + Clone + Send + Sync + 'static,
    ) -> Vec<Box<dyn Send>> {
        self.layers
            .iter()
            .enumerate()
            .filter_map(|(index, layer)| {
                let notify = notify.clone();
                layer.subscribe(Box::new(move || notify(index)))
            })
            .collect()
    }

    /// The name of layer `index`, for messages.
    pub(crate) fn layer_name(&self, index: usize) -> &str {
        self.names.get(index).map_or("?", String::as_str)
    }

    /// Carries out the refresher's effects until it asks for none: cache
    /// effects here and now, fetches through `start_fetch`.
    pub(crate) fn drain_effects(&mut self, start_fetch: &mut dyn FnMut(FetchJob)) {
        while let Some(effect) = self.refresher.poll_effect() {
            self.carry_out(effect, start_fetch);
        }
    }

    fn carry_out(&mut self, effect: Effect, start_fetch: &mut dyn FnMut(FetchJob)) {
        let missing = || CacheError::new(CacheErrorKind::Other, "no such cache layer");
        match effect {
            Effect::ReadCache { id, layer } => {
                let result = match self.layers.get(layer) {
                    Some(l) => l.read(),
                    None => Err(missing()),
                };
                match &result {
                    Ok(found) => tracing::debug!(
                        layer = self.layer_name(layer),
                        found = found.is_some(),
                        "read the cache"
                    ),
                    Err(error) => tracing::debug!(
                        layer = self.layer_name(layer),
                        %error,
                        "could not read the cache"
                    ),
                }
                report(self.refresher.handle_cache_read(now(), id, result));
            }
            Effect::WriteCache { id, layer, record } => {
                let result = match self.layers.get(layer) {
                    Some(l) => l.write(&record),
                    None => Err(missing()),
                };
                drop(record);
                tracing::debug!(
                    layer = self.layer_name(layer),
                    ok = result.is_ok(),
                    "wrote the cache"
                );
                report(self.refresher.handle_cache_written(now(), id, result));
            }
            Effect::AcquireLease { id, layer, ttl } => {
                let outcome = match self.layers.get(layer) {
                    Some(l) => l.try_acquire_lease(ttl),
                    None => LeaseOutcome::Failed(missing()),
                };
                tracing::debug!(
                    layer = self.layer_name(layer),
                    outcome = ?outcome,
                    "asked for the lease"
                );
                report(self.refresher.handle_lease(now(), id, outcome));
            }
            Effect::ReleaseLease { layer } => {
                if let Some(l) = self.layers.get(layer) {
                    l.release_lease();
                }
                tracing::debug!(layer = self.layer_name(layer), "released the lease");
            }
            Effect::SendRequest { id, request } => {
                let spends_refresh_token = self.source.spends_refresh_token(None);
                start_fetch(FetchJob {
                    id,
                    kind: JobKind::Http(Box::new(request)),
                    spends_refresh_token,
                });
            }
            Effect::Fetch { id, refresh_token } => {
                let spends_refresh_token = self.source.spends_refresh_token(refresh_token.as_ref());
                start_fetch(FetchJob {
                    id,
                    kind: JobKind::Custom(refresh_token),
                    spends_refresh_token,
                });
            }
            other => {
                tracing::error!(effect = ?other, "an effect this driver does not know");
            }
        }
    }

    /// Feeds a fetch's answer to the refresher.
    pub(crate) fn feed(&mut self, answer: Answer) {
        let now = now();
        let result = match answer {
            Answer::Http(id, Ok(answer)) => self.refresher.handle_response(
                now,
                id,
                answer.status,
                &answer.headers,
                &answer.body,
            ),
            Answer::Http(id, Err(error)) => self.refresher.handle_fetch_error(now, id, error),
            Answer::Grant(id, result) => self.refresher.handle_grant(now, id, result),
        };
        report(result);
    }
}

/// Writes a `tracing` event for a refresher event. Never a secret: tokens
/// show as fingerprints.
pub(crate) fn trace_event(engine: &Engine, event: &Event) {
    match event {
        Event::TokenChanged { token, origin } => {
            let from = match origin {
                Origin::Cache { layer } => engine.layer_name(*layer).to_owned(),
                Origin::Authority => "authority".to_owned(),
                _ => "elsewhere".to_owned(),
            };
            tracing::info!(
                from = %from,
                token = %token.access_token.fingerprint(),
                stale = %token.stale,
                expiry = %token.expiry,
                "token changed"
            );
        }
        Event::TokenExpired { expiry } => {
            tracing::warn!(%expiry, "the token expired without a replacement");
        }
        Event::FetchFailed {
            error,
            class,
            consecutive_failures,
            retry_at,
        } => {
            tracing::warn!(
                %error,
                class = ?class,
                consecutive_failures,
                %retry_at,
                "fetching a token failed"
            );
        }
        Event::CacheProblem { layer, problem } => {
            tracing::warn!(layer = engine.layer_name(*layer), problem = ?problem, "cache problem");
        }
        Event::LeaseBusy { layer, retry_at } => {
            tracing::debug!(
                layer = engine.layer_name(*layer),
                %retry_at,
                "another process holds the lease; waiting for its token"
            );
        }
        Event::Stopped => tracing::debug!("refresher stopped"),
        other => tracing::debug!(event = ?other, "refresher event"),
    }
}
