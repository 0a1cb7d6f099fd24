//! `tokenkeeper login --device` end to end, as a person would use it: the
//! built binary against the loopback test authority, with the test playing
//! the person who approves (or refuses) the code in a browser while the
//! command polls. Then `tokenkeeper token` with the same profile, after the
//! access token expired, refreshes with the refresh token the login cached:
//! no person needed. The device code and the refresh token never show in
//! the output, even at -vv.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokenkeeper_testkit::authority::{Outcome, RequestRecord};
use tokenkeeper_testkit::{Authority, Client};

const CLIENT_ID: &str = "device-cli";
const SECRET: &str = "device-cli-secret-5b1e";
const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

struct Fixture {
    authority: Authority,
    home: tempfile::TempDir,
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Fixture {
    /// An authority announcing a 1 s interval, whose tokens live `lifetime`,
    /// and a profile `me` for it.
    fn new(lifetime: Duration) -> Self {
        let authority = Authority::start();
        authority.set_device_interval(Duration::from_secs(1));
        authority.register_client(Client::new(CLIENT_ID, SECRET).token_lifetime(lifetime));
        let home = tempfile::tempdir().unwrap();
        let config = home.path().join("config").join("tokenkeeper");
        std::fs::create_dir_all(&config).unwrap();
        std::fs::write(
            config.join("config.toml"),
            format!(
                "[profiles.me]\ntoken_url = \"{}\"\ndevice_authorization_url = \"{}\"\nclient_id = \"{CLIENT_ID}\"\ngrant = \"device_code\"\nscope = \"offline_access\"\n",
                authority.token_url(),
                authority.device_authorization_url()
            ),
        )
        .unwrap();
        Fixture { authority, home }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tokenkeeper"));
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.home.path())
            .env("XDG_CACHE_HOME", self.home.path().join("cache"))
            .env("XDG_CONFIG_HOME", self.home.path().join("config"))
            .env("TOKENKEEPER_CLIENT_SECRET", SECRET)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .args(args);
        cmd
    }

    /// Starts `login --device --profile me -vv`.
    fn start_login(&self) -> Child {
        self.command(&["login", "--device", "--profile", "me", "-vv"])
            .spawn()
            .unwrap()
    }

    fn polls(&self) -> Vec<RequestRecord> {
        self.authority
            .requests()
            .into_iter()
            .filter(|r| r.grant_type.as_deref() == Some(DEVICE_GRANT))
            .collect()
    }

    /// Waits until the command polled `n` times and answered; returns the user code.
    fn after_polls(&self, n: usize) -> String {
        let ready = self.authority.wait_until(Duration::from_secs(60), |log| {
            log.iter()
                .filter(|r| {
                    r.grant_type.as_deref() == Some(DEVICE_GRANT)
                        && !matches!(r.outcome, Outcome::Pending)
                })
                .count()
                >= n
        });
        assert!(ready, "the command did not poll {n} times");
        let codes = self.authority.pending_user_codes();
        assert_eq!(codes.len(), 1, "{codes:?}");
        codes[0].clone()
    }

    fn cache_files(&self) -> Vec<PathBuf> {
        let dir = self.home.path().join("cache").join("tokenkeeper");
        match std::fs::read_dir(&dir) {
            Ok(entries) => entries
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "json"))
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}

/// Waits for a child, reading its output as it goes (-vv writes a lot).
fn finish(mut child: Child) -> Run {
    let mut stderr_pipe = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        stderr_pipe.read_to_string(&mut text).unwrap();
        text
    });
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let status = child.wait().unwrap();
    Run {
        code: status.code().unwrap_or(-1),
        stdout,
        stderr: reader.join().unwrap(),
    }
}

fn run(cmd: &mut Command) -> Run {
    finish(cmd.spawn().unwrap())
}

