//! One token shared through a real Redis by watchers of different adapters
//! (blocking, tokio, and this one on async-std and on smol): the record one
//! stores, the others read and serve, without asking the authority again.
//! And a watcher waiting for another instance's lease is woken by the
//! store's change notification.
//!
//! `tokenkeeper-redis` is built here with both its `tokio` and `smol`
//! features, as in a program that mixes runtimes: redis then runs on tokio
//! inside a tokio runtime and on smol elsewhere.

use std::time::{Duration, Instant, SystemTime};

use futures_lite::FutureExt;
use tokenkeeper_async_std::{AsyncIoRuntime, TokenWatcher};
use tokenkeeper_core::cache::encode_record;
use tokenkeeper_core::oauth2::OAuth2Client;
use tokenkeeper_core::{
    AccessToken, CacheKey, ClientId, ClientSecret, LeaseOutcome, LeaseSettings, LifetimePolicy,
    Timestamp, TokenGrant,
};
use tokenkeeper_redis::{AsyncRedisLayer, BlockingRedisLayer, RedisSettings};
use tokenkeeper_testkit::{Authority, Client, RedisServer};

const CLIENT_ID: &str = "shared-client";
const SECRET: &str = "shared-secret-0f4e2a";

fn authority() -> Authority {
    let authority = Authority::start();
    authority.register_client(Client::new(CLIENT_ID, SECRET));
    authority
}

fn client(authority: &Authority, scope: &str) -> OAuth2Client {
    OAuth2Client::client_credentials(
        &authority.token_url(),
        ClientId::new(CLIENT_ID),
        ClientSecret::new(SECRET),
    )
    .unwrap()
    .scope(scope)
}

fn settings(server: &RedisServer) -> RedisSettings {
    RedisSettings::new(&server.url()).unwrap()
}

/// A token from the blocking watcher, over its sync Redis layer.
fn blocking_token(settings: &RedisSettings, client: OAuth2Client) -> String {
    let key = CacheKey::for_client(&client);
    let watcher = tokenkeeper_blocking::TokenWatcher::builder(client)
        .cache(BlockingRedisLayer::new(settings.clone(), &key))
        .spawn()
        .expect("a blocking watcher");
    let token = watcher.token().expect("a token");
    watcher.shutdown();
    token.access_token.expose_secret().to_owned()
}

/// The runtimes of this adapter.
#[derive(Clone, Copy, Debug)]
enum On {
    AsyncStd,
    Smol,
}

/// A token from this adapter's watcher, over the async Redis layer, on
/// `on` (blocked on with that runtime's own `block_on`).
fn async_token(settings: &RedisSettings, client: OAuth2Client, on: On) -> String {
    let key = CacheKey::for_client(&client);
    let runtime = match on {
        On::AsyncStd => AsyncIoRuntime::async_std(),
        On::Smol => AsyncIoRuntime::smol(),
    };
    let work = async move {
        let watcher = TokenWatcher::builder(client)
            .runtime(runtime)
            .cache(AsyncRedisLayer::new(settings.clone(), &key))
            .spawn()
            .await
            .unwrap_or_else(|e| panic!("a watcher on {on:?}: {e}"));
        let token = watcher.token().expect("a token").into_arc();
        watcher.shutdown().await;
        token.access_token.expose_secret().to_owned()
    };
    match on {
        On::AsyncStd => async_std::task::block_on(work),
        On::Smol => smol::block_on(work),
    }
}

/// A token from the tokio watcher, over the same async Redis layer.
fn tokio_token(settings: &RedisSettings, client: OAuth2Client) -> String {
    let key = CacheKey::for_client(&client);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let watcher = tokenkeeper_tokio::TokenWatcher::builder(client)
            .cache(AsyncRedisLayer::new(settings.clone(), &key))
            .spawn()
            .await
            .expect("a tokio watcher");
        let token = watcher.token().expect("a token").into_arc();
        watcher.shutdown().await;
        token.access_token.expose_secret().to_owned()
    })
}

#[test]
fn a_token_stored_by_one_adapter_is_served_by_the_others() {
    let server = RedisServer::start(&[]);
    let authority = authority();
    let settings = settings(&server);

    // Blocking writes; async-std, smol and tokio read.
    let stored = blocking_token(&settings, client(&authority, "read"));
    assert_eq!(authority.request_count(), 1);
    for on in [On::AsyncStd, On::Smol] {
        let served = async_token(&settings, client(&authority, "read"), on);
        assert_eq!(served, stored, "{on:?}");
    }
    assert_eq!(tokio_token(&settings, client(&authority, "read")), stored);
    assert_eq!(authority.request_count(), 1, "{:?}", authority.requests());

    // async-std writes (another key: another scope); blocking, smol and
    // tokio read.
    let stored = async_token(&settings, client(&authority, "write"), On::AsyncStd);
    assert_eq!(authority.request_count(), 2);
    assert_eq!(
        blocking_token(&settings, client(&authority, "write")),
        stored
    );
    assert_eq!(
        async_token(&settings, client(&authority, "write"), On::Smol),
        stored
    );
    assert_eq!(tokio_token(&settings, client(&authority, "write")), stored);
    assert_eq!(authority.request_count(), 2, "{:?}", authority.requests());

    // tokio writes; async-std reads.
    let stored = tokio_token(&settings, client(&authority, "admin"));
    assert_eq!(authority.request_count(), 3);
    assert_eq!(
        async_token(&settings, client(&authority, "admin"), On::AsyncStd),
        stored
    );
    assert_eq!(authority.request_count(), 3, "{:?}", authority.requests());
}

#[test]
fn a_lease_wait_ends_when_the_holder_stores_its_token() {
    let server = RedisServer::start(&[]);
    let authority = authority();
    let client = client(&authority, "lease");
    let key = CacheKey::for_client(&client);
    // Re-reads come 5 to 10 s after finding the lease taken, unless a
    // notification comes first.
    let slow_retry = settings(&server).lease(LeaseSettings {
        ttl: Duration::from_secs(30),
        retry: Duration::from_secs(10),
        hold_through_backoff: true,
    });
    // Another instance holds the lease, as if it were fetching.
    let holder = BlockingRedisLayer::new(settings(&server), &key);
    assert_eq!(
        holder.try_acquire(Duration::from_secs(30)),
        LeaseOutcome::Acquired
    );

    async_std::task::block_on(async {
        let watcher = TokenWatcher::builder(client.clone())
            .cache(AsyncRedisLayer::new(slow_retry, &key))
            .start()
            .unwrap();
        // Let it find the lease taken and settle into its wait, subscribed.
        async_io::Timer::after(Duration::from_millis(800)).await;
        assert!(watcher.token().is_err());

        // The holder (another instance of the fleet) stores the token it
        // fetched.
        let now = Timestamp::from_system_time(SystemTime::now());
        let record = LifetimePolicy::default().record(
            TokenGrant::bearer(
                AccessToken::new("from-the-lease-holder"),
                Some(Duration::from_secs(600)),
            ),
            now,
            None,
        );
        let stored_at = Instant::now();
        holder.write(&encode_record(&key, &record)).unwrap();

        let token = async { Some(watcher.changed().await) }
            .or(async {
                async_io::Timer::after(Duration::from_secs(4)).await;
                None
            })
            .await
            .expect("woken by the change, well before the 5 s re-read")
            .unwrap();
        assert!(stored_at.elapsed() < Duration::from_secs(4));
        assert_eq!(token.access_token.expose_secret(), "from-the-lease-holder");
        watcher.shutdown().await;
    });
    holder.release().unwrap();
    assert_eq!(authority.request_count(), 0, "{:?}", authority.requests());
}
