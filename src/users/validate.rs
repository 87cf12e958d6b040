//! The rules a users file must follow, all checked in one pass so every problem is reported
//! together rather than one per restart.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, FixedOffset};
use ipnet::IpNet;
use serde_json::{Map, Value};

use super::keys::AuthorizedKey;
use super::limits::{check_max_sessions, parse_cidr, parse_expiry};
use super::password::{check_hash, HASH_PASSWORD_COMMAND};
use super::permissions::{permission_path_problems, PermissionSet, Permissions};
use super::raw::{RawEntry, RawUser, USER_FIELDS};
use super::{Problem, User};

/// Longest username accepted, in characters (all ASCII).
pub const MAX_USERNAME_LEN: usize = 64;
/// Longest key prefix accepted, in bytes; S3 keys stop at 1024, leaving room for the user's paths.
pub const MAX_KEY_PREFIX_LEN: usize = 512;

/// Checks every entry and the rules between entries; returns the users in file order, or every
/// problem found.
pub(super) fn validate(entries: Vec<RawEntry>) -> Result<Vec<User>, Vec<Problem>> {
    let mut problems = Vec::new();
    let checked: Vec<Checked> = entries
        .into_iter()
        .enumerate()
        .map(|(i, entry)| check_entry(i + 1, entry, &mut problems))
        .collect();
    check_unique_usernames(&checked, &mut problems);
    check_prefix_overlaps(&checked, &mut problems);
    if problems.is_empty() {
        Ok(checked.into_iter().filter_map(|c| c.user).collect())
    } else {
        Err(problems)
    }
}

/// What the cross-user rules need to know about one entry, whether or not the entry is valid.
struct Checked {
    entry: usize,
    /// The username as written, if it is a string (possibly invalid).
    username: Option<String>,
    /// The key prefix, only if it passed its own checks (an invalid one would add noise).
    valid_prefix: Option<String>,
    /// The user, only if the entry has no problem of its own.
    user: Option<User>,
}

/// Collects the problems of one entry, tagged with its position and username.
struct EntryReport<'a> {
    entry: usize,
    username: Option<String>,
    problems: &'a mut Vec<Problem>,
    found: usize,
}

impl EntryReport<'_> {
    fn push(&mut self, field: &'static str, message: String) {
        self.found += 1;
        self.problems.push(Problem {
            entry: self.entry,
            username: self.username.clone(),
            field,
            message,
        });
    }
}

fn check_entry(entry: usize, raw: RawEntry, problems: &mut Vec<Problem>) -> Checked {
    // The last "username" wins, as it does for every field once the entry is deserialized.
    let username = raw
        .0
        .iter()
        .rev()
        .find(|(k, _)| k == "username")
        .and_then(|(_, v)| v.as_str())
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    let mut report = EntryReport {
        entry,
        username: username.clone(),
        problems,
        found: 0,
    };
    let fields = check_field_names(raw, &mut report);
    let Some(raw_user) = deserialize_fields(fields, &mut report) else {
        return Checked {
            entry,
            username,
            valid_prefix: None,
            user: None,
        };
    };

    match &raw_user.username {
        None => report.push("username", "username is missing".to_owned()),
        Some(name) => {
            for message in username_problems(name) {
                report.push("username", message);
            }
        }
    }

    if let Some(phc) = &raw_user.password {
        if let Err(message) = check_hash(phc, raw_user.username.as_deref()) {
            report.push("password", message);
        }
    }

    let lines = raw_user.public_keys.as_deref().unwrap_or_default();
    let mut public_keys = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        match AuthorizedKey::parse(line) {
            Ok(key) => public_keys.push(key),
            Err(e) => report.push("public_keys", format!("public_keys[{i}] {e}")),
        }
    }

    if raw_user.password.is_none() && lines.is_empty() {
        report.push(
            "password",
            format!(
                "has neither a password nor public_keys, so it could never log in; add public_keys, or a password hash made with `{HASH_PASSWORD_COMMAND}`"
            ),
        );
    }

    let valid_prefix = match &raw_user.key_prefix {
        None => {
            report.push(
                "key_prefix",
                "key_prefix is missing; give the S3 key prefix this user sees as its root directory, e.g. \"users/<name>/\"".to_owned(),
            );
            None
        }
        Some(prefix) => {
            let messages = key_prefix_problems(prefix);
            let valid = messages.is_empty();
            for message in messages {
                report.push("key_prefix", message);
            }
            valid.then(|| prefix.clone())
        }
    };

    let permissions = check_permissions(raw_user.permissions.as_ref(), &mut report);
    let allowed_ips = check_allowed_ips(raw_user.allowed_ips.as_deref(), &mut report);
    let max_sessions = raw_user
        .max_sessions
        .and_then(|n| match check_max_sessions(n) {
            Ok(n) => Some(n),
            Err(message) => {
                report.push("max_sessions", message);
                None
            }
        });
    let expires_at = check_expires_at(raw_user.expires_at.as_deref(), &mut report);

    let user = match (report.found, raw_user.username, raw_user.key_prefix) {
        (0, Some(username), Some(key_prefix)) => Some(User {
            username,
            password: raw_user.password,
            public_keys,
            key_prefix,
            enabled: raw_user.enabled,
            permissions,
            allowed_ips,
            max_sessions,
            expires_at,
        }),
        _ => None,
    };
    Checked {
        entry,
        username,
        valid_prefix,
        user,
    }
}

