//! The pool driven by a simulated driver on virtual time: it answers every
//! fetch it is handed at once (or when the test says) and jumps the clock to
//! the pool's next deadline.

use super::*;
use crate::cache::CacheKey;
use crate::clock::Monotonic;
use crate::jitter::Jitter;
use crate::refresher::RefresherConfig;
use crate::token::TokenGrant;

const HOUR: Duration = Duration::from_secs(3600);

fn at(ms: u64) -> Now {
    Now::new(
        Timestamp::from_secs(1_700_000_000).saturating_add(Duration::from_millis(ms)),
        Monotonic::from_millis(ms),
    )
}

fn refresher(n: u64, jitter: Jitter, now: Now) -> Refresher {
    let config =
        RefresherConfig::custom(CacheKey::custom("tenant", &[&n.to_string()])).jitter(jitter);
    Refresher::new(config, n, now)
}

fn grant(key: KeyId, serial: u64, lifetime: Duration) -> TokenGrant {
    TokenGrant::bearer(
        AccessToken::new(format!("token-{}-{serial}", key.get())),
        Some(lifetime),
    )
}

/// Answers `key`'s fetch `id` with its first token, lasting an hour.
fn grant_first(pool: &mut RefresherPool, now: Now, key: KeyId, id: EffectId) {
    let result = Ok(grant(key, 1, HOUR));
    pool.handle(now, key, Input::Grant { id, result }).unwrap();
}

/// Fetches handed out, in order.
fn drain_fetches(pool: &mut RefresherPool) -> Vec<(KeyId, EffectId)> {
    let mut fetches = Vec::new();
    while let Some((key, effect)) = pool.poll_effect() {
        match effect {
            Effect::Fetch { id, .. } => fetches.push((key, id)),
            other => panic!("unexpected effect {other:?}"),
        }
    }
    fetches
}

#[test]
fn the_cap_holds_and_keys_are_served_in_order() {
    let now = at(0);
    let mut pool = RefresherPool::new(PoolConfig::default().max_in_flight(4));
    for n in 0..100 {
        pool.insert(now, KeyId::new(n), refresher(n, Jitter::default(), now))
            .unwrap();
    }
    let mut handed: Vec<u64> = Vec::new();
    let mut waiting: VecDeque<(KeyId, EffectId)> = drain_fetches(&mut pool).into();
    handed.extend(waiting.iter().map(|(k, _)| k.get()));
    assert_eq!(waiting.len(), 4, "four handed out, the rest queued");
    assert_eq!(pool.queued(), 96);
    let mut serial = 0;
    // Answer the most recent fetch first: the queue still hands out keys in
    // the order they asked.
    while let Some((key, id)) = waiting.pop_back() {
        serial += 1;
        pool.handle(
            now,
            key,
            Input::Grant {
                id,
                result: Ok(grant(key, serial, HOUR)),
            },
        )
        .unwrap();
        assert!(pool.in_flight() <= 4);
        let more = drain_fetches(&mut pool);
        handed.extend(more.iter().map(|(k, _)| k.get()));
        waiting.extend(more);
        assert!(waiting.len() <= 4, "never more than the cap in flight");
    }
    assert_eq!(pool.peak_in_flight(), 4);
    assert_eq!(
        handed,
        (0..100).collect::<Vec<_>>(),
        "first come, first served"
    );
    let mut tokens = 0;
    while let Some((_, event)) = pool.poll_event() {
        tokens += usize::from(matches!(event, Event::TokenChanged { .. }));
    }
    assert_eq!(tokens, 100, "one token a key");
}

#[test]
fn a_queued_fetch_given_up_on_is_never_sent() {
    let now = at(0);
    let mut pool = RefresherPool::new(PoolConfig::default().max_in_flight(1));
    for n in 0..2 {
        let config = RefresherConfig::custom(CacheKey::custom("t", &[&n.to_string()]))
            .fetch_timeout(Duration::from_secs(1));
        pool.insert(now, KeyId::new(n), Refresher::new(config, n, now))
            .unwrap();
    }
    let first = drain_fetches(&mut pool);
    assert_eq!(first.len(), 1);
    // The first fetch hangs past both deadlines: the second key's fetch,
    // still queued, times out in its refresher.
    let later = at(1_500);
    assert!(pool.poll_sleep(now).unwrap() <= Duration::from_secs(1));
    pool.handle_timeout(later, |_| true);
    assert!(drain_fetches(&mut pool).is_empty(), "the cap still holds");
    // The hung fetch ends (late): its room is free, and the given-up fetch
    // is dropped rather than sent.
    let (key, id) = first[0];
    grant_first(&mut pool, later, key, id);
    assert_eq!(pool.in_flight(), 0);
    assert_eq!(pool.queued(), 0);
    assert!(drain_fetches(&mut pool).is_empty());
    // Each refresher retries on its own schedule (backoff) later.
    let retry = pool.poll_sleep(later).expect("a retry is planned");
    pool.handle_timeout(at(1_500 + retry.as_millis() as u64), |_| true);
    assert_eq!(drain_fetches(&mut pool).len(), 1);
}

