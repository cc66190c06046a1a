//! The EnOS session: the connect loop around rumqttc.
//!
//! rumqttc reconnects whenever its event loop is polled after an error, with
//! whatever is in `EventLoop::mqtt_options`. This loop decides *when* to
//! poll again (backoff) and *with what* (a fresh credential per connect),
//! restores the subscriptions after every CONNACK (clean session), and
//! moves upstream messages from the bounded queue into the client only
//! while connected, so that nothing piles up inside rumqttc while offline.
//!
//! `MqttOptions`' `Debug` prints the password: it is never logged here.

use std::{sync::Arc, time::Duration};

use rumqttc::{
    AsyncClient, Event, EventLoop, Incoming, MqttOptions, Outgoing, Publish, QoS, SubscribeFilter,
    SubscribeReasonCode, TlsConfiguration, Transport,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{
    activation::ActivationPush,
    backoff::{Backoff, FailureKind},
    config::Config,
    credential::{CredentialCache, Provenance},
    error::AgentError,
    issued::IssuedCredential,
    refusal::{Failure, Phase, classify_for},
    shared::{EnosReply, Outbound, Shared},
    signer::SignerClient,
    status::{ActivationState, ConnectionState},
};

/// A running activation hand-over: the push's id and how it ended.
type HandOver<'s> = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = (String, Option<Result<(), crate::SignerClientError>>)>
            + Send
            + 's,
    >,
>;

/// rumqttc's request channel: small, because messages wait in our own
/// bounded queue, not here.
const CLIENT_CHANNEL: usize = 16;

/// How long a graceful DISCONNECT may take at shutdown.
const DISCONNECT_GRACE: Duration = Duration::from_secs(3);

/// Builds the rumqttc client and event loop for the EnOS broker. The client
/// id and credentials are placeholders: every connect sets fresh ones.
pub fn enos_client(config: &Config) -> Result<(AsyncClient, EventLoop), AgentError> {
    let broker = &config.enos.broker;
    let mut options = MqttOptions::new("enos-agent", broker.host.clone(), broker.port);
    options
        .set_keep_alive(config.enos.keepalive)
        .set_clean_session(true)
        .set_max_packet_size(config.enos.max_packet_size, config.enos.max_packet_size);
    if let Some(tls) = &config.enos.tls {
        // Refuses unusable files at start; the connect loop re-reads them
        // before every connect (`reload_tls`).
        let client_config = crate::tls::mqtt_client_config(tls)?;
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            client_config,
        )));
    }
    let (client, mut eventloop) = AsyncClient::new(options, CLIENT_CHANNEL);
    eventloop
        .network_options
        .set_connection_timeout(config.enos.connect_timeout.as_secs());
    Ok((client, eventloop))
}

/// The topic filters restored after every CONNACK.
pub fn subscriptions(config: &Config, shared: &Shared) -> Vec<SubscribeFilter> {
    let mut filters = Vec::new();
    if shared.downstream_map.is_some() {
        for f in shared.topics.service_filters() {
            filters.push(SubscribeFilter::new(f, QoS::AtLeastOnce));
        }
    }
    for reply in shared.reply_routes.keys() {
        filters.push(SubscribeFilter::new(reply.clone(), QoS::AtMostOnce));
    }
    if !config.sub_devices.is_empty() {
        filters.push(SubscribeFilter::new(
            shared.topics.combine_login_reply(),
            QoS::AtLeastOnce,
        ));
        filters.push(SubscribeFilter::new(
            shared.topics.combine_login_batch_reply(),
            QoS::AtLeastOnce,
        ));
    }
    if config.spool.is_some() {
        // Late measurepoints go up through `resume`: their replies are
        // checked (the gateway's and each sub-device's).
        filters.push(SubscribeFilter::new(
            resume_reply(
                config.device.product_key.as_str(),
                config.device.device_key.as_str(),
            ),
            QoS::AtMostOnce,
        ));
        for d in &config.sub_devices {
            filters.push(SubscribeFilter::new(
                resume_reply(d.product_key.as_str(), d.device_key.as_str()),
                QoS::AtMostOnce,
            ));
        }
        // `resume.batch` goes on the gateway's topic, for all of them.
        filters.push(SubscribeFilter::new(
            format!("{}_reply", shared.topics.measurepoint_resume_batch()),
            QoS::AtMostOnce,
        ));
    }
    filters.sort_by(|a, b| a.path.cmp(&b.path));
    filters
}

