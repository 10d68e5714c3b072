//! TLS interception: the agent's TLS is terminated with a leaf minted for the destination
//! (ALPN http/1.1), and the decrypted HTTP/1.1 requests run through the normal pipeline with
//! the destination fixed. Bytes that are not a TLS handshake close the connection, logged.

use std::sync::{Arc, LazyLock};

use pingora::listeners::tls::Acceptor;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::server::ShutdownWatch;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::AsyncReadExt;
use toolgate_policy::accept::Destination;

use super::{serve_http, Front, Inbound, HANDSHAKE_TIMEOUT};

/// First byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

static PROVIDER: LazyLock<Arc<rustls::crypto::CryptoProvider>> =
    LazyLock::new(|| Arc::new(rustls::crypto::ring::default_provider()));

/// Always presents the one leaf minted for this connection's destination: the CONNECT target
/// (or SNI) decides, and IP targets send no SNI at all.
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// The server side of one intercepted connection.
fn server_config(leaf: Arc<CertifiedKey>) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(PROVIDER.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Fixed(leaf)));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Sessions are not resumed across connections: each may be for another destination.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(Arc::new(config))
}

/// Terminate TLS on `stream` presenting `leaf`, then serve its requests for `destination`.
pub(super) async fn serve(
    front: &Front,
    mut stream: L4Stream,
    destination: Destination,
    leaf: Arc<CertifiedKey>,
    shutdown: &ShutdownWatch,
) {
    let target = super::authority(&destination.host, destination.port);
    let via = destination.via.as_str();
    let mut first = [0u8; 1];
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.read_exact(&mut first)).await {
        Ok(Ok(_)) => stream.rewind(&first),
        Ok(Err(_)) => return,
        Err(_) => {
            tracing::info!(target: "toolgate::access", via, target = %target, "closed: no TLS handshake within {HANDSHAKE_TIMEOUT:?}");
            return;
        }
    }
    if first[0] != TLS_HANDSHAKE {
        tracing::warn!(
            target: "toolgate::access",
            via,
            target = %target,
            first_byte = format_args!("{:#04x}", first[0]),
            "closed: the client sent non-TLS bytes where a TLS handshake was expected; toolgate intercepts only TLS in tunnels"
        );
        return;
    }
    let config = match server_config(leaf) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(target: "toolgate::access", via, target = %target, error = %e, "cannot build the TLS server configuration");
            return;
        }
    };
    let acceptor = Acceptor::from_server_config(config);
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.tls_handshake(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::info!(target: "toolgate::access", via, target = %target, error = %e, "closed: TLS handshake with the agent failed (does it trust toolgate's CA?)");
            return;
        }
        Err(_) => {
            tracing::info!(target: "toolgate::access", via, target = %target, "closed: TLS handshake not completed within {HANDSHAKE_TIMEOUT:?}");
            return;
        }
    };
    serve_http(
        front,
        Box::new(tls),
        Some(Inbound::Intercepted(destination)),
        None,
        shutdown,
    )
    .await;
}
