//! The demo: the whole loop on this machine, each step told in plain words
//! as it happens. `cargo xtask demo` builds the binaries and runs
//! `enos-demo`, which calls [`run`]; the suite runs the same binary.
//!
//! The steps: a throwaway PKI; the EnOS sandbox (MQTT and MQTTS); the
//! signer (`enos-signer init`, `serve`, `import` of a gateway and a
//! sub-device bound to it, random secrets); the gateway's local broker;
//! the agent over MQTT (credential, CONNACK, clean stop); the agent over
//! MQTTS with the EnOS certificate it got through the signer (the signer
//! is the sandbox's EnOS certificate API client), the sub-device login, a measurepoint
//! up and its 200 reply back, a command down and its answer up; a clean
//! stop of everything; then the audit trail is read and every log of the
//! run is scanned for the secrets and the issued passwords.

use std::{
    ffi::OsStr,
    io::Write,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant, UNIX_EPOCH},
};

use enos_signer_svc::config::{
    CaConfig, EnosApiConfig, EnosEnvironmentConfig, PolicyConfig, ProductPolicyConfig,
    SubjectTemplate,
};
use enos_testkit::{
    Binaries, ChildProcess,
    sandbox::{Sandbox, SandboxBinary},
};
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::{
    agent::AgentToml,
    devices::{self, TestDevice},
    error::{E2eError, Result},
    leaks::LeakScan,
    local_broker::LocalBroker,
    mqtt::{Login, MqttClient},
    pki::LoopPki,
    signer::{self, AdminEnv, SignerProcess},
};

/// The lifetime of the gateway's certificates: short, so that the demo
/// shows a renewal (the default is 30 days).
const CERTIFICATE_LIFETIME: Duration = Duration::from_secs(20);

/// The agents' `[renewal]`: at a quarter of the lifetime, so that the
/// renewal comes within the demo (the default is 2/3 ± 0.1).
const RENEWAL: &str = "[renewal]\nat = 0.25\njitter = 0.05\n\n";

/// How long any one step may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(20);

/// The EnOS organisation and application the sandbox's certificate API
/// plays (the secret is random per run).
const ENOS_ORG: &str = "o15724268424841";
const ENOS_APP_KEY: &str = "demo-app-key";

/// The gateway's local topics.
const LOCAL_MEASUREPOINTS: &str = "demo/measurepoints";
const LOCAL_MEASUREPOINT_REPLY: &str = "demo/measurepoints/reply";
const LOCAL_COMMANDS: &str = "demo/commands";
const LOCAL_COMMAND_REPLIES: &str = "demo/command-replies";
/// The service the console calls.
const SERVICE: &str = "restart";

/// A step that failed, and why.
#[derive(Debug)]
pub struct StepFailure {
    /// The step, as the narration names it.
    pub step: &'static str,
    /// What went wrong.
    pub reason: E2eError,
}

impl std::fmt::Display for StepFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "step \"{}\" failed: {}", self.step, self.reason)
    }
}

impl std::error::Error for StepFailure {}

/// Tags an error with the step it happened in.
trait InStep<T> {
    fn in_step(self, step: &'static str) -> Result<T, StepFailure>;
}

impl<T, E: Into<E2eError>> InStep<T> for Result<T, E> {
    fn in_step(self, step: &'static str) -> Result<T, StepFailure> {
        self.map_err(|e| StepFailure {
            step,
            reason: e.into(),
        })
    }
}

/// Tells the steps on an output, and keeps what it told (for the scan).
#[derive(Debug)]
pub struct Narrator<W> {
    /// Where the narration goes (stdout in the binary).
    out: W,
    /// When the demo started.
    started: Instant,
    /// Everything told so far.
    told: String,
}

impl<W: Write> Narrator<W> {
    /// A narrator writing to `out`.
    pub fn new(out: W) -> Self {
        Narrator {
            out,
            started: Instant::now(),
            told: String::new(),
        }
    }

    /// Tells one line of `step`.
    pub fn say(&mut self, step: &str, text: impl AsRef<str>) {
        let line = format!(
            "[{:>5.1}s] {step:<13} {}",
            self.started.elapsed().as_secs_f64(),
            text.as_ref()
        );
        // A closed stdout must not stop the demo halfway: keep going, the
        // exit code still tells.
        let _ = writeln!(self.out, "{line}");
        let _ = self.out.flush();
        self.told.push_str(&line);
        self.told.push('\n');
    }

    /// Everything told so far.
    pub fn told(&self) -> &str {
        &self.told
    }

