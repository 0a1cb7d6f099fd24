//! `Retry-After` values (`tokenkeeper_core::backoff::parse_retry_after` and
//! `parse_http_date`), and what the backoff policy makes of them.
//!
//! Input: 8 bytes of `now` (milliseconds since the epoch, any value), one byte
//! of failure count and error class, then the header value.
//!
//! Invariants beyond "no panic":
//! - delta-seconds give `now + n` (saturating), never earlier than `now`;
//!   anything else is exactly `parse_http_date` of the trimmed value;
//! - a parsed date is a whole second (or, past the last instant, that
//!   instant), and prints (RFC 3339, `SystemTime`);
//! - round trip: `now` written in each of the three HTTP-date forms (by an
//!   independent formatter) parses back to `now` in whole seconds;
//! - `BackoffPolicy::retry_at` stays within its floor, its cap and the
//!   `Retry-After` cap, and never retries before an honoured `Retry-After`.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tokenkeeper_core::backoff::{parse_http_date, parse_retry_after};
use tokenkeeper_core::{BackoffPolicy, ErrorClass, Timestamp};
use tokenkeeper_fuzz::{
    after_secs, asctime_date, civil, imf_fixdate, rfc850_date, take_u8, take_u64, whole_seconds,
};

fuzz_target!(|data: &[u8]| {
    let mut data = data;
    let now = Timestamp::from_millis(take_u64(&mut data));
    let knobs = take_u8(&mut data);
    let value = String::from_utf8_lossy(data);

    let parsed = parse_retry_after(&value, now);
    assert_eq!(parsed, parse_retry_after(&value, now), "not deterministic");
    let trimmed = value.trim();
    if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit()) {
        let secs = trimmed.parse::<u64>().unwrap_or(u64::MAX);
        assert_eq!(parsed, Some(after_secs(now, secs)), "{trimmed:?}");
        assert!(parsed >= Some(now));
    } else {
        assert_eq!(parsed, parse_http_date(trimmed), "{value:?}");
        if let Some(at) = parsed {
            // A date past the last instant saturates to it.
            assert!(
                at == whole_seconds(at) || at == Timestamp::MAX,
                "{value:?} gave {at:?}"
            );
        }
    }
    if let Some(at) = parsed {
        let _ = at.to_rfc3339();
        let _ = at.to_system_time();
    }

    // Every instant written as an HTTP date reads back as itself.
    let whole = whole_seconds(now);
    let c = civil(whole);
    let forms = [
        Some(imf_fixdate(&c)),
        rfc850_date(&c),
        Some(asctime_date(&c)),
    ];
    for text in forms.into_iter().flatten() {
        assert_eq!(parse_http_date(&text), Some(whole), "{text:?}");
        assert_eq!(
            parse_retry_after(&format!(" {text}\t"), now),
            Some(whole),
            "{text:?}"
        );
    }

    // What the backoff does with it.
    let policy = BackoffPolicy::default();
    let failures =
        u32::from(knobs & 0x7f).saturating_mul(if knobs & 0x40 != 0 { 1 << 24 } else { 1 });
    let class = if knobs & 0x80 != 0 {
        ErrorClass::Permanent
    } else {
        ErrorClass::Transient
    };
    let mut rng = fastrand::Rng::with_seed(u64::from(knobs));
    let at = policy.retry_at(now, failures, class, parsed, &mut rng);
    let latest = now.saturating_add(policy.cap().max(policy.max_retry_after()));
    assert!(
        at >= now.saturating_add(policy.floor()),
        "{at:?} before the floor"
    );
    assert!(at <= latest, "{at:?} after every cap");
    if let Some(ra) = parsed {
        let honoured = ra.min(now.saturating_add(policy.max_retry_after()));
        assert!(at >= honoured, "{at:?} before Retry-After {ra:?}");
    }
    if class == ErrorClass::Transient && parsed.is_none() {
        let ceiling = policy.ceiling(failures.max(1)).max(policy.floor());
        assert!(at <= now.saturating_add(ceiling + Duration::from_millis(1)));
    }
});
