//! A [ureq] 3 middleware that puts the access token of a tokenkeeper
//! thread watcher (`tokenkeeper_blocking::TokenWatcher`) on requests.
//!
//! ```no_run
//! # fn example(watcher: tokenkeeper_blocking::TokenWatcher) -> Result<(), Box<dyn std::error::Error>> {
//! use tokenkeeper_ureq::{AttachPolicy, BearerAgent};
//!
//! let policy = AttachPolicy::for_origin("https://api.example.com")?;
//! let agent = BearerAgent::new(ureq::Agent::config_builder(), watcher, policy);
//! let orders = agent.get("https://api.example.com/orders").call()?;
//! # let _ = orders;
//! # Ok(())
//! # }
//! ```
//!
//! What it does, the same as the tower and reqwest middleware (the rules are
//! written once, in [`tokenkeeper_driver::attach`]):
//!
//! - A request to an allowed origin gets `Authorization: Bearer <token>`
//!   from [`TokenWatcher::token`]: one atomic load, no waiting. Other
//!   origins, plain `http` to anything but loopback, and requests that carry
//!   their own `Authorization` go out untouched.
//! - A DPoP-bound token (a watcher built with `.dpop(key)`) goes as
//!   `Authorization: DPoP <token>` with a `DPoP` proof signed for the
//!   request (method, URL, token hash, a fresh id, and the latest nonce the
//!   server gave); a `401` asking for a nonce (`use_dpop_nonce`) is sent
//!   once more with it. It never goes out as a bearer token.
//! - A `401` that refuses the token ([`RetryOn`]) tells the watcher
//!   ([`TokenWatcher::refresh_if_current`]: a burst of refusals, from any
//!   number of threads, makes one token request), waits for the new token
//!   (at most [`AttachPolicy::renewal_timeout`]), and sends the request once
//!   more if it can be replayed (below). Otherwise, or when no new token
//!   comes, the `401` is handed back unchanged. Never more than one retry; a
//!   `403` is never retried.
//! - Without a token (none yet, or the last one expired), the call fails
//!   with `ureq::Error::Other` holding a [`BearerError`], and nothing is sent.
//!
//! # What is replayed
//!
//! ureq streams request bodies from what the caller handed it (a slice, a
//! reader, a file) and a middleware cannot look inside or copy them, so the
//! retry is for requests without a body: `GET`, `HEAD`, `OPTIONS` and
//! `TRACE` (the methods ureq sends without one). The `401` of any other
//! request comes back unchanged, and the watcher is told, so the next
//! request carries a new token. (A `GET` sent with `force_send_body` would
//! be replayed without its body: turn retries off with
//! [`RetryOn::Never`] if you do that.)
//!
//! ureq runs a middleware's next step only once, so the retry is sent
//! through the agent again: build the agent with [`BearerAgent`], which
//! lets the middleware reach it. Middleware installed before this one sees
//! the retry as a request of its own. [`BearerMiddleware`] added to a
//! `ConfigBuilder` by hand attaches tokens and reports refusals, but cannot
//! retry.
//!
//! # `http_status_as_error`
//!
//! With ureq's default `http_status_as_error(true)`, a `401` reaches the
//! middleware as `Error::StatusCode(401)`, without its headers: every `401`
//! then counts as a refusal of the token (as [`RetryOn::AnyUnauthorized`]
//! would). Build the agent with `http_status_as_error(false)` to have the
//! `WWW-Authenticate` challenge read as [`RetryOn`] says.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::fmt;
use std::ops::Deref;
use std::sync::{Arc, OnceLock, Weak};

use tokenkeeper_blocking::ThreadRuntime;
use tokenkeeper_driver::TokenWatcher;
use tokenkeeper_driver::attach::{Attached, Attacher};
use tokenkeeper_driver::park::block_on;
use ureq::config::{Config, ConfigBuilder};
use ureq::http::{Method, Request, Response, StatusCode};
use ureq::middleware::{Middleware, MiddlewareNext};
use ureq::typestate::AgentScope;
use ureq::{Agent, Body, SendBody};

pub use tokenkeeper_driver::attach::{
    AttachError, AttachPolicy, CredentialError, DEFAULT_RENEWAL_TIMEOUT, OriginError, Placement,
    RetryOn,
};

/// The middleware. [`BearerAgent`] installs it (and lets it retry); add it
/// to a `ConfigBuilder` by hand for tokens without retries. Cheap to clone.
#[derive(Clone)]
pub struct BearerMiddleware {
    shared: Arc<Shared>,
}

struct Shared {
    attacher: Attacher<ThreadRuntime>,
    /// The agent the middleware is part of, to send the retry through;
    /// weak, so that the agent (which holds the middleware) can be dropped.
    agent: OnceLock<Weak<Agent>>,
}

impl fmt::Debug for BearerMiddleware {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BearerMiddleware")
            .field("attacher", &self.shared.attacher)
            .field("can_retry", &self.shared.agent.get().is_some())
            .finish()
    }
}

