//! The error type of the file cache.

use std::io;
use std::path::PathBuf;

/// What went wrong while loading, storing, removing or locking a cache file.
///
/// Every variant names the path involved and what was being attempted. The
/// message includes the operating system's reason, which is also available
/// through [`std::error::Error::source`] where there is one.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum FileCacheError {
    /// A folder or file could not be created or written: missing permissions,
    /// a read-only file system, or a path component that is not a folder.
    ///
    /// `path` is the folder that could not be created or written into, or the
    /// file that could not be opened for writing.
    #[error("cannot write to {}: {source}", path.display())]
    NotWritable {
        /// The folder (or file) that is not writable.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// Any other I/O failure.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was attempted, e.g. `"read"`, `"sync folder"`, `"lock"`.
        op: &'static str,
        /// The file or folder the operation was applied to.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// A record is larger than the configured maximum; nothing was read or
    /// written beyond the limit.
    #[error("{} is {size} bytes, more than the limit of {max} bytes", path.display())]
    TooLarge {
        /// The record file.
        path: PathBuf,
        /// The size found (for a load) or offered (for a store), in bytes.
        /// For a file that grows while it is read this is a lower bound.
        size: u64,
        /// The configured maximum, in bytes.
        max: u64,
    },
    /// The cache folder, the record or the lock file belongs to another user
    /// (neither the current user nor root). Like OpenSSH's `StrictModes`, the
    /// cache neither reads from nor writes into what someone else controls.
    #[error(
        "{} is owned by uid {owner}, not by the current user (uid {uid}): refusing to use it; \
         use a folder of your own, or give it to the current user (`chown {uid} {}`)",
        path.display(),
        path.display()
    )]
    NotOwned {
        /// The folder or file with the wrong owner.
        path: PathBuf,
        /// Its owner's user id.
        owner: u32,
        /// The current (effective) user id.
        uid: u32,
    },
    /// The cache folder or the record can be written by group or others, who
    /// could then plant or swap a record. Nothing was read from it or
    /// written into it.
    #[error(
        "{} can be written by group or others (mode {mode:04o}): refusing to trust it; \
         remove their write permission (`chmod go-w {}`)",
        path.display(),
        path.display()
    )]
    WritableByOthers {
        /// The folder or file that others can write.
        path: PathBuf,
        /// Its permission bits (`st_mode & 0o7777`).
        mode: u32,
    },
    /// A symbolic link where the cache does not follow one: at the record or
    /// lock path, or a folder on the way that could redirect the cache
    /// elsewhere (a link owned by another user, or in a folder others can
    /// write). The link's target is neither opened nor quoted.
    #[error("{} is a symbolic link that the cache does not follow: {reason}", path.display())]
    Symlink {
        /// The link.
        path: PathBuf,
        /// Why it is not followed, and what to do instead.
        reason: &'static str,
    },
    /// The path cannot hold a cache record: it has no file name, or it names
    /// something that is not a regular file (a folder, a pipe, a device).
    #[error("{} cannot be used as a cache file: {reason}", path.display())]
    InvalidPath {
        /// The offending path.
        path: PathBuf,
        /// Why it cannot be used.
        reason: &'static str,
    },
}

impl FileCacheError {
    /// The path the error is about.
    #[must_use]
    pub fn path(&self) -> &std::path::Path {
        match self {
            Self::NotWritable { path, .. }
            | Self::Io { path, .. }
            | Self::TooLarge { path, .. }
            | Self::InvalidPath { path, .. }
            | Self::NotOwned { path, .. }
            | Self::WritableByOthers { path, .. }
            | Self::Symlink { path, .. } => path,
        }
    }

    /// The underlying operating-system error, when there is one.
    #[must_use]
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            Self::NotWritable { source, .. } | Self::Io { source, .. } => Some(source),
            Self::TooLarge { .. }
            | Self::InvalidPath { .. }
            | Self::NotOwned { .. }
            | Self::WritableByOthers { .. }
            | Self::Symlink { .. } => None,
        }
    }
}
