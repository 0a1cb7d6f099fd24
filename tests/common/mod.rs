//! What every cross-driver suite shares: each driver as a [`Flavor`] (its
//! runtime, and how a test waits on it), a macro that runs a generic test
//! once per driver, and the conformance adapter written once for all.
#![allow(dead_code)]

pub(crate) mod interop;

use std::marker::PhantomData;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokenkeeper_core::{
    BackoffPolicy, CacheError, EncodedRecord, Layer, RefreshNow, Status, TokenRecord,
};
use tokenkeeper_driver::BlockingCacheLayer;
use tokenkeeper_driver::{Runtime, Source, TokenWatcher, TokenWatcherBuilder, Waited};
use tokenkeeper_testkit::conformance::{
    Adapter, ConformanceWatcher, SpawnFailure, TlsSpec, WatcherSpec,
};

/// Polls `condition` every 10 ms for up to `limit`.
pub(crate) fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    condition()
}

/// One driver under test: a runtime, and how a test on a plain thread waits
/// for what the runtime's handles return.
pub(crate) trait Flavor: Send + Sync + 'static {
    /// The runtime.
    type R: Runtime;
    /// A name for messages.
    const NAME: &'static str;
    /// The runtime to build watchers on.
    fn runtime() -> Self::R;
    /// Waits for what a waiting method returned (a future, or the value).
    fn block_on<'a, T: Send + 'a>(waited: Waited<'a, Self::R, T>) -> T;
    /// A builder on this flavor's runtime.
    fn builder(source: impl Into<Source>) -> TokenWatcherBuilder<Self::R> {
        TokenWatcherBuilder::new(Self::runtime(), source)
    }
}

pub(crate) fn tokio_runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime")
    })
}

/// tokenkeeper-tokio, on a shared multi-thread runtime.
pub(crate) struct Tokio;

impl Flavor for Tokio {
    type R = tokenkeeper_tokio::TokioRuntime;
    const NAME: &'static str = "tokio";
    fn runtime() -> Self::R {
        tokenkeeper_tokio::TokioRuntime::from_handle(tokio_runtime().handle().clone())
    }
    fn block_on<'a, T: Send + 'a>(waited: Waited<'a, Self::R, T>) -> T {
        tokio_runtime().block_on(waited)
    }
}

/// tokenkeeper-async-std on async-std.
pub(crate) struct AsyncStd;

impl Flavor for AsyncStd {
    type R = tokenkeeper_async_std::AsyncIoRuntime;
    const NAME: &'static str = "async-std";
    fn runtime() -> Self::R {
        tokenkeeper_async_std::AsyncIoRuntime::async_std()
    }
    fn block_on<'a, T: Send + 'a>(waited: Waited<'a, Self::R, T>) -> T {
        async_std::task::block_on(waited)
    }
}

/// tokenkeeper-async-std on smol.
pub(crate) struct Smol;

impl Flavor for Smol {
    type R = tokenkeeper_async_std::AsyncIoRuntime;
    const NAME: &'static str = "smol";
    fn runtime() -> Self::R {
        tokenkeeper_async_std::AsyncIoRuntime::smol()
    }
    fn block_on<'a, T: Send + 'a>(waited: Waited<'a, Self::R, T>) -> T {
        smol::block_on(waited)
    }
}

/// tokenkeeper-blocking: plain threads.
pub(crate) struct Threads;

impl Flavor for Threads {
    type R = tokenkeeper_blocking::ThreadRuntime;
    const NAME: &'static str = "threads";
    fn runtime() -> Self::R {
        tokenkeeper_blocking::ThreadRuntime
    }
    fn block_on<'a, T: Send + 'a>(waited: Waited<'a, Self::R, T>) -> T {
        waited
    }
}

/// Runs each named generic test `fn name<F: Flavor>()` once per driver, in a
/// module per driver (`tokio::name`, `async_std::name`, `smol::name`,
/// `threads::name`).
#[macro_export]
macro_rules! per_driver {
    ($($test:ident),* $(,)?) => {
        $crate::per_driver!(@one tokio, Tokio, $($test),*);
        $crate::per_driver!(@one async_std, AsyncStd, $($test),*);
        $crate::per_driver!(@one smol, Smol, $($test),*);
        $crate::per_driver!(@one threads, Threads, $($test),*);
    };
    (@one $module:ident, $flavor:ident, $($test:ident),*) => {
        mod $module {
            $(
                #[test]
                fn $test() {
                    super::$test::<$crate::common::$flavor>();
                }
            )*
        }
    };
}

/// A running watcher seen through the conformance interface.
pub(crate) struct ConfWatcher<F: Flavor>(pub(crate) TokenWatcher<F::R>);

impl<F: Flavor> ConformanceWatcher for ConfWatcher<F> {
    fn token(&self) -> Option<Arc<TokenRecord>> {
        self.0.token().ok().map(|t| t.into_arc())
    }

    fn wait_changed(&self, timeout: Duration) -> bool {
        F::block_on(self.0.changed_within(timeout)).is_ok()
    }

