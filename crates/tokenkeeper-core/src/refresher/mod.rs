//! The refresher: a sans-IO state machine that keeps one token fresh.
//!
//! Feed it inputs ([`Refresher::handle`] with an [`Input`]), drain its outputs
//! ([`Refresher::poll_effect`], [`Refresher::poll_event`]) and wait as
//! [`Refresher::poll_wait`] says. See the crate documentation for the
//! canonical driving loop.
//!
//! One refresh *cycle*: take the lease of every layer that has one (in layer
//! order); re-read the layers in case another refresher just stored a fresh
//! token; fetch only when none did; store the new record in every layer; give
//! the leases back. A refresher that finds a lease taken waits a little,
//! re-reads, and tries again, without fetching.
//!
//! # States
//!
//! ```text
//!              new
//!               | (no layers: straight to Fetching)
//!               v
//!      Reading(startup) -- usable: served at once; fresh ---------------+
//!               | stale or nothing                                      |
//!               | (no layer with a lease: straight to Fetching)         |
//!               v                                                       |
//!   +----> Leasing -- held by other --> WaitingForLease                 |
//!   |           | every lease had          | retry time / CacheChanged  |
//!   |           | (or failed)              v                            |
//!   |           |                 Reading(after lease wait) -- fresh ---+
//!   |           v                          | still stale: Leasing       |
//!   |   Reading(under lease) -- fresh -------------------------------->-+
//!   |           | still stale                                           v
//!   |           v                                          Writing (the layers
//!   |       Fetching -- failure / timeout: backoff --+      that lack it)
//!   |           | grant                              |              |
//!   |           v                                    |              |
//!   |       Writing (every layer)                    |              |
//!   |           | all answered or timed out          |              |
//!   |           v                                    v              v
//!   +-------- Idle <---------------------------------+--------------+
//!      due: refresh time, retry time, refresh_now (without leases:
//!      Reading(under lease); without layers: Fetching)
//!
//!   shutdown -- a refresh token at stake? -- no --------------> Finished
//!                      | yes: a fetch spending one is out, or the
//!                      v      rotated one it brought is being written
//!                  Draining: that fetch, then its writes, go on;
//!                  nothing new starts; once done, or at the end of
//!                  the grace ---------------------------------> Finished
//!
//!   Finished: leases released, Event::Stopped, Wait::Finished.
//! ```
//!
//! Every outstanding effect has a deadline; an effect unanswered by then is
//! taken as a transient failure (a read as a miss, a lease as not had, a
//! write as not stored, a fetch as [`FetchError::Timeout`] with backoff), so
//! the refresher always moves on.

mod config;
mod io;

pub use config::{Layer, LeaseSettings, RefresherConfig, Source};
pub use io::{
    CacheProblem, Effect, EffectId, Event, Input, LeaseOutcome, MisuseError, Origin, RefreshNow,
    Status, Wait,
};

use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use zeroize::Zeroize;

use crate::cache::{decode_metadata, decode_record, encode_record_with};
use crate::clock::Now;
use crate::error::{CacheError, CacheErrorKind, ErrorClass, FetchError};
use crate::lazy_vec::LazyVec;
use crate::oauth2::OAuth2Client;
use crate::oauth2::discovery::{self, DiscoveryError, Metadata};
use crate::oauth2::dpop::{self, DpopClaims};
use crate::oauth2::{GrantType, parse_token_response};
use crate::secret::{AccessToken, RefreshToken};
use crate::time::{Timestamp, duration_millis};
use crate::token::{TokenGrant, TokenRecord, TokenState};

/// How many timed-out effects are remembered, so that their late answers are
/// still checked and a lease granted late goes back.
const TIMED_OUT_MEMORY: usize = 16;

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Read,
    Write {
        layer: usize,
    },
    Lease {
        layer: usize,
    },
    Fetch {
        spends_refresh_token: bool,
    },
    /// The issuer's metadata, from its `location`-th well-known URL.
    Discover {
        location: u8,
    },
}

impl Pending {
    fn expects(self) -> &'static str {
        match self {
            Pending::Read => "a cache read answer",
            Pending::Write { .. } => "a cache write answer",
            Pending::Lease { .. } => "a lease answer",
            Pending::Fetch { .. } | Pending::Discover { .. } => "a fetch answer",
        }
    }

    /// How long the effect may go unanswered.
    fn timeout(self, config: &RefresherConfig) -> Duration {
        match self {
            Pending::Read | Pending::Write { .. } | Pending::Lease { .. } => {
                config.tuning.cache_timeout
            }
            Pending::Fetch { .. } | Pending::Discover { .. } => config.tuning.fetch_timeout,
        }
    }
}

/// An effect awaiting its answer.
#[derive(Debug, Clone, Copy)]
struct Outstanding {
    kind: Pending,
    deadline: Timestamp,
}

/// The effects awaiting answers: a handful at most, so a vector (no table
/// kept allocated between refreshes, in each of a pool's refreshers).
#[derive(Debug, Default)]
struct Outstandings(LazyVec<(EffectId, Outstanding)>);

impl Outstandings {
    fn get(&self, id: &EffectId) -> Option<&Outstanding> {
        self.0.iter().find(|(e, _)| e == id).map(|(_, o)| o)
    }

    fn insert(&mut self, id: EffectId, outstanding: Outstanding) {
        match self.0.iter_mut().find(|(e, _)| *e == id) {
            Some((_, o)) => *o = outstanding,
            None => self.0.push((id, outstanding)),
        }
    }

    fn remove(&mut self, id: &EffectId) -> Option<Outstanding> {
        let at = self.0.iter().position(|(e, _)| e == id)?;
        let (_, removed) = self.0.swap_remove(at);
        if self.0.is_empty() {
            self.0 = LazyVec::new();
        }
        Some(removed)
    }

    fn values(&self) -> impl Iterator<Item = &Outstanding> {
        self.0.iter().map(|(_, o)| o)
    }

    fn values_mut(&mut self) -> impl Iterator<Item = &mut Outstanding> {
        self.0.iter_mut().map(|(_, o)| o)
    }

    fn iter(&self) -> impl Iterator<Item = (&EffectId, &Outstanding)> {
        self.0.iter().map(|(e, o)| (e, o))
    }
}

/// Whose answer an input is.
enum Claim {
    /// An effect that awaits it: the answer counts.
    Current(Pending),
    /// An effect that timed out (when still remembered) or was answered
    /// already: the answer comes too late.
    Late(Option<Pending>),
}

/// How far in the future a cached record may claim to be issued and still
/// be trusted (clocks of machines sharing a cache disagree a little).
const FUTURE_ISSUE_TOLERANCE: Duration = Duration::from_secs(5 * 60);

/// How many spent refresh tokens a refresher remembers.
const SPENT_REMEMBERED: usize = 8;

