//! `tokenkeeper token --issuer URL`: the token endpoint comes from the
//! issuer's metadata, which the cache file keeps with the token (a later run
//! that refreshes asks for no metadata); the `issuer` profile key does the
//! same; a document naming another issuer exits 6 with a message that names
//! both, and no token is asked for.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use tokenkeeper_testkit::{Authority, Client};

const CLIENT_ID: &str = "cli-discovery-client";
const SECRET: &str = "cli-discovery-secret-51c7";

struct Fixture {
    authority: Authority,
    home: tempfile::TempDir,
}

#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Fixture {
    fn new() -> Self {
        let authority = Authority::start();
        authority.register_client(
            Client::new(CLIENT_ID, SECRET).token_lifetime(Duration::from_secs(60)),
        );
        // Not where anyone would guess it.
        authority.move_token_endpoint("/tenant-a/oauth2/v2.0/token");
        Fixture {
            authority,
            home: tempfile::tempdir().expect("a temporary folder"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.home.path().join(name)
    }

    fn run(&self, args: &[&str]) -> Run {
        let out = Command::new(env!("CARGO_BIN_EXE_tokenkeeper"))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.home.path())
            .env("XDG_CACHE_HOME", self.path("cache"))
            .env("XDG_CONFIG_HOME", self.path("config"))
            .env("TOKENKEEPER_CLIENT_SECRET", SECRET)
            .stdin(Stdio::null())
            .args(args)
            .output()
            .expect("the command runs");
        let run = Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        assert!(
            !format!("{}{}", run.stdout, run.stderr).contains(SECRET),
            "the secret leaked: {run:?}"
        );
        run
    }

    fn token(&self, extra: &[&str]) -> Run {
        let issuer = self.authority.discovery_issuer();
        let mut args = vec!["token", "--issuer", &issuer, "--client-id", CLIENT_ID];
        args.extend_from_slice(extra);
        self.run(&args)
    }

    /// (method, path) of every request so far.
    fn requests(&self) -> Vec<(String, String)> {
        self.authority
            .requests()
            .into_iter()
            .map(|r| (r.method, r.path))
            .collect()
    }
}

fn ok(run: &Run) -> String {
    assert_eq!(run.code, 0, "{run:?}");
    run.stdout.trim_end().to_owned()
}

#[test]
fn the_token_endpoint_comes_from_the_issuer_and_is_cached_with_the_token() {
    let fx = Fixture::new();
    let first = ok(&fx.token(&["-v"]));
    assert_eq!(Some(first.clone()), fx.authority.last_access_token());
    assert_eq!(
        fx.requests(),
        [
            (
                "GET".to_owned(),
                "/.well-known/openid-configuration".to_owned()
            ),
            ("POST".to_owned(), "/tenant-a/oauth2/v2.0/token".to_owned()),
        ]
    );
    // Fresh: from the cache, no request at all.
    assert_eq!(ok(&fx.token(&[])), first);
    assert_eq!(fx.authority.request_count(), 2);
    // A refresh in a later run: straight to the token endpoint the cache
    // file remembers.
    let second = ok(&fx.token(&["--min-valid", "600"]));
    assert_ne!(second, first);
    assert_eq!(
        fx.authority.metadata_request_count(),
        1,
        "{:?}",
        fx.requests()
    );
    assert_eq!(fx.authority.request_count(), 3);

    // `inspect` with the same source finds the same cache file.
    let issuer = fx.authority.discovery_issuer();
    let inspected = fx.run(&["inspect", "--issuer", &issuer, "--client-id", CLIENT_ID]);
    assert_eq!(inspected.code, 0, "{inspected:?}");
    assert!(inspected.stdout.contains(&issuer), "{inspected:?}");
}

#[test]
fn the_issuer_profile_key_and_a_mismatching_document() {
    let fx = Fixture::new();
    let config = fx.path("config").join("tokenkeeper");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(
        config.join("config.toml"),
        format!(
            "[profiles.idp]\nissuer = \"{}\"\nclient_id = \"{CLIENT_ID}\"\n\n\
             [profiles.both]\nissuer = \"{0}\"\ntoken_url = \"{1}\"\nclient_id = \"{CLIENT_ID}\"\n",
            fx.authority.discovery_issuer(),
            fx.authority.token_url(),
        ),
    )
    .unwrap();
    let token = ok(&fx.run(&["token", "--profile", "idp"]));
    assert_eq!(Some(token), fx.authority.last_access_token());
    assert_eq!(fx.authority.metadata_request_count(), 1);

    let both = fx.run(&["token", "--profile", "both"]);
    assert_eq!(both.code, 2, "{both:?}");
    assert!(both.stderr.contains("token_url and issuer"), "{both:?}");

    // --issuer and --token-url together are a usage error.
    let issuer = fx.authority.discovery_issuer();
    let token_url = fx.authority.token_url();
    let clash = fx.run(&[
        "token",
        "--issuer",
        &issuer,
        "--token-url",
        &token_url,
        "--client-id",
        CLIENT_ID,
    ]);
    assert_eq!(clash.code, 2, "{clash:?}");

    // The document names another issuer: exit 6, both named, no token asked
    // for (a fresh cache folder, so that nothing is served from the cache).
    fx.authority
        .set_metadata_issuer(Some("https://impostor.example"));
    let before = fx.authority.count_by_grant("client_credentials");
    let run = fx.token(&["--no-cache"]);
    assert_eq!(run.code, 6, "{run:?}");
    assert!(
        run.stderr.contains("https://impostor.example") && run.stderr.contains(&issuer),
        "{run:?}"
    );
    assert_eq!(fx.authority.count_by_grant("client_credentials"), before);
}
