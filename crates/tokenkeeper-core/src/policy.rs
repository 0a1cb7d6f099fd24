//! The lifetime policy: when a token becomes stale, and when it expires.
//!
//! A token received at `issued` with lifetime `L` (its `expires_in`, less the
//! clock-skew allowance) expires at `issued + L`. It goes stale, and so becomes
//! due for replacement:
//!
//! - at `issued + refresh_in` when the authority sent a `refresh_in` hint
//!   (clamped to the lifetime);
//! - otherwise at `issued + min(fraction × L, L − min_stale_window)` when
//!   `L ≥ 2 × min_stale_window`, so the stale window is never shorter than the
//!   minimum while the lifetime allows it;
//! - otherwise, for short tokens, at half their life.
//!
//! So with the defaults (0.75, 30 s) a 100 s token goes stale at 70 s, a 1 h
//! token at 45 min, and a 20 s token at 10 s: always before it expires.

use std::time::Duration;

use crate::time::{Timestamp, saturating_mul_f64};
use crate::token::{TokenGrant, TokenRecord};

/// A lifetime policy that failed validation.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The stale fraction must lie in (0, 1].
    #[error("stale fraction must be greater than 0 and at most 1, got {0}")]
    StaleFraction(f64),
    /// The default lifetime (used when `expires_in` is absent) must not be zero.
    #[error("the default token lifetime must be longer than zero")]
    ZeroDefaultLifetime,
    /// A jitter fraction must lie in [0, 1].
    #[error("jitter fraction must be between 0 and 1, got {0}")]
    JitterFraction(f64),
    /// Backoff settings are inconsistent.
    #[error("invalid backoff: {0}")]
    Backoff(&'static str),
}

/// When tokens go stale and expire. Build with [`LifetimePolicy::builder`].
#[derive(Debug, Clone, PartialEq)]
pub struct LifetimePolicy {
    stale_fraction: f64,
    min_stale_window: Duration,
    clock_skew: Duration,
    default_lifetime: Duration,
}

impl Default for LifetimePolicy {
    fn default() -> Self {
        LifetimePolicy {
            stale_fraction: 0.75,
            min_stale_window: Duration::from_secs(30),
            clock_skew: Duration::ZERO,
            default_lifetime: Duration::from_secs(300),
        }
    }
}

/// Builds a validated [`LifetimePolicy`].
#[derive(Debug, Clone)]
pub struct LifetimePolicyBuilder(LifetimePolicy);

impl LifetimePolicyBuilder {
    /// Fraction of the lifetime after which a token is stale (default 0.75).
    pub fn stale_fraction(mut self, fraction: f64) -> Self {
        self.0.stale_fraction = fraction;
        self
    }

    /// Shortest stale window when the lifetime allows it (default 30 s).
    pub fn min_stale_window(mut self, window: Duration) -> Self {
        self.0.min_stale_window = window;
        self
    }

    /// Taken off every lifetime to allow for clocks that disagree (default 0).
    pub fn clock_skew(mut self, skew: Duration) -> Self {
        self.0.clock_skew = skew;
        self
    }

    /// Lifetime assumed when the authority sends no `expires_in` (default 5 min).
    pub fn default_lifetime(mut self, lifetime: Duration) -> Self {
        self.0.default_lifetime = lifetime;
        self
    }

    /// Validates the settings.
    pub fn build(self) -> Result<LifetimePolicy, PolicyError> {
        let f = self.0.stale_fraction;
        if !(f > 0.0 && f <= 1.0) {
            return Err(PolicyError::StaleFraction(f));
        }
        if self.0.default_lifetime.is_zero() {
            return Err(PolicyError::ZeroDefaultLifetime);
        }
        Ok(self.0)
    }
}

impl LifetimePolicy {
    /// Starts from the defaults.
    pub fn builder() -> LifetimePolicyBuilder {
        LifetimePolicyBuilder(LifetimePolicy::default())
    }

    /// The stale fraction.
    pub fn stale_fraction(&self) -> f64 {
        self.stale_fraction
    }

    /// The minimum stale window.
    pub fn min_stale_window(&self) -> Duration {
        self.min_stale_window
    }

    /// The clock-skew allowance.
    pub fn clock_skew(&self) -> Duration {
        self.clock_skew
    }

    /// The lifetime assumed when `expires_in` is absent.
    pub fn default_lifetime(&self) -> Duration {
        self.default_lifetime
    }

