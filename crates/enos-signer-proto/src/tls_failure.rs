//! [`TlsFailure`]: why a TLS handshake failed, found once in an error's
//! source chain and said once, for both ends of the signer's mTLS (and
//! for the agent's MQTT over TLS).
//!
//! A client (the agent, the admin CLI) gets its failure wrapped several
//! times over: tonic's status, its transport error, hyper, h2, an
//! `io::Error`, and at the bottom rustls's [`rustls::Error`]. h2 keeps
//! only the *text* of an I/O error, so the chain is searched for a
//! [`rustls::Error`] first and, failing that, for rustls's words
//! (`received fatal alert: CertificateExpired`, `invalid peer
//! certificate: UnknownIssuer`). Under TLS 1.3 a server refuses a client
//! certificate after the client considers the handshake finished: the
//! refusal arrives as an alert on the first request, which tonic reports
//! as `operation was canceled`; the alert is still in the chain.
//!
//! A server (the signer) gets the [`rustls::Error`] of the handshake it
//! ran; [`TlsFailure::label`] is its bounded reason for the
//! `tls_handshake_failures_total{reason}` counter.

use std::{error::Error as StdError, fmt, path::Path};

/// What was wrong, in a fixed, small set (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Expired. From an alert (`certificate_expired`), also "not valid at
    /// the peer's clock": the alert does not tell the two apart.
    Expired,
    /// Not valid yet.
    NotYetValid,
    /// Not signed by a CA the judging side trusts (or its revocation
    /// status is unknown, which TLS reports the same way).
    UnknownIssuer,
    /// Revoked.
    Revoked,
    /// No certificate where one is required.
    NoCertificate,
    /// Does not name the host it was presented for.
    WrongName,
    /// Refused for another reason (encoding, key usage, signature).
    BadCertificate,
    /// Not TLS, or no protocol version or cipher in common.
    Protocol,
    /// The handshake did not end in time.
    Timeout,
    /// The peer closed the connection before or during the handshake
    /// without saying why (a port probe, a client that gave up).
    Closed,
    /// Anything else.
    Other,
}

/// Whose certificate the failure is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Whose {
    /// Ours: the peer refused it and said why in an alert.
    Ours,
    /// The peer's: this side refused it.
    Peers,
    /// No certificate was judged (protocol, timeout, a closed
    /// connection).
    Neither,
}

/// Why a TLS handshake failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFailure {
    /// Whose certificate, if any, was refused: decides who must act.
    pub whose: Whose,
    /// What was wrong.
    pub reason: Reason,
    /// rustls's words (an alert's name, a certificate error with its
    /// times): for the log, after the explanation.
    pub detail: String,
}

/// The alert a peer sends, by its rustls name, as a [`Reason`] about the
/// certificate we presented. One table for the typed and the textual
/// path.
fn alert_reason(name: &str) -> Reason {
    match name {
        "CertificateExpired" => Reason::Expired,
        "UnknownCA" => Reason::UnknownIssuer,
        "CertificateRevoked" => Reason::Revoked,
        "CertificateRequired" | "NoCertificate" => Reason::NoCertificate,
        "BadCertificate"
        | "UnsupportedCertificate"
        | "CertificateUnknown"
        | "DecryptError"
        | "AccessDenied"
        | "BadCertificateStatusResponse" => Reason::BadCertificate,
        "ProtocolVersion"
        | "HandshakeFailure"
        | "InsufficientSecurity"
        | "NoApplicationProtocol"
        | "UnexpectedMessage"
        | "DecodeError"
        | "IllegalParameter"
        | "MissingExtension"
        | "UnsupportedExtension" => Reason::Protocol,
        _ => Reason::Other,
    }
}

