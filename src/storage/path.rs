//! The path jail: every path a client sends becomes a [`VirtualPath`] first, and only a
//! `VirtualPath` can be turned into an S3 key, always under the user's prefix.
//!
//! Normalisation is purely lexical (S3 has no symlinks): the input is split on `/` and `\`,
//! empty and `.` segments are dropped, `..` pops a segment and stops at the root. Relative
//! paths are relative to the root of the jail (the user's home). What comes out has no
//! `..`, no empty segment and no separator inside a segment, so appending it to a prefix
//! that ends in `/` can never name a key outside that prefix.

use std::fmt;

/// S3's limit on the length of an object key, in bytes.
pub const MAX_KEY_LEN: usize = 1024;

/// Why a client's path was refused before it reached S3.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path is not valid UTF-8")]
    NotUtf8,
    #[error("path contains a NUL or control character")]
    ControlChar,
    #[error("path is too long for an S3 key ({0} bytes, the limit is {MAX_KEY_LEN})")]
    TooLong(usize),
}

/// A normalised absolute path inside a user's jail: `/` or `/a/b` (no trailing `/`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VirtualPath(String);

impl VirtualPath {
    /// The root of the jail.
    pub fn root() -> Self {
        VirtualPath("/".to_string())
    }

    /// Normalises raw client bytes (see the module docs).
    pub fn parse(raw: &[u8]) -> Result<Self, PathError> {
        let text = std::str::from_utf8(raw).map_err(|_| PathError::NotUtf8)?;
        Self::parse_str(text)
    }

    /// Normalises a client path given as text.
    ///
    /// U+FFFD is refused as invalid UTF-8: russh-sftp decodes paths lossily, so a
    /// replacement character is how a client's invalid bytes reach us, and accepting it
    /// would silently store a file under a different name than the client sent.
    pub fn parse_str(text: &str) -> Result<Self, PathError> {
        if text.contains(char::REPLACEMENT_CHARACTER) {
            return Err(PathError::NotUtf8);
        }
        if text.chars().any(|c| c.is_control()) {
            return Err(PathError::ControlChar);
        }
        let mut segments: Vec<&str> = Vec::new();
        for segment in text.split(['/', '\\']) {
            match segment {
                "" | "." => {}
                ".." => {
                    segments.pop();
                }
                other => segments.push(other),
            }
        }
        let mut out = String::with_capacity(text.len() + 1);
        if segments.is_empty() {
            out.push('/');
        }
        for segment in segments {
            out.push('/');
            out.push_str(segment);
        }
        Ok(VirtualPath(out))
    }

    /// The path as the client sees it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        self.0 == "/"
    }

    /// The path without its leading `/` (empty for the root).
    pub fn relative(&self) -> &str {
        &self.0[1..]
    }

    /// The last segment, or `/` for the root.
    pub fn file_name(&self) -> &str {
        if self.is_root() {
            return "/";
        }
        self.0.rsplit('/').next().unwrap_or("/")
    }

    /// The parent directory (the root is its own parent).
    pub fn parent(&self) -> VirtualPath {
        match self.0.rfind('/') {
            Some(0) | None => VirtualPath::root(),
            Some(i) => VirtualPath(self.0[..i].to_string()),
        }
    }

    /// A child of this directory. `name` is normalised like any client input, so a name
    /// with separators or `..` still cannot leave the jail.
    pub fn join(&self, name: &str) -> Result<VirtualPath, PathError> {
        VirtualPath::parse_str(&format!("{}/{}", self.0, name))
    }

    /// True if `self` is `other` or lies below it.
    pub fn starts_with(&self, other: &VirtualPath) -> bool {
        other.is_root()
            || self.0 == other.0
            || (self.0.starts_with(&other.0) && self.0.as_bytes().get(other.0.len()) == Some(&b'/'))
    }
}

impl fmt::Display for VirtualPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A user's prefix inside the bucket, and the only place where keys are built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jail {
    prefix: String,
}

