//! A refresher whose wall clock steps (NTP corrections, a VM restored, a bad
//! clock) while its monotonic clock runs true, driven as a real driver drives
//! it: sleep for `poll_sleep(now)`, at most a minute, in virtual time.
//!
//! With 1 h tokens over 48 h of real time, whatever the steps (−2 h, −1 day,
//! +10 years then corrected; during a fetch, during a lease wait, during
//! backoff): at most one minute without a usable token per step, never a
//! token served past its real lifetime, never a spent refresh token sent.

use std::collections::VecDeque;
use std::time::Duration;

use proptest::prelude::*;
use tokenkeeper_core::{
    AccessToken, CacheKey, Effect, EffectId, Event, FetchError, Input, Layer, LeaseOutcome,
    LeaseSettings, Monotonic, Now, RefreshNow, RefreshToken, Refresher, RefresherConfig, Timestamp,
    TokenGrant,
};

const SEC: u64 = 1_000;
const MIN: u64 = 60 * SEC;
const HOUR: u64 = 60 * MIN;
const DAY: u64 = 24 * HOUR;
const YEAR: u64 = 365 * DAY;
/// The wall time at real time zero.
const BASE_WALL: u64 = 1_700_000_000_000;
/// How long the authority takes to answer.
const LATENCY: u64 = 200;
/// The longest a driver sleeps.
const WAKE: u64 = MIN;
const LIFETIME: u64 = HOUR;
const RUN: u64 = 48 * HOUR;

/// A change of the wall clock at a real instant: it then reads real time
/// plus `offset` milliseconds.
#[derive(Debug, Clone, Copy)]
struct Step {
    at: u64,
    offset: i64,
}

/// The authority's outage, in real time.
#[derive(Debug, Clone, Copy)]
struct Outage {
    from: u64,
    to: u64,
}

#[derive(Debug, Default)]
struct Report {
    /// Real time without a usable token, after the first one.
    without_token_ms: u64,
    /// The longest a token was served after its real expiry.
    overserved_ms: u64,
    /// Requests that sent a refresh token already spent.
    reuses: u32,
    requests: u32,
    /// Real instants at which a token was published.
    published: Vec<u64>,
    /// Real instants at which a fetch was sent and failed (an outage).
    failed_fetches: Vec<u64>,
    /// Real instants at which the lease was refused (another holds it).
    lease_refused: Vec<u64>,
    /// Each forced refresh: the real instant, the wall clock then, and the
    /// answer.
    forced: Vec<(u64, Timestamp, RefreshNow)>,
}

struct World {
    real: u64,
    steps: VecDeque<Step>,
    offset: i64,
    outage: Option<Outage>,
    /// The refresh token the authority will accept next.
    valid_rt: String,
    rt_counter: u32,
    /// Real expiry of each token the authority issued, by access token.
    issued: Vec<(String, u64)>,
    store: Option<Vec<u8>>,
    /// Who holds the lease, until when (real time).
    lease: Option<(&'static str, u64)>,
    /// Answers due at a real instant.
    deferred: Vec<(u64, EffectId, Result<TokenGrant, FetchError>)>,
    served: Option<(String, u64)>,
    first_token_at: Option<u64>,
    /// Step the clock by this offset as the first fetch after this real
    /// instant is sent: a step while the fetch is outstanding.
    step_on_fetch: Option<(u64, i64)>,
    /// Hand the refresher the wall clock only (`Now::from(wall)`), as
    /// drivers did before the monotonic reading existed.
    wall_only: bool,
    /// Real instants at which the program asks for a refresh
    /// (`Refresher::refresh_now`).
    forced: VecDeque<u64>,
    report: Report,
}

impl World {
    fn new(steps: Vec<Step>, outage: Option<Outage>) -> Self {
        World {
            real: 0,
            steps: steps.into(),
            offset: 0,
            outage,
            valid_rt: "rt-0".into(),
            rt_counter: 0,
            issued: Vec::new(),
            store: None,
            lease: None,
            deferred: Vec::new(),
            served: None,
            first_token_at: None,
            step_on_fetch: None,
            wall_only: false,
            forced: VecDeque::new(),
            report: Report::default(),
        }
    }

