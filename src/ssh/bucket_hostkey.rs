//! Host keys kept in the bucket (`--host-key s3://BUCKET/KEY`), so that every gateway over
//! one bucket serves the same host identity and a client moved to another gateway by the
//! load balancer sees no host-key warning.
//!
//! The first gateway that finds a key missing generates it and creates the object with
//! `If-None-Match: *`; a gateway that loses that race (412) reads the winner's key, so
//! gateways started together agree. The objects must lie outside every user's prefix (a
//! user could otherwise read the private key over SFTP); the IAM policy of `s3sftp policy`
//! gives the gateways the system prefix, where they belong. Key material is never logged:
//! only the algorithm and the public fingerprint.

use std::path::PathBuf;

use bytes::Bytes;
use russh::keys::ssh_key::LineEnding;
use russh::keys::{HashAlg, PrivateKey};

use super::hostkey::{self, HostKeyError};
use crate::storage::s3::{ConditionalPut, Fetched, ObjectOptions, WriteCondition, S3};
use crate::users::remote::{check_outside_prefixes, ObjectLocation};
use crate::users::User;

/// The key type a location asks for: by its name, `rsa`, `ecdsa`, else ed25519.
pub fn kind_of(location: &ObjectLocation) -> &'static str {
    let name = location
        .key
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if name.contains("rsa") {
        "rsa"
    } else if name.contains("ecdsa") {
        "ecdsa"
    } else {
        "ed25519"
    }
}

/// The host keys at `locations`, each created if missing. Refuses a location inside a user's
/// prefix (`users`) and one whose object is not a key the server serves.
pub(crate) async fn load(
    s3: &S3,
    locations: &[ObjectLocation],
    options: &ObjectOptions,
    users: &[User],
) -> Result<Vec<PrivateKey>, HostKeyError> {
    let mut keys = Vec::with_capacity(locations.len());
    for location in locations {
        check_outside_prefixes(location, users).map_err(|e| HostKeyError::Bucket {
            location: location.to_string(),
            message: e.to_string(),
        })?;
        let key = load_one(s3, location, options).await?;
        tracing::info!(
            fingerprint = %key.public_key().fingerprint(HashAlg::Sha256),
            algorithm = %key.algorithm(),
            "host key {location}"
        );
        keys.push(key);
    }
    Ok(keys)
}

async fn load_one(
    s3: &S3,
    location: &ObjectLocation,
    options: &ObjectOptions,
) -> Result<PrivateKey, HostKeyError> {
    let failed = |message: String| HostKeyError::Bucket {
        location: location.to_string(),
        message,
    };
    if let Some(key) = read(s3, location).await? {
        return Ok(key);
    }
    let key = hostkey::generate(kind_of(location))?;
    let text = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| HostKeyError::Generate(e.to_string()))?;
    let body = Bytes::from(text.as_bytes().to_vec());
    match s3
        .put_conditional(&location.key, body, WriteCondition::Absent, options)
        .await
        .map_err(|e| failed(format!("cannot create it: {e}")))?
    {
        ConditionalPut::Written => {
            tracing::info!("generated a new host key and stored it at {location}");
            Ok(key)
        }
        // Another gateway created it first: serve that one.
        ConditionalPut::ConditionFailed => read(s3, location)
            .await?
            .ok_or_else(|| failed("created by another gateway, then gone".into())),
        ConditionalPut::Unsupported => Err(failed(
            "the store refuses If-None-Match: * on PutObject, so gateways starting together \
             could each create a different key: create the key once by hand (ssh-keygen -t \
             ed25519 -N '' -f key) and upload it there"
                .into(),
        )),
    }
}

/// What [`load`] would serve from `location`, creating nothing (for `serve --check`).
pub(crate) async fn inspect(s3: &S3, location: &ObjectLocation) -> Result<String, HostKeyError> {
    Ok(match read(s3, location).await? {
        Some(key) => format!(
            "host key {location}: {} {}",
            key.algorithm(),
            key.public_key().fingerprint(HashAlg::Sha256)
        ),
        None => format!(
            "host key {location}: missing, a {} key would be generated at first start",
            kind_of(location)
        ),
    })
}

/// The key at `location`, `None` if there is no object.
async fn read(s3: &S3, location: &ObjectLocation) -> Result<Option<PrivateKey>, HostKeyError> {
    let failed = |message: String| HostKeyError::Bucket {
        location: location.to_string(),
        message,
    };
    let bytes = match s3
        .get_small(&location.key, None)
        .await
        .map_err(|e| failed(format!("cannot read it: {e}")))?
    {
        Fetched::Absent => return Ok(None),
        Fetched::Unchanged => return Err(failed("GetObject answered 304 unasked".into())),
        Fetched::Body { bytes, .. } => bytes,
    };
    // The parser's message never quotes the key.
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| failed("not an OpenSSH private key (not text)".into()))?;
    let key = russh::keys::decode_secret_key(text, None).map_err(|e| {
        failed(format!(
            "not an OpenSSH private key without a passphrase: {e}"
        ))
    })?;
    hostkey::check_served(&PathBuf::from(location.to_string()), &key)?;
    Ok(Some(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_type_comes_from_the_name() {
        let at = |key: &str| ObjectLocation {
            bucket: "b".into(),
            key: key.into(),
        };
        assert_eq!(kind_of(&at(".s3sftp/host_rsa")), "rsa");
        assert_eq!(kind_of(&at(".s3sftp/ssh_host_ecdsa_key")), "ecdsa");
        assert_eq!(kind_of(&at(".s3sftp/host_ed25519")), "ed25519");
        assert_eq!(kind_of(&at("rsa/.s3sftp/host")), "ed25519");
    }
}
