//! Shell-style globbing of exec arguments against the bucket listing, as the shell of a
//! normal SSH server would do for `scp -f *.txt` or `md5sum dir/*`.
//!
//! `*`, `?` and `[...]` (with `!`/`^` negation and ranges) match within one path
//! segment; a leading `.` is only matched explicitly; a pattern that matches nothing is
//! kept as it is (bash's default), so the command reports it as missing.

use crate::storage::{StorageError, UserStore, VirtualPath};

use super::words::Word;

/// Most names one argument may expand to; beyond it the command fails instead of
/// holding an unbounded list in memory.
pub const MAX_MATCHES: usize = 10_000;
/// Entries fetched per listing page while matching.
const PAGE: usize = 1000;
/// Most S3 listing requests one command's globs may cost (a directory listed costs two
/// or three: its stat, then a request per page). `md5sum g/*/*/x` over a wide tree would
/// otherwise list every directory two levels down.
pub const MAX_LISTINGS: usize = 256;
/// Most names one command's globs may look at.
pub const MAX_VISITED: usize = 50_000;

/// What one command's glob expansion has cost so far, against [`MAX_LISTINGS`] and
/// [`MAX_VISITED`]: share one across the arguments of a command.
#[derive(Debug, Default)]
pub struct Work {
    listings: usize,
    visited: usize,
}

impl Work {
    fn charge(&mut self, listings: usize, visited: usize, word: &Word) -> Result<(), GlobError> {
        self.listings += listings;
        self.visited += visited;
        if self.listings > MAX_LISTINGS || self.visited > MAX_VISITED {
            return Err(GlobError::TooMuchWork(word.text.clone()));
        }
        Ok(())
    }
}

/// True if `name` matches the glob `pattern` (one segment, `\` escapes).
pub fn matches(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    if n.first() == Some(&'.') && p.first() != Some(&'.') {
        return false;
    }
    match_from(&p, &n)
}

