//! Cache layers: where a watcher keeps tokens between runs and shares them
//! with other processes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::Stream;
use tokenkeeper_core::{CacheError, CacheErrorKind, EncodedRecord, Layer, LeaseOutcome};
use tokenkeeper_fs::FileLayer;

use crate::runtime::{BoxFuture, BoxStream, Runtime, Sleeper, unblock};

/// A store the watcher reads tokens from and writes them to, optionally with
/// a lease so that only one of the processes sharing it fetches at a time.
///
/// This is the extension point for stores such as Redis: implement it and
/// add it with [`TokenWatcherBuilder::cache`](crate::TokenWatcherBuilder::cache).
/// Layers are read in the order they are added; each one is one
/// [`tokenkeeper_core::Layer`] of the refresher. `tokenkeeper-redis`
/// implements it for its `AsyncRedisLayer` (feature `async-layer`).
///
/// The watcher calls the methods of one layer one at a time, in the order the
/// refresher asks for them, in a task of the layer's own; different layers
/// work concurrently. A layer serves one cache slot: build it for the
/// watcher's key ([`TokenWatcherBuilder::cache_key`](crate::TokenWatcherBuilder::cache_key)).
/// Records are opaque bytes (a versioned JSON document that holds secrets):
/// store them as they are, and never log them.
///
/// Errors are never fatal: the refresher treats an unreadable layer as a
/// miss, an unwritable one as a problem to report, and a failed lease as no
/// lease at all. A call that panics counts as a failed one.
///
/// The trait is object-safe and runtime-agnostic; methods return boxed
/// futures:
///
/// ```
/// use std::sync::Mutex;
/// use tokenkeeper_driver::{BoxFuture, CacheLayer};
/// use tokenkeeper_core::{CacheError, EncodedRecord, Layer};
///
/// /// A cache in memory, shared by the watchers of one process.
/// #[derive(Default)]
/// struct Memory(Mutex<Option<Vec<u8>>>);
///
/// impl CacheLayer for Memory {
///     fn layer(&self) -> Layer {
///         Layer::new("memory")
///     }
///     fn read(&self) -> BoxFuture<'_, Result<Option<Vec<u8>>, CacheError>> {
///         Box::pin(async { Ok(self.0.lock().unwrap().clone()) })
///     }
///     fn write<'a>(&'a self, record: &'a EncodedRecord) -> BoxFuture<'a, Result<(), CacheError>> {
///         Box::pin(async { Ok(*self.0.lock().unwrap() = Some(record.bytes().to_vec())) })
///     }
/// }
/// ```
pub trait CacheLayer: Send + Sync + 'static {
    /// How the refresher sees this layer: a name for logs and, when the store
    /// offers one, the lease settings ([`Layer::with_lease`]).
    fn layer(&self) -> Layer;

    /// Loads the stored record; `Ok(None)` when there is none.
    fn read(&self) -> BoxFuture<'_, Result<Option<Vec<u8>>, CacheError>>;

    /// Stores `record`, replacing what is there. A store with expiry may drop
    /// the record at [`EncodedRecord::expiry`].
    fn write<'a>(&'a self, record: &'a EncodedRecord) -> BoxFuture<'a, Result<(), CacheError>>;

    /// Tries to take the lease for `ttl` without waiting. Called only when
    /// [`CacheLayer::layer`] offers a lease. Holding it already counts as
    /// [`LeaseOutcome::Acquired`]. The default refuses with an error.
    fn try_acquire_lease(&self, ttl: Duration) -> BoxFuture<'_, LeaseOutcome> {
        let _ = ttl;
        Box::pin(async {
            LeaseOutcome::Failed(CacheError::new(
                CacheErrorKind::Other,
                "this cache layer offers no lease",
            ))
        })
    }

    /// Gives the lease back; a no-op when it is not held. The default does nothing.
    fn release_lease(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    /// The store's change notifications: a stream that yields an item
    /// whenever anyone stores a record in it, so that a refresher waiting
    /// for another's lease re-reads at once instead of at its next retry.
    ///
    /// Called once, when the watcher starts; the watcher polls the stream in
    /// a task of its own and drops it when it stops, which must end the
    /// subscription. `sleeper` is the watcher's timer, for feeds that wait
    /// (before reconnecting, say). Notifications may be coalesced or
    /// spurious: they only cause a re-read. [`change_feed`] turns a
    /// callback-style subscription into such a stream.
    ///
    /// The default returns `None`: the store has no notifications.
    fn changes(self: Arc<Self>, sleeper: Sleeper) -> Option<BoxStream<'static, ()>> {
        let _ = sleeper;
        None
    }
}

/// Calls back into a [`change_feed`]: each [`Notifier::notify`] is one
/// change. Cheap to clone; never blocks.
#[derive(Debug, Clone)]
pub struct Notifier(async_channel::Sender<()>);

