//! Nothing that comes from outside — a response body, a `Retry-After` header,
//! a cache record, a custom source's grant, the clock — can make the engine
//! overflow or panic. Test builds check for overflow, so an unchecked
//! operation that overflows fails these tests.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use http::HeaderMap;
use http::header::RETRY_AFTER;
use proptest::prelude::*;
use tokenkeeper_core::backoff::{parse_http_date, parse_retry_after};
use tokenkeeper_core::cache::{decode_record, encode_record, read_record};
use tokenkeeper_core::oauth2::{DEFAULT_MAX_BODY_BYTES, OAuth2Client, parse_token_response};
use tokenkeeper_core::{
    AccessToken, BackoffPolicy, CacheKey, ClientId, ClientSecret, Effect, ErrorClass, Event,
    FetchError, Input, Jitter, Layer, LeaseOutcome, LeaseSettings, LifetimePolicy, RefreshToken,
    Refresher, RefresherConfig, Timestamp, TokenGrant, Wait,
};

const NOW: Timestamp = Timestamp::from_secs(1_700_000_000);

/// Dates whose year is far beyond anything a `Timestamp` can hold, in the
/// three forms of RFC 9110.
const ABSURD_DATES: [&str; 8] = [
    "Sun, 06 Nov 1000000000000 08:49:37 GMT",
    "Sun, 06 Nov 584554051223 08:49:37 GMT",
    "Sun, 06 Nov 9223372036854775807 23:59:60 GMT",
    "Sun, 31 Dec 9223372036854775807 23:59:59 GMT",
    "Sunday, 06-Nov-9223372036854775807 08:49:37 GMT",
    "Sunday, 06-Nov-1000000000000 08:49:37 GMT",
    "Sun Nov  6 08:49:37 1000000000000",
    "Sun Dec 31 23:59:59 9223372036854775807",
];

fn with_retry_after(value: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(RETRY_AFTER, value.parse().unwrap());
    headers
}

// Finding A1: `days * 86_400` overflowed in backoff.rs, and larger years
// overflowed inside the calendar arithmetic of time.rs.
#[test]
fn retry_after_dates_with_absurd_years_never_overflow() {
    let backoff = BackoffPolicy::default();
    let mut rng = fastrand::Rng::with_seed(1);
    for date in ABSURD_DATES {
        let parsed = catch_unwind(|| parse_retry_after(date, NOW));
        let parsed = parsed.unwrap_or_else(|_| panic!("parsing {date:?} panicked"));
        // Either no usable Retry-After, or one that the cap reins in.
        if let Some(at) = parsed {
            assert!(at >= NOW, "{date:?} gave {at:?}");
        }
        assert_eq!(parse_http_date(date), parsed, "{date:?}");
        let retry = backoff.retry_at(NOW, 1, ErrorClass::Transient, parsed, &mut rng);
        assert!(
            retry <= NOW.saturating_add(backoff.max_retry_after()),
            "{date:?}: retry at {retry:?}"
        );
        // And through the response parser, as a driver feeds it.
        let result = catch_unwind(|| {
            parse_token_response(
                503,
                &with_retry_after(date),
                b"",
                NOW,
                DEFAULT_MAX_BODY_BYTES,
            )
        });
        let err = result
            .unwrap_or_else(|_| panic!("a 503 with Retry-After {date:?} panicked"))
            .unwrap_err();
        assert_eq!(err.class(), ErrorClass::Transient);
    }
}

// Finding A2: `Duration::from_secs_f64` (inside `Duration::mul_f64`) panicked
// on `stale_fraction(1.0)` with a lifetime near `u64::MAX` seconds: the
// product rounds up past the largest `Duration`.
#[test]
fn a_custom_grant_lasting_near_u64_max_seconds_with_stale_fraction_one_saturates() {
    let policy = LifetimePolicy::builder()
        .stale_fraction(1.0)
        .build()
        .unwrap();
    for life in [
        Duration::from_secs(u64::MAX),
        Duration::from_secs(u64::MAX - 1),
        Duration::MAX,
    ] {
        let grant = TokenGrant::bearer(AccessToken::new("long"), Some(life));
        let record = catch_unwind(AssertUnwindSafe(|| policy.record(grant.clone(), NOW, None)))
            .unwrap_or_else(|_| panic!("a lifetime of {life:?} panicked"));
        assert!(record.issued <= record.stale && record.stale <= record.expiry);
        assert_eq!(record.expiry, Timestamp::MAX);

        // The same through a refresher with a custom source.
        let config = RefresherConfig::custom(CacheKey::custom("overflow", &[]))
            .lifetime_policy(policy.clone());
        let mut r = Refresher::new(config, 7, NOW);
        let Some(Effect::Fetch { id, .. }) = r.poll_effect() else {
            panic!("expected a fetch")
        };
        let handled = catch_unwind(AssertUnwindSafe(|| {
            r.handle(
                NOW,
                Input::Grant {
                    id,
                    result: Ok(grant),
                },
            )
        }));
        assert!(handled.is_ok(), "the refresher panicked on {life:?}");
        assert!(r.token().unwrap().is_usable_at(NOW));
        assert!(matches!(r.poll_wait(), Wait::Until(t) if t > NOW));
    }
}

