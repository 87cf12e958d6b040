//! An S3 store owned by the test rather than by the server: the external one named by
//! `S3SFTP_TEST_S3_*`, or an embedded store started here. It outlives the server (the
//! embedded store a server starts stops with it), so shutdown and fault tests can look at
//! the bucket directly.

use s3sftp::storage::client::S3Settings;

/// The bucket as seen directly, not through the server or a proxy.
pub struct BucketView {
    pub client: aws_sdk_s3::Client,
    pub bucket: String,
    _store: Option<s3sftp::embedded::EmbeddedS3>,
    _dir: tempfile::TempDir,
}

impl BucketView {
    pub async fn object(&self, key: &str) -> Option<Vec<u8>> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .ok()?;
        Some(out.body.collect().await.ok()?.into_bytes().to_vec())
    }

    pub async fn put(&self, key: &str, data: &[u8]) {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(data.to_vec().into())
            .send()
            .await
            .expect("put");
    }

    /// Multipart uploads not completed or aborted under `prefix`.
    pub async fn pending_uploads(&self, prefix: &str) -> Vec<String> {
        let out = self
            .client
            .list_multipart_uploads()
            .bucket(&self.bucket)
            .prefix(prefix)
            .send()
            .await
            .expect("list uploads");
        out.uploads()
            .iter()
            .filter_map(|u| u.key().map(str::to_string))
            .collect()
    }
}

/// Settings that reach the test's own store, and a direct view of it.
pub async fn own_store(bucket: &str) -> (S3Settings, BucketView) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (settings, store) = match super::external_s3() {
        Some(s) => (s, None),
        None => {
            let store = s3sftp::embedded::EmbeddedS3::start(
                &dir.path().join("data"),
                bucket,
                "127.0.0.1:0".parse().expect("addr"),
            )
            .await
            .expect("embedded store");
            let settings = S3Settings::custom(
                &store.endpoint(),
                store.bucket(),
                store.region(),
                store.access_key(),
                store.secret_key(),
            );
            (settings, Some(store))
        }
    };
    let view = BucketView {
        client: s3sftp::storage::client::build_client(&settings).await,
        bucket: settings.bucket.clone(),
        _store: store,
        _dir: dir,
    };
    (settings, view)
}

/// A test server on the test's own store.
pub async fn start_with_own_store(
    tweak: impl FnOnce(&mut s3sftp::server::ServerConfig),
) -> (super::TestServer, BucketView) {
    let (settings, view) = own_store("own-store").await;
    let t = super::TestServer::start_with(move |c| {
        c.s3 = Some(settings);
        tweak(c);
    })
    .await;
    (t, view)
}
