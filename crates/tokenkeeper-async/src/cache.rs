//! Cache layers: where a watcher keeps tokens between runs and shares them
//! with other processes.

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::Stream;
use tokenkeeper_core::{CacheError, CacheErrorKind, CacheKey, EncodedRecord, Layer, LeaseOutcome};
use tokenkeeper_fs::{FileCache, FileLayer};

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
/// use tokenkeeper_async::{BoxFuture, CacheLayer};
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
/// use tokenkeeper_async::{BoxStream, change_feed};
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

/// The file cache ([`tokenkeeper_fs`]) as a [`CacheLayer`]: atomic replace,
/// private (0600) files, and a lease that is a cross-process lock file, so
/// that processes sharing the file make one request per refresh. The file
/// calls block, so they run on the blocking pool of the runtime `R`.
pub struct FileCacheLayer<R> {
    inner: Arc<FileLayer>,
    runtime: R,
}

impl<R: Clone> Clone for FileCacheLayer<R> {
    fn clone(&self) -> Self {
        FileCacheLayer {
            inner: Arc::clone(&self.inner),
            runtime: self.runtime.clone(),
        }
    }
}

impl<R> fmt::Debug for FileCacheLayer<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileCacheLayer")
            .field("path", &self.inner.cache().path())
            .finish()
    }
}

impl<R: Runtime> FileCacheLayer<R> {
    /// A layer over `layer`, whose calls run on the blocking pool of `runtime`.
    pub fn with_runtime(runtime: R, layer: FileLayer) -> Self {
        FileCacheLayer {
            inner: Arc::new(layer),
            runtime,
        }
    }

    /// The record file.
    pub fn path(&self) -> &Path {
        self.inner.cache().path()
    }

    async fn blocking<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce(&FileLayer) -> T + Send + 'static,
    ) -> Result<T, CacheError> {
        let inner = Arc::clone(&self.inner);
        unblock(&self.runtime, move || f(&inner))
            .await
            .map_err(|_| {
                CacheError::new(
                    CacheErrorKind::Other,
                    format!("the file cache {what} did not complete"),
                )
            })
    }
}

impl<R: Runtime + Default> FileCacheLayer<R> {
    /// A layer over an existing [`FileLayer`].
    pub fn new(layer: FileLayer) -> Self {
        Self::with_runtime(R::default(), layer)
    }

    /// A layer in the file at `path` (and its lock file `<path>.lock`).
    pub fn at(path: impl Into<PathBuf>) -> Self {
        Self::new(FileLayer::new(FileCache::new(path)))
    }

    /// A layer in `dir`, in a file named after `key` (`<dir>/<key id>.json`),
    /// so different clients never share a file.
    pub fn in_dir(dir: impl AsRef<Path>, key: &CacheKey) -> Self {
        Self::new(FileLayer::in_dir(dir, key))
    }
}

impl<R: Runtime> CacheLayer for FileCacheLayer<R> {
    fn layer(&self) -> Layer {
        FileLayer::core_layer()
    }

    fn read(&self) -> BoxFuture<'_, Result<Option<Vec<u8>>, CacheError>> {
        Box::pin(async move { self.blocking("read", FileLayer::read).await? })
    }

    fn write<'a>(&'a self, record: &'a EncodedRecord) -> BoxFuture<'a, Result<(), CacheError>> {
        let record = record.clone();
        Box::pin(async move { self.blocking("write", move |l| l.write(&record)).await? })
    }

    fn try_acquire_lease(&self, _ttl: Duration) -> BoxFuture<'_, LeaseOutcome> {
        Box::pin(async move {
            self.blocking("lease", FileLayer::try_acquire)
                .await
                .unwrap_or_else(LeaseOutcome::Failed)
        })
    }

    fn release_lease(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Err(e) = self.blocking("lease release", FileLayer::release).await {
                tracing::warn!(error = %e, "could not release the file cache lease");
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::testing::Threads;
    use futures_lite::StreamExt;
    use futures_lite::future::block_on;
    use std::sync::atomic::{AtomicUsize, Ordering};
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
    fn the_file_layer_runs_on_the_blocking_pool() {
        let dir = tempfile::tempdir().unwrap();
        let key = CacheKey::custom("test", &["file"]);
        let layer = FileCacheLayer::<Threads>::in_dir(dir.path(), &key);
        assert_eq!(layer.path(), dir.path().join(format!("{}.json", key.id())));
        assert_eq!(block_on(layer.read()), Ok(None));
        let record = LifetimePolicy::default().record(
            TokenGrant::bearer(AccessToken::new("at"), Some(Duration::from_secs(60))),
            Timestamp::from_secs(100),
            None,
        );
        block_on(layer.write(&encode_record(&key, &record))).unwrap();
        assert!(block_on(layer.read()).unwrap().is_some());
        let other = FileCacheLayer::with_runtime(Threads, FileLayer::in_dir(dir.path(), &key));
        assert_eq!(
            block_on(layer.try_acquire_lease(Duration::from_secs(1))),
            LeaseOutcome::Acquired
        );
        assert_eq!(
            block_on(other.try_acquire_lease(Duration::from_secs(1))),
            LeaseOutcome::HeldByOther
        );
        block_on(layer.release_lease());
        assert_eq!(
            block_on(other.try_acquire_lease(Duration::from_secs(1))),
            LeaseOutcome::Acquired
        );
        assert!(Arc::new(layer).changes(Sleeper::of(Threads)).is_none());
    }
}
