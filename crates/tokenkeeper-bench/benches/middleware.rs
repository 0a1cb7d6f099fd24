//! What the token-attaching middleware adds to a request: each client sends the same `GET`
//! to the test kit's loopback resource server (which checks the token against the test
//! authority), once with the `Authorization` header set by hand from a prepared value, once
//! through the middleware (which reads the watcher's token, builds the header, keeps a copy
//! of the request for a retry, and checks the answer), in the same run:
//!
//! - tower: a hyper-util client on a tokio current-thread runtime, called directly vs
//!   through `BearerLayer` (the same client, cloned);
//! - reqwest: a reqwest-middleware client with no middleware vs with `BearerMiddleware`
//!   (the same `reqwest::Client`, cloned);
//! - ureq: a plain `Agent` vs a `BearerAgent` of the same configuration;
//! - and, to show the middleware's own cost without the network's noise, tower in process:
//!   a service that answers at once, called with the prepared header vs through the layer.
//!
//! Criterion measures each variant on its own; on a shared machine the load can change
//! between two measurements, so the bench then also runs each pair *interleaved* (A, B, B,
//! A, ...: 20 000 requests each, every request timed) and prints the medians and their
//! difference: the paired figure is the one the target is checked against.
//!
//! Run with `cargo bench -p tokenkeeper-bench --bench middleware`.
//! Target (issue 13): the middleware adds at most 2% or 1 µs per request, whichever is larger.

// criterion's macros generate undocumented public functions.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::header::{AUTHORIZATION, HeaderValue};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use tokenkeeper_core::oauth2::OAuth2Client;
use tokenkeeper_core::{ClientId, ClientSecret};
use tokenkeeper_testkit::{Authority, Client, ResourceServer};
use tokenkeeper_tower::AttachPolicy;
use tower_layer::Layer;
use tower_service::Service;

/// A service that answers `200` at once to a request that carries a token.
#[derive(Clone, Copy)]
struct Answer;

impl Service<http::Request<Full<Bytes>>> for Answer {
    type Response = http::Response<Full<Bytes>>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Full<Bytes>>) -> Self::Future {
        assert!(request.headers().contains_key(AUTHORIZATION));
        std::future::ready(Ok(http::Response::new(Full::new(Bytes::new()))))
    }
}

fn oauth_client(authority: &Authority) -> OAuth2Client {
    OAuth2Client::client_credentials(
        authority.token_url(),
        ClientId::new("bench"),
        ClientSecret::new("bench-secret"),
    )
    .expect("a loopback token URL")
}