fn assert_hidden(run: &Run, secrets: &[&str]) {
    for secret in secrets {
        assert!(secret.len() >= 8);
        assert!(
            !run.stdout.contains(secret),
            "stdout shows a secret: {}",
            run.stdout
        );
        assert!(
            !run.stderr.contains(secret),
            "stderr shows a secret: {}",
            run.stderr
        );
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn a_device_login_is_refreshed_later_without_the_person() {
    let fixture = Fixture::new(Duration::from_secs(2));
    // The authority asks the command to slow down at its first poll.
    fixture.authority.force_slow_down(1);
    let login = fixture.start_login();
    // The person opens the page and approves, while the command polls.
    let user_code = fixture.after_polls(2);
    let device_code = fixture.authority.device_code_of(&user_code).unwrap();
    assert!(fixture.authority.approve_device(&user_code));
    let login = finish(login);
    assert_eq!(login.code, 0, "{}", login.stderr);
    assert!(login.stdout.is_empty(), "{}", login.stdout);
    // It showed where to go (the complete form) and the code.
    let uri = format!("{}/device", fixture.authority.base_url());
    assert!(
        login
            .stderr
            .contains(&format!("open {uri}?user_code={user_code}")),
        "{}",
        login.stderr
    );
    assert!(login.stderr.contains(&user_code));
    assert!(login.stderr.contains("signed in"), "{}", login.stderr);
    let polls = fixture.polls();
    assert!(polls.len() >= 3, "{polls:?}");
    // slow_down obeyed: the next poll came 5 s later than the 1 s interval
    // (the authority would have answered slow_down again to an early one).
    let refused = |r: &RequestRecord| match &r.outcome {
        Outcome::Rejected { error } => error.clone(),
        other => format!("{other:?}"),
    };
    assert_eq!(refused(&polls[0]), "slow_down");
    assert_eq!(refused(&polls[1]), "authorization_pending", "{polls:?}");
    let gap = polls[1].at.duration_since(polls[0].at).unwrap();
    assert!(gap >= Duration::from_millis(5_750), "{gap:?}");
    let Outcome::Issued {
        refresh_token: Some(refresh_token),
        ..
    } = polls.last().unwrap().outcome.clone()
    else {
        panic!("{polls:?}");
    };
    assert_hidden(&login, &[&device_code, &refresh_token, SECRET]);

    // The refresh token is in the 0600 cache file.
    let files = fixture.cache_files();
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(mode(&files[0]), 0o600);

    // Later, the access token has expired: `token` with the same profile
    // refreshes with the cached refresh token and prints the new token.
    std::thread::sleep(Duration::from_millis(2_300));
    let before = fixture.authority.request_count();
    let token = run(&mut fixture.command(&["token", "--profile", "me", "-vv"]));
    assert_eq!(token.code, 0, "{}", token.stderr);
    let requests = fixture.authority.requests();
    let after: Vec<&RequestRecord> = requests[before..].iter().collect();
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0].grant_type.as_deref(), Some("refresh_token"));
    assert_eq!(
        after[0].refresh_token.as_deref(),
        Some(refresh_token.as_str())
    );
    let Outcome::Issued {
        access_token,
        refresh_token: rotated,
    } = after[0].outcome.clone()
    else {
        panic!("{:?}", after[0]);
    };
    assert_eq!(token.stdout.trim(), access_token);
    let rotated = rotated.expect("a rotated refresh token");
    assert_hidden(&token, &[&device_code, &refresh_token, &rotated, SECRET]);
    assert_eq!(mode(&files[0]), 0o600);
}

#[test]
fn a_refused_login_exits_7_and_stores_nothing() {
    let fixture = Fixture::new(Duration::from_secs(600));
    let login = fixture.start_login();
    let user_code = fixture.after_polls(1);
    let device_code = fixture.authority.device_code_of(&user_code).unwrap();
    assert!(fixture.authority.deny_device(&user_code));
    let login = finish(login);
    assert_eq!(login.code, 7, "{}", login.stderr);
    assert!(
        login
            .stderr
            .contains("the sign-in was refused (access_denied)"),
        "{}",
        login.stderr
    );
    assert_hidden(&login, &[&device_code, SECRET]);
    assert!(fixture.cache_files().is_empty());
    // And `token` says what to do rather than asking a person.
    let token = run(&mut fixture.command(&["token", "--profile", "me"]));
    assert_eq!(token.code, 3, "{}", token.stderr);
    assert!(token.stdout.is_empty());
    assert!(
        token
            .stderr
            .contains("sign in first with `tokenkeeper login --device`"),
        "{}",
        token.stderr
    );
}

