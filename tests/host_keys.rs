//! Host keys seen by the real OpenSSH client: each generated key (Ed25519, ECDSA P-256,
//! RSA with SHA-2 signatures) verified against a strict known_hosts, and keys made by
//! `ssh-keygen` (as sshd's are) served unchanged with `--host-key`.

use std::path::Path;
use std::process::{Command, Output};

use crate::common::*;

/// `ssh-keygen -y`: the public key line of the private key at `key`.
fn public_line(key: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .arg("-yf")
        .arg(key)
        .output()
        .expect("ssh-keygen runs");
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out).trim().to_owned()
}

/// `ssh-keygen -l`: the SHA256 fingerprint of the key at `key`.
fn fingerprint(key: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(key)
        .output()
        .expect("ssh-keygen runs");
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
        .split_whitespace()
        .nth(1)
        .expect("fingerprint")
        .to_owned()
}

/// `ssh-keygen -t kind ... -N '' -f path`, as an admin (or sshd's package) makes host keys.
fn keygen(path: &Path, args: &[&str]) {
    let out = Command::new("ssh-keygen")
        .args(args)
        .args(["-q", "-N", "", "-f"])
        .arg(path)
        .output()
        .expect("ssh-keygen runs");
    assert!(out.status.success(), "{}", stderr(&out));
}

/// OpenSSH `sftp -b` running `pwd` as alice, accepting only `algorithm` for the host key and
/// only `known` (a public key line) as the server's key: it succeeds only if the server
/// signs with that algorithm and that key.
async fn sftp_strict(t: &TestServer, algorithm: &str, known: &str) -> Output {
    let known_hosts = t.dir.path().join(format!("known_hosts_{algorithm}"));
    std::fs::write(&known_hosts, format!("[127.0.0.1]:{} {known}\n", t.port)).unwrap();
    let batch = t.dir.path().join("batch_pwd");
    std::fs::write(&batch, "pwd\n").unwrap();
    let out = tokio::process::Command::new("sftp")
        .arg("-o")
        .arg(format!("HostKeyAlgorithms={algorithm}"))
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .args([
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-i",
        ])
        .arg(&t.alice.key_path)
        .arg("-P")
        .arg(t.port.to_string())
        .arg("-b")
        .arg(&batch)
        .arg("alice@127.0.0.1")
        .output()
        .await
        .expect("sftp runs");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssh_connects_with_each_generated_host_key() {
    let t = TestServer::start().await;
    let state = t.dir.path().join("state");
    for (algorithm, file) in [
        ("rsa-sha2-512", "ssh_host_rsa_key"),
        ("rsa-sha2-256", "ssh_host_rsa_key"),
        ("ecdsa-sha2-nistp256", "ssh_host_ecdsa_key"),
        ("ssh-ed25519", "ssh_host_ed25519_key"),
    ] {
        let known = public_line(&state.join(file));
        let out = sftp_strict(&t, algorithm, &known).await;
        assert!(
            out.status.success(),
            "{algorithm} with {file}: {}",
            stderr(&out)
        );
        assert!(stdout(&out).contains("Remote working directory: /"));
    }
    let rsa = public_line(&state.join("ssh_host_rsa_key"));
    let out = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(state.join("ssh_host_rsa_key"))
        .output()
        .unwrap();
    assert!(stdout(&out).starts_with("3072 "), "{}", stdout(&out));
    // SHA-1 signatures are not offered, even for the RSA key a client trusts.
    let out = sftp_strict(&t, "ssh-rsa", &rsa).await;
    assert!(!out.status.success(), "ssh-rsa (SHA-1) was accepted");
    assert!(
        stderr(&out).contains("no matching host key type"),
        "{}",
        stderr(&out)
    );
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_from_ssh_keygen_keep_their_fingerprints() {
    let keys = tempfile::tempdir().unwrap();
    let ed25519 = keys.path().join("ssh_host_ed25519_key");
    let rsa = keys.path().join("ssh_host_rsa_key");
    keygen(&ed25519, &["-t", "ed25519"]);
    keygen(&rsa, &["-t", "rsa", "-b", "3072"]);
    let given = vec![ed25519.clone(), rsa.clone()];
    let t = TestServer::start_with(|c| c.host_keys = given).await;

    // What a client is shown (ssh-keyscan) is exactly the files' keys.
    let scan = Command::new("ssh-keyscan")
        .args(["-p", &t.port.to_string(), "-t", "ed25519,rsa,ecdsa"])
        .arg("127.0.0.1")
        .output()
        .expect("ssh-keyscan runs");
    let scanned_file = t.dir.path().join("scanned");
    std::fs::write(&scanned_file, &scan.stdout).unwrap();
    let listed = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(&scanned_file)
        .output()
        .unwrap();
    let mut seen: Vec<String> = stdout(&listed)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_owned))
        .collect();
    seen.sort();
    let mut expected = vec![fingerprint(&ed25519), fingerprint(&rsa)];
    expected.sort();
    assert_eq!(seen, expected, "keyscan: {}", stdout(&scan));

    for (algorithm, key) in [("ssh-ed25519", &ed25519), ("rsa-sha2-512", &rsa)] {
        let out = sftp_strict(&t, algorithm, &public_line(key)).await;
        assert!(out.status.success(), "{algorithm}: {}", stderr(&out));
    }
    // No ECDSA key was given, so none is served, and none was generated.
    let out = sftp_strict(&t, "ecdsa-sha2-nistp256", &public_line(&ed25519)).await;
    assert!(!out.status.success());
    assert!(!t.dir.path().join("state").join("ssh_host_rsa_key").exists());
    t.shutdown().await;
}

#[test]
fn a_host_key_readable_by_others_stops_serve() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("ssh_host_ed25519_key");
    keygen(&key, &["-t", "ed25519"]);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let users = dir.path().join("users.json");
    std::fs::write(
        &users,
        r#"{"users": [{"username": "a", "public_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIFbu/cWZHRfrWTCIft+VBlVnuhBS1uf9hTja8TpqBxW a"], "key_prefix": "a/"}]}"#,
    )
    .unwrap();
    std::fs::set_permissions(&users, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_s3sftp"))
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .args(["serve", "--listen", "127.0.0.1:0", "--users-file"])
        .arg(&users)
        .arg("--host-key")
        .arg(&key)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("accessible by other users"), "{err}");
    assert!(
        err.contains(&format!("chmod 600 {}", key.display())),
        "{err}"
    );
}
