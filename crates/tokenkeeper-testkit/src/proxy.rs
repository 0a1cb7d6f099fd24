//! A recording HTTP proxy on loopback, for tests of proxy support.
//!
//! [`RecordingProxy`] accepts what an HTTP proxy accepts and records what it
//! sees: every request head ([`ProxiedRequest`]: the request line and
//! headers) and every byte a client sent it ([`RecordingProxy::received`]),
//! tunnelled bytes included. It maps every host to one upstream address
//! (typically an [`Authority`](crate::Authority)'s), so a test can use names
//! that do not resolve, such as `auth.test`:
//!
//! - `CONNECT host:port`: answers `200` and relays bytes both ways between
//!   the client and the upstream (TLS meant for `host` then meets whatever
//!   the upstream speaks);
//! - an absolute-form request (`POST http://host:port/path`): forwards it to
//!   the upstream in origin form, without the `Proxy-*` headers and with
//!   `Connection: close`, relays the answer, and closes the connection;
//! - anything else: `400`.
//!
//! With [`RecordingProxyBuilder::require_basic`] it answers `407` to requests
//! without those credentials (they are recorded all the same).
//!
//! ```
//! use tokenkeeper_testkit::{Authority, RecordingProxy};
//!
//! let authority = Authority::start();
//! let proxy = RecordingProxy::start(authority.addr());
//! assert!(proxy.url().starts_with("http://127.0.0.1:"));
//! // ... point the code under test at `proxy.url()`, then:
//! assert!(proxy.seen().is_empty());
//! ```
//!
//! It runs on plain threads (one per connection), so it serves tests of any
//! runtime. Dropping it stops it and closes every open connection.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::authority::codec::base64_decode;

/// The longest request head read.
const MAX_HEAD: usize = 64 * 1024;

/// One request head the proxy received.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProxiedRequest {
    /// The method, such as `CONNECT` or `POST`.
    pub method: String,
    /// The request target as received: `host:port` for `CONNECT`, an
    /// absolute URL for a forwarded request.
    pub target: String,
    /// The headers, names in lower case, in order.
    pub headers: Vec<(String, String)>,
}

impl ProxiedRequest {
    /// `METHOD target`, such as `CONNECT auth.test:443`.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.target)
    }

    /// The first value of a header (name in any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the proxy has seen.
#[derive(Default)]
struct Log {
    seen: Vec<ProxiedRequest>,
    received: Vec<u8>,
    /// Clones of the open client connections, closed when the proxy stops.
    open: Vec<TcpStream>,
}

struct Shared {
    upstream: SocketAddr,
    credentials: Option<String>,
    log: Mutex<Log>,
    stopping: AtomicBool,
}

impl Shared {
    fn log(&self) -> MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Configures a [`RecordingProxy`].
#[derive(Clone)]
pub struct RecordingProxyBuilder {
    upstream: SocketAddr,
    credentials: Option<String>,
}

impl fmt::Debug for RecordingProxyBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordingProxyBuilder")
            .field("upstream", &self.upstream)
            .field("requires_credentials", &self.credentials.is_some())
            .finish()
    }
}

impl RecordingProxyBuilder {
    /// Answers `407 Proxy Authentication Required` to requests that lack
    /// `Proxy-Authorization: Basic` with this user and password.
    pub fn require_basic(mut self, user: &str, password: &str) -> Self {
        self.credentials = Some(format!("{user}:{password}"));
        self
    }

    /// Binds a free loopback port and starts accepting.
    ///
    /// # Panics
    ///
    /// If the socket cannot be bound or the thread started.
    #[track_caller]
    pub fn start(self) -> RecordingProxy {
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("a loopback port for the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let shared = Arc::new(Shared {
            upstream: self.upstream,
            credentials: self.credentials,
            log: Mutex::new(Log::default()),
            stopping: AtomicBool::new(false),
        });
        let accepting = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("tokenkeeper-testkit-proxy-{}", addr.port()))
            .spawn(move || accept(listener, accepting))
            .expect("the proxy thread");
        RecordingProxy {
            addr,
            shared,
            thread: Some(thread),
        }
    }
}

