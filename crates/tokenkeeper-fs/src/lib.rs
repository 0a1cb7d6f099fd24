//! A std-only file cache for tokenkeeper: one record file, replaced
//! atomically, private to its owner, with a sibling lock file that serialises
//! the read-check-fetch-write cycle across processes.
//!
//! The cache is byte-level. It stores and loads opaque record bytes; encoding,
//! decoding and deciding whether a record is still good belong to
//! `tokenkeeper-core`. Every adapter uses this crate for its file cache.
//!
//! # Guarantees
//!
//! - [`FileCache::store`] writes a temporary file in the same folder (created
//!   with mode `0600`), syncs it, renames it over the record and syncs the
//!   folder. A reader sees the old record or the new one, never a mix, and a
//!   crash never leaves a partial record behind.
//! - Missing folders are created with mode `0700`.
//! - [`FileCache::load`] reads at most a configurable number of bytes
//!   ([`DEFAULT_MAX_SIZE`] unless changed); a larger file is an error, not a
//!   large allocation.
//! - [`FileCache::try_lock`] takes an exclusive lock on `<record>.lock`
//!   (created with mode `0600`, never deleted). Two handles conflict whether
//!   they live in one process or in two, and the operating system releases
//!   the lock when its holder exits or crashes. The lock is advisory: it
//!   binds those who take it, and [`load`](FileCache::load) and
//!   [`store`](FileCache::store) do not take it themselves (they are safe
//!   without it; the lock is for callers that must not fetch twice).
//! - Nothing blocks on a special file: a FIFO, socket, device or folder at
//!   the record or lock path is refused at once
//!   ([`FileCacheError::InvalidPath`]).
//! - A store removes the temporary files that crashed writers left next to
//!   the record: those named like its own, owned by the current user and
//!   untouched for [`STALE_TEMP_AGE`].
//!
//! # Hostile paths (Unix)
//!
//! Like OpenSSH's `StrictModes`, the cache trusts only what nobody else could
//! have put in place. Each refusal is a typed error naming the path and the
//! fix; no error ever quotes a file's content.
//!
//! - The record's folder must belong to the current user (or root) and must
//!   not be writable by group or others; the same holds for the record
//!   ([`FileCacheError::NotOwned`], [`FileCacheError::WritableByOthers`]).
//!   A record of another user, or in a folder others can write, is never
//!   served and never written.
//! - The record, lock and temporary files are opened with `O_NOFOLLOW`: a
//!   symbolic link there is refused ([`FileCacheError::Symlink`]), and the
//!   lock file is never created through one. A lock file of the current user
//!   with a mode wider than `0600` is narrowed to `0600`; one of another user
//!   is refused.
//! - The folder path is walked one folder at a time, each opened relative to
//!   the one before with `O_NOFOLLOW`, and folders are created the same way.
//!   A symbolic link on the way is followed only if nobody but the current
//!   user or root could have made it (the link is theirs, in a folder of
//!   theirs that group and others cannot write, or that is sticky like
//!   `/tmp`): pointing `~/.cache` at another disk works, a folder swapped for
//!   a link by someone else is refused. All reads and writes then happen
//!   relative to the folder that was checked.
//!
//! On other platforms the cache goes through paths and checks neither owners
//! nor links.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tokenkeeper_fs::FileCache;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! let cache = FileCache::new(dir.path().join("tokens/service.json"));
//!
//! // Nothing stored yet.
//! assert_eq!(cache.load()?, None);
//!
//! // Take the lease, look again, fetch if still needed, store, release.
//! let lease = cache.lock_timeout(Duration::from_secs(5))?.expect("nobody else holds it");
//! if cache.load()?.is_none() {
//!     cache.store(br#"{"version":1}"#)?;
//! }
//! drop(lease);
//!
//! assert_eq!(cache.load()?.as_deref(), Some(&br#"{"version":1}"#[..]));
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod error;
mod folder;
mod layer;
mod lock;