    /// Time since the start.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

/// The devices of the demo.
struct DemoDevices {
    /// The gateway the agent runs on.
    gateway: TestDevice,
    /// A sub-device bound to it.
    sensor: TestDevice,
    /// The password of the sandbox's console login, which plays the
    /// cloud side (devices may only use their own topics).
    console_password: Zeroizing<String>,
    /// A new gateway with no device secret anywhere: it activates itself
    /// (securemode 3) and its pushed secret goes into the signer.
    newcomer: TestDevice,
    /// The secret of the newcomer's product (EnOS's product secret).
    product_secret: Zeroizing<String>,
}

/// The product whose gateways activate themselves in the demo.
const NEW_PRODUCT: &str = "DemoNewGw";

/// The console login's user name on the sandbox.
const CONSOLE_USER: &str = "demo-console";

/// Runs the demo with `binaries`, narrating on `narrator`.
pub async fn run<W: Write>(
    binaries: &Binaries,
    narrator: &mut Narrator<W>,
) -> Result<(), StepFailure> {
    // 1. PKI and devices.
    const PKI: &str = "PKI";
    let state = tempfile::Builder::new()
        .prefix("enos-demo-")
        .tempdir()
        .map_err(E2eError::io("creating the state directory"))
        .in_step(PKI)?;
    let dir = state.path().to_owned();
    let pki = LoopPki::new(&dir.join("pki"), "enos-demo-ca").in_step(PKI)?;
    let gateway = TestDevice::new("DemoGw", "gateway-001").in_step(PKI)?;
    let demo = DemoDevices {
        sensor: TestDevice::new("DemoSensor", "sensor-001")
            .in_step(PKI)?
            .behind(&gateway),
        console_password: devices::random_secret().in_step(PKI)?,
        gateway,
        newcomer: TestDevice::new(NEW_PRODUCT, "newgw-001").in_step(PKI)?,
        product_secret: devices::random_secret().in_step(PKI)?,
    };
    let broker_server = pki.server("broker-server").in_step(PKI)?;
    let admin = pki.admin("demo-admin").in_step(PKI)?;
    narrator.say(
        PKI,
        format!(
            "a throwaway CA in {} issued server certificates (signer, broker) for 127.0.0.1 \
             and an admin certificate; the gateway {} has no certificate yet (it enrolls)",
            dir.display(),
            demo.gateway.id()
        ),
    );

    // 2. The signer, the CA of its devices' certificates.
    const SIGNER: &str = "signer";
    let reservation = enos_sandbox::PortReservation::reserve(SocketAddr::from(([127, 0, 0, 1], 0)))
        .in_step(SIGNER)?;
    let signer_addr = reservation.addr();
    let mut policy = PolicyConfig::default();
    policy.products.insert(
        NEW_PRODUCT.into(),
        ProductPolicyConfig {
            dynamic_activation: true,
            ..Default::default()
        },
    );
    let (mut signer_config, signer_files) =
        signer::write_config(&dir.join("signer"), &pki, signer_addr, policy).in_step(SIGNER)?;
    // The enrollment listener's port, held for the signer as its own.
    let enroll_reservation =
        enos_sandbox::PortReservation::reserve(SocketAddr::from(([127, 0, 0, 1], 0)))
            .in_step(SIGNER)?;
    let enroll_uri = format!("https://{}", enroll_reservation.addr());
    // The sandbox's EnOS certificate API, on a port held for it: the
    // signer is its client and holds the application's API secret.
    let api_reservation =
        enos_sandbox::PortReservation::reserve(SocketAddr::from(([127, 0, 0, 1], 0)))
            .in_step(SIGNER)?;
    let api_addr = api_reservation.addr();
    let enos_app_secret = devices::random_secret().in_step(SIGNER)?;
    let enos_secret_file = dir.join("enos-app.secret");
    enos_testkit::write_private(&enos_secret_file, enos_app_secret.as_bytes())
        .map_err(|e| E2eError::failed(format!("writing the EnOS app secret file: {e}")))
        .in_step(SIGNER)?;
    signer_config.enos_api = Some(EnosApiConfig {
        concurrency: std::num::NonZeroUsize::MIN,
        timeout: Duration::from_secs(10),
        valid_day: 730,
        environments: [(
            "demo".to_owned(),
            EnosEnvironmentConfig {
                gateway_url: format!("http://{api_addr}"),
                org_id: ENOS_ORG.into(),
                credential_file: dir.join("signer").join("enos-api-demo.sealed"),
                ca_file: None,
                products: vec!["*".into()],
            },
        )]
        .into(),
        subject: SubjectTemplate::default(),
        product_subjects: Default::default(),
    });
    let crl_file = dir.join("signer").join("devices.crl");
    signer_config.ca = Some(CaConfig {
        enroll_listen: Some(enroll_reservation.addr()),
        lifetime: CERTIFICATE_LIFETIME,
        crl_file: Some(crl_file.clone()),
        ..CaConfig::default()
    });
    std::fs::write(
        &signer_files.config,
        signer_config.to_toml().in_step(SIGNER)?,
    )
    .map_err(E2eError::io("writing the signer's config"))
    .in_step(SIGNER)?;
    let init_output = signer::init(&binaries.signer, &signer_files.config).in_step(SIGNER)?;
    let device_ca = dir.join("signer").join("device-ca.pem");
    let ca_init_output = run_to_end(
        "enos-signer ca init",
        &binaries.signer,
        &[
            OsStr::new("ca"),
            OsStr::new("init"),
            OsStr::new("--config"),
            signer_files.config.as_os_str(),
            OsStr::new("--out"),
            device_ca.as_os_str(),
        ],
    )
    .in_step(SIGNER)?;
    let credential_output = run_to_end(
        "enos-signer enos-api set-credential",
        &binaries.signer,
        &[
            OsStr::new("enos-api"),
            OsStr::new("set-credential"),
            OsStr::new("--config"),
            signer_files.config.as_os_str(),
            OsStr::new("--environment"),
            OsStr::new("demo"),
            OsStr::new("--access-key"),
            OsStr::new(ENOS_APP_KEY),
            OsStr::new("--secret-file"),
            enos_secret_file.as_os_str(),
        ],
    )
    .in_step(SIGNER)?;
    let mut signer = SignerProcess::new(
        &binaries.signer,
        &signer_files.config,
        signer_addr,
        Some(reservation),
    );
    signer.start().in_step(SIGNER)?;
    narrator.say(
        SIGNER,
        format!(
            "`enos-signer init` created the master key, the audit key and an empty registry; \
             `enos-signer ca init` made the devices' CA, its key sealed by the custody; \
             `enos-signer serve` listens on {} (mTLS only) and enrolls on {enroll_uri} \
             (TLS, one-time tokens); device certificates live {} s here (30 days by default); \
             `enos-signer enos-api set-credential` sealed the EnOS application's API secret \
             (the signer is the only EnOS API client, at http://{api_addr})",
            signer.uri(),
            CERTIFICATE_LIFETIME.as_secs()
        ),
    );

    // 3. The EnOS sandbox: EnOS knows the gateway and the sensor; the
    // console login plays the cloud. Its MQTTS listener trusts the
    // signer's device CA and follows the signer's CRL.
    const SANDBOX: &str = "EnOS sandbox";
    let enos_devices = dir.join("enos-devices.csv");
    devices::write_sandbox_csv(
        &enos_devices,
        &[&demo.gateway, &demo.sensor],
        &[&demo.newcomer],
        &[(NEW_PRODUCT, demo.product_secret.as_str())],
    )
    .in_step(SANDBOX)?;
    let console_password_file = dir.join("console.secret");
    enos_testkit::write_private(&console_password_file, demo.console_password.as_bytes())
        .map_err(|e| E2eError::failed(format!("writing the console password file: {e}")))
        .in_step(SANDBOX)?;
    let trusted = dir.join("enos-trusted-cas.pem");
    let bundle = [&pki.ca, &device_ca]
        .iter()
        .map(|p| {
            std::fs::read_to_string(p).map_err(E2eError::io(format!("reading {}", p.display())))
        })
        .collect::<Result<Vec<_>>>()
        .in_step(SANDBOX)?
        .concat();
    std::fs::write(&trusted, bundle)
        .map_err(E2eError::io("writing the sandbox's CA bundle"))
        .in_step(SANDBOX)?;
    // The signer writes its CRL as it starts.
    wait_for_file(&crl_file).await.in_step(SANDBOX)?;
    let sandbox_config = dir.join("sandbox.toml");
    std::fs::write(
        &sandbox_config,
        format!(
            "[enos_api]\nlisten = \"{api_addr}\"\norg_id = \"{ENOS_ORG}\"\napp_key = \"{ENOS_APP_KEY}\"\n\
             app_secret_file = {:?}\nstate_dir = {:?}\n",
            enos_secret_file.display().to_string(),
            dir.join("enos-ca").display().to_string(),
        ),
    )
    .map_err(E2eError::io("writing the sandbox's config"))
    .in_step(SANDBOX)?;
    // The port goes to the sandbox now.
    drop(api_reservation);
    let mut sandbox = Sandbox::builder(SandboxBinary::at(&binaries.sandbox), &enos_devices)
        .config(&sandbox_config)
        .tls(&trusted, &broker_server.cert, &broker_server.key)
        .tls_crl(&crl_file)
        .console(CONSOLE_USER, &console_password_file)
        .start()
        .in_step(SANDBOX)?;
    let tls_addr = sandbox
        .tls_addr()
        .ok_or_else(|| E2eError::failed("the sandbox has no TLS listener"))
        .in_step(SANDBOX)?;
    narrator.say(
        SANDBOX,
        format!(
            "EnOS-compatible broker listening: MQTT {} and MQTTS {} (client certificate of the \
             device required: from the sandbox's EnOS CA, bound to its device by serial, or from \
             the signer's CA, checked against the signer's CRL), and EnOS's certificate API on \
             http://{api_addr}; it knows 3 devices (one awaiting dynamic activation), checks every \
             signed login, keeps each device to its own topics, and has a console login for the \
             cloud's side",
            sandbox.mqtt_addr(),
            tls_addr
        ),
    );

    // 4. The registry: an EnOS console export, imported all or nothing.
    const REGISTRY: &str = "registry";
    let import_csv = dir.join("console-export.csv");
    devices::write_csv(&import_csv, &[&demo.gateway, &demo.sensor]).in_step(REGISTRY)?;
    let admin_env = AdminEnv {
        endpoint: signer.uri(),
        ca: pki.ca.clone(),
        cert: admin.cert.clone(),
        key: admin.key.clone(),
    };
    let import_output = admin_env
        .run(
            &binaries.signer,
            &[OsStr::new("import"), import_csv.as_os_str()],
        )
        .in_step(REGISTRY)?;
    if !import_output.contains("imported 2 devices") {
        return Err(E2eError::failed(format!(
            "the import did not report 2 devices:\n{import_output}"
        )))
        .in_step(REGISTRY);
    }
    // The secrets now live in the signer, sealed; the export goes.
    std::fs::remove_file(&import_csv)
        .map_err(E2eError::io("removing the console export"))
        .in_step(REGISTRY)?;
    narrator.say(
        REGISTRY,
        format!(
            "`enos-signer import` took an EnOS console export: gateway {} and sub-device {} \
             bound to it (secrets random, sealed by the signer, never shown)",
            demo.gateway.id(),
            demo.sensor.id()
        ),
    );

    // 5. Enrollment: the gateway gets its first certificate for a
    // one-time token; its key never leaves it.
    const ENROLL: &str = "enrollment";
    let token_output = admin_env
        .run(
            &binaries.signer,
            &[
                OsStr::new("enroll-token"),
                OsStr::new(&demo.gateway.product_key),
                OsStr::new(&demo.gateway.device_key),
            ],
        )
        .in_step(ENROLL)?;
    let token = token_output
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("enr1_"))
        .map(|l| Zeroizing::new(l.to_owned()))
        .ok_or_else(|| E2eError::failed("`enos-signer enroll-token` printed no token"))
        .in_step(ENROLL)?;
    let token_file = dir.join("gateway-001.token");
    enos_testkit::write_private(&token_file, token.as_bytes())
        .map_err(|e| E2eError::failed(format!("writing the token file: {e}")))
        .in_step(ENROLL)?;
    let gateway_dir = dir.join("gateway");
    std::fs::create_dir_all(&gateway_dir)
        .map_err(E2eError::io("creating the gateway's directory"))
        .in_step(ENROLL)?;
    let gateway_files = (
        gateway_dir.join("device.pem"),
        gateway_dir.join("device.key"),
    );
    let mut enroll_toml = AgentToml::new(
        &demo.gateway,
        &signer.uri(),
        &pki.ca,
        gateway_files.clone(),
        format!("tcp://{}", sandbox.mqtt_addr()),
    );
    enroll_toml.extra = RENEWAL.into();
    let enroll_config = dir.join("agent-enroll.toml");
    enroll_toml.write(&enroll_config).in_step(ENROLL)?;
    let enroll_output = run_to_end(
        "enos-agent enroll",
        &binaries.agent,
        &[
            OsStr::new("enroll"),
            OsStr::new("--config"),
            enroll_config.as_os_str(),
            OsStr::new("--signer"),
            OsStr::new(&enroll_uri),
            OsStr::new("--ca"),
            pki.ca.as_os_str(),
            OsStr::new("--token-file"),
            token_file.as_os_str(),
        ],
    )
    .in_step(ENROLL)?;
    let enrolled = enroll_output
        .lines()
        .find(|l| l.starts_with("enrolled "))
        .unwrap_or("enrolled")
        .to_owned();
    narrator.say(
        ENROLL,
        format!(
            "`enos-signer enroll-token` made a one-time token for {} (the signer keeps only its \
             hash); `enos-agent enroll` made a P-256 key on the gateway, sent a certificate \
             request over TLS with the token and wrote what the signer's CA issued: {enrolled}",
            demo.gateway.id()
        ),
    );

