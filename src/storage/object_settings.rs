//! How new objects are written: their storage class, their server-side encryption and
//! the integrity header of upload bodies. Buckets that a security team configured ask for
//! these (a bucket policy that requires `aws:kms` with a given key, a compliance rule that
//! requires a storage class, Object Lock that requires `Content-MD5`), so every request
//! that creates an object carries them ([`ObjectOptions`](super::s3::ObjectOptions)).

use std::fmt;

/// A storage class whose objects can be read and copied at once. Archive classes
/// (`GLACIER`, `DEEP_ARCHIVE`) are refused: an archived object cannot be downloaded or
/// renamed (copied) without a restore, which SFTP clients cannot ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageClass {
    Standard,
    StandardIa,
    OnezoneIa,
    IntelligentTiering,
    GlacierIr,
    ReducedRedundancy,
    ExpressOnezone,
}

impl StorageClass {
    const ALL: [StorageClass; 7] = [
        StorageClass::Standard,
        StorageClass::StandardIa,
        StorageClass::OnezoneIa,
        StorageClass::IntelligentTiering,
        StorageClass::GlacierIr,
        StorageClass::ReducedRedundancy,
        StorageClass::ExpressOnezone,
    ];

    /// The name S3 uses in `x-amz-storage-class`.
    pub fn as_str(self) -> &'static str {
        match self {
            StorageClass::Standard => "STANDARD",
            StorageClass::StandardIa => "STANDARD_IA",
            StorageClass::OnezoneIa => "ONEZONE_IA",
            StorageClass::IntelligentTiering => "INTELLIGENT_TIERING",
            StorageClass::GlacierIr => "GLACIER_IR",
            StorageClass::ReducedRedundancy => "REDUCED_REDUNDANCY",
            StorageClass::ExpressOnezone => "EXPRESS_ONEZONE",
        }
    }

    /// Parses an S3 storage class name (any case, `-` for `_` allowed); archive classes
    /// and unknown names are refused with a message that lists the accepted ones.
    pub fn parse(text: &str) -> Result<StorageClass, String> {
        let name = text.trim().to_ascii_uppercase().replace('-', "_");
        if let Some(class) = Self::ALL.iter().find(|c| c.as_str() == name) {
            return Ok(*class);
        }
        let accepted: Vec<&str> = Self::ALL.iter().map(|c| c.as_str()).collect();
        if matches!(
            name.as_str(),
            "GLACIER" | "DEEP_ARCHIVE" | "GLACIER_FLEXIBLE_RETRIEVAL"
        ) {
            return Err(format!(
                "{name} is an archive class: its objects cannot be downloaded or renamed without \
                 a restore; use one of {} (or a lifecycle rule to archive later)",
                accepted.join(", ")
            ));
        }
        Err(format!(
            "unknown storage class {text:?}; use one of {}",
            accepted.join(", ")
        ))
    }
}

impl fmt::Display for StorageClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Server-side encryption asked for on every request that creates an object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Encryption {
    /// No header: the bucket's default encryption applies.
    #[default]
    BucketDefault,
    /// SSE-S3: `x-amz-server-side-encryption: AES256`.
    Aes256,
    /// SSE-KMS: `x-amz-server-side-encryption: aws:kms`, with a key (else the account's
    /// `aws/s3` key) and, when asked, an S3 Bucket Key (fewer KMS calls).
    Kms {
        key_id: Option<String>,
        bucket_key: bool,
    },
}

impl Encryption {
    /// Whether object ETags are not MD5s of the data (SSE-KMS).
    pub fn is_kms(&self) -> bool {
        matches!(self, Encryption::Kms { .. })
    }
}

