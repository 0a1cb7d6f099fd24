//! Many tokens in one process: memory, creation cost and idle wake-ups of
//! one scenario, printed as one JSON line. `scripts/bench-many-tokens.sh`
//! runs every scenario in a process of its own and prints the table of
//! `docs/performance.md`.
//!
//! ```text
//! cargo run --release -p tokenkeeper-bench --example many_tokens -- SCENARIO N [IDLE_SECS]
//! ```
//!
//! Scenarios, each holding N 900-byte tokens from an in-memory source, on
//! tokio with two worker threads:
//!
//! - `floor`: a `HashMap` of `ArcSwap`s, the least any cache could hold;
//! - `pool`: one `TokenPool` with N keys (creation measured without the
//!   fetch: `insert`, then every first token awaited), whose source makes
//!   each token when asked, as an OAuth2 source does;
//! - `pool-up-front`: the same with the keys created together
//!   (`insert_all`);
//! - `watchers`: N `TokenWatcher`s of this project (`spawn`, which waits
//!   for the first token), whose source keeps a copy of its token;
//! - `aliri`: N aliri_tokens 0.3.2 watchers (`spawn_from_token_source`,
//!   which also waits for it), with `ConstTokenSource`, which keeps a copy
//!   of its token as ours does.
//!
//! Memory is the process's resident set before and after, from
//! `/proc/self/statm`; wake-ups are the context switches of all the
//! process's threads over the idle window, from `/proc/self/task/*/status`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokenkeeper_core::{AccessToken, CacheKey, TokenGrant};
use tokenkeeper_driver::Source;
use tokenkeeper_tokio::{TokenPool, TokenWatcher};

const TOKEN_BYTES: usize = 900;
const DAY: Duration = Duration::from_secs(24 * 3600);

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("resident pages");
    pages * 4096
}

