//! What every HTTP stack of the adapters shares: the settings, the trusted
//! roots, the answer, and the [`Exchange`] trait an adapter implements once
//! for its HTTP client (hyper for the async runtimes, ureq for threads).

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Request};
use rustls::pki_types::CertificateDer;
use tokenkeeper_core::FetchError;
use zeroize::Zeroizing;

use crate::boxed::BoxFuture;
use crate::proxy::{ProxyConfig, ProxyError, ProxyRules};
use crate::tls::{IdentitySource, ServerVerifier, pem_certificates, read_file};

/// Settings of the HTTP client that talks to the token endpoint; the same in
/// every adapter.
///
/// TLS is rustls with the *ring* crypto provider, set on the client's own
/// configuration and never installed as a process default; TLS 1.2 and 1.3.
/// Trusted roots, the same in every adapter:
///
/// - the bundled webpki (Mozilla) roots ([`webpki_roots`](Self::webpki_roots));
/// - the operating system's store, with [`native_roots`](Self::native_roots)
///   (on by default when the cargo feature `native-roots` is on);
/// - the certificates named by the `SSL_CERT_FILE` (a PEM bundle) and
///   `SSL_CERT_DIR` (folders of PEM files, separated by `:`) variables, as
///   OpenSSL-based tools honour them, read when the client is built; turn
///   this off with [`ssl_cert_env`](Self::ssl_cert_env);
/// - private CAs added with [`add_root_certificates_file`](Self::add_root_certificates_file),
///   [`add_root_certificates_pem`](Self::add_root_certificates_pem) (PEM,
///   bundles allowed) or [`add_root_certificate`](Self::add_root_certificate) (DER).
///
/// A client certificate for mutual TLS (RFC 8705 `tls_client_auth`) is set
/// with [`client_certificate_files`](Self::client_certificate_files) or
/// [`client_certificate_pem`](Self::client_certificate_pem).
///
/// A server certificate that cannot be verified fails the fetch with
/// [`FetchError::Tls`], a permanent error naming the host, the problem and
/// the fix: `spawn` fails at once rather than waiting out its timeout.
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
    ssl_cert_env: bool,
    extra_roots: Vec<Root>,
    client_identity: Option<IdentitySource>,
    proxy: ProxyConfig,
}

/// A root certificate added by the user, as given.
#[derive(Clone)]
enum Root {
    Der(Vec<u8>),
    Pem(Vec<u8>),
    File(PathBuf),
}

