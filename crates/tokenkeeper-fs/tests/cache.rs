//! Load, store and remove against real files.

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};

use tokenkeeper_fs::{DEFAULT_MAX_SIZE, FileCache, FileCacheError};

/// Names in `dir`, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn missing_file_is_none() {
    let dir = tempfile::tempdir().unwrap();
    let cache = FileCache::new(dir.path().join("absent.json"));
    assert_eq!(cache.load().unwrap(), None);
    // Loading creates nothing.
    assert!(entries(dir.path()).is_empty());
}

#[test]
fn round_trip_and_replace() {
    let dir = tempfile::tempdir().unwrap();
    let cache = FileCache::new(dir.path().join("cache.json"));
    assert_eq!(cache.path(), dir.path().join("cache.json"));
    assert_eq!(cache.lock_path(), dir.path().join("cache.json.lock"));
    assert_eq!(cache.max_size(), DEFAULT_MAX_SIZE);

    cache.store(b"first").unwrap();
    assert_eq!(cache.load().unwrap().as_deref(), Some(&b"first"[..]));
    cache.store(b"second, longer than the first").unwrap();
    assert_eq!(
        cache.load().unwrap().as_deref(),
        Some(&b"second, longer than the first"[..])
    );
    cache.store(b"").unwrap();
    assert_eq!(cache.load().unwrap().as_deref(), Some(&b""[..]));

    // Bytes are opaque: anything goes, including invalid UTF-8.
    let binary: Vec<u8> = (0..=255).collect();
    cache.store(&binary).unwrap();
    assert_eq!(cache.load().unwrap(), Some(binary));

    // Nothing but the record is left behind.
    assert_eq!(entries(dir.path()), ["cache.json"]);
}

#[test]
fn creates_missing_folders_private() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("a/b/c");
    let cache = FileCache::new(nested.join("cache.json"));
    cache.store(b"deep").unwrap();
    assert_eq!(cache.load().unwrap().as_deref(), Some(&b"deep"[..]));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for folder in [dir.path().join("a"), dir.path().join("a/b"), nested] {
            let mode = fs::metadata(&folder).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", folder.display());
        }
    }
}

#[cfg(unix)]
#[test]
fn record_and_lock_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let cache = FileCache::new(dir.path().join("cache.json"));
    cache.store(b"secret").unwrap();
    let lock = cache.try_lock().unwrap().expect("free");
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(cache.path()), 0o600);
    assert_eq!(mode(cache.lock_path()), 0o600);
    drop(lock);
    // Replacing keeps the record private.
    cache.store(b"secret 2").unwrap();
    assert_eq!(mode(cache.path()), 0o600);
}

#[test]
fn remove_is_idempotent_and_keeps_the_lock_file() {
    let dir = tempfile::tempdir().unwrap();
    let cache = FileCache::new(dir.path().join("cache.json"));
    cache.remove().unwrap();
    cache.store(b"x").unwrap();
    drop(cache.try_lock().unwrap().expect("free"));
    cache.remove().unwrap();
    assert_eq!(cache.load().unwrap(), None);
    cache.remove().unwrap();
    assert_eq!(entries(dir.path()), ["cache.json.lock"]);
}

#[test]
fn oversized_file_is_rejected_on_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.json");
    let cache = FileCache::new(&path).with_max_size(10);
    fs::write(&path, b"0123456789").unwrap();
    assert_eq!(cache.load().unwrap().map(|b| b.len()), Some(10));
    fs::write(&path, b"0123456789A").unwrap();
    match cache.load() {
        Err(FileCacheError::TooLarge { path: p, size, max }) => {
            assert_eq!(p, path);
            assert_eq!(size, 11);
            assert_eq!(max, 10);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    let message = cache.load().unwrap_err().to_string();
    assert!(message.contains("cache.json"), "{message}");
    assert!(message.contains("10"), "{message}");
}

#[test]
fn default_limit_is_one_mebibyte() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.json");
    let cache = FileCache::new(&path);
    let file = fs::File::create(&path).unwrap();
    // A sparse file: large on paper, cheap on disk.
    file.set_len(DEFAULT_MAX_SIZE + 1).unwrap();
    drop(file);
    assert!(matches!(
        cache.load(),
        Err(FileCacheError::TooLarge { size, .. }) if size == DEFAULT_MAX_SIZE + 1
    ));
    let file = fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(DEFAULT_MAX_SIZE).unwrap();
    drop(file);
    assert_eq!(
        cache.load().unwrap().map(|b| b.len() as u64),
        Some(DEFAULT_MAX_SIZE)
    );
}

#[test]
fn oversized_store_is_rejected_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cache = FileCache::new(dir.path().join("cache.json")).with_max_size(4);
    cache.store(b"1234").unwrap();
    assert!(matches!(
        cache.store(b"12345"),
        Err(FileCacheError::TooLarge {
            size: 5,
            max: 4,
            ..
        })
    ));
    assert_eq!(cache.load().unwrap().as_deref(), Some(&b"1234"[..]));
    assert_eq!(entries(dir.path()), ["cache.json"]);
}