use std::collections::hash_map::RandomState;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::hash::{BuildHasher, Hasher};
use std::io::{self, ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use folder::Folder;

pub use error::FileCacheError;
pub use layer::FileLayer;
pub use lock::FileLock;

/// The default largest record [`FileCache::load`] accepts: 1 MiB.
pub const DEFAULT_MAX_SIZE: u64 = 1024 * 1024;

/// How long a temporary file left in the cache's folder must have been
/// untouched before [`FileCache::store`] takes it for the leftover of a
/// crashed writer and removes it: one minute. A writer at work touches its
/// temporary file within moments, so its file is never this old.
pub const STALE_TEMP_AGE: Duration = Duration::from_secs(60);

/// First and longest pause between two attempts of [`FileCache::lock_timeout`].
const LOCK_POLL_FIRST: Duration = Duration::from_millis(5);
const LOCK_POLL_MAX: Duration = Duration::from_millis(50);

/// How many fresh names [`FileCache::store`] tries when a temporary name is
/// taken already (practically never more than one).
const TEMP_NAME_ATTEMPTS: u32 = 8;

/// At most this many characters of the record's name go into a temporary
/// file's name, which keeps it under the usual 255-byte name limit.
const TEMP_PREFIX_CHARS: usize = 64;

/// A cache record file and its sibling lock file.
///
/// Creating a `FileCache` touches nothing on disk; folders and files are
/// created when first needed. The value is cheap to clone, and clones (or
/// separate instances for the same path) coordinate through the lock file
/// exactly like separate processes do.
#[derive(Debug, Clone)]
pub struct FileCache {
    path: PathBuf,
    lock_path: PathBuf,
    max_size: u64,
}

impl FileCache {
    /// A cache stored at `path`, locked through `<path>.lock`, accepting
    /// records up to [`DEFAULT_MAX_SIZE`].
    pub fn new(path: impl Into<PathBuf>) -> FileCache {
        let path = path.into();
        let mut lock_path = OsString::from(path.as_os_str());
        lock_path.push(".lock");
        FileCache {
            path,
            lock_path: PathBuf::from(lock_path),
            max_size: DEFAULT_MAX_SIZE,
        }
    }

    /// Sets the largest record, in bytes, that [`load`](Self::load) accepts
    /// and [`store`](Self::store) writes.
    #[must_use]
    pub fn with_max_size(mut self, max_size: u64) -> FileCache {
        self.max_size = max_size;
        self
    }

    /// The path of the record file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of the lock file: the record's path with `.lock` appended.
    #[must_use]
    pub fn lock_path(&self) -> &Path {
        &self.lock_path
    }

    /// The largest record accepted, in bytes.
    #[must_use]
    pub fn max_size(&self) -> u64 {
        self.max_size
    }

    /// Reads the whole record.
    ///
    /// Returns `Ok(None)` when the file (or its folder) does not exist, and
    /// [`FileCacheError::TooLarge`] when it holds more than
    /// [`max_size`](Self::max_size) bytes (at most one byte past the limit is
    /// read). Never blocks on a special file: a path that names a folder, a
    /// FIFO, a socket or a device is [`FileCacheError::InvalidPath`] at once.
    ///
    /// On Unix nothing that someone else controls is served:
    /// [`FileCacheError::NotOwned`] when the folder or the record belongs to
    /// another user, [`FileCacheError::WritableByOthers`] when group or
    /// others can write either, [`FileCacheError::Symlink`] when the record
    /// is a symbolic link (its target is neither read nor quoted) or a link
    /// on the way could redirect the cache.
    pub fn load(&self) -> Result<Option<Vec<u8>>, FileCacheError> {
        let name = self.file_name()?;
        let Some(folder) = Folder::open(self.folder(), false)? else {
            tracing::trace!(path = %self.path.display(), "no cache folder");
            return Ok(None);
        };
        let Some(file) = folder.open_record(name, &self.path)? else {
            tracing::trace!(path = %self.path.display(), "no cache file");
            return Ok(None);
        };
        let metadata = file
            .metadata()
            .map_err(|source| self.io_error("inspect", source))?;
        if metadata.len() > self.max_size {
            return Err(self.too_large(metadata.len()));
        }
        // The length is only a hint (the file may change between the two
        // calls); the `take` below is what bounds the read.
        let capacity = usize::try_from(metadata.len()).unwrap_or(0);
        let mut bytes = Vec::with_capacity(capacity);
        file.take(self.max_size.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|source| self.io_error("read", source))?;
        let read = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        if read > self.max_size {
            return Err(self.too_large(read));
        }
        tracing::trace!(path = %self.path.display(), bytes = bytes.len(), "loaded cache file");
        Ok(Some(bytes))
    }

    /// Replaces the record with `bytes`, atomically.
    ///
    /// Writes a uniquely named temporary file in the record's folder (mode
    /// `0600`), syncs it to disk, renames it over the record and syncs the
    /// folder, creating missing folders (mode `0700`) first. If any step
    /// fails the temporary file is removed and the previous record, if any,
    /// is left as it was. Afterwards it removes the temporary files of this
    /// record that crashed writers left behind: those of the current user
    /// untouched for [`STALE_TEMP_AGE`] or longer (younger ones may belong to
    /// a writer at work).
    ///
    /// Fails with [`FileCacheError::NotWritable`] (naming the folder) when
    /// the folder cannot be created or written into, and with
    /// [`FileCacheError::TooLarge`] when `bytes` exceeds
    /// [`max_size`](Self::max_size). On Unix it writes only into a folder
    /// of the current user that group and others cannot write (else
    /// [`FileCacheError::NotOwned`] or [`FileCacheError::WritableByOthers`]),
    /// reached without following a link that someone else could have placed
    /// ([`FileCacheError::Symlink`]); every file operation is relative to the
    /// folder checked, so swapping a folder on the way for a link meanwhile
    /// cannot redirect it.
    pub fn store(&self, bytes: &[u8]) -> Result<(), FileCacheError> {
        let size = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        if size > self.max_size {
            return Err(self.too_large(size));
        }
        let name = self.file_name()?;
        let folder = self.open_folder_creating()?;
        let (temp_name, mut file) = create_temp_file(&folder, name)?;
        let temp = TempFile {
            folder: &folder,
            name: Some(temp_name),
        };
        let temp_path = || folder.path().join(temp.name());

        file.write_all(bytes).map_err(|source| FileCacheError::Io {
            op: "write temporary file",
            path: temp_path(),
            source,
        })?;
        file.sync_all().map_err(|source| FileCacheError::Io {
            op: "sync temporary file",
            path: temp_path(),
            source,
        })?;
        drop(file);
        folder
            .rename(temp.name(), name)
            .map_err(|source| FileCacheError::Io {
                op: "rename a temporary file over",
                path: self.path.clone(),
                source,
            })?;
        temp.keep();
        sync_folder(&folder)?;
        tracing::debug!(path = %self.path.display(), bytes = bytes.len(), "stored cache file");
        match folder.remove_stale(|entry| is_temp_name(entry, name), STALE_TEMP_AGE) {
            Ok(0) => {}
            Ok(removed) => tracing::debug!(
                folder = %folder.path().display(),
                removed,
                "removed temporary files left by crashed writers"
            ),
            Err(error) => tracing::debug!(
                folder = %folder.path().display(),
                %error,
                "cannot look for temporary files left by crashed writers"
            ),
        }
        Ok(())
    }

    /// Removes the record. A record that does not exist is not an error.
    /// The lock file is left in place. A symbolic link at the record's path
    /// is removed, not followed.
    pub fn remove(&self) -> Result<(), FileCacheError> {
        let name = self.file_name()?;
        let Some(folder) = Folder::open(self.folder(), false)? else {
            return Ok(());
        };
        match folder.remove(name) {
            Ok(()) => {
                tracing::debug!(path = %self.path.display(), "removed cache file");
                Ok(())
            }
            Err(error) if error.kind() == ErrorKind::NotFound => Ok(()),
            Err(source) => Err(self.io_error("remove", source)),
        }
    }

    /// Tries to take the exclusive lock on the lock file, without waiting.
    ///
    /// Returns `Ok(None)` when another holder has it: another process, or
    /// another [`FileLock`] in this process (taken through this or any other
    /// `FileCache` for the same path). Creates the lock file (mode `0600`)
    /// and its folders (mode `0700`) when missing; the lock file is never
    /// deleted, since deleting lock files races with their users.
    ///
    /// On Unix the lock file is opened without following a link
    /// ([`FileCacheError::Symlink`]); one of another user is refused
    /// ([`FileCacheError::NotOwned`]), and one of the current user with a
    /// mode wider than `0600` is narrowed to `0600`, so that nobody else can
    /// open it to hold the lock. Its folder passes the same checks as for
    /// [`store`](Self::store).
    pub fn try_lock(&self) -> Result<Option<FileLock>, FileCacheError> {
        let file = self.open_lock_file()?;
        if self.try_lock_file(&file)? {
            Ok(Some(FileLock::new(file, self.lock_path.clone())))
        } else {
            tracing::trace!(path = %self.lock_path.display(), "lock file held elsewhere");
            Ok(None)
        }
    }

    /// Takes the exclusive lock, waiting up to `timeout` for the current
    /// holder to release it; `Ok(None)` when it was still held at the end.
    ///
    /// Meant for one-shot callers such as a command-line run. It polls with
    /// short sleeps (5 ms growing to 50 ms) rather than blocking in the
    /// kernel, so the timeout is honoured.
    pub fn lock_timeout(&self, timeout: Duration) -> Result<Option<FileLock>, FileCacheError> {
        let start = Instant::now();
        let file = self.open_lock_file()?;
        let mut pause = LOCK_POLL_FIRST;
        loop {
            if self.try_lock_file(&file)? {
                tracing::trace!(
                    path = %self.lock_path.display(),
                    waited_ms = start.elapsed().as_millis(),
                    "took the lock file"
                );
                return Ok(Some(FileLock::new(file, self.lock_path.clone())));
            }
            let elapsed = start.elapsed();
            if elapsed >= timeout {
                tracing::debug!(
                    path = %self.lock_path.display(),
                    timeout_ms = timeout.as_millis(),
                    "lock file still held at the end of the wait"
                );
                return Ok(None);
            }
            std::thread::sleep(pause.min(timeout - elapsed));
            pause = (pause * 2).min(LOCK_POLL_MAX);
        }
    }

    /// `true` when the lock was taken on `file`, `false` when it is held
    /// elsewhere.
    fn try_lock_file(&self, file: &File) -> Result<bool, FileCacheError> {
        match file.try_lock() {
            Ok(()) => Ok(true),
            Err(fs::TryLockError::WouldBlock) => Ok(false),
            Err(fs::TryLockError::Error(source)) => Err(FileCacheError::Io {
                op: "lock",
                path: self.lock_path.clone(),
                source,
            }),
        }
    }

    /// Opens (creating if needed) the lock file for reading and writing.
    fn open_lock_file(&self) -> Result<File, FileCacheError> {
        let mut name = self.file_name()?.to_os_string();
        name.push(".lock");
        let folder = self.open_folder_creating()?;
        folder.open_lock(&name, &self.lock_path)
    }

    /// Opens the record's folder, creating it (and missing ancestors) first.
    fn open_folder_creating(&self) -> Result<Folder, FileCacheError> {
        Folder::open(self.folder(), true)?.ok_or_else(|| FileCacheError::Io {
            op: "create folder",
            path: self.folder().to_path_buf(),
            source: io::Error::new(ErrorKind::NotFound, "the folder vanished as it was created"),
        })
    }

    /// The folder holding the record (`.` for a bare file name).
    fn folder(&self) -> &Path {
        match self.path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        }
    }

    fn file_name(&self) -> Result<&OsStr, FileCacheError> {
        self.path
            .file_name()
            .ok_or_else(|| FileCacheError::InvalidPath {
                path: self.path.clone(),
                reason: "it has no file name",
            })
    }

    fn io_error(&self, op: &'static str, source: io::Error) -> FileCacheError {
        FileCacheError::Io {
            op,
            path: self.path.clone(),
            source,
        }
    }

    fn too_large(&self, size: u64) -> FileCacheError {
        FileCacheError::TooLarge {
            path: self.path.clone(),
            size,
            max: self.max_size,
        }
    }
}