// ---- Finding A3: every outside value, at its extremes ----

fn edge_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(999),
        Just(1_000),
        Just(u64::MAX),
        Just(u64::MAX - 1),
        Just(u64::MAX / 1000),
        Just(u64::MAX / 1000 + 1),
        Just(i64::MAX as u64),
        Just(9_200_000_000),
        Just(18_446_744_073_709_551),
        any::<u64>(),
        0u64..10_000_000_000_000,
    ]
}

fn edge_duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::MAX),
        Just(Duration::from_secs(u64::MAX)),
        Just(Duration::from_millis(u64::MAX)),
        Just(Duration::from_millis(1)),
        edge_u64().prop_map(Duration::from_secs),
        edge_u64().prop_map(Duration::from_millis),
    ]
}

fn edge_timestamp() -> impl Strategy<Value = Timestamp> {
    prop_oneof![
        Just(Timestamp::EPOCH),
        Just(Timestamp::MAX),
        Just(NOW),
        edge_u64().prop_map(Timestamp::from_millis),
    ]
}

/// A numeric JSON value as an authority might (mis)write it.
fn json_seconds() -> impl Strategy<Value = String> {
    prop_oneof![
        edge_u64().prop_map(|n| n.to_string()),
        edge_u64().prop_map(|n| format!("\"{n}\"")),
        Just("1e308".to_owned()),
        Just("\"1e400\"".to_owned()),
        Just("\"inf\"".to_owned()),
        Just("\"NaN\"".to_owned()),
        Just("-0".to_owned()),
        Just("18446744073709551616".to_owned()),
        Just("99999999999999999999999999999".to_owned()),
        Just("1.7976931348623157e308".to_owned()),
        Just("null".to_owned()),
        (-1.0e30f64..1.0e30).prop_map(|f| f.to_string()),
    ]
}

fn retry_after_value() -> impl Strategy<Value = String> {
    prop_oneof![
        edge_u64().prop_map(|n| n.to_string()),
        Just("99999999999999999999999999999999".to_owned()),
        proptest::sample::select(ABSURD_DATES.to_vec()).prop_map(str::to_owned),
        (1970i64..i64::MAX, 1u32..=31, 0u32..24, 0u32..60, 0u32..=60)
            .prop_map(|(y, d, h, m, s)| format!("Sun, {d:02} Dec {y} {h:02}:{m:02}:{s:02} GMT")),
        (0i64..100, 1u32..=31).prop_map(|(y, d)| format!("Sunday, {d:02}-Jan-{y:02} 00:00:00 GMT")),
        (1970i64..i64::MAX).prop_map(|y| format!("Sun Feb 29 23:59:60 {y}")),
    ]
}

fn extreme_policy() -> impl Strategy<Value = LifetimePolicy> {
    (
        prop_oneof![
            Just(1.0f64),
            Just(f64::MIN_POSITIVE),
            Just(0.75),
            Just(1.0 - f64::EPSILON)
        ],
        edge_duration(),
        edge_duration(),
        edge_duration(),
    )
        .prop_map(|(fraction, window, skew, default)| {
            LifetimePolicy::builder()
                .stale_fraction(fraction)
                .min_stale_window(window)
                .clock_skew(skew)
                .default_lifetime(default.max(Duration::from_millis(1)))
                .build()
                .unwrap()
        })
}

fn extreme_jitter() -> impl Strategy<Value = Jitter> {
    prop_oneof![
        Just(Jitter::none()),
        Just(Jitter::up_to(Duration::MAX)),
        Just(Jitter::fraction_of_lifetime(1.0).unwrap()),
        edge_duration().prop_map(Jitter::up_to),
    ]
}

