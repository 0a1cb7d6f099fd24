//! A tower middleware that puts the access token of a tokenkeeper
//! [`TokenWatcher`] on requests: hyper-util clients, tonic channels, and
//! anything else that is a `tower::Service<http::Request<B>>`.
//!
//! ```no_run
//! # async fn example(
//! #     watcher: tokenkeeper_driver::TokenWatcher<tokenkeeper_tokio::TokioRuntime>,
//! #     http_client: hyper_util::client::legacy::Client<
//! #         hyper_util::client::legacy::connect::HttpConnector,
//! #         http_body_util::Full<bytes::Bytes>,
//! #     >,
//! # ) -> Result<(), Box<dyn std::error::Error>> {
//! use tokenkeeper_tower::{AttachPolicy, BearerLayer};
//! use tower_layer::Layer;
//!
//! let layer = BearerLayer::new(watcher, AttachPolicy::for_origin("https://api.example.com")?);
//! let client = layer.layer(http_client); // or ServiceBuilder::new().layer(layer).service(..)
//! # Ok(())
//! # }
//! ```
//!
//! What it does, the same as the reqwest and ureq middleware (the rules are
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
//!   [`AttachPolicy::renewal_timeout`]), and sends the request once more, if
//!   its body can be replayed ([`ReplayBody`]). Otherwise, or when no new
//!   token comes, the `401` is handed back unchanged. Never more than one
//!   retry; a `403` is never retried.
//! - Without a token (none yet, or the last one expired), the call fails
//!   with [`BearerError::Attach`] at once rather than send a request that
//!   must fail.
//!
//! The watcher can run on any runtime (`tokenkeeper-tokio`, or
//! `tokenkeeper-async-std` on async-std or smol): the middleware's futures
//! wait with the watcher's own timer.
//!
//! # Replaying bodies
//!
//! The retry needs a second copy of the request, taken before it is sent.
//! [`CloneBody`] (the default) takes one when the body type implements
//! [`ReplayBody`]: `Full`, `Empty`, `String`, `Vec<u8>`, `Bytes`, `()`, and
//! `Either` of two such; boxed bodies say they cannot be replayed, so their
//! `401`s come back. For a body type of another crate that cannot implement
//! [`ReplayBody`] (a tonic `Body`, say), use [`NoReplay`] with
//! [`BearerLayer::replay_with`], or a [`Replay`] of your own.
//!
//! # tonic
//!
//! A tonic client's requests carry a relative URI (`/pkg.Service/Method`);
//! the `Channel` adds the origin below the middleware. Tell the policy where
//! they go with [`AttachPolicy::relative_to`]. gRPC bodies are streams:
//! use [`NoReplay`].

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http::{Request, Response};
use http_body_util::{Either, Empty, Full};
use tokenkeeper_driver::attach::Attacher;
use tokenkeeper_driver::{Runtime, TokenWatcher};
use tower_layer::Layer;
use tower_service::Service;

pub use tokenkeeper_driver::attach::{
    AttachError, AttachPolicy, CredentialError, DEFAULT_RENEWAL_TIMEOUT, OriginError, Placement,
    RetryOn,
};

/// A request body that can make a copy of itself for the one retry after a
/// `401`, or says it cannot (`None`).
pub trait ReplayBody: Sized {
    /// A copy to send again, or `None` when the body cannot be replayed
    /// (a stream, a boxed body).
    fn try_replay(&self) -> Option<Self>;
}

