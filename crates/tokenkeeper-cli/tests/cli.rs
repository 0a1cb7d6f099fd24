//! The `tokenkeeper` command, run as a user would: the built binary, real
//! processes, real files, and the loopback test authority.
//!
//! Every scenario runs twice: over plain http, and again over HTTPS (the
//! authority with a certificate of a private CA the command trusts through
//! `TOKENKEEPER_CA_FILE`): `every_scenario_again_over_https` re-runs this
//! test binary with `TOKENKEEPER_CLI_TEST_HTTPS=1`.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tokenkeeper_testkit::pki::Pki;
use tokenkeeper_testkit::{Authority, Client, Fault, TlsSettings};

/// Set in the child run of `every_scenario_again_over_https`.
const HTTPS_ENV: &str = "TOKENKEEPER_CLI_TEST_HTTPS";

fn over_https() -> bool {
    std::env::var_os(HTTPS_ENV).is_some_and(|v| v == "1")
}

const CLIENT_ID: &str = "cli-test-client";
const SECRET: &str = "cli-test-secret-9f83b2e1";

/// A test authority, and a home folder (config, cache) of its own.
struct Fixture {
    authority: Authority,
    home: tempfile::TempDir,
    /// The CA file the command trusts, over HTTPS.
    ca_file: Option<PathBuf>,
}

/// One finished run.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Fixture {
    fn new(lifetime: Duration) -> Self {
        let home = tempfile::tempdir().expect("a temporary folder");
        let (authority, ca_file) = if over_https() {
            let pki = Pki::shared();
            let ca_file = home.path().join("private-ca.pem");
            std::fs::write(&ca_file, pki.ca_pem()).expect("write the CA file");
            let authority = Authority::builder().tls(TlsSettings::new(&pki)).start();
            (authority, Some(ca_file))
        } else {
            (Authority::start(), None)
        };
        authority.register_client(Client::new(CLIENT_ID, SECRET).token_lifetime(lifetime));
        Fixture {
            authority,
            home,
            ca_file,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.home.path().join(name)
    }

    fn cache_dir(&self) -> PathBuf {
        self.path("cache").join("tokenkeeper")
    }

    /// The command with a clean environment: its own HOME and XDG folders,
    /// and the client secret in the environment.
    fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tokenkeeper"));
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.home.path())
            .env("XDG_CACHE_HOME", self.path("cache"))
            .env("XDG_CONFIG_HOME", self.path("config"))
            .env("TOKENKEEPER_CLIENT_SECRET", SECRET)
            .stdin(Stdio::null());
        if let Some(ca_file) = &self.ca_file {
            cmd.env("TOKENKEEPER_CA_FILE", ca_file);
        }
        cmd
    }

    /// `tokenkeeper token` against the authority, with extra arguments.
    fn token_command(&self, extra: &[&str]) -> Command {
        let mut cmd = self.command();
        cmd.args([
            "token",
            "--token-url",
            &self.authority.token_url(),
            "--client-id",
            CLIENT_ID,
        ])
        .args(extra);
        cmd
    }

    /// Runs a command to its end, checking that no secret shows in its output.
    fn run(&self, cmd: &mut Command) -> Run {
        let out = cmd.output().expect("the command runs");
        self.finished(out)
    }

    fn finished(&self, out: Output) -> Run {
        let run = Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        self.assert_no_secret(&run);
        run
    }

    fn token(&self, extra: &[&str]) -> Run {
        self.run(&mut self.token_command(extra))
    }

    /// Neither the client secret nor any refresh token ever issued shows in
    /// stdout or stderr; no access token shows on stderr.
    fn assert_no_secret(&self, run: &Run) {
        let all = format!("{}\n{}", run.stdout, run.stderr);
        assert!(!all.contains(SECRET), "the client secret leaked: {run:?}");
        for issued in self.authority.issued_tokens() {
            if let Some(rt) = &issued.refresh_token {
                assert!(
                    !all.contains(rt.as_str()),
                    "a refresh token leaked: {run:?}"
                );
            }
            assert!(
                !run.stderr.contains(&issued.access_token),
                "an access token leaked on stderr: {run:?}"
            );
        }
        for rt in self.authority.live_refresh_tokens(CLIENT_ID) {
            assert!(
                !all.contains(rt.as_str()),
                "a refresh token leaked: {run:?}"
            );
        }
    }

    /// The cache files in the default cache folder.
    fn cache_files(&self) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(self.cache_dir()) else {
            return Vec::new();
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        files
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("the file exists")
        .permissions()
        .mode()
        & 0o777
}