    fn now(&self) -> Now {
        let wall = Timestamp::from_millis(
            (BASE_WALL as i64 + self.real as i64 + self.offset).max(0) as u64,
        );
        if self.wall_only {
            Now::from(wall)
        } else {
            Now::new(wall, Monotonic::from_millis(self.real))
        }
    }

    /// The authority answers a fetch that arrived now.
    fn answer(&mut self, refresh_token: Option<RefreshToken>) -> Result<TokenGrant, FetchError> {
        self.report.requests += 1;
        if self
            .outage
            .is_some_and(|o| (o.from..o.to).contains(&self.real))
        {
            self.report.failed_fetches.push(self.real);
            return Err(FetchError::Transport {
                message: "down".into(),
            });
        }
        let sent = refresh_token.map(|t| t.expose_secret().to_owned());
        if sent.as_deref() != Some(self.valid_rt.as_str()) {
            self.report.reuses += 1;
            return Err(FetchError::Source {
                message: "invalid_grant".into(),
                class: tokenkeeper_core::ErrorClass::Permanent,
            });
        }
        self.rt_counter += 1;
        self.valid_rt = format!("rt-{}", self.rt_counter);
        let access = format!("at-{}", self.rt_counter);
        self.issued.push((access.clone(), self.real + LIFETIME));
        Ok(TokenGrant::bearer(
            AccessToken::new(access),
            Some(Duration::from_millis(LIFETIME)),
        )
        .with_refresh_token(RefreshToken::new(self.valid_rt.clone())))
    }

    fn real_expiry(&self, access: &str) -> u64 {
        self.issued
            .iter()
            .find(|(a, _)| a == access)
            .map_or(0, |(_, e)| *e)
    }

    fn carry_out(&mut self, r: &mut Refresher, me: &'static str) {
        loop {
            let mut idle = true;
            while let Some(effect) = r.poll_effect() {
                idle = false;
                let now = self.now();
                match effect {
                    Effect::ReadCache { id, .. } => r
                        .handle(
                            now,
                            Input::CacheRead {
                                id,
                                result: Ok(self.store.clone()),
                            },
                        )
                        .unwrap(),
                    Effect::WriteCache { id, record, .. } => {
                        self.store = Some(record.bytes().to_vec());
                        r.handle(now, Input::CacheWritten { id, result: Ok(()) })
                            .unwrap();
                    }
                    Effect::AcquireLease { id, ttl, .. } => {
                        let free = match self.lease {
                            None => true,
                            Some((who, until)) => who == me || until <= self.real,
                        };
                        let outcome = if free {
                            self.lease = Some((me, self.real + ttl.as_millis() as u64));
                            LeaseOutcome::Acquired
                        } else {
                            self.report.lease_refused.push(self.real);
                            LeaseOutcome::HeldByOther
                        };
                        r.handle(now, Input::Lease { id, outcome }).unwrap();
                    }
                    Effect::ReleaseLease { .. } => {
                        if self.lease.is_some_and(|(who, _)| who == me) {
                            self.lease = None;
                        }
                    }
                    Effect::Fetch { id, refresh_token } => {
                        if let Some((after, offset)) = self.step_on_fetch
                            && self.real >= after
                        {
                            self.offset = offset;
                            self.step_on_fetch = None;
                        }
                        let result = self.answer(refresh_token);
                        self.deferred.push((self.real + LATENCY, id, result));
                    }
                    other => panic!("unexpected effect {other:?}"),
                }
            }
            while let Some(event) = r.poll_event() {
                idle = false;
                match event {
                    Event::TokenChanged { token, .. } => {
                        let access = token.access_token.expose_secret().to_owned();
                        let expiry = self.real_expiry(&access);
                        self.served = Some((access, expiry));
                        self.first_token_at.get_or_insert(self.real);
                        self.report.published.push(self.real);
                    }
                    Event::TokenExpired { .. } => self.served = None,
                    _ => {}
                }
            }
            if idle {
                return;
            }
        }
    }