impl<D: Buf + Clone> ReplayBody for Full<D> {
    fn try_replay(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl<D> ReplayBody for Empty<D> {
    fn try_replay(&self) -> Option<Self> {
        Some(Empty::new())
    }
}

impl ReplayBody for String {
    fn try_replay(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl ReplayBody for Vec<u8> {
    fn try_replay(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl ReplayBody for Bytes {
    fn try_replay(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl ReplayBody for &'static str {
    fn try_replay(&self) -> Option<Self> {
        Some(self)
    }
}

impl ReplayBody for &'static [u8] {
    fn try_replay(&self) -> Option<Self> {
        Some(self)
    }
}

impl ReplayBody for () {
    fn try_replay(&self) -> Option<Self> {
        Some(())
    }
}

impl<L: ReplayBody, R: ReplayBody> ReplayBody for Either<L, R> {
    fn try_replay(&self) -> Option<Self> {
        match self {
            Either::Left(left) => left.try_replay().map(Either::Left),
            Either::Right(right) => right.try_replay().map(Either::Right),
        }
    }
}

impl<D, E> ReplayBody for http_body_util::combinators::BoxBody<D, E> {
    fn try_replay(&self) -> Option<Self> {
        None
    }
}

impl<D, E> ReplayBody for http_body_util::combinators::UnsyncBoxBody<D, E> {
    fn try_replay(&self) -> Option<Self> {
        None
    }
}

/// How the middleware copies a request for the one retry after a `401`.
pub trait Replay<B>: Clone + Send + Sync + 'static {
    /// A copy of `request` to send again, or `None` when it cannot be
    /// replayed (its `401` then comes back unchanged).
    fn replay(&self, request: &Request<B>) -> Option<Request<B>>;
}

/// Copies requests whose body is a [`ReplayBody`] (the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct CloneBody;

impl<B: ReplayBody> Replay<B> for CloneBody {
    fn replay(&self, request: &Request<B>) -> Option<Request<B>> {
        let body = request.body().try_replay()?;
        let mut copy = Request::new(body);
        *copy.method_mut() = request.method().clone();
        *copy.uri_mut() = request.uri().clone();
        *copy.version_mut() = request.version();
        *copy.headers_mut() = request.headers().clone();
        *copy.extensions_mut() = request.extensions().clone();
        Some(copy)
    }
}

/// Never replays: every `401` comes back unchanged (the watcher is still
/// told). For body types that cannot implement [`ReplayBody`].
#[derive(Debug, Clone, Copy, Default)]
pub struct NoReplay;

impl<B> Replay<B> for NoReplay {
    fn replay(&self, _: &Request<B>) -> Option<Request<B>> {
        None
    }
}

/// A tower [`Layer`] that wraps a service in [`Bearer`].
pub struct BearerLayer<R, P = CloneBody> {
    shared: Arc<Attacher<R>>,
    replay: P,
}

impl<R, P: Clone> Clone for BearerLayer<R, P> {
    fn clone(&self) -> Self {
        BearerLayer {
            shared: Arc::clone(&self.shared),
            replay: self.replay.clone(),
        }
    }
}

impl<R, P: fmt::Debug> fmt::Debug for BearerLayer<R, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BearerLayer")
            .field("attacher", &self.shared)
            .field("replay", &self.replay)
            .finish()
    }
}

impl<R> BearerLayer<R> {
    /// Tokens of `watcher`, on the requests `policy` allows.
    pub fn new(watcher: TokenWatcher<R>, policy: AttachPolicy) -> BearerLayer<R> {
        BearerLayer {
            shared: Arc::new(Attacher::new(watcher, policy)),
            replay: CloneBody,
        }
    }
}

impl<R, P> BearerLayer<R, P> {
    /// Copies requests for the retry with `replay` instead ([`NoReplay`],
    /// or one of your own).
    pub fn replay_with<Q>(self, replay: Q) -> BearerLayer<R, Q> {
        BearerLayer {
            shared: self.shared,
            replay,
        }
    }
}

impl<S, R, P: Clone> Layer<S> for BearerLayer<R, P> {
    type Service = Bearer<S, R, P>;

    fn layer(&self, inner: S) -> Bearer<S, R, P> {
        Bearer {
            inner,
            shared: Arc::clone(&self.shared),
            replay: self.replay.clone(),
        }
    }
}

/// The middleware: puts the watcher's token on requests the policy allows,
/// and retries once after a `401` that refuses it. Made by [`BearerLayer`].
pub struct Bearer<S, R, P = CloneBody> {
    inner: S,
    shared: Arc<Attacher<R>>,
    replay: P,
}

impl<S: Clone, R, P: Clone> Clone for Bearer<S, R, P> {
    fn clone(&self) -> Self {
        Bearer {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
            replay: self.replay.clone(),
        }
    }
}

impl<S: fmt::Debug, R, P: fmt::Debug> fmt::Debug for Bearer<S, R, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bearer")
            .field("inner", &self.inner)
            .field("attacher", &self.shared)
            .field("replay", &self.replay)
            .finish()
    }
}

/// Why a call through [`Bearer`] failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum BearerError<E> {
    /// The wrapped service failed.
    Inner(E),
    /// The request should carry a token and none could be put on it (the
    /// watcher has none usable, or it cannot go in a header). Nothing was
    /// sent.
    Attach(AttachError),
}

impl<E: fmt::Display> fmt::Display for BearerError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BearerError::Inner(error) => error.fmt(f),
            BearerError::Attach(error) => error.fmt(f),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for BearerError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BearerError::Inner(error) => Some(error),
            BearerError::Attach(error) => error.source(),
        }
    }
}

/// The future of [`Bearer::call`].
pub type BearerFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, BearerError<E>>> + Send>>;

impl<S, R, P, B, ResB> Service<Request<B>> for Bearer<S, R, P>
where
    S: Service<Request<B>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Runtime,
    P: Replay<B>,
    B: Send + 'static,
    ResB: Send + 'static,
{
    type Response = Response<ResB>;
    type Error = BearerError<S::Error>;
    type Future = BearerFuture<Response<ResB>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(BearerError::Inner)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let shared = &self.shared;
        let attached = match shared.attach(request.method(), request.uri(), request.headers()) {
            Ok(Some(attached)) => attached,
            Ok(None) => {
                let sent = self.inner.call(request);
                return Box::pin(async move { sent.await.map_err(BearerError::Inner) });
            }
            Err(error) => return failed(BearerError::Attach(error)),
        };
        let replay = match shared.policy().retry_rule() {
            RetryOn::Never => None,
            _ => self.replay.replay(&request),
        };
        attached.apply(request.headers_mut());

        // The service that was made ready sends this request; a clone of it
        // stays for the next caller, and this one is made ready again for
        // the retry (tower's advice for services that are called later).
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        let sent = inner.call(request);
        let shared = Arc::clone(shared);
        Box::pin(async move {
            let response = sent.await.map_err(BearerError::Inner)?;
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
            std::future::poll_fn(|cx| inner.poll_ready(cx))
                .await
                .map_err(BearerError::Inner)?;
            let response = inner.call(again).await.map_err(BearerError::Inner)?;
            shared.note_answer(&retry, response.headers());
            Ok(response)
        })
    }
}

fn failed<T: Send + 'static, E: Send + 'static>(error: BearerError<E>) -> BearerFuture<T, E> {
    Box::pin(std::future::ready(Err(error)))
}
