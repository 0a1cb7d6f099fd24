//! Reading a token on the hot path: `TokenWatcher::token()` of every adapter
//! (tokio, async-std, smol, threads) plus reading the access token (its
//! length), with one and with two reader threads, measured in the same run
//! against
//!
//! - the floor: `arc_swap::ArcSwap::load` of an `Arc<String>`;
//! - the prior art: `aliri_tokens` 0.3.2's `TokenWatcher::token()`.
//!
//! Run with `cargo bench -p tokenkeeper-bench --bench token_read`.
//! Targets: every adapter within 1.2x of the floor with one reader thread and
//! 1.5x with two, and at least 4x faster than aliri_tokens with two.

// criterion's macros generate undocumented public functions.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use tokenkeeper_core::{AccessToken, CacheKey, TokenGrant};
use tokenkeeper_driver::{Runtime, Source, TokenWatcher, TokenWatcherBuilder};

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

/// The hot path of every adapter: the same `token()`, one atomic load.
#[inline(always)]
fn read<R: Runtime>(watcher: &TokenWatcher<R>) -> usize {
    match watcher.token() {
        Ok(token) => token.access_token.expose_secret().len(),
        Err(_) => 0,
    }
}

fn token_read(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let text = token_text();

    let floor = ArcSwap::from_pointee(text.clone());

    let source = {
        let text = text.clone();
        Source::from_blocking_fn(CacheKey::custom("bench", &[]), move |_| {
            Ok(TokenGrant::bearer(
                AccessToken::new(text.clone()),
                Some(Duration::from_secs(24 * 3600)),
            ))
        })
    };
    let tokio_rt = tokenkeeper_tokio::TokioRuntime::from_handle(runtime.handle().clone());
    let on_tokio = runtime
        .block_on(TokenWatcherBuilder::new(tokio_rt, source.clone()).spawn())
        .expect("a tokio watcher");
    let async_std_rt = tokenkeeper_async_std::AsyncIoRuntime::async_std();
    let on_async_std =
        async_std::task::block_on(TokenWatcherBuilder::new(async_std_rt, source.clone()).spawn())
            .expect("an async-std watcher");
    let smol_rt = tokenkeeper_async_std::AsyncIoRuntime::smol();
    let on_smol = smol::block_on(TokenWatcherBuilder::new(smol_rt, source.clone()).spawn())
        .expect("a smol watcher");
    let on_threads = tokenkeeper_blocking::TokenWatcher::builder(source)
        .spawn()
        .expect("a thread watcher");

    let aliri = runtime
        .block_on(aliri_tokens::TokenWatcher::spawn_from_token_source(
            aliri_tokens::sources::ConstTokenSource::new(text.clone()),
            aliri_tokens::jitter::NullJitter,
            aliri_tokens::backoff::ErrorBackoffConfig::default(),
        ))
        .expect("an aliri_tokens watcher");

    // All three read the same token.
    let read_floor = || floor.load().len();
    let read_tokio = || read(&on_tokio);
    let read_async_std = || read(&on_async_std);
    let read_smol = || read(&on_smol);
    let read_threads = || read(&on_threads);
    let read_aliri = || aliri.token().access_token().as_str().len();
    assert_eq!(read_floor(), text.len());
    for read in [
        &read_tokio as &(dyn Fn() -> usize + Sync),
        &read_async_std,
        &read_smol,
        &read_threads,
    ] {
        assert_eq!(read(), text.len());
    }
    assert_eq!(read_aliri(), text.len());

    let mut group = c.benchmark_group("token_read");
    for threads in [1usize, 2] {
        group.bench_function(BenchmarkId::new("floor_arc_swap_load", threads), |b| {
            b.iter_custom(|iters| run(threads, iters, &read_floor));
        });
        group.bench_function(BenchmarkId::new("tokenkeeper_tokio", threads), |b| {
            b.iter_custom(|iters| run(threads, iters, &read_tokio));
        });
        group.bench_function(BenchmarkId::new("tokenkeeper_async_std", threads), |b| {
            b.iter_custom(|iters| run(threads, iters, &read_async_std));
        });
        group.bench_function(BenchmarkId::new("tokenkeeper_smol", threads), |b| {
            b.iter_custom(|iters| run(threads, iters, &read_smol));
        });
        group.bench_function(BenchmarkId::new("tokenkeeper_threads", threads), |b| {
            b.iter_custom(|iters| run(threads, iters, &read_threads));
        });
        group.bench_function(BenchmarkId::new("aliri_tokens_0_3_2", threads), |b| {
            b.iter_custom(|iters| run(threads, iters, &read_aliri));
        });
    }
    group.finish();

    runtime.block_on(on_tokio.shutdown());
    async_std::task::block_on(on_async_std.shutdown());
    smol::block_on(on_smol.shutdown());
    on_threads.shutdown();
}

criterion_group!(benches, token_read);
criterion_main!(benches);
