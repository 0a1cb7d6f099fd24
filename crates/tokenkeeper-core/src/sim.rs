//! Fleet simulation: many refreshers, one authority, exact virtual time.
//!
//! Because every timing decision lives in [`Refresher`], a whole fleet can be
//! run here without a clock: N refreshers, optionally sharing a cache layer
//! with a lease, an authority with latency, a failure rate and outage windows,
//! and consumers reading each instance's token at a fixed rate. The driver
//! jumps from one deadline to the next, so a day of a thousand instances runs
//! in well under a second. The same seed gives the same report.
//!
//! Besides its totals, a report holds a [`Timeline`]: requests, failures and
//! reads in equal buckets of the run, and the lifetimes of the tokens one
//! instance held, which is what `tokenkeeper simulate --plot` draws.
//!
//! ```
//! use std::time::Duration;
//! use tokenkeeper_core::sim::{FleetConfig, simulate};
//!
//! let report = simulate(&FleetConfig {
//!     instances: 100,
//!     duration: Duration::from_secs(6 * 3600),
//!     ..FleetConfig::default()
//! });
//! assert_eq!(report.reads_expired + report.reads_none, 0);
//! // One shared token for the whole fleet: about one request per refresh.
//! assert!(report.authority_requests <= 10, "{report:?}");
//! ```

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Duration;

use crate::backoff::BackoffPolicy;
use crate::cache::CacheKey;
use crate::clock::{Monotonic, Now};
use crate::error::{ErrorClass, FetchError};
use crate::jitter::Jitter;
use crate::policy::LifetimePolicy;
use crate::refresher::{
    Effect, EffectId, Event, Layer, LeaseOutcome, LeaseSettings, Refresher, RefresherConfig,
};
use crate::secret::AccessToken;
use crate::time::{Timestamp, duration_millis};
use crate::token::{TokenGrant, TokenState};

/// A window during which the authority answers every request with 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outage {
    /// Offset from the start of the simulation.
    pub start: Duration,
    /// How long it lasts.
    pub duration: Duration,
}

/// The simulated token authority.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthorityModel {
    /// Time from request to answer.
    pub latency: Duration,
    /// Probability that a request fails with 503 outside outages.
    pub failure_rate: f64,
    /// Windows of total failure.
    pub outages: Vec<Outage>,
    /// Lifetime of the tokens it issues.
    pub token_ttl: Duration,
}

impl Default for AuthorityModel {
    fn default() -> Self {
        AuthorityModel {
            latency: Duration::from_millis(100),
            failure_rate: 0.0,
            outages: Vec::new(),
            token_ttl: Duration::from_secs(3600),
        }
    }
}

/// What to simulate.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetConfig {
    /// Number of instances (refreshers).
    pub instances: usize,
    /// Length of the simulated run.
    pub duration: Duration,
    /// Instances start at uniformly random offsets within this window (zero: together).
    pub start_spread: Duration,
    /// Whether the instances share one cache layer with a lease.
    pub shared_cache: bool,
    /// The shared layer's lease settings.
    pub lease: LeaseSettings,
    /// Time a shared-cache operation takes.
    pub cache_latency: Duration,
    /// Each instance's consumers read its token this often.
    pub read_interval: Duration,
    /// The authority.
    pub authority: AuthorityModel,
    /// Lifetime policy of every instance.
    pub policy: LifetimePolicy,
    /// Jitter of every instance.
    pub jitter: Jitter,
    /// Backoff of every instance.
    pub backoff: BackoffPolicy,
    /// Seed of the whole run (instances, authority failures, start offsets).
    pub seed: u64,
    /// Steps of every instance's wall clock (their monotonic clocks run
    /// true), in order of time.
    pub clock_steps: Vec<ClockStep>,
}

/// From `at` into the run, every instance's wall clock reads real time plus
/// `offset_ms` (negative: behind), until the next step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockStep {
    /// When, from the start of the run.
    pub at: Duration,
    /// How far the wall clock is off from then on, in milliseconds.
    pub offset_ms: i64,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            instances: 1,
            duration: Duration::from_secs(24 * 3600),
            start_spread: Duration::ZERO,
            shared_cache: true,
            lease: LeaseSettings::default(),
            cache_latency: Duration::from_millis(1),
            read_interval: Duration::from_secs(10),
            authority: AuthorityModel::default(),
            policy: LifetimePolicy::default(),
            jitter: Jitter::default(),
            backoff: BackoffPolicy::default(),
            seed: 1,
            clock_steps: Vec::new(),
        }
    }
}

