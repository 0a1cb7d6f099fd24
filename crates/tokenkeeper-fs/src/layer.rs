//! The file cache as a `tokenkeeper-core` cache layer: what every adapter does
//! when the refresher asks to read, write, lease or release the file layer.
//!
//! The calls block on file I/O; async adapters run them on their blocking pool.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use tokenkeeper_core::{
    CacheError, CacheErrorKind, CacheKey, EncodedRecord, Layer, LeaseOutcome, LeaseSettings,
};

use crate::{FileCache, FileCacheError, FileLock};

/// A [`FileCache`] answering a refresher's effects for one layer. Its lease is
/// the cross-process lock, held between [`FileLayer::try_acquire`] and
/// [`FileLayer::release`] (or until the process ends).
#[derive(Debug)]
pub struct FileLayer {
    cache: FileCache,
    lease: Mutex<Option<FileLock>>,
}

fn cache_error(e: &FileCacheError) -> CacheError {
    let kind = match e {
        FileCacheError::NotWritable { .. } | FileCacheError::Io { .. } => CacheErrorKind::Io,
        _ => CacheErrorKind::Other,
    };
    CacheError::new(kind, e.to_string())
}

impl FileLayer {
    /// A layer over `cache`.
    pub fn new(cache: FileCache) -> Self {
        FileLayer {
            cache,
            lease: Mutex::new(None),
        }
    }

    /// A layer in `dir`, in a file named after the cache key
    /// (`<dir>/<key id>.json`), so different clients never share a file.
    pub fn in_dir(dir: impl AsRef<Path>, key: &CacheKey) -> Self {
        Self::new(FileCache::new(
            dir.as_ref().join(format!("{}.json", key.id())),
        ))
    }

    /// The per-user default folder: `$XDG_CACHE_HOME/tokenkeeper`, or
    /// `$HOME/.cache/tokenkeeper`. `None` when neither variable holds an
    /// absolute path. Empty and relative values are ignored, as the XDG Base
    /// Directory specification asks: a relative one would put the cache
    /// wherever the program happens to run. See
    /// [`default_dir_from`](Self::default_dir_from).
    pub fn default_dir() -> Option<PathBuf> {
        Self::default_dir_from(
            std::env::var_os("XDG_CACHE_HOME").as_deref(),
            std::env::var_os("HOME").as_deref(),
        )
    }

    /// [`default_dir`](Self::default_dir) computed from the given values of
    /// `XDG_CACHE_HOME` and `HOME` (`None` for an unset variable) rather than
    /// from the process environment.
    ///
    /// ```
    /// use std::ffi::OsStr;
    /// use std::path::PathBuf;
    /// use tokenkeeper_fs::FileLayer;
    ///
    /// let home = Some(OsStr::new("/home/ada"));
    /// assert_eq!(
    ///     FileLayer::default_dir_from(Some(OsStr::new("/var/cache/ada")), home),
    ///     Some(PathBuf::from("/var/cache/ada/tokenkeeper"))
    /// );
    /// // A relative XDG_CACHE_HOME is ignored.
    /// assert_eq!(
    ///     FileLayer::default_dir_from(Some(OsStr::new("cache")), home),
    ///     Some(PathBuf::from("/home/ada/.cache/tokenkeeper"))
    /// );
    /// assert_eq!(FileLayer::default_dir_from(None, Some(OsStr::new("ada"))), None);
    /// ```
    pub fn default_dir_from(
        xdg_cache_home: Option<&OsStr>,
        home: Option<&OsStr>,
    ) -> Option<PathBuf> {
        let absolute = |value: Option<&OsStr>| {
            value
                .map(Path::new)
                .filter(|path| path.is_absolute())
                .map(Path::to_path_buf)
        };
        absolute(xdg_cache_home)
            .or_else(|| absolute(home).map(|home| home.join(".cache")))
            .map(|dir| dir.join("tokenkeeper"))
    }

