//! The users file exactly as written on disk, before any rule is checked.
//!
//! Kept apart from [`super::User`] so the file format (optional fields, defaults, unknown-field
//! rejection) can evolve without touching the validated model the server uses. A new field
//! is added in three places:
//! [`RawUser`], [`USER_FIELDS`], and a check in `validate.rs` that fills the field of `User`.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

/// The whole file: `{"users": [...]}`. Entries stay loose JSON here so one bad entry does not
/// hide the problems of the others.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFile {
    pub users: Vec<RawEntry>,
}

/// One element of `users`, as its key/value pairs in file order, duplicates kept.
///
/// A `serde_json::Value` object would silently keep only the last of two equal keys; a user
/// entry pasted twice and edited once is exactly the mistake we want to report.
#[derive(Debug)]
pub(super) struct RawEntry(pub Vec<(String, Value)>);

impl<'de> Deserialize<'de> for RawEntry {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(EntryVisitor)
    }
}

/// Collects a JSON object's pairs without merging duplicates.
struct EntryVisitor;

impl<'de> Visitor<'de> for EntryVisitor {
    type Value = RawEntry;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a user object like {\"username\": ..., \"key_prefix\": ...}")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawEntry, A::Error> {
        let mut pairs = Vec::new();
        while let Some(pair) = map.next_entry::<String, Value>()? {
            pairs.push(pair);
        }
        Ok(RawEntry(pairs))
    }
}

/// Every field a user entry may have; anything else is reported as unknown (a likely typo).
/// Must list exactly the fields of [`RawUser`] (a unit test checks).
pub(super) const USER_FIELDS: &[&str] = &[
    "username",
    "password",
    "public_keys",
    "key_prefix",
    "enabled",
    "permissions",
    "allowed_ips",
    "max_sessions",
    "expires_at",
];

/// One user entry with its JSON types checked but no rule applied yet.
///
/// Required fields are `Option` here so a missing one is reported next to the entry's other
/// problems instead of stopping at the first.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUser {
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub public_keys: Option<Vec<String>>,
    #[serde(default)]
    pub key_prefix: Option<String>,
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    /// Virtual path → permission names; `None` (absent or null) is `{"/": ["*"]}`.
    #[serde(default)]
    pub permissions: Option<BTreeMap<String, Vec<String>>>,
    /// CIDR networks; `None` or empty allows every address.
    #[serde(default)]
    pub allowed_ips: Option<Vec<String>>,
    #[serde(default)]
    pub max_sessions: Option<u32>,
    /// RFC 3339 date and time.
    #[serde(default)]
    pub expires_at: Option<String>,
}

fn enabled_by_default() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_fields_lists_every_raw_user_field() {
        let full: serde_json::Map<String, Value> = USER_FIELDS
            .iter()
            .map(|&name| {
                let value = match name {
                    "enabled" => Value::Bool(true),
                    "public_keys" | "allowed_ips" => Value::Array(vec![]),
                    "permissions" => serde_json::json!({}),
                    "max_sessions" => serde_json::json!(1),
                    _ => Value::String("x".into()),
                };
                (name.to_owned(), value)
            })
            .collect();
        // deny_unknown_fields: fails if USER_FIELDS names a field RawUser lacks.
        let user: RawUser = serde_json::from_value(Value::Object(full)).unwrap();
        // Every field was filled from the map, so none was left at its default.
        assert_eq!(user.username.as_deref(), Some("x"));
        assert_eq!(user.password.as_deref(), Some("x"));
        assert_eq!(user.public_keys, Some(vec![]));
        assert_eq!(user.key_prefix.as_deref(), Some("x"));
        assert!(user.enabled);
        assert_eq!(user.permissions, Some(BTreeMap::new()));
        assert_eq!(user.allowed_ips, Some(vec![]));
        assert_eq!(user.max_sessions, Some(1));
        assert_eq!(user.expires_at.as_deref(), Some("x"));
    }

    #[test]
    fn raw_user_has_no_field_missing_from_user_fields() {
        let stray = serde_json::json!({"not_a_field": null});
        let message = serde_json::from_value::<RawUser>(stray)
            .unwrap_err()
            .to_string();
        let listed: Vec<String> = USER_FIELDS.iter().map(|f| format!("`{f}`")).collect();
        // serde names every field the struct accepts, in declaration order.
        assert!(
            message.ends_with(&format!("expected one of {}", listed.join(", "))),
            "{message}"
        );
    }

    #[test]
    fn duplicate_keys_are_kept() {
        let file: RawFile =
            serde_json::from_str(r#"{"users": [{"username": "a", "username": "b"}]}"#).unwrap();
        let names: Vec<_> = file.users[0].0.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["username", "username"]);
    }

    #[test]
    fn defaults_apply() {
        let user: RawUser =
            serde_json::from_str(r#"{"username": "a", "password": null, "public_keys": null}"#)
                .unwrap();
        assert!(user.enabled);
        assert_eq!(user.password, None);
        assert_eq!(user.public_keys, None);
        assert_eq!(user.key_prefix, None);
    }
}
