//! Unix: the folder held open, every operation relative to it, nothing
//! followed that others could have planted.
//!
//! The rules, in the spirit of OpenSSH's `StrictModes`:
//!
//! - The folder holding the record must belong to the current user (or
//!   root) and must not be writable by group or others.
//! - The record and the lock file must be regular files of the current user
//!   (or root); the record must not be writable by group or others, and a
//!   lock file of ours with a wider mode than `0600` is narrowed to `0600`.
//! - The record, lock and temporary files are opened with `O_NOFOLLOW`
//!   (and `O_NONBLOCK`, so that a FIFO or device never blocks the open).
//! - The folder path is walked one component at a time with `O_NOFOLLOW`,
//!   relative to the previous component; folders the cache creates are
//!   created that way too. A symbolic link on the way is followed only when
//!   nobody but the current user or root could have made it: the link
//!   belongs to one of them and sits in a folder that belongs to one of them
//!   and that group and others cannot write (or that is sticky, like `/tmp`).
//!   A link placed by anyone else, or in a folder anyone else can write, is
//!   refused, so a folder swapped for a link cannot send the cache elsewhere.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use rustix::fs::{AtFlags, CWD, Dir, FileType, Mode, OFlags};
use rustix::io::Errno;

use super::Kind;
use crate::FileCacheError;

/// Mode of the files the cache creates: `0600`.
const FILE_MODE: Mode = Mode::RUSR.union(Mode::WUSR);
/// Mode of the folders the cache creates: `0700`.
const DIR_MODE: Mode = Mode::RWXU;
/// Write permission for group or others.
const GROUP_OTHER_WRITE: u32 = 0o022;
/// Any permission for group or others, or a special bit: what a lock file
/// must not have.
const WIDER_THAN_0600: u32 = 0o7177;
/// The sticky bit: in such a folder only an entry's owner (or the folder's)
/// may rename or remove it.
const STICKY: u32 = 0o1000;
/// Symbolic links followed in one walk at most, as the kernel does.
const MAX_SYMLINKS: u32 = 40;

/// Opens a folder on the way only to look inside it. On Linux `O_PATH`
/// needs no read permission, only search permission, like a path lookup.
#[cfg(any(target_os = "linux", target_os = "android"))]
const SEARCH: OFlags = OFlags::PATH;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const SEARCH: OFlags = OFlags::RDONLY;

/// Flags opening a record or lock file: never through a link, never blocking
/// on a FIFO or device, never acquiring a terminal.
const FILE_FLAGS: OFlags = OFlags::NOFOLLOW
    .union(OFlags::NONBLOCK)
    .union(OFlags::NOCTTY)
    .union(OFlags::CLOEXEC);

const LINK_ON_THE_WAY: &str = "it belongs to another user, or sits in a folder that others \
    can write, so it could send the cache elsewhere; point the cache at the real folder";
const LINK_AT_A_FILE: &str = "the record and lock files must be regular files, never links; \
    remove the link (a store writes a private record in its place) or point the cache at the \
    real file";

/// A folder of the cache, open and checked.
pub(crate) struct Folder {
    dir: File,
    path: PathBuf,
    uid: u32,
}

