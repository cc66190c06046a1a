//! deploy/kubernetes: the config the manifests mount parses with the
//! signer's own parser and names only files the manifests mount, and the
//! manifests carry what the issue asks (3 replicas, anti-affinity, PDB,
//! NetworkPolicy, no token, restricted security context, probes on the
//! plain health port, Secrets for keys, TLS and the database password).
//! The observability component loads deploy/observability's dashboard and
//! alerting rules unchanged (issue 29 item 12). Schema validation is in
//! `deploy_lint.rs`.

use std::path::{Path, PathBuf};

use enos_signer_svc::{
    SignerConfig,
    config::{AuditSinkConfig, CustodyConfig},
};
use yaml_rust2::{Yaml, YamlLoader};

fn kubernetes_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kubernetes")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every document of a YAML file.
fn yaml(path: &Path) -> Vec<Yaml> {
    YamlLoader::load_from_str(&read(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The one document of `dir/file`.
fn document(dir: &str, file: &str) -> Yaml {
    let mut docs = yaml(&kubernetes_dir().join(dir).join(file));
    assert_eq!(docs.len(), 1, "{dir}/{file}: one document");
    docs.remove(0)
}

fn strings(value: &Yaml) -> Vec<&str> {
    value
        .as_vec()
        .map(|v| v.iter().filter_map(Yaml::as_str).collect())
        .unwrap_or_default()
}

/// The container port named `name` in the signer's container.
fn container_port(container: &Yaml, name: &str) -> i64 {
    container["ports"]
        .as_vec()
        .expect("ports")
        .iter()
        .find(|p| p["name"].as_str() == Some(name))
        .and_then(|p| p["containerPort"].as_i64())
        .unwrap_or_else(|| panic!("no container port {name}"))
}

/// `(mountPath, volume)` of every mount of the container, with the
/// volume's definition.
fn mounts<'a>(pod: &'a Yaml, container: &'a Yaml) -> Vec<(&'a str, &'a Yaml)> {
    let volumes = pod["volumes"].as_vec().expect("volumes");
    container["volumeMounts"]
        .as_vec()
        .expect("volumeMounts")
        .iter()
        .map(|m| {
            let name = m["name"].as_str().expect("mount name");
            assert_eq!(m["readOnly"].as_bool(), Some(true), "{name} is read-only");
            let volume = volumes
                .iter()
                .find(|v| v["name"].as_str() == Some(name))
                .unwrap_or_else(|| panic!("mount {name} has no volume"));
            (m["mountPath"].as_str().expect("mountPath"), volume)
        })
        .collect()
}

/// The Secret volume a file of the config is read from, and the key.
fn secret_of<'a>(mounts: &[(&str, &'a Yaml)], file: &Path) -> (&'a str, String) {
    let (dir, volume) = mounts
        .iter()
        .find(|(path, _)| file.parent() == Some(Path::new(path)))
        .unwrap_or_else(|| panic!("{} is in no mounted directory", file.display()));
    let secret = volume["secret"]["secretName"]
        .as_str()
        .unwrap_or_else(|| panic!("{dir} is not a Secret volume"));
    // Owner root, group fsGroup, mode 0440: what the signer's key check
    // accepts for a root-owned file.
    assert_eq!(
        volume["secret"]["defaultMode"].as_i64(),
        Some(0o440),
        "{dir}"
    );
    let key = file
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    (secret, key)
}

/// Parses the TOML with the signer's parser (the manifests use the
/// PostgreSQL registry: several replicas share one database).
fn parse(text: &str) -> SignerConfig {
    SignerConfig::from_toml(text).unwrap_or_else(|e| panic!("the config does not parse: {e}"))
}

/// The registry's password file, read from the raw TOML.
fn password_file(text: &str) -> PathBuf {
    let table: toml::Table = toml::from_str(text).expect("TOML");
    PathBuf::from(
        table["registry"]["password_file"]
            .as_str()
            .expect("registry.password_file: the password comes from a Secret"),
    )
}