/// A recording HTTP proxy on `127.0.0.1`; see the [module documentation](self).
pub struct RecordingProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for RecordingProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordingProxy")
            .field("addr", &self.addr)
            .field("upstream", &self.shared.upstream)
            .finish_non_exhaustive()
    }
}

impl RecordingProxy {
    /// Starts a proxy that sends every tunnel and request to `upstream`.
    #[track_caller]
    pub fn start(upstream: SocketAddr) -> RecordingProxy {
        Self::builder(upstream).start()
    }

    /// A builder for a proxy with credentials.
    pub fn builder(upstream: SocketAddr) -> RecordingProxyBuilder {
        RecordingProxyBuilder {
            upstream,
            credentials: None,
        }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://user:password@127.0.0.1:PORT` (give them percent-encoded if
    /// they need it).
    pub fn url_with_credentials(&self, user: &str, password: &str) -> String {
        format!("http://{user}:{password}@{}", self.addr)
    }

    /// Every request head received so far, in order.
    pub fn seen(&self) -> Vec<ProxiedRequest> {
        self.shared.log().seen.clone()
    }

    /// Every byte clients sent so far: request heads, bodies, and what went
    /// through tunnels.
    pub fn received(&self) -> Vec<u8> {
        self.shared.log().received.clone()
    }

    /// Forgets what was seen and received.
    pub fn clear(&self) {
        let mut log = self.shared.log();
        log.seen.clear();
        log.received.clear();
    }
}

impl Drop for RecordingProxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wakes the accepting thread up.
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        for stream in self.shared.log().open.drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

fn accept(listener: TcpListener, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = stream else { continue };
        if let Ok(clone) = stream.try_clone() {
            shared.log().open.push(clone);
        }
        let shared = Arc::clone(&shared);
        let _ = std::thread::Builder::new()
            .name("tokenkeeper-testkit-proxy-connection".to_owned())
            .spawn(move || {
                if let Err(error) = serve(stream, &shared) {
                    tracing::debug!(%error, "a proxy connection ended with an error");
                }
            });
    }
}

/// Serves one client connection.
fn serve(mut client: TcpStream, shared: &Shared) -> io::Result<()> {
    let _ = client.set_nodelay(true);
    let (head, rest) = read_head(&mut client, shared)?;
    let Some(request) = parse_head(&head) else {
        return answer(&mut client, "400 Bad Request");
    };
    shared.log().seen.push(request.clone());
    if let Some(expected) = &shared.credentials {
        let presented = request
            .header("proxy-authorization")
            .and_then(|v| v.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
            .and_then(|(_, encoded)| base64_decode(encoded.trim()));
        if presented.as_deref() != Some(expected.as_bytes()) {
            return answer(&mut client, "407 Proxy Authentication Required");
        }
    }
    if request.method.eq_ignore_ascii_case("CONNECT") {
        let Ok(upstream) = TcpStream::connect(shared.upstream) else {
            return answer(&mut client, "502 Bad Gateway");
        };
        client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")?;
        return relay(client, upstream, rest, shared);
    }
    let Some(path) = origin_form(&request.target) else {
        return answer(&mut client, "400 Bad Request");
    };
    let Ok(mut upstream) = TcpStream::connect(shared.upstream) else {
        return answer(&mut client, "502 Bad Gateway");
    };
    let mut forwarded = format!("{} {path} HTTP/1.1\r\n", request.method);
    for (name, value) in &request.headers {
        if !matches!(
            name.as_str(),
            "proxy-authorization" | "proxy-connection" | "connection" | "keep-alive"
        ) {
            forwarded.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    forwarded.push_str("connection: close\r\n\r\n");
    upstream.write_all(forwarded.as_bytes())?;
    relay(client, upstream, rest, shared)
}

/// Reads up to the end of the request head; returns the head and the bytes
/// read past it.
fn read_head(client: &mut TcpStream, shared: &Shared) -> io::Result<(Vec<u8>, Vec<u8>)> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = find(&buffer, b"\r\n\r\n") {
            let rest = buffer.split_off(end + 4);
            return Ok((buffer, rest));
        }
        if buffer.len() > MAX_HEAD {
            return Err(io::Error::other("a request head too long"));
        }
        let n = client.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the client left before its request head ended",
            ));
        }
        shared.log().received.extend_from_slice(&chunk[..n]);
        buffer.extend_from_slice(&chunk[..n]);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn parse_head(head: &[u8]) -> Option<ProxiedRequest> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let mut line = lines.next()?.split(' ');
    let method = line.next()?.to_owned();
    let target = line.next()?.to_owned();
    line.next().filter(|v| v.starts_with("HTTP/"))?;
    let headers = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Some(ProxiedRequest {
        method,
        target,
        headers,
    })
}

