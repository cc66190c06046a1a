//! The anchor: the same N devices as raw rumqttc clients with passwords
//! signed beforehand (no signer, no backoff: a client whose connection
//! fails tries again after [`RAW_RETRY`]), connecting at once and
//! reconnecting through a broker restart, against the same sandbox.

use std::time::Duration;

use enos_testkit::sandbox::Sandbox;
use rumqttc::{AsyncClient, ConnectReturnCode, Event, MqttOptions, Packet};
use tokio::{sync::mpsc, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::{
    devices::{self, TestDevice as Device},
    error::{E2eError, Result},
};

/// A raw client's fixed pause after a failed connect: no backoff, no
/// jitter, only enough not to spin while the broker is down.
pub const RAW_RETRY: Duration = Duration::from_millis(100);

/// What the anchor measured.
#[derive(Debug, Clone, Copy)]
pub struct RawFigures {
    /// All N at once: time until the last CONNACK.
    pub connect: Duration,
    /// After the broker restart began: time until the last CONNACK.
    pub reconnect: Duration,
    /// Logins refused (should be none: the passwords are valid).
    pub refused: usize,
}

/// Runs the anchor against `sandbox` with `devices`' logins; restarts the
/// sandbox once. Fails if a phase outlasts `timeout`.
pub async fn run(
    sandbox: &mut Sandbox,
    devices: &[Device],
    timeout: Duration,
) -> Result<RawFigures> {
    let addr = sandbox.mqtt_addr();
    let mut options = Vec::with_capacity(devices.len());
    for d in devices {
        let login = d.sign_login()?;
        let mut o = MqttOptions::new(
            login.mqtt_client_id.clone(),
            addr.ip().to_string(),
            addr.port(),
        );
        o.set_credentials(login.username.clone(), devices::password(&login).to_owned());
        o.set_keep_alive(Duration::from_secs(30));
        options.push(o);
    }
    let stop = CancellationToken::new();
    let (acks, mut acked) = mpsc::unbounded_channel::<std::result::Result<usize, usize>>();
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(options.len());
    for (i, o) in options.into_iter().enumerate() {
        let acks = acks.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let (client, mut eventloop) = AsyncClient::new(o, 4);
            loop {
                let polled = tokio::select! {
                    p = eventloop.poll() => p,
                    () = stop.cancelled() => break,
                };
                match polled {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                        let ok = ack.code == ConnectReturnCode::Success;
                        let _ = acks.send(if ok { Ok(i) } else { Err(i) });
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(RAW_RETRY).await,
                }
            }
            let _ = client.try_disconnect();
            let _ = tokio::time::timeout(Duration::from_millis(500), eventloop.poll()).await;
        }));
    }
    drop(acks);
    let n = devices.len();
    let mut refused = 0;
    let connect = wait_all(&mut acked, n, started, timeout, &mut refused, "connect").await?;
    let restarted = Instant::now();
    tokio::task::block_in_place(|| sandbox.restart())?;
    let reconnect = wait_all(&mut acked, n, restarted, timeout, &mut refused, "reconnect").await?;
    stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    Ok(RawFigures {
        connect,
        reconnect,
        refused,
    })
}

/// Waits for one CONNACK per client; returns the time from `since`.
async fn wait_all(
    acked: &mut mpsc::UnboundedReceiver<std::result::Result<usize, usize>>,
    n: usize,
    since: Instant,
    timeout: Duration,
    refused: &mut usize,
    what: &str,
) -> Result<Duration> {
    let mut seen = vec![false; n];
    let mut count = 0;
    let deadline = since + timeout;
    while count < n {
        match tokio::time::timeout_at(deadline, acked.recv()).await {
            Ok(Some(Ok(i))) => {
                if !std::mem::replace(&mut seen[i], true) {
                    count += 1;
                }
            }
            Ok(Some(Err(_))) => *refused += 1,
            Ok(None) => return Err(E2eError::failed("the raw clients stopped")),
            Err(_) => {
                return Err(E2eError::Timeout {
                    what: format!("{} of {n} raw clients to {what} ({count} did)", n - count),
                    after: timeout,
                });
            }
        }
    }
    Ok(since.elapsed())
}
