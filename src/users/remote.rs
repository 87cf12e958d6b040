//! The users file kept as an object in the bucket (`--users-file s3://BUCKET/KEY`), so that
//! every gateway over one bucket serves the same users without a shared file system.
//!
//! Reading is a plain GetObject (a poll sends `If-None-Match` with the last ETag, so an
//! unchanged object costs a 304 and no body). Writing is a read-modify-write guarded by the
//! ETag that was read: `If-Match` when the object exists, `If-None-Match: *` when it is
//! created, so of two admins editing at once one wins and the other gets
//! [`RemoteError::Conflict`] with nothing written. A store that ignores those conditions is
//! found by a probe before each write ([`RemoteUsers::conditions_honoured`]); the write then
//! goes ahead unguarded and the caller warns (one admin tool at a time: the single-writer
//! rule of docs/scale-out.md).
//!
//! The object must lie outside every user's prefix, or that user could rewrite everyone's
//! credentials over SFTP: [`check_outside_prefixes`] is checked at start, on every reload
//! and before every write.

use std::fmt;
use std::path::Path;

use bytes::Bytes;

use super::{User, UsersError, UsersFile};
use crate::storage::s3::{ConditionalPut, Fetched, ObjectOptions, WriteCondition, S3};
use crate::storage::StorageError;

/// How a users-file (or host-key) setting names an object in the bucket.
pub const SCHEME: &str = "s3://";

/// An object named by an `s3://BUCKET/KEY` setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectLocation {
    pub bucket: String,
    pub key: String,
}

impl fmt::Display for ObjectLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}/{}", self.bucket, self.key)
    }
}

impl ObjectLocation {
    /// `Ok(None)` for a local path; the location for `s3://BUCKET/KEY`; an error for an
    /// `s3://` setting without a bucket or a key, or with a key that names a folder.
    pub fn parse(setting: &Path) -> Result<Option<ObjectLocation>, RemoteError> {
        let text = setting.to_string_lossy();
        let Some(rest) = text.strip_prefix(SCHEME) else {
            return Ok(None);
        };
        let bad = |why: &str| RemoteError::BadLocation {
            given: text.to_string(),
            why: why.to_string(),
        };
        let (bucket, key) = rest
            .split_once('/')
            .ok_or_else(|| bad("no key after the bucket"))?;
        if bucket.is_empty() {
            return Err(bad("no bucket"));
        }
        if key.is_empty() || key.ends_with('/') {
            return Err(bad("the key must name an object, not a folder"));
        }
        Ok(Some(ObjectLocation {
            bucket: bucket.to_string(),
            key: key.to_string(),
        }))
    }

    /// Refuses a location in another bucket than the one the gateway serves.
    pub fn check_bucket(&self, served: &str) -> Result<(), RemoteError> {
        if self.bucket == served {
            Ok(())
        } else {
            Err(RemoteError::OtherBucket {
                location: self.to_string(),
                served: served.to_string(),
            })
        }
    }
}

/// Why the users object could not be read, used or written.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("{given:?} is not a valid s3://BUCKET/KEY location: {why}")]
    BadLocation { given: String, why: String },
    #[error(
        "{location} is not in the bucket the gateway serves ({served:?}): keep the users \
         object and host keys in that bucket, e.g. s3://{served}/.s3sftp/users.json"
    )]
    OtherBucket { location: String, served: String },
    #[error(
        "{location} lies inside the prefix {prefix:?} of user {user:?}, who could then rewrite \
         it over SFTP{whole}; move the object outside every user's prefix (e.g. under the \
         system prefix, .s3sftp/) or give the user a narrower prefix"
    )]
    InsidePrefix {
        location: String,
        user: String,
        prefix: String,
        /// Said when the prefix is the whole bucket.
        whole: &'static str,
    },
    #[error("users object {location} does not exist; create it with a first user: s3sftp users --users-file {location} add NAME --prefix users/NAME/ --generate-password")]
    Missing { location: String },
    #[error("users object {location}: {source}")]
    Users {
        location: String,
        source: UsersError,
    },
    #[error(
        "users object {location} was changed by someone else since it was read (HTTP 412 on \
         the conditional write): nothing was written; run the command again"
    )]
    Conflict { location: String },
    #[error("users object {location}: the store gave no ETag, so it cannot be edited safely")]
    NoEtag { location: String },
    #[error("users object {location}: {source}")]
    Storage {
        location: String,
        source: StorageError,
    },
}