#[test]
fn the_mounted_config_parses_and_names_only_mounted_files() {
    let deployment = document("base", "deployment.yaml");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let mounts = mounts(pod, container);

    // The ConfigMap the kustomization generates from signer.toml is
    // mounted where the command line reads it.
    let kustomization = document("base", "kustomization.yaml");
    let generated = &kustomization["configMapGenerator"][0];
    assert_eq!(generated["name"].as_str(), Some("enos-signer-config"));
    assert_eq!(strings(&generated["files"]), ["signer.toml"]);
    let (config_path, config_volume) = mounts
        .iter()
        .find(|(_, v)| v["configMap"]["name"].as_str() == Some("enos-signer-config"))
        .expect("the config is mounted");
    assert_eq!(*config_path, "/etc/enos-signer/signer.toml");
    assert!(config_volume["configMap"].as_hash().is_some());
    assert_eq!(
        strings(&container["args"]),
        ["serve", "--config", "/etc/enos-signer/signer.toml"]
    );
    let overlay = document("overlays/example", "kustomization.yaml");
    let replaced = &overlay["configMapGenerator"][0];
    assert_eq!(replaced["name"].as_str(), Some("enos-signer-config"));
    assert_eq!(replaced["behavior"].as_str(), Some("replace"));

    for file in ["base/signer.toml", "overlays/example/signer.toml"] {
        let text = read(&kubernetes_dir().join(file));
        let config = parse(&text);

        // Listeners on the container's ports; the probes on the health port.
        assert_eq!(
            i64::from(config.server.listen.port()),
            container_port(container, "grpc"),
            "{file}"
        );
        let metrics = config.metrics.as_ref().expect("metrics");
        assert_eq!(
            i64::from(metrics.listen.port()),
            container_port(container, "metrics")
        );
        let health = config.health.as_ref().expect("[health] for the probes");
        let health_port = i64::from(health.listen.port());
        assert_eq!(health_port, container_port(container, "health"));
        for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
            assert_eq!(
                container[probe]["grpc"]["port"].as_i64(),
                Some(health_port),
                "{probe} on the plain health port"
            );
        }
        assert!(config.server.tls_reload_interval().is_some(), "{file}");
        // The drain ends before the kubelet kills the pod.
        let grace = pod["terminationGracePeriodSeconds"]
            .as_i64()
            .expect("grace");
        assert!(
            grace > config.server.drain_timeout.as_secs() as i64 + 5,
            "{file}"
        );

        // Nothing written to the (read-only) root: audit on stdout.
        assert_eq!(config.audit.sink, AuditSinkConfig::Log, "{file}");
        assert!(config.audit.fail_closed);

        // Every file comes from a Secret the manifests mount.
        let CustodyConfig::Software { master_key_file } = &config.custody else {
            panic!("{file}: software custody with the key from a Secret");
        };
        let secrets = [
            (
                secret_of(&mounts, &config.server.cert),
                "server certificate",
            ),
            (secret_of(&mounts, &config.server.key), "server key"),
            (secret_of(&mounts, &config.server.client_ca), "client CA"),
            (secret_of(&mounts, master_key_file), "master key"),
            (secret_of(&mounts, &config.audit.key_file), "audit key"),
            (
                secret_of(&mounts, &password_file(&text)),
                "PostgreSQL password",
            ),
        ];
        for ((secret, key), what) in &secrets {
            assert!(!secret.is_empty() && !key.is_empty(), "{what}");
        }
        // cert-manager's Secret layout for the server certificate.
        assert_eq!(secrets[0].0, ("enos-signer-tls", "tls.crt".into()));
        assert_eq!(secrets[1].0, ("enos-signer-tls", "tls.key".into()));
        let certificate = document("overlays/example", "certificate.yaml");
        assert_eq!(certificate["kind"].as_str(), Some("Certificate"));
        assert_eq!(
            certificate["spec"]["secretName"].as_str(),
            Some("enos-signer-tls")
        );
        assert!(strings(&certificate["spec"]["usages"]).contains(&"server auth"));
        assert!(strings(&certificate["spec"]["dnsNames"]).contains(&"enos-signer.enos.svc"));
    }
}

