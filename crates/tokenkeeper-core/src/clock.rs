//! The two clocks every input carries: [`Now`].
//!
//! Wall time ([`Timestamp`]) is right for facts shared with other processes
//! and machines (a record's expiry, a `Retry-After` date), but it steps: NTP
//! corrections, a VM restored, a laptop waking, a bad clock. So everything a
//! refresher schedules for itself (refreshes, retries, lease waits, rate
//! limits, effect deadlines, how long a token it holds stays fresh) runs on a
//! monotonic reading ([`Monotonic`]) that the driver passes alongside, and
//! wall facts are converted at the moment they are read.

use std::fmt;
use std::time::Duration;

use crate::time::Timestamp;

/// A reading of a monotonic clock: milliseconds since an origin the driver
/// picks (its start, say). Never goes backwards; says nothing about the
/// date.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Monotonic(u64);

impl Monotonic {
    /// `ms` milliseconds after the driver's origin.
    pub const fn from_millis(ms: u64) -> Self {
        Monotonic(ms)
    }

    /// A reading from the time elapsed since the driver's origin (an
    /// `Instant` it took at start, say).
    pub fn from_elapsed(elapsed: Duration) -> Self {
        Monotonic(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
    }

    /// Milliseconds since the origin.
    pub const fn as_millis(self) -> u64 {
        self.0
    }
}

impl fmt::Debug for Monotonic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Monotonic({} ms)", self.0)
    }
}

/// Both clocks, read at one instant: what every input of the
/// [`Refresher`](crate::Refresher) carries.
///
/// A driver with a monotonic clock passes `Now::new(wall, mono)`; one with
/// a wall clock only (a test, a simulation) may pass a [`Timestamp`], which
/// converts into a `Now` whose monotonic reading is the wall time itself:
/// the refresher then follows the wall clock, steps and all.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Now {
    /// The wall clock.
    pub wall: Timestamp,
    /// The monotonic clock.
    pub mono: Monotonic,
}

impl Now {
    /// Both readings.
    pub const fn new(wall: Timestamp, mono: Monotonic) -> Self {
        Now { wall, mono }
    }

    /// The monotonic reading on the refresher's schedule axis.
    pub(crate) fn sched(self) -> Timestamp {
        Timestamp::from_millis(self.mono.0)
    }

    /// A wall instant, moved onto the schedule axis as seen from now.
    pub(crate) fn to_sched(self, wall: Timestamp) -> Timestamp {
        shift(wall, self.wall, self.sched())
    }

    /// An instant of the schedule axis, as a wall time estimated from now.
    pub(crate) fn to_wall(self, sched: Timestamp) -> Timestamp {
        shift(sched, self.sched(), self.wall)
    }
}

impl From<Timestamp> for Now {
    fn from(wall: Timestamp) -> Self {
        Now {
            wall,
            mono: Monotonic(millis(wall)),
        }
    }
}

fn millis(t: Timestamp) -> u64 {
    u64::try_from(t.duration_since(Timestamp::EPOCH).as_millis()).unwrap_or(u64::MAX)
}

/// `t` measured from `from`, then laid from `to`; saturating.
fn shift(t: Timestamp, from: Timestamp, to: Timestamp) -> Timestamp {
    if t >= from {
        to.saturating_add(t.duration_since(from))
    } else {
        to.saturating_sub(from.duration_since(t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_move_between_the_axes() {
        let now = Now::new(
            Timestamp::from_secs(1_000_000),
            Monotonic::from_millis(5_000),
        );
        assert_eq!(now.sched(), Timestamp::from_millis(5_000));
        let later = Timestamp::from_secs(1_000_060);
        assert_eq!(now.to_sched(later), Timestamp::from_millis(65_000));
        assert_eq!(now.to_wall(now.to_sched(later)), later);
        let earlier = Timestamp::from_secs(999_999);
        assert_eq!(now.to_sched(earlier), Timestamp::from_millis(4_000));
        // Far before the monotonic origin: saturates at its start.
        assert_eq!(now.to_sched(Timestamp::EPOCH), Timestamp::EPOCH);
        assert_eq!(now.to_wall(Timestamp::MAX), Timestamp::MAX);
        let one = Now::from(Timestamp::from_secs(42));
        assert_eq!(one.sched(), Timestamp::from_secs(42));
        assert_eq!(one.to_sched(later), later);
        assert_eq!(
            Monotonic::from_elapsed(Duration::from_secs(2)),
            Monotonic::from_millis(2_000)
        );
    }
}
