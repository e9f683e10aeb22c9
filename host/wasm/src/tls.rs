//! Outbound TLS for activities and `ctx.call_http`: one rustls client
//! configuration (the ring provider; the Mozilla roots that `webpki-roots`
//! ships, plus the certificates of `--ca-file`), offering HTTP/2 and
//! HTTP/1.1 by ALPN, and the handshake with a host's name checked.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// The TLS client every outbound HTTPS request uses.
#[derive(Clone)]
pub struct TlsClient {
    connector: TlsConnector,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient").finish_non_exhaustive()
    }
}

impl Default for TlsClient {
    /// Trusting the well-known roots only.
    fn default() -> Self {
        TlsClient::new(None).expect("the built-in roots make a TLS configuration")
    }
}

impl TlsClient {
    /// A client trusting the Mozilla roots and, if given, every PEM
    /// certificate in `ca_file` (private roots, such as a test's own CA).
    pub fn new(ca_file: Option<&Path>) -> anyhow::Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = ca_file {
            let pem = std::fs::read(path)
                .with_context(|| format!("cannot read the CA file {}", path.display()))?;
            let mut added = 0;
            for certificate in CertificateDer::pem_slice_iter(&pem) {
                let certificate =
                    certificate.map_err(|e| anyhow::anyhow!("CA file {}: {e}", path.display()))?;
                roots
                    .add(certificate)
                    .map_err(|e| anyhow::anyhow!("CA file {}: {e}", path.display()))?;
                added += 1;
            }
            if added == 0 {
                anyhow::bail!(
                    "the CA file {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                    path.display()
                );
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsClient {
            connector: TlsConnector::from(Arc::new(config)),
        })
    }

    /// The TLS handshake with `host` over `tcp`: the stream, and whether
    /// the server chose HTTP/2. The error names the cause (unknown issuer,
    /// a name the certificate does not cover, an expired certificate...).
    pub async fn connect(
        &self,
        host: &str,
        tcp: TcpStream,
    ) -> Result<(TlsStream<TcpStream>, bool), String> {
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| format!("`{host}` is not a name TLS can check: {e}"))?;
        let stream = self
            .connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("the TLS handshake with {host} failed: {e}"))?;
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        Ok((stream, h2))
    }
}
