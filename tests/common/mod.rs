//! Test harness: starts a real s3sftp server in-process over a real S3 HTTP server (the
//! embedded store, or the external one named by `S3SFTP_TEST_S3_*` variables) and drives
//! it with real clients: OpenSSH `sftp`/`scp` as processes, and russh + russh-sftp.

pub mod alone;
pub mod bucket;
pub mod fault_proxy;
pub mod log_capture;
pub mod own_store;
pub mod raw_sftp;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use russh::keys::ssh_key::LineEnding;
use russh::keys::{Algorithm, PrivateKey, PrivateKeyWithHashAlg};
use s3sftp::server::{RunningServer, ServerConfig};
use s3sftp::storage::client::S3Settings;
use s3sftp::storage::TransferSettings;
use sha2::{Digest, Sha256};
use tempfile::TempDir;

use bucket::BucketView;

pub const MIB: usize = 1024 * 1024;
/// Part size used by the test servers: S3's minimum, so multipart paths run on small files.
pub const PART: usize = 5 * MIB;
pub const PASSWORD: &str = "correct horse battery staple";

/// A user of the test server.
#[derive(Clone)]
pub struct TestUser {
    pub name: String,
    pub prefix: String,
    pub key_path: PathBuf,
    pub key: Arc<PrivateKey>,
}

/// A running server with two users, `alice` and `bob`.
pub struct TestServer {
    pub server: Option<RunningServer>,
    pub dir: TempDir,
    pub alice: TestUser,
    pub bob: TestUser,
    pub port: u16,
    /// The server's bucket, through the server's own S3 client.
    pub s3: BucketView,
}

/// The external S3 named by the environment, if any.
pub fn external_s3() -> Option<S3Settings> {
    let endpoint = std::env::var("S3SFTP_TEST_S3_ENDPOINT").ok()?;
    let bucket = std::env::var("S3SFTP_TEST_S3_BUCKET").ok()?;
    let key = std::env::var("S3SFTP_TEST_S3_ACCESS_KEY").ok()?;
    let secret = std::env::var("S3SFTP_TEST_S3_SECRET_KEY").ok()?;
    let region = std::env::var("S3SFTP_TEST_S3_REGION").unwrap_or_else(|_| "us-east-1".into());
    Some(S3Settings::custom(
        &endpoint, &bucket, &region, &key, &secret,
    ))
}

fn random_tag() -> String {
    let n: u64 = rand::random();
    format!("{n:016x}")
}

fn make_user(dir: &Path, name: &str, root: &str) -> TestUser {
    let key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).expect("key");
    let key_path = dir.join(format!("{name}_ed25519"));
    std::fs::write(
        &key_path,
        key.to_openssh(LineEnding::LF).expect("pem").as_bytes(),
    )
    .expect("write key");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    TestUser {
        name: name.to_string(),
        prefix: format!("{root}users/{name}/"),
        key_path,
        key: Arc::new(key),
    }
}

