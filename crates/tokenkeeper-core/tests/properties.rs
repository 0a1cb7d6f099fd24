//! Property tests of the refresher over random lifetimes, clocks, cache
//! layouts and failure sequences, driven by a random but faithful driver.

use std::collections::VecDeque;
use std::time::Duration;

use proptest::prelude::*;
use tokenkeeper_core::{
    AccessToken, BackoffPolicy, CacheError, CacheErrorKind, CacheKey, Effect, EffectId, ErrorClass,
    Event, FetchError, Input, Jitter, Layer, LeaseOutcome, LeaseSettings, OAuthError, RefreshToken,
    Refresher, RefresherConfig, Timestamp, TokenGrant, Wait,
};

const T0: Timestamp = Timestamp::from_secs(1_700_000_000);

#[derive(Debug, Clone)]
enum Answer {
    Token { life_ms: u64 },
    Transient { retry_after_ms: Option<u64> },
    Permanent,
}

#[derive(Debug, Clone)]
enum Clock {
    /// Jump to the refresher's deadline, plus a little.
    ToDeadline { extra_ms: u64 },
    /// Wake up early (a spurious timeout).
    Early { fraction: f64 },
    /// The clock steps back.
    Back { ms: u64 },
}

#[derive(Debug, Clone)]
struct Step {
    clock: Clock,
    /// How the next fetch is answered.
    answer: Answer,
    /// Whether answers to outstanding fetches come now or after the next clock move.
    answer_now: bool,
    lease_free: bool,
    cache_fails: bool,
    /// The effects of this step are never answered: the refresher must time
    /// them out by itself.
    unanswered: bool,
}

fn answer() -> impl Strategy<Value = Answer> {
    prop_oneof![
        4 => (1_000u64..7_200_000).prop_map(|life_ms| Answer::Token { life_ms }),
        3 => proptest::option::of(0u64..600_000)
            .prop_map(|retry_after_ms| Answer::Transient { retry_after_ms }),
        1 => Just(Answer::Permanent),
    ]
}

fn clock(backwards: bool) -> BoxedStrategy<Clock> {
    let forward = prop_oneof![
        4 => (0u64..3_000).prop_map(|extra_ms| Clock::ToDeadline { extra_ms }),
        2 => (0.0f64..1.0).prop_map(|fraction| Clock::Early { fraction }),
    ];
    if backwards {
        prop_oneof![
            5 => forward,
            1 => (1u64..86_400_000).prop_map(|ms| Clock::Back { ms }),
        ]
        .boxed()
    } else {
        forward.boxed()
    }
}

fn steps(backwards: bool) -> impl Strategy<Value = Vec<Step>> {
    proptest::collection::vec(
        (
            clock(backwards),
            answer(),
            proptest::bool::weighted(0.7),
            any::<bool>(),
            proptest::bool::weighted(0.1),
            proptest::bool::weighted(0.15),
        )
            .prop_map(
                |(clock, answer, answer_now, lease_free, cache_fails, unanswered)| Step {
                    clock,
                    answer,
                    answer_now,
                    lease_free,
                    cache_fails,
                    unanswered,
                },
            ),
        1..120,
    )
}

/// What the driver observed, for the assertions.
#[derive(Default)]
struct Log {
    fetch_starts: Vec<Timestamp>,
    /// Forward clock movement since the last fetch start.
    forward_since_fetch: Duration,
    last_failure: Option<(Timestamp, Option<Timestamp>)>,
    succeeded_since_failure: bool,
    max_in_flight: usize,
    /// Fetches that timed out because nobody answered them.
    timeouts: usize,
}

struct Driver {
    r: Refresher,
    now: Timestamp,
    store: Option<Vec<u8>>,
    /// Fetches the driver will answer (perhaps too late).
    pending_fetches: VecDeque<EffectId>,
    /// Every fetch asked for, while the refresher may still await it.
    fetches: Vec<EffectId>,
    other_effects: VecDeque<Effect>,
    log: Log,
    backoff: BackoffPolicy,
    /// The cache and fetch timeouts.
    timeouts: (Duration, Duration),
    monotonic: bool,
    max_now: Timestamp,
    /// Whether the source rotates refresh tokens, and the newest it handed out.
    rotating: bool,
    latest_refresh_token: Option<String>,
    rotations: u64,
}