fn extreme_backoff() -> impl Strategy<Value = BackoffPolicy> {
    (
        edge_duration(),
        edge_duration(),
        edge_duration(),
        prop_oneof![Just(1.0f64), Just(2.0), Just(f64::MAX), Just(1e300)],
    )
        .prop_map(|(initial, cap, max_retry_after, multiplier)| {
            let floor = Duration::from_millis(10);
            let initial = initial.max(floor);
            BackoffPolicy::builder()
                .floor(floor)
                .initial(initial)
                .cap(cap.max(initial))
                .max_retry_after(max_retry_after)
                .multiplier(multiplier)
                .build()
                .unwrap()
        })
}

/// One thing the outside world does to a refresher.
#[derive(Debug, Clone)]
enum Happening {
    /// The clock reads this.
    Clock(Timestamp),
    /// Every outstanding effect is answered like this.
    Answer(Reply),
    /// A forced refresh.
    RefreshNow,
    /// Another process changed the first layer.
    CacheChanged,
}

#[derive(Debug, Clone)]
enum Reply {
    /// An HTTP answer with these `expires_in`, `refresh_in` and `Retry-After`.
    Response {
        status: u16,
        expires_in: String,
        refresh_in: String,
        retry_after: Option<String>,
    },
    /// A grant from the driver or a custom source.
    Grant {
        expires_in: Option<Duration>,
        refresh_in: Option<Duration>,
    },
    /// A failure whose `Retry-After` lies at this instant.
    Failure { retry_after: Timestamp },
    /// A cache record with these instants (sorted, so that it is consistent).
    Record { times: [u64; 3] },
}

fn reply() -> impl Strategy<Value = Reply> {
    prop_oneof![
        (
            prop_oneof![Just(200u16), Just(429), Just(503), Just(400)],
            json_seconds(),
            json_seconds(),
            proptest::option::of(retry_after_value()),
        )
            .prop_map(|(status, expires_in, refresh_in, retry_after)| {
                Reply::Response {
                    status,
                    expires_in,
                    refresh_in,
                    retry_after,
                }
            }),
        (
            proptest::option::of(edge_duration()),
            proptest::option::of(edge_duration())
        )
            .prop_map(|(expires_in, refresh_in)| Reply::Grant {
                expires_in: expires_in.filter(|d| !d.is_zero()),
                refresh_in,
            }),
        edge_timestamp().prop_map(|retry_after| Reply::Failure { retry_after }),
        [edge_u64(), edge_u64(), edge_u64()].prop_map(|mut times| {
            times.sort_unstable();
            Reply::Record { times }
        }),
    ]
}

fn happening() -> impl Strategy<Value = Happening> {
    prop_oneof![
        3 => edge_timestamp().prop_map(Happening::Clock),
        4 => reply().prop_map(Happening::Answer),
        1 => Just(Happening::RefreshNow),
        1 => Just(Happening::CacheChanged),
    ]
}

fn record_bytes(key: &CacheKey, times: [u64; 3]) -> Vec<u8> {
    let text = format!(
        r#"{{"format":"tokenkeeper-cache-record","version":1,"key":{},"source":{},
            "token":{{"access_token":"cached","token_type":"Bearer","refresh_token":"rt",
            "issued_ms":{},"stale_ms":{},"expiry_ms":{},"extra":{{}}}}}}"#,
        serde_json::Value::from(key.id()),
        serde_json::Value::from(key.description()),
        times[0],
        times[1],
        times[2]
    );
    text.into_bytes()
}

fn response_body(expires_in: &str, refresh_in: &str) -> Vec<u8> {
    format!(
        r#"{{"access_token":"at","refresh_token":"rt2","expires_in":{expires_in},"refresh_in":{refresh_in}}}"#
    )
    .into_bytes()
}