/// A quick argon2id hash so logins in tests are fast (the server accepts any argon2 PHC).
pub fn test_hash(password: &str) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt = SaltString::encode_b64(b"s3sftp-test-salt").expect("salt");
    let params = argon2::Params::new(1024, 1, 1, None).expect("params");
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password(password.as_bytes(), &salt)
        .expect("hash")
        .to_string()
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut ServerConfig)) -> TestServer {
        init_test_logging();
        let dir = tempfile::tempdir().expect("tempdir");
        let root = format!("t-{}/", random_tag());
        let alice = make_user(dir.path(), "alice", &root);
        let bob = make_user(dir.path(), "bob", &root);
        let entries: Vec<serde_json::Value> = [&alice, &bob]
            .iter()
            .map(|u| {
                serde_json::json!({
                    "username": u.name,
                    "password": test_hash(PASSWORD),
                    "public_keys": [u.key.public_key().to_openssh().expect("pub")],
                    "key_prefix": u.prefix,
                    "enabled": true,
                })
            })
            .collect();
        let users = serde_json::json!({ "users": entries });
        let users_file = dir.path().join("users.json");
        std::fs::write(
            &users_file,
            serde_json::to_vec_pretty(&users).expect("json"),
        )
        .expect("write users");
        let mut config = ServerConfig::new(dir.path().join("state"), &users_file);
        config.listen = "127.0.0.1:0".parse().expect("addr");
        config.s3 = external_s3();
        config.transfer = TransferSettings {
            part_size: PART as u64,
            transfer_budget: 4 * PART as u64,
            global_budget: 64 * PART as u64,
            download_chunk: 2 * MIB as u64,
            reorder_window: 4 * MIB as u64,
            // Longer than the default (2 s), so that the suites that count S3 requests
            // after a listing do not depend on how fast this machine is; the freshness
            // suite sets its own.
            metadata_ttl: Duration::from_secs(30),
            ..TransferSettings::default()
        };
        config.ssh.auth_failure_delay = Duration::from_millis(100);
        config.shutdown_grace = Duration::from_secs(5);
        tweak(&mut config);
        let server = s3sftp::server::start(config).await.expect("server starts");
        let port = server.local_addr().port();
        let storage = server.storage();
        let s3 = BucketView::new(storage.client().clone(), storage.bucket());
        TestServer {
            server: Some(server),
            dir,
            alice,
            bob,
            port,
            s3,
        }
    }

    pub fn server(&self) -> &RunningServer {
        self.server.as_ref().expect("running")
    }

    pub async fn shutdown(mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
    }

    /// OpenSSH `program` (`sftp` or `scp`) as `user`, to `port` of 127.0.0.1, with the
    /// tests' options; the caller adds the rest.
    pub fn openssh(&self, program: &str, user: &TestUser, port: u16) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(ssh_options(&user.key_path))
            .arg("-P")
            .arg(port.to_string());
        cmd
    }

    /// Runs OpenSSH `sftp -b` with `batch` as the command file.
    pub async fn sftp(&self, user: &TestUser, batch: &str) -> Output {
        self.sftp_at(self.port, user, batch).await
    }

    /// [`TestServer::sftp`] through another port of 127.0.0.1 (a relay in front of the server).
    pub async fn sftp_at(&self, port: u16, user: &TestUser, batch: &str) -> Output {
        let batch_file = self.dir.path().join(format!("batch-{}", random_tag()));
        std::fs::write(&batch_file, batch).expect("batch");
        let mut cmd = self.openssh("sftp", user, port);
        cmd.arg("-b")
            .arg(&batch_file)
            .arg(format!("{}@127.0.0.1", user.name));
        let out = tokio::time::timeout(Duration::from_secs(300), cmd.output())
            .await
            .expect("sftp finished in time")
            .expect("sftp runs");
        if !out.status.success() {
            eprintln!(
                "sftp batch:\n{batch}\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        out
    }

    /// Runs OpenSSH `scp` with `args` (remote paths as `REMOTE:path`).
    pub async fn scp(&self, user: &TestUser, args: &[&str]) -> Output {
        let remote = format!("{}@127.0.0.1:", user.name);
        let mut cmd = self.openssh("scp", user, self.port);
        for a in args {
            cmd.arg(a.replace("REMOTE:", &remote));
        }
        tokio::time::timeout(Duration::from_secs(300), cmd.output())
            .await
            .expect("scp finished in time")
            .expect("scp runs")
    }

    /// Runs `ssh user@server <command>` with OpenSSH (stdin from `stdin`).
    pub async fn ssh_exec(&self, user: &TestUser, command: &str, stdin: &[u8]) -> Output {
        use tokio::io::AsyncWriteExt;
        let mut child = tokio::process::Command::new("ssh")
            .args(ssh_options(&user.key_path))
            .arg("-p")
            .arg(self.port.to_string())
            .arg(format!("{}@127.0.0.1", user.name))
            .arg(command)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("ssh runs");
        let mut input = child.stdin.take().expect("stdin");
        input.write_all(stdin).await.expect("write stdin");
        drop(input);
        tokio::time::timeout(Duration::from_secs(300), child.wait_with_output())
            .await
            .expect("ssh finished in time")
            .expect("ssh output")
    }

    /// The server's host key fingerprint (`SHA256:...`), for clients that pin it.
    pub fn host_fingerprint(&self) -> String {
        let out = std::process::Command::new("ssh-keygen")
            .arg("-lf")
            .arg(self.dir.path().join("state").join("ssh_host_ed25519_key"))
            .output()
            .expect("ssh-keygen runs");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(1)
            .expect("fingerprint")
            .to_string()
    }

    /// An SFTP session through the russh client, authenticated with a password.
    pub async fn russh_sftp_password(
        &self,
        user: &str,
        password: &str,
    ) -> Result<RusshSftp, String> {
        russh_sftp_password_at(self.port, user, password).await
    }

    /// An SFTP session through the russh client, authenticated with the user's key.
    pub async fn russh_sftp(&self, user: &TestUser) -> RusshSftp {
        let handle = self.russh_login(user).await;
        RusshSftp::open(handle).await.expect("sftp")
    }

    /// A russh connection logged in with the user's key (no channel open yet).
    pub async fn russh_login(&self, user: &TestUser) -> russh::client::Handle<AcceptAll> {
        let mut handle = self.russh_connect().await.expect("connect");
        let auth = handle
            .authenticate_publickey(
                &user.name,
                PrivateKeyWithHashAlg::new(user.key.clone(), None),
            )
            .await
            .expect("auth");
        assert!(auth.success(), "key login");
        handle
    }

    /// Kills `client` (an OpenSSH upload of a large file to `key`, in alice's home) once a
    /// multipart upload is under way, then checks that the upload is aborted and that no
    /// object, partial or whole, is at `key`.
    pub async fn kill_mid_upload(&self, mut client: tokio::process::Child, key: &str) {
        let mut started = false;
        for _ in 0..600 {
            if !self.s3.pending_uploads(&self.alice.prefix).await.is_empty() {
                started = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(started, "a multipart upload began");
        client.kill().await.expect("kill the client");
        assert!(
            self.s3
                .wait_no_pending_uploads(&self.alice.prefix)
                .await
                .is_empty(),
            "multipart aborted"
        );
        assert_eq!(self.s3.object_size(key).await, None, "no partial object");
    }

    pub async fn russh_connect(&self) -> Result<russh::client::Handle<AcceptAll>, String> {
        let config = Arc::new(russh::client::Config::default());
        russh::client::connect(config, ("127.0.0.1", self.port), AcceptAll)
            .await
            .map_err(|e| e.to_string())
    }
}

/// An SFTP session through the russh client, authenticated with a password, with the
/// server on `port` (a test server, or a gateway run as a process).
pub async fn russh_sftp_password_at(
    port: u16,
    user: &str,
    password: &str,
) -> Result<RusshSftp, String> {
    let config = Arc::new(russh::client::Config::default());
    let mut handle = russh::client::connect(config, ("127.0.0.1", port), AcceptAll)
        .await
        .map_err(|e| e.to_string())?;
    let auth = handle
        .authenticate_password(user, password)
        .await
        .map_err(|e| e.to_string())?;
    if !auth.success() {
        return Err("authentication failed".into());
    }
    RusshSftp::open(handle).await
}

/// The ed25519 host key the server on `port` presents, as `ssh-keyscan` sees it
/// (`ssh-ed25519 AAAA...`).
pub fn scanned_host_key(port: u16) -> String {
    let out = std::process::Command::new("ssh-keyscan")
        .args(["-t", "ed25519", "-p", &port.to_string(), "127.0.0.1"])
        .output()
        .expect("ssh-keyscan runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("ssh-ed25519"))
        .unwrap_or_else(|| panic!("no ed25519 key scanned on port {port}: {text}"));
    line.split_whitespace()
        .skip(1)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A russh client handler that trusts any host key (tests only).
pub struct AcceptAll;

impl russh::client::Handler for AcceptAll {
    type Error = russh::Error;
    async fn check_server_key(
        &mut self,
        _key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

/// A russh-sftp raw session (status codes visible) and its connection.
pub struct RusshSftp {
    pub raw: russh_sftp::client::RawSftpSession,
    /// Held so that the SSH connection stays open as long as the session.
    pub connection: russh::client::Handle<AcceptAll>,
}

impl RusshSftp {
    /// Opens the SFTP subsystem on an authenticated connection.
    pub async fn open(handle: russh::client::Handle<AcceptAll>) -> Result<RusshSftp, String> {
        let channel = handle
            .channel_open_session()
            .await
            .map_err(|e| e.to_string())?;
        channel
            .request_subsystem(true, "sftp")
            .await
            .map_err(|e| e.to_string())?;
        let raw = russh_sftp::client::RawSftpSession::new(channel.into_stream());
        raw.set_timeout(60);
        raw.init().await.map_err(|e| e.to_string())?;
        Ok(RusshSftp {
            raw,
            connection: handle,
        })
    }

    /// Uploads `data` to `path` the way `put` does: OPEN with CREATE|TRUNCATE, WRITEs of
    /// 32 KiB, CLOSE. The first error; the CLOSE is sent even after a failed WRITE.
    pub async fn upload(&self, path: &str, data: &[u8]) -> Result<(), String> {
        use russh_sftp::protocol::{FileAttributes, OpenFlags};
        let flags = OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE;
        let h = self
            .raw
            .open(path, flags, FileAttributes::default())
            .await
            .map_err(|e| format!("open {path}: {e:?}"))?
            .handle;
        let mut written = Ok(());
        for (i, chunk) in data.chunks(32 * 1024).enumerate() {
            let offset = (i * 32 * 1024) as u64;
            if let Err(e) = self.raw.write(&h, offset, chunk.to_vec()).await {
                written = Err(format!("write {path}: {e:?}"));
                break;
            }
        }
        let closed = self.raw.close(&h).await;
        written?;
        closed
            .map(|_| ())
            .map_err(|e| format!("close {path}: {e:?}"))
    }

    /// posix-rename@openssh.com, the way OpenSSH `sftp`'s `rename` sends it.
    pub async fn posix_rename(&self, from: &str, to: &str) -> Result<(), String> {
        let mut data = Vec::new();
        for path in [from, to] {
            data.extend((path.len() as u32).to_be_bytes());
            data.extend(path.as_bytes());
        }
        match self.raw.extended("posix-rename@openssh.com", data).await {
            Ok(russh_sftp::protocol::Packet::Status(st))
                if st.status_code == russh_sftp::protocol::StatusCode::Ok =>
            {
                Ok(())
            }
            other => Err(format!("posix-rename {from} {to}: {other:?}")),
        }
    }
}

/// The SFTP status code of a russh-sftp client error (`None` for other errors).
pub fn status_code<T: std::fmt::Debug>(
    r: &Result<T, russh_sftp::client::error::Error>,
) -> Option<russh_sftp::protocol::StatusCode> {
    match r {
        Err(russh_sftp::client::error::Error::Status(s)) => Some(s.status_code),
        _ => None,
    }
}

/// The options every OpenSSH client of the tests gets: no host key checks, no agent or
/// default keys, no prompts, errors only, and `key` as the identity.
pub fn ssh_options(key: &Path) -> Vec<String> {
    [
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        "LogLevel=ERROR",
        "-i",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([key.display().to_string()])
    .collect()
}

/// Writes `data` to the local file `name` under `dir` (making its directories).
pub fn write_local(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("local directory");
    }
    std::fs::write(&path, data).expect("write local file");
    path
}

pub fn sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Deterministic pseudo-random bytes.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Server logs in test output when `S3SFTP_TEST_LOG` holds a filter (e.g. `s3sftp=debug`).
pub fn init_test_logging() {
    if let Ok(filter) = std::env::var("S3SFTP_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

/// Connects from a chosen loopback address (Linux routes all of 127/8 to lo), so tests
/// can act as several client addresses.
pub async fn connect_from(
    t: &TestServer,
    from: [u8; 4],
) -> Result<russh::client::Handle<AcceptAll>, String> {
    let socket = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
    socket
        .bind((std::net::Ipv4Addr::from(from), 0).into())
        .map_err(|e| e.to_string())?;
    let stream = socket
        .connect(([127, 0, 0, 1], t.port).into())
        .await
        .map_err(|e| e.to_string())?;
    let config = Arc::new(russh::client::Config::default());
    tokio::time::timeout(
        Duration::from_secs(10),
        russh::client::connect_stream(config, stream, AcceptAll),
    )
    .await
    .map_err(|_| "handshake timed out".to_string())?
    .map_err(|e| e.to_string())
}

/// Whether alice's login with `password` from `from` succeeds.
pub async fn password_ok(t: &TestServer, from: [u8; 4], password: &str) -> Result<bool, String> {
    let mut handle = connect_from(t, from).await?;
    handle
        .authenticate_password("alice", password)
        .await
        .map(|r| r.success())
        .map_err(|e| e.to_string())
}