fn ok(run: &Run) -> String {
    assert_eq!(run.code, 0, "{run:?}");
    run.stdout.trim_end().to_owned()
}

#[test]
fn token_is_printed_and_the_cache_reused() {
    let fx = Fixture::new(Duration::from_secs(300));
    let first = ok(&fx.token(&[]));
    assert_eq!(Some(first.clone()), fx.authority.last_access_token());
    assert_eq!(fx.authority.request_count(), 1);
    let files = fx.cache_files();
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(mode(&files[0]), 0o600);

    // Within the fresh period: no request, the same token, in every format.
    assert_eq!(ok(&fx.token(&[])), first);
    let header = ok(&fx.token(&["--output", "header"]));
    assert_eq!(header, format!("Authorization: Bearer {first}"));
    let json: serde_json::Value =
        serde_json::from_str(&ok(&fx.token(&["--output", "json"]))).expect("JSON");
    assert_eq!(json["access_token"], first.as_str());
    assert_eq!(json["token_type"], "Bearer");
    assert_eq!(json["status"], "fresh");
    assert_eq!(json["source"], "cache");
    assert!(
        json["expires_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{json}"
    );
    assert_eq!(fx.authority.request_count(), 1, "the cache was not reused");

    // Other settings are another cache slot; --no-cache always asks.
    ok(&fx.token(&["--scope", "other"]));
    assert_eq!(fx.authority.request_count(), 2);
    ok(&fx.token(&["--no-cache"]));
    assert_eq!(fx.authority.request_count(), 3);
    let explicit = fx.path("explicit/cache.json");
    ok(&fx.token(&["--cache", explicit.to_str().unwrap()]));
    assert_eq!(mode(&explicit), 0o600);
    assert_eq!(fx.authority.request_count(), 4);
}

#[test]
fn post_auth_scope_audience_resource_and_params_are_sent() {
    let fx = Fixture::new(Duration::from_secs(300));
    fx.authority.register_client(
        Client::new(CLIENT_ID, SECRET).auth_method(tokenkeeper_testkit::AuthMethod::Post),
    );
    ok(&fx.token(&[
        "--auth-method",
        "post",
        "--scope",
        "read write",
        "--audience",
        "https://api.example",
        "--resource",
        "https://r1.example",
        "--param",
        "tenant=t1",
    ]));
    let log = fx.authority.requests();
    assert_eq!(log.len(), 1);
    assert!(log[0].authenticated, "{log:?}");
    assert_eq!(log[0].scope.as_deref(), Some("read write"));
    assert_eq!(log[0].audience, vec!["https://api.example".to_owned()]);
    assert_eq!(log[0].resource, vec!["https://r1.example".to_owned()]);
}

#[test]
fn verbose_runs_say_more_and_show_no_secret() {
    let fx = Fixture::new(Duration::from_secs(300));
    let cold = fx.token(&["-vv"]);
    ok(&cold);
    assert!(cold.stderr.contains("new token"), "{}", cold.stderr);
    assert!(cold.stderr.contains("fp:"), "{}", cold.stderr);
    let warm = fx.token(&["-v"]);
    ok(&warm);
    assert!(warm.stderr.contains("found a record"), "{}", warm.stderr);
}

#[test]
fn rejected_credentials_exit_3_with_the_oauth_error() {
    let fx = Fixture::new(Duration::from_secs(300));
    let mut cmd = fx.token_command(&["-v"]);
    cmd.env("TOKENKEEPER_CLIENT_SECRET", "a-wrong-secret-11aa");
    let run = fx.run(&mut cmd);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(run.stderr.contains("invalid_client"), "{run:?}");
    assert!(run.stdout.is_empty());
    assert!(!run.stderr.contains("a-wrong-secret-11aa"), "{run:?}");
    // One clear line without -v.
    let mut cmd = fx.token_command(&[]);
    cmd.env("TOKENKEEPER_CLIENT_SECRET", "a-wrong-secret-11aa");
    let run = fx.run(&mut cmd);
    assert_eq!(run.code, 3);
    assert_eq!(run.stderr.lines().count(), 1, "{run:?}");

    // The error description is shown too.
    fx.authority.push_fault(Fault::oauth_error(
        400,
        "invalid_scope",
        Some("scope nope is not allowed"),
    ));
    let run = fx.token(&["--scope", "nope"]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(run.stderr.contains("invalid_scope"), "{run:?}");
    assert!(run.stderr.contains("scope nope is not allowed"), "{run:?}");
}

#[test]
fn an_unreachable_or_failing_authority_exits_4() {
    let fx = Fixture::new(Duration::from_secs(300));
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{closed}/token");
    let run = fx.run(fx.command().args([
        "token",
        "--token-url",
        &url,
        "--client-id",
        CLIENT_ID,
        "--timeout",
        "2",
        "-v",
    ]));
    assert_eq!(run.code, 4, "{run:?}");
    assert!(run.stderr.contains("could not reach"), "{run:?}");

    fx.authority.set_down(true);
    let started = Instant::now();
    let run = fx.token(&["--timeout", "2"]);
    assert_eq!(run.code, 4, "{run:?}");
    assert!(run.stderr.contains("503"), "{run:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        fx.authority.request_count() >= 2,
        "transient errors are retried"
    );
}

#[test]
fn proxy_variables_never_carry_a_loopback_request() {
    let fx = Fixture::new(Duration::from_secs(300));
    let proxy = tokenkeeper_testkit::RecordingProxy::start(fx.authority.addr());
    let url = proxy.url();
    let names = [
        "HTTPS_PROXY",
        "HTTP_PROXY",
        "ALL_PROXY",
        "https_proxy",
        "http_proxy",
        "all_proxy",
    ];
    for (i, name) in names.into_iter().enumerate() {
        let run = fx.run(fx.token_command(&["--no-cache"]).env(name, &url));
        let token = ok(&run);
        assert!(fx.authority.token_is_active(&token), "{name}: {run:?}");
        assert_eq!(fx.authority.request_count(), i + 1, "{name}");
        assert!(proxy.seen().is_empty(), "{name}: {:?}", proxy.seen());
    }
    let mut all = fx.token_command(&["--no-cache"]);
    for name in names {
        all.env(name, &url);
    }
    ok(&fx.run(&mut all));
    assert!(
        proxy.received().is_empty(),
        "the proxy saw a loopback request"
    );

    // Elsewhere, the variables are honoured: an https token URL goes
    // through a CONNECT tunnel, whose TLS then fails against the authority
    // behind the proxy (plain http, or a certificate for another name): a
    // TLS failure, exit 5, at once.
    let run = fx.run(
        fx.command()
            .args(["token", "--token-url", "https://auth.test/token"])
            .args(["--client-id", CLIENT_ID, "--no-cache", "--timeout", "2"])
            .env("HTTPS_PROXY", &url),
    );
    assert_eq!(run.code, 5, "{run:?}");
    assert!(run.stderr.contains("TLS with auth.test failed"), "{run:?}");
    let seen = proxy.seen();
    assert!(!seen.is_empty(), "{run:?}");
    assert!(
        seen.iter().all(|r| r.line() == "CONNECT auth.test:443"),
        "{seen:?}"
    );
    let received = String::from_utf8_lossy(&proxy.received()).into_owned();
    assert!(!received.contains(SECRET));
}

#[test]
fn usage_and_configuration_errors_exit_2() {
    let fx = Fixture::new(Duration::from_secs(300));
    let url = fx.authority.token_url();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["token", "--token-url", &url], "client id"),
        (vec!["token", "--client-id", "x"], "token URL"),
        (
            vec![
                "token",
                "--token-url",
                "http://auth.example.com/t",
                "--client-id",
                "x",
            ],
            "plain http",
        ),
        (
            vec![
                "token",
                "--token-url",
                &url,
                "--client-id",
                "x",
                "--param",
                "novalue",
            ],
            "NAME=VALUE",
        ),
        (
            vec![
                "token",
                "--token-url",
                &url,
                "--client-id",
                "x",
                "--param",
                "grant_type=x",
            ],
            "reserved",
        ),
        (
            vec![
                "token",
                "--token-url",
                &url,
                "--client-id",
                "x",
                "--grant",
                "refresh_token",
            ],
            "--refresh-token-file",
        ),
        (
            vec!["token", "--client-secret", SECRET],
            "unexpected argument",
        ),
        (vec!["token", "--profile", "nope"], "config file"),
        (vec!["simulate", "--outage", "soon"], "START:DURATION"),
        (vec!["simulate", "--instances", "0"], "--instances"),
        (vec!["bogus"], "unrecognized subcommand"),
    ];
    for (args, expect) in cases {
        let run = fx.run(fx.command().args(&args));
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
        assert!(run.stderr.contains(expect), "{args:?}: {run:?}");
    }
    // No secret at all.
    let run = fx.run(fx.command().env_remove("TOKENKEEPER_CLIENT_SECRET").args([
        "token",
        "--token-url",
        &url,
        "--client-id",
        "x",
    ]));
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("TOKENKEEPER_CLIENT_SECRET"), "{run:?}");
    let run = fx.run(fx.command().args([
        "token",
        "--token-url",
        &url,
        "--client-id",
        "x",
        "--client-secret-file",
        "/nonexistent/secret",
    ]));
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("/nonexistent/secret"), "{run:?}");
    assert_eq!(fx.authority.request_count(), 0);
}

