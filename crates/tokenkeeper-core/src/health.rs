//! A one-word summary of a refresher's [`Status`] for health checks:
//! [`Health::Ready`], [`Health::Degraded`] or [`Health::Broken`], with the
//! reason.
//!
//! | health   | when                                                                                   |
//! |----------|----------------------------------------------------------------------------------------|
//! | broken   | shut down; or the last fetch failed permanently (`invalid_client`, `invalid_grant`, a certificate that cannot be verified, a URL that is no token endpoint, ...) and none has succeeded since; or no usable token |
//! | degraded | the token is usable but stale (served from its grace period), or fetches are failing transiently |
//! | ready    | otherwise: a fresh token, and the last fetch (if any since the last token) succeeded      |
//!
//! A permanent failure makes the health broken even while the token in hand
//! is still valid: the refresher retries it only at the backoff cap, so
//! without someone fixing the credentials or the configuration, readers
//! lose their token at its expiry.
//!
//! Computing it is pure: it reads the snapshot and the instant it is given,
//! nothing else (no clock, no I/O), so a health probe may call it as often
//! as it likes.

use std::fmt;

use crate::clock::Now;
use crate::error::FetchError;
use crate::refresher::Status;
use crate::time::Timestamp;
use crate::token::TokenState;

/// A health summary: whether the token supply is fine, degraded or broken.
///
/// From [`Status::health`]. `Display` writes `ready`, or `degraded: ` /
/// `broken: ` followed by the reason; it never shows a secret.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Health {
    /// A fresh token is held and nothing is failing.
    Ready,
    /// Tokens are served, but something needs attention: the token is
    /// stale (its grace period), or fetches fail transiently.
    Degraded {
        /// Why.
        reason: HealthReason,
    },
    /// No token can be served, or soon none will be without someone
    /// stepping in: shut down, refused for good, or no usable token.
    Broken {
        /// Why.
        reason: HealthReason,
    },
}

/// Why a [`Health`] is degraded or broken.
///
/// Every field is safe to log: errors are [`FetchError`]s, which never hold
/// a secret or raw text from the authority.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum HealthReason {
    /// The token is past its stale time and is served from its grace
    /// period, until `expiry`, while a replacement is sought (the authority
    /// failing, slow, or another process holding the fleet's lease).
    Stale {
        /// When the token expires.
        expiry: Timestamp,
        /// Failed fetches in a row.
        consecutive_failures: u32,
        /// The last failure, when there were failures.
        error: Option<FetchError>,
    },
    /// The last fetches failed with transient errors (timeouts, 5xx, ...);
    /// the token in hand is still fresh.
    Failing {
        /// Failed fetches in a row.
        consecutive_failures: u32,
        /// The last failure.
        error: Option<FetchError>,
    },
    /// The authority refused the client or grant for good
    /// (`invalid_client`, `invalid_grant`, `invalid_scope`, ...), and no
    /// fetch has succeeded since: the credentials need fixing.
    Refused {
        /// Failed fetches in a row.
        consecutive_failures: u32,
        /// The refusal.
        error: FetchError,
    },
    /// The token endpoint is misconfigured ([`FetchError::is_misconfiguration`]:
    /// a certificate that cannot be verified, a URL that is no token
    /// endpoint), and no fetch has succeeded since: the settings need fixing.
    Misconfigured {
        /// Failed fetches in a row.
        consecutive_failures: u32,
        /// The failure.
        error: FetchError,
    },
    /// The token expired before a replacement came.
    Expired {
        /// When it expired.
        expiry: Timestamp,
        /// Failed fetches in a row.
        consecutive_failures: u32,
        /// The last failure, when there were failures.
        error: Option<FetchError>,
    },
    /// There is no usable token: none yet (a first fetch may be under way),
    /// or the last one expired unreplaced.
    NoToken {
        /// Failed fetches in a row.
        consecutive_failures: u32,
        /// The last failure, when there were failures.
        error: Option<FetchError>,
    },
    /// The refresher has shut down: it serves nothing any more.
    ShutDown,
}

