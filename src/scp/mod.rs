//! The legacy SCP front end (`scp -O`, PuTTY `pscp -scp`): the client runs
//! `scp -t <target>` (upload) or `scp -f <paths>` (download) over an SSH `exec`, and the
//! RCP protocol runs over the channel. Protocol only: all storage goes through
//! [`crate::storage::UserStore`], with the same jail as SFTP.

pub mod protocol;
mod sink;
mod source;
pub mod wire;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::activity::Activity;
use crate::exec::words::Word;
use crate::storage::UserStore;
use std::sync::Arc;
pub use wire::{Wire, WireError};

/// Direction of the copy, from the server's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `-t`: we receive files.
    Sink,
    /// `-f`: we send files.
    Source,
}

/// The options of an `scp` command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScpArgs {
    pub mode: Mode,
    /// `-r`
    pub recursive: bool,
    /// `-p`
    pub preserve: bool,
    /// `-d`: the target must be a directory.
    pub target_is_dir: bool,
    /// Paths as given (for a sink, exactly one target).
    pub paths: Vec<String>,
}

/// Why an `scp` command line is not one we serve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgsError {
    #[error("scp: unknown option -{0}")]
    UnknownOption(char),
    #[error("scp: one of -t or -f is required (this server is not a shell)")]
    NoMode,
    #[error("scp: -t and -f exclude each other")]
    BothModes,
    #[error("scp: missing path")]
    NoPath,
    #[error("scp: ambiguous target")]
    AmbiguousTarget,
}

impl ScpArgs {
    /// Parses the words after `scp`.
    pub fn parse(words: &[Word]) -> Result<(ScpArgs, Vec<Word>), ArgsError> {
        let mut mode = None;
        let (mut recursive, mut preserve, mut target_is_dir) = (false, false, false);
        let mut rest = words.iter();
        let mut paths: Vec<Word> = Vec::new();
        while let Some(word) = rest.next() {
            let text = word.text.as_str();
            if text == "--" {
                paths.extend(rest.by_ref().cloned());
                break;
            }
            let Some(flags) = text.strip_prefix('-').filter(|f| !f.is_empty()) else {
                paths.push(word.clone());
                paths.extend(rest.by_ref().cloned());
                break;
            };
            for flag in flags.chars() {
                match flag {
                    't' | 'f' => {
                        let m = if flag == 't' {
                            Mode::Sink
                        } else {
                            Mode::Source
                        };
                        if mode.is_some_and(|old| old != m) {
                            return Err(ArgsError::BothModes);
                        }
                        mode = Some(m);
                    }
                    'r' => recursive = true,
                    'p' => preserve = true,
                    'd' => target_is_dir = true,
                    // Verbose and quiet only change what a real scp prints on stderr.
                    'v' | 'q' => {}
                    other => return Err(ArgsError::UnknownOption(other)),
                }
            }
        }
        let mode = mode.ok_or(ArgsError::NoMode)?;
        if paths.is_empty() {
            return Err(ArgsError::NoPath);
        }
        if mode == Mode::Sink && paths.len() != 1 {
            return Err(ArgsError::AmbiguousTarget);
        }
        let args = ScpArgs {
            mode,
            recursive,
            preserve,
            target_is_dir,
            paths: paths.iter().map(|w| w.text.clone()).collect(),
        };
        Ok((args, paths))
    }
}

/// How a run went: the exit status is 0 only without errors.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub errors: u32,
}

impl Outcome {
    pub fn failed() -> Self {
        Outcome { errors: 1 }
    }

    pub fn exit_status(&self) -> u32 {
        u32::from(self.errors > 0)
    }
}

/// Runs one SCP command over `input`/`output`; the exit status to report.
pub async fn run<R, W>(
    args: &ScpArgs,
    words: &[Word],
    store: &UserStore,
    (username, activity): (&str, &Arc<Activity>),
    input: R,
    output: W,
) -> u32
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut wire = Wire::new(input, output);
    let result = match args.mode {
        Mode::Sink => sink::run(args, store, (username, activity), &mut wire).await,
        Mode::Source => source::run(args, words, store, (username, activity), &mut wire).await,
    };
    wire.shutdown().await;
    match result {
        Ok(outcome) => outcome.exit_status(),
        Err(WireError::Closed) => {
            tracing::info!(user = %username, "scp: the client went away");
            1
        }
        Err(e) => {
            tracing::warn!(user = %username, "scp session ended: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::words::split;

    fn parse(line: &str) -> Result<ScpArgs, ArgsError> {
        ScpArgs::parse(&split(line).unwrap()).map(|(a, _)| a)
    }

    #[test]
    fn openssh_command_lines() {
        let a = parse("-v -r -p -d -t -- /x").unwrap();
        assert_eq!(
            a,
            ScpArgs {
                mode: Mode::Sink,
                recursive: true,
                preserve: true,
                target_is_dir: true,
                paths: vec!["/x".into()]
            }
        );
        let a = parse("-f a 'b c' -r").unwrap();
        assert_eq!(a.mode, Mode::Source);
        assert!(!a.recursive, "options stop at the first path");
        assert_eq!(a.paths, ["a", "b c", "-r"]);
        let a = parse("-rpf -- -odd").unwrap();
        assert!(a.recursive && a.preserve);
        assert_eq!(a.paths, ["-odd"]);
    }

    #[test]
    fn bad_command_lines() {
        assert_eq!(parse("-t"), Err(ArgsError::NoPath));
        assert_eq!(parse("x"), Err(ArgsError::NoMode));
        assert_eq!(parse("-tf x"), Err(ArgsError::BothModes));
        assert_eq!(parse("-t a b"), Err(ArgsError::AmbiguousTarget));
        assert_eq!(parse("-X -t a"), Err(ArgsError::UnknownOption('X')));
    }
}
