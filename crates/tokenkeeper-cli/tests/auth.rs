//! The command's flags and profile keys for client assertions
//! (`private_key_jwt`), the JWT bearer grant and token exchange, against the
//! loopback test authority: each prints a token, every combination that
//! cannot work is a usage error (exit 2) naming the flag to give, and no
//! key, assertion or subject token shows in any output, even with -vv.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use tokenkeeper_testkit::authority::assertion::{public_jwk_from_pem, sign_test_assertion};
use tokenkeeper_testkit::authority::dpop::{KeyAlgorithm, private_key_pem};
use tokenkeeper_testkit::{Authority, Client};

const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
const ACCESS_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

struct Fixture {
    authority: Authority,
    home: tempfile::TempDir,
    /// Text that must never show: keys' lines, assertions, tokens presented.
    secrets: Vec<String>,
}

#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Fixture {
    fn new() -> Self {
        Fixture {
            authority: Authority::start(),
            home: tempfile::tempdir().unwrap(),
            secrets: Vec::new(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.home.path().join(name)
    }

    /// Writes a secret file and remembers its content as a secret.
    fn secret_file(&mut self, name: &str, text: &str) -> String {
        let path = self.path(name);
        std::fs::write(&path, text).unwrap();
        self.secrets.extend(
            text.lines()
                .filter(|l| !l.starts_with("-----") && l.len() >= 16)
                .map(str::to_owned),
        );
        path.display().to_string()
    }

    fn run(&self, args: &[&str]) -> Run {
        let out = Command::new(env!("CARGO_BIN_EXE_tokenkeeper"))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.home.path())
            .env("XDG_CACHE_HOME", self.path("cache"))
            .env("XDG_CONFIG_HOME", self.path("config"))
            .stdin(Stdio::null())
            .args(args)
            .output()
            .unwrap();
        let run = Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        let all = format!("{}\n{}", run.stdout, run.stderr);
        for secret in &self.secrets {
            assert!(!all.contains(secret.as_str()), "{secret} shown: {run:?}");
        }
        run
    }

    fn token(&self, client_id: &str, extra: &[&str]) -> Run {
        let url = self.authority.token_url();
        let mut args = vec![
            "token",
            "-vv",
            "--no-cache",
            "--token-url",
            &url,
            "--client-id",
            client_id,
        ];
        args.extend_from_slice(extra);
        self.run(&args)
    }
}

