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

/// #25: 200 gateways enrolled with one-time tokens, certificates of 12 s,
/// renewed at 2/3 ± 10 %: every one renews by itself within the lifetime,
/// no MQTT session drops for it, the signer refuses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_gateways_renew_their_certificates_without_dropping_a_session() -> TestResult {
    support::init();
    let mut options = FleetOptions::new(200);
    options.scenario = Scenario::Renew;
    options.lifetime = Duration::from_secs(12);
    options.phase_timeout = Duration::from_secs(60);
    let report = fleet::run(&options, support::sandbox_binary()).await?;
    eprintln!("{report}");
    let connect = report.phase("connect").expect("the connect phase");
    assert!(connect.all_connected(), "{connect}");
    let renew = report.renew.as_ref().expect("the renew phase ran");
    assert_eq!(renew.renewed, 200, "every gateway renewed: {renew}");
    assert!(renew.time_to_all.is_some(), "{renew}");
    assert_eq!(renew.sessions_dropped, 0, "no session dropped: {renew}");
    assert_eq!(renew.refused, 0, "{renew}");
    assert_eq!(renew.agent_errors, 0, "{renew}");
    assert!(renew.peak_per_second >= 1, "{renew}");
    Ok(())
}

/// #26 item 6, small: `enos-fleet renew --enos-certificates` with 20
/// gateways and `[enos_api] concurrency` 4: every gateway applies, then
/// all renew at once through the `enos-signer` binary to the sandbox's
/// certificate API; none fails, the bound holds, and the figures are
/// measured (the 1,000-gateway figures are docs/benchmarks.md's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_gateways_renew_their_enos_certificates_in_one_wave_within_the_api_bound()
-> TestResult {
    support::init();
    let mut options = FleetOptions::new(20);
    options.scenario = Scenario::Renew;
    options.enos_certificates = true;
    options.enos_api_concurrency = 4;
    options.phase_timeout = Duration::from_secs(60);
    let binaries = fleet::enos_wave::WaveBinaries {
        sandbox: support::sandbox_binary(),
        signer: enos_testkit::binaries::locate(&enos_testkit::binaries::SIGNER)?,
    };
    let figures = fleet::enos_wave::run(&options, &binaries).await?;
    eprintln!("{figures}");
    assert_eq!(figures.renewed, 20, "{figures}");
    assert_eq!(figures.failed(), 0, "{figures}");
    assert_eq!(figures.latencies.len(), 20, "{figures}");
    // One renew exchange with EnOS per gateway (the token is kept from
    // the setup's applies).
    assert_eq!(figures.api_renews, 20, "{figures}");
    assert!(figures.api_seconds > 0.0, "{figures}");
    assert!(figures.rpc_seconds > 0.0, "{figures}");
    assert!(
        (1..=4).contains(&figures.peak_in_flight),
        "the bound held: {figures}"
    );
    assert!(figures.clean(), "{figures}");
    Ok(())
}
