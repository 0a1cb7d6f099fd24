//! The `tokenkeeper` command: print a fresh OAuth2 access token, keep a token
//! file fresh for other programs, inspect a cache, run a demo, simulate a
//! fleet. Built on `tokenkeeper-blocking`.
//!
//! Exit codes: 0 success; 2 usage or configuration error; 3 the authority
//! rejected the credentials or grant; 4 the authority could not be reached
//! or kept failing and no usable token was at hand; 5 a TLS failure; 6 the
//! URL is not a token endpoint; 7 `login --device` was refused by the
//! person; 8 its code expired before approval; 1 anything else.
//!
//! Cargo features (both on by default): `demo` (the in-process test
//! authority of `tokenkeeper demo`) and `plot` (`--plot FILE.svg`).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod args;
mod auth;
#[cfg(feature = "demo")]
mod demo;
mod error;
mod habits;
mod inspect;
mod login;
#[cfg(feature = "plot")]
mod plot;
mod settings;
mod simulate;
mod time;
mod token;
mod watch;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

use crate::args::{Cli, Command};
use crate::error::CliError;

fn main() -> ExitCode {
    let cli = Cli::from_arg_matches(&command().get_matches()).unwrap_or_else(|e| e.exit());
    init_logging(cli.verbose);
    let result = match &cli.command {
        Command::Token(args) => token::run(args),
        Command::Login(args) => login::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Watch(args) => watch::run(args),
        #[cfg(feature = "demo")]
        Command::Demo(args) => demo::run(args),
        #[cfg(not(feature = "demo"))]
        Command::Demo(_) => Err(CliError::usage(
            "this tokenkeeper was built without the `demo` feature: reinstall it with its default features",
        )),
        Command::Simulate(args) => simulate::run(args),
        Command::Completions(args) => habits::completions(args),
        Command::Man(args) => habits::man(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            report(&error, cli.verbose);
            ExitCode::from(error.exit as u8)
        }
    }
}

/// The command's clap definition, as parsed, completed and documented:
/// [`Cli`] with a `--version` that names the build's features.
pub(crate) fn command() -> clap::Command {
    Cli::command().long_version(long_version())
}

/// The cargo features of this build, each `+name` or `-name`.
pub(crate) fn features() -> String {
    [
        ("demo", cfg!(feature = "demo")),
        ("plot", cfg!(feature = "plot")),
    ]
    .iter()
    .map(|(name, on)| format!("{}{name}", if *on { '+' } else { '-' }))
    .collect::<Vec<_>>()
    .join(" ")
}

/// What `--version` prints after the name.
fn long_version() -> &'static str {
    let text = format!(
        "{}\nfeatures: {}\nbuilt in: TLS by rustls (ring), mutual TLS, the system's roots (--native-roots), Redis sharing\ntarget: {}-{}",
        env!("CARGO_PKG_VERSION"),
        features(),
        std::env::consts::ARCH,
        std::env::consts::OS,
    );
    // Built once per run, for clap, which wants a string that lives as long
    // as the program.
    text.leak()
}

fn report(error: &CliError, verbose: u8) {
    eprintln!("tokenkeeper: error: {}", error.message);
    if verbose > 0 {
        for line in &error.details {
            eprintln!("  {line}");
        }
    }
}

/// `-v`: debug events of tokenkeeper on stderr; `-vv`: trace. Other crates
/// (HTTP, TLS) stay at warnings, so no request or answer is ever logged.
fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => return,
        1 => "debug",
        _ => "trace",
    };
    let ours = [
        "tokenkeeper",
        "tokenkeeper_core",
        "tokenkeeper_fs",
        "tokenkeeper_driver",
        "tokenkeeper_blocking",
        "tokenkeeper_redis",
        "tokenkeeper_testkit",
    ];
    let directives = std::iter::once("warn".to_owned())
        .chain(ours.iter().map(|c| format!("{c}={level}")))
        .collect::<Vec<_>>()
        .join(",");
    let filter = tracing_subscriber::EnvFilter::try_new(directives)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
