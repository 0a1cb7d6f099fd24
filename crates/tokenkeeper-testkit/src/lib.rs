//! Test kit of tokenkeeper: a real OAuth2 token authority on loopback with fault injection,
//! over HTTP or HTTPS ([`authority`]), a resource server that accepts only the tokens that
//! authority considers active ([`resource`]), a test PKI generated at run time for it and for
//! mutual TLS ([`pki`]), a recording HTTP proxy ([`proxy`]), and a home for the adapter
//! conformance scenarios ([`conformance`]) and the middleware scenarios ([`middleware`]).
//!
//! The authority runs on its own thread and runtime, so it serves tests of every adapter alike:
//! plain threads, tokio, async-std or smol.
//!
//! ```
//! use tokenkeeper_testkit::{Authority, Client};
//!
//! let authority = Authority::start();
//! authority.register_client(Client::new("svc", "s3cret"));
//! let token_url = authority.token_url();
//! // ... point the code under test at `token_url`, then inspect `authority.requests()`.
//! # let _ = token_url;
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod authority;
pub mod conformance;
mod der;
pub mod middleware;
pub mod pki;
pub mod proxy;
pub mod redis_server;
pub mod resource;
mod server_thread;

pub use authority::{
    AssertionError, AuthMethod, Authority, AuthorityBuilder, Client, ClientAuth,
    DEFAULT_MAX_REQUEST_BODY, DEFAULT_TOKEN_LIFETIME, DpopCheck, DpopError, DpopNonces, DpopProof,
    DpopVerdict, Fault, IssuedToken, Outcome, PresentedAssertion, PresentedAuth,
    PresentedCertificate, RequestRecord, RetryAfter, TlsFailure, TlsSession, TlsSettings,
    TlsVersion, format_http_date,
};
pub use proxy::{ProxiedRequest, RecordingProxy, RecordingProxyBuilder};
pub use redis_server::RedisServer;
pub use resource::{RESOURCE_REALM, ResourceRequest, ResourceServer};
