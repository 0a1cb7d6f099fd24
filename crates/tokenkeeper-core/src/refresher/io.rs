//! The refresher's outputs (effects to carry out, events to report) and the
//! answers drivers give back.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::cache::{EncodedRecord, RecordError};
use crate::error::{CacheError, ErrorClass, FetchError};
use crate::oauth2::TokenRequest;
use crate::secret::RefreshToken;
use crate::time::Timestamp;
use crate::token::{TokenRecord, TokenState};

/// Names one effect; its answer carries the same id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EffectId(pub(crate) u64);

impl fmt::Debug for EffectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

impl fmt::Display for EffectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Something the refresher needs done. Every effect with an `id` must be
/// answered through the matching `handle_*` method; [`Effect::ReleaseLease`]
/// needs no answer.
#[derive(Debug)]
#[non_exhaustive]
// Effects are moved once from the queue to the driver; boxing the request
// would add an allocation for nothing.
#[allow(clippy::large_enum_variant)]
pub enum Effect {
    /// Load the record stored in `layer`; answer with
    /// [`Refresher::handle_cache_read`](super::Refresher::handle_cache_read).
    ReadCache {
        /// The effect's id.
        id: EffectId,
        /// Index of the layer, in configuration order.
        layer: usize,
    },
    /// Store `record` in `layer` (replacing what is there); answer with
    /// [`Refresher::handle_cache_written`](super::Refresher::handle_cache_written).
    WriteCache {
        /// The effect's id.
        id: EffectId,
        /// Index of the layer.
        layer: usize,
        /// The bytes to store, and the expiry a store may use as a TTL.
        record: EncodedRecord,
    },
    /// Try to take the lease of `layer` for `ttl`, without waiting; answer with
    /// [`Refresher::handle_lease`](super::Refresher::handle_lease).
    AcquireLease {
        /// The effect's id.
        id: EffectId,
        /// Index of the layer.
        layer: usize,
        /// How long the lease lives unless released.
        ttl: Duration,
    },
    /// Give back the lease of `layer`. No answer is needed.
    ReleaseLease {
        /// Index of the layer.
        layer: usize,
    },
    /// Send this request to the token endpoint; answer with
    /// [`Refresher::handle_response`](super::Refresher::handle_response), or
    /// [`Refresher::handle_fetch_error`](super::Refresher::handle_fetch_error)
    /// when no answer came.
    SendRequest {
        /// The effect's id.
        id: EffectId,
        /// The request; it holds secrets.
        request: TokenRequest,
    },
    /// Get a token from the custom source; answer with
    /// [`Refresher::handle_grant`](super::Refresher::handle_grant).
    Fetch {
        /// The effect's id.
        id: EffectId,
        /// The refresh token to use, when there is one.
        refresh_token: Option<RefreshToken>,
    },
}

/// The outcome of an [`Effect::AcquireLease`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LeaseOutcome {
    /// The lease is ours until released or expired.
    Acquired,
    /// Someone else holds it.
    HeldByOther,
    /// The store could not be asked; the refresher carries on without this lease.
    Failed(CacheError),
}

/// Where a token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Origin {
    /// Read from a cache layer.
    Cache {
        /// Index of the layer.
        layer: usize,
    },
    /// Fetched from the authority.
    Authority,
}

/// A cache layer that misbehaved. Never fatal: the refresher treats it as a miss.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum CacheProblem {
    /// The store could not be read.
    Read(CacheError),
    /// The store held a record that cannot be used; it will be replaced.
    Unreadable(RecordError),
    /// The store could not be written.
    Write(CacheError),
    /// The lease could not be asked for.
    Lease(CacheError),
}

/// Something that happened, for drivers to publish and log.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// A new token is current: publish it to readers.
    TokenChanged {
        /// The token.
        token: Arc<TokenRecord>,
        /// Where it came from.
        origin: Origin,
    },
    /// The current token expired without a replacement: stop serving it.
    TokenExpired {
        /// Its expiry.
        expiry: Timestamp,
    },
    /// A fetch failed.
    FetchFailed {
        /// Why.
        error: FetchError,
        /// Whether it may go away by itself.
        class: ErrorClass,
        /// Failures in a row, this one included.
        consecutive_failures: u32,
        /// When the next attempt is planned.
        retry_at: Timestamp,
    },
    /// A cache layer misbehaved.
    CacheProblem {
        /// Index of the layer.
        layer: usize,
        /// What happened.
        problem: CacheProblem,
    },
    /// Another refresher holds the lease; this one re-reads the layer later.
    LeaseBusy {
        /// Index of the layer.
        layer: usize,
        /// When the layer is re-read.
        retry_at: Timestamp,
    },
    /// The refresher has shut down.
    Stopped,
}

/// What became of a [`Refresher::refresh_now`](super::Refresher::refresh_now) request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefreshNow {
    /// A refresh cycle starts now.
    Started,
    /// A refresh is already under way; it will deliver a token newer than the current one.
    Joined,
    /// Too soon after the last forced refresh; try again at `until`.
    RateLimited {
        /// When a forced refresh is allowed again.
        until: Timestamp,
    },
    /// The refresher has shut down.
    ShutDown,
}

/// The refresher's state, for operators and health checks.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Status {
    /// The current token's state, if there is one.
    pub token_state: Option<TokenState>,
    /// When the current token was issued.
    pub issued: Option<Timestamp>,
    /// When the current token goes stale.
    pub stale: Option<Timestamp>,
    /// When the current token expires.
    pub expiry: Option<Timestamp>,
    /// The last fetch error, kept after later successes for diagnosis.
    pub last_error: Option<FetchError>,
    /// When it happened.
    pub last_error_at: Option<Timestamp>,
    /// Failed fetches since the last success.
    pub consecutive_failures: u32,
    /// When the last fetch succeeded.
    pub last_success_at: Option<Timestamp>,
    /// When the refresher next acts on its own (`None` while it waits on an effect).
    pub next_attempt: Option<Timestamp>,
    /// Whether a fetch is in flight.
    pub fetch_in_flight: bool,
    /// Whether it has shut down.
    pub shut_down: bool,
}

/// Misuse of the refresher's API: a bug in the driver, not a protocol error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MisuseError {
    /// No effect with this id is awaiting an answer.
    #[error("no effect {0} is awaiting an answer")]
    UnknownEffect(EffectId),
    /// The answer does not fit the effect (a lease answer to a read, say).
    #[error("effect {id} expects {expected}")]
    WrongAnswer {
        /// The effect.
        id: EffectId,
        /// What it expects.
        expected: &'static str,
    },
}
