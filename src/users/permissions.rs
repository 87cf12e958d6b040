//! Per-user permissions: which operations a user may do where, by virtual path.
//!
//! The names are SFTPGo's, so a permissions map can be carried over from SFTPGo as it is:
//! `{"/": ["*"], "/reports": ["list", "download"]}`. A path's permissions apply to everything
//! under it; the deepest path that contains the one asked about wins. This module only holds
//! and looks up the data; enforcing it is the storage view's job.

use std::collections::BTreeMap;
use std::fmt;

/// One operation a user may be allowed to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Permission {
    /// List a directory's contents.
    List,
    /// Read a file.
    Download,
    /// Create a new file.
    Upload,
    /// Replace an existing file (by upload or by renaming onto it).
    Overwrite,
    /// Delete a file or an empty directory.
    Delete,
    /// Rename or move a file or directory.
    Rename,
    /// Create a directory.
    CreateDirs,
}

impl Permission {
    /// Every permission, in the order they are listed in messages and written to the file.
    pub const ALL: [Permission; 7] = [
        Permission::List,
        Permission::Download,
        Permission::Upload,
        Permission::Overwrite,
        Permission::Delete,
        Permission::Rename,
        Permission::CreateDirs,
    ];

    /// The name used in the users file (SFTPGo's name).
    pub fn name(self) -> &'static str {
        match self {
            Permission::List => "list",
            Permission::Download => "download",
            Permission::Upload => "upload",
            Permission::Overwrite => "overwrite",
            Permission::Delete => "delete",
            Permission::Rename => "rename",
            Permission::CreateDirs => "create_dirs",
        }
    }

    /// The permission called `name` in the users file, if any (`*` is not one: see
    /// [`PermissionSet::parse`]).
    pub fn from_name(name: &str) -> Option<Permission> {
        Permission::ALL.into_iter().find(|p| p.name() == name)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of [`Permission`]s: what a user may do at one path.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct PermissionSet(u8);

impl PermissionSet {
    /// Nothing allowed.
    pub const NONE: PermissionSet = PermissionSet(0);
    /// Everything allowed (`*`).
    pub const ALL: PermissionSet = PermissionSet((1 << Permission::ALL.len()) - 1);

    /// Whether `permission` is in the set.
    pub fn contains(self, permission: Permission) -> bool {
        self.0 & permission.bit() != 0
    }

    /// The set with `permission` added.
    #[must_use]
    pub fn with(self, permission: Permission) -> PermissionSet {
        PermissionSet(self.0 | permission.bit())
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The set of the given permissions.
    pub fn of(permissions: &[Permission]) -> PermissionSet {
        permissions
            .iter()
            .fold(PermissionSet::NONE, |set, &p| set.with(p))
    }

    /// Parses a users-file list such as `["list", "download"]` or `["*"]`. Repeated names are
    /// harmless. The error lists every unknown name and the valid ones.
    pub fn parse<S: AsRef<str>>(names: &[S]) -> Result<PermissionSet, String> {
        let mut set = PermissionSet::NONE;
        let mut unknown = Vec::new();
        for name in names {
            let name = name.as_ref();
            if name == "*" {
                set = PermissionSet::ALL;
            } else if let Some(p) = Permission::from_name(name) {
                set = set.with(p);
            } else {
                unknown.push(format!("{name:?}"));
            }
        }
        if unknown.is_empty() {
            Ok(set)
        } else {
            Err(format!(
                "unknown permission {}; the permissions are {}, or \"*\" for all",
                unknown.join(", "),
                Permission::ALL.map(Permission::name).join(", ")
            ))
        }
    }

    /// The names to write in the users file: `["*"]` for all, else each permission in the set.
    pub fn names(self) -> Vec<&'static str> {
        if self == PermissionSet::ALL {
            return vec!["*"];
        }
        Permission::ALL
            .into_iter()
            .filter(|&p| self.contains(p))
            .map(Permission::name)
            .collect()
    }
}

/// `*`, `list,download`, or `none`.
impl fmt::Display for PermissionSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&self.names().join(","))
        }
    }
}

