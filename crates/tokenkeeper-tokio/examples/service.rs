//! A small service that keeps a token fresh and reads it on every outgoing
//! request, against the test kit's loopback authority, so it runs offline.
//!
//! ```sh
//! cargo run -p tokenkeeper-tokio --example service
//! RUST_LOG=tokenkeeper=debug cargo run -p tokenkeeper-tokio --example service
//! ```
//!
//! It starts an authority issuing 6-second tokens, spawns a watcher with a
//! file cache, then sends a simulated request every 250 ms for about 12 s:
//! through background refreshes, a 401 answered with `refresh_now`, and a
//! 2-second outage of the authority during which the last token is served.

use std::time::{Duration, Instant, SystemTime};

use tokenkeeper_core::oauth2::OAuth2Client;
use tokenkeeper_core::{ClientId, ClientSecret, Jitter, Timestamp};
use tokenkeeper_testkit::{Authority, Client};
use tokenkeeper_tokio::{HttpSettings, TokenWatcher};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();

    // Stand-in for your authority: in production this is just its token URL.
    let authority = Authority::start();
    authority.register_client(
        Client::new("orders-service", "orders-s3cret").token_lifetime(Duration::from_secs(6)),
    );
    let cache = tempfile::tempdir()?;

    // --- what a service does at start-up ---
    let client = OAuth2Client::client_credentials(
        authority.token_url(),
        ClientId::new("orders-service"),
        ClientSecret::new("orders-s3cret"),
    )?
    .scope("orders:read");
    let watcher = TokenWatcher::builder(client)
        .file_cache_in(cache.path())
        .jitter(Jitter::up_to(Duration::from_secs(1)))
        .http(HttpSettings::new().request_timeout(Duration::from_secs(5)))
        .first_token_timeout(Duration::from_secs(10))
        .spawn()
        .await?;
    println!("started: {watcher:?}");

    // --- what it does on every outgoing request ---
    let started = Instant::now();
    let mut outage = false;
    let mut answered_401 = false;
    while started.elapsed() < Duration::from_secs(12) {
        let second = started.elapsed().as_secs();
        match watcher.token() {
            Ok(token) => {
                // Here: `request.header(AUTHORIZATION, token.authorization_header_value())`.
                let _header = token.authorization_header_value();
                let now = Timestamp::from_system_time(SystemTime::now());
                println!(
                    "t={:>4.1}s request with {} ({}, expires in {:.1}s)",
                    started.elapsed().as_secs_f64(),
                    token.access_token.fingerprint(),
                    token.state_at(now).as_str(),
                    token.remaining_at(now).as_secs_f64(),
                );
            }
            Err(error) => println!("no token to send: {error}"),
        }

        // The resource server rejects the token once: ask for a new one.
        if second == 2 && !answered_401 {
            answered_401 = true;
            let rejected = watcher.token()?.into_arc();
            println!(
                "the resource server answered 401: {:?}",
                watcher.refresh_now().await?
            );
            let fresh = watcher.changed_from(&rejected).await?;
            println!(
                "new token after the 401: {}",
                fresh.access_token.fingerprint()
            );
        }
        // The authority goes down for 2 seconds.
        if second == 5 && !outage {
            outage = true;
            println!("the authority goes down");
            authority.set_down(true);
        }
        if second == 7 && authority.is_down() {
            println!("the authority is back");
            authority.set_down(false);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // --- health check and shutdown ---
    let status = watcher.status();
    println!(
        "status: state {:?}, {} failures in a row, last error {:?}, next attempt {:?}",
        status.token_state,
        status.consecutive_failures,
        status.last_error.map(|e| e.to_string()),
        status.next_attempt.map(|t| t.to_string()),
    );
    println!(
        "the authority saw {} requests ({} while down)",
        authority.request_count(),
        authority.count_by_status(503)
    );
    watcher.shutdown().await;
    Ok(())
}
