//! The refresher: a sans-IO state machine that keeps one token fresh.
//!
//! Feed it inputs (`handle_*`), drain its outputs ([`Refresher::poll_effect`],
//! [`Refresher::poll_event`]) and sleep until [`Refresher::poll_timeout`].
//! See the crate documentation for the canonical driving loop.
//!
//! One refresh *cycle*: take the lease of every layer that has one (in layer
//! order); re-read the layers in case another refresher just stored a fresh
//! token; fetch only when none did; store the new record in every layer; give
//! the leases back. A refresher that finds a lease taken waits a little,
//! re-reads, and tries again, without fetching.

mod config;
mod io;

pub use config::{Layer, LeaseSettings, RefresherConfig, Source};
pub use io::{
    CacheProblem, Effect, EffectId, Event, LeaseOutcome, MisuseError, Origin, RefreshNow, Status,
};

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use zeroize::Zeroize;

use crate::cache::{decode_record, encode_record};
use crate::error::{CacheError, FetchError};
use crate::oauth2::parse_token_response;
use crate::secret::RefreshToken;
use crate::time::{Timestamp, duration_millis};
use crate::token::{TokenGrant, TokenRecord, TokenState};

/// Why the layers are being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadPass {
    /// At start: serve whatever is usable.
    Startup,
    /// Under the leases, just before fetching.
    UnderLease,
    /// After waiting for another refresher's lease.
    AfterLeaseWait,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Reading { pass: ReadPass, layer: usize },
    Leasing { next: usize },
    WaitingForLease { until: Timestamp },
    Fetching,
    Writing,
    Idle,
    Finished,
}

#[derive(Debug, Clone, Copy)]
enum Pending {
    Read,
    Write { layer: usize },
    Lease { layer: usize },
    Fetch,
}

impl Pending {
    fn expects(self) -> &'static str {
        match self {
            Pending::Read => "a cache read answer",
            Pending::Write { .. } => "a cache write answer",
            Pending::Lease { .. } => "a lease answer",
            Pending::Fetch => "a fetch answer",
        }
    }
}

/// The sans-IO token refresher. See the [module documentation](self).
#[derive(Debug)]
pub struct Refresher {
    config: RefresherConfig,
    rng: fastrand::Rng,
    phase: Phase,
    effects: VecDeque<Effect>,
    events: VecDeque<Event>,
    pending: HashMap<EffectId, Pending>,
    next_id: u64,
    current: Option<Arc<TokenRecord>>,
    expiry_announced: bool,
    refresh_token: Option<RefreshToken>,
    /// When the record that gave `refresh_token` was issued (`None`: the
    /// initial one from the configuration).
    refresh_token_issued: Option<Timestamp>,
    /// Jittered instant at which the current token is refreshed.
    refresh_at: Option<Timestamp>,
    /// Planned retry after a failure.
    retry_at: Option<Timestamp>,
    /// Forced refresh: only a token newer than this one will do.
    forced_over: Option<Timestamp>,
    forced_pending: bool,
    last_forced: Option<Timestamp>,
    consecutive_failures: u32,
    last_error: Option<(FetchError, Timestamp)>,
    last_success_at: Option<Timestamp>,
    last_fetch_started: Option<Timestamp>,
    /// Expiry of the record each layer held in this read pass (`None`: miss).
    seen: Vec<Option<Timestamp>>,
    /// Leases held, with the instant each expires by itself.
    leases_held: Vec<(usize, Timestamp)>,
    /// After a failed fetch the leases are kept until they expire (a retry
    /// that comes first reuses them), so that a fleet backs off together
    /// instead of each member taking its turn at a failing authority.
    linger_until: Option<Timestamp>,
    lease_layers: Vec<usize>,
}

