//! A [reqwest-middleware](reqwest_middleware) middleware that puts the
//! access token of a tokenkeeper [`TokenWatcher`] on requests.
//!
//! ```no_run
//! # async fn example(
//! #     watcher: tokenkeeper_tokio::TokenWatcher,
//! # ) -> Result<(), Box<dyn std::error::Error>> {
//! use tokenkeeper_reqwest::{AttachPolicy, BearerMiddleware};
//!
//! let policy = AttachPolicy::for_origin("https://api.example.com")?;
//! let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
//!     .with(BearerMiddleware::new(watcher, policy))
//!     .build();
//! let orders = client.get("https://api.example.com/orders").send().await?;
//! # let _ = orders;
//! # Ok(())
//! # }
//! ```
//!
//! What it does, the same as the tower and ureq middleware (the rules are
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
//!   ([`TokenWatcher::refresh_if_current`]: a burst of refusals makes one
//!   token request), waits for the new token (at most
//!   [`AttachPolicy::renewal_timeout`]), and sends the request once more if
//!   reqwest can copy it ([`reqwest::Request::try_clone`]: any body but a
//!   stream). Otherwise, or when no new token comes, the `401` is handed
//!   back unchanged. Never more than one retry; a `403` is never retried.
//! - Without a token (none yet, or the last one expired), the request fails
//!   with a middleware error holding an [`AttachError`], and is not sent.
//!
//! The retry goes through the middleware after this one in the chain, as a
//! request of its own. reqwest follows redirects below the middleware and
//! drops `Authorization` when a redirect leaves the origin; the policy
//! checks only the URL the request was made for.
//!
//! The watcher is usually `tokenkeeper_tokio::TokenWatcher` (reqwest runs
//! on tokio), but any runtime's watcher works: the middleware's waiting
//! uses the watcher's own timer.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::fmt;
use std::sync::Arc;

use http::Extensions;
use reqwest::{Request, Response};
use reqwest_middleware::{Middleware, Next};
use tokenkeeper_driver::attach::Attacher;
use tokenkeeper_driver::{Runtime, TokenWatcher};

pub use tokenkeeper_driver::attach::{
    AttachError, AttachPolicy, CredentialError, DEFAULT_RENEWAL_TIMEOUT, OriginError, Placement,
    RetryOn,
};

/// The middleware: install it with `reqwest_middleware::ClientBuilder::with`.
/// Cheap to clone.
pub struct BearerMiddleware<R> {
    shared: Arc<Attacher<R>>,
}

impl<R> Clone for BearerMiddleware<R> {
    fn clone(&self) -> Self {
        BearerMiddleware {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<R> fmt::Debug for BearerMiddleware<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BearerMiddleware")
            .field("attacher", &self.shared)
            .finish()
    }
}

impl<R> BearerMiddleware<R> {
    /// Tokens of `watcher`, on the requests `policy` allows.
    pub fn new(watcher: TokenWatcher<R>, policy: AttachPolicy) -> BearerMiddleware<R> {
        BearerMiddleware {
            shared: Arc::new(Attacher::new(watcher, policy)),
        }
    }
}

/// Why the middleware did not send a request, inside
/// [`reqwest_middleware::Error::Middleware`]: the same for every middleware.
pub type BearerError = AttachError;

#[async_trait::async_trait]
impl<R: Runtime> Middleware for BearerMiddleware<R> {
    async fn handle(
        &self,
        mut request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let shared = &*self.shared;
        let attached = shared
            .attach_url(request.method(), request.url(), request.headers())
            .map_err(reqwest_middleware::Error::middleware)?;
        let Some(attached) = attached else {
            return next.run(request, extensions).await;
        };
        let replay = match shared.policy().retry_rule() {
            RetryOn::Never => None,
            _ => request.try_clone(),
        };
        attached.apply(request.headers_mut());

        let response = next.clone().run(request, extensions).await?;
        let retry = shared
            .after_answer(
                &attached,
                response.status(),
                Some(response.headers()),
                replay.is_some(),
            )
            .await;
        let (Some(retry), Some(mut again)) = (retry, replay) else {
            return Ok(response);
        };
        retry.apply(again.headers_mut());
        drop(response);
        let response = next.run(again, extensions).await?;
        shared.note_answer(&retry, response.headers());
        Ok(response)
    }
}