/// The integrity header of every upload request (PutObject, UploadPart), which S3 checks
/// against the body it received: a corrupted body is refused, and buckets with Object
/// Lock accept only uploads that carry one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum UploadChecksum {
    /// Resolved at start (see [`UploadChecksum::resolve`]): none where the bodies are
    /// already covered (the SDK adds its own CRC32, with `--s3-checksum when-supported`,
    /// the default for AWS; or the store is the embedded one in this process); else
    /// `crc32c` if a probe at start shows the store checks it, else `md5`; and `md5` on a
    /// bucket with Object Lock (or one whose lock setting the gateway may not read), since
    /// some stores accept only Content-MD5 there.
    #[default]
    Auto,
    /// `x-amz-checksum-crc32c` (and the algorithm declared on CreateMultipartUpload, the
    /// part checksums listed on CompleteMultipartUpload): about 0.1 CPU-s per GiB on each
    /// side, where MD5 costs about 2. Verified by AWS, MinIO, Ceph (Squid on), recent
    /// Garage and the embedded store; older stores ignore it.
    Crc32c,
    /// `Content-MD5`: understood by every S3 implementation, and the one header moto's
    /// Object Lock check accepts.
    Md5,
    /// No integrity header (the body is still covered by TLS, or by the payload signature
    /// when `--s3-payload-signing` signs it).
    None,
}

/// What the gateway learned at start of the bucket's Object Lock setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectLock {
    Enabled,
    /// Not enabled, or the store does not implement Object Lock at all.
    Disabled,
    /// The gateway may not read the setting (no `s3:GetBucketObjectLockConfiguration`).
    Unknown,
}

impl UploadChecksum {
    /// `Auto` made concrete: `None` when upload bodies are `covered` otherwise (the SDK
    /// adds its own checksum to every upload, or the store is the embedded one in this
    /// process, with no network in between); else `Crc32c`, or `Md5` unless the bucket is
    /// known to have no Object Lock.
    pub fn resolve(self, covered: bool, lock: ObjectLock) -> UploadChecksum {
        match self {
            UploadChecksum::Auto if covered => UploadChecksum::None,
            UploadChecksum::Auto if lock == ObjectLock::Disabled => UploadChecksum::Crc32c,
            UploadChecksum::Auto => UploadChecksum::Md5,
            other => other,
        }
    }
}

/// What every new object gets: the settings above.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectSettings {
    /// `None`: no header, so the bucket's default (STANDARD on AWS).
    pub storage_class: Option<StorageClass>,
    pub encryption: Encryption,
    pub upload_checksum: UploadChecksum,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_classes_parse_in_any_case_and_archives_are_refused() {
        assert_eq!(
            StorageClass::parse("standard-ia"),
            Ok(StorageClass::StandardIa)
        );
        assert_eq!(
            StorageClass::parse("GLACIER_IR"),
            Ok(StorageClass::GlacierIr)
        );
        for archive in ["GLACIER", "deep_archive"] {
            let err = StorageClass::parse(archive).expect_err("refused");
            assert!(err.contains("archive class"), "{err}");
            assert!(err.contains("GLACIER_IR"), "{err}");
        }
        let err = StorageClass::parse("COLD").expect_err("refused");
        assert!(err.contains("unknown storage class"), "{err}");
    }

    #[test]
    fn auto_sends_md5_unless_the_sdk_sends_its_own_checksum() {
        use ObjectLock::*;
        let auto = |covered, lock| UploadChecksum::Auto.resolve(covered, lock);
        assert_eq!(auto(false, Disabled), UploadChecksum::Crc32c);
        assert_eq!(auto(false, Enabled), UploadChecksum::Md5);
        assert_eq!(auto(false, Unknown), UploadChecksum::Md5);
        for lock in [Disabled, Enabled, Unknown] {
            assert_eq!(auto(true, lock), UploadChecksum::None);
        }
        assert_eq!(
            UploadChecksum::Md5.resolve(true, Disabled),
            UploadChecksum::Md5
        );
        assert_eq!(
            UploadChecksum::Crc32c.resolve(false, Enabled),
            UploadChecksum::Crc32c
        );
        assert_eq!(
            UploadChecksum::None.resolve(false, Disabled),
            UploadChecksum::None
        );
    }
}