/// `/sys/{pk}/{dk}/thing/measurepoint/resume_reply`.
fn resume_reply(pk: &str, dk: &str) -> String {
    format!("/sys/{pk}/{dk}/thing/measurepoint/resume_reply")
}

/// Runs the connect loop until `shutdown`, then sends DISCONNECT.
pub async fn run<S: SignerClient>(
    config: &Config,
    signer: &S,
    client: AsyncClient,
    eventloop: EventLoop,
    shared: &Shared,
    shutdown: CancellationToken,
) {
    let mut session = ConnectLoop {
        config,
        signer,
        filters: subscriptions(config, shared),
        client,
        eventloop,
        shared,
        shutdown,
        backoff: Backoff::new(config.backoff.clone()),
        cache: CredentialCache::new(),
        generation: 0,
        tls_material: None,
        candidate: None,
    };
    session.run().await;
    shared.session.send_replace(None);
    shared.refresh_counters();
    shared
        .status
        .send_modify(|s| s.set_state(ConnectionState::Stopped));
}

/// How a connection ended.
enum Ended {
    /// Shutdown: send DISCONNECT and stop.
    Shutdown,
    /// The connection failed (or the activation hand-over was refused).
    Lost(Failure),
    /// The signer sealed the pushed device secret: answer EnOS and
    /// reconnect with the device's own secret.
    Activated {
        /// The id of the push, echoed in `info_reply`.
        reply_id: String,
    },
    /// A renewed EnOS certificate waits to be proven: leave with
    /// DISCONNECT and connect with it.
    ProveCandidate,
}

/// What one step of the connect loop decided.
enum Step<T> {
    /// Go on with this.
    Go(T),
    /// Start over with a new connect (any backoff already waited).
    Retry,
    /// Shut down.
    Stop,
}

/// The connect loop's state across connects.
struct ConnectLoop<'a, S> {
    /// The agent's config (broker, backoff).
    config: &'a Config,
    /// Where credentials come from.
    signer: &'a S,
    /// Restored after every CONNACK (clean session).
    filters: Vec<SubscribeFilter>,
    /// The rumqttc handle: publishes and subscribes.
    client: AsyncClient,
    /// rumqttc's event loop: connects when polled.
    eventloop: EventLoop,
    /// Queues and status shared with the bridge and the sub-devices.
    shared: &'a Shared,
    /// Cancelled at shutdown.
    shutdown: CancellationToken,
    /// Delays between failed connects.
    backoff: Backoff,
    /// The credential reuse rules.
    cache: CredentialCache,
    /// Numbers the connections, so sub-device logins restart on each.
    generation: u64,
    /// The `[enos.tls]` files the transport was last built from (`None`
    /// before the first connect): a renewed pair is used from the next
    /// connect, the live session is never dropped for it.
    tls_material: Option<crate::tls::MqttTlsMaterial>,
    /// A renewed EnOS certificate this connect proves (taken from
    /// `Shared::enos_candidate`), answered once the connect ended.
    candidate: Option<crate::enos_cert::CandidateProof>,
}