/// Checks `permissions`: clean virtual paths, known permission names, and an entry for `/`.
/// Absent or null is the default, everything allowed everywhere.
fn check_permissions(
    raw: Option<&BTreeMap<String, Vec<String>>>,
    report: &mut EntryReport<'_>,
) -> Permissions {
    let Some(raw) = raw else {
        return Permissions::default();
    };
    let mut checked = BTreeMap::new();
    for (path, names) in raw {
        let mut ok = true;
        for message in permission_path_problems(path) {
            report.push("permissions", format!("permissions: {message}"));
            ok = false;
        }
        match PermissionSet::parse(names) {
            Ok(set) if ok => {
                checked.insert(path.clone(), set);
            }
            Ok(_) => {}
            Err(message) => report.push("permissions", format!("permissions {path:?}: {message}")),
        }
    }
    if !raw.contains_key("/") {
        report.push(
            "permissions",
            "permissions has no entry for \"/\"; add one, e.g. \"/\": [\"*\"] for everything or \"/\": [] for nothing outside the listed paths".to_owned(),
        );
    }
    Permissions::from_checked(checked)
}

/// Checks `allowed_ips`: each entry a network in CIDR notation.
fn check_allowed_ips(raw: Option<&[String]>, report: &mut EntryReport<'_>) -> Vec<IpNet> {
    let mut nets = Vec::new();
    for (i, text) in raw.unwrap_or_default().iter().enumerate() {
        match parse_cidr(text) {
            Ok(net) => nets.push(net),
            Err(message) => report.push("allowed_ips", format!("allowed_ips[{i}] {message}")),
        }
    }
    nets
}

/// Checks `expires_at`: an RFC 3339 date and time.
fn check_expires_at(
    raw: Option<&str>,
    report: &mut EntryReport<'_>,
) -> Option<DateTime<FixedOffset>> {
    match parse_expiry(raw?) {
        Ok(at) => Some(at),
        Err(message) => {
            report.push("expires_at", format!("expires_at {message}"));
            None
        }
    }
}

/// Reports fields given twice and unknown fields (with a suggestion), and returns the known
/// fields in file order, keeping only the last of equal keys.
fn check_field_names(raw: RawEntry, report: &mut EntryReport<'_>) -> Vec<(String, Value)> {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for (key, _) in &raw.0 {
        *counts.entry(key.as_str()).or_default() += 1;
    }
    let mut reported: Vec<&str> = Vec::new();
    for (key, _) in &raw.0 {
        let count = counts.get(key.as_str()).copied().unwrap_or_default();
        if reported.contains(&key.as_str()) {
            continue;
        }
        match known_field(key) {
            Some(field) if count > 1 => {
                reported.push(key);
                report.push(
                    field,
                    format!("{field} is given {count} times in this entry; keep one"),
                );
            }
            Some(_) => {}
            None => {
                reported.push(key);
                let hint = match suggest_field(key) {
                    Some(field) => format!(" (did you mean \"{field}\"?)"),
                    None => String::new(),
                };
                report.push(
                    "entry",
                    format!(
                        "unknown field {key:?}{hint}; the fields are {}",
                        USER_FIELDS.join(", ")
                    ),
                );
            }
        }
    }
    let mut known: Vec<(String, Value)> = Vec::new();
    for (key, value) in raw.0 {
        if known_field(&key).is_some() {
            known.retain(|(k, _)| *k != key);
            known.push((key, value));
        }
    }
    known
}

