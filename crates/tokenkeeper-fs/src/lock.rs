//! The held cross-process lock.

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use crate::FileCacheError;

/// An exclusive lock on a cache's lock file, obtained from
/// [`FileCache::try_lock`](crate::FileCache::try_lock) or
/// [`FileCache::lock_timeout`](crate::FileCache::lock_timeout).
///
/// The lock belongs to the open file it was taken on: a second `FileLock` on
/// the same lock file, in this process or any other, cannot be had while this
/// one lives. It is released when the value is dropped (or with
/// [`unlock`](FileLock::unlock)), and by the operating system when the process
/// dies, so a crashed holder never blocks the others for good. The lock file
/// itself is left in place.
pub struct FileLock {
    file: File,
    path: PathBuf,
}

impl FileLock {
    pub(crate) fn new(file: File, path: PathBuf) -> FileLock {
        FileLock { file, path }
    }

    /// The lock file this lock is held on.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Releases the lock now, reporting a failure to do so (dropping the lock
    /// releases it too, and closing the file releases it in any case).
    pub fn unlock(self) -> Result<(), FileCacheError> {
        let result = self.file.unlock().map_err(|source| FileCacheError::Io {
            op: "unlock",
            path: self.path.clone(),
            source,
        });
        // `Drop` will call `unlock` again: harmless, the lock is already gone.
        drop(self);
        result
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        if let Err(error) = self.file.unlock() {
            // The file is closed right after this, which releases the lock
            // anyway; nothing is lost, so this is only worth a debug line.
            tracing::debug!(path = %self.path.display(), %error, "unlocking the lock file failed");
        } else {
            tracing::trace!(path = %self.path.display(), "released the lock file");
        }
    }
}

impl fmt::Debug for FileLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileLock")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}
