//! [`served_serial`]: which certificate a fresh TLS handshake is given.

use std::sync::Arc;

use enos_testkit::Identity;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
use x509_parser::{certificate::X509Certificate, prelude::FromDer};

/// The serial of the certificate a fresh handshake is given.
pub async fn served_serial(addr: std::net::SocketAddr, ca_pem: &str, client: &Identity) -> String {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("ca pem")).expect("ca");
    }
    let chain = CertificateDer::pem_slice_iter(client.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("chain");
    let key = PrivateKeyDer::from_pem_slice(client.key_pem.as_bytes()).expect("key");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .expect("client config");
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("handshake");
    let (_, session) = stream.get_ref();
    let leaf = session.peer_certificates().expect("server certs")[0].clone();
    let (_, cert) = X509Certificate::from_der(leaf.as_ref()).expect("x509");
    cert.tbs_certificate.raw_serial_as_string()
}

pub fn serial_of(pem: &str) -> String {
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).expect("pem");
    let (_, cert) = X509Certificate::from_der(der.as_ref()).expect("x509");
    cert.tbs_certificate.raw_serial_as_string()
}