#[test]
fn profiles_supply_settings_and_bad_config_files_are_named() {
    let fx = Fixture::new(Duration::from_secs(300));
    let config_dir = fx.path("config/tokenkeeper");
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::write(config_dir.join("secret.txt"), format!("{SECRET}\n")).unwrap();
    let config = config_dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[profiles.dev]\ntoken_url = \"{}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret_file = \"secret.txt\"\nscope = \"read\"\nmin_valid = 10\n",
            fx.authority.token_url()
        ),
    )
    .unwrap();
    // The secret comes from the profile's file (relative to the config file).
    let run = fx.run(fx.command().env_remove("TOKENKEEPER_CLIENT_SECRET").args([
        "token",
        "--profile",
        "dev",
    ]));
    assert_eq!(ok(&run), fx.authority.last_access_token().unwrap());
    assert_eq!(fx.authority.requests()[0].scope.as_deref(), Some("read"));
    // Flags win over the profile.
    let run = fx.run(
        fx.command()
            .args(["token", "--profile", "dev", "--scope", "write"]),
    );
    ok(&run);
    assert_eq!(fx.authority.requests()[1].scope.as_deref(), Some("write"));
    // --config names another file; its `default` profile is used.
    let other = fx.path("other.toml");
    std::fs::write(
        &other,
        format!(
            "[profiles.default]\ntoken_url = \"{}\"\nclient_id = \"{CLIENT_ID}\"\nno_cache = true\n",
            fx.authority.token_url()
        ),
    )
    .unwrap();
    ok(&fx.run(
        fx.command()
            .args(["token", "--config", other.to_str().unwrap()]),
    ));
    assert_eq!(fx.authority.request_count(), 3);

    std::fs::write(
        &other,
        "[profiles.default]\ntoken_url = \"x\"\nclient_id = 5\n",
    )
    .unwrap();
    let run = fx.run(
        fx.command()
            .args(["token", "--config", other.to_str().unwrap()]),
    );
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains(other.to_str().unwrap()), "{run:?}");
    assert!(run.stderr.contains("line 3"), "{run:?}");
    std::fs::write(&other, "[profiles.default]\nclient_secret = \"inline\"\n").unwrap();
    let run = fx.run(
        fx.command()
            .args(["token", "--config", other.to_str().unwrap()]),
    );
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains("line 2") && run.stderr.contains("client_secret"),
        "{run:?}"
    );
    assert!(!run.stderr.contains("inline"), "{run:?}");
    std::fs::write(&other, "this is [not toml").unwrap();
    let run = fx.run(
        fx.command()
            .args(["token", "--config", other.to_str().unwrap()]),
    );
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("line 1"), "{run:?}");
}

