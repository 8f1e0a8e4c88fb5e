//! TLS: the server configuration of a terminating route, the client configuration that
//! re-encrypts to its targets (system roots, a `ca` file, or `insecure_skip_verify`), and
//! the termination of one connection (ALPN offered to the target, its choice answered).

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;

use super::conn::connect;
use super::load::Running;
use super::metrics::RouteMetrics;
use super::pipe::pipe;
use super::Shared;
use crate::config::TlsMode;
use crate::model::UserspaceRoute;

/// Why a certificate, key or CA file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read `{}`: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Not PEM, or not what it should hold.
    #[error("`{}`: {source}", path.display())]
    Pem {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("`{}`: no private key", path.display())]
    NoKey { path: PathBuf },
    #[error("`{}`: {source}", path.display())]
    Refused {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("{0}")]
    Protocols(#[source] rustls::Error),
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })
}

/// The server side of a terminating route: its certificate chain and key.
pub(crate) fn server_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, Error> {
    let pem = |path: &Path| {
        let path = path.to_owned();
        move |source| Error::Pem { path, source }
    };
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &read(cert)?[..])
        .collect::<Result<_, _>>()
        .map_err(pem(cert))?;
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &read(key)?[..])
        .map_err(pem(key))?
        .ok_or_else(|| Error::NoKey {
            path: key.to_owned(),
        })?;
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(Error::Protocols)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|source| Error::Refused {
            path: cert.to_owned(),
            source,
        })
}

/// Whom re-encryption trusts for a route's targets.
pub(crate) enum Roots<'a> {
    /// The system's roots (`SSL_CERT_FILE` / `SSL_CERT_DIR` override them, as for OpenSSL).
    System,
    /// The route's `ca` file.
    File(&'a Path),
    /// Nobody checks: `insecure_skip_verify` (signatures are still checked, the chain and
    /// the name are not).
    None,
}

/// The client side of re-encryption.
pub(crate) fn client_config(roots: Roots<'_>) -> Result<rustls::ClientConfig, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(Error::Protocols)?;
    let mut store = rustls::RootCertStore::empty();
    match roots {
        Roots::System => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = store.add(cert);
            }
        }
        Roots::File(path) => {
            for cert in rustls_pemfile::certs(&mut read(path)?.as_slice()) {
                let cert = cert.map_err(|source| Error::Pem {
                    path: path.to_owned(),
                    source,
                })?;
                store.add(cert).map_err(|source| Error::Refused {
                    path: path.to_owned(),
                    source,
                })?;
            }
        }
        Roots::None => {
            return Ok(builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
                .with_no_client_auth());
        }
    }
    Ok(builder.with_root_certificates(store).with_no_client_auth())
}

/// `insecure_skip_verify`: accepts any certificate chain and name, checks signatures.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn terminate(
    shared: &Shared,
    running: &Running,
    route: &UserspaceRoute,
    metrics: &Arc<RouteMetrics>,
    stream: TcpStream,
    (local, peer): (SocketAddr, SocketAddr),
    accepted: rustls::server::Accepted,
    sni: Option<String>,
) -> io::Result<()> {
    let Some(config) = running.server_tls.get(&route.name) else {
        return Err(io::Error::other("no certificate loaded for the route"));
    };
    let reencrypt = route
        .tls
        .as_ref()
        .is_some_and(|t| t.mode == TlsMode::TerminateAndReencrypt);
    let upstream = connect(shared, route, local, peer).await?;
    if reencrypt {
        // Offer the client's ALPN list to the target, answer the client with its choice.
        let offered: Vec<Vec<u8>> = accepted
            .client_hello()
            .alpn()
            .map(|a| a.map(<[u8]>::to_vec).collect())
            .unwrap_or_default();
        let Some(client_tls) = running.client_tls.get(&route.name) else {
            return Err(io::Error::other(
                "no TLS client configuration for the route",
            ));
        };
        let mut client_config = (**client_tls).clone();
        client_config.alpn_protocols = offered;
        let name = sni
            .clone()
            .or_else(|| route.targets.first().map(|t| t.host.clone()))
            .unwrap_or_default();
        let server_name = ServerName::try_from(name)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let upstream = tokio::time::timeout(
            shared.options.connect_timeout,
            tokio_rustls::TlsConnector::from(Arc::new(client_config))
                .connect(server_name, upstream),
        )
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                "TLS handshake with the target timed out",
            )
        })??;
        let chosen = upstream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        let mut server = (**config).clone();
        server.alpn_protocols = chosen.into_iter().collect();
        let client = handshake(shared, accepted, stream, Arc::new(server)).await?;
        RouteMetrics::add(&metrics.tls_handshakes, 1);
        pipe(shared.options.idle_timeout, client, upstream, metrics).await
    } else {
        let client = handshake(shared, accepted, stream, config.clone()).await?;
        RouteMetrics::add(&metrics.tls_handshakes, 1);
        pipe(shared.options.idle_timeout, client, upstream, metrics).await
    }
}

async fn handshake(
    shared: &Shared,
    accepted: rustls::server::Accepted,
    stream: TcpStream,
    config: Arc<rustls::ServerConfig>,
) -> io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
    let start = tokio_rustls::StartHandshake::from_parts(accepted, stream);
    tokio::time::timeout(shared.options.hello_timeout, start.into_stream(config))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_malformed_files_name_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let missing = dir.path().join("missing.pem");
        let e = server_config(&missing, &missing).expect_err("no file");
        assert!(
            e.to_string()
                .starts_with(&format!("cannot read `{}`", missing.display())),
            "{e}"
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").expect("write");
        let e = server_config(&empty, &empty).expect_err("no key");
        assert_eq!(
            e.to_string(),
            format!("`{}`: no private key", empty.display())
        );
        let e = client_config(Roots::File(&missing)).expect_err("no CA file");
        assert!(matches!(e, Error::Read { .. }), "{e}");
    }

    #[test]
    fn an_empty_ca_file_trusts_nobody_but_loads() {
        let dir = tempfile::tempdir().expect("temp dir");
        let empty = dir.path().join("ca.pem");
        std::fs::write(&empty, "").expect("write");
        assert!(client_config(Roots::File(&empty)).is_ok());
        assert!(client_config(Roots::None).is_ok());
    }
}
