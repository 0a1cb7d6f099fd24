//! The Redis layer against a real `redis-server`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use tokenkeeper_core::cache::{decode_record, encode_record};
use tokenkeeper_core::{
    AccessToken, CacheErrorKind, CacheKey, EncodedRecord, LeaseOutcome, LifetimePolicy, Timestamp,
    TokenGrant,
};
use tokenkeeper_redis::{AsyncRedisLayer, BlockingRedisLayer, RedisSettings};
use tokenkeeper_testkit::RedisServer;

fn key(name: &str) -> CacheKey {
    CacheKey::custom("redis-test", &[name, &fastrand::u64(..).to_string()])
}

fn record(k: &CacheKey, token: &str, life_secs: u64) -> EncodedRecord {
    let now = Timestamp::from_system_time(SystemTime::now());
    let rec = LifetimePolicy::default().record(
        TokenGrant::bearer(
            AccessToken::new(token),
            Some(Duration::from_secs(life_secs)),
        ),
        now,
        None,
    );
    encode_record(k, &rec)
}

fn token_of(k: &CacheKey, bytes: &[u8]) -> String {
    decode_record(k, bytes)
        .unwrap()
        .access_token
        .expose_secret()
        .to_owned()
}

fn raw(server: &RedisServer) -> redis::Connection {
    redis::Client::open(server.url())
        .unwrap()
        .get_connection()
        .unwrap()
}

#[test]
fn records_round_trip_expire_with_the_token_and_never_go_backwards() {
    let server = RedisServer::start(&[]);
    let k = key("rt");
    let layer = BlockingRedisLayer::new(RedisSettings::new(&server.url()).unwrap(), &k);
    assert_eq!(layer.read().unwrap(), None);
    layer.write(&record(&k, "long", 600)).unwrap();
    assert_eq!(token_of(&k, &layer.read().unwrap().unwrap()), "long");
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&layer.keys().record)
        .query(&mut raw(&server))
        .unwrap();
    assert!((595_000..=600_000).contains(&pttl), "{pttl}");
    // An older (earlier-expiring) record does not replace a newer one.
    layer.write(&record(&k, "short", 60)).unwrap();
    assert_eq!(token_of(&k, &layer.read().unwrap().unwrap()), "long");
    // An expired record is not stored at all.
    let other = key("expired");
    let expired = BlockingRedisLayer::new(RedisSettings::new(&server.url()).unwrap(), &other);
    let now = Timestamp::from_system_time(SystemTime::now());
    let dead = LifetimePolicy::default().record(
        TokenGrant::bearer(AccessToken::new("dead"), Some(Duration::from_secs(1))),
        now.saturating_sub(Duration::from_secs(10)),
        None,
    );
    expired.write(&encode_record(&other, &dead)).unwrap();
    assert_eq!(expired.read().unwrap(), None);
}

#[test]
fn garbage_in_redis_is_a_miss_and_gets_replaced() {
    let server = RedisServer::start(&[]);
    let k = key("garbage");
    let layer = BlockingRedisLayer::new(RedisSettings::new(&server.url()).unwrap(), &k);
    let mut conn = raw(&server);
    // A value of the wrong type: reading is an error (the refresher's miss).
    let _: () = redis::cmd("SET")
        .arg(&layer.keys().record)
        .arg("junk")
        .query(&mut conn)
        .unwrap();
    let err = layer.read().unwrap_err();
    assert_eq!(err.kind, CacheErrorKind::Other, "{err}");
    layer.write(&record(&k, "fixed", 600)).unwrap();
    assert_eq!(token_of(&k, &layer.read().unwrap().unwrap()), "fixed");
    // A hash with a corrupt record and expiry: the bytes come back for the core
    // to reject, and a write replaces them.
    let _: () = redis::cmd("HSET")
        .arg(&layer.keys().record)
        .arg("record")
        .arg("{not json")
        .arg("expiry")
        .arg("soon")
        .query(&mut conn)
        .unwrap();
    let bytes = layer.read().unwrap().unwrap();
    assert!(decode_record(&k, &bytes).is_err());
    layer.write(&record(&k, "fixed-again", 600)).unwrap();
    assert_eq!(token_of(&k, &layer.read().unwrap().unwrap()), "fixed-again");
}

#[test]
fn the_lease_is_exclusive_owned_and_expires_by_itself() {
    let server = RedisServer::start(&[]);
    let k = key("lease");
    let a = BlockingRedisLayer::new(RedisSettings::new(&server.url()).unwrap(), &k);
    let b = BlockingRedisLayer::new(RedisSettings::new(&server.url()).unwrap(), &k);
    let ttl = Duration::from_millis(400);
    assert_eq!(a.try_acquire(ttl), LeaseOutcome::Acquired);
    assert_eq!(
        a.try_acquire(ttl),
        LeaseOutcome::Acquired,
        "renewal by its owner"
    );
    assert_eq!(b.try_acquire(ttl), LeaseOutcome::HeldByOther);
    // Only the owner can release it.
    b.release().unwrap();
    assert_eq!(b.try_acquire(ttl), LeaseOutcome::HeldByOther);
    a.release().unwrap();
    assert_eq!(b.try_acquire(ttl), LeaseOutcome::Acquired);
    // A holder that never releases (crashed) delays others by the TTL at most.
    std::thread::sleep(ttl + Duration::from_millis(100));
    assert_eq!(a.try_acquire(ttl), LeaseOutcome::Acquired);
}