#[test]
fn a_stale_token_is_refreshed_and_kept_when_the_refresh_fails() {
    // 4 s tokens go stale at 2 s.
    let fx = Fixture::new(Duration::from_secs(4));
    let first = ok(&fx.token(&[]));
    std::thread::sleep(Duration::from_millis(2_300));
    let second = ok(&fx.token(&[]));
    assert_ne!(second, first, "a stale token is refreshed");
    assert_eq!(fx.authority.request_count(), 2);

    std::thread::sleep(Duration::from_millis(2_300));
    fx.authority.set_down(true);
    let run = fx.token(&[]);
    assert_eq!(ok(&run), second, "the cached token, still valid");
    assert!(run.stderr.contains("warning"), "{run:?}");
    assert!(run.stderr.contains("503"), "{run:?}");

    // Once it has expired there is nothing to fall back on.
    std::thread::sleep(Duration::from_millis(2_000));
    let run = fx.token(&["--timeout", "1"]);
    assert_eq!(run.code, 4, "{run:?}");
}

#[test]
fn min_valid_forces_a_refresh() {
    let fx = Fixture::new(Duration::from_secs(60));
    let first = ok(&fx.token(&[]));
    assert_eq!(ok(&fx.token(&["--min-valid", "30"])), first);
    assert_eq!(fx.authority.request_count(), 1);
    std::thread::sleep(Duration::from_millis(1_200));
    let second = ok(&fx.token(&["--min-valid", "59"]));
    assert_ne!(second, first);
    assert_eq!(fx.authority.request_count(), 2);
    // Asking for more than the authority grants: the new token, with a warning.
    let run = fx.token(&["--min-valid", "600"]);
    ok(&run);
    assert!(run.stderr.contains("less than asked"), "{run:?}");
    assert_eq!(fx.authority.request_count(), 3);
}