/// Drives a refresher through `happenings`, answering every effect with the
/// extreme values they carry; panics (the test fails) if anything overflows.
#[allow(clippy::too_many_arguments)]
fn drive(
    oauth2: bool,
    policy: LifetimePolicy,
    jitter: Jitter,
    backoff: BackoffPolicy,
    timeouts: [Duration; 4],
    lease: [Duration; 2],
    start: Timestamp,
    happenings: &[Happening],
) {
    let [cache_timeout, fetch_timeout, grace, interval] = timeouts;
    let base = if oauth2 {
        let client = OAuth2Client::refresh_token(
            "https://auth.example/token",
            ClientId::new("c"),
            Some(ClientSecret::new("s")),
        )
        .unwrap();
        RefresherConfig::oauth2(client).initial_refresh_token(RefreshToken::new("rt0"))
    } else {
        RefresherConfig::custom(CacheKey::custom("edge", &["x"]))
    };
    let config = base
        .lifetime_policy(policy)
        .jitter(jitter)
        .backoff(backoff)
        .cache_timeout(cache_timeout)
        .fetch_timeout(fetch_timeout)
        .shutdown_grace(grace)
        .refresh_now_min_interval(interval)
        .layer(Layer::new("plain"))
        .layer(Layer::new("leased").with_lease(LeaseSettings {
            ttl: lease[0],
            retry: lease[1],
            hold_through_backoff: true,
        }));
    let key = config.cache_key().clone();
    let mut now = start;
    let mut r = Refresher::new(config, 3, now);
    let mut outstanding: Vec<Effect> = Vec::new();
    for happening in happenings {
        while let Some(effect) = r.poll_effect() {
            outstanding.push(effect);
        }
        // At a clock stuck at `Timestamp::MAX` every input starts a new
        // cycle (time cannot move past a retry), so answering everything
        // would multiply the effects with each answer: keep the latest.
        if outstanding.len() > 32 {
            outstanding.drain(..outstanding.len() - 32);
        }
        while let Some(event) = r.poll_event() {
            // Every event prints, and every token in one is well-ordered.
            let _ = format!("{event:?}");
            if let Event::TokenChanged { token, .. } = &event {
                assert!(token.issued <= token.stale && token.stale <= token.expiry);
                let _ = token.state_at(now);
                let _ = token.lifetime();
                let _ = token.remaining_at(now);
                let _ = Jitter::fraction_of_lifetime(1.0)
                    .unwrap()
                    .refresh_at_for(token);
            }
        }
        let _ = r.poll_wait();
        let _ = r.status(now);
        match happening {
            Happening::Clock(t) => {
                now = *t;
                r.handle(now, Input::Timeout).unwrap();
            }
            Happening::RefreshNow => {
                let _ = r.refresh_now(now);
            }
            Happening::CacheChanged => {
                r.handle(now, Input::CacheChanged { layer: 1 }).unwrap();
            }
            Happening::Answer(reply) => {
                for effect in outstanding.drain(..) {
                    let input = match (effect, reply) {
                        (Effect::ReadCache { id, .. }, Reply::Record { times }) => {
                            Input::CacheRead {
                                id,
                                result: Ok(Some(record_bytes(&key, *times))),
                            }
                        }
                        (Effect::ReadCache { id, .. }, _) => Input::CacheRead {
                            id,
                            result: Ok(None),
                        },
                        (Effect::WriteCache { id, record, .. }, _) => {
                            // What was written reads back.
                            let back = decode_record(&key, record.bytes()).unwrap();
                            assert!(back.issued <= back.stale && back.stale <= back.expiry);
                            Input::CacheWritten { id, result: Ok(()) }
                        }
                        (Effect::AcquireLease { id, .. }, _) => Input::Lease {
                            id,
                            outcome: LeaseOutcome::Acquired,
                        },
                        (Effect::ReleaseLease { .. }, _) => continue,
                        (
                            Effect::SendRequest { id, .. } | Effect::Fetch { id, .. },
                            Reply::Response {
                                status,
                                expires_in,
                                refresh_in,
                                retry_after,
                            },
                        ) => Input::Response {
                            id,
                            status: *status,
                            headers: retry_after
                                .as_deref()
                                .map(with_retry_after)
                                .unwrap_or_default(),
                            body: response_body(expires_in, refresh_in),
                        },
                        (
                            Effect::SendRequest { id, .. } | Effect::Fetch { id, .. },
                            Reply::Grant {
                                expires_in,
                                refresh_in,
                            },
                        ) => {
                            let mut grant = TokenGrant::bearer(AccessToken::new("g"), *expires_in)
                                .with_refresh_token(RefreshToken::new("rt3"));
                            grant.refresh_in = *refresh_in;
                            Input::Grant {
                                id,
                                result: Ok(grant),
                            }
                        }
                        (
                            Effect::SendRequest { id, .. } | Effect::Fetch { id, .. },
                            Reply::Failure { retry_after },
                        ) => Input::Grant {
                            id,
                            result: Err(FetchError::Status {
                                status: 503,
                                snippet: String::new(),
                                retry_after: Some(*retry_after),
                            }),
                        },
                        (
                            Effect::SendRequest { id, .. } | Effect::Fetch { id, .. },
                            Reply::Record { .. },
                        ) => Input::FetchFailed {
                            id,
                            error: FetchError::Timeout {
                                after: Duration::MAX,
                            },
                        },
                        // Effects are non-exhaustive.
                        _ => continue,
                    };
                    // A custom source's fetch answered with a response is an
                    // answer of the wrong kind: a typed error, not a panic.
                    let _ = r.handle(now, input);
                }
            }
        }
    }
    r.shutdown(now);
    let _ = r.handle(Timestamp::MAX, Input::Timeout);
    let _ = r.poll_wait();
    let _ = format!("{:?}", r.status(Timestamp::MAX));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(600))]

    /// `parse_token_response` and `Retry-After` parsing, on extreme numbers.
    #[test]
    fn extreme_values_never_panic_the_codec(
        status in prop_oneof![Just(200u16), Just(429), Just(503), Just(400), any::<u16>()],
        expires_in in json_seconds(),
        refresh_in in json_seconds(),
        retry_after in retry_after_value(),
        now in edge_timestamp(),
    ) {
        let _ = parse_retry_after(&retry_after, now);
        let _ = parse_http_date(&retry_after);
        let headers = with_retry_after(&retry_after);
        let body = response_body(&expires_in, &refresh_in);
        if let Ok(grant) = parse_token_response(status, &headers, &body, now, 1 << 20) {
            let record = LifetimePolicy::default().record(grant, now, None);
            prop_assert!(record.issued <= record.stale && record.stale <= record.expiry);
        }
        let _ = now.to_rfc3339();
        let _ = now.to_system_time();
        let _ = format!("{now:?} {now}");
    }

    /// `LifetimePolicy::record`, jitter and backoff on extreme lifetimes,
    /// instants and settings.
    #[test]
    fn extreme_values_never_panic_the_policies(
        policy in extreme_policy(),
        jitter in extreme_jitter(),
        backoff in extreme_backoff(),
        expires_in in proptest::option::of(edge_duration()),
        refresh_in in proptest::option::of(edge_duration()),
        issued in edge_timestamp(),
        now in edge_timestamp(),
        retry_after in proptest::option::of(edge_timestamp()),
        failures in prop_oneof![Just(0u32), Just(1), Just(64), Just(65), Just(u32::MAX), any::<u32>()],
        seed in any::<u64>(),
    ) {
        let mut grant = TokenGrant::bearer(AccessToken::new("t"), expires_in);
        grant.refresh_in = refresh_in;
        let record = policy.record(grant, issued, None);
        prop_assert!(record.issued <= record.stale && record.stale <= record.expiry);
        let mut rng = fastrand::Rng::with_seed(seed);
        let at = jitter.refresh_at(&record, &mut rng);
        prop_assert!(at <= record.stale);
        let _ = jitter.refresh_at_for(&record);
        let _ = backoff.ceiling(failures);
        for class in [ErrorClass::Transient, ErrorClass::Permanent] {
            let _ = backoff.retry_at(now, failures, class, retry_after, &mut rng);
        }
        let key = CacheKey::custom("edge", &[]);
        let encoded = encode_record(&key, &record);
        prop_assert_eq!(decode_record(&key, encoded.bytes()).unwrap(), record);
    }

    /// `decode_record` and `read_record` on records with extreme instants.
    #[test]
    fn extreme_values_never_panic_the_record_codec(
        times in [edge_u64(), edge_u64(), edge_u64()],
        now in edge_timestamp(),
    ) {
        let key = CacheKey::custom("edge", &[]);
        let bytes = record_bytes(&key, times);
        let decoded = decode_record(&key, &bytes);
        let _ = read_record(&bytes);
        if let Ok(record) = decoded {
            let _ = record.state_at(now);
            let _ = record.lifetime();
            let _ = record.remaining_at(now);
            let _ = Jitter::default().refresh_at_for(&record);
            let _ = Jitter::fraction_of_lifetime(1.0).unwrap().refresh_at_for(&record);
            let _ = format!("{record:?}");
        }
    }

    /// The refresher, fed extreme clocks, answers and settings.
    #[test]
    fn extreme_values_never_panic_the_refresher(
        oauth2 in any::<bool>(),
        policy in extreme_policy(),
        jitter in extreme_jitter(),
        backoff in extreme_backoff(),
        timeouts in [edge_duration(), edge_duration(), edge_duration(), edge_duration()],
        lease in [edge_duration(), edge_duration()],
        start in edge_timestamp(),
        happenings in proptest::collection::vec(happening(), 1..40),
    ) {
        drive(oauth2, policy, jitter, backoff, timeouts, lease, start, &happenings);
    }
}