    /// Advances real time to `until`, sampling what is served each second.
    fn advance(&mut self, until: u64) {
        while self.real < until {
            let next = (self.real / SEC + 1) * SEC;
            let next = next.min(until);
            let elapsed = next - self.real;
            if self.first_token_at.is_some() {
                match &self.served {
                    Some((_, expiry)) if *expiry > self.real => {}
                    Some((_, expiry)) => {
                        let over = self.real + elapsed - expiry;
                        self.report.overserved_ms = self.report.overserved_ms.max(over);
                    }
                    None => self.report.without_token_ms += elapsed,
                }
            }
            self.real = next;
            while self.steps.front().is_some_and(|s| s.at <= self.real) {
                self.offset = self.steps.pop_front().map_or(0, |s| s.offset);
            }
        }
    }
}

fn config(leased: bool) -> RefresherConfig {
    let layer = if leased {
        Layer::new("shared").with_lease(LeaseSettings::default())
    } else {
        Layer::new("shared")
    };
    RefresherConfig::custom(CacheKey::custom("clock-steps", &[]))
        .initial_refresh_token(RefreshToken::new("rt-0"))
        .layer(layer)
}

/// Runs a refresher for 48 h of real time. `busy_lease` makes a crashed
/// instance hold the lease for its TTL at each of those real instants.
fn run(steps: Vec<Step>, outage: Option<Outage>, busy_lease: &[u64]) -> Report {
    run_with(World::new(steps, outage), busy_lease)
}

fn run_with(mut world: World, busy_lease: &[u64]) -> Report {
    let mut busy: VecDeque<u64> = busy_lease.iter().copied().collect();
    let mut r = Refresher::new(config(true), 7, world.now());
    world.carry_out(&mut r, "me");
    while world.real < RUN {
        if busy.front().is_some_and(|&at| at <= world.real) {
            busy.pop_front();
            world.lease = Some(("crashed", world.real + 30 * SEC));
        }
        let sleep = r.poll_sleep(world.now()).expect("running").as_millis() as u64;
        let mut wake = world.real + sleep.clamp(1, WAKE);
        if let Some(&at) = busy.front() {
            wake = wake.min(at.max(world.real + 1));
        }
        if let Some(&(at, _, _)) = world.deferred.iter().min_by_key(|d| d.0) {
            wake = wake.min(at.max(world.real));
        }
        if let Some(&at) = world.forced.front() {
            wake = wake.min(at.max(world.real + 1));
        }
        world.advance(wake);
        let due: Vec<_> = {
            let real = world.real;
            let (due, later) = world.deferred.drain(..).partition(|d| d.0 <= real);
            world.deferred = later;
            due
        };
        for (_, id, result) in due {
            r.handle(world.now(), Input::Grant { id, result }).unwrap();
        }
        r.handle(world.now(), Input::Timeout).unwrap();
        world.carry_out(&mut r, "me");
        while world.forced.front().is_some_and(|&at| at <= world.real) {
            world.forced.pop_front();
            let now = world.now();
            let answer = r.refresh_now(now);
            world.report.forced.push((world.real, now.wall, answer));
            world.carry_out(&mut r, "me");
        }
    }
    world.report
}

fn at(hours: f64) -> u64 {
    (hours * HOUR as f64) as u64
}

fn assert_healthy(report: &Report, steps: usize) {
    assert_healthy_with(report, steps, 0);
}

/// `extra` requests allowed beyond a steady run's (retries in an outage).
fn assert_healthy_with(report: &Report, steps: usize, extra: u32) {
    assert_eq!(
        report.reuses, 0,
        "a spent refresh token was sent: {report:?}"
    );
    assert!(
        report.without_token_ms <= steps as u64 * MIN,
        "{} s without a usable token for {steps} steps: {report:?}",
        report.without_token_ms / SEC
    );
    assert!(
        report.overserved_ms <= SEC,
        "a token was served {} ms past its real lifetime",
        report.overserved_ms
    );
    // About one request per 45 min (stale at 75 %, jittered up to a minute).
    assert!(
        (60..=75 + extra).contains(&report.requests),
        "{} requests in 48 h",
        report.requests
    );
}

#[test]
fn steady_clocks_keep_a_token_all_along() {
    let report = run(Vec::new(), None, &[]);
    assert_eq!(report.without_token_ms, 0, "{report:?}");
    assert_healthy(&report, 0);
}

#[test]
fn a_step_back_of_two_hours_during_a_fetch() {
    // The clock steps back as the first refresh's request goes out, while
    // its answer is outstanding.
    let mut world = World::new(Vec::new(), None);
    world.step_on_fetch = Some((at(0.5), -(2 * HOUR as i64)));
    let report = run_with(world, &[]);
    assert_healthy(&report, 1);
}

#[test]
fn a_step_back_of_a_day() {
    let report = run(
        vec![Step {
            at: at(10.3),
            offset: -(DAY as i64),
        }],
        None,
        &[],
    );
    assert_healthy(&report, 1);
}

#[test]
fn ten_years_ahead_then_corrected() {
    let report = run(
        vec![
            Step {
                at: at(20.1),
                offset: 10 * YEAR as i64,
            },
            Step {
                at: at(22.6),
                offset: 0,
            },
        ],
        None,
        &[],
    );
    assert_healthy(&report, 2);
}

#[test]
fn steps_during_backoff() {
    // The authority is down from just before the first refresh for 10 min;
    // meanwhile the clock jumps ten years ahead, then back.
    let report = run(
        vec![
            Step {
                at: at(0.75) + 2 * MIN,
                offset: 10 * YEAR as i64,
            },
            Step {
                at: at(0.75) + 6 * MIN,
                offset: 0,
            },
        ],
        Some(Outage {
            from: at(0.75) - 2 * MIN,
            to: at(0.75) + 8 * MIN,
        }),
        &[],
    );
    assert_healthy_with(&report, 2, 20);
    // Retries continued at backoff pace, not years apart: the token was
    // replaced within minutes of the outage's end.
    let back = at(0.75) + 8 * MIN;
    assert!(
        report
            .published
            .iter()
            .any(|&p| p >= back && p <= back + 6 * MIN),
        "not replaced after the outage"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Any few steps, anywhere, of any size from two days back to ten years
    /// ahead: the same guarantees.
    #[test]
    fn random_steps_keep_the_guarantees(
        raw in proptest::collection::vec((0..RUN, -(2 * DAY as i64)..(10 * YEAR as i64)), 1..4)
    ) {
        let mut steps: Vec<Step> = raw.iter().map(|&(at, offset)| Step { at, offset }).collect();
        steps.sort_by_key(|s| s.at);
        let n = steps.len();
        let report = run(steps, None, &[]);
        prop_assert_eq!(report.reuses, 0);
        prop_assert!(report.without_token_ms <= n as u64 * MIN, "{:?}", report);
        prop_assert!(report.overserved_ms <= SEC, "{:?}", report);
    }
}

/// The harness sees what the monotonic reading fixes: the same step of a
/// day back, handed to a refresher that gets the wall clock only, keeps
/// serving a token long after it really expired (its refresh and its
/// expiry are planned a day late).
#[test]
fn a_wall_only_driver_would_go_without_a_token() {
    let mut world = World::new(
        vec![Step {
            at: at(10.3),
            offset: -(DAY as i64),
        }],
        None,
    );
    world.wall_only = true;
    let report = run_with(world, &[]);
    assert!(
        report.overserved_ms > 30 * MIN,
        "served {} s past its real lifetime",
        report.overserved_ms / SEC
    );
}

// ---------------------------------------------------------------------------
// The full matrix: each step in each situation
// ---------------------------------------------------------------------------

/// A clock step of the list.
#[derive(Debug, Clone, Copy)]
enum Jump {
    BackTwoHours,
    BackADay,
    /// Ten years ahead, corrected later (the correction is a second step).
    TenYearsAheadThenCorrected,
}

impl Jump {
    fn offset(self) -> i64 {
        match self {
            Jump::BackTwoHours => -(2 * HOUR as i64),
            Jump::BackADay => -(DAY as i64),
            Jump::TenYearsAheadThenCorrected => 10 * YEAR as i64,
        }
    }
}

/// Where the refresher is when the clock steps.
#[derive(Debug, Clone, Copy)]
enum Situation {
    /// The first refresh's request is outstanding (the step comes as it is
    /// sent; its answer arrives after the step).
    Fetch,
    /// A crashed instance holds the lease as the first refresh comes due;
    /// the step comes while the refresher waits for it.
    LeaseWait,
    /// The authority is down from just before the first refresh for
    /// 10 min; the step comes between two failed attempts.
    Backoff,
}

/// How long after the jump ahead the clock is corrected: long enough that
/// scheduled fetches are made at the future wall time, except in backoff,
/// where the correction also comes during the outage.
fn correction_after(situation: Situation) -> u64 {
    match situation {
        Situation::Fetch | Situation::LeaseWait => 2 * HOUR + 30 * MIN,
        Situation::Backoff => 4 * MIN,
    }
}

/// When the first refresh's request goes out on steady clocks (the
/// refresher is seeded: its jitter is the same on every run).
fn first_refresh_sent() -> u64 {
    let steady = run(Vec::new(), None, &[]);
    steady.published[1] - LATENCY
}

/// Runs 48 h with `jump` in `situation`; returns the report and the real
/// instant of the (first) step.
fn step_in(jump: Jump, situation: Situation, wall_only: bool) -> (Report, u64) {
    let due = at(0.75);
    let (step_at, outage, busy): (u64, Option<Outage>, Vec<u64>) = match situation {
        // The refresh is sent a little before `due` (jitter): the step is
        // made as it goes out, so its time is set by the harness.
        Situation::Fetch => (at(0.5), None, Vec::new()),
        // The crashed instance takes the lease 10 s before the refresh
        // asks for it and holds it for 30 s; the step comes 5 s into the
        // wait.
        Situation::LeaseWait => {
            let sent = first_refresh_sent();
            (sent + 5 * SEC, None, vec![sent - 10 * SEC])
        }
        Situation::Backoff => (
            due + 2 * MIN,
            Some(Outage {
                from: due - 2 * MIN,
                to: due + 8 * MIN,
            }),
            Vec::new(),
        ),
    };
    let mut world = World::new(Vec::new(), outage);
    world.wall_only = wall_only;
    let mut steps = Vec::new();
    match situation {
        Situation::Fetch => world.step_on_fetch = Some((step_at, jump.offset())),
        _ => steps.push(Step {
            at: step_at,
            offset: jump.offset(),
        }),
    }
    if let Jump::TenYearsAheadThenCorrected = jump {
        // For a step made as a fetch goes out, the correction is counted
        // from the latest instant that fetch can go (the refresh is due at
        // 45 min at the latest).
        let from = match situation {
            Situation::Fetch => due,
            _ => step_at,
        };
        steps.push(Step {
            at: from + correction_after(situation),
            offset: 0,
        });
    }
    world.steps = steps.into();
    let report = run_with(world, &busy);
    (report, step_at)
}

/// The guarantees of the issue for one step: at most a minute in total
/// without a usable token (the jump ahead and its correction together
/// count as one step here, stricter than one minute per clock change), no
/// token served past its real lifetime, no spent refresh token sent; and
/// the situation really was the one named. `Err` says what failed.
fn check_step_in(jump: Jump, situation: Situation, wall_only: bool) -> Result<(), String> {
    let (report, step_at) = step_in(jump, situation, wall_only);
    let what = format!("{jump:?} during {situation:?}");
    eprintln!(
        "{what}{}: {} ms without a token, {} ms served past expiry, {} reuses, {} requests",
        if wall_only { " (wall clock only)" } else { "" },
        report.without_token_ms,
        report.overserved_ms,
        report.reuses,
        report.requests
    );
    let check = |ok: bool, why: String| {
        if ok {
            Ok(())
        } else {
            Err(format!("{what}: {why}"))
        }
    };
    check(report.reuses == 0, "a spent refresh token was sent".into())?;
    check(
        report.without_token_ms <= MIN,
        format!("{} s without a usable token", report.without_token_ms / SEC),
    )?;
    check(
        report.overserved_ms <= SEC,
        format!(
            "a token was served {} ms past its real lifetime",
            report.overserved_ms
        ),
    )?;
    let extra = match situation {
        Situation::Backoff => 20,
        _ => 0,
    };
    check(
        (60..=75 + extra).contains(&report.requests),
        format!("{} requests in 48 h", report.requests),
    )?;
    // The first refresh (the one the step hit) was made within minutes of
    // its due time, not hours or years away.
    let refresh = report.published.get(1).copied().unwrap_or(u64::MAX);
    match situation {
        Situation::Fetch => {
            // The step came while that fetch was outstanding: its answer
            // is the second token, published after the step's fetch went.
            check(
                refresh > step_at && refresh <= at(0.75) + SEC,
                format!("the refreshed token came at {refresh} ms"),
            )
        }
        Situation::LeaseWait => {
            let sent = first_refresh_sent();
            let refused_before = report
                .lease_refused
                .iter()
                .any(|&t| t < step_at && t >= sent);
            check(
                refused_before,
                format!(
                    "the refresher was not waiting for the lease when the clock stepped: refusals at {:?}",
                    report.lease_refused
                ),
            )?;
            let lease_gone = sent + 20 * SEC;
            check(
                refresh > step_at && refresh <= lease_gone + MIN,
                format!("the refresh came at {refresh} ms, the lease was free at {lease_gone} ms"),
            )
        }
        Situation::Backoff => {
            let failed_before = report.failed_fetches.iter().any(|&t| t < step_at);
            let failed_after = report.failed_fetches.iter().any(|&t| t > step_at);
            check(
                failed_before && failed_after,
                format!(
                    "the step did not fall between failed attempts: {:?}",
                    report.failed_fetches
                ),
            )?;
            let back = at(0.75) + 8 * MIN;
            check(
                refresh >= back && refresh <= back + 6 * MIN,
                format!(
                    "the token was replaced at {refresh} ms, the authority was back at {back} ms"
                ),
            )
        }
    }
}

fn assert_step_in(jump: Jump, situation: Situation) {
    if let Err(failure) = check_step_in(jump, situation, false) {
        panic!("{failure}");
    }
}

#[test]
fn back_two_hours_during_a_fetch() {
    assert_step_in(Jump::BackTwoHours, Situation::Fetch);
}

#[test]
fn back_two_hours_during_a_lease_wait() {
    assert_step_in(Jump::BackTwoHours, Situation::LeaseWait);
}

#[test]
fn back_two_hours_during_backoff() {
    assert_step_in(Jump::BackTwoHours, Situation::Backoff);
}

#[test]
fn back_a_day_during_a_fetch() {
    assert_step_in(Jump::BackADay, Situation::Fetch);
}

#[test]
fn back_a_day_during_a_lease_wait() {
    assert_step_in(Jump::BackADay, Situation::LeaseWait);
}

#[test]
fn back_a_day_during_backoff() {
    assert_step_in(Jump::BackADay, Situation::Backoff);
}

#[test]
fn ten_years_ahead_then_corrected_during_a_fetch() {
    assert_step_in(Jump::TenYearsAheadThenCorrected, Situation::Fetch);
}

#[test]
fn ten_years_ahead_then_corrected_during_a_lease_wait() {
    assert_step_in(Jump::TenYearsAheadThenCorrected, Situation::LeaseWait);
}

#[test]
fn ten_years_ahead_then_corrected_during_backoff() {
    assert_step_in(Jump::TenYearsAheadThenCorrected, Situation::Backoff);
}

// ---------------------------------------------------------------------------
// A forced refresh after a correction
// ---------------------------------------------------------------------------

/// The clock jumps ten years ahead; while it is ahead, a scheduled fetch
/// and a forced refresh are made (so the last forced refresh happened at a
/// wall time in the future). Right after the clock is corrected, a forced
/// refresh is rate-limited for what is left of the minimum interval
/// (10 s) of real time, not until the future date; past that interval it
/// starts at once and brings a token within the authority's latency. A
/// second excursion with scheduled fetches only, then a forced refresh one
/// second after its correction: started at once.
const FORCED_AHEAD: u64 = 21 * HOUR;

fn forced_around_corrections(wall_only: bool) -> Report {
    let forced_ahead = FORCED_AHEAD;
    let corrected = forced_ahead + 3 * SEC;
    let mut world = World::new(
        vec![
            Step {
                at: at(20.1),
                offset: 10 * YEAR as i64,
            },
            Step {
                at: corrected,
                offset: 0,
            },
            Step {
                at: at(30.0),
                offset: 10 * YEAR as i64,
            },
            Step {
                at: at(32.5),
                offset: 0,
            },
        ],
        None,
    );
    world.forced = vec![
        forced_ahead,
        corrected + SEC,
        forced_ahead + 11 * SEC,
        at(32.5) + SEC,
    ]
    .into();
    world.wall_only = wall_only;
    run_with(world, &[])
}

#[test]
fn refresh_now_after_a_correction_is_not_rate_limited_until_the_future() {
    let report = forced_around_corrections(false);
    eprintln!("forced refreshes: {:?}", report.forced);
    assert_eq!(report.forced.len(), 4, "{report:?}");

    // While ahead: started, and its fetch made at a wall time in 2033.
    let (real, wall, answer) = report.forced[0];
    assert_eq!(answer, RefreshNow::Started, "{report:?}");
    assert!(wall.as_millis() > BASE_WALL + 9 * YEAR, "{wall:?}");
    assert!(
        report
            .published
            .iter()
            .any(|&p| p > real && p <= real + SEC),
        "the forced refresh while ahead brought no token"
    );

    // Just after the correction: rate-limited until 10 s after the forced
    // refresh, in corrected wall time, not until the future date.
    let (_, wall, answer) = report.forced[1];
    let RefreshNow::RateLimited { until } = answer else {
        panic!("4 s after a forced refresh: {answer:?}");
    };
    assert!(
        until.as_millis() >= wall.as_millis()
            && until.as_millis() <= wall.as_millis() + 6 * SEC + 1,
        "rate-limited until {until:?} (wall now {wall:?}): the limit follows the future date"
    );

    // Past the interval: started, and a new token within the latency.
    let (real, _, answer) = report.forced[2];
    assert_eq!(answer, RefreshNow::Started, "11 s after: {report:?}");
    assert!(
        report
            .published
            .iter()
            .any(|&p| p > real && p <= real + SEC),
        "the forced refresh after the correction brought no token"
    );

    // After an excursion with scheduled fetches only: started at once.
    let (real, _, answer) = report.forced[3];
    assert_eq!(answer, RefreshNow::Started, "{report:?}");
    assert!(
        report
            .published
            .iter()
            .any(|&p| p > real && p <= real + SEC),
        "the forced refresh after the second correction brought no token"
    );

    // And the run's guarantees, with the three forced requests on top.
    assert_eq!(report.reuses, 0, "{report:?}");
    assert!(report.without_token_ms <= MIN, "{report:?}");
    assert!(report.overserved_ms <= SEC, "{report:?}");
    assert!(
        (60..=78).contains(&report.requests),
        "{} requests",
        report.requests
    );
}

/// The matrix and the forced refresh catch what a refresher scheduling on
/// the wall clock alone (as before the monotonic reading) does: every cell
/// fails, and a forced refresh after the correction is refused until the
/// future date.
#[test]
fn a_wall_only_driver_fails_every_cell_and_is_rate_limited_for_years() {
    for jump in [
        Jump::BackTwoHours,
        Jump::BackADay,
        Jump::TenYearsAheadThenCorrected,
    ] {
        for situation in [Situation::Fetch, Situation::LeaseWait, Situation::Backoff] {
            let outcome = check_step_in(jump, situation, true);
            assert!(
                outcome.is_err(),
                "{jump:?} during {situation:?}: a wall-only refresher passes"
            );
        }
    }
    let report = forced_around_corrections(true);
    eprintln!("forced refreshes (wall clock only): {:?}", report.forced);
    let (_, wall, answer) = report.forced[2];
    match answer {
        RefreshNow::RateLimited { until } => assert!(
            until.as_millis() > wall.as_millis() + 9 * YEAR,
            "{answer:?} at {wall:?}"
        ),
        other => panic!("a wall-only refresher was not rate-limited: {other:?}"),
    }
}
