//! The engine's run-time dependencies are exactly the ones the design allows.

use std::collections::BTreeSet;
use std::process::Command;

fn tree(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "-p",
            "tokenkeeper-core",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn names(listing: &str) -> BTreeSet<String> {
    listing
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn direct_dependencies_are_the_allowed_ones() {
    let direct = names(&tree(&["--depth", "1"]));
    let expected: BTreeSet<String> = [
        "tokenkeeper-core",
        "serde",
        "serde_json",
        "http",
        "url",
        "thiserror",
        "fastrand",
        "zeroize",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(direct, expected);
}

#[test]
fn nothing_async_or_io_bound_is_pulled_in() {
    let all = names(&tree(&[]));
    for banned in [
        "tokio",
        "async-std",
        "async-io",
        "smol",
        "futures",
        "hyper",
        "mio",
        "ureq",
        "reqwest",
        "rustls",
        "redis",
        "libc",
        "getrandom",
        "rand",
    ] {
        assert!(!all.contains(banned), "{banned} is in the tree: {all:?}");
    }
}
