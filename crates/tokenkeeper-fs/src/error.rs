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
            | Self::InvalidPath { path, .. } => path,
        }
    }

    /// The underlying operating-system error, when there is one.
    #[must_use]
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            Self::NotWritable { source, .. } | Self::Io { source, .. } => Some(source),
            Self::TooLarge { .. } | Self::InvalidPath { .. } => None,
        }
    }
}
