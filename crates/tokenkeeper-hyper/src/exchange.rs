//! The hyper exchange: [`HttpClient`].

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::FutureExt;
use http::header::{CONNECTION, CONTENT_LENGTH, HOST, PROXY_AUTHORIZATION, USER_AGENT};
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Full};
use rustls::pki_types::ServerName;
use tokenkeeper_core::FetchError;
use tokenkeeper_driver::tls::tls_fetch_error;
use tokenkeeper_driver::{
    BoxFuture, Exchange, HttpAnswer, HttpSettings, HttpSetupError, ProxyRules, ProxyTarget, timeout,
};
use zeroize::Zeroizing;

use crate::{Connect, Endpoint, Tls, Tunnel};

/// The HTTP client of a watcher: one hyper HTTP/1.1 exchange per token
/// request, over a connection the runtime `R` opens. Cheap to clone.
pub struct HttpClient<R> {
    runtime: R,
    tls: Arc<rustls::ClientConfig>,
    proxies: Arc<ProxyRules>,
    connect_timeout: Duration,
    request_timeout: Duration,
    user_agent: HeaderValue,
    /// Whether a client certificate is configured (to tell "required" from
    /// "rejected" when the server refuses the handshake).
    client_certificate: bool,
}

impl<R: Clone> Clone for HttpClient<R> {
    fn clone(&self) -> Self {
        HttpClient {
            runtime: self.runtime.clone(),
            tls: Arc::clone(&self.tls),
            proxies: Arc::clone(&self.proxies),
            connect_timeout: self.connect_timeout,
            request_timeout: self.request_timeout,
            user_agent: self.user_agent.clone(),
            client_certificate: self.client_certificate,
        }
    }
}

impl<R> fmt::Debug for HttpClient<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClient")
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("user_agent", &self.user_agent)
            .field("proxies", &self.proxies)
            .finish_non_exhaustive()
    }
}

impl<R: Connect> Exchange for HttpClient<R> {
    fn send(
        &self,
        request: Request<Vec<u8>>,
        limit: usize,
    ) -> BoxFuture<'static, Result<HttpAnswer, FetchError>> {
        let client = self.clone();
        Box::pin(async move { client.send(request, limit).await })
    }
}

impl<R: Connect> HttpClient<R> {
    /// A client on `runtime` with `settings`. The proxy rules are resolved
    /// here, once (for the default, from the environment as it is now).
    pub fn new(runtime: R, settings: &HttpSettings) -> Result<Self, HttpSetupError> {
        let user_agent = settings.user_agent_for(runtime.name());
        let user_agent = HeaderValue::from_str(&user_agent)
            .map_err(|_| HttpSetupError::new("the user agent is not a valid header value"))?;
        Ok(HttpClient {
            tls: Arc::new(settings.rustls_config()?),
            proxies: Arc::new(settings.proxy_rules()?),
            runtime,
            connect_timeout: settings.get_connect_timeout(),
            request_timeout: settings.get_request_timeout(),
            user_agent,
            client_certificate: settings.has_client_certificate(),
        })
    }

    /// Sends `request` (absolute URI, `http` or `https`) and reads the
    /// answer, at most `limit` body bytes, all within the request timeout. No
    /// redirect is followed.
    ///
    /// Errors: [`FetchError::Timeout`] when connecting or the whole exchange
    /// took too long, [`FetchError::BodyTooLarge`] past the cap, and
    /// [`FetchError::Transport`] for everything else that kept an answer
    /// from arriving (refused, reset, TLS, a malformed answer).
    pub async fn send(
        &self,
        request: Request<Vec<u8>>,
        limit: usize,
    ) -> Result<HttpAnswer, FetchError> {
        let exchange = self.exchange(request, limit);
        match timeout(&self.runtime, self.request_timeout, exchange).await {
            Some(result) => result,
            None => Err(FetchError::Timeout {
                after: self.request_timeout,
            }),
        }
    }

