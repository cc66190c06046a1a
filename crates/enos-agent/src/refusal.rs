//! Telling a refusal from a network failure.
//!
//! A broker that rejects a login either answers CONNACK with a return code
//! (Mosquitto, EnOS: `BadUserNamePassword`, `NotAuthorized`) or, like
//! rumqttd, closes the connection without any CONNACK. So a connection that
//! was established and then closed while waiting for CONNACK is a probable
//! refusal too. Everything before the TCP/TLS connection exists (refused
//! port, timeout, DNS, TLS handshake) is a network failure.

use std::io::ErrorKind;

use rumqttc::{ConnectReturnCode, ConnectionError, StateError};

use crate::backoff::FailureKind;

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
}
