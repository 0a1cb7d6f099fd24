//! Hostile paths, against real files, processes and users: special files,
//! folders and files of other users, symbolic links, temporary files left by
//! killed writers, lock files with loose modes, relative environment values.
//!
//! "Another user" is uid/gid 65534 (`nobody`); giving files away needs root,
//! as in CI. Without root, the tests (or the parts of tests) that need
//! another user are skipped and print `SKIPPED <test>: <why>` on the
//! terminal, uncaptured; `TOKENKEEPER_REQUIRE_OTHER_USER=1` makes them fail
//! instead.
#![cfg(unix)]

use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{PermissionsExt, chown, lchown, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use tokenkeeper_fs::{FileCache, FileCacheError, FileLayer};

/// The user id standing for "another user".
const NOBODY: u32 = 65534;

/// Environment variable carrying the record path to the storing child.
const STORE_CHILD_ENV: &str = "TK_FS_STORE_CHILD";
/// Environment variable carrying the byte the storing child writes.
const STORE_BYTE_ENV: &str = "TK_FS_STORE_BYTE";
/// Line the storing child prints once it has stored at least once.
const STORING_MARKER: &str = "TK_FS_CHILD_STORING";
/// Size of each record the storing child writes: large enough that most of
/// a store is spent between creating the temporary file and renaming it.
const CHILD_RECORD_SIZE: usize = 512 * 1024;

/// Names in `dir`, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Set to 1 to make a test that needs another user fail, instead of being
/// skipped, when this process cannot give files away (is not root).
const REQUIRE_OTHER_USER_ENV: &str = "TOKENKEEPER_REQUIRE_OTHER_USER";

/// Whether this process may give files to another user (it is root).
///
/// When it may not, `what` (a test, or the part of one, that needs another
/// user) is skipped, and says so on the terminal: straight to the standard
/// error stream, which `cargo test` does not capture (an `eprintln!` would
/// be hidden for a test that passes). With `TOKENKEEPER_REQUIRE_OTHER_USER=1`
/// the test fails instead.
fn can_chown(what: &str) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let probe = dir.path().join("probe");
    fs::write(&probe, b"").unwrap();
    let uid = own_uid();
    let refused = if uid == NOBODY.to_string() {
        Some(format!("this process runs as uid {NOBODY} itself"))
    } else {
        chown(&probe, Some(NOBODY), Some(NOBODY))
            .err()
            .map(|e| e.to_string())
    };
    let Some(error) = refused else {
        return true;
    };
    let reason = format!(
        "SKIPPED {what}: it needs files owned by another user (uid {NOBODY}), and this process \
         (uid {uid}) cannot give files away ({error}); run the tests as root, as CI does"
    );
    if std::env::var_os(REQUIRE_OTHER_USER_ENV).is_some_and(|v| v == "1") {
        panic!("{reason} ({REQUIRE_OTHER_USER_ENV}=1)");
    }
    let _ = writeln!(std::io::stderr(), "{reason}");
    false
}

/// This process's user id, from /proc (no libc call needed).
fn own_uid() -> String {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(str::to_owned))
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Runs `f` on a thread and waits at most `limit` for its answer.
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).ok()
}

// Finding 1: reading never blocks on a special file.

#[test]
fn fifo_at_the_record_path_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.json");
    let status = Command::new("mkfifo").arg(&path).status().unwrap();
    assert!(status.success(), "mkfifo failed");

    let cache = FileCache::new(&path);
    let reader = cache.clone();
    let Some(result) = within(Duration::from_secs(1), move || reader.load()) else {
        // Unblock the stuck reader (a writer opening and closing the pipe
        // gives it an end of file), then fail.
        let _ = fs::OpenOptions::new().write(true).open(&path);
        panic!("load() blocked on a FIFO for more than a second");
    };
    match result {
        Err(FileCacheError::InvalidPath { path: p, reason }) => {
            assert_eq!(p, path);
            assert!(reason.contains("FIFO"), "{reason}");
        }
        other => panic!("expected InvalidPath, got {other:?}"),
    }
    let message = cache.load().unwrap_err().to_string();
    assert!(message.contains("cache.json"), "{message}");

    // A FIFO at the lock path is refused too, and just as fast.
    let lock_dir = tempfile::tempdir().unwrap();
    let locked = FileCache::new(lock_dir.path().join("cache.json"));
    let status = Command::new("mkfifo")
        .arg(locked.lock_path())
        .status()
        .unwrap();
    assert!(status.success());
    let result = within(Duration::from_secs(1), move || {
        locked.try_lock().map(|l| l.is_some())
    })
    .expect("try_lock() blocked on a FIFO");
    assert!(
        matches!(result, Err(FileCacheError::InvalidPath { .. })),
        "{result:?}"
    );
}

