//! The `s3sftp users ...` admin commands, run as processes of the built binary.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use s3sftp::users::{
    lock_path, temp_path, verify_password, verify_password_or_dummy, HashKind, Permission,
    PermissionSet, UsersFile, UsersLock,
};

const ALICE_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIFbu/cWZHRfrWTCIft+VBlVnuhBS1uf9hTja8TpqBxW alice@laptop";
const ALICE_FP: &str = "SHA256:f7BXZ/Pc78Xk0UiEJFSVXhYGjkt71GpzHV61V4SMOqw";
const BOB_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMYXG1bbIOYA6M3cauIVEvQgyrqsg293LU4GF+O4TNdH bob@desk";
/// `crypt("secret", "$2b$04$abcdefghijklmnopqrstuv")` from libxcrypt.
const BCRYPT_SECRET: &str = "$2b$04$abcdefghijklmnopqrstuu2r9OfJnfCsdneAXAGHnS4UpFFP8WIrW";
/// `openssl passwd -6 -salt saltsalt secret`.
const SHA512_SECRET: &str = "$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1";

/// A temporary directory holding a users file path (not created until a command writes it).
struct Env {
    dir: tempfile::TempDir,
    file: PathBuf,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("users.json");
        Env { dir, file }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_s3sftp"));
        cmd.current_dir(self.dir.path())
            .env_remove("S3SFTP_USERS_FILE")
            .env_remove("S3SFTP_TEST_CRASH_BEFORE_RENAME")
            .env("S3SFTP_LOG", "warn")
            .arg("users")
            .arg("--users-file")
            .arg(&self.file)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Runs `s3sftp users --users-file FILE <args>` with `stdin` as standard input.
    fn run_with(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = self.command(args);
        if stdin.is_some() {
            cmd.stdin(Stdio::piped());
        }
        let mut child = cmd.spawn().unwrap();
        if let Some(text) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
        }
        child.wait_with_output().unwrap()
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_with(args, None)
    }

    /// Runs and expects success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// Runs and expects exit code `code`; returns stderr.
    fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "{args:?}: {}",
            text(&out.stderr)
        );
        text(&out.stderr)
    }

    fn load(&self) -> UsersFile {
        UsersFile::load(&self.file).unwrap()
    }

    fn raw(&self) -> String {
        fs::read_to_string(&self.file).unwrap()
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn add_list_show_disable_enable_rm() {
    let env = Env::new();
    env.ok(&[
        "add",
        "alice",
        "--prefix",
        "users/alice/",
        "--key",
        ALICE_KEY,
    ]);
    assert_eq!(mode(&env.file), 0o600);
    let out = env.run_with(
        &["add", "bob", "--prefix", "users/bob/", "--password-stdin"],
        Some("b0b's password\n"),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        out.stdout.is_empty(),
        "nothing on stdout: {}",
        text(&out.stdout)
    );
    assert!(text(&out.stderr).contains("added user \"bob\""));

    let list = env.ok(&["list"]);
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 3, "{list}");
    assert_eq!(lines[0], "NAME   ENABLED  PREFIX        AUTH       KEYS");
    assert_eq!(
        lines[1],
        format!("alice  yes      users/alice/  publickey  {ALICE_FP}")
    );
    assert_eq!(lines[2], "bob    yes      users/bob/    password   -");

    let show = env.ok(&["show", "bob"]);
    assert!(show.contains("password:     set (argon2id hash)"), "{show}");
    assert!(!show.contains("$argon2"), "{show}");
    assert!(show.contains("permissions:  /  *"), "{show}");
    let bob = env.load().get("bob").unwrap().clone();
    assert!(verify_password_or_dummy(Some(&bob), "b0b's password"));
    assert!(!env.raw().contains("b0b's password"));

    env.ok(&["disable", "alice"]);
    assert!(!env.load().get("alice").unwrap().enabled);
    assert!(env.ok(&["list"]).contains("alice  no "));
    env.ok(&["enable", "alice"]);
    assert!(env.load().get("alice").unwrap().enabled);

    let err = env.run(&["rm", "alice"]);
    assert!(text(&err.stderr).contains("its files under \"users/alice/\" are still in the bucket"));
    assert!(env.load().get("alice").is_none());
    assert_eq!(env.load().users().len(), 1);
    assert!(env.ok(&["check"]).contains("1 users, valid"));
}