/// Refuses `location` if some user's prefix contains its key.
pub fn check_outside_prefixes(
    location: &ObjectLocation,
    users: &[User],
) -> Result<(), RemoteError> {
    match users
        .iter()
        .find(|u| location.key.starts_with(&u.key_prefix))
    {
        Some(user) => Err(RemoteError::InsidePrefix {
            location: location.to_string(),
            user: user.username.clone(),
            prefix: user.key_prefix.clone(),
            whole: if user.key_prefix.is_empty() {
                " (an empty prefix is the whole bucket, so no key is outside it: give the user a prefix)"
            } else {
                ""
            },
        }),
        None => Ok(()),
    }
}

/// What a poll of the users object found.
#[derive(Debug)]
pub enum Polled {
    /// Still the version with the ETag given.
    Unchanged,
    /// The object is gone.
    Absent,
    /// A version, checked with the loader's rules (an error if it breaks one), and its ETag.
    Changed {
        users: Result<UsersFile, RemoteError>,
        etag: Option<String>,
    },
}

/// What a guarded write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    /// The write was conditional on the version read.
    Conditional,
    /// The store ignores conditional writes: the write went ahead unguarded.
    Unguarded,
}

/// The users object of one location, through one S3 handle.
#[derive(Debug, Clone)]
pub struct RemoteUsers {
    s3: S3,
    location: ObjectLocation,
    options: ObjectOptions,
}

impl RemoteUsers {
    /// The users object at `location` through `s3`; new versions are written with
    /// `options` (storage class, encryption).
    pub(crate) fn new(s3: S3, location: ObjectLocation, options: ObjectOptions) -> Self {
        RemoteUsers {
            s3,
            location,
            options,
        }
    }

    /// The users object at `location` through a client built from `settings` (the admin
    /// commands); written with the bucket's default storage class and encryption.
    pub async fn connect(
        settings: &crate::storage::client::S3Settings,
        location: ObjectLocation,
    ) -> Self {
        let client = crate::storage::client::build_client(settings).await;
        let s3 = S3::new(
            client,
            location.bucket.as_str().into(),
            crate::storage::UploadChecksum::Md5,
        );
        RemoteUsers::new(s3, location, ObjectOptions::default())
    }

    pub fn location(&self) -> &ObjectLocation {
        &self.location
    }

    fn storage_error(&self, source: StorageError) -> RemoteError {
        RemoteError::Storage {
            location: self.location.to_string(),
            source,
        }
    }

