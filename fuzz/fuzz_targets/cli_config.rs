//! The `tokenkeeper` command's config file: TOML profiles, read and resolved
//! by the command's own `settings::resolve` (as `tokenkeeper inspect
//! --config FILE` does, without reading any secret file).
//!
//! The command is a binary crate with no library, so this target compiles its
//! `args`, `auth`, `error` and `settings` modules from their sources (`#[path]`),
//! leaving the command itself unchanged.
//!
//! Invariants beyond "no panic":
//! - every problem in a config file is a usage error (exit code 2);
//! - neither the error texts, nor `Debug` of the resolved client and Redis
//!   settings, show a secret the file holds (an extra parameter's value, a
//!   password in the Redis URL, the query of the token URL) unless the file
//!   also put it somewhere they may show (a name, a host, a path, a scope...).
#![no_main]
#![allow(dead_code, unreachable_pub)]

#[path = "../../crates/tokenkeeper-cli/src/args.rs"]
mod args;
#[path = "../../crates/tokenkeeper-cli/src/auth.rs"]
mod auth;
#[path = "../../crates/tokenkeeper-cli/src/error.rs"]
mod error;
#[path = "../../crates/tokenkeeper-cli/src/settings.rs"]
mod settings;

use std::path::PathBuf;
use std::sync::OnceLock;

use clap::Parser;
use libfuzzer_sys::fuzz_target;
use tokenkeeper_fuzz::assert_no_leak;
use url::Url;

use crate::args::SourceArgs;
use crate::error::Exit;
use crate::settings::{NeedSecret, resolve};

/// Only the source flags, as `tokenkeeper inspect` takes them.
#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    source: SourceArgs,
}

/// A config file of this process's own, and the flags that name it.
fn setup() -> &'static (PathBuf, SourceArgs) {
    static SETUP: OnceLock<(PathBuf, SourceArgs)> = OnceLock::new();
    SETUP.get_or_init(|| {
        let path = std::env::temp_dir().join(format!(
            "tokenkeeper-fuzz-config-{}.toml",
            std::process::id()
        ));
        let path_text = path.to_str().expect("a UTF-8 temp dir").to_owned();
        let flags =
            Flags::try_parse_from(["tokenkeeper", "--config", &path_text]).expect("valid flags");
        (path, flags.source)
    })
}

/// The texts of `value` that errors and `Debug` may show: every key, and
/// every value but the secret ones (extra parameters' values, the token URL's
/// query, the Redis URL's password), of which only the public parts count.
fn shown_parts(value: &toml::Value, key: &str, out: &mut String) {
    out.push(' ');
    match (key, value) {
        ("params", toml::Value::Table(params)) => {
            for (name, param) in params {
                out.push_str(name);
                out.push(' ');
                // Only a value of the wrong type may be quoted (in the
                // deserializer's message); a string is a secret.
                if !param.is_str() {
                    out.push_str(&param.to_string());
                }
            }
        }
        ("token_url", toml::Value::String(s)) => {
            if let Ok(url) = Url::parse(s) {
                out.push_str(&format!("{} {}", url.host_str().unwrap_or(""), url.path()));
            }
        }
        ("redis", toml::Value::String(s)) => {
            if let Ok(url) = Url::parse(s) {
                out.push_str(&format!(
                    "{} {} {}",
                    url.username(),
                    url.host_str().unwrap_or(""),
                    url.path()
                ));
            }
        }
        (_, toml::Value::String(s)) => out.push_str(s),
        (_, toml::Value::Table(table)) => {
            for (k, v) in table {
                out.push_str(k);
                shown_parts(v, k, out);
            }
        }
        (_, toml::Value::Array(items)) => {
            for item in items {
                shown_parts(item, key, out);
            }
        }
        (_, other) => out.push_str(&other.to_string()),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (path, flags) = setup();
    std::fs::write(path, text).expect("write the config file");
    let result = resolve(flags, NeedSecret::No);
    let _ = std::fs::remove_file(path);

    // Only a file that is valid TOML tells where its secrets are.
    let allowed = match text.parse::<toml::Table>() {
        Ok(table) => {
            let mut out = String::new();
            shown_parts(&toml::Value::Table(table), "", &mut out);
            Some(out)
        }
        Err(_) => None,
    };
    match result {
        Ok(resolved) => {
            if let Some(allowed) = &allowed {
                let shown = format!("{:?} {:?}", resolved.client, resolved.redis);
                assert_no_leak("the resolved settings", &shown, allowed);
            }
        }
        Err(error) => {
            assert_eq!(error.exit, Exit::Usage, "{}", error.message);
            if let Some(allowed) = &allowed {
                let shown = format!("{} {:?} {error:?}", error.message, error.details);
                assert_no_leak("a config error", &shown, allowed);
            }
        }
    }
});
