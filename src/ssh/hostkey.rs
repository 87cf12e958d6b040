//! The server's host key: generated on first start, saved 0600 in the state directory,
//! reused afterwards so clients' known_hosts stay valid.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use russh::keys::ssh_key::LineEnding;
use russh::keys::{Algorithm, HashAlg, PrivateKey};

/// Why the host key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum HostKeyError {
    #[error("cannot read host key {path}: {source}")]
    Load {
        path: PathBuf,
        source: russh::keys::Error,
    },
    #[error("cannot generate a host key: {0}")]
    Generate(String),
    #[error("cannot write host key {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// File name of the ed25519 host key inside the state directory.
pub const HOST_KEY_FILE: &str = "ssh_host_ed25519_key";

/// Loads `state_dir/ssh_host_ed25519_key`, creating it (and the directory) if missing.
pub fn load_or_create(state_dir: &Path) -> Result<PrivateKey, HostKeyError> {
    let path = state_dir.join(HOST_KEY_FILE);
    let key = if path.exists() {
        warn_if_readable_by_others(&path);
        russh::keys::load_secret_key(&path, None).map_err(|source| HostKeyError::Load {
            path: path.clone(),
            source,
        })?
    } else {
        let key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)
            .map_err(|e| HostKeyError::Generate(e.to_string()))?;
        save(&path, &key)?;
        tracing::info!(path = %path.display(), "generated a new host key");
        key
    };
    tracing::info!(
        fingerprint = %key.public_key().fingerprint(HashAlg::Sha256),
        "host key {}",
        path.display()
    );
    Ok(key)
}

fn save(path: &Path, key: &PrivateKey) -> Result<(), HostKeyError> {
    let write_err = |source| HostKeyError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(write_err)?;
    }
    let pem = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| HostKeyError::Generate(e.to_string()))?;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(write_err)?;
    file.write_all(pem.as_bytes()).map_err(write_err)?;
    file.sync_all().map_err(write_err)?;
    std::fs::rename(&tmp, path).map_err(write_err)?;
    Ok(())
}

/// Logs a warning when a secret file is group- or world-readable.
pub fn warn_if_readable_by_others(path: &Path) {
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{:o}", mode & 0o777),
                "file is readable by other users; run: chmod 600 {}",
                path.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_then_reused_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(dir.path()).unwrap();
        let path = dir.path().join(HOST_KEY_FILE);
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let b = load_or_create(dir.path()).unwrap();
        assert_eq!(a.public_key(), b.public_key());
    }
}
