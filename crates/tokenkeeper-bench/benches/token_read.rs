//! Reading a token on the hot path: `TokenWatcher::token()` plus reading the
//! access token (its length), with one and with two reader threads, measured
//! in the same run against
//!
//! - the floor: `arc_swap::ArcSwap::load` of an `Arc<String>`;
//! - the prior art: `aliri_tokens` 0.3.2's `TokenWatcher::token()`.
//!
//! Run with `cargo bench -p tokenkeeper-bench --bench token_read`.
//! Targets: within 1.5x of the floor with one thread; at least 5x faster than
//! aliri_tokens with two.

// criterion's macros generate undocumented public functions.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use tokenkeeper_core::{AccessToken, CacheKey, TokenGrant};
use tokenkeeper_tokio::{Source, TokenWatcher};

/// A token of a realistic size (a short JWT).
fn token_text() -> String {
    let mut token = String::from("eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.");
    token.push_str(&"eyJzdWIiOiJiZW5jaCJ9".repeat(20));
    token.push_str(".c2lnbmF0dXJl");
    token
}

/// Runs `read` `iters` times on each of `threads` threads started together,
/// and returns the longest thread's time: the time per read under contention.
fn run<F: Fn() -> usize + Sync>(threads: usize, iters: u64, read: &F) -> Duration {
    if threads == 1 {
        let start = Instant::now();
        for _ in 0..iters {
            black_box(read());
        }
        return start.elapsed();
    }
    let barrier = Barrier::new(threads);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    barrier.wait();
                    let start = Instant::now();
                    for _ in 0..iters {
                        black_box(read());
                    }
                    start.elapsed()
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("a reader thread"))
            .max()
            .unwrap_or_default()
    })
}

fn token_read(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let text = token_text();

    let floor = ArcSwap::from_pointee(text.clone());

    let ours = {
        let text = text.clone();
        let source = Source::from_fn(CacheKey::custom("bench", &[]), move |_| {
            let grant = TokenGrant::bearer(
                AccessToken::new(text.clone()),
                Some(Duration::from_secs(24 * 3600)),
            );
            async move { Ok(grant) }
        });
        runtime
            .block_on(TokenWatcher::builder(source).spawn())
            .expect("a tokenkeeper watcher")
    };

    let aliri = runtime
        .block_on(aliri_tokens::TokenWatcher::spawn_from_token_source(
            aliri_tokens::sources::ConstTokenSource::new(text.clone()),
            aliri_tokens::jitter::NullJitter,
            aliri_tokens::backoff::ErrorBackoffConfig::default(),
        ))
        .expect("an aliri_tokens watcher");

    // All three read the same token.
    let read_floor = || floor.load().len();
    let read_ours = || match ours.token() {
        Ok(token) => token.access_token.expose_secret().len(),
        Err(_) => 0,
    };
    let read_aliri = || aliri.token().access_token().as_str().len();
    assert_eq!(read_floor(), text.len());
    assert_eq!(read_ours(), text.len());
    assert_eq!(read_aliri(), text.len());

    let mut group = c.benchmark_group("token_read");
    for threads in [1usize, 2] {
        group.bench_function(BenchmarkId::new("floor_arc_swap_load", threads), |b| {
            b.iter_custom(|iters| run(threads, iters, &read_floor));
        });
        group.bench_function(BenchmarkId::new("tokenkeeper_tokio", threads), |b| {
            b.iter_custom(|iters| run(threads, iters, &read_ours));
        });
        group.bench_function(BenchmarkId::new("aliri_tokens_0_3_2", threads), |b| {
            b.iter_custom(|iters| run(threads, iters, &read_aliri));
        });
    }
    group.finish();

    runtime.block_on(ours.shutdown());
}

criterion_group!(benches, token_read);
criterion_main!(benches);