fn ok(run: &Run) -> String {
    assert_eq!(run.code, 0, "{run:?}");
    run.stdout.trim_end().to_owned()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn private_key_jwt_with_a_key_file_or_an_assertion_file_prints_a_token() {
    let mut fx = Fixture::new();
    let pem = private_key_pem(KeyAlgorithm::Es256).unwrap();
    let mut jwk = public_jwk_from_pem(&pem).unwrap();
    jwk["kid"] = serde_json::json!("kid-7");
    fx.authority
        .register_client(Client::private_key_jwt("pkj-cli", jwk));
    let key = fx.secret_file("client-key.pem", &pem);
    let token = ok(&fx.token(
        "pkj-cli",
        &[
            "--auth-method",
            "private_key_jwt",
            "--private-key",
            &key,
            "--key-id",
            "kid-7",
        ],
    ));
    assert_eq!(
        fx.authority.last_access_token().as_deref(),
        Some(token.as_str())
    );
    let log = fx.authority.requests();
    let presented = log.last().unwrap().client_assertion.clone().unwrap();
    assert_eq!(presented.kid.as_deref(), Some("kid-7"));

    // An assertion made elsewhere: --client-assertion-file alone implies
    // private_key_jwt.
    let made = sign_test_assertion(
        &pem,
        Some("kid-7"),
        &serde_json::json!({"iss": "pkj-cli", "sub": "pkj-cli", "aud": fx.authority.token_url(),
                            "iat": now(), "exp": now() + 300, "jti": "cli-jti-1"}),
    )
    .unwrap();
    let file = fx.secret_file("client-assertion.jwt", &made);
    fx.secrets.push(made.clone());
    let token = ok(&fx.token("pkj-cli", &["--client-assertion-file", &file]));
    assert_eq!(
        fx.authority.last_access_token().as_deref(),
        Some(token.as_str())
    );

    // The same from an issuer's metadata: the implied method is kept.
    let made = sign_test_assertion(
        &pem,
        Some("kid-7"),
        &serde_json::json!({"iss": "pkj-cli", "sub": "pkj-cli", "aud": fx.authority.token_url(),
                            "iat": now(), "exp": now() + 300, "jti": "cli-jti-2"}),
    )
    .unwrap();
    fx.secrets.push(made.clone());
    let file = fx.secret_file("client-assertion-2.jwt", &made);
    let issuer = fx.authority.discovery_issuer();
    let run = fx.run(&[
        "token",
        "-vv",
        "--no-cache",
        "--issuer",
        &issuer,
        "--client-id",
        "pkj-cli",
        "--client-assertion-file",
        &file,
    ]);
    assert_eq!(
        fx.authority.last_access_token().as_deref(),
        Some(ok(&run).as_str())
    );

    // No key at all; a key file that is not there: usage errors.
    let run = fx.token("pkj-cli", &["--auth-method", "private_key_jwt"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("--private-key"), "{}", run.stderr);
    let run = fx.token(
        "pkj-cli",
        &[
            "--auth-method",
            "private_key_jwt",
            "--private-key",
            "/nonexistent/key.pem",
        ],
    );
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains("/nonexistent/key.pem"),
        "{}",
        run.stderr
    );
    // A file that holds no key: named, its content never shown.
    let bogus = fx.secret_file(
        "bogus.pem",
        "-----BEGIN PRIVATE KEY-----\nbogus-key-material-line-0123456789\n-----END PRIVATE KEY-----\n",
    );
    let run = fx.token(
        "pkj-cli",
        &["--auth-method", "private_key_jwt", "--private-key", &bogus],
    );
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("bogus.pem"), "{}", run.stderr);
}

