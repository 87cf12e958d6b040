//! The legacy SCP control lines: `parse_line` and `check_name` on arbitrary bytes.
//!
//! When a line parses, what it promises must hold: it was at most `MAX_LINE` bytes, a
//! `C`/`D` mode is 4 octal digits' worth, and rendering the parsed value again (with the
//! same functions the source side uses where they apply) parses back to the same value.
//! When `check_name` accepts a name, that name is exactly one entry of the target
//! directory: no `/` or `\`, not `.`/`..`, no control character, and joining it to a
//! directory adds exactly one segment.
//!
//! Shared by the fuzz target and by `tests/fuzz_corpus.rs`, which replays the corpus.
use s3sftp::scp::protocol::{
    check_name, dir_line, file_line, parse_line, time_line, Control, ProtocolError, MAX_LINE,
};
use s3sftp::storage::{PathError, VirtualPath};

/// One input; panics when a promise is broken.
pub fn check(line: &[u8]) {
    // The wire hands parse_line a line without its `\n`; a name is any text.
    if let Ok(text) = std::str::from_utf8(line) {
        check_name_promises(text);
    }
    let control = match parse_line(line) {
        Ok(c) => c,
        Err(ProtocolError::TooLong) => {
            assert!(line.len() > MAX_LINE);
            return;
        }
        Err(ProtocolError::Empty) => {
            assert!(line.is_empty());
            return;
        }
        Err(_) => return,
    };
    assert!(line.len() <= MAX_LINE);
    match &control {
        Control::File { mode, size, name } => {
            assert_eq!(line[0], b'C');
            assert!(*mode <= 0o7777);
            check_name_promises(name);
            assert_eq!(reparse(&format!("C{mode:04o} {size} {name}\n")), control);
            if *mode == 0o644 {
                assert_eq!(reparse(&file_line(*size, name)), control);
            }
        }
        Control::Dir { mode, name } => {
            assert_eq!(line[0], b'D');
            assert!(*mode <= 0o7777);
            check_name_promises(name);
            assert_eq!(reparse(&format!("D{mode:04o} 0 {name}\n")), control);
            if *mode == 0o755 {
                assert_eq!(reparse(&dir_line(name)), control);
            }
        }
        Control::End => assert_eq!(line, b"E"),
        Control::Time { mtime, atime } => {
            assert_eq!(line[0], b'T');
            assert_eq!(reparse(&format!("T{mtime} 0 {atime} 0\n")), control);
            if mtime == atime {
                assert_eq!(reparse(&time_line(*mtime)), control);
            }
        }
        Control::Error { fatal, message } => {
            assert_eq!(line[0], if *fatal { 2 } else { 1 });
            let mut again = vec![line[0]];
            again.extend_from_slice(message.as_bytes());
            if again.len() <= MAX_LINE {
                assert_eq!(parse_line(&again), Ok(control.clone()));
            } else {
                // Decoded lossily, invalid bytes became U+FFFD (3 bytes each).
                assert!(message.contains(char::REPLACEMENT_CHARACTER));
            }
        }
    }
}

/// Parses a rendered line back, without the one `\n` that ends it (as the wire does).
fn reparse(rendered: &str) -> Control {
    let line = rendered
        .strip_suffix('\n')
        .expect("rendered lines end in a newline");
    parse_line(line.as_bytes()).unwrap_or_else(|e| panic!("{rendered:?} does not parse: {e}"))
}

fn check_name_promises(name: &str) {
    let Ok(()) = check_name(name) else { return };
    assert!(!name.is_empty() && name != "." && name != "..", "{name:?}");
    assert!(!name.contains('/') && !name.contains('\\'), "{name:?}");
    assert!(!name.chars().any(char::is_control), "{name:?}");
    // Rendered, the name cannot end the control line early.
    assert!(!file_line(0, name)[..file_line(0, name).len() - 1].contains('\n'));
    let dir = VirtualPath::parse_str("/target/dir").expect("dir");
    match dir.join(name) {
        Ok(joined) => {
            assert_eq!(joined.parent(), dir, "{name:?} left the target directory");
            assert_eq!(joined.file_name(), name);
        }
        // The path layer refuses U+FFFD (how lossily decoded bytes arrive); the sink
        // reports that file's error and goes on.
        Err(PathError::NotUtf8) => assert!(name.contains(char::REPLACEMENT_CHARACTER)),
        Err(e) => panic!("accepted name {name:?} does not join: {e}"),
    }
}
