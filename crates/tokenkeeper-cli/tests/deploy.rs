//! The deployment files of `deploy/` (shown in docs/deploy.md) are real: the
//! systemd unit passes `systemd-analyze verify` where that tool exists, the
//! Kubernetes manifest is YAML, and both run `tokenkeeper watch` with flags and
//! environment variables that the command has, writing the token where the
//! rest of the file expects it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use yaml_rust2::{Yaml, YamlLoader};

fn deploy_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy")
        .join(name)
}

fn read(name: &str) -> String {
    let path = deploy_file(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// What `tokenkeeper watch --help` offers: its long flags and the
/// environment variables it reads.
fn watch_help() -> (BTreeSet<String>, BTreeSet<String>) {
    let out = Command::new(env!("CARGO_BIN_EXE_tokenkeeper"))
        .args(["watch", "--help"])
        .env_clear()
        .output()
        .expect("the command runs");
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).expect("UTF-8");
    let words = |prefix: &str| -> BTreeSet<String> {
        help.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
            .filter(|w| w.starts_with(prefix) && w.len() > prefix.len())
            .map(str::to_owned)
            .collect()
    };
    let flags = words("--");
    let env = words("TOKENKEEPER_");
    // The oracle itself is sound: flags and variables watch has, and
    // `token`'s --timeout, which watch does not.
    for flag in ["--sink", "--client-secret-file", "--ca-file", "--no-cache"] {
        assert!(flags.contains(flag), "{flag} in {flags:?}");
    }
    assert!(!flags.contains("--timeout"), "{flags:?}");
    assert!(env.contains("TOKENKEEPER_TOKEN_URL"), "{env:?}");
    (flags, env)
}

/// The flags (`--name`, or `--name=value`) among `args`, and the value
/// after `flag`.
fn flags_of(args: &[String]) -> Vec<String> {
    args.iter()
        .filter(|a| a.starts_with("--"))
        .map(|a| a.split('=').next().unwrap_or(a).to_owned())
        .collect()
}

fn value_after<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    let i = args.iter().position(|a| a == flag)?;
    args.get(i + 1).map(String::as_str)
}