impl Health {
    /// `ready`, `degraded` or `broken`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Health::Ready => "ready",
            Health::Degraded { .. } => "degraded",
            Health::Broken { .. } => "broken",
        }
    }

    /// Whether it is [`Health::Ready`].
    pub fn is_ready(&self) -> bool {
        matches!(self, Health::Ready)
    }

    /// Whether it is [`Health::Degraded`].
    pub fn is_degraded(&self) -> bool {
        matches!(self, Health::Degraded { .. })
    }

    /// Whether it is [`Health::Broken`].
    pub fn is_broken(&self) -> bool {
        matches!(self, Health::Broken { .. })
    }

    /// Why it is degraded or broken; `None` when ready.
    pub fn reason(&self) -> Option<&HealthReason> {
        match self {
            Health::Ready => None,
            Health::Degraded { reason } | Health::Broken { reason } => Some(reason),
        }
    }
}

impl HealthReason {
    /// A short name for the reason, fit for a log field or a metric label:
    /// `stale`, `failing`, `refused`, `misconfigured`, `expired`,
    /// `no_token` or `shut_down`.
    pub fn as_str(&self) -> &'static str {
        match self {
            HealthReason::Stale { .. } => "stale",
            HealthReason::Failing { .. } => "failing",
            HealthReason::Refused { .. } => "refused",
            HealthReason::Misconfigured { .. } => "misconfigured",
            HealthReason::Expired { .. } => "expired",
            HealthReason::NoToken { .. } => "no_token",
            HealthReason::ShutDown => "shut_down",
        }
    }

    /// The fetch error behind the reason, when there is one.
    pub fn error(&self) -> Option<&FetchError> {
        match self {
            HealthReason::Refused { error, .. } | HealthReason::Misconfigured { error, .. } => {
                Some(error)
            }
            HealthReason::Stale { error, .. }
            | HealthReason::Failing { error, .. }
            | HealthReason::Expired { error, .. }
            | HealthReason::NoToken { error, .. } => error.as_ref(),
            HealthReason::ShutDown => None,
        }
    }

    /// Failed fetches in a row behind the reason (0 for a shut down refresher).
    pub fn consecutive_failures(&self) -> u32 {
        match self {
            HealthReason::Stale {
                consecutive_failures,
                ..
            }
            | HealthReason::Failing {
                consecutive_failures,
                ..
            }
            | HealthReason::Refused {
                consecutive_failures,
                ..
            }
            | HealthReason::Misconfigured {
                consecutive_failures,
                ..
            }
            | HealthReason::Expired {
                consecutive_failures,
                ..
            }
            | HealthReason::NoToken {
                consecutive_failures,
                ..
            } => *consecutive_failures,
            HealthReason::ShutDown => 0,
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Health::Ready => f.write_str("ready"),
            Health::Degraded { reason } => write!(f, "degraded: {reason}"),
            Health::Broken { reason } => write!(f, "broken: {reason}"),
        }
    }
}

/// `; 3 failed attempts in a row, the last: <error>`, or nothing.
struct Failures<'a>(u32, Option<&'a FetchError>);

impl fmt::Display for Failures<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Failures(n, error) = *self;
        if n == 0 {
            return Ok(());
        }
        let attempts = if n == 1 { "attempt" } else { "attempts" };
        write!(f, "; {n} failed {attempts} in a row")?;
        if let Some(error) = error {
            write!(f, ", the last: {error}")?;
        }
        Ok(())
    }
}

impl fmt::Display for HealthReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let failures = Failures(self.consecutive_failures(), self.error());
        match self {
            HealthReason::Stale { expiry, .. } => write!(
                f,
                "serving a stale token from its grace period, until it expires at {expiry}{failures}"
            ),
            HealthReason::Failing { .. } => {
                write!(f, "the token is still fresh, but fetches fail{failures}")
            }
            HealthReason::Refused { error, .. } => {
                write!(f, "the authority refused for good: {error}")
            }
            HealthReason::Misconfigured { error, .. } => {
                write!(f, "the token endpoint is misconfigured: {error}")
            }
            HealthReason::Expired { expiry, .. } => write!(
                f,
                "the token expired at {expiry} before a replacement came{failures}"
            ),
            HealthReason::NoToken { .. } => write!(f, "no usable token{failures}"),
            HealthReason::ShutDown => f.write_str("shut down"),
        }
    }
}

