//! Property tests of the refresher over random lifetimes, clocks, cache
//! layouts and failure sequences, driven by a random but faithful driver.

use std::collections::VecDeque;
use std::time::Duration;

use proptest::prelude::*;
use tokenkeeper_core::{
    AccessToken, BackoffPolicy, CacheError, CacheErrorKind, CacheKey, Effect, EffectId, ErrorClass,
    Event, FetchError, Jitter, Layer, LeaseOutcome, LeaseSettings, OAuthError, Refresher,
    RefresherConfig, Timestamp, TokenGrant,
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
            any::<bool>(),
            any::<bool>(),
            proptest::bool::weighted(0.1),
        )
            .prop_map(
                |(clock, answer, answer_now, lease_free, cache_fails)| Step {
                    clock,
                    answer,
                    answer_now,
                    lease_free,
                    cache_fails,
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
}

struct Driver {
    r: Refresher,
    now: Timestamp,
    store: Option<Vec<u8>>,
    pending_fetches: VecDeque<EffectId>,
    other_effects: VecDeque<Effect>,
    log: Log,
    backoff: BackoffPolicy,
    monotonic: bool,
    max_now: Timestamp,
}

impl Driver {
    fn check_invariants(&self) {
        if let Some(t) = self.r.token() {
            assert!(
                self.now < t.expiry,
                "served a token at {} that expired at {}",
                self.now,
                t.expiry
            );
        }
        assert!(self.pending_fetches.len() <= 1, "two fetches in flight");
        if self.pending_fetches.is_empty() && self.other_effects.is_empty() && !self.r.is_finished()
        {
            let deadline = self
                .r
                .poll_timeout()
                .expect("an idle refresher has a deadline");
            // Bounded by the longest of: token life, backoff cap, Retry-After
            // cap, lease TTL, counted from the latest time seen (after a step
            // back, absolute deadlines are further away; adapters wake every
            // minute regardless).
            let bound = self.max_now.saturating_add(Duration::from_secs(3 * 3600));
            assert!(
                deadline <= bound,
                "deadline {deadline} too far from {}",
                self.max_now
            );
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
                    Effect::Fetch { id, .. } => {
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
                        self.log.fetch_starts.push(self.now);
                        self.log.forward_since_fetch = Duration::ZERO;
                        self.pending_fetches.push_back(id);
                        self.log.max_in_flight =
                            self.log.max_in_flight.max(self.pending_fetches.len());
                    }
                    other => self.other_effects.push_back(other),
                }
            }
            while let Some(ev) = self.r.poll_event() {
                if let Event::FetchFailed {
                    consecutive_failures,
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
                }
            }
            self.check_invariants();
            let Some(effect) = self.other_effects.pop_front() else {
                break;
            };
            let now = self.now;
            match effect {
                Effect::ReadCache { id, .. } => {
                    let result = if step.cache_fails {
                        Err(CacheError::new(CacheErrorKind::Unavailable, "down"))
                    } else {
                        Ok(self.store.clone())
                    };
                    self.r.handle_cache_read(now, id, result).unwrap();
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
                    self.r.handle_lease(now, id, outcome).unwrap();
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
        let result = match answer {
            Answer::Token { life_ms } => {
                self.log.succeeded_since_failure = true;
                self.log.last_failure = None;
                Ok(TokenGrant::bearer(
                    AccessToken::new(format!("t{}", now.as_millis())),
                    Some(Duration::from_millis(*life_ms)),
                ))
            }
            Answer::Transient { retry_after_ms } => {
                let retry_after =
                    retry_after_ms.map(|ms| now.saturating_add(Duration::from_millis(ms)));
                self.log.last_failure = Some((now, retry_after));
                Err(FetchError::Status {
                    status: 503,
                    snippet: String::new(),
                    retry_after,
                })
            }
            Answer::Permanent => {
                self.log.last_failure = Some((now, None));
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
        self.r.handle_grant(now, id, result).unwrap();
    }
}

fn run(layout: u8, jitter_ms: u64, seed: u64, steps: &[Step]) {
    let mut config = RefresherConfig::custom(CacheKey::custom("prop", &[]))
        .jitter(Jitter::up_to(Duration::from_millis(jitter_ms)));
    match layout {
        1 => config = config.layer(Layer::new("plain")),
        2 => config = config.layer(Layer::new("leased").with_lease(LeaseSettings::default())),
        3 => {
            config = config
                .layer(Layer::new("plain"))
                .layer(Layer::new("leased").with_lease(LeaseSettings::default()))
        }
        _ => {}
    }
    let backoff = config.backoff_policy().clone();
    let mut d = Driver {
        r: Refresher::new(config, seed, T0),
        now: T0,
        store: None,
        pending_fetches: VecDeque::new(),
        other_effects: VecDeque::new(),
        log: Log::default(),
        backoff,
        monotonic: true,
        max_now: T0,
    };
    for step in steps {
        d.pump(step);
        if step.answer_now {
            d.answer_fetch(&step.answer);
            d.pump(step);
        }
        let target = match step.clock {
            Clock::ToDeadline { extra_ms } => {
                d.r.poll_timeout()
                    .unwrap_or(d.now)
                    .max(d.now)
                    .saturating_add(Duration::from_millis(extra_ms))
            }
            Clock::Early { fraction } => {
                let deadline = d.r.poll_timeout().unwrap_or(d.now).max(d.now);
                let span = deadline.duration_since(d.now).mul_f64(fraction);
                d.now.saturating_add(span)
            }
            Clock::Back { ms } => d.now.saturating_sub(Duration::from_millis(ms)),
        };
        d.set_clock(target);
        d.r.handle_timeout(d.now);
        d.pump(step);
        if !step.answer_now {
            d.answer_fetch(&step.answer);
            d.pump(step);
        }
    }
    assert!(d.log.max_in_flight <= 1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Never an expired token served, never two fetches in flight, every
    /// deadline finite and bounded, no retry before the floor or Retry-After,
    /// backoff reset after success.
    #[test]
    fn refresher_invariants_hold(
        layout in 0u8..4,
        jitter_ms in prop_oneof![Just(0u64), 0u64..600_000],
        seed in any::<u64>(),
        steps in steps(false),
    ) {
        run(layout, jitter_ms, seed, &steps);
    }

    /// Clocks that step back (NTP, suspended VMs) never cause a request storm.
    #[test]
    fn time_going_backwards_never_storms(
        layout in 0u8..4,
        jitter_ms in 0u64..600_000,
        seed in any::<u64>(),
        steps in steps(true),
    ) {
        run(layout, jitter_ms, seed, &steps);
    }
}