/// Context switches of every thread of this process so far.
fn context_switches() -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let Ok(task) = task else { continue };
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        for line in status.lines() {
            if line.starts_with("voluntary_ctxt_switches:")
                || line.starts_with("nonvoluntary_ctxt_switches:")
            {
                total += line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    total
}

fn token_text(n: usize) -> String {
    let mut text = format!("token-{n}-");
    while text.len() < TOKEN_BYTES {
        text.push('x');
    }
    text.shrink_to_fit();
    text
}

fn key(n: usize) -> String {
    format!("tenant-{n:07}")
}

/// An in-memory source that makes each token when asked (as an OAuth2
/// source does): the pool's, so that the token's own bytes are those held.
fn making_source(n: usize) -> Source {
    Source::from_fn(CacheKey::custom("bench", &[&key(n)]), move |_| async move {
        Ok(TokenGrant::bearer(
            AccessToken::new(token_text(n)),
            Some(DAY),
        ))
    })
}

/// An in-memory source that keeps its copy and hands out a new one per
/// fetch, as aliri_tokens' `ConstTokenSource` does: the watchers', so that
/// both sides hold the same bytes.
fn copying_source(n: usize) -> Source {
    let text: Arc<str> = token_text(n).into();
    Source::from_fn(CacheKey::custom("bench", &[&key(n)]), move |_| {
        let text = Arc::clone(&text);
        async move {
            Ok(TokenGrant::bearer(
                AccessToken::new(text.to_string()),
                Some(DAY),
            ))
        }
    })
}

struct Measured {
    create_us_per_key: f64,
    /// Until the driver holds every key (the pool takes new keys in on its
    /// driver's thread): the caller's cost and the driver's together.
    held_us_per_key: f64,
    /// Kept alive until the idle window has been measured.
    _held: Box<dyn std::any::Any>,
}

impl Measured {
    /// A scenario whose keys are held when created.
    fn at_once(took: Duration, n: usize, held: Box<dyn std::any::Any>) -> Self {
        let per_key = took.as_secs_f64() * 1e6 / n as f64;
        Measured {
            create_us_per_key: per_key,
            held_us_per_key: per_key,
            _held: held,
        }
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let scenario = args.next().unwrap_or_else(|| "pool".to_owned());
    let n: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(100_000);
    let idle = Duration::from_secs(args.next().and_then(|s| s.parse().ok()).unwrap_or(20));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let keys: Vec<String> = (0..n).map(key).collect();
    // Let the runtime's threads start before the first reading.
    runtime.block_on(async { tokio::time::sleep(Duration::from_millis(100)).await });
    let before = resident_bytes();

    let measured = match scenario.as_str() {
        "floor" => {
            let started = Instant::now();
            let mut map: HashMap<String, ArcSwap<String>> = HashMap::new();
            for (i, key) in keys.iter().enumerate() {
                map.insert(key.clone(), ArcSwap::from_pointee(token_text(i)));
            }
            Measured::at_once(started.elapsed(), n, Box::new(map))
        }
        "pool" | "pool-up-front" => runtime.block_on(async {
            let pool = TokenPool::builder(|tenant: &String| {
                let n: usize = tenant["tenant-".len()..]
                    .parse()
                    .map_err(|_| "not a tenant")?;
                Ok::<_, &str>(making_source(n))
            })
            .build()
            .expect("a pool");
            let started = Instant::now();
            if scenario == "pool" {
                for key in &keys {
                    pool.insert(key.clone()).expect("a key");
                }
            } else {
                pool.insert_all(keys.iter().cloned()).expect("the keys");
            }
            let create = started.elapsed();
            // A question about the last key is answered once the driver has
            // taken in every key before it.
            if let Some(last) = keys.last() {
                pool.status(last).await.expect("the last key, held");
            }
            let held = started.elapsed();
            for key in &keys {
                pool.get(key).await.expect("a first token");
            }
            Measured {
                create_us_per_key: create.as_secs_f64() * 1e6 / n as f64,
                held_us_per_key: held.as_secs_f64() * 1e6 / n as f64,
                _held: Box::new(pool),
            }
        }),
        "watchers" => runtime.block_on(async {
            let started = Instant::now();
            let mut watchers = Vec::with_capacity(n);
            for i in 0..n {
                watchers.push(
                    TokenWatcher::builder(copying_source(i))
                        .spawn()
                        .await
                        .expect("a watcher"),
                );
            }
            Measured::at_once(started.elapsed(), n, Box::new(watchers))
        }),
        "aliri" => runtime.block_on(async {
            let started = Instant::now();
            let mut watchers = Vec::with_capacity(n);
            for i in 0..n {
                watchers.push(
                    aliri_tokens::TokenWatcher::spawn_from_token_source(
                        aliri_tokens::sources::ConstTokenSource::new(token_text(i))
                            .with_token_valid_for(aliri_clock::DurationSecs(DAY.as_secs())),
                        aliri_tokens::jitter::NullJitter,
                        aliri_tokens::backoff::ErrorBackoffConfig::default(),
                    )
                    .await
                    .expect("an aliri_tokens watcher"),
                );
            }
            Measured::at_once(started.elapsed(), n, Box::new(watchers))
        }),
        other => panic!("unknown scenario {other}: floor, pool, pool-up-front, watchers or aliri"),
    };
    // Let anything started settle before reading.
    runtime.block_on(async { tokio::time::sleep(Duration::from_secs(1)).await });
    let after = resident_bytes();
    let switches_before = context_switches();
    std::thread::sleep(idle);
    let switches_after = context_switches();
    let per_key = (after.saturating_sub(before)) as f64 / n as f64;
    println!(
        "{{\"scenario\":\"{scenario}\",\"keys\":{n},\"resident_bytes_per_key\":{per_key:.0},\"beyond_token_bytes_per_key\":{:.0},\"create_us_per_key\":{:.2},\"held_us_per_key\":{:.2},\"idle_seconds\":{},\"idle_wakeups_per_second\":{:.2}}}",
        per_key - TOKEN_BYTES as f64,
        measured.create_us_per_key,
        measured.held_us_per_key,
        idle.as_secs(),
        (switches_after - switches_before) as f64 / idle.as_secs_f64(),
    );
    drop(measured);
}
