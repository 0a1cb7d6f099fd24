//! Cache layers: where a watcher keeps tokens between runs and shares them
//! with other processes.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokenkeeper_core::{CacheError, CacheErrorKind, CacheKey, EncodedRecord, Layer, LeaseOutcome};
use tokenkeeper_fs::{FileCache, FileLayer};

use crate::source::BoxFuture;

/// A store the watcher reads tokens from and writes them to, optionally with
/// a lease so that only one of the processes sharing it fetches at a time.
///
/// This is the extension point for stores such as Redis: implement it and
/// add it with [`TokenWatcherBuilder::cache`](crate::TokenWatcherBuilder::cache).
/// Layers are read in the order they are added; each one is one
/// [`tokenkeeper_core::Layer`] of the refresher.
///
/// The watcher calls the methods of one layer one at a time, in the order the
/// refresher asks for them, each in a task of its own; different layers work
/// concurrently. A layer serves one cache slot: build it for the watcher's
/// key ([`TokenWatcherBuilder::cache_key`](crate::TokenWatcherBuilder::cache_key)).
/// Records are opaque bytes (a versioned JSON document that holds secrets):
/// store them as they are, and never log them.
///
/// Errors are never fatal: the refresher treats an unreadable layer as a
/// miss, an unwritable one as a problem to report, and a failed lease as no
/// lease at all.
///
/// The trait is object-safe; methods return boxed futures:
///
/// ```
/// use std::sync::Mutex;
/// use tokenkeeper_core::{CacheError, EncodedRecord, Layer};
/// use tokenkeeper_tokio::{BoxFuture, CacheLayer};
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
}

/// The file cache ([`tokenkeeper_fs`]) as a [`CacheLayer`]: atomic replace,
/// private files, and a lease that is a cross-process lock file, so that
/// processes sharing the file make one request per refresh.
///
/// The file calls block, so they run on tokio's blocking pool.
#[derive(Clone)]
pub struct FileCacheLayer {
    inner: Arc<FileLayer>,
}

impl fmt::Debug for FileCacheLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileCacheLayer")
            .field("path", &self.inner.cache().path())
            .finish()
    }
}

impl FileCacheLayer {
    /// A layer over an existing [`FileLayer`].
    pub fn new(layer: FileLayer) -> Self {
        FileCacheLayer {
            inner: Arc::new(layer),
        }
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
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| {
                CacheError::new(
                    CacheErrorKind::Other,
                    format!("the file cache {what} did not complete: {e}"),
                )
            })
    }
}

impl CacheLayer for FileCacheLayer {
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