impl Notifier {
    /// Reports a change. While one is pending (not yet seen by the watcher),
    /// further ones are merged into it.
    pub fn notify(&self) {
        let _ = self.0.try_send(());
    }
}

/// A change feed for [`CacheLayer::changes`] made of a subscription that
/// calls back: `watch` gets a [`Notifier`] and returns the future that runs
/// the subscription (typically forever). That future is polled as part of
/// the stream, so it needs no task of its own, and it is dropped with the
/// stream. The stream ends when the future has completed and every notifier
/// is gone.
///
/// ```
/// use tokenkeeper_driver::{BoxStream, change_feed};
///
/// fn feed() -> BoxStream<'static, ()> {
///     change_feed(|notifier| async move {
///         // Subscribe to the store here, and for each message:
///         notifier.notify();
///     })
/// }
/// # let _ = feed();
/// ```
pub fn change_feed<F, Fut>(watch: F) -> BoxStream<'static, ()>
where
    F: FnOnce(Notifier) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = async_channel::bounded(1);
    Box::pin(ChangeFeed {
        watch: Some(Box::pin(watch(Notifier(tx)))),
        notes: Box::pin(rx),
    })
}

struct ChangeFeed {
    watch: Option<BoxFuture<'static, ()>>,
    notes: Pin<Box<async_channel::Receiver<()>>>,
}

impl Stream for ChangeFeed {
    type Item = ();

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<()>> {
        if let Some(watch) = &mut self.watch
            && watch.as_mut().poll(cx).is_ready()
        {
            self.watch = None;
        }
        self.notes.as_mut().poll_next(cx)
    }
}

/// A cache layer whose calls block (files, a sync client of a store): the
/// thread-friendly twin of [`CacheLayer`], with the same contract. The
/// watcher runs its calls where blocking is allowed (the runtime's blocking
/// pool, or a thread), one at a time and in order. The file cache of
/// [`tokenkeeper_fs`] is one; add a layer with
/// [`TokenWatcherBuilder::blocking_cache`](crate::TokenWatcherBuilder::blocking_cache).
pub trait BlockingCacheLayer: Send + Sync + 'static {
    /// How the refresher sees this layer; see [`CacheLayer::layer`].
    fn layer(&self) -> Layer;

    /// Loads the stored record; `Ok(None)` when there is none.
    fn read(&self) -> Result<Option<Vec<u8>>, CacheError>;

    /// Stores `record`, replacing what is there.
    fn write(&self, record: &EncodedRecord) -> Result<(), CacheError>;

    /// Tries to take the lease for `ttl` without waiting; see
    /// [`CacheLayer::try_acquire_lease`]. The default refuses with an error.
    fn try_acquire_lease(&self, ttl: Duration) -> LeaseOutcome {
        let _ = ttl;
        LeaseOutcome::Failed(CacheError::new(
            CacheErrorKind::Other,
            "this cache layer offers no lease",
        ))
    }

    /// Gives the lease back; a no-op when it is not held.
    fn release_lease(&self) {}

    /// Subscribes to the store's change notifications: `notify` is called
    /// (from any thread) whenever anyone stores a record. The subscription
    /// lasts as long as the returned guard. The default returns `None`: no
    /// notifications.
    fn subscribe(&self, notify: Box<dyn Fn() + Send + Sync>) -> Option<Box<dyn Send>> {
        let _ = notify;
        None
    }
}

impl BlockingCacheLayer for FileLayer {
    fn layer(&self) -> Layer {
        FileLayer::core_layer()
    }

    fn read(&self) -> Result<Option<Vec<u8>>, CacheError> {
        FileLayer::read(self)
    }

    fn write(&self, record: &EncodedRecord) -> Result<(), CacheError> {
        FileLayer::write(self, record)
    }

    fn try_acquire_lease(&self, _ttl: Duration) -> LeaseOutcome {
        FileLayer::try_acquire(self)
    }

    fn release_lease(&self) {
        FileLayer::release(self)
    }
}

/// A cache layer as the driver holds it: async, or blocking (its calls run
/// where blocking is allowed).
#[derive(Clone)]
pub(crate) enum AnyLayer {
    Async(Arc<dyn CacheLayer>),
    Blocking(Arc<dyn BlockingCacheLayer>),
}

impl AnyLayer {
    pub(crate) fn layer(&self) -> Layer {
        match self {
            AnyLayer::Async(l) => l.layer(),
            AnyLayer::Blocking(l) => l.layer(),
        }
    }

    pub(crate) async fn read<R: Runtime>(
        &self,
        runtime: &R,
    ) -> Result<Option<Vec<u8>>, CacheError> {
        match self {
            AnyLayer::Async(l) => l.read().await,
            AnyLayer::Blocking(l) => {
                let l = Arc::clone(l);
                unblock(runtime, move || l.read())
                    .await
                    .unwrap_or_else(|_| Err(incomplete("read")))
            }
        }
    }

