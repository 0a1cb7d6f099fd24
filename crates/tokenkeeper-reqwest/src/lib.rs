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
//! - A `401` that refuses the token ([`RetryOn`]) tells the watcher
//!   ([`TokenWatcher::refresh_if_current`]: a burst of refusals makes one
//!   token request), waits for the new token (at most
//!   [`AttachPolicy::renewal_timeout`]), and sends the request once more if
//!   reqwest can copy it ([`reqwest::Request::try_clone`]: any body but a
//!   stream). Otherwise, or when no new token comes, the `401` is handed
//!   back unchanged. Never more than one retry; a `403` is never retried.
//! - Without a token (none yet, or the last one expired), the request fails
//!   with a middleware error holding a [`TokenError`], and is not sent.
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
use tokenkeeper_driver::attach::{Renewal, Target, renew_after_refusal, report_refusal};
use tokenkeeper_driver::{Runtime, TokenError, TokenWatcher};

pub use tokenkeeper_driver::attach::{
    AttachPolicy, CredentialError, DEFAULT_RENEWAL_TIMEOUT, OriginError, Placement, RetryOn,
};

/// The middleware: install it with `reqwest_middleware::ClientBuilder::with`.
/// Cheap to clone.
pub struct BearerMiddleware<R> {
    shared: Arc<Shared<R>>,
}

struct Shared<R> {
    watcher: TokenWatcher<R>,
    policy: AttachPolicy,
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
            .field("watcher", &self.shared.watcher)
            .field("policy", &self.shared.policy)
            .finish()
    }
}

impl<R> BearerMiddleware<R> {
    /// Tokens of `watcher`, on the requests `policy` allows.
    pub fn new(watcher: TokenWatcher<R>, policy: AttachPolicy) -> BearerMiddleware<R> {
        BearerMiddleware {
            shared: Arc::new(Shared { watcher, policy }),
        }
    }
}

/// Why the middleware did not send a request, inside
/// [`reqwest_middleware::Error::Middleware`].
#[derive(Debug)]
#[non_exhaustive]
pub enum BearerError {
    /// The request should carry a token and the watcher has none usable
    /// (none yet, the last one expired, or it stopped).
    Token(TokenError),
    /// The token cannot be carried in a header.
    Credentials(CredentialError),
}

impl fmt::Display for BearerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BearerError::Token(error) => write!(f, "no access token to send: {error}"),
            BearerError::Credentials(error) => write!(f, "cannot send the access token: {error}"),
        }
    }
}

impl std::error::Error for BearerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BearerError::Token(error) => Some(error),
            BearerError::Credentials(error) => Some(error),
        }
    }
}

fn target(url: &reqwest::Url) -> Option<Target<'_>> {
    Some(Target {
        scheme: url.scheme(),
        host: url.host_str()?,
        port: url.port(),
    })
}

#[async_trait::async_trait]
impl<R: Runtime> Middleware for BearerMiddleware<R> {
    async fn handle(
        &self,
        mut request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let shared = &*self.shared;
        let placement = shared
            .policy
            .placement(target(request.url()), request.headers());
        if !placement.attaches() {
            return next.run(request, extensions).await;
        }
        let record = shared
            .watcher
            .token()
            .map_err(|error| reqwest_middleware::Error::middleware(BearerError::Token(error)))?
            .into_arc();
        let credentials = shared.policy.credentials(&record).map_err(|error| {
            reqwest_middleware::Error::middleware(BearerError::Credentials(error))
        })?;
        let replay = match shared.policy.retry_rule() {
            RetryOn::Never => None,
            _ => request.try_clone(),
        };
        credentials.apply(request.headers_mut());

        let response = next.clone().run(request, extensions).await?;
        if !shared
            .policy
            .calls_for_retry(response.status(), response.headers())
        {
            return Ok(response);
        }
        let Some(mut again) = replay else {
            let _ = report_refusal(&shared.watcher, &record).await;
            return Ok(response);
        };
        let renewed =
            renew_after_refusal(&shared.watcher, &record, shared.policy.renewal_wait()).await;
        let Renewal::Renewed(token) = renewed else {
            return Ok(response);
        };
        let Ok(credentials) = shared.policy.credentials(&token) else {
            return Ok(response);
        };
        credentials.apply(again.headers_mut());
        drop(response);
        next.run(again, extensions).await
    }
}