    // 6. The gateway's local broker, the local application and the console.
    const LOCAL: &str = "local broker";
    let local = LocalBroker::start().in_step(LOCAL)?;
    let mut app = MqttClient::connect(
        local.addr(),
        &Login {
            client_id: "demo-local-app".into(),
            ..Login::default()
        },
        STEP_TIMEOUT,
    )
    .await
    .in_step(LOCAL)?;
    app.subscribe(LOCAL_MEASUREPOINT_REPLY, STEP_TIMEOUT)
        .await
        .in_step(LOCAL)?;
    app.subscribe(&format!("{LOCAL_COMMANDS}/#"), STEP_TIMEOUT)
        .await
        .in_step(LOCAL)?;
    narrator.say(
        LOCAL,
        format!(
            "the gateway's local MQTT broker listens on {}; a local application is connected",
            local.addr()
        ),
    );

    // 7. The agent over plain MQTT.
    const MQTT: &str = "agent MQTT";
    let mut mqtt_toml = AgentToml::new(
        &demo.gateway,
        &signer.uri(),
        &pki.ca,
        gateway_files.clone(),
        format!("tcp://{}", sandbox.mqtt_addr()),
    );
    mqtt_toml.status_file = Some(dir.join("agent-mqtt-status.json"));
    mqtt_toml.extra = RENEWAL.into();
    let mut agent_logs = Vec::new();
    let mark = sandbox.logs().len();
    let mut agent = start_agent(binaries, &dir, "agent-mqtt", &mqtt_toml).in_step(MQTT)?;
    let status = wait_status(&mqtt_toml, &mut agent, "a credential", |s| {
        s["credentials_issued"].as_u64() >= Some(1)
    })
    .await
    .in_step(MQTT)?;
    narrator.say(MQTT, credential_words(&demo.gateway, &status));
    wait_status(&mqtt_toml, &mut agent, "the MQTT connection", |s| {
        s["state"] == "connected"
    })
    .await
    .in_step(MQTT)?;
    wait_sandbox(
        &sandbox,
        mark,
        &["accepted MQTT CONNECT", "enos-mqtt\"", &demo.gateway.id()],
    )
    .await
    .in_step(MQTT)?;
    narrator.say(
        MQTT,
        format!(
            "MQTT connected to tcp://{}: the sandbox checked the signed login and sent CONNACK",
            sandbox.mqtt_addr()
        ),
    );
    let exit = agent.terminate(STEP_TIMEOUT).in_step(MQTT)?;
    agent_logs.push(agent.log().text());
    if !exit.success() {
        return Err(E2eError::failed(format!("the agent exited with {exit}"))).in_step(MQTT);
    }
    narrator.say(
        MQTT,
        "agent stopped on SIGTERM: MQTT DISCONNECT sent, exit 0",
    );