impl Jail {
    /// `prefix` is validated by the users file (non-empty, ends in `/`); an empty prefix
    /// is accepted here for tests that jail a whole bucket.
    pub fn new(prefix: impl Into<String>) -> Self {
        Jail {
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The object key of a file.
    pub fn file_key(&self, path: &VirtualPath) -> Result<String, PathError> {
        let key = format!("{}{}", self.prefix, path.relative());
        check_len(key)
    }

    /// The key prefix of a directory's contents, which is also its marker key (`dir/`).
    /// For the root it is the user's prefix itself.
    pub fn dir_prefix(&self, path: &VirtualPath) -> Result<String, PathError> {
        if path.is_root() {
            return Ok(self.prefix.clone());
        }
        let key = format!("{}{}/", self.prefix, path.relative());
        check_len(key)
    }

    /// The virtual path of a key inside this jail, if it is inside.
    pub fn path_of(&self, key: &str) -> Option<VirtualPath> {
        let rest = key.strip_prefix(&self.prefix)?;
        VirtualPath::parse_str(rest).ok()
    }
}

fn check_len(key: String) -> Result<String, PathError> {
    if key.len() > MAX_KEY_LEN {
        Err(PathError::TooLong(key.len()))
    } else {
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(s: &str) -> String {
        VirtualPath::parse_str(s)
            .map(|v| v.0)
            .unwrap_or_else(|e| e.to_string())
    }

    #[test]
    fn normalises_like_a_shell_at_root() {
        assert_eq!(p(""), "/");
        assert_eq!(p("."), "/");
        assert_eq!(p("/"), "/");
        assert_eq!(p("a/b"), "/a/b");
        assert_eq!(p("/a//b/"), "/a/b");
        assert_eq!(p("/a/./b/.."), "/a");
        assert_eq!(p("../../etc/passwd"), "/etc/passwd");
        assert_eq!(p("a\\..\\..\\b"), "/b");
        assert_eq!(p("/100%/x+y #1"), "/100%/x+y #1");
        assert_eq!(p("/ünï/çødé"), "/ünï/çødé");
        assert_eq!(p("a\0b"), PathError::ControlChar.to_string());
        assert_eq!(
            VirtualPath::parse(b"\xff\xfe"),
            Err(PathError::NotUtf8),
            "invalid UTF-8 is refused"
        );
        assert_eq!(
            VirtualPath::parse_str(&String::from_utf8_lossy(b"a\xffb")),
            Err(PathError::NotUtf8),
            "lossily decoded bytes are refused too"
        );
    }

    #[test]
    fn parent_name_join() {
        let v = VirtualPath::parse_str("/a/b/c").unwrap();
        assert_eq!(v.parent().as_str(), "/a/b");
        assert_eq!(v.file_name(), "c");
        assert_eq!(VirtualPath::root().parent().as_str(), "/");
        assert_eq!(VirtualPath::parse_str("/a").unwrap().parent().as_str(), "/");
        assert_eq!(v.join("../../x").unwrap().as_str(), "/a/x");
        assert!(v.starts_with(&VirtualPath::parse_str("/a").unwrap()));
        assert!(!VirtualPath::parse_str("/ab")
            .unwrap()
            .starts_with(&VirtualPath::parse_str("/a").unwrap()));
    }

    #[test]
    fn keys_stay_under_prefix() {
        let jail = Jail::new("users/alice/");
        let root = VirtualPath::root();
        assert_eq!(jail.dir_prefix(&root).unwrap(), "users/alice/");
        let f = VirtualPath::parse_str("/docs/a.txt").unwrap();
        assert_eq!(jail.file_key(&f).unwrap(), "users/alice/docs/a.txt");
        assert_eq!(jail.dir_prefix(&f).unwrap(), "users/alice/docs/a.txt/");
        assert_eq!(jail.path_of("users/alice/docs/a.txt"), Some(f));
        assert_eq!(jail.path_of("users/bob/x"), None);
        let long = "x".repeat(2000);
        assert!(matches!(
            jail.file_key(&VirtualPath::parse_str(&long).unwrap()),
            Err(PathError::TooLong(_))
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// No byte string a client can send maps to a key outside the prefix or to a key
        /// with a `..`, `.` or empty segment.
        #[test]
        fn no_input_escapes_the_prefix(raw in proptest::collection::vec(
            prop_oneof![
                Just(b'/'), Just(b'\\'), Just(b'.'), Just(b'a'), Just(b'%'), Just(0u8),
                Just(0xffu8), Just(0xc3u8), Just(0xa9u8), any::<u8>()
            ], 0..64)
        ) {
            let jail = Jail::new("users/alice/");
            if let Ok(v) = VirtualPath::parse(&raw) {
                for key in [jail.file_key(&v), jail.dir_prefix(&v)].into_iter().flatten() {
                    prop_assert!(key.starts_with("users/alice/"));
                    let rest = &key["users/alice/".len()..];
                    let rest = rest.strip_suffix('/').unwrap_or(rest);
                    if !rest.is_empty() {
                        for seg in rest.split('/') {
                            prop_assert!(!seg.is_empty() && seg != "." && seg != "..", "bad segment in {key:?}");
                            prop_assert!(!seg.contains('\\') && !seg.contains('\0'));
                        }
                    }
                }
                // Normalising twice changes nothing.
                prop_assert_eq!(VirtualPath::parse_str(v.as_str()).ok(), Some(v.clone()));
            }
        }

        #[test]
        fn arbitrary_strings_stay_inside(s in ".{0,80}") {
            let jail = Jail::new("p/");
            if let Ok(v) = VirtualPath::parse_str(&s) {
                let key = jail.file_key(&v).unwrap_or_default();
                prop_assert!(key.is_empty() || key.starts_with("p/"));
                prop_assert!(!key.split('/').any(|seg| seg == ".."));
            }
        }
    }
}
