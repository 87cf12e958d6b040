//! SSH `exec` requests: the command line is split like a shell would, then routed to
//! the one command that handles it (`scp`, the checksum commands). Anything else is
//! refused the way a shell refuses an unknown command: a line on stderr, status 127.

pub mod checksum;
pub mod glob;
pub mod words;

use russh::server::Msg;
use russh::Channel;

use crate::scp::ScpArgs;
use crate::storage::UserStore;
use checksum::Algorithm;
use words::Word;

/// Exit status of a shell for a command it cannot find.
pub const NOT_FOUND: u32 = 127;

/// What an exec request asks for.
#[derive(Debug)]
pub enum Command {
    Scp(ScpArgs, Vec<Word>),
    Checksum(Algorithm, Vec<Word>),
    /// Not served: the message for stderr and the exit status.
    Refused {
        message: String,
        status: u32,
    },
}

impl Command {
    /// Parses a raw exec command line.
    pub fn parse(raw: &[u8]) -> Command {
        let Ok(line) = std::str::from_utf8(raw) else {
            return refused("s3sftp: command line is not valid UTF-8", 2);
        };
        let words = match words::split(line) {
            Ok(w) => w,
            Err(e) => return refused(&format!("s3sftp: {e}"), 2),
        };
        let Some((first, rest)) = words.split_first() else {
            return refused("s3sftp: empty command", NOT_FOUND);
        };
        // Clients may name the program by path (`/usr/bin/scp`).
        let name = first.text.rsplit('/').next().unwrap_or_default();
        match name {
            "scp" => match ScpArgs::parse(rest) {
                Ok((args, words)) => Command::Scp(args, words),
                Err(e) => refused(&e.to_string(), 1),
            },
            other => match Algorithm::from_command(other) {
                Some(algorithm) => Command::Checksum(algorithm, rest.to_vec()),
                None => refused(&format!("s3sftp: {other}: command not found"), NOT_FOUND),
            },
        }
    }

    /// A short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Scp(..) => "scp",
            Command::Checksum(a, _) => a.command(),
            Command::Refused { .. } => "refused",
        }
    }
}

fn refused(message: &str, status: u32) -> Command {
    Command::Refused {
        message: message.to_string(),
        status,
    }
}

/// Runs an accepted command on its channel, then reports the exit status and closes
/// the channel.
pub async fn run(
    channel: Channel<Msg>,
    store: UserStore,
    username: String,
    command: Command,
    activity: std::sync::Arc<crate::activity::Activity>,
) {
    let (mut reader, writer) = channel.split();
    let status = {
        let input = reader.make_reader();
        let output = writer.make_writer();
        match &command {
            Command::Scp(args, words) => {
                crate::scp::run(args, words, &store, (&username, &activity), input, output).await
            }
            Command::Checksum(algorithm, args) => {
                let mut input = input;
                let mut output = output;
                let mut stderr = writer.make_writer_ext(Some(1));
                checksum::run(
                    *algorithm,
                    args,
                    &store,
                    &mut input,
                    &mut output,
                    &mut stderr,
                )
                .await
            }
            Command::Refused { message, status } => {
                use tokio::io::AsyncWriteExt;
                let mut stderr = writer.make_writer_ext(Some(1));
                let _ = stderr.write_all(format!("{message}\n").as_bytes()).await;
                let _ = stderr.flush().await;
                *status
            }
        }
    };
    tracing::debug!(user = %username, command = command.name(), status, "exec finished");
    let _ = writer.exit_status(status).await;
    let _ = writer.eof().await;
    let _ = writer.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_commands() {
        assert!(matches!(
            Command::parse(b"scp -t /x"),
            Command::Scp(ScpArgs { .. }, _)
        ));
        assert!(matches!(
            Command::parse(b"/usr/bin/scp -f a"),
            Command::Scp(..)
        ));
        assert!(matches!(
            Command::parse(b"sha256sum 'a b'"),
            Command::Checksum(Algorithm::Sha256, _)
        ));
        match Command::parse(b"rm -rf /") {
            Command::Refused { message, status } => {
                assert_eq!(status, NOT_FOUND);
                assert_eq!(message, "s3sftp: rm: command not found");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            Command::parse(b"md5sum a; rm b"),
            Command::Refused { status: 2, .. }
        ));
        assert!(matches!(
            Command::parse(b"scp -x"),
            Command::Refused { status: 1, .. }
        ));
    }
}
