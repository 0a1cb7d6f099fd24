//! The command over HTTPS: trusting a private CA (flag, variable, profile),
//! mutual TLS with a client certificate and no secret, and the exit codes
//! and messages of certificate failures (5) and of a URL that is not a
//! token endpoint (6). The built binary against the test kit's authority.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokenkeeper_testkit::pki::{Pki, ServerCert};
use tokenkeeper_testkit::{Authority, Client, ClientAuth, PresentedAuth, TlsSettings};

const SECRET: &str = "cli-tls-secret-5be1c0";

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
    took: Duration,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {} after {:?}\nstdout: {}\nstderr: {}",
            self.code, self.took, self.stdout, self.stderr
        )
    }
}

/// The command in a clean environment of its own.
fn command(home: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tokenkeeper"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("XDG_CACHE_HOME", home.join("cache"))
        .env("XDG_CONFIG_HOME", home.join("config"))
        .stdin(Stdio::null());
    cmd
}

fn run(cmd: &mut Command) -> Run {
    let started = Instant::now();
    let out = cmd.output().expect("the command runs");
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        took: started.elapsed(),
    };
    assert!(
        !run.stdout.contains(SECRET) && !run.stderr.contains(SECRET),
        "{run:?}"
    );
    run
}

struct Fixture {
    pki: Pki,
    home: tempfile::TempDir,
    ca_file: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let pki = Pki::shared();
        let home = tempfile::tempdir().expect("a folder");
        let ca_file = home.path().join("ca.pem");
        std::fs::write(&ca_file, pki.ca_pem()).expect("write the CA");
        Fixture { pki, home, ca_file }
    }

    fn authority(&self, tls: TlsSettings) -> Authority {
        let authority = Authority::builder().tls(tls).start();
        authority.register_client(Client::new("svc", SECRET));
        authority.register_client(Client::tls_client_auth("mtls-svc"));
        authority
    }

    /// `tokenkeeper token` for the secret client of `authority`.
    fn token(&self, authority: &Authority, extra: &[&str]) -> Command {
        let mut cmd = command(self.home.path());
        cmd.env("TOKENKEEPER_CLIENT_SECRET", SECRET)
            .args([
                "token",
                "--no-cache",
                "--timeout",
                "60",
                "--client-id",
                "svc",
            ])
            .args(["--token-url", &authority.token_url()])
            .args(extra);
        cmd
    }
}

#[test]
fn a_private_ca_is_trusted_by_flag_variable_or_profile() {
    let fx = Fixture::new();
    let authority = fx.authority(TlsSettings::new(&fx.pki));
    let ca = fx.ca_file.to_str().expect("a UTF-8 path");

    // Untrusted without it: exit 5 at once, with the fix.
    let untrusted = run(&mut fx.token(&authority, &["--no-ssl-cert-env"]));
    assert_eq!(untrusted.code, 5, "{untrusted:?}");
    assert!(
        untrusted.stderr.contains(
            "tokenkeeper: error: TLS with localhost failed: its certificate is signed by a CA this client does not trust; trust the CA that issued it with --ca-file PATH (PEM), or the system's store with --native-roots"
        ),
        "{untrusted:?}"
    );
    assert!(untrusted.took < Duration::from_secs(30), "{untrusted:?}");

    let by_flag = run(&mut fx.token(&authority, &["--ca-file", ca]));
    assert_eq!(by_flag.code, 0, "{by_flag:?}");
    assert!(authority.token_is_active(by_flag.stdout.trim()));

    let by_variable = run(fx.token(&authority, &[]).env("TOKENKEEPER_CA_FILE", ca));
    assert_eq!(by_variable.code, 0, "{by_variable:?}");

    // SSL_CERT_FILE, as OpenSSL-based tools read it.
    let by_ssl_cert_file = run(fx.token(&authority, &[]).env("SSL_CERT_FILE", ca));
    assert_eq!(by_ssl_cert_file.code, 0, "{by_ssl_cert_file:?}");
    let ignored = run(fx
        .token(&authority, &["--no-ssl-cert-env"])
        .env("SSL_CERT_FILE", ca));
    assert_eq!(ignored.code, 5, "{ignored:?}");

    // A profile, with the CA file relative to the config file.
    let config = fx.home.path().join("tokenkeeper.toml");
    std::fs::write(
        &config,
        format!(
            "[profiles.internal]\ntoken_url = \"{}\"\nclient_id = \"svc\"\nca_file = [\"ca.pem\"]\nno_ssl_cert_env = true\n",
            authority.token_url()
        ),
    )
    .expect("write the config");
    let mut cmd = command(fx.home.path());
    cmd.env("TOKENKEEPER_CLIENT_SECRET", SECRET).args([
        "token",
        "--no-cache",
        "--config",
        config.to_str().expect("UTF-8"),
        "--profile",
        "internal",
    ]);
    let by_profile = run(&mut cmd);
    assert_eq!(by_profile.code, 0, "{by_profile:?}");
    assert_eq!(authority.request_count(), 4);

    // A CA file that is not there: a usage error naming it, no request.
    let missing = run(&mut fx.token(&authority, &["--ca-file", "/nonexistent/ca.pem"]));
    assert_eq!(missing.code, 2, "{missing:?}");
    assert!(
        missing.stderr.contains("/nonexistent/ca.pem"),
        "{missing:?}"
    );
    assert_eq!(authority.request_count(), 4);
}

