//! The middleware scenarios of the testkit, run through `BearerMiddleware` in a
//! reqwest-middleware client on tokio (the watcher on `tokenkeeper-tokio`).

use std::sync::OnceLock;

use bytes::Bytes;
use tokenkeeper_driver::dpop::DpopKey;
use tokenkeeper_reqwest::{AttachPolicy, BearerMiddleware};
use tokenkeeper_testkit::middleware::{
    Answer, ClientSpec, MiddlewareAdapter, MiddlewareClient, Outgoing, Payload,
};
use tokenkeeper_tokio::{TokenWatcher, TokioRuntime};

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime")
    })
}

struct Reqwest;

struct Client {
    watcher: TokenWatcher,
    http: reqwest_middleware::ClientWithMiddleware,
}

impl MiddlewareAdapter for Reqwest {
    const NAME: &'static str = "reqwest-middleware";
    const REPLAYS_BODIES: bool = true;
    type Client = Client;

    fn client(spec: ClientSpec) -> Client {
        let rt = runtime();
        let mut builder = tokenkeeper_tokio::TokenWatcherBuilder::new(
            TokioRuntime::from_handle(rt.handle().clone()),
            spec.client.clone(),
        );
        if spec.dpop {
            builder = builder.dpop(DpopKey::generate_ed25519().expect("a key"));
        }
        let watcher = rt.block_on(builder.spawn()).expect("the watcher starts");
        let policy = AttachPolicy::for_origins(&spec.allowed_origins).expect("valid origins");
        let mut builder = reqwest::Client::builder()
            .timeout(spec.request_timeout)
            .no_proxy();
        for (name, addr) in &spec.resolve {
            builder = builder.resolve(name, *addr);
        }
        let http = reqwest_middleware::ClientBuilder::new(builder.build().expect("a client"))
            .with(BearerMiddleware::new(watcher.clone(), policy))
            .build();
        Client { watcher, http }
    }
}

async fn send(
    http: reqwest_middleware::ClientWithMiddleware,
    outgoing: Outgoing,
) -> Result<Answer, String> {
    let method =
        reqwest::Method::from_bytes(outgoing.method.as_bytes()).map_err(|e| e.to_string())?;
    let mut request = http.request(method, &outgoing.url);
    request = match outgoing.payload {
        Payload::Empty => request,
        Payload::Replayable(bytes) => request.body(bytes),
        Payload::OneShot(bytes) => {
            let chunks = futures_lite::stream::once(Ok::<_, std::io::Error>(Bytes::from(bytes)));
            request.body(reqwest::Body::wrap_stream(chunks))
        }
        _ => unreachable!("a payload the scenarios do not use"),
    };
    if let Some(authorization) = outgoing.authorization {
        request = request.header(reqwest::header::AUTHORIZATION, authorization);
    }
    let response = request.send().await.map_err(|e| format!("{e:#}"))?;
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let body = response.bytes().await.map_err(|e| e.to_string())?.to_vec();
    Ok(Answer::new(status, challenge, body))
}

impl MiddlewareClient for Client {
    fn send(&self, outgoing: Outgoing) -> Result<Answer, String> {
        runtime().block_on(send(self.http.clone(), outgoing))
    }

    fn send_all(&self, requests: Vec<Outgoing>) -> Vec<Result<Answer, String>> {
        let tasks: Vec<_> = requests
            .into_iter()
            .map(|outgoing| runtime().spawn(send(self.http.clone(), outgoing)))
            .collect();
        runtime().block_on(async {
            let mut answers = Vec::new();
            for task in tasks {
                answers.push(task.await.unwrap_or_else(|e| Err(e.to_string())));
            }
            answers
        })
    }

    fn current_token(&self) -> Option<String> {
        self.watcher
            .token()
            .ok()
            .map(|t| t.access_token.expose_secret().to_owned())
    }

    fn shutdown(self) {
        runtime().block_on(self.watcher.shutdown());
    }
}

tokenkeeper_testkit::middleware_tests!(Reqwest);

#[test]
fn without_a_token_nothing_is_sent() {
    let fixture = tokenkeeper_testkit::middleware::Fixture::start();
    let spec = fixture.spec();
    let client = Reqwest::client(spec);
    runtime().block_on(client.watcher.shutdown());
    let error = client
        .send(Outgoing::get(fixture.api.url("/orders")))
        .expect_err("a stopped watcher has no token");
    assert!(error.contains("no access token"), "{error}");
    assert_eq!(fixture.api.request_count(), 0);
}
