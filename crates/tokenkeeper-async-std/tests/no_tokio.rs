//! The adapter must not bring a tokio runtime into an async-std or smol
//! program.
//!
//! hyper 1 depends on the `tokio` crate unconditionally, for its `sync`
//! module (channels inside hyper's client): that much is compiled into every
//! program that speaks HTTP through hyper, and it holds no runtime, reactor,
//! timer or thread. Anything more of tokio (a runtime, its sockets, its TLS
//! or hyper's tokio glue) fails this test.

use std::path::Path;
use std::process::Command;

/// One package of the normal dependency tree: its name and enabled features.
#[derive(Debug)]
struct Package {
    name: String,
    features: Vec<String>,
}

fn normal_tree(feature_args: &[&str]) -> (Vec<Package>, String) {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let output = Command::new(env!("CARGO"))
        .current_dir(&workspace)
        .args(["tree", "-p", "tokenkeeper-async-std", "-e", "normal"])
        .args(feature_args)
        .args(["--prefix", "none", "--format", "{p}|{f}"])
        .output()
        .expect("cargo tree runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let packages = stdout
        .lines()
        .filter_map(|line| {
            let (package, features) = line.split_once('|')?;
            let name = package.split_whitespace().next()?.to_owned();
            let features = features
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .split(',')
                .filter(|f| !f.is_empty())
                .map(str::to_owned)
                .collect();
            Some(Package { name, features })
        })
        .collect();
    (packages, stdout)
}

fn has(packages: &[Package], name: &str) -> bool {
    packages.iter().any(|p| p.name == name)
}

/// Who depends on `tokio` in the normal tree, one level up.
fn tokio_dependents(feature_args: &[&str]) -> Vec<String> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let output = Command::new(env!("CARGO"))
        .current_dir(&workspace)
        .args(["tree", "-p", "tokenkeeper-async-std", "-e", "normal"])
        .args(feature_args)
        .args([
            "-i", "tokio", "--depth", "1", "--prefix", "depth", "--format", "{p}",
        ])
        .output()
        .expect("cargo tree runs");
    assert!(
        output.status.success(),
        "cargo tree -i tokio failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.strip_prefix('1'))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

fn check(feature_args: &[&str], runtime: &str, absent_runtime: Option<&str>) {
    let (packages, shown) = normal_tree(feature_args);
    for needed in [
        "tokenkeeper-async-std",
        "tokenkeeper-driver",
        "tokenkeeper-hyper",
        runtime,
        "async-io",
        "hyper",
        "futures-rustls",
        "ring",
    ] {
        assert!(has(&packages, needed), "{needed} is missing:\n{shown}");
    }
    if let Some(absent) = absent_runtime {
        assert!(!has(&packages, absent), "{absent} is in the tree:\n{shown}");
    }
    for tokio_part in [
        "tokio-rustls",
        "tokio-util",
        "tokio-macros",
        "tokio-stream",
        "hyper-util",
        "hyper-rustls",
        "mio",
        "aws-lc-rs",
        "aws-lc-sys",
    ] {
        assert!(
            !has(&packages, tokio_part),
            "{tokio_part} is in the dependency tree of tokenkeeper-async-std:\n{shown}"
        );
    }
    // hyper's `tokio` with its `sync` module and nothing else.
    for tokio in packages.iter().filter(|p| p.name == "tokio") {
        for feature in &tokio.features {
            assert!(
                feature == "sync" || feature == "default",
                "tokio's `{feature}` feature is on:\n{shown}"
            );
        }
    }
    if has(&packages, "tokio") {
        assert_eq!(tokio_dependents(feature_args), ["hyper"], "{shown}");
    }
}

#[test]
fn no_tokio_runtime_on_async_std() {
    check(&[], "async-std", Some("smol"));
}

#[test]
fn no_tokio_runtime_and_no_async_std_on_smol() {
    check(
        &["--no-default-features", "--features", "smol"],
        "smol",
        Some("async-std"),
    );
}