// Finding 2: StrictModes, no symlinks, no quoting of foreign content.

#[test]
fn forged_record_in_a_folder_others_can_write_is_refused() {
    if !can_chown("forged_record_in_a_folder_others_can_write_is_refused") {
        return;
    }
    let base = tempfile::tempdir().unwrap();
    let folder = base.path().join("cache");
    fs::create_dir(&folder).unwrap();
    set_mode(&folder, 0o777);
    let path = folder.join("token.json");
    // Another user plants a record.
    fs::write(&path, b"FORGED-RECORD-CONTENT").unwrap();
    chown(&path, Some(NOBODY), Some(NOBODY)).unwrap();

    let cache = FileCache::new(&path);
    let error = cache.load().unwrap_err();
    match &error {
        FileCacheError::WritableByOthers { path: p, mode } => {
            assert_eq!(p, &folder);
            assert_eq!(*mode, 0o777);
        }
        other => panic!("expected WritableByOthers, got {other:?}"),
    }
    let message = error.to_string();
    assert!(message.contains(&*folder.to_string_lossy()), "{message}");
    assert!(message.contains("chmod go-w"), "{message}");
    assert!(!format!("{message} {error:?}").contains("FORGED"));
    // Nothing is written there either, and the layer reports an error.
    assert!(matches!(
        cache.store(b"ours"),
        Err(FileCacheError::WritableByOthers { .. })
    ));
    let layer = FileLayer::new(cache.clone());
    let layer_error = layer.read().unwrap_err();
    assert!(!layer_error.message.contains("FORGED"), "{layer_error}");
    assert_eq!(fs::read(&path).unwrap(), b"FORGED-RECORD-CONTENT");

    // Writable by the group only: refused as well.
    set_mode(&folder, 0o770);
    assert!(matches!(
        cache.load(),
        Err(FileCacheError::WritableByOthers { mode: 0o770, .. })
    ));

    // A private folder, but the record itself belongs to another user.
    set_mode(&folder, 0o700);
    match cache.load() {
        Err(FileCacheError::NotOwned { path: p, owner, .. }) => {
            assert_eq!(p, path);
            assert_eq!(owner, NOBODY);
        }
        other => panic!("expected NotOwned, got {other:?}"),
    }
    // Ours, but writable by others.
    chown(&path, Some(0), Some(0)).unwrap();
    set_mode(&path, 0o666);
    assert!(matches!(
        cache.load(),
        Err(FileCacheError::WritableByOthers { path: p, .. }) if p == path
    ));
    // Storing replaces it with a private record of ours.
    cache.store(b"ours").unwrap();
    assert_eq!(mode(&path), 0o600);
    assert_eq!(cache.load().unwrap().as_deref(), Some(&b"ours"[..]));
}

#[test]
fn folder_owned_by_another_user_is_refused() {
    if !can_chown("folder_owned_by_another_user_is_refused") {
        return;
    }
    let base = tempfile::tempdir().unwrap();
    let folder = base.path().join("theirs");
    fs::create_dir(&folder).unwrap();
    set_mode(&folder, 0o700);
    chown(&folder, Some(NOBODY), Some(NOBODY)).unwrap();
    let cache = FileCache::new(folder.join("token.json"));

    let error = cache.store(b"secret").unwrap_err();
    match &error {
        FileCacheError::NotOwned { path, owner, uid } => {
            assert_eq!(path, &folder);
            assert_eq!(*owner, NOBODY);
            assert_eq!(*uid, 0);
        }
        other => panic!("expected NotOwned, got {other:?}"),
    }
    let message = error.to_string();
    assert!(message.contains(&*folder.to_string_lossy()), "{message}");
    assert!(message.contains("chown"), "{message}");
    assert!(entries(&folder).is_empty(), "wrote into a foreign folder");

    fs::write(folder.join("token.json"), b"THEIR-RECORD").unwrap();
    assert!(matches!(cache.load(), Err(FileCacheError::NotOwned { .. })));
    assert!(matches!(
        cache.try_lock(),
        Err(FileCacheError::NotOwned { .. })
    ));
    assert_eq!(entries(&folder), ["token.json"]);
}