fn bench(c: &mut Criterion) {
    let authority = Authority::start();
    authority.register_client(Client::new("bench", "bench-secret"));
    let api = ResourceServer::start(&authority);
    let url = api.url("/orders");
    let uri: http::Uri = url.parse().expect("a URI");
    let policy = AttachPolicy::for_origin(&api.base_url()).expect("a loopback origin");

    // The async clients share a current-thread runtime and one tokio watcher.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let runtime = tokenkeeper_tokio::TokioRuntime::from_handle(rt.handle().clone());
    let watcher = rt
        .block_on(
            tokenkeeper_driver::TokenWatcherBuilder::new(runtime, oauth_client(&authority)).spawn(),
        )
        .expect("a watcher");
    // What a hand-written client would hold: the header value, prepared once.
    let header = {
        let token = watcher.token().expect("a token");
        let mut value =
            HeaderValue::from_str(&token.authorization_header_value()).expect("a header");
        value.set_sensitive(true);
        value
    };

    // tower: a hyper-util client, called directly or through the layer.
    // Idle connections are dropped by the clients after 5 s, well before the test server's
    // 30 s header-read timeout closes them under a later measurement.
    let idle = Duration::from_secs(5);
    let hyper = HyperClient::builder(TokioExecutor::new())
        .pool_idle_timeout(idle)
        .build_http::<Full<Bytes>>();
    let layered =
        tokenkeeper_tower::BearerLayer::new(watcher.clone(), policy.clone()).layer(hyper.clone());
    let mut tower_hand = {
        let (mut client, rt, uri, header) = (hyper.clone(), &rt, uri.clone(), header.clone());
        move || {
            rt.block_on(async {
                let mut request = http::Request::get(uri.clone())
                    .body(Full::new(Bytes::new()))
                    .expect("a request");
                request.headers_mut().insert(AUTHORIZATION, header.clone());
                let response = client.call(request).await.expect("an answer");
                assert_eq!(response.status(), 200);
                black_box(response.into_body().collect().await.expect("a body"));
            })
        }
    };
    let mut tower_layer = {
        let (mut client, rt, uri) = (layered.clone(), &rt, uri.clone());
        move || {
            rt.block_on(async {
                let request = http::Request::get(uri.clone())
                    .body(Full::new(Bytes::new()))
                    .expect("a request");
                std::future::poll_fn(|cx| client.poll_ready(cx))
                    .await
                    .expect("ready");
                let response = client.call(request).await.expect("an answer");
                assert_eq!(response.status(), 200);
                black_box(response.into_body().collect().await.expect("a body"));
            })
        }
    };

    // reqwest: the same reqwest::Client in a middleware chain without and with ours.
    let reqwest = reqwest::Client::builder()
        .pool_idle_timeout(idle)
        .build()
        .expect("a client");
    let bare = reqwest_middleware::ClientBuilder::new(reqwest.clone()).build();
    let bearer = reqwest_middleware::ClientBuilder::new(reqwest)
        .with(tokenkeeper_reqwest::BearerMiddleware::new(
            watcher.clone(),
            policy.clone(),
        ))
        .build();
    let mut reqwest_hand = || {
        rt.block_on(async {
            let response = bare
                .get(&url)
                .header(AUTHORIZATION, header.clone())
                .send()
                .await
                .expect("an answer");
            assert_eq!(response.status(), 200);
            black_box(response.bytes().await.expect("a body"));
        })
    };
    let mut reqwest_middleware = || {
        rt.block_on(async {
            let response = bearer.get(&url).send().await.expect("an answer");
            assert_eq!(response.status(), 200);
            black_box(response.bytes().await.expect("a body"));
        })
    };

    // ureq: a plain agent and a BearerAgent of the same configuration, on the thread watcher.
    let threads = tokenkeeper_blocking::TokenWatcher::builder(oauth_client(&authority))
        .spawn()
        .expect("a watcher");
    let thread_header = threads
        .token()
        .expect("a token")
        .authorization_header_value();
    let config = || {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_idle_age(idle)
    };
    let plain: ureq::Agent = config().build().into();
    let agent = tokenkeeper_ureq::BearerAgent::new(config(), threads.clone(), policy.clone());
    let mut ureq_hand = || {
        let mut response = plain
            .get(&url)
            .header(AUTHORIZATION, &thread_header)
            .call()
            .expect("an answer");
        assert_eq!(response.status(), 200);
        black_box(response.body_mut().read_to_vec().expect("a body"));
    };
    let mut ureq_agent = || {
        let mut response = agent.get(&url).call().expect("an answer");
        assert_eq!(response.status(), 200);
        black_box(response.body_mut().read_to_vec().expect("a body"));
    };

    // tower in process: the layer's own work, no network.
    let mut local_hand = {
        let (mut service, uri, header) = (Answer, uri.clone(), header.clone());
        move || {
            let mut request = http::Request::get(uri.clone())
                .body(Full::new(Bytes::new()))
                .expect("a request");
            request.headers_mut().insert(AUTHORIZATION, header.clone());
            let response = futures_lite::future::block_on(service.call(request));
            black_box(response.expect("an answer"));
        }
    };
    let mut local_layer = {
        let mut service =
            tokenkeeper_tower::BearerLayer::new(watcher.clone(), policy.clone()).layer(Answer);
        let uri = uri.clone();
        move || {
            let request = http::Request::get(uri.clone())
                .body(Full::new(Bytes::new()))
                .expect("a request");
            let response = futures_lite::future::block_on(service.call(request));
            black_box(response.expect("an answer"));
        }
    };

    let mut group = c.benchmark_group("middleware");
    group
        .sample_size(60)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(5));
    let mut run = |name: &str, f: &mut dyn FnMut()| {
        api.clear_requests();
        group.bench_function(name, |b| b.iter(&mut *f));
    };
    run("tower (hyper-util) / header set by hand", &mut tower_hand);
    run("tower (hyper-util) / BearerLayer", &mut tower_layer);
    run("reqwest / header set by hand", &mut reqwest_hand);
    run("reqwest / BearerMiddleware", &mut reqwest_middleware);
    run("ureq / header set by hand", &mut ureq_hand);
    run("ureq / BearerAgent", &mut ureq_agent);
    run("tower in process / header set by hand", &mut local_hand);
    run("tower in process / BearerLayer", &mut local_layer);
    group.finish();

    const PAIRS: usize = 20_000;
    api.clear_requests();
    paired(
        "tower (hyper-util)",
        PAIRS,
        &mut tower_hand,
        &mut tower_layer,
    );
    api.clear_requests();
    paired("reqwest", PAIRS, &mut reqwest_hand, &mut reqwest_middleware);
    api.clear_requests();
    paired("ureq", PAIRS, &mut ureq_hand, &mut ureq_agent);
    paired("tower in process", PAIRS, &mut local_hand, &mut local_layer);

    rt.block_on(watcher.shutdown());
    threads.shutdown();
    assert_eq!(
        authority.count_by_grant("client_credentials"),
        2,
        "no token request during the measurements"
    );
}

/// Runs `a` and `b` `n` times each, interleaved (A B, then B A, ...), timing every call,
/// and prints the medians and the difference.
fn paired(name: &str, n: usize, mut a: impl FnMut(), mut b: impl FnMut()) {
    let mut times_a = Vec::with_capacity(n);
    let mut times_b = Vec::with_capacity(n);
    let timed = |f: &mut dyn FnMut(), into: &mut Vec<Duration>| {
        let start = Instant::now();
        f();
        into.push(start.elapsed());
    };
    for i in 0..n {
        if i % 2 == 0 {
            timed(&mut a, &mut times_a);
            timed(&mut b, &mut times_b);
        } else {
            timed(&mut b, &mut times_b);
            timed(&mut a, &mut times_a);
        }
    }
    let median = |times: &mut Vec<Duration>| {
        times.sort();
        times[times.len() / 2].as_secs_f64() * 1e6
    };
    let (ma, mb) = (median(&mut times_a), median(&mut times_b));
    let bar = (ma * 0.02).max(1.0);
    println!(
        "paired {name}: by hand {ma:.2} µs, middleware {mb:.2} µs, added {:.2} µs ({:+.1}%), bar {bar:.2} µs: {}",
        mb - ma,
        (mb - ma) / ma * 100.0,
        if mb - ma <= bar { "within" } else { "OVER" }
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