#[test]
fn generated_password_is_printed_once_and_works() {
    let env = Env::new();
    let out = env.ok(&["add", "gen", "--prefix", "g/", "--generate-password"]);
    let password = out.trim_end();
    assert_eq!(out.lines().count(), 1, "{out}");
    assert_eq!(password.len(), 20);
    assert!(verify_password_or_dummy(env.load().get("gen"), password));
    assert!(!env.raw().contains(password));
    // passwd --generate-password replaces it.
    let again = env.ok(&["passwd", "gen", "--generate-password"]);
    assert_ne!(again.trim_end(), password);
    assert!(verify_password_or_dummy(
        env.load().get("gen"),
        again.trim_end()
    ));
}

#[test]
fn passwd_from_stdin_verifies_with_the_library() {
    let env = Env::new();
    env.ok(&["add", "k", "--prefix", "k/", "--key", ALICE_KEY]);
    let out = env.run_with(&["passwd", "k", "--password-stdin"], Some("new pass\r\n"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let k = env.load().get("k").unwrap().clone();
    assert_eq!(k.password_kind(), Some(HashKind::Argon2id));
    assert!(k
        .password
        .as_deref()
        .unwrap()
        .starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
    assert!(verify_password(k.password.as_deref().unwrap(), "new pass"));
    // Without a terminal and without --password-stdin: a clear refusal, nothing changed.
    let err = env.fails(&["passwd", "k"], 1);
    assert!(
        err.contains("not a terminal: give --password-stdin"),
        "{err}"
    );
    // Empty password refused.
    let out = env.run_with(&["passwd", "k", "--password-stdin"], Some("\n"));
    assert!(text(&out.stderr).contains("empty password"));
    // Remove the password: key login remains.
    env.ok(&["passwd", "k", "--remove"]);
    assert_eq!(env.load().get("k").unwrap().password, None);
    // A key-less user cannot lose its password.
    env.run_with(
        &["add", "p", "--prefix", "p/", "--password-stdin"],
        Some("x\n"),
    );
    let err = env.fails(&["passwd", "p", "--remove"], 1);
    assert!(
        err.contains("has neither a password nor public_keys"),
        "{err}"
    );
    // Unknown user: refused before asking anything.
    let err = env.fails(&["passwd", "nobody", "--password-stdin"], 1);
    assert!(err.contains("there is no user \"nobody\""), "{err}");
}

#[test]
fn keys_add_from_line_and_file_and_remove_by_fingerprint_or_index() {
    let env = Env::new();
    env.ok(&["add", "u", "--prefix", "u/", "--key", ALICE_KEY]);
    let file = env.dir.path().join("bob.pub");
    fs::write(&file, format!("# bob\n{BOB_KEY}\n")).unwrap();
    env.ok(&["key", "add", "u", file.to_str().unwrap()]);
    assert_eq!(env.load().get("u").unwrap().public_keys.len(), 2);
    let err = env.fails(&["key", "add", "u", ALICE_KEY], 1);
    assert!(
        err.contains(&format!("already has the key {ALICE_FP}")),
        "{err}"
    );
    let err = env.fails(&["key", "add", "u", "ssh-ed25519 AAAAbroken x"], 1);
    assert!(
        err.contains("does not parse as an OpenSSH public key"),
        "{err}"
    );
    let err = env.fails(&["key", "add", "u", "no-such-file.pub"], 1);
    assert!(err.contains("not an existing file"), "{err}");

    let show = env.ok(&["show", "u"]);
    assert!(
        show.contains(&format!("1. {ALICE_FP} ssh-ed25519 alice@laptop")),
        "{show}"
    );
    env.ok(&["key", "rm", "u", ALICE_FP]);
    let keys: Vec<String> = env
        .load()
        .get("u")
        .unwrap()
        .public_keys
        .iter()
        .map(|k| k.line().to_owned())
        .collect();
    assert_eq!(keys, [BOB_KEY]);
    let err = env.fails(&["key", "rm", "u", "5"], 1);
    assert!(
        err.contains("has no key \"5\"; its keys are: 1 SHA256:"),
        "{err}"
    );
    // The last key of a user without a password cannot go.
    let err = env.fails(&["key", "rm", "u", "1"], 1);
    assert!(err.contains("could never log in"), "{err}");
    assert_eq!(env.load().get("u").unwrap().public_keys.len(), 1);
}

#[test]
fn set_permissions_and_limits() {
    let env = Env::new();
    env.ok(&[
        "add",
        "drop",
        "--prefix",
        "drop/",
        "--key",
        ALICE_KEY,
        "--permission",
        "/=upload,create_dirs",
        "--max-sessions",
        "2",
    ]);
    let drop_box = env.load().get("drop").unwrap().clone();
    assert_eq!(
        drop_box.permissions_for("/x"),
        PermissionSet::of(&[Permission::Upload, Permission::CreateDirs])
    );
    assert_eq!(drop_box.max_sessions, Some(2));

    env.ok(&[
        "set",
        "drop",
        "--permission",
        "/public=list,download",
        "--allowed-ip",
        "10.0.0.0/8",
        "--allowed-ip",
        "2001:db8::/32",
        "--expires-at",
        "2030-01-01T00:00:00Z",
    ]);
    let raw = env.raw();
    assert!(
        raw.contains("\"/public\": [\n          \"list\",\n          \"download\"\n        ]"),
        "{raw}"
    );
    assert!(
        raw.contains("\"expires_at\": \"2030-01-01T00:00:00Z\""),
        "{raw}"
    );
    let u = env.load().get("drop").unwrap().clone();
    assert!(u.ip_allowed("10.1.1.1".parse().unwrap()));
    assert!(!u.ip_allowed("192.0.2.1".parse().unwrap()));
    let show = env.ok(&["show", "drop"]);
    assert!(
        show.contains(
            "permissions:  /        upload,create_dirs\n              /public  list,download"
        ),
        "{show}"
    );
    assert!(
        show.contains("allowed_ips:  10.0.0.0/8, 2001:db8::/32"),
        "{show}"
    );

    env.ok(&[
        "set",
        "drop",
        "--unset-permission",
        "/public",
        "--any-ip",
        "--no-max-sessions",
        "--no-expiry",
    ]);
    let u = env.load().get("drop").unwrap().clone();
    assert_eq!(u.permissions.entries().count(), 1);
    assert!(u.allowed_ips.is_empty() && u.max_sessions.is_none() && u.expires_at.is_none());
    env.ok(&["set", "drop", "--reset-permissions"]);
    assert!(env.load().get("drop").unwrap().permissions.is_default());
    assert!(
        !env.raw().contains("permissions"),
        "default permissions are not written"
    );

    // Bad values are refused by the argument parser (exit 2), naming the flag.
    let err = env.fails(&["set", "drop", "--allowed-ip", "10.0.0.300/8"], 2);
    assert!(
        err.contains("--allowed-ip") && err.contains("CIDR"),
        "{err}"
    );
    let err = env.fails(&["set", "drop", "--allowed-ip", "10.0.0.1"], 2);
    assert!(err.contains("10.0.0.1/32"), "{err}");
    let err = env.fails(&["set", "drop", "--permission", "/x=write"], 2);
    assert!(err.contains("unknown permission \"write\""), "{err}");
    let err = env.fails(&["set", "drop", "--max-sessions", "0"], 2);
    assert!(err.contains("max_sessions is 0"), "{err}");
    let err = env.fails(&["set", "drop", "--expires-at", "2030-01-01"], 2);
    assert!(err.contains("RFC 3339"), "{err}");
    let err = env.fails(&["set", "drop"], 1);
    assert!(err.contains("nothing to change"), "{err}");
    let err = env.fails(&["set", "drop", "--unset-permission", "/"], 1);
    assert!(err.contains("permissions has no entry for \"/\""), "{err}");
}

#[test]
fn bad_input_is_refused_and_the_file_is_unchanged() {
    let env = Env::new();
    env.ok(&["add", "a", "--prefix", "users/a/", "--key", ALICE_KEY]);
    let before = env.raw();

    let err = env.fails(
        &["add", "a", "--prefix", "users/other/", "--key", BOB_KEY],
        1,
    );
    assert!(err.contains("user \"a\" already exists"), "{err}");
    let err = env.fails(&["add", "b", "--prefix", "users/a/b/", "--key", BOB_KEY], 1);
    assert!(err.contains("not changing users file"), "{err}");
    assert!(err.contains("user \"b\": key_prefix \"users/a/b/\" lies inside user \"a\"'s key_prefix \"users/a/\""), "{err}");
    let err = env.fails(&["add", "c", "--prefix", "users/c", "--key", BOB_KEY], 1);
    assert!(err.contains("key_prefix must end with \"/\""), "{err}");
    let err = env.fails(
        &["add", "bad name", "--prefix", "users/x/", "--key", BOB_KEY],
        1,
    );
    assert!(err.contains("username may contain only"), "{err}");
    let err = env.fails(
        &["add", "d", "--prefix", "users/d/", "--key", "ssh-rsa AAAA"],
        1,
    );
    assert!(
        err.contains("does not parse as an OpenSSH public key"),
        "{err}"
    );
    let err = env.fails(&["add", "e", "--prefix", "users/e/"], 1);
    assert!(
        err.contains("has neither a password nor public_keys"),
        "{err}"
    );
    let err = env.fails(
        &[
            "add",
            "f",
            "--prefix",
            "users/f/",
            "--key",
            BOB_KEY,
            "--allowed-ip",
            "nope",
        ],
        2,
    );
    assert!(err.contains("CIDR"), "{err}");
    for args in [
        &["disable", "zed"][..],
        &["enable", "zed"],
        &["rm", "zed"],
        &["show", "zed"],
        &["key", "rm", "zed", "1"],
        &["set", "zed", "--no-expiry"],
    ] {
        let err = env.fails(args, 1);
        assert!(err.contains("there is no user \"zed\""), "{args:?}: {err}");
    }
    // A password is never accepted on the command line.
    let err = env.fails(
        &["add", "g", "--prefix", "users/g/", "--password", "secret"],
        2,
    );
    assert!(err.contains("--password"), "{err}");
    assert_eq!(env.raw(), before);
}

#[test]
fn commands_on_a_missing_or_invalid_file() {
    let env = Env::new();
    let err = env.fails(&["list"], 1);
    assert!(err.contains("cannot read users file"), "{err}");
    let err = env.fails(&["disable", "x"], 1);
    assert!(err.contains("cannot read users file"), "{err}");
    assert!(!env.file.exists());

    fs::write(
        &env.file,
        r#"{"users": [{"username": "x", "password": "hunter2", "key_prefix": "x"}]}"#,
    )
    .unwrap();
    let err = env.fails(&["add", "y", "--prefix", "y/", "--key", ALICE_KEY], 1);
    assert!(err.contains("has 2 problems"), "{err}");
    assert!(err.contains("run `s3sftp users passwd x`"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    let err = env.fails(&["check"], 1);
    assert!(
        err.contains("user \"x\": password looks like plain text"),
        "{err}"
    );
    assert!(
        err.contains("user \"x\": key_prefix must end with \"/\""),
        "{err}"
    );
    let other = env.dir.path().join("other.json");
    fs::write(&other, r#"{"users": []}"#).unwrap();
    let out = env.ok(&["check", other.to_str().unwrap()]);
    assert!(out.contains("0 users, valid"), "{out}");
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/users.example.json");
    assert!(env.ok(&["check", example]).contains("valid"));
}

#[test]
fn migration_hashes_in_the_file_are_shown_and_verify() {
    let env = Env::new();
    let json = format!(
        r#"{{"users": [
            {{"username": "b", "password": "{BCRYPT_SECRET}", "key_prefix": "b/"}},
            {{"username": "s", "password": "{SHA512_SECRET}", "key_prefix": "s/"}}
        ]}}"#
    );
    fs::write(&env.file, json).unwrap();
    assert!(env.ok(&["show", "b"]).contains("set (bcrypt hash)"));
    assert!(env.ok(&["show", "s"]).contains("set (sha512-crypt hash)"));
    let users = env.load();
    assert!(verify_password_or_dummy(users.get("b"), "secret"));
    assert!(verify_password_or_dummy(users.get("s"), "secret"));
    assert!(!verify_password_or_dummy(users.get("s"), "Secret"));
    // An edit keeps the hashes as they are; a new password replaces one with argon2id.
    env.ok(&["disable", "b"]);
    assert!(env.raw().contains(BCRYPT_SECRET) && env.raw().contains(SHA512_SECRET));
    env.run_with(&["passwd", "s", "--password-stdin"], Some("fresh\n"));
    assert_eq!(
        env.load().get("s").unwrap().password_kind(),
        Some(HashKind::Argon2id)
    );
}

#[test]
fn concurrent_writers_lose_nothing() {
    let env = Env::new();
    env.ok(&["add", "first", "--prefix", "first/", "--key", ALICE_KEY]);
    let children: Vec<Child> = (0..8)
        .map(|i| {
            let name = format!("user{i}");
            let prefix = format!("users/{name}/");
            env.command(&["add", &name, "--prefix", &prefix, "--key", BOB_KEY])
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let users = env.load();
    assert_eq!(users.users().len(), 9);
    for i in 0..8 {
        assert!(users.get(&format!("user{i}")).is_some(), "user{i} lost");
    }
    assert!(!temp_path(&env.file).exists());
}

#[test]
fn a_writer_waits_for_the_lock() {
    let env = Env::new();
    env.ok(&["add", "a", "--prefix", "a/", "--key", ALICE_KEY]);
    let lock = UsersLock::acquire(&env.file, Duration::from_secs(5), |_| {}).unwrap();
    assert_eq!(
        lock_path(&env.file),
        env.dir.path().join(".users.json.lock")
    );
    let child = env.command(&["disable", "a"]).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        env.load().get("a").unwrap().enabled,
        "must not write while the lock is held"
    );
    drop(lock);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("waiting for another `s3sftp users` command"));
    assert!(!env.load().get("a").unwrap().enabled);
}

#[test]
fn a_crash_between_write_and_rename_leaves_the_old_file() {
    let env = Env::new();
    env.ok(&["add", "a", "--prefix", "a/", "--key", ALICE_KEY]);
    fs::set_permissions(&env.file, fs::Permissions::from_mode(0o644)).unwrap();
    let before = env.raw();
    let out = env
        .command(&["add", "b", "--prefix", "b/", "--key", BOB_KEY])
        .env("S3SFTP_TEST_CRASH_BEFORE_RENAME", "1")
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the process was to die before the rename"
    );
    // The old file is intact and valid; the new text sits in the temp file, complete.
    assert_eq!(env.raw(), before);
    assert!(env.load().get("b").is_none());
    let temp = temp_path(&env.file);
    assert!(UsersFile::parse(&fs::read_to_string(&temp).unwrap())
        .unwrap()
        .get("b")
        .is_some());
    // The server's loader and `check` ignore the leftover; the next write removes it.
    assert!(env.ok(&["check"]).contains("1 users, valid"));
    env.ok(&["add", "c", "--prefix", "c/", "--key", BOB_KEY]);
    assert!(!temp.exists());
    let users = env.load();
    assert!(users.get("a").is_some() && users.get("c").is_some() && users.get("b").is_none());
    assert_eq!(mode(&env.file), 0o600, "mode forced back to 0600");
}

#[test]
fn hash_password_still_works() {
    let env = Env::new();
    let out = env.run_with(&["hash-password"], Some("pw\n"));
    assert!(out.status.success());
    let hash = text(&out.stdout);
    assert!(verify_password(hash.trim_end(), "pw"));
}

#[test]
fn users_file_from_the_environment() {
    let env = Env::new();
    let out = Command::new(env!("CARGO_BIN_EXE_s3sftp"))
        .current_dir(env.dir.path())
        .env("S3SFTP_USERS_FILE", "from-env.json")
        .args(["users", "add", "e", "--prefix", "e/", "--key", ALICE_KEY])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(env.dir.path().join("from-env.json").exists());
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sftpgo_dump.json")
}

#[test]
fn import_sftpgo_dump() {
    let env = Env::new();
    env.ok(&["add", "admin1", "--prefix", "admins/1/", "--key", ALICE_KEY]);
    let dump = fixture();
    let dump = dump.to_str().unwrap();

    // Dry run: reports, writes nothing.
    let before = env.raw();
    let out = env.run(&["import-sftpgo", dump, "--dry-run"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(env.raw(), before);
    let err = text(&out.stderr);
    assert!(err.contains("would import 3 users"), "{err}");
    let table = text(&out.stdout);
    assert!(table.starts_with("NAME "), "{table}");

    let out = env.run(&["import-sftpgo", dump]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("imported 3 users into"), "{err}");
    assert!(err.contains("(alice, bob, frank), skipped 3"), "{err}");
    assert!(
        err.contains("skipped \"carol\": its storage is the local filesystem, not S3"),
        "{err}"
    );
    assert!(
        err.contains("skipped \"dave\": it has no S3 key_prefix"),
        "{err}"
    );
    assert!(
        err.contains("skipped \"erin\": no password hash or public key"),
        "{err}"
    );
    assert!(
        err.contains("\"alice\": quota (quota_size, quota_files) not carried over"),
        "{err}"
    );
    assert!(err.contains("\"bob\": denied_ip"), "{err}");
    assert!(
        err.contains("\"bob\": bandwidth limits not carried over"),
        "{err}"
    );
    assert!(
        err.contains("\"bob\": virtual folders not carried over"),
        "{err}"
    );
    assert!(
        err.contains("\"bob\": permissions on \"/\": delete_files, chmod not carried over"),
        "{err}"
    );
    assert!(
        err.contains(
            "\"frank\": password not imported: \"pbkdf2-sha256\" hashes are not supported"
        ),
        "{err}"
    );
    assert!(
        err.contains("\"frank\": public_keys[1] not imported"),
        "{err}"
    );
    assert!(!err.contains("R5J62hsSq"), "never prints a hash: {err}");

    let users = env.load();
    assert_eq!(users.users().len(), 4);
    let alice = users.get("alice").unwrap();
    assert!(alice.enabled);
    assert_eq!(alice.key_prefix, "customers/alice/");
    assert!(
        verify_password_or_dummy(Some(alice), "secret"),
        "bcrypt hash kept"
    );
    assert_eq!(alice.public_keys.len(), 1);
    assert_eq!(alice.permissions_for("/a").to_string(), "list,download");
    assert_eq!(alice.permissions_for("/uploads/x").to_string(), "*");
    assert_eq!(alice.allowed_ips[0].to_string(), "192.168.1.0/24");
    assert_eq!(alice.max_sessions, Some(2));
    assert_eq!(
        alice.expires_at.unwrap().to_rfc3339(),
        "2031-01-01T00:00:00+00:00"
    );
    let bob = users.get("bob").unwrap();
    assert!(!bob.enabled, "status 0");
    assert_eq!(bob.password_kind(), Some(HashKind::Sha512Crypt));
    assert_eq!(
        bob.permissions_for("/").to_string(),
        "list,download,upload,create_dirs"
    );
    let frank = users.get("frank").unwrap();
    assert_eq!(frank.password, None);
    assert_eq!(frank.public_keys.len(), 1);

    // Importing again skips everyone already there.
    let out = env.run(&["import-sftpgo", dump]);
    assert!(out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("imported 0 users"), "{err}");
    assert!(
        err.contains("skipped \"alice\": a user with this name is already in the users file"),
        "{err}"
    );
    assert_eq!(env.load().users().len(), 4);
}

#[test]
fn import_sftpgo_into_another_file_and_conflicts() {
    let env = Env::new();
    let dump = fixture();
    let into = env.dir.path().join("imported.json");
    // A prefix conflict with an existing user rejects the whole import.
    fs::write(
        &into,
        format!(r#"{{"users": [{{"username": "x", "public_keys": ["{ALICE_KEY}"], "key_prefix": "customers/"}}]}}"#),
    )
    .unwrap();
    let out = env.run(&[
        "import-sftpgo",
        dump.to_str().unwrap(),
        "--into",
        into.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("lies inside user \"x\"'s key_prefix \"customers/\""),
        "{err}"
    );
    assert_eq!(UsersFile::load(&into).unwrap().users().len(), 1);
    fs::remove_file(&into).unwrap();
    // Into a new file.
    let out = env.run(&[
        "import-sftpgo",
        dump.to_str().unwrap(),
        "--into",
        into.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(UsersFile::load(&into).unwrap().users().len(), 3);
    assert_eq!(mode(&into), 0o600);
    assert!(!env.file.exists(), "--into, not --users-file");
    // Not a dump.
    let bad = env.dir.path().join("bad.json");
    fs::write(&bad, "{\"users\": {}}").unwrap();
    let err = env.fails(&["import-sftpgo", bad.to_str().unwrap()], 1);
    assert!(
        err.contains("SFTPGo dump") && err.contains("line 1"),
        "{err}"
    );
}

/// docs/install.md makes the users file with `install -m 0600 /dev/null users.json`: every
/// command takes that empty file as "no users".
#[test]
fn an_empty_users_file_holds_no_users() {
    use std::os::unix::fs::PermissionsExt;
    for content in ["", "\n  \n"] {
        let env = Env::new();
        fs::write(&env.file, content).unwrap();
        fs::set_permissions(&env.file, fs::Permissions::from_mode(0o600)).unwrap();
        let out = env.run(&["list"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout).lines().count(), 1, "the header only");
        assert!(text(&out.stderr).contains("no users"));
        let json: serde_json::Value = serde_json::from_str(&env.ok(&["list", "--json"])).unwrap();
        assert_eq!(json, serde_json::json!([]));
        assert!(env.ok(&["check"]).contains("0 users, valid"));
        let err = env.fails(&["show", "alice"], 1);
        assert!(err.contains("there is no user \"alice\""), "{err}");
        let err = env.fails(&["disable", "alice"], 1);
        assert!(err.contains("there is no user \"alice\""), "{err}");
        env.ok(&[
            "add",
            "alice",
            "--prefix",
            "users/alice/",
            "--key",
            ALICE_KEY,
        ]);
        assert_eq!(env.load().users().len(), 1);
        assert_eq!(mode(&env.file), 0o600);
    }
}

#[test]
fn list_and_show_print_json() {
    let env = Env::new();
    env.ok(&[
        "add",
        "alice",
        "--prefix",
        "users/alice/",
        "--key",
        ALICE_KEY,
    ]);
    let out = env.run_with(
        &[
            "add",
            "bob",
            "--prefix",
            "users/bob/",
            "--password-stdin",
            "--permission",
            "/=list,download",
            "--allowed-ip",
            "10.0.0.0/8",
            "--max-sessions",
            "3",
            "--expires-at",
            "2001-01-01T00:00:00Z",
        ],
        Some("b0b's password\n"),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    env.ok(&["disable", "alice"]);

    let list: serde_json::Value = serde_json::from_str(&env.ok(&["list", "--json"])).unwrap();
    let users = list.as_array().expect("an array");
    assert_eq!(users.len(), 2);
    assert_eq!(users[0]["username"], "alice");
    assert_eq!(users[0]["enabled"], false);
    assert_eq!(users[0]["auth_methods"], serde_json::json!(["publickey"]));
    assert_eq!(users[0]["password"], serde_json::Value::Null);
    assert_eq!(users[0]["public_keys"][0]["fingerprint"], ALICE_FP);
    assert_eq!(users[0]["public_keys"][0]["algorithm"], "ssh-ed25519");
    assert_eq!(users[0]["public_keys"][0]["comment"], "alice@laptop");
    assert_eq!(users[0]["permissions"], serde_json::json!({"/": ["*"]}));

    let show = env.ok(&["show", "bob", "--json"]);
    assert!(!show.contains("$argon2"), "no hash: {show}");
    let bob: serde_json::Value = serde_json::from_str(&show).unwrap();
    assert_eq!(bob, users[1], "show --json is list --json's entry");
    assert_eq!(bob["username"], "bob");
    assert_eq!(bob["enabled"], true);
    assert_eq!(bob["expired"], true);
    assert_eq!(bob["key_prefix"], "users/bob/");
    assert_eq!(bob["password"], "argon2id");
    assert_eq!(bob["auth_methods"], serde_json::json!(["password"]));
    assert_eq!(bob["public_keys"], serde_json::json!([]));
    assert_eq!(
        bob["permissions"],
        serde_json::json!({"/": ["list", "download"]})
    );
    assert_eq!(bob["allowed_ips"], serde_json::json!(["10.0.0.0/8"]));
    assert_eq!(bob["max_sessions"], 3);
    assert_eq!(bob["expires_at"], "2001-01-01T00:00:00+00:00");
}
