//! The client side of TLS to the master, for the worker (gRPC) and the CLI (HTTPS): which roots a
//! master's certificate must chain to, and when plain TCP is allowed at all.
//!
//! * `https://` verifies the master's certificate against the system's roots, or — when a CA file
//!   is given — against that file's certificates only (a private fleet CA pins the trust).
//! * `http://` is plain TCP: allowed to a loopback address (the traffic never leaves the machine),
//!   elsewhere only when asked for explicitly (`--insecure-plaintext`), since tokens would cross
//!   the network in clear text.
//!
//! rustls with the ring provider only. The gRPC connection uses a connector of ours
//! ([`MasterEndpoint::connect`]) rather than tonic's TLS features, which would bring aws-lc.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// Whether `host` (a URL's host: a name, an IPv4 address or a bracketed IPv6 address) is this
/// machine: `localhost`, 127.0.0.0/8 or ::1.
pub fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Refuses plain TCP to `host` unless it is loopback or `insecure` allows it; the message says
/// what to do instead.
pub fn check_plaintext(host: &str, insecure: bool) -> Result<(), String> {
    if insecure || is_loopback(host) {
        return Ok(());
    }
    Err(format!(
        "http:// to {host} would send the token in clear text over the network: use https:// \
         (the master with --tls-cert/--tls-key), or pass --insecure-plaintext to accept that"
    ))
}

/// A rustls client configuration offering `alpn`, trusting the certificates of `ca_file` (PEM)
/// when given, else the system's roots.
pub fn client_config(
    ca_file: Option<&Path>,
    alpn: &[&[u8]],
) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| format!("reading the CA file {}: {e}", path.display()))?;
            let certs = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("the CA file {} is not PEM: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!(
                    "the CA file {} holds no CERTIFICATE block",
                    path.display()
                ));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| {
                    format!(
                        "the CA file {} holds an unusable certificate: {e}",
                        path.display()
                    )
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(format!(
                    "no trusted root certificates on this system ({} errors reading them): \
                     install ca-certificates, or pass --ca-file",
                    found.errors.len()
                ));
            }
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS settings: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// The master's certificate did not verify: retrying cannot help until someone changes the
/// master's certificate or this side's CA.
#[derive(Debug, thiserror::Error)]
#[error("the master's certificate for {host} does not verify: {cause}")]
pub struct CertificateRejected {
    pub host: String,
    pub cause: rustls::Error,
}

/// The worker's way to the master: the tonic endpoint, and the TLS configuration for `https://`.
#[derive(Clone)]
pub(crate) struct MasterEndpoint {
    pub endpoint: Endpoint,
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl MasterEndpoint {
    /// Connects (TCP, then the TLS handshake for `https://`), with the endpoint's timeout.
    pub async fn connect(&self) -> Result<Channel, tonic::transport::Error> {
        let Some(tls) = self.tls.clone() else {
            return self.endpoint.connect().await;
        };
        let connector = tower::service_fn(move |uri: Uri| connect_tls(uri, tls.clone()));
        self.endpoint.connect_with_connector(connector).await
    }
}

async fn connect_tls(
    uri: Uri,
    tls: Arc<rustls::ClientConfig>,
) -> Result<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>, BoxError> {
    let host = uri.host().ok_or("the master's URL has no host")?;
    let bare = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let tcp = TcpStream::connect((bare.as_str(), port)).await?;
    // no Nagle, as on plain TCP: small messages must leave at once (see the master's server.rs)
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(bare.clone())
        .map_err(|e| format!("{host} is not a host name for TLS: {e}"))?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| -> BoxError {
            match e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            {
                Some(cause @ rustls::Error::InvalidCertificate(_)) => {
                    Box::new(CertificateRejected {
                        host: bare.clone(),
                        cause: cause.clone(),
                    })
                }
                _ => format!("TLS handshake with {host}: {e}").into(),
            }
        })?;
    Ok(TokioIo::new(stream))
}

/// The [`CertificateRejected`] somewhere in `e`'s chain of sources.
pub(crate) fn certificate_rejected<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a CertificateRejected> {
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(rejected) = err.downcast_ref::<CertificateRejected>() {
            return Some(rejected);
        }
        next = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for host in [
            "localhost",
            "LOCALHOST",
            "127.0.0.1",
            "127.1.2.3",
            "[::1]",
            "::1",
        ] {
            assert!(is_loopback(host), "{host}");
        }
        for host in [
            "master",
            "10.0.0.1",
            "0.0.0.0",
            "[::]",
            "localhost.example",
            "[fe80::1]",
        ] {
            assert!(!is_loopback(host), "{host}");
        }
    }

    #[test]
    fn plaintext_needs_loopback_or_the_flag() {
        assert!(check_plaintext("127.0.0.1", false).is_ok());
        assert!(check_plaintext("master.internal", true).is_ok());
        let err = check_plaintext("master.internal", false).unwrap_err();
        assert!(
            err.contains("clear text") && err.contains("--insecure-plaintext"),
            "{err}"
        );
    }

    #[test]
    fn ca_file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = client_config(Some(&missing), &[]).unwrap_err();
        assert!(
            err.contains("missing.pem") && err.contains("reading"),
            "{err}"
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no pem here\n").unwrap();
        let err = client_config(Some(&empty), &[]).unwrap_err();
        assert!(
            err.contains("empty.pem") && err.contains("no CERTIFICATE"),
            "{err}"
        );
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = client_config(Some(&garbage), &[]).unwrap_err();
        assert!(err.contains("garbage.pem"), "{err}");
    }
}