#[test]
fn folder_at_record_path_is_invalid_on_load_and_cleaned_up_on_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.json");
    fs::create_dir(&path).unwrap();
    fs::write(path.join("inside"), b"keep me").unwrap();
    let cache = FileCache::new(&path);
    assert!(matches!(
        cache.load(),
        Err(FileCacheError::InvalidPath { .. })
    ));
    // The rename over a non-empty folder fails after the temporary file was
    // written: the temporary file must be gone and the folder untouched.
    let error = cache.store(b"x").unwrap_err();
    assert!(matches!(error, FileCacheError::Io { .. }), "{error:?}");
    assert!(error.to_string().contains("cache.json"), "{error}");
    assert_eq!(entries(dir.path()), ["cache.json"]);
    assert_eq!(fs::read(path.join("inside")).unwrap(), b"keep me");
}

#[test]
fn path_without_file_name_is_invalid() {
    let cache = FileCache::new("/");
    assert!(matches!(
        cache.store(b"x"),
        Err(FileCacheError::InvalidPath { .. })
    ));
}

#[test]
fn parent_that_is_a_file_is_not_writable() {
    // Works even as root, which ignores permission bits.
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("plain-file");
    fs::write(&blocker, b"not a folder").unwrap();
    let folder = blocker.join("sub");
    let cache = FileCache::new(folder.join("cache.json"));

    let error = cache.store(b"x").unwrap_err();
    match &error {
        FileCacheError::NotWritable { path, .. } => assert_eq!(path, &folder),
        other => panic!("expected NotWritable, got {other:?}"),
    }
    assert!(error.to_string().contains("plain-file/sub"), "{error}");
    assert!(error.io_error().is_some());
    assert!(std::error::Error::source(&error).is_some());

    let error = cache.try_lock().unwrap_err();
    assert!(
        matches!(&error, FileCacheError::NotWritable { path, .. } if path == &folder),
        "{error:?}"
    );

    // Loading from there is an error, not a silent miss.
    assert!(cache.load().is_err());
    assert_eq!(fs::read(&blocker).unwrap(), b"not a folder");
}

#[cfg(unix)]
#[test]
fn read_only_folder_is_not_writable() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("ro");
    fs::create_dir(&folder).unwrap();
    fs::set_permissions(&folder, fs::Permissions::from_mode(0o500)).unwrap();

    // Root (as in CI) ignores permission bits; find out whether they bind.
    let probe = folder.join("probe");
    let enforced = fs::write(&probe, b"").is_err();
    let _ = fs::remove_file(&probe);

    let cache = FileCache::new(folder.join("cache.json"));
    let store = cache.store(b"x");
    let lock = cache.try_lock();
    fs::set_permissions(&folder, fs::Permissions::from_mode(0o700)).unwrap();

    if enforced {
        match store {
            Err(FileCacheError::NotWritable { path, .. }) => assert_eq!(path, folder),
            other => panic!("expected NotWritable, got {other:?}"),
        }
        match lock {
            Err(FileCacheError::NotWritable { path, .. }) => assert_eq!(path, folder),
            other => panic!("expected NotWritable, got {other:?}"),
        }
        assert!(entries(&folder).is_empty());
    } else {
        // Running with privileges that bypass the bits: the store works, and
        // `parent_that_is_a_file_is_not_writable` covers the error path.
        store.unwrap();
        assert!(lock.unwrap().is_some());
        eprintln!("permission bits not enforced for this user; checked the privileged path only");
    }
}

#[test]
fn readers_never_see_a_partial_record() {
    const SIZE: usize = 100 * 1024;
    const WRITES: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let cache = FileCache::new(dir.path().join("cache.json"));
    let a = vec![b'A'; SIZE];
    let b = vec![b'B'; SIZE];
    cache.store(&a).unwrap();

    let done = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(Barrier::new(3));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let cache = cache.clone();
            let done = Arc::clone(&done);
            let reads = Arc::clone(&reads);
            let start = Arc::clone(&start);
            std::thread::spawn(move || {
                let mut seen = [0usize; 2];
                start.wait();
                while !done.load(Ordering::Acquire) {
                    let bytes = cache.load().unwrap().expect("the record never disappears");
                    assert_eq!(bytes.len(), SIZE, "partial record seen");
                    let first = bytes[0];
                    assert!(first == b'A' || first == b'B');
                    assert!(bytes.iter().all(|&x| x == first), "mixed record seen");
                    seen[usize::from(first == b'B')] += 1;
                    reads.fetch_add(1, Ordering::Relaxed);
                }
                seen
            })
        })
        .collect();

    start.wait();
    for i in 0..WRITES {
        cache.store(if i % 2 == 0 { &b } else { &a }).unwrap();
    }
    done.store(true, Ordering::Release);
    let mut seen = [0usize; 2];
    for reader in readers {
        let s = reader.join().expect("reader saw a torn record");
        seen[0] += s[0];
        seen[1] += s[1];
    }
    assert!(reads.load(Ordering::Relaxed) > 0);
    eprintln!("reads: {} full A, {} full B", seen[0], seen[1]);
    assert_eq!(
        entries(dir.path()),
        ["cache.json"],
        "temporary files left behind"
    );
}

#[test]
fn concurrent_writers_leave_one_whole_record_and_no_temp_files() {
    let dir = tempfile::tempdir().unwrap();
    let cache = FileCache::new(dir.path().join("cache.json"));
    let writers: Vec<_> = (0u8..4)
        .map(|n| {
            let cache = cache.clone();
            std::thread::spawn(move || {
                let payload = vec![b'0' + n; 10_000];
                for _ in 0..50 {
                    cache.store(&payload).unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    let bytes = cache.load().unwrap().unwrap();
    assert_eq!(bytes.len(), 10_000);
    assert!(bytes.iter().all(|&x| x == bytes[0]));
    assert_eq!(entries(dir.path()), ["cache.json"]);
}