impl<S: SignerClient> ConnectLoop<'_, S> {
    async fn run(&mut self) {
        while !self.shutdown.is_cancelled() {
            self.shared
                .status
                .send_modify(|s| s.set_state(ConnectionState::Connecting));
            // 1. A credential: fresh, or a still-valid cached one if the signer is down.
            let credential = match self.credential().await {
                Step::Go(credential) => credential,
                Step::Retry => continue,
                Step::Stop => return,
            };
            // 2. CONNECT → CONNACK.
            match self.connect(&credential).await {
                Step::Go(()) => {}
                Step::Retry => continue,
                Step::Stop => return,
            }
            // 3. Connected, until the connection ends or shutdown.
            let connected_at = Instant::now();
            let activation = credential.is_activation();
            self.connected(&credential);
            let ended = self.serve(activation).await;
            self.shared.session.send_replace(None);
            if !matches!(ended, Ended::Shutdown) {
                let eventloop = &mut self.eventloop;
                self.shared.on_connection_lost(|| eventloop.clean());
            }
            self.shared.refresh_counters();
            match ended {
                Ended::Shutdown => {
                    disconnect(&self.client, &mut self.eventloop, self.shared).await;
                    return;
                }
                Ended::Activated { reply_id } => {
                    self.activated(&reply_id).await;
                }
                Ended::ProveCandidate => {
                    tracing::info!(
                        "reconnecting to EnOS once with the renewed certificate, to prove it"
                    );
                    disconnect(&self.client, &mut self.eventloop, self.shared).await;
                    let eventloop = &mut self.eventloop;
                    self.shared.on_connection_lost(|| eventloop.clean());
                    self.shared
                        .status
                        .send_modify(|s| s.set_state(ConnectionState::Connecting));
                }
                Ended::Lost(failure) => {
                    tracing::warn!(reason = %failure.reason, "EnOS connection lost");
                    let stable = connected_at.elapsed() >= self.backoff.reset_after();
                    if !self.back_off(&failure, stable).await {
                        return;
                    }
                }
            }
        }
    }

    /// A credential for this connect; on failure, backs off.
    async fn credential(&mut self) -> Step<Arc<IssuedCredential>> {
        let obtained = tokio::select! {
            r = self.cache.for_connect(self.signer) => r,
            () = self.shutdown.cancelled() => return Step::Stop,
        };
        match obtained {
            Ok((credential, provenance)) => {
                self.shared.status.send_modify(|s| {
                    match provenance {
                        Provenance::Fresh => s.credentials_issued += 1,
                        Provenance::Cached => s.credentials_reused += 1,
                    }
                    s.credential_expires_at_ms = credential.expires_at_ms;
                });
                Step::Go(credential)
            }
            Err(e) => {
                let kind = if e.is_unavailable() {
                    FailureKind::Network
                } else {
                    FailureKind::Refused
                };
                tracing::warn!(error = %e, "no credential for this connect");
                let failure = Failure {
                    kind,
                    reason: e.to_string(),
                };
                self.retry_after(&failure, false).await
            }
        }
    }

    /// CONNECT with `credential` until CONNACK; on failure, backs off (a
    /// refusal also retires the credential).
    async fn connect(&mut self, credential: &Arc<IssuedCredential>) -> Step<()> {
        let proving = self.use_candidate();
        if !proving {
            self.reload_tls();
        }
        self.eventloop
            .mqtt_options
            .set_client_id(credential.mqtt_client_id.clone())
            .set_credentials(credential.username.clone(), credential.password());
        let connected = tokio::select! {
            r = self.eventloop.poll() => r,
            () = self.shutdown.cancelled() => return Step::Stop,
        };
        // The password has been sent (or failed to be); do not keep a copy
        // in the options longer than needed.
        self.eventloop
            .mqtt_options
            .set_credentials(credential.username.clone(), "");
        if let Some(candidate) = self.candidate.take() {
            let outcome = match &connected {
                Ok(Event::Incoming(Incoming::ConnAck(_))) => Ok(()),
                Ok(other) => Err(format!("{} instead of CONNACK", first_event_name(other))),
                Err(e) => Err(classify_for(e, Phase::Connecting, self.config).reason),
            };
            if outcome.is_err() {
                // The next connect goes back to the current pair.
                self.tls_material = None;
            }
            let _ = candidate.reply.send(outcome);
        }
        match connected {
            Ok(Event::Incoming(Incoming::ConnAck(_))) => Step::Go(()),
            Ok(other) => {
                tracing::warn!(
                    event = first_event_name(&other),
                    "unexpected first event; reconnecting"
                );
                Step::Retry
            }
            Err(e) => {
                let failure = classify_for(&e, Phase::Connecting, self.config);
                if failure.kind == FailureKind::Refused {
                    self.cache.refused(credential);
                }
                tracing::warn!(broker = %self.config.enos.broker, reason = %failure.reason, "connect failed");
                self.retry_after(&failure, false).await
            }
        }
    }

    /// Takes a candidate EnOS certificate waiting to be proven and builds
    /// this connect's TLS from it; `true` when this connect proves one.
    fn use_candidate(&mut self) -> bool {
        let Some(candidate) = self.shared.enos_candidate_slot().take() else {
            return false;
        };
        let built = crate::tls::MqttTlsMaterial::read(&candidate.tls).and_then(|material| {
            crate::tls::mqtt_client_config_from(&candidate.tls, &material).map(|c| (material, c))
        });
        match built {
            Ok((material, client_config)) => {
                tracing::info!(
                    cert = %candidate.tls.cert.display(),
                    "this connect presents the renewed EnOS certificate"
                );
                self.eventloop
                    .mqtt_options
                    .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                        client_config,
                    )));
                // The promoted files will hold the same bytes: no rebuild.
                self.tls_material = Some(material);
                self.candidate = Some(candidate);
                true
            }
            Err(e) => {
                let _ = candidate
                    .reply
                    .send(Err(format!("the candidate is unusable: {e}")));
                false
            }
        }
    }

    /// Before a connect: re-reads the `[enos.tls]` files and, when they
    /// changed and form a usable identity, builds the TLS transport from
    /// them. Broken files are refused with a log line; the last good
    /// transport stays (as for the signer channel).
    fn reload_tls(&mut self) {
        let Some(tls) = &self.config.enos.tls else {
            return;
        };
        let material = match crate::tls::MqttTlsMaterial::read(tls) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %e, "EnOS TLS files unusable; keeping the previous certificate");
                return;
            }
        };
        if self.tls_material.as_ref() == Some(&material) {
            return;
        }
        match crate::tls::mqtt_client_config_from(tls, &material) {
            Ok(client_config) => {
                if self.tls_material.is_some() {
                    tracing::info!(
                        "EnOS TLS files changed; this connection uses the new certificate"
                    );
                }
                self.eventloop
                    .mqtt_options
                    .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                        client_config,
                    )));
                self.tls_material = Some(material);
            }
            Err(e) => {
                tracing::error!(error = %e, "EnOS TLS files unusable; keeping the previous certificate");
            }
        }
    }

    /// Answers `info_reply` 200 (the signer has the secret), leaves with
    /// DISCONNECT, and forgets the activation credential: the next connect
    /// fetches a `securemode=2` one, at once.
    async fn activated(&mut self, reply_id: &str) {
        tracing::info!(
            "activation handed over: the device secret is in the signer's custody; reconnecting with it"
        );
        if let Err(e) = self.shared.publish_other(
            &self.client,
            self.shared.topics.activate_info_reply(),
            QoS::AtLeastOnce,
            crate::activation::reply_payload(reply_id),
        ) {
            tracing::warn!(error = %e, "could not queue the activation reply");
        }
        // Requests leave in order: the reply is written before DISCONNECT.
        disconnect(&self.client, &mut self.eventloop, self.shared).await;
        // Drop the connection so that the next poll connects anew.
        let eventloop = &mut self.eventloop;
        self.shared.on_connection_lost(|| eventloop.clean());
        self.cache = CredentialCache::new();
        self.backoff.reset();
        // One update: the activation connection is gone, so a watcher
        // must not see "connected and activated" before the reconnect.
        self.shared.status.send_modify(|s| {
            s.set_state(ConnectionState::Connecting);
            s.activation = Some(ActivationState::Activated);
        });
    }

    /// Reports the connection and restores the subscriptions.
    fn connected(&mut self, credential: &IssuedCredential) {
        self.generation += 1;
        tracing::info!(broker = %self.config.enos.broker, client_id = %credential.mqtt_client_id, "connected to EnOS");
        let activation = credential.is_activation();
        // One update: a watcher must never see an activation connection
        // as connected without its activation state.
        self.shared.status.send_modify(|s| {
            s.set_state(ConnectionState::Connected);
            s.connects += 1;
            s.last_error = None;
            if activation {
                s.activation = Some(ActivationState::AwaitingPush);
            }
        });
        let mut filters = self.filters.clone();
        if activation {
            // EnOS pushes without it; a broker that wants it gets it.
            filters.push(SubscribeFilter::new(
                self.shared.topics.activate_info(),
                QoS::AtLeastOnce,
            ));
            tracing::info!(
                "connected with an activation credential (securemode=3); waiting for EnOS to push the device secret"
            );
        }
        if !filters.is_empty() {
            if let Err(e) = self.client.try_subscribe_many(filters) {
                tracing::error!(error = %e, "could not queue the subscriptions");
            }
        }
        self.shared.session.send_replace(Some(self.generation));
    }

    /// Carries messages both ways until the connection fails, shutdown, or
    /// (on an activation connection) the pushed secret is in custody.
    async fn serve(&mut self, activation: bool) -> Ended {
        let shared = self.shared;
        let signer = self.signer;
        let mut client_full = false;
        // The hand-over of a pushed secret, while one runs: it owns the
        // secret, so the secret is wiped when it ends.
        let mut hand_over: Option<HandOver<'_>> = None;
        loop {
            client_full |= !shared.feed_upstream(&self.client);
            tokio::select! {
                polled = self.eventloop.poll() => {
                    client_full = false;
                    match polled {
                        Ok(Event::Incoming(Incoming::Publish(p)))
                            if activation && p.topic == shared.topics.activate_info() =>
                        {
                            if hand_over.is_none() {
                                hand_over = self.start_hand_over(&p.payload, signer);
                            } else {
                                tracing::info!("activation push repeated while handing over; ignored");
                            }
                        }
                        Ok(Event::Incoming(Incoming::Publish(p)))
                            if p.topic == shared.topics.traffic_control() =>
                        {
                            match shared.on_traffic_control(&p.payload) {
                                Some(id) => {
                                    let reply = serde_json::json!({"id": id, "code": 200, "data": {}});
                                    if let Err(e) = shared.publish_other(
                                        &self.client,
                                        format!("{}_reply", p.topic),
                                        QoS::AtMostOnce,
                                        reply.to_string().into_bytes(),
                                    ) {
                                        tracing::warn!(error = %e, "could not answer traffic/control");
                                    }
                                }
                                None => tracing::warn!("unparsable traffic/control notice ignored"),
                            }
                        }
                        Ok(Event::Incoming(Incoming::Publish(p))) => route_incoming(p, shared),
                        Ok(Event::Outgoing(Outgoing::Publish(pkid))) => shared.on_outgoing_publish(pkid),
                        Ok(Event::Incoming(Incoming::PubAck(ack))) => shared.on_puback(ack.pkid),
                        Ok(Event::Incoming(Incoming::SubAck(ack))) => {
                            if ack.return_codes.iter().any(|c| matches!(c, SubscribeReasonCode::Failure)) {
                                tracing::warn!(pkid = ack.pkid, "EnOS refused some subscriptions");
                            }
                        }
                        Ok(_) => {}
                        Err(e) => return Ended::Lost(classify_for(&e, Phase::Connected, self.config)),
                    }
                }
                (reply_id, result) = async { hand_over.as_mut().expect("guarded").await }, if hand_over.is_some() => {
                    match result {
                        None => return Ended::Shutdown,
                        Some(Ok(())) => return Ended::Activated { reply_id },
                        Some(Err(e)) => {
                            tracing::error!(error = %e, "the signer refused the activation hand-over; EnOS is not answered, reconnecting");
                            return Ended::Lost(Failure {
                                kind: FailureKind::Refused,
                                reason: format!("activation hand-over refused: {e}"),
                            });
                        }
                    }
                }
                () = shared.wait_upstream(), if !client_full => {}
                () = shared.enos_candidate_ready.notified() => {
                    if shared.enos_candidate_slot().is_some() {
                        return Ended::ProveCandidate;
                    }
                }
                () = self.shutdown.cancelled() => return Ended::Shutdown,
            }
        }
    }

    /// Parses an activation push and starts handing its secret over.
    fn start_hand_over<'s>(&self, payload: &[u8], signer: &'s S) -> Option<HandOver<'s>> {
        let device = &self.config.device;
        let push = match ActivationPush::parse(
            payload,
            device.product_key.as_str(),
            device.device_key.as_str(),
        ) {
            Ok(push) => push,
            Err(e) => {
                tracing::warn!(reason = %e, "activation push not taken");
                return None;
            }
        };
        tracing::info!("EnOS pushed the device secret; handing it to the signer");
        self.shared
            .status
            .send_modify(|s| s.activation = Some(ActivationState::HandingOver));
        let mut backoff = Backoff::new(self.config.backoff.clone());
        let shutdown = self.shutdown.clone();
        Some(Box::pin(async move {
            let result = crate::activation::hand_over(signer, &push, &mut backoff, &shutdown).await;
            (push.id.clone(), result)
        }))
    }

    /// Backs off after `failure`: [`Step::Retry`], or [`Step::Stop`] if
    /// shut down meanwhile.
    async fn retry_after<T>(&mut self, failure: &Failure, reset_first: bool) -> Step<T> {
        if self.back_off(failure, reset_first).await {
            Step::Retry
        } else {
            Step::Stop
        }
    }

    /// Waits the backoff delay after `failure`; `false` if shut down meanwhile.
    async fn back_off(&mut self, failure: &Failure, reset_first: bool) -> bool {
        pause(
            &mut self.backoff,
            failure,
            self.shared,
            &self.shutdown,
            reset_first,
        )
        .await
    }
}

