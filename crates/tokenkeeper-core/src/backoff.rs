//! When to try again after a failed fetch.
//!
//! Exponential backoff with full jitter: after the `n`-th consecutive failure
//! the delay is drawn uniformly from `[0, min(cap, initial × multiplierⁿ⁻¹)]`,
//! then raised to the floor (so there is never a hot loop) and to the
//! authority's `Retry-After` (itself capped). Permanent errors wait the full cap.
//! The count resets on success.

use std::time::Duration;

use crate::error::ErrorClass;
use crate::policy::PolicyError;
use crate::time::{Timestamp, days_from_civil, duration_millis};

/// Error backoff settings. Defaults: 1 s initial, ×2, 5 min cap, 500 ms floor,
/// `Retry-After` honoured up to 1 h.
#[derive(Debug, Clone, PartialEq)]
pub struct BackoffPolicy {
    initial: Duration,
    multiplier: f64,
    cap: Duration,
    floor: Duration,
    max_retry_after: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy {
            initial: Duration::from_secs(1),
            multiplier: 2.0,
            cap: Duration::from_secs(300),
            floor: Duration::from_millis(500),
            max_retry_after: Duration::from_secs(3_600),
        }
    }
}

/// The shortest floor accepted: below this a failing authority would be hammered.
pub const MIN_FLOOR: Duration = Duration::from_millis(10);

/// Builds a validated [`BackoffPolicy`].
#[derive(Debug, Clone)]
pub struct BackoffPolicyBuilder(BackoffPolicy);

impl BackoffPolicyBuilder {
    /// Ceiling of the first delay (default 1 s).
    pub fn initial(mut self, d: Duration) -> Self {
        self.0.initial = d;
        self
    }
    /// Growth of the ceiling per failure (default 2).
    pub fn multiplier(mut self, m: f64) -> Self {
        self.0.multiplier = m;
        self
    }
    /// Largest delay, and the delay after a permanent error (default 5 min).
    pub fn cap(mut self, d: Duration) -> Self {
        self.0.cap = d;
        self
    }
    /// Shortest delay (default 500 ms, at least [`MIN_FLOOR`]).
    pub fn floor(mut self, d: Duration) -> Self {
        self.0.floor = d;
        self
    }
    /// Longest `Retry-After` honoured (default 1 h).
    pub fn max_retry_after(mut self, d: Duration) -> Self {
        self.0.max_retry_after = d;
        self
    }
    /// Validates the settings.
    pub fn build(self) -> Result<BackoffPolicy, PolicyError> {
        let b = &self.0;
        if b.floor < MIN_FLOOR {
            return Err(PolicyError::Backoff("the floor must be at least 10 ms"));
        }
        if b.initial < b.floor {
            return Err(PolicyError::Backoff(
                "the initial delay must be at least the floor",
            ));
        }
        if b.cap < b.initial {
            return Err(PolicyError::Backoff(
                "the cap must be at least the initial delay",
            ));
        }
        if !(b.multiplier >= 1.0 && b.multiplier.is_finite()) {
            return Err(PolicyError::Backoff(
                "the multiplier must be a finite number ≥ 1",
            ));
        }
        Ok(self.0)
    }
}

impl BackoffPolicy {
    /// Starts from the defaults.
    pub fn builder() -> BackoffPolicyBuilder {
        BackoffPolicyBuilder(BackoffPolicy::default())
    }

    /// The floor: no retry comes sooner.
    pub fn floor(&self) -> Duration {
        self.floor
    }

    /// The cap.
    pub fn cap(&self) -> Duration {
        self.cap
    }

    /// The longest `Retry-After` honoured.
    pub fn max_retry_after(&self) -> Duration {
        self.max_retry_after
    }

    /// The ceiling of the delay after `failures` consecutive failures (≥ 1).
    pub fn ceiling(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(64) as i32;
        let grown = self.initial.as_secs_f64() * self.multiplier.powi(exp);
        if grown >= self.cap.as_secs_f64() {
            self.cap
        } else {
            Duration::try_from_secs_f64(grown).map_or(self.cap, |d| d.min(self.cap))
        }
    }

    /// When to try again after the `failures`-th consecutive failure at `now`.
    pub fn retry_at(
        &self,
        now: Timestamp,
        failures: u32,
        class: ErrorClass,
        retry_after: Option<Timestamp>,
        rng: &mut fastrand::Rng,
    ) -> Timestamp {
        let delay = match class {
            ErrorClass::Permanent => self.cap,
            _ => {
                let ceiling = duration_millis(self.ceiling(failures));
                Duration::from_millis(rng.u64(0..=ceiling)).max(self.floor)
            }
        };
        let mut at = now.saturating_add(delay);
        if let Some(ra) = retry_after {
            at = at.max(ra.min(now.saturating_add(self.max_retry_after)));
        }
        at
    }
}

/// Parses a `Retry-After` header value received at `now`: delta-seconds or an
/// HTTP-date in any of the three forms of RFC 9110 §5.6.7. `None` when invalid.
///
/// Never overflows: a delay or a date beyond the last representable instant
/// gives [`Timestamp::MAX`], which [`BackoffPolicy::retry_at`] caps at
/// [`BackoffPolicy::max_retry_after`] like any other distant `Retry-After`.
pub fn parse_retry_after(value: &str, now: Timestamp) -> Option<Timestamp> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        let secs: u64 = value.parse().unwrap_or(u64::MAX);
        return Some(now.saturating_add(Duration::from_secs(secs)));
    }
    parse_http_date(value)
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];

fn month(name: &str) -> Option<u32> {
    let lower = name.to_ascii_lowercase();
    MONTHS
        .iter()
        .position(|m| *m == lower)
        .map(|i| i as u32 + 1)
}

