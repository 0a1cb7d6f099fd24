//! Where tokens come from: an OAuth2 token endpoint, or a source of your own.

use std::fmt;
use std::sync::Arc;

use tokenkeeper_core::oauth2::{GrantType, OAuth2Client};
use tokenkeeper_core::{CacheKey, FetchError, RefreshToken, RefresherConfig, TokenGrant};

/// A source of tokens other than an OAuth2 token endpoint: a cloud metadata
/// service, a secrets manager, a token exchange, a test double.
///
/// [`TokenSource::fetch`] is called on a worker thread whenever the refresher
/// decides a new token is needed, never twice at once. It blocks; it should
/// bound its own waiting (the HTTP timeouts of this crate do not apply to it).
/// Report failures as [`FetchError::Source`] with the right
/// [`ErrorClass`](tokenkeeper_core::ErrorClass): a transient error is retried
/// with backoff, a permanent one only at the backoff cap.
///
/// ```
/// use std::time::Duration;
/// use tokenkeeper_blocking::TokenSource;
/// use tokenkeeper_core::{AccessToken, FetchError, RefreshToken, TokenGrant};
///
/// struct Fixed;
///
/// impl TokenSource for Fixed {
///     fn fetch(&self, _refresh_token: Option<&RefreshToken>) -> Result<TokenGrant, FetchError> {
///         Ok(TokenGrant::bearer(AccessToken::new("t0k3n"), Some(Duration::from_secs(3600))))
///     }
/// }
/// ```
pub trait TokenSource: Send + Sync + 'static {
    /// Gets a new token. `refresh_token` is the current refresh token, when an
    /// earlier grant (or the configuration) supplied one; a grant that carries
    /// a new one rotates it.
    fn fetch(&self, refresh_token: Option<&RefreshToken>) -> Result<TokenGrant, FetchError>;
}

/// A [`TokenSource`] made of a closure.
struct FnSource<F>(F);

impl<F> TokenSource for FnSource<F>
where
    F: Fn(Option<RefreshToken>) -> Result<TokenGrant, FetchError> + Send + Sync + 'static,
{
    fn fetch(&self, refresh_token: Option<&RefreshToken>) -> Result<TokenGrant, FetchError> {
        (self.0)(refresh_token.cloned())
    }
}

#[derive(Clone)]
pub(crate) enum SourceKind {
    OAuth2(OAuth2Client),
    Custom {
        key: CacheKey,
        source: Arc<dyn TokenSource>,
    },
}

/// Where a watcher (or [`get_token`](crate::get_token)) gets its tokens.
///
/// An [`OAuth2Client`] converts into a `Source`, so
/// `TokenWatcher::builder(client)` works directly.
#[derive(Clone)]
pub struct Source(pub(crate) SourceKind);

impl Source {
    /// Tokens from an OAuth2 token endpoint, requested and read by the
    /// tokenkeeper codec and sent with this crate's HTTP client. Cached under
    /// the client's [`CacheKey`].
    pub fn oauth2(client: OAuth2Client) -> Self {
        Source(SourceKind::OAuth2(client))
    }

    /// Tokens from your own [`TokenSource`], cached under `key` (make one with
    /// [`CacheKey::custom`], naming everything that makes two of your tokens
    /// interchangeable).
    pub fn custom(key: CacheKey, source: impl TokenSource) -> Self {
        Source(SourceKind::Custom {
            key,
            source: Arc::new(source),
        })
    }

    /// Tokens from a closure, cached under `key`. The closure gets the current
    /// refresh token, if any.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tokenkeeper_blocking::Source;
    /// use tokenkeeper_core::{AccessToken, CacheKey, TokenGrant};
    ///
    /// let source = Source::from_fn(CacheKey::custom("metadata", &["default"]), |_refresh| {
    ///     // Ask a metadata service here.
    ///     Ok(TokenGrant::bearer(AccessToken::new("t0k3n"), Some(Duration::from_secs(600))))
    /// });
    /// # let _ = source;
    /// ```
    pub fn from_fn<F>(key: CacheKey, f: F) -> Self
    where
        F: Fn(Option<RefreshToken>) -> Result<TokenGrant, FetchError> + Send + Sync + 'static,
    {
        Self::custom(key, FnSource(f))
    }

    /// The key under which this source's tokens are cached.
    pub fn cache_key(&self) -> CacheKey {
        match &self.0 {
            SourceKind::OAuth2(client) => CacheKey::for_client(client),
            SourceKind::Custom { key, .. } => key.clone(),
        }
    }

    /// The OAuth2 client, when the source is a token endpoint.
    pub fn oauth2_client(&self) -> Option<&OAuth2Client> {
        match &self.0 {
            SourceKind::OAuth2(client) => Some(client),
            SourceKind::Custom { .. } => None,
        }
    }

    /// A refresher configuration for this source, with the core's defaults.
    pub(crate) fn refresher_config(&self) -> RefresherConfig {
        match &self.0 {
            SourceKind::OAuth2(client) => RefresherConfig::oauth2(client.clone()),
            SourceKind::Custom { key, .. } => RefresherConfig::custom(key.clone()),
        }
    }

    /// Whether a fetch spends a refresh token, so that its answer must not be
    /// thrown away (the authority may have retired the token it was sent).
    pub(crate) fn spends_refresh_token(&self, refresh_token: Option<&RefreshToken>) -> bool {
        match &self.0 {
            SourceKind::OAuth2(client) => client.grant() == GrantType::RefreshToken,
            SourceKind::Custom { .. } => refresh_token.is_some(),
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
                .finish_non_exhaustive(),
            SourceKind::Custom { key, .. } => f
                .debug_struct("Source::Custom")
                .field("key", key)
                .finish_non_exhaustive(),
        }
    }
}
