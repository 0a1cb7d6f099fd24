//! The sans-IO engine of tokenkeeper.
//!
//! This crate decides everything about keeping an OAuth2 access token fresh and
//! performs none of it. It never reads a clock, sleeps, spawns, opens a socket
//! or a file, or draws OS randomness: every input carries `now` (wall-clock
//! milliseconds since the Unix epoch, see [`Timestamp`]), randomness comes from
//! a seed the caller gives, and every piece of I/O is an [`Effect`] that a
//! driver carries out and answers.
//!
//! # In scope
//!
//! - Secrets and tokens that never show in logs ([`AccessToken`], [`ClientSecret`], ...).
//! - When a token is stale ([`LifetimePolicy`]), when to refresh it ([`Jitter`]),
//!   when to retry after an error ([`BackoffPolicy`], `Retry-After`), and which
//!   errors are permanent ([`FetchError::class`]).
//! - The OAuth2 token endpoint codec for the client-credentials and
//!   refresh-token grants ([`oauth2`]).
//! - The cache record format and key ([`cache`]), layered caches and a
//!   fleet-wide lease so a fleet fetches once per refresh.
//! - The [`Refresher`] state machine that ties these together.
//! - An exact, deterministic fleet simulation in virtual time ([`sim`]).
//!
//! # Out of scope
//!
//! HTTP clients, TLS, files, Redis, timers and threads: the adapter crates
//! (`tokenkeeper-tokio`, `tokenkeeper-async-std`, `tokenkeeper-blocking`,
//! `tokenkeeper-fs`, `tokenkeeper-redis`) do those. So do reading a token's
//! contents (it is opaque here; no JWT parsing) and the authorization-code
//! flow, which needs a user and a browser.
//!
//! # The driving loop
//!
//! Every driver is the same dozen lines: drain effects and carry them out,
//! drain events and publish them, then wait for the earliest of the next
//! timeout and a finished effect, and feed the result back. Here a fake
//! authority answers at once and time is virtual:
//!
//! ```
//! use std::time::Duration;
//! use tokenkeeper_core::{
//!     AccessToken, CacheKey, Effect, Event, Refresher, RefresherConfig, Timestamp, TokenGrant,
//! };
//!
//! let config = RefresherConfig::custom(CacheKey::custom("doc", &[]));
//! let mut now = Timestamp::from_secs(1_700_000_000);
//! let mut refresher = Refresher::new(config, 42, now);
//! let mut fetches = 0;
//!
//! while now < Timestamp::from_secs(1_700_000_000 + 3 * 3600) {
//!     while let Some(effect) = refresher.poll_effect() {
//!         match effect {
//!             Effect::Fetch { id, .. } => {
//!                 fetches += 1;
//!                 let grant = TokenGrant::bearer(
//!                     AccessToken::new(format!("token-{fetches}")),
//!                     Some(Duration::from_secs(3600)),
//!                 );
//!                 refresher.handle_grant(now, id, Ok(grant))?;
//!             }
//!             other => unreachable!("no cache layers configured: {other:?}"),
//!         }
//!     }
//!     while let Some(event) = refresher.poll_event() {
//!         if let Event::TokenChanged { token, .. } = event {
//!             assert!(token.is_usable_at(now));
//!         }
//!     }
//!     // A real driver sleeps until this instant (and at most a minute).
//!     now = refresher.poll_timeout().expect("a token is held, so a refresh is planned");
//!     refresher.handle_timeout(now);
//! }
//! // 1 h tokens, stale at 45 min, refreshed up to a minute earlier: 4 or 5 fetches in 3 h.
//! assert!((4..=5).contains(&fetches), "{fetches}");
//! # Ok::<(), tokenkeeper_core::MisuseError>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod backoff;
pub mod cache;
mod error;
mod hash;
pub mod jitter;
pub mod oauth2;
pub mod policy;
pub mod refresher;
mod secret;
pub mod sim;
mod time;
mod token;

pub use backoff::BackoffPolicy;
pub use cache::{CacheKey, EncodedRecord, RecordError};
pub use error::{
    CacheError, CacheErrorKind, ErrorClass, FetchError, OAuthError, PERMANENT_OAUTH_ERRORS,
};
pub use jitter::Jitter;
pub use policy::{LifetimePolicy, PolicyError};
pub use refresher::{
    CacheProblem, Effect, EffectId, Event, Layer, LeaseOutcome, LeaseSettings, MisuseError, Origin,
    RefreshNow, Refresher, RefresherConfig, Source, Status,
};
pub use secret::{AccessToken, ClientId, ClientSecret, Fingerprint, IdToken, RefreshToken};
pub use time::Timestamp;
pub use token::{TokenGrant, TokenRecord, TokenState};
