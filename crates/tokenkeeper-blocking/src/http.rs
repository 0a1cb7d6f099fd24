//! The HTTP client: ureq 3 over rustls with the ring provider, no redirects,
//! connect and whole-request timeouts, and a cap on the response body.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Request};
use tokenkeeper_core::FetchError;
use ureq::tls::{RootCerts, TlsConfig, TlsProvider};
use zeroize::Zeroizing;

/// Settings of the HTTP client that talks to the token endpoint.
///
/// Whatever the settings: redirects are never followed (a `3xx` answer is an
/// error like any other), every status is handed to the refresher, and the
/// body is capped at the OAuth2 client's limit
/// ([`OAuth2Client::max_body_bytes`](tokenkeeper_core::oauth2::OAuth2Client::max_body_bytes)).
/// Plain `http://` is refused for anything but loopback by the token URL
/// itself ([`TokenUrl`](tokenkeeper_core::oauth2::TokenUrl)). TLS is rustls
/// with the `ring` provider, configured for this client alone: no process-wide
/// default provider is read or installed. Proxies named by the usual
/// environment variables (`HTTPS_PROXY`, `ALL_PROXY`, `NO_PROXY`, ...) are used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSettings {
    connect_timeout: Duration,
    request_timeout: Duration,
    user_agent: String,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            user_agent: concat!("tokenkeeper/", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }
}

impl HttpSettings {
    /// Time allowed to connect, TLS included (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Time allowed for a whole request, from connecting to the last byte of
    /// the answer (default 30 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The `User-Agent` header (default `tokenkeeper/<version>`).
    pub fn user_agent(mut self, user_agent: impl Into<String>) -> Self {
        self.user_agent = user_agent.into();
        self
    }

    /// The connect timeout.
    pub fn get_connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// The whole-request timeout.
    pub fn get_request_timeout(&self) -> Duration {
        self.request_timeout
    }
}

/// An HTTP answer: status, headers and the (capped) body, zeroed on drop
/// since it may hold a token.
pub(crate) struct HttpAnswer {
    pub(crate) status: u16,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Zeroizing<Vec<u8>>,
}

/// A configured ureq agent. Cheap to clone.
#[derive(Clone)]
pub(crate) struct HttpClient {
    agent: ureq::Agent,
    settings: HttpSettings,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

fn tls_config() -> TlsConfig {
    let roots = if cfg!(feature = "native-roots") {
        RootCerts::PlatformVerifier
    } else {
        RootCerts::WebPki
    };
    TlsConfig::builder()
        .provider(TlsProvider::Rustls)
        .root_certs(roots)
        // The workspace's one provider, given explicitly: ureq then never
        // consults (let alone installs) a process-wide default.
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .build()
}

impl HttpClient {
    pub(crate) fn new(settings: &HttpSettings) -> Self {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .max_redirects_will_error(false)
            .timeout_connect(Some(settings.connect_timeout))
            .timeout_global(Some(settings.request_timeout))
            .user_agent(settings.user_agent.as_str())
            .tls_config(tls_config())
            .build();
        HttpClient {
            agent: ureq::Agent::new_with_config(config),
            settings: settings.clone(),
        }
    }

    /// Sends a token request and reads the answer, at most `limit` body bytes.
    pub(crate) fn send(
        &self,
        request: Request<Vec<u8>>,
        limit: usize,
    ) -> Result<HttpAnswer, FetchError> {
        let mut response = self
            .agent
            .run(request)
            .map_err(|e| self.fetch_error(e, limit))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .body_mut()
            .with_config()
            .limit(u64::try_from(limit).unwrap_or(u64::MAX))
            .read_to_vec()
            .map_err(|e| self.fetch_error(e, limit))?;
        Ok(HttpAnswer {
            status,
            headers,
            body: Zeroizing::new(body),
        })
    }

    fn fetch_error(&self, error: ureq::Error, limit: usize) -> FetchError {
        match error {
            ureq::Error::Timeout(which) => FetchError::Timeout {
                after: match which {
                    ureq::Timeout::Connect => self.settings.connect_timeout,
                    _ => self.settings.request_timeout,
                },
            },
            ureq::Error::BodyExceedsLimit(_) => FetchError::BodyTooLarge { limit },
            ureq::Error::Io(e) if e.kind() == std::io::ErrorKind::TimedOut => FetchError::Timeout {
                after: self.settings.request_timeout,
            },
            ureq::Error::HostNotFound => FetchError::Transport {
                message: "the host name could not be resolved".to_owned(),
            },
            // ureq's messages name the failure (refused, reset, TLS alert,
            // protocol error); neither the request body nor headers are in them.
            other => FetchError::Transport {
                message: other.to_string(),
            },
        }
    }
}
