//! `[http] cert_file` and `key_file`: TLS on the listener, read and
//! checked when the config is loaded, so a bad file stops `check` and
//! `run` with its name instead of failing the first connection.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::rustls;

/// The listener's TLS: the files it came from and the server config.
#[derive(Clone)]
pub struct ListenerTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub config: Arc<rustls::ServerConfig>,
}

// The key stays out of every print: only the file names show.
impl fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListenerTls")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .finish_non_exhaustive()
    }
}

impl PartialEq for ListenerTls {
    fn eq(&self, other: &Self) -> bool {
        self.cert_file == other.cert_file && self.key_file == other.key_file
    }
}

impl Eq for ListenerTls {}

/// Read the certificate chain and key (PEM) into a server config; the
/// error says which file and why, never the key.
pub fn load_tls(cert_file: &Path, key_file: &Path) -> Result<ListenerTls, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| format!("cert_file {}: {e}", cert_file.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "cert_file {}: no PEM certificate in it",
            cert_file.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| {
        format!(
            "key_file {}: no PEM private key in it ({e})",
            key_file.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            format!(
                "key_file {} does not fit cert_file {}: {e}",
                key_file.display(),
                cert_file.display()
            )
        })?;
    Ok(ListenerTls {
        cert_file: cert_file.to_path_buf(),
        key_file: key_file.to_path_buf(),
        config: Arc::new(config),
    })
}