#[test]
fn an_answer_for_a_removed_key_frees_its_room() {
    let now = at(0);
    let mut pool = RefresherPool::new(PoolConfig::default().max_in_flight(1));
    for n in 0..2 {
        pool.insert(now, KeyId::new(n), refresher(n, Jitter::default(), now))
            .unwrap();
    }
    let fetches = drain_fetches(&mut pool);
    let (key, id) = fetches[0];
    pool.remove(now, key);
    let removed = pool.poll_removed().expect("removed");
    assert_eq!((removed.key, removed.why), (key, Removal::ShutDown));
    assert!(removed.status.shut_down);
    assert!(!pool.contains(key));
    assert!(drain_fetches(&mut pool).is_empty());
    grant_first(&mut pool, now, key, id);
    assert_eq!(
        drain_fetches(&mut pool).len(),
        1,
        "the other key's fetch goes"
    );
}

#[test]
fn idle_keys_are_evicted_and_used_ones_kept() {
    let idle = Duration::from_secs(600);
    let now = at(0);
    let mut pool = RefresherPool::new(PoolConfig::default().evict_idle_after(idle));
    for n in 0..10 {
        pool.insert(now, KeyId::new(n), refresher(n, Jitter::default(), now))
            .unwrap();
    }
    for (key, id) in drain_fetches(&mut pool) {
        pool.handle(
            now,
            key,
            Input::Grant {
                id,
                result: Ok(grant(key, 1, 10 * HOUR)),
            },
        )
        .unwrap();
    }
    // Keys 0..5 are read all the time; 5..10 never.
    let mut t = 0;
    let mut removed = Vec::new();
    while t < 3 * 600_000 {
        let sleep = pool.poll_sleep(at(t)).expect("keys left");
        t += sleep.as_millis() as u64;
        pool.handle_timeout(at(t), |key| key.get() < 5);
        while let Some(Removed { key, why, .. }) = pool.poll_removed() {
            assert_eq!(why, Removal::Evicted);
            assert!(
                (600_000..=1_200_000).contains(&t),
                "evicted between idle and twice idle"
            );
            removed.push(key.get());
        }
    }
    removed.sort_unstable();
    assert_eq!(removed, vec![5, 6, 7, 8, 9]);
    assert_eq!(pool.len(), 5);
    assert!(
        pool.timers.len() <= 2 * pool.len() + 64,
        "stale timers are dropped"
    );
}

/// 10,000 keys created at once, 1 h tokens, 24 h of virtual time: the
/// refreshes after the first tokens spread out (no second holds more than
/// 2% of the keys), the idle pool sleeps between them, and the pool's timer
/// heap stays proportional to its keys.
#[test]
fn ten_thousand_keys_spread_their_refreshes_over_a_day() {
    const KEYS: u64 = 10_000;
    let mut pool = RefresherPool::new(PoolConfig::default().max_in_flight(16));
    let start = at(0);
    for n in 0..KEYS {
        pool.insert(
            start,
            KeyId::new(n),
            refresher(n, PoolConfig::default_jitter(), start),
        )
        .unwrap();
    }
    let mut per_second: HashMap<u64, u64> = HashMap::new();
    let mut serial = 0;
    let mut t = 0u64;
    let mut wakeups = 0u64;
    let day = 24 * 3_600_000;
    while t < day {
        loop {
            let fetches = drain_fetches(&mut pool);
            if fetches.is_empty() {
                break;
            }
            assert!(fetches.len() <= 16);
            for (key, id) in fetches {
                serial += 1;
                if t > 0 {
                    *per_second.entry(t / 1000).or_default() += 1;
                }
                // Answered 20 ms later: the cap and the queue matter.
                pool.handle(
                    at(t + 20),
                    key,
                    Input::Grant {
                        id,
                        result: Ok(grant(key, serial, HOUR)),
                    },
                )
                .unwrap();
            }
        }
        while pool.poll_event().is_some() {}
        assert!(pool.in_flight() <= 16);
        let sleep = pool.poll_sleep(at(t)).expect("keys have deadlines");
        t += sleep.as_millis().max(1) as u64;
        wakeups += 1;
        pool.handle_timeout(at(t), |_| true);
    }
    let refreshes: u64 = per_second.values().sum();
    let busiest = per_second.values().copied().max().unwrap();
    // About 32 refreshes a key (one per ~45 min) after the first token.
    assert!(
        refreshes > 28 * KEYS && refreshes < 36 * KEYS,
        "{refreshes}"
    );
    assert!(
        busiest <= KEYS / 50,
        "the busiest second held {busiest} refreshes, over 2% of {KEYS} keys"
    );
    // One wake-up serves every key due at once: far fewer than refreshes.
    assert!(
        wakeups < refreshes,
        "{wakeups} wake-ups for {refreshes} refreshes"
    );
    assert!(pool.timers.len() <= 2 * pool.len() + 64);
    eprintln!("{refreshes} refreshes, busiest second {busiest}, {wakeups} wake-ups");
}