/// The sans-IO token refresher. See the [module documentation](self).
#[derive(Debug)]
pub struct Refresher {
    config: RefresherConfig,
    rng: fastrand::Rng,
    /// The token endpoint's latest DPoP nonce (RFC 9449 §8).
    dpop_nonce: Option<Box<str>>,
    /// Whether the current attempt was already repeated with a new nonce.
    dpop_nonce_retried: bool,
    /// Whether the current attempt fetched the issuer's metadata (or tried
    /// to): an attempt fetches it at most once.
    discovered_this_attempt: bool,
    /// The token request's failure that sent the attempt back to the
    /// issuer's metadata (the endpoint may have moved): reported if the
    /// metadata names the same endpoint, or cannot be had.
    moved_error: Option<Box<FetchError>>,
    phase: Phase,
    effects: LazyVec<Effect>,
    events: LazyVec<Event>,
    pending: Outstandings,
    /// The latest effects that timed out, oldest first (a few). The lists a
    /// refresher keeps are `LazyVec`s: 8 bytes each, nothing allocated while
    /// empty (most are, for most keys).
    timed_out: LazyVec<(EffectId, Pending)>,
    next_id: u64,
    current: Option<Arc<TokenRecord>>,
    /// When the current token goes stale and expires, on the schedule axis.
    clocked: Option<Clocked>,
    expiry_announced: bool,
    refresh_token: Option<RefreshToken>,
    /// When `refresh_token` was issued: the wall time a grant brought it, or
    /// the `issued` of the cached record it came from (`None`: the initial
    /// one from the configuration).
    refresh_token_issued: Option<Timestamp>,
    /// The refresh tokens this refresher has sent (the latest few): a
    /// cached record holding one of them is never trusted for its refresh
    /// token, whatever its timestamps say.
    spent: LazyVec<RefreshToken>,
    /// Jittered instant at which the current token is refreshed.
    refresh_at: Option<Timestamp>,
    /// Planned retry after a failure.
    retry_at: Option<Timestamp>,
    /// Forced refresh: only a token newer than this one will do.
    forced_over: Option<Timestamp>,
    forced_pending: bool,
    last_forced: Option<Timestamp>,
    consecutive_failures: u32,
    /// Boxed: most refreshers never fail, and a pool holds many.
    last_error: Option<Box<(FetchError, Timestamp)>>,
    last_success_at: Option<Timestamp>,
    last_fetch_started: Option<Timestamp>,
    /// Expiry of the record each layer held in this read pass (`None`: miss).
    seen: LazyVec<Option<Timestamp>>,
    /// Leases held, with the instant each expires by itself.
    leases_held: LazyVec<(usize, Timestamp)>,
    /// After a failed fetch the leases are kept until they expire (a retry
    /// that comes first reuses them), so that a fleet backs off together
    /// instead of each member taking its turn at a failing authority.
    linger_until: Option<Timestamp>,
    lease_layers: LazyVec<usize>,
    /// The writes under way store a record just fetched that holds a refresh
    /// token: a shutdown waits for them.
    writing_fetched_refresh_token: bool,
    /// Shutting down: the end of the grace for a refresh token at stake.
    draining_until: Option<Timestamp>,
    /// The clocks as of the latest input: outputs name wall times estimated
    /// from it.
    last_now: Now,
}

/// A token's times on the schedule axis (the monotonic clock): fixed when
/// the token is adopted, so that a wall clock that steps later cannot make it
/// fresh for longer, or expire sooner, than it really is.
#[derive(Debug, Clone, Copy)]
struct Clocked {
    stale: Timestamp,
    expiry: Timestamp,
}

impl Refresher {
    /// A refresher that starts by reading its cache layers (or fetching, when it
    /// has none). `seed` drives jitter and backoff: give each process its own
    /// (drawn from the OS by the driver), or a fleet would move in lockstep.
    pub fn new(config: RefresherConfig, seed: u64, now: impl Into<Now>) -> Self {
        let now = now.into();
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
            dpop_nonce: None,
            dpop_nonce_retried: false,
            discovered_this_attempt: false,
            moved_error: None,
            phase: Phase::Idle,
            effects: LazyVec::new(),
            events: LazyVec::new(),
            pending: Outstandings::default(),
            timed_out: LazyVec::new(),
            next_id: 0,
            current: None,
            clocked: None,
            expiry_announced: false,
            refresh_token,
            refresh_token_issued: None,
            spent: LazyVec::new(),
            refresh_at: None,
            retry_at: None,
            forced_over: None,
            forced_pending: false,
            last_forced: None,
            consecutive_failures: 0,
            last_error: None,
            last_success_at: None,
            last_fetch_started: None,
            seen: std::iter::repeat_n(None, layers).collect(),
            leases_held: LazyVec::new(),
            linger_until: None,
            lease_layers,
            writing_fetched_refresh_token: false,
            draining_until: None,
            last_now: now,
        };
        if layers > 0 {
            r.start_reads(now, ReadPass::Startup);
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

    /// The next effect [`poll_effect`](Self::poll_effect) would give, left
    /// in place: for a driver that carries out only some kinds of effect
    /// itself and hands the refresher on otherwise.
    #[must_use]
    pub fn peek_effect(&self) -> Option<&Effect> {
        self.effects.first()
    }

    /// The next event to report.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// What to wait for before the next call to [`Refresher::handle`]: an
    /// instant ([`Wait::Until`]), answers to outstanding effects up to a
    /// deadline ([`Wait::Answer`]), or nothing ever again ([`Wait::Finished`]).
    /// Until it has finished, the refresher always names a finite instant.
    ///
    /// The instants are wall times estimated from the clocks of the latest
    /// input; to sleep exactly as long as the monotonic schedule says, use
    /// [`Refresher::poll_sleep`].
    #[must_use]
    pub fn poll_wait(&self) -> Wait {
        let to_wall = |t| self.last_now.to_wall(t);
        match self.next_deadline() {
            None => Wait::Finished,
            Some((deadline, true)) => Wait::Answer {
                deadline: to_wall(deadline),
            },
            Some((deadline, false)) => Wait::Until(to_wall(deadline)),
        }
    }

    /// How long to wait, measured on the monotonic clock from `now`, before
    /// handing the refresher [`Input::Timeout`] (unless another input comes
    /// first); `None` once it has finished. What a driver sleeps for (capped
    /// by its own wake-up interval).
    #[must_use]
    pub fn poll_sleep(&self, now: impl Into<Now>) -> Option<Duration> {
        let now = now.into();
        self.next_deadline()
            .map(|(deadline, _)| deadline.duration_since(now.sched()))
    }

    /// The earliest deadline on the schedule axis (`None` once finished):
    /// what a pool files the refresher under.
    pub(crate) fn next_wake(&self) -> Option<Timestamp> {
        self.next_deadline().map(|(deadline, _)| deadline)
    }

    /// The earliest deadline on the schedule axis, and whether answers are
    /// outstanding; `None` once finished.
    fn next_deadline(&self) -> Option<(Timestamp, bool)> {
        if self.phase == Phase::Finished {
            return None;
        }
        let expiry = self.token().and(self.clocked).map(|clocked| clocked.expiry);
        let own = match self.phase {
            Phase::Idle if self.draining_until.is_none() => Some(match self.linger_until {
                Some(linger) => self.due().min(linger),
                None => self.due(),
            }),
            Phase::WaitingForLease { until } => Some(until),
            _ => None,
        };
        let timers = [own, expiry, self.draining_until]
            .into_iter()
            .flatten()
            .min();
        Some(match self.pending.values().map(|o| o.deadline).min() {
            Some(answer) => (timers.map_or(answer, |t| t.min(answer)), true),
            // Unreachable: with nothing outstanding the refresher is idle,
            // waiting for a lease, or finished. Were it not, the driver's
            // periodic wake-up would still reach it.
            None => (timers.unwrap_or(Timestamp::MAX), false),
        })
    }

    /// When to hand the refresher a timeout at the latest, if no other input
    /// comes first: [`Refresher::poll_wait`]`().deadline()`. `None` once it has
    /// finished.
    ///
    /// While effects are outstanding this is now their earliest deadline
    /// (it used to be `None`, "wait for an answer"): every outstanding effect
    /// times out.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.poll_wait().deadline()
    }

