//! A fleet sharing one token through a real Redis: threads running the
//! blocking watcher and separate `tokenkeeper watch --redis` processes.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokenkeeper_blocking::TokenWatcher;
use tokenkeeper_core::oauth2::{GrantType, OAuth2Client, TokenUrl};
use tokenkeeper_core::{CacheKey, ClientId, ClientSecret, LeaseSettings};
use tokenkeeper_redis::{BlockingRedisLayer, RedisSettings};
use tokenkeeper_testkit::{Authority, Client, Fault, RedisServer};

const CLIENT_ID: &str = "fleet-client";
const SECRET: &str = "fleet-secret-6b1f0d";

fn authority(lifetime: Duration) -> Authority {
    let authority = Authority::start();
    authority.register_client(Client::new(CLIENT_ID, SECRET).token_lifetime(lifetime));
    authority
}

fn client(authority: &Authority) -> OAuth2Client {
    OAuth2Client::new(
        TokenUrl::parse(&authority.token_url(), false).expect("loopback url"),
        ClientId::new(CLIENT_ID),
        Some(ClientSecret::new(SECRET)),
        GrantType::ClientCredentials,
    )
}

fn redis_settings(server: &RedisServer, prefix: &str, lease_ttl: Duration) -> RedisSettings {
    RedisSettings::new(&server.url())
        .expect("redis url")
        .prefix(prefix)
        .lease(LeaseSettings {
            ttl: lease_ttl,
            retry: Duration::from_millis(400),
            hold_through_backoff: true,
        })
}

fn watcher(authority: &Authority, settings: &RedisSettings) -> TokenWatcher {
    let client = client(authority);
    let key = CacheKey::for_client(&client);
    TokenWatcher::builder(client)
        .blocking_cache(BlockingRedisLayer::new(settings.clone(), &key))
        .spawn()
        .expect("a first token")
}

struct WatchProcess {
    child: Child,
    sink: PathBuf,
}

fn watch_process(
    authority: &Authority,
    server: &RedisServer,
    home: &tempfile::TempDir,
    i: usize,
) -> WatchProcess {
    let sink = home.path().join(format!("sink-{i}"));
    let child = Command::new(env!("CARGO_BIN_EXE_tokenkeeper"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home.path())
        .env("TOKENKEEPER_CLIENT_SECRET", SECRET)
        .args([
            "watch",
            "--token-url",
            &authority.token_url(),
            "--client-id",
            CLIENT_ID,
        ])
        .args(["--no-cache", "--redis", &server.url(), "--sink"])
        .arg(&sink)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tokenkeeper watch starts");
    WatchProcess { child, sink }
}

fn stop(p: WatchProcess) -> String {
    let _ = Command::new("kill")
        .args(["-TERM", &p.child.id().to_string()])
        .status();
    let out = p.child.wait_with_output().expect("watch ends");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = std::fs::read_to_string(&p.sink).unwrap_or_default();
    token.trim().to_owned()
}

/// 50 watcher threads and 10 `tokenkeeper watch --redis` processes, over
/// three token lifetimes, ask the authority no more than one lone instance
/// does in the same time, plus one.
/// Each scenario runs dozens of watchers and processes against tight
/// lifetimes (4 s tokens, 3 s leases); run together on two cores they
/// starve each other's timers and measure the machine instead of the
/// fleet. One at a time.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static FLEETS: Mutex<()> = Mutex::new(());
    FLEETS.lock().unwrap_or_else(PoisonError::into_inner)
}

