//! The errors of the watcher's API. None of them ever holds a secret.

use std::time::Duration;

use tokenkeeper_core::{FetchError, Timestamp};

use crate::http::HttpSetupError;

/// Why [`TokenWatcherBuilder::spawn`](crate::TokenWatcherBuilder::spawn) gave up.
/// The watcher it was starting is stopped, and makes no further request.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnError {
    /// The source refused for good (`invalid_client`, `invalid_grant`, a 4xx,
    /// a missing refresh token, ...): waiting longer would not help.
    #[error("the token source refused the request: {error}")]
    Rejected {
        /// The refusal.
        error: FetchError,
    },
    /// The token endpoint is misconfigured: its TLS certificate cannot be
    /// verified ([`FetchError::Tls`]), the URL is not a token endpoint
    /// ([`FetchError::NotATokenEndpoint`]), or, for a client made from an
    /// issuer, its metadata cannot be used for good (it names another
    /// issuer, is not served, has no usable token endpoint:
    /// [`FetchError::Discovery`]). The message says what to do.
    #[error("the token endpoint is misconfigured: {error}")]
    Misconfigured {
        /// What is wrong.
        error: FetchError,
    },
    /// No token came within the configured wait (the source kept failing
    /// with transient errors, or was slow).
    #[error("no token within {waited:?}{}", last_error_suffix(.last_error))]
    TimedOut {
        /// How long spawn waited.
        waited: Duration,
        /// The last failure, if any attempt had finished.
        last_error: Option<FetchError>,
    },
    /// The request's JWT assertion (RFC 7523) cannot be made as configured
    /// (no key for a `private_key_jwt` client, a key that does not fit its
    /// auth method), or an assertion made elsewhere expired or is not a
    /// JWT: [`FetchError::Assertion`].
    #[error("{error}")]
    Assertion {
        /// What is wrong.
        error: FetchError,
    },
    /// The HTTP client could not be set up.
    #[error(transparent)]
    Http(#[from] HttpSetupError),
    /// Not called where the runtime can start the watcher (for
    /// `tokenkeeper-tokio`: outside a tokio runtime).
    #[error(
        "a token watcher must be started within its runtime (for tokenkeeper-tokio, a tokio runtime)"
    )]
    NoRuntime,
    /// The default cache folder was asked for, but neither `XDG_CACHE_HOME`
    /// nor `HOME` gives one.
    #[error("no cache folder: neither XDG_CACHE_HOME nor HOME is set")]
    NoCacheDir,
    /// The watcher's task ended before a token was held (its runtime shut
    /// down, say).
    #[error("the token watcher stopped before it held a token")]
    Stopped,
    /// A [`TokenPool`](crate::TokenPool)'s factory could not make a source
    /// for the key.
    #[error("no token source for this key: {reason}")]
    InvalidKey {
        /// The factory's answer.
        reason: String,
    },
}

fn last_error_suffix(error: &Option<FetchError>) -> String {
    match error {
        Some(e) => format!("; last error: {e}"),
        None => String::new(),
    }
}

impl SpawnError {
    /// Whether waiting longer cannot help: the source refused, or the
    /// endpoint is misconfigured.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            SpawnError::Rejected { .. }
                | SpawnError::Misconfigured { .. }
                | SpawnError::Assertion { .. }
        )
    }

    /// A permanent fetch error as `spawn` reports it: a misconfiguration
    /// apart from a refusal.
    pub(crate) fn permanent(error: FetchError) -> Self {
        if matches!(error, FetchError::Assertion { .. }) {
            SpawnError::Assertion { error }
        } else if error.is_misconfiguration() {
            SpawnError::Misconfigured { error }
        } else {
            SpawnError::Rejected { error }
        }
    }

    /// The fetch error behind this one, if any.
    pub fn fetch_error(&self) -> Option<&FetchError> {
        match self {
            SpawnError::Rejected { error }
            | SpawnError::Misconfigured { error }
            | SpawnError::Assertion { error } => Some(error),
            SpawnError::TimedOut { last_error, .. } => last_error.as_ref(),
            _ => None,
        }
    }
}

/// Why [`TokenWatcher::token`](crate::TokenWatcher::token) has no token to give.
///
/// It is small and `Copy`, so that the hot path stays as cheap as one atomic
/// load; why the watcher could not get a token (the last error, the failures
/// in a row) is in [`TokenWatcher::status`](crate::TokenWatcher::status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// No token yet (a watcher started with
    /// [`TokenWatcherBuilder::start`](crate::TokenWatcherBuilder::start)), or
    /// the last one expired before a new one could be had. The watcher keeps
    /// trying.
    #[error("no usable token{}", unavailable_details(.expired_at))]
    Unavailable {
        /// When the last token expired, if one did.
        expired_at: Option<Timestamp>,
    },
    /// The watcher has stopped: it was shut down, or its task ended.
    #[error("the token watcher has stopped")]
    Stopped,
}

fn unavailable_details(expired_at: &Option<Timestamp>) -> String {
    match expired_at {
        Some(at) => format!(
            ": the last one expired at {at} and could not be replaced yet \
             (the watcher's status has the last error)"
        ),
        None => " yet (the watcher's status has the last error, if any)".to_owned(),
    }
}

/// The watcher's background task is gone (shut down, or its runtime ended),
/// so it can neither refresh nor report changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the token watcher has stopped")]
pub struct WatcherStopped;

/// Why [`TokenWatcher::changed_within`](crate::TokenWatcher::changed_within)
/// returned without a new token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChangedError {
    /// No new token within the wait.
    #[error("no new token within the wait")]
    TimedOut,
    /// The watcher stopped first.
    #[error("the token watcher has stopped")]
    Stopped,
}

impl From<WatcherStopped> for TokenError {
    fn from(_: WatcherStopped) -> Self {
        TokenError::Stopped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_error_is_small_enough_to_travel_in_registers() {
        assert!(std::mem::size_of::<TokenError>() <= 16);
    }
}