    /// The layer as the refresher is configured with it: named `file`, with a
    /// lease. The lock cannot outlive its holder, so the TTL only bounds how
    /// long the refresher itself keeps it.
    pub fn core_layer() -> Layer {
        Layer::new("file").with_lease(LeaseSettings {
            ttl: Duration::from_secs(30),
            retry: Duration::from_millis(200),
            hold_through_backoff: true,
        })
    }

    /// The file cache.
    pub fn cache(&self) -> &FileCache {
        &self.cache
    }

    /// Answers a read: the record's bytes, or `None` when there is none.
    pub fn read(&self) -> Result<Option<Vec<u8>>, CacheError> {
        self.cache.load().map_err(|e| cache_error(&e))
    }

    /// Answers a write.
    pub fn write(&self, record: &EncodedRecord) -> Result<(), CacheError> {
        self.cache
            .store(record.bytes())
            .map_err(|e| cache_error(&e))
    }

    /// Answers a lease request without waiting. Holding it already counts as
    /// acquired.
    pub fn try_acquire(&self) -> LeaseOutcome {
        let mut held = self.lease.lock().unwrap_or_else(|p| p.into_inner());
        if held.is_some() {
            return LeaseOutcome::Acquired;
        }
        match self.cache.try_lock() {
            Ok(Some(lock)) => {
                *held = Some(lock);
                LeaseOutcome::Acquired
            }
            Ok(None) => LeaseOutcome::HeldByOther,
            Err(e) => LeaseOutcome::Failed(cache_error(&e)),
        }
    }

    /// Gives the lease back (a no-op when not held).
    pub fn release(&self) {
        let mut held = self.lease.lock().unwrap_or_else(|p| p.into_inner());
        held.take();
    }

    /// Whether this layer holds the lease.
    pub fn holds_lease(&self) -> bool {
        self.lease
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokenkeeper_core::cache::{decode_record, encode_record};
    use tokenkeeper_core::{AccessToken, LifetimePolicy, Timestamp, TokenGrant};

    #[test]
    fn answers_effects_for_the_refresher() {
        let dir = tempfile::tempdir().unwrap();
        let key = CacheKey::custom("test", &["a"]);
        let layer = FileLayer::in_dir(dir.path(), &key);
        assert_eq!(layer.read().unwrap(), None);
        let record = LifetimePolicy::default().record(
            TokenGrant::bearer(AccessToken::new("at"), Some(Duration::from_secs(60))),
            Timestamp::from_secs(100),
            None,
        );
        layer.write(&encode_record(&key, &record)).unwrap();
        let bytes = layer.read().unwrap().unwrap();
        assert_eq!(decode_record(&key, &bytes).unwrap(), record);

        let other = FileLayer::in_dir(dir.path(), &key);
        assert_eq!(layer.try_acquire(), LeaseOutcome::Acquired);
        assert_eq!(layer.try_acquire(), LeaseOutcome::Acquired);
        assert_eq!(other.try_acquire(), LeaseOutcome::HeldByOther);
        layer.release();
        assert!(!layer.holds_lease());
        assert_eq!(other.try_acquire(), LeaseOutcome::Acquired);
    }

    #[test]
    fn an_unusable_folder_is_a_typed_cache_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain-file");
        std::fs::write(&file, b"x").unwrap();
        let layer = FileLayer::new(FileCache::new(file.join("sub/cache.json")));
        let key = CacheKey::custom("test", &[]);
        let record = LifetimePolicy::default().record(
            TokenGrant::bearer(AccessToken::new("at"), Some(Duration::from_secs(60))),
            Timestamp::from_secs(100),
            None,
        );
        let err = layer.write(&encode_record(&key, &record)).unwrap_err();
        assert_eq!(err.kind, CacheErrorKind::Io);
        assert!(err.message.contains("plain-file"), "{err}");
        assert!(matches!(layer.try_acquire(), LeaseOutcome::Failed(_)));
    }
}
