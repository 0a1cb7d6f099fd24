//! The [`Runtime`] of this adapter: tasks on async-std's or smol's executor,
//! blocking work on their blocking pool, async-io timers and sockets, TLS by
//! futures-rustls, and the small glue that lets hyper read and write an
//! async-io socket.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_io::{Async, Timer};
use futures_io::{AsyncRead, AsyncWrite};
use futures_rustls::TlsConnector;
use futures_rustls::client::TlsStream;
use tokenkeeper_driver::{BoxFuture, HttpSettings, HttpSetupError, Runtime, SharedExchange};
use tokenkeeper_hyper::{Connect, Endpoint, HttpClient};

#[cfg(not(any(feature = "async-std", feature = "smol")))]
compile_error!("tokenkeeper-async-std needs the `async-std` feature, the `smol` feature, or both");

/// Which executor runs the watcher's tasks.
#[derive(Clone)]
enum Executor {
    #[cfg(feature = "async-std")]
    AsyncStd,
    #[cfg(feature = "smol")]
    SmolGlobal,
    #[cfg(feature = "smol")]
    Smol(Arc<smol::Executor<'static>>),
}

/// Where a watcher of this adapter runs: async-std, or smol. Both run on
/// `async-io` (its timers and sockets serve either); they differ in the
/// executor that runs the watcher's tasks and the pool that runs its file
/// calls.
///
/// - [`AsyncIoRuntime::async_std`] (feature `async-std`, the default):
///   async-std's global executor and `spawn_blocking`.
/// - [`AsyncIoRuntime::smol`] (feature `smol`): smol's global executor
///   (`smol::spawn`) and `smol::unblock`.
/// - [`AsyncIoRuntime::smol_on`] (feature `smol`): an executor of your own;
///   keep it running (`executor.run(...)` on some thread) while the watcher
///   lives.
///
/// The default is async-std when that feature is on, smol's global executor
/// otherwise. Pick one with
/// [`TokenWatcherBuilder::runtime`](crate::TokenWatcherBuilder::runtime).
#[derive(Clone)]
pub struct AsyncIoRuntime {
    executor: Executor,
}

impl fmt::Debug for AsyncIoRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let executor = match &self.executor {
            #[cfg(feature = "async-std")]
            Executor::AsyncStd => "async-std",
            #[cfg(feature = "smol")]
            Executor::SmolGlobal => "smol (global executor)",
            #[cfg(feature = "smol")]
            Executor::Smol(_) => "smol (own executor)",
        };
        f.debug_tuple("AsyncIoRuntime").field(&executor).finish()
    }
}

impl Default for AsyncIoRuntime {
    fn default() -> Self {
        #[cfg(feature = "async-std")]
        {
            Self::async_std()
        }
        #[cfg(not(feature = "async-std"))]
        {
            Self::smol()
        }
    }
}

impl AsyncIoRuntime {
    /// async-std's global executor and blocking pool.
    #[cfg(feature = "async-std")]
    #[cfg_attr(docsrs, doc(cfg(feature = "async-std")))]
    pub fn async_std() -> Self {
        AsyncIoRuntime {
            executor: Executor::AsyncStd,
        }
    }

    /// smol's global executor (`smol::spawn`) and blocking pool.
    #[cfg(feature = "smol")]
    #[cfg_attr(docsrs, doc(cfg(feature = "smol")))]
    pub fn smol() -> Self {
        AsyncIoRuntime {
            executor: Executor::SmolGlobal,
        }
    }

    /// A smol executor of your own, and smol's blocking pool. The executor
    /// must keep running for the watcher to make progress; if it is dropped,
    /// the watcher stops.
    #[cfg(feature = "smol")]
    #[cfg_attr(docsrs, doc(cfg(feature = "smol")))]
    pub fn smol_on(executor: Arc<smol::Executor<'static>>) -> Self {
        AsyncIoRuntime {
            executor: Executor::Smol(executor),
        }
    }

    /// Runs blocking `work` on the pool of this runtime and waits for it.
    async fn unblock<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> T {
        match &self.executor {
            #[cfg(feature = "async-std")]
            Executor::AsyncStd => async_std::task::spawn_blocking(work).await,
            #[cfg(feature = "smol")]
            Executor::SmolGlobal | Executor::Smol(_) => smol::unblock(work).await,
        }
    }

    /// The addresses of `host`, resolved on the blocking pool unless it is
    /// an IP address.
    async fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let host = host.to_owned();
        self.unblock(move || {
            (host.as_str(), port)
                .to_socket_addrs()
                .map(Iterator::collect)
        })
        .await
    }
}

impl Runtime for AsyncIoRuntime {
    type Wait = tokenkeeper_driver::Async;

