//! deploy/observability (issue 29 item 12): every metric the Grafana
//! dashboard and the Prometheus alerting rules name exists in a running
//! signer's `/metrics`. The names are parsed out of the files' PromQL
//! expressions, so a panel or rule that names a metric the signer does not
//! export fails here, before it shows an empty graph or an alert that can
//! never fire.
//!
//! The signer is the real one (TestSigner over mTLS) on a real PostgreSQL
//! registry with its change feed, and a CA (`[ca]`), so that every series
//! the files use can exist; a call issued and one refused drive the
//! issuance series. The rules themselves are checked by `promtool check
//! rules` and `promtool test rules` in `cargo xtask test`.

mod common;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use enos_postgres_fixture::PgCluster;
use enos_registry::postgres::PostgresConfig;
use enos_signer_proto::v1::IssueMqttCredentialRequest;
use enos_signer_svc::config::{CaConfig, RegistryConfig};
use enos_testkit::{Pki, signer::TestSigner};
use yaml_rust2::{Yaml, YamlLoader};

fn observability_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/observability")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// PromQL words that are not metric names: aggregation and binary-operator
/// keywords, and the literals `inf` / `nan`.
const KEYWORDS: [&str; 13] = [
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
];

/// Aggregation operators: `sum by (x) (…)` puts a keyword, not a `(`,
/// after them.
const AGGREGATIONS: [&str; 14] = [
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

/// Keywords followed by a parenthesised list of label names (not metric
/// names).
const LABEL_LISTS: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Skips from `open` at `chars[i]` to just past its matching `close`,
/// stepping over quoted strings.
fn skip_group(chars: &[char], mut i: usize, open: char, close: char) -> usize {
    let mut depth = 0;
    while i < chars.len() {
        match chars[i] {
            c if c == open => depth += 1,
            c if c == close => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            '"' | '\'' | '`' => {
                i = skip_string(chars, i);
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    i
}

/// Skips the quoted string starting at `chars[i]`.
fn skip_string(chars: &[char], mut i: usize) -> usize {
    let quote = chars[i];
    i += 1;
    while i < chars.len() && chars[i] != quote {
        if chars[i] == '\\' && quote != '`' {
            i += 1;
        }
        i += 1;
    }
    i + 1
}

/// The metric names a PromQL expression selects: identifiers that are not
/// functions (followed by `(`), keywords, label names (inside `{…}` or a
/// `by (…)` list), durations (`[…]`), numbers, strings or Grafana
/// variables (`$…`).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => i = skip_string(&chars, i),
            '{' => i = skip_group(&chars, i, '{', '}'),
            '[' => i = skip_group(&chars, i, '[', ']'),
            '$' => {
                // A Grafana variable: `$name`, `${name}`.
                i += 1;
                if chars.get(i) == Some(&'{') {
                    i = skip_group(&chars, i, '{', '}');
                }
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
            }
            c if c.is_ascii_digit() || c == '.' => {
                // A number or a duration: 0.99, 86400, 1e3, 5m.
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut next = i;
                while next < chars.len() && chars[next].is_whitespace() {
                    next += 1;
                }
                let call = chars.get(next) == Some(&'(');
                if LABEL_LISTS.contains(&word.as_str()) && call {
                    i = skip_group(&chars, next, '(', ')');
                } else if !call
                    && !KEYWORDS.contains(&word.to_lowercase().as_str())
                    && !AGGREGATIONS.contains(&word.as_str())
                {
                    names.insert(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

/// Every `expr` of the alerting rules file.
fn rule_expressions() -> Vec<String> {
    let path = observability_dir().join("enos-signer.rules.yml");
    let docs = YamlLoader::load_from_str(&read(&path)).expect("rules YAML");
    let mut exprs = Vec::new();
    for group in docs[0]["groups"].as_vec().expect("groups") {
        for rule in group["rules"].as_vec().expect("rules") {
            exprs.push(rule["expr"].as_str().expect("expr").to_owned());
        }
    }
    exprs
}

/// Every PromQL expression of the dashboard: each target's `expr` (in
/// panels and rows at any depth) and the metric of each template
/// variable's `label_values(METRIC, label)`.
fn dashboard_expressions() -> Vec<String> {
    fn walk(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                if let Some(expr) = map.get("expr").and_then(serde_json::Value::as_str) {
                    out.push(expr.to_owned());
                }
                for v in map.values() {
                    walk(v, out);
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let path = observability_dir().join("enos-signer.dashboard.json");
    let dashboard: serde_json::Value = serde_json::from_str(&read(&path)).expect("dashboard JSON");
    let mut exprs = Vec::new();
    walk(&dashboard["panels"], &mut exprs);
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        if variable["type"] != "query" {
            continue;
        }
        let query = variable["query"]["query"].as_str().expect("variable query");
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable queries are label_values(METRIC, label): {query}"));
        let (metric, _label) = inner.rsplit_once(',').expect("label_values(METRIC, label)");
        exprs.push(metric.to_owned());
    }
    exprs
}

/// The metric names of a Prometheus text exposition.
fn exposed_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn promql_names_are_parsed_out_of_expressions() {
    let names = |e: &str| metric_names(e).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            r#"histogram_quantile(0.99, sum by (le, rpc) (rate(a_bucket{rpc=~"x|y",le!="b"}[$__rate_interval])))"#
        ),
        ["a_bucket"]
    );
    assert_eq!(
        names("a - time() < 7 * 86400 and on (job) group_left (x) b offset 5m > bool 1e3"),
        ["a", "b"]
    );
    assert_eq!(
        names(r#"sum(rate(c{x="{not_a_name}"}[5m])) / sum without (instance) (d)"#),
        ["c", "d"]
    );
    assert_eq!(names("max(e{job=~\"$job\"}) or vector(0)"), ["e"]);
}

#[test]
fn the_dashboard_is_well_formed() {
    let path = observability_dir().join("enos-signer.dashboard.json");
    let dashboard: serde_json::Value = serde_json::from_str(&read(&path)).expect("dashboard JSON");
    assert_eq!(dashboard["uid"], "enos-signer");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut titles = Vec::new();
    for panel in panels {
        let id = panel["id"].as_u64().expect("panel id");
        assert!(ids.insert(id), "panel id {id} is unique");
        let grid = &panel["gridPos"];
        for key in ["x", "y", "w", "h"] {
            assert!(grid[key].is_u64(), "{}: gridPos.{key}", panel["title"]);
        }
        assert!(
            grid["x"].as_u64().unwrap_or(99) + grid["w"].as_u64().unwrap_or(99) <= 24,
            "{} fits the 24-column grid",
            panel["title"]
        );
        titles.push(panel["title"].as_str().expect("title").to_owned());
        if panel["type"] == "row" {
            continue;
        }
        assert!(
            panel["description"].as_str().is_some_and(|d| d.len() > 20),
            "{} says what it shows",
            panel["title"]
        );
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{}", panel["title"]);
        for target in targets {
            let expr = target["expr"].as_str().expect("expr");
            assert!(!metric_names(expr).is_empty(), "{expr} names a metric");
        }
    }
    // What the issue asks the dashboard to show, one row each.
    for row in [
        "Issuance",
        "Latency",
        "Registry, cache and change feed",
        "Audit",
        "TLS and certificates",
        "Connections",
        "Replicas",
    ] {
        assert!(titles.iter().any(|t| t == row), "row {row}: {titles:?}");
    }
}

#[test]
fn the_rules_name_the_alerts_the_issue_asks_for() {
    let path = observability_dir().join("enos-signer.rules.yml");
    let docs = YamlLoader::load_from_str(&read(&path)).expect("rules YAML");
    let alerts: Vec<&str> = docs[0]["groups"][0]["rules"]
        .as_vec()
        .expect("rules")
        .iter()
        .map(|r| r["alert"].as_str().expect("alerting rules only"))
        .collect();
    for alert in [
        "EnosSignerServerCertificateExpiring",
        "EnosSignerChangeFeedDown",
        "EnosSignerAuditSinkFailing",
        "EnosSignerRefusalSpike",
        "EnosSignerReplicaNotReady",
        "EnosSignerIssuanceLatencyHigh",
        "EnosSignerDeviceCertificatesExpiringUnrenewed",
    ] {
        assert!(alerts.contains(&alert), "{alert} in {alerts:?}");
    }
    for rule in docs[0]["groups"][0]["rules"].as_vec().expect("rules") {
        let alert = rule["alert"].as_str().expect("alert");
        assert!(
            matches!(
                rule["labels"]["severity"].as_str(),
                Some("warning" | "critical")
            ),
            "{alert}: severity"
        );
        for key in ["summary", "description", "runbook_url"] {
            assert!(
                !matches!(rule["annotations"][key], Yaml::BadValue),
                "{alert}: annotation {key}"
            );
        }
        // Each alert has a section in docs/observability.md.
        let anchor = rule["annotations"]["runbook_url"]
            .as_str()
            .and_then(|u| u.split_once("docs/observability.md#"))
            .map(|(_, a)| a.to_owned())
            .unwrap_or_else(|| panic!("{alert}: runbook_url into docs/observability.md"));
        let docs_page = read(&observability_dir().join("../../docs/observability.md"));
        assert!(
            docs_page.lines().any(|l| l.starts_with("### ")
                && l.trim_start_matches('#').trim().to_lowercase() == anchor),
            "{alert}: docs/observability.md has a heading for #{anchor}"
        );
    }
}

/// A signer on a PostgreSQL registry of `cluster` (with its cache, so its
/// change feed), and a CA when `ca`.
async fn postgres_signer(cluster: &PgCluster, ca: bool) -> common::Fixture {
    cluster.create_database("observability").expect("createdb");
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new("observability-test").expect("pki");
    let signer = TestSigner::start_with(dir.path(), &pki, |config| {
        config.registry = RegistryConfig::Postgres(PostgresConfig {
            url: cluster.url("observability"),
            password_file: Some(cluster.password_file()),
            pool_size: 4,
            ca_file: None,
            cache: true,
            allow_plaintext_password: false,
        });
        if ca {
            config.ca = Some(CaConfig::default());
        }
    })
    .await
    .expect("signer starts");
    common::Fixture { pki, signer, dir }
}

/// Scrapes until `check` holds on the scrape (at most 30 s: readiness is
/// checked every 5 s); the last scrape.
async fn scrape_until(f: &common::Fixture, what: &str, check: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = common::scrape_metrics(f).await;
        if check(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "{what}: not within 30 s\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_fresh_signer_exports_the_series_dashboards_read_at_zero() {
    // redb, no [ca], no call yet: the counters and histograms a rate() or
    // a panel reads are there at zero, so a first event is seen.
    let f = common::fixture().await;
    let text = common::scrape_metrics(&f).await;
    for line in [
        r#"enos_signer_issuances_total{rpc="issue_mqtt_credential",outcome="ok"} 0"#,
        r#"enos_signer_issuances_total{rpc="sign_sub_device_login",outcome="ok"} 0"#,
        r#"enos_signer_issue_duration_seconds_count{rpc="issue_mqtt_credential"} 0"#,
        r#"enos_signer_tls_reloads_total{outcome="reloaded"} 0"#,
        r#"enos_signer_tls_reloads_total{outcome="refused"} 0"#,
        r#"enos_signer_connections_refused_total{listener="grpc",reason="throttled"} 0"#,
        r#"enos_signer_connections_refused_total{listener="grpc",reason="limit"} 0"#,
        r#"enos_signer_requests_shed_total{listener="grpc"} 0"#,
        r#"enos_signer_connections_open{listener="grpc"} 0"#,
        r#"enos_signer_readiness_check_failures_total{check="registry"} 0"#,
        r#"enos_signer_readiness_check_failures_total{check="custody"} 0"#,
        "enos_signer_ready 1",
        // #26: the EnOS API client's series, before any [enos_api] call.
        r#"enos_signer_enos_api_calls_total{operation="renew",outcome="ok"} 0"#,
        r#"enos_signer_enos_api_calls_total{operation="apply",outcome="refused"} 0"#,
        r#"enos_signer_enos_api_calls_total{operation="token",outcome="unreachable"} 0"#,
        r#"enos_signer_enos_api_request_duration_seconds_count{operation="renew"} 0"#,
        r#"enos_signer_enos_api_request_duration_seconds_sum{operation="apply"} 0.0"#,
        "enos_signer_enos_api_queue_seconds_count 0",
        "enos_signer_enos_api_in_flight 0",
        "enos_signer_enos_api_in_flight_peak 0",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in {text}");
    }
    // The served certificate's lifetime, for the expiry alerts.
    let not_before = common::sample(
        &text,
        "enos_signer_tls_server_cert_not_before_timestamp_seconds",
    )
    .expect("notBefore");
    // A fresh test certificate: far from its end, so its state is `ok`.
    let not_after = common::sample(
        &text,
        "enos_signer_tls_server_cert_expiry_timestamp_seconds{state=\"ok\"}",
    )
    .expect("notAfter");
    assert!(0.0 < not_before && not_before < not_after, "{text}");
    // redb has no change feed: no series, rather than a 0 that would
    // page as "feed down".
    assert!(
        !text.contains("enos_signer_registry_change_feed_up"),
        "{text}"
    );
}

#[tokio::test]
async fn an_idle_replica_shows_no_change_feed_until_its_first_read() {
    // The feed starts with the registry's first cached read: before, there
    // is no feed to be down, and no 0 that would page "change feed down".
    let cluster = PgCluster::start().expect("PostgreSQL cluster");
    let f = postgres_signer(&cluster, false).await;
    let idle = common::scrape_metrics(&f).await;
    assert!(
        !idle.contains("enos_signer_registry_change_feed_up"),
        "{idle}"
    );
    assert_eq!(
        common::sample(&idle, "enos_signer_ready"),
        Some(1.0),
        "{idle}"
    );
    f.signer
        .put_device("PkObs", "dev-1", "s3cret")
        .await
        .expect("put");
    scrape_until(&f, "the feed comes up with the first write", |t| {
        common::sample(t, "enos_signer_registry_change_feed_up") == Some(1.0)
    })
    .await;
}

#[tokio::test]
async fn readiness_and_the_change_feed_follow_a_database_outage() {
    let cluster = PgCluster::start().expect("PostgreSQL cluster");
    let f = postgres_signer(&cluster, true).await;
    const READY: &str = "enos_signer_ready";
    const FEED: &str = "enos_signer_registry_change_feed_up";
    const REGISTRY_FAILURES: &str =
        r#"enos_signer_readiness_check_failures_total{check="registry"}"#;
    scrape_until(&f, "the feed comes up", |t| {
        common::sample(t, FEED) == Some(1.0) && common::sample(t, READY) == Some(1.0)
    })
    .await;

    cluster.stop().expect("stop PostgreSQL");
    let down = scrape_until(&f, "not ready, feed down", |t| {
        common::sample(t, READY) == Some(0.0) && common::sample(t, FEED) == Some(0.0)
    })
    .await;
    assert!(
        common::sample(&down, REGISTRY_FAILURES).is_some_and(|n| n >= 1.0),
        "{down}"
    );
    assert_eq!(
        common::sample(
            &down,
            r#"enos_signer_readiness_check_failures_total{check="custody"}"#
        ),
        Some(0.0),
        "{down}"
    );

    cluster.start_again().expect("start PostgreSQL again");
    scrape_until(&f, "ready again, feed up", |t| {
        common::sample(t, READY) == Some(1.0) && common::sample(t, FEED) == Some(1.0)
    })
    .await;
}

#[tokio::test]
async fn every_metric_the_dashboard_and_the_rules_name_is_exported() {
    let mut referenced = BTreeSet::new();
    for expr in rule_expressions().iter().chain(&dashboard_expressions()) {
        referenced.extend(metric_names(expr));
    }
    // The parser found the files' names at all.
    assert!(referenced.len() >= 12, "{referenced:?}");

    let cluster = PgCluster::start().expect("PostgreSQL cluster");
    let f = postgres_signer(&cluster, true).await;

    // One issuance and one refusal.
    f.signer
        .put_device("PkObs", "dev-1", "s3cret")
        .await
        .expect("put");
    f.device("PkObs", "dev-1")
        .await
        .issue_mqtt_credential(IssueMqttCredentialRequest::default())
        .await
        .expect("issued");
    let refused = f
        .device("PkObs", "unknown")
        .await
        .issue_mqtt_credential(IssueMqttCredentialRequest::default())
        .await;
    assert!(refused.is_err(), "an unknown device is refused");

    // The change feed and the CA's expiry count come up in the
    // background: scrape until every name is there, or report the missing.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = common::scrape_metrics(&f).await;
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        let exposed = exposed_names(&text);
        let missing: Vec<&String> = referenced.difference(&exposed).collect();
        // The change feed is up on this PostgreSQL registry once it has
        // proven itself (its first NOTIFY ping came back).
        if missing.is_empty() && text.contains("\nenos_signer_registry_change_feed_up 1\n") {
            assert!(text.contains("\nenos_signer_ready 1\n"), "{text}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "named in deploy/observability but not exported by the signer (or the change feed never came up): {missing:?}\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Issue 26 item 6: the signer's EnOS API client counts each call by
/// operation and outcome, times each exchange with EnOS, and its peak of
/// calls in flight stays within `[enos_api] concurrency` (real signer over
/// mTLS, the real sandbox playing EnOS's API over HTTPS).
#[tokio::test]
async fn the_enos_api_client_counts_and_times_its_calls_within_its_bound() {
    use enos_signer_proto::v1::{
        ApplyEnosCertificateRequest, RenewEnosCertificateRequest,
        enos_certificates_client::EnosCertificatesClient,
    };
    use enos_signer_svc::config::{EnosApiConfig, EnosEnvironmentConfig, SubjectTemplate};
    use enos_testkit::sandbox::{Sandbox, SandboxBinary};
    use std::num::NonZeroUsize;

    const GATEWAYS: usize = 6;
    const SECRET: &str = "app-secret-metrics-7c1e";
    let enos_dir = tempfile::tempdir().expect("dir");
    let devices = enos_dir.path().join("devices.csv");
    let mut csv = "productKey,deviceKey,deviceSecret\n".to_owned();
    for i in 0..GATEWAYS {
        csv.push_str(&format!("gwpk,gw{i},secret-gw{i}-4d2a\n"));
    }
    std::fs::write(&devices, csv).expect("devices");
    let api_pki = Pki::new("EnOS API gateway CA").expect("pki");
    let api_ca = api_pki.write_ca(enos_dir.path()).expect("ca");
    let server = api_pki
        .server(&[])
        .expect("server")
        .write(enos_dir.path(), "apigw")
        .expect("files");
    enos_testkit::pki::write_private(&enos_dir.path().join("app.secret"), SECRET.as_bytes())
        .expect("secret");
    let sandbox_config = enos_dir.path().join("sandbox.toml");
    std::fs::write(
        &sandbox_config,
        format!(
            "[enos_api]\nlisten = \"127.0.0.1:0\"\norg_id = \"o1\"\napp_key = \"ak\"\n\
             app_secret_file = \"app.secret\"\ncert = \"{}\"\nkey = \"{}\"\n",
            server.cert.display(),
            server.key.display()
        ),
    )
    .expect("config");
    let sandbox = Sandbox::builder(SandboxBinary::locate().expect("sandbox binary"), &devices)
        .config(&sandbox_config)
        .enos_api()
        .start()
        .expect("sandbox starts");
    let environment = EnosEnvironmentConfig {
        gateway_url: format!("https://{}", sandbox.enos_api_addr().expect("api")),
        org_id: "o1".into(),
        credential_file: enos_dir.path().join("signer-enos-api.sealed"),
        ca_file: Some(api_ca),
        products: vec!["*".into()],
    };
    let credential_file = environment.credential_file.clone();
    let f = common::fixture_with(move |c| {
        c.enos_api = Some(EnosApiConfig {
            concurrency: NonZeroUsize::new(2).expect("2"),
            timeout: Duration::from_secs(10),
            valid_day: 30,
            environments: [("test".to_owned(), environment)].into(),
            subject: SubjectTemplate::default(),
            product_subjects: Default::default(),
        });
    })
    .await;
    let custody = enos_signer_svc::custody::build(&f.signer.config().custody)
        .expect("custody")
        .into_custody();
    enos_signer_svc::enos_api::seal_credential(
        custody.as_ref(),
        "test",
        "ak",
        SECRET,
        &credential_file,
    )
    .expect("sealed");
    let csr = |dk: &str| {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (ty, value) in [
            (rcgen::DnType::CountryName, "CN".to_owned()),
            (rcgen::DnType::StateOrProvinceName, "Shanghai".to_owned()),
            (rcgen::DnType::LocalityName, "Shanghai".to_owned()),
            (rcgen::DnType::OrganizationName, "EnOS".to_owned()),
            (rcgen::DnType::OrganizationalUnitName, "gateways".to_owned()),
            (rcgen::DnType::CommonName, format!("gwpk.{dk}")),
        ] {
            params.distinguished_name.push(ty, value);
        }
        params
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem")
    };

    // Every gateway applies at once: more calls than permits.
    let mut calls = Vec::new();
    for i in 0..GATEWAYS {
        let dk = format!("gw{i}");
        let identity = f.pki.device("gwpk", &dk).expect("device cert");
        let mut client = EnosCertificatesClient::new(f.channel(Some(&identity)).await);
        let csr_pem = csr(&dk);
        calls.push(tokio::spawn(async move {
            let issued = client
                .apply_enos_certificate(ApplyEnosCertificateRequest { csr_pem })
                .await
                .expect("applied")
                .into_inner();
            (client, dk, issued.cert_sn)
        }));
    }
    let mut applied = Vec::new();
    for call in calls {
        applied.push(call.await.expect("joined"));
    }
    // One renewal; one of a serial that is not the caller's, refused by
    // the signer's registry before EnOS is called (no EnOS call counted);
    // and a second apply for a gateway whose certificate is valid, which
    // EnOS refuses (duplicate subject: a code, not an outage).
    let (client, dk, cert_sn) = &mut applied[0];
    client
        .renew_enos_certificate(RenewEnosCertificateRequest {
            csr_pem: csr(dk),
            current_cert_sn: cert_sn.clone(),
        })
        .await
        .expect("renewed");
    let other_sn = applied[1].2.clone();
    let (client, dk, _) = &mut applied[0];
    let refused = client
        .renew_enos_certificate(RenewEnosCertificateRequest {
            csr_pem: csr(dk),
            current_cert_sn: other_sn,
        })
        .await
        .expect_err("not the caller's serial");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    let (client, dk, _) = &mut applied[1];
    let duplicate = client
        .apply_enos_certificate(ApplyEnosCertificateRequest { csr_pem: csr(dk) })
        .await
        .expect_err("EnOS refuses a second valid certificate of one subject");
    assert_eq!(
        duplicate.code(),
        tonic::Code::FailedPrecondition,
        "{duplicate:?}"
    );

    let text = common::scrape_metrics(&f).await;
    let value = |series: &str| common::sample(&text, series).unwrap_or(f64::NAN);
    let apply_ok = value(r#"enos_signer_enos_api_calls_total{operation="apply",outcome="ok"}"#);
    assert_eq!(apply_ok, GATEWAYS as f64, "{text}");
    assert_eq!(
        value(r#"enos_signer_enos_api_calls_total{operation="renew",outcome="ok"}"#),
        1.0,
        "{text}"
    );
    assert_eq!(
        value(r#"enos_signer_enos_api_calls_total{operation="renew",outcome="refused"}"#),
        0.0,
        "the registry refused it first: {text}"
    );
    assert_eq!(
        value(r#"enos_signer_enos_api_calls_total{operation="apply",outcome="refused"}"#),
        1.0,
        "{text}"
    );
    // A token is kept once fetched, but first calls racing each fetch
    // one (each through a permit too).
    let tokens = value(r#"enos_signer_enos_api_calls_total{operation="token",outcome="ok"}"#);
    assert!((1.0..=GATEWAYS as f64).contains(&tokens), "{text}");
    assert_eq!(
        value(r#"enos_signer_enos_api_request_duration_seconds_count{operation="apply"}"#),
        GATEWAYS as f64 + 1.0,
        "{text}"
    );
    assert_eq!(
        value(r#"enos_signer_enos_api_request_duration_seconds_count{operation="renew"}"#),
        1.0,
        "{text}"
    );
    let waited = value(r#"enos_signer_enos_api_request_duration_seconds_sum{operation="apply"}"#);
    assert!(waited > 0.0, "time spent waiting on EnOS: {text}");
    // Every exchange took a permit: queued once each.
    assert_eq!(
        value("enos_signer_enos_api_queue_seconds_count"),
        GATEWAYS as f64 + 2.0 + tokens,
        "{text}"
    );
    assert_eq!(value("enos_signer_enos_api_in_flight"), 0.0, "{text}");
    let peak = value("enos_signer_enos_api_in_flight_peak");
    assert!(
        (1.0..=2.0).contains(&peak),
        "at most [enos_api] concurrency = 2 in flight: {peak}\n{text}"
    );
    assert!(!text.contains(SECRET));
}
