//! Passwords and S3 secret keys never reach the logs: a session with good and bad
//! passwords, uploads, an S3 error and a shutdown, all logged at `trace`, then the log
//! text is searched for every secret.

use crate::common::log_capture::Capture;
use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_secret_is_ever_logged() {
    let Some(capture) = Capture::alone("trace").await else {
        return;
    };

    let wrong = "Wr0ng-Pa55word-xyzzy";
    let t = TestServer::start().await;
    let s3_secret = match external_s3() {
        Some(s) => s.credentials.map(|(_, secret)| secret).unwrap_or_default(),
        None => t
            .server()
            .embedded()
            .map(|e| e.secret_key().to_string())
            .unwrap_or_default(),
    };
    assert!(
        t.russh_sftp_password("alice", wrong).await.is_err(),
        "wrong password refused"
    );
    assert!(t.russh_sftp_password("nobody", wrong).await.is_err());
    let s = t
        .russh_sftp_password("alice", PASSWORD)
        .await
        .expect("right password");
    s.raw.realpath(".").await.expect("works");
    let local = t.dir.path().join("f");
    std::fs::write(&local, random_bytes(PART + 5, 1)).unwrap();
    let out = t
        .sftp(
            &t.alice,
            &format!(
                "put {} f\nget f {}/g\n",
                local.display(),
                t.dir.path().display()
            ),
        )
        .await;
    assert!(out.status.success());
    drop(s);
    t.shutdown().await;

    let text = capture.text();
    assert!(
        text.contains("login"),
        "the capture holds the server's logs"
    );
    let mut secrets = vec![PASSWORD.to_string(), wrong.to_string()];
    if s3_secret.len() >= 8 {
        secrets.push(s3_secret);
    }
    for secret in &secrets {
        assert!(
            !text.contains(secret.as_str()),
            "a secret appears in the logs ({} bytes of logs)",
            text.len()
        );
    }
}