    fn name(&self) -> &'static str {
        match &self.executor {
            #[cfg(feature = "async-std")]
            Executor::AsyncStd => "async-std",
            #[cfg(feature = "smol")]
            Executor::SmolGlobal | Executor::Smol(_) => "smol",
        }
    }

    fn driver_key(&self) -> Option<u64> {
        // The global executors are one each; an executor of the caller's
        // runs only while the caller runs it, so its watchers keep a driver
        // each, as a task of theirs would be.
        match &self.executor {
            #[cfg(feature = "async-std")]
            Executor::AsyncStd => Some(1),
            #[cfg(feature = "smol")]
            Executor::SmolGlobal => Some(2),
            #[cfg(feature = "smol")]
            Executor::Smol(_) => None,
        }
    }

    fn polls_fetches_inline(&self) -> bool {
        // async-io's reactor and timers are global: a future may be polled
        // on any thread.
        true
    }

    fn spawn(&self, task: BoxFuture<'static, ()>) {
        match &self.executor {
            // Dropping an async-std handle detaches the task.
            #[cfg(feature = "async-std")]
            Executor::AsyncStd => drop(async_std::task::spawn(task)),
            #[cfg(feature = "smol")]
            Executor::SmolGlobal => smol::spawn(task).detach(),
            #[cfg(feature = "smol")]
            Executor::Smol(executor) => executor.spawn(task).detach(),
        }
    }

    fn spawn_blocking(&self, work: Box<dyn FnOnce() + Send + 'static>) {
        match &self.executor {
            #[cfg(feature = "async-std")]
            Executor::AsyncStd => drop(async_std::task::spawn_blocking(work)),
            #[cfg(feature = "smol")]
            Executor::SmolGlobal | Executor::Smol(_) => smol::unblock(work).detach(),
        }
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        let timer = Timer::after(duration);
        Box::pin(async move {
            timer.await;
        })
    }

    fn exchange(&self, settings: &HttpSettings) -> Result<SharedExchange, HttpSetupError> {
        Ok(Arc::new(HttpClient::new(self.clone(), settings)?))
    }
}

impl Connect for AsyncIoRuntime {
    type Io = Connection;

    fn connect(&self, endpoint: &Endpoint) -> BoxFuture<'static, io::Result<Connection>> {
        let runtime = self.clone();
        let endpoint = endpoint.clone();
        Box::pin(async move {
            let addresses = runtime.resolve(&endpoint.host, endpoint.port).await?;
            let mut last = None;
            let mut tcp = None;
            for address in addresses {
                match Async::<TcpStream>::connect(address).await {
                    Ok(stream) => {
                        tcp = Some(stream);
                        break;
                    }
                    Err(e) => last = Some(e),
                }
            }
            let mut tcp = match (tcp, last) {
                (Some(tcp), _) => tcp,
                (None, Some(e)) => return Err(e),
                (None, None) => {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        "the host name resolved to no address",
                    ));
                }
            };
            tcp.get_ref().set_nodelay(true)?;
            if let Some(tunnel) = &endpoint.tunnel {
                let plain = Connection {
                    stream: Stream::Plain(tcp),
                };
                tcp = tokenkeeper_hyper::tunnel(plain, tunnel).await?.into_tcp()?;
            }
            let stream = match endpoint.tls {
                None => Stream::Plain(tcp),
                Some(tls) => {
                    let connector = TlsConnector::from(tls.config);
                    let stream = connector.connect(tls.server_name, tcp).await?;
                    Stream::Tls(Box::new(stream))
                }
            };
            Ok(Connection { stream })
        })
    }
}

/// A TCP connection, plain or under TLS.
enum Stream {
    Plain(Async<TcpStream>),
    Tls(Box<TlsStream<Async<TcpStream>>>),
}

/// A connection to a token endpoint as this adapter's [`Runtime`] opens it:
/// an async-io socket, under futures-rustls for `https`, that hyper reads
/// and writes through `hyper::rt`.
pub struct Connection {
    stream: Stream,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("tls", &matches!(self.stream, Stream::Tls(_)))
            .finish()
    }
}

impl Connection {
    /// The TCP stream of a plain connection (the one a tunnel was opened on).
    fn into_tcp(self) -> io::Result<Async<TcpStream>> {
        match self.stream {
            Stream::Plain(tcp) => Ok(tcp),
            Stream::Tls(_) => Err(io::Error::other(
                "a TLS connection where a plain one was expected",
            )),
        }
    }
}

/// The most read at once through hyper's cursor (hyper's buffer is larger;
/// token answers are smaller).
const READ_CHUNK: usize = 8 * 1024;

impl hyper::rt::Read for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        // Read into initialised memory, then copy: the cursor's own memory
        // could only be filled with `unsafe`.
        let mut chunk = [0u8; READ_CHUNK];
        let room = buf.remaining().min(READ_CHUNK);
        let read = match &mut self.stream {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, &mut chunk[..room]),
            Stream::Tls(s) => Pin::new(&mut **s).poll_read(cx, &mut chunk[..room]),
        };
        match read {
            Poll::Ready(Ok(n)) => {
                buf.put_slice(&chunk[..n]);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl hyper::rt::Write for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.stream {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.stream {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.stream {
            Stream::Plain(s) => Pin::new(s).poll_close(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_close(cx),
        }
    }
}
