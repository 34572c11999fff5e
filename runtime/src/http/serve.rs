//! Serving a router on a listener with the connection-level limits every server needs: a
//! header read timeout (slowloris), an idle timeout, a connection limit, optional TLS, and
//! graceful shutdown.
//!
//! The request-level limits (request timeout, body limit, concurrency) are [`super::layers`]'
//! job; [`serve`] guards what happens before a request exists and between requests.

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The certificate chain and private key (PEM files) a server presents when it serves HTTPS.
///
/// Services read them from two config keys, `tls_cert` and `tls_key`, and pass them to
/// [`ServeOptions::with_tls`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first (PEM, one or more `CERTIFICATE` blocks).
    pub cert: PathBuf,
    /// The private key of the leaf certificate (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// How [`serve`] treats connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeOptions {
    /// How long a client has to send a request's complete header block, counted from the
    /// moment the server starts waiting for it (default 10 s). That includes the wait for the
    /// next request on a keep-alive connection and, with TLS, the handshake. A connection over
    /// it is closed: this is what stops slowloris clients.
    pub header_read_timeout: Duration,
    /// How long a connection may pass no byte in either direction before it is closed (default
    /// 60 s): a stalled upload, or a client that stops reading its answer. Keep it above the
    /// event streams' keep-alive interval ([`super::SSE_KEEP_ALIVE`], 15 s) and above the
    /// request timeout of [`super::HttpLimits`] (30 s), or quiet streams and slow handlers are
    /// cut off.
    pub idle_timeout: Duration,
    /// How many connections are served at once (default 1024); further clients wait in the
    /// listener's backlog until one closes.
    pub max_connections: usize,
    /// Serve HTTPS with these files; `None` serves plain HTTP.
    pub tls: Option<TlsFiles>,
}

impl ServeOptions {
    /// The default header read timeout, 10 s.
    pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
    /// The default idle timeout, 60 s.
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    /// The default connection limit, 1024.
    pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

    /// These options with TLS from a service's `tls_cert` and `tls_key` config keys: both set
    /// serves HTTPS, neither serves plain HTTP, only one is an error.
    pub fn with_tls(
        mut self,
        tls_cert: Option<PathBuf>,
        tls_key: Option<PathBuf>,
    ) -> Result<Self, ServeError> {
        self.tls = match (tls_cert, tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            (Some(_), None) => return Err(ServeError::TlsHalfConfigured { missing: "tls_key" }),
            (None, Some(_)) => {
                return Err(ServeError::TlsHalfConfigured {
                    missing: "tls_cert",
                });
            }
        };
        Ok(self)
    }

    /// `"https"` with TLS, `"http"` without: for building the server's own URL.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// Reads the TLS files now, so that a service can refuse to start on a bad certificate or
    /// key instead of failing later in its server task. Without TLS it does nothing.
    pub fn check(&self) -> Result<(), ServeError> {
        self.tls.as_ref().map(tls_acceptor).transpose().map(|_| ())
    }
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            header_read_timeout: Self::DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: Self::DEFAULT_IDLE_TIMEOUT,
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
            tls: None,
        }
    }
}

