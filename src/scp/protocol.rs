//! The legacy SCP wire protocol (RCP's): control lines and one-byte replies. Pure
//! parsing and encoding, no I/O, so it can be fuzzed and unit tested.
//!
//! Control lines, each ending in `\n`:
//! - `C<mode> <size> <name>`: a file of `size` bytes follows, then one status byte;
//! - `D<mode> 0 <name>`: enter a directory (recursive copies);
//! - `E`: leave the directory;
//! - `T<mtime> <usec> <atime> <usec>`: times of the next `C`/`D`.
//!
//! Replies: `\0` (ok), `\x01message\n` (this item failed, go on), `\x02message\n` (fatal).

/// Longest control line we accept (OpenSSH's own buffer is 2 KiB; names are ≤ 1 KiB here).
pub const MAX_LINE: usize = 4096;

/// One control line from the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    File {
        mode: u32,
        size: u64,
        name: String,
    },
    Dir {
        mode: u32,
        name: String,
    },
    End,
    Time {
        mtime: u64,
        atime: u64,
    },
    /// The peer reported a problem: `fatal` for `\x02`.
    Error {
        fatal: bool,
        message: String,
    },
}

/// Why a control line is not valid SCP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("protocol error: empty line")]
    Empty,
    #[error("protocol error: unknown control byte {0:#04x}")]
    UnknownControl(u8),
    #[error("protocol error: bad mode")]
    BadMode,
    #[error("protocol error: size not delimited")]
    BadSize,
    #[error("protocol error: bad time")]
    BadTime,
    #[error("protocol error: name is not valid UTF-8")]
    NotUtf8,
    #[error("protocol error: line too long")]
    TooLong,
}

/// Parses one control line (without its trailing `\n`).
pub fn parse_line(line: &[u8]) -> Result<Control, ProtocolError> {
    if line.len() > MAX_LINE {
        return Err(ProtocolError::TooLong);
    }
    let (&kind, rest) = line.split_first().ok_or(ProtocolError::Empty)?;
    match kind {
        b'C' | b'D' => {
            let text = std::str::from_utf8(rest).map_err(|_| ProtocolError::NotUtf8)?;
            let (mode, rest) = text.split_once(' ').ok_or(ProtocolError::BadMode)?;
            if mode.len() != 4 || !mode.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
                return Err(ProtocolError::BadMode);
            }
            let mode = u32::from_str_radix(mode, 8).map_err(|_| ProtocolError::BadMode)?;
            let (size, name) = rest.split_once(' ').ok_or(ProtocolError::BadSize)?;
            if size.is_empty() || !size.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ProtocolError::BadSize);
            }
            let size: u64 = size.parse().map_err(|_| ProtocolError::BadSize)?;
            let name = name.to_string();
            Ok(if kind == b'C' {
                Control::File { mode, size, name }
            } else {
                Control::Dir { mode, name }
            })
        }
        b'E' if rest.is_empty() => Ok(Control::End),
        b'T' => {
            let text = std::str::from_utf8(rest).map_err(|_| ProtocolError::BadTime)?;
            let fields: Vec<&str> = text.split(' ').collect();
            let [mtime, musec, atime, ausec] = fields[..] else {
                return Err(ProtocolError::BadTime);
            };
            let num = |s: &str| -> Result<u64, ProtocolError> {
                if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(ProtocolError::BadTime);
                }
                s.parse().map_err(|_| ProtocolError::BadTime)
            };
            let (mtime, atime) = (num(mtime)?, num(atime)?);
            if num(musec)? > 999_999 || num(ausec)? > 999_999 {
                return Err(ProtocolError::BadTime);
            }
            Ok(Control::Time { mtime, atime })
        }
        1 | 2 => Ok(Control::Error {
            fatal: kind == 2,
            message: String::from_utf8_lossy(rest).into_owned(),
        }),
        other => Err(ProtocolError::UnknownControl(other)),
    }
}