/// A certificate error (ours judging the peer's) as a [`Reason`].
fn certificate_reason(error: &rustls::CertificateError) -> Reason {
    use rustls::CertificateError as E;
    match error {
        E::Expired | E::ExpiredContext { .. } => Reason::Expired,
        E::NotValidYet | E::NotValidYetContext { .. } => Reason::NotYetValid,
        E::UnknownIssuer
        | E::UnknownRevocationStatus
        | E::ExpiredRevocationList
        | E::ExpiredRevocationListContext { .. } => Reason::UnknownIssuer,
        E::Revoked => Reason::Revoked,
        E::NotValidForName | E::NotValidForNameContext { .. } => Reason::WrongName,
        _ => Reason::BadCertificate,
    }
}

/// The same from rustls's words (`invalid peer certificate: …`), for a
/// chain that kept only the text.
fn certificate_reason_in(text: &str) -> Reason {
    let starts = |prefixes: &[&str]| prefixes.iter().any(|p| text.starts_with(p));
    if starts(&["certificate expired", "Expired"]) {
        Reason::Expired
    } else if starts(&["certificate not valid yet", "NotValidYet"]) {
        Reason::NotYetValid
    } else if starts(&[
        "UnknownIssuer",
        "UnknownRevocationStatus",
        "ExpiredRevocationList",
        "certificate revocation list expired",
    ]) {
        Reason::UnknownIssuer
    } else if starts(&["Revoked"]) {
        Reason::Revoked
    } else if starts(&["certificate not valid for name", "NotValidForName"]) {
        Reason::WrongName
    } else {
        Reason::BadCertificate
    }
}

impl TlsFailure {
    /// A handshake that did not end within its timeout.
    pub fn timeout() -> Self {
        TlsFailure {
            whose: Whose::Neither,
            reason: Reason::Timeout,
            detail: "the handshake timed out".into(),
        }
    }

    /// What a rustls error says.
    pub fn from_rustls(error: &rustls::Error) -> Self {
        let detail = error.to_string();
        let (whose, reason) = match error {
            rustls::Error::AlertReceived(alert) => {
                (Whose::Ours, alert_reason(&format!("{alert:?}")))
            }
            rustls::Error::InvalidCertificate(e) => (Whose::Peers, certificate_reason(e)),
            rustls::Error::NoCertificatesPresented => (Whose::Peers, Reason::NoCertificate),
            rustls::Error::InvalidMessage(_)
            | rustls::Error::InappropriateMessage { .. }
            | rustls::Error::InappropriateHandshakeMessage { .. }
            | rustls::Error::PeerIncompatible(_)
            | rustls::Error::PeerMisbehaved(_)
            | rustls::Error::NoApplicationProtocol
            | rustls::Error::DecryptError => (Whose::Neither, Reason::Protocol),
            _ => (Whose::Neither, Reason::Other),
        };
        TlsFailure {
            whose,
            reason,
            detail,
        }
    }

    /// What rustls's words in one error message say, if any.
    fn from_text(text: &str) -> Option<Self> {
        let failure = |whose, reason| {
            Some(TlsFailure {
                whose,
                reason,
                detail: text.to_owned(),
            })
        };
        if let Some(at) = text.find("received fatal alert: ") {
            let name: String = text[at + "received fatal alert: ".len()..]
                .chars()
                .take_while(char::is_ascii_alphanumeric)
                .collect();
            return failure(Whose::Ours, alert_reason(&name));
        }
        if let Some(at) = text.find("invalid peer certificate: ") {
            let rest = &text[at + "invalid peer certificate: ".len()..];
            return failure(Whose::Peers, certificate_reason_in(rest));
        }
        if text.contains("peer sent no certificates") {
            return failure(Whose::Peers, Reason::NoCertificate);
        }
        let protocol = [
            "received corrupt message",
            "received unexpected message",
            "received unexpected handshake message",
            "peer is incompatible",
            "peer misbehaved",
        ];
        if protocol.iter().any(|words| text.contains(words)) {
            return failure(Whose::Neither, Reason::Protocol);
        }
        None
    }

