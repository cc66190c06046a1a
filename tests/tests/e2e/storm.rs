//! `enos-fleet` at N = 300 through every scenario: the invariants, not the
//! timings (those are the harness's figures, printed).

use std::time::Duration;

use enos_e2e::fleet::{self, FleetOptions, Scenario};

use crate::support::{self, TestResult};

const AGENTS: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_agents_through_every_scenario_all_connect_none_refused_within_the_rate_limit()
-> TestResult {
    support::init();
    let dir = tempfile::tempdir()?;
    let picture = dir.path().join("fleet.svg");
    let mut options = FleetOptions::new(AGENTS);
    options.scenario = Scenario::All;
    options.backoff_min = Duration::from_millis(500);
    options.backoff_max = Duration::from_secs(4);
    options.reset_after = Duration::from_secs(1);
    options.phase_timeout = Duration::from_secs(90);
    options.plot = Some(picture.clone());
    let report = fleet::run(&options, support::sandbox_binary()).await?;
    eprintln!("{report}");

    let names: Vec<&str> = report.phases.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["connect", "broker-restart", "signer-restart"]);
    for p in &report.phases {
        assert!(p.all_connected(), "{p}");
        assert_eq!(p.broker_refusals, 0, "no login refused by the broker: {p}");
        assert_eq!(p.agent_refusals, 0, "{p}");
        assert_eq!(p.resource_exhausted, 0, "the signer's limit held: {p}");
        assert_eq!(p.other_refusals, 0, "{p}");
        // A fresh credential for every connect, none reused.
        assert!(p.issued >= AGENTS, "{p}");
        assert_eq!(p.credentials_reused, 0, "{p}");
        assert!(
            p.issued_peak_per_device <= options.rate_burst as usize,
            "{p}"
        );
    }
    // The limit was configured and enforced all along.
    let (refused, asked) = report.limit_probe;
    assert!(
        refused > 0 && refused <= asked,
        "one device asking {asked} times back to back: {refused} refused"
    );
    let raw = report.raw.expect("the raw anchor ran");
    assert_eq!(raw.refused, 0, "the raw clients' pre-signed logins");

    let svg = std::fs::read_to_string(&picture)?;
    assert!(
        svg.starts_with("<svg") && svg.contains("<polyline"),
        "the picture"
    );
    for label in ["all agents start", "broker restart", "signer restart"] {
        assert!(svg.contains(label), "the picture marks {label:?}");
    }
    Ok(())
}
