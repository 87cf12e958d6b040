//! Importing users from an SFTPGo backup (`sftpgo dumpdata`, or the `/api/v2/dumpdata` REST
//! call): `{"users": [...], "folders": [...], "admins": [...], ...}`.
//!
//! Only users whose storage is S3 with a `key_prefix` can be carried over: s3sftp serves one
//! bucket and gives every user a prefix of it. Of each such user, the password hash (argon2,
//! bcrypt, sha512-crypt), public keys, status, permissions, allowed client networks, session
//! limit and expiry date are kept where s3sftp has the same meaning. The rule everywhere: an
//! imported user never gets more access than SFTPGo gave it. What is not carried over is
//! listed per user, so the administrator can decide what to do about it.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use chrono::DateTime;
use serde::Deserialize;
use serde_json::Value;

use super::keys::AuthorizedKey;
use super::limits::parse_cidr;
use super::password::check_hash;
use super::permissions::{permission_path_problems, Permission, PermissionSet, Permissions};
use super::validate::{key_prefix_problems, username_problems};
use super::{User, UsersError};

/// SFTPGo's number for the S3 storage provider.
const S3_PROVIDER: i64 = 1;

/// The part of a dump this import reads; everything else is ignored.
#[derive(Debug, Deserialize)]
struct Dump {
    #[serde(default)]
    users: Vec<SftpgoUser>,
}