    /// What an I/O error of a handshake says: rustls's error inside it,
    /// or a connection closed without a word.
    pub fn from_io(error: &std::io::Error) -> Self {
        if let Some(failure) = error.get_ref().and_then(|inner| Self::find(inner)) {
            return failure;
        }
        use std::io::ErrorKind as K;
        let reason = match error.kind() {
            K::UnexpectedEof | K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => {
                Reason::Closed
            }
            K::InvalidData => Reason::Protocol,
            _ => Reason::Other,
        };
        TlsFailure {
            whose: Whose::Neither,
            reason,
            detail: error.to_string(),
        }
    }

    /// The TLS failure inside an I/O error, if any (a closed connection
    /// is no explanation here).
    fn find_in_io(error: &std::io::Error) -> Option<Self> {
        Self::find(error)
    }

    /// The TLS failure somewhere in `error`'s source chain (an
    /// `io::Error`'s inner error included), or `None` when the chain
    /// holds none (a refused port, a timeout before TLS, a gRPC status).
    pub fn find(error: &(dyn StdError + 'static)) -> Option<Self> {
        let mut next = Some(error);
        while let Some(error) = next {
            if let Some(rustls) = error.downcast_ref::<rustls::Error>() {
                return Some(Self::from_rustls(rustls));
            }
            // `io::Error::source()` skips the error it wraps: look inside.
            if let Some(inner) = error
                .downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::get_ref)
                && let Some(found) = Self::find(inner)
            {
                return Some(found);
            }
            if let Some(found) = Self::from_text(&error.to_string()) {
                return Some(found);
            }
            next = error.source();
        }
        None
    }

