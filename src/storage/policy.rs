//! The least-privilege IAM policy for one bucket and the users' prefixes, as `s3sftp
//! policy` prints it: the actions s3sftp needs, each scoped to the users' prefixes where
//! IAM allows it, plus the system prefix where the gateways keep their own objects
//! (folder-rename intents: see `intent`).
//!
//! Under this policy S3 answers a HEAD or GET of a missing key with 403 (it may not say
//! whether the key exists without an unconditional `s3:ListBucket`); the storage layer
//! then lists under the key to tell "not found" (see `bucket.rs`), and the start-up check
//! replaces the denied HeadBucket with a listing under a user's prefix (`client.rs`).

use serde_json::{json, Value};

/// What the policy is for.
#[derive(Debug, Clone)]
pub struct PolicyScope {
    pub bucket: String,
    /// The users' key prefixes (each ends with `/`; `""` is the whole bucket).
    pub prefixes: Vec<String>,
    /// The ARN of the KMS key objects are encrypted with, if any.
    pub kms_key_arn: Option<String>,
    /// The ARN partition: `aws`, `aws-cn`, `aws-us-gov`.
    pub partition: String,
    /// The gateways' own prefix (`--system-prefix`, ends with `/`).
    pub system_prefix: String,
}

/// The policy document.
pub fn least_privilege(scope: &PolicyScope) -> Value {
    let mut prefixes: Vec<String> = scope
        .prefixes
        .iter()
        .chain(std::iter::once(&scope.system_prefix))
        .map(|p| escape(p))
        .collect();
    prefixes.sort();
    prefixes.dedup();
    let bucket_arn = format!("arn:{}:s3:::{}", scope.partition, scope.bucket);
    let whole_bucket = prefixes.iter().any(String::is_empty);
    let mut list = json!({
        "Sid": "S3sftpListUnderUserPrefixes",
        "Effect": "Allow",
        "Action": "s3:ListBucket",
        "Resource": bucket_arn,
    });
    if !whole_bucket {
        let patterns: Vec<String> = prefixes
            .iter()
            .flat_map(|p| [p.clone(), format!("{p}*")])
            .collect();
        list["Condition"] = json!({ "StringLike": { "s3:prefix": patterns } });
    }
    let objects: Vec<String> = if whole_bucket {
        vec![format!("{bucket_arn}/*")]
    } else {
        prefixes
            .iter()
            .map(|p| format!("{bucket_arn}/{p}*"))
            .collect()
    };
    let mut statements = vec![
        list,
        // The orphan sweep, and the Object Lock setting the upload checksum depends on.
        json!({
            "Sid": "S3sftpBucketLevel",
            "Effect": "Allow",
            "Action": [
                "s3:ListBucketMultipartUploads",
                "s3:GetBucketObjectLockConfiguration"
            ],
            "Resource": bucket_arn,
        }),
        json!({
            "Sid": "S3sftpObjects",
            "Effect": "Allow",
            "Action": [
                "s3:GetObject",
                "s3:PutObject",
                "s3:DeleteObject",
                "s3:AbortMultipartUpload"
            ],
            "Resource": objects,
        }),
    ];
    if let Some(key) = &scope.kms_key_arn {
        statements.push(json!({
            "Sid": "S3sftpKmsKey",
            "Effect": "Allow",
            "Action": ["kms:GenerateDataKey", "kms:Decrypt"],
            "Resource": key,
        }));
    }
    json!({ "Version": "2012-10-17", "Statement": statements })
}

/// `text` with the characters IAM reads as wildcards or variables (`*`, `?`, `$`) written
/// as the policy variables that stand for them literally.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '*' => out.push_str("${*}"),
            '?' => out.push_str("${?}"),
            '$' => out.push_str("${$}"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(prefixes: &[&str]) -> PolicyScope {
        PolicyScope {
            bucket: "b".into(),
            prefixes: prefixes.iter().map(|p| p.to_string()).collect(),
            kms_key_arn: None,
            partition: "aws".into(),
            system_prefix: ".s3sftp/".into(),
        }
    }

    #[test]
    fn listing_and_objects_are_scoped_to_the_prefixes() {
        let policy = least_privilege(&scope(&["users/bob/", "users/alice/", "users/bob/"]));
        let list = &policy["Statement"][0];
        assert_eq!(list["Resource"], "arn:aws:s3:::b");
        assert_eq!(
            list["Condition"]["StringLike"]["s3:prefix"],
            json!([
                ".s3sftp/",
                ".s3sftp/*",
                "users/alice/",
                "users/alice/*",
                "users/bob/",
                "users/bob/*"
            ])
        );
        assert_eq!(
            policy["Statement"][2]["Resource"],
            json!([
                "arn:aws:s3:::b/.s3sftp/*",
                "arn:aws:s3:::b/users/alice/*",
                "arn:aws:s3:::b/users/bob/*"
            ])
        );
    }

    #[test]
    fn a_user_at_the_bucket_root_needs_the_whole_bucket() {
        let policy = least_privilege(&scope(&["", "users/alice/"]));
        assert!(policy["Statement"][0].get("Condition").is_none());
        assert_eq!(
            policy["Statement"][2]["Resource"],
            json!(["arn:aws:s3:::b/*"])
        );
    }

    #[test]
    fn wildcards_in_prefixes_are_escaped() {
        assert_eq!(escape("a*b?c$/"), "a${*}b${?}c${$}/");
    }
}
