//! The S3 request id of a failed request shows up in the server's warning. Runs in a
//! process of its own: it installs the global tracing subscriber that captures the logs.

use std::time::Duration;

use crate::common::fault_proxy::{quick_retries, start_behind_proxy, Fault, Op};
use crate::common::log_capture::Capture;
use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_request_id_of_a_failure_is_logged() {
    let Some(capture) = Capture::alone("s3sftp=info").await else {
        return;
    };

    let (t, proxy, view) =
        start_behind_proxy(|c| quick_retries(c, 2, Duration::from_secs(5))).await;
    proxy.add(Op::PutObject, Fault::Status(500), u32::MAX);
    let local = t.dir.path().join("f.bin");
    std::fs::write(&local, random_bytes(1000, 9)).expect("local file");
    let out = t
        .sftp(&t.alice, &format!("put {} f.bin\n", local.display()))
        .await;
    assert!(!out.status.success(), "the upload fails");
    assert_eq!(proxy.injected(Op::PutObject), 2);
    assert_eq!(view.object(&format!("{}f.bin", t.alice.prefix)).await, None);
    t.shutdown().await;

    let text = capture.text();
    let line = text
        .lines()
        .find(|l| l.contains("WARN") && l.contains("FAULT-"))
        .unwrap_or_else(|| panic!("no warning with the request id in:\n{text}"));
    assert!(
        line.contains("PutObject"),
        "the warning names the operation: {line}"
    );
}
