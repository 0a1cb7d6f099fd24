//! Platforms without `openat` and Unix ownership: the same operations
//! through paths. Missing folders are created, non-regular files refused,
//! stale temporary files removed; ownership, modes and links are not checked.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::Kind;
use crate::FileCacheError;

/// A folder of the cache.
pub(crate) struct Folder {
    path: PathBuf,
}

impl Folder {
    /// The folder at `path`, created when missing and `create` is set;
    /// `Ok(None)` when it does not exist and `create` is not set.
    pub(crate) fn open(path: &Path, create: bool) -> Result<Option<Folder>, FileCacheError> {
        if create {
            fs::DirBuilder::new()
                .recursive(true)
                .create(path)
                .map_err(|source| {
                    if crate::is_not_writable(&source) || source.kind() == ErrorKind::AlreadyExists
                    {
                        FileCacheError::NotWritable {
                            path: path.to_path_buf(),
                            source,
                        }
                    } else {
                        FileCacheError::Io {
                            op: "create folder",
                            path: path.to_path_buf(),
                            source,
                        }
                    }
                })?;
        }
        match fs::metadata(path) {
            Ok(metadata) if metadata.is_dir() => Ok(Some(Folder {
                path: path.to_path_buf(),
            })),
            Ok(_) => Err(FileCacheError::NotWritable {
                path: path.to_path_buf(),
                source: io::Error::new(ErrorKind::NotADirectory, "not a folder"),
            }),
            Err(error) if error.kind() == ErrorKind::NotFound && !create => Ok(None),
            Err(source) => Err(FileCacheError::Io {
                op: "open folder",
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// The folder's path, as given.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the record for reading; `Ok(None)` when there is none.
    pub(crate) fn open_record(
        &self,
        name: &OsStr,
        path: &Path,
    ) -> Result<Option<File>, FileCacheError> {
        let entry = self.path.join(name);
        match fs::metadata(&entry) {
            Ok(metadata) if !metadata.is_file() => {
                return Err(FileCacheError::InvalidPath {
                    path: path.to_path_buf(),
                    reason: kind(&metadata).reason(),
                });
            }
            Ok(_) => {}
            Err(error) if error.kind() == ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(FileCacheError::Io {
                    op: "inspect",
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
        match File::open(&entry) {
            Ok(file) => Ok(Some(file)),
            Err(error) if error.kind() == ErrorKind::NotFound => Ok(None),
            Err(source) => Err(FileCacheError::Io {
                op: "open",
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Opens (creating if needed) the lock file for reading and writing.
    pub(crate) fn open_lock(&self, name: &OsStr, path: &Path) -> Result<File, FileCacheError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(self.path.join(name))
            .map_err(|source| {
                if crate::is_not_writable(&source) {
                    FileCacheError::NotWritable {
                        path: if path.exists() {
                            path.to_path_buf()
                        } else {
                            self.path.clone()
                        },
                        source,
                    }
                } else {
                    FileCacheError::Io {
                        op: "open lock file",
                        path: path.to_path_buf(),
                        source,
                    }
                }
            })?;
        let metadata = file.metadata().map_err(|source| FileCacheError::Io {
            op: "inspect",
            path: path.to_path_buf(),
            source,
        })?;
        if !metadata.is_file() {
            return Err(FileCacheError::InvalidPath {
                path: path.to_path_buf(),
                reason: kind(&metadata).reason(),
            });
        }
        Ok(file)
    }

    /// Creates the new file `name`, failing if anything is there already.
    pub(crate) fn create_new(&self, name: &OsStr) -> io::Result<File> {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(self.path.join(name))
    }

    /// Renames `from` over `to`, both in this folder.
    pub(crate) fn rename(&self, from: &OsStr, to: &OsStr) -> io::Result<()> {
        fs::rename(self.path.join(from), self.path.join(to))
    }

    /// Removes the file `name`.
    pub(crate) fn remove(&self, name: &OsStr) -> io::Result<()> {
        fs::remove_file(self.path.join(name))
    }

    /// Folders cannot be synced here; the rename is as durable as the
    /// platform makes it.
    pub(crate) fn sync(&self) -> io::Result<()> {
        Ok(())
    }

    /// Removes the regular files whose names satisfy `is_temp` and that were
    /// last modified at least `min_age` ago.
    pub(crate) fn remove_stale(
        &self,
        is_temp: impl Fn(&OsStr) -> bool,
        min_age: Duration,
    ) -> io::Result<usize> {
        let now = SystemTime::now();
        let mut removed = 0;
        for entry in fs::read_dir(&self.path)? {
            let entry = entry?;
            if !is_temp(&entry.file_name()) {
                continue;
            }
            let Ok(metadata) = fs::symlink_metadata(entry.path()) else {
                continue;
            };
            let age = metadata
                .modified()
                .ok()
                .and_then(|modified| now.duration_since(modified).ok())
                .unwrap_or(Duration::ZERO);
            if !metadata.is_file() || age < min_age {
                continue;
            }
            match fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                Err(error) if error.kind() == ErrorKind::NotFound => {}
                Err(error) => return Err(error),
            }
        }
        Ok(removed)
    }
}

fn kind(metadata: &fs::Metadata) -> Kind {
    if metadata.is_dir() {
        Kind::Folder
    } else if metadata.is_symlink() {
        Kind::Symlink
    } else {
        Kind::Other
    }
}