impl Driver {
    fn check_invariants(&mut self) {
        if let Some(t) = self.r.token() {
            assert!(
                self.now < t.expiry,
                "served a token at {} that expired at {}",
                self.now,
                t.expiry
            );
        }
        let r = &self.r;
        self.fetches.retain(|&id| r.effect_deadline(id).is_some());
        let in_flight = self.fetches.len();
        assert!(in_flight <= 1, "two fetches in flight");
        self.log.max_in_flight = self.log.max_in_flight.max(in_flight);
        if !self.r.is_finished() {
            assert_eq!(self.r.status(self.now).fetch_in_flight, in_flight == 1);
        }
        match self.r.poll_wait() {
            Wait::Finished => assert!(self.r.is_finished()),
            wait => {
                if let Wait::Until(_) = wait {
                    assert_eq!(in_flight, 0, "a fetch is out, yet nothing is awaited");
                }
                if let Wait::Answer { deadline } = wait {
                    // Whatever the clock did, an answer is awaited no longer
                    // than the longest effect timeout.
                    let longest = self.timeouts.0.max(self.timeouts.1);
                    assert!(
                        deadline <= self.now.saturating_add(longest),
                        "{deadline} is more than {longest:?} after {}",
                        self.now
                    );
                }
                let deadline = wait.deadline().expect("a running refresher has a deadline");
                assert_eq!(self.r.poll_timeout(), Some(deadline));
                // Everything due at `now` was done: no effect left past its
                // deadline, no timer already run out.
                assert!(
                    deadline > self.now,
                    "{wait:?} at {}: something due was not done",
                    self.now
                );
                // Bounded by the longest of: token life, backoff cap, Retry-After
                // cap, lease TTL, effect timeouts, counted from the latest time
                // seen (after a step back, absolute deadlines are further away;
                // adapters wake every minute regardless).
                let bound = self.max_now.saturating_add(Duration::from_secs(3 * 3600));
                assert!(
                    deadline <= bound,
                    "deadline {deadline} too far from {}",
                    self.max_now
                );
            }
        }
    }

    fn set_clock(&mut self, t: Timestamp) {
        if t > self.now {
            self.log.forward_since_fetch += t.duration_since(self.now);
        } else if t < self.now {
            self.monotonic = false;
        }
        self.now = t;
        self.max_now = self.max_now.max(t);
    }

