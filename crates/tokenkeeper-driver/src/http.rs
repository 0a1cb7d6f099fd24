//! What every HTTP stack of the adapters shares: the settings, the trusted
//! roots, the answer, and the [`Exchange`] trait an adapter implements once
//! for its HTTP client (hyper for the async runtimes, ureq for threads).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Request};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokenkeeper_core::FetchError;
use zeroize::Zeroizing;

use crate::boxed::BoxFuture;
use crate::proxy::{ProxyConfig, ProxyError, ProxyRules};

/// Settings of the HTTP client that talks to the token endpoint; the same in
/// every adapter.
///
/// TLS is rustls with the *ring* crypto provider, set on the client's own
/// configuration and never installed as a process default. Trusted roots:
/// the bundled webpki (Mozilla) roots, plus the operating system's store
/// when the cargo feature `native-roots` is on (it adds to the bundled
/// roots, in every adapter), plus any root added with
/// [`add_root_certificate`](Self::add_root_certificate) or
/// [`add_root_certificates_pem`](Self::add_root_certificates_pem).
/// Redirects are never followed: a `3xx` answer is an error status like any
/// other. Plain `http://` is refused by
/// [`OAuth2Client`](tokenkeeper_core::oauth2::OAuth2Client) unless the host
/// is loopback or insecure http was allowed explicitly. The response size cap
/// is the client's
/// [`max_body_bytes`](tokenkeeper_core::oauth2::OAuth2Client::max_body_bytes).
///
/// Proxies: by default, the proxy variables of the environment, read once
/// when the client is built and honoured as curl honours them; an explicit
/// [`proxy`](Self::proxy) setting overrides them; loopback targets are never
/// proxied. See [`ProxyConfig`] and [the rules](crate::proxy#the-rules).
#[derive(Clone)]
pub struct HttpSettings {
    connect_timeout: Duration,
    request_timeout: Duration,
    user_agent: Option<String>,
    webpki_roots: bool,
    native_roots: bool,
    extra_roots: Vec<Root>,
    proxy: ProxyConfig,
}

/// A root certificate added by the user, as given.
#[derive(Clone)]
enum Root {
    Der(Vec<u8>),
    Pem(Vec<u8>),
}

impl fmt::Debug for HttpSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpSettings")
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("user_agent", &self.user_agent)
            .field("webpki_roots", &self.webpki_roots)
            .field("native_roots", &self.native_roots)
            .field("extra_roots", &self.extra_roots.len())
            .field("proxy", &self.proxy)
            .finish()
    }
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            user_agent: None,
            webpki_roots: true,
            native_roots: cfg!(feature = "native-roots"),
            extra_roots: Vec::new(),
            proxy: ProxyConfig::default(),
        }
    }
}

impl HttpSettings {
    /// Default settings: 10 s to connect, 30 s for the whole exchange.
    pub fn new() -> Self {
        Self::default()
    }

    /// The longest wait for a connection: TCP, and the TLS handshake for
    /// `https` (default 10 s).
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

    /// The `User-Agent` header (default `tokenkeeper-<runtime>/<version>`,
    /// such as `tokenkeeper-tokio/0.1.0`).
    pub fn user_agent(mut self, user_agent: impl Into<String>) -> Self {
        self.user_agent = Some(user_agent.into());
        self
    }

    /// Whether to trust the bundled webpki (Mozilla) roots (default yes).
    pub fn webpki_roots(mut self, yes: bool) -> Self {
        self.webpki_roots = yes;
        self
    }

    /// Whether to trust the operating system's certificate store as well
    /// (default: yes when the cargo feature `native-roots` is on). Without
    /// that feature, asking for it makes the client fail to set up with a
    /// message saying which feature to turn on.
    pub fn native_roots(mut self, yes: bool) -> Self {
        self.native_roots = yes;
        self
    }