    pub(crate) async fn write<R: Runtime>(
        &self,
        runtime: &R,
        record: &EncodedRecord,
    ) -> Result<(), CacheError> {
        match self {
            AnyLayer::Async(l) => l.write(record).await,
            AnyLayer::Blocking(l) => {
                let (l, record) = (Arc::clone(l), record.clone());
                unblock(runtime, move || l.write(&record))
                    .await
                    .unwrap_or_else(|_| Err(incomplete("write")))
            }
        }
    }

    pub(crate) async fn try_acquire_lease<R: Runtime>(
        &self,
        runtime: &R,
        ttl: Duration,
    ) -> LeaseOutcome {
        match self {
            AnyLayer::Async(l) => l.try_acquire_lease(ttl).await,
            AnyLayer::Blocking(l) => {
                let l = Arc::clone(l);
                unblock(runtime, move || l.try_acquire_lease(ttl))
                    .await
                    .unwrap_or_else(|_| LeaseOutcome::Failed(incomplete("lease")))
            }
        }
    }

    /// `false` when the call panicked.
    pub(crate) async fn release_lease<R: Runtime>(&self, runtime: &R) -> bool {
        match self {
            AnyLayer::Async(l) => futures_lite::FutureExt::catch_unwind(
                std::panic::AssertUnwindSafe(l.release_lease()),
            )
            .await
            .is_ok(),
            AnyLayer::Blocking(l) => {
                let l = Arc::clone(l);
                unblock(runtime, move || l.release_lease()).await.is_ok()
            }
        }
    }
}

/// A blocking call that panicked (or was dropped with its runtime).
fn incomplete(what: &str) -> CacheError {
    CacheError::new(
        CacheErrorKind::Other,
        format!("the cache layer's {what} panicked or did not complete"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::park::block_on;
    use crate::runtime::testing::Threads;
    use futures_lite::StreamExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokenkeeper_core::CacheKey;
    use tokenkeeper_core::cache::encode_record;
    use tokenkeeper_core::{AccessToken, LifetimePolicy, Timestamp, TokenGrant};

    #[test]
    fn a_change_feed_drives_its_subscription_and_merges_notes() {
        let polled = Arc::new(AtomicUsize::new(0));
        let p = Arc::clone(&polled);
        let mut feed = change_feed(move |notifier| async move {
            p.fetch_add(1, Ordering::SeqCst);
            // Three changes before anyone looks: one pending note.
            notifier.notify();
            notifier.notify();
            notifier.notify();
        });
        assert_eq!(block_on(feed.next()), Some(()));
        assert_eq!(polled.load(Ordering::SeqCst), 1);
        // The subscription ended and its notifier is gone: the feed ends.
        assert_eq!(block_on(feed.next()), None);
    }

    #[test]
    fn blocking_layers_run_off_the_caller_and_report_panics() {
        let dir = tempfile::tempdir().unwrap();
        let key = CacheKey::custom("test", &["file"]);
        let layer = AnyLayer::Blocking(Arc::new(FileLayer::in_dir(dir.path(), &key)));
        let rt = Threads;
        assert_eq!(block_on(layer.read(&rt)), Ok(None));
        let record = LifetimePolicy::default().record(
            TokenGrant::bearer(AccessToken::new("at"), Some(Duration::from_secs(60))),
            Timestamp::from_secs(100),
            None,
        );
        block_on(layer.write(&rt, &encode_record(&key, &record))).unwrap();
        assert!(block_on(layer.read(&rt)).unwrap().is_some());
        let other = AnyLayer::Blocking(Arc::new(FileLayer::in_dir(dir.path(), &key)));
        let ttl = Duration::from_secs(1);
        assert_eq!(
            block_on(layer.try_acquire_lease(&rt, ttl)),
            LeaseOutcome::Acquired
        );
        assert_eq!(
            block_on(other.try_acquire_lease(&rt, ttl)),
            LeaseOutcome::HeldByOther
        );
        assert!(block_on(layer.release_lease(&rt)));
        assert_eq!(
            block_on(other.try_acquire_lease(&rt, ttl)),
            LeaseOutcome::Acquired
        );

        struct Panics;
        impl BlockingCacheLayer for Panics {
            fn layer(&self) -> Layer {
                Layer::new("panics")
            }
            fn read(&self) -> Result<Option<Vec<u8>>, CacheError> {
                panic!("read")
            }
            fn write(&self, _: &EncodedRecord) -> Result<(), CacheError> {
                panic!("write")
            }
        }
        let panics = AnyLayer::Blocking(Arc::new(Panics));
        let error = block_on(panics.read(&rt)).unwrap_err();
        assert!(error.message.contains("panicked"), "{error:?}");
    }
}