#[test]
fn the_manifests_carry_what_a_fleet_signer_needs() {
    let deployment = document("base", "deployment.yaml");
    let spec = &deployment["spec"];
    assert_eq!(spec["replicas"].as_i64(), Some(3));
    let selector = &spec["selector"]["matchLabels"];
    let pod = &spec["template"]["spec"];
    assert_eq!(&spec["template"]["metadata"]["labels"], selector);
    let anti =
        &pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0];
    assert_eq!(
        anti["podAffinityTerm"]["topologyKey"].as_str(),
        Some("kubernetes.io/hostname")
    );
    assert_eq!(
        &anti["podAffinityTerm"]["labelSelector"]["matchLabels"],
        selector
    );

    let pdb = document("base", "poddisruptionbudget.yaml");
    assert_eq!(pdb["spec"]["maxUnavailable"].as_i64(), Some(1));
    assert_eq!(&pdb["spec"]["selector"]["matchLabels"], selector);

    let account = document("base", "serviceaccount.yaml");
    assert_eq!(
        account["automountServiceAccountToken"].as_bool(),
        Some(false)
    );
    assert_eq!(
        pod["serviceAccountName"].as_str(),
        account["metadata"]["name"].as_str()
    );
    assert_eq!(pod["automountServiceAccountToken"].as_bool(), Some(false));

    let pod_security = &pod["securityContext"];
    assert_eq!(pod_security["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(
        pod_security["seccompProfile"]["type"].as_str(),
        Some("RuntimeDefault")
    );
    // The image's user (deploy/container/Containerfile: USER 65532:65532).
    assert_eq!(pod_security["runAsUser"].as_i64(), Some(65532));
    assert_eq!(pod_security["runAsGroup"].as_i64(), Some(65532));
    assert_eq!(pod_security["fsGroup"].as_i64(), Some(65532));
    let containers = pod["containers"].as_vec().expect("containers");
    assert_eq!(containers.len(), 1);
    let container = &containers[0];
    let security = &container["securityContext"];
    assert_eq!(security["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(security["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(security["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(strings(&security["capabilities"]["drop"]), ["ALL"]);
    assert_eq!(
        security["seccompProfile"]["type"].as_str(),
        Some("RuntimeDefault")
    );
    for kind in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                container["resources"][kind][resource].as_str().is_some(),
                "resources.{kind}.{resource}"
            );
        }
    }
    // Liveness never asks for readiness (which depends on the database).
    assert_eq!(
        container["livenessProbe"]["grpc"]["service"].as_str(),
        Some(enos_signer_svc::listener::readiness::LIVENESS_SERVICE)
    );
    assert!(container["readinessProbe"]["grpc"]["service"].is_badvalue());
    // No environment variable carries a secret: files only.
    assert!(container["env"].is_badvalue() && container["envFrom"].is_badvalue());

    // The Service and the NetworkPolicy: gRPC and metrics, nothing else.
    let service = document("base", "service.yaml");
    assert_eq!(&service["spec"]["selector"], selector);
    let service_ports: Vec<&str> = service["spec"]["ports"]
        .as_vec()
        .expect("ports")
        .iter()
        .filter_map(|p| p["targetPort"].as_str())
        .collect();
    assert_eq!(service_ports, ["grpc", "metrics"]);
    let policy = document("base", "networkpolicy.yaml");
    assert_eq!(&policy["spec"]["podSelector"]["matchLabels"], selector);
    assert_eq!(strings(&policy["spec"]["policyTypes"]), ["Ingress"]);
    let rules = policy["spec"]["ingress"].as_vec().expect("ingress rules");
    let mut allowed: Vec<String> = rules
        .iter()
        .flat_map(|r| r["ports"].as_vec().cloned().unwrap_or_default())
        .map(|p| p["port"].as_str().expect("ports by name").to_owned())
        .collect();
    allowed.sort_unstable();
    assert_eq!(allowed, ["grpc", "metrics"]);
    assert!(
        rules.iter().all(|r| !r["ports"].is_badvalue()),
        "every rule names its ports"
    );
}

#[test]
fn every_kustomization_lists_existing_files_and_the_base_lists_all_of_its_own() {
    for dir in ["base", "overlays/example", "components/observability"] {
        let root = kubernetes_dir().join(dir);
        let kustomization = document(dir, "kustomization.yaml");
        let resources = strings(&kustomization["resources"]);
        for resource in &resources {
            let path = root.join(resource);
            assert!(path.exists(), "{dir}: {resource} exists");
            if path.is_dir() {
                assert!(path.join("kustomization.yaml").is_file(), "{resource}");
            }
        }
        for component in strings(&kustomization["components"]) {
            let path = root.join(component).join("kustomization.yaml");
            assert!(path.is_file(), "{dir}: component {component}");
            assert_eq!(
                yaml(&path)[0]["kind"].as_str(),
                Some("Component"),
                "{component}"
            );
        }
        for generator in kustomization["configMapGenerator"]
            .as_vec()
            .expect("generator")
        {
            for file in strings(&generator["files"]) {
                assert!(root.join(file).is_file(), "{dir}: {file}");
            }
        }
        if dir == "base" {
            for entry in std::fs::read_dir(&root).expect("base") {
                let name = entry
                    .expect("entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned();
                if name.ends_with(".yaml") && name != "kustomization.yaml" {
                    assert!(resources.contains(&name.as_str()), "base lists {name}");
                }
            }
        }
    }
}

#[test]
fn the_observability_component_loads_the_dashboard_and_rules_of_deploy_observability() {
    let observability = kubernetes_dir().join("../observability");
    let dir = "components/observability";
    let component = kubernetes_dir().join(dir);
    let kustomization = document(dir, "kustomization.yaml");
    assert_eq!(kustomization["kind"].as_str(), Some("Component"));

    // The dashboard: a copy of deploy/observability's (kustomize reads no
    // file outside the component), in a ConfigMap Grafana's sidecar loads.
    let copy = read(&component.join("enos-signer.dashboard.json"));
    assert!(
        copy == read(&observability.join("enos-signer.dashboard.json")),
        "the component's dashboard differs from deploy/observability's: \
         cp deploy/observability/enos-signer.dashboard.json deploy/kubernetes/{dir}/"
    );
    let generators = kustomization["configMapGenerator"]
        .as_vec()
        .expect("generator");
    let dashboard = generators
        .iter()
        .find(|g| g["name"].as_str() == Some("enos-signer-dashboard"))
        .expect("the dashboard's ConfigMap");
    assert_eq!(strings(&dashboard["files"]), ["enos-signer.dashboard.json"]);
    assert_eq!(
        dashboard["options"]["labels"]["grafana_dashboard"].as_str(),
        Some("1")
    );
    assert_eq!(
        dashboard["options"]["disableNameSuffixHash"].as_bool(),
        Some(true)
    );

    // The rules: a PrometheusRule whose spec is the rules file.
    assert_eq!(
        strings(&kustomization["resources"]),
        ["prometheusrule.yaml"]
    );
    let rule = document(dir, "prometheusrule.yaml");
    assert_eq!(rule["kind"].as_str(), Some("PrometheusRule"));
    assert_eq!(
        rule["apiVersion"].as_str(),
        Some("monitoring.coreos.com/v1")
    );
    let rules = yaml(&observability.join("enos-signer.rules.yml"));
    assert!(
        rule["spec"]["groups"] == rules[0]["groups"],
        "the PrometheusRule's spec.groups differ from deploy/observability/enos-signer.rules.yml"
    );
    assert!(!rule["spec"]["groups"].is_badvalue());

    // The example overlay shows how to load both.
    let overlay = document("overlays/example", "kustomization.yaml");
    assert_eq!(
        strings(&overlay["components"]),
        ["../../components/observability"]
    );
}
