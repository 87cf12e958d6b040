//! Several gateways over one bucket: one users object (`--users-file s3://...`) edited with
//! conditional writes and seen by every gateway, and one host identity kept in the bucket.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use s3sftp::server::ServerConfig;
use s3sftp::storage::client::S3Settings;
use s3sftp::users::remote::{ObjectLocation, RemoteError, RemoteUsers};
use s3sftp::users::{User, UsersFile};

use crate::common::own_store::own_store;
use crate::common::{scanned_host_key, test_hash, TestServer, PASSWORD};

/// Names of the users object and the host key for one test: unique, since the suites
/// share the bucket of an external S3 server. (Hex digits never spell `rsa` or `ecdsa`,
/// so the host key is ed25519.)
fn names() -> (String, String) {
    let n = rand::random::<u32>();
    (
        format!(".s3sftp/users-{n:08x}.json"),
        format!(".s3sftp/host-{n:08x}"),
    )
}

fn location(settings: &S3Settings, key: &str) -> ObjectLocation {
    ObjectLocation {
        bucket: settings.bucket.clone(),
        key: key.to_string(),
    }
}

/// A users file with one password user per (name, prefix).
fn users_json(users: &[(&str, &str)]) -> String {
    let entries: Vec<serde_json::Value> = users
        .iter()
        .map(|(name, prefix)| {
            serde_json::json!({
                "username": name,
                "password": test_hash(PASSWORD),
                "key_prefix": prefix,
            })
        })
        .collect();
    serde_json::json!({ "users": entries }).to_string()
}

fn user(name: &str, prefix: &str) -> User {
    UsersFile::parse(&users_json(&[(name, prefix)]))
        .expect("valid")
        .into_users()
        .remove(0)
}

/// A gateway over `settings` serving the users object and the host key of the bucket.
async fn gateway(settings: &S3Settings, users_key: &str, host_key: &str) -> TestServer {
    let settings = settings.clone();
    let users = location(&settings, users_key).to_string();
    let host = location(&settings, host_key).to_string();
    TestServer::start_with(move |c: &mut ServerConfig| {
        c.users_file = users.into();
        c.host_keys = vec![host.into()];
        c.users_poll = Duration::from_millis(200);
        c.s3 = Some(settings);
    })
    .await
}