#[test]
fn an_expired_login_exits_8() {
    let fixture = Fixture::new(Duration::from_secs(600));
    // The authority says so...
    let login = fixture.start_login();
    let user_code = fixture.after_polls(1);
    let device_code = fixture.authority.device_code_of(&user_code).unwrap();
    assert!(fixture.authority.expire_device(&user_code));
    let login = finish(login);
    assert_eq!(login.code, 8, "{}", login.stderr);
    assert!(login.stderr.contains("expired"), "{}", login.stderr);
    assert_hidden(&login, &[&device_code, SECRET]);
    assert!(fixture.cache_files().is_empty());
    // ...or the code's lifetime runs out while the person is away.
    fixture
        .authority
        .set_device_code_lifetime(Duration::from_secs(2));
    let login = run(&mut fixture.command(&["login", "--device", "--profile", "me"]));
    assert_eq!(login.code, 8, "{}", login.stderr);
    assert!(
        login
            .stderr
            .contains("run tokenkeeper login --device again"),
        "{}",
        login.stderr
    );
}

#[test]
fn a_login_without_an_endpoint_or_with_another_grant_is_a_usage_error() {
    let fixture = Fixture::new(Duration::from_secs(600));
    let token_url = fixture.authority.token_url();
    let no_endpoint = run(&mut fixture.command(&[
        "login",
        "--device",
        "--token-url",
        &token_url,
        "--client-id",
        CLIENT_ID,
    ]));
    assert_eq!(no_endpoint.code, 2, "{}", no_endpoint.stderr);
    assert!(
        no_endpoint.stderr.contains("--device-authorization-url"),
        "{}",
        no_endpoint.stderr
    );
    let wrong_grant = run(&mut fixture.command(&[
        "login",
        "--device",
        "--profile",
        "me",
        "--grant",
        "client_credentials",
    ]));
    assert_eq!(wrong_grant.code, 2, "{}", wrong_grant.stderr);
    assert_eq!(fixture.authority.request_count(), 0);
    // A URL that is no device authorization endpoint: exit 6, as for a
    // token URL that is no token endpoint.
    let nowhere = format!("{}/nowhere", fixture.authority.base_url());
    let wrong_url = run(&mut fixture.command(&[
        "login",
        "--device",
        "--profile",
        "me",
        "--device-authorization-url",
        &nowhere,
    ]));
    assert_eq!(wrong_url.code, 6, "{}", wrong_url.stderr);
    assert!(
        wrong_url
            .stderr
            .contains("is not a device authorization endpoint: it answered HTTP 404"),
        "{}",
        wrong_url.stderr
    );
}

#[test]
fn a_login_with_an_issuer_takes_the_endpoints_from_its_metadata() {
    let fixture = Fixture::new(Duration::from_secs(600));
    let issuer = fixture.authority.discovery_issuer();
    let settings = [
        "--issuer",
        issuer.as_str(),
        "--client-id",
        CLIENT_ID,
        "--grant",
        "device_code",
        "--scope",
        "offline_access",
    ];
    let login = fixture
        .command(&[&["login", "--device"][..], &settings[..]].concat())
        .spawn()
        .unwrap();
    let user_code = fixture.after_polls(1);
    assert!(fixture.authority.approve_device(&user_code));
    let login = finish(login);
    assert_eq!(login.code, 0, "{}", login.stderr);
    assert_eq!(fixture.authority.metadata_request_count(), 1);
    let Outcome::Issued { access_token, .. } = fixture.polls().last().unwrap().outcome.clone()
    else {
        panic!("{:?}", fixture.polls());
    };
    // `token` with the same settings prints the cached login: no request.
    let before = fixture.authority.request_count();
    let token = run(&mut fixture.command(&[&["token"][..], &settings[..]].concat()));
    assert_eq!(token.code, 0, "{}", token.stderr);
    assert_eq!(token.stdout.trim(), access_token);
    assert_eq!(fixture.authority.request_count(), before);
}
