//! The `tokenkeeper` command: print a fresh OAuth2 access token, keep a token
//! file fresh for other programs, inspect a cache, run a demo, simulate a
//! fleet. Built on `tokenkeeper-blocking`.
//!
//! Exit codes: 0 success; 2 usage or configuration error; 3 the authority
//! rejected the credentials or grant; 4 the authority could not be reached
//! or kept failing and no usable token was at hand; 1 anything else.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod args;
mod demo;
mod error;
mod inspect;
mod settings;
mod simulate;
mod time;
mod token;
mod watch;

use std::process::ExitCode;

use clap::Parser;

use crate::args::{Cli, Command};
use crate::error::CliError;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let result = match &cli.command {
        Command::Token(args) => token::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Watch(args) => watch::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Simulate(args) => simulate::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            report(&error, cli.verbose);
            ExitCode::from(error.exit as u8)
        }
    }
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
