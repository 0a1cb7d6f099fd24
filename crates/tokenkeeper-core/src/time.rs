//! Wall-clock instants in milliseconds since the Unix epoch.
//!
//! Token lifetimes are wall-clock facts (an `expires_in` measured from receipt,
//! an absolute expiry shared between processes through a cache), so the engine
//! reasons in wall-clock time. It never reads a clock: every call takes `now`.

use std::fmt;
use std::num::NonZeroU64;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// An instant, in milliseconds since 1970-01-01T00:00:00Z.
///
/// Arithmetic saturates: an instant never wraps around.
///
/// An `Option<Timestamp>` takes 8 bytes, not 16: the milliseconds are kept
/// plus one, so that zero is free to mean `None`. A refresher holds a dozen
/// of them, and a process may hold a refresher per key for 100,000 keys.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(NonZeroU64);

impl Timestamp {
    /// The Unix epoch.
    pub const EPOCH: Timestamp = Timestamp::from_millis(0);
    /// The latest representable instant (`u64::MAX - 1` milliseconds).
    pub const MAX: Timestamp = Timestamp(NonZeroU64::MAX);

    /// An instant `ms` milliseconds after the epoch (at most [`Timestamp::MAX`]).
    pub const fn from_millis(ms: u64) -> Self {
        Timestamp(NonZeroU64::MIN.saturating_add(ms))
    }

    /// An instant `secs` seconds after the epoch.
    pub const fn from_secs(secs: u64) -> Self {
        Timestamp::from_millis(secs.saturating_mul(1000))
    }

    /// Converts a [`std::time::SystemTime`]; instants before the epoch become the epoch.
    ///
    /// This does not read the clock; adapters call it on a value they sampled.
    pub fn from_system_time(t: std::time::SystemTime) -> Self {
        match t.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => Timestamp::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            Err(_) => Timestamp::EPOCH,
        }
    }

    /// The same instant as a [`std::time::SystemTime`], or the latest
    /// instant the platform can represent when it cannot represent this one.
    pub fn to_system_time(self) -> std::time::SystemTime {
        let epoch = std::time::UNIX_EPOCH;
        if let Some(t) = epoch.checked_add(Duration::from_millis(self.as_millis())) {
            return t;
        }
        // Saturate: the largest whole millisecond the platform accepts.
        let (mut lo, mut hi) = (0u64, self.as_millis());
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if epoch.checked_add(Duration::from_millis(mid)).is_some() {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        epoch + Duration::from_millis(lo)
    }

    /// Milliseconds since the epoch.
    pub const fn as_millis(self) -> u64 {
        self.0.get() - 1
    }

    /// `self + d`, saturating at [`Timestamp::MAX`].
    pub fn saturating_add(self, d: Duration) -> Self {
        Timestamp::from_millis(self.as_millis().saturating_add(duration_millis(d)))
    }

    /// `self - d`, saturating at the epoch.
    pub fn saturating_sub(self, d: Duration) -> Self {
        Timestamp::from_millis(self.as_millis().saturating_sub(duration_millis(d)))
    }

    /// The time from `earlier` to `self`, or zero when `earlier` is later.
    pub fn duration_since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.as_millis().saturating_sub(earlier.as_millis()))
    }

    /// Formats the instant as RFC 3339 in UTC with millisecond precision,
    /// e.g. `2026-11-30T08:20:50.123Z`.
    pub fn to_rfc3339(self) -> String {
        let secs = self.as_millis() / 1000;
        let ms = self.as_millis() % 1000;
        let (y, mo, d) = civil_from_days((secs / 86_400) as i64);
        let sod = secs % 86_400;
        format!(
            "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
            sod / 3600,
            (sod / 60) % 60,
            sod % 60
        )
    }
}

impl Default for Timestamp {
    /// The epoch.
    fn default() -> Self {
        Timestamp::EPOCH
    }
}

/// Milliseconds since the epoch, as a number, in caches and on the wire.
impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.as_millis())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        u64::deserialize(deserializer).map(Timestamp::from_millis)
    }
}