    // 8. The agent over MQTTS, with the bridge and the sub-device.
    const MQTTS: &str = "agent MQTTS";
    let mut toml = AgentToml::new(
        &demo.gateway,
        &signer.uri(),
        &pki.ca,
        gateway_files,
        format!("ssl://{tls_addr}"),
    );
    toml.broker_ca = Some(pki.ca.clone());
    // The EnOS certificate: none on the gateway; the agent gets it
    // through the signer before its first MQTTS connect.
    toml.enos_cert = Some((dir.join("enos-device.pem"), dir.join("enos-device.key")));
    toml.status_file = Some(dir.join("agent-mqtts-status.json"));
    toml.sub_devices = vec![(
        demo.sensor.product_key.clone(),
        demo.sensor.device_key.clone(),
    )];
    toml.extra = format!(
        "{RENEWAL}[bridge]\nlocal_broker = \"tcp://{}\"\nclient_id = \"demo-agent-bridge\"\n\n\
         [[bridge.upstream]]\nlocal = \"{LOCAL_MEASUREPOINTS}\"\ntarget = \"measurepoint-post\"\n\
         reply_to = \"{LOCAL_MEASUREPOINT_REPLY}\"\nqos = 1\n\n\
         [bridge.downstream]\nlocal_prefix = \"{LOCAL_COMMANDS}\"\n\
         local_reply_prefix = \"{LOCAL_COMMAND_REPLIES}\"\n",
        local.addr()
    );
    let mark = sandbox.logs().len();
    let mut agent = start_agent(binaries, &dir, "agent-mqtts", &toml).in_step(MQTTS)?;
    let status = wait_status(&toml, &mut agent, "a credential", |s| {
        s["credentials_issued"].as_u64() >= Some(1)
    })
    .await
    .in_step(MQTTS)?;
    narrator.say(MQTTS, credential_words(&demo.gateway, &status));
    wait_status(&toml, &mut agent, "the MQTTS connection", |s| {
        s["state"] == "connected"
    })
    .await
    .in_step(MQTTS)?;
    wait_sandbox(
        &sandbox,
        mark,
        &["accepted MQTT CONNECT", "enos-mqtts\"", &demo.gateway.id()],
    )
    .await
    .in_step(MQTTS)?;
    let connected = wait_status(&toml, &mut agent, "the EnOS certificate", |s| {
        s["enos_certificate"]["serial"].is_string()
    })
    .await
    .in_step(MQTTS)?;
    narrator.say(
        MQTTS,
        format!(
            "the gateway had no EnOS certificate: the agent made a P-256 key, asked the signer for \
             the subject and sent its CSR; the signer applied to EnOS's certificate API with the \
             secret it alone holds, and EnOS (the sandbox) issued certSN {} for {}. MQTTS connected \
             to ssl://{tls_addr} with it: the TLS listener verified it against the EnOS CA and its \
             serial's binding to the gateway, then the signed login",
            connected["enos_certificate"]["serial"].as_str().unwrap_or("?"),
            demo.gateway.id()
        ),
    );

