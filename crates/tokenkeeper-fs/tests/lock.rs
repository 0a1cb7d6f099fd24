//! The lock file, within one process and across real processes.
//!
//! The cross-process tests re-run this test binary as a child with
//! `--exact child_holds_lock`; the child sees `TK_FS_CHILD` and holds the
//! lock until its standard input closes (or a safety time passes).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tokenkeeper_fs::FileCache;

/// Environment variable carrying the record path to the child.
const CHILD_ENV: &str = "TK_FS_CHILD";
/// Line the child prints once it holds the lock.
const LOCKED_MARKER: &str = "TK_FS_CHILD_LOCKED";
/// The child lets go on its own after this long, so a failed parent never
/// leaves it behind.
const CHILD_SAFETY: Duration = Duration::from_secs(60);

#[test]
fn two_instances_in_one_process_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.json");
    let a = FileCache::new(&path);
    let b = FileCache::new(&path);

    let held = a.try_lock().unwrap().expect("free at first");
    assert_eq!(held.path(), a.lock_path());
    assert!(
        b.try_lock().unwrap().is_none(),
        "second instance got the lock"
    );
    // The same instance asking again uses a new open file: it conflicts too.
    assert!(
        a.try_lock().unwrap().is_none(),
        "same instance got it twice"
    );
    assert!(b.lock_timeout(Duration::from_millis(30)).unwrap().is_none());

    drop(held);
    let held = b.try_lock().unwrap().expect("free after drop");
    assert!(a.try_lock().unwrap().is_none());
    held.unlock().unwrap();
    assert!(a.try_lock().unwrap().is_some());

    // The lock file stays: deleting lock files races with their users.
    assert!(a.lock_path().exists());
}

#[test]
fn lock_timeout_waits_for_release() {
    let dir = tempfile::tempdir().unwrap();
    let cache = FileCache::new(dir.path().join("cache.json"));
    let held = cache.try_lock().unwrap().unwrap();
    let (tx, rx) = mpsc::channel();
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        drop(held);
        tx.send(Instant::now()).unwrap();
    });
    let got = cache.lock_timeout(Duration::from_secs(30)).unwrap();
    assert!(got.is_some(), "lock not obtained after release");
    let released_at = rx.recv().unwrap();
    // Obtained no earlier than the release (it could not have been).
    assert!(Instant::now() >= released_at);
    releaser.join().unwrap();
}

#[test]
fn lock_timeout_zero_is_a_single_try() {
    let dir = tempfile::tempdir().unwrap();
    let cache = FileCache::new(dir.path().join("sub/cache.json"));
    // Creates the folder and lock file as needed.
    let held = cache.lock_timeout(Duration::ZERO).unwrap().expect("free");
    assert!(cache.lock_timeout(Duration::ZERO).unwrap().is_none());
    drop(held);
    assert!(cache.lock_timeout(Duration::ZERO).unwrap().is_some());
}

#[test]
fn lock_is_shared_with_threads() {
    // Many threads racing for the lock: exactly one holds it at a time.
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let cache = FileCache::new(dir.path().join("cache.json"));
    let inside = Arc::new(AtomicUsize::new(0));
    let wins = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let cache = cache.clone();
            let inside = Arc::clone(&inside);
            let wins = Arc::clone(&wins);
            std::thread::spawn(move || {
                for _ in 0..25 {
                    let lock = cache
                        .lock_timeout(Duration::from_secs(30))
                        .unwrap()
                        .expect("obtained within the timeout");
                    assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "two holders");
                    std::thread::yield_now();
                    inside.fetch_sub(1, Ordering::SeqCst);
                    wins.fetch_add(1, Ordering::SeqCst);
                    drop(lock);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(wins.load(Ordering::SeqCst), 100);
}

/// Not a test of its own: the body the child process runs. Without
/// `TK_FS_CHILD` it does nothing.
#[test]
fn child_holds_lock() {
    let Some(path) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let cache = FileCache::new(path);
    let lock = cache
        .lock_timeout(CHILD_SAFETY)
        .unwrap()
        .expect("child could not take the lock");
    // Straight to the real stdout: the test harness captures `println!`.
    // On a line of its own: the harness may have printed "test name ... ".
    let mut out = std::io::stdout().lock();
    writeln!(out, "\n{LOCKED_MARKER}").unwrap();
    out.flush().unwrap();
    drop(out);

    // Hold until the parent closes our stdin, or the safety time passes.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        let _ = tx.send(());
    });
    let _ = rx.recv_timeout(CHILD_SAFETY);
    drop(lock);
}

/// A child process holding the lock on `path`, with its stdin open.
struct LockingChild {
    child: Child,
}

impl LockingChild {
    fn spawn(path: &Path) -> LockingChild {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_holds_lock",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the child test process");
        let stdout = child.stdout.take().unwrap();
        wait_for_marker(stdout);
        LockingChild { child }
    }

    /// Closes the child's stdin, which tells it to let go and exit.
    fn release(mut self) {
        drop(self.child.stdin.take());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "child failed: {status}");
    }

    /// Kills the child outright.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for LockingChild {
    fn drop(&mut self) {
        // Reached only when a test fails half-way: do not leave it running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads the child's output until the marker line, failing after a while.
fn wait_for_marker(stdout: ChildStdout) {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut found = false;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if !found && line.trim_end().ends_with(LOCKED_MARKER) {
                found = true;
                let _ = tx.send(());
            }
            // Keep draining so the child never blocks on a full pipe.
        }
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("child did not report holding the lock");
}

#[test]
fn lock_conflicts_across_processes_until_the_child_releases() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.json");
    let cache = FileCache::new(&path);

    let child = LockingChild::spawn(&path);
    assert!(
        cache.try_lock().unwrap().is_none(),
        "parent got a lock the child holds"
    );
    assert!(
        cache
            .lock_timeout(Duration::from_millis(50))
            .unwrap()
            .is_none()
    );

    child.release();
    assert!(
        cache.try_lock().unwrap().is_some(),
        "lock not free after the child exited"
    );
}

#[test]
fn lock_is_released_when_the_holder_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/cache.json");
    let cache = FileCache::new(&path);

    let child = LockingChild::spawn(&path);
    assert!(cache.try_lock().unwrap().is_none());
    child.kill();
    assert!(
        cache
            .lock_timeout(Duration::from_secs(5))
            .unwrap()
            .is_some(),
        "lock still held after the holder was killed"
    );
}

#[test]
fn parent_lock_blocks_a_child_until_released() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.json");
    let cache = FileCache::new(&path);
    let held = cache.try_lock().unwrap().unwrap();

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_holds_lock",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.trim_end().ends_with(LOCKED_MARKER) {
                let _ = tx.send(Instant::now());
            }
        }
    });
    // While the parent holds it, the child must not report the lock.
    assert!(
        rx.recv_timeout(Duration::from_millis(500)).is_err(),
        "child took a held lock"
    );
    drop(held);
    rx.recv_timeout(Duration::from_secs(50))
        .expect("child did not get the lock after release");
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
}
