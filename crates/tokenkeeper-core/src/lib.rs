//! The sans-IO engine of tokenkeeper.
//!
//! This crate decides everything about keeping an OAuth2 access token fresh and
//! performs none of it. It never reads a clock, sleeps, spawns, opens a socket
//! or a file, or draws OS randomness: every input carries `now`, a [`Now`]
//! holding both the wall clock ([`Timestamp`], for facts shared with other
//! processes: a cached record's expiry, a `Retry-After` date) and a
//! [`Monotonic`] reading (for everything it schedules itself, so that a wall
//! clock that steps cannot stretch a token's life or put a refresh off);
//! randomness comes from a seed the caller gives, and every piece of I/O is
//! an [`Effect`] that a driver carries out and answers. A bare [`Timestamp`]
//! converts into a `Now` (the wall clock doubling as the monotonic one), as
//! in the example below: fine for simulations and tests.
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
//! - The [`Refresher`] state machine that ties these together, and a health
//!   summary of its state for probes ([`Status::health`]).
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
//! Every driver is the same dozen lines: drain effects and start them, drain
//! events and publish them, then wait as [`Refresher::poll_wait`] says — until
//! an instant, or for answers up to a deadline — and feed what happened back
//! through [`Refresher::handle`]. Here time is virtual, the one cache layer is
//! a `Vec<u8>` in memory, and a fake authority answers each request 300 ms
//! after it was sent, on a later turn of the loop:
//!
//! ```
//! use std::time::Duration;
//! use tokenkeeper_core::oauth2::OAuth2Client;
//! use tokenkeeper_core::{
//!     ClientId, ClientSecret, Effect, Event, Input, Layer, Refresher, RefresherConfig, Timestamp,
//!     Wait,
//! };
//!
//! let client = OAuth2Client::client_credentials(
//!     "https://auth.example/token",
//!     ClientId::new("doc"),
//!     ClientSecret::new("s3cret"),
//! )
//! .unwrap();
//! let config = RefresherConfig::oauth2(client).layer(Layer::new("memory"));
//! let start = Timestamp::from_secs(1_700_000_000);
//! let stop_at = start.saturating_add(Duration::from_secs(3 * 3600));
//! let mut now = start;
//! let mut refresher = Refresher::new(config.clone(), 42, now);
//! let mut store: Option<Vec<u8>> = None; // stands in for a file or Redis
//! let mut in_flight = None; // the request the authority has not answered yet
//! let mut requests = 0;
//!
//! loop {
//!     while let Some(effect) = refresher.poll_effect() {
//!         match effect {
//!             // A store this fast is answered at once...
//!             Effect::ReadCache { id, .. } => {
//!                 let result = Ok(store.clone());
//!                 refresher.handle(now, Input::CacheRead { id, result })?;
//!             }
//!             Effect::WriteCache { id, record, .. } => {
//!                 store = Some(record.bytes().to_vec());
//!                 refresher.handle(now, Input::CacheWritten { id, result: Ok(()) })?;
//!             }
//!             // ...the authority only on a later turn. A real driver sends
//!             // the request now and reads at most `max_body` bytes back.
//!             Effect::SendRequest { id, request, max_body } => {
//!                 assert_eq!(request.as_http().method(), "POST");
//!                 assert!(max_body > 0);
//!                 requests += 1;
//!                 in_flight = Some(id);
//!             }
//!             _ => {} // no lease here, nothing to release
//!         }
//!     }
//!     while let Some(event) = refresher.poll_event() {
//!         if let Event::TokenChanged { token, .. } = event {
//!             assert!(token.is_usable_at(now)); // publish it to readers
//!         }
//!     }
//!     // A real driver sleeps until the deadline (at most a minute), unless
//!     // an answer comes first.
//!     match refresher.poll_wait() {
//!         Wait::Until(t) if t >= stop_at => refresher.shutdown(now),
//!         Wait::Until(t) => {
//!             now = t;
//!             refresher.handle(now, Input::Timeout)?;
//!         }
//!         Wait::Answer { deadline } => {
//!             now = now.saturating_add(Duration::from_millis(300));
//!             assert!(now < deadline, "answered in time");
//!             let id = in_flight.take().expect("only the request is ever deferred");
//!             let body = format!(r#"{{"access_token":"token-{requests}","expires_in":3600}}"#);
//!             let headers = Default::default();
//!             let body = body.into_bytes();
//!             refresher.handle(now, Input::Response { id, status: 200, headers, body })?;
//!         }
//!         _ => break, // Wait::Finished: nothing more will happen
//!     }
//! }
//! assert!(refresher.is_finished());
//! // 1 h tokens, stale at 45 min, refreshed up to a minute earlier: 4 or 5
//! // requests in 3 h.
//! assert!((4..=5).contains(&requests), "{requests}");
//!
//! // The next process starts from the store and asks the authority nothing.
//! let mut next = Refresher::new(config, 43, now);
//! let Some(Effect::ReadCache { id, layer: 0 }) = next.poll_effect() else { panic!() };
//! next.handle(now, Input::CacheRead { id, result: Ok(store) })?;
//! assert_eq!(next.token().unwrap().access_token.expose_secret(), format!("token-{requests}"));
//! assert!(next.poll_effect().is_none());
//! # Ok::<(), tokenkeeper_core::MisuseError>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod backoff;
pub mod cache;
mod clock;
mod error;
mod hash;
mod health;
pub mod jitter;
mod lazy_vec;
pub mod oauth2;
pub mod policy;
pub mod pool;
pub mod refresher;
mod secret;
pub mod sim;
mod text;
mod time;
mod token;

pub use backoff::BackoffPolicy;
pub use cache::{CacheKey, EncodedRecord, RecordError};
pub use clock::{Monotonic, Now};
pub use error::{
    CacheError, CacheErrorKind, ErrorClass, FetchError, MAX_ERROR_CODE_CHARS,
    MAX_ERROR_DESCRIPTION_CHARS, MAX_SNIPPET_CHARS, OAuthError, PERMANENT_OAUTH_ERRORS, TlsProblem,
};
pub use health::{Health, HealthReason};
pub use jitter::Jitter;
pub use policy::{LifetimePolicy, PolicyError};
pub use refresher::{
    CacheProblem, Effect, EffectId, Event, Input, Layer, LeaseOutcome, LeaseSettings, MisuseError,
    Origin, RefreshNow, Refresher, RefresherConfig, Source, Status, Wait,
};
pub use secret::{AccessToken, ClientId, ClientSecret, Fingerprint, IdToken, RefreshToken};
pub use time::Timestamp;
pub use token::{TokenGrant, TokenRecord, TokenState};