    // The certificate renews itself, under the live session.
    const RENEW: &str = "renewal";
    let renewed = wait_status(&toml, &mut agent, "a certificate renewal", |s| {
        s["certificate"]["renewals"].as_u64() >= Some(1)
    })
    .await
    .in_step(RENEW)?;
    let not_after = renewed["certificate"]["not_after_ms"]
        .as_u64()
        .map(|ms| {
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
        })
        .unwrap_or_default();
    narrator.say(
        RENEW,
        format!(
            "the agent renewed its signer certificate by itself at a quarter of its {} s lifetime \
             (2/3 by default): a new key made on the gateway, a certificate valid until {not_after}, \
             proven with a handshake before it replaced the old pair; the MQTTS session, on its EnOS \
             certificate, stayed up ({} connect)",
            CERTIFICATE_LIFETIME.as_secs(),
            renewed["connects"]
        ),
    );

    // 9. The sub-device.
    const SUB: &str = "sub-device";
    wait_status(&toml, &mut agent, "the sub-device login", |s| {
        s["sub_devices"][0]["state"] == "online"
    })
    .await
    .in_step(SUB)?;
    wait_sandbox(
        &sandbox,
        mark,
        // The sandbox names the gateway whose topic carried the login.
        &[
            "answered request",
            "combine.login",
            &demo.gateway.id(),
            "code=200",
        ],
    )
    .await
    .in_step(SUB)?;
    narrator.say(
        SUB,
        format!(
            "{} logged in through the gateway: the signer signed its combine.login, \
             the sandbox answered 200",
            demo.sensor.id()
        ),
    );

