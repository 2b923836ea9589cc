//! TLS for the metrics port (optional): a certificate and key from PEM files, read again when
//! either changes (a Kubernetes Secret volume or cert-manager rotates them in place), without a
//! restart. A file that cannot be read keeps the previous certificate in use, and says so.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, PoisonError, RwLock},
    time::{Duration, SystemTime},
};

use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsFiles;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS {what} {path}: {message}")]
    File {
        what: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("TLS certificate {cert} and key {key}: {message}")]
    Pair {
        cert: PathBuf,
        key: PathBuf,
        message: String,
    },
}

/// What tells a changed file: its modification time and length (through symlinks, as a
/// Secret volume's `..data` swap makes them).
type Stamp = [(Option<SystemTime>, u64); 2];

fn stamp(files: &TlsFiles) -> Stamp {
    let one = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| (m.modified().ok(), m.len()))
            .unwrap_or((None, 0))
    };
    [one(&files.cert), one(&files.key)]
}

/// PEM files are small; larger ones are refused before they are read.
const MAX_PEM_BYTES: u64 = 1024 * 1024;

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let err = |message: String| TlsError::File {
        what,
        path: path.to_owned(),
        message,
    };
    let len = std::fs::metadata(path)
        .map_err(|e| err(e.to_string()))?
        .len();
    if len > MAX_PEM_BYTES {
        return Err(err(format!("{len} bytes: not a PEM file")));
    }
    std::fs::read(path).map_err(|e| err(e.to_string()))
}

fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, TlsError> {
    let cert_pem = read("certificate", &files.cert)?;
    let key_pem = read("key", &files.key)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::File {
            what: "certificate",
            path: files.cert.clone(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::File {
            what: "certificate",
            path: files.cert.clone(),
            message: "no CERTIFICATE in it".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::File {
        what: "key",
        path: files.key.clone(),
        message: e.to_string(),
    })?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Pair {
            cert: files.cert.clone(),
            key: files.key.clone(),
            message: e.to_string(),
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

pub struct Tls {
    files: TlsFiles,
    current: RwLock<(TlsAcceptor, Stamp)>,
}

impl Tls {
    /// Reads the files; an error names the file and what is wrong with it.
    pub fn load(files: TlsFiles) -> Result<Arc<Tls>, TlsError> {
        let s = stamp(&files);
        let a = acceptor(&files)?;
        Ok(Arc::new(Tls {
            files,
            current: RwLock::new((a, s)),
        }))
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .clone()
    }

    /// Reads the files again if they changed; true when a new certificate is in use.
    pub fn reload_if_changed(&self) -> bool {
        let now = stamp(&self.files);
        if self
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .1
            == now
        {
            return false;
        }
        match acceptor(&self.files) {
            Ok(a) => {
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = (a, now);
                tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
                true
            }
            Err(e) => {
                // Half-written files during a rotation: try again at the next look.
                tracing::warn!(error = %e, "TLS certificate not reloaded; the previous one stays in use");
                false
            }
        }
    }

    /// Looks at the files every `every` until the process ends.
    pub async fn watch(self: Arc<Self>, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            self.reload_if_changed();
        }
    }
}