impl Folder {
    /// Opens the folder at `path`, creating missing folders (mode `0700`)
    /// when `create` is set, and checks that it belongs to the current user
    /// (or root) and that group and others cannot write it. `Ok(None)` when
    /// it does not exist and `create` is not set.
    pub(crate) fn open(path: &Path, create: bool) -> Result<Option<Folder>, FileCacheError> {
        let uid = rustix::process::geteuid().as_raw();
        let mut walk = Walk {
            folder: path,
            uid,
            create,
            links: 0,
        };
        let start = if path.has_root() { "/" } else { "." };
        let start =
            open_dir(CWD, start).map_err(|e| walk.error("open folder", Path::new(start), e))?;
        let Some(found) = walk.walk(start, path, &mut PathBuf::new())? else {
            return Ok(None);
        };
        // Reopened for reading: syncing it and listing it need that.
        let dir = rustix::fs::openat(
            &found,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map(File::from)
        .map_err(|e| walk.error("open folder", path, e))?;
        let metadata = dir.metadata().map_err(|source| FileCacheError::Io {
            op: "inspect folder",
            path: path.to_path_buf(),
            source,
        })?;
        check_owner(path, metadata.uid(), uid)?;
        if metadata.mode() & GROUP_OTHER_WRITE != 0 {
            return Err(FileCacheError::WritableByOthers {
                path: path.to_path_buf(),
                mode: metadata.mode() & 0o7777,
            });
        }
        Ok(Some(Folder {
            dir,
            path: path.to_path_buf(),
            uid,
        }))
    }

    /// The folder's path, as given.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the record `name` (shown as `path`) for reading. `Ok(None)` when
    /// there is none. Refuses a link, a non-regular file, a file of another
    /// user and a file that group or others can write.
    pub(crate) fn open_record(
        &self,
        name: &OsStr,
        path: &Path,
    ) -> Result<Option<File>, FileCacheError> {
        let file =
            match rustix::fs::openat(&self.dir, name, OFlags::RDONLY | FILE_FLAGS, Mode::empty()) {
                Ok(fd) => File::from(fd),
                Err(Errno::NOENT) => return Ok(None),
                Err(e) => return Err(self.open_error("open", name, path, e)),
            };
        let metadata = self.check_file(&file, path)?;
        if metadata.mode() & GROUP_OTHER_WRITE != 0 {
            return Err(FileCacheError::WritableByOthers {
                path: path.to_path_buf(),
                mode: metadata.mode() & 0o7777,
            });
        }
        Ok(Some(file))
    }

    /// Opens (creating with mode `0600` if needed) the lock file `name`
    /// (shown as `path`) for reading and writing. Refuses a link, a
    /// non-regular file and a file of another user; narrows a wider mode to
    /// `0600`.
    pub(crate) fn open_lock(&self, name: &OsStr, path: &Path) -> Result<File, FileCacheError> {
        let flags = OFlags::RDWR | OFlags::CREATE | FILE_FLAGS;
        let file = rustix::fs::openat(&self.dir, name, flags, FILE_MODE)
            .map(File::from)
            .map_err(|e| match e {
                Errno::ACCESS | Errno::PERM | Errno::ROFS => FileCacheError::NotWritable {
                    // Blame the lock file if it exists (we may not write
                    // it), else the folder (we may not create files in it).
                    path: if self.stat(name).is_ok() {
                        path.to_path_buf()
                    } else {
                        self.path.clone()
                    },
                    source: e.into(),
                },
                e => self.open_error("open lock file", name, path, e),
            })?;
        let metadata = self.check_file(&file, path)?;
        let mode = metadata.mode() & 0o7777;
        if mode & WIDER_THAN_0600 != 0 {
            rustix::fs::fchmod(&file, FILE_MODE).map_err(|e| FileCacheError::Io {
                op: "restrict to mode 0600 (`chmod 600`)",
                path: path.to_path_buf(),
                source: e.into(),
            })?;
            tracing::warn!(
                path = %path.display(),
                mode = format_args!("{mode:04o}"),
                "the lock file was open to others; restricted it to mode 0600"
            );
        }
        Ok(file)
    }

    /// Creates the new file `name` with mode `0600`, failing if anything
    /// (a link included) is there already.
    pub(crate) fn create_new(&self, name: &OsStr) -> io::Result<File> {
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        Ok(File::from(rustix::fs::openat(
            &self.dir, name, flags, FILE_MODE,
        )?))
    }

    /// Renames `from` over `to`, both in this folder.
    pub(crate) fn rename(&self, from: &OsStr, to: &OsStr) -> io::Result<()> {
        Ok(rustix::fs::renameat(&self.dir, from, &self.dir, to)?)
    }

    /// Removes the entry `name` (a link is removed, not followed).
    pub(crate) fn remove(&self, name: &OsStr) -> io::Result<()> {
        Ok(rustix::fs::unlinkat(&self.dir, name, AtFlags::empty())?)
    }

    /// Syncs the folder, so that a rename inside it is durable.
    pub(crate) fn sync(&self) -> io::Result<()> {
        self.dir.sync_all()
    }

    /// Removes the regular files of the current user whose names satisfy
    /// `is_temp` and that were last modified at least `min_age` ago.
    /// Returns how many were removed.
    pub(crate) fn remove_stale(
        &self,
        is_temp: impl Fn(&OsStr) -> bool,
        min_age: Duration,
    ) -> io::Result<usize> {
        let now = SystemTime::now();
        let mut removed = 0;
        for entry in Dir::read_from(&self.dir)? {
            let entry = entry?;
            let name = OsStr::from_bytes(entry.file_name().to_bytes());
            if !is_temp(name) {
                continue;
            }
            let flags = OFlags::RDONLY | FILE_FLAGS;
            let Ok(file) = rustix::fs::openat(&self.dir, name, flags, Mode::empty()) else {
                continue;
            };
            let Ok(metadata) = File::from(file).metadata() else {
                continue;
            };
            if !metadata.is_file() || metadata.uid() != self.uid {
                continue;
            }
            let age = metadata
                .modified()
                .ok()
                .and_then(|modified| now.duration_since(modified).ok())
                .unwrap_or(Duration::ZERO);
            if age < min_age {
                // Possibly a writer at work right now.
                continue;
            }
            match rustix::fs::unlinkat(&self.dir, name, AtFlags::empty()) {
                Ok(()) => removed += 1,
                // Another store cleaned it up first.
                Err(Errno::NOENT) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(removed)
    }

    /// The entry `name` itself, links not followed.
    fn stat(&self, name: &OsStr) -> rustix::io::Result<rustix::fs::Stat> {
        rustix::fs::statat(&self.dir, name, AtFlags::SYMLINK_NOFOLLOW)
    }

    /// Checks an open record or lock file: a regular file of the current
    /// user or root.
    fn check_file(&self, file: &File, path: &Path) -> Result<std::fs::Metadata, FileCacheError> {
        let metadata = file.metadata().map_err(|source| FileCacheError::Io {
            op: "inspect",
            path: path.to_path_buf(),
            source,
        })?;
        if !metadata.is_file() {
            return Err(FileCacheError::InvalidPath {
                path: path.to_path_buf(),
                reason: kind(FileType::from_raw_mode(raw_mode(metadata.mode()))).reason(),
            });
        }
        check_owner(path, metadata.uid(), self.uid)?;
        Ok(metadata)
    }

    /// The error for a failed open of a record or lock file: a link or a
    /// non-regular file gets its own, anything else is an I/O error.
    fn open_error(&self, op: &'static str, name: &OsStr, path: &Path, e: Errno) -> FileCacheError {
        if let Ok(stat) = self.stat(name) {
            let file_type = FileType::from_raw_mode(stat.st_mode);
            if file_type == FileType::Symlink {
                return FileCacheError::Symlink {
                    path: path.to_path_buf(),
                    reason: LINK_AT_A_FILE,
                };
            }
            if file_type != FileType::RegularFile {
                return FileCacheError::InvalidPath {
                    path: path.to_path_buf(),
                    reason: kind(file_type).reason(),
                };
            }
        }
        FileCacheError::Io {
            op,
            path: path.to_path_buf(),
            source: e.into(),
        }
    }
}

/// One walk down a folder path.
struct Walk<'a> {
    /// The whole folder path, named by errors about creating it.
    folder: &'a Path,
    uid: u32,
    create: bool,
    /// Links followed so far.
    links: u32,
}

impl Walk<'_> {
    /// Walks `path` from `start`; `shown` is the path walked so far, for
    /// errors. `Ok(None)` when a folder is missing and `create` is not set.
    fn walk(
        &mut self,
        start: OwnedFd,
        path: &Path,
        shown: &mut PathBuf,
    ) -> Result<Option<OwnedFd>, FileCacheError> {
        let mut current = start;
        for component in path.components() {
            match component {
                Component::Prefix(_) | Component::CurDir => {}
                Component::RootDir => {
                    shown.push("/");
                    current =
                        open_dir(CWD, "/").map_err(|e| self.error("open folder", shown, e))?;
                }
                Component::ParentDir => {
                    shown.push("..");
                    current = open_dir(&current, "..")
                        .map_err(|e| self.error("open folder", shown, e))?;
                }
                Component::Normal(name) => {
                    shown.push(name);
                    match self.step(&current, name, shown)? {
                        Some(next) => current = next,
                        None => return Ok(None),
                    }
                }
            }
        }
        Ok(Some(current))
    }

    /// Opens the folder `name` inside `parent` (shown as `shown`), creating
    /// it when missing and allowed, following it when it is a link that only
    /// the current user or root could have made.
    fn step(
        &mut self,
        parent: &OwnedFd,
        name: &OsStr,
        shown: &Path,
    ) -> Result<Option<OwnedFd>, FileCacheError> {
        let mut created = false;
        loop {
            let error = match open_dir(parent, name) {
                Ok(fd) => return Ok(Some(fd)),
                Err(error) => error,
            };
            match error {
                Errno::NOENT if self.create && !created => {
                    created = true;
                    match rustix::fs::mkdirat(parent, name, DIR_MODE) {
                        // Made by someone else meanwhile: open what is there.
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(self.error("create folder", shown, e)),
                    }
                }
                Errno::NOENT if !self.create => return Ok(None),
                Errno::LOOP | Errno::MLINK | Errno::NOTDIR => {
                    let Ok(stat) = rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW)
                    else {
                        return Err(self.error("open folder", shown, error));
                    };
                    if FileType::from_raw_mode(stat.st_mode) != FileType::Symlink {
                        return Err(self.error("open folder", shown, error));
                    }
                    return self.follow(parent, name, stat.st_uid, shown);
                }
                e => return Err(self.error("open folder", shown, e)),
            }
        }
    }

