//! A ureq agent with the bearer middleware on plain threads, against the test kit's
//! loopback authority and resource server, so it runs offline.
//!
//! ```sh
//! cargo run -p tokenkeeper-ureq --example ureq_agent
//! ```
//!
//! It calls the API, has the authority revoke the token, calls again from 8 threads at once
//! (each refused once, one token request for all, each retried with the new token).

use tokenkeeper_blocking::TokenWatcher;
use tokenkeeper_blocking::engine::oauth2::OAuth2Client;
use tokenkeeper_blocking::engine::{ClientId, ClientSecret};
use tokenkeeper_testkit::{Authority, Client, ResourceServer};
use tokenkeeper_ureq::{AttachPolicy, BearerAgent};

fn main() -> Result<(), Box<dyn std::error::Error>> {
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
    let watcher = TokenWatcher::builder(client).spawn()?;
    let agent = BearerAgent::new(
        ureq::Agent::config_builder().http_status_as_error(false),
        watcher.clone(),
        AttachPolicy::for_origin(&api.base_url())?,
    );

    // --- calls ---
    let status = agent.get(api.url("/orders")).call()?.status();
    println!("GET /orders               -> {status}");

    let token = watcher.token()?.access_token.expose_secret().to_owned();
    authority.revoke(&token);
    println!("(the authority revokes the token)");
    let before = authority.request_count();
    api.gather(8);
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let calls: Vec<_> = (0..8)
            .map(|_| {
                scope.spawn(|| {
                    agent
                        .get(api.url("/orders"))
                        .call()
                        .map(|r| r.status().as_u16())
                })
            })
            .collect();
        calls
            .into_iter()
            .map(|call| call.join().ok().and_then(Result::ok).unwrap_or(0))
            .collect()
    });
    println!(
        "8 threads, GET /orders    -> {statuses:?}: {} refusals, {} token request(s)",
        api.count_by_status(401),
        authority.request_count() - before
    );
    watcher.shutdown();
    Ok(())
}