/// Errors that mean "this place cannot be written", as opposed to a
/// transient or unexpected I/O failure.
pub(crate) fn is_not_writable(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem | ErrorKind::NotADirectory
    )
}

/// Creates a new, uniquely named temporary file (mode `0600`) in `folder`.
fn create_temp_file(folder: &Folder, target: &OsStr) -> Result<(OsString, File), FileCacheError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let name = temp_name(target);
        match folder.create_new(&name) {
            Ok(file) => return Ok((name, file)),
            Err(error)
                if error.kind() == ErrorKind::AlreadyExists && attempt < TEMP_NAME_ATTEMPTS =>
            {
                continue;
            }
            Err(source) if is_not_writable(&source) => {
                return Err(FileCacheError::NotWritable {
                    path: folder.path().to_path_buf(),
                    source,
                });
            }
            Err(source) => {
                return Err(FileCacheError::Io {
                    op: "create a temporary file in",
                    path: folder.path().to_path_buf(),
                    source,
                });
            }
        }
    }
}

/// The part of the record's name that starts its temporary files' names.
fn temp_prefix(target: &OsStr) -> String {
    target
        .to_string_lossy()
        .chars()
        .take(TEMP_PREFIX_CHARS)
        .collect()
}

/// `.<target>.<pid>.<counter>.<random>.tmp`: unique across processes (pid),
/// threads and calls (counter), and against stale leftovers of a previous
/// process with the same pid (random).
fn temp_name(target: &OsStr) -> OsString {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let counter = COUNTER.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(counter);
    hasher.write_u32(pid);
    if let Ok(since_epoch) = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH) {
        hasher.write_u128(since_epoch.as_nanos());
    }
    let random = hasher.finish();
    let prefix = temp_prefix(target);
    OsString::from(format!(".{prefix}.{pid}.{counter}.{random:016x}.tmp"))
}