    /// Follows the link `name` in `parent` (owned by `link_uid`) if it is
    /// trusted, and walks its target.
    fn follow(
        &mut self,
        parent: &OwnedFd,
        name: &OsStr,
        link_uid: u32,
        shown: &Path,
    ) -> Result<Option<OwnedFd>, FileCacheError> {
        let untrusted = || FileCacheError::Symlink {
            path: shown.to_path_buf(),
            reason: LINK_ON_THE_WAY,
        };
        let dir = rustix::fs::fstat(parent).map_err(|e| self.error("inspect folder", shown, e))?;
        let dir_mode = widen(dir.st_mode);
        let dir_trusted = is_trusted_owner(dir.st_uid, self.uid)
            && (dir_mode & GROUP_OTHER_WRITE == 0 || dir_mode & STICKY != 0);
        if !dir_trusted || !is_trusted_owner(link_uid, self.uid) {
            return Err(untrusted());
        }
        self.links += 1;
        if self.links > MAX_SYMLINKS {
            return Err(self.error("resolve", shown, Errno::LOOP));
        }
        let target = rustix::fs::readlinkat(parent, name, Vec::new())
            .map_err(|e| self.error("read link", shown, e))?;
        let target = PathBuf::from(OsStr::from_bytes(target.to_bytes()));
        if target.as_os_str().is_empty() {
            return Err(self.error("resolve", shown, Errno::NOENT));
        }
        tracing::trace!(link = %shown.display(), "following a trusted link");
        let start = parent.try_clone().map_err(|source| FileCacheError::Io {
            op: "open folder",
            path: shown.to_path_buf(),
            source,
        })?;
        // A relative target is relative to the folder holding the link.
        let mut inner = shown.parent().map(Path::to_path_buf).unwrap_or_default();
        self.walk(start, &target, &mut inner)
    }