    fn pump(&mut self, step: &Step) {
        loop {
            while let Some(e) = self.r.poll_effect() {
                match e {
                    Effect::Fetch { id, refresh_token } => {
                        if !self.log.fetch_starts.is_empty() {
                            // No request storm: between two fetches the clock must
                            // have moved forward by at least the floor.
                            assert!(
                                self.log.forward_since_fetch >= self.backoff.floor(),
                                "fetch after only {:?} of forward time",
                                self.log.forward_since_fetch
                            );
                        }
                        if let (Some((failed_at, retry_after)), true) =
                            (self.log.last_failure, self.monotonic)
                        {
                            assert!(self.now.duration_since(failed_at) >= self.backoff.floor());
                            if let Some(ra) = retry_after {
                                let capped = ra
                                    .min(failed_at.saturating_add(self.backoff.max_retry_after()));
                                assert!(
                                    self.now >= capped,
                                    "retried at {} before Retry-After {capped}",
                                    self.now
                                );
                            }
                        }
                        if self.monotonic {
                            // The newest rotation is what gets spent, even one
                            // that came in an answer too late to count.
                            assert_eq!(
                                refresh_token.as_ref().map(|t| t.expose_secret().to_owned()),
                                self.latest_refresh_token,
                                "a rotated refresh token was lost"
                            );
                        }
                        self.log.fetch_starts.push(self.now);
                        self.log.forward_since_fetch = Duration::ZERO;
                        self.fetches.push(id);
                        if !step.unanswered {
                            self.pending_fetches.push_back(id);
                        }
                    }
                    other => self.other_effects.push_back(other),
                }
            }
            while let Some(ev) = self.r.poll_event() {
                if let Event::FetchFailed {
                    consecutive_failures,
                    error,
                    ..
                } = ev
                {
                    if self.log.succeeded_since_failure {
                        assert_eq!(
                            consecutive_failures, 1,
                            "backoff did not reset after success"
                        );
                    }
                    self.log.succeeded_since_failure = false;
                    if let FetchError::Timeout { .. } = error {
                        self.log.timeouts += 1;
                        self.log.last_failure = Some((self.now, None));
                    }
                }
            }
            self.check_invariants();
            let Some(effect) = self.other_effects.pop_front() else {
                break;
            };
            let now = self.now;
            if step.unanswered && !matches!(effect, Effect::ReleaseLease { .. }) {
                // Never answered: its deadline must take care of it.
                assert!(self.r.poll_wait().deadline().is_some());
                continue;
            }
            match effect {
                Effect::ReadCache { id, .. } => {
                    let result = if step.cache_fails {
                        Err(CacheError::new(CacheErrorKind::Unavailable, "down"))
                    } else {
                        Ok(self.store.clone())
                    };
                    self.r.handle(now, Input::CacheRead { id, result }).unwrap();
                }
                Effect::WriteCache { id, record, .. } => {
                    self.store = Some(record.bytes().to_vec());
                    self.r.handle_cache_written(now, id, Ok(())).unwrap();
                }
                Effect::AcquireLease { id, .. } => {
                    let outcome = if step.lease_free {
                        LeaseOutcome::Acquired
                    } else {
                        LeaseOutcome::HeldByOther
                    };
                    self.r.handle(now, Input::Lease { id, outcome }).unwrap();
                }
                Effect::ReleaseLease { .. } => {}
                other => panic!("unexpected effect {other:?}"),
            }
        }
    }

    fn answer_fetch(&mut self, answer: &Answer) {
        let Some(id) = self.pending_fetches.pop_front() else {
            return;
        };
        let now = self.now;
        // Still awaited (even if its deadline has come)? Otherwise the answer
        // is too late and is ignored.
        let counts = self.r.effect_deadline(id).is_some();
        let result = match answer {
            Answer::Token { life_ms } => {
                if counts {
                    self.log.succeeded_since_failure = true;
                    self.log.last_failure = None;
                }
                let mut grant = TokenGrant::bearer(
                    AccessToken::new(format!("t{}", now.as_millis())),
                    Some(Duration::from_millis(*life_ms)),
                );
                if self.rotating && !self.r.is_finished() {
                    self.rotations += 1;
                    let rt = format!("rt-{}", self.rotations);
                    grant = grant.with_refresh_token(RefreshToken::new(rt.clone()));
                    self.latest_refresh_token = Some(rt);
                }
                Ok(grant)
            }
            Answer::Transient { retry_after_ms } => {
                let retry_after =
                    retry_after_ms.map(|ms| now.saturating_add(Duration::from_millis(ms)));
                if counts {
                    self.log.last_failure = Some((now, retry_after));
                }
                Err(FetchError::Status {
                    status: 503,
                    snippet: String::new(),
                    retry_after,
                })
            }
            Answer::Permanent => {
                if counts {
                    self.log.last_failure = Some((now, None));
                }
                Err(FetchError::OAuth {
                    status: 401,
                    error: OAuthError::new("invalid_client", None),
                    retry_after: None,
                })
            }
        };
        if let Err(e) = &result {
            let expected = if matches!(answer, Answer::Permanent) {
                ErrorClass::Permanent
            } else {
                ErrorClass::Transient
            };
            assert_eq!(e.class(), expected);
        }
        self.r.handle(now, Input::Grant { id, result }).unwrap();
    }
}

