//! Cache layers: where tokens are kept between runs and shared with other
//! processes.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokenkeeper_core::{CacheError, CacheErrorKind, CacheKey, EncodedRecord, Layer, LeaseOutcome};
use tokenkeeper_fs::{FileCache, FileLayer};

/// A store that tokens are read from and written to, optionally with a lease
/// so that only one of the processes sharing it fetches at a time.
///
/// This is the extension point for stores such as Redis: implement it and
/// add the layer with [`TokenWatcherBuilder::cache`](crate::TokenWatcherBuilder::cache)
/// or [`GetTokenConfig::cache`](crate::GetTokenConfig::cache). Layers are read in
/// the order they are added; each one is one [`tokenkeeper_core::Layer`] of the
/// refresher. The file cache of [`tokenkeeper_fs`] ([`FileLayer`]) implements
/// it, with the cross-process lock file as its lease.
///
/// The driver calls the methods of all layers from one thread, one call at a
/// time, in the order the refresher asks for them; they block that thread, so
/// bound their waiting (a network store should have short timeouts). A layer
/// serves one cache slot: build it for the source's key
/// ([`Source::cache_key`](crate::Source::cache_key)). Records are opaque bytes
/// (a versioned JSON document holding secrets): store them as they are, and
/// never log them.
///
/// Errors are never fatal: the refresher treats an unreadable layer as a miss,
/// an unwritable one as a problem to report, and a failed lease as no lease.
///
/// ```
/// use std::sync::Mutex;
/// use tokenkeeper_blocking::CacheLayer;
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
///     fn read(&self) -> Result<Option<Vec<u8>>, CacheError> {
///         Ok(self.0.lock().unwrap().clone())
///     }
///     fn write(&self, record: &EncodedRecord) -> Result<(), CacheError> {
///         *self.0.lock().unwrap() = Some(record.bytes().to_vec());
///         Ok(())
///     }
/// }
/// ```
pub trait CacheLayer: Send + Sync + 'static {
    /// How the refresher sees this layer: a name for logs and, when the store
    /// offers one, the lease settings ([`Layer::with_lease`]).
    fn layer(&self) -> Layer;

    /// Loads the stored record; `Ok(None)` when there is none.
    fn read(&self) -> Result<Option<Vec<u8>>, CacheError>;

    /// Stores `record`, replacing what is there. A store with expiry may drop
    /// the record at [`EncodedRecord::expiry`].
    fn write(&self, record: &EncodedRecord) -> Result<(), CacheError>;

    /// Tries to take the lease for `ttl` without waiting. Called only when
    /// [`CacheLayer::layer`] offers a lease. Holding it already counts as
    /// [`LeaseOutcome::Acquired`]. The default refuses with an error.
    fn try_acquire_lease(&self, ttl: Duration) -> LeaseOutcome {
        let _ = ttl;
        LeaseOutcome::Failed(CacheError::new(
            CacheErrorKind::Other,
            "this cache layer offers no lease",
        ))
    }

    /// Gives the lease back; a no-op when it is not held. The default does
    /// nothing.
    fn release_lease(&self) {}

    /// Asks the store to call `notify` whenever anyone stores a record in
    /// it, so that a refresher waiting for another's lease re-reads at once
    /// instead of at its next retry. Returns a guard that ends the
    /// notifications when dropped, or `None` (the default) when the store has
    /// no notifications. `notify` is cheap and never blocks.
    fn subscribe(&self, notify: Box<dyn Fn() + Send + Sync>) -> Option<Box<dyn Send>> {
        let _ = notify;
        None
    }
}

/// The file cache: atomic replace, private (0600) files, and a lease that is
/// the cross-process lock file `<record>.lock`. The lock cannot outlive the
/// process holding it, so `ttl` is not needed.
impl CacheLayer for FileLayer {
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

/// A cache layer as configured, resolved against the source's key when the
/// driver starts.
#[derive(Clone)]
pub(crate) enum CacheSpec {
    Layer(Arc<dyn CacheLayer>),
    FileAt(PathBuf),
    FileIn(PathBuf),
}

impl CacheSpec {
    pub(crate) fn resolve(&self, key: &CacheKey) -> Arc<dyn CacheLayer> {
        match self {
            CacheSpec::Layer(layer) => Arc::clone(layer),
            CacheSpec::FileAt(path) => Arc::new(FileLayer::new(FileCache::new(path.clone()))),
            CacheSpec::FileIn(dir) => Arc::new(FileLayer::in_dir(dir, key)),
        }
    }
}

impl fmt::Debug for CacheSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CacheSpec::Layer(layer) => write!(f, "Layer({:?})", layer.layer().name()),
            CacheSpec::FileAt(path) => write!(f, "FileAt({})", path.display()),
            CacheSpec::FileIn(dir) => write!(f, "FileIn({})", dir.display()),
        }
    }
}
