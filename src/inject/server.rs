//! The webhook's HTTPS server: rustls with the certificate and key read from files and read
//! again when they change (cert-manager renews them in place), HTTP/1.1 with hyper, and
//! limits on what a client controls — connections, handshake and header time, body size.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::review::{self, Selection};
use super::template::Template;
use super::InjectError;

/// Largest AdmissionReview accepted (a pod object is far smaller; etcd caps objects at 1.5 MiB).
pub const MAX_BODY: usize = 4 << 20;
/// Most connections served at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 256;
/// Longest a TLS handshake, a request head, or a whole exchange may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the certificate files are checked for a change.
pub const RELOAD_EVERY: Duration = Duration::from_secs(5);

/// The serving certificate, swapped whole when its files change.
#[derive(Debug)]
pub struct Certificate {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<CertifiedKey>,
    stamp: std::sync::Mutex<Stamp>,
}

type Stamp = (Option<SystemTime>, Option<SystemTime>, u64);

fn stamp(cert: &Path, key: &Path) -> Stamp {
    let meta = |p: &Path| std::fs::metadata(p).ok();
    let (c, k) = (meta(cert), meta(key));
    (
        c.as_ref().and_then(|m| m.modified().ok()),
        k.as_ref().and_then(|m| m.modified().ok()),
        c.map(|m| m.len()).unwrap_or(0) ^ k.map(|m| m.len() << 32).unwrap_or(0),
    )
}

fn load(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, InjectError> {
    let bad = |path: &Path, why: String| InjectError::Tls {
        path: path.display().to_string(),
        why,
    };
    let pem = std::fs::read(cert).map_err(|e| bad(cert, e.to_string()))?;
    let chain = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(bad(cert, "holds no PEM certificate".into()));
    }
    let pem = std::fs::read(key).map_err(|e| bad(key, e.to_string()))?;
    let der = rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| bad(key, e.to_string()))?
        .ok_or_else(|| bad(key, "holds no PEM private key".into()))?;
    CertifiedKey::from_der(chain, der, provider).map_err(|e| bad(key, e.to_string()))
}

impl Certificate {
    /// Load the certificate chain in `cert` and the key in `key` (PEM).
    pub fn load(cert: &Path, key: &Path) -> Result<Certificate, InjectError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let before = stamp(cert, key);
        let loaded = load(cert, key, &provider)?;
        Ok(Certificate {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            provider,
            current: ArcSwap::from_pointee(loaded),
            stamp: std::sync::Mutex::new(before),
        })
    }

    /// Load the files again if they changed; a pair that does not load keeps the old one
    /// serving. Returns whether a new certificate now serves.
    pub fn reload(&self) -> bool {
        let now = stamp(&self.cert, &self.key);
        let Ok(mut seen) = self.stamp.lock() else {
            return false;
        };
        if *seen == now {
            return false;
        }
        match load(&self.cert, &self.key, &self.provider) {
            Ok(loaded) => {
                *seen = now;
                self.current.store(Arc::new(loaded));
                tracing::info!(cert = %self.cert.display(), "webhook certificate reloaded");
                true
            }
            Err(e) => {
                // A renewal caught half-written is read again at the next check.
                tracing::warn!(error = %e, "webhook certificate not reloaded; the previous one keeps serving");
                false
            }
        }
    }
}

impl ResolvesServerCert for Certificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    response
}

async fn handle(
    template: Arc<Template>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let selection = match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => return Ok(reply(StatusCode::OK, "text/plain", "ok\n")),
        (&Method::POST, "/inject") => Selection::OptIn,
        (&Method::POST, "/inject/namespace") => Selection::Namespace,
        (_, "/inject" | "/inject/namespace" | "/healthz") => {
            return Ok(reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "method not allowed\n",
            ))
        }
        _ => return Ok(reply(StatusCode::NOT_FOUND, "text/plain", "not found\n")),
    };
    let json = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json {
        return Ok(reply(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "text/plain",
            "an AdmissionReview is application/json\n",
        ));
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            let status = if e.is::<http_body_util::LengthLimitError>() {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::BAD_REQUEST
            };
            // The rest of the body is never read: the connection is not kept.
            let mut r = reply(status, "text/plain", format!("{e}\n"));
            r.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
            return Ok(r);
        }
    };
    match review::answer(&template, selection, &body) {
        Ok(answer) => {
            let r = answer.get("response").cloned().unwrap_or_default();
            tracing::info!(
                target: "toolgate::inject",
                uid = r.get("uid").and_then(|u| u.as_str()).unwrap_or("-"),
                allowed = r.get("allowed").and_then(|a| a.as_bool()).unwrap_or(false),
                patched = r.get("patch").is_some(),
                message = r.pointer("/status/message").and_then(|m| m.as_str()).unwrap_or("-"),
                "admission review"
            );
            let body = serde_json::to_vec(&answer).unwrap_or_default();
            Ok(reply(StatusCode::OK, "application/json", body))
        }
        Err(e) => Ok(reply(
            StatusCode::BAD_REQUEST,
            "text/plain",
            format!("bad AdmissionReview: {e}\n"),
        )),
    }
}

/// Serve the webhook on `listen` until `shutdown` resolves. `ready` gets the bound address.
pub async fn serve(
    listen: SocketAddr,
    certificate: Arc<Certificate>,
    template: Template,
    shutdown: impl std::future::Future<Output = ()>,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), InjectError> {
    let provider = rustls::crypto::ring::default_provider();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| InjectError::Tls {
            path: "-".into(),
            why: e.to_string(),
        })?
        .with_no_client_auth()
        .with_cert_resolver(certificate.clone());
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| InjectError::Listen(listen, e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| InjectError::Listen(listen, e))?;
    ready(bound);
    tracing::info!(listen = %bound, "toolgate inject serving");

    let reloader = {
        let certificate = certificate.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RELOAD_EVERY);
            loop {
                tick.tick().await;
                certificate.reload();
            }
        })
    };
    let template = Arc::new(template);
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, _) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let template = template.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let Ok(Ok(tls)) =
                tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
            else {
                return;
            };
            let service = service_fn(move |req| handle(template.clone(), req));
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(true)
                .serve_connection(TokioIo::new(tls), service);
            let _ = tokio::time::timeout(EXCHANGE_TIMEOUT, connection).await;
        });
    }
    reloader.abort();
    tracing::info!("toolgate inject stopped");
    Ok(())
}