#[test]
fn each_certificate_failure_exits_5_at_once_with_its_fix() {
    let fx = Fixture::new();
    let ca = fx.ca_file.to_str().expect("a UTF-8 path");
    for (variant, says) in [
        (
            ServerCert::UnknownCa,
            "signed by a CA this client does not trust; trust the CA that issued it with --ca-file",
        ),
        (ServerCert::WrongName, "not valid for this host name"),
        (
            ServerCert::Expired,
            "has expired; check this machine's clock",
        ),
        (
            ServerCert::NotYetValid,
            "not valid yet; check this machine's clock",
        ),
        (
            ServerCert::SelfSigned,
            "is self-signed; trust that certificate itself with --ca-file",
        ),
    ] {
        let authority = fx.authority(TlsSettings::new(&fx.pki).certificate(variant));
        let failed = run(&mut fx.token(&authority, &["--ca-file", ca]));
        assert_eq!(failed.code, 5, "{variant}: {failed:?}");
        assert!(
            failed.stderr.contains("TLS with localhost failed"),
            "{variant}: {failed:?}"
        );
        assert!(failed.stderr.contains(says), "{variant}: {failed:?}");
        // The timeout is 60 s: a TLS failure is not retried until it runs out.
        assert!(
            failed.took < Duration::from_secs(30),
            "{variant}: {failed:?}"
        );
        assert_eq!(authority.request_count(), 0, "{variant}");
    }
}

#[test]
fn mutual_tls_needs_no_secret_and_binds_the_token() {
    let fx = Fixture::new();
    let authority = fx.authority(TlsSettings::new(&fx.pki).client_auth(ClientAuth::Require));
    let identity = fx.pki.client_identity("mtls-svc");
    let files = identity
        .write_files(fx.home.path(), "client")
        .expect("identity files");
    let ca = fx.ca_file.to_str().expect("UTF-8");
    let mtls = |extra: &[&str]| {
        let mut cmd = command(fx.home.path());
        cmd.args(["token", "--timeout", "60", "--client-id", "mtls-svc"])
            .args(["--token-url", &authority.token_url(), "--ca-file", ca])
            .args(extra);
        cmd
    };
    let cert = files.cert.to_str().expect("UTF-8");
    let key = files.key.to_str().expect("UTF-8");

    // Required by the server, not configured: exit 5 naming the flags.
    let none = run(mtls(&["--no-cache"]).env("TOKENKEEPER_CLIENT_SECRET", SECRET));
    assert_eq!(none.code, 5, "{none:?}");
    assert!(
        none.stderr
            .contains("--client-cert PATH and --client-key PATH"),
        "{none:?}"
    );

    // tls_client_auth without a certificate is a usage error.
    let unusable = run(&mut mtls(&[
        "--no-cache",
        "--auth-method",
        "tls_client_auth",
    ]));
    assert_eq!(unusable.code, 2, "{unusable:?}");

    // With it: no secret in the environment, none sent.
    let args = [
        "--auth-method",
        "tls_client_auth",
        "--client-cert",
        cert,
        "--client-key",
        key,
    ];
    let got = run(&mut mtls(&args));
    assert_eq!(got.code, 0, "{got:?}");
    let token = got.stdout.trim().to_owned();
    let requests = authority.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].auth, PresentedAuth::Certificate);
    assert!(requests[0].authenticated);
    assert_eq!(authority.token_binding(&token), Some(identity.x5t_s256()));

    // Cached under a key that names the certificate, with the binding kept.
    let again = run(&mut mtls(&args));
    assert_eq!(again.stdout.trim(), token);
    assert_eq!(authority.request_count(), 1, "the cache served it");
    let cache_dir = fx.home.path().join("cache").join("tokenkeeper");
    let record: Vec<String> = std::fs::read_dir(&cache_dir)
        .expect("the cache folder")
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .collect();
    assert!(
        record
            .iter()
            .any(|r| r.contains("x5t#S256") && r.contains(&identity.x5t_s256())),
        "{record:?}"
    );

    // The same by the environment's names.
    let mut by_env = command(fx.home.path());
    by_env
        .args(["token", "--no-cache", "--client-id", "mtls-svc"])
        .args(["--token-url", &authority.token_url()])
        .env("TOKENKEEPER_CA_FILE", ca)
        .env("TOKENKEEPER_AUTH_METHOD", "tls_client_auth")
        .env("TOKENKEEPER_CLIENT_CERT", cert)
        .env("TOKENKEEPER_CLIENT_KEY", key);
    let by_env = run(&mut by_env);
    assert_eq!(by_env.code, 0, "{by_env:?}");
    assert_eq!(authority.request_count(), 2);
}

#[test]
fn a_url_that_is_not_a_token_endpoint_exits_6() {
    let fx = Fixture::new();
    let authority = fx.authority(TlsSettings::new(&fx.pki));
    let ca = fx.ca_file.to_str().expect("UTF-8");
    let mut cmd = command(fx.home.path());
    cmd.env("TOKENKEEPER_CLIENT_SECRET", SECRET)
        .args([
            "token",
            "--no-cache",
            "--timeout",
            "60",
            "--client-id",
            "svc",
        ])
        .args(["--ca-file", ca])
        .args([
            "--token-url",
            &authority.token_url().replace("/token", "/oauth2/v1/token"),
        ]);
    let wrong = run(&mut cmd);
    assert_eq!(wrong.code, 6, "{wrong:?}");
    assert!(
        wrong
            .stderr
            .contains("the token URL is not a token endpoint: it answered HTTP 404"),
        "{wrong:?}"
    );
    assert!(wrong.stderr.contains("check the URL's path"), "{wrong:?}");
    assert!(wrong.took < Duration::from_secs(30), "{wrong:?}");
}
