//! Telling a refusal from a network failure.
//!
//! A broker that rejects a login either answers CONNACK with a return code
//! (Mosquitto, EnOS: `BadUserNamePassword`, `NotAuthorized`) or, like
//! rumqttd, closes the connection without any CONNACK. So a connection that
//! was established and then closed while waiting for CONNACK is a probable
//! refusal too. Everything before the TCP/TLS connection exists (refused
//! port, timeout, DNS, TLS handshake) is a network failure.

use std::io::ErrorKind;

use enos_signer_proto::tls_failure::{Reason, TlsFailure};
use rumqttc::{ConnectReturnCode, ConnectionError, StateError};

use crate::{backoff::FailureKind, config::Config};

/// Where in the session an error happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Between the start of a connect and CONNACK.
    Connecting,
    /// After CONNACK.
    Connected,
}

/// What a failure means for the credential and the pacing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Refused or network.
    pub kind: FailureKind,
    /// A short, secret-free description for logs and the status.
    pub reason: String,
}

/// Classifies a rumqttc error in `phase`.
pub fn classify(error: &ConnectionError, phase: Phase) -> Failure {
    let refused = |reason: String| Failure {
        kind: FailureKind::Refused,
        reason,
    };
    let network = |reason: String| Failure {
        kind: FailureKind::Network,
        reason,
    };
    match (error, phase) {
        (
            ConnectionError::ConnectionRefused(
                code @ (ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized),
            ),
            _,
        ) => refused(format!("broker refused the login: {code:?}")),
        (ConnectionError::ConnectionRefused(code), _) => {
            // Protocol version, identifier rejected, server unavailable: the
            // broker, not the credential.
            network(format!("broker refused the connection: {code:?}"))
        }
        (ConnectionError::MqttState(state), Phase::Connecting) if closed_by_peer(state) => {
            refused("broker closed the connection before CONNACK (probable login refusal)".into())
        }
        (ConnectionError::NotConnAck(_), Phase::Connecting) => {
            network("broker answered CONNECT with something other than CONNACK".into())
        }
        (ConnectionError::Io(e), _) => network(format!("network: {e}")),
        (ConnectionError::Tls(e), _) => network(format!("TLS: {e}")),
        (ConnectionError::NetworkTimeout, _) => network("connect timed out".into()),
        (ConnectionError::FlushTimeout, _) => network("write timed out".into()),
        (other, _) => network(other.to_string()),
    }
}

/// [`classify`], with what the config tells about the broker: a
/// `tcp://` URL on a TLS port (its answer to CONNECT is a TLS alert, not
/// MQTT), an `ssl://` URL on a plain port (no TLS answer to our hello),
/// a certificate either side refused (said as the handshake said it,
/// with `[enos.tls]`'s files), and a session closed by EnOS right after
/// it was accepted: EnOS keeps one session per device, and closes the
/// older one when another client logs in as the same device.
pub fn classify_for(error: &ConnectionError, phase: Phase, config: &Config) -> Failure {
    let broker = &config.enos.broker;
    let network = |reason: String| Failure {
        kind: FailureKind::Network,
        reason,
    };
    match (error, phase) {
        (
            ConnectionError::MqttState(StateError::Deserialization(_))
            | ConnectionError::NotConnAck(_),
            Phase::Connecting,
        ) if !broker.tls => network(format!(
            "the broker speaks TLS on {}:{} (it answered CONNECT with something that is not MQTT); use ssl:// and [enos.tls]",
            broker.host, broker.port
        )),
        (ConnectionError::Tls(e), _) if broker.tls => {
            let tls = config.enos.tls.as_ref();
            match TlsFailure::find(e) {
                Some(f) if f.reason == Reason::Protocol => network(plain_port(broker)),
                Some(_) => network(
                    crate::handshake::broker_failure(e, tls).unwrap_or_else(|| format!("TLS: {e}")),
                ),
                None if closed_during_handshake(e) => network(plain_port(broker)),
                None => network(format!("TLS: {e}")),
            }
        }
        (ConnectionError::MqttState(StateError::ConnectionAborted), Phase::Connected) => {
            network(format!(
                "EnOS closed the session: it keeps one session per device, and another client with this device's identity ({}) connected (a second agent, or `enos-agent check`), or the broker restarted",
                config.device.id()
            ))
        }
        _ => classify(error, phase),
    }
}

/// The `ssl://`-on-a-plain-port message.
fn plain_port(broker: &crate::config::BrokerUrl) -> String {
    format!(
        "the broker does not speak TLS on {}:{} (no TLS answer to our hello); use tcp:// for a plain MQTT port",
        broker.host, broker.port
    )
}

/// Whether the TLS handshake ended with the connection closed (an MQTT
/// broker reading our hello as a bad packet closes it without a word).
fn closed_during_handshake(error: &rumqttc::TlsError) -> bool {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::BrokenPipe
            )
        {
            return true;
        }
        next = e.source();
    }
    false
}