#[test]
fn the_jwt_bearer_grant_with_an_assertion_file_or_a_signing_key_prints_a_token() {
    let mut fx = Fixture::new();
    let platform = private_key_pem(KeyAlgorithm::EdDsa).unwrap();
    let issuer = "https://platform.example";
    fx.authority
        .register_assertion_issuer(issuer, public_jwk_from_pem(&platform).unwrap());
    let made = sign_test_assertion(
        &platform,
        None,
        &serde_json::json!({"iss": issuer, "sub": "workload", "aud": fx.authority.token_url(),
                            "iat": now(), "exp": now() + 300, "jti": "bearer-jti-1"}),
    )
    .unwrap();
    fx.secrets.push(made.clone());
    let file = fx.secret_file("projected.jwt", &made);
    let token = ok(&fx.token(
        "workload-client",
        &["--grant", "jwt-bearer", "--assertion-file", &file],
    ));
    let issued = fx.authority.last_issued().unwrap();
    assert_eq!(issued.access_token, token);
    assert_eq!(issued.subject, "workload");

    // Signed here with --private-key, about --assertion-subject.
    let key = fx.secret_file("signer.pem", &platform);
    let token = ok(&fx.token(
        "workload-client",
        &[
            "--grant",
            "jwt_bearer",
            "--private-key",
            &key,
            "--assertion-issuer",
            issuer,
            "--assertion-subject",
            "alice",
        ],
    ));
    let issued = fx.authority.last_issued().unwrap();
    assert_eq!(
        (issued.access_token.as_str(), issued.subject.as_str()),
        (token.as_str(), "alice")
    );

    let run = fx.token("workload-client", &["--grant", "jwt-bearer"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("--assertion-file"), "{}", run.stderr);
}

#[test]
fn token_exchange_from_flags_and_from_a_profile_prints_a_token() {
    let mut fx = Fixture::new();
    let subject = "platform-subject-token-4d1c9a7e";
    let actor = "deployer-actor-token-77b0e2c5";
    fx.authority
        .accept_exchange_token(JWT_TYPE, subject, "workload");
    fx.authority
        .accept_exchange_token(ACCESS_TYPE, actor, "deployer");
    fx.secrets.extend([subject.to_owned(), actor.to_owned()]);
    let subject_file = fx.secret_file("subject.jwt", subject);
    let actor_file = fx.secret_file("actor.token", actor);
    let run = fx.token(
        "gateway",
        &[
            "--grant",
            "token-exchange",
            "--subject-token-file",
            &subject_file,
            "--subject-token-type",
            "jwt",
            "--actor-token-file",
            &actor_file,
            "--actor-token-type",
            ACCESS_TYPE,
            "--requested-token-type",
            "jwt",
            "--audience",
            "https://api.example",
            "--resource",
            "https://api.example/orders",
            "--output",
            "json",
        ],
    );
    let doc: serde_json::Value = serde_json::from_str(&ok(&run)).unwrap();
    assert_eq!(doc["issued_token_type"], JWT_TYPE);
    assert_eq!(doc["token_type"], "N_A");
    let record = fx.authority.requests().pop().unwrap();
    assert_eq!(record.grant_type.as_deref(), Some(EXCHANGE));
    assert_eq!(
        record.subject_token,
        Some((subject.into(), JWT_TYPE.into()))
    );
    assert_eq!(record.actor_token, Some((actor.into(), ACCESS_TYPE.into())));
    assert_eq!(record.requested_token_type.as_deref(), Some(JWT_TYPE));
    assert_eq!(record.audience, vec!["https://api.example".to_owned()]);
    assert_eq!(
        record.resource,
        vec!["https://api.example/orders".to_owned()]
    );

    // The same from a profile, its file relative to the config file; the
    // cache file is reused by the next run (its key names the subject file).
    let config = fx.path("config.toml");
    std::fs::write(
        &config,
        format!(
            "[profiles.exchange]\ntoken_url = \"{}\"\nclient_id = \"gateway\"\ngrant = \"token-exchange\"\n\
             subject_token_file = \"subject.jwt\"\nsubject_token_type = \"jwt\"\naudience = \"https://api.example\"\n",
            fx.authority.token_url()
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    let before = fx.authority.request_count();
    let first = ok(&fx.run(&["token", "-vv", "--config", &config, "--profile", "exchange"]));
    let second = ok(&fx.run(&["token", "--config", &config, "--profile", "exchange"]));
    assert_eq!(first, second, "the second run reads the cache");
    assert_eq!(fx.authority.request_count(), before + 1);

    // What cannot work: usage errors naming the flag.
    let run = fx.token(
        "gateway",
        &[
            "--grant",
            "token-exchange",
            "--subject-token-file",
            &subject_file,
        ],
    );
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains("--subject-token-type"),
        "{}",
        run.stderr
    );
    let run = fx.token(
        "gateway",
        &["--grant", "token-exchange", "--subject-token-type", "jwt"],
    );
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains("--subject-token-file"),
        "{}",
        run.stderr
    );
    let run = fx.token(
        "gateway",
        &[
            "--grant",
            "token-exchange",
            "--subject-token-file",
            &subject_file,
            "--subject-token-type",
            "nonsense",
        ],
    );
    assert_eq!(run.code, 2, "{run:?}");
    // A subject token file that is gone: no token, a clear message.
    let run = fx.token(
        "gateway",
        &[
            "--grant",
            "token-exchange",
            "--subject-token-file",
            "/nonexistent/subject",
            "--subject-token-type",
            "jwt",
            "--timeout",
            "2",
        ],
    );
    assert_ne!(run.code, 0, "{run:?}");
    assert!(
        run.stderr.contains("/nonexistent/subject"),
        "{}",
        run.stderr
    );
}