fn run(layout: u8, jitter_ms: u64, seed: u64, steps: &[Step]) {
    let rotating = layout & 4 != 0;
    let mut config = RefresherConfig::custom(CacheKey::custom("prop", &[]))
        .jitter(Jitter::up_to(Duration::from_millis(jitter_ms)));
    match layout & 3 {
        1 => config = config.layer(Layer::new("plain")),
        2 => config = config.layer(Layer::new("leased").with_lease(LeaseSettings::default())),
        3 => {
            config = config
                .layer(Layer::new("plain"))
                .layer(Layer::new("leased").with_lease(LeaseSettings::default()))
        }
        _ => {}
    }
    if rotating {
        config = config.initial_refresh_token(RefreshToken::new("rt-0"));
    }
    let backoff = config.backoff_policy().clone();
    let grace = config.get_shutdown_grace();
    let timeouts = (config.get_cache_timeout(), config.get_fetch_timeout());
    let mut d = Driver {
        r: Refresher::new(config, seed, T0),
        now: T0,
        store: None,
        pending_fetches: VecDeque::new(),
        fetches: Vec::new(),
        other_effects: VecDeque::new(),
        log: Log::default(),
        backoff,
        timeouts,
        monotonic: true,
        max_now: T0,
        rotating,
        latest_refresh_token: rotating.then(|| "rt-0".to_owned()),
        rotations: 0,
    };
    for step in steps {
        d.pump(step);
        if step.answer_now {
            d.answer_fetch(&step.answer);
            d.pump(step);
        }
        let deadline = d.r.poll_wait().deadline().expect("running").max(d.now);
        let target = match step.clock {
            Clock::ToDeadline { extra_ms } => {
                deadline.saturating_add(Duration::from_millis(extra_ms))
            }
            Clock::Early { fraction } => {
                let span = deadline.duration_since(d.now).mul_f64(fraction);
                d.now.saturating_add(span)
            }
            Clock::Back { ms } => d.now.saturating_sub(Duration::from_millis(ms)),
        };
        d.set_clock(target);
        d.r.handle(d.now, Input::Timeout).unwrap();
        d.pump(step);
        if !step.answer_now {
            d.answer_fetch(&step.answer);
            d.pump(step);
        }
    }
    assert!(d.log.max_in_flight <= 1);

    // Shut down: whatever is outstanding, the refresher finishes within the
    // grace, answered or not.
    let stop_at = d.now;
    d.r.shutdown(stop_at);
    let last = Step {
        clock: Clock::ToDeadline { extra_ms: 0 },
        answer: Answer::Token { life_ms: 3_600_000 },
        answer_now: true,
        lease_free: true,
        cache_fails: false,
        unanswered: steps.last().is_some_and(|s| s.unanswered),
    };
    for _ in 0..10 {
        d.pump(&last);
        if d.r.is_finished() {
            break;
        }
        assert!(d.r.is_stopping());
        d.answer_fetch(&last.answer);
        d.pump(&last);
        if let Some(deadline) = d.r.poll_wait().deadline() {
            d.set_clock(deadline.max(d.now));
            d.r.handle(d.now, Input::Timeout).unwrap();
        }
    }
    assert!(d.r.is_finished(), "still running after shutdown");
    assert!(d.now <= stop_at.saturating_add(grace));
    assert_eq!(d.r.poll_wait(), Wait::Finished);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Never an expired token served, never two fetches in flight, every
    /// deadline finite and bounded (even with effects never answered), no
    /// retry before the floor or Retry-After, backoff reset after success, no
    /// rotated refresh token lost, a shutdown finished within its grace.
    #[test]
    fn refresher_invariants_hold(
        layout in 0u8..8,
        jitter_ms in prop_oneof![Just(0u64), 0u64..600_000],
        seed in any::<u64>(),
        steps in steps(false),
    ) {
        run(layout, jitter_ms, seed, &steps);
    }

    /// Clocks that step back (NTP, suspended VMs) never cause a request storm.
    #[test]
    fn time_going_backwards_never_storms(
        layout in 0u8..8,
        jitter_ms in 0u64..600_000,
        seed in any::<u64>(),
        steps in steps(true),
    ) {
        run(layout, jitter_ms, seed, &steps);
    }
}