    fn parse(&self, bytes: &[u8], empty_ok: bool) -> Result<UsersFile, RemoteError> {
        let users_error = |source| RemoteError::Users {
            location: self.location.to_string(),
            source,
        };
        let text = std::str::from_utf8(bytes).map_err(|e| {
            users_error(UsersError::Json {
                path: None,
                source: serde::de::Error::custom(format!("not UTF-8: {e}")),
            })
        })?;
        let users = if empty_ok && text.trim().is_empty() {
            UsersFile::parse(r#"{"users": []}"#)
        } else {
            UsersFile::parse(text)
        }
        .map_err(users_error)?;
        check_outside_prefixes(&self.location, users.users())?;
        Ok(users)
    }

    /// Reads the users object: `None` if there is none; an empty object holds no users.
    pub async fn read(&self) -> Result<Option<(UsersFile, Option<String>)>, RemoteError> {
        match self
            .s3
            .get_small(&self.location.key, None)
            .await
            .map_err(|e| self.storage_error(e))?
        {
            Fetched::Absent => Ok(None),
            // Not asked for; read as absent would be wrong, so ask again without a condition.
            Fetched::Unchanged => Err(self.storage_error(StorageError::S3Misbehaved(
                "GetObject answered 304 to a request without a condition".into(),
            ))),
            Fetched::Body { bytes, etag } => Ok(Some((self.parse(&bytes, true)?, etag))),
        }
    }

    /// Reads the users object at start: it must exist.
    pub async fn load(&self) -> Result<(UsersFile, Option<String>), RemoteError> {
        self.read().await?.ok_or_else(|| RemoteError::Missing {
            location: self.location.to_string(),
        })
    }

    /// Reads the users object again unless it still has the ETag `last`. Like the local
    /// reload, an empty object is refused (more likely a mistake than removing everyone).
    pub async fn poll(&self, last: Option<&str>) -> Result<Polled, RemoteError> {
        match self
            .s3
            .get_small(&self.location.key, last)
            .await
            .map_err(|e| self.storage_error(e))?
        {
            Fetched::Absent => Ok(Polled::Absent),
            Fetched::Unchanged => Ok(Polled::Unchanged),
            Fetched::Body { etag, .. } if etag.is_some() && etag.as_deref() == last => {
                Ok(Polled::Unchanged)
            }
            Fetched::Body { bytes, etag } => Ok(Polled::Changed {
                users: self.parse(&bytes, false),
                etag,
            }),
        }
    }

    /// Whether the store refuses a PutObject whose `If-Match` does not hold, found by
    /// trying one on a probe object next to the users object (removed again if the store
    /// wrote it).
    pub async fn conditions_honoured(&self) -> Result<bool, RemoteError> {
        let probe = format!("{}.if-match-probe", self.location.key);
        let sent = self
            .s3
            .put_conditional(
                &probe,
                Bytes::from_static(b"s3sftp probe: a PutObject with a wrong If-Match\n"),
                WriteCondition::Matches("\"s3sftp-probe-no-such-etag\""),
                &self.options,
            )
            .await
            .map_err(|e| self.storage_error(e))?;
        match sent {
            ConditionalPut::ConditionFailed => Ok(true),
            ConditionalPut::Unsupported => Ok(false),
            ConditionalPut::Written => {
                self.s3
                    .delete_object(&probe)
                    .await
                    .map_err(|e| self.storage_error(e))?;
                Ok(false)
            }
        }
    }

    /// Writes `users` as the new users object, if it is still the version with the ETag
    /// `read` (`None`: if there is still none). The text is checked with the loader's rules
    /// and against the users' prefixes first; nothing is written if it breaks one.
    pub async fn write(&self, users: &[User], read: Option<&str>) -> Result<Guard, RemoteError> {
        let text = match UsersFile::from_users(users) {
            Ok((_, text)) => text,
            Err(UsersError::Invalid { problems, .. }) => {
                return Err(RemoteError::Users {
                    location: self.location.to_string(),
                    source: UsersError::Rejected {
                        path: self.location.to_string().into(),
                        problems,
                    },
                })
            }
            Err(source) => {
                return Err(RemoteError::Users {
                    location: self.location.to_string(),
                    source,
                })
            }
        };
        check_outside_prefixes(&self.location, users)?;
        let body = Bytes::from(text);
        if !self.conditions_honoured().await? {
            self.s3
                .put_object(&self.location.key, body, &self.options)
                .await
                .map_err(|e| self.storage_error(e))?;
            return Ok(Guard::Unguarded);
        }
        let condition = match read {
            Some(etag) => WriteCondition::Matches(etag),
            None => WriteCondition::Absent,
        };
        match self
            .s3
            .put_conditional(&self.location.key, body, condition, &self.options)
            .await
            .map_err(|e| self.storage_error(e))?
        {
            ConditionalPut::Written => Ok(Guard::Conditional),
            ConditionalPut::ConditionFailed => Err(RemoteError::Conflict {
                location: self.location.to_string(),
            }),
            ConditionalPut::Unsupported => Err(self.storage_error(StorageError::S3Misbehaved(
                "the store took a conditional PutObject in the probe but refused it now".into(),
            ))),
        }
    }

    /// Reads the users object, lets `edit` change its users, and writes the result guarded
    /// by the ETag read ([`RemoteUsers::write`]). A missing object is an empty user list
    /// when `create` is true, else [`RemoteError::Missing`]. Returns what `edit` returns
    /// and how the write was guarded.
    pub async fn update<T>(
        &self,
        create: bool,
        edit: impl FnOnce(&mut Vec<User>) -> Result<T, UsersError>,
    ) -> Result<(T, Guard), RemoteError> {
        let (mut users, etag) = match self.read().await? {
            Some((file, etag)) => {
                let etag = etag.ok_or_else(|| RemoteError::NoEtag {
                    location: self.location.to_string(),
                })?;
                (file.into_users(), Some(etag))
            }
            None if create => (Vec::new(), None),
            None => {
                return Err(RemoteError::Missing {
                    location: self.location.to_string(),
                })
            }
        };
        let out = edit(&mut users).map_err(|source| RemoteError::Users {
            location: self.location.to_string(),
            source,
        })?;
        let guard = self.write(&users, etag.as_deref()).await?;
        Ok((out, guard))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(prefixes: &[&str]) -> Vec<User> {
        let entries: Vec<String> = prefixes
            .iter()
            .enumerate()
            .map(|(i, p)| {
                format!(r#"{{"username": "u{i}", "password": "$argon2id$v=19$m=19456,t=2,p=1$RiPd4CqIXq3Z1WILePKMyw$m9ZmJ9lopPbVYv0zlAscUQCWflqKmefPI97jjGguHck", "key_prefix": "{p}"}}"#)
            })
            .collect();
        UsersFile::parse(&format!(r#"{{"users": [{}]}}"#, entries.join(",")))
            .unwrap()
            .into_users()
    }

    #[test]
    fn locations_parse_and_local_paths_stay_local() {
        assert_eq!(
            ObjectLocation::parse(Path::new("users.json")).unwrap(),
            None
        );
        let loc = ObjectLocation::parse(Path::new("s3://b/.s3sftp/users.json"))
            .unwrap()
            .unwrap();
        assert_eq!(loc.bucket, "b");
        assert_eq!(loc.key, ".s3sftp/users.json");
        assert_eq!(loc.to_string(), "s3://b/.s3sftp/users.json");
        for bad in ["s3://b", "s3:///k", "s3://b/", "s3://b/dir/"] {
            assert!(ObjectLocation::parse(Path::new(bad)).is_err(), "{bad}");
        }
        let err = loc.check_bucket("other").unwrap_err().to_string();
        assert!(err.contains("s3://other/.s3sftp/users.json"), "{err}");
        loc.check_bucket("b").unwrap();
    }

    #[test]
    fn the_object_must_lie_outside_every_prefix() {
        let loc = ObjectLocation {
            bucket: "b".into(),
            key: ".s3sftp/users.json".into(),
        };
        check_outside_prefixes(&loc, &users(&["users/a/", "users/b/"])).unwrap();
        let err = check_outside_prefixes(&loc, &users(&["users/a/", ".s3sftp/"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"u1\""), "{err}");
        // The loader refuses an empty prefix; a user built in memory could still have one.
        let mut whole = users(&["x/"]);
        whole[0].key_prefix = String::new();
        let err = check_outside_prefixes(&loc, &whole)
            .unwrap_err()
            .to_string();
        assert!(err.contains("whole bucket"), "{err}");
    }
}