    // 10. A measurepoint up, its reply down.
    const MEASUREPOINT: &str = "measurepoint";
    let reply = post_measurepoint(&mut app).await.in_step(MEASUREPOINT)?;
    narrator.say(
        MEASUREPOINT,
        format!(
            "posted {{\"temperature\":21.5}} on the local topic {LOCAL_MEASUREPOINTS}; the agent sent it to \
             /sys/{}/{}/thing/measurepoint/post and the reply came back: code {}",
            demo.gateway.product_key, demo.gateway.device_key, reply["code"]
        ),
    );

    // 11. A command down, its answer up.
    const COMMAND: &str = "command";
    let mut console = MqttClient::connect(
        sandbox.mqtt_addr(),
        &Login {
            client_id: "demo-console".into(),
            credentials: Some((CONSOLE_USER.into(), demo.console_password.to_string())),
            tls: None,
        },
        STEP_TIMEOUT,
    )
    .await
    .in_step(COMMAND)?;
    let service_topic = format!(
        "/sys/{}/{}/thing/service/{SERVICE}",
        demo.gateway.product_key, demo.gateway.device_key
    );
    let reply_topic = format!("{service_topic}_reply");
    console
        .subscribe(&reply_topic, STEP_TIMEOUT)
        .await
        .in_step(COMMAND)?;
    let call = json!({
        "id": "demo-1",
        "version": "1.0",
        "method": format!("thing.service.{SERVICE}"),
        "params": {"delaySeconds": 1}
    });
    console
        .publish(&service_topic, call.to_string())
        .await
        .in_step(COMMAND)?;
    let local_topic = format!("{LOCAL_COMMANDS}/{SERVICE}");
    let delivered = app
        .recv_on(&local_topic, STEP_TIMEOUT)
        .await
        .ok_or_else(|| E2eError::failed(format!("the command did not arrive on {local_topic}")))
        .in_step(COMMAND)?;
    let delivered: Value = serde_json::from_slice(&delivered)
        .map_err(|e| E2eError::failed(format!("the delivered command is not JSON: {e}")))
        .in_step(COMMAND)?;
    narrator.say(
        COMMAND,
        format!(
            "the console called {service_topic}; the agent delivered it to the local topic \
             {local_topic} (id {})",
            delivered["id"].as_str().unwrap_or("?")
        ),
    );
    let answer = json!({"id": delivered["id"], "code": 200, "data": {"restarting": true}});
    app.publish(
        &format!("{LOCAL_COMMAND_REPLIES}/{SERVICE}"),
        answer.to_string(),
    )
    .await
    .in_step(COMMAND)?;
    let answered = console
        .recv_on(&reply_topic, STEP_TIMEOUT)
        .await
        .ok_or_else(|| E2eError::failed(format!("no answer on {reply_topic}")))
        .in_step(COMMAND)?;
    let answered: Value = serde_json::from_slice(&answered)
        .map_err(|e| E2eError::failed(format!("the answer is not JSON: {e}")))
        .in_step(COMMAND)?;
    if answered["id"] != "demo-1" || answered["code"] != 200 {
        return Err(E2eError::failed(format!("unexpected answer {answered}"))).in_step(COMMAND);
    }
    narrator.say(
        COMMAND,
        format!("answered: the console received {reply_topic} with code 200 for id demo-1"),
    );

