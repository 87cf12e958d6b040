//! The bucket as the tests see it directly: objects, keys and pending multipart uploads,
//! read and written with the SDK, not through the server.

use std::time::Duration;

use super::own_store::OwnStore;

/// A client of the bucket and its name; keeps the test's own store (if it has one) alive.
pub struct BucketView {
    pub client: aws_sdk_s3::Client,
    pub bucket: String,
    _store: Option<OwnStore>,
}

impl BucketView {
    /// The bucket `bucket` through `client`.
    pub fn new(client: aws_sdk_s3::Client, bucket: &str) -> BucketView {
        BucketView {
            client,
            bucket: bucket.to_string(),
            _store: None,
        }
    }

    /// Like [`BucketView::new`], keeping `store` running as long as the view.
    pub fn owning(client: aws_sdk_s3::Client, bucket: &str, store: OwnStore) -> BucketView {
        BucketView {
            _store: Some(store),
            ..BucketView::new(client, bucket)
        }
    }

    /// The object at `key`, if any.
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

    /// The size of the object at `key`, if any.
    pub async fn object_size(&self, key: &str) -> Option<u64> {
        let out = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .ok()?;
        out.content_length().map(|l| l as u64)
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

    /// Every key under `prefix`.
    pub async fn keys(&self, prefix: &str) -> Vec<String> {
        let objects = self.objects(prefix).await;
        objects.into_iter().map(|(key, _)| key).collect()
    }

    /// Every key under `prefix` with its size (every page).
    pub async fn objects(&self, prefix: &str) -> Vec<(String, u64)> {
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

    /// Waits (up to 10 s) until no multipart upload is pending under `prefix`; what is
    /// still pending then.
    pub async fn wait_no_pending_uploads(&self, prefix: &str) -> Vec<String> {
        for _ in 0..100 {
            let pending = self.pending_uploads(prefix).await;
            if pending.is_empty() {
                return pending;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.pending_uploads(prefix).await
    }
}
