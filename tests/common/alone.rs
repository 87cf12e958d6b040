//! Running one test alone in a child process of the test binary, for tests that need
//! something a process has only once (the global tracing subscriber, the metrics
//! recorder) and must not share it with the tests running beside them.

/// Names the one test a child process of the test binary runs.
const CHILD_ENV: &str = "S3SFTP_TEST_ALONE_CHILD";

/// In the child process: `true`, and the caller goes on with the test. In the test
/// binary's own process: runs the calling test in a child, fails if it fails there (or
/// did not run), and returns `false`: the caller returns.
pub async fn in_own_process() -> bool {
    let thread = std::thread::current();
    let name = thread
        .name()
        .filter(|n| n.contains("::"))
        .expect("libtest names the test's thread after the test");
    match std::env::var(CHILD_ENV) {
        Ok(child) if child == name => return true,
        Ok(child) => panic!("the child process for {child} runs {name}"),
        Err(_) => {}
    }
    let exe = std::env::current_exe().expect("the test binary");
    let out = tokio::process::Command::new(exe)
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, name)
        .output()
        .await
        .expect("the test binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    print!("{stdout}");
    eprint!("{stderr}");
    assert!(
        out.status.success() && stdout.contains(&format!("test {name} ... ok")),
        "{name} failed in its own process ({})",
        out.status
    );
    false
}
