//! The keyed pool, on every driver, against the testkit authority over real
//! loopback HTTP: single flight per key, the cap on requests in flight,
//! eviction, a broken key beside healthy ones, forced refreshes.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::Flavor;
use tokenkeeper_core::oauth2::OAuth2Client;
use tokenkeeper_core::{
    AccessToken, CacheKey, ClientId, ClientSecret, Health, HealthReason, RefreshNow, TokenGrant,
};
use tokenkeeper_driver::{Source, SpawnError, TokenError, TokenPool, TokenPoolBuilder};
use tokenkeeper_testkit::{Authority, Client, Fault};

per_driver!(
    a_thousand_first_calls_for_one_key_make_one_request,
    the_cap_on_requests_in_flight_holds,
    idle_keys_are_evicted_and_read_ones_kept,
    a_refused_key_is_broken_alone,
    a_bad_key_is_an_error_not_a_panic,
    refresh_now_refreshes_one_key,
    insert_all_holds_every_key_and_stops_at_a_refused_one,
    what_is_asked_after_an_insert_finds_the_key,
);

/// One pool test at a time: each starts an authority and a pool's driver,
/// and one starts a thousand threads; run side by side on a loaded 2-core
/// machine, their timing stopped meaning anything (seen in CI).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Keys are tenants; each tenant is a client of the authority.
type Pool<F> = TokenPool<String, <F as Flavor>::R>;

fn pool<F: Flavor>(authority: &Authority) -> TokenPoolBuilder<String, F::R> {
    let url = authority.token_url();
    TokenPoolBuilder::new(F::runtime(), move |tenant: &String| {
        OAuth2Client::client_credentials(
            url.as_str(),
            ClientId::new(tenant.clone()),
            ClientSecret::new(format!("secret-of-{tenant}")),
        )
    })
    .first_token_timeout(Duration::from_secs(60))
    .name("tenants")
}

fn register(authority: &Authority, tenants: impl IntoIterator<Item = String>) {
    for tenant in tenants {
        let secret = format!("secret-of-{tenant}");
        authority.register_client(Client::new(tenant, secret));
    }
}

fn tenant(n: usize) -> String {
    format!("tenant-{n}")
}