    async fn exchange(
        &self,
        request: Request<Vec<u8>>,
        limit: usize,
    ) -> Result<HttpAnswer, FetchError> {
        let (mut parts, body) = request.into_parts();
        let (endpoint, forward_to) = self.endpoint(&parts.uri)?;
        let target_host = endpoint
            .tls
            .as_ref()
            .map(|tls| tls.server_name.to_str().into_owned());
        // A TLS failure, wherever it shows (the handshake, or the server's
        // alert on the first read in TLS 1.3), is the typed error.
        let tls_error = |e: &(dyn StdError + 'static)| {
            target_host
                .as_deref()
                .and_then(|host| tls_fetch_error(host, e, self.client_certificate))
        };
        // The authority goes in `Host`.
        if let Some(authority) = parts.uri.authority() {
            let host = HeaderValue::from_str(authority.as_str())
                .map_err(|_| transport("the token URL's host is not a valid header value"))?;
            parts.headers.insert(HOST, host);
        }
        match forward_to {
            // Through a proxy, plain http: absolute form on the request line.
            Some(proxy) => {
                if let Some(authorization) = proxy.authorization() {
                    parts
                        .headers
                        .insert(PROXY_AUTHORIZATION, authorization.clone());
                }
            }
            // Direct, or inside a tunnel: origin form.
            None => {
                let path = parts
                    .uri
                    .path_and_query()
                    .cloned()
                    .unwrap_or_else(|| PathAndQuery::from_static("/"));
                parts.uri = Uri::from(path);
            }
        }
        parts
            .headers
            .entry(USER_AGENT)
            .or_insert_with(|| self.user_agent.clone());
        parts
            .headers
            .insert(CONNECTION, HeaderValue::from_static("close"));
        let request = Request::from_parts(parts, Full::new(Bytes::from(body)));

        let started = Instant::now();
        let connecting = self.runtime.connect(&endpoint);
        let io = match timeout(&self.runtime, self.connect_timeout, connecting).await {
            None => {
                return Err(FetchError::Timeout {
                    after: self.connect_timeout,
                });
            }
            Some(Err(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
                return Err(FetchError::Timeout {
                    after: self.connect_timeout,
                });
            }
            Some(Err(e)) => {
                if let Some(error) = tls_error(&e) {
                    return Err(error);
                }
                return Err(transport(match (&endpoint.tunnel, forward_to) {
                    (Some(tunnel), _) => format!(
                        "could not connect to {} through the proxy {}: {}",
                        tunnel.target,
                        tunnel.proxy,
                        chain(&e)
                    ),
                    (None, Some(proxy)) => {
                        format!("could not connect to the proxy {proxy}: {}", chain(&e))
                    }
                    (None, None) => format!(
                        "could not connect to {}:{}: {}",
                        endpoint.host,
                        endpoint.port,
                        chain(&e)
                    ),
                }));
            }
            Some(Ok(io)) => io,
        };
        tracing::trace!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            tls = endpoint.tls.is_some(),
            tunnel = endpoint.tunnel.is_some(),
            proxy = forward_to.is_some(),
            "connected"
        );

        let failed =
            |e: &(dyn StdError + 'static)| tls_error(e).unwrap_or_else(|| self.transport_error(e));
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| failed(&e))?;
        let answer = async move {
            let response = sender.send_request(request).await.map_err(|e| failed(&e))?;
            read_answer(response, limit, failed).await
        };
        // The connection is driven alongside the exchange, so nothing needs
        // spawning. It may end first (the server closed it): the exchange
        // then finishes with whatever it received.
        let connection = async move {
            if let Err(e) = connection.await {
                tracing::trace!(error = %e, "the connection ended with an error");
            }
            std::future::pending().await
        };
        answer.or(connection).await
    }