/// Why [`serve`] could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Only one of `tls_cert` and `tls_key` is set.
    #[error("{missing} is not set: set both tls_cert and tls_key to serve HTTPS, or neither")]
    TlsHalfConfigured {
        /// The config key that is missing.
        missing: &'static str,
    },
    /// The certificate file could not be read or holds no certificate.
    #[error("cannot read the TLS certificate chain (tls_cert) from {path}: {message}")]
    Certificate {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The key file could not be read or holds no private key.
    #[error("cannot read the TLS private key (tls_key) from {path}: {message}")]
    Key {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the pair (for example, the key does not match the certificate).
    #[error("the TLS certificate {cert} and key {key} cannot be used: {message}")]
    Tls {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls' reason.
        message: String,
    },
}

/// Builds the TLS acceptor from PEM files (rustls with the ring provider; HTTP/1.1 by ALPN).
fn tls_acceptor(files: &TlsFiles) -> Result<TlsAcceptor, ServeError> {
    let certificate = |message: String| ServeError::Certificate {
        path: files.cert.clone(),
        message,
    };
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| certificate(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| certificate(e.to_string()))?;
    if chain.is_empty() {
        return Err(certificate("the file holds no CERTIFICATE block".into()));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| ServeError::Key {
        path: files.key.clone(),
        message: e.to_string(),
    })?;
    let refused = |e: rustls::Error| ServeError::Tls {
        cert: files.cert.clone(),
        key: files.key.clone(),
        message: e.to_string(),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(refused)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(refused)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then lets in-flight requests
/// finish and returns once every connection has closed.
///
/// HTTP/1.1 through hyper, with the limits of `options`: connections that do not send their
/// headers within the header read timeout, or pass no byte for the idle timeout, are closed;
/// at most `max_connections` are served at once; with [`ServeOptions::tls`] it speaks only
/// HTTPS (plain HTTP on that port fails the handshake). Failing connections are logged at
/// debug level and never stop the server.
///
/// It fails only before serving, when the TLS files cannot be used (see
/// [`ServeOptions::check`]).
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use gridmesh_runtime::http::{ServeOptions, serve};
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
/// let options = ServeOptions::default().with_tls(Some("cert.pem".into()), Some("key.pem".into()))?;
/// let shutdown = tokio_util::sync::CancellationToken::new();
/// serve(listener, axum::Router::new(), &options, shutdown).await?;
/// # Ok(())
/// # }
/// ```
pub async fn serve(
    listener: TcpListener,
    router: Router,
    options: &ServeOptions,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let tls = options.tls.as_ref().map(tls_acceptor).transpose()?;
    let limits = ConnectionLimits {
        header_read_timeout: options.header_read_timeout,
        idle_timeout: options.idle_timeout,
    };
    let slots = Arc::new(Semaphore::new(options.max_connections.max(1)));
    let connections = TaskTracker::new();
    loop {
        let slot = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let (stream, remote) = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) if is_connection_error(&error) => continue,
                Err(error) => {
                    // Such as too many open files: wait instead of spinning.
                    tracing::warn!(%error, "accepting a connection failed; retrying in 1 s");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            },
        };
        let (router, tls, shutdown) = (router.clone(), tls.clone(), shutdown.clone());
        connections.spawn(async move {
            let _ = stream.set_nodelay(true);
            let activity = Activity::new();
            let stream = Tracked {
                inner: stream,
                activity: activity.clone(),
            };
            match tls {
                None => serve_connection(stream, router, limits, activity, shutdown).await,
                Some(acceptor) => {
                    let handshake = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        h = tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream)) => h,
                    };
                    match handshake {
                        Ok(Ok(stream)) => {
                            serve_connection(stream, router, limits, activity, shutdown).await
                        }
                        Ok(Err(error)) => {
                            tracing::debug!(%remote, %error, "TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                    }
                }
            }
            drop(slot);
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
}

/// Accept errors that concern one connection only: skip it and accept the next.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// The per-connection part of [`ServeOptions`].
#[derive(Debug, Clone, Copy)]
struct ConnectionLimits {
    header_read_timeout: Duration,
    idle_timeout: Duration,
}

/// Serves one connection until it ends, is idle too long, or shutdown drains it.
async fn serve_connection<I>(
    io: I,
    router: Router,
    limits: ConnectionLimits,
    activity: Activity,
    shutdown: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let connection = builder
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(router))
        .with_upgrades();
    tokio::pin!(connection);
    let mut draining = false;
    loop {
        let idle_until = activity.last() + limits.idle_timeout;
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, "connection closed with an error");
                }
                return;
            }
            _ = shutdown.cancelled(), if !draining => {
                // Finish the request in flight, if any, then close.
                connection.as_mut().graceful_shutdown();
                draining = true;
            }
            _ = tokio::time::sleep_until(idle_until) => {
                if activity.last() + limits.idle_timeout <= Instant::now() {
                    tracing::debug!("closing a connection idle for {:?}", limits.idle_timeout);
                    return;
                }
            }
        }
    }
}