    // 12. A new gateway with no device secret anywhere activates itself.
    const ACTIVATION: &str = "activation";
    let product_secret_file = dir.join("product.secret");
    enos_testkit::write_private(&product_secret_file, demo.product_secret.as_bytes())
        .map_err(|e| E2eError::failed(format!("writing the product secret file: {e}")))
        .in_step(ACTIVATION)?;
    let product_output = admin_env
        .run(
            &binaries.signer,
            &[
                OsStr::new("put-product-secret"),
                OsStr::new(NEW_PRODUCT),
                OsStr::new("--secret-file"),
                product_secret_file.as_os_str(),
            ],
        )
        .in_step(ACTIVATION)?;
    std::fs::remove_file(&product_secret_file)
        .map_err(E2eError::io("removing the product secret file"))
        .in_step(ACTIVATION)?;
    let await_output = admin_env
        .run(
            &binaries.signer,
            &[
                OsStr::new("await-activation"),
                OsStr::new(&demo.newcomer.product_key),
                OsStr::new(&demo.newcomer.device_key),
            ],
        )
        .in_step(ACTIVATION)?;
    let (newcomer_cert, _) = pki.device(&demo.newcomer).in_step(ACTIVATION)?;
    let mut newcomer_toml = AgentToml::new(
        &demo.newcomer,
        &signer.uri(),
        &pki.ca,
        (newcomer_cert.cert.clone(), newcomer_cert.key.clone()),
        format!("tcp://{}", sandbox.mqtt_addr()),
    );
    newcomer_toml.status_file = Some(dir.join("agent-newcomer-status.json"));
    let mut newcomer =
        start_agent(binaries, &dir, "agent-newcomer", &newcomer_toml).in_step(ACTIVATION)?;
    wait_status(
        &newcomer_toml,
        &mut newcomer,
        "the activation and the securemode=2 reconnect",
        |s| s["activation"] == "activated" && s["state"] == "connected",
    )
    .await
    .in_step(ACTIVATION)?;
    let newcomer_status = std::fs::read_to_string(dir.join("agent-newcomer-status.json"))
        .map_err(E2eError::io("reading the newcomer's status"))
        .in_step(ACTIVATION)?;
    let exit = newcomer.terminate(STEP_TIMEOUT).in_step(ACTIVATION)?;
    let newcomer_log = newcomer.log().text();
    if !exit.success() {
        return Err(E2eError::failed(format!("the agent exited with {exit}"))).in_step(ACTIVATION);
    }
    narrator.say(
        ACTIVATION,
        format!(
            "{} had no device secret anywhere: the signer issued it a securemode=3 credential \
             signed with the product secret of {NEW_PRODUCT}; the sandbox pushed a new device \
             secret on /ext/session/{}/thing/activate/info; the agent handed it to the signer \
             (sealed, audited), answered 200 and reconnected with securemode=2",
            demo.newcomer.id(),
            demo.newcomer.id()
        ),
    );

    // 13. Stop everything.
    const STOP: &str = "stop";
    console.disconnect().await;
    app.disconnect().await;
    let exit = agent.terminate(STEP_TIMEOUT).in_step(STOP)?;
    agent_logs.push(agent.log().text());
    if !exit.success() {
        return Err(E2eError::failed(format!("the agent exited with {exit}"))).in_step(STOP);
    }
    let exit = signer.stop().in_step(STOP)?;
    if !exit.success() {
        return Err(E2eError::failed(format!("the signer exited with {exit}"))).in_step(STOP);
    }
    sandbox.stop().in_step(STOP)?;
    narrator.say(
        STOP,
        "agent (exit 0), signer (drained, exit 0) and sandbox stopped; no process left",
    );

