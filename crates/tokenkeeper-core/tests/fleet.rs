//! Fleet simulations with numbers asserted: the shared cache and lease, jitter
//! without a shared cache, and an outage ridden out on the grace period.

use std::time::Duration;

use tokenkeeper_core::Jitter;
use tokenkeeper_core::sim::{AuthorityModel, ClockStep, FleetConfig, Outage, simulate};

const HOUR: Duration = Duration::from_secs(3600);

fn day_of_hour_tokens(instances: usize, shared_cache: bool) -> FleetConfig {
    FleetConfig {
        instances,
        duration: 24 * HOUR,
        shared_cache,
        read_interval: Duration::from_secs(30),
        authority: AuthorityModel {
            token_ttl: HOUR,
            ..AuthorityModel::default()
        },
        seed: 2026,
        ..FleetConfig::default()
    }
}

/// (a) 1,000 instances starting together for 24 h with 1 h tokens and the
/// default policy, sharing a cache with a lease, ask the authority at most once
/// more than one lone instance does in the same 24 h.
#[test]
fn a_thousand_instances_sharing_a_cache_ask_like_one() {
    let lone = simulate(&day_of_hour_tokens(1, true));
    let fleet = simulate(&day_of_hour_tokens(1_000, true));
    println!("lone: {lone:?}\nfleet: {fleet:?}");
    assert!(lone.authority_requests >= 24, "{lone:?}");
    assert!(
        fleet.authority_requests <= lone.authority_requests + 1,
        "fleet {} vs lone {}",
        fleet.authority_requests,
        lone.authority_requests
    );
    assert_eq!(fleet.reads_expired + fleet.reads_none, 0, "{fleet:?}");
    assert_eq!(fleet.max_fetches_in_flight_per_instance, 1);
    // Every instance but the fetchers got its tokens from the cache.
    assert!(fleet.cache_hits >= 999 * 20, "{fleet:?}");
}

/// (b) Without a shared cache, jitter of 10% of the lifetime spreads the
/// fleet's refreshes: no second holds more than 2% of them.
#[test]
fn jitter_spreads_an_unshared_fleet() {
    let mut cfg = day_of_hour_tokens(1_000, false);
    cfg.jitter = Jitter::fraction_of_lifetime(0.1).unwrap();
    let report = simulate(&cfg);
    println!("{report:?}");
    // Each instance fetches at start and then once per refresh period.
    assert!(report.authority_requests >= 1_000 * 24, "{report:?}");
    // Every instance's first fetch happens at start by construction; the
    // refreshes after it are what jitter spreads.
    let limit = 1_000 * 2 / 100;
    assert!(
        report.peak_refreshes_per_second <= limit,
        "peak {} > {limit}: {report:?}",
        report.peak_refreshes_per_second
    );
    // Without jitter the same fleet refreshes in lockstep.
    let mut lockstep = cfg.clone();
    lockstep.jitter = Jitter::none();
    let lockstep = simulate(&lockstep);
    assert!(lockstep.peak_refreshes_per_second >= 900, "{lockstep:?}");
    assert_eq!(report.reads_expired + report.reads_none, 0);
}

/// (c) With a shared cache and 1 h tokens, an 8-minute outage that starts as
/// the fleet's token goes stale costs no reader a token, and the fleet holds a
/// new one within one backoff cap of the end of the outage.
#[test]
fn an_outage_is_ridden_out_on_the_grace_period() {
    let mut cfg = day_of_hour_tokens(1_000, true);
    cfg.duration = 3 * HOUR;
    // The first token is issued at ~0.1 s and goes stale at 45 min; jitter
    // moves the first refresh up to a minute earlier, so the outage starts then.
    cfg.authority.outages = vec![Outage {
        start: Duration::from_secs(44 * 60),
        duration: Duration::from_secs(8 * 60),
    }];
    let report = simulate(&cfg);
    println!("{report:?}");
    assert_eq!(report.reads_expired, 0, "{report:?}");
    assert_eq!(report.reads_none, 0, "{report:?}");
    assert!(
        report.authority_failures > 0,
        "the outage was felt: {report:?}"
    );
    let recovery = report.recovery_after_outage.expect("the fleet recovered");
    let cap = tokenkeeper_core::BackoffPolicy::default().cap();
    assert!(recovery <= cap, "recovered after {recovery:?}");
    // Holding the lease through backoff keeps the fleet from taking turns at
    // the failing authority: one holder at a time retries with backoff, a new
    // one every lease TTL (30 s), so a few hundred requests at most in 8
    // minutes, where 1,000 instances taking turns would make thousands.
    assert!(report.authority_failures < 200, "{report:?}");
}