impl fmt::Debug for HttpSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpSettings")
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("user_agent", &self.user_agent)
            .field("webpki_roots", &self.webpki_roots)
            .field("native_roots", &self.native_roots)
            .field("ssl_cert_env", &self.ssl_cert_env)
            .field("extra_roots", &self.extra_roots.len())
            .field("client_identity", &self.client_identity)
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
            ssl_cert_env: true,
            extra_roots: Vec::new(),
            client_identity: None,
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

    /// Also trusts every certificate in this PEM file (a CA bundle may hold
    /// several), read when the HTTP client is built; a missing file or one
    /// without a certificate fails the setup with an error naming it.
    pub fn add_root_certificates_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.extra_roots.push(Root::File(path.into()));
        self
    }

    /// Whether to trust the certificates that `SSL_CERT_FILE` and
    /// `SSL_CERT_DIR` name (default yes), as OpenSSL-based tools do. Read
    /// when the HTTP client is built; a variable that is set but names
    /// nothing readable fails the setup. With the system's roots on, the
    /// store loader honours these variables as well, in place of the
    /// system's own files.
    pub fn ssl_cert_env(mut self, yes: bool) -> Self {
        self.ssl_cert_env = yes;
        self
    }

    /// Presents this client certificate (PEM, the leaf first, then any
    /// intermediates) with this private key (PEM: PKCS#8, PKCS#1 or SEC1)
    /// when the server asks for one: mutual TLS, as RFC 8705 client
    /// authentication (`AuthMethod::TlsClientAuth`) needs. The key is zeroed
    /// when the settings are dropped and never shown.
    pub fn client_certificate_pem(
        mut self,
        chain_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.client_identity = Some(IdentitySource::Pem {
            chain: chain_pem.into(),
            key: Zeroizing::new(key_pem.into()),
        });
        self
    }

    /// Like [`client_certificate_pem`](Self::client_certificate_pem), from
    /// PEM files read when the HTTP client is built.
    pub fn client_certificate_files(
        mut self,
        chain_path: impl Into<PathBuf>,
        key_path: impl Into<PathBuf>,
    ) -> Self {
        self.client_identity = Some(IdentitySource::Files {
            chain: chain_path.into(),
            key: key_path.into(),
        });
        self
    }

    /// Whether a client certificate is configured.
    pub fn has_client_certificate(&self) -> bool {
        self.client_identity.is_some()
    }

    /// The SHA-256 thumbprint (`x5t#S256`, base64url) of the configured
    /// client certificate, if any: what certificate-bound tokens are bound
    /// to (RFC 8705 §3).
    pub fn client_certificate_thumbprint(&self) -> Result<Option<String>, HttpSetupError> {
        match &self.client_identity {
            Some(source) => Ok(Some(source.load()?.thumbprint())),
            None => Ok(None),
        }
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
        if self.ssl_cert_env {
            crate::tls::ssl_cert_env(
                &mut roots,
                std::env::var_os("SSL_CERT_FILE"),
                std::env::var_os("SSL_CERT_DIR"),
            )?;
        }
        for root in &self.extra_roots {
            match root {
                Root::Der(der) => roots.push(CertificateDer::from(der.clone())),
                Root::Pem(pem) => roots.extend(pem_certificates(pem, "an added PEM text")?),
                Root::File(path) => {
                    let pem = read_file(path, "CA")?;
                    roots.extend(pem_certificates(
                        &pem,
                        &format!("the CA file {}", path.display()),
                    )?);
                }
            }
        }
        if roots.is_empty() {
            return Err(HttpSetupError::new("no trusted root certificates"));
        }
        Ok(roots)
    }

    /// The rustls client configuration every HTTP stack of tokenkeeper uses:
    /// the *ring* provider given explicitly, TLS 1.2 and 1.3, servers
    /// verified against [`root_certificates`](Self::root_certificates) (a
    /// self-signed certificate reported as such), and the client
    /// certificate, if one is set.
    pub fn rustls_config(&self) -> Result<rustls::ClientConfig, HttpSetupError> {
        let mut store = rustls::RootCertStore::empty();
        for cert in self.root_certificates()? {
            store.add(cert).map_err(|e| {
                HttpSetupError::new(format!("an added root certificate is invalid: {e}"))
            })?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(store),
            Arc::clone(&provider),
        )
        .build()
        .map_err(|e| HttpSetupError::new(format!("no usable root certificate: {e}")))?;
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| HttpSetupError::new(e.to_string()))?
            .dangerous()
            // webpki's own verification, only reporting self-signed
            // certificates more precisely; nothing is accepted that it refuses.
            .with_custom_certificate_verifier(Arc::new(ServerVerifier::new(verifier)));
        match &self.client_identity {
            None => Ok(builder.with_no_client_auth()),
            Some(source) => {
                let identity = source.load()?;
                builder
                    .with_client_auth_cert(identity.chain, identity.key)
                    .map_err(|e| {
                        HttpSetupError::new(format!(
                            "the client certificate and key cannot be used together: {e}"
                        ))
                    })
            }
        }
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
        // The environment's SSL_CERT_FILE/DIR (set on some machines) kept out.
        let bundled = HttpSettings::new().native_roots(false).ssl_cert_env(false);
        let count = bundled.root_certificates().unwrap().len();
        assert!(count > 50, "{count}");
        let none = bundled.clone().webpki_roots(false);
        assert!(none.root_certificates().is_err());
        assert!(none.rustls_config().is_err());
        let bad_pem = none
            .clone()
            .add_root_certificates_pem(b"no pem here".to_vec());
        let err = bad_pem.root_certificates().unwrap_err();
        assert!(err.to_string().contains("no certificate"), "{err}");
        let der = none
            .clone()
            .add_root_certificate(b"not a certificate".to_vec());
        assert_eq!(der.root_certificates().unwrap().len(), 1);
        assert!(der.rustls_config().is_err());

        // A CA file: read when the client is built; a missing one is named.
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("ca.pem");
        let from_file = none.clone().add_root_certificates_file(&missing);
        let err = from_file.root_certificates().unwrap_err();
        assert!(err.to_string().contains("ca.pem"), "{err}");
        let one = &bundled.root_certificates().unwrap()[0];
        let pem = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, one.as_ref())
        );
        std::fs::write(&missing, pem.repeat(2)).unwrap();
        assert_eq!(from_file.root_certificates().unwrap().len(), 2);
        assert!(from_file.rustls_config().is_ok());
    }

    #[test]
    fn client_certificates_are_checked_and_never_shown() {
        let settings = HttpSettings::new()
            .native_roots(false)
            .ssl_cert_env(false)
            .client_certificate_pem(b"no certificate".to_vec(), b"SECRET-KEY-BYTES".to_vec());
        assert!(settings.has_client_certificate());
        let err = settings.rustls_config().unwrap_err();
        assert!(err.to_string().contains("holds no certificate"), "{err}");
        assert!(!format!("{settings:?}").contains("SECRET-KEY-BYTES"));
        let err = settings.client_certificate_thumbprint().unwrap_err();
        assert!(!err.to_string().contains("SECRET-KEY-BYTES"), "{err}");
        let files = HttpSettings::new().client_certificate_files("/nonexistent/c.pem", "/k.pem");
        let err = files.rustls_config().unwrap_err();
        assert!(err.to_string().contains("/nonexistent/c.pem"), "{err}");
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