    /// Also trusts this root certificate (DER), for a private CA.
    pub fn add_root_certificate(mut self, der: impl Into<Vec<u8>>) -> Self {
        self.extra_roots.push(Root::Der(der.into()));
        self
    }

    /// Also trusts every certificate in this PEM text (a bundle may hold
    /// several), for a private CA.
    pub fn add_root_certificates_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.extra_roots.push(Root::Pem(pem.into()));
        self
    }

    /// Which proxy to use (default: [`ProxyConfig::from_env`], the proxy
    /// variables as the environment holds them when the client is built).
    /// Whatever this says, loopback targets are never proxied.
    pub fn proxy(mut self, proxy: ProxyConfig) -> Self {
        self.proxy = proxy;
        self
    }

    /// The proxy configuration.
    pub fn get_proxy(&self) -> &ProxyConfig {
        &self.proxy
    }

    /// The proxy rules every HTTP stack of tokenkeeper follows, resolved now
    /// (for the default, from the environment as it is now): adapters call
    /// this once, when they build their client.
    pub fn proxy_rules(&self) -> Result<ProxyRules, HttpSetupError> {
        Ok(self.proxy.resolve()?)
    }

    /// The connect timeout.
    pub fn get_connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// The whole-exchange timeout.
    pub fn get_request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// The `User-Agent` to send, for a client of the named runtime.
    pub fn user_agent_for(&self, runtime: &str) -> String {
        self.user_agent
            .clone()
            .unwrap_or_else(|| format!("tokenkeeper-{runtime}/{}", env!("CARGO_PKG_VERSION")))
    }

    /// Every root certificate to trust, as configured: the one list that
    /// every HTTP stack of tokenkeeper verifies servers against.
    pub fn root_certificates(&self) -> Result<Vec<CertificateDer<'static>>, HttpSetupError> {
        let mut roots: Vec<CertificateDer<'static>> = Vec::new();
        if self.webpki_roots {
            roots.extend(webpki_root_certs::TLS_SERVER_ROOT_CERTS.iter().cloned());
        }
        if self.native_roots {
            native_roots(&mut roots)?;
        }
        for root in &self.extra_roots {
            match root {
                Root::Der(der) => roots.push(CertificateDer::from(der.clone())),
                Root::Pem(pem) => {
                    let before = roots.len();
                    for cert in CertificateDer::pem_slice_iter(pem) {
                        roots.push(cert.map_err(|_| {
                            HttpSetupError::new("an added PEM root certificate could not be read")
                        })?);
                    }
                    if roots.len() == before {
                        return Err(HttpSetupError::new(
                            "an added PEM text holds no certificate",
                        ));
                    }
                }
            }
        }
        if roots.is_empty() {
            return Err(HttpSetupError::new("no trusted root certificates"));
        }
        Ok(roots)
    }

    /// A rustls client configuration trusting [`root_certificates`](Self::root_certificates),
    /// with the *ring* provider given explicitly.
    pub fn rustls_config(&self) -> Result<rustls::ClientConfig, HttpSetupError> {
        let mut store = rustls::RootCertStore::empty();
        for cert in self.root_certificates()? {
            store.add(cert).map_err(|e| {
                HttpSetupError::new(format!("an added root certificate is invalid: {e}"))
            })?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Ok(rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| HttpSetupError::new(e.to_string()))?
            .with_root_certificates(store)
            .with_no_client_auth())
    }
}

#[cfg(feature = "native-roots")]
fn native_roots(roots: &mut Vec<CertificateDer<'static>>) -> Result<(), HttpSetupError> {
    let found = rustls_native_certs::load_native_certs();
    for error in &found.errors {
        tracing::warn!(%error, "could not load part of the system certificate store");
    }
    tracing::debug!(
        count = found.certs.len(),
        "loaded the system certificate store"
    );
    roots.extend(found.certs);
    Ok(())
}

