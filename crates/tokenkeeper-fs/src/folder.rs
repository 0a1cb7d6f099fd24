//! The cache's folder, opened once and checked, and everything done inside it.
//!
//! On Unix the folder is held open and every file operation is relative to
//! that handle (`openat`, `renameat`, `unlinkat`), so the folder that was
//! checked is the folder that is written, whatever happens to its path in the
//! meantime. Elsewhere the operations go through paths.

#[cfg(not(unix))]
mod portable;
#[cfg(unix)]
mod unix;

#[cfg(not(unix))]
pub(crate) use portable::Folder;
#[cfg(unix)]
pub(crate) use unix::Folder;

/// The kinds of non-regular files found where a record or lock file belongs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(unix), allow(dead_code))]
pub(crate) enum Kind {
    Folder,
    Fifo,
    Socket,
    Device,
    Symlink,
    Other,
}

impl Kind {
    /// Why such a file cannot be used, and what to do: the `reason` of
    /// [`FileCacheError::InvalidPath`](crate::FileCacheError::InvalidPath).
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Kind::Folder => "it is a folder, not a regular file; remove it or choose another path",
            Kind::Fifo => {
                "it is a named pipe (FIFO), not a regular file; remove it or choose another path"
            }
            Kind::Socket => "it is a socket, not a regular file; remove it or choose another path",
            Kind::Device => "it is a device, not a regular file; choose another path",
            Kind::Symlink => {
                "it is a symbolic link, not a regular file; remove it or choose another path"
            }
            Kind::Other => "it is not a regular file; remove it or choose another path",
        }
    }
}