fn hms(s: &str) -> Option<(u64, u64, u64)> {
    let mut it = s.split(':').map(|p| p.parse::<u64>().ok());
    let (h, m, sec) = (it.next()??, it.next()??, it.next()??);
    if it.next().is_some() || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    Some((h, m, sec))
}

/// Parses IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), RFC 850
/// (`Sunday, 06-Nov-94 08:49:37 GMT`) and asctime (`Sun Nov  6 08:49:37 1994`).
/// A date beyond the last representable instant gives [`Timestamp::MAX`].
pub fn parse_http_date(s: &str) -> Option<Timestamp> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    let (year, mon, day, time) = match parts.as_slice() {
        [wd, d, m, y, t, "GMT"] if wd.ends_with(',') => (
            y.parse::<i64>().ok()?,
            month(m)?,
            d.parse::<u32>().ok()?,
            hms(t)?,
        ),
        [wd, dmy, t, "GMT"] if wd.ends_with(',') => {
            let mut it = dmy.split('-');
            let (d, m, y) = (it.next()?, it.next()?, it.next()?);
            let y: i64 = y.parse().ok()?;
            // RFC 9110: a two-digit year more than 50 years ahead is in the past century.
            let y = if y < 100 {
                if y < 70 { 2000 + y } else { 1900 + y }
            } else {
                y
            };
            (y, month(m)?, d.parse::<u32>().ok()?, hms(t)?)
        }
        [_, m, d, t, y] => (
            y.parse::<i64>().ok()?,
            month(m)?,
            d.parse::<u32>().ok()?,
            hms(t)?,
        ),
        _ => return None,
    };
    if !(1..=31).contains(&day) || year < 1970 {
        return None;
    }
    // A date past the last representable instant (the year 584,556,019)
    // saturates: the caller's cap on `Retry-After` then applies to it.
    let secs = days_from_civil(year, mon, day)
        .and_then(|days| u64::try_from(days).ok())
        .and_then(|days| days.checked_mul(86_400))
        .and_then(|s| s.checked_add(time.0 * 3600 + time.1 * 60 + time.2))
        .unwrap_or(u64::MAX);
    Some(Timestamp::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_all_forms() {
        let now = Timestamp::from_secs(1_000);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Timestamp::from_secs(1_120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(now));
        let expected = Some(Timestamp::from_secs(784_111_777));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            expected
        );
        assert_eq!(
            parse_retry_after("Sunday, 06-Nov-94 08:49:37 GMT", now),
            expected
        );
        assert_eq!(parse_retry_after("Sun Nov  6 08:49:37 1994", now), expected);
        for bad in [
            "",
            "-5",
            "soon",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "1.5",
        ] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn absurd_dates_saturate_and_are_capped() {
        let now = Timestamp::from_secs(1_000);
        for date in [
            "Sun, 06 Nov 1000000000000 08:49:37 GMT",
            "Sun, 31 Dec 9223372036854775807 23:59:60 GMT",
            "Sun Dec 31 23:59:59 9223372036854775807",
        ] {
            assert_eq!(parse_retry_after(date, now), Some(Timestamp::MAX), "{date}");
        }
        let b = BackoffPolicy::default();
        let mut rng = fastrand::Rng::with_seed(3);
        let at = b.retry_at(
            now,
            1,
            ErrorClass::Transient,
            Some(Timestamp::MAX),
            &mut rng,
        );
        assert_eq!(at, now.saturating_add(b.max_retry_after()));
    }

    #[test]
    fn delays_grow_are_capped_and_never_below_the_floor() {
        let b = BackoffPolicy::default();
        assert_eq!(b.ceiling(1), Duration::from_secs(1));
        assert_eq!(b.ceiling(4), Duration::from_secs(8));
        assert_eq!(b.ceiling(30), Duration::from_secs(300));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(300));
        let mut rng = fastrand::Rng::with_seed(3);
        let now = Timestamp::from_secs(0);
        for failures in 1..40 {
            let at = b.retry_at(now, failures, ErrorClass::Transient, None, &mut rng);
            let d = at.duration_since(now);
            assert!(
                d >= b.floor() && d <= b.ceiling(failures).max(b.floor()),
                "{d:?}"
            );
        }
        let at = b.retry_at(now, 1, ErrorClass::Permanent, None, &mut rng);
        assert_eq!(at, now.saturating_add(b.cap()));
    }

    #[test]
    fn retry_after_is_honoured_up_to_its_cap() {
        let b = BackoffPolicy::default();
        let mut rng = fastrand::Rng::with_seed(3);
        let now = Timestamp::from_secs(0);
        let ra = Some(Timestamp::from_secs(90));
        assert_eq!(
            b.retry_at(now, 1, ErrorClass::Transient, ra, &mut rng),
            Timestamp::from_secs(90)
        );
        let far = Some(Timestamp::from_secs(90_000));
        assert_eq!(
            b.retry_at(now, 1, ErrorClass::Transient, far, &mut rng),
            Timestamp::from_secs(3_600)
        );
    }

    #[test]
    fn invalid_settings_are_rejected() {
        assert!(
            BackoffPolicy::builder()
                .floor(Duration::ZERO)
                .build()
                .is_err()
        );
        assert!(BackoffPolicy::builder().multiplier(0.5).build().is_err());
        assert!(
            BackoffPolicy::builder()
                .cap(Duration::from_millis(600))
                .build()
                .is_err()
        );
        assert!(
            BackoffPolicy::builder()
                .multiplier(f64::INFINITY)
                .build()
                .is_err()
        );
    }
}
