//! The refresher's outputs (effects to carry out, events to report) and the
//! answers drivers give back.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;

use crate::cache::{EncodedRecord, RecordError};
use crate::error::{CacheError, ErrorClass, FetchError};
use crate::oauth2::TokenRequest;
use crate::secret::RefreshToken;
use crate::time::Timestamp;
use crate::token::{TokenGrant, TokenRecord, TokenState};

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

/// Something the refresher needs done. Every effect with an `id` is answered
/// with the matching [`Input`] given to
/// [`Refresher::handle`](super::Refresher::handle) (or the matching `handle_*`
/// method); [`Effect::ReleaseLease`] needs no answer.
///
/// Every effect with an `id` has a deadline inside the refresher
/// ([`Refresher::effect_deadline`](super::Refresher::effect_deadline)): cache
/// effects get the configured cache timeout, fetches the fetch timeout. An
/// effect still unanswered when the refresher is handed an input at or after
/// its deadline is taken as a transient failure, so an answer that never comes
/// cannot wedge the refresher; a late answer is then ignored.
#[derive(Debug)]
#[non_exhaustive]
// Effects are moved once from the queue to the driver; boxing the request
// would add an allocation for nothing.
#[allow(clippy::large_enum_variant)]
pub enum Effect {
    /// Load the record stored in `layer`; answer with [`Input::CacheRead`].
    ReadCache {
        /// The effect's id.
        id: EffectId,
        /// Index of the layer, in configuration order.
        layer: usize,
    },
    /// Store `record` in `layer` (replacing what is there); answer with
    /// [`Input::CacheWritten`].
    WriteCache {
        /// The effect's id.
        id: EffectId,
        /// Index of the layer.
        layer: usize,
        /// The bytes to store, and the expiry a store may use as a TTL.
        record: EncodedRecord,
    },
    /// Try to take the lease of `layer` for `ttl`, without waiting; answer with
    /// [`Input::Lease`].
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
    /// [`Input::Response`], or [`Input::FetchFailed`] when no answer came
    /// (or [`Input::Grant`], for drivers that parse answers themselves).
    ///
    /// For a client made from an issuer, some of these are a `GET` of the
    /// issuer's metadata ([`discovery`](crate::oauth2::discovery)): send it
    /// as it is and answer with [`Input::Response`] (the refresher reads the
    /// document itself; a [`Input::Grant`] cannot answer it).
    SendRequest {
        /// The effect's id.
        id: EffectId,
        /// The request; it holds secrets. Boxed, so that effects are small
        /// (a pool queues many).
        request: Box<TokenRequest>,
        /// The most body bytes to read: the client's
        /// [`body_limit`](crate::oauth2::OAuth2Client::body_limit). A driver
        /// stops reading past it and answers [`FetchError::BodyTooLarge`]
        /// (the refresher checks the cap again on [`Input::Response`]).
        max_body: usize,
    },
    /// Get a token from the custom source; answer with [`Input::Grant`].
    /// When `refresh_token` is given, the source spends it: a shutdown then
    /// waits (up to the configured grace) for the answer, so that a rotated
    /// refresh token is stored rather than lost.
    Fetch {
        /// The effect's id.
        id: EffectId,
        /// The refresh token to use, when there is one.
        refresh_token: Option<RefreshToken>,
    },
}

/// An input to [`Refresher::handle`](super::Refresher::handle): time passed,
/// an effect's answer, or news from a store.
///
/// Its `Debug` never shows a secret: bytes (cache records, response bodies)
/// print as their length, headers by name only, grants through their own
/// redacting `Debug`.
#[non_exhaustive]
pub enum Input {
    /// Time has passed: the instant given to `handle` has come. Early,
    /// spurious and backwards timeouts are harmless.
    Timeout,
    /// Answers an [`Effect::ReadCache`]: the stored bytes, `None` when the
    /// layer holds nothing, or why it could not be read.
    CacheRead {
        /// The effect's id.
        id: EffectId,
        /// What the layer held.
        result: Result<Option<Vec<u8>>, CacheError>,
    },
    /// Answers an [`Effect::WriteCache`].
    CacheWritten {
        /// The effect's id.
        id: EffectId,
        /// Whether the record was stored.
        result: Result<(), CacheError>,
    },
    /// Answers an [`Effect::AcquireLease`].
    Lease {
        /// The effect's id.
        id: EffectId,
        /// Whether the lease was had.
        outcome: LeaseOutcome,
    },
    /// Answers an [`Effect::SendRequest`] with the endpoint's HTTP answer.
    /// The body should already be capped by the driver (see
    /// [`Effect::SendRequest::max_body`]); it is checked again, and wiped
    /// once read.
    Response {
        /// The effect's id.
        id: EffectId,
        /// The HTTP status.
        status: u16,
        /// The response headers (`Retry-After` is read from them).
        headers: HeaderMap,
        /// The response body.
        body: Vec<u8>,
    },
    /// Answers an [`Effect::SendRequest`] that got no HTTP answer (connection
    /// failure, timeout, oversized body).
    FetchFailed {
        /// The effect's id.
        id: EffectId,
        /// What went wrong.
        error: FetchError,
    },
    /// Answers an [`Effect::Fetch`] (or an [`Effect::SendRequest`], for
    /// drivers that parse answers themselves) with what the source granted.
    Grant {
        /// The effect's id.
        id: EffectId,
        /// The grant, or why there is none.
        result: Result<TokenGrant, FetchError>,
    },
    /// Another process changed `layer` (a store notification, say): a
    /// refresher waiting for a lease re-reads at once instead of at its next
    /// retry.
    CacheChanged {
        /// Index of the layer.
        layer: usize,
    },
}