/// Deserializes the known fields; on a type error, reports every field whose value has the
/// wrong JSON type.
fn deserialize_fields(
    fields: Vec<(String, Value)>,
    report: &mut EntryReport<'_>,
) -> Option<RawUser> {
    let object: Map<String, Value> = fields.iter().cloned().collect();
    match serde_json::from_value::<RawUser>(Value::Object(object)) {
        Ok(user) => Some(user),
        Err(whole) => {
            let before = report.found;
            for (key, value) in fields {
                let field = known_field(&key).unwrap_or("entry");
                let alone = Map::from_iter([(key, value)]);
                if let Err(e) = serde_json::from_value::<RawUser>(Value::Object(alone)) {
                    report.push(field, format!("{field}: {e}"));
                }
            }
            if report.found == before {
                report.push("entry", whole.to_string());
            }
            None
        }
    }
}

fn known_field(name: &str) -> Option<&'static str> {
    USER_FIELDS.iter().copied().find(|&field| field == name)
}

/// The known field an unknown one was probably meant to be: same letters in another case, or
/// at most two edits away.
fn suggest_field(unknown: &str) -> Option<&'static str> {
    let lower = unknown.to_ascii_lowercase();
    USER_FIELDS
        .iter()
        .copied()
        .map(|field| (edit_distance(&lower, field), field))
        .filter(|&(distance, _)| distance <= 2)
        .min_by_key(|&(distance, _)| distance)
        .map(|(_, field)| field)
}

/// Levenshtein distance over chars; the strings here are field names, a few chars long.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

