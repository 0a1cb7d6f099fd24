//! The `CONNECT` handshake with an HTTP proxy, written once for every
//! runtime: [`tunnel`].

use std::fmt;
use std::io;

use bytes::Bytes;
use futures_lite::FutureExt;
use http::header::{HOST, PROXY_AUTHORIZATION, USER_AGENT};
use http::{HeaderValue, Method, Request};
use http_body_util::Empty;

/// A `CONNECT` tunnel to open through an HTTP proxy: part of an
/// [`Endpoint`](crate::Endpoint) whose host and port are the proxy's.
/// `Debug` never shows the credentials.
#[derive(Clone)]
#[non_exhaustive]
pub struct Tunnel {
    /// The target, `host:port` (brackets around an IPv6 address): what the
    /// proxy is asked to connect to.
    pub target: String,
    /// The proxy, `http://host:port`, for messages.
    pub proxy: String,
    /// The `Proxy-Authorization` header to send, if any (marked sensitive).
    pub authorization: Option<HeaderValue>,
    /// The `User-Agent` header to send.
    pub user_agent: HeaderValue,
}

impl fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tunnel")
            .field("target", &self.target)
            .field("proxy", &self.proxy)
            .field("credentials", &self.authorization.is_some())
            .finish_non_exhaustive()
    }
}

/// Opens `tunnel` over `io`, a fresh connection to the proxy: sends
/// `CONNECT target` (with `Host`, `User-Agent` and any
/// `Proxy-Authorization`), reads the proxy's answer, and on a `2xx` gives
/// back `io`, now a byte stream to the target, ready for TLS. Each runtime
/// wraps its TCP stream for hyper, calls this, and unwraps the result.
///
/// Errors: the proxy's refusal (its status, never the credentials), a
/// malformed answer, a proxy that spoke before the TLS handshake, or the
/// connection's own errors. The caller bounds the time it may take.
pub async fn tunnel<T>(io: T, tunnel: &Tunnel) -> io::Result<T>
where
    T: hyper::rt::Read + hyper::rt::Write + Send + Unpin + 'static,
{
    let refused = |what: String| {
        io::Error::other(format!(
            "the proxy {} {what} when asked to CONNECT to {}",
            tunnel.proxy, tunnel.target
        ))
    };
    let mut request = Request::new(Empty::<Bytes>::new());
    *request.method_mut() = Method::CONNECT;
    *request.uri_mut() = tunnel
        .target
        .parse()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a bad tunnel target"))?;
    let host = HeaderValue::from_str(&tunnel.target)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a bad tunnel target"))?;
    let headers = request.headers_mut();
    headers.insert(HOST, host);
    headers.insert(USER_AGENT, tunnel.user_agent.clone());
    if let Some(authorization) = &tunnel.authorization {
        headers.insert(PROXY_AUTHORIZATION, authorization.clone());
    }

    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| refused(format!("failed ({e})")))?;
    let opened = async move {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| refused(format!("failed ({e})")))?;
        let status = response.status();
        if !status.is_success() {
            return Err(refused(format!("answered {status}")));
        }
        hyper::upgrade::on(response)
            .await
            .map_err(|e| refused(format!("failed ({e})")))
    };
    // The connection is driven alongside until it hands its stream over to
    // the upgrade (then it ends, and waits here for the upgrade to finish).
    let connection = async move {
        match connection.with_upgrades().await {
            Ok(()) => std::future::pending().await,
            Err(e) => Err(refused(format!("failed ({e})"))),
        }
    };
    let upgraded = opened.or(connection).await?;
    let parts = upgraded
        .downcast::<T>()
        .map_err(|_| io::Error::other("the tunnel's connection could not be taken back"))?;
    if !parts.read_buf.is_empty() {
        // TLS starts with the client's hello: a proxy that speaks first is
        // not a transparent tunnel.
        return Err(refused("sent data before the TLS handshake".to_owned()));
    }
    Ok(parts.io)
}

#[cfg(test)]
mod tests {
    //! The handshake over real sockets, against a scripted proxy.

    use std::io::{Read, Write};
    use std::net::TcpListener;

    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    /// A proxy that reads one request head, answers `answer`, then echoes
    /// one line back; returns the head it read.
    fn proxy(answer: &'static str) -> (String, std::thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let thread = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if stream.read(&mut byte).unwrap() == 0 {
                    break;
                }
                head.push(byte[0]);
            }
            stream.write_all(answer.as_bytes()).unwrap();
            let mut line = Vec::new();
            while !line.ends_with(b"\n") {
                if stream.read(&mut byte).unwrap_or(0) == 0 {
                    break;
                }
                line.push(byte[0]);
            }
            let _ = stream.write_all(&line);
            String::from_utf8(head).unwrap()
        });
        (addr, thread)
    }

    fn spec(authorization: Option<&str>) -> Tunnel {
        Tunnel {
            target: "auth.test:443".into(),
            proxy: "http://proxy.test:3128".into(),
            authorization: authorization.map(|a| {
                let mut value = HeaderValue::from_str(a).unwrap();
                value.set_sensitive(true);
                value
            }),
            user_agent: HeaderValue::from_static("tokenkeeper-test/1"),
        }
    }

    async fn open(
        answer: &'static str,
        spec: &Tunnel,
    ) -> (io::Result<TcpStream>, std::thread::JoinHandle<String>) {
        let (addr, proxy) = proxy(answer);
        let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
        (tunnel(io, spec).await.map(TokioIo::into_inner), proxy)
    }

    #[tokio::test]
    async fn a_tunnel_carries_bytes_both_ways_after_a_2xx() {
        let spec = spec(Some("Basic dTpw"));
        let (io, proxy) = open("HTTP/1.1 200 Connection established\r\n\r\n", &spec).await;
        let mut io = io.unwrap();
        io.write_all(b"hello through\n").await.unwrap();
        let mut echoed = [0u8; 14];
        io.read_exact(&mut echoed).await.unwrap();
        assert_eq!(&echoed, b"hello through\n");
        let head = proxy.join().unwrap().to_ascii_lowercase();
        assert!(
            head.starts_with("connect auth.test:443 http/1.1\r\n"),
            "{head}"
        );
        assert!(head.contains("\r\nhost: auth.test:443\r\n"), "{head}");
        assert!(
            head.contains("\r\nproxy-authorization: basic dtpw\r\n"),
            "{head}"
        );
        assert!(
            head.contains("\r\nuser-agent: tokenkeeper-test/1\r\n"),
            "{head}"
        );
        let shown = format!("{spec:?}");
        assert!(!shown.contains("dTpw"), "{shown}");
    }

    #[tokio::test]
    async fn a_refusal_names_the_proxy_status_and_target() {
        let (io, proxy) = open(
            "HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n",
            &spec(Some("Basic dTpw")),
        )
        .await;
        let message = io.unwrap_err().to_string();
        assert!(message.contains("407"), "{message}");
        assert!(message.contains("auth.test:443"), "{message}");
        assert!(message.contains("http://proxy.test:3128"), "{message}");
        assert!(!message.contains("dTpw"), "{message}");
        assert!(proxy.join().unwrap().starts_with("CONNECT auth.test:443 "));
    }

    #[tokio::test]
    async fn a_proxy_that_speaks_first_is_refused() {
        let (io, proxy) = open("HTTP/1.1 200 OK\r\n\r\nSURPRISE", &spec(None)).await;
        let error = io.unwrap_err();
        assert!(
            error.to_string().contains("before the TLS handshake"),
            "{error}"
        );
        drop(proxy);
    }
}