/// Shows the length of some bytes, never the bytes.
struct Len(usize);

impl fmt::Debug for Len {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} bytes>", self.0)
    }
}

/// Shows header names, never their values.
struct Names<'a>(&'a HeaderMap);

impl fmt::Debug for Names<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

impl fmt::Debug for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Input::Timeout => f.write_str("Timeout"),
            Input::CacheRead { id, result } => {
                let result = match result {
                    Ok(Some(bytes)) => Ok(Some(Len(bytes.len()))),
                    Ok(None) => Ok(None),
                    Err(e) => Err(e),
                };
                f.debug_struct("CacheRead")
                    .field("id", id)
                    .field("result", &result)
                    .finish()
            }
            Input::CacheWritten { id, result } => f
                .debug_struct("CacheWritten")
                .field("id", id)
                .field("result", result)
                .finish(),
            Input::Lease { id, outcome } => f
                .debug_struct("Lease")
                .field("id", id)
                .field("outcome", outcome)
                .finish(),
            Input::Response {
                id,
                status,
                headers,
                body,
            } => f
                .debug_struct("Response")
                .field("id", id)
                .field("status", status)
                .field("headers", &Names(headers))
                .field("body", &Len(body.len()))
                .finish(),
            Input::FetchFailed { id, error } => f
                .debug_struct("FetchFailed")
                .field("id", id)
                .field("error", error)
                .finish(),
            Input::Grant { id, result } => f
                .debug_struct("Grant")
                .field("id", id)
                .field("result", result)
                .finish(),
            Input::CacheChanged { layer } => f
                .debug_struct("CacheChanged")
                .field("layer", layer)
                .finish(),
        }
    }
}

/// What a driver waits for before it next calls
/// [`Refresher::handle`](super::Refresher::handle); from
/// [`Refresher::poll_wait`](super::Refresher::poll_wait).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Wait {
    /// No effect is outstanding: call `handle(t, Input::Timeout)` at `t` at
    /// the latest (sooner is harmless).
    Until(Timestamp),
    /// At least one effect awaits an answer: feed answers as they come, and
    /// call `handle(deadline, Input::Timeout)` if none has come by
    /// `deadline`, when the earliest outstanding effect times out (or a timer
    /// of the refresher's own, such as the token's expiry, fires).
    Answer {
        /// When to hand the refresher a timeout at the latest.
        deadline: Timestamp,
    },
    /// The refresher has shut down: nothing more will happen. Drain
    /// [`Refresher::poll_effect`](super::Refresher::poll_effect) and
    /// [`Refresher::poll_event`](super::Refresher::poll_event) once more (lease
    /// releases, [`Event::Stopped`]) and stop.
    Finished,
}

impl Wait {
    /// The instant to hand the refresher a timeout at the latest; `None` once
    /// it has finished.
    pub fn deadline(&self) -> Option<Timestamp> {
        match *self {
            Wait::Until(t) | Wait::Answer { deadline: t } => Some(t),
            Wait::Finished => None,
        }
    }
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
    /// The store held a record issued in the future (another machine's
    /// clock, or a planted file): distrusted and replaced.
    FromTheFuture {
        /// When the record claims it was issued.
        issued: Timestamp,
    },
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
    /// The token given to [`Refresher::refresh_if_current`](crate::Refresher::refresh_if_current)
    /// is no longer the current one: nothing to do, use the current token.
    Replaced,
    /// The refresher is shutting down or has shut down.
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
    /// Whether it has shut down (finished: a shutdown still waiting for a
    /// rotated refresh token is not finished yet).
    pub shut_down: bool,
}

impl Status {
    /// The status of a refresher that has shut down and kept nothing: no
    /// token, no error. What a driver shows for a key it no longer holds.
    pub fn stopped() -> Status {
        Status {
            token_state: None,
            issued: None,
            stale: None,
            expiry: None,
            last_error: None,
            last_error_at: None,
            consecutive_failures: 0,
            last_success_at: None,
            next_attempt: None,
            fetch_in_flight: false,
            shut_down: true,
        }
    }
}

/// Misuse of the refresher's API: a bug in the driver, not a protocol error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MisuseError {
    /// No effect with this id was ever asked for. (An answer to an effect
    /// that was asked for but has timed out or been answered already is
    /// ignored, not an error.)
    #[error("no effect {0} was ever asked for")]
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