    // 14. The audit trail, and every log of the run scanned.
    const AUDIT: &str = "audit";
    let mut scan = LeakScan::new();
    scan.devices([&demo.gateway, &demo.sensor]);
    scan.other("the console password", &demo.console_password);
    scan.other("the product secret", &demo.product_secret);
    scan.other("the EnOS API secret", &enos_app_secret);
    scan.other("the enrollment token", &token);
    let pushed = signer::device_secret_in_custody(&signer_files, &demo.newcomer)
        .await
        .in_step(AUDIT)?;
    scan.other("the pushed device secret", &pushed);
    // The newcomer's passwords: first signed with the product secret
    // (securemode 3), then with the pushed one.
    scan.old_secret(&demo.newcomer, &demo.product_secret);
    scan.old_secret(&demo.newcomer, &pushed);
    // No file the run left holds the pushed secret (the device files hold
    // the others: they are EnOS's view and the console export).
    let mut pushed_only = LeakScan::new();
    pushed_only.other("the pushed device secret", &pushed);
    for file in devices::files_under(&dir) {
        let bytes = std::fs::read(&file).unwrap_or_default();
        pushed_only
            .scan(
                &file.display().to_string(),
                &String::from_utf8_lossy(&bytes),
            )
            .in_step(AUDIT)?;
    }
    for key in [&signer_files.master_key, &signer_files.audit_key] {
        let text = std::fs::read_to_string(key)
            .map_err(E2eError::io(format!("reading {}", key.display())))
            .in_step(AUDIT)?;
        scan.other(&format!("the key in {}", key.display()), text.trim());
    }
    let summary = scan
        .audit_trail(&signer_files.audit_file, &signer_files.audit_key)
        .in_step(AUDIT)?;
    let logs: Vec<(&str, String)> = vec![
        ("the sandbox's log", sandbox.logs()),
        ("the signer's log", signer.logs()),
        ("enos-signer init", init_output),
        ("enos-signer ca init", ca_init_output),
        ("enos-signer enos-api set-credential", credential_output),
        ("enos-agent enroll", enroll_output),
        ("enos-signer import", import_output),
        ("enos-signer put-product-secret", product_output),
        ("enos-signer await-activation", await_output),
        ("the agent's log (activation)", newcomer_log),
        ("the newcomer's status file", newcomer_status),
        ("the agent's log (MQTT)", agent_logs[0].clone()),
        ("the agent's log (MQTTS)", agent_logs[1].clone()),
        ("this narration", narrator.told().to_owned()),
    ];
    let lines: usize = logs.iter().map(|(_, text)| text.lines().count()).sum();
    for (source, text) in &logs {
        scan.scan(source, text).in_step(AUDIT)?;
    }
    let refused: usize = summary.refused.values().sum();
    narrator.say(
        AUDIT,
        format!(
            "the signer's audit trail records {} issuances and {refused} refusals; \
             none of the 2 secrets, the product secret, the EnOS API secret, the pushed device secret, the console password, \
             the {} issued passwords (recomputed and matched against their audit HMACs) or the signer's keys \
             appears in the {lines} log lines of the run or in any file it left",
            summary.issued,
            scan.password_count()
        ),
    );
    drop(state);
    Ok(())
}

/// Runs `binary` with `args` to its end; its output, or why it failed.
fn run_to_end(name: &str, binary: &Path, args: &[&OsStr]) -> Result<String> {
    let (status, output) =
        enos_testkit::process::run_to_end(name, binary, args, &[], STEP_TIMEOUT)?;
    if status.success() {
        Ok(output)
    } else {
        Err(E2eError::failed(format!(
            "`{name}` failed ({status}):\n{output}"
        )))
    }
}

/// Waits until `path` exists (at most [`STEP_TIMEOUT`]).
async fn wait_for_file(path: &Path) -> Result<()> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    while !path.exists() {
        if Instant::now() > deadline {
            return Err(E2eError::failed(format!(
                "{} did not appear within {STEP_TIMEOUT:?}",
                path.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Starts `enos-agent run` with `toml` written to `dir/name.toml`.
fn start_agent(
    binaries: &Binaries,
    dir: &Path,
    name: &str,
    toml: &AgentToml,
) -> Result<ChildProcess> {
    let path = dir.join(format!("{name}.toml"));
    toml.write(&path)?;
    Ok(ChildProcess::spawn(
        name,
        &binaries.agent,
        [OsStr::new("run"), OsStr::new("--config"), path.as_os_str()],
        &[("RUST_LOG", OsStr::new("debug"))],
    )?)
}

/// Polls the agent's status file until `pred` holds.
async fn wait_status(
    toml: &AgentToml,
    agent: &mut ChildProcess,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let path: PathBuf = toml
        .status_file
        .clone()
        .ok_or_else(|| E2eError::failed("the agent has no status file"))?;
    let deadline = Instant::now() + STEP_TIMEOUT;
    let mut last = Value::Null;
    loop {
        if let Ok(text) = std::fs::read_to_string(&path) {
            if let Ok(status) = serde_json::from_str::<Value>(&text) {
                if pred(&status) {
                    return Ok(status);
                }
                last = status;
            }
        }
        if !agent.is_running() {
            return Err(E2eError::failed(format!(
                "the agent exited while waiting for {what}; its last lines:\n{}",
                agent.log().tail(15)
            )));
        }
        if Instant::now() > deadline {
            return Err(E2eError::failed(format!(
                "no {what} within {STEP_TIMEOUT:?}; the agent's last error: {}; its last lines:\n{}",
                last["last_error"],
                agent.log().tail(15)
            )));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits for a sandbox log line (after `mark`) containing every part.
///
/// `mark` is the length of the sandbox's log before the step began: the
/// log only grows, so what follows it is what the step caused.
async fn wait_sandbox(sandbox: &Sandbox, mark: usize, parts: &[&str]) -> Result<()> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        let seen = sandbox.logs().get(mark..).is_some_and(|new| {
            new.lines()
                .any(|line| parts.iter().all(|p| line.contains(p)))
        });
        if seen {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(E2eError::failed(format!(
                "the sandbox did not log a line with {parts:?} within {STEP_TIMEOUT:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// "credential issued …, expires …" from an agent status.
fn credential_words(device: &TestDevice, status: &Value) -> String {
    match status["credential_expires_at_ms"].as_u64() {
        Some(ms) => {
            let at = UNIX_EPOCH + Duration::from_millis(ms);
            let left = ms.saturating_sub(enos_agent::now_ms()) / 1000;
            format!(
                "the signer issued a credential for {} over mTLS, valid until {} (in {left} s); \
                 the password is not shown",
                device.id(),
                humantime::format_rfc3339_seconds(at)
            )
        }
        None => format!(
            "the signer issued a credential for {} (no expiry given); the password is not shown",
            device.id()
        ),
    }
}

/// Publishes a measurepoint locally until its reply arrives (the agent's
/// local subscription may still be on its way when the first one goes).
async fn post_measurepoint(app: &mut MqttClient) -> Result<Value> {
    for _ in 0..5 {
        app.publish(LOCAL_MEASUREPOINTS, r#"{"temperature":21.5}"#)
            .await?;
        if let Some(reply) = app
            .recv_on(LOCAL_MEASUREPOINT_REPLY, Duration::from_secs(2))
            .await
        {
            let reply: Value = serde_json::from_slice(&reply)
                .map_err(|e| E2eError::failed(format!("the reply is not JSON: {e}")))?;
            if reply["code"] != 200 {
                return Err(E2eError::failed(format!(
                    "the measurepoint was answered {reply}"
                )));
            }
            return Ok(reply);
        }
    }
    Err(E2eError::failed(format!(
        "no reply on {LOCAL_MEASUREPOINT_REPLY} after 5 posts"
    )))
}
