//! A hyper-util client on tokio with the bearer layer, against the test kit's loopback
//! authority and resource server, so it runs offline.
//!
//! ```sh
//! cargo run -p tokenkeeper-tower --example hyper_client
//! ```
//!
//! It calls the API, has the authority revoke the token, then sends 20 calls at once: each
//! is refused once, the 20 refusals make one token request, and each call is retried with
//! the new token.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use tokenkeeper_testkit::{Authority, Client, ResourceServer};
use tokenkeeper_tokio::TokenWatcher;
use tokenkeeper_tokio::engine::oauth2::OAuth2Client;
use tokenkeeper_tokio::engine::{ClientId, ClientSecret};
use tokenkeeper_tower::{AttachPolicy, BearerLayer};
use tower_layer::Layer;
use tower_service::Service;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // Stand-ins for your authority and your API.
    let authority = Authority::start();
    authority.register_client(Client::new("orders-service", "orders-s3cret"));
    let api = ResourceServer::start(&authority);

    // --- start-up: a watcher, and the layer in front of the HTTP client ---
    let client = OAuth2Client::client_credentials(
        authority.token_url(),
        ClientId::new("orders-service"),
        ClientSecret::new("orders-s3cret"),
    )?;
    let watcher = TokenWatcher::builder(client).spawn().await?;
    let policy = AttachPolicy::for_origin(&api.base_url())?.renewal_timeout(Duration::from_secs(5));
    let http = HttpClient::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let orders = BearerLayer::new(watcher.clone(), policy).layer(http);

    // --- a call, as the service makes it ---
    let call = |path: &'static str| {
        let mut service = orders.clone();
        let url = api.url(path);
        async move {
            let request = Request::get(url).body(Full::new(Bytes::new()))?;
            std::future::poll_fn(|cx| service.poll_ready(cx)).await?;
            let response = service.call(request).await?;
            let status = response.status();
            response.into_body().collect().await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(status)
        }
    };

    println!(
        "GET /orders                      -> {}",
        call("/orders").await?
    );
    let token = watcher.token()?.access_token.expose_secret().to_owned();
    authority.revoke(&token);
    println!("(the authority revokes the token)");
    api.clear_requests();
    let before = authority.request_count();
    api.gather(20);
    let calls: Vec<_> = (0..20).map(|_| tokio::spawn(call("/orders"))).collect();
    let mut ok = 0;
    for task in calls {
        if task.await??.is_success() {
            ok += 1;
        }
    }
    println!(
        "20 calls at once                 -> {ok} succeeded, after {} refusals and {} token request(s)",
        api.count_by_status(401),
        authority.request_count() - before
    );
    watcher.shutdown().await;
    Ok(())
}