/// `/path?query` of an absolute `http://` URL.
fn origin_form(target: &str) -> Option<String> {
    let rest = target
        .get(..7)
        .filter(|s| s.eq_ignore_ascii_case("http://"))
        .map(|_| &target[7..])?;
    Some(match rest.find('/') {
        Some(i) => rest[i..].to_owned(),
        None => "/".to_owned(),
    })
}

fn answer(client: &mut TcpStream, status: &str) -> io::Result<()> {
    let authenticate = if status.starts_with("407") {
        "proxy-authenticate: Basic realm=\"tokenkeeper-testkit\"\r\n"
    } else {
        ""
    };
    write!(
        client,
        "HTTP/1.1 {status}\r\n{authenticate}content-length: 0\r\nconnection: close\r\n\r\n"
    )?;
    client.flush()?;
    let _ = client.shutdown(Shutdown::Write);
    // Lets the client read the answer before the socket closes.
    let _ = client.set_read_timeout(Some(Duration::from_secs(1)));
    let _ = io::copy(client, &mut io::sink());
    Ok(())
}

/// Relays bytes both ways until the upstream is done; what the client sends
/// (starting with `early`, read along with its head) is recorded.
fn relay(
    client: TcpStream,
    upstream: TcpStream,
    early: Vec<u8>,
    shared: &Shared,
) -> io::Result<()> {
    let mut to_upstream = upstream.try_clone()?;
    let mut from_client = client.try_clone()?;
    to_upstream.write_all(&early)?;
    std::thread::scope(|scope| {
        scope.spawn(move || {
            let mut chunk = [0u8; 4096];
            loop {
                match from_client.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        shared.log().received.extend_from_slice(&chunk[..n]);
                        if to_upstream.write_all(&chunk[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = to_upstream.shutdown(Shutdown::Write);
        });
        let copied = io::copy(&mut &upstream, &mut &client);
        // The upstream is done, and so is the client's connection.
        let _ = client.shutdown(Shutdown::Both);
        let _ = upstream.shutdown(Shutdown::Both);
        copied.map(|_| ())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_parsed_and_targets_put_in_origin_form() {
        let head = b"CONNECT auth.test:443 HTTP/1.1\r\nHost: auth.test:443\r\nProxy-Authorization: Basic dTpw\r\n\r\n";
        let request = parse_head(head).unwrap();
        assert_eq!(request.line(), "CONNECT auth.test:443");
        assert_eq!(request.header("Host"), Some("auth.test:443"));
        assert_eq!(request.header("proxy-authorization"), Some("Basic dTpw"));
        assert!(parse_head(b"nonsense\r\n\r\n").is_none());
        assert_eq!(
            origin_form("http://auth.test:8080/token?a=b").as_deref(),
            Some("/token?a=b")
        );
        assert_eq!(origin_form("HTTP://auth.test").as_deref(), Some("/"));
        assert_eq!(origin_form("/token"), None);
    }
}