#[test]
fn symlink_at_the_lock_path_is_not_followed() {
    let base = tempfile::tempdir().unwrap();
    let folder = base.path().join("cache");
    let elsewhere = base.path().join("elsewhere");
    fs::create_dir(&folder).unwrap();
    set_mode(&folder, 0o700);
    fs::create_dir(&elsewhere).unwrap();
    let planted = elsewhere.join("planted");
    let cache = FileCache::new(folder.join("token.json"));
    symlink(&planted, cache.lock_path()).unwrap();

    let error = cache.try_lock().unwrap_err();
    assert!(
        matches!(&error, FileCacheError::Symlink { path, .. } if path == cache.lock_path()),
        "{error:?}"
    );
    assert!(error.to_string().contains("token.json.lock"), "{error}");
    assert!(matches!(
        cache.lock_timeout(Duration::from_millis(10)),
        Err(FileCacheError::Symlink { .. })
    ));
    assert!(
        !planted.exists(),
        "the lock file was created through the link"
    );
    assert!(entries(&elsewhere).is_empty());

    // A link to an existing file is not locked either.
    fs::remove_file(cache.lock_path()).unwrap();
    fs::write(&planted, b"").unwrap();
    symlink(&planted, cache.lock_path()).unwrap();
    assert!(matches!(
        cache.try_lock(),
        Err(FileCacheError::Symlink { .. })
    ));
}

#[test]
fn symlink_record_is_refused_without_quoting_its_target() {
    let base = tempfile::tempdir().unwrap();
    let secret = base.path().join("secret.txt");
    fs::write(&secret, b"TOP-SECRET-CONTENT").unwrap();
    let folder = base.path().join("cache");
    fs::create_dir(&folder).unwrap();
    set_mode(&folder, 0o700);
    let path = folder.join("token.json");
    symlink(&secret, &path).unwrap();

    let cache = FileCache::new(&path);
    let error = cache.load().unwrap_err();
    assert!(
        matches!(&error, FileCacheError::Symlink { path: p, .. } if p == &path),
        "{error:?}"
    );
    let shown = format!("{error} {error:?}");
    assert!(!shown.contains("TOP-SECRET"), "{shown}");
    assert!(shown.contains("token.json"), "{shown}");
    let layer_error = FileLayer::new(cache.clone()).read().unwrap_err();
    assert!(!layer_error.to_string().contains("TOP-SECRET"));

    // Storing replaces the link itself, never the file it points to.
    cache.store(b"ours").unwrap();
    assert_eq!(fs::read(&secret).unwrap(), b"TOP-SECRET-CONTENT");
    assert!(!fs::symlink_metadata(&path).unwrap().is_symlink());
    assert_eq!(cache.load().unwrap().as_deref(), Some(&b"ours"[..]));
}

#[test]
fn swapped_folder_component_does_not_redirect_a_store() {
    if !can_chown("swapped_folder_component_does_not_redirect_a_store") {
        return;
    }
    let base = tempfile::tempdir().unwrap();
    // A folder others can write (think of a shared or misconfigured one)
    // holding our private cache folder.
    let shared = base.path().join("shared");
    fs::create_dir(&shared).unwrap();
    set_mode(&shared, 0o777);
    let cache_dir = shared.join("cache");
    let cache = FileCache::new(cache_dir.join("token.json"));
    cache.store(b"first").unwrap();
    assert_eq!(mode(&cache_dir), 0o700);

    // Another user moves our folder aside and puts a link in its place,
    // pointing at a private folder of ours elsewhere.
    let elsewhere = base.path().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    set_mode(&elsewhere, 0o700);
    fs::rename(&cache_dir, shared.join("moved")).unwrap();
    symlink(&elsewhere, &cache_dir).unwrap();
    lchown(&cache_dir, Some(NOBODY), Some(NOBODY)).unwrap();

    let error = cache.store(b"second").unwrap_err();
    assert!(
        matches!(&error, FileCacheError::Symlink { path, .. } if path == &cache_dir),
        "{error:?}"
    );
    assert!(cache.try_lock().is_err());
    assert!(cache.load().is_err());
    assert!(
        entries(&elsewhere).is_empty(),
        "store wrote through the link"
    );

    // Even a link of our own is not followed in a folder others can write:
    // they could swap it again.
    lchown(&cache_dir, Some(0), Some(0)).unwrap();
    assert!(matches!(
        cache.store(b"third"),
        Err(FileCacheError::Symlink { .. })
    ));
    // In a private folder a link of another user is refused all the same.
    set_mode(&shared, 0o700);
    lchown(&cache_dir, Some(NOBODY), Some(NOBODY)).unwrap();
    assert!(matches!(
        cache.store(b"fourth"),
        Err(FileCacheError::Symlink { .. })
    ));
    assert!(
        entries(&elsewhere).is_empty(),
        "store wrote through the link"
    );
    assert_eq!(fs::read(shared.join("moved/token.json")).unwrap(), b"first");
}

