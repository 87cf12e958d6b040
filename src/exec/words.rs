//! Splits an SSH `exec` command line into words the way a POSIX shell would, for the
//! few shell features clients rely on: single and double quotes, backslash escapes and
//! blanks. Clients such as OpenSSH `scp -O` pass the remote path unquoted and expect the
//! server's shell to do this; rclone shell-escapes its paths.
//!
//! Anything that would need a real shell (variables, pipes, redirections, `;`, `&&`,
//! command substitution) is refused rather than interpreted, so a client can never run
//! more than the one command it named.

/// Why a command line cannot be split.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WordsError {
    #[error("unterminated quote")]
    UnterminatedQuote,
    #[error("trailing backslash")]
    TrailingBackslash,
    #[error("shell syntax {0:?} is not supported: only one plain command can run here")]
    ShellSyntax(char),
}

/// One word and whether any part of it was quoted or escaped (a quoted `*` is not a glob).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Word {
    pub text: String,
    /// For each char of `text`: true if it came from quotes or a backslash escape.
    pub literal: Vec<bool>,
}

impl Word {
    /// True if the word contains an unquoted glob character.
    pub fn has_glob(&self) -> bool {
        self.text
            .chars()
            .zip(&self.literal)
            .any(|(c, lit)| !lit && matches!(c, '*' | '?' | '['))
    }

    /// The word as a glob pattern: quoted glob characters are escaped with `\`.
    pub fn pattern(&self) -> String {
        let mut out = String::with_capacity(self.text.len());
        for (c, lit) in self.text.chars().zip(&self.literal) {
            if *lit && matches!(c, '*' | '?' | '[' | ']' | '\\') {
                out.push('\\');
            }
            out.push(c);
        }
        out
    }
}

/// Splits `line` into words.
pub fn split(line: &str) -> Result<Vec<Word>, WordsError> {
    let mut words = Vec::new();
    let mut current: Option<Word> = None;
    let mut chars = line.chars().peekable();
    fn push(cur: &mut Option<Word>, c: char, literal: bool) {
        let w = cur.get_or_insert_with(|| Word {
            text: String::new(),
            literal: Vec::new(),
        });
        w.text.push(c);
        w.literal.push(literal);
    }
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' => {
                if let Some(w) = current.take() {
                    words.push(w);
                }
            }
            '\\' => match chars.next() {
                Some('\n') => {}
                Some(next) => push(&mut current, next, true),
                None => return Err(WordsError::TrailingBackslash),
            },
            '\'' => {
                // Make sure an empty '' still yields a word.
                current.get_or_insert_with(|| Word {
                    text: String::new(),
                    literal: Vec::new(),
                });
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(q) => push(&mut current, q, true),
                        None => return Err(WordsError::UnterminatedQuote),
                    }
                }
            }
            '"' => {
                current.get_or_insert_with(|| Word {
                    text: String::new(),
                    literal: Vec::new(),
                });
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(e @ ('"' | '\\' | '$' | '`')) => push(&mut current, e, true),
                            Some('\n') => {}
                            Some(other) => {
                                push(&mut current, '\\', true);
                                push(&mut current, other, true);
                            }
                            None => return Err(WordsError::UnterminatedQuote),
                        },
                        Some(c @ ('$' | '`')) => return Err(WordsError::ShellSyntax(c)),
                        Some(q) => push(&mut current, q, true),
                        None => return Err(WordsError::UnterminatedQuote),
                    }
                }
            }
            '$' | '`' | '|' | '&' | ';' | '<' | '>' | '(' | ')' => {
                return Err(WordsError::ShellSyntax(c));
            }
            '#' if current.is_none() => break,
            other => push(&mut current, other, false),
        }
    }
    if let Some(w) = current {
        words.push(w);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(line: &str) -> Vec<String> {
        split(line).unwrap().into_iter().map(|w| w.text).collect()
    }

    #[test]
    fn quoting_like_a_shell() {
        assert_eq!(texts("scp -t -- /a"), ["scp", "-t", "--", "/a"]);
        assert_eq!(texts("  md5sum  'a b'  "), ["md5sum", "a b"]);
        assert_eq!(texts(r#"x "a \"q\" \n" b\ c"#), ["x", r#"a "q" \n"#, "b c"]);
        assert_eq!(texts("x '' \"\""), ["x", "", ""]);
        assert_eq!(texts("x a'b'\"c\"d"), ["x", "abcd"]);
        assert_eq!(texts("x 'it'\\''s'"), ["x", "it's"]);
        assert_eq!(texts("x # comment"), ["x"]);
        assert_eq!(texts("x a#b"), ["x", "a#b"]);
    }

    #[test]
    fn shell_syntax_is_refused() {
        for bad in [
            "a; rm x", "a | b", "a && b", "a $HOME", "a `id`", "a > f", "a \"$x\"",
        ] {
            assert!(
                matches!(split(bad), Err(WordsError::ShellSyntax(_))),
                "{bad}"
            );
        }
        assert_eq!(split("a 'b"), Err(WordsError::UnterminatedQuote));
        assert_eq!(split("a \\"), Err(WordsError::TrailingBackslash));
        // Quoted, they are just characters.
        assert_eq!(texts("a '$x;|'"), ["a", "$x;|"]);
    }

    #[test]
    fn globs_know_what_was_quoted() {
        let w = split("*.txt 'a*' b\\?c").unwrap();
        assert!(w[0].has_glob());
        assert!(!w[1].has_glob());
        assert_eq!(w[1].pattern(), "a\\*");
        assert!(!w[2].has_glob());
        assert_eq!(w[2].pattern(), "b\\?c");
    }
}