/// Refuses names that would write somewhere other than one entry of the target
/// directory (OpenSSH's sink does the same check).
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(format!("error: unexpected filename: {name}"));
    }
    if name.chars().any(char::is_control) || name.contains('\\') {
        return Err(format!(
            "error: unsupported character in filename: {name:?}"
        ));
    }
    Ok(())
}

/// `C0644 <size> <name>\n`
pub fn file_line(size: u64, name: &str) -> String {
    format!("C0644 {size} {name}\n")
}

/// `D0755 0 <name>\n`
pub fn dir_line(name: &str) -> String {
    format!("D0755 0 {name}\n")
}

/// `T<secs> 0 <secs> 0\n` (S3 keeps one time, LastModified; it serves for both).
pub fn time_line(secs: u64) -> String {
    format!("T{secs} 0 {secs} 0\n")
}

/// A non-fatal error reply: `\x01scp: <message>\n`.
pub fn error_reply(message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 7);
    out.push(1);
    out.extend_from_slice(b"scp: ");
    // A newline inside would end the message early and desynchronise the peer.
    out.extend(message.bytes().map(|b| if b == b'\n' { b' ' } else { b }));
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_openssh_lines() {
        assert_eq!(
            parse_line(b"C0644 1234 a b.txt"),
            Ok(Control::File {
                mode: 0o644,
                size: 1234,
                name: "a b.txt".into()
            })
        );
        assert_eq!(
            parse_line(b"D0755 0 dir"),
            Ok(Control::Dir {
                mode: 0o755,
                name: "dir".into()
            })
        );
        assert_eq!(parse_line(b"E"), Ok(Control::End));
        assert_eq!(
            parse_line(b"T1700000000 0 1700000001 0"),
            Ok(Control::Time {
                mtime: 1_700_000_000,
                atime: 1_700_000_001
            })
        );
        assert_eq!(
            parse_line(b"\x01scp: oops"),
            Ok(Control::Error {
                fatal: false,
                message: "scp: oops".into()
            })
        );
        assert_eq!(
            parse_line(b"C0644 0 "),
            Ok(Control::File {
                mode: 0o644,
                size: 0,
                name: String::new()
            })
        );
    }

    #[test]
    fn refuses_bad_lines() {
        assert_eq!(parse_line(b""), Err(ProtocolError::Empty));
        assert_eq!(parse_line(b"X"), Err(ProtocolError::UnknownControl(b'X')));
        assert_eq!(parse_line(b"C644 1 a"), Err(ProtocolError::BadMode));
        assert_eq!(parse_line(b"C0948 1 a"), Err(ProtocolError::BadMode));
        assert_eq!(parse_line(b"C0644 -1 a"), Err(ProtocolError::BadSize));
        assert_eq!(parse_line(b"C0644 1a"), Err(ProtocolError::BadSize));
        assert_eq!(
            parse_line(b"C0644 99999999999999999999999 a"),
            Err(ProtocolError::BadSize)
        );
        assert_eq!(parse_line(b"T1 0 2"), Err(ProtocolError::BadTime));
        assert_eq!(parse_line(b"T1 1000000 2 0"), Err(ProtocolError::BadTime));
        assert_eq!(parse_line(b"Ex"), Err(ProtocolError::UnknownControl(b'E')));
        assert_eq!(parse_line(b"C0644 1 \xff"), Err(ProtocolError::NotUtf8));
        assert_eq!(
            parse_line(&vec![b'C'; MAX_LINE + 1]),
            Err(ProtocolError::TooLong)
        );
    }

    #[test]
    fn names() {
        for bad in ["", ".", "..", "a/b", "/", "a\nb", "a\\b"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        for good in ["a", "a b", "..a", "ünï", ".hidden"] {
            assert!(check_name(good).is_ok(), "{good:?}");
        }
        assert_eq!(error_reply("a\nb"), b"\x01scp: a b\n");
    }
}