    /// The bounded reason label of the server's counter
    /// (`tls_handshake_failures_total{reason}`). A client's alert about
    /// the server's own certificate is `server_certificate_refused`
    /// whatever the alert: the fix is the server's certificate or the
    /// clients' CA, either way.
    pub fn label(&self) -> &'static str {
        if self.whose == Whose::Ours {
            return "server_certificate_refused";
        }
        match self.reason {
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::UnknownIssuer => "unknown_issuer",
            Reason::Revoked => "revoked",
            Reason::NoCertificate => "no_certificate",
            Reason::WrongName | Reason::BadCertificate => "bad_certificate",
            Reason::Protocol => "protocol",
            Reason::Timeout => "timeout",
            Reason::Closed => "closed",
            Reason::Other => "other",
        }
    }

    /// Every label [`TlsFailure::label`] can return (the counter is
    /// bounded to these).
    pub const LABELS: [&'static str; 11] = [
        "expired",
        "not_yet_valid",
        "unknown_issuer",
        "revoked",
        "no_certificate",
        "bad_certificate",
        "protocol",
        "timeout",
        "closed",
        "server_certificate_refused",
        "other",
    ];

    /// The server's explanation, for its log: whose certificate and why.
    pub fn server_message(&self) -> String {
        match (self.whose, self.reason) {
            (Whose::Ours, _) => format!(
                "the client refused our server certificate ({}): is server.cert signed by the CA the client trusts, and valid?",
                self.detail
            ),
            (_, Reason::NoCertificate) => "the client sent no certificate".into(),
            (Whose::Peers, reason) => {
                let why = match reason {
                    Reason::Expired => "expired",
                    Reason::NotYetValid => "not yet valid",
                    Reason::UnknownIssuer => "unknown issuer: not signed by a trusted client CA",
                    Reason::Revoked => "revoked",
                    _ => "refused",
                };
                format!("client certificate {why} ({})", self.detail)
            }
            (Whose::Neither, Reason::Protocol) => format!(
                "not a TLS client of this port, or no protocol in common ({})",
                self.detail
            ),
            (Whose::Neither, _) => self.detail.clone(),
        }
    }

    /// The client's explanation: what the peer said about our
    /// certificate, or what is wrong with the peer's, naming the files
    /// and settings `context` knows.
    pub fn client_message(&self, context: &ClientContext<'_>) -> String {
        let peer = context.peer;
        let ours = context.cert.map_or(String::new(), |(key, path)| {
            format!(" ({key} = {})", path.display())
        });
        let ca = context.ca.map_or(String::new(), |(key, path)| {
            format!(" in {key} ({})", path.display())
        });
        match (self.whose, self.reason) {
            (Whose::Ours, Reason::Expired) => match context.validity {
                Some(v) if context.now < v.not_before => format!(
                    "{peer} refused our client certificate{ours}: our certificate is not yet valid (valid from {}); check this machine's clock",
                    rfc3339(v.not_before)
                ),
                Some(v) if context.now >= v.not_after => format!(
                    "{peer} refused our client certificate{ours} (certificate expired at {}); renew it, or enroll again",
                    rfc3339(v.not_after)
                ),
                Some(v) => format!(
                    "{peer} refused our client certificate{ours} as expired or not yet valid by its clock, but it is valid from {} to {} by ours: check the clocks",
                    rfc3339(v.not_before),
                    rfc3339(v.not_after)
                ),
                None => format!(
                    "{peer} refused our client certificate{ours} (certificate expired or not yet valid)"
                ),
            },
            (Whose::Ours, Reason::UnknownIssuer) => format!(
                "{peer} refused our client certificate{ours} (unknown issuer): it is not signed by a CA {peer} trusts for clients, or its revocation status is unknown there"
            ),
            (Whose::Ours, Reason::Revoked) => format!(
                "{peer} refused our client certificate{ours} (certificate revoked); enroll again for a new one"
            ),
            (Whose::Ours, Reason::NoCertificate) => {
                format!("{peer} requires a client certificate and none was sent")
            }
            (Whose::Ours, Reason::BadCertificate) => {
                format!(
                    "{peer} refused our client certificate{ours} ({})",
                    self.detail
                )
            }
            (Whose::Ours, _) => format!(
                "the TLS handshake with {peer} failed: it said {}",
                self.detail
            ),
            (Whose::Peers, Reason::UnknownIssuer) => {
                format!("unknown issuer: {peer}'s certificate is not signed by the CA{ca}")
            }
            (Whose::Peers, Reason::Expired) => {
                format!("{peer}'s certificate has expired ({})", self.detail)
            }
            (Whose::Peers, Reason::NotYetValid) => format!(
                "{peer}'s certificate is not yet valid ({}); check this machine's clock",
                self.detail
            ),
            (Whose::Peers, Reason::Revoked) => {
                format!("{peer}'s certificate is revoked")
            }
            (Whose::Peers, Reason::WrongName) => {
                let hint = context.server_name.map_or(String::new(), |key| {
                    format!("; set {key} to a name it holds")
                });
                format!(
                    "{peer}'s certificate does not name the host we connected to ({}){hint}",
                    self.detail
                )
            }
            (Whose::Peers, _) => format!("{peer}'s certificate is refused ({})", self.detail),
            (Whose::Neither, Reason::Protocol) => format!(
                "the TLS handshake with {peer} failed ({}): is this its TLS port?",
                self.detail
            ),
            (Whose::Neither, _) => {
                format!("the TLS handshake with {peer} failed ({})", self.detail)
            }
        }
    }
}

impl fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

/// What [`probe`] presents and trusts, PEM.
#[derive(Clone, Copy)]
pub struct ProbeMaterial<'a> {
    /// The CA bundle trusted for the server's certificate.
    pub ca_pem: &'a [u8],
    /// Our certificate chain.
    pub cert_pem: &'a [u8],
    /// Our private key (never shown).
    pub key_pem: &'a [u8],
}

impl fmt::Debug for ProbeMaterial<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ProbeMaterial { .. }")
    }
}

/// Whether a failed call's `message` is what a connection closed under
/// it says (hyper's `operation was canceled`, `connection closed`, a
/// reset): how a TLS 1.3 refusal of our certificate reaches a tonic
/// client, its alert lost on the way; worth a [`probe`].
pub fn worth_probing(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    [
        "canceled",
        "cancelled",
        "connection closed",
        "connection reset",
        "broken pipe",
        // The connection failed before the call with no cause kept
        // (hyper's bare `transport error` when the alert came while the
        // HTTP/2 connection was being set up).
        "transport error",
    ]
    .iter()
    .any(|words| message.contains(words))
}

