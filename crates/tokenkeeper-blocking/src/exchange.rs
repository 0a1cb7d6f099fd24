//! The HTTP exchange of the thread adapter: ureq 3 over rustls with the
//! *ring* provider, trusting exactly the roots every adapter trusts, no
//! redirects, connect and whole-request timeouts, a capped body.

use std::sync::Arc;
use std::time::Duration;

use http::Request;
use tokenkeeper_core::FetchError;
use tokenkeeper_driver::{BoxFuture, Exchange, HttpAnswer, HttpSettings, HttpSetupError};
use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};

/// A configured ureq agent. Its `send` blocks in the thread that polls it:
/// the thread adapter runs each fetch on a thread of its own.
#[derive(Clone)]
pub(crate) struct UreqExchange {
    agent: ureq::Agent,
    connect_timeout: Duration,
    request_timeout: Duration,
}

impl UreqExchange {
    pub(crate) fn new(settings: &HttpSettings) -> Result<Self, HttpSetupError> {
        // Checks every root the way the other adapters do, so that a bad
        // certificate is the same setup error everywhere.
        settings.rustls_config()?;
        let roots: Vec<Certificate<'static>> = settings
            .root_certificates()?
            .iter()
            .map(|der| Certificate::from_der(der.as_ref()).to_owned())
            .collect();
        let tls = TlsConfig::builder()
            .provider(TlsProvider::Rustls)
            .root_certs(RootCerts::from(roots))
            // The workspace's one provider, given explicitly: ureq then never
            // consults (let alone installs) a process-wide default.
            .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .build();
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .max_redirects_will_error(false)
            .timeout_connect(Some(settings.get_connect_timeout()))
            .timeout_global(Some(settings.get_request_timeout()))
            .user_agent(settings.user_agent_for("threads").as_str())
            .tls_config(tls)
            .build();
        Ok(UreqExchange {
            agent: ureq::Agent::new_with_config(config),
            connect_timeout: settings.get_connect_timeout(),
            request_timeout: settings.get_request_timeout(),
        })
    }

    fn send_now(&self, request: Request<Vec<u8>>, limit: usize) -> Result<HttpAnswer, FetchError> {
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
        Ok(HttpAnswer::new(status, headers, body))
    }

    fn fetch_error(&self, error: ureq::Error, limit: usize) -> FetchError {
        match error {
            ureq::Error::Timeout(which) => FetchError::Timeout {
                after: match which {
                    ureq::Timeout::Connect => self.connect_timeout,
                    _ => self.request_timeout,
                },
            },
            ureq::Error::BodyExceedsLimit(_) => FetchError::BodyTooLarge { limit },
            ureq::Error::Io(e) if e.kind() == std::io::ErrorKind::TimedOut => FetchError::Timeout {
                after: self.request_timeout,
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

impl Exchange for UreqExchange {
    fn send(
        &self,
        request: Request<Vec<u8>>,
        limit: usize,
    ) -> BoxFuture<'static, Result<HttpAnswer, FetchError>> {
        let exchange = self.clone();
        Box::pin(async move { exchange.send_now(request, limit) })
    }
}