/// Problems with a username: empty, too long, or characters outside `A-Za-z0-9._-@`.
pub(super) fn username_problems(name: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if name.is_empty() {
        problems.push("username is empty".to_owned());
        return problems;
    }
    let length = name.chars().count();
    if length > MAX_USERNAME_LEN {
        problems.push(format!(
            "username is {length} characters long; at most {MAX_USERNAME_LEN} are allowed"
        ));
    }
    let mut bad: Vec<char> = name
        .chars()
        .filter(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@')))
        .collect();
    bad.dedup();
    if !bad.is_empty() {
        let bad: String = bad.into_iter().collect();
        problems.push(format!(
            "username may contain only ASCII letters, digits and . _ - @ (found {bad:?})"
        ));
    }
    problems
}

/// Problems with a key prefix: it must be a clean, relative, `/`-terminated S3 key prefix.
pub(super) fn key_prefix_problems(prefix: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if prefix.is_empty() {
        problems.push(
            "key_prefix is empty; give the S3 key prefix this user sees as its root directory, e.g. \"users/<name>/\"".to_owned(),
        );
        return problems;
    }
    if prefix.len() > MAX_KEY_PREFIX_LEN {
        problems.push(format!(
            "key_prefix is {} bytes long; at most {MAX_KEY_PREFIX_LEN} are allowed",
            prefix.len()
        ));
    }
    if prefix.contains('\\') {
        problems.push(format!(
            "key_prefix must not contain a backslash (got {prefix:?}); separate segments with \"/\""
        ));
    }
    if prefix.chars().any(char::is_control) {
        problems.push(format!(
            "key_prefix must not contain NUL or other control characters (got {prefix:?})"
        ));
    }
    if prefix.starts_with('/') {
        problems.push(format!(
            "key_prefix must not start with \"/\" (got {prefix:?}); S3 keys have no leading slash"
        ));
    }
    if !prefix.ends_with('/') {
        problems.push(format!("key_prefix must end with \"/\" (got {prefix:?})"));
    }
    let inner = prefix.strip_prefix('/').unwrap_or(prefix);
    let inner = inner.strip_suffix('/').unwrap_or(inner);
    if !inner.is_empty() {
        let segments: Vec<&str> = inner.split('/').collect();
        if segments.iter().any(|s| s.is_empty()) {
            problems.push(format!(
                "key_prefix must not contain empty segments (\"//\") (got {prefix:?})"
            ));
        }
        if segments.iter().any(|s| *s == "." || *s == "..") {
            problems.push(format!(
                "key_prefix must not contain \".\" or \"..\" segments (got {prefix:?})"
            ));
        }
    }
    problems
}

/// How a problem names a user other than the one it is about.
fn label(entry: usize, username: Option<&str>) -> String {
    match username {
        Some(name) => format!("user {name:?}"),
        None => format!("user #{entry}"),
    }
}

/// One problem per username used by more than one entry, naming all those entries.
fn check_unique_usernames(checked: &[Checked], problems: &mut Vec<Problem>) {
    let mut by_name: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut order: Vec<&str> = Vec::new();
    for c in checked {
        if let Some(name) = c.username.as_deref() {
            let entries = by_name.entry(name).or_default();
            if entries.is_empty() {
                order.push(name);
            }
            entries.push(c.entry);
        }
    }
    for name in order {
        let Some(entries) = by_name.get(name) else {
            continue;
        };
        if entries.len() > 1 {
            let list: Vec<String> = entries.iter().map(|e| format!("#{e}")).collect();
            problems.push(Problem {
                entry: entries[0],
                username: Some(name.to_owned()),
                field: "username",
                message: format!(
                    "username is used by {} entries ({}); usernames must be unique",
                    entries.len(),
                    list.join(", ")
                ),
            });
        }
    }
}

/// One problem per pair of users whose prefixes are equal or nested: either user could then
/// see or change the other's files.
///
/// Valid prefixes end with `/` and have no empty segments, so "is a string prefix of" is the
/// same as "is the same directory or a parent". After sorting, every prefix of an entry comes
/// before it, so a stack of the current chain of nested prefixes finds all pairs in
/// O(n log n + pairs).
fn check_prefix_overlaps(checked: &[Checked], problems: &mut Vec<Problem>) {
    let mut sorted: Vec<(&str, &Checked)> = checked
        .iter()
        .filter_map(|c| c.valid_prefix.as_deref().map(|p| (p, c)))
        .collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0).then(a.1.entry.cmp(&b.1.entry)));
    let mut chain: Vec<(&str, &Checked)> = Vec::new();
    for (prefix, inner) in sorted {
        while chain.last().is_some_and(|(p, _)| !prefix.starts_with(p)) {
            chain.pop();
        }
        for (outer_prefix, outer) in &chain {
            let other = label(outer.entry, outer.username.as_deref());
            let message = if *outer_prefix == prefix {
                format!(
                    "key_prefix {prefix:?} is also the key_prefix of {other}; each user needs a prefix of its own"
                )
            } else {
                format!(
                    "key_prefix {prefix:?} lies inside {other}'s key_prefix {outer_prefix:?}, so {other} could see and change this user's files; give each user a prefix that is not inside another's"
                )
            };
            problems.push(Problem {
                entry: inner.entry,
                username: inner.username.clone(),
                field: "key_prefix",
                message,
            });
        }
        chain.push((prefix, inner));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        assert!(username_problems("alice.smith-2_x@example.com").is_empty());
        assert_eq!(username_problems(""), ["username is empty"]);
        assert_eq!(
            username_problems(&"a".repeat(65)),
            ["username is 65 characters long; at most 64 are allowed"]
        );
        assert!(username_problems(&"a".repeat(64)).is_empty());
        assert_eq!(
            username_problems("bo b/ü"),
            ["username may contain only ASCII letters, digits and . _ - @ (found \" /ü\")"]
        );
    }

    #[test]
    fn key_prefixes() {
        assert!(key_prefix_problems("users/alice/").is_empty());
        assert!(key_prefix_problems("a/").is_empty());
        assert!(key_prefix_problems("...hidden/x/").is_empty());
        let one = |p: &str| {
            let all = key_prefix_problems(p);
            assert_eq!(all.len(), 1, "{p:?}: {all:?}");
            all[0].clone()
        };
        assert!(one("").starts_with("key_prefix is empty"));
        assert_eq!(
            one("users/bob"),
            "key_prefix must end with \"/\" (got \"users/bob\")"
        );
        assert!(one("/users/bob/").contains("must not start with \"/\""));
        assert!(one("/").contains("must not start with \"/\""));
        assert!(one("users//bob/").contains("empty segments"));
        assert!(one("users/./bob/").contains("\".\" or \"..\""));
        assert!(one("users/../bob/").contains("\".\" or \"..\""));
        assert_eq!(key_prefix_problems("..//").len(), 2);
        assert!(one("users\\bob/").contains("backslash"));
        assert!(one("users/b\0b/").contains("control characters"));
        assert!(one("users/b\nb/").contains("control characters"));
        assert!(one(&format!("{}/", "a".repeat(512))).contains("at most 512"));
        assert!(key_prefix_problems(&format!("{}/", "a".repeat(511))).is_empty());
    }

    #[test]
    fn several_prefix_problems_are_all_listed() {
        let all = key_prefix_problems("/a/../b");
        assert_eq!(all.len(), 3, "{all:?}");
    }

    #[test]
    fn suggestions() {
        assert_eq!(suggest_field("pasword"), Some("password"));
        assert_eq!(suggest_field("Username"), Some("username"));
        assert_eq!(suggest_field("public_key"), Some("public_keys"));
        assert_eq!(suggest_field("keyprefix"), Some("key_prefix"));
        assert_eq!(suggest_field("permission"), Some("permissions"));
        assert_eq!(suggest_field("allowed_ip"), Some("allowed_ips"));
        assert_eq!(suggest_field("quota"), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
    }
}
