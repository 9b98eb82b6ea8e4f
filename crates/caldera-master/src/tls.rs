//! TLS on both of the master's ports: one certificate and key (PEM files) serve the HTTP API and
//! the worker service. The files are read again when they change (polled) or when asked
//! ([`ServerTls::reload`], which `caldera master` calls on SIGHUP); a connection always gets the
//! certificate loaded when its handshake ran, so a renewal needs no restart. A pair that does not
//! load (a key that does not match the certificate, a file written half-way) is refused with a
//! WARN line and the previous pair stays in service.
//!
//! rustls with the ring provider only (no aws-lc). Handshakes run in tasks of their own, so a slow
//! or silent client holds up nobody else.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

/// How often the certificate files are checked for changes, unless set otherwise.
pub const DEFAULT_POLL: Duration = Duration::from_secs(5);
/// A client that has not finished its handshake after this long is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for the server to take them.
const BACKLOG: usize = 64;

/// Why a certificate and key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{}: {message}", path.display())]
    Pem { path: PathBuf, message: String },
    #[error("the key {} does not fit the certificate {}: {message}", key.display(), cert.display())]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        message: String,
    },
    #[error("TLS settings: {0}")]
    Config(String),
}

/// The master's certificate: where its files are, and the pair loaded last.
#[derive(Debug)]
pub struct ServerTls {
    cert_path: PathBuf,
    key_path: PathBuf,
    /// How often [`ServerTls::watch`] looks at the files.
    poll: Duration,
    current: RwLock<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    /// The files' modification times and sizes when they were read.
    stamp: Stamp,
}

type Stamp = [(Option<SystemTime>, u64); 2];

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl ServerTls {
    /// Reads the certificate chain (PEM, the master's certificate first) and its private key (PEM:
    /// PKCS#8, PKCS#1 or SEC1). An error says which file is wrong and why.
    pub fn load(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Result<ServerTls, TlsError> {
        let (cert_path, key_path) = (cert.into(), key.into());
        let stamp = stamp(&cert_path, &key_path);
        let key = load_pair(&cert_path, &key_path)?;
        Ok(ServerTls {
            cert_path,
            key_path,
            poll: DEFAULT_POLL,
            current: RwLock::new(Loaded { key, stamp }),
        })
    }

    /// Checks the files every `poll` instead of every [`DEFAULT_POLL`].
    pub fn with_poll(mut self, poll: Duration) -> ServerTls {
        self.poll = poll.max(Duration::from_millis(10));
        self
    }

    /// The certificate file.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// The certificate new connections get now (DER, the master's own first).
    pub fn certificate(&self) -> CertificateDer<'static> {
        self.current().cert[0].clone()
    }

    fn current(&self) -> Arc<CertifiedKey> {
        let loaded = self.current.read().unwrap_or_else(|p| p.into_inner());
        loaded.key.clone()
    }

    /// Reads both files again and serves the new pair from the next handshake on. On error the
    /// pair in service stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let stamp = stamp(&self.cert_path, &self.key_path);
        let key = load_pair(&self.cert_path, &self.key_path)?;
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        *current = Loaded { key, stamp };
        Ok(())
    }

    /// [`reload`](Self::reload) when either file's modification time or size changed since the
    /// last read (a failed read is tried again on the next change). `Ok(true)` when reloaded.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = stamp(&self.cert_path, &self.key_path);
        {
            let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
            if current.stamp == now {
                return Ok(false);
            }
            // seen: a broken pair is reported once, not on every poll
            current.stamp = now;
        }
        self.reload().map(|()| true)
    }

    /// Reloads on change, every `poll`, until `shutdown`; logs what happened.
    pub(crate) fn watch(
        self: Arc<Self>,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(self.poll);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                match self.reload_if_changed() {
                    Ok(false) => {}
                    Ok(true) => {
                        tracing::info!(cert = %self.cert_path.display(), "TLS certificate reloaded")
                    }
                    Err(e) => tracing::warn!(
                        error = %e,
                        "TLS certificate files changed but do not load; still serving the previous certificate"
                    ),
                }
            }
        })
    }

    /// A rustls server configuration offering `alpn`, whose certificate is always the current one.
    fn acceptor(self: &Arc<Self>, alpn: &[&[u8]]) -> Result<TlsAcceptor, TlsError> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver(self.clone())));
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(TlsAcceptor::from(Arc::new(config)))
    }

    /// Accepts on `listener` and hands out connections whose handshake is done (HTTP/1.1).
    pub(crate) fn http_listener(
        self: &Arc<Self>,
        listener: TcpListener,
    ) -> Result<TlsListener, TlsError> {
        let local = listener
            .local_addr()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let rx = spawn_acceptor(listener, self.acceptor(&[b"http/1.1"])?, false);
        Ok(TlsListener { rx, local })
    }

    /// The connections for the gRPC server (HTTP/2 only, no Nagle), handshake done.
    pub(crate) fn grpc_incoming(
        self: &Arc<Self>,
        listener: TcpListener,
    ) -> Result<impl futures::Stream<Item = io::Result<TlsConn>> + use<>, TlsError> {
        let rx = spawn_acceptor(listener, self.acceptor(&[b"h2"])?, true);
        Ok(futures::StreamExt::map(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            |(conn, _)| Ok(TlsConn(conn)),
        ))
    }
}

#[derive(Debug)]
struct Resolver(Arc<ServerTls>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current())
    }
}

fn stamp(cert: &Path, key: &Path) -> Stamp {
    [cert, key].map(|p| match std::fs::metadata(p) {
        Ok(m) => (m.modified().ok(), m.len()),
        Err(_) => (None, 0),
    })
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The chain and key of two PEM files, checked to belong together.
fn load_pair(cert_path: &Path, key_path: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let pem_error = |path: &Path, message: String| TlsError::Pem {
        path: path.to_owned(),
        message,
    };
    let cert_pem = read(cert_path)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(cert_path, format!("not a PEM certificate file: {e}")))?;
    if chain.is_empty() {
        return Err(pem_error(cert_path, "holds no CERTIFICATE block".into()));
    }
    let key_pem = read(key_path)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| pem_error(key_path, format!("holds no usable private key: {e}")))?;
    let certified =
        CertifiedKey::from_der(chain, key, &provider()).map_err(|e| TlsError::Mismatch {
            cert: cert_path.to_owned(),
            key: key_path.to_owned(),
            message: e.to_string(),
        })?;
    Ok(Arc::new(certified))
}

/// Accepts TCP connections and runs each handshake in a task of its own; finished ones come out
/// of the channel. Ends when the receiver is dropped.
fn spawn_acceptor(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    nodelay: bool,
) -> mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)> {
    let (tx, rx) = mpsc::channel(BACKLOG);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = tx.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // e.g. out of file descriptors: wait a little, as axum and tonic do
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if nodelay {
                let _ = tcp.set_nodelay(true);
            }
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(conn)) => {
                        let _ = tx.send((conn, peer)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    rx
}

/// The HTTP port's connections, for `axum::serve`.
pub(crate) struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // the acceptor only ends when this receiver is gone
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// A gRPC connection over TLS (tonic's own impl for TLS streams needs its TLS feature, which
/// would bring aws-lc).
pub(crate) struct TlsConn(TlsStream<TcpStream>);

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.get_ref().0.connect_info()
    }
}

impl tokio::io::AsyncRead for TlsConn {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TlsConn {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}
