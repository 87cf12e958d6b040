//! Client-supplied text made safe for the logs.
//!
//! A username, command, path or subsystem name comes from the client and may hold `\n`, `\r`
//! or terminal escape sequences that would forge log lines or rewrite a terminal. Logged
//! through [`escaped`], control and non-printable characters appear as Rust escapes
//! (`\n`, `\u{1b}`) and overlong text is cut.

use std::fmt;

/// Characters of client text kept in a log line; the rest is replaced by `…`.
const MAX_CHARS: usize = 1024;

/// `text` for a log field: escaped and at most [`MAX_CHARS`] characters.
pub fn escaped(text: &str) -> Escaped<'_> {
    Escaped(text)
}

/// See [`escaped`].
pub struct Escaped<'a>(&'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut chars = self.0.chars();
        for c in chars.by_ref().take(MAX_CHARS) {
            write!(f, "{}", c.escape_debug())?;
        }
        if chars.next().is_some() {
            f.write_str("…")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_cannot_forge_lines() {
        let text = "alice\n2026-01-01T00:00:00Z INFO login user=root\r\u{1b}[2K";
        let shown = escaped(text).to_string();
        assert!(!shown.contains('\n') && !shown.contains('\r') && !shown.contains('\u{1b}'));
        assert!(shown.starts_with("alice\\n2026"), "{shown}");
        assert!(shown.contains("\\u{1b}"), "{shown}");
        assert_eq!(escaped("bob.smith@x").to_string(), "bob.smith@x");
    }

    #[test]
    fn long_text_is_cut() {
        let shown = escaped(&"a".repeat(10_000)).to_string();
        assert_eq!(shown.chars().count(), MAX_CHARS + 1);
        assert!(shown.ends_with('…'));
    }
}