/// Records `failure`, waits the backoff delay; `false` if shut down meanwhile.
async fn pause(
    backoff: &mut Backoff,
    failure: &Failure,
    shared: &Shared,
    shutdown: &CancellationToken,
    reset_first: bool,
) -> bool {
    if reset_first {
        backoff.reset();
    }
    let delay = backoff.next_delay(failure.kind);
    shared.status.send_modify(|s| {
        s.set_state(ConnectionState::Backoff);
        match failure.kind {
            FailureKind::Refused => s.refusals += 1,
            FailureKind::Network => s.network_failures += 1,
        }
        s.last_error = Some(failure.reason.clone());
        s.last_backoff_ms = Some(u64::try_from(delay.delay.as_millis()).unwrap_or(u64::MAX));
        s.last_backoff_ceiling_ms =
            Some(u64::try_from(delay.ceiling.as_millis()).unwrap_or(u64::MAX));
    });
    tracing::info!(
        delay_ms = delay.delay.as_millis() as u64,
        ceiling_ms = delay.ceiling.as_millis() as u64,
        kind = failure.kind.name(),
        "backing off"
    );
    tokio::select! {
        () = tokio::time::sleep(delay.delay) => true,
        () = shutdown.cancelled() => false,
    }
}

/// Dispatches a message from EnOS.
fn route_incoming(p: Publish, shared: &Shared) {
    let topic = p.topic.as_str();
    if topic == shared.topics.combine_login_reply()
        || topic == shared.topics.combine_login_batch_reply()
    {
        match EnosReply::parse(&p.payload) {
            Some(reply) => shared.deliver_login_reply(reply),
            None => tracing::warn!(topic, "unparsable combine.login reply"),
        }
        return;
    }
    if topic.ends_with("/thing/measurepoint/resume_reply")
        || topic.ends_with("/thing/measurepoint/resume/batch_reply")
    {
        shared.on_resume_reply(topic, &p.payload);
        return;
    }
    if let Some(locals) = shared.reply_routes.get(topic) {
        for local in locals {
            push_downstream(shared, local.clone(), p.payload.to_vec());
        }
        return;
    }
    if let (Some(map), Some(rest)) = (&shared.downstream_map, shared.topics.service_rest(topic)) {
        push_downstream(shared, map.local_topic(rest), p.payload.to_vec());
        return;
    }
    tracing::debug!(topic, "message from EnOS with no route");
}

