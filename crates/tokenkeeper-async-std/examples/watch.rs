//! A token watcher on async-std (or smol), against the test kit's loopback
//! authority, so it runs anywhere, offline:
//!
//! ```text
//! cargo run -p tokenkeeper-async-std --example watch          # on async-std
//! cargo run -p tokenkeeper-async-std --example watch -- smol  # on smol
//! ```
//!
//! The authority issues 4-second tokens; the watcher refreshes each one in
//! the background when it goes stale, keeps it in a file cache, survives an
//! outage of the authority by serving the token it holds, and takes an early
//! refresh after a (simulated) 401. Only fingerprints of the tokens are
//! printed: tokens are secrets.

use std::error::Error;
use std::time::Duration;

use futures_lite::FutureExt;
use tokenkeeper_async_std::{AsyncIoRuntime, HttpSettings, TokenWatcher};
use tokenkeeper_core::oauth2::OAuth2Client;
use tokenkeeper_core::{BackoffPolicy, ClientId, ClientSecret, Jitter};
use tokenkeeper_testkit::{Authority, Client};

fn main() -> Result<(), Box<dyn Error>> {
    let on_smol = std::env::args().nth(1).as_deref() == Some("smol");
    if on_smol {
        smol::block_on(run(AsyncIoRuntime::smol()))
    } else {
        async_std::task::block_on(run(AsyncIoRuntime::async_std()))
    }
}

async fn sleep(duration: Duration) {
    async_io::Timer::after(duration).await;
}

async fn run(runtime: AsyncIoRuntime) -> Result<(), Box<dyn Error>> {
    // A real OAuth2 token endpoint on loopback, issuing 4 s tokens.
    let authority = Authority::start();
    authority.register_client(
        Client::new("example-service", "example-secret").token_lifetime(Duration::from_secs(4)),
    );
    let cache = tempfile::tempdir()?;
    println!("runtime:   {runtime:?}");
    println!("authority: {}", authority.token_url());

    let client = OAuth2Client::client_credentials(
        authority.token_url(),
        ClientId::new("example-service"),
        ClientSecret::new("example-secret"),
    )?
    .scope("read");

    let watcher = TokenWatcher::builder(client)
        .runtime(runtime)
        .file_cache_in(cache.path())
        .http(HttpSettings::new().request_timeout(Duration::from_secs(5)))
        // Short tokens, short waits: fit for a demo.
        .jitter(Jitter::up_to(Duration::from_millis(500)))
        .backoff(
            BackoffPolicy::builder()
                .floor(Duration::from_millis(100))
                .initial(Duration::from_millis(200))
                .cap(Duration::from_secs(2))
                .build()?,
        )
        .refresh_now_min_interval(Duration::from_secs(1))
        .spawn()
        .await?;
    let first = watcher.token()?;
    println!(
        "first token {} (stale at {}, expires at {})",
        first.access_token.fingerprint(),
        first.stale,
        first.expiry
    );
    drop(first);

    // Background refreshes: each arrives when the previous token goes stale.
    for _ in 0..2 {
        let token = watcher.changed().await?;
        println!("refreshed:  {}", token.access_token.fingerprint());
    }

    // The authority goes down: the token held is served until it expires,
    // then nothing is (with the reason), while the watcher keeps retrying.
    authority.set_down(true);
    println!("authority down");
    for _ in 0..7 {
        sleep(Duration::from_millis(750)).await;
        match watcher.token() {
            Ok(token) => println!("  serving {}", token.access_token.fingerprint()),
            Err(error) => println!("  {error}"),
        }
    }
    authority.set_down(false);
    println!("authority back");
    let back = async { Some(watcher.changed().await) }
        .or(async {
            sleep(Duration::from_secs(5)).await;
            None
        })
        .await;
    if let Some(token) = back {
        println!("recovered:  {}", token?.access_token.fingerprint());
    }

    // A resource server answered 401 to the current token: ask for another.
    let rejected = watcher.token()?.into_arc();
    println!("early refresh: {:?}", watcher.refresh_now().await?);
    let fresh = watcher.changed_from(&rejected).await?;
    println!("replaced:   {}", fresh.access_token.fingerprint());

    let status = watcher.status();
    println!(
        "status: {} failures in a row, last error: {}",
        status.consecutive_failures,
        status
            .last_error
            .map_or_else(|| "none".to_owned(), |e| e.to_string())
    );
    println!(
        "the authority answered {} requests",
        authority.request_count()
    );
    watcher.shutdown().await;
    Ok(())
}