/// When a connection last moved a byte (tokio time, so paused-time tests see it).
#[derive(Debug, Clone)]
struct Activity {
    origin: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    fn new() -> Self {
        Activity {
            origin: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.origin + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// A stream that records in [`Activity`] every read or write that moves bytes.
struct Tracked<I> {
    inner: I,
    activity: Activity,
}

impl<I: AsyncRead + Unpin> AsyncRead for Tracked<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Tracked<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::{get, post};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpStream;
    use tokio::sync::{mpsc, oneshot};

    const GET_HELLO: &[u8] = b"GET /hello HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";

    async fn start(
        router: Router,
        options: ServeOptions,
    ) -> (
        std::net::SocketAddr,
        CancellationToken,
        tokio::task::JoinHandle<Result<(), ServeError>>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let token = stop.clone();
        let server = tokio::spawn(async move { serve(listener, router, &options, token).await });
        (addr, stop, server)
    }

    fn hello() -> Router {
        Router::new().route("/hello", get(|| async { "hello" }))
    }

    /// Reads until the server closes the connection (EOF or reset).
    async fn read_until_closed<S: AsyncRead + Unpin>(stream: &mut S) -> Vec<u8> {
        let mut received = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return received,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    }

    /// Regression (issue 13, defect 4): connections that never finished their headers were
    /// never closed.
    #[tokio::test(start_paused = true)]
    async fn a_slowloris_connection_is_closed_after_the_header_timeout() {
        let options = ServeOptions {
            header_read_timeout: Duration::from_secs(10),
            ..ServeOptions::default()
        };
        let (addr, stop, server) = start(hello(), options).await;

        // A complete request is answered.
        let mut healthy = TcpStream::connect(addr).await.unwrap();
        healthy.write_all(GET_HELLO).await.unwrap();
        let answer = read_until_closed(&mut healthy).await;
        assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");

        // A partial header is cut off after the timeout, not before.
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /hello HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
            .await
            .unwrap();
        let started = Instant::now();
        let closed = tokio::time::timeout(Duration::from_secs(12), read_until_closed(&mut slow))
            .await
            .expect("the server kept a slowloris connection open past its header timeout");
        assert!(!closed.starts_with(b"HTTP/1.1 200"), "{closed:?}");
        assert!(
            started.elapsed() >= Duration::from_secs(10),
            "closed early, after {:?}",
            started.elapsed()
        );

        // Saying nothing at all is no better.
        let mut silent = TcpStream::connect(addr).await.unwrap();
        tokio::time::timeout(Duration::from_secs(12), read_until_closed(&mut silent))
            .await
            .expect("a silent connection was kept open");

        stop.cancel();
        server.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_upload_is_closed_after_the_idle_timeout() {
        let options = ServeOptions {
            idle_timeout: Duration::from_secs(5),
            ..ServeOptions::default()
        };
        let router = Router::new().route("/upload", post(|body: String| async move { body }));
        let (addr, stop, server) = start(router, options).await;
        let mut client = TcpStream::connect(addr).await.unwrap();
        client
            .write_all(b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\nonly ten b")
            .await
            .unwrap();
        let started = Instant::now();
        tokio::time::timeout(Duration::from_secs(7), read_until_closed(&mut client))
            .await
            .expect("a stalled upload kept its connection open");
        assert!(started.elapsed() >= Duration::from_secs(5));
        stop.cancel();
        server.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn connections_over_the_limit_wait_for_a_free_slot() {
        let options = ServeOptions {
            max_connections: 1,
            ..ServeOptions::default()
        };
        let (addr, stop, server) = start(hello(), options).await;
        let keep_alive = b"GET /hello HTTP/1.1\r\nHost: localhost\r\n\r\n";
        let mut first = TcpStream::connect(addr).await.unwrap();
        first.write_all(keep_alive).await.unwrap();
        let mut buf = [0u8; 1024];
        let n = first.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));

        let mut second = TcpStream::connect(addr).await.unwrap();
        second.write_all(GET_HELLO).await.unwrap();
        let waited = tokio::time::timeout(Duration::from_secs(1), second.read(&mut buf)).await;
        assert!(
            waited.is_err(),
            "a second connection was served over the limit"
        );

        drop(first);
        let answer = read_until_closed(&mut second).await;
        assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
        stop.cancel();
        server.await.unwrap().unwrap();
    }

    /// Event streams send a keep-alive comment every `SSE_KEEP_ALIVE` (15 s), well within the
    /// default idle timeout, so a quiet stream is not mistaken for a dead connection.
    #[tokio::test(start_paused = true)]
    async fn a_quiet_event_stream_outlives_the_idle_timeout() {
        let (events, _) = tokio::sync::broadcast::channel::<u32>(4);
        let router = Router::new().route(
            "/events",
            get(move || {
                let receiver = events.subscribe();
                async move {
                    super::super::sse_from_broadcast(receiver, CancellationToken::new(), |n| {
                        Some(axum::response::sse::Event::default().data(n.to_string()))
                    })
                }
            }),
        );
        let (addr, stop, server) = start(router, ServeOptions::default()).await;
        let mut client = TcpStream::connect(addr).await.unwrap();
        client
            .write_all(b"GET /events HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 1024];
        while started.elapsed() < ServeOptions::DEFAULT_IDLE_TIMEOUT * 3 {
            let n = client.read(&mut buf).await.unwrap();
            assert!(n > 0, "the stream was closed after {:?}", started.elapsed());
        }
        stop.cancel();
        drop(client);
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn shutdown_lets_the_request_in_flight_finish() {
        let (started_tx, mut started_rx) = mpsc::channel::<()>(1);
        let (release_tx, release_rx) = oneshot::channel::<()>();
        let release_rx = Arc::new(tokio::sync::Mutex::new(Some(release_rx)));
        let router = Router::new().route(
            "/slow",
            get(move || {
                let (started_tx, release_rx) = (started_tx.clone(), release_rx.clone());
                async move {
                    started_tx.send(()).await.unwrap();
                    let release = release_rx.lock().await.take().unwrap();
                    release.await.unwrap();
                    "finished"
                }
            }),
        );
        let (addr, stop, server) = start(router, ServeOptions::default()).await;
        let mut client = TcpStream::connect(addr).await.unwrap();
        client
            .write_all(b"GET /slow HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        started_rx.recv().await.unwrap();
        stop.cancel();
        tokio::task::yield_now().await;
        assert!(
            !server.is_finished(),
            "the server stopped with a request in flight"
        );
        release_tx.send(()).unwrap();
        let answer = read_until_closed(&mut client).await;
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.ends_with("finished"), "{text}");
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("the server did not stop after its last request")
            .unwrap()
            .unwrap();
        assert!(TcpStream::connect(addr).await.is_err(), "still accepting");
    }

    /// A CA, and a certificate for `localhost` signed by it, written as PEM files.
    struct TestPki {
        _dir: tempfile::TempDir,
        ca: CertificateDer<'static>,
        files: TlsFiles,
    }

    fn test_pki() -> TestPki {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles {
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
        };
        std::fs::write(&files.cert, leaf.pem()).unwrap();
        std::fs::write(&files.key, leaf_key.serialize_pem()).unwrap();
        TestPki {
            _dir: dir,
            ca: ca_cert.der().clone(),
            files,
        }
    }

    #[tokio::test]
    async fn https_is_served_with_the_configured_certificate_and_plain_http_fails() {
        let pki = test_pki();
        let options = ServeOptions::default()
            .with_tls(Some(pki.files.cert.clone()), Some(pki.files.key.clone()))
            .unwrap();
        assert_eq!(options.scheme(), "https");
        options.check().unwrap();
        let (addr, stop, server) = start(hello(), options).await;

        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.ca.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        tls.write_all(GET_HELLO).await.unwrap();
        let answer = read_until_closed(&mut tls).await;
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.ends_with("hello"), "{text}");

        let mut plain = TcpStream::connect(addr).await.unwrap();
        plain.write_all(GET_HELLO).await.unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(30), read_until_closed(&mut plain))
            .await
            .expect("plain HTTP on the TLS port hung");
        assert!(
            !answer.starts_with(b"HTTP/"),
            "plain HTTP was answered: {answer:?}"
        );

        stop.cancel();
        server.await.unwrap().unwrap();
    }

    #[test]
    fn tls_settings_are_checked_before_serving() {
        let half = ServeOptions::default().with_tls(Some("cert.pem".into()), None);
        assert!(matches!(
            half,
            Err(ServeError::TlsHalfConfigured { missing: "tls_key" })
        ));
        let plain = ServeOptions::default().with_tls(None, None).unwrap();
        assert_eq!(plain.scheme(), "http");
        plain.check().unwrap();

        let pki = test_pki();
        let missing = ServeOptions::default()
            .with_tls(
                Some(pki.files.cert.with_extension("nope")),
                Some(pki.files.key.clone()),
            )
            .unwrap();
        let error = missing.check().unwrap_err();
        assert!(matches!(error, ServeError::Certificate { .. }), "{error}");
        assert!(error.to_string().contains("tls_cert"), "{error}");

        // The certificate given as the key: no private key in it.
        let swapped = ServeOptions::default()
            .with_tls(Some(pki.files.cert.clone()), Some(pki.files.cert.clone()))
            .unwrap();
        assert!(matches!(swapped.check(), Err(ServeError::Key { .. })));

        // A key that belongs to another certificate.
        let other = test_pki();
        let mismatched = ServeOptions::default()
            .with_tls(Some(pki.files.cert.clone()), Some(other.files.key.clone()))
            .unwrap();
        assert!(
            matches!(mismatched.check(), Err(ServeError::Tls { .. })),
            "{:?}",
            mismatched.check()
        );
    }
}