    /// The stale and expiry instants of a token received at `issued`.
    pub fn instants(
        &self,
        issued: Timestamp,
        expires_in: Option<Duration>,
        refresh_in: Option<Duration>,
    ) -> (Timestamp, Timestamp) {
        let life = expires_in
            .unwrap_or(self.default_lifetime)
            .saturating_sub(self.clock_skew);
        let expiry = issued.saturating_add(life);
        let fresh_for = match refresh_in {
            Some(hint) => hint.min(life),
            // Saturating: `mul_f64` panics when a lifetime near `u64::MAX`
            // seconds, times 1.0, rounds up past the largest `Duration`.
            None if life >= self.min_stale_window.saturating_mul(2) => {
                saturating_mul_f64(life, self.stale_fraction)
                    .min(life.saturating_sub(self.min_stale_window))
            }
            None => life / 2,
        };
        (issued.saturating_add(fresh_for).min(expiry), expiry)
    }

    /// Turns what the authority granted at `issued` into a timed record.
    ///
    /// `previous_refresh_token` is kept when the grant carries no new one.
    pub fn record(
        &self,
        grant: TokenGrant,
        issued: Timestamp,
        previous_refresh_token: Option<crate::secret::RefreshToken>,
    ) -> TokenRecord {
        let (stale, expiry) = self.instants(issued, grant.expires_in, grant.refresh_in);
        TokenRecord {
            access_token: grant.access_token,
            token_type: grant.token_type,
            refresh_token: grant.refresh_token.or(previous_refresh_token),
            id_token: grant.id_token,
            scope: grant.scope,
            issued,
            stale,
            expiry,
            extra: grant.extra,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stale_after(policy: &LifetimePolicy, life_secs: u64) -> (u64, u64) {
        let issued = Timestamp::from_secs(1_000);
        let (stale, expiry) = policy.instants(issued, Some(Duration::from_secs(life_secs)), None);
        (
            stale.duration_since(issued).as_millis() as u64,
            expiry.duration_since(issued).as_millis() as u64,
        )
    }

    // aliri_tokens computes issued + max(0.75 × life, 30 s): a 10 s or 20 s token
    // would only go stale after it expired. Ours go stale at half their life.
    #[test]
    fn short_tokens_go_stale_before_they_expire() {
        let p = LifetimePolicy::default();
        assert_eq!(stale_after(&p, 10), (5_000, 10_000));
        assert_eq!(stale_after(&p, 20), (10_000, 20_000));
        assert_eq!(stale_after(&p, 59), (29_500, 59_000));
    }

    #[test]
    fn a_100s_token_keeps_a_30s_stale_window() {
        let p = LifetimePolicy::default();
        assert_eq!(stale_after(&p, 100), (70_000, 100_000));
        assert_eq!(stale_after(&p, 60), (30_000, 60_000));
    }

    #[test]
    fn long_tokens_use_the_fraction() {
        let p = LifetimePolicy::default();
        assert_eq!(stale_after(&p, 3_600), (2_700_000, 3_600_000));
    }

    #[test]
    fn refresh_in_hint_wins_and_is_clamped() {
        let p = LifetimePolicy::default();
        let issued = Timestamp::from_secs(0);
        let (stale, _) = p.instants(
            issued,
            Some(Duration::from_secs(3_600)),
            Some(Duration::from_secs(600)),
        );
        assert_eq!(stale, Timestamp::from_secs(600));
        let (stale, expiry) = p.instants(
            issued,
            Some(Duration::from_secs(60)),
            Some(Duration::from_secs(600)),
        );
        assert_eq!(stale, expiry);
    }

    #[test]
    fn skew_is_taken_off_the_expiry_and_absent_lifetime_uses_default() {
        let p = LifetimePolicy::builder()
            .clock_skew(Duration::from_secs(10))
            .build()
            .unwrap();
        assert_eq!(stale_after(&p, 110), (70_000, 100_000));
        assert_eq!(stale_after(&p, 5), (0, 0));
        let (_, expiry) = p.instants(Timestamp::EPOCH, None, None);
        assert_eq!(expiry, Timestamp::from_secs(290));
    }

    #[test]
    fn lifetimes_near_the_largest_duration_saturate() {
        let p = LifetimePolicy::builder()
            .stale_fraction(1.0)
            .build()
            .unwrap();
        for life in [Duration::from_secs(u64::MAX), Duration::MAX] {
            let (stale, expiry) = p.instants(Timestamp::from_secs(1), Some(life), None);
            assert_eq!(expiry, Timestamp::MAX);
            assert!(stale <= expiry);
        }
    }

    #[test]
    fn invalid_settings_are_typed_errors() {
        assert_eq!(
            LifetimePolicy::builder().stale_fraction(0.0).build(),
            Err(PolicyError::StaleFraction(0.0))
        );
        assert!(matches!(
            LifetimePolicy::builder().stale_fraction(f64::NAN).build(),
            Err(PolicyError::StaleFraction(_))
        ));
        assert_eq!(
            LifetimePolicy::builder()
                .default_lifetime(Duration::ZERO)
                .build(),
            Err(PolicyError::ZeroDefaultLifetime)
        );
    }
}