impl Status {
    /// The health this snapshot shows at `now` (its wall clock is compared
    /// with the token's times). Pure: no clock read, no I/O.
    ///
    /// - [`Health::Broken`] when the refresher has shut down; when the last
    ///   fetch failed permanently ([`FetchError::class`]) and none has
    ///   succeeded since ([`HealthReason::Misconfigured`] when
    ///   [`FetchError::is_misconfiguration`], else [`HealthReason::Refused`]),
    ///   even while the token in hand is still valid; or when there is no
    ///   usable token.
    /// - [`Health::Degraded`] when the token is usable but stale, or fetches
    ///   have failed (transiently) since the last success.
    /// - [`Health::Ready`] otherwise.
    ///
    /// A snapshot only ages: the token's state is the later of
    /// [`Status::token_state`] (as the snapshot was taken) and the state its
    /// times give at `now`, so health computed from an old snapshot never
    /// looks better than it was.
    #[must_use]
    pub fn health(&self, now: impl Into<Now>) -> Health {
        let now = now.into().wall;
        if self.shut_down {
            return Health::Broken {
                reason: HealthReason::ShutDown,
            };
        }
        let consecutive_failures = self.consecutive_failures;
        let error = self
            .last_error
            .as_ref()
            .filter(|_| consecutive_failures > 0);
        if let Some(error) = error.filter(|e| e.is_permanent()) {
            let error = error.clone();
            let reason = if error.is_misconfiguration() {
                HealthReason::Misconfigured {
                    consecutive_failures,
                    error,
                }
            } else {
                HealthReason::Refused {
                    consecutive_failures,
                    error,
                }
            };
            return Health::Broken { reason };
        }
        let error = error.cloned();
        match self.token_state_at(now) {
            None => Health::Broken {
                reason: HealthReason::NoToken {
                    consecutive_failures,
                    error,
                },
            },
            Some(TokenState::Expired) => Health::Broken {
                reason: match self.expiry {
                    Some(expiry) => HealthReason::Expired {
                        expiry,
                        consecutive_failures,
                        error,
                    },
                    None => HealthReason::NoToken {
                        consecutive_failures,
                        error,
                    },
                },
            },
            Some(TokenState::Stale) => Health::Degraded {
                reason: HealthReason::Stale {
                    // A stale token without an expiry cannot be: use the
                    // instant given rather than fail.
                    expiry: self.expiry.unwrap_or(now),
                    consecutive_failures,
                    error,
                },
            },
            Some(TokenState::Fresh) if consecutive_failures > 0 => Health::Degraded {
                reason: HealthReason::Failing {
                    consecutive_failures,
                    error,
                },
            },
            Some(TokenState::Fresh) => Health::Ready,
        }
    }

    /// The token's state at `now`: the later of the recorded state and the
    /// one its times give; `None` without a token.
    fn token_state_at(&self, now: Timestamp) -> Option<TokenState> {
        let recorded = self.token_state?;
        let by_times = match (self.stale, self.expiry) {
            (_, Some(expiry)) if now >= expiry => TokenState::Expired,
            // Never stale before it was issued (a clock that stepped back).
            (Some(stale), Some(_)) if now >= stale && self.issued.is_none_or(|i| now >= i) => {
                TokenState::Stale
            }
            _ => TokenState::Fresh,
        };
        Some(later(recorded, by_times))
    }
}

