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

    /// Multipart uploads not completed or aborted under `prefix` (every page).
    pub async fn pending_uploads(&self, prefix: &str) -> Vec<String> {
        let mut keys = Vec::new();
        let mut marker: Option<(String, String)> = None;
        loop {
            let mut req = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(prefix);
            if let Some((key, id)) = &marker {
                req = req.key_marker(key).upload_id_marker(id);
            }
            let out = req.send().await.expect("list uploads");
            keys.extend(
                out.uploads()
                    .iter()
                    .filter_map(|u| u.key().map(str::to_string)),
            );
            match (
                out.is_truncated(),
                out.next_key_marker(),
                out.next_upload_id_marker(),
            ) {
                (Some(true), Some(key), Some(id)) => marker = Some((key.into(), id.into())),
                _ => return keys,
            }
        }
    }

    /// Every key under `prefix` with its size (every page).
    pub async fn keys(&self, prefix: &str) -> Vec<(String, u64)> {
        let mut keys = Vec::new();
        let mut token = None;
        loop {
            let mut req = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix);
            if let Some(t) = &token {
                req = req.continuation_token(t);
            }
            let out = req.send().await.expect("list objects");
            keys.extend(out.contents().iter().filter_map(|o| {
                let size = o.size().unwrap_or(0).max(0) as u64;
                o.key().map(|k| (k.to_string(), size))
            }));
            token = out.next_continuation_token().map(str::to_string);
            if token.is_none() {
                return keys;
            }
        }
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