impl Refresher {
    /// A refresher that starts by reading its cache layers (or fetching, when it
    /// has none). `seed` drives jitter and backoff: give each process its own
    /// (drawn from the OS by the driver), or a fleet would move in lockstep.
    pub fn new(config: RefresherConfig, seed: u64, now: Timestamp) -> Self {
        let lease_layers = config
            .layers
            .iter()
            .enumerate()
            .filter(|(_, l)| l.lease().is_some())
            .map(|(i, _)| i)
            .collect();
        let layers = config.layers.len();
        let refresh_token = config.initial_refresh_token.clone();
        let mut r = Refresher {
            config,
            rng: fastrand::Rng::with_seed(seed),
            phase: Phase::Idle,
            effects: VecDeque::new(),
            events: VecDeque::new(),
            pending: HashMap::new(),
            next_id: 0,
            current: None,
            expiry_announced: false,
            refresh_token,
            refresh_token_issued: None,
            refresh_at: None,
            retry_at: None,
            forced_over: None,
            forced_pending: false,
            last_forced: None,
            consecutive_failures: 0,
            last_error: None,
            last_success_at: None,
            last_fetch_started: None,
            seen: vec![None; layers],
            leases_held: Vec::new(),
            linger_until: None,
            lease_layers,
        };
        if layers > 0 {
            r.start_reads(ReadPass::Startup);
        } else {
            r.start_fetch(now);
        }
        r
    }

    /// The configuration.
    pub fn config(&self) -> &RefresherConfig {
        &self.config
    }

    /// The current token, usable or not (check [`TokenRecord::state_at`]);
    /// `None` before the first one and after it expired unreplaced.
    pub fn token(&self) -> Option<&Arc<TokenRecord>> {
        self.current.as_ref().filter(|_| !self.expiry_announced)
    }

    /// The next effect to carry out.
    #[must_use]
    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// The next event to report.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When to call [`Refresher::handle_timeout`] at the latest, if no other
    /// input comes first. `None`: wait for an answer (or forever, once shut down).
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        let expiry = self
            .current
            .as_ref()
            .filter(|_| !self.expiry_announced)
            .map(|t| t.expiry);
        let own = match self.phase {
            Phase::Idle => match (self.due(), self.linger_until) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
            Phase::WaitingForLease { until } => Some(until),
            Phase::Finished => return None,
            _ => None,
        };
        match (own, expiry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether the refresher has shut down.
    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Finished
    }

    /// A snapshot of the refresher's state at `now`.
    pub fn status(&self, now: Timestamp) -> Status {
        let token = self.token();
        Status {
            token_state: token.map(|t| t.state_at(now)),
            issued: token.map(|t| t.issued),
            stale: token.map(|t| t.stale),
            expiry: token.map(|t| t.expiry),
            last_error: self.last_error.as_ref().map(|(e, _)| e.clone()),
            last_error_at: self.last_error.as_ref().map(|(_, at)| *at),
            consecutive_failures: self.consecutive_failures,
            last_success_at: self.last_success_at,
            next_attempt: match self.phase {
                Phase::Idle => self.due(),
                Phase::WaitingForLease { until } => Some(until),
                _ => None,
            },
            fetch_in_flight: self.phase == Phase::Fetching,
            shut_down: self.phase == Phase::Finished,
        }
    }