impl fmt::Debug for PermissionSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PermissionSet({self})")
    }
}

/// A user's permissions: virtual directory path → what is allowed in its subtree.
///
/// Always has an entry for `/`, so every path has an answer. Paths are clean absolute virtual
/// paths (`/`, `/reports`, `/a/b`), checked by [`permission_path_problems`].
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Permissions(BTreeMap<String, PermissionSet>);

impl Default for Permissions {
    /// Everything allowed everywhere: `{"/": ["*"]}`.
    fn default() -> Self {
        Permissions(BTreeMap::from([("/".to_owned(), PermissionSet::ALL)]))
    }
}

impl Permissions {
    /// Builds permissions from checked entries; the caller guarantees clean paths and a `/`.
    pub(crate) fn from_checked(entries: BTreeMap<String, PermissionSet>) -> Permissions {
        Permissions(entries)
    }

    /// What is allowed at `path`, a virtual path such as `/reports/2024/q1.csv`: the
    /// permissions of the deepest configured path that is `path` itself or one of its parent
    /// directories. A trailing `/` is ignored; a relative path is taken from `/`.
    pub fn permissions_for(&self, path: &str) -> PermissionSet {
        let absolute;
        let mut path = path.trim_end_matches('/');
        if !path.is_empty() && !path.starts_with('/') {
            absolute = format!("/{path}");
            path = &absolute;
        }
        loop {
            let key = if path.is_empty() { "/" } else { path };
            if let Some(&set) = self.0.get(key) {
                return set;
            }
            match path.rfind('/') {
                Some(at) => path = &path[..at],
                None if path.is_empty() => return PermissionSet::NONE,
                None => path = "",
            }
        }
    }

    /// The configured entries, sorted by path.
    pub fn entries(&self) -> impl Iterator<Item = (&str, PermissionSet)> {
        self.0.iter().map(|(path, &set)| (path.as_str(), set))
    }

    /// Whether this is the default, everything allowed everywhere.
    pub fn is_default(&self) -> bool {
        *self == Permissions::default()
    }

    /// Sets the permissions of the subtree at `path` (already checked).
    pub(crate) fn set(&mut self, path: String, set: PermissionSet) {
        self.0.insert(path, set);
    }

    /// Removes the entry for `path`; returns whether there was one.
    pub(crate) fn remove(&mut self, path: &str) -> bool {
        self.0.remove(path).is_some()
    }
}