impl BearerMiddleware {
    /// Tokens of `watcher`, on the requests `policy` allows.
    pub fn new(watcher: TokenWatcher<ThreadRuntime>, policy: AttachPolicy) -> BearerMiddleware {
        BearerMiddleware {
            shared: Arc::new(Shared {
                attacher: Attacher::new(watcher, policy),
                agent: OnceLock::new(),
            }),
        }
    }
}

/// A ureq [`Agent`] with [`BearerMiddleware`] installed last, able to retry
/// after a `401`. Dereferences to the agent; cheap to clone.
#[derive(Clone)]
pub struct BearerAgent {
    agent: Arc<Agent>,
}

impl fmt::Debug for BearerAgent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BearerAgent")
            .field("agent", &self.agent)
            .finish()
    }
}

impl BearerAgent {
    /// An agent with `config` (`Agent::config_builder()` and your settings)
    /// that puts `watcher`'s tokens on the requests `policy` allows.
    pub fn new(
        config: ConfigBuilder<AgentScope>,
        watcher: TokenWatcher<ThreadRuntime>,
        policy: AttachPolicy,
    ) -> BearerAgent {
        BearerAgent::with_agent(config, watcher, policy, Agent::new_with_config)
    }

    /// Like [`new`](Self::new), with the agent made by `make` from the final
    /// configuration (for `Agent::with_parts` and a connector or resolver of
    /// your own).
    pub fn with_agent(
        config: ConfigBuilder<AgentScope>,
        watcher: TokenWatcher<ThreadRuntime>,
        policy: AttachPolicy,
        make: impl FnOnce(Config) -> Agent,
    ) -> BearerAgent {
        let middleware = BearerMiddleware::new(watcher, policy);
        let shared = Arc::clone(&middleware.shared);
        let agent = Arc::new(make(config.middleware(middleware).build()));
        let _ = shared.agent.set(Arc::downgrade(&agent));
        BearerAgent { agent }
    }

    /// The agent.
    pub fn agent(&self) -> &Agent {
        &self.agent
    }
}

impl Deref for BearerAgent {
    type Target = Agent;

    fn deref(&self) -> &Agent {
        &self.agent
    }
}

/// Why the middleware did not send a request, inside `ureq::Error::Other`:
/// the same for every middleware.
pub type BearerError = AttachError;

/// Marks the one retry, so that it is not retried again, with the token
/// it goes with.
#[derive(Debug, Clone)]
struct Retry(Attached);

/// Whether ureq sends requests of `method` without a body.
fn without_body(method: &Method) -> bool {
    [Method::GET, Method::HEAD, Method::OPTIONS, Method::TRACE].contains(method)
}

impl Middleware for BearerMiddleware {
    fn handle(
        &self,
        request: Request<SendBody>,
        next: MiddlewareNext,
    ) -> Result<Response<Body>, ureq::Error> {
        let attacher = &self.shared.attacher;
        let retry = request.extensions().get::<Retry>().cloned();
        let attached = match retry {
            Some(Retry(attached)) => attached,
            None => {
                let attached = attacher
                    .attach(request.method(), request.uri(), request.headers())
                    .map_err(|error| ureq::Error::Other(Box::new(error)))?;
                match attached {
                    Some(attached) => attached,
                    None => return next.handle(request),
                }
            }
        };
        let is_retry = request.extensions().get::<Retry>().is_some();
        let (mut parts, body) = request.into_parts();
        let replay = (!is_retry
            && attacher.policy().retry_rule() != RetryOn::Never
            && without_body(&parts.method))
        .then(|| parts.clone());
        attached.apply(&mut parts.headers);

        let result = next.handle(Request::from_parts(parts, body));
        // ureq's http_status_as_error turns a 401 into an error without its
        // headers; the attach rules read that as a refusal.
        let (status, headers) = match &result {
            Ok(response) => (response.status(), Some(response.headers())),
            Err(ureq::Error::StatusCode(code)) => match StatusCode::from_u16(*code) {
                Ok(status) => (status, None),
                Err(_) => return result,
            },
            Err(_) => return result,
        };
        if is_retry {
            if let Some(headers) = headers {
                attacher.note_answer(&attached, headers);
            }
            return result;
        }
        let agent = self.shared.agent.get().and_then(Weak::upgrade);
        let can_replay = replay.is_some() && agent.is_some();
        let retry = block_on(attacher.after_answer(&attached, status, headers, can_replay));
        let (Some(retry), Some(parts), Some(agent)) = (retry, replay, agent) else {
            return result;
        };
        drop(result);
        // Through the agent again: this middleware puts the new token (and
        // proof) on it and, seeing the mark, does not retry it.
        let mut again = Request::from_parts(parts, ());
        again.extensions_mut().insert(Retry(retry));
        agent.run(again)
    }
}