/// Whether the peer closed an established connection.
fn closed_by_peer(state: &StateError) -> bool {
    match state {
        StateError::ConnectionAborted => true,
        StateError::Io(e) => matches!(
            e.kind(),
            ErrorKind::ConnectionReset
                | ErrorKind::ConnectionAborted
                | ErrorKind::BrokenPipe
                | ErrorKind::UnexpectedEof
        ),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_and_network_failures_are_told_apart() {
        let cases = [
            (
                ConnectionError::ConnectionRefused(ConnectReturnCode::BadUserNamePassword),
                Phase::Connecting,
                FailureKind::Refused,
            ),
            (
                ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized),
                Phase::Connecting,
                FailureKind::Refused,
            ),
            (
                ConnectionError::ConnectionRefused(ConnectReturnCode::ServiceUnavailable),
                Phase::Connecting,
                FailureKind::Network,
            ),
            (
                ConnectionError::MqttState(StateError::ConnectionAborted),
                Phase::Connecting,
                FailureKind::Refused,
            ),
            (
                ConnectionError::MqttState(StateError::Io(ErrorKind::ConnectionReset.into())),
                Phase::Connecting,
                FailureKind::Refused,
            ),
            // The same close after CONNACK is a broken connection.
            (
                ConnectionError::MqttState(StateError::ConnectionAborted),
                Phase::Connected,
                FailureKind::Network,
            ),
            (
                ConnectionError::Io(ErrorKind::ConnectionRefused.into()),
                Phase::Connecting,
                FailureKind::Network,
            ),
            (
                ConnectionError::NetworkTimeout,
                Phase::Connecting,
                FailureKind::Network,
            ),
        ];
        for (error, phase, kind) in cases {
            assert_eq!(classify(&error, phase).kind, kind, "{error:?} in {phase:?}");
        }
    }

    fn config(broker: &str) -> Config {
        let tls = if broker.starts_with("ssl://") {
            "\n[enos.tls]\nca = \"ca.pem\"\ncert = \"d.pem\"\nkey = \"d.key\"\n"
        } else {
            ""
        };
        let text = format!(
            "[device]\nproduct_key = \"pk1\"\ndevice_key = \"dk1\"\n\n[signer]\nendpoints = [\"https://127.0.0.1:7443\"]\nca = \"ca.pem\"\ncert = \"d.pem\"\nkey = \"d.key\"\n\n[enos]\nbroker = \"{broker}\"\n{tls}"
        );
        Config::parse(&text, std::path::Path::new("/etc/enos-agent/agent.toml")).expect("config")
    }

    /// #29 item 4: `tcp://` on a TLS port (the TLS alert read as MQTT:
    /// `Promised boundary crossed: 768`).
    #[test]
    fn tcp_on_a_tls_port_says_use_ssl() {
        let error = ConnectionError::MqttState(StateError::Deserialization(
            rumqttc::mqttbytes::Error::BoundaryCrossed(768),
        ));
        let failure = classify_for(&error, Phase::Connecting, &config("tcp://h:18883"));
        assert!(
            failure
                .reason
                .starts_with("the broker speaks TLS on h:18883")
                && failure.reason.contains("use ssl://"),
            "{}",
            failure.reason
        );
        // With ssl:// configured the same error is not a TLS mismatch.
        let failure = classify_for(&error, Phase::Connecting, &config("ssl://h:18883"));
        assert!(!failure.reason.contains("use ssl://"), "{}", failure.reason);
    }

    /// #29 item 4: `ssl://` on a plain port: the handshake ends with the
    /// connection closed, or a reply that is not TLS.
    #[test]
    fn ssl_on_a_plain_port_says_use_tcp() {
        let config = config("ssl://h:11883");
        for error in [
            rumqttc::TlsError::Io(std::io::ErrorKind::UnexpectedEof.into()),
            rumqttc::TlsError::TLS(rustls::Error::InvalidMessage(
                rustls::InvalidMessage::InvalidContentType,
            )),
        ] {
            let failure = classify_for(&ConnectionError::Tls(error), Phase::Connecting, &config);
            assert!(
                failure
                    .reason
                    .starts_with("the broker does not speak TLS on h:11883")
                    && failure.reason.contains("use tcp://"),
                "{}",
                failure.reason
            );
        }
        // A certificate the broker refused is said as such.
        let refused = rumqttc::TlsError::TLS(rustls::Error::AlertReceived(
            rustls::AlertDescription::CertificateRevoked,
        ));
        let failure = classify_for(&ConnectionError::Tls(refused), Phase::Connecting, &config);
        assert!(
            failure
                .reason
                .starts_with("the EnOS broker refused our client certificate (enos.tls.cert = "),
            "{}",
            failure.reason
        );
    }

    /// #29 item 4: a session EnOS closed after accepting it: another
    /// client of the device took it over.
    #[test]
    fn a_session_closed_after_connack_names_the_take_over() {
        let failure = classify_for(
            &ConnectionError::MqttState(StateError::ConnectionAborted),
            Phase::Connected,
            &config("tcp://h:11883"),
        );
        assert_eq!(failure.kind, FailureKind::Network);
        assert!(
            failure.reason.contains("it keeps one session per device")
                && failure.reason.contains("pk1/dk1"),
            "{}",
            failure.reason
        );
        // Before CONNACK the same close is still a probable refusal.
        let failure = classify_for(
            &ConnectionError::MqttState(StateError::ConnectionAborted),
            Phase::Connecting,
            &config("tcp://h:11883"),
        );
        assert_eq!(failure.kind, FailureKind::Refused);
    }
}