#[cfg(not(feature = "native-roots"))]
fn native_roots(_: &mut Vec<CertificateDer<'static>>) -> Result<(), HttpSetupError> {
    Err(HttpSetupError::new(
        "the system's roots were asked for, but this build lacks the `native-roots` feature",
    ))
}

/// The HTTP client could not be set up (no trusted roots, a bad certificate,
/// a proxy setting that cannot be used).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the HTTP client could not be set up: {message}")]
pub struct HttpSetupError {
    message: String,
    proxy: Option<ProxyError>,
}

impl HttpSetupError {
    /// An error with this message (which must hold no secret).
    pub fn new(message: impl Into<String>) -> Self {
        HttpSetupError {
            message: message.into(),
            proxy: None,
        }
    }

    /// The proxy setting at fault, when that is what failed.
    pub fn proxy_error(&self) -> Option<&ProxyError> {
        self.proxy.as_ref()
    }
}

impl From<ProxyError> for HttpSetupError {
    fn from(error: ProxyError) -> Self {
        HttpSetupError {
            message: error.to_string(),
            proxy: Some(error),
        }
    }
}

/// A complete answer from the token endpoint. The body may hold a token: it
/// is zeroed on drop, and `Debug` shows only its length.
#[non_exhaustive]
pub struct HttpAnswer {
    /// The HTTP status.
    pub status: u16,
    /// The response headers.
    pub headers: HeaderMap,
    /// The body, at most the cap given to [`Exchange::send`].
    pub body: Zeroizing<Vec<u8>>,
}

impl HttpAnswer {
    /// An answer.
    pub fn new(status: u16, headers: HeaderMap, body: Vec<u8>) -> Self {
        HttpAnswer {
            status,
            headers,
            body: Zeroizing::new(body),
        }
    }
}

impl fmt::Debug for HttpAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpAnswer")
            .field("status", &self.status)
            .field("body_len", &self.body.len())
            .finish_non_exhaustive()
    }
}

/// One HTTP stack, as the driver uses it: send a token request, read the
/// whole answer. Each adapter implements it once (hyper over the runtime's
/// sockets, ureq on threads); everything around it is the driver's.
///
/// Implementations bound the whole exchange by the settings' request
/// timeout, never follow redirects, and stop reading past `limit` body
/// bytes with [`FetchError::BodyTooLarge`]. Their error messages must hold
/// no secret (no body, no header values, no URL query).
pub trait Exchange: Send + Sync + 'static {
    /// Sends `request` and reads the answer.
    fn send(
        &self,
        request: Request<Vec<u8>>,
        limit: usize,
    ) -> BoxFuture<'static, Result<HttpAnswer, FetchError>>;
}

/// An exchange shared by the tasks of a watcher.
pub type SharedExchange = Arc<dyn Exchange>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_come_from_every_configured_place() {
        let bundled = HttpSettings::new().native_roots(false);
        let count = bundled.root_certificates().unwrap().len();
        assert!(count > 50, "{count}");
        let none = HttpSettings::new().native_roots(false).webpki_roots(false);
        assert!(none.root_certificates().is_err());
        assert!(none.rustls_config().is_err());
        let bad_pem = none
            .clone()
            .add_root_certificates_pem(b"no pem here".to_vec());
        let err = bad_pem.root_certificates().unwrap_err();
        assert!(err.to_string().contains("no certificate"), "{err}");
        let der = none.add_root_certificate(b"not a certificate".to_vec());
        assert_eq!(der.root_certificates().unwrap().len(), 1);
        assert!(der.rustls_config().is_err());
    }

    #[test]
    fn the_default_config_uses_ring() {
        let config = HttpSettings::new()
            .native_roots(false)
            .rustls_config()
            .unwrap();
        assert!(config.crypto_provider().cipher_suites.len() > 1);
        assert_eq!(
            HttpSettings::new().user_agent_for("threads"),
            format!("tokenkeeper-threads/{}", env!("CARGO_PKG_VERSION"))
        );
    }
}