/// Whether `name` is exactly what [`temp_name`] makes for `target`.
fn is_temp_name(name: &OsStr, target: &OsStr) -> bool {
    let Some(name) = name.to_str() else {
        return false;
    };
    let Some(rest) = name
        .strip_prefix('.')
        .and_then(|rest| rest.strip_prefix(temp_prefix(target).as_str()))
        .and_then(|rest| rest.strip_prefix('.'))
        .and_then(|rest| rest.strip_suffix(".tmp"))
    else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let mut parts = rest.split('.');
    matches!(
        (parts.next(), parts.next(), parts.next(), parts.next()),
        (Some(pid), Some(counter), Some(random), None)
            if digits(pid)
                && digits(counter)
                && random.len() == 16
                && random.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    )
}

/// Syncs the folder so that a rename inside it is durable. File systems that
/// cannot sync folders (they answer "invalid argument" or "not supported")
/// are accepted as they are.
fn sync_folder(folder: &Folder) -> Result<(), FileCacheError> {
    match folder.sync() {
        Ok(()) => Ok(()),
        Err(error)
            if matches!(
                error.kind(),
                ErrorKind::InvalidInput | ErrorKind::Unsupported
            ) =>
        {
            tracing::trace!(path = %folder.path().display(), %error, "folder sync not supported here");
            Ok(())
        }
        Err(source) => Err(FileCacheError::Io {
            op: "sync folder",
            path: folder.path().to_path_buf(),
            source,
        }),
    }
}

