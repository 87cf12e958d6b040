//! An S3 store owned by the test rather than by the server: the external one named by
//! `S3SFTP_TEST_S3_*`, or an embedded store started here. It outlives the server (the
//! embedded store a server starts stops with it), so shutdown and fault tests can look at
//! the bucket directly.

use s3sftp::storage::client::S3Settings;

use super::bucket::BucketView;

/// The test's own embedded store (none with an external S3) and its data directory.
pub struct OwnStore {
    _store: Option<s3sftp::embedded::EmbeddedS3>,
    _dir: tempfile::TempDir,
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
    let view = BucketView::owning(
        s3sftp::storage::client::build_client(&settings).await,
        &settings.bucket,
        OwnStore {
            _store: store,
            _dir: dir,
        },
    );
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
