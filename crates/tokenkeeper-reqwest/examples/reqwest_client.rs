//! A reqwest-middleware client with the bearer middleware, against the test kit's loopback
//! authority and resource server, so it runs offline.
//!
//! ```sh
//! cargo run -p tokenkeeper-reqwest --example reqwest_client
//! ```
//!
//! It calls the API, has the authority revoke the token, then posts a JSON body (refused
//! once, one token request, the same body sent again with the new token), and shows that a
//! streamed body, which cannot be replayed, gets its 401 back.

use bytes::Bytes;
use tokenkeeper_reqwest::{AttachPolicy, BearerMiddleware};
use tokenkeeper_testkit::{Authority, Client, ResourceServer};
use tokenkeeper_tokio::TokenWatcher;
use tokenkeeper_tokio::engine::oauth2::OAuth2Client;
use tokenkeeper_tokio::engine::{ClientId, ClientSecret};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Stand-ins for your authority and your API.
    let authority = Authority::start();
    authority.register_client(Client::new("orders-service", "orders-s3cret"));
    let api = ResourceServer::start(&authority);

    // --- start-up ---
    let client = OAuth2Client::client_credentials(
        authority.token_url(),
        ClientId::new("orders-service"),
        ClientSecret::new("orders-s3cret"),
    )?;
    let watcher = TokenWatcher::builder(client).spawn().await?;
    let http = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(BearerMiddleware::new(
            watcher.clone(),
            AttachPolicy::for_origin(&api.base_url())?,
        ))
        .build();

    // --- calls ---
    let status = http.get(api.url("/orders")).send().await?.status();
    println!("GET  /orders            -> {status}");

    let token = watcher.token()?.access_token.expose_secret().to_owned();
    authority.revoke(&token);
    println!("(the authority revokes the token)");
    let response = http
        .post(api.url("/orders"))
        .body(r#"{"item": "coffee", "quantity": 2}"#)
        .send()
        .await?;
    println!(
        "POST /orders (bytes)    -> {} echo {:?}",
        response.status(),
        response.text().await?
    );
    println!(
        "  the API saw {:?}; token requests so far: {}",
        api.requests().iter().map(|r| r.status).collect::<Vec<_>>(),
        authority.request_count()
    );

    let token = watcher.token()?.access_token.expose_secret().to_owned();
    authority.revoke(&token);
    let stream = futures_lite::stream::once(Ok::<_, std::io::Error>(Bytes::from_static(b"once")));
    let status = http
        .post(api.url("/upload"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await?
        .status();
    println!("POST /upload (stream)   -> {status} (cannot be replayed: the 401 comes back)");
    // The refusal was reported, but a forced refresh happened less than
    // refresh_now_min_interval (10 s by default) ago: the watcher waits that out.
    watcher.shutdown().await;
    Ok(())
}