/// A temporary file that is removed on drop unless [`kept`](TempFile::keep).
struct TempFile<'a> {
    folder: &'a Folder,
    name: Option<OsString>,
}

impl TempFile<'_> {
    fn name(&self) -> &OsStr {
        self.name.as_deref().unwrap_or_default()
    }

    /// The file was renamed into place: nothing left to clean up.
    fn keep(mut self) {
        self.name = None;
    }
}

impl Drop for TempFile<'_> {
    fn drop(&mut self) {
        if let Some(name) = self.name.take()
            && let Err(error) = self.folder.remove(&name)
        {
            tracing::warn!(
                path = %self.folder.path().join(&name).display(),
                %error,
                "cannot remove a temporary cache file"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_file_name_lives_in_the_current_folder() {
        let cache = FileCache::new("cache.json");
        assert_eq!(cache.folder(), Path::new("."));
        assert_eq!(cache.lock_path(), Path::new("cache.json.lock"));
        let nested = FileCache::new("a/b.json");
        assert_eq!(nested.folder(), Path::new("a"));
        assert_eq!(nested.lock_path(), Path::new("a/b.json.lock"));
    }

    #[test]
    fn temporary_names_are_recognised_exactly() {
        let target = OsStr::new("cache.json");
        let made = temp_name(target);
        assert!(is_temp_name(&made, target), "{made:?}");
        assert!(!is_temp_name(&made, OsStr::new("cache")));
        assert!(!is_temp_name(&made, OsStr::new("other.json")));
        for other in [
            "cache.json",
            "cache.json.lock",
            ".cache.json.tmp",
            ".cache.json.1.2.tmp",
            ".cache.json.1.2.0123456789abcdef",
            ".cache.json.x.2.0123456789abcdef.tmp",
            ".cache.json.1.2.0123456789ABCDEF.tmp",
            ".cache.json.1.2.0123456789abcde.tmp",
            ".cache.json.1.2.3.0123456789abcdef.tmp",
            ".cache.json.1..0123456789abcdef.tmp",
        ] {
            assert!(!is_temp_name(OsStr::new(other), target), "{other}");
        }
        assert!(is_temp_name(
            OsStr::new(".cache.json.1.2.0123456789abcdef.tmp"),
            target
        ));
        let long = "x".repeat(250);
        assert!(is_temp_name(
            &temp_name(OsStr::new(&long)),
            OsStr::new(&long)
        ));
    }

    #[test]
    fn temporary_names_are_hidden_unique_and_bounded() {
        let a = temp_name(OsStr::new("cache.json"));
        let b = temp_name(OsStr::new("cache.json"));
        assert_ne!(a, b);
        let a = a.to_string_lossy().into_owned();
        assert!(a.starts_with(".cache.json."), "{a}");
        assert!(a.ends_with(".tmp"), "{a}");
        assert!(a.contains(&format!(".{}.", std::process::id())), "{a}");

        let long = "x".repeat(250);
        let name = temp_name(OsStr::new(&long));
        assert!(name.len() < 255, "{} bytes", name.len());
    }
}
