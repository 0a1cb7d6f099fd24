//! Where a watcher's tokens come from: an OAuth2 token endpoint, or a source
//! of your own.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use tokenkeeper_core::oauth2::OAuth2Client;
use tokenkeeper_core::{CacheKey, FetchError, RefreshToken, RefresherConfig, TokenGrant};

use crate::assertion::{Assertion, Assertions};
use crate::boxed::BoxFuture;

/// A source of tokens other than an OAuth2 token endpoint: a cloud metadata
/// service, a secrets manager, a token exchange, a test double.
///
/// The watcher calls [`TokenSource::fetch`] whenever the refresher decides a
/// new token is needed, never twice at once, and applies the configured
/// request timeout to it. Report failures as [`FetchError::Source`] with the
/// right [`ErrorClass`](tokenkeeper_core::ErrorClass): a transient error is
/// retried with backoff, a permanent one only at the backoff cap.
///
/// On tokio and async-std/smol the watcher's driver polls the future itself
/// (see [`Runtime::polls_fetches_inline`](crate::Runtime::polls_fetches_inline)):
/// it must not block. A source whose calls block is a
/// [`BlockingTokenSource`] ([`Source::from_blocking_fn`]).
///
/// The trait is object-safe. Implement it by boxing an `async` block:
///
/// ```
/// use std::time::Duration;
/// use tokenkeeper_core::{AccessToken, FetchError, RefreshToken, TokenGrant};
/// use tokenkeeper_driver::{BoxFuture, TokenSource};
///
/// struct Fixed;
///
/// impl TokenSource for Fixed {
///     fn fetch<'a>(
///         &'a self,
///         _refresh_token: Option<&'a RefreshToken>,
///     ) -> BoxFuture<'a, Result<TokenGrant, FetchError>> {
///         Box::pin(async {
///             Ok(TokenGrant::bearer(
///                 AccessToken::new("t0k3n"),
///                 Some(Duration::from_secs(3600)),
///             ))
///         })
///     }
/// }
/// ```
///
/// For a closure, see [`Source::from_fn`].
pub trait TokenSource: Send + Sync + 'static {
    /// Gets a new token. `refresh_token` is the current refresh token, when
    /// an earlier grant (or the builder) supplied one; a grant that carries a
    /// new one rotates it.
    fn fetch<'a>(
        &'a self,
        refresh_token: Option<&'a RefreshToken>,
    ) -> BoxFuture<'a, Result<TokenGrant, FetchError>>;
}

/// A [`TokenSource`] made of a closure.
struct FnSource<F>(F);

impl<F, Fut> TokenSource for FnSource<F>
where
    F: Fn(Option<RefreshToken>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<TokenGrant, FetchError>> + Send + 'static,
{
    fn fetch<'a>(
        &'a self,
        refresh_token: Option<&'a RefreshToken>,
    ) -> BoxFuture<'a, Result<TokenGrant, FetchError>> {
        Box::pin((self.0)(refresh_token.cloned()))
    }
}

/// A source of tokens whose calls block (a command, a file, a sync SDK): the
/// thread-friendly twin of [`TokenSource`]. The watcher runs each call where
/// blocking is allowed (the runtime's blocking pool, or a thread), bounded by
/// the configured request timeout.
pub trait BlockingTokenSource: Send + Sync + 'static {
    /// Gets a new token; see [`TokenSource::fetch`].
    fn fetch(&self, refresh_token: Option<&RefreshToken>) -> Result<TokenGrant, FetchError>;
}

/// A [`BlockingTokenSource`] made of a closure.
struct BlockingFnSource<F>(F);

impl<F> BlockingTokenSource for BlockingFnSource<F>
where
    F: Fn(Option<RefreshToken>) -> Result<TokenGrant, FetchError> + Send + Sync + 'static,
{
    fn fetch(&self, refresh_token: Option<&RefreshToken>) -> Result<TokenGrant, FetchError> {
        (self.0)(refresh_token.cloned())
    }
}