#[test]
fn own_symlinked_folder_in_a_private_folder_is_followed() {
    // A user pointing `~/.cache` at another disk is legitimate: a link that
    // only we (or root) could have made, in a folder only we can change.
    let base = tempfile::tempdir().unwrap();
    let real = base.path().join("real");
    fs::create_dir(&real).unwrap();
    set_mode(&real, 0o700);
    let link = base.path().join("link");
    symlink("real", &link).unwrap();
    let cache = FileCache::new(link.join("sub/token.json"));
    cache.store(b"via link").unwrap();
    assert_eq!(fs::read(real.join("sub/token.json")).unwrap(), b"via link");
    assert_eq!(cache.load().unwrap().as_deref(), Some(&b"via link"[..]));
    assert!(cache.try_lock().unwrap().is_some());

    // A loop of links is an error, not a hang.
    symlink("loop-b", base.path().join("loop-a")).unwrap();
    symlink("loop-a", base.path().join("loop-b")).unwrap();
    let looping = FileCache::new(base.path().join("loop-a/token.json"));
    assert!(matches!(
        looping.store(b"x"),
        Err(FileCacheError::Io { .. })
    ));
    assert!(looping.load().is_err());
}

// Finding 3: temporary files of killed writers are cleaned up.

/// Not a test of its own: the body the storing child runs. Without
/// `TK_FS_STORE_CHILD` it does nothing.
#[test]
fn child_stores_until_killed() {
    let Some(path) = std::env::var_os(STORE_CHILD_ENV) else {
        return;
    };
    let byte = std::env::var(STORE_BYTE_ENV)
        .unwrap()
        .parse::<u8>()
        .unwrap();
    let cache = FileCache::new(PathBuf::from(path));
    let record = vec![byte; CHILD_RECORD_SIZE];
    cache.store(&record).unwrap();
    let mut out = std::io::stdout().lock();
    writeln!(out, "\n{STORING_MARKER}").unwrap();
    out.flush().unwrap();
    drop(out);
    // Store until killed; a safety limit so a failed parent leaves nothing.
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        cache.store(&record).unwrap();
    }
}

/// Starts a storing child, waits until it stores, lets it run a little and
/// kills it with SIGKILL.
fn kill_a_storing_child(path: &Path, round: u32) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_stores_until_killed",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(STORE_CHILD_ENV, path)
        .env(STORE_BYTE_ENV, (b'a' + (round % 26) as u8).to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the storing child");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap_or(0) > 0 {
            if line.trim_end().ends_with(STORING_MARKER) {
                let _ = tx.send(());
                break;
            }
            line.clear();
        }
        // Drain the rest so the child never blocks on a full pipe.
        let _ = reader.read_to_end(&mut Vec::new());
    });
    let started = rx.recv_timeout(Duration::from_secs(60));
    // Land the kill at varied points of a store.
    std::thread::sleep(Duration::from_micros(u64::from(round % 7) * 700));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    started.expect("child did not start storing");
}

fn temp_files(dir: &Path) -> Vec<String> {
    entries(dir)
        .into_iter()
        .filter(|name| name.starts_with(".token.json.") && name.ends_with(".tmp"))
        .collect()
}

