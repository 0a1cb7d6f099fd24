//! What the interop suites share: the authorities in `interop/` as `node`
//! processes a test starts itself when the environment names none, shared by
//! the tests that run at the same time; plain HTTP requests to their test
//! routes and logs; reading the JWTs they issue; the `tokenkeeper` command
//! built for the tests that run it against them.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak, mpsc};
use std::time::Duration;

use serde_json::Value;

/// The folder of the interop authorities (`interop/`).
pub(crate) fn interop_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("interop")
}

/// A `node` process of ours, stopped on drop.
pub(crate) struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `node interop/SCRIPT ARGS...` and returns it with the URL of its
/// `READY` line. `missing` names the variable that would have named a running
/// one, for the message when the npm packages are not installed.
pub(crate) fn start_node(script: &str, args: &[OsString], missing: &str) -> (Node, String) {
    let dir = interop_dir();
    assert!(
        dir.join("node_modules").is_dir(),
        "{missing} is not set and {} has no node_modules: run the interop tests through \
         `scripts/test-all.sh`, which installs and starts the interop authorities",
        dir.display()
    );
    let mut child = Command::new("node")
        .arg(dir.join(script))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start `node interop/{script}` ({e}); run `scripts/test-all.sh`")
        });
    let stdout = child.stdout.take().expect("piped stdout");
    let node = Node(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(url) = line.strip_prefix("READY ") {
                let _ = tx.send(url.trim().to_owned());
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(url) => (node, url),
        Err(_) => panic!("interop/{script} did not print READY within 30 s"),
    }
}

/// One value of a kind, shared with the tests running at the same time and
/// dropped (its server stopped) when the last of them is done.
pub(crate) fn shared<T>(slot: &Mutex<Weak<T>>, start: impl FnOnce() -> T) -> Arc<T> {
    let mut shared = slot.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(running) = shared.upgrade() {
        return running;
    }
    let started = Arc::new(start());
    *shared = Arc::downgrade(&started);
    started
}

/// One HTTP/1.1 request without a body to a plain `http://` server (a test
/// route or log of an interop authority): the status and the body.
pub(crate) fn http_request(method: &str, url: &str) -> (u16, String) {
    http_request_with(method, url, &[], "")
}

/// One HTTP/1.1 request to a plain `http://` server with these extra
/// headers and this body: the status and the body of the answer.
pub(crate) fn http_request_with(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let rest = url
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("not an http URL: {url}"));
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let mut stream = std::net::TcpStream::connect(host)
        .unwrap_or_else(|e| panic!("cannot connect to {host}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, body.to_owned())
}

/// Decodes base64url (RFC 4648 §5, padding optional); None if malformed.
pub(crate) fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .ok()
}

/// The claims of a JWT (its signature is not checked: the tests read what
/// the authority put in, they do not trust it).
pub(crate) fn jwt_claims(token: &str) -> Value {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "not a JWT");
    let payload = base64url_decode(parts[1]).expect("a base64url JWT payload");
    serde_json::from_slice(&payload).expect("JSON JWT claims")
}

/// SHA-256 of `data`, by ring through rustls (no code of ours).
pub(crate) fn sha256(data: &[u8]) -> Vec<u8> {
    let suite = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256
        .tls13()
        .expect("a TLS 1.3 suite");
    suite.common.hash_provider.hash(data).as_ref().to_vec()
}

/// The `tokenkeeper` binary, built (or found fresh) by cargo once per test
/// process, in this test's profile.
///
/// It is built in a target folder of its own, `interop-cli` inside this
/// test's: built alone, the command gets its dependencies with its own
/// features, which differ from those of a workspace-wide test build, and in
/// the shared folder the two builds would replace each other's
/// `target/debug/tokenkeeper` (the binary tokenkeeper-cli's own tests run),
/// and rebuild it on every alternation.
pub(crate) fn tokenkeeper_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        // This test is TARGET/PROFILE/deps/NAME-HASH.
        let exe = std::env::current_exe().expect("the test's own path");
        let target = exe
            .ancestors()
            .nth(3)
            .expect("a test executable inside a cargo target folder");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["build", "--quiet", "--message-format=json"])
            .args(["-p", "tokenkeeper-cli", "--bin", "tokenkeeper"])
            .arg("--target-dir")
            .arg(target.join("interop-cli"))
            .stdin(Stdio::null());
        if !cfg!(debug_assertions) {
            cmd.arg("--release");
        }
        let out = cmd.output().expect("cargo runs");
        assert!(
            out.status.success(),
            "cargo could not build the tokenkeeper command:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|message| message["target"]["name"] == "tokenkeeper")
            .find_map(|message| message["executable"].as_str().map(PathBuf::from))
            .expect("cargo names the tokenkeeper executable")
    })
}