#[derive(Clone)]
pub(crate) enum SourceKind {
    /// Boxed: a client is several times the size of the other variants.
    OAuth2(Box<OAuth2Client>),
    Custom {
        key: CacheKey,
        source: Arc<dyn TokenSource>,
    },
    Blocking {
        key: CacheKey,
        source: Arc<dyn BlockingTokenSource>,
    },
}

/// Where a [`TokenWatcher`](crate::TokenWatcher) gets its tokens.
///
/// An [`OAuth2Client`] (client credentials or refresh token grant) converts
/// into a `Source`, so `TokenWatcher::builder(client)` works directly.
#[derive(Clone)]
pub struct Source(pub(crate) SourceKind, pub(crate) Assertions);

impl Source {
    /// Tokens from an OAuth2 token endpoint, requested and read by the
    /// tokenkeeper codec and sent over this crate's HTTP client. Cached
    /// under the client's [`CacheKey`].
    pub fn oauth2(client: OAuth2Client) -> Self {
        Source(SourceKind::OAuth2(Box::new(client)), Assertions::default())
    }

    /// Tokens from your own [`TokenSource`], cached under `key` (make one
    /// with [`CacheKey::custom`] naming everything that makes two of your
    /// tokens interchangeable).
    pub fn custom(key: CacheKey, source: impl TokenSource) -> Self {
        Source(
            SourceKind::Custom {
                key,
                source: Arc::new(source),
            },
            Assertions::default(),
        )
    }