    /// Where to connect for `uri`, and the proxy to forward a plain-http
    /// request to in absolute form, if any (the driver's proxy rules decide).
    fn endpoint<'a>(
        &'a self,
        uri: &Uri,
    ) -> Result<(Endpoint, Option<&'a ProxyTarget>), FetchError> {
        let secure = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(transport("the token URL must use http or https")),
        };
        let host = uri
            .host()
            .ok_or_else(|| transport("the token URL has no host"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
        let tls = if secure {
            let server_name = ServerName::try_from(host.clone())
                .map_err(|_| transport("the token URL's host is not a valid TLS server name"))?;
            Some(Tls {
                config: Arc::clone(&self.tls),
                server_name,
            })
        } else {
            None
        };
        let Some(proxy) = self.proxies.proxy_for(uri) else {
            return Ok((
                Endpoint {
                    host,
                    port,
                    tunnel: None,
                    tls,
                },
                None,
            ));
        };
        tracing::debug!(%proxy, tunnel = secure, "through a proxy");
        let target = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let tunnel = secure.then(|| Tunnel {
            target,
            proxy: proxy.to_string(),
            authorization: proxy.authorization().cloned(),
            user_agent: self.user_agent.clone(),
        });
        let endpoint = Endpoint {
            host: proxy.host().to_owned(),
            port: proxy.port(),
            tunnel,
            tls,
        };
        Ok((endpoint, (!secure).then_some(proxy)))
    }

    /// A transport failure, with its causes; a timed-out connection is a timeout.
    fn transport_error(&self, error: &(dyn StdError + 'static)) -> FetchError {
        let mut source: Option<&(dyn StdError + 'static)> = Some(error);
        while let Some(e) = source {
            if let Some(io) = e.downcast_ref::<std::io::Error>()
                && io.kind() == std::io::ErrorKind::TimedOut
            {
                return FetchError::Timeout {
                    after: self.connect_timeout,
                };
            }
            source = e.source();
        }
        transport(chain(error))
    }
}

/// Reads the status, headers and at most `limit` body bytes.
async fn read_answer(
    response: http::Response<hyper::body::Incoming>,
    limit: usize,
    transport_error: impl Fn(&(dyn StdError + 'static)) -> FetchError,
) -> Result<HttpAnswer, FetchError> {
    let (parts, mut body) = response.into_parts();
    let announced = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if announced.is_some_and(|len| len > limit as u64) {
        return Err(FetchError::BodyTooLarge { limit });
    }
    // Reserved up front where the length is known, so that the body is not
    // copied (and left behind unzeroed) as the buffer grows.
    let expected = announced.map_or(8 * 1024, |len| len as usize).min(limit);
    let mut collected = Zeroizing::new(Vec::with_capacity(expected));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| transport_error(&e))?;
        if let Ok(data) = frame.into_data() {
            if collected.len().saturating_add(data.len()) > limit {
                return Err(FetchError::BodyTooLarge { limit });
            }
            collected.extend_from_slice(&data);
        }
    }
    let mut answer = HttpAnswer::new(parts.status.as_u16(), parts.headers, Vec::new());
    answer.body = collected;
    Ok(answer)
}

fn transport(message: impl Into<String>) -> FetchError {
    FetchError::Transport {
        message: message.into(),
    }
}

/// An error and its causes, each said once (hyper nests errors whose
/// messages repeat their causes).
fn chain(error: &(dyn StdError + 'static)) -> String {
    let mut source: Option<&(dyn StdError + 'static)> = Some(error);
    let mut message = String::new();
    while let Some(e) = source {
        let text = e.to_string();
        if !message.contains(&text) {
            if !message.is_empty() {
                message.push_str(": ");
            }
            message.push_str(&text);
        }
        source = e.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Threads;

    #[test]
    fn user_agents_default_to_the_runtime() {
        let client = HttpClient::new(Threads, &HttpSettings::default()).unwrap();
        assert_eq!(
            client.user_agent,
            format!("tokenkeeper-threads/{}", env!("CARGO_PKG_VERSION"))
        );
        let custom = HttpClient::new(Threads, &HttpSettings::new().user_agent("me/1")).unwrap();
        assert_eq!(custom.user_agent, "me/1");
        assert!(HttpClient::new(Threads, &HttpSettings::new().user_agent("bad\nagent")).is_err());
    }

    #[test]
    fn endpoints_follow_the_url() {
        let direct = HttpSettings::default().proxy(tokenkeeper_driver::ProxyConfig::none());
        let client = HttpClient::new(Threads, &direct).unwrap();
        let (e, _) = client
            .endpoint(&"https://auth.example.com/token".parse().unwrap())
            .unwrap();
        assert_eq!((e.host.as_str(), e.port), ("auth.example.com", 443));
        assert!(e.tls.is_some());
        let (e, _) = client
            .endpoint(&"http://[::1]:8080/token".parse().unwrap())
            .unwrap();
        assert_eq!((e.host.as_str(), e.port), ("::1", 8080));
        assert!(e.tls.is_none());
        let (e, _) = client
            .endpoint(&"https://127.0.0.1/t".parse().unwrap())
            .unwrap();
        assert!(matches!(
            e.tls.unwrap().server_name,
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            client.endpoint(&"ftp://a.example/".parse().unwrap()),
            Err(FetchError::Transport { .. })
        ));
    }

    #[test]
    fn proxied_endpoints_tunnel_https_and_forward_http() {
        let settings = HttpSettings::default()
            .proxy(tokenkeeper_driver::ProxyConfig::url("http://u:pw@proxy.test:3128").unwrap());
        let client = HttpClient::new(Threads, &settings).unwrap();
        let (e, forward) = client
            .endpoint(&"https://auth.example.com/token".parse().unwrap())
            .unwrap();
        assert_eq!((e.host.as_str(), e.port), ("proxy.test", 3128));
        assert!(forward.is_none());
        let tunnel = e.tunnel.unwrap();
        assert_eq!(tunnel.target, "auth.example.com:443");
        assert_eq!(tunnel.proxy, "http://proxy.test:3128");
        assert!(tunnel.authorization.is_some());
        // TLS is with the target, inside the tunnel.
        assert_eq!(
            e.tls.unwrap().server_name,
            ServerName::try_from("auth.example.com").unwrap()
        );
        let (e, forward) = client
            .endpoint(&"http://[fd00::1]:8080/token".parse().unwrap())
            .unwrap();
        assert_eq!((e.host.as_str(), e.port), ("proxy.test", 3128));
        assert!(e.tunnel.is_none() && e.tls.is_none());
        assert_eq!(forward.unwrap().authority(), "proxy.test:3128");
        let (e, _) = client
            .endpoint(&"https://[fd00::1]/token".parse().unwrap())
            .unwrap();
        assert_eq!(e.tunnel.unwrap().target, "[fd00::1]:443");
        // Loopback goes direct.
        let (e, forward) = client
            .endpoint(&"http://127.0.0.1:8080/token".parse().unwrap())
            .unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, forward),
            ("127.0.0.1", 8080, None)
        );
        assert!(!format!("{client:?}").contains("pw"));
    }

    #[test]
    fn a_proxy_setting_that_cannot_be_used_fails_the_setup() {
        let settings =
            HttpSettings::default().proxy(tokenkeeper_driver::ProxyConfig::from_vars([(
                "HTTPS_PROXY",
                "socks5://proxy.test:1080",
            )]));
        let error = HttpClient::new(Threads, &settings).unwrap_err();
        assert!(error.to_string().contains("socks5"), "{error}");
        assert!(error.proxy_error().is_some());
    }

    #[test]
    fn a_refused_connection_is_a_transport_error() {
        let client = HttpClient::new(Threads, &HttpSettings::default()).unwrap();
        let request = Request::post("http://127.0.0.1:9/token")
            .body(b"grant_type=client_credentials".to_vec())
            .unwrap();
        let error = tokenkeeper_driver::park::block_on(client.send(request, 1024)).unwrap_err();
        match error {
            FetchError::Transport { message } => {
                assert!(message.contains("127.0.0.1:9"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn io_timeouts_anywhere_in_the_chain_are_timeouts() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl fmt::Display for Outer {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("outer")
            }
        }
        impl StdError for Outer {
            fn source(&self) -> Option<&(dyn StdError + 'static)> {
                Some(&self.0)
            }
        }
        let client = HttpClient::new(
            Threads,
            &HttpSettings::default().connect_timeout(Duration::from_secs(3)),
        )
        .unwrap();
        let timed_out = Outer(std::io::Error::from(std::io::ErrorKind::TimedOut));
        assert_eq!(
            client.transport_error(&timed_out),
            FetchError::Timeout {
                after: Duration::from_secs(3)
            }
        );
        let reset = Outer(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset",
        ));
        assert_eq!(
            client.transport_error(&reset),
            FetchError::Transport {
                message: "outer: reset".into()
            }
        );
    }
}