fn push_downstream(shared: &Shared, topic: String, payload: Vec<u8>) {
    if shared.downstream.push(Outbound {
        topic,
        payload,
        qos: QoS::AtLeastOnce,
    }) {
        tracing::warn!("downstream queue full; dropped the oldest message");
    }
    shared.refresh_counters();
}

/// Sends what is queued, then DISCONNECT, and drives the event loop until
/// it is out (bounded by [`DISCONNECT_GRACE`]).
async fn disconnect(client: &AsyncClient, eventloop: &mut EventLoop, shared: &Shared) {
    let drained = async {
        // With a spool, what waits stays there for the next start: only
        // what is in flight is given the chance to be acknowledged.
        loop {
            let fed = shared.feed_upstream(client);
            let done = match &shared.spool {
                Some(spool) => spool.in_flight() == 0,
                None => fed && shared.upstream.is_empty(),
            };
            if done {
                break;
            }
            match eventloop.poll().await {
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => shared.on_outgoing_publish(pkid),
                Ok(Event::Incoming(Incoming::PubAck(ack))) => shared.on_puback(ack.pkid),
                Ok(_) => {}
                Err(_) => return,
            }
        }
        if client.try_disconnect().is_err() {
            return;
        }
        loop {
            match eventloop.poll().await {
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    if tokio::time::timeout(DISCONNECT_GRACE, drained)
        .await
        .is_err()
    {
        tracing::warn!("DISCONNECT did not complete in time");
    } else {
        tracing::info!("sent DISCONNECT to EnOS");
    }
}

/// What an event is, for a log line (not its Rust `Debug`, which prints
/// whole packets).
fn first_event_name(event: &Event) -> &'static str {
    match event {
        Event::Incoming(Incoming::ConnAck(_)) => "CONNACK",
        Event::Incoming(Incoming::Publish(_)) => "PUBLISH",
        Event::Incoming(Incoming::Disconnect) => "DISCONNECT",
        Event::Incoming(Incoming::PingResp) => "PINGRESP",
        Event::Incoming(_) => "another incoming packet",
        Event::Outgoing(_) => "an outgoing packet",
    }
}