    /// Tokens from an async closure, cached under `key`. The closure gets the
    /// current refresh token, if any.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tokenkeeper_core::{AccessToken, CacheKey, TokenGrant};
    /// use tokenkeeper_driver::Source;
    ///
    /// let source = Source::from_fn(CacheKey::custom("metadata", &["default"]), |_refresh| async {
    ///     // Ask a metadata service here.
    ///     Ok(TokenGrant::bearer(AccessToken::new("t0k3n"), Some(Duration::from_secs(600))))
    /// });
    /// # let _ = source;
    /// ```
    pub fn from_fn<F, Fut>(key: CacheKey, f: F) -> Self
    where
        F: Fn(Option<RefreshToken>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<TokenGrant, FetchError>> + Send + 'static,
    {
        Self::custom(key, FnSource(f))
    }

    /// Tokens from your own [`BlockingTokenSource`], cached under `key`.
    pub fn custom_blocking(key: CacheKey, source: impl BlockingTokenSource) -> Self {
        Source(
            SourceKind::Blocking {
                key,
                source: Arc::new(source),
            },
            Assertions::default(),
        )
    }

    /// Tokens from a closure that blocks, cached under `key`. The closure
    /// gets the current refresh token, if any, and runs where blocking is
    /// allowed.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tokenkeeper_core::{AccessToken, CacheKey, TokenGrant};
    /// use tokenkeeper_driver::Source;
    ///
    /// let source = Source::from_blocking_fn(CacheKey::custom("file", &["token"]), |_refresh| {
    ///     // Read a file or run a command here.
    ///     Ok(TokenGrant::bearer(AccessToken::new("t0k3n"), Some(Duration::from_secs(600))))
    /// });
    /// # let _ = source;
    /// ```
    pub fn from_blocking_fn<F>(key: CacheKey, f: F) -> Self
    where
        F: Fn(Option<RefreshToken>) -> Result<TokenGrant, FetchError> + Send + Sync + 'static,
    {
        Self::custom_blocking(key, BlockingFnSource(f))
    }

    /// Authenticates the client with this assertion (RFC 7523 §2.2), for an
    /// [`OAuth2Client`] whose auth method is
    /// [`PrivateKeyJwt`](tokenkeeper_core::oauth2::AuthMethod::PrivateKeyJwt)
    /// (a private key, an assertion file, a callback) or
    /// [`ClientSecretJwt`](tokenkeeper_core::oauth2::AuthMethod::ClientSecretJwt)
    /// (an HMAC key; without one, the client secret keys it). A watcher or
    /// pool refuses to start with an assertion that does not fit the
    /// client ([`SpawnError::Assertion`](crate::SpawnError::Assertion)).
    /// The client's cache key does not change: it names the auth method
    /// already, and the tokens are the client's whichever of its keys
    /// signed. A custom source makes its own requests and ignores it.
    pub fn client_assertion(mut self, assertion: Assertion) -> Self {
        self.1.client = Some(assertion);
        self
    }

    /// The assertion of the JWT bearer grant (RFC 7523 §2.1), for an
    /// [`OAuth2Client::jwt_bearer`] client: a key for a
    /// [`GrantAssertion::signed`](tokenkeeper_core::oauth2::assertion::GrantAssertion::signed),
    /// a file or callback for a
    /// [`GrantAssertion::external`](tokenkeeper_core::oauth2::assertion::GrantAssertion::external).
    pub fn grant_assertion(mut self, assertion: Assertion) -> Self {
        self.1.grant = Some(assertion);
        self
    }

    /// Where a token exchange's subject token comes from (RFC 8693), for an
    /// [`OAuth2Client::token_exchange`] client: a file, a callback or
    /// another watcher ([`ExchangeToken`](crate::token_exchange::ExchangeToken)).
    /// When the client's [`TokenExchange`](tokenkeeper_core::oauth2::exchange::TokenExchange)
    /// has no subject label, the source's
    /// [`label`](crate::token_exchange::ExchangeToken::label) becomes it, so that
    /// tokens exchanged for different subjects never share a cache slot.
    pub fn subject_token(mut self, token: crate::token_exchange::ExchangeToken) -> Self {
        if let SourceKind::OAuth2(client) = &mut self.0
            && let Some(exchange) = client.get_token_exchange()
            && exchange.get_subject_label().is_none()
        {
            let exchange = exchange.clone().subject_label(token.label());
            **client = (**client).clone().with_token_exchange(exchange);
        }
        self.1.exchange.subject = Some(token);
        self
    }

    /// Where a token exchange's actor token comes from, as
    /// [`subject_token`](Self::subject_token); the client's
    /// [`TokenExchange::actor`](tokenkeeper_core::oauth2::exchange::TokenExchange::actor)
    /// names its type.
    pub fn actor_token(mut self, token: crate::token_exchange::ExchangeToken) -> Self {
        if let SourceKind::OAuth2(client) = &mut self.0
            && let Some(exchange) = client.get_token_exchange()
            && exchange.actor_token_type().is_some()
            && exchange.get_actor_label().is_none()
        {
            let exchange = exchange.clone().actor_label(token.label());
            **client = (**client).clone().with_token_exchange(exchange);
        }
        self.1.exchange.actor = Some(token);
        self
    }

    /// The key under which this source's tokens are cached.
    pub fn cache_key(&self) -> CacheKey {
        match &self.0 {
            SourceKind::OAuth2(client) => CacheKey::for_client(client),
            SourceKind::Custom { key, .. } | SourceKind::Blocking { key, .. } => key.clone(),
        }
    }

    /// The OAuth2 client, when the source is a token endpoint.
    pub fn oauth2_client(&self) -> Option<&OAuth2Client> {
        match &self.0 {
            SourceKind::OAuth2(client) => Some(client),
            _ => None,
        }
    }

    /// The refresher configuration for this source, with every default.
    pub(crate) fn refresher_config(&self) -> RefresherConfig {
        match &self.0 {
            SourceKind::OAuth2(client) => RefresherConfig::oauth2((**client).clone()),
            SourceKind::Custom { key, .. } | SourceKind::Blocking { key, .. } => {
                RefresherConfig::custom(key.clone())
            }
        }
    }
}

impl From<OAuth2Client> for Source {
    fn from(client: OAuth2Client) -> Self {
        Source::oauth2(client)
    }
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            SourceKind::OAuth2(client) => f
                .debug_struct("Source::OAuth2")
                .field("token_url", client.token_url())
                .field("client_id", client.client_id())
                .field("grant", &client.grant())
                .field("client_assertion", &self.1.client)
                .field("grant_assertion", &self.1.grant)
                .field("subject_token", &self.1.exchange.subject)
                .field("actor_token", &self.1.exchange.actor)
                .finish_non_exhaustive(),
            SourceKind::Custom { key, .. } | SourceKind::Blocking { key, .. } => f
                .debug_struct("Source::Custom")
                .field("key", key)
                .finish_non_exhaustive(),
        }
    }
}
