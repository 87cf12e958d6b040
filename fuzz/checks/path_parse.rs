//! `VirtualPath::parse` on arbitrary bytes. When a path is accepted, everything the jail
//! promises must hold: the path is normalised (one leading `/`, no trailing `/`, no empty,
//! `.` or `..` segment, no `\`, no control character), normalising it again changes
//! nothing, and every key built from it lies under the user's prefix.
//!
//! Shared by the fuzz target and by `tests/fuzz_corpus.rs`, which replays the corpus.
use s3sftp::storage::path::{Jail, PathError, VirtualPath, MAX_KEY_LEN};

const PREFIX: &str = "users/alice/";

/// One input; panics when a promise is broken.
pub fn check(raw: &[u8]) {
    let v = match VirtualPath::parse(raw) {
        Ok(v) => v,
        Err(PathError::NotUtf8) => {
            assert!(
                std::str::from_utf8(raw).is_err() || raw_contains_replacement(raw),
                "valid UTF-8 without U+FFFD refused as not UTF-8"
            );
            return;
        }
        Err(PathError::ControlChar) => {
            let text = std::str::from_utf8(raw).expect("control char error on valid UTF-8");
            assert!(text.chars().any(char::is_control));
            return;
        }
        Err(PathError::TooLong(_)) => panic!("parse never checks the length"),
    };
    let s = v.as_str();

    // Normalised form.
    assert!(s.starts_with('/'), "{s:?}");
    assert!(s == "/" || !s.ends_with('/'), "{s:?}");
    assert_eq!(v.is_root(), s == "/");
    if !v.is_root() {
        for seg in s[1..].split('/') {
            assert!(
                !seg.is_empty() && seg != "." && seg != "..",
                "bad segment in {s:?}"
            );
            assert!(!seg.contains('\\'), "{s:?}");
        }
    }
    assert!(!s.chars().any(char::is_control), "{s:?}");
    assert!(!s.contains(char::REPLACEMENT_CHARACTER), "{s:?}");
    assert_eq!(v.relative(), &s[1..]);

    // Idempotent, through both entry points.
    assert_eq!(VirtualPath::parse(s.as_bytes()).as_ref(), Ok(&v));
    assert_eq!(VirtualPath::parse_str(s).as_ref(), Ok(&v));

    // Parent, file name and join agree with each other.
    let parent = v.parent();
    assert!(v.starts_with(&parent));
    if !v.is_root() {
        assert_ne!(parent, v);
        assert_eq!(parent.join(v.file_name()).as_ref(), Ok(&v));
    }
    assert!(v.starts_with(&VirtualPath::root()));

    // Keys stay under the prefix, and map back to the same path.
    let jail = Jail::new(PREFIX);
    match jail.file_key(&v) {
        Ok(key) => {
            assert!(key.starts_with(PREFIX), "{key:?}");
            assert!(key.len() <= MAX_KEY_LEN);
            assert_eq!(jail.path_of(&key).as_ref(), Some(&v));
        }
        Err(PathError::TooLong(n)) => assert!(n > MAX_KEY_LEN),
        Err(e) => panic!("file_key failed with {e}"),
    }
    match jail.dir_prefix(&v) {
        Ok(prefix) => {
            assert!(prefix.starts_with(PREFIX), "{prefix:?}");
            assert!(prefix.ends_with('/'), "{prefix:?}");
            assert!(prefix.len() <= MAX_KEY_LEN);
            assert_eq!(jail.path_of(&prefix).as_ref(), Some(&v));
        }
        Err(PathError::TooLong(n)) => assert!(n > MAX_KEY_LEN),
        Err(e) => panic!("dir_prefix failed with {e}"),
    }
}

fn raw_contains_replacement(raw: &[u8]) -> bool {
    std::str::from_utf8(raw).is_ok_and(|t| t.contains(char::REPLACEMENT_CHARACTER))
}
