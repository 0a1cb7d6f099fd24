//! Jitter: each refresh moves earlier by a random amount so that a fleet whose
//! tokens were issued together does not refresh together.
//!
//! The refresh instant is drawn uniformly from `[stale − max, stale]`, but never
//! earlier than the token's minimum fresh time, `issued + (stale − issued) / 2`:
//! jitter can take at most half of a token's fresh period.
//!
//! The draw is keyed by the token itself ([`Jitter::refresh_at_for`]):
//! refreshers holding *different* tokens spread their refreshes out, while
//! refreshers holding the *same* token (a fleet sharing a cache) agree on one
//! instant, so a fleet refreshes exactly as often as one instance would,
//! and its lease decides who fetches.

use std::time::Duration;

use crate::policy::PolicyError;
use crate::time::{Timestamp, duration_millis, saturating_mul_f64};
use crate::token::TokenRecord;

/// How far before its stale time a refresh may be moved. Default: up to 60 s.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Jitter(Spread);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Spread {
    Fixed(Duration),
    Fraction(f64),
}

impl Default for Jitter {
    fn default() -> Self {
        Jitter::up_to(Duration::from_secs(60))
    }
}

impl Jitter {
    /// No jitter: refresh exactly at the stale time.
    pub fn none() -> Self {
        Jitter(Spread::Fixed(Duration::ZERO))
    }

    /// Refresh uniformly up to `max` early (zero is legal and means none).
    pub fn up_to(max: Duration) -> Self {
        Jitter(Spread::Fixed(max))
    }

    /// Refresh uniformly up to `fraction` of the token's lifetime early.
    pub fn fraction_of_lifetime(fraction: f64) -> Result<Self, PolicyError> {
        if (0.0..=1.0).contains(&fraction) {
            Ok(Jitter(Spread::Fraction(fraction)))
        } else {
            Err(PolicyError::JitterFraction(fraction))
        }
    }

    /// The largest advance for a token of this lifetime.
    pub fn max_for(&self, lifetime: Duration) -> Duration {
        match self.0 {
            Spread::Fixed(d) => d,
            Spread::Fraction(f) => saturating_mul_f64(lifetime, f),
        }
    }

    /// The earliest instant the jitter may pick for `token`.
    pub fn earliest(&self, token: &TokenRecord) -> Timestamp {
        let min_fresh = token
            .issued
            .saturating_add(token.stale.duration_since(token.issued) / 2);
        token
            .stale
            .saturating_sub(self.max_for(token.lifetime()))
            .max(min_fresh)
            .min(token.stale)
    }

    /// The refresh instant of `token`, drawn with a generator keyed by the
    /// token (its access token and issue time): the same token always gets the
    /// same instant, different tokens independent ones.
    pub fn refresh_at_for(&self, token: &TokenRecord) -> Timestamp {
        // Hashed in place: no copy of the token to allocate and wipe.
        let seed = crate::hash::fnv1a_64_more(
            crate::hash::words_64(token.access_token.expose_secret().as_bytes()),
            &token.issued.as_millis().to_le_bytes(),
        );
        self.refresh_at(token, &mut fastrand::Rng::with_seed(seed))
    }

    /// Draws the refresh instant for `token` from `rng`.
    pub fn refresh_at(&self, token: &TokenRecord, rng: &mut fastrand::Rng) -> Timestamp {
        let earliest = self.earliest(token);
        let span = duration_millis(token.stale.duration_since(earliest));
        earliest.saturating_add(Duration::from_millis(rng.u64(0..=span)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::LifetimePolicy;
    use crate::secret::AccessToken;
    use crate::token::TokenGrant;

    fn token(life_secs: u64) -> TokenRecord {
        named("t", life_secs)
    }

    fn named(name: &str, life_secs: u64) -> TokenRecord {
        LifetimePolicy::default().record(
            TokenGrant::bearer(AccessToken::new(name), Some(Duration::from_secs(life_secs))),
            Timestamp::from_secs(10_000),
            None,
        )
    }

    #[test]
    fn zero_jitter_refreshes_at_the_stale_time() {
        let t = token(3_600);
        let mut rng = fastrand::Rng::with_seed(1);
        for j in [Jitter::none(), Jitter::up_to(Duration::ZERO)] {
            assert_eq!(j.refresh_at(&t, &mut rng), t.stale);
        }
    }

    #[test]
    fn never_earlier_than_half_the_fresh_period() {
        let t = token(20); // fresh for 10 s
        let mut rng = fastrand::Rng::with_seed(7);
        let j = Jitter::up_to(Duration::from_secs(3_600));
        for _ in 0..1_000 {
            let at = j.refresh_at(&t, &mut rng);
            assert!(
                at >= Timestamp::from_secs(10_005) && at <= t.stale,
                "{at:?}"
            );
        }
    }

    #[test]
    fn holders_of_one_token_agree_on_its_refresh() {
        let j = Jitter::up_to(Duration::from_secs(300));
        let (a, b) = (named("shared", 3_600), named("shared", 3_600));
        assert_eq!(j.refresh_at_for(&a), j.refresh_at_for(&b));
        let others: std::collections::BTreeSet<_> = (0..50)
            .map(|i| j.refresh_at_for(&named(&format!("own-{i}"), 3_600)))
            .collect();
        assert!(
            others.len() > 45,
            "distinct tokens get independent instants"
        );
    }

    #[test]
    fn bad_fraction_is_rejected() {
        assert!(Jitter::fraction_of_lifetime(1.5).is_err());
        assert!(Jitter::fraction_of_lifetime(-0.1).is_err());
        assert!(Jitter::fraction_of_lifetime(0.1).is_ok());
    }

    /// 10,000 refreshers, each holding its own token issued at the same
    /// instant, spread their refreshes evenly over the jitter window: a
    /// chi-squared test over 20 equal bins.
    #[test]
    fn ten_thousand_refreshers_spread_uniformly() {
        let t = token(3_600); // stale at 2,700 s; window [2,340 s, 2,700 s]
        let j = Jitter::fraction_of_lifetime(0.1).unwrap();
        let earliest = j.earliest(&t);
        assert_eq!(earliest, t.stale.saturating_sub(Duration::from_secs(360)));
        let window = t.stale.duration_since(earliest).as_millis() as u64;
        const BINS: usize = 20;
        let mut counts = [0u32; BINS];
        for i in 0..10_000u64 {
            let t = named(&format!("token-{i}"), 3_600);
            let at = j.refresh_at_for(&t);
            assert!(at >= earliest && at <= t.stale);
            let offset = at.duration_since(earliest).as_millis() as u64;
            counts[((offset * BINS as u64) / (window + 1)) as usize] += 1;
        }
        let expected = 10_000.0 / BINS as f64;
        let chi2: f64 = counts
            .iter()
            .map(|&c| (f64::from(c) - expected).powi(2) / expected)
            .sum();
        // 19 degrees of freedom: the 99.9th percentile is 43.8.
        assert!(chi2 < 43.8, "chi² = {chi2}, bins {counts:?}");
        // And the draw is really spread, not collapsed on a few values.
        assert!(counts.iter().all(|&c| c > 350), "{counts:?}");
    }
}