/// The HTTP/2 client preface and an empty SETTINGS frame: a server that
/// accepted the handshake answers it; one that refused our certificate
/// has sent its alert instead.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

/// The rustls client config of a probe: `material`, HTTP/2.
fn probe_config(material: ProbeMaterial<'_>) -> Option<std::sync::Arc<rustls::ClientConfig>> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(material.ca_pem) {
        roots.add(ca.ok()?).ok()?;
    }
    let chain = CertificateDer::pem_slice_iter(material.cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .ok()?;
    let key = PrivateKeyDer::from_pem_slice(material.key_pem).ok()?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .ok()?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Some(std::sync::Arc::new(config))
}

/// One TLS handshake with `url` (`https://host:port`) presenting
/// `material`, then the HTTP/2 preface, waiting up to `wait` for the
/// answer: what the server said of our certificate when it refused it
/// after the handshake (TLS 1.3), which tonic reports as a cancelled
/// call. `None`: the handshake and the preface went through (the failure
/// was something else), no connection could be made, or `material` does
/// not build.
pub async fn probe(
    url: &str,
    server_name: Option<&str>,
    material: ProbeMaterial<'_>,
    wait: std::time::Duration,
) -> Option<TlsFailure> {
    probe_with(url, server_name, probe_config(material)?, wait).await
}

/// [`probe`] with a client config built by the caller (e.g. one whose key
/// signs in a PKCS#11 token and has no PEM). It must offer ALPN `h2`.
pub async fn probe_with(
    url: &str,
    server_name: Option<&str>,
    config: std::sync::Arc<rustls::ClientConfig>,
    wait: std::time::Duration,
) -> Option<TlsFailure> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let uri: tonic::codegen::http::Uri = url.parse().ok()?;
    let host = uri
        .host()?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let name =
        rustls::pki_types::ServerName::try_from(server_name.unwrap_or(&host).to_owned()).ok()?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let run = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .ok()?;
        let mut tls = match connector.connect(name, tcp).await {
            Ok(tls) => tls,
            Err(e) => return TlsFailure::find_in_io(&e),
        };
        if let Err(e) = tls.write_all(H2_PREFACE).await {
            return TlsFailure::find_in_io(&e);
        }
        let mut answer = [0u8; 64];
        match tls.read(&mut answer).await {
            Ok(_) => None,
            Err(e) => TlsFailure::find_in_io(&e),
        }
    };
    tokio::time::timeout(wait, run).await.ok().flatten()
}

/// A certificate's validity, seconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// notBefore.
    pub not_before: u64,
    /// notAfter.
    pub not_after: u64,
}

/// What a client knows to explain a failure: names of its settings and
/// files, and its own certificate's validity.
#[derive(Debug, Clone, Copy)]
pub struct ClientContext<'a> {
    /// Who the peer is, as the message names it: `the signer`.
    pub peer: &'a str,
    /// The setting and file of the CA bundle trusted for the peer's
    /// certificate: `("signer.ca", path)`, `("--ca", path)`.
    pub ca: Option<(&'a str, &'a Path)>,
    /// The setting and file of our certificate.
    pub cert: Option<(&'a str, &'a Path)>,
    /// The setting that names the peer's host for its certificate
    /// (`signer.tls_server_name`), for a certificate of another name.
    pub server_name: Option<&'a str>,
    /// Our certificate's validity, when it could be read: an
    /// `certificate_expired` alert means expired or not yet valid, and
    /// this says which.
    pub validity: Option<Validity>,
    /// Now, seconds since the epoch.
    pub now: u64,
}