/// `SystemTime::now().into()`: how a driver turns the clock it reads into
/// the core's time (the core itself never reads a clock).
impl From<std::time::SystemTime> for Timestamp {
    fn from(t: std::time::SystemTime) -> Self {
        Timestamp::from_system_time(t)
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({})", self.to_rfc3339())
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

/// Whole milliseconds of a duration, saturating.
pub(crate) fn duration_millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `d × f`, saturating at [`Duration::MAX`] (and zero for a negative or
/// NaN product) where [`Duration::mul_f64`] would panic. Gives the same
/// result as `mul_f64` wherever that one does not panic.
pub(crate) fn saturating_mul_f64(d: Duration, f: f64) -> Duration {
    let product = d.as_secs_f64() * f;
    if product.is_nan() || product <= 0.0 {
        return Duration::ZERO;
    }
    Duration::try_from_secs_f64(product).unwrap_or(Duration::MAX)
}

/// Days since 1970-01-01 for a proleptic Gregorian date (Howard Hinnant's
/// algorithm); `None` when the count does not fit in an `i64` (years near
/// ±2.5 × 10¹⁶). `m` is 1 to 12 and `d` 1 to 31.
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> Option<i64> {
    let y = if m <= 2 { y.checked_sub(1)? } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era.checked_mul(146_097)?
        .checked_add(doe)?
        .checked_sub(719_468)
}

/// The inverse of [`days_from_civil`].
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_optional_instant_takes_eight_bytes_and_every_millisecond_survives() {
        assert_eq!(std::mem::size_of::<Option<Timestamp>>(), 8);
        for ms in [0, 1, 999, 1_764_000_000_123, u64::MAX - 2, u64::MAX - 1] {
            let t = Timestamp::from_millis(ms);
            assert_eq!(t.as_millis(), ms);
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(json, ms.to_string());
            assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), t);
        }
        assert_eq!(Timestamp::EPOCH.as_millis(), 0);
        assert_eq!(Timestamp::default(), Timestamp::EPOCH);
        // The one value beyond the range saturates, as arithmetic does.
        assert_eq!(Timestamp::from_millis(u64::MAX), Timestamp::MAX);
        assert_eq!(
            serde_json::from_str::<Timestamp>(&u64::MAX.to_string()).unwrap(),
            Timestamp::MAX
        );
        assert_eq!(
            Timestamp::MAX.saturating_add(Duration::from_secs(1)),
            Timestamp::MAX
        );
        assert!(Timestamp::from_millis(1) > Timestamp::EPOCH);
        assert!(Timestamp::MAX > Timestamp::from_millis(u64::MAX - 2));
        // Not a number of milliseconds: a typed error, as before.
        assert!(serde_json::from_str::<Timestamp>("-1").is_err());
        assert!(serde_json::from_str::<Timestamp>("\"soon\"").is_err());
    }

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(Timestamp::EPOCH.to_rfc3339(), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            Timestamp::from_millis(784_111_777_123).to_rfc3339(),
            "1994-11-06T08:49:37.123Z"
        );
        assert_eq!(
            Timestamp::from_secs(951_782_400).to_rfc3339(),
            "2000-02-29T00:00:00.000Z"
        );
    }

    #[test]
    fn civil_round_trips() {
        for z in [-800_000i64, -1, 0, 1, 11_016, 18_321, 2_932_896] {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), Some(z));
        }
        assert_eq!(days_from_civil(i64::MAX, 12, 31), None);
        assert_eq!(days_from_civil(i64::MIN, 1, 1), None);
        assert!(days_from_civil(1_000_000_000_000, 11, 6).is_some());
    }

    #[test]
    fn extreme_instants_format_and_convert() {
        assert!(Timestamp::MAX.to_rfc3339().starts_with("584556019-"));
        assert!(
            Timestamp::MAX.to_system_time() >= Timestamp::from_secs(2_000_000_000).to_system_time()
        );
        assert_eq!(
            saturating_mul_f64(Duration::from_secs(u64::MAX), 1.0),
            Duration::MAX
        );
        assert_eq!(saturating_mul_f64(Duration::MAX, f64::NAN), Duration::ZERO);
        assert_eq!(
            saturating_mul_f64(Duration::from_secs(3_600), 0.75),
            Duration::from_secs(3_600).mul_f64(0.75)
        );
    }

    #[test]
    fn arithmetic_saturates() {
        assert_eq!(
            Timestamp::MAX.saturating_add(Duration::from_secs(1)),
            Timestamp::MAX
        );
        assert_eq!(
            Timestamp::EPOCH.saturating_sub(Duration::from_secs(1)),
            Timestamp::EPOCH
        );
        assert_eq!(
            Timestamp::from_secs(1).duration_since(Timestamp::from_secs(5)),
            Duration::ZERO
        );
    }
}