    /// Time has passed. Calling it early, late or with a clock that went
    /// backwards is harmless.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        self.tick(now);
    }

    /// Asks for a token newer than the current one (after a resource server
    /// rejected it, say). Rate-limited by the configured minimum interval.
    pub fn refresh_now(&mut self, now: Timestamp) -> RefreshNow {
        if self.phase == Phase::Finished {
            return RefreshNow::ShutDown;
        }
        if let Some(last) = self.last_forced {
            let until = last.saturating_add(self.config.refresh_now_min_interval);
            if now < until {
                return RefreshNow::RateLimited { until };
            }
        }
        self.last_forced = Some(now);
        self.forced_over = Some(self.current.as_ref().map_or(Timestamp::EPOCH, |t| t.issued));
        match self.phase {
            Phase::Idle => {
                self.retry_at = None;
                self.begin_cycle(now);
                self.tick(now);
                RefreshNow::Started
            }
            Phase::Writing => {
                self.forced_pending = true;
                RefreshNow::Joined
            }
            Phase::WaitingForLease { .. } => {
                self.phase = Phase::Idle;
                self.begin_cycle(now);
                RefreshNow::Joined
            }
            _ => RefreshNow::Joined,
        }
    }

    /// Stops the refresher: leases it holds are released (drain
    /// [`Refresher::poll_effect`] once more), answers still outstanding are
    /// ignored, and no further effect is asked for.
    pub fn shutdown(&mut self, _now: Timestamp) {
        if self.phase == Phase::Finished {
            return;
        }
        self.release_leases();
        self.phase = Phase::Finished;
        self.events.push_back(Event::Stopped);
    }

    /// Another process changed `layer` (a store notification, say): a refresher
    /// waiting for a lease re-reads at once instead of at its next retry.
    pub fn handle_cache_changed(&mut self, now: Timestamp, layer: usize) {
        if matches!(self.phase, Phase::WaitingForLease { .. }) && layer < self.config.layers.len() {
            self.phase = Phase::Idle;
            self.start_reads(ReadPass::AfterLeaseWait);
        }
        self.tick(now);
    }

    /// Answers an [`Effect::ReadCache`]: the stored bytes, `None` when the layer
    /// holds nothing, or why it could not be read.
    pub fn handle_cache_read(
        &mut self,
        now: Timestamp,
        id: EffectId,
        result: Result<Option<Vec<u8>>, CacheError>,
    ) -> Result<(), MisuseError> {
        self.take_pending(id, |p| matches!(p, Pending::Read))?;
        let Phase::Reading { pass, layer } = self.phase else {
            return Ok(());
        };
        let record = match result {
            Ok(Some(mut bytes)) => {
                let decoded = decode_record(&self.config.key, &bytes);
                bytes.zeroize();
                match decoded {
                    Ok(record) => Some(record),
                    Err(e) => {
                        self.cache_problem(layer, CacheProblem::Unreadable(e));
                        None
                    }
                }
            }
            Ok(None) => None,
            Err(e) => {
                self.cache_problem(layer, CacheProblem::Read(e));
                None
            }
        };
        self.seen[layer] = record.as_ref().map(|r| r.expiry);
        if let Some(r) = &record {
            // A cached refresh token is the latest rotation persisted, even
            // when its access token has expired: it beats an older one.
            self.take_refresh_token(r);
        }
        let mut done = layer + 1 >= self.config.layers.len();
        if let Some(record) = record {
            let acceptable = match pass {
                ReadPass::Startup => record.is_usable_at(now),
                _ => {
                    record.state_at(now) == TokenState::Fresh
                        && self.forced_over.is_none_or(|over| record.issued > over)
                }
            };
            if acceptable && self.is_better(&record, now) {
                self.adopt(now, record, io::Origin::Cache { layer });
            }
            done = done || self.satisfied(now);
        }
        if done {
            self.finish_reads(now, pass, layer);
        } else {
            self.phase = Phase::Reading {
                pass,
                layer: layer + 1,
            };
            let id = self.new_id(Pending::Read);
            self.effects.push_back(Effect::ReadCache {
                id,
                layer: layer + 1,
            });
        }
        self.tick(now);
        Ok(())
    }

    /// Answers an [`Effect::WriteCache`].
    pub fn handle_cache_written(
        &mut self,
        now: Timestamp,
        id: EffectId,
        result: Result<(), CacheError>,
    ) -> Result<(), MisuseError> {
        let Pending::Write { layer } =
            self.take_pending(id, |p| matches!(p, Pending::Write { .. }))?
        else {
            return Ok(());
        };
        if self.phase == Phase::Finished {
            return Ok(());
        }
        if let Err(e) = result {
            self.cache_problem(layer, CacheProblem::Write(e));
        }
        if self.phase == Phase::Writing
            && !self
                .pending
                .values()
                .any(|p| matches!(p, Pending::Write { .. }))
        {
            self.release_leases();
            self.phase = Phase::Idle;
            if std::mem::take(&mut self.forced_pending) {
                self.begin_cycle(now);
            }
        }
        self.tick(now);
        Ok(())
    }

    /// Answers an [`Effect::AcquireLease`].
    pub fn handle_lease(
        &mut self,
        now: Timestamp,
        id: EffectId,
        outcome: LeaseOutcome,
    ) -> Result<(), MisuseError> {
        let Pending::Lease { layer } =
            self.take_pending(id, |p| matches!(p, Pending::Lease { .. }))?
        else {
            return Ok(());
        };
        let Phase::Leasing { next } = self.phase else {
            // A lease granted after we stopped wanting it goes straight back.
            if outcome == LeaseOutcome::Acquired {
                self.effects.push_back(Effect::ReleaseLease { layer });
            }
            return Ok(());
        };
        match outcome {
            LeaseOutcome::Acquired => {
                let ttl = self.config.layers[layer]
                    .lease()
                    .map_or(Duration::from_secs(30), |l| l.ttl);
                self.leases_held.push((layer, now.saturating_add(ttl)));
                self.next_lease(now, next + 1);
            }
            LeaseOutcome::Failed(e) => {
                self.cache_problem(layer, CacheProblem::Lease(e));
                self.next_lease(now, next + 1);
            }
            LeaseOutcome::HeldByOther => {
                self.release_leases();
                let retry = self.config.layers[layer]
                    .lease()
                    .map_or(Duration::from_secs(1), |l| l.retry);
                let ms = duration_millis(retry);
                let wait = Duration::from_millis(self.rng.u64(ms / 2..=ms));
                // Waiting on a lease must not become a hot loop on the store either.
                let until = now.saturating_add(wait.max(self.config.backoff.floor()));
                self.phase = Phase::WaitingForLease { until };
                self.events.push_back(Event::LeaseBusy {
                    layer,
                    retry_at: until,
                });
            }
        }
        self.tick(now);
        Ok(())
    }

    /// Answers an [`Effect::SendRequest`] with the endpoint's HTTP answer.
    /// The body should already be capped by the driver; it is checked again.
    pub fn handle_response(
        &mut self,
        now: Timestamp,
        id: EffectId,
        status: u16,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<(), MisuseError> {
        let limit = match &self.config.source {
            Source::OAuth2(c) => c.body_limit(),
            Source::Custom => crate::oauth2::DEFAULT_MAX_BODY_BYTES,
        };
        let result = parse_token_response(status, headers, body, now, limit);
        self.handle_grant(now, id, result)
    }

    /// Answers an [`Effect::SendRequest`] that got no HTTP answer (connection
    /// failure, timeout, oversized body).
    pub fn handle_fetch_error(
        &mut self,
        now: Timestamp,
        id: EffectId,
        error: FetchError,
    ) -> Result<(), MisuseError> {
        self.handle_grant(now, id, Err(error))
    }

    /// Answers an [`Effect::Fetch`] (or an [`Effect::SendRequest`], for drivers
    /// that parse answers themselves) with what the source granted.
    pub fn handle_grant(
        &mut self,
        now: Timestamp,
        id: EffectId,
        result: Result<TokenGrant, FetchError>,
    ) -> Result<(), MisuseError> {
        self.take_pending(id, |p| matches!(p, Pending::Fetch))?;
        if self.phase != Phase::Fetching {
            return Ok(());
        }
        self.on_fetched(now, result);
        self.tick(now);
        Ok(())
    }

    // ---- internals ----

    fn new_id(&mut self, pending: Pending) -> EffectId {
        let id = EffectId(self.next_id);
        self.next_id += 1;
        self.pending.insert(id, pending);
        id
    }

    /// Removes a pending effect, checking that the answer fits it.
    fn take_pending(
        &mut self,
        id: EffectId,
        fits: impl Fn(&Pending) -> bool,
    ) -> Result<Pending, MisuseError> {
        match self.pending.get(&id).copied() {
            None => Err(MisuseError::UnknownEffect(id)),
            Some(p) if !fits(&p) => Err(MisuseError::WrongAnswer {
                id,
                expected: p.expects(),
            }),
            Some(p) => {
                self.pending.remove(&id);
                Ok(p)
            }
        }
    }

    /// The cycle has what it came for: a token not yet due for refresh, and
    /// newer than the one a forced refresh wanted replaced.
    fn satisfied(&self, now: Timestamp) -> bool {
        let Some(cur) = &self.current else {
            return false;
        };
        cur.state_at(now) == TokenState::Fresh
            && self.refresh_at.is_some_and(|at| now < at)
            && self.forced_over.is_none_or(|over| cur.issued > over)
    }

    fn cache_problem(&mut self, layer: usize, problem: CacheProblem) {
        self.events
            .push_back(Event::CacheProblem { layer, problem });
    }

    fn due(&self) -> Option<Timestamp> {
        if self.forced_pending {
            return Some(Timestamp::EPOCH);
        }
        // No token and no failure: only possible before the first cycle.
        self.retry_at.or(self.refresh_at).or(Some(Timestamp::EPOCH))
    }

    fn is_better(&self, candidate: &TokenRecord, now: Timestamp) -> bool {
        match &self.current {
            None => true,
            Some(cur) => !cur.is_usable_at(now) || candidate.expiry > cur.expiry,
        }
    }

    fn take_refresh_token(&mut self, record: &TokenRecord) {
        if let Some(rt) = &record.refresh_token {
            if self.refresh_token_issued.is_none_or(|t| record.issued >= t) {
                self.refresh_token = Some(rt.clone());
                self.refresh_token_issued = Some(record.issued);
            }
        }
    }

    fn adopt(&mut self, now: Timestamp, record: TokenRecord, origin: io::Origin) {
        self.take_refresh_token(&record);
        let mut refresh_at = self.config.jitter.refresh_at_for(&record);
        // No hot loop even with absurdly short tokens.
        if let Some(started) = self.last_fetch_started {
            refresh_at = refresh_at.max(started.saturating_add(self.config.backoff.floor()));
        }
        let _ = now;
        self.refresh_at = Some(refresh_at);
        let token = Arc::new(record);
        self.current = Some(token.clone());
        self.expiry_announced = false;
        self.events.push_back(Event::TokenChanged { token, origin });
    }

    fn start_reads(&mut self, pass: ReadPass) {
        self.seen.iter_mut().for_each(|s| *s = None);
        self.phase = Phase::Reading { pass, layer: 0 };
        let id = self.new_id(Pending::Read);
        self.effects.push_back(Effect::ReadCache { id, layer: 0 });
    }

    fn finish_reads(&mut self, now: Timestamp, pass: ReadPass, last_read: usize) {
        if self.satisfied(now) {
            self.forced_over = None;
            self.retry_at = None;
            self.consecutive_failures = 0;
            let record = self.current.clone();
            if let Some(record) = record {
                self.write_back(&record, last_read);
            } else {
                self.end_cycle();
            }
            return;
        }
        match pass {
            ReadPass::UnderLease => self.start_fetch(now),
            ReadPass::Startup | ReadPass::AfterLeaseWait => {
                if self.lease_layers.is_empty() && pass == ReadPass::Startup {
                    self.start_fetch(now);
                } else {
                    self.next_lease(now, 0);
                }
            }
        }
    }

    /// Stores `record` in the layers (up to `last_read`) that lack it.
    fn write_back(&mut self, record: &Arc<TokenRecord>, last_read: usize) {
        let layers: Vec<usize> = (0..=last_read.min(self.config.layers.len().saturating_sub(1)))
            .filter(|&l| self.seen[l].is_none_or(|e| e < record.expiry))
            .collect();
        self.write_layers(record, layers);
    }

    fn write_layers(&mut self, record: &Arc<TokenRecord>, layers: Vec<usize>) {
        if layers.is_empty() {
            self.end_cycle();
            return;
        }
        let encoded = encode_record(&self.config.key, record);
        for layer in layers {
            let id = self.new_id(Pending::Write { layer });
            self.effects.push_back(Effect::WriteCache {
                id,
                layer,
                record: encoded.clone(),
            });
        }
        self.phase = Phase::Writing;
    }

    fn end_cycle(&mut self) {
        self.release_leases();
        self.phase = Phase::Idle;
    }

    fn release_leases(&mut self) {
        self.linger_until = None;
        for (layer, _) in self.leases_held.drain(..) {
            self.effects.push_back(Effect::ReleaseLease { layer });
        }
    }

    fn begin_cycle(&mut self, now: Timestamp) {
        if self.config.layers.is_empty() {
            self.start_fetch(now);
        } else if self.lease_layers.is_empty() {
            self.start_reads(ReadPass::UnderLease);
        } else {
            self.next_lease(now, 0);
        }
    }

    /// Asks for the `next`-th lease, or reads the layers once all are held.
    /// Leases still held from a failed attempt are kept, not asked for again.
    fn next_lease(&mut self, now: Timestamp, mut next: usize) {
        self.linger_until = None;
        while let Some(&layer) = self.lease_layers.get(next) {
            if !self.leases_held.iter().any(|&(l, _)| l == layer) {
                break;
            }
            next += 1;
        }
        let _ = now;
        if let Some(&layer) = self.lease_layers.get(next) {
            let ttl = self.config.layers[layer]
                .lease()
                .map_or(Duration::from_secs(30), |l| l.ttl);
            self.phase = Phase::Leasing { next };
            let id = self.new_id(Pending::Lease { layer });
            self.effects
                .push_back(Effect::AcquireLease { id, layer, ttl });
        } else {
            self.start_reads(ReadPass::UnderLease);
        }
    }

    fn start_fetch(&mut self, now: Timestamp) {
        self.last_fetch_started = Some(now);
        let effect = match &self.config.source {
            Source::OAuth2(client) => match client.build_request(self.refresh_token.as_ref()) {
                Ok(request) => {
                    self.phase = Phase::Fetching;
                    let id = self.new_id(Pending::Fetch);
                    Effect::SendRequest { id, request }
                }
                Err(e) => {
                    self.phase = Phase::Fetching;
                    self.on_fetched(now, Err(e));
                    return;
                }
            },
            Source::Custom => {
                self.phase = Phase::Fetching;
                let id = self.new_id(Pending::Fetch);
                Effect::Fetch {
                    id,
                    refresh_token: self.refresh_token.clone(),
                }
            }
        };
        self.effects.push_back(effect);
    }

    fn on_fetched(&mut self, now: Timestamp, result: Result<TokenGrant, FetchError>) {
        match result {
            Ok(grant) => {
                let record = self
                    .config
                    .policy
                    .record(grant, now, self.refresh_token.clone());
                self.consecutive_failures = 0;
                self.retry_at = None;
                self.forced_over = None;
                self.last_success_at = Some(now);
                self.adopt(now, record, io::Origin::Authority);
                let all: Vec<usize> = (0..self.config.layers.len()).collect();
                if let Some(record) = self.current.clone() {
                    self.write_layers(&record, all);
                }
            }
            Err(error) => {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                let class = error.class();
                let retry_at = self.config.backoff.retry_at(
                    now,
                    self.consecutive_failures,
                    class,
                    error.retry_after(),
                    &mut self.rng,
                );
                self.retry_at = Some(retry_at);
                self.last_error = Some((error.clone(), now));
                self.events.push_back(Event::FetchFailed {
                    error,
                    class,
                    consecutive_failures: self.consecutive_failures,
                    retry_at,
                });
                self.phase = Phase::Idle;
                let layers = &self.config.layers;
                let (hold, release): (Vec<_>, Vec<_>) = self
                    .leases_held
                    .drain(..)
                    .partition(|&(l, _)| layers[l].lease().is_some_and(|s| s.hold_through_backoff));
                self.leases_held = release;
                self.release_leases();
                self.leases_held = hold;
                // Kept until they expire; a retry that comes first reuses them.
                self.linger_until = self.leases_held.iter().map(|&(_, expires)| expires).min();
            }
        }
    }

    /// Everything time-driven: expiry, due refreshes, the end of a lease wait.
    fn tick(&mut self, now: Timestamp) {
        if self.phase == Phase::Finished {
            return;
        }
        if let Some(t) = &self.current {
            if !self.expiry_announced && now >= t.expiry {
                self.expiry_announced = true;
                self.events
                    .push_back(Event::TokenExpired { expiry: t.expiry });
            }
        }
        if self.linger_until.is_some_and(|until| now >= until) {
            self.release_leases();
        }
        match self.phase {
            Phase::Idle if self.due().is_some_and(|due| now >= due) => {
                self.forced_pending = false;
                self.begin_cycle(now);
            }
            Phase::WaitingForLease { until } if now >= until => {
                self.start_reads(ReadPass::AfterLeaseWait);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;