/// What happened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FleetReport {
    /// Requests that reached the authority.
    pub authority_requests: u64,
    /// Of those, how many failed.
    pub authority_failures: u64,
    /// The most requests that started within any one second.
    pub peak_requests_per_second: u64,
    /// The most *refreshes* (requests by instances that already held a token)
    /// that started within any one second.
    pub peak_refreshes_per_second: u64,
    /// Reads that found a fresh token.
    pub reads_fresh: u64,
    /// Reads that found a stale (still usable) token.
    pub reads_stale: u64,
    /// Reads that found only an expired token (never served: counted as a miss).
    pub reads_expired: u64,
    /// Reads that found no token at all.
    pub reads_none: u64,
    /// Tokens adopted from the shared cache.
    pub cache_hits: u64,
    /// Times an instance found the lease taken.
    pub lease_waits: u64,
    /// After the last outage: time from its end until every instance held a
    /// token issued after it, if that happened within the run.
    pub recovery_after_outage: Option<Duration>,
    /// The greatest number of fetches any instance had in flight at once.
    pub max_fetches_in_flight_per_instance: u64,
    /// The same run over time.
    pub timeline: Timeline,
}

/// About this many buckets make a [`Timeline`]; each is a whole number of
/// seconds long.
const TIMELINE_BUCKETS: u64 = 480;

/// A run over time: what happened in each of equal buckets of the run, and
/// the tokens that one instance (the first) held.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Timeline {
    /// How long each bucket is: a whole number of seconds, chosen so that a
    /// run has about 480 buckets (at least one second each).
    pub bucket: Duration,
    /// The buckets, in order from the start of the run (what happened at
    /// its very end counts in the last one, which may reach past the end).
    pub buckets: Vec<Bucket>,
    /// The tokens the first instance held, in the order it took them, with
    /// their real times (whatever its wall clock read).
    pub sample_tokens: Vec<TokenSpan>,
}

/// What happened within one bucket of a [`Timeline`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Bucket {
    /// Requests that reached the authority.
    pub requests: u64,
    /// Of those, how many failed.
    pub failures: u64,
    /// The most requests that started within any one second of the bucket.
    pub peak_requests_per_second: u64,
    /// Reads that found a fresh token.
    pub reads_fresh: u64,
    /// Reads that found a stale (still usable) token.
    pub reads_stale: u64,
    /// Reads that found only an expired token.
    pub reads_expired: u64,
    /// Reads that found no token.
    pub reads_none: u64,
}

/// One token's life, as offsets from the start of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct TokenSpan {
    /// When the authority issued it.
    pub issued: Duration,
    /// When it went stale for the instance holding it.
    pub stale: Duration,
    /// When it expired.
    pub expiry: Duration,
}

#[derive(Debug)]
enum Answer {
    Read(Option<Vec<u8>>),
    Written,
    Lease(LeaseOutcome),
    Grant(Result<TokenGrant, FetchError>),
}

#[derive(Debug)]
enum Job {
    Start,
    Timeout { generation: u64 },
    Answer { id: EffectId, answer: Answer },
}

struct Instance {
    refresher: Option<Refresher>,
    generation: u64,
    scheduled: Option<Timestamp>,
    in_flight: u64,
}

struct Shared {
    record: Option<Vec<u8>>,
    lease: Option<(usize, Timestamp)>,
}

struct Sim<'a> {
    cfg: &'a FleetConfig,
    start: Timestamp,
    queue: BinaryHeap<Reverse<(Timestamp, u64, usize)>>,
    jobs: Vec<Option<Job>>,
    instances: Vec<Instance>,
    shared: Shared,
    rng: fastrand::Rng,
    /// Requests started in each second of the run (by offset from its start).
    per_second: HashMap<u64, u32>,
    refreshes_per_second: HashMap<u64, u32>,
    report: FleetReport,
    issued_counter: u64,
    /// The real expiry of every token the authority issued.
    real_expiry: HashMap<String, Timestamp>,
    /// Length of a timeline bucket, in seconds.
    bucket_secs: u64,
    /// The last token the first instance took (for the timeline).
    sample_token: Option<String>,
}

/// Runs the simulation described by `cfg`.
pub fn simulate(cfg: &FleetConfig) -> FleetReport {
    let start = Timestamp::from_secs(1_700_000_000);
    let mut sim = Sim {
        cfg,
        start,
        queue: BinaryHeap::new(),
        jobs: Vec::new(),
        instances: Vec::new(),
        shared: Shared {
            record: None,
            lease: None,
        },
        rng: fastrand::Rng::with_seed(cfg.seed),
        per_second: HashMap::new(),
        refreshes_per_second: HashMap::new(),
        report: FleetReport::default(),
        issued_counter: 0,
        real_expiry: HashMap::new(),
        bucket_secs: cfg.duration.as_secs().div_ceil(TIMELINE_BUCKETS).max(1),
        sample_token: None,
    };
    sim.report.timeline.bucket = Duration::from_secs(sim.bucket_secs);
    sim.run();
    sim.report
}