/// A pool holds a refresher per key: its size is part of every key's cost
/// (issue 14 budgets 2 KiB a key beyond the token), so it may not creep up.
#[test]
fn a_refresher_stays_small() {
    assert!(size_of::<Refresher>() <= 1024, "{}", size_of::<Refresher>());
    assert!(size_of::<Slot>() <= 64);
    assert_eq!(size_of::<crate::refresher::Source>(), 8);
}

#[test]
fn key_ids_hash_apart_and_spread_over_the_high_bits() {
    use std::hash::{BuildHasher, BuildHasherDefault};
    let build = BuildHasherDefault::<KeyIdHasher>::default();
    // A counter's ids: no two alike, and the top seven bits (the tag a
    // hash table compares first) take every value over a short run.
    let hashes: Vec<u64> = (0..4_096).map(|n| build.hash_one(KeyId::new(n))).collect();
    let distinct: HashSet<u64> = hashes.iter().copied().collect();
    assert_eq!(distinct.len(), hashes.len());
    let tags: HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
    assert_eq!(tags.len(), 128);
    // The bits a table picks its bucket with are the id's: consecutive ids
    // go to consecutive buckets, whatever the table's size.
    for mask in [0xff, 0xfff, 0xffff] {
        assert!(
            hashes
                .windows(2)
                .all(|w| (w[1] & mask) == ((w[0] + 1) & mask))
        );
    }
    // Keys of several parts depend on every part, and on their order.
    let pair = |a, b| build.hash_one((KeyId::new(a), KeyId::new(b)));
    assert_ne!(pair(1, 2), pair(2, 1));
    assert_ne!(pair(1, 2), pair(1, 3));
    assert_ne!(pair(1, 2), build.hash_one(KeyId::new(2)));
    // A map keyed by them works as a map.
    let mut map: KeyIdMap<u64> = KeyIdMap::default();
    for n in 0..1_000 {
        map.insert(KeyId::new(n), n * 2);
    }
    assert!((0..1_000).all(|n| map.get(&KeyId::new(n)) == Some(&(n * 2))));
    assert_eq!(map.get(&KeyId::new(1_000)), None);
}

#[test]
fn a_key_is_filed_under_its_last_deadline_of_a_turn_only() {
    // A new key settles twice before the driver next asks when to wake:
    // taken in (its fetch's deadline), then its token (the refresh). Only
    // the second goes onto the timer heap; the first would be a stale
    // entry that a walk down a heap of every key removes later.
    let now = at(0);
    let mut pool = RefresherPool::new(PoolConfig::default());
    let key = KeyId::new(7);
    pool.insert(now, key, refresher(7, Jitter::none(), now))
        .unwrap();
    let [(_, id)] = drain_fetches(&mut pool)[..] else {
        panic!("one fetch");
    };
    grant_first(&mut pool, now, key, id);
    assert!(
        pool.timers.is_empty(),
        "filed when asked, not at each settle"
    );
    let sleep = pool.poll_sleep(now).expect("a deadline");
    assert_eq!(pool.timers.len(), 1);
    // The refresh, not the fetch's deadline, and the key is refreshed then.
    assert!(sleep > HOUR / 2, "{sleep:?}");
    pool.handle_timeout(at(u64::try_from(sleep.as_millis()).unwrap()), |_| true);
    assert_eq!(drain_fetches(&mut pool).len(), 1);
}

#[test]
fn a_fetch_started_before_its_key_joined_counts_in_flight_until_answered() {
    let now = at(0);
    let mut pool = RefresherPool::new(PoolConfig::default().max_in_flight(1));
    pool.insert(now, KeyId::new(0), refresher(0, Jitter::default(), now))
        .unwrap();
    let first = drain_fetches(&mut pool);
    assert_eq!(first.len(), 1);
    // A watcher's first fetch, started by its caller: the key's refresher
    // asked for it, and the caller took the effect out itself.
    let mut started = refresher(1, Jitter::default(), now);
    let id = match started.peek_effect() {
        Some(Effect::Fetch { id, .. }) => *id,
        other => panic!("a first fetch, not {other:?}"),
    };
    assert!(matches!(started.poll_effect(), Some(Effect::Fetch { .. })));
    assert!(started.peek_effect().is_none(), "peeking took nothing");
    pool.insert_fetching(now, KeyId::new(1), started, id)
        .unwrap();
    assert_eq!(pool.in_flight(), 2, "beyond the cap: it runs already");
    assert_eq!(pool.peak_in_flight(), 2);
    assert!(drain_fetches(&mut pool).is_empty(), "not handed out again");
    grant_first(&mut pool, now, KeyId::new(1), id);
    assert_eq!(pool.in_flight(), 1, "its answer frees its room");
    assert!(pool.get(KeyId::new(1)).unwrap().token().is_some());
    assert!(
        pool.insert_fetching(now, KeyId::new(1), refresher(1, Jitter::default(), now), id)
            .is_err(),
        "an id in use is refused"
    );
    assert_eq!(pool.in_flight(), 1, "and counts nothing");
}
