//! The HTTP exchange of the thread adapter: ureq 3 over rustls with the
//! *ring* provider, trusting exactly the roots every adapter trusts, no
//! redirects, connect and whole-request timeouts, a capped body, and the
//! driver's proxy rules.
//!
//! ureq is never let read the environment itself (by default it would, and
//! would send even loopback requests through `HTTPS_PROXY`, `HTTP_PROXY` or
//! `ALL_PROXY`): every agent here is built with an explicit proxy or none,
//! and [`ProxyRules::proxy_for`] picks the agent for each request.
//!
//! ureq speaks only `CONNECT` to an HTTP proxy, so a plain-http target (an
//! insecure token URL, allowed explicitly) goes through a tunnel too, where
//! the async adapters send it in absolute form as curl does; a proxy that
//! allows `CONNECT` to port 443 only refuses it.

use std::sync::Arc;
use std::time::Duration;

use http::Request;
use tokenkeeper_core::FetchError;
use tokenkeeper_driver::{
    BoxFuture, Exchange, HttpAnswer, HttpSettings, HttpSetupError, ProxyRules, ProxyTarget,
};
use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};
use ureq::{Proxy, ProxyProtocol};

/// Configured ureq agents. Its `send` blocks in the thread that polls it:
/// the thread adapter runs each fetch on a thread of its own.
#[derive(Clone)]
pub(crate) struct UreqExchange {
    /// No proxy.
    direct: ureq::Agent,
    /// One agent per proxy: ureq opens a `CONNECT` tunnel through it (and
    /// for `https`, runs TLS to the target inside).
    tunnels: Arc<Vec<(ProxyTarget, ureq::Agent)>>,
    proxies: Arc<ProxyRules>,
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
        let proxies = settings.proxy_rules()?;
        let agent = |proxy: Option<Proxy>| {
            let config = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .max_redirects(0)
                .max_redirects_will_error(false)
                .timeout_connect(Some(settings.get_connect_timeout()))
                .timeout_global(Some(settings.get_request_timeout()))
                .user_agent(settings.user_agent_for("threads").as_str())
                .tls_config(tls.clone())
                // Always set: left alone, ureq reads the environment itself.
                .proxy(proxy)
                .build();
            ureq::Agent::new_with_config(config)
        };
        let mut tunnels = Vec::new();
        for target in proxies.targets() {
            tunnels.push((target.clone(), agent(Some(ureq_proxy(target)?))));
        }
        Ok(UreqExchange {
            direct: agent(None),
            tunnels: Arc::new(tunnels),
            proxies: Arc::new(proxies),
            connect_timeout: settings.get_connect_timeout(),
            request_timeout: settings.get_request_timeout(),
        })
    }

    fn send_now(&self, request: Request<Vec<u8>>, limit: usize) -> Result<HttpAnswer, FetchError> {
        let proxy = self.proxies.proxy_for(request.uri());
        let sent = match proxy {
            None => self.direct.run(request),
            Some(proxy) => {
                tracing::debug!(%proxy, "through a proxy");
                let agent = self
                    .tunnels
                    .iter()
                    .find(|(target, _)| target == proxy)
                    .map(|(_, agent)| agent)
                    .ok_or_else(|| FetchError::Transport {
                        message: format!("no agent for the proxy {proxy}"),
                    })?;
                agent.run(request)
            }
        };
        let mut response = sent.map_err(|e| self.fetch_error(e, limit, proxy))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .body_mut()
            .with_config()
            .limit(u64::try_from(limit).unwrap_or(u64::MAX))
            .read_to_vec()
            .map_err(|e| self.fetch_error(e, limit, proxy))?;
        Ok(HttpAnswer::new(status, headers, body))
    }

    fn fetch_error(
        &self,
        error: ureq::Error,
        limit: usize,
        proxy: Option<&ProxyTarget>,
    ) -> FetchError {
        match (self.fetch_error_direct(error, limit), proxy) {
            (FetchError::Transport { message }, Some(proxy)) => FetchError::Transport {
                message: format!("through the proxy {proxy}: {message}"),
            },
            (error, _) => error,
        }
    }

    fn fetch_error_direct(&self, error: ureq::Error, limit: usize) -> FetchError {
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

/// The ureq proxy for `target`: an HTTP proxy, which ureq talks to with
/// `CONNECT` (it resolves the target's name, as curl lets it).
fn ureq_proxy(target: &ProxyTarget) -> Result<Proxy, HttpSetupError> {
    let host = if target.host().contains(':') {
        format!("[{}]", target.host())
    } else {
        target.host().to_owned()
    };
    let mut builder = Proxy::builder(ProxyProtocol::Http)
        .host(&host)
        .port(target.port());
    if let (Some(user), Some(password)) = (target.user(), target.password()) {
        builder = builder.username(user).password(password);
    }
    builder
        .build()
        .map_err(|_| HttpSetupError::new(format!("ureq cannot use the proxy {target}")))
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
