//! The HTTP client that carries the refresher's token requests: hyper 1 over
//! rustls (ring provider), with connect and total timeouts, a body size cap
//! and no redirects.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, USER_AGENT};
use http::{HeaderMap, HeaderValue, Request};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::CertificateDer;
use tokenkeeper_core::FetchError;
use zeroize::Zeroizing;

const DEFAULT_USER_AGENT: &str = concat!("tokenkeeper-tokio/", env!("CARGO_PKG_VERSION"));

/// Settings of the HTTP client that talks to the token endpoint.
///
/// TLS is rustls with the *ring* crypto provider, trusting the webpki (Mozilla)
/// roots; with the cargo feature `native-roots`, the operating system's store
/// is trusted as well. Redirects are never followed: a `3xx` answer is an
/// error status like any other. Plain `http://` is refused by
/// [`OAuth2Client`](tokenkeeper_core::oauth2::OAuth2Client) unless the host is
/// loopback or insecure http was allowed explicitly. The response size cap is
/// the client's [`max_body_bytes`](tokenkeeper_core::oauth2::OAuth2Client::max_body_bytes).
#[derive(Clone)]
pub struct HttpSettings {
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) user_agent: String,
    pub(crate) webpki_roots: bool,
    #[cfg(feature = "native-roots")]
    pub(crate) native_roots: bool,
    pub(crate) extra_roots: Vec<Vec<u8>>,
    pub(crate) pool_idle_timeout: Duration,
}

impl fmt::Debug for HttpSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("HttpSettings");
        d.field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("user_agent", &self.user_agent)
            .field("webpki_roots", &self.webpki_roots);
        #[cfg(feature = "native-roots")]
        d.field("native_roots", &self.native_roots);
        d.field("extra_roots", &self.extra_roots.len())
            .field("pool_idle_timeout", &self.pool_idle_timeout)
            .finish()
    }
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            user_agent: DEFAULT_USER_AGENT.to_owned(),
            webpki_roots: true,
            #[cfg(feature = "native-roots")]
            native_roots: true,
            extra_roots: Vec::new(),
            pool_idle_timeout: Duration::from_secs(30),
        }
    }
}

impl HttpSettings {
    /// Default settings: 10 s to connect, 30 s for the whole exchange.
    pub fn new() -> Self {
        Self::default()
    }

    /// The longest wait for a TCP connection (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The longest wait for the whole exchange: connecting, TLS, sending the
    /// request and reading the complete answer (default 30 s). It also bounds
    /// each call of a custom [`TokenSource`](crate::TokenSource).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The `User-Agent` header (default `tokenkeeper-tokio/<version>`).
    pub fn user_agent(mut self, user_agent: impl Into<String>) -> Self {
        self.user_agent = user_agent.into();
        self
    }

    /// Whether to trust the webpki (Mozilla) roots (default yes).
    pub fn webpki_roots(mut self, yes: bool) -> Self {
        self.webpki_roots = yes;
        self
    }

    /// Whether to trust the operating system's certificate store (default yes
    /// when the `native-roots` feature is on).
    #[cfg(feature = "native-roots")]
    pub fn native_roots(mut self, yes: bool) -> Self {
        self.native_roots = yes;
        self
    }

    /// Also trusts this root certificate (DER), for a private CA.
    pub fn add_root_certificate(mut self, der: impl Into<Vec<u8>>) -> Self {
        self.extra_roots.push(der.into());
        self
    }

    /// How long an idle connection is kept for reuse (default 30 s).
    pub fn pool_idle_timeout(mut self, timeout: Duration) -> Self {
        self.pool_idle_timeout = timeout;
        self
    }

    /// The whole-exchange timeout.
    pub fn timeout(&self) -> Duration {
        self.request_timeout
    }
}

/// The HTTP client could not be set up (no trusted roots, a bad certificate).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the HTTP client could not be set up: {message}")]
pub struct HttpSetupError {
    message: String,
}

impl HttpSetupError {
    fn new(message: impl Into<String>) -> Self {
        HttpSetupError {
            message: message.into(),
        }
    }
}

