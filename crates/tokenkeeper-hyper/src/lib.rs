//! The HTTP exchange of tokenkeeper's async adapters: one hyper 1 HTTP/1.1
//! exchange per token request, over a connection the runtime opens.
//!
//! An async adapter implements [`Connect`] for its runtime (TCP to a host
//! and port, then TLS with the given rustls configuration) and returns an
//! [`HttpClient`] from its [`Runtime::exchange`](tokenkeeper_driver::Runtime::exchange);
//! the driver does the rest. The client sets `Host`, `User-Agent` and
//! `Connection: close`, bounds connecting by the connect timeout and the
//! whole exchange by the request timeout, follows no redirect, refuses a
//! body past the cap (by its announced length, or as it streams), and drives
//! the connection alongside the request so that nothing runtime-specific is
//! spawned.
//!
//! Proxies follow the driver's rules ([`tokenkeeper_driver::proxy`]),
//! resolved once when the client is built: a plain-http target goes to the
//! proxy as an absolute-form request; an `https` target goes through a
//! `CONNECT` tunnel ([`Endpoint::tunnel`], opened by [`tunnel`], written once
//! here for every runtime), with TLS to the target inside it.
//!
//! One request per connection: token requests come minutes apart, longer
//! than servers keep idle connections, so a pool would only hold dead ones.
//! rustls uses the *ring* provider, set on the client's own configuration
//! and never installed as a process default
//! ([`HttpSettings::rustls_config`](tokenkeeper_driver::HttpSettings::rustls_config)).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod exchange;
mod tunnel;

use std::fmt;
use std::io;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokenkeeper_driver::{BoxFuture, Runtime};

pub use exchange::HttpClient;
pub use tunnel::{Tunnel, tunnel};

/// What the hyper exchange needs from an async runtime besides the driver's
/// [`Runtime`]: a connection to a token endpoint.
pub trait Connect: Runtime {
    /// A connection to a token endpoint, as hyper reads and writes it.
    type Io: hyper::rt::Read + hyper::rt::Write + Send + Unpin + 'static;

    /// Opens a connection to `endpoint`: TCP to its host and port (resolving
    /// the name first, without blocking the executor); then, when
    /// [`Endpoint::tunnel`] is set, a `CONNECT` tunnel through that proxy
    /// (wrap the TCP stream for hyper, call [`tunnel`], unwrap it); then, when
    /// [`Endpoint::tls`] is set, a TLS handshake with that configuration. The
    /// caller bounds the time it may take.
    fn connect(&self, endpoint: &Endpoint) -> BoxFuture<'static, io::Result<Self::Io>>;
}

/// Where [`Connect::connect`] connects to.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Endpoint {
    /// The host to open a TCP connection to (the proxy's, when there is
    /// one): a DNS name, or an IP address (without brackets).
    pub host: String,
    /// The TCP port.
    pub port: u16,
    /// A `CONNECT` tunnel to open through the proxy at `host:port` before
    /// TLS, for an `https` target reached through a proxy.
    pub tunnel: Option<Tunnel>,
    /// TLS to run over the connection (inside the tunnel, if any), for
    /// `https`; its server name is the target's.
    pub tls: Option<Tls>,
}

/// The TLS half of an [`Endpoint`]: the client configuration (rustls with the
/// *ring* provider and the configured roots) and the name to verify.
#[derive(Clone)]
#[non_exhaustive]
pub struct Tls {
    /// The rustls client configuration.
    pub config: Arc<rustls::ClientConfig>,
    /// The server name to send (SNI) and to verify the certificate against.
    pub server_name: ServerName<'static>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod testing {
    //! Threads for everything; every connection is refused.

    use std::pin::Pin;
    use std::task::{Context, Poll};
    use std::time::Duration;

    use tokenkeeper_driver::{Blocking, HttpSettings, HttpSetupError, SharedExchange};

    use super::*;

    #[derive(Debug, Clone, Default)]
    pub(crate) struct Threads;

    pub(crate) struct NoIo;

    impl hyper::rt::Read for NoIo {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: hyper::rt::ReadBufCursor<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl hyper::rt::Write for NoIo {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl Runtime for Threads {
        type Wait = Blocking;

        fn name(&self) -> &'static str {
            "threads"
        }

        fn spawn(&self, task: BoxFuture<'static, ()>) {
            std::thread::spawn(move || tokenkeeper_driver::park::block_on(task));
        }

        fn spawn_blocking(&self, work: Box<dyn FnOnce() + Send + 'static>) {
            std::thread::spawn(work);
        }

        fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
            Box::pin(tokenkeeper_driver::park::sleep(duration))
        }

        fn exchange(&self, settings: &HttpSettings) -> Result<SharedExchange, HttpSetupError> {
            Ok(Arc::new(HttpClient::new(self.clone(), settings)?))
        }
    }

    impl Connect for Threads {
        type Io = NoIo;

        fn connect(&self, _: &Endpoint) -> BoxFuture<'static, io::Result<NoIo>> {
            Box::pin(async { Err(io::Error::from(io::ErrorKind::ConnectionRefused)) })
        }
    }
}