impl<'a> ClientContext<'a> {
    /// A context naming `peer` and nothing else; add what is known.
    pub fn new(peer: &'a str) -> Self {
        ClientContext {
            peer,
            ca: None,
            cert: None,
            server_name: None,
            validity: None,
            now: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }
}

/// Seconds since the epoch as RFC 3339 (UTC, seconds), without a date
/// library: civil-from-days (H. Hinnant).
fn rfc3339(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::{AlertDescription, CertificateError, Error};

    fn io(e: Error) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }

    /// An error that, like h2, kept only the text of its cause.
    #[derive(Debug)]
    struct TextOnly(String);
    impl fmt::Display for TextOnly {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(&self.0)
        }
    }
    impl StdError for TextOnly {}

    /// An outer error with a source, like tonic's status over its
    /// transport error.
    #[derive(Debug)]
    struct Outer(Box<dyn StdError + Send + Sync>);
    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("operation was canceled")
        }
    }
    impl StdError for Outer {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            Some(&*self.0)
        }
    }

    fn found(error: &(dyn StdError + 'static)) -> (Whose, Reason, &'static str) {
        let f = TlsFailure::find(error).expect("a TLS failure in the chain");
        (f.whose, f.reason, f.label())
    }

    fn validity(not_before: u64, not_after: u64) -> Validity {
        Validity {
            not_before,
            not_after,
        }
    }

    #[test]
    fn an_expired_alert_under_a_cancelled_call_is_our_certificate_expired() {
        let chain = Outer(Box::new(io(Error::AlertReceived(
            AlertDescription::CertificateExpired,
        ))));
        assert_eq!(
            found(&chain),
            (Whose::Ours, Reason::Expired, "server_certificate_refused")
        );
        // h2 keeps only the text: the same answer.
        let text = Outer(Box::new(TextOnly(
            "connection error: received fatal alert: CertificateExpired".into(),
        )));
        assert_eq!(found(&text).1, Reason::Expired);
        // Rendered with our validity: expired, or not yet valid.
        let f = TlsFailure::find(&chain).expect("found");
        let path = Path::new("/etc/gw.pem");
        let mut context = ClientContext::new("the signer");
        context.cert = Some(("signer.cert", path));
        context.validity = Some(validity(1_000, 2_000));
        context.now = 3_000;
        let message = f.client_message(&context);
        assert_eq!(
            message,
            "the signer refused our client certificate (signer.cert = /etc/gw.pem) (certificate expired at 1970-01-01T00:33:20Z); renew it, or enroll again"
        );
        context.now = 500;
        assert!(
            f.client_message(&context)
                .contains("our certificate is not yet valid (valid from 1970-01-01T00:16:40Z)"),
            "{}",
            f.client_message(&context)
        );
        context.now = 1_500;
        assert!(f.client_message(&context).contains("check the clocks"));
    }

    #[test]
    fn an_unknown_ca_alert_is_our_certificate_of_an_untrusted_issuer() {
        let e = io(Error::AlertReceived(AlertDescription::UnknownCA));
        assert_eq!(found(&e).0, Whose::Ours);
        assert_eq!(found(&e).1, Reason::UnknownIssuer);
        let message = TlsFailure::find(&e)
            .expect("found")
            .client_message(&ClientContext::new("the signer"));
        assert!(
            message.starts_with("the signer refused our client certificate (unknown issuer)"),
            "{message}"
        );
    }

    #[test]
    fn a_revoked_alert_is_our_certificate_revoked() {
        let e = io(Error::AlertReceived(AlertDescription::CertificateRevoked));
        assert_eq!(found(&e).1, Reason::Revoked);
        assert!(
            TlsFailure::find(&e)
                .expect("found")
                .client_message(&ClientContext::new("the signer"))
                .contains("(certificate revoked)")
        );
    }

    #[test]
    fn a_bad_certificate_alert_is_our_certificate_refused() {
        for alert in [
            AlertDescription::BadCertificate,
            AlertDescription::UnsupportedCertificate,
            AlertDescription::CertificateUnknown,
        ] {
            let e = io(Error::AlertReceived(alert));
            assert_eq!(found(&e).1, Reason::BadCertificate, "{alert:?}");
        }
    }

    #[test]
    fn a_certificate_required_alert_is_no_certificate_sent() {
        let e = io(Error::AlertReceived(AlertDescription::CertificateRequired));
        let f = TlsFailure::find(&e).expect("found");
        assert_eq!((f.whose, f.reason), (Whose::Ours, Reason::NoCertificate));
        assert_eq!(
            f.client_message(&ClientContext::new("the signer")),
            "the signer requires a client certificate and none was sent"
        );
    }

    #[test]
    fn the_peers_certificate_of_an_unknown_issuer_names_our_ca_file() {
        let e = io(Error::InvalidCertificate(CertificateError::UnknownIssuer));
        assert_eq!(
            found(&e),
            (Whose::Peers, Reason::UnknownIssuer, "unknown_issuer")
        );
        let mut context = ClientContext::new("the signer");
        context.ca = Some(("signer.ca", Path::new("/etc/ca.pem")));
        assert_eq!(
            TlsFailure::find(&e)
                .expect("found")
                .client_message(&context),
            "unknown issuer: the signer's certificate is not signed by the CA in signer.ca (/etc/ca.pem)"
        );
        // Text only.
        let text = TextOnly("invalid peer certificate: UnknownIssuer".into());
        assert_eq!(found(&text).1, Reason::UnknownIssuer);
    }

    #[test]
    fn expired_not_yet_valid_and_revoked_peer_certificates() {
        for (error, reason, label) in [
            (CertificateError::Expired, Reason::Expired, "expired"),
            (
                CertificateError::NotValidYet,
                Reason::NotYetValid,
                "not_yet_valid",
            ),
            (CertificateError::Revoked, Reason::Revoked, "revoked"),
            (
                CertificateError::NotValidForName,
                Reason::WrongName,
                "bad_certificate",
            ),
            (
                CertificateError::BadEncoding,
                Reason::BadCertificate,
                "bad_certificate",
            ),
        ] {
            let e = Error::InvalidCertificate(error.clone());
            assert_eq!(found(&e), (Whose::Peers, reason, label), "{error:?}");
            let text = TextOnly(e.to_string());
            assert_eq!(found(&text).1, reason, "{e}");
        }
    }

    #[test]
    fn no_client_certificate_on_the_server_side() {
        let e = io(Error::NoCertificatesPresented);
        let f = TlsFailure::find(&e).expect("found");
        assert_eq!(f.label(), "no_certificate");
        assert_eq!(f.server_message(), "the client sent no certificate");
    }

    #[test]
    fn a_plain_client_on_a_tls_port_is_a_protocol_failure() {
        let e = io(Error::InvalidMessage(
            rustls::InvalidMessage::InvalidContentType,
        ));
        assert_eq!(TlsFailure::from_io(&e).label(), "protocol");
    }

    #[test]
    fn a_connection_closed_mid_handshake_and_a_timeout() {
        let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        assert_eq!(TlsFailure::from_io(&eof).label(), "closed");
        assert_eq!(TlsFailure::timeout().label(), "timeout");
        let other = std::io::Error::other("something");
        assert_eq!(TlsFailure::from_io(&other).label(), "other");
    }

    #[test]
    fn no_tls_failure_in_an_unrelated_chain() {
        let e = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(TlsFailure::find(&e), None);
        assert_eq!(
            TlsFailure::find(&TextOnly("tcp connect error".into())),
            None
        );
    }

    #[test]
    fn every_label_is_listed() {
        let failures = [
            TlsFailure::timeout(),
            TlsFailure::from_rustls(&Error::AlertReceived(AlertDescription::UnknownCA)),
            TlsFailure::from_rustls(&Error::NoCertificatesPresented),
            TlsFailure::from_rustls(&Error::General("x".into())),
        ];
        for f in failures {
            assert!(TlsFailure::LABELS.contains(&f.label()), "{}", f.label());
        }
    }

    #[test]
    fn rfc3339_of_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
