//! The middleware scenarios of the testkit, run through `Bearer` twice: in front of a
//! hyper-util client on tokio (the watcher on `tokenkeeper-tokio`), and in front of a small
//! hyper client over async-io on smol (the watcher on `tokenkeeper-async-std`'s smol runtime).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, Uri, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Either, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::TokioExecutor;
use tokenkeeper_driver::dpop::DpopKey;
use tokenkeeper_driver::{Runtime, TokenWatcher, TokenWatcherBuilder};
use tokenkeeper_testkit::middleware::{
    Answer, ClientSpec, MiddlewareAdapter, MiddlewareClient, Outgoing, Payload,
};
use tokenkeeper_tower::{AttachPolicy, Bearer, BearerLayer};
use tower_layer::Layer;
use tower_service::Service;

/// The request body of both clients: bytes that can be replayed, or a one-shot stream.
type Body = Either<Full<Bytes>, BoxBody<Bytes, Infallible>>;

fn policy(spec: &ClientSpec) -> AttachPolicy {
    AttachPolicy::for_origins(&spec.allowed_origins).expect("valid origins")
}

fn request(outgoing: Outgoing) -> Request<Body> {
    let body = match outgoing.payload {
        Payload::Empty => Either::Left(Full::new(Bytes::new())),
        Payload::Replayable(bytes) => Either::Left(Full::new(Bytes::from(bytes))),
        Payload::OneShot(bytes) => {
            let frames =
                futures_lite::stream::once(Ok::<_, Infallible>(Frame::data(Bytes::from(bytes))));
            Either::Right(BodyExt::boxed(StreamBody::new(frames)))
        }
        _ => unreachable!("a payload the scenarios do not use"),
    };
    let mut request = Request::new(body);
    *request.method_mut() = Method::from_bytes(outgoing.method.as_bytes()).expect("a method");
    *request.uri_mut() = outgoing.url.parse().expect("a URL");
    if let Some(authorization) = outgoing.authorization {
        request.headers_mut().insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&authorization).expect("a header"),
        );
    }
    request
}

async fn read_answer(response: Response<Incoming>) -> Result<Answer, String> {
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get(header::WWW_AUTHENTICATE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes()
        .to_vec();
    Ok(Answer::new(status, challenge, body))
}

/// Sends through a `Bearer` service.
async fn send_through<S, R>(
    mut service: Bearer<S, R>,
    outgoing: Outgoing,
    limit: Duration,
    sleep: impl Future<Output = ()>,
) -> Result<Answer, String>
where
    Bearer<S, R>: Service<Request<Body>, Response = Response<Incoming>>,
    <Bearer<S, R> as Service<Request<Body>>>::Error: std::fmt::Display,
{
    let work = async {
        std::future::poll_fn(|cx| service.poll_ready(cx))
            .await
            .map_err(|e| e.to_string())?;
        let response = service
            .call(request(outgoing))
            .await
            .map_err(|e| e.to_string())?;
        read_answer(response).await
    };
    futures_lite::future::or(work, async {
        sleep.await;
        Err(format!("no answer within {limit:?}"))
    })
    .await
}

fn spawn_watcher<R: Runtime>(runtime: R, spec: &ClientSpec) -> TokenWatcherBuilder<R> {
    let builder = TokenWatcherBuilder::new(runtime, spec.client.clone());
    if spec.dpop {
        builder.dpop(DpopKey::generate_es256().expect("a key"))
    } else {
        builder
    }
}

fn current_token<R>(watcher: &TokenWatcher<R>) -> Option<String> {
    watcher
        .token()
        .ok()
        .map(|t| t.access_token.expose_secret().to_owned())
}

// ---------------------------------------------------------------- tokio, hyper-util

fn tokio_runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime")
    })
}

/// Resolves the scenario's names to the resource server, and nothing else.
#[derive(Clone)]
struct MapResolver(Arc<Vec<(String, SocketAddr)>>);

impl Service<Name> for MapResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = io::Error;
    type Future = std::future::Ready<Result<Self::Response, io::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        std::future::ready(lookup(&self.0, name.as_str()).map(|addr| vec![addr].into_iter()))
    }
}

fn lookup(names: &[(String, SocketAddr)], host: &str) -> io::Result<SocketAddr> {
    names
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(host))
        .map(|(_, addr)| *addr)
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("unknown host {host}")))
}

type TokioService =
    Bearer<Client<HttpConnector<MapResolver>, Body>, tokenkeeper_tokio::TokioRuntime>;

struct TokioAdapter;

struct TokioClient {
    watcher: tokenkeeper_tokio::TokenWatcher,
    service: TokioService,
    limit: Duration,
}

impl MiddlewareAdapter for TokioAdapter {
    const NAME: &'static str = "tower on tokio (hyper-util)";
    const REPLAYS_BODIES: bool = true;
    type Client = TokioClient;

    fn client(spec: ClientSpec) -> TokioClient {
        let rt = tokio_runtime();
        let runtime = tokenkeeper_tokio::TokioRuntime::from_handle(rt.handle().clone());
        let watcher = rt
            .block_on(spawn_watcher(runtime, &spec).spawn())
            .expect("the watcher starts");
        let connector =
            HttpConnector::new_with_resolver(MapResolver(Arc::new(spec.resolve.clone())));
        let http = Client::builder(TokioExecutor::new()).build(connector);
        let service = BearerLayer::new(watcher.clone(), policy(&spec)).layer(http);
        TokioClient {
            watcher,
            service,
            limit: spec.request_timeout,
        }
    }
}

