//! The [`Runtime`] of this adapter: tasks, blocking work and timers on a
//! tokio runtime, tokio sockets, TLS by tokio-rustls.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use std::sync::Arc;

use tokenkeeper_driver::{Async, BoxFuture, HttpSettings, HttpSetupError, Runtime, SharedExchange};
use tokenkeeper_hyper::{Connect, Endpoint, HttpClient};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A runtime's number. tokio shows it only to print or to hash; every
/// spawn asks for it, so the hash (of one `u64`) is read as written rather
/// than the number printed and parsed. Should an `Id` ever hash otherwise,
/// its printed form is parsed.
fn runtime_number(id: tokio::runtime::Id) -> Option<u64> {
    #[derive(Default)]
    struct Written {
        value: Option<u64>,
        other: bool,
    }
    impl Hasher for Written {
        fn write(&mut self, _: &[u8]) {
            self.other = true;
        }
        fn write_u64(&mut self, n: u64) {
            self.other |= self.value.replace(n).is_some();
        }
        fn finish(&self) -> u64 {
            0
        }
    }
    let mut written = Written::default();
    id.hash(&mut written);
    match written {
        Written {
            value: Some(n),
            other: false,
        } => Some(n),
        _ => id.to_string().parse().ok(),
    }
}

/// The tokio runtime a watcher runs on.
///
/// By default ([`TokioRuntime::default`]), the runtime of the thread that
/// starts the watcher ([`TokenWatcherBuilder::spawn`](crate::TokenWatcherBuilder::spawn)
/// and [`start`](crate::TokenWatcherBuilder::start) must then be called
/// within one). [`TokioRuntime::from_handle`] names another one, so that a
/// watcher can be started from anywhere, or kept off the runtime that serves
/// requests:
///
/// ```no_run
/// # async fn f(client: tokenkeeper_core::oauth2::OAuth2Client, handle: tokio::runtime::Handle) -> Result<(), Box<dyn std::error::Error>> {
/// use tokenkeeper_tokio::{TokenWatcher, TokioRuntime};
///
/// let watcher = TokenWatcher::builder(client)
///     .runtime(TokioRuntime::from_handle(handle))
///     .spawn()
///     .await?;
/// # let _ = watcher; Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct TokioRuntime {
    handle: Option<Handle>,
    /// Bound to the runtime of the thread that started the watcher, rather
    /// than one named by a handle: futures polled on such a thread may open
    /// sockets, which belong to the reactor of the runtime they are polled in.
    ambient: bool,
}

impl fmt::Debug for TokioRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let runtime = if self.handle.is_some() {
            "named"
        } else {
            "current"
        };
        f.debug_tuple("TokioRuntime").field(&runtime).finish()
    }
}

impl TokioRuntime {
    /// The runtime behind `handle`.
    pub fn from_handle(handle: Handle) -> Self {
        TokioRuntime {
            handle: Some(handle),
            ambient: false,
        }
    }

    /// The runtime of the calling thread, if it is within one.
    pub fn current() -> Option<Self> {
        Handle::try_current().ok().map(Self::from_handle)
    }

    /// The runtime to use from here: the named one, or the current one.
    fn handle(&self) -> Option<Handle> {
        self.handle.clone().or_else(|| Handle::try_current().ok())
    }
}

impl Runtime for TokioRuntime {
    type Wait = Async;