#[test]
fn a_fleet_on_redis_asks_like_one_instance() {
    let _alone = one_at_a_time();
    let lifetime = Duration::from_secs(4);
    let run_for = lifetime * 3;
    let server = RedisServer::start(&[]);
    let home = tempfile::tempdir().expect("a folder");

    // The lone instance, against its own authority, at the same time.
    let lone_authority = authority(lifetime);
    let lone_settings = redis_settings(&server, "lone:", Duration::from_secs(10));
    let lone = std::thread::spawn(move || {
        let w = watcher(&lone_authority, &lone_settings);
        std::thread::sleep(run_for);
        w.shutdown();
        lone_authority.request_count()
    });

    let fleet_authority = Arc::new(authority(lifetime));
    // The default prefix, as the `watch` processes use.
    let settings = redis_settings(&server, "tokenkeeper:", Duration::from_secs(10));
    let started = Instant::now();
    let processes: Vec<_> = (0..10)
        .map(|i| watch_process(&fleet_authority, &server, &home, i))
        .collect();
    let threads: Vec<_> = (0..50)
        .map(|_| {
            let (a, s) = (Arc::clone(&fleet_authority), settings.clone());
            std::thread::spawn(move || {
                let w = watcher(&a, &s);
                let mut reads = 0u32;
                while started.elapsed() < run_for {
                    assert!(w.token().is_ok(), "a reader found no token");
                    reads += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                let token = w.token().expect("a token at the end");
                w.shutdown();
                (reads, token.access_token.expose_secret().to_owned())
            })
        })
        .collect();
    let results: Vec<_> = threads
        .into_iter()
        .map(|t| t.join().expect("a thread"))
        .collect();
    let sinks: Vec<String> = processes.into_iter().map(stop).collect();
    let lone_requests = lone.join().expect("the lone instance");
    let fleet_requests = fleet_authority.request_count();
    println!("lone instance: {lone_requests} requests; fleet of 60: {fleet_requests}");
    assert!(lone_requests >= 3, "three lifetimes need several tokens");
    assert!(
        fleet_requests <= lone_requests + 1,
        "fleet {fleet_requests} vs lone {lone_requests}: {:?}",
        fleet_authority.requests()
    );
    assert!(results.iter().all(|(reads, _)| *reads > 100));
    // Everyone ends on one of the last tokens issued.
    let issued: Vec<String> = fleet_authority
        .issued_tokens()
        .into_iter()
        .map(|t| t.access_token)
        .collect();
    let recent = &issued[issued.len().saturating_sub(2)..];
    for (_, token) in &results {
        assert!(recent.contains(token), "a thread ended on an old token");
    }
    for sink in &sinks {
        assert!(
            recent.contains(sink),
            "a watch process ended on an old token: {sink:?}"
        );
    }
}

/// A lease holder killed in the middle of its fetch delays the others by no
/// more than the lease's TTL.
#[test]
fn a_killed_lease_holder_delays_the_fleet_by_at_most_the_lease() {
    let _alone = one_at_a_time();
    let server = RedisServer::start(&[]);
    let home = tempfile::tempdir().expect("a folder");
    let authority = authority(Duration::from_secs(300));
    // The first request hangs: its sender is killed while waiting.
    authority.push_fault(Fault::Delay(Duration::from_secs(30)));
    let ttl = Duration::from_secs(3);
    let mut holder = Command::new(env!("CARGO_BIN_EXE_tokenkeeper"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home.path())
        .env("TOKENKEEPER_CLIENT_SECRET", SECRET)
        .args([
            "token",
            "--token-url",
            &authority.token_url(),
            "--client-id",
            CLIENT_ID,
        ])
        .args([
            "--no-cache",
            "--redis",
            &server.url(),
            "--redis-lease-ttl",
            "3",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("tokenkeeper token starts");
    assert!(
        authority.wait_for_requests(1, Duration::from_secs(10)),
        "the holder asked the authority"
    );
    let fetch_started = Instant::now();
    holder.kill().expect("kill");
    let _ = holder.wait();
    let settings = redis_settings(&server, "tokenkeeper:", ttl);
    let waiters: Vec<_> = (0..5)
        .map(|_| {
            let s = settings.clone();
            let a = authority.token_url();
            std::thread::spawn(move || {
                let client = OAuth2Client::new(
                    TokenUrl::parse(&a, false).expect("url"),
                    ClientId::new(CLIENT_ID),
                    Some(ClientSecret::new(SECRET)),
                    GrantType::ClientCredentials,
                );
                let key = CacheKey::for_client(&client);
                let w = TokenWatcher::builder(client)
                    .blocking_cache(BlockingRedisLayer::new(s, &key))
                    .spawn()
                    .expect("a token once the lease expired");
                let t = w.token().expect("a token");
                w.shutdown();
                t.access_token.expose_secret().to_owned()
            })
        })
        .collect();
    let tokens: Vec<String> = waiters
        .into_iter()
        .map(|t| t.join().expect("a waiter"))
        .collect();
    let waited = fetch_started.elapsed();
    assert!(
        waited <= ttl + Duration::from_millis(1_500),
        "waited {waited:?}"
    );
    assert!(tokens.iter().all(|t| *t == tokens[0]), "{tokens:?}");
    assert_eq!(authority.request_count(), 2, "{:?}", authority.requests());
}

/// Redis stopped mid-run and started again: no reader ever lacks a token,
/// and the layer is used again afterwards.
#[test]
fn redis_going_away_and_back_loses_no_reader_a_token() {
    let _alone = one_at_a_time();
    let mut server = RedisServer::start(&[]);
    let authority = authority(Duration::from_secs(3));
    let settings = redis_settings(&server, "flaky:", Duration::from_secs(5))
        .reconnect_delay(Duration::from_millis(200));
    let watchers: Vec<_> = (0..5).map(|_| watcher(&authority, &settings)).collect();
    let check = |watchers: &[TokenWatcher], for_: Duration| {
        let end = Instant::now() + for_;
        while Instant::now() < end {
            for w in watchers {
                assert!(w.token().is_ok(), "a reader found no token");
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    };
    check(&watchers, Duration::from_secs(2));
    server.stop();
    // Two lifetimes without Redis: everyone fetches for itself.
    check(&watchers, Duration::from_secs(6));
    server.restart();
    check(&watchers, Duration::from_secs(4));
    let mut conn = redis::Client::open(server.url())
        .expect("url")
        .get_connection()
        .expect("redis is back");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("flaky:*")
        .query(&mut conn)
        .expect("keys");
    assert!(
        !keys.is_empty(),
        "the layer is written again after the restart"
    );
    for w in watchers {
        w.shutdown();
    }
}