    /// The error for a failed step at `shown`: a folder that cannot be
    /// created or written names the whole folder path, as a store would.
    fn error(&self, op: &'static str, shown: &Path, e: Errno) -> FileCacheError {
        let source = io::Error::from(e);
        if self.create && crate::is_not_writable(&source) {
            FileCacheError::NotWritable {
                path: self.folder.to_path_buf(),
                source,
            }
        } else {
            FileCacheError::Io {
                op,
                path: shown.to_path_buf(),
                source,
            }
        }
    }
}

/// Opens the folder `name` in `dir` to walk through it, never through a
/// link.
fn open_dir(
    dir: impl std::os::fd::AsFd,
    name: impl rustix::path::Arg,
) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        SEARCH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// The current user and root may own what the cache trusts.
fn is_trusted_owner(owner: u32, uid: u32) -> bool {
    owner == uid || owner == 0
}

fn check_owner(path: &Path, owner: u32, uid: u32) -> Result<(), FileCacheError> {
    if is_trusted_owner(owner, uid) {
        Ok(())
    } else {
        Err(FileCacheError::NotOwned {
            path: path.to_path_buf(),
            owner,
            uid,
        })
    }
}

fn kind(file_type: FileType) -> Kind {
    match file_type {
        FileType::Directory => Kind::Folder,
        FileType::Fifo => Kind::Fifo,
        FileType::Socket => Kind::Socket,
        FileType::CharacterDevice | FileType::BlockDevice => Kind::Device,
        FileType::Symlink => Kind::Symlink,
        _ => Kind::Other,
    }
}

/// `st_mode` is narrower than `u32` on some platforms.
fn widen(mode: impl Into<u32>) -> u32 {
    mode.into()
}

/// Mode bits from `MetadataExt::mode` in the platform's `mode_t` (narrower
/// than `u32` on some platforms; the file type bits always fit).
fn raw_mode<T: TryFrom<u32> + Default>(mode: u32) -> T {
    T::try_from(mode).unwrap_or_default()
}