/// The later of two states of one token (fresh, then stale, then expired).
fn later(a: TokenState, b: TokenState) -> TokenState {
    let rank = |s: TokenState| match s {
        TokenState::Fresh => 0,
        TokenState::Stale => 1,
        TokenState::Expired => 2,
    };
    if rank(b) > rank(a) { b } else { a }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::error::{ErrorClass, OAuthError, TlsProblem};
    use crate::refresher::{Effect, Input, Refresher, RefresherConfig};
    use crate::secret::AccessToken;
    use crate::token::TokenGrant;
    use crate::{CacheKey, Jitter};

    const T0: Timestamp = Timestamp::from_secs(1_700_000_000);

    fn at(secs: u64) -> Timestamp {
        T0.saturating_add(Duration::from_secs(secs))
    }

    /// A token issued at T0, stale at +45 s, expiring at +60 s.
    fn status() -> Status {
        Status {
            token_state: Some(TokenState::Fresh),
            issued: Some(T0),
            stale: Some(at(45)),
            expiry: Some(at(60)),
            last_error: None,
            last_error_at: None,
            consecutive_failures: 0,
            last_success_at: Some(T0),
            next_attempt: Some(at(40)),
            fetch_in_flight: false,
            shut_down: false,
        }
    }

    fn transient() -> FetchError {
        FetchError::Status {
            status: 503,
            snippet: String::new(),
            retry_after: None,
        }
    }

    fn refused(code: &str) -> FetchError {
        FetchError::OAuth {
            status: 400,
            error: OAuthError::new(code, None),
            retry_after: None,
        }
    }

    fn failing(mut s: Status, error: FetchError, n: u32) -> Status {
        s.last_error = Some(error);
        s.last_error_at = Some(at(10));
        s.consecutive_failures = n;
        s
    }

    #[test]
    fn a_fresh_token_and_no_failure_is_ready() {
        assert_eq!(status().health(at(1)), Health::Ready);
        assert_eq!(status().health(at(1)).to_string(), "ready");
        // An old error after a success does not count.
        let mut s = failing(status(), refused("invalid_client"), 0);
        s.last_success_at = Some(at(20));
        assert_eq!(s.health(at(21)), Health::Ready);
    }

    #[test]
    fn a_stale_token_is_degraded_until_it_expires() {
        let h = status().health(at(50));
        assert_eq!(
            h,
            Health::Degraded {
                reason: HealthReason::Stale {
                    expiry: at(60),
                    consecutive_failures: 0,
                    error: None,
                }
            }
        );
        assert_eq!(h.reason().unwrap().as_str(), "stale");
        assert!(h.to_string().starts_with("degraded: serving a stale token"));
        // The recorded state wins when it is later than the times say
        // (a snapshot taken by a refresher on the monotonic clock).
        let mut s = status();
        s.token_state = Some(TokenState::Stale);
        assert!(s.health(at(1)).is_degraded());
        // Never stale before it was issued.
        assert!(
            status()
                .health(T0.saturating_sub(Duration::from_secs(99)))
                .is_ready()
        );
    }

    #[test]
    fn transient_failures_with_a_fresh_token_are_degraded() {
        let s = failing(status(), transient(), 3);
        let h = s.health(at(20));
        assert_eq!(
            h,
            Health::Degraded {
                reason: HealthReason::Failing {
                    consecutive_failures: 3,
                    error: Some(transient()),
                }
            }
        );
        let text = h.to_string();
        assert!(text.contains("3 failed attempts in a row"), "{text}");
        assert!(text.contains("503"), "{text}");
        // Stale and failing: the grace period is the reason, the failures told.
        let h = s.health(at(50));
        assert_eq!(h.reason().unwrap().as_str(), "stale");
        assert_eq!(h.reason().unwrap().consecutive_failures(), 3);
    }

    #[test]
    fn a_permanent_refusal_is_broken_even_with_a_valid_token() {
        for code in ["invalid_client", "invalid_grant"] {
            let h = failing(status(), refused(code), 1).health(at(20));
            assert!(h.is_broken(), "{code}: {h}");
            let reason = h.reason().unwrap();
            assert_eq!(reason.as_str(), "refused");
            assert_eq!(reason.error(), Some(&refused(code)));
            assert!(h.to_string().contains(code), "{h}");
        }
        // A certificate that cannot be verified: misconfigured.
        let tls = FetchError::Tls {
            host: "auth.example".into(),
            problem: TlsProblem::UnknownIssuer,
        };
        assert_eq!(tls.class(), ErrorClass::Permanent);
        let h = failing(status(), tls, 2).health(at(20));
        assert!(h.is_broken());
        assert_eq!(h.reason().unwrap().as_str(), "misconfigured");
        // The same refusal without a token.
        let mut s = failing(status(), refused("invalid_client"), 1);
        s.token_state = None;
        assert_eq!(
            s.health(at(20)).reason().unwrap().as_str(),
            "refused",
            "the refusal says more than `no token`"
        );
    }

    #[test]
    fn no_token_and_an_expired_token_are_broken() {
        let mut none = status();
        none.token_state = None;
        none.issued = None;
        none.stale = None;
        none.expiry = None;
        assert_eq!(
            none.health(at(1)),
            Health::Broken {
                reason: HealthReason::NoToken {
                    consecutive_failures: 0,
                    error: None,
                }
            }
        );
        let failed = failing(none, transient(), 2).health(at(1));
        assert_eq!(failed.reason().unwrap().as_str(), "no_token");
        assert!(failed.to_string().contains("2 failed attempts"), "{failed}");

        let expired = failing(status(), transient(), 4).health(at(60));
        assert_eq!(
            expired,
            Health::Broken {
                reason: HealthReason::Expired {
                    expiry: at(60),
                    consecutive_failures: 4,
                    error: Some(transient()),
                }
            }
        );
    }

    #[test]
    fn shut_down_is_broken_whatever_else() {
        let mut s = failing(status(), refused("invalid_client"), 1);
        s.shut_down = true;
        assert_eq!(
            s.health(at(1)),
            Health::Broken {
                reason: HealthReason::ShutDown
            }
        );
        assert_eq!(s.health(at(1)).to_string(), "broken: shut down");
    }

    /// A refresher driven by hand through each health, as a driver sees it.
    #[test]
    fn a_refresher_goes_through_each_health() {
        let key = CacheKey::custom("health", &[]);
        let config = RefresherConfig::custom(key).jitter(Jitter::none());
        let mut r = Refresher::new(config, 1, T0);
        assert_eq!(
            r.status(T0).health(T0).reason().unwrap().as_str(),
            "no_token"
        );

        let fetch_id = |r: &mut Refresher| loop {
            match r.poll_effect() {
                Some(Effect::Fetch { id, .. }) => break id,
                Some(_) => continue,
                None => panic!("no fetch asked for"),
            }
        };
        let id = fetch_id(&mut r);
        let grant = TokenGrant::bearer(AccessToken::new("one"), Some(Duration::from_secs(600)));
        r.handle(
            T0,
            Input::Grant {
                id,
                result: Ok(grant),
            },
        )
        .unwrap();
        assert_eq!(r.status(T0).health(T0), Health::Ready);

        // A transient failure at the refresh time: degraded (the token is stale).
        let due = r.poll_wait().deadline().unwrap();
        r.handle(due, Input::Timeout).unwrap();
        let id = fetch_id(&mut r);
        let error = FetchError::Source {
            message: "down".into(),
            class: ErrorClass::Transient,
        };
        r.handle(
            due,
            Input::Grant {
                id,
                result: Err(error),
            },
        )
        .unwrap();
        let h = r.status(due).health(due);
        assert!(h.is_degraded(), "{h}");
        assert_eq!(h.reason().unwrap().consecutive_failures(), 1);

        // Then a permanent one: broken, with the token still valid.
        let retry = r.poll_wait().deadline().unwrap();
        r.handle(retry, Input::Timeout).unwrap();
        let id = fetch_id(&mut r);
        let error = FetchError::Source {
            message: "revoked".into(),
            class: ErrorClass::Permanent,
        };
        r.handle(
            retry,
            Input::Grant {
                id,
                result: Err(error),
            },
        )
        .unwrap();
        let status = r.status(retry);
        assert!(status.token_state.is_some_and(TokenState::is_usable));
        let h = status.health(retry);
        assert_eq!(h.reason().unwrap().as_str(), "refused", "{h}");

        // Shut down: broken, whatever came before.
        r.shutdown(retry);
        assert_eq!(
            r.status(retry).health(retry).reason(),
            Some(&HealthReason::ShutDown)
        );
    }
}
