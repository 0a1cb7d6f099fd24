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
use tokenkeeper_driver::tls::tls_fetch_error;
use tokenkeeper_driver::{
    BoxFuture, Exchange, HttpAnswer, HttpSettings, HttpSetupError, ProxyRules, ProxyTarget,
};
use ureq::unversioned::resolver::DefaultResolver;
use ureq::unversioned::transport::{ConnectProxyConnector, Connector, TcpConnector};
use ureq::{Proxy, ProxyProtocol};

use crate::tls::RustlsWith;

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
    /// Whether a client certificate is configured.
    client_certificate: bool,
}

impl UreqExchange {
    pub(crate) fn new(settings: &HttpSettings) -> Result<Self, HttpSetupError> {
        // The driver's rustls configuration, as the other adapters use it:
        // the same trust, verifier, client certificate and TLS versions.
        let tls = Arc::new(settings.rustls_config()?);
        let proxies = settings.proxy_rules()?;
        let agent = |proxy: Option<Proxy>| {
            let config = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .max_redirects(0)
                .max_redirects_will_error(false)
                .timeout_connect(Some(settings.get_connect_timeout()))
                .timeout_global(Some(settings.get_request_timeout()))
                .user_agent(settings.user_agent_for("threads").as_str())
                // Always set: left alone, ureq reads the environment itself.
                .proxy(proxy)
                .build();
            // ureq's default chain, with TLS from the driver's configuration
            // in place of ureq's own rustls connector.
            let connector =
                ().chain(ConnectProxyConnector::default())
                    .chain(TcpConnector::default())
                    .chain(RustlsWith::new(Arc::clone(&tls)));
            ureq::Agent::with_parts(config, connector, DefaultResolver::default())
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
            client_certificate: settings.has_client_certificate(),
        })
    }

    fn send_now(&self, request: Request<Vec<u8>>, limit: usize) -> Result<HttpAnswer, FetchError> {
        let proxy = self.proxies.proxy_for(request.uri());
        let uri = request.uri().clone();
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
        let host = request_host(&uri);
        let mut response = sent.map_err(|e| self.fetch_error(e, limit, proxy, &host))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .body_mut()
            .with_config()
            .limit(u64::try_from(limit).unwrap_or(u64::MAX))
            .read_to_vec()
            .map_err(|e| self.fetch_error(e, limit, proxy, &host))?;
        Ok(HttpAnswer::new(status, headers, body))
    }

    fn fetch_error(
        &self,
        error: ureq::Error,
        limit: usize,
        proxy: Option<&ProxyTarget>,
        host: &str,
    ) -> FetchError {
        let tls = match &error {
            ureq::Error::Io(e) => tls_fetch_error(host, e, self.client_certificate),
            ureq::Error::Rustls(e) => tls_fetch_error(host, e, self.client_certificate),
            _ => None,
        };
        if let Some(tls) = tls {
            return tls;
        }
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

/// The host of a token URL, without brackets, for messages.
fn request_host(uri: &http::Uri) -> String {
    uri.host()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned()
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