#[test]
fn twenty_processes_on_a_cold_cache_make_one_request() {
    let fx = Fixture::new(Duration::from_secs(300));
    // A slow answer keeps the first process's lock held while the others start.
    fx.authority
        .push_fault(Fault::Delay(Duration::from_millis(400)));
    let children: Vec<Child> = (0..20)
        .map(|_| {
            fx.token_command(&["--timeout", "30"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("a process")
        })
        .collect();
    let tokens: BTreeSet<String> = children
        .into_iter()
        .map(|child| ok(&fx.finished(child.wait_with_output().expect("output"))))
        .collect();
    assert_eq!(
        fx.authority.request_count(),
        1,
        "{:?}",
        fx.authority.requests()
    );
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    assert_eq!(tokens.first().cloned(), fx.authority.last_access_token());
}

#[test]
fn rotated_refresh_tokens_are_written_back_and_never_reused() {
    let fx = Fixture::new(Duration::from_secs(300));
    let rt_file = fx.path("rt");
    std::fs::write(
        &rt_file,
        format!("{}\n", fx.authority.issue_refresh_token(CLIENT_ID)),
    )
    .unwrap();
    let rt = rt_file.to_str().unwrap();
    let mut seen = BTreeSet::new();
    for _ in 0..3 {
        let token = ok(&fx.token(&[
            "--grant",
            "refresh_token",
            "--refresh-token-file",
            rt,
            "--no-cache",
        ]));
        assert!(seen.insert(token), "a new access token each time");
        let live = fx.authority.live_refresh_tokens(CLIENT_ID);
        assert_eq!(live.len(), 1, "{live:?}");
        let stored = std::fs::read_to_string(&rt_file).unwrap();
        assert_eq!(stored.trim_end(), live[0], "the rotated token is saved");
        assert_eq!(mode(&rt_file), 0o600);
    }
    assert_eq!(fx.authority.count_by_grant("refresh_token"), 3);
    assert_eq!(fx.authority.refresh_token_reuses(), 0);

    // With the cache (the default), a second run is served from it and keeps
    // the saved refresh token valid.
    let args = ["--grant", "refresh_token", "--refresh-token-file", rt];
    let a = ok(&fx.token(&args));
    let b = ok(&fx.token(&args));
    assert_eq!(a, b);
    assert_eq!(fx.authority.count_by_grant("refresh_token"), 4);
    let live = fx.authority.live_refresh_tokens(CLIENT_ID);
    assert_eq!(
        std::fs::read_to_string(&rt_file).unwrap().trim_end(),
        live[0]
    );
    assert_eq!(fx.authority.refresh_token_reuses(), 0);
}

#[test]
fn inspect_shows_the_cache_without_the_token() {
    let fx = Fixture::new(Duration::from_secs(300));
    let token = ok(&fx.token(&["--scope", "read"]));
    let file = fx.cache_files().pop().expect("a cache file");
    let run = fx.run(
        fx.command()
            .args(["inspect", "--cache", file.to_str().unwrap()]),
    );
    let text = ok(&run);
    assert!(text.contains("fresh"), "{text}");
    assert!(text.contains("fp:"), "{text}");
    assert!(text.contains("read"), "{text}");
    assert!(text.contains(CLIENT_ID), "{text}");
    assert!(!text.contains(&token), "{text}");

    let run = fx.run(fx.command().args([
        "inspect",
        "--cache",
        file.to_str().unwrap(),
        "--show-token",
        "--output",
        "json",
    ]));
    let json: serde_json::Value = serde_json::from_str(&ok(&run)).unwrap();
    assert_eq!(json["status"], "fresh");
    assert_eq!(json["access_token"], token.as_str());
    assert_eq!(json["scope"], "read");
    assert!(json["fingerprint"].as_str().unwrap().starts_with("fp:"));

    // Found from the source flags, no secret needed.
    let run = fx.run(fx.command().env_remove("TOKENKEEPER_CLIENT_SECRET").args([
        "inspect",
        "--token-url",
        &fx.authority.token_url(),
        "--client-id",
        CLIENT_ID,
        "--scope",
        "read",
        "--output",
        "json",
    ]));
    let json: serde_json::Value = serde_json::from_str(&ok(&run)).unwrap();
    assert_eq!(json["status"], "fresh");
    assert!(json.get("access_token").is_none());

    let run = fx.run(
        fx.command()
            .args(["inspect", "--cache", "/nonexistent/cache.json"]),
    );
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("no token is cached"), "{run:?}");
    std::fs::write(fx.path("garbage.json"), b"{\"format\":").unwrap();
    let run = fx.run(fx.command().args([
        "inspect",
        "--cache",
        fx.path("garbage.json").to_str().unwrap(),
    ]));
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("unusable"), "{run:?}");
}

