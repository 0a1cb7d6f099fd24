//! Secrets planted in every input of the command never come out of it:
//! not on stdout or stderr at `-vv`, not in `inspect --output json`, not in
//! the fields of a cache file that are not themselves secret.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use tokenkeeper_testkit::{Authority, Client, Fault};

const CLIENT_ID: &str = "marker-client";
const SECRET: &str = "MARKER-client-secret-5c1d";
const PARAM: &str = "MARKER-param-value-77e0";
const QUERY: &str = "MARKER-url-query-a9f4";
/// Tokens in answers the command must refuse, and a harmless description
/// (the control: it is shown).
const AT_500: &str = "MARKER-at-in-a-500-31d2";
const RT_500: &str = "MARKER-rt-in-a-500-8e07";
const AT_HTML: &str = "MARKER-at-in-html-502-c4a1";
const DESCRIPTION: &str = "MARKER-description-harmless-0b6e";

/// Standard base64 with padding: the `Basic` credential the command sends.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The answers the authority gives before the token, in order: an OAuth2
/// error, a token sent with a 500, an echo of the request (form and
/// `Authorization` header), a form-encoded error echoing the secret and the
/// parameter, an HTML page quoting a token. All transient: the command
/// retries through them.
fn hostile_answers() -> Vec<Fault> {
    vec![
        Fault::Status {
            status: 500,
            oauth_error: Some(("server_error".into(), Some("try again".into()))),
            retry_after: None,
        },
        Fault::Body {
            status: 500,
            content_type: Some("application/json".into()),
            body: format!(r#"{{"access_token":"{AT_500}","refresh_token":"{RT_500}"}}"#),
        },
        Fault::EchoRequest { status: 503 },
        Fault::Body {
            status: 429,
            content_type: Some("application/x-www-form-urlencoded".into()),
            body: format!(
                "error=slow_down&error_description={DESCRIPTION}&client_secret={SECRET}&tenant={PARAM}"
            ),
        },
        Fault::Body {
            status: 502,
            content_type: Some("text/html".into()),
            body: format!("<html>access_token={AT_HTML}</html>"),
        },
    ]
}

fn command(home: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tokenkeeper"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("XDG_CACHE_HOME", home.join("cache"))
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("TOKENKEEPER_CLIENT_SECRET", SECRET)
        .stdin(Stdio::null());
    cmd
}

/// Every string value of a JSON document, with its key, recursively.
fn strings(value: &serde_json::Value, key: &str, out: &mut Vec<(String, String)>) {
    match value {
        serde_json::Value::String(s) => out.push((key.to_owned(), s.clone())),
        serde_json::Value::Array(items) => items.iter().for_each(|v| strings(v, key, out)),
        serde_json::Value::Object(map) => map.iter().for_each(|(k, v)| strings(v, k, out)),
        _ => {}
    }
}

#[test]
fn planted_secrets_reach_no_output_of_the_command() {
    let authority = Authority::start();
    authority
        .register_client(Client::new(CLIENT_ID, SECRET).token_lifetime(Duration::from_secs(300)));
    // Failures first, so the error paths print too, with bodies that hold
    // secrets and tokens.
    let answers = hostile_answers();
    let failures = answers.len();
    authority.push_faults(answers);
    let home = tempfile::tempdir().unwrap();
    let url = format!("{}?key={QUERY}", authority.token_url());
    let param = format!("tenant={PARAM}");
    let out = command(home.path())
        .args([
            "token",
            "-vv",
            "--token-url",
            &url,
            "--client-id",
            CLIENT_ID,
        ])
        .args(["--param", &param])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("DEBUG") || stderr.contains("TRACE"),
        "-vv logs: {stderr}"
    );
    let token = stdout.trim().to_owned();
    assert!(!token.is_empty());
    assert_eq!(
        authority.request_count(),
        failures + 1,
        "the failures, then the token"
    );
    let basic = base64(format!("{CLIENT_ID}:{SECRET}").as_bytes());
    for marker in [
        SECRET,
        PARAM,
        QUERY,
        AT_500,
        RT_500,
        AT_HTML,
        basic.as_str(),
    ] {
        assert!(!stdout.contains(marker), "{marker} on stdout: {stdout}");
        assert!(!stderr.contains(marker), "{marker} on stderr: {stderr}");
    }
    // The control: the errors were printed, the harmless description with
    // them.
    assert!(
        stderr.contains(DESCRIPTION),
        "-vv shows no errors: {stderr}"
    );
    assert!(
        !stderr.contains(&token),
        "the access token on stderr: {stderr}"
    );

    // The cache file: only its secret fields may hold secrets.
    let dir: PathBuf = home.path().join("cache").join("tokenkeeper");
    let file = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .expect("a cache file");
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let mut fields = Vec::new();
    strings(&record, "", &mut fields);
    assert!(
        fields
            .iter()
            .any(|(k, v)| k == "access_token" && *v == token)
    );
    for (key, value) in &fields {
        if key == "access_token" || key == "refresh_token" {
            continue;
        }
        for marker in [
            SECRET,
            PARAM,
            QUERY,
            AT_500,
            RT_500,
            AT_HTML,
            token.as_str(),
        ] {
            assert!(
                !value.contains(marker),
                "{marker} in the cache field {key}: {value}"
            );
        }
    }

    // `inspect --output json`, at -vv too.
    let out = command(home.path())
        .env_remove("TOKENKEEPER_CLIENT_SECRET")
        .args([
            "inspect",
            "-vv",
            "--cache",
            file.to_str().unwrap(),
            "--output",
            "json",
        ])
        .output()
        .unwrap();
    let shown = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("fp:"), "{shown}");
    for marker in [SECRET, PARAM, QUERY, token.as_str()] {
        assert!(!shown.contains(marker), "{marker} in inspect: {shown}");
    }
}

/// A permanent refusal whose body echoes the request: the command fails,
/// and neither its output nor its error shows what the echo held.
#[test]
fn an_echoed_request_in_a_refusal_reaches_no_output_of_the_command() {
    let authority = Authority::start();
    authority
        .register_client(Client::new(CLIENT_ID, SECRET).token_lifetime(Duration::from_secs(300)));
    authority.push_fault(Fault::EchoRequest { status: 400 });
    let home = tempfile::tempdir().unwrap();
    let url = format!("{}?key={QUERY}", authority.token_url());
    let param = format!("tenant={PARAM}");
    let out = command(home.path())
        .args([
            "token",
            "-vv",
            "--token-url",
            &url,
            "--client-id",
            CLIENT_ID,
        ])
        .args(["--param", &param])
        .output()
        .unwrap();
    let shown = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{shown}");
    assert!(shown.contains("400"), "the refusal is reported: {shown}");
    assert_eq!(authority.request_count(), 1, "a 400 is not retried");
    let basic = base64(format!("{CLIENT_ID}:{SECRET}").as_bytes());
    for marker in [SECRET, PARAM, QUERY, basic.as_str()] {
        assert!(!shown.contains(marker), "{marker} shown: {shown}");
    }
}