#[test]
fn subscribers_hear_of_every_write() {
    let server = RedisServer::start(&[]);
    let k = key("notify");
    let writer = BlockingRedisLayer::new(RedisSettings::new(&server.url()).unwrap(), &k);
    let listener = BlockingRedisLayer::new(RedisSettings::new(&server.url()).unwrap(), &k);
    let heard = Arc::new(AtomicUsize::new(0));
    let h = heard.clone();
    let sub = listener.subscribe(move || {
        h.fetch_add(1, Ordering::SeqCst);
    });
    std::thread::sleep(Duration::from_millis(300));
    writer.write(&record(&k, "one", 600)).unwrap();
    writer.write(&record(&k, "two", 700)).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while heard.load(Ordering::SeqCst) < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(heard.load(Ordering::SeqCst), 2);
    drop(sub);
}

#[test]
fn an_unreachable_redis_fails_fast_and_is_used_again_when_back() {
    let mut server = RedisServer::start(&[]);
    let k = key("down");
    let settings = RedisSettings::new(&server.url())
        .unwrap()
        .reconnect_delay(Duration::from_millis(300));
    let layer = BlockingRedisLayer::new(settings, &k);
    layer.write(&record(&k, "before", 600)).unwrap();
    server.stop();
    let started = std::time::Instant::now();
    let err = layer.read().unwrap_err();
    assert_eq!(err.kind, CacheErrorKind::Unavailable, "{err}");
    assert!(matches!(
        layer.try_acquire(Duration::from_secs(1)),
        LeaseOutcome::Failed(_)
    ));
    assert!(layer.write(&record(&k, "x", 600)).is_err());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    server.restart();
    std::thread::sleep(Duration::from_millis(350));
    assert_eq!(
        layer.read().unwrap(),
        None,
        "a restarted, empty Redis is a plain miss"
    );
    layer.write(&record(&k, "after", 600)).unwrap();
    assert_eq!(token_of(&k, &layer.read().unwrap().unwrap()), "after");
}

#[test]
fn a_slow_redis_times_out() {
    let server = RedisServer::start(&["--enable-debug-command", "yes"]);
    let k = key("slow");
    let settings = RedisSettings::new(&server.url())
        .unwrap()
        .op_timeout(Duration::from_millis(200));
    let layer = BlockingRedisLayer::new(settings, &k);
    assert_eq!(layer.read().unwrap(), None);
    // Freeze the server for a second.
    let mut conn = raw(&server);
    let freezer = std::thread::spawn(move || {
        let slept: redis::RedisResult<()> =
            redis::cmd("DEBUG").arg("SLEEP").arg("1").query(&mut conn);
        slept.expect("DEBUG SLEEP is enabled");
    });
    std::thread::sleep(Duration::from_millis(100));
    let started = std::time::Instant::now();
    let err = layer.read().unwrap_err();
    assert_eq!(err.kind, CacheErrorKind::Timeout, "{err}");
    assert!(started.elapsed() < Duration::from_millis(800));
    freezer.join().unwrap();
}

#[test]
fn passwords_and_acl_users_come_from_the_url_and_stay_secret() {
    let server = RedisServer::start(&[
        "--user",
        "default",
        "off",
        "--user",
        "fleet",
        "on",
        ">hunter2-secret",
        "~*",
        "&*",
        "+@all",
    ]);
    let k = key("acl");
    let url = format!("redis://fleet:hunter2-secret@127.0.0.1:{}/", server.port());
    let settings = RedisSettings::new(&url).unwrap();
    assert!(!format!("{settings:?}").contains("hunter2"));
    let layer = BlockingRedisLayer::new(settings, &k);
    layer.write(&record(&k, "acl-ok", 600)).unwrap();
    assert_eq!(token_of(&k, &layer.read().unwrap().unwrap()), "acl-ok");
    let wrong = format!("redis://fleet:wrong-pass-xyz@127.0.0.1:{}/", server.port());
    let layer = BlockingRedisLayer::new(RedisSettings::new(&wrong).unwrap(), &k);
    let err = layer.read().unwrap_err();
    assert!(!err.to_string().contains("wrong-pass-xyz"), "{err}");
    assert!(!format!("{layer:?}").contains("wrong-pass-xyz"));
    assert!(RedisSettings::new("http://nope").is_err());
}

async fn async_round_trip(layer: &AsyncRedisLayer, k: &CacheKey) {
    assert_eq!(layer.read().await.unwrap(), None);
    layer.write(&record(k, "async", 600)).await.unwrap();
    assert_eq!(token_of(k, &layer.read().await.unwrap().unwrap()), "async");
    assert_eq!(
        layer.try_acquire(Duration::from_secs(5)).await,
        LeaseOutcome::Acquired
    );
    layer.release().await.unwrap();
}

#[test]
fn the_async_layer_works_on_tokio() {
    let server = RedisServer::start(&[]);
    let k = key("tokio");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let layer = Arc::new(AsyncRedisLayer::new(
            RedisSettings::new(&server.url()).unwrap(),
            &k,
        ));
        let heard = Arc::new(AtomicUsize::new(0));
        let (l, h) = (layer.clone(), heard.clone());
        let watcher = tokio::spawn(async move {
            l.watch_changes(
                move || {
                    h.fetch_add(1, Ordering::SeqCst);
                },
                tokio::time::sleep,
            )
            .await;
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        async_round_trip(&layer, &k).await;
        for _ in 0..100 {
            if heard.load(Ordering::SeqCst) > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(heard.load(Ordering::SeqCst), 1);
        watcher.abort();
    });
}

#[test]
fn the_async_layer_works_on_smol() {
    let server = RedisServer::start(&[]);
    let k = key("smol");
    smol::block_on(async {
        let layer = AsyncRedisLayer::new(RedisSettings::new(&server.url()).unwrap(), &k);
        async_round_trip(&layer, &k).await;
    });
}
