//! The server's host keys: one per algorithm, so clients limited to RSA or ECDSA connect too.
//!
//! By default an Ed25519, an ECDSA P-256 and an RSA 3072 key are generated on first start in
//! the state directory (saved 0600, OpenSSH format, sshd's file names) and reused afterwards, so
//! clients' known_hosts stay valid. `--host-key FILE` serves existing keys instead, such as
//! sshd's `/etc/ssh/ssh_host_*_key`, so an admin moving from sshd keeps the keys clients
//! already trust. Like sshd, a key file other users could read is refused.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use russh::keys::ssh_key::private::RsaKeypair;
use russh::keys::ssh_key::LineEnding;
use russh::keys::{Algorithm, EcdsaCurve, HashAlg, PrivateKey};

/// Why the host keys could not be loaded or created.
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
    #[error(
        "host key {path} is accessible by other users (mode {mode:o}); it must be readable \
         by the server's user only: run chmod 600 {path}"
    )]
    Unprotected { path: PathBuf, mode: u32 },
    #[error("host key {path}: {message}")]
    Unsupported { path: PathBuf, message: String },
    /// A host key kept in the bucket could not be read, created or used.
    #[error("host key {location}: {message}")]
    Bucket { location: String, message: String },
    #[error(
        "host keys {first} and {second} are both {algorithm} keys; a client is shown one key \
         per type, so give one of them only"
    )]
    Duplicate {
        first: PathBuf,
        second: PathBuf,
        algorithm: String,
    },
}

/// File name of the generated ed25519 host key inside the state directory.
pub const HOST_KEY_FILE: &str = "ssh_host_ed25519_key";

/// The keys generated in the state directory: algorithm and file name (sshd's names).
const GENERATED: [(&str, &str); 3] = [
    ("ed25519", HOST_KEY_FILE),
    ("ecdsa", "ssh_host_ecdsa_key"),
    ("rsa", "ssh_host_rsa_key"),
];

/// Size of a generated RSA key, in bits (OpenSSH's `ssh-keygen` default).
pub const RSA_BITS: usize = 3072;

/// Smallest RSA key served; smaller ones are refused as too weak.
const MIN_RSA_BITS: u32 = 2048;

/// The host key algorithms offered to clients, best first. SHA-1 `ssh-rsa` is left out: an
/// RSA key is only ever used with rsa-sha2-512 or rsa-sha2-256 signatures.
pub const ALGORITHMS: &[Algorithm] = &[
    Algorithm::Ed25519,
    Algorithm::Ecdsa {
        curve: EcdsaCurve::NistP256,
    },
    Algorithm::Ecdsa {
        curve: EcdsaCurve::NistP384,
    },
    Algorithm::Ecdsa {
        curve: EcdsaCurve::NistP521,
    },
    Algorithm::Rsa {
        hash: Some(HashAlg::Sha512),
    },
    Algorithm::Rsa {
        hash: Some(HashAlg::Sha256),
    },
];

/// The host keys to serve: the files in `files` when any is given, else the keys of the state
/// directory (each created, with the directory, if missing). Logs each key's fingerprint.
pub fn load(state_dir: &Path, files: &[PathBuf]) -> Result<Vec<PrivateKey>, HostKeyError> {
    let mut keys: Vec<(PathBuf, PrivateKey)> = Vec::new();
    if files.is_empty() {
        for (kind, name) in GENERATED {
            let path = state_dir.join(name);
            let key = if path.exists() {
                load_file(&path)?
            } else {
                let key = generate(kind)?;
                save(&path, &key)?;
                tracing::info!(path = %path.display(), "generated a new host key");
                key
            };
            keys.push((path, key));
        }
    } else {
        for path in files {
            let key = load_file(path)?;
            let algorithm = key.algorithm();
            if let Some((first, _)) = keys.iter().find(|(_, k)| k.algorithm() == algorithm) {
                return Err(HostKeyError::Duplicate {
                    first: first.clone(),
                    second: path.clone(),
                    algorithm: algorithm.to_string(),
                });
            }
            keys.push((path.clone(), key));
        }
    }
    for (path, key) in &keys {
        tracing::info!(
            fingerprint = %key.public_key().fingerprint(HashAlg::Sha256),
            algorithm = %key.algorithm(),
            "host key {}",
            path.display()
        );
    }
    Ok(keys.into_iter().map(|(_, key)| key).collect())
}

/// What [`load`] would serve, without creating anything (for `serve --check`): one line per
/// key, its algorithm and fingerprint, or that it would be generated; one error per key that
/// cannot be served.
pub fn inspect(state_dir: &Path, files: &[PathBuf]) -> Vec<Result<String, HostKeyError>> {
    let describe = |path: &Path, key: &PrivateKey| {
        format!(
            "host key {}: {} {}",
            path.display(),
            key.algorithm(),
            key.public_key().fingerprint(HashAlg::Sha256)
        )
    };
    let mut out = Vec::new();
    if files.is_empty() {
        for (_, name) in GENERATED {
            let path = state_dir.join(name);
            out.push(if path.exists() {
                load_file(&path).map(|key| describe(&path, &key))
            } else {
                Ok(format!(
                    "host key {}: missing, would be generated at first start",
                    path.display()
                ))
            });
        }
        return out;
    }
    let mut seen: Vec<(PathBuf, Algorithm)> = Vec::new();
    for path in files {
        out.push(load_file(path).and_then(|key| {
            let algorithm = key.algorithm();
            if let Some((first, _)) = seen.iter().find(|(_, a)| *a == algorithm) {
                return Err(HostKeyError::Duplicate {
                    first: first.clone(),
                    second: path.clone(),
                    algorithm: algorithm.to_string(),
                });
            }
            seen.push((path.clone(), algorithm));
            Ok(describe(path, &key))
        }));
    }
    out
}