    fn status(&self) -> Status {
        self.0.status()
    }

    fn refresh_now(&self) -> RefreshNow {
        F::block_on(self.0.refresh_now()).unwrap_or(RefreshNow::ShutDown)
    }

    fn shutdown(self) {
        F::block_on(self.0.shutdown());
    }
}

/// The conformance adapter of a driver: the spec mapped onto the one builder.
pub(crate) struct Conformance<F>(PhantomData<F>);

impl<F: Flavor> Adapter for Conformance<F> {
    const NAME: &'static str = F::NAME;
    type Watcher = ConfWatcher<F>;

    fn spawn(spec: WatcherSpec) -> Result<ConfWatcher<F>, SpawnFailure> {
        let mut http = tokenkeeper_driver::HttpSettings::default()
            .request_timeout(spec.request_timeout)
            .connect_timeout(spec.request_timeout);
        if let Some(tls) = spec.tls {
            http = tls_settings(http, tls);
        }
        let mut builder = F::builder(spec.client)
            .lifetime_policy(spec.policy)
            .jitter(spec.jitter)
            .backoff(spec.backoff)
            .refresh_now_min_interval(spec.refresh_now_min_interval)
            .http(http)
            .first_token_timeout(spec.first_token_timeout);
        if let Some(token) = spec.initial_refresh_token {
            builder = builder.initial_refresh_token(token);
        }
        if let Some(path) = spec.cache_file {
            builder = builder.file_cache(path);
        }
        if let Some(assertion) = spec.client_assertion {
            builder = builder.client_assertion(assertion_of(assertion));
        }
        if let Some(assertion) = spec.grant_assertion {
            builder = builder.grant_assertion(assertion_of(assertion));
        }
        if let Some(path) = spec.subject_token_file {
            builder = builder.subject_token_file(path);
        }
        F::block_on(builder.spawn())
            .map(ConfWatcher)
            .map_err(|e| SpawnFailure {
                permanent: e.is_permanent(),
                message: e.to_string(),
            })
    }
}

/// A conformance spec's assertion as the driver's: a key from PEM (with its key id and
/// algorithm), or a file.
pub(crate) fn assertion_of(
    spec: tokenkeeper_testkit::conformance::AssertionSpec,
) -> tokenkeeper_driver::assertion::Assertion {
    use tokenkeeper_driver::assertion::{Algorithm, Assertion, ClientKey};
    use tokenkeeper_testkit::conformance::AssertionSpec;
    match spec {
        AssertionSpec::Signed { pem, kid, alg } => {
            let mut key = ClientKey::from_pem(pem.as_bytes()).expect("a private key");
            if let Some(alg) = alg {
                let alg = Algorithm::from_name(&alg).expect("a known algorithm");
                key = key.with_algorithm(alg).expect("an algorithm of the key");
            }
            if let Some(kid) = kid {
                key = key.with_key_id(kid);
            }
            Assertion::signed(key)
        }
        AssertionSpec::File(path) => Assertion::file(path),
        other => panic!("an assertion spec this adapter does not know: {other:?}"),
    }
}

/// The TLS side of a conformance spec on a driver's HTTP settings: every field
/// of [`TlsSpec`] is mapped.
pub(crate) fn tls_settings(
    mut http: tokenkeeper_driver::HttpSettings,
    tls: TlsSpec,
) -> tokenkeeper_driver::HttpSettings {
    if let Some(pem) = tls.ca_pem {
        http = http.add_root_certificates_pem(pem);
    }
    if let Some(path) = tls.ca_file {
        http = http.add_root_certificates_file(path);
    }
    if let Some(identity) = tls.client_identity {
        http = http.client_certificate_pem(identity.chain_pem(), identity.key_pem());
    }
    if let Some(files) = tls.client_identity_files {
        http = http.client_certificate_files(files.cert, files.key);
    }
    http
}

/// Fast retries, so that each scenario takes a second or two.
pub(crate) fn fast_backoff() -> BackoffPolicy {
    BackoffPolicy::builder()
        .floor(Duration::from_millis(20))
        .initial(Duration::from_millis(50))
        .cap(Duration::from_millis(500))
        .build()
        .expect("a valid backoff")
}

/// Where [`Memory`] keeps its record; share it to look inside.
pub(crate) type Slot = Arc<Mutex<Option<Vec<u8>>>>;

/// A cache layer in memory whose calls block (a mutex): a working layer for
/// every driver.
#[derive(Clone, Default)]
pub(crate) struct Memory(pub(crate) Slot);

impl BlockingCacheLayer for Memory {
    fn layer(&self) -> Layer {
        Layer::new("memory")
    }
    fn read(&self) -> Result<Option<Vec<u8>>, CacheError> {
        Ok(self.0.lock().unwrap().clone())
    }
    fn write(&self, record: &EncodedRecord) -> Result<(), CacheError> {
        *self.0.lock().unwrap() = Some(record.bytes().to_vec());
        Ok(())
    }
}