#[test]
fn watch_keeps_the_sink_valid_and_exits_0_on_sigterm() {
    let fx = Fixture::new(Duration::from_secs(3));
    let sink = fx.path("sink/token");
    let mut child = fx
        .command()
        .args([
            "watch",
            "--token-url",
            &fx.authority.token_url(),
            "--client-id",
            CLIENT_ID,
            "--sink",
            sink.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("watch starts");
    let start = Instant::now();
    while !sink.exists() {
        assert!(start.elapsed() < Duration::from_secs(10), "no sink file");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Three token lifetimes: the sink always holds a token the authority
    // still honours.
    let mut tokens = BTreeSet::new();
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(9) {
        let token = std::fs::read_to_string(&sink).expect("the sink is always there");
        let token = token.trim_end().to_owned();
        assert!(
            fx.authority.token_is_active(&token),
            "an inactive token in the sink"
        );
        tokens.insert(token);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(tokens.len() >= 3, "{} tokens", tokens.len());
    assert_eq!(mode(&sink), 0o600);
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "watch did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    let run = fx.finished(child.wait_with_output().expect("output"));
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("wrote token"), "{run:?}");
    // The sink keeps the last token for the programs that read it.
    assert!(sink.exists());
}

#[test]
fn watch_with_rejected_credentials_exits_3() {
    let fx = Fixture::new(Duration::from_secs(30));
    let sink = fx.path("sink");
    let run = fx.run(
        fx.command()
            .env("TOKENKEEPER_CLIENT_SECRET", "wrong-secret-for-watch")
            .args([
                "watch",
                "--token-url",
                &fx.authority.token_url(),
                "--client-id",
                CLIENT_ID,
                "--sink",
                sink.to_str().unwrap(),
            ]),
    );
    assert_eq!(run.code, 3, "{run:?}");
    assert!(run.stderr.contains("invalid_client"), "{run:?}");
    assert!(!run.stderr.contains("wrong-secret-for-watch"));
    assert!(!sink.exists());
}

#[test]
fn watch_with_sink_format_json_and_a_refresh_token_file() {
    let fx = Fixture::new(Duration::from_secs(2));
    let rt_file = fx.path("rt");
    std::fs::write(&rt_file, fx.authority.issue_refresh_token(CLIENT_ID)).unwrap();
    let sink = fx.path("token.json");
    let mut child = fx
        .command()
        .args([
            "watch",
            "--token-url",
            &fx.authority.token_url(),
            "--client-id",
            CLIENT_ID,
            "--grant",
            "refresh_token",
            "--refresh-token-file",
            rt_file.to_str().unwrap(),
            "--sink",
            sink.to_str().unwrap(),
            "--sink-format",
            "json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("watch starts");
    assert!(
        fx.authority
            .wait_until(Duration::from_secs(10), |log| log.len() >= 3),
        "no refreshes"
    );
    std::thread::sleep(Duration::from_millis(200));
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&sink).unwrap()).unwrap();
    assert!(
        fx.authority
            .token_is_active(doc["access_token"].as_str().unwrap())
    );
    assert!(doc["expires_at"].as_str().is_some());
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill runs");
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "watch did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(20));
    }
    let run = fx.finished(child.wait_with_output().unwrap());
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(fx.authority.refresh_token_reuses(), 0);
    let live = fx.authority.live_refresh_tokens(CLIENT_ID);
    assert_eq!(live.len(), 1);
    assert_eq!(
        std::fs::read_to_string(&rt_file).unwrap().trim_end(),
        live[0]
    );
}

#[test]
fn demo_runs_offline_and_tells_the_story() {
    let fx = Fixture::new(Duration::from_secs(60));
    let plot = fx.path("demo.svg");
    let run = fx.run(
        fx.command()
            .args(["demo", "--duration", "24", "--plot"])
            .arg(&plot),
    );
    let out = ok(&run);
    for expected in [
        "NEW TOKEN",
        "jitter",
        "OUTAGE",
        "refresh FAILED",
        "backoff",
        "back up",
        "Summary",
    ] {
        assert!(out.contains(expected), "{expected:?} missing from:\n{out}");
    }
    assert!(out.contains(" 0 with no token"), "{out}");

    // The picture of the same run: its panels, the outage shaded on each,
    // and the watcher's tokens (at least the first and the one after the
    // outage), each a fresh and a stale bar.
    assert!(out.contains("timeline drawn in"), "{out}");
    let svg = std::fs::read_to_string(&plot).expect("the SVG file");
    for label in [
        "tokenkeeper demo: one watcher against a test authority, through an outage",
        "authority requests per second",
        "authority down",
        "requests / s",
        "% of reads",
        "reads served a fresh token",
        "a stale one (grace period)",
        "nothing usable",
        "time since the start (s)",
    ] {
        assert!(svg.contains(&format!("\n{label}\n")), "{label:?} missing");
    }
    assert_eq!(svg.matches("opacity=\"0.18\" fill=\"#D62728\"").count(), 3);
    let tokens = out.matches("NEW TOKEN").count();
    assert!(
        svg.contains(&format!(
            "\nthe tokens the watcher held ({tokens}): fresh\n"
        )),
        "{tokens} tokens"
    );
}

#[test]
fn simulate_reports_requests_and_reads() {
    let fx = Fixture::new(Duration::from_secs(60));
    let json = |extra: &[&str]| -> serde_json::Value {
        let run = fx.run(
            fx.command()
                .args([
                    "simulate",
                    "--instances",
                    "100",
                    "--hours",
                    "6",
                    "--ttl",
                    "3600",
                ])
                .args(["--output", "json"])
                .args(extra),
        );
        serde_json::from_str(&ok(&run)).expect("JSON")
    };
    let shared = json(&[]);
    let alone = json(&["--no-shared-cache"]);
    let shared_requests = shared["authority_requests"].as_u64().unwrap();
    let alone_requests = alone["authority_requests"].as_u64().unwrap();
    assert!(shared_requests > 0 && shared_requests < 20, "{shared}");
    assert!(alone_requests >= 100 * 6, "{alone}");
    assert_eq!(shared["reads"]["expired"], 0);
    assert_eq!(shared["reads"]["nothing"], 0);
    assert!(shared["peak_requests_per_second"].as_u64().unwrap() >= 1);
    let outage = json(&["--outage", "1h:20m", "--jitter", "30"]);
    assert!(outage["recovery_after_outage_secs"].is_number(), "{outage}");

    let run = fx.run(
        fx.command()
            .args(["simulate", "--instances", "10", "--hours", "1"]),
    );
    let text = ok(&run);
    assert!(text.contains("authority requests"), "{text}");
    assert!(text.contains("peak"), "{text}");
    assert!(text.contains("fresh") && text.contains("stale") && text.contains("expired"));
}

/// Runs every other test of this file again, with the authority over HTTPS,
/// in a child process of this test binary.
#[test]
fn every_scenario_again_over_https() {
    if over_https() {
        return;
    }
    let out = Command::new(std::env::current_exe().expect("the test binary"))
        .env(HTTPS_ENV, "1")
        .args(["--test-threads", "2"])
        .output()
        .expect("the test binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "over HTTPS:\n{stdout}\n{stderr}");
    // Every scenario ran and passed (a filter or a skip would show here).
    let listed = Command::new(std::env::current_exe().expect("the test binary"))
        .arg("--list")
        .output()
        .expect("the test binary lists its tests");
    let listed = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter(|l| l.ends_with(": test"))
        .count();
    let passed = stdout.lines().filter(|l| l.ends_with("... ok")).count();
    assert!(listed > 10, "{listed} tests listed");
    assert_eq!(passed, listed, "over HTTPS:\n{stdout}");
}
