//! Clients that pipeline deeply: paramiko (its prefetch asks for a whole file before it
//! reads a reply), asyncssh with a large `max_requests`, and a raw client with thousands
//! of READs outstanding. Each must complete with the right bytes: the server keeps
//! reading its channel while replies wait on the client's window.

use std::process::Stdio;

use tokio::io::AsyncWriteExt;

use crate::common::raw_sftp::{packet, read_reply, string, RawSftp};
use crate::common::{random_bytes, sha256, TestServer, MIB, PASSWORD};

/// Whether `python3 -c "import MODULE"` works (.ci/run installs paramiko and asyncssh).
fn python_has(module: &str) -> bool {
    std::process::Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs a Python script with the server's port, the user and the password as arguments
/// and returns its stdout; panics with its stderr if it fails or takes over 5 minutes.
async fn run_python(script: &str, t: &TestServer, args: &[&str]) -> String {
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg("-c")
        .arg(script)
        .arg(t.port.to_string())
        .arg(&t.alice.name)
        .arg(PASSWORD)
        .args(args)
        .kill_on_drop(true);
    let out = tokio::time::timeout(std::time::Duration::from_secs(300), cmd.output())
        .await
        .expect("the client finishes (a deadlocked transfer never does)")
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "python client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const PARAMIKO: &str = r#"
import hashlib, sys, paramiko
port, user, password, remote, local = sys.argv[1:6]
t = paramiko.Transport(("127.0.0.1", int(port)))
t.connect(username=user, password=password)
s = paramiko.SFTPClient.from_transport(t)
s.put(local, remote)
s.get(remote, local + ".back")
print(hashlib.sha256(open(local + ".back", "rb").read()).hexdigest())
t.close()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paramiko_get_and_put_of_large_files_complete() {
    if !python_has("paramiko") {
        eprintln!("SKIPPED: paramiko not installed (pip install paramiko)");
        return;
    }
    let t = TestServer::start().await;
    for (i, size) in [17 * MIB, 100 * MIB].into_iter().enumerate() {
        let data = random_bytes(size, 70 + i as u64);
        let local = t.dir.path().join(format!("pk{i}.bin"));
        std::fs::write(&local, &data).unwrap();
        let local = local.to_str().unwrap().to_string();
        let remote = format!("pk{i}.bin");
        let got = run_python(PARAMIKO, &t, &[&remote, &local]).await;
        assert_eq!(got.trim(), sha256(&data), "paramiko get of {size} bytes");
        let key = format!("{}{remote}", t.alice.prefix);
        assert_eq!(
            t.s3.object(&key).await.map(|o| sha256(&o)),
            Some(sha256(&data)),
            "paramiko put of {size} bytes"
        );
    }
    t.shutdown().await;
}

const ASYNCSSH: &str = r#"
import asyncio, hashlib, sys, asyncssh
port, user, password, remote, local = sys.argv[1:6]
async def main():
    async with asyncssh.connect("127.0.0.1", int(port), username=user, password=password,
                                known_hosts=None) as conn:
        async with conn.start_sftp_client() as s:
            await s.put(local, remote, block_size=32768, max_requests=2048)
            await s.get(remote, local + ".back", block_size=32768, max_requests=2048)
    print(hashlib.sha256(open(local + ".back", "rb").read()).hexdigest())
asyncio.run(main())
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn asyncssh_with_deep_pipelines_completes() {
    if !python_has("asyncssh") {
        eprintln!("SKIPPED: asyncssh not installed (pip install asyncssh)");
        return;
    }
    let t = TestServer::start().await;
    let data = random_bytes(40 * MIB, 81);
    let local = t.dir.path().join("as.bin");
    std::fs::write(&local, &data).unwrap();
    let got = run_python(ASYNCSSH, &t, &["as.bin", local.to_str().unwrap()]).await;
    assert_eq!(got.trim(), sha256(&data));
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousands_of_outstanding_reads_are_all_answered() {
    const READS: u32 = 6000;
    const LEN: u32 = 32 * 1024;
    let t = TestServer::start().await;
    let data = random_bytes(8 * MIB, 90);
    t.s3.put(&format!("{}big.bin", t.alice.prefix), &data).await;

    let mut raw = RawSftp::open(&t, &t.alice).await;
    let handle = raw.open_file("/big.bin", 0x01).await; // READ
    let RawSftp {
        mut rd,
        mut wr,
        connection: _connection,
    } = raw;

    // Every READ goes out before any reply is read: the server must keep reading its
    // channel while thousands of replies wait on this client's window.
    let file_len = data.len() as u64;
    // One SSH message per request, as paramiko sends them: far more messages than
    // russh buffers for a channel that is not read.
    let requests: Vec<Vec<u8>> = (0..READS)
        .map(|i| {
            let offset = (u64::from(i) * u64::from(LEN)) % file_len;
            let mut body = string(&handle);
            body.extend(offset.to_be_bytes());
            body.extend(LEN.to_be_bytes());
            packet(5, 1000 + i, &body)
        })
        .collect();
    let writer = tokio::spawn(async move {
        for request in requests {
            wr.write_all(&request).await.expect("request sent");
            wr.flush().await.expect("request sent");
        }
        wr
    });
    let mut answered = 0u32;
    let all_answered = async {
        while answered < READS {
            let (kind, id, body) = read_reply(&mut rd).await;
            assert_eq!(kind, 103, "DATA for request {id}");
            let i = id - 1000;
            let offset = ((u64::from(i) * u64::from(LEN)) % file_len) as usize;
            assert_eq!(
                &body[4..],
                &data[offset..offset + LEN as usize],
                "bytes of request {id}"
            );
            answered += 1;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(120), all_answered)
        .await
        .expect("every READ answered (a deadlocked session never answers)");
    drop(writer.await.unwrap());
    t.shutdown().await;
}