    /// When the outstanding effect `id` times out; `None` when it is not
    /// outstanding (answered, timed out, never asked for, or the refresher
    /// has finished).
    pub fn effect_deadline(&self, id: EffectId) -> Option<Timestamp> {
        if self.phase == Phase::Finished {
            return None;
        }
        self.pending
            .get(&id)
            .map(|o| self.last_now.to_wall(o.deadline))
    }

    /// Whether the refresher has shut down.
    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Finished
    }

    /// Whether [`Refresher::shutdown`] was called: the refresher is draining
    /// (waiting for a refresh token at stake) or has finished.
    pub fn is_stopping(&self) -> bool {
        self.draining_until.is_some() || self.phase == Phase::Finished
    }

    /// A snapshot of the refresher's state as of the latest input.
    pub(crate) fn last_status(&self) -> Status {
        self.status(self.last_now)
    }

    /// A snapshot of the refresher's state at `now`.
    pub fn status(&self, now: impl Into<Now>) -> Status {
        let now = now.into();
        let token = self.token();
        Status {
            token_state: token.and(self.state(now.sched())),
            issued: token.map(|t| t.issued),
            stale: token.map(|t| t.stale),
            expiry: token.map(|t| t.expiry),
            last_error: self.last_error.as_ref().map(|last| last.0.clone()),
            last_error_at: self.last_error.as_ref().map(|last| last.1),
            consecutive_failures: self.consecutive_failures,
            last_success_at: self.last_success_at,
            next_attempt: match self.phase {
                _ if self.draining_until.is_some() => None,
                Phase::Idle => Some(now.to_wall(self.due())),
                Phase::WaitingForLease { until } => Some(now.to_wall(until)),
                _ => None,
            },
            fetch_in_flight: self.phase == Phase::Fetching,
            shut_down: self.phase == Phase::Finished,
        }
    }

    /// The one entry point: time has come (`Input::Timeout`), an effect was
    /// answered, or a store changed. Everything due at `now` happens,
    /// outstanding effects whose deadline has come included.
    ///
    /// An answer counts if its effect is still outstanding, even at or past
    /// its deadline (an answer in hand beats a timeout). An answer to an
    /// effect that already timed out or was answered is ignored with
    /// `Ok(())` (a lease granted late is given back; a refresh token rotated
    /// by a fetch that timed out is kept for the next request). `Err` means
    /// driver misuse: an id never issued, or an answer of the wrong kind;
    /// the refresher is then unchanged.
    pub fn handle(&mut self, now: impl Into<Now>, input: Input) -> Result<(), MisuseError> {
        let now = self.observe(now.into());
        match input {
            Input::Timeout => {
                self.tick(now);
                Ok(())
            }
            Input::CacheRead { id, result } => self.answer_read(now, id, result),
            Input::CacheWritten { id, result } => self.answer_write(now, id, result),
            Input::Lease { id, outcome } => self.answer_lease(now, id, outcome),
            Input::Response {
                id,
                status,
                headers,
                mut body,
            } => {
                let answered = self.answer_response(now, id, status, &headers, &body);
                body.zeroize();
                answered
            }
            Input::FetchFailed { id, error } => self.answer_fetch(now, id, Err(error)),
            Input::Grant { id, result } => self.answer_fetch(now, id, result),
            Input::CacheChanged { layer } => {
                self.cache_changed(now, layer);
                Ok(())
            }
        }
    }

    /// Time has passed: [`Input::Timeout`]. Calling it early, late or with a
    /// clock that went backwards is harmless.
    pub fn handle_timeout(&mut self, now: impl Into<Now>) {
        let now = self.observe(now.into());
        self.tick(now);
    }

    /// Asks for a token newer than the current one (after a resource server
    /// rejected it, say). Rate-limited by the configured minimum interval.
    /// Once [`Refresher::shutdown`] was called, answers
    /// [`RefreshNow::ShutDown`] and does nothing.
    pub fn refresh_now(&mut self, now: impl Into<Now>) -> RefreshNow {
        let now = self.observe(now.into());
        if self.is_stopping() {
            return RefreshNow::ShutDown;
        }
        if let Some(last) = self.last_forced {
            let until = last.saturating_add(self.config.tuning.refresh_now_min_interval);
            if now.sched() < until {
                return RefreshNow::RateLimited {
                    until: now.to_wall(until),
                };
            }
        }
        self.last_forced = Some(now.sched());
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

    /// Asks for a token other than `refused`, which a resource server just
    /// refused (a 401): what middleware calls, once per refusal, however
    /// many requests were refused together.
    ///
    /// - `refused` is not the current token any more:
    ///   [`RefreshNow::Replaced`], nothing else happens (retry with the
    ///   current one);
    /// - a refresh cycle is under way: [`RefreshNow::Joined`], without
    ///   counting against the rate limit, and the cycle will not settle for
    ///   a cached record holding `refused` (nor one issued no later);
    /// - otherwise, as [`Refresher::refresh_now`] (rate-limited).
    ///
    /// So a burst of refusals of one token makes one token request.
    pub fn refresh_if_current(&mut self, now: impl Into<Now>, refused: &AccessToken) -> RefreshNow {
        let now = self.observe(now.into());
        if self.is_stopping() {
            return RefreshNow::ShutDown;
        }
        let Some(current) = self.current.as_ref() else {
            return self.refresh_now(now);
        };
        if current.access_token != *refused {
            return RefreshNow::Replaced;
        }
        let issued = current.issued;
        match self.phase {
            Phase::Idle => self.refresh_now(now),
            Phase::Writing => {
                self.forced_over = Some(self.forced_over.map_or(issued, |over| over.max(issued)));
                self.forced_pending = true;
                RefreshNow::Joined
            }
            Phase::WaitingForLease { .. } => {
                self.forced_over = Some(self.forced_over.map_or(issued, |over| over.max(issued)));
                self.phase = Phase::Idle;
                self.begin_cycle(now);
                RefreshNow::Joined
            }
            _ => {
                self.forced_over = Some(self.forced_over.map_or(issued, |over| over.max(issued)));
                RefreshNow::Joined
            }
        }
    }

    /// Stops the refresher. No new cycle starts and
    /// [`Refresher::refresh_now`] is refused from here on.
    ///
    /// When a refresh token is at stake (a fetch is outstanding whose request
    /// spends one, or the record it brought is being written), the refresher
    /// first *drains*: it waits until `now +`
    /// [`shutdown_grace`](RefresherConfig::shutdown_grace) for that answer,
    /// adopts a grant ([`Event::TokenChanged`]) and writes it to every layer,
    /// so that a rotated refresh token is stored rather than lost; keep
    /// driving it until [`Wait::Finished`]. Otherwise it finishes at once.
    ///
    /// On finishing, leases it holds are released (drain
    /// [`Refresher::poll_effect`] once more), [`Event::Stopped`] is reported,
    /// and answers still outstanding are ignored. Calling it again does
    /// nothing.
    pub fn shutdown(&mut self, now: impl Into<Now>) {
        let now = self.observe(now.into());
        if self.is_stopping() {
            return;
        }
        if self.refresh_token_at_stake() {
            self.draining_until = Some(
                now.sched()
                    .saturating_add(self.config.tuning.shutdown_grace),
            );
            self.tick(now);
        } else {
            self.finish();
        }
    }

    /// Another process changed `layer`: [`Input::CacheChanged`].
    pub fn handle_cache_changed(&mut self, now: impl Into<Now>, layer: usize) {
        let now = self.observe(now.into());
        self.cache_changed(now, layer);
    }

    /// Answers an [`Effect::ReadCache`]: [`Input::CacheRead`].
    pub fn handle_cache_read(
        &mut self,
        now: impl Into<Now>,
        id: EffectId,
        result: Result<Option<Vec<u8>>, CacheError>,
    ) -> Result<(), MisuseError> {
        let now = self.observe(now.into());
        self.answer_read(now, id, result)
    }

    /// Answers an [`Effect::WriteCache`]: [`Input::CacheWritten`].
    pub fn handle_cache_written(
        &mut self,
        now: impl Into<Now>,
        id: EffectId,
        result: Result<(), CacheError>,
    ) -> Result<(), MisuseError> {
        let now = self.observe(now.into());
        self.answer_write(now, id, result)
    }

    /// Answers an [`Effect::AcquireLease`]: [`Input::Lease`].
    pub fn handle_lease(
        &mut self,
        now: impl Into<Now>,
        id: EffectId,
        outcome: LeaseOutcome,
    ) -> Result<(), MisuseError> {
        let now = self.observe(now.into());
        self.answer_lease(now, id, outcome)
    }

    /// Answers an [`Effect::SendRequest`] with the endpoint's HTTP answer:
    /// [`Input::Response`], without giving up the body.
    /// The body should already be capped by the driver; it is checked again.
    pub fn handle_response(
        &mut self,
        now: impl Into<Now>,
        id: EffectId,
        status: u16,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<(), MisuseError> {
        let now = self.observe(now.into());
        self.answer_response(now, id, status, headers, body)
    }

    /// Answers an [`Effect::SendRequest`] that got no HTTP answer:
    /// [`Input::FetchFailed`].
    pub fn handle_fetch_error(
        &mut self,
        now: impl Into<Now>,
        id: EffectId,
        error: FetchError,
    ) -> Result<(), MisuseError> {
        let now = self.observe(now.into());
        self.answer_fetch(now, id, Err(error))
    }

    /// Answers an [`Effect::Fetch`] (or an [`Effect::SendRequest`]) with what
    /// the source granted: [`Input::Grant`].
    pub fn handle_grant(
        &mut self,
        now: impl Into<Now>,
        id: EffectId,
        result: Result<TokenGrant, FetchError>,
    ) -> Result<(), MisuseError> {
        let now = self.observe(now.into());
        self.answer_fetch(now, id, result)
    }

    // ---- answers: claim the effect, act, then everything due at `now` ----

    fn answer_read(
        &mut self,
        now: Now,
        id: EffectId,
        mut result: Result<Option<Vec<u8>>, CacheError>,
    ) -> Result<(), MisuseError> {
        match self.claim(id, |p| matches!(p, Pending::Read))? {
            Claim::Current(_) => self.on_read(now, result),
            Claim::Late(_) => {
                if let Ok(Some(bytes)) = &mut result {
                    bytes.zeroize();
                }
            }
        }
        self.tick(now);
        Ok(())
    }

    fn answer_write(
        &mut self,
        now: Now,
        id: EffectId,
        result: Result<(), CacheError>,
    ) -> Result<(), MisuseError> {
        if let Claim::Current(Pending::Write { layer }) =
            self.claim(id, |p| matches!(p, Pending::Write { .. }))?
        {
            self.on_written(now, layer, result);
        }
        self.tick(now);
        Ok(())
    }

    fn answer_lease(
        &mut self,
        now: Now,
        id: EffectId,
        outcome: LeaseOutcome,
    ) -> Result<(), MisuseError> {
        match self.claim(id, |p| matches!(p, Pending::Lease { .. }))? {
            Claim::Current(Pending::Lease { layer }) => self.on_lease(now, layer, outcome),
            Claim::Late(Some(Pending::Lease { layer })) if outcome == LeaseOutcome::Acquired => {
                // Granted after we gave up on it: give it back, unless we
                // hold it (or are asking for it) anew.
                let ours = self.phase != Phase::Finished
                    && (self.leases_held.iter().any(|&(l, _)| l == layer)
                        || self
                            .pending
                            .values()
                            .any(|o| o.kind == Pending::Lease { layer }));
                if !ours {
                    self.effects.push(Effect::ReleaseLease { layer });
                }
            }
            _ => {}
        }
        self.tick(now);
        Ok(())
    }

    fn answer_response(
        &mut self,
        now: Now,
        id: EffectId,
        status: u16,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<(), MisuseError> {
        if let Some(Outstanding {
            kind: Pending::Discover { location },
            ..
        }) = self.pending.get(&id).copied()
        {
            self.pending.remove(&id);
            if let Some(client) = self.issuer_client() {
                let limit = client.body_limit();
                if let Some(issuer) = client.issuer() {
                    let result = Metadata::parse(issuer, status, body, limit, now.wall);
                    self.on_discovered(now, location, result);
                }
            }
            self.tick(now);
            return Ok(());
        }
        let (result, dpop) = match &self.config.source {
            Source::OAuth2(client) => (
                client.read_response(status, headers, body, now.wall),
                client.dpop_key_thumbprint().is_some(),
            ),
            Source::Custom => (
                parse_token_response(status, headers, body, now.wall, self.body_limit()),
                false,
            ),
        };
        // An authority may quote what it was sent: never the credentials.
        let result = result.map_err(|error| self.without_credentials(error));
        if dpop && let Some(nonce) = dpop::nonce_from(headers) {
            // The server wants this nonce in the next proof: ask again at
            // once, once per attempt, and that is no failure (RFC 9449 §8).
            let wants_nonce = matches!(
                &result,
                Err(FetchError::OAuth { error, .. }) if error.error == "use_dpop_nonce"
            );
            self.dpop_nonce = Some(nonce.into());
            if wants_nonce
                && !self.dpop_nonce_retried
                && self.phase == Phase::Fetching
                && self
                    .pending
                    .get(&id)
                    .is_some_and(|o| matches!(o.kind, Pending::Fetch { .. }))
            {
                self.pending.remove(&id);
                self.dpop_nonce_retried = true;
                self.start_fetch(now);
                self.tick(now);
                return Ok(());
            }
        }
        self.answer_fetch(now, id, result)
    }

    /// `error` without the credentials this refresher sends (its client's
    /// secret, the refresh tokens it holds and has spent) in its text.
    fn without_credentials(&self, error: FetchError) -> FetchError {
        let mut values: Vec<&str> = Vec::new();
        if let Source::OAuth2(client) = &self.config.source
            && let Some(secret) = client.get_client_secret()
        {
            values.push(secret.expose_secret());
        }
        values.extend(self.refresh_token.iter().map(|t| t.expose_secret()));
        values.extend(self.spent.iter().map(|t| t.expose_secret()));
        error.without_values(&values)
    }

    fn answer_fetch(
        &mut self,
        now: Now,
        id: EffectId,
        result: Result<TokenGrant, FetchError>,
    ) -> Result<(), MisuseError> {
        match self.claim(id, |p| {
            matches!(p, Pending::Fetch { .. } | Pending::Discover { .. })
        })? {
            Claim::Current(Pending::Discover { location }) => {
                let result = match result {
                    Err(error) => Err(DiscoveryError::Unreachable(Box::new(error))),
                    Ok(_) => Err(DiscoveryError::Unparseable {
                        reason: "the driver answered with a token grant".into(),
                    }),
                };
                self.on_discovered(now, location, result);
            }
            Claim::Current(_) => {
                if self.phase == Phase::Fetching {
                    match result {
                        Err(error) if self.endpoint_may_have_moved(&error) => {
                            self.moved_error = Some(Box::new(error));
                            self.send_discovery(now, 0);
                        }
                        result => self.on_fetched(now, result),
                    }
                }
            }
            Claim::Late(Some(Pending::Fetch { .. })) => {
                // The authority may have rotated the refresh token we sent,
                // spending it: the new one is the only one left that works.
                if let Ok(TokenGrant {
                    refresh_token: Some(rt),
                    ..
                }) = result
                    && self.phase != Phase::Finished
                {
                    self.refresh_token = Some(rt);
                    self.refresh_token_issued = Some(now.wall);
                }
            }
            Claim::Late(_) => {}
        }
        self.tick(now);
        Ok(())
    }

    fn cache_changed(&mut self, now: Now, layer: usize) {
        if matches!(self.phase, Phase::WaitingForLease { .. }) && layer < self.config.layers.len() {
            self.phase = Phase::Idle;
            self.start_reads(now, ReadPass::AfterLeaseWait);
        }
        self.tick(now);
    }

    // ---- internals ----

    fn body_limit(&self) -> usize {
        match &self.config.source {
            Source::OAuth2(c) => c.body_limit(),
            Source::Custom => crate::oauth2::DEFAULT_MAX_BODY_BYTES,
        }
    }

    fn new_id(&mut self, now: Now, kind: Pending) -> EffectId {
        let id = EffectId(self.next_id);
        self.next_id += 1;
        let deadline = now.sched().saturating_add(kind.timeout(&self.config));
        self.pending.insert(id, Outstanding { kind, deadline });
        id
    }

    /// Finds whose answer this is, checking that it fits the effect.
    fn claim(
        &mut self,
        id: EffectId,
        fits: impl Fn(&Pending) -> bool,
    ) -> Result<Claim, MisuseError> {
        let wrong = |kind: Pending| MisuseError::WrongAnswer {
            id,
            expected: kind.expects(),
        };
        if let Some(o) = self.pending.get(&id).copied() {
            if !fits(&o.kind) {
                return Err(wrong(o.kind));
            }
            self.pending.remove(&id);
            return Ok(Claim::Current(o.kind));
        }
        if let Some(at) = self.timed_out.iter().position(|&(i, _)| i == id) {
            let kind = self.timed_out[at].1;
            if !fits(&kind) {
                return Err(wrong(kind));
            }
            self.timed_out.remove(at);
            return Ok(Claim::Late(Some(kind)));
        }
        if id.0 < self.next_id {
            Ok(Claim::Late(None))
        } else {
            Err(MisuseError::UnknownEffect(id))
        }
    }

    /// Answers, as transient failures, the outstanding effects whose deadline
    /// has come, earliest first.
    fn expire(&mut self, now: Now) {
        // After the clock stepped back, a deadline is never further than a
        // whole timeout away.
        for o in self.pending.values_mut() {
            o.deadline = o
                .deadline
                .min(now.sched().saturating_add(o.kind.timeout(&self.config)));
        }
        while let Some((id, kind)) = self
            .pending
            .iter()
            .filter(|(_, o)| o.deadline <= now.sched())
            .min_by_key(|(id, o)| (o.deadline, **id))
            .map(|(id, o)| (*id, o.kind))
        {
            self.pending.remove(&id);
            if self.timed_out.len() >= TIMED_OUT_MEMORY {
                self.timed_out.remove(0);
            }
            self.timed_out.push((id, kind));
            let unanswered = || {
                CacheError::new(
                    CacheErrorKind::Timeout,
                    format!(
                        "the store did not answer within {:?}",
                        self.config.tuning.cache_timeout
                    ),
                )
            };
            match kind {
                Pending::Read => self.on_read(now, Err(unanswered())),
                Pending::Write { layer } => self.on_written(now, layer, Err(unanswered())),
                Pending::Lease { layer } => {
                    self.on_lease(now, layer, LeaseOutcome::Failed(unanswered()));
                }
                Pending::Fetch { .. } => {
                    if self.phase == Phase::Fetching {
                        let after = self.config.tuning.fetch_timeout;
                        self.on_fetched(now, Err(FetchError::Timeout { after }));
                    }
                }
                Pending::Discover { location } => {
                    let after = self.config.tuning.fetch_timeout;
                    let error = FetchError::Timeout { after };
                    self.on_discovered(
                        now,
                        location,
                        Err(DiscoveryError::Unreachable(Box::new(error))),
                    );
                }
            }
        }
    }

    fn on_read(&mut self, now: Now, result: Result<Option<Vec<u8>>, CacheError>) {
        let Phase::Reading { pass, layer } = self.phase else {
            if let Ok(Some(mut bytes)) = result {
                bytes.zeroize();
            }
            return;
        };
        let record = match result {
            Ok(Some(mut bytes)) => {
                self.read_metadata(&bytes);
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
        let record = record.filter(|r| {
            let trusted = r.issued <= now.wall.saturating_add(FUTURE_ISSUE_TOLERANCE);
            if !trusted {
                self.cache_problem(layer, CacheProblem::FromTheFuture { issued: r.issued });
            }
            trusted
        });
        self.seen[layer] = record.as_ref().map(|r| r.expiry);
        if let Some(r) = &record {
            // A cached refresh token is the latest rotation persisted, even
            // when its access token has expired: it beats an older one.
            self.take_refresh_token(now, r);
        }
        let mut done = layer + 1 >= self.config.layers.len();
        if let Some(record) = record {
            let acceptable = match pass {
                ReadPass::Startup => record.is_usable_at(now.wall),
                _ => {
                    record.state_at(now.wall) == TokenState::Fresh
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
            let id = self.new_id(now, Pending::Read);
            self.effects.push(Effect::ReadCache {
                id,
                layer: layer + 1,
            });
        }
    }

    fn on_written(&mut self, now: Now, layer: usize, result: Result<(), CacheError>) {
        if self.phase == Phase::Finished {
            return;
        }
        if let Err(e) = result {
            self.cache_problem(layer, CacheProblem::Write(e));
        }
        if self.phase == Phase::Writing
            && !self
                .pending
                .values()
                .any(|o| matches!(o.kind, Pending::Write { .. }))
        {
            self.end_cycle();
            if self.draining_until.is_none() && std::mem::take(&mut self.forced_pending) {
                self.begin_cycle(now);
            }
        }
    }

    fn on_lease(&mut self, now: Now, layer: usize, outcome: LeaseOutcome) {
        let Phase::Leasing { next } = self.phase else {
            // A lease granted after we stopped wanting it goes straight back.
            if outcome == LeaseOutcome::Acquired {
                self.effects.push(Effect::ReleaseLease { layer });
            }
            return;
        };
        match outcome {
            LeaseOutcome::Acquired => {
                let ttl = self.config.layers[layer]
                    .lease()
                    .map_or(Duration::from_secs(30), |l| l.ttl);
                self.leases_held
                    .push((layer, now.sched().saturating_add(ttl)));
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
                let until = now
                    .sched()
                    .saturating_add(wait.max(self.config.tuning.backoff.floor()));
                self.phase = Phase::WaitingForLease { until };
                self.events.push(Event::LeaseBusy {
                    layer,
                    retry_at: now.to_wall(until),
                });
            }
        }
    }

    /// The cycle has what it came for: a token not yet due for refresh, and
    /// newer than the one a forced refresh wanted replaced.
    fn satisfied(&self, now: Now) -> bool {
        let Some(cur) = &self.current else {
            return false;
        };
        self.state(now.sched()) == Some(TokenState::Fresh)
            && self.refresh_at.is_some_and(|at| now.sched() < at)
            && self.forced_over.is_none_or(|over| cur.issued > over)
    }

    fn cache_problem(&mut self, layer: usize, problem: CacheProblem) {
        self.events.push(Event::CacheProblem { layer, problem });
    }

    /// When the next cycle is due, once idle.
    fn due(&self) -> Timestamp {
        if self.forced_pending {
            return Timestamp::EPOCH;
        }
        // No token and no failure: only possible before the first cycle.
        self.retry_at
            .or(self.refresh_at)
            .unwrap_or(Timestamp::EPOCH)
    }

    fn is_better(&self, candidate: &TokenRecord, now: Now) -> bool {
        match (&self.current, self.clocked) {
            // The token we hold, read back from a store: nothing new (its
            // times, seen through two clocks read a millisecond apart, may
            // look a hair later).
            (Some(cur), _) if cur.access_token == candidate.access_token => false,
            (Some(_), Some(cur)) => {
                now.sched() >= cur.expiry || now.to_sched(candidate.expiry) > cur.expiry
            }
            _ => true,
        }
    }

    /// The current token's state at `sched` (schedule axis).
    fn state(&self, sched: Timestamp) -> Option<TokenState> {
        let clocked = self.current.as_ref().and(self.clocked)?;
        Some(if sched >= clocked.expiry {
            TokenState::Expired
        } else if sched >= clocked.stale {
            TokenState::Stale
        } else {
            TokenState::Fresh
        })
    }

    /// Takes the clocks of an input as the latest.
    fn observe(&mut self, now: Now) -> Now {
        self.last_now = now;
        now
    }

    /// Takes the refresh token of a cached record when it is a rotation this
    /// refresher has not seen: not the one it holds, not one it has spent,
    /// and not older than the one it holds. (Records claiming to be issued
    /// in the future never get here.)
    fn take_refresh_token(&mut self, now: Now, record: &TokenRecord) {
        if let Some(rt) = &record.refresh_token
            && self.refresh_token.as_ref() != Some(rt)
            && !self.spent.contains(rt)
            && record.issued <= now.wall.saturating_add(FUTURE_ISSUE_TOLERANCE)
            && self.refresh_token_issued.is_none_or(|t| record.issued >= t)
        {
            self.refresh_token = Some(rt.clone());
            self.refresh_token_issued = Some(record.issued);
        }
    }

    /// Remembers that `rt` is being sent: the authority may spend it.
    fn spend(&mut self, rt: Option<RefreshToken>) {
        let Some(rt) = rt else { return };
        if !self.spent.contains(&rt) {
            if self.spent.len() >= SPENT_REMEMBERED {
                self.spent.remove(0);
            }
            self.spent.push(rt);
        }
    }

    /// Makes `record` current. Its wall times are facts as of `now`; from
    /// here on, it ages on the monotonic clock.
    fn adopt(&mut self, now: Now, record: TokenRecord, origin: io::Origin) {
        self.clocked = Some(Clocked {
            stale: now.to_sched(record.stale),
            expiry: now.to_sched(record.expiry),
        });
        let mut refresh_at = now.to_sched(self.config.tuning.jitter.refresh_at_for(&record));
        // No hot loop even with absurdly short tokens.
        if let Some(started) = self.last_fetch_started {
            refresh_at = refresh_at.max(started.saturating_add(self.config.tuning.backoff.floor()));
        }
        self.refresh_at = Some(refresh_at);
        let token = Arc::new(record);
        self.current = Some(token.clone());
        self.expiry_announced = false;
        self.events.push(Event::TokenChanged { token, origin });
    }

    fn start_reads(&mut self, now: Now, pass: ReadPass) {
        self.seen.iter_mut().for_each(|s| *s = None);
        self.phase = Phase::Reading { pass, layer: 0 };
        let id = self.new_id(now, Pending::Read);
        self.effects.push(Effect::ReadCache { id, layer: 0 });
    }

    fn finish_reads(&mut self, now: Now, pass: ReadPass, last_read: usize) {
        if self.satisfied(now) {
            self.forced_over = None;
            self.retry_at = None;
            self.consecutive_failures = 0;
            let record = self.current.clone();
            if let Some(record) = record {
                self.write_back(now, &record, last_read);
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
    fn write_back(&mut self, now: Now, record: &Arc<TokenRecord>, last_read: usize) {
        let layers: Vec<usize> = (0..=last_read.min(self.config.layers.len().saturating_sub(1)))
            .filter(|&l| self.seen[l].is_none_or(|e| e < record.expiry))
            .collect();
        self.write_layers(now, record, layers);
    }

    fn write_layers(&mut self, now: Now, record: &Arc<TokenRecord>, layers: Vec<usize>) {
        if layers.is_empty() {
            self.end_cycle();
            return;
        }
        let metadata = match &self.config.source {
            Source::OAuth2(client) => client.metadata(),
            Source::Custom => None,
        };
        let encoded = encode_record_with(&self.config.key, record, metadata);
        for layer in layers {
            let id = self.new_id(now, Pending::Write { layer });
            self.effects.push(Effect::WriteCache {
                id,
                layer,
                record: encoded.clone(),
            });
        }
        self.phase = Phase::Writing;
    }

    fn end_cycle(&mut self) {
        self.writing_fetched_refresh_token = false;
        self.release_leases();
        self.phase = Phase::Idle;
    }

    fn release_leases(&mut self) {
        self.linger_until = None;
        for (layer, _) in self.leases_held.take_all() {
            self.effects.push(Effect::ReleaseLease { layer });
        }
    }

    fn begin_cycle(&mut self, now: Now) {
        if self.config.layers.is_empty() {
            self.start_fetch(now);
        } else if self.lease_layers.is_empty() {
            self.start_reads(now, ReadPass::UnderLease);
        } else {
            self.next_lease(now, 0);
        }
    }

    /// Asks for the `next`-th lease, or reads the layers once all are held.
    /// Leases still held from a failed attempt are kept, not asked for again.
    fn next_lease(&mut self, now: Now, mut next: usize) {
        self.linger_until = None;
        while let Some(&layer) = self.lease_layers.get(next) {
            if !self.leases_held.iter().any(|&(l, _)| l == layer) {
                break;
            }
            next += 1;
        }
        if let Some(&layer) = self.lease_layers.get(next) {
            let ttl = self.config.layers[layer]
                .lease()
                .map_or(Duration::from_secs(30), |l| l.ttl);
            self.phase = Phase::Leasing { next };
            let id = self.new_id(now, Pending::Lease { layer });
            self.effects.push(Effect::AcquireLease { id, layer, ttl });
        } else {
            self.start_reads(now, ReadPass::UnderLease);
        }
    }

    /// Starts an attempt: the issuer's metadata first when it is needed,
    /// then the token request.
    fn start_fetch(&mut self, now: Now) {
        self.last_fetch_started = Some(now.sched());
        self.phase = Phase::Fetching;
        self.discovered_this_attempt = false;
        self.moved_error = None;
        let needs_metadata = self
            .issuer_client()
            .and_then(|c| c.discovery.as_ref())
            .is_some_and(|d| {
                d.metadata
                    .as_ref()
                    .is_none_or(|m| m.is_stale(now.wall, d.max_age, FUTURE_ISSUE_TOLERANCE))
            });
        if needs_metadata {
            self.send_discovery(now, 0);
        } else {
            self.send_token_request(now);
        }
    }

    /// The client, when its token endpoint comes from an issuer's metadata.
    fn issuer_client(&mut self) -> Option<&mut OAuth2Client> {
        match &mut self.config.source {
            Source::OAuth2(client) if client.discovery.is_some() => Some(client),
            _ => None,
        }
    }

    /// Asks for the issuer's metadata at its `location`-th well-known URL.
    fn send_discovery(&mut self, now: Now, location: u8) {
        let Some(client) = self.issuer_client() else {
            return self.send_token_request(now);
        };
        let max_body = client.body_limit();
        let Some(issuer) = client.issuer() else {
            return self.send_token_request(now);
        };
        let url = issuer.metadata_urls()[usize::from(location.min(1))].clone();
        self.discovered_this_attempt = true;
        match discovery::metadata_request(&url) {
            Ok(request) => {
                let id = self.new_id(now, Pending::Discover { location });
                self.effects.push(Effect::SendRequest {
                    id,
                    request: Box::new(request),
                    max_body,
                });
            }
            Err(error) => {
                self.on_discovered(
                    now,
                    location,
                    Err(DiscoveryError::Unreachable(Box::new(error))),
                );
            }
        }
    }

    /// The issuer's metadata (or why there is none) arrived.
    fn on_discovered(&mut self, now: Now, location: u8, result: Result<Metadata, DiscoveryError>) {
        if self.phase != Phase::Fetching {
            return;
        }
        let moved = self.moved_error.take();
        let Some(client) = self.issuer_client() else {
            return;
        };
        let Some(issuer) = client.issuer() else {
            return;
        };
        match discovery::step(issuer, location, result) {
            discovery::LookupStep::Found(metadata) => {
                let before = client.token_url().clone();
                client.use_metadata(metadata);
                let same = client.token_url() == &before;
                match moved {
                    // It did not move: the failure stands.
                    Some(error) if same => self.on_fetched(now, Err(*error)),
                    _ => self.send_token_request(now),
                }
            }
            discovery::LookupStep::TryNext => {
                self.moved_error = moved;
                self.send_discovery(now, location.saturating_add(1));
            }
            discovery::LookupStep::Failed(error) => {
                let have_old = client.metadata().is_some();
                match moved {
                    Some(original) => self.on_fetched(now, Err(*original)),
                    // Metadata that could not be refreshed for now is
                    // still the best there is.
                    None if have_old && error.class() == ErrorClass::Transient => {
                        self.send_token_request(now);
                    }
                    None => self.on_fetched(now, Err(error)),
                }
            }
        }
    }

    /// Whether a token request's failure suggests the endpoint moved, and
    /// the issuer's metadata was not fetched yet in this attempt.
    fn endpoint_may_have_moved(&self, error: &FetchError) -> bool {
        let Source::OAuth2(client) = &self.config.source else {
            return false;
        };
        client.discovery.is_some()
            && !self.discovered_this_attempt
            && matches!(
                error,
                FetchError::NotATokenEndpoint { .. }
                    | FetchError::Transport { .. }
                    | FetchError::Status {
                        status: 404 | 410,
                        ..
                    }
                    | FetchError::OAuth {
                        status: 404 | 410,
                        ..
                    }
            )
    }

    /// Takes the issuer's metadata a cached record keeps, when newer than
    /// the one in use.
    fn read_metadata(&mut self, bytes: &[u8]) {
        let key = self.config.key.clone();
        let Some(client) = self.issuer_client() else {
            return;
        };
        let Some(issuer) = client.issuer() else {
            return;
        };
        let Some(stored) = decode_metadata(&key, issuer, bytes) else {
            return;
        };
        if client
            .metadata()
            .is_none_or(|m| m.fetched() < stored.fetched())
        {
            client.use_metadata(stored);
        }
    }

    /// Sends the token request (the endpoint known).
    fn send_token_request(&mut self, now: Now) {
        let effect = match &self.config.source {
            Source::OAuth2(client) => match client.build_request(self.refresh_token.as_ref()) {
                Ok(mut request) => {
                    if client.dpop_key_thumbprint().is_some() {
                        let claims = DpopClaims::new(
                            "POST",
                            client.token_url().as_url(),
                            now.wall.as_millis() / 1000,
                            dpop::jti(&mut self.rng),
                            self.dpop_nonce.as_deref().map(str::to_owned),
                        );
                        request = request.with_dpop(claims);
                    }
                    let max_body = client.body_limit();
                    let spends_refresh_token = client.grant() == GrantType::RefreshToken;
                    if spends_refresh_token {
                        self.spend(self.refresh_token.clone());
                    }
                    let id = self.new_id(
                        now,
                        Pending::Fetch {
                            spends_refresh_token,
                        },
                    );
                    Effect::SendRequest {
                        id,
                        request: Box::new(request),
                        max_body,
                    }
                }
                Err(e) => {
                    self.on_fetched(now, Err(e));
                    return;
                }
            },
            Source::Custom => {
                let refresh_token = self.refresh_token.clone();
                let spends_refresh_token = refresh_token.is_some();
                self.spend(refresh_token.clone());
                let id = self.new_id(
                    now,
                    Pending::Fetch {
                        spends_refresh_token,
                    },
                );
                Effect::Fetch { id, refresh_token }
            }
        };
        self.effects.push(effect);
    }

    fn on_fetched(&mut self, now: Now, result: Result<TokenGrant, FetchError>) {
        // The next attempt may repeat itself with a new nonce again.
        self.dpop_nonce_retried = false;
        match result {
            Ok(grant) => {
                let record =
                    self.config
                        .policy()
                        .record(grant, now.wall, self.refresh_token.clone());
                // The newest rotation this refresher saw, whatever the clock
                // said then or says now.
                if record.refresh_token != self.refresh_token {
                    self.refresh_token = record.refresh_token.clone();
                    self.refresh_token_issued = Some(now.wall);
                }
                self.consecutive_failures = 0;
                self.retry_at = None;
                self.forced_over = None;
                self.last_success_at = Some(now.wall);
                self.adopt(now, record, io::Origin::Authority);
                let all: Vec<usize> = (0..self.config.layers.len()).collect();
                if let Some(record) = self.current.clone() {
                    self.write_layers(now, &record, all);
                    self.writing_fetched_refresh_token =
                        self.phase == Phase::Writing && record.refresh_token.is_some();
                }
            }
            Err(error) => {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                let class = error.class();
                // A Retry-After date is a wall fact: as a delay from now.
                let retry_after = error.retry_after().map(|date| now.to_sched(date));
                let retry_at = self.config.tuning.backoff.retry_at(
                    now.sched(),
                    self.consecutive_failures,
                    class,
                    retry_after,
                    &mut self.rng,
                );
                self.retry_at = Some(retry_at);
                self.last_error = Some(Box::new((error.clone(), now.wall)));
                self.events.push(Event::FetchFailed {
                    error,
                    class,
                    consecutive_failures: self.consecutive_failures,
                    retry_at: now.to_wall(retry_at),
                });
                self.phase = Phase::Idle;
                let layers = &self.config.layers;
                let (hold, release): (LazyVec<_>, LazyVec<_>) = self
                    .leases_held
                    .take_all()
                    .into_iter()
                    .partition(|&(l, _)| layers[l].lease().is_some_and(|s| s.hold_through_backoff));
                self.leases_held = release;
                self.release_leases();
                self.leases_held = hold;
                // Kept until they expire; a retry that comes first reuses them.
                self.linger_until = self.leases_held.iter().map(|&(_, expires)| expires).min();
            }
        }
    }

    /// Whether stopping now could lose a refresh token: a fetch spending one
    /// is outstanding, or the record it brought is being written.
    fn refresh_token_at_stake(&self) -> bool {
        match self.phase {
            Phase::Fetching => self.pending.values().any(|o| {
                o.kind
                    == Pending::Fetch {
                        spends_refresh_token: true,
                    }
            }),
            Phase::Writing => self.writing_fetched_refresh_token,
            _ => false,
        }
    }

    fn finish(&mut self) {
        self.release_leases();
        self.draining_until = None;
        self.phase = Phase::Finished;
        self.events.push(Event::Stopped);
    }

    /// Everything time-driven: effects past their deadline, expiry, the end
    /// of a shutdown's grace, due refreshes, the end of a lease wait.
    fn tick(&mut self, now: Now) {
        if self.phase == Phase::Finished {
            return;
        }
        self.expire(now);
        if let (Some(t), Some(clocked)) = (&self.current, self.clocked)
            && !self.expiry_announced
            && now.sched() >= clocked.expiry
        {
            self.expiry_announced = true;
            self.events.push(Event::TokenExpired { expiry: t.expiry });
        }
        if let Some(until) = self.draining_until {
            if now.sched() >= until || !matches!(self.phase, Phase::Fetching | Phase::Writing) {
                self.finish();
            }
            return;
        }
        if self.linger_until.is_some_and(|until| now.sched() >= until) {
            self.release_leases();
        }
        match self.phase {
            Phase::Idle if now.sched() >= self.due() => {
                self.forced_pending = false;
                self.begin_cycle(now);
            }
            Phase::WaitingForLease { until } if now.sched() >= until => {
                self.start_reads(now, ReadPass::AfterLeaseWait);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;
