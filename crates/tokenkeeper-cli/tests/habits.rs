//! The command as a person's tools meet it: `--version` with the build's
//! features, examples in every subcommand's `--help`, completion scripts and
//! manual pages written by the built binary, and `simulate --plot`.

use std::process::{Command, Output};

fn tokenkeeper(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_tokenkeeper"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .expect("the command runs");
    assert!(
        out.status.success(),
        "tokenkeeper {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(args: &[&str]) -> String {
    String::from_utf8(tokenkeeper(args).stdout).expect("UTF-8")
}

const SUBCOMMANDS: [&str; 8] = [
    "token",
    "login",
    "inspect",
    "watch",
    "demo",
    "simulate",
    "completions",
    "man",
];

#[test]
fn version_names_the_features_of_the_build() {
    let long = stdout(&["--version"]);
    let mut lines = long.lines();
    assert_eq!(
        lines.next(),
        Some(concat!("tokenkeeper ", env!("CARGO_PKG_VERSION")))
    );
    // These tests build the command with its default features.
    assert_eq!(lines.next(), Some("features: +demo +plot"), "{long}");
    assert!(long.contains("rustls"), "{long}");
    // -V stays one line, for scripts.
    assert_eq!(
        stdout(&["-V"]).trim_end(),
        concat!("tokenkeeper ", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn every_subcommand_help_ends_with_examples_of_itself() {
    let top = stdout(&["--help"]);
    for sub in SUBCOMMANDS {
        assert!(top.contains(&format!("  {sub} ")), "{sub} in {top}");
        let help = stdout(&[sub, "--help"]);
        let (_, examples) = help
            .split_once("\nExamples:\n")
            .unwrap_or_else(|| panic!("{sub} --help has no examples:\n{help}"));
        let lines: Vec<&str> = examples.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(lines.len() >= 2, "{sub}: {examples}");
        assert!(
            lines
                .iter()
                .any(|l| l.trim_start().starts_with(&format!("tokenkeeper {sub}"))),
            "{sub}'s examples do not run it: {examples}"
        );
    }
}

#[test]
fn completions_and_man_pages_come_from_the_binary() {
    for (shell, marker) in [
        ("bash", "complete -F _tokenkeeper"),
        ("zsh", "#compdef tokenkeeper"),
        ("fish", "complete -c tokenkeeper"),
    ] {
        let script = stdout(&["completions", shell]);
        assert!(script.contains(marker), "{shell}");
        assert!(
            script.contains("simulate") && script.contains("plot"),
            "{shell}"
        );
    }
    let page = stdout(&["man"]);
    assert!(page.contains(".TH tokenkeeper 1"), "{page}");
    let watch = stdout(&["man", "watch"]);
    assert!(watch.contains(".TH tokenkeeper-watch 1"), "{watch}");
    assert!(watch.contains("\\-\\-sink"), "{watch}");

    let dir = tempfile::tempdir().unwrap();
    let listed = stdout(&["man", "--out-dir", dir.path().to_str().unwrap()]);
    let mut files: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    let mut expected: Vec<String> = SUBCOMMANDS
        .iter()
        .map(|s| format!("tokenkeeper-{s}.1"))
        .chain(["tokenkeeper.1".to_owned()])
        .collect();
    expected.sort();
    assert_eq!(files, expected);
    assert_eq!(listed.lines().count(), expected.len(), "{listed}");

    let wrong = Command::new(env!("CARGO_BIN_EXE_tokenkeeper"))
        .args(["man", "nonsense"])
        .output()
        .unwrap();
    assert_eq!(wrong.status.code(), Some(2));
}

#[test]
fn simulate_draws_its_timeline() {
    let dir = tempfile::tempdir().unwrap();
    let svg_path = dir.path().join("fleet.svg");
    let text = stdout(&[
        "simulate",
        "--instances",
        "50",
        "--hours",
        "3",
        "--outage",
        "44m:8m",
        "--seed",
        "7",
        "--plot",
        svg_path.to_str().unwrap(),
    ]);
    assert!(text.contains("timeline drawn in"), "{text}");
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    assert!(svg.starts_with("<svg"));
    for label in [
        "tokenkeeper simulate: 50 instances, 3 h, 1 h tokens, a shared cache",
        "requests / s",
        "% of reads",
        "time since the start (h)",
        "authority down",
        "reads served a fresh token",
        "a stale one (grace period)",
        "nothing usable",
    ] {
        assert!(svg.contains(&format!("\n{label}\n")), "{label:?} missing");
    }
    // The same seed draws the same picture.
    let again = dir.path().join("again.svg");
    stdout(&[
        "simulate",
        "--instances",
        "50",
        "--hours",
        "3",
        "--outage",
        "44m:8m",
        "--seed",
        "7",
        "--plot",
        again.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read_to_string(&again).unwrap(), svg);
    // A folder that does not exist is an error that names it.
    let out = Command::new(env!("CARGO_BIN_EXE_tokenkeeper"))
        .args(["simulate", "--instances", "2", "--hours", "1", "--plot"])
        .arg(dir.path().join("missing/fleet.svg"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing/fleet.svg"));
}