impl Sim<'_> {
    /// What instance clocks read at real instant `now`: the wall clock with
    /// the step in force, and the monotonic clock, true.
    fn clocks(&self, now: Timestamp) -> Now {
        let into = now.duration_since(self.start);
        let offset = self
            .cfg
            .clock_steps
            .iter()
            .take_while(|s| s.at <= into)
            .last()
            .map_or(0, |s| s.offset_ms);
        let skew = Duration::from_millis(offset.unsigned_abs());
        let wall = if offset >= 0 {
            now.saturating_add(skew)
        } else {
            now.saturating_sub(skew)
        };
        let mono =
            u64::try_from(now.duration_since(Timestamp::EPOCH).as_millis()).unwrap_or(u64::MAX);
        Now::new(wall, Monotonic::from_millis(mono))
    }

    /// The timeline bucket of instant `at`, created if need be. The instant
    /// that ends the run counts in the last bucket.
    fn bucket(&mut self, at: Timestamp) -> &mut Bucket {
        let last = self.cfg.duration.saturating_sub(Duration::from_millis(1));
        let into = at.duration_since(self.start).min(last);
        let index = into.as_secs() / self.bucket_secs;
        let index = usize::try_from(index).unwrap_or(usize::MAX);
        let buckets = &mut self.report.timeline.buckets;
        if buckets.len() <= index {
            buckets.resize(index.saturating_add(1), Bucket::default());
        }
        &mut buckets[index]
    }

    fn push(&mut self, at: Timestamp, instance: usize, job: Job) {
        self.jobs.push(Some(job));
        // The job index doubles as a sequence number: equal instants keep FIFO order.
        let idx = self.jobs.len() - 1;
        self.queue.push(Reverse((at, idx as u64, instance)));
    }

    fn run(&mut self) {
        let spread = duration_millis(self.cfg.start_spread);
        for i in 0..self.cfg.instances {
            let offset = if spread == 0 {
                0
            } else {
                self.rng.u64(0..=spread)
            };
            self.instances.push(Instance {
                refresher: None,
                generation: 0,
                scheduled: None,
                in_flight: 0,
            });
            self.push(
                self.start.saturating_add(Duration::from_millis(offset)),
                i,
                Job::Start,
            );
        }
        let end = self.start.saturating_add(self.cfg.duration);
        let step = self.cfg.read_interval.max(Duration::from_millis(1));
        let mut next_read = self.start.saturating_add(step);
        let outage_end = self
            .cfg
            .authority
            .outages
            .iter()
            .map(|o| {
                self.start
                    .saturating_add(o.start.saturating_add(o.duration))
            })
            .max();
        while let Some(Reverse((at, idx, instance))) = self.queue.pop() {
            while next_read < at && next_read <= end {
                self.read_all(next_read, outage_end);
                next_read = next_read.saturating_add(step);
            }
            if at > end {
                break;
            }
            let Some(job) = self.jobs[idx as usize].take() else {
                continue;
            };
            self.run_job(at, instance, job);
        }
        while next_read <= end {
            self.read_all(next_read, outage_end);
            next_read = next_read.saturating_add(step);
        }
        self.report.peak_requests_per_second =
            self.per_second.values().copied().max().unwrap_or(0).into();
        let per_second = std::mem::take(&mut self.per_second);
        for (second, count) in per_second {
            let bucket = self.bucket(self.start.saturating_add(Duration::from_secs(second)));
            bucket.peak_requests_per_second = bucket.peak_requests_per_second.max(count.into());
        }
        // Every bucket of the run is there, even with nothing in it.
        self.bucket(end);
        self.report.peak_refreshes_per_second = self
            .refreshes_per_second
            .values()
            .copied()
            .max()
            .unwrap_or(0)
            .into();
    }

    fn read_all(&mut self, now: Timestamp, outage_end: Option<Timestamp>) {
        let before = (
            self.report.reads_fresh,
            self.report.reads_stale,
            self.report.reads_expired,
            self.report.reads_none,
        );
        self.judge_reads(now, outage_end);
        let report = &self.report;
        let counts = (
            report.reads_fresh - before.0,
            report.reads_stale - before.1,
            report.reads_expired - before.2,
            report.reads_none - before.3,
        );
        let bucket = self.bucket(now);
        bucket.reads_fresh += counts.0;
        bucket.reads_stale += counts.1;
        bucket.reads_expired += counts.2;
        bucket.reads_none += counts.3;
    }

    fn judge_reads(&mut self, now: Timestamp, outage_end: Option<Timestamp>) {
        let mut all_recovered = true;
        let clocks = self.clocks(now);
        let ttl = self.cfg.authority.token_ttl;
        for inst in &self.instances {
            let Some(r) = &inst.refresher else {
                all_recovered = false;
                continue;
            };
            // Judged by real time: a token served past its real expiry is an
            // expired read, whatever the instance's clocks say.
            let served = r.token().map(|t| {
                let real_expiry = self
                    .real_expiry
                    .get(t.access_token.expose_secret())
                    .copied()
                    .unwrap_or(Timestamp::EPOCH);
                let state = if now >= real_expiry {
                    TokenState::Expired
                } else {
                    r.status(clocks).token_state.unwrap_or(TokenState::Expired)
                };
                (state, real_expiry.saturating_sub(ttl))
            });
            match served {
                Some((TokenState::Fresh, issued)) => {
                    self.report.reads_fresh += 1;
                    all_recovered &= outage_end.is_some_and(|e| issued >= e);
                }
                Some((TokenState::Stale, issued)) => {
                    self.report.reads_stale += 1;
                    all_recovered &= outage_end.is_some_and(|e| issued >= e);
                }
                Some(_) => {
                    self.report.reads_expired += 1;
                    all_recovered = false;
                }
                None => {
                    self.report.reads_none += 1;
                    all_recovered = false;
                }
            }
        }
        if let Some(e) = outage_end
            && all_recovered
            && now >= e
            && self.report.recovery_after_outage.is_none()
        {
            self.report.recovery_after_outage = Some(now.duration_since(e));
        }
    }

    fn run_job(&mut self, now: Timestamp, i: usize, job: Job) {
        match job {
            Job::Start => {
                let mut config = RefresherConfig::custom(CacheKey::custom("sim", &[]))
                    .lifetime_policy(self.cfg.policy.clone())
                    .jitter(self.cfg.jitter)
                    .backoff(self.cfg.backoff.clone());
                if self.cfg.shared_cache {
                    config = config.layer(Layer::new("shared").with_lease(self.cfg.lease));
                }
                let seed = self.rng.u64(..);
                let clocks = self.clocks(now);
                self.instances[i].refresher = Some(Refresher::new(config, seed, clocks));
            }
            Job::Timeout { generation } => {
                if generation != self.instances[i].generation {
                    return;
                }
                self.instances[i].scheduled = None;
                let clocks = self.clocks(now);
                if let Some(r) = self.instances[i].refresher.as_mut() {
                    r.handle_timeout(clocks);
                }
            }
            Job::Answer { id, answer } => {
                let now = self.clocks(now);
                let inst = &mut self.instances[i];
                let Some(r) = inst.refresher.as_mut() else {
                    return;
                };
                let result = match answer {
                    Answer::Read(bytes) => r.handle_cache_read(now, id, Ok(bytes)),
                    Answer::Written => r.handle_cache_written(now, id, Ok(())),
                    Answer::Lease(outcome) => r.handle_lease(now, id, outcome),
                    Answer::Grant(result) => {
                        inst.in_flight -= 1;
                        r.handle_grant(now, id, result)
                    }
                };
                // The simulation only answers what was asked.
                debug_assert!(result.is_ok(), "{result:?}");
            }
        }
        self.drain(now, i);
    }

    fn drain(&mut self, now: Timestamp, i: usize) {
        let cache_at = now.saturating_add(self.cfg.cache_latency);
        loop {
            let Some(effect) = self.instances[i]
                .refresher
                .as_mut()
                .and_then(|r| r.poll_effect())
            else {
                break;
            };
            match effect {
                Effect::ReadCache { id, .. } => {
                    let bytes = self.shared.record.clone();
                    self.push(
                        cache_at,
                        i,
                        Job::Answer {
                            id,
                            answer: Answer::Read(bytes),
                        },
                    );
                }
                Effect::WriteCache { id, record, .. } => {
                    self.shared.record = Some(record.bytes().to_vec());
                    self.push(
                        cache_at,
                        i,
                        Job::Answer {
                            id,
                            answer: Answer::Written,
                        },
                    );
                }
                Effect::AcquireLease { id, ttl, .. } => {
                    let outcome = match self.shared.lease {
                        Some((holder, until)) if holder != i && until > now => {
                            LeaseOutcome::HeldByOther
                        }
                        _ => {
                            self.shared.lease = Some((i, now.saturating_add(ttl)));
                            LeaseOutcome::Acquired
                        }
                    };
                    self.push(
                        cache_at,
                        i,
                        Job::Answer {
                            id,
                            answer: Answer::Lease(outcome),
                        },
                    );
                }
                Effect::ReleaseLease { .. } => {
                    if self.shared.lease.is_some_and(|(holder, _)| holder == i) {
                        self.shared.lease = None;
                    }
                }
                Effect::Fetch { id, .. } => {
                    let refresh = self.instances[i]
                        .refresher
                        .as_ref()
                        .is_some_and(|r| r.token().is_some());
                    let answer = self.authority(now, refresh);
                    let inst = &mut self.instances[i];
                    inst.in_flight += 1;
                    self.report.max_fetches_in_flight_per_instance = self
                        .report
                        .max_fetches_in_flight_per_instance
                        .max(inst.in_flight);
                    let at = now.saturating_add(self.cfg.authority.latency);
                    self.push(
                        at,
                        i,
                        Job::Answer {
                            id,
                            answer: Answer::Grant(answer),
                        },
                    );
                }
                Effect::SendRequest { .. } => {
                    unreachable!("simulated refreshers use a custom source")
                }
            }
        }
        while let Some(event) = self.instances[i]
            .refresher
            .as_mut()
            .and_then(|r| r.poll_event())
        {
            if i == 0
                && let Event::TokenChanged { token, .. } = &event
            {
                self.sample(token);
            }
            match event {
                Event::TokenChanged {
                    origin: crate::refresher::Origin::Cache { .. },
                    ..
                } => self.report.cache_hits += 1,
                Event::LeaseBusy { .. } => self.report.lease_waits += 1,
                _ => {}
            }
        }
        let clocks = self.clocks(now);
        let inst = &mut self.instances[i];
        let next = inst
            .refresher
            .as_ref()
            .and_then(|r| r.poll_sleep(clocks))
            .map(|sleep| now.saturating_add(sleep));
        if next != inst.scheduled {
            inst.generation += 1;
            inst.scheduled = next;
            let generation = inst.generation;
            if let Some(at) = next {
                self.push(at, i, Job::Timeout { generation });
            }
        }
    }

    /// Notes a token the first instance took, with its real times.
    fn sample(&mut self, token: &crate::token::TokenRecord) {
        let secret = token.access_token.expose_secret();
        if self.sample_token.as_deref() == Some(secret) {
            return;
        }
        let Some(&expiry) = self.real_expiry.get(secret) else {
            return;
        };
        self.sample_token = Some(secret.to_owned());
        let issued = expiry.saturating_sub(self.cfg.authority.token_ttl);
        let fresh_for = token.stale.duration_since(token.issued);
        let offset = |t: Timestamp| t.duration_since(self.start);
        self.report.timeline.sample_tokens.push(TokenSpan {
            issued: offset(issued),
            stale: offset(issued.saturating_add(fresh_for)).min(offset(expiry)),
            expiry: offset(expiry),
        });
    }

    fn authority(&mut self, now: Timestamp, refresh: bool) -> Result<TokenGrant, FetchError> {
        self.report.authority_requests += 1;
        self.bucket(now).requests += 1;
        let second = now.duration_since(self.start).as_secs();
        let slot = self.per_second.entry(second).or_default();
        *slot = slot.saturating_add(1);
        if refresh {
            let slot = self.refreshes_per_second.entry(second).or_default();
            *slot = slot.saturating_add(1);
        }
        let offset = now.duration_since(self.start);
        let down = self
            .cfg
            .authority
            .outages
            .iter()
            .any(|o| offset >= o.start && offset < o.start.saturating_add(o.duration));
        let fails = self.cfg.authority.failure_rate > 0.0
            && self.rng.f64() < self.cfg.authority.failure_rate;
        if down || fails {
            self.report.authority_failures += 1;
            self.bucket(now).failures += 1;
            return Err(FetchError::Source {
                message: "503 Service Unavailable".into(),
                class: ErrorClass::Transient,
            });
        }
        self.issued_counter += 1;
        let token = format!("sim-token-{}", self.issued_counter);
        self.real_expiry.insert(
            token.clone(),
            now.saturating_add(self.cfg.authority.token_ttl),
        );
        Ok(TokenGrant::bearer(
            AccessToken::new(token),
            Some(self.cfg.authority.token_ttl),
        ))
    }
}