/// Waits (up to a generous deadline) until `user` can log in to `t` with the test password.
async fn wait_for_login(t: &TestServer, user: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if t.russh_sftp_password(user, PASSWORD).await.is_ok() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{user} never could log in to the gateway on port {}",
            t.port
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_the_users_object_and_the_host_key() {
    let (users_key, host_key) = names();
    let (settings, view) = own_store("own-store").await;
    view.put(
        &users_key,
        users_json(&[("carol", "scale/carol/")]).as_bytes(),
    )
    .await;
    // Started together: both find no host key, one creates it, the other reads it.
    let (a, b) = tokio::join!(
        gateway(&settings, &users_key, &host_key),
        gateway(&settings, &users_key, &host_key)
    );

    // One host identity: the key the first gateway created, served by both.
    let stored = view
        .object(&host_key)
        .await
        .expect("host key in the bucket");
    let stored = russh::keys::decode_secret_key(std::str::from_utf8(&stored).unwrap(), None)
        .expect("an OpenSSH key");
    let stored = stored.public_key().to_openssh().expect("public");
    assert_eq!(scanned_host_key(a.port), stored);
    assert_eq!(scanned_host_key(b.port), stored);

    a.russh_sftp_password("carol", PASSWORD)
        .await
        .expect("carol on a");
    b.russh_sftp_password("carol", PASSWORD)
        .await
        .expect("carol on b");
    assert!(b.russh_sftp_password("dave", PASSWORD).await.is_err());

    // The admin CLI, as a process, adds a user to the object; both gateways pick it up.
    let endpoint = settings.endpoint.clone().expect("a custom endpoint");
    let (key, secret) = settings.credentials.clone().expect("keys");
    let mut child = Command::new(env!("CARGO_BIN_EXE_s3sftp"))
        .args(["users", "--users-file"])
        .arg(location(&settings, &users_key).to_string())
        .args(["--s3-endpoint", &endpoint, "--s3-path-style"])
        .args([
            "--s3-region",
            settings.region.as_deref().unwrap_or("us-east-1"),
        ])
        .args(["add", "dave", "--prefix", "scale/dave/", "--password-stdin"])
        .env("S3SFTP_S3_ACCESS_KEY", key)
        .env("S3SFTP_S3_SECRET_KEY", secret)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("s3sftp users runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{PASSWORD}\n").as_bytes())
        .expect("password written");
    let out = child.wait_with_output().expect("s3sftp users ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "users add failed: {stderr}");
    assert!(stderr.contains("added user \"dave\""), "{stderr}");
    let checked = RemoteUsers::connect(&settings, location(&settings, &users_key))
        .await
        .conditions_honoured()
        .await
        .unwrap_or(false);
    if checked {
        assert!(!stderr.contains("warning"), "{stderr}");
    }

    wait_for_login(&b, "dave").await;
    wait_for_login(&a, "dave").await;
    a.russh_sftp_password("carol", PASSWORD)
        .await
        .expect("carol kept");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_edit_fails_with_412_and_loses_nothing() {
    let (users_key, _) = names();
    let (settings, view) = own_store("own-store").await;
    view.put(
        &users_key,
        users_json(&[("carol", "scale/carol/")]).as_bytes(),
    )
    .await;
    let first = RemoteUsers::connect(&settings, location(&settings, &users_key)).await;
    let second = RemoteUsers::connect(&settings, location(&settings, &users_key)).await;
    if !first.conditions_honoured().await.expect("probe") {
        eprintln!("skipped: this S3 store does not honour If-Match (the CLI warns, see docs/scale-out.md)");
        return;
    }

    // Both admins read the same version; the second writes first.
    let (read_first, etag_first) = first.read().await.expect("read").expect("there");
    let (read_second, etag_second) = second.read().await.expect("read").expect("there");
    let mut users = read_second.into_users();
    users.push(user("erin", "scale/erin/"));
    second
        .write(&users, etag_second.as_deref())
        .await
        .expect("the first write wins");
    let mut users = read_first.into_users();
    users.push(user("frank", "scale/frank/"));
    let err = first
        .write(&users, etag_first.as_deref())
        .await
        .expect_err("the stale write loses");
    assert!(matches!(err, RemoteError::Conflict { .. }), "{err:?}");
    assert!(err.to_string().contains("412"), "{err}");
    assert!(err.to_string().contains("nothing was written"), "{err}");

    let (now, _) = first.load().await.expect("read");
    let names: Vec<&str> = now.users().iter().map(|u| u.username.as_str()).collect();
    assert_eq!(names, ["carol", "erin"]);

    // Creating: a second create of the same object loses too.
    let other = RemoteUsers::connect(&settings, location(&settings, ".s3sftp/new.json")).await;
    other
        .write(&[user("gina", "scale/gina/")], None)
        .await
        .expect("created");
    let err = other
        .write(&[user("hank", "scale/hank/")], None)
        .await
        .expect_err("already created");
    assert!(matches!(err, RemoteError::Conflict { .. }), "{err:?}");

    // The update path retries nothing by itself but keeps both changes when run in turn.
    first
        .update(false, |users| {
            users.push(user("frank", "scale/frank/"));
            Ok(())
        })
        .await
        .expect("update after the conflict");
    let (now, _) = first.load().await.expect("read");
    assert_eq!(now.users().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_object_inside_a_prefix_is_refused() {
    let (users_key, _) = names();
    let (settings, view) = own_store("own-store").await;
    let key = "shared/users.json";
    view.put(
        key,
        users_json(&[("carol", "scale/carol/"), ("mallory", "shared/")]).as_bytes(),
    )
    .await;
    let at = location(&settings, key);
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::new(dir.path().join("state"), at.to_string());
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.s3 = Some(settings.clone());
    let err = match s3sftp::server::start(config).await {
        Ok(_) => panic!("a gateway started with a users object inside mallory's prefix"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("mallory"), "{err}");
    assert!(err.contains("could then rewrite"), "{err}");

    // The CLI's write refuses the same, and leaves the object as it was.
    let before = view.object(key).await.expect("there");
    let remote = RemoteUsers::connect(&settings, location(&settings, &users_key)).await;
    let err = remote
        .update(true, |users| {
            users.push(user("oscar", ".s3sftp/"));
            Ok(())
        })
        .await
        .expect_err("refused");
    assert!(matches!(err, RemoteError::InsidePrefix { .. }), "{err:?}");
    assert!(view.object(&users_key).await.is_none());
    assert_eq!(view.object(key).await.expect("there"), before);

    // A host key inside a user's prefix would be readable over SFTP: refused too.
    view.put(
        &users_key,
        users_json(&[("carol", "scale/carol/")]).as_bytes(),
    )
    .await;
    let mut config = ServerConfig::new(
        dir.path().join("state3"),
        location(&settings, &users_key).to_string(),
    );
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.s3 = Some(settings.clone());
    config.host_keys = vec![location(&settings, "scale/carol/host_ed25519")
        .to_string()
        .into()];
    let err = match s3sftp::server::start(config).await {
        Ok(_) => panic!("a gateway served a host key inside carol's prefix"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("\"carol\""), "{err}");
    assert!(view.object("scale/carol/host_ed25519").await.is_none());

    // Another bucket than the served one is refused with the location to use.
    let mut config = ServerConfig::new(dir.path().join("state2"), "s3://elsewhere/users.json");
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.s3 = Some(settings.clone());
    let err = match s3sftp::server::start(config).await {
        Ok(_) => panic!("a gateway started with a users object in another bucket"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("not in the bucket the gateway serves"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_overlapping_the_system_prefix_is_refused() {
    let t = TestServer::start().await;
    let path = t.dir.path().join("users.json");
    let users = std::fs::read_to_string(&path).unwrap();
    let overlapping = users.replace(&t.bob.prefix, ".s3sftp/bob/");
    assert_ne!(users, overlapping);
    std::fs::write(&path, overlapping).unwrap();
    assert!(!s3sftp::reload::reload_now(t.server().shared(), &path));
    let kept = t.server().shared().users();
    assert_eq!(kept.get("bob").expect("bob").key_prefix, t.bob.prefix);
    t.shutdown().await;
}
