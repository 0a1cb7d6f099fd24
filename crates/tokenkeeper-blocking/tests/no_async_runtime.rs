//! The thread adapter must not pull an async runtime into a program.

use std::path::Path;
use std::process::Command;

#[test]
fn no_async_runtime_in_the_dependency_tree() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let output = Command::new(env!("CARGO"))
        .current_dir(&workspace)
        .args([
            "tree",
            "-p",
            "tokenkeeper-blocking",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .output()
        .expect("cargo tree runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let crates: Vec<&str> = stdout
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    assert!(crates.contains(&"tokenkeeper-blocking"), "{stdout}");
    assert!(crates.contains(&"ureq"), "{stdout}");
    for runtime in [
        "tokio",
        "async-std",
        "smol",
        "async-io",
        "async-executor",
        "futures-executor",
        "hyper",
    ] {
        assert!(
            !crates.contains(&runtime),
            "{runtime} is in the dependency tree of tokenkeeper-blocking:\n{stdout}"
        );
    }
    // One TLS crypto provider for the workspace: ring, never aws-lc.
    assert!(crates.contains(&"ring"), "{stdout}");
    assert!(!crates.contains(&"aws-lc-rs"), "{stdout}");
}