#[test]
fn simulations_are_deterministic_for_a_seed() {
    let mut cfg = day_of_hour_tokens(50, true);
    cfg.authority.failure_rate = 0.2;
    assert_eq!(simulate(&cfg), simulate(&cfg));
    let mut other = cfg.clone();
    other.seed += 1;
    // A different seed gives a different, but equally safe, run.
    let b = simulate(&other);
    assert_eq!(b.reads_expired + b.reads_none, 0);
}

/// (d) The fleet's wall clocks step (a day back at 6 h, ten years ahead at
/// 12 h, corrected at 13 h) while their monotonic clocks run true: no read
/// is ever served a token past its real lifetime, none finds no token, and
/// the fleet still asks about as often as a lone instance with steady
/// clocks.
#[test]
fn a_fleet_rides_out_wall_clock_steps() {
    let day = 24 * 3600 * 1000_i64;
    let steps = vec![
        ClockStep {
            at: 6 * HOUR,
            offset_ms: -day,
        },
        ClockStep {
            at: 12 * HOUR,
            offset_ms: 10 * 365 * day,
        },
        ClockStep {
            at: 13 * HOUR,
            offset_ms: 0,
        },
    ];
    let lone = simulate(&day_of_hour_tokens(1, true));
    let fleet = simulate(&FleetConfig {
        clock_steps: steps,
        ..day_of_hour_tokens(200, true)
    });
    println!("lone: {lone:?}\nfleet with steps: {fleet:?}");
    assert_eq!(fleet.reads_expired, 0, "{fleet:?}");
    assert_eq!(fleet.reads_none, 0, "{fleet:?}");
    // Records written under a skewed clock are distrusted or read as expired
    // by the others after a step, so a step can cost the fleet a fetch.
    assert!(
        fleet.authority_requests <= lone.authority_requests + 6,
        "fleet {} vs lone {}",
        fleet.authority_requests,
        lone.authority_requests
    );
}

/// The timeline of a run adds up to its totals, puts the failures inside the
/// outage, and follows the first instance's tokens one after another.
#[test]
fn the_timeline_adds_up_to_the_report() {
    let mut cfg = day_of_hour_tokens(100, true);
    cfg.duration = 3 * HOUR;
    let outage = Outage {
        start: Duration::from_secs(44 * 60),
        duration: Duration::from_secs(8 * 60),
    };
    cfg.authority.outages = vec![outage];
    let report = simulate(&cfg);
    let timeline = &report.timeline;
    // 3 h in about 480 buckets of whole seconds: 23 s each, 470 of them.
    assert_eq!(timeline.bucket, Duration::from_secs(23));
    assert_eq!(timeline.buckets.len(), 470);
    let sum = |f: fn(&tokenkeeper_core::sim::Bucket) -> u64| -> u64 {
        timeline.buckets.iter().map(f).sum()
    };
    assert_eq!(sum(|b| b.requests), report.authority_requests);
    assert_eq!(sum(|b| b.failures), report.authority_failures);
    assert_eq!(sum(|b| b.reads_fresh), report.reads_fresh);
    assert_eq!(sum(|b| b.reads_stale), report.reads_stale);
    assert_eq!(sum(|b| b.reads_expired), report.reads_expired);
    assert_eq!(sum(|b| b.reads_none), report.reads_none);
    assert_eq!(
        timeline
            .buckets
            .iter()
            .map(|b| b.peak_requests_per_second)
            .max(),
        Some(report.peak_requests_per_second)
    );
    assert!(report.authority_failures > 0, "{report:?}");
    for (i, bucket) in timeline.buckets.iter().enumerate() {
        assert!(bucket.peak_requests_per_second <= bucket.requests);
        if bucket.failures > 0 {
            let from = timeline.bucket * i as u32;
            let to = from + timeline.bucket;
            assert!(
                to > outage.start && from < outage.start + outage.duration,
                "failures in bucket {i} ({from:?}..{to:?}), outside the outage"
            );
        }
    }
    // The first instance held one token after another: each lives an hour,
    // goes stale before it expires, and the next was issued before it expired.
    let tokens = &timeline.sample_tokens;
    assert!(tokens.len() >= 3, "{tokens:?}");
    for pair in tokens.windows(2) {
        assert!(pair[0].issued < pair[1].issued, "{pair:?}");
        assert!(pair[1].issued < pair[0].expiry, "a gap: {pair:?}");
    }
    for span in tokens {
        assert_eq!(span.expiry - span.issued, HOUR);
        assert!(
            span.issued < span.stale && span.stale < span.expiry,
            "{span:?}"
        );
    }
}