fn match_from(p: &[char], n: &[char]) -> bool {
    // Iterative matcher with one backtrack point for the last `*` (linear-ish, no
    // exponential blow-up on hostile patterns).
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() {
            match p[pi] {
                '*' => {
                    star = Some((pi, ni));
                    pi += 1;
                    continue;
                }
                '?' => {
                    pi += 1;
                    ni += 1;
                    continue;
                }
                '[' => {
                    if let Some((hit, next)) = class(p, pi, n[ni]) {
                        if hit {
                            pi = next;
                            ni += 1;
                            continue;
                        }
                    } else if n[ni] == '[' {
                        // An unclosed `[` is a literal.
                        pi += 1;
                        ni += 1;
                        continue;
                    }
                }
                '\\' if pi + 1 < p.len() => {
                    if p[pi + 1] == n[ni] {
                        pi += 2;
                        ni += 1;
                        continue;
                    }
                }
                c => {
                    if c == n[ni] {
                        pi += 1;
                        ni += 1;
                        continue;
                    }
                }
            }
        }
        match star {
            Some((sp, sn)) => {
                pi = sp + 1;
                ni = sn + 1;
                star = Some((sp, sn + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Matches `c` against the class starting at `p[start] == '['`: (matched, index after
/// the class), or None if the class is not closed.
fn class(p: &[char], start: usize, c: char) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = matches!(p.get(i), Some('!' | '^'));
    if negate {
        i += 1;
    }
    let mut hit = false;
    let mut first = true;
    loop {
        let ch = *p.get(i)?;
        if ch == ']' && !first {
            return Some((hit != negate, i + 1));
        }
        first = false;
        let lo = if ch == '\\' {
            i += 1;
            *p.get(i)?
        } else {
            ch
        };
        if p.get(i + 1) == Some(&'-') && p.get(i + 2).is_some_and(|&e| e != ']') {
            let hi = p[i + 2];
            if lo <= c && c <= hi {
                hit = true;
            }
            i += 3;
        } else {
            if lo == c {
                hit = true;
            }
            i += 1;
        }
    }
}

/// Removes the glob escapes from a pattern segment (for segments without globs).
fn unescape(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    let mut chars = segment.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn segment_has_glob(segment: &str) -> bool {
    let mut chars = segment.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '*' | '?' | '[' => return true,
            _ => {}
        }
    }
    false
}

/// Why an argument could not be expanded.
#[derive(Debug, thiserror::Error)]
pub enum GlobError {
    #[error("{0}: matches more than {MAX_MATCHES} names")]
    TooMany(String),
    #[error("{0}: the pattern needs too much work (more than {MAX_LISTINGS} listing requests or {MAX_VISITED} names looked at): use a narrower pattern")]
    TooMuchWork(String),
    #[error("{0}")]
    Storage(#[from] StorageError),
}

/// Expands one argument: the client-facing spellings of the matches, sorted, or the
/// word itself when it has no glob or matches nothing.
pub async fn expand(store: &UserStore, word: &Word) -> Result<Vec<String>, GlobError> {
    expand_within(store, word, &mut Work::default()).await
}

/// [`expand`], charging what the listing costs to `work` (one per command).
pub async fn expand_within(
    store: &UserStore,
    word: &Word,
    work: &mut Work,
) -> Result<Vec<String>, GlobError> {
    if !word.has_glob() {
        return Ok(vec![word.text.clone()]);
    }
    let pattern = word.pattern();
    let absolute = pattern.starts_with('/');
    // (spelling so far, is that a directory we may list)
    let mut current: Vec<String> = vec![String::new()];
    for segment in pattern.split('/').filter(|s| !s.is_empty()) {
        let mut next = Vec::new();
        for base in &current {
            if !segment_has_glob(segment) {
                next.push(join(base, &unescape(segment)));
                continue;
            }
            let dir = resolve(absolute, base);
            // The stat before the listing (HEAD and LIST) and the first page.
            work.charge(3, 0, word)?;
            let Ok(mut lister) = store.list(&dir).await else {
                continue;
            };
            let mut pages = 0;
            loop {
                let batch = lister.next_batch(PAGE).await?;
                if batch.is_empty() {
                    break;
                }
                pages += 1;
                work.charge(usize::from(pages > 1), batch.len(), word)?;
                for entry in batch {
                    if matches(segment, &entry.name) {
                        if next.len() >= MAX_MATCHES {
                            return Err(GlobError::TooMany(word.text.clone()));
                        }
                        next.push(join(base, &entry.name));
                    }
                }
            }
        }
        next.sort();
        current = next;
        if current.is_empty() {
            break;
        }
    }
    if current.is_empty() {
        return Ok(vec![word.text.clone()]);
    }
    Ok(current
        .into_iter()
        .map(|s| if absolute { format!("/{s}") } else { s })
        .collect())
}

fn join(base: &str, name: &str) -> String {
    if base.is_empty() {
        name.to_string()
    } else {
        format!("{base}/{name}")
    }
}

fn resolve(absolute: bool, spelled: &str) -> VirtualPath {
    let text = if absolute {
        format!("/{spelled}")
    } else {
        spelled.to_string()
    };
    VirtualPath::parse_str(&text).unwrap_or_else(|_| VirtualPath::root())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_matching() {
        assert!(matches("*.txt", "a.txt"));
        assert!(!matches("*.txt", "a.txt.bak"));
        assert!(!matches("*", ".hidden"));
        assert!(matches(".*", ".hidden"));
        assert!(matches("a?c", "abc"));
        assert!(!matches("a?c", "ac"));
        assert!(matches("[ab]x", "bx"));
        assert!(matches("[a-c]x", "cx"));
        assert!(!matches("[!a-c]x", "cx"));
        assert!(matches("[^a-c]x", "dx"));
        assert!(matches("[]]", "]"));
        assert!(matches("a[", "a["));
        assert!(matches("\\*", "*"));
        assert!(!matches("\\*", "x"));
        assert!(matches("*a*b*c*", "xxaxxbxxcxx"));
        assert!(matches("ünï*", "ünïcode"));
        assert!(matches("*", ""));
    }

    #[test]
    fn hostile_patterns_are_fast() {
        let name = "a".repeat(5000);
        let pattern = "*a".repeat(200) + "b";
        let started = std::time::Instant::now();
        assert!(!matches(&pattern, &name));
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn escapes() {
        assert_eq!(unescape("a\\*b"), "a*b");
        assert!(!segment_has_glob("a\\*b"));
        assert!(segment_has_glob("a*b"));
    }
}