#[test]
fn store_removes_temp_files_left_by_killed_writers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token.json");
    let cache = FileCache::new(&path);

    let mut round = 0;
    while round < 50 || (temp_files(dir.path()).is_empty() && round < 300) {
        kill_a_storing_child(&path, round);
        round += 1;
    }
    let left = temp_files(dir.path());
    assert!(
        !left.is_empty(),
        "no kill landed inside a store in {round} rounds"
    );
    eprintln!(
        "{} temporary files left by {round} killed writers",
        left.len()
    );

    // The record is whole: one writer's complete record.
    let record = cache.load().unwrap().expect("a record");
    assert_eq!(record.len(), CHILD_RECORD_SIZE);
    assert!(record.iter().all(|&b| b == record[0]), "torn record");

    // The crashes are a while ago now.
    let long_ago = SystemTime::now() - Duration::from_secs(3600);
    for name in &left {
        fs::File::options()
            .write(true)
            .open(dir.path().join(name))
            .unwrap()
            .set_modified(long_ago)
            .unwrap();
    }
    // What must survive: a live writer's fresh temporary file, an old file
    // that only looks a bit like ours, and (as root) an old temporary file
    // of another user.
    let live = ".token.json.4242.7.0123456789abcdef.tmp";
    fs::write(dir.path().join(live), b"in flight").unwrap();
    let unrelated = ".token.json.notes.tmp";
    fs::write(dir.path().join(unrelated), b"keep").unwrap();
    let unrelated_file = fs::File::options()
        .write(true)
        .open(dir.path().join(unrelated))
        .unwrap();
    unrelated_file.set_modified(long_ago).unwrap();
    let foreign = ".token.json.4243.1.fedcba9876543210.tmp";
    let foreign_path = dir.path().join(foreign);
    fs::write(&foreign_path, b"theirs").unwrap();
    fs::File::options()
        .write(true)
        .open(&foreign_path)
        .unwrap()
        .set_modified(long_ago)
        .unwrap();
    let foreign_kept = can_chown(
        "store_removes_temp_files_left_by_killed_writers, the part where another user's old temporary file is kept",
    ) && chown(&foreign_path, Some(NOBODY), Some(NOBODY)).is_ok();
    if !foreign_kept {
        fs::remove_file(&foreign_path).unwrap();
    }

    cache.store(b"final").unwrap();

    let mut expected = vec![live.to_string(), unrelated.to_string()];
    if foreign_kept {
        expected.push(foreign.to_string());
    }
    expected.push("token.json".to_string());
    expected.sort();
    assert_eq!(
        entries(dir.path()),
        expected,
        "stale temporary files remain"
    );
    assert_eq!(cache.load().unwrap().as_deref(), Some(&b"final"[..]));
}

// Finding 4: a lock file with a mode wider than 0600.

#[test]
fn lock_file_with_a_wide_mode_is_restricted_to_0600() {
    let dir = tempfile::tempdir().unwrap();
    let cache = FileCache::new(dir.path().join("token.json"));
    fs::write(cache.lock_path(), b"").unwrap();
    set_mode(cache.lock_path(), 0o666);

    let lock = cache.try_lock().unwrap().expect("free");
    assert_eq!(mode(cache.lock_path()), 0o600);
    drop(lock);

    set_mode(cache.lock_path(), 0o644);
    let lock = cache
        .lock_timeout(Duration::from_secs(1))
        .unwrap()
        .expect("free");
    assert_eq!(mode(cache.lock_path()), 0o600);
    drop(lock);

    // A lock file of another user is not ours to fix: refused.
    if can_chown(
        "lock_file_with_a_wide_mode_is_restricted_to_0600, the part with another user's lock file",
    ) {
        chown(cache.lock_path(), Some(NOBODY), Some(NOBODY)).unwrap();
        set_mode(cache.lock_path(), 0o666);
        let error = cache.try_lock().unwrap_err();
        assert!(
            matches!(&error, FileCacheError::NotOwned { path, .. } if path == cache.lock_path()),
            "{error:?}"
        );
        assert_eq!(mode(cache.lock_path()), 0o666);
    }
}

// Finding 5: relative XDG_CACHE_HOME and HOME are ignored.

#[test]
fn default_dir_ignores_relative_values() {
    let dir = |xdg: Option<&str>, home: Option<&str>| {
        FileLayer::default_dir_from(xdg.map(OsStr::new), home.map(OsStr::new))
    };
    let some = |p: &str| Some(PathBuf::from(p));

    assert_eq!(dir(Some("/xdg"), Some("/home/u")), some("/xdg/tokenkeeper"));
    assert_eq!(
        dir(None, Some("/home/u")),
        some("/home/u/.cache/tokenkeeper")
    );
    assert_eq!(
        dir(Some(""), Some("/home/u")),
        some("/home/u/.cache/tokenkeeper")
    );
    // A relative XDG_CACHE_HOME is ignored: HOME decides.
    assert_eq!(
        dir(Some("relative/cache"), Some("/home/u")),
        some("/home/u/.cache/tokenkeeper")
    );
    assert_eq!(
        dir(Some("./cache"), Some("/home/u")),
        some("/home/u/.cache/tokenkeeper")
    );
    // A relative HOME is ignored too.
    assert_eq!(dir(None, Some("home/u")), None);
    assert_eq!(dir(Some("cache"), Some(".")), None);
    assert_eq!(dir(Some("/xdg"), Some("home/u")), some("/xdg/tokenkeeper"));
    assert_eq!(dir(None, None), None);
}