impl MiddlewareClient for TokioClient {
    fn send(&self, outgoing: Outgoing) -> Result<Answer, String> {
        let service = self.service.clone();
        let limit = self.limit;
        tokio_runtime().block_on(send_through(service, outgoing, limit, async move {
            tokio::time::sleep(limit).await
        }))
    }

    fn send_all(&self, requests: Vec<Outgoing>) -> Vec<Result<Answer, String>> {
        let limit = self.limit;
        let tasks: Vec<_> = requests
            .into_iter()
            .map(|outgoing| {
                let service = self.service.clone();
                tokio_runtime().spawn(send_through(service, outgoing, limit, async move {
                    tokio::time::sleep(limit).await
                }))
            })
            .collect();
        tokio_runtime().block_on(async {
            let mut answers = Vec::new();
            for task in tasks {
                answers.push(task.await.unwrap_or_else(|e| Err(e.to_string())));
            }
            answers
        })
    }

    fn current_token(&self) -> Option<String> {
        current_token(&self.watcher)
    }

    fn shutdown(self) {
        tokio_runtime().block_on(self.watcher.shutdown());
    }
}

mod tokio_hyper_util {
    tokenkeeper_testkit::middleware_tests!(super::TokioAdapter);
}

// ---------------------------------------------------------------- smol, hyper over async-io

/// An async-io TCP stream as hyper reads and writes it.
struct SmolIo(async_io::Async<TcpStream>);

impl hyper::rt::Read for SmolIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let mut chunk = [0u8; 8192];
        let room = buf.remaining().min(chunk.len());
        match futures_io::AsyncRead::poll_read(Pin::new(&mut self.0), cx, &mut chunk[..room]) {
            Poll::Ready(Ok(n)) => {
                buf.put_slice(&chunk[..n]);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl hyper::rt::Write for SmolIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        futures_io::AsyncWrite::poll_write(Pin::new(&mut self.0), cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        futures_io::AsyncWrite::poll_flush(Pin::new(&mut self.0), cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        futures_io::AsyncWrite::poll_close(Pin::new(&mut self.0), cx)
    }
}

/// A minimal HTTP/1 client on smol: a connection per request, names resolved from the
/// scenario's list, the request sent in origin form with a `Host` header.
#[derive(Clone)]
struct SmolHttp {
    names: Arc<Vec<(String, SocketAddr)>>,
}

impl Service<Request<Body>> for SmolHttp {
    type Response = Response<Incoming>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Response<Incoming>>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let names = Arc::clone(&self.names);
        Box::pin(async move {
            let uri = request.uri().clone();
            let host = uri.host().unwrap_or_default().to_owned();
            let port = uri.port_u16().unwrap_or(80);
            let addr = match host.parse::<std::net::IpAddr>() {
                Ok(ip) => SocketAddr::new(ip, port),
                Err(_) => lookup(&names, &host)?,
            };
            let stream = async_io::Async::<TcpStream>::connect(addr).await?;
            let (mut sender, connection) = hyper::client::conn::http1::handshake(SmolIo(stream))
                .await
                .map_err(io::Error::other)?;
            smol::spawn(async move {
                let _ = connection.await;
            })
            .detach();
            if let Some(authority) = uri.authority()
                && let Ok(value) = HeaderValue::from_str(authority.as_str())
            {
                request.headers_mut().insert(header::HOST, value);
            }
            let path = uri.path_and_query().map_or("/", |p| p.as_str());
            *request.uri_mut() = Uri::try_from(path).map_err(io::Error::other)?;
            sender.send_request(request).await.map_err(io::Error::other)
        })
    }
}

struct SmolAdapter;

struct SmolClient {
    watcher: tokenkeeper_async_std::TokenWatcher,
    service: Bearer<SmolHttp, tokenkeeper_async_std::AsyncIoRuntime>,
    limit: Duration,
}

impl MiddlewareAdapter for SmolAdapter {
    const NAME: &'static str = "tower on smol (hyper over async-io)";
    const REPLAYS_BODIES: bool = true;
    type Client = SmolClient;

    fn client(spec: ClientSpec) -> SmolClient {
        let runtime = tokenkeeper_async_std::AsyncIoRuntime::smol();
        let watcher =
            smol::block_on(spawn_watcher(runtime, &spec).spawn()).expect("the watcher starts");
        let http = SmolHttp {
            names: Arc::new(spec.resolve.clone()),
        };
        let service = BearerLayer::new(watcher.clone(), policy(&spec)).layer(http);
        SmolClient {
            watcher,
            service,
            limit: spec.request_timeout,
        }
    }
}

impl MiddlewareClient for SmolClient {
    fn send(&self, outgoing: Outgoing) -> Result<Answer, String> {
        let limit = self.limit;
        smol::block_on(send_through(
            self.service.clone(),
            outgoing,
            limit,
            async move {
                async_io::Timer::after(limit).await;
            },
        ))
    }

    fn send_all(&self, requests: Vec<Outgoing>) -> Vec<Result<Answer, String>> {
        let limit = self.limit;
        let tasks: Vec<_> = requests
            .into_iter()
            .map(|outgoing| {
                smol::spawn(send_through(
                    self.service.clone(),
                    outgoing,
                    limit,
                    async move {
                        async_io::Timer::after(limit).await;
                    },
                ))
            })
            .collect();
        smol::block_on(async {
            let mut answers = Vec::new();
            for task in tasks {
                answers.push(task.await);
            }
            answers
        })
    }

    fn current_token(&self) -> Option<String> {
        current_token(&self.watcher)
    }

    fn shutdown(self) {
        smol::block_on(self.watcher.shutdown());
    }
}

mod smol_hyper {
    tokenkeeper_testkit::middleware_tests!(super::SmolAdapter);
}