    fn name(&self) -> &'static str {
        "tokio"
    }

    fn bind(&self) -> Option<Self> {
        match &self.handle {
            Some(handle) => Some(Self::from_handle(handle.clone())),
            None => Handle::try_current().ok().map(|handle| TokioRuntime {
                handle: Some(handle),
                ambient: true,
            }),
        }
    }

    fn driver_key(&self) -> Option<u64> {
        // One driver per runtime, and apart for watchers bound to it by a
        // handle, whose fetches are not polled inline.
        let id = runtime_number(self.handle.as_ref()?.id())?;
        Some(id << 1 | u64::from(self.ambient))
    }

    fn polls_fetches_inline(&self) -> bool {
        // A named runtime may not be the calling thread's, and tokio cannot
        // tell two runtimes apart: only the ambient one polls fetches inline.
        self.ambient && Handle::try_current().is_ok()
    }

    fn spawn(&self, task: BoxFuture<'static, ()>) {
        match self.handle() {
            // Dropping a tokio handle detaches the task.
            Some(handle) => drop(handle.spawn(task)),
            // Dropped unrun: whoever waits for it sees it end.
            None => tracing::error!("no tokio runtime to run a tokenkeeper task on"),
        }
    }

    fn spawn_blocking(&self, work: Box<dyn FnOnce() + Send + 'static>) {
        match self.handle() {
            Some(handle) => drop(handle.spawn_blocking(work)),
            None => tracing::error!("no tokio runtime to run blocking tokenkeeper work on"),
        }
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        // The timer belongs to the runtime it is created in.
        let _entered = self.handle.as_ref().map(Handle::enter);
        Box::pin(tokio::time::sleep(duration))
    }

    fn exchange(&self, settings: &HttpSettings) -> Result<SharedExchange, HttpSetupError> {
        Ok(Arc::new(HttpClient::new(self.clone(), settings)?))
    }
}

impl Connect for TokioRuntime {
    type Io = Connection;

    fn connect(&self, endpoint: &Endpoint) -> BoxFuture<'static, io::Result<Connection>> {
        let endpoint = endpoint.clone();
        Box::pin(async move {
            let mut tcp = TcpStream::connect((endpoint.host.as_str(), endpoint.port)).await?;
            tcp.set_nodelay(true)?;
            if let Some(tunnel) = &endpoint.tunnel {
                tcp = tokenkeeper_hyper::tunnel(TokioIo::new(tcp), tunnel)
                    .await?
                    .into_inner();
            }
            let stream = match endpoint.tls {
                None => Stream::Plain(tcp),
                Some(tls) => {
                    let connector = TlsConnector::from(tls.config);
                    Stream::Tls(Box::new(connector.connect(tls.server_name, tcp).await?))
                }
            };
            Ok(Connection {
                io: TokioIo::new(stream),
            })
        })
    }
}

/// A TCP connection, plain or under TLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

/// A connection to a token endpoint as this adapter's [`Runtime`] opens it:
/// a tokio socket, under tokio-rustls for `https`, that hyper reads and
/// writes through `hyper::rt`.
pub struct Connection {
    io: TokioIo<Stream>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("tls", &matches!(self.io.inner(), Stream::Tls(_)))
            .finish()
    }
}

impl hyper::rt::Read for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    }

    /// Fetches are polled inline only where their sockets would belong to
    /// the watcher's own runtime: the ambient one, seen from within it.
    #[test]
    fn only_the_ambient_runtime_polls_fetches_inline() {
        let rt = runtime();
        // Outside any runtime there is nothing to bind to.
        assert!(TokioRuntime::default().bind().is_none());
        let ambient = rt.block_on(async { TokioRuntime::default().bind().unwrap() });
        assert!(rt.block_on(async { ambient.polls_fetches_inline() }));
        // Seen from a thread outside any runtime: not inline.
        assert!(!ambient.polls_fetches_inline());
        // A runtime named by a handle may not be the calling thread's, even
        // when called from within it.
        let named = TokioRuntime::from_handle(rt.handle().clone())
            .bind()
            .unwrap();
        assert!(!rt.block_on(async { named.polls_fetches_inline() }));
        let other = runtime();
        let named_elsewhere = TokioRuntime::from_handle(other.handle().clone());
        assert!(!rt.block_on(async { named_elsewhere.bind().unwrap().polls_fetches_inline() }));
    }

    /// A runtime's number is the one tokio prints, each runtime its own.
    #[test]
    fn a_runtimes_number_is_the_printed_one() {
        let (one, two) = (runtime(), runtime());
        for rt in [&one, &two] {
            let id = rt.handle().id();
            assert_eq!(runtime_number(id), id.to_string().parse().ok());
        }
        assert_ne!(
            runtime_number(one.handle().id()),
            runtime_number(two.handle().id())
        );
        // Watchers bound by a handle get a driver apart from the ambient's.
        let ambient = one.block_on(async { TokioRuntime::default().bind().unwrap() });
        let named = TokioRuntime::from_handle(one.handle().clone())
            .bind()
            .unwrap();
        assert_ne!(ambient.driver_key(), named.driver_key());
    }
}