/// The unit's `key=value` settings (continuation lines joined, comments
/// dropped), in order.
fn unit_settings(text: &str) -> Vec<(String, String)> {
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if current.is_empty() && (line.starts_with('#') || line.starts_with(';')) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(line);
                logical.push(std::mem::take(&mut current));
            }
        }
    }
    logical
        .into_iter()
        .filter_map(|l| {
            let (k, v) = l.split_once('=')?;
            Some((k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect()
}

#[test]
fn the_systemd_unit_is_sandboxed_and_runs_watch_with_real_flags() {
    let text = read("tokenkeeper.service");
    let settings = unit_settings(&text);
    let get = |key: &str| -> Vec<&str> {
        settings
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("DynamicUser", "yes"),
        ("RuntimeDirectory", "tokenkeeper"),
        ("RuntimeDirectoryMode", "0700"),
        ("CapabilityBoundingSet", ""),
    ] {
        assert_eq!(get(key), [value], "{key}");
    }

    let exec = get("ExecStart");
    assert_eq!(exec.len(), 1);
    let args: Vec<String> = exec[0].split_whitespace().map(str::to_owned).collect();
    assert_eq!(args[0], "/usr/local/bin/tokenkeeper");
    assert_eq!(args[1], "watch");
    let (known, _) = watch_help();
    for flag in flags_of(&args) {
        assert!(known.contains(&flag), "`tokenkeeper watch` has no {flag}");
    }
    // The token file is in the service's private runtime folder, the cache
    // in its cache folder, the secret a credential of the service.
    let sink = value_after(&args, "--sink").expect("--sink");
    assert!(sink.starts_with("/run/tokenkeeper/"), "{sink}");
    let cache = value_after(&args, "--cache").expect("--cache");
    assert!(cache.starts_with("/var/cache/tokenkeeper/"), "{cache}");
    assert_eq!(get("CacheDirectory"), ["tokenkeeper"]);
    let secret = value_after(&args, "--client-secret-file").expect("--client-secret-file");
    let credential = get("LoadCredential");
    assert_eq!(credential.len(), 1);
    let name = credential[0].split(':').next().unwrap();
    assert_eq!(secret, format!("${{CREDENTIALS_DIRECTORY}}/{name}"));
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let analyze = Command::new("systemd-analyze").arg("--version").output();
    if !analyze.is_ok_and(|o| o.status.success()) {
        println!("skipped: systemd-analyze is not installed here");
        return;
    }
    // Verify checks that ExecStart names an executable: point it at the
    // binary this build made.
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("tokenkeeper.service");
    let text = read("tokenkeeper.service").replace(
        "/usr/local/bin/tokenkeeper",
        env!("CARGO_BIN_EXE_tokenkeeper"),
    );
    std::fs::write(&unit, text).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {stderr}");
    // It only warns about settings it ignores: none may be ignored.
    assert!(stderr.trim().is_empty(), "systemd-analyze verify: {stderr}");
}

fn key<'a>(yaml: &'a Yaml, path: &[&str]) -> &'a Yaml {
    path.iter().fold(yaml, |node, k| &node[*k])
}

fn strings(yaml: &Yaml) -> Vec<String> {
    yaml.as_vec()
        .map(|v| {
            v.iter()
                .map(|x| x.as_str().expect("a string").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Where each volume is mounted in `container`: (volume, path, read-only).
fn mounts(container: &Yaml) -> Vec<(String, String, bool)> {
    container["volumeMounts"]
        .as_vec()
        .expect("volumeMounts")
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap().to_owned(),
                m["mountPath"].as_str().unwrap().to_owned(),
                m["readOnly"].as_bool().unwrap_or(false),
            )
        })
        .collect()
}

#[test]
fn the_kubernetes_sidecar_is_yaml_and_runs_watch_with_real_flags() {
    let docs = YamlLoader::load_from_str(&read("kubernetes-sidecar.yaml")).expect("valid YAML");
    assert_eq!(docs.len(), 1);
    let deployment = &docs[0];
    assert_eq!(deployment["kind"].as_str(), Some("Deployment"));
    let pod = key(deployment, &["spec", "template", "spec"]);
    let sidecars = pod["initContainers"].as_vec().expect("initContainers");
    let sidecar = sidecars
        .iter()
        .find(|c| c["name"].as_str() == Some("tokenkeeper"))
        .expect("the tokenkeeper container");
    // A native sidecar: it keeps running beside the application.
    assert_eq!(sidecar["restartPolicy"].as_str(), Some("Always"));

    let args = strings(&sidecar["args"]);
    assert_eq!(args[0], "watch");
    let (known_flags, known_env) = watch_help();
    for flag in flags_of(&args) {
        assert!(
            known_flags.contains(&flag),
            "`tokenkeeper watch` has no {flag}"
        );
    }
    for var in sidecar["env"].as_vec().into_iter().flatten() {
        let name = var["name"].as_str().expect("a name");
        if name.starts_with("TOKENKEEPER_") {
            assert!(
                known_env.contains(name),
                "`tokenkeeper watch` reads no {name}"
            );
        }
    }

    // The sink is on a volume that the application mounts too, read-only;
    // the secret file on the secret's volume.
    let sink = value_after(&args, "--sink").expect("--sink");
    let sink_dir = Path::new(sink).parent().unwrap().to_str().unwrap();
    let volume_at = |container: &Yaml, dir: &str| -> Option<(String, bool)> {
        mounts(container)
            .into_iter()
            .find(|(_, path, _)| path == dir)
            .map(|(name, _, ro)| (name, ro))
    };
    let (token_volume, sidecar_ro) = volume_at(sidecar, sink_dir).expect("the sink's folder");
    assert!(!sidecar_ro, "the sidecar writes the token");
    let volumes = pod["volumes"].as_vec().expect("volumes");
    let volume = |name: &str| {
        volumes
            .iter()
            .find(|v| v["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no volume {name}"))
    };
    assert_eq!(
        volume(&token_volume)["emptyDir"]["medium"].as_str(),
        Some("Memory"),
        "the token never touches a disk"
    );
    let apps = pod["containers"].as_vec().expect("containers");
    assert!(!apps.is_empty());
    for app in apps {
        assert_eq!(
            volume_at(app, sink_dir),
            Some((token_volume.clone(), true)),
            "{:?} reads the token from the shared volume",
            app["name"]
        );
    }
    let secret = value_after(&args, "--client-secret-file").expect("--client-secret-file");
    let secret_dir = Path::new(secret).parent().unwrap().to_str().unwrap();
    let (secret_volume, secret_ro) = volume_at(sidecar, secret_dir).expect("the secret's folder");
    assert!(secret_ro);
    assert!(
        volume(&secret_volume)["secret"]["secretName"]
            .as_str()
            .is_some()
    );

    // One user for the pod: the token file is private to the user that
    // wrote it, so the application must be that user.
    let security = &pod["securityContext"];
    assert_eq!(security["runAsNonRoot"].as_bool(), Some(true));
    assert!(security["runAsUser"].as_i64().is_some());
    for container in sidecars.iter().chain(apps) {
        assert!(
            container["securityContext"]["runAsUser"].is_badvalue(),
            "{:?} must not run as another user",
            container["name"]
        );
        assert_eq!(
            container["securityContext"]["allowPrivilegeEscalation"].as_bool(),
            Some(false)
        );
    }
}