fn a_thousand_first_calls_for_one_key_make_one_request<F: Flavor>() {
    let _serial = one_at_a_time();
    let authority = Authority::start();
    register(&authority, [tenant(0)]);
    // The answer takes a while: every call comes while the first request
    // is still out.
    authority.push_fault(Fault::Delay(Duration::from_millis(300)));
    let pool: Pool<F> = pool::<F>(&authority).build().unwrap();
    let key = tenant(0);
    let tokens: HashSet<String> = std::thread::scope(|scope| {
        let calls: Vec<_> = (0..1000)
            .map(|_| {
                scope.spawn(|| {
                    let token = F::block_on(pool.get(&key)).expect("a token");
                    token.access_token.expose_secret().to_owned()
                })
            })
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    assert_eq!(
        tokens.len(),
        1,
        "{}: every caller got the same token",
        F::NAME
    );
    assert_eq!(
        authority.request_count(),
        1,
        "{}: one request for 1,000 calls",
        F::NAME
    );
    assert_eq!(pool.len(), 1);
    F::block_on(pool.shutdown());
}

fn the_cap_on_requests_in_flight_holds<F: Flavor>() {
    let _serial = one_at_a_time();
    let authority = Authority::start();
    let keys: Vec<String> = (0..40).map(tenant).collect();
    register(&authority, keys.clone());
    authority.script(Fault::Delay(Duration::from_millis(100)), 40);
    let pool: Pool<F> = pool::<F>(&authority).max_in_flight(4).build().unwrap();
    for key in &keys {
        pool.insert(key.clone()).unwrap();
    }
    for key in &keys {
        F::block_on(pool.get(key)).expect("every key gets its token");
    }
    // One token per key (a request that failed under load may have been
    // retried: the cap holds for retries too).
    assert_eq!(authority.count_by_status(200), 40, "{}", F::NAME);
    let peak = authority.peak_concurrent_requests();
    assert!(
        peak <= 4,
        "{}: {peak} requests at once, over the cap of 4",
        F::NAME
    );
    assert!(
        peak >= 2,
        "{}: the cap is a cap, not a queue of one ({peak})",
        F::NAME
    );
    F::block_on(pool.shutdown());
}

fn idle_keys_are_evicted_and_read_ones_kept<F: Flavor>() {
    let _serial = one_at_a_time();
    let authority = Authority::start();
    let keys: Vec<String> = (0..6).map(tenant).collect();
    register(&authority, keys.clone());
    let pool: Pool<F> = pool::<F>(&authority)
        .evict_idle_after(Duration::from_secs(2))
        .wake_interval(Duration::from_millis(50))
        .build()
        .unwrap();
    let setup = Instant::now();
    for key in &keys {
        F::block_on(pool.get(key)).unwrap();
    }
    // (On a machine so loaded that setting up took most of the idle time,
    // the first keys may already be on their way out.)
    if setup.elapsed() < Duration::from_secs(1) {
        assert_eq!(pool.len(), 6, "{}", F::NAME);
    }
    // What the unread keys hold, watched without being kept alive: once
    // they are evicted, nothing may hold their tokens any more.
    let unread_tokens: Vec<std::sync::Weak<_>> = keys[3..]
        .iter()
        .map(|key| std::sync::Arc::downgrade(&pool.token(key).unwrap().into_arc()))
        .collect();
    let read = &keys[..3];
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20) && pool.len() > 3 {
        for key in read {
            pool.token(key).expect("a read key keeps its token");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(pool.len(), 3, "{}: the unread keys left", F::NAME);
    for key in read {
        assert!(pool.contains(key), "{}: {key} was read and stays", F::NAME);
    }
    for key in &keys[3..] {
        assert!(
            !pool.contains(key),
            "{}: {key} was not read and left",
            F::NAME
        );
        assert!(F::block_on(pool.status(key)).is_none());
    }
    // Their memory is freed: no driver state, map entry or handle still
    // holds their tokens.
    let started = Instant::now();
    while unread_tokens.iter().any(|t| t.upgrade().is_some()) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{}: an evicted key's token is still held",
            F::NAME
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Asked for again, an evicted key starts afresh.
    let requests = authority.request_count();
    F::block_on(pool.get(&keys[5])).expect("a new token");
    assert_eq!(authority.request_count(), requests + 1);
    F::block_on(pool.shutdown());
}

fn a_refused_key_is_broken_alone<F: Flavor>() {
    let _serial = one_at_a_time();
    let authority = Authority::start();
    let keys: Vec<String> = (0..4).map(tenant).collect();
    // tenant-3 is unknown to the authority: invalid_client, for good.
    register(&authority, keys[..3].to_vec());
    let pool: Pool<F> = pool::<F>(&authority).build().unwrap();
    let refused = F::block_on(pool.get(&keys[3])).expect_err("refused");
    assert!(
        matches!(refused, SpawnError::Rejected { .. }),
        "{}: {refused}",
        F::NAME
    );
    for key in &keys[..3] {
        F::block_on(pool.get(key)).expect("the other keys are served");
        assert_eq!(
            F::block_on(pool.health(key)),
            Some(Health::Ready),
            "{}: {key}",
            F::NAME
        );
    }
    match F::block_on(pool.health(&keys[3])) {
        Some(Health::Broken { reason }) => {
            assert!(
                matches!(
                    reason,
                    HealthReason::Refused { .. } | HealthReason::NoToken { .. }
                ),
                "{}: {reason}",
                F::NAME
            );
        }
        other => panic!("{}: the refused key is {other:?}", F::NAME),
    }
    // Asked again, the refusal comes at once, without a wait.
    let started = Instant::now();
    assert!(F::block_on(pool.get(&keys[3])).is_err());
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(matches!(
        pool.token(&keys[3]),
        Err(TokenError::Unavailable { .. })
    ));
    let summary = F::block_on(pool.health_summary());
    assert_eq!((summary.ready, summary.broken), (3, 1), "{}", F::NAME);
    F::block_on(pool.shutdown());
}

fn a_bad_key_is_an_error_not_a_panic<F: Flavor>() {
    let _serial = one_at_a_time();
    let authority = Authority::start();
    let pool: Pool<F> = TokenPoolBuilder::new(F::runtime(), |tenant: &String| {
        OAuth2Client::client_credentials(
            format!("not a url for {tenant}").as_str(),
            ClientId::new(tenant.clone()),
            ClientSecret::new("s"),
        )
    })
    .build()
    .unwrap();
    let error = F::block_on(pool.get(&tenant(1))).expect_err("no source");
    assert!(matches!(error, SpawnError::InvalidKey { .. }), "{error}");
    assert!(!pool.contains(&tenant(1)));
    assert_eq!(pool.token(&tenant(1)).err(), Some(TokenError::Stopped));
    assert_eq!(authority.request_count(), 0);
    F::block_on(pool.shutdown());
}

/// Keys known up front, handed over in batches: every one is held and gets
/// its own token with one request; a key the factory refuses stops the
/// call with its error, after the keys before it and before any after it.
fn insert_all_holds_every_key_and_stops_at_a_refused_one<F: Flavor>() {
    let _serial = one_at_a_time();
    let authority = Authority::start();
    // More than one batch of the driver's.
    let keys: Vec<String> = (0..600).map(tenant).collect();
    register(&authority, keys.clone());
    let url = authority.token_url();
    let pool: Pool<F> = TokenPoolBuilder::new(F::runtime(), move |tenant: &String| {
        if tenant == "refused" {
            return Err("not a tenant".to_owned());
        }
        OAuth2Client::client_credentials(
            url.as_str(),
            ClientId::new(tenant.clone()),
            ClientSecret::new(format!("secret-of-{tenant}")),
        )
        .map_err(|e| e.to_string())
    })
    .first_token_timeout(Duration::from_secs(60))
    .build()
    .unwrap();
    // One key held already: left as it is.
    F::block_on(pool.get(&keys[0])).expect("a first token");
    pool.insert_all(keys.iter().cloned()).unwrap();
    assert_eq!(pool.len(), 600, "{}", F::NAME);
    let mut tokens = HashSet::new();
    for key in &keys {
        let token = F::block_on(pool.get(key)).expect("every key gets its token");
        tokens.insert(token.access_token.expose_secret().to_owned());
    }
    assert_eq!(tokens.len(), 600, "{}: a token of its own per key", F::NAME);
    assert_eq!(authority.count_by_status(200), 600, "{}", F::NAME);

    let more = ["tenant-600", "refused", "tenant-601"].map(String::from);
    register(&authority, [more[0].clone(), more[2].clone()]);
    let error = pool
        .insert_all(more.iter().cloned())
        .expect_err("a refused key");
    assert!(matches!(error, SpawnError::InvalidKey { .. }), "{error}");
    assert!(
        pool.contains(&more[0]),
        "{}: the key before it is held",
        F::NAME
    );
    assert!(
        !pool.contains(&more[1]) && !pool.contains(&more[2]),
        "{}",
        F::NAME
    );
    F::block_on(pool.get(&more[0])).expect("its token");
    F::block_on(pool.shutdown());
}

fn refresh_now_refreshes_one_key<F: Flavor>() {
    let _serial = one_at_a_time();
    let authority = Authority::start();
    let keys: Vec<String> = (0..3).map(tenant).collect();
    register(&authority, keys.clone());
    let pool: Pool<F> = pool::<F>(&authority).build().unwrap();
    for key in &keys {
        F::block_on(pool.get(key)).unwrap();
    }
    let before = pool.token(&keys[1]).unwrap().into_arc();
    assert_eq!(
        F::block_on(pool.refresh_now(&keys[1])),
        Ok(RefreshNow::Started)
    );
    assert!(authority.wait_for_requests(4, Duration::from_secs(10)));
    let started = Instant::now();
    while pool.token(&keys[1]).unwrap().access_token == before.access_token {
        assert!(started.elapsed() < Duration::from_secs(10), "no new token");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(authority.count_by_client(&keys[1]), 2);
    assert_eq!(authority.count_by_client(&keys[0]), 1);
    F::block_on(pool.shutdown());
    assert_eq!(pool.token(&keys[0]).err(), Some(TokenError::Stopped));
}

/// New keys reach the driver through an inbox it takes in a few hundred at
/// a time, while commands come through its request queue: whatever is
/// asked after an insert must still find the key added (a status, a
/// removal that stops it), and a pool shut down takes no more keys.
fn what_is_asked_after_an_insert_finds_the_key<F: Flavor>() {
    let _serial = one_at_a_time();
    let fetches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&fetches);
    let pool: Pool<F> = TokenPoolBuilder::new(F::runtime(), move |tenant: &String| {
        let counted = std::sync::Arc::clone(&counted);
        let token = format!("token-of-{tenant}");
        Ok::<_, String>(Source::from_blocking_fn(
            CacheKey::custom("inbox", &[tenant]),
            move |_| {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok(TokenGrant::bearer(
                    AccessToken::new(token.clone()),
                    Some(Duration::from_secs(3600)),
                ))
            },
        ))
    })
    .build()
    .unwrap();
    // Far more keys than the driver takes in one turn, then at once a
    // question about the last one and the removal of another.
    let keys: Vec<String> = (0..3000).map(tenant).collect();
    for key in &keys {
        pool.insert(key.clone()).unwrap();
    }
    let last = F::block_on(pool.status(&keys[2999]));
    assert!(last.is_some(), "{}: the driver holds the last key", F::NAME);
    pool.remove(&keys[2998]);
    for key in keys.iter().take(2998) {
        let token = F::block_on(pool.get(key)).expect("every key gets its token");
        assert_eq!(
            token.access_token.expose_secret(),
            format!("token-of-{key}")
        );
    }
    F::block_on(pool.get(&keys[2999])).expect("the last key's token");
    assert!(!pool.contains(&keys[2998]), "{}", F::NAME);
    assert_eq!(pool.len(), 2999, "{}", F::NAME);
    // The driver stopped the removed key: a health summary counts the
    // others alone, each ready.
    let health = F::block_on(pool.health_summary());
    assert_eq!(health.ready, 2999, "{}: {health:?}", F::NAME);
    assert_eq!(
        health.degraded + health.broken,
        0,
        "{}: {health:?}",
        F::NAME
    );
    assert!(fetches.load(std::sync::atomic::Ordering::SeqCst) <= 3000);

    F::block_on(pool.shutdown());
    let late = tenant(5000);
    assert!(
        matches!(pool.insert(late.clone()), Err(SpawnError::Stopped)),
        "{}: a pool shut down takes no keys",
        F::NAME
    );
    assert!(!pool.contains(&late), "{}", F::NAME);
    assert_eq!(pool.token(&late).err(), Some(TokenError::Stopped));
}
