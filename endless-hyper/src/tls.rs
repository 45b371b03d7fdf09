//! TLS through tokio-rustls (with the `ring` provider, unless the application installed
//! a process-default one), with the `tls` feature.
//!
//! Certificates are read when the process starts, so a restart picks up renewed ones:
//! replace the files, send `SIGHUP`, and the new generation serves the new certificate
//! while the old one finishes its connections with the old.

use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// An acceptor for the certificate chain and private key in these PEM files, offering
/// HTTP/2 and HTTP/1.1 by ALPN.
pub fn acceptor_from_pem_files(cert: &Path, key: &Path) -> io::Result<TlsAcceptor> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| pem_error(cert, e))?;
    if certs.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: no certificate", cert.display()),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_error(key, e))?;
    acceptor(certs, key)
}

/// An acceptor for this certificate chain and key, offering HTTP/2 and HTTP/1.1 by ALPN.
///
/// The crypto comes from the process-default provider if the application installed one
/// (`rustls::crypto::CryptoProvider::install_default`, early in `main`: aws-lc-rs for
/// post-quantum key exchange, say), else from *ring*.
pub fn acceptor(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> io::Result<TlsAcceptor> {
    let provider =
        CryptoProvider::get_default().map_or_else(|| Arc::new(ring_provider()), Arc::clone);
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// *ring*'s provider, which is this crate's (rustls' `ring` feature).
///
/// rustls 0.23.48 deprecates `ring::default_provider` ("no support for post-quantum
/// algorithms") with no other way to it within 0.23: its key and random providers are
/// private, and `ServerConfig::builder()` (the provider of the crate features) panics when
/// both rustls providers are on in the dependency graph. The provider itself is what it
/// was; an application that wants post-quantum key exchange installs aws-lc-rs's as the
/// process default, which [`acceptor`] takes first. (`allow`, not `expect`: no warning
/// before 0.23.48 either.)
#[allow(deprecated)]
fn ring_provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

fn pem_error(path: &Path, e: rustls_pki_types::pem::Error) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: {e}", path.display()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_acceptor_offers_h2_and_http1_with_ring_when_no_provider_is_installed() {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let key = PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
        let acceptor = acceptor(vec![cert.cert.der().clone()], key).unwrap();
        let config = acceptor.config();
        assert_eq!(config.alpn_protocols, [&b"h2"[..], b"http/1.1"]);
        assert!(CryptoProvider::get_default().is_none(), "installed nothing");
        assert_eq!(
            config.crypto_provider().cipher_suites,
            ring_provider().cipher_suites
        );
    }
}
