//! `s3sftp serve` as a process, the way an admin starts it: a mistyped log filter or
//! variable is an error naming what was set, the log has no colour codes off a terminal or
//! with NO_COLOR, an empty users file starts with a warning, `--listen :PORT` accepts IPv4
//! and IPv6; and the reason a refused login is logged with.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::common::log_capture::Capture;
use crate::common::*;

/// A temporary directory to run `s3sftp` in, with its users file path.
struct Dir {
    dir: tempfile::TempDir,
    users: PathBuf,
}

impl Dir {
    /// With an empty users file, mode 0600, as `install -m 0600 /dev/null users.json` makes.
    fn new() -> Dir {
        let dir = tempfile::tempdir().unwrap();
        let users = dir.path().join("users.json");
        std::fs::write(&users, "").unwrap();
        std::fs::set_permissions(&users, std::fs::Permissions::from_mode(0o600)).unwrap();
        Dir { dir, users }
    }

    /// `s3sftp <args>` in the directory, with no S3SFTP_* or NO_COLOR from the test's
    /// environment; `vars` are added.
    fn command(&self, args: &[&str], vars: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_s3sftp"));
        cmd.current_dir(self.dir.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(vars.iter().copied())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    fn run(&self, args: &[&str], vars: &[(&str, &str)]) -> Output {
        self.command(args, vars).output().unwrap()
    }

    /// A host key that `serve` refuses (mode 0644), so that a start stops right after the
    /// users file is read and its warnings are logged.
    fn unprotected_key(&self) -> PathBuf {
        let key = self.dir.path().join("open_key");
        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key)
            .output()
            .unwrap();
        assert!(out.status.success());
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        key
    }
}

fn fails_with(out: &Output) -> String {
    assert!(!out.status.success(), "succeeded: {}", stdout(out));
    stderr(out)
}

#[test]
fn a_mistyped_log_filter_is_an_error_naming_the_flag_or_variable() {
    let d = Dir::new();
    let err = fails_with(&d.run(&["--log", "degub", "serve"], &[]));
    assert!(err.contains("'--log <LOG>'"), "{err}");
    assert!(err.contains("\"degub\" is not a level"), "{err}");
    let err = fails_with(&d.run(&["serve"], &[("S3SFTP_LOG", "warning")]));
    assert!(
        err.contains("in the environment variable S3SFTP_LOG"),
        "{err}"
    );
    assert!(err.contains("\"warning\" is not a level"), "{err}");
    let err = fails_with(&d.run(&["serve"], &[("S3SFTP_LOG", "s3sftp=loud")]));
    assert!(err.contains("S3SFTP_LOG"), "{err}");
    // The filter is global: the users commands check it too.
    let err = fails_with(&d.run(&["users", "list", "--log", "degub"], &[]));
    assert!(err.contains("not a level"), "{err}");
    // Valid filters still start (and stop here at the refused key, after logging).
    let key = d.unprotected_key();
    let key = key.to_str().unwrap();
    for filter in ["warn", "info,s3sftp=debug", "WARN"] {
        let out = d.run(
            &["serve", "--listen", "127.0.0.1:0", "--host-key", key],
            &[("S3SFTP_LOG", filter)],
        );
        assert!(fails_with(&out).contains("chmod 600"), "{filter}");
        assert!(stdout(&out).contains("has no users"), "{filter}");
    }
}

#[test]
fn errors_about_a_variable_name_the_variable() {
    let d = Dir::new();
    let err = fails_with(&d.run(&["serve"], &[("S3SFTP_IDLE_TIMEOUT", "10x")]));
    assert!(
        err.contains("invalid value \"10x\" in the environment variable S3SFTP_IDLE_TIMEOUT"),
        "{err}"
    );
    let err = fails_with(&d.run(&["serve", "--idle-timeout", "10x"], &[]));
    assert!(err.contains("'--idle-timeout <DURATION>'"), "{err}");
    // Checked after parsing: named as set.
    let err = fails_with(&d.run(&["serve"], &[("S3SFTP_PART_SIZE_MIB", "3")]));
    assert!(
        err.starts_with("s3sftp: S3SFTP_PART_SIZE_MIB: S3 parts must be between"),
        "{err}"
    );
    let err = fails_with(&d.run(
        &["serve", "--part-size-mib", "3MiB"],
        &[("S3SFTP_PART_SIZE_MIB", "8")],
    ));
    assert!(err.starts_with("s3sftp: --part-size-mib: "), "{err}");
    // Boolean variables take 1/0 and yes/no: parsing gets past them to the part size.
    for value in ["1", "0", "yes", "no", "true", "false", "on", "off"] {
        let err = fails_with(&d.run(
            &["serve", "--part-size-mib", "3"],
            &[
                ("S3SFTP_S3_PATH_STYLE", value),
                ("S3SFTP_PROXY_PROTOCOL", value),
            ],
        ));
        assert!(
            err.starts_with("s3sftp: --part-size-mib: "),
            "{value}: {err}"
        );
    }
    let err = fails_with(&d.run(&["serve"], &[("S3SFTP_S3_ACCESS_KEY", "AKIA")]));
    assert!(
        err.contains("--s3-secret-key (or the environment variable S3SFTP_S3_SECRET_KEY)"),
        "{err}"
    );
    let err = fails_with(&d.run(&["serve"], &[("S3SFTP_S3_PATH_STYLE", "maybe")]));
    assert!(
        err.contains("in the environment variable S3SFTP_S3_PATH_STYLE"),
        "{err}"
    );
}

/// The server's log up to its first line containing `until` (or its end).
fn log_until(child: &mut std::process::Child, until: &str) -> String {
    let out = child.stdout.take().unwrap();
    let mut reader = BufReader::new(out);
    let mut log = String::new();
    let mut line = String::new();
    while reader.read_line(&mut line).unwrap_or(0) > 0 {
        log.push_str(&line);
        if line.contains(until) {
            break;
        }
        line.clear();
    }
    // The rest of the log is not read: keep the pipe open so the server can still write.
    std::mem::forget(reader);
    log
}

#[test]
fn an_empty_users_file_starts_with_a_warning_on_every_address() {
    let d = Dir::new();
    let mut child = d
        .command(
            &["serve", "--listen", ":0", "--state-dir", "state"],
            &[("S3SFTP_LOG", "info")],
        )
        .spawn()
        .unwrap();
    let log = log_until(&mut child, "listening for SSH");
    let port: Option<u16> = log
        .lines()
        .find(|l| l.contains("listening for SSH"))
        .and_then(|l| l.split("addr=[::]:").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|p| p.parse().ok());
    let banners: Vec<Result<Vec<u8>, String>> = ["127.0.0.1", "[::1]"]
        .iter()
        .map(|host| {
            let port = port.ok_or("no port")?;
            let mut stream = std::net::TcpStream::connect(format!("{host}:{port}"))
                .map_err(|e| format!("{host}: {e}"))?;
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .map_err(|e| e.to_string())?;
            let mut banner = vec![0u8; 14];
            stream.read_exact(&mut banner).map_err(|e| e.to_string())?;
            Ok(banner)
        })
        .collect();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(port.is_some(), "not listening on [::]: {log}");
    for banner in banners {
        assert_eq!(banner.as_deref(), Ok(&b"SSH-2.0-s3sftp"[..]));
    }
    assert!(!log.contains('\x1b'), "no colour codes in a pipe: {log:?}");
    let warning = log
        .lines()
        .find(|l| l.contains("WARN") && l.contains("has no users"))
        .unwrap_or_else(|| panic!("no warning: {log}"));
    assert!(
        warning.contains(
            "s3sftp users --users-file users.json add NAME --prefix users/NAME/ --generate-password"
        ),
        "{warning}"
    );
}

#[test]
fn serve_without_a_users_file_says_how_to_make_one() {
    let d = Dir::new();
    std::fs::remove_file(&d.users).unwrap();
    let err = fails_with(&d.run(
        &["serve", "--users-file", "/nonexistent/my users.json"],
        &[],
    ));
    assert!(
        err.contains(
            "create it with a first user: s3sftp users --users-file '/nonexistent/my users.json' add NAME --prefix users/NAME/ --generate-password"
        ),
        "{err}"
    );
}

/// The log on a terminal (through `script`, which gives the child a pseudo-terminal).
fn log_on_a_terminal(d: &Dir, key: &Path, vars: &[(&str, &str)]) -> Option<String> {
    let line = format!(
        "{} serve --listen 127.0.0.1:0 --host-key {}",
        env!("CARGO_BIN_EXE_s3sftp"),
        key.display()
    );
    let mut cmd = Command::new("script");
    cmd.current_dir(d.dir.path())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("TERM", "xterm")
        .envs(vars.iter().copied())
        .args(["-qec", &line, "/dev/null"])
        .stdin(Stdio::null());
    let out = cmd.output().ok()?;
    Some(stdout(&out))
}

#[test]
fn colour_codes_only_on_a_terminal_without_no_color() {
    let d = Dir::new();
    let key = d.unprotected_key();
    let out = d
        .command(&["serve", "--listen", "127.0.0.1:0", "--host-key"], &[])
        .arg(&key)
        .output()
        .unwrap();
    assert!(stdout(&out).contains("has no users"), "{}", stdout(&out));
    assert!(!stdout(&out).contains('\x1b'), "{:?}", stdout(&out));
    let Some(coloured) = log_on_a_terminal(&d, &key, &[]) else {
        eprintln!("`script` is not installed: the terminal half is skipped");
        return;
    };
    assert!(coloured.contains("has no users"), "{coloured}");
    assert!(
        coloured.contains('\x1b'),
        "colours on a terminal: {coloured:?}"
    );
    for no_color in ["1", "true"] {
        let plain = log_on_a_terminal(&d, &key, &[("NO_COLOR", no_color)]).unwrap();
        assert!(plain.contains("has no users"), "{plain}");
        assert!(!plain.contains('\x1b'), "NO_COLOR={no_color}: {plain:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_logins_are_logged_with_the_accounts_state() {
    let Some(capture) = Capture::alone("info").await else {
        return;
    };
    let t = TestServer::start().await;
    let users_file = t.dir.path().join("users.json");
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&users_file).unwrap()).unwrap();
    json["users"][1]["enabled"] = serde_json::json!(false);
    std::fs::write(&users_file, json.to_string()).unwrap();
    t.server().reload_users();
    for _ in 0..100 {
        if t.server()
            .shared()
            .users()
            .get("bob")
            .is_some_and(|u| !u.enabled)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (user, password) in [
        ("bob", PASSWORD),
        ("bob", "not it"),
        ("alice", "not it"),
        ("nobody", PASSWORD),
    ] {
        assert!(t.russh_sftp_password(user, password).await.is_err());
    }
    let log = capture.text();
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("login refused"))
        .collect();
    let reason = |user: &str| -> Vec<String> {
        refused
            .iter()
            .filter(|l| l.contains(&format!("user={user} ")))
            .filter_map(|l| l.split("reason=").nth(1).map(str::to_owned))
            .collect()
    };
    assert_eq!(
        reason("bob"),
        ["\"user disabled\"", "\"user disabled\""],
        "{log}"
    );
    assert_eq!(reason("alice"), ["\"wrong password\""], "{log}");
    assert_eq!(reason("nobody"), ["\"unknown user\""], "{log}");
    t.shutdown().await;
}

impl Dir {
    /// Writes `text` as the config file `name` in the directory.
    fn config(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

#[test]
fn serve_check_passes_on_the_embedded_store_and_creates_nothing() {
    let d = Dir::new();
    d.config(
        "s3sftp.toml",
        "listen = \":2222\"\nidle-timeout = \"10m\"\nmemory-budget-mib = \"2GiB\"\n",
    );
    let out = d.run(&["serve", "--config", "s3sftp.toml", "--check"], &[]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    assert!(text.contains("settings: valid (SSH on [::]:2222"), "{text}");
    assert!(
        text.contains(
            "embedded store would keep its data in state/data; nothing to check remotely"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "host key state/ssh_host_ed25519_key: missing, would be generated at first start"
        ),
        "{text}"
    );
    assert!(
        text.contains("users file users.json: no users yet"),
        "{text}"
    );
    assert!(text.trim_end().ends_with("configuration OK"), "{text}");
    assert!(
        !d.dir.path().join("state").exists(),
        "--check created the state directory"
    );
    // The file through S3SFTP_CONFIG, a bad value in it overridden by a variable.
    d.config("bad.toml", "part-size-mib = 3\n");
    let out = d.run(
        &["serve", "--check"],
        &[("S3SFTP_CONFIG", "bad.toml"), ("S3SFTP_PART_SIZE_MIB", "8")],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = d.run(&["serve", "--check"], &[("S3SFTP_CONFIG", "bad.toml")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(
            "s3sftp: --part-size-mib (from bad.toml key part-size-mib): S3 parts must be between"
        ),
        "{}",
        stderr(&out)
    );
}

#[test]
fn serve_check_fails_with_one_line_per_mistake() {
    let d = Dir::new();
    let check = |args: &[&str]| {
        let mut all = vec!["serve", "--check"];
        all.extend(args);
        let out = d.run(&all, &[]);
        assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
        stderr(&out)
    };
    d.config("syntax.toml", "listen = \":2222\"\nidle-timeout = \n");
    let err = check(&["--config", "syntax.toml"]);
    assert!(err.contains("syntax.toml:2:"), "{err}");
    assert!(err.contains("not valid TOML"), "{err}");
    d.config("unknown.toml", "idle-timout = \"10m\"\n");
    let err = check(&["--config", "unknown.toml"]);
    assert!(
        err.contains("unknown.toml: unknown key \"idle-timout\"; did you mean idle-timeout?"),
        "{err}"
    );
    d.config("value.toml", "idle-timeout = \"10x\"\n");
    let err = check(&["--config", "value.toml"]);
    assert!(
        err.contains("--idle-timeout (from value.toml key idle-timeout): invalid value \"10x\""),
        "{err}"
    );
    let err = check(&["--config", "missing.toml"]);
    assert!(
        err.contains("cannot read the config file missing.toml"),
        "{err}"
    );

    // Several mistakes at once: each on its own line.
    let key = d.unprotected_key();
    let err = check(&[
        "--users-file",
        "nobody.json",
        "--host-key",
        key.to_str().unwrap(),
        "--part-size-mib",
        "3",
    ]);
    let lines: Vec<&str> = err.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("s3sftp: --part-size-mib: S3 parts")),
        "{err}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("s3sftp: users file nobody.json does not exist; create it with")),
        "{err}"
    );
    assert!(lines.iter().any(|l| l.contains("chmod 600")), "{err}");
    assert!(err.contains("3 mistake(s) found"), "{err}");

    // An endpoint nobody listens on fails at once, naming the setting.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let started = std::time::Instant::now();
    let err = check(&[
        "--bucket",
        "x",
        "--s3-endpoint",
        &endpoint,
        "--s3-region",
        "us-east-1",
        "--s3-access-key",
        "AK",
        "--s3-secret-key",
        "SK",
    ]);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(
        err.contains(&format!("cannot reach S3 at {endpoint}")),
        "{err}"
    );
    assert!(err.contains("check --s3-endpoint"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_check_lists_under_a_user_prefix_of_a_real_bucket() {
    let (s3, _view) = crate::common::own_store::own_store("check-bucket").await;
    if s3.endpoint.is_none() {
        return; // AWS itself: the embedded store's flags below do not apply.
    }
    let d = Dir::new();
    let out = d.run(
        &[
            "users",
            "add",
            "alice",
            "--prefix",
            "users/alice/",
            "--generate-password",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let (key, secret) = s3.credentials.clone().unwrap();
    let endpoint = s3.endpoint.clone().unwrap();
    let region = s3.region.clone().unwrap();
    let toml = format!(
        "bucket = {:?}\ns3-endpoint = {endpoint:?}\ns3-region = {region:?}\ns3-path-style = true\ns3-access-key = {key:?}\n",
        s3.bucket
    );
    d.config("s3.toml", &toml);
    let run = |secret: String| {
        let d = &d;
        move || {
            d.run(
                &["serve", "--config", "s3.toml", "--check"],
                &[("S3SFTP_S3_SECRET_KEY", secret.as_str())],
            )
        }
    };
    let out = tokio::task::block_in_place(run(secret));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("reachable, listing under \"users/alice/\" allowed"),
        "{}",
        stdout(&out)
    );
    // A wrong secret: only a store that checks signatures refuses it (the embedded one
    // does; moto, CI's external store, accepts any key).
    if crate::common::external_s3().is_none() {
        let out = tokio::task::block_in_place(run("wrong".to_owned()));
        assert_eq!(out.status.code(), Some(1));
        assert!(stderr(&out).contains("denied"), "{}", stderr(&out));
    }
}