/// Problems with a path used as a key of `permissions`: it must be a clean absolute virtual
/// path, `/` or `/a/b` with no trailing slash, no empty, `.` or `..` segment and no control
/// characters.
pub fn permission_path_problems(path: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if !path.starts_with('/') {
        problems.push(format!(
            "path {path:?} must start with \"/\" (paths are the user's virtual paths, \"/\" being its root directory)"
        ));
    }
    if path.chars().any(char::is_control) {
        problems.push(format!("path {path:?} must not contain control characters"));
    }
    if path.len() > 1 && path.ends_with('/') {
        problems.push(format!(
            "path {path:?} must not end with \"/\"; write {:?}",
            path.trim_end_matches('/')
        ));
    }
    let inner = path.trim_start_matches('/').trim_end_matches('/');
    if !inner.is_empty() {
        let segments: Vec<&str> = inner.split('/').collect();
        if segments.iter().any(|s| s.is_empty()) {
            problems.push(format!("path {path:?} must not contain \"//\""));
        }
        if segments.iter().any(|s| *s == "." || *s == "..") {
            problems.push(format!(
                "path {path:?} must not contain \".\" or \"..\" segments"
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perms(entries: &[(&str, &[&str])]) -> Permissions {
        Permissions::from_checked(
            entries
                .iter()
                .map(|(path, names)| ((*path).to_owned(), PermissionSet::parse(names).unwrap()))
                .collect(),
        )
    }

    #[test]
    fn names_round_trip() {
        for p in Permission::ALL {
            assert_eq!(Permission::from_name(p.name()), Some(p));
        }
        assert_eq!(Permission::from_name("*"), None);
        assert_eq!(PermissionSet::ALL.names(), ["*"]);
        let set = PermissionSet::parse(&["download", "list", "list"]).unwrap();
        assert_eq!(set.names(), ["list", "download"]);
        assert_eq!(set.to_string(), "list,download");
        assert_eq!(PermissionSet::NONE.to_string(), "none");
        assert_eq!(
            PermissionSet::parse(&["*", "list"]).unwrap(),
            PermissionSet::ALL
        );
        let all_by_name = PermissionSet::parse(&Permission::ALL.map(Permission::name)).unwrap();
        assert_eq!(all_by_name, PermissionSet::ALL);
    }

    #[test]
    fn unknown_names_are_all_reported() {
        let message = PermissionSet::parse(&["list", "write", "chmod"]).unwrap_err();
        assert!(
            message.starts_with("unknown permission \"write\", \"chmod\";"),
            "{message}"
        );
        assert!(message.contains("create_dirs"), "{message}");
    }

    #[test]
    fn default_allows_everything_everywhere() {
        let p = Permissions::default();
        assert!(p.is_default());
        assert_eq!(p.permissions_for("/"), PermissionSet::ALL);
        assert_eq!(p.permissions_for("/a/b/c.txt"), PermissionSet::ALL);
    }

    #[test]
    fn deepest_match_wins_and_applies_to_the_subtree() {
        let p = perms(&[
            ("/", &["*"]),
            ("/reports", &["list", "download"]),
            ("/reports/drafts", &["*"]),
            ("/hidden", &[]),
        ]);
        let read_only = PermissionSet::of(&[Permission::List, Permission::Download]);
        assert_eq!(p.permissions_for("/"), PermissionSet::ALL);
        assert_eq!(p.permissions_for("/other.txt"), PermissionSet::ALL);
        assert_eq!(p.permissions_for("/reports"), read_only);
        assert_eq!(p.permissions_for("/reports/"), read_only);
        assert_eq!(p.permissions_for("/reports/2024/q1.csv"), read_only);
        assert_eq!(p.permissions_for("/reports/drafts/x"), PermissionSet::ALL);
        assert_eq!(
            p.permissions_for("/reports-old/x"),
            PermissionSet::ALL,
            "not a subtree"
        );
        assert_eq!(p.permissions_for("/hidden/a"), PermissionSet::NONE);
        assert_eq!(
            p.permissions_for("reports/x"),
            read_only,
            "relative is from /"
        );
        assert_eq!(p.permissions_for(""), PermissionSet::ALL);
    }

    #[test]
    fn without_a_root_entry_nothing_outside_is_allowed() {
        // Not a valid file (validation requires "/"), but the lookup must still be safe.
        let p = perms(&[("/in", &["*"])]);
        assert!(!p.0.contains_key("/"));
        assert_eq!(p.permissions_for("/out"), PermissionSet::NONE);
        assert_eq!(p.permissions_for("/in/x"), PermissionSet::ALL);
    }

    #[test]
    fn paths() {
        assert!(permission_path_problems("/").is_empty());
        assert!(permission_path_problems("/a/b c/d").is_empty());
        assert_eq!(permission_path_problems("a").len(), 1);
        assert!(permission_path_problems("/a/")[0].contains("write \"/a\""));
        assert!(permission_path_problems("/a//b")[0].contains("//"));
        assert!(permission_path_problems("/a/../b")[0].contains(".."));
        assert!(permission_path_problems("/a\nb")[0].contains("control"));
    }
}