/// One SFTPGo user, as far as s3sftp can use or must report it.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SftpgoUser {
    username: String,
    status: i64,
    password: Option<String>,
    public_keys: Option<Vec<String>>,
    permissions: Option<BTreeMap<String, Vec<String>>>,
    expiration_date: i64,
    max_sessions: i64,
    quota_size: i64,
    quota_files: i64,
    upload_bandwidth: i64,
    download_bandwidth: i64,
    upload_data_transfer: i64,
    download_data_transfer: i64,
    total_data_transfer: i64,
    virtual_folders: Option<Vec<Value>>,
    groups: Option<Vec<Value>>,
    filters: Option<Filters>,
    filesystem: Option<Filesystem>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Filters {
    allowed_ip: Option<Vec<String>>,
    denied_ip: Option<Vec<String>>,
    denied_login_methods: Option<Vec<String>>,
    denied_protocols: Option<Vec<String>>,
    file_patterns: Option<Vec<Value>>,
    max_upload_file_size: i64,
    bandwidth_limits: Option<Vec<Value>>,
    data_transfer_limits: Option<Vec<Value>>,
    start_directory: Option<String>,
    totp_config: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Filesystem {
    provider: i64,
    s3config: Option<S3Config>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct S3Config {
    bucket: Option<String>,
    key_prefix: Option<String>,
    endpoint: Option<String>,
    access_key: Option<String>,
}

/// What an import did: the users converted, the ones skipped and why, and for each converted
/// user what was left behind.
#[derive(Debug, Default)]
pub struct Import {
    /// Users converted, in dump order.
    pub users: Vec<User>,
    /// `(username, reason)` of each user not imported.
    pub skipped: Vec<(String, String)>,
    /// `(username, what was not carried over)`, one entry per item.
    pub notes: Vec<(String, String)>,
}

/// Reads the SFTPGo dump at `path` and converts its users; `existing` are the users already
/// in the target file (a user with one of their names is skipped, not replaced).
pub fn import_file(path: &Path, existing: &[User]) -> Result<Import, UsersError> {
    let text = std::fs::read_to_string(path).map_err(|source| UsersError::Read {
        path: path.to_owned(),
        source,
    })?;
    convert(&text, existing).map_err(|source| UsersError::SftpgoDump {
        path: path.to_owned(),
        source,
    })
}

/// Converts the users of the dump `json`; see [`import_file`].
pub fn convert(json: &str, existing: &[User]) -> Result<Import, serde_json::Error> {
    let dump: Dump = serde_json::from_str(json)?;
    let mut taken: HashSet<String> = existing.iter().map(|u| u.username.clone()).collect();
    let mut import = Import::default();
    for source in dump.users {
        let name = source.username.clone();
        let mut notes = Vec::new();
        match convert_user(source, &mut notes) {
            Ok(user) if taken.contains(&user.username) => import.skipped.push((
                name,
                "a user with this name is already in the users file; it is left as it is".into(),
            )),
            Ok(user) => {
                taken.insert(user.username.clone());
                import.users.push(user);
                import
                    .notes
                    .extend(notes.into_iter().map(|n| (name.clone(), n)));
            }
            Err(reason) => import.skipped.push((name, reason)),
        }
    }
    Ok(import)
}

/// One user; `Err` is why it is skipped, `notes` collects what is not carried over.
fn convert_user(source: SftpgoUser, notes: &mut Vec<String>) -> Result<User, String> {
    if let Some(problem) = username_problems(&source.username).into_iter().next() {
        return Err(format!("not a valid s3sftp username: {problem}"));
    }
    let fs = source.filesystem.unwrap_or_default();
    if fs.provider != S3_PROVIDER {
        return Err(format!(
            "its storage is {}, not S3",
            provider_name(fs.provider)
        ));
    }
    let s3 = fs.s3config.unwrap_or_default();
    let key_prefix = s3.key_prefix.unwrap_or_default();
    if key_prefix.is_empty() {
        return Err(
            "it has no S3 key_prefix (SFTPGo gives it the whole bucket); s3sftp needs a prefix per user: add the user with `s3sftp users add`".into(),
        );
    }
    if let Some(problem) = key_prefix_problems(&key_prefix).into_iter().next() {
        return Err(problem);
    }
    if let Some(bucket) = s3.bucket.filter(|b| !b.is_empty()) {
        notes.push(format!(
            "its files are in bucket {bucket:?}: s3sftp serves the one bucket given to `s3sftp serve`, so use that bucket there (or copy {key_prefix:?} into yours)"
        ));
    }
    if s3.endpoint.is_some_and(|e| !e.is_empty()) || s3.access_key.is_some_and(|k| !k.is_empty()) {
        notes.push("per-user S3 endpoint and credentials are not carried over".into());
    }

    let filters = source.filters.unwrap_or_default();
    let denied_methods = filters.denied_login_methods.unwrap_or_default();
    let password_denied = denied_methods.iter().any(|m| m == "password");
    let keys_denied = denied_methods.iter().any(|m| m == "publickey");

    let password = match source.password.filter(|p| !p.is_empty()) {
        None => None,
        Some(_) if password_denied => {
            notes.push("password login is denied in SFTPGo: the password is not imported".into());
            None
        }
        Some(hash) => match check_hash(&hash, Some(&source.username)) {
            Ok(()) => Some(hash),
            Err(_) => {
                notes.push(format!(
                    "password not imported: {}; set one with `s3sftp users passwd {}`",
                    describe_hash(&hash),
                    source.username
                ));
                None
            }
        },
    };

    let mut public_keys: Vec<AuthorizedKey> = Vec::new();
    let lines = source.public_keys.unwrap_or_default();
    if keys_denied && !lines.is_empty() {
        notes.push("public key login is denied in SFTPGo: the keys are not imported".into());
    } else {
        for (i, line) in lines.iter().enumerate() {
            match AuthorizedKey::parse(line) {
                Ok(key) if public_keys.iter().any(|k| k.matches(key.key())) => {}
                Ok(key) => public_keys.push(key),
                Err(e) => notes.push(format!("public_keys[{i}] not imported: it {e}")),
            }
        }
    }
    if password.is_none() && public_keys.is_empty() {
        return Err(
            "no password hash or public key s3sftp can use is left, so it could never log in"
                .into(),
        );
    }

    let permissions = convert_permissions(source.permissions, notes)?;

    let mut allowed_ips = Vec::new();
    for text in filters.allowed_ip.unwrap_or_default() {
        // Not skipping a bad entry: dropping it would let more addresses in, not fewer.
        match text.parse::<ipnet::IpNet>() {
            Ok(net) if net.trunc() != net => {
                notes.push(format!(
                    "allowed_ip {text:?} has host bits set; imported as {}",
                    net.trunc()
                ));
                allowed_ips.push(net.trunc());
            }
            Ok(_) => allowed_ips.push(parse_cidr(&text)?),
            Err(_) => return Err(format!("allowed_ip {text:?} is not a CIDR network")),
        }
    }

    let max_sessions = u32::try_from(source.max_sessions).ok().filter(|&n| n > 0);
    let expires_at = match source.expiration_date {
        0 => None,
        ms => Some(
            DateTime::from_timestamp_millis(ms)
                .ok_or_else(|| format!("expiration_date {ms} is not a valid date"))?
                .fixed_offset(),
        ),
    };

    for (what, present) in [
        (
            "denied_ip (s3sftp has no deny list; those addresses can log in)",
            filters.denied_ip.is_some_and(|v| !v.is_empty()),
        ),
        (
            "denied_protocols (s3sftp serves SFTP and SCP only)",
            filters.denied_protocols.is_some_and(|v| !v.is_empty()),
        ),
        (
            "file_patterns filters",
            filters.file_patterns.is_some_and(|v| !v.is_empty()),
        ),
        ("max_upload_file_size", filters.max_upload_file_size > 0),
        (
            "quota (quota_size, quota_files)",
            source.quota_size > 0 || source.quota_files > 0,
        ),
        (
            "bandwidth limits",
            source.upload_bandwidth > 0
                || source.download_bandwidth > 0
                || filters.bandwidth_limits.is_some_and(|v| !v.is_empty()),
        ),
        (
            "data transfer limits",
            source.upload_data_transfer > 0
                || source.download_data_transfer > 0
                || source.total_data_transfer > 0
                || filters.data_transfer_limits.is_some_and(|v| !v.is_empty()),
        ),
        (
            "virtual folders",
            source.virtual_folders.is_some_and(|v| !v.is_empty()),
        ),
        (
            "group memberships (and anything the groups set)",
            source.groups.is_some_and(|v| !v.is_empty()),
        ),
        (
            "start_directory",
            filters
                .start_directory
                .is_some_and(|d| !d.is_empty() && d != "/"),
        ),
        (
            "two-factor authentication (TOTP)",
            filters
                .totp_config
                .as_ref()
                .and_then(|t| t.get("enabled"))
                .and_then(Value::as_bool)
                .unwrap_or(false),
        ),
    ] {
        if present {
            notes.push(format!("{what} not carried over"));
        }
    }

    Ok(User {
        username: source.username,
        password,
        public_keys,
        key_prefix,
        enabled: source.status == 1,
        permissions,
        allowed_ips,
        max_sessions,
        expires_at,
    })
}

/// SFTPGo permissions → s3sftp permissions. Names s3sftp lacks are dropped (never widened):
/// `delete_files` + `delete_dirs` together become `delete`, alone nothing; the same for
/// `rename_files` / `rename_dirs`.
fn convert_permissions(
    source: Option<BTreeMap<String, Vec<String>>>,
    notes: &mut Vec<String>,
) -> Result<Permissions, String> {
    let Some(source) = source.filter(|m| !m.is_empty()) else {
        return Ok(Permissions::default());
    };
    if !source.contains_key("/") {
        return Err("its permissions have no entry for \"/\"".into());
    }
    let mut entries = BTreeMap::new();
    for (path, names) in source {
        if let Some(problem) = permission_path_problems(&path).into_iter().next() {
            return Err(format!("permissions: {problem}"));
        }
        let has = |n: &str| names.iter().any(|x| x == n);
        let mut set = PermissionSet::NONE;
        let mut dropped = Vec::new();
        for name in &names {
            match name.as_str() {
                "*" => set = PermissionSet::ALL,
                "delete_files" | "delete_dirs" => {
                    if has("delete_files") && has("delete_dirs") {
                        set = set.with(Permission::Delete);
                    } else {
                        dropped.push(name.as_str());
                    }
                }
                "rename_files" | "rename_dirs" => {
                    if has("rename_files") && has("rename_dirs") {
                        set = set.with(Permission::Rename);
                    } else {
                        dropped.push(name.as_str());
                    }
                }
                other => match Permission::from_name(other) {
                    Some(p) => set = set.with(p),
                    None => dropped.push(other),
                },
            }
        }
        if !dropped.is_empty() {
            notes.push(format!(
                "permissions on {path:?}: {} not carried over (s3sftp has no such permission{})",
                dropped.join(", "),
                if dropped.iter().any(|d| d.contains('_') && (d.starts_with("delete") || d.starts_with("rename"))) {
                    "; only both *_files and *_dirs together map to delete / rename"
                } else {
                    ""
                }
            ));
        }
        entries.insert(path, set);
    }
    Ok(Permissions::from_checked(entries))
}

/// What kind of hash an unusable `password` value is, without showing it.
fn describe_hash(hash: &str) -> String {
    if !hash.starts_with('$') && !hash.starts_with('{') {
        return "it is not a hash".into();
    }
    let id = hash
        .trim_start_matches('$')
        .split(['$', '}'])
        .next()
        .unwrap_or_default();
    format!("{id:?} hashes are not supported (s3sftp takes argon2, bcrypt and sha512-crypt), or the hash is malformed or too costly")
}

fn provider_name(provider: i64) -> String {
    match provider {
        0 => "the local filesystem".into(),
        2 => "Google Cloud Storage".into(),
        3 => "Azure Blob Storage".into(),
        4 => "the encrypted local filesystem".into(),
        5 => "SFTP".into(),
        6 => "HTTP".into(),
        n => format!("storage provider {n}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIFbu/cWZHRfrWTCIft+VBlVnuhBS1uf9hTja8TpqBxW alice@laptop";
    const BCRYPT: &str = "$2b$04$abcdefghijklmnopqrstuu2r9OfJnfCsdneAXAGHnS4UpFFP8WIrW";

    fn user(extra: Value) -> Value {
        let mut base = serde_json::json!({
            "username": "u",
            "status": 1,
            "password": BCRYPT,
            "public_keys": [KEY],
            "permissions": {"/": ["*"]},
            "filesystem": {"provider": 1, "s3config": {"bucket": "b", "key_prefix": "users/u/"}},
        });
        for (k, v) in extra.as_object().unwrap() {
            base[k] = v.clone();
        }
        base
    }

    fn one(extra: Value) -> Import {
        convert(
            &serde_json::json!({"users": [user(extra)]}).to_string(),
            &[],
        )
        .unwrap()
    }

    #[test]
    fn permissions_map_without_widening() {
        let import = one(serde_json::json!({"permissions": {
            "/": ["list", "download", "delete_files", "chmod"],
            "/in": ["upload", "delete_files", "delete_dirs", "rename_files", "rename_dirs"],
        }}));
        let u = &import.users[0];
        assert_eq!(u.permissions_for("/").to_string(), "list,download");
        assert_eq!(
            u.permissions_for("/in/x").to_string(),
            "upload,delete,rename"
        );
        let notes: Vec<&str> = import.notes.iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(notes.len(), 2, "{notes:?}"); // the bucket, the dropped names on "/"
        assert!(notes[1].contains("delete_files, chmod"), "{notes:?}");
    }

    #[test]
    fn denied_login_methods_remove_the_credential() {
        let import = one(serde_json::json!({"filters": {"denied_login_methods": ["password"]}}));
        assert_eq!(import.users[0].password, None);
        let import = one(
            serde_json::json!({"filters": {"denied_login_methods": ["password", "publickey"]}}),
        );
        assert!(import.users.is_empty());
        assert!(import.skipped[0].1.contains("could never log in"));
    }

    #[test]
    fn bad_allowed_ip_skips_rather_than_widens() {
        let import = one(serde_json::json!({"filters": {"allowed_ip": ["10.0.0.0/8", "bogus"]}}));
        assert!(import.users.is_empty());
        let import = one(serde_json::json!({"filters": {"allowed_ip": ["10.1.2.3/8"]}}));
        assert_eq!(import.users[0].allowed_ips[0].to_string(), "10.0.0.0/8");
    }

    #[test]
    fn describe_hash_never_shows_the_value() {
        let d = describe_hash("$pbkdf2-sha256$150000$E86a9YMX3zC7$R5J62hsSq");
        assert!(
            d.contains("\"pbkdf2-sha256\"") && !d.contains("E86a"),
            "{d}"
        );
        assert_eq!(describe_hash("hunter2"), "it is not a hash");
    }
}
