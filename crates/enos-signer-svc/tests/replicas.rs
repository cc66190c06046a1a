//! Stateless replicas: three real `enos-signer serve` processes with the
//! same config on one PostgreSQL database. A change made through replica A
//! (rotate, disable, delete, unbind) is honoured by replicas B and C within
//! a second, also after their change feed connections were cut. An import
//! killed mid-transaction leaves no row; an older schema is refused until
//! `registry migrate`. A database outage answers UNAVAILABLE, and the
//! replica serves again once the database is back. With `[ca]` (#25): one
//! enrollment token given to two replicas at once enrolls exactly once,
//! and a certificate revoked through one replica is refused by another at
//! once, on its open connection and on a new one.

mod common;

use std::{
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use enos_postgres_fixture::PgCluster;
use enos_registry::postgres::{LISTEN_APPLICATION_NAME, PostgresConfig, migrations};
use enos_signer_proto::v1::{
    self, BindSubDeviceRequest, DeviceRef, IssueMqttCredentialRequest, ListDevicesRequest,
    PutDeviceRequest, RotateSecretRequest, SetEnabledRequest, SignSubDeviceLoginRequest,
    UnbindSubDeviceRequest, admin_client::AdminClient, credentials_client::CredentialsClient,
};
use enos_signer_svc::{SignerConfig, client, config::RegistryConfig};
use enos_testkit::signer::{server_config, state_in};
use enos_testkit::{Identity, Pki};
use tonic::{Code, transport::Channel};

const BIN: &str = env!("CARGO_BIN_EXE_enos-signer");

/// One `enos-signer serve` child; killed on drop.
struct Replica {
    /// The process.
    child: Child,
    /// Its gRPC address.
    addr: SocketAddr,
    /// Its enrollment address, with `[ca]`.
    enroll: Option<SocketAddr>,
}

impl Replica {
    fn uri(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// SIGKILL, as a crash.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

/// A fleet of replicas on one throwaway database, sharing keys.
struct Fleet {
    /// Issues the replicas' server certificate and every client's.
    pki: Pki,
    /// The one database every replica serves.
    cluster: PgCluster,
    /// Shared keys (same custody on every replica), configs, logs.
    dir: tempfile::TempDir,
    /// The admin certificate of the fleet's operator.
    admin: Identity,
    /// Whether the replicas are the devices' CA (`[ca]`).
    ca: bool,
}

impl Fleet {
    fn new(database: &str) -> Fleet {
        Self::create(database, false)
    }

    /// A fleet whose replicas are their devices' CA, made by `ca init`.
    fn with_ca(database: &str) -> Fleet {
        let fleet = Self::create(database, true);
        let (config, _) = fleet.write_config("ca-init", free_addr(), database);
        let out = Command::new(BIN)
            .args(["ca", "init", "--config"])
            .arg(&config)
            .arg("--out")
            .arg(fleet.dir.path().join("device-ca.pem"))
            .output()
            .expect("run ca init");
        assert!(
            out.status.success(),
            "ca init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        fleet
    }

    fn create(database: &str, ca: bool) -> Fleet {
        let cluster = PgCluster::start().expect("PostgreSQL cluster");
        cluster.create_database(database).expect("createdb");
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = Pki::new("replicas-test").expect("pki");
        let admin = pki.admin("fleet-admin").expect("admin cert");
        let fleet = Fleet {
            pki,
            cluster,
            dir,
            admin,
            ca,
        };
        // `init` once: keys in the shared directory, the schema migrated.
        let (config, _) = fleet.write_config("init", free_addr(), database);
        let out = Command::new(BIN)
            .args(["init", "--config"])
            .arg(&config)
            .output()
            .expect("run init");
        assert!(
            out.status.success(),
            "init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains(&format!(
                "postgres://enos@127.0.0.1:{}/{database}: schema at version",
                fleet.cluster.port()
            )),
            "{stdout}"
        );
        fleet
    }

    /// The config of replica `name`: the shared keys and database, its own
    /// listen address and audit file.
    fn write_config(
        &self,
        name: &str,
        listen: SocketAddr,
        database: &str,
    ) -> (PathBuf, Option<SocketAddr>) {
        let dir = self.dir.path();
        let server = self.pki.server(&[]).expect("server cert");
        let files = server.write(dir, "server").expect("write server cert");
        let ca = self.pki.write_ca(dir).expect("write ca");
        let mut server = server_config(listen, files.cert, files.key, ca);
        server.drain_timeout = Duration::from_secs(1);
        server.worker_threads = std::num::NonZeroUsize::new(2);
        let mut config: SignerConfig = state_in(dir, server);
        config.registry = RegistryConfig::Postgres(PostgresConfig {
            url: self.cluster.url(database),
            password_file: Some(self.cluster.password_file()),
            pool_size: 8,
            ca_file: None,
            cache: true,
            allow_plaintext_password: false,
        });
        config.audit.sink = enos_signer_svc::config::AuditSinkConfig::File {
            path: dir.join(format!("audit-{name}.jsonl")),
        };
        let enroll = self.ca.then(free_addr);
        if self.ca {
            config.ca = Some(enos_signer_svc::config::CaConfig {
                enroll_listen: enroll,
                ..Default::default()
            });
        }
        let path = dir.join(format!("signer-{name}.toml"));
        std::fs::write(&path, config.to_toml().expect("toml")).expect("write config");
        (path, enroll)
    }

    /// Starts replica `name` and waits until it answers.
    async fn start(&self, name: &str, database: &str) -> Replica {
        let addr = free_addr();
        let (config, enroll) = self.write_config(name, addr, database);
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log"))).expect("log");
        let child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn enos-signer serve");
        let replica = Replica {
            child,
            addr,
            enroll,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut admin = self.admin_of(&replica).await;
            if admin
                .list_devices(ListDevicesRequest::default())
                .await
                .is_ok()
            {
                return replica;
            }
            assert!(
                Instant::now() < deadline,
                "replica {name} did not start: {}",
                std::fs::read_to_string(self.dir.path().join(format!("{name}.log")))
                    .unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn channel(&self, replica: &Replica, identity: &Identity) -> Channel {
        client::mtls_endpoint(
            &replica.uri(),
            self.pki.ca_pem(),
            Some(tonic::transport::Identity::from_pem(
                &identity.cert_pem,
                &identity.key_pem,
            )),
        )
        .expect("endpoint")
        .connect_lazy()
    }

    async fn admin_of(&self, replica: &Replica) -> AdminClient<Channel> {
        AdminClient::new(self.channel(replica, &self.admin))
    }

    fn device_of(&self, replica: &Replica, pk: &str, dk: &str) -> CredentialsClient<Channel> {
        let identity = self.pki.device(pk, dk).expect("device cert");
        CredentialsClient::new(self.channel(replica, &identity))
    }

    /// Connections listening for registry changes (one per replica whose
    /// feed is up).
    fn feeds(&self, database: &str) -> usize {
        self.cluster
            .psql(
                database,
                &format!(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{LISTEN_APPLICATION_NAME}'"
                ),
            )
            .expect("psql")
            .parse()
            .expect("count")
    }

    /// Cuts every change feed connection (as a network blip would).
    fn cut_feeds(&self, database: &str) -> usize {
        self.cluster
            .psql(
                database,
                &format!(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                     WHERE application_name = '{LISTEN_APPLICATION_NAME}'"
                ),
            )
            .expect("psql")
            .parse()
            .expect("count")
    }
}

fn dref(pk: &str, dk: &str) -> Option<DeviceRef> {
    Some(DeviceRef {
        product_key: pk.into(),
        device_key: dk.into(),
    })
}

/// Polls `check` until it holds, at most `within`; returns how long it took.
async fn within(limit: Duration, what: &str, mut check: impl AsyncFnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    started.elapsed()
}

async fn issue(device: &mut CredentialsClient<Channel>) -> Result<v1::MqttCredential, Code> {
    device
        .issue_mqtt_credential(IssueMqttCredentialRequest::default())
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| s.code())
}

/// Waits for `n` change feeds (the replicas have each served a read).
async fn feeds_up(fleet: &Fleet, database: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while fleet.feeds(database) != n {
        assert!(Instant::now() < deadline, "{n} change feeds not up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // LISTEN is issued right after connecting.
    tokio::time::sleep(Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_through_one_replica_are_honoured_by_the_others_within_a_second() {
    let db = "replicas";
    let fleet = Fleet::new(db);
    let a = fleet.start("a", db).await;
    let b = fleet.start("b", db).await;
    let c = fleet.start("c", db).await;
    let mut admin_a = fleet.admin_of(&a).await;
    for (dk, secret) in [
        ("dev-1", "SecretOne1"),
        ("gw", "SecretGw1"),
        ("sub", "SecretSub1"),
    ] {
        admin_a
            .put_device(PutDeviceRequest {
                device: dref("Pk1", dk),
                device_secret: secret.into(),
                enabled: true,
                awaiting_activation: false,
            })
            .await
            .expect("put through A");
    }
    admin_a
        .bind_sub_device(BindSubDeviceRequest {
            gateway: dref("Pk1", "gw"),
            sub_device: dref("Pk1", "sub"),
        })
        .await
        .expect("bind through A");

    // B issues with what A wrote (and caches it once its feed is up).
    let mut dev_b = fleet.device_of(&b, "Pk1", "dev-1");
    let credential = issue(&mut dev_b).await.expect("B issues");
    assert!(common::verify(&credential, "SecretOne1"));
    let mut gw_b = fleet.device_of(&b, "Pk1", "gw");
    let sub_login = || SignSubDeviceLoginRequest {
        product_key: "Pk1".into(),
        device_key: "sub".into(),
        ..Default::default()
    };
    gw_b.sign_sub_device_login(sub_login())
        .await
        .expect("B signs for the bound sub-device");
    let mut dev_c = fleet.device_of(&c, "Pk1", "dev-1");
    issue(&mut dev_c).await.expect("C issues");
    feeds_up(&fleet, db, 3).await;
    issue(&mut dev_b).await.expect("cached on B");
    issue(&mut dev_c).await.expect("cached on C");

    // Rotate through A: B signs with the new secret within a second.
    admin_a
        .rotate_secret(RotateSecretRequest {
            device: dref("Pk1", "dev-1"),
            new_device_secret: "SecretRotated2".into(),
        })
        .await
        .expect("rotate through A");
    let took = within(Duration::from_secs(1), "rotation on B", async || {
        issue(&mut dev_b)
            .await
            .is_ok_and(|c| common::verify(&c, "SecretRotated2"))
    })
    .await;
    eprintln!("rotation seen by B after {took:?}");
    within(Duration::from_secs(1), "rotation on C", async || {
        issue(&mut dev_c)
            .await
            .is_ok_and(|c| common::verify(&c, "SecretRotated2"))
    })
    .await;

    // Disable through A: B refuses within a second.
    admin_a
        .set_enabled(SetEnabledRequest {
            device: dref("Pk1", "dev-1"),
            enabled: false,
        })
        .await
        .expect("disable through A");
    within(Duration::from_secs(1), "disable on B", async || {
        issue(&mut dev_b).await == Err(Code::FailedPrecondition)
    })
    .await;

    // Unbind through A: B no longer signs for the sub-device.
    admin_a
        .unbind_sub_device(UnbindSubDeviceRequest {
            sub_device: dref("Pk1", "sub"),
        })
        .await
        .expect("unbind through A");
    within(Duration::from_secs(1), "unbind on B", async || {
        gw_b.sign_sub_device_login(sub_login())
            .await
            .is_err_and(|s| s.code() == Code::PermissionDenied)
    })
    .await;

    // Cut every change feed (B's included): B falls back to the database
    // at once and resubscribes; changes keep reaching it within a second.
    admin_a
        .set_enabled(SetEnabledRequest {
            device: dref("Pk1", "dev-1"),
            enabled: true,
        })
        .await
        .expect("enable through A");
    within(Duration::from_secs(1), "enable on B", async || {
        issue(&mut dev_b).await.is_ok()
    })
    .await;
    assert_eq!(fleet.cut_feeds(db), 3, "every feed cut");
    admin_a
        .rotate_secret(RotateSecretRequest {
            device: dref("Pk1", "dev-1"),
            new_device_secret: "SecretAfterCut3".into(),
        })
        .await
        .expect("rotate through A while feeds are down");
    within(
        Duration::from_secs(1),
        "rotation on B after the cut",
        async || {
            issue(&mut dev_b)
                .await
                .is_ok_and(|c| common::verify(&c, "SecretAfterCut3"))
        },
    )
    .await;
    feeds_up(&fleet, db, 3).await;
    issue(&mut dev_b).await.expect("cached again on B");

    // Delete through A, after the feed came back: B answers NotFound.
    admin_a
        .delete_device(DeviceRef {
            product_key: "Pk1".into(),
            device_key: "dev-1".into(),
        })
        .await
        .expect("delete through A");
    within(Duration::from_secs(1), "delete on B", async || {
        issue(&mut dev_b).await == Err(Code::NotFound)
    })
    .await;
    within(Duration::from_secs(1), "delete on C", async || {
        issue(&mut dev_c).await == Err(Code::NotFound)
    })
    .await;
}

/// Whether an open transaction holds the bulk (import) lock on `devices`.
fn import_lock_held(fleet: &Fleet, database: &str) -> bool {
    fleet
        .cluster
        .psql(
            database,
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
             WHERE c.relname = 'devices' AND l.mode = 'ExclusiveLock' AND l.granted",
        )
        .expect("psql")
        != "0"
}

fn device_rows(fleet: &Fleet, database: &str) -> usize {
    fleet
        .cluster
        .psql(database, "SELECT count(*) FROM devices")
        .expect("psql")
        .parse()
        .expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_killed_in_its_transaction_leaves_no_row_and_a_retry_leaves_all() {
    const ROWS: usize = 50_000;
    let db = "import_kill";
    let fleet = Fleet::new(db);
    let dir = fleet.dir.path();
    let csv = dir.join("export.csv");
    let mut text = String::from("productKey,deviceKey,deviceSecret\n");
    for i in 0..ROWS {
        text.push_str(&format!("PkImport,dev-{i:06},Secret{i:08}\n"));
    }
    std::fs::write(&csv, text).expect("write csv");
    let admin = fleet.admin.write(dir, "cli-admin").expect("admin files");
    let import = |replica: &Replica| {
        Command::new(BIN)
            .arg("import")
            .arg(&csv)
            .args(["--endpoint", &replica.uri(), "--ca"])
            .arg(dir.join("ca.pem"))
            .arg("--cert")
            .arg(&admin.cert)
            .arg("--key")
            .arg(&admin.key)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn import")
    };

    let mut a = fleet.start("a", db).await;
    let mut cli = import(&a);
    // Wait until the import's transaction holds its lock, then SIGKILL
    // the replica in the middle of it.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !import_lock_held(&fleet, db) {
        assert!(
            cli.try_wait().expect("try_wait").is_none(),
            "the import ended before its transaction was seen"
        );
        assert!(Instant::now() < deadline, "import transaction never seen");
        std::thread::sleep(Duration::from_millis(5));
    }
    a.kill();
    let out = cli.wait_with_output().expect("import exits");
    assert!(!out.status.success(), "the import cannot have succeeded");
    // The server rolls the orphaned transaction back: no row at all.
    let deadline = Instant::now() + Duration::from_secs(10);
    while import_lock_held(&fleet, db) {
        assert!(Instant::now() < deadline, "transaction not rolled back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(device_rows(&fleet, db), 0, "none of the rows");

    // The same import through another replica: every row.
    let b = fleet.start("b", db).await;
    let out = tokio::task::spawn_blocking({
        let cli = import(&b);
        move || cli.wait_with_output()
    })
    .await
    .expect("join")
    .expect("import exits");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("imported {ROWS} devices")));
    assert_eq!(device_rows(&fleet, db), ROWS, "every row");
    let mut dev = fleet.device_of(&b, "PkImport", "dev-012345");
    let credential = issue(&mut dev).await.expect("imported device issues");
    assert!(common::verify(&credential, "Secret00012345"));
}

/// Undoes the latest migration's objects (a database of the previous
/// release); the registry crate says which they are.
const UNDO_LATEST_MIGRATION: &str = migrations::UNDO_LATEST;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_refuses_an_older_schema_until_registry_migrate_brings_it_up() {
    let db = "upgrade";
    let fleet = Fleet::new(db);
    // As a database migrated by the previous release: the latest step
    // missing.
    fleet
        .cluster
        .psql(
            db,
            &format!(
                "{UNDO_LATEST_MIGRATION}; DELETE FROM enos_schema_migrations WHERE version = {}",
                migrations::latest()
            ),
        )
        .expect("psql");
    let (config, _) = fleet.write_config("old", free_addr(), db);
    let refused = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .expect("run serve");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "schema is at version {}, this binary serves version {}",
            migrations::latest() - 1,
            migrations::latest()
        )) && stderr.contains("enos-signer registry migrate"),
        "{stderr}"
    );

    let migrate = |config: &PathBuf| {
        let out = Command::new(BIN)
            .args(["registry", "migrate", "--config"])
            .arg(config)
            .output()
            .expect("run registry migrate");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let stdout = migrate(&config);
    assert!(
        stdout.contains(&format!("applied [{}]", migrations::latest())),
        "{stdout}"
    );
    // Again: nothing left to apply, and the keys were never touched.
    assert!(migrate(&config).contains("applied []"));
    let replica = fleet.start("new", db).await;
    let mut admin = fleet.admin_of(&replica).await;
    admin
        .list_devices(ListDevicesRequest::default())
        .await
        .expect("serves the migrated schema");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_answers_unavailable_and_the_replica_serves_again_once_it_is_back() {
    let database = "outage";
    let fleet = Fleet::new(database);
    let replica = fleet.start("a", database).await;
    let mut admin = fleet.admin_of(&replica).await;
    admin
        .put_device(PutDeviceRequest {
            device: dref("Pk1", "dev"),
            device_secret: "outage-secret-0123456789abcdef".into(),
            enabled: true,
            awaiting_activation: false,
        })
        .await
        .expect("put");
    let mut device = fleet.device_of(&replica, "Pk1", "dev");
    issue(&mut device).await.expect("issued before the outage");
    feeds_up(&fleet, database, 1).await;

    fleet.cluster.stop().expect("stop PostgreSQL");
    // Agents retry UNAVAILABLE, at this replica or another: the outage must
    // never read as INTERNAL (a bug of ours), nor serve from a cache that
    // can no longer be invalidated.
    let mut seen = Vec::new();
    within(
        Duration::from_secs(10),
        "issuance UNAVAILABLE",
        async || {
            let answer = issue(&mut device).await;
            seen.push(answer.as_ref().map(drop).map_err(|c| *c));
            answer == Err(Code::Unavailable)
        },
    )
    .await;
    assert!(
        seen.iter()
            .all(|a| matches!(a, Ok(()) | Err(Code::Unavailable))),
        "{seen:?}"
    );
    let listed = admin.list_devices(ListDevicesRequest::default()).await;
    assert_eq!(
        listed.map(drop).map_err(|s| s.code()),
        Err(Code::Unavailable),
        "admin during the outage"
    );

    fleet.cluster.start_again().expect("start PostgreSQL again");
    within(
        Duration::from_secs(15),
        "issuance after the outage",
        async || issue(&mut device).await.is_ok(),
    )
    .await;
    admin
        .rotate_secret(RotateSecretRequest {
            device: dref("Pk1", "dev"),
            new_device_secret: "outage-secret-fedcba9876543210".into(),
        })
        .await
        .expect("a change after the outage");
    // The change feed is back too, so the cache is in use again.
    feeds_up(&fleet, database, 1).await;
    let log = std::fs::read_to_string(fleet.dir.path().join("a.log")).expect("replica log");
    assert!(!log.contains("internal error"), "{log}");
}

/// A P-256 key and a CSR for it.
fn key_and_csr() -> (rcgen::KeyPair, Vec<u8>) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .expect("csr");
    (key, csr.der().to_vec())
}

/// Enrolls `pk/dk` with `token` through `replica`'s enrollment listener.
async fn enroll(
    fleet: &Fleet,
    replica: &Replica,
    pk: &str,
    dk: &str,
    token: &str,
    csr: Vec<u8>,
) -> Result<v1::IssuedCertificate, tonic::Status> {
    let uri = format!("https://{}", replica.enroll.expect("enrollment listener"));
    let channel = client::mtls_endpoint(&uri, fleet.pki.ca_pem(), None)
        .expect("endpoint")
        .connect_lazy();
    v1::enrollment_client::EnrollmentClient::new(channel)
        .enroll(v1::EnrollRequest {
            device: dref(pk, dk),
            token: token.to_owned(),
            csr_der: csr,
        })
        .await
        .map(tonic::Response::into_inner)
}

/// The identity an issued certificate (with its chain) and `key` make.
fn enrolled_identity(issued: &v1::IssuedCertificate, key: &rcgen::KeyPair) -> Identity {
    Identity::from_issued(
        std::iter::once(issued.certificate_der.as_slice())
            .chain(issued.chain_der.iter().map(Vec::as_slice)),
        key.serialize_pem(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_token_on_two_replicas_enrolls_once_and_a_revocation_reaches_every_replica() {
    let database = "ca_replicas";
    let fleet = Fleet::with_ca(database);
    let a = fleet.start("a", database).await;
    let b = fleet.start("b", database).await;
    let mut admin = fleet.admin_of(&a).await;
    admin
        .put_device(PutDeviceRequest {
            device: dref("Pk1", "gw-1"),
            device_secret: "secret-1".into(),
            enabled: true,
            awaiting_activation: false,
        })
        .await
        .expect("put device");

    // The same token to both replicas at once, many times: exactly one
    // enrollment each time.
    for round in 0..5 {
        let token = admin
            .create_enroll_token(v1::CreateEnrollTokenRequest {
                device: dref("Pk1", "gw-1"),
                ttl_secs: 0,
            })
            .await
            .expect("token")
            .into_inner()
            .token;
        let (first, second) = tokio::join!(
            enroll(&fleet, &a, "Pk1", "gw-1", &token, key_and_csr().1),
            enroll(&fleet, &b, "Pk1", "gw-1", &token, key_and_csr().1),
        );
        let won = [&first, &second].iter().filter(|r| r.is_ok()).count();
        assert_eq!(
            won, 1,
            "round {round}: exactly one replica enrolls: {first:?} / {second:?}"
        );
        let lost = first.err().or(second.err()).expect("one refused");
        assert_eq!(lost.code(), Code::Unauthenticated, "{lost:?}");
        assert!(lost.message().contains("used"), "{lost:?}");
    }
    let listed = admin
        .list_certificates(DeviceRef::new("Pk1", "gw-1"))
        .await
        .expect("list")
        .into_inner()
        .certificates;
    assert_eq!(listed.len(), 5, "one certificate per token");

    // A certificate enrolled through A is served by B; revoked through A,
    // it is refused by B on the open connection and on a new one.
    let token = admin
        .create_enroll_token(v1::CreateEnrollTokenRequest {
            device: dref("Pk1", "gw-1"),
            ttl_secs: 0,
        })
        .await
        .expect("token")
        .into_inner()
        .token;
    let (key, csr) = key_and_csr();
    let issued = enroll(&fleet, &a, "Pk1", "gw-1", &token, csr)
        .await
        .expect("enrolled");
    let identity = enrolled_identity(&issued, &key);
    let mut on_b = CredentialsClient::new(fleet.channel(&b, &identity));
    issue(&mut on_b)
        .await
        .expect("B serves the certificate A issued");
    admin
        .revoke_certificate(v1::RevokeCertificateRequest {
            target: Some(v1::revoke_certificate_request::Target::Serial(
                issued.serial.clone(),
            )),
            reason: "test".into(),
        })
        .await
        .expect("revoke through A");
    within(
        Duration::from_secs(2),
        "B refuses the revoked certificate on its open connection",
        async || issue(&mut on_b).await == Err(Code::Unauthenticated),
    )
    .await;
    let mut fresh = CredentialsClient::new(fleet.channel(&b, &identity));
    let code = issue(&mut fresh).await.expect_err("refused");
    assert!(
        common::refused_by_handshake(code),
        "a new handshake to B is refused: {code:?}"
    );
}