/// A new key of `kind` (`ed25519`, `ecdsa` for P-256, `rsa` for RSA 3072).
pub(crate) fn generate(kind: &str) -> Result<PrivateKey, HostKeyError> {
    let generate_err = |e: russh::keys::ssh_key::Error| HostKeyError::Generate(e.to_string());
    let mut rng = rand::rng();
    match kind {
        "rsa" => Ok(PrivateKey::from(
            RsaKeypair::random(&mut rng, RSA_BITS).map_err(generate_err)?,
        )),
        "ecdsa" => PrivateKey::random(
            &mut rng,
            Algorithm::Ecdsa {
                curve: EcdsaCurve::NistP256,
            },
        )
        .map_err(generate_err),
        _ => PrivateKey::random(&mut rng, Algorithm::Ed25519).map_err(generate_err),
    }
}

/// Reads one OpenSSH private key without a passphrase, refusing a file other users could read
/// and an algorithm the server does not serve.
fn load_file(path: &Path) -> Result<PrivateKey, HostKeyError> {
    check_protected(path)?;
    let key = russh::keys::load_secret_key(path, None).map_err(|source| HostKeyError::Load {
        path: path.to_path_buf(),
        source,
    })?;
    check_served(path, &key)?;
    Ok(key)
}

/// Refuses an algorithm the server does not serve, and an RSA key that is too weak; `path`
/// names the key in the error.
pub(crate) fn check_served(path: &Path, key: &PrivateKey) -> Result<(), HostKeyError> {
    let unsupported = |message: String| HostKeyError::Unsupported {
        path: path.to_path_buf(),
        message,
    };
    match key.algorithm() {
        Algorithm::Ed25519 | Algorithm::Ecdsa { .. } => {}
        Algorithm::Rsa { .. } => {
            let bits = key
                .public_key()
                .key_data()
                .rsa()
                .map_or(0, |rsa| rsa.key_size());
            if bits < MIN_RSA_BITS {
                return Err(unsupported(format!(
                    "an RSA key of {bits} bits is too weak; at least {MIN_RSA_BITS} are needed"
                )));
            }
        }
        other => {
            return Err(unsupported(format!(
                "{other} keys are not served; use an ed25519, ecdsa or rsa key"
            )))
        }
    }
    Ok(())
}

/// Refuses a key file that other users could read, as sshd does: any access for "others", or
/// group access when the file belongs to the server's own user. (A key owned by root with
/// mode 0640 and the server's group, as an admin may set up for sshd's keys, is accepted.)
#[allow(
    unsafe_code,
    reason = "geteuid(2), which has no safe wrapper in our dependencies"
)]
fn check_protected(path: &Path) -> Result<(), HostKeyError> {
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        // Reading it reports the error, with the path.
        Err(_) => return Ok(()),
    };
    let mode = meta.permissions().mode() & 0o777;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let mine = meta.uid() == unsafe { libc::geteuid() };
    if mode & 0o007 != 0 || (mine && mode & 0o070 != 0) {
        return Err(HostKeyError::Unprotected {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
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

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn three_keys_generated_once_then_reused_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let a = load(dir.path(), &[]).unwrap();
        let algorithms: Vec<String> = a.iter().map(|k| k.algorithm().to_string()).collect();
        assert_eq!(
            algorithms,
            ["ssh-ed25519", "ecdsa-sha2-nistp256", "ssh-rsa"]
        );
        let rsa = a[2].public_key().key_data().rsa().unwrap().key_size();
        assert_eq!(rsa, RSA_BITS as u32);
        for (_, name) in GENERATED {
            assert_eq!(mode(&dir.path().join(name)), 0o600, "{name}");
        }
        let b = load(dir.path(), &[]).unwrap();
        let public = |keys: &[PrivateKey]| -> Vec<_> {
            keys.iter().map(|k| k.public_key().clone()).collect()
        };
        assert_eq!(public(&a), public(&b));
    }

    #[test]
    fn given_files_replace_the_generated_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mine");
        let key = generate("ed25519").unwrap();
        save(&path, &key).unwrap();
        let state = dir.path().join("state");
        let keys = load(&state, std::slice::from_ref(&path)).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].public_key(), key.public_key());
        assert!(!state.exists(), "nothing generated");
    }

    #[test]
    fn readable_by_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        save(&path, &generate("ed25519").unwrap()).unwrap();
        for bad in [0o644, 0o640, 0o604] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(bad)).unwrap();
            let err = load(dir.path(), std::slice::from_ref(&path)).unwrap_err();
            assert!(matches!(err, HostKeyError::Unprotected { .. }), "{err}");
            assert!(err.to_string().contains("chmod 600"), "{err}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        load(dir.path(), std::slice::from_ref(&path)).unwrap();
    }

    #[test]
    fn two_keys_of_one_type_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        save(&a, &generate("ecdsa").unwrap()).unwrap();
        save(&b, &generate("ecdsa").unwrap()).unwrap();
        let err = load(dir.path(), &[a, b]).unwrap_err();
        assert!(matches!(err, HostKeyError::Duplicate { .. }), "{err}");
    }

    #[test]
    fn sha1_ssh_rsa_is_never_offered() {
        assert!(!ALGORITHMS.contains(&Algorithm::Rsa { hash: None }));
        assert!(ALGORITHMS.contains(&Algorithm::Rsa {
            hash: Some(HashAlg::Sha512)
        }));
    }
}
