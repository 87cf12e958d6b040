//! The embedded S3 store on its own, for benchmarks: `s3_store DATA_DIR BUCKET [ADDR]`.
//! Prints one JSON line (`endpoint`, `access_key`, `secret_key`, `bucket`) on stdout, then
//! serves until stdin closes or the process is killed. Loopback only, like the store inside
//! `s3sftp serve`; its generated keys let other S3 clients share the bucket with s3sftp.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use s3_store::EmbeddedS3;
use tokio::io::AsyncReadExt;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: s3_store DATA_DIR BUCKET [127.0.0.1:PORT]";
    let data_dir = PathBuf::from(args.next().ok_or_else(|| anyhow::anyhow!(usage))?);
    let bucket = args.next().ok_or_else(|| anyhow::anyhow!(usage))?;
    let listen: SocketAddr = args.next().as_deref().unwrap_or("127.0.0.1:0").parse()?;
    if !listen.ip().is_loopback() {
        anyhow::bail!("the store listens on loopback only");
    }
    let store = EmbeddedS3::start(&data_dir, &bucket, listen).await?;
    let line = serde_json::json!({
        "endpoint": store.endpoint(),
        "access_key": store.access_key(),
        "secret_key": store.secret_key(),
        "bucket": bucket,
    });
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    drop(out);
    // Serve until stdin reaches EOF (the parent closed it or exited).
    let mut sink = [0u8; 64];
    let mut stdin = tokio::io::stdin();
    while stdin.read(&mut sink).await.unwrap_or(0) > 0 {}
    store.shutdown().await;
    Ok(())
}