fn tls_config(settings: &HttpSettings) -> Result<rustls::ClientConfig, HttpSetupError> {
    let mut roots = rustls::RootCertStore::empty();
    if settings.webpki_roots {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    #[cfg(feature = "native-roots")]
    if settings.native_roots {
        let found = rustls_native_certs::load_native_certs();
        for error in &found.errors {
            tracing::warn!(%error, "could not load part of the system certificate store");
        }
        let (added, ignored) = roots.add_parsable_certificates(found.certs);
        tracing::debug!(added, ignored, "loaded the system certificate store");
    }
    for der in &settings.extra_roots {
        roots.add(CertificateDer::from(der.clone())).map_err(|e| {
            HttpSetupError::new(format!("an added root certificate is invalid: {e}"))
        })?;
    }
    if roots.is_empty() {
        return Err(HttpSetupError::new("no trusted root certificates"));
    }
    // The workspace's one crypto provider, given explicitly: never a process default.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| HttpSetupError::new(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A complete answer from the token endpoint. The body may hold a token: it
/// is zeroed on drop.
pub(crate) struct HttpAnswer {
    pub(crate) status: u16,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Zeroizing<Vec<u8>>,
}

/// The client. Cheap to clone.
#[derive(Clone)]
pub(crate) struct HttpClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    connect_timeout: Duration,
    request_timeout: Duration,
    user_agent: HeaderValue,
}

impl HttpClient {
    pub(crate) fn new(settings: &HttpSettings) -> Result<Self, HttpSetupError> {
        let user_agent = HeaderValue::from_str(&settings.user_agent)
            .map_err(|_| HttpSetupError::new("the user agent is not a valid header value"))?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(settings.connect_timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config(settings)?)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(settings.pool_idle_timeout)
            .build(connector);
        Ok(HttpClient {
            client,
            connect_timeout: settings.connect_timeout,
            request_timeout: settings.request_timeout,
            user_agent,
        })
    }

    /// Sends `request` and reads the answer, at most `limit` body bytes, all
    /// within the request timeout. No redirect is followed.
    pub(crate) async fn send(
        &self,
        request: Request<Vec<u8>>,
        limit: usize,
    ) -> Result<HttpAnswer, FetchError> {
        let (mut parts, body) = request.into_parts();
        parts
            .headers
            .entry(USER_AGENT)
            .or_insert_with(|| self.user_agent.clone());
        let request = Request::from_parts(parts, Full::new(Bytes::from(body)));
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| self.transport_error(&e))?;
            let (parts, body) = response.into_parts();
            let announced = parts
                .headers
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            if announced.is_some_and(|len| len > limit as u64) {
                return Err(FetchError::BodyTooLarge { limit });
            }
            let collected = Limited::new(body, limit).collect().await.map_err(|e| {
                if e.downcast_ref::<LengthLimitError>().is_some() {
                    FetchError::BodyTooLarge { limit }
                } else {
                    self.transport_error(&*e)
                }
            })?;
            Ok(HttpAnswer {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body: Zeroizing::new(Vec::from(collected.to_bytes())),
            })
        };
        match tokio::time::timeout(self.request_timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(FetchError::Timeout {
                after: self.request_timeout,
            }),
        }
    }

    /// A transport failure, with its causes; a connect timeout is a timeout.
    fn transport_error(&self, error: &(dyn StdError + 'static)) -> FetchError {
        let mut source: Option<&(dyn StdError + 'static)> = Some(error);
        let mut message = String::new();
        while let Some(e) = source {
            if let Some(io) = e.downcast_ref::<std::io::Error>()
                && io.kind() == std::io::ErrorKind::TimedOut
            {
                return FetchError::Timeout {
                    after: self.connect_timeout,
                };
            }
            let text = e.to_string();
            // hyper nests errors whose messages repeat their causes.
            if !message.contains(&text) {
                if !message.is_empty() {
                    message.push_str(": ");
                }
                message.push_str(&text);
            }
            source = e.source();
        }
        FetchError::Transport { message }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_config_builds_with_ring_and_webpki_roots() {
        let config = tls_config(&HttpSettings::default()).unwrap();
        assert!(config.crypto_provider().cipher_suites.len() > 1);
        assert!(HttpClient::new(&HttpSettings::default()).is_ok());
    }

    #[test]
    fn no_roots_at_all_is_a_setup_error() {
        let mut settings = HttpSettings::default().webpki_roots(false);
        #[cfg(feature = "native-roots")]
        {
            settings = settings.native_roots(false);
        }
        let err = tls_config(&settings).unwrap_err();
        assert!(err.to_string().contains("no trusted root"), "{err}");
        settings = settings.add_root_certificate(b"not a certificate".to_vec());
        assert!(tls_config(&settings).is_err());
    }
}
