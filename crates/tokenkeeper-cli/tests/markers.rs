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
    // A failure first, so the error paths print too.
    authority.push_fault(Fault::Status {
        status: 500,
        oauth_error: Some(("server_error".into(), Some("try again".into()))),
        retry_after: None,
    });
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
    assert_eq!(authority.request_count(), 2, "the failure, then the token");
    for marker in [SECRET, PARAM, QUERY] {
        assert!(!stdout.contains(marker), "{marker} on stdout: {stdout}");
        assert!(!stderr.contains(marker), "{marker} on stderr: {stderr}");
    }
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
        for marker in [SECRET, PARAM, QUERY, token.as_str()] {
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
