//! `md5sum`, `sha1sum` and `sha256sum` as coreutils prints them (`<hex>  <path>`), hashed
//! while streaming the object from S3. rclone's sftp backend runs these to verify
//! transfers without downloading.

use digest::Digest;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::glob;
use super::words::Word;
use crate::storage::{StorageError, UserStore, VirtualPath};

/// Bytes hashed per read.
const CHUNK: u64 = 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Md5,
    Sha1,
    Sha256,
}

impl Algorithm {
    pub fn from_command(name: &str) -> Option<Self> {
        match name {
            "md5sum" => Some(Algorithm::Md5),
            "sha1sum" => Some(Algorithm::Sha1),
            "sha256sum" => Some(Algorithm::Sha256),
            _ => None,
        }
    }

    pub fn command(&self) -> &'static str {
        match self {
            Algorithm::Md5 => "md5sum",
            Algorithm::Sha1 => "sha1sum",
            Algorithm::Sha256 => "sha256sum",
        }
    }

    fn hasher(&self) -> Box<dyn digest::DynDigest + Send> {
        match self {
            Algorithm::Md5 => Box::new(md5::Md5::new()),
            Algorithm::Sha1 => Box::new(sha1::Sha1::new()),
            Algorithm::Sha256 => Box::new(sha2::Sha256::new()),
        }
    }
}

/// One output line as coreutils formats it: names with a backslash or newline are
/// escaped and the line starts with `\`.
pub fn format_line(digest: &[u8], name: &str) -> String {
    let hex = hex::encode(digest);
    if name.contains('\\') || name.contains('\n') {
        let escaped = name.replace('\\', "\\\\").replace('\n', "\\n");
        format!("\\{hex}  {escaped}\n")
    } else {
        format!("{hex}  {name}\n")
    }
}

/// Runs the command; returns its exit status (1 if any path failed).
pub async fn run<I, O, E>(
    algorithm: Algorithm,
    args: &[Word],
    store: &UserStore,
    stdin: &mut I,
    stdout: &mut O,
    stderr: &mut E,
) -> u32
where
    I: AsyncRead + Unpin,
    O: AsyncWrite + Unpin,
    E: AsyncWrite + Unpin,
{
    let cmd = algorithm.command();
    let mut paths: Vec<&Word> = Vec::new();
    let mut options_done = false;
    for word in args {
        if !options_done && word.text == "--" {
            options_done = true;
        } else if !options_done && word.text.starts_with('-') && word.text != "-" {
            let _ = stderr
                .write_all(format!("{cmd}: unsupported option '{}'\n", word.text).as_bytes())
                .await;
            return 1;
        } else {
            paths.push(word);
        }
    }
    let stdin_word = Word {
        text: "-".into(),
        literal: vec![false],
    };
    if paths.is_empty() {
        paths.push(&stdin_word);
    }
    let mut status = 0;
    let mut work = glob::Work::default();
    for word in paths {
        let names = match glob::expand_within(store, word, &mut work).await {
            Ok(n) => n,
            Err(e) => {
                let _ = stderr.write_all(format!("{cmd}: {e}\n").as_bytes()).await;
                status = 1;
                continue;
            }
        };
        for name in names {
            let result = if name == "-" {
                hash_stdin(algorithm, stdin).await
            } else {
                hash_object(algorithm, store, &name).await
            };
            let ok = match result {
                Ok(digest) => stdout
                    .write_all(format_line(&digest, &name).as_bytes())
                    .await
                    .is_ok(),
                Err(message) => {
                    let _ = stderr
                        .write_all(format!("{cmd}: {name}: {message}\n").as_bytes())
                        .await;
                    false
                }
            };
            if !ok {
                status = 1;
            }
        }
    }
    let _ = stdout.flush().await;
    let _ = stderr.flush().await;
    status
}

async fn hash_object(
    algorithm: Algorithm,
    store: &UserStore,
    name: &str,
) -> Result<Vec<u8>, String> {
    let path = VirtualPath::parse_str(name).map_err(|e| e.to_string())?;
    let mut download = store.open_read(&path).await.map_err(|e| match e {
        StorageError::NotFound => "No such file or directory".to_string(),
        StorageError::IsADirectory => "Is a directory".to_string(),
        other => other.to_string(),
    })?;
    let mut hasher = algorithm.hasher();
    let size = download.size();
    let mut offset = 0;
    while offset < size {
        let chunk = download
            .read(offset, CHUNK.min(size - offset))
            .await
            .map_err(|e| e.to_string())?;
        if chunk.is_empty() {
            return Err(StorageError::Changed.to_string());
        }
        hasher.update(&chunk);
        offset += chunk.len() as u64;
    }
    Ok(hasher.finalize().to_vec())
}

async fn hash_stdin<I: AsyncRead + Unpin>(
    algorithm: Algorithm,
    stdin: &mut I,
) -> Result<Vec<u8>, String> {
    let mut hasher = algorithm.hasher();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = stdin.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_match_coreutils() {
        let mut h = Algorithm::Md5.hasher();
        h.update(b"hello\n");
        assert_eq!(
            format_line(&h.finalize(), "a b.txt"),
            "b1946ac92492d2347c6235b4d2611184  a b.txt\n"
        );
        let mut h = Algorithm::Sha1.hasher();
        h.update(b"");
        assert_eq!(
            format_line(&h.finalize(), "x"),
            "da39a3ee5e6b4b0d3255bfef95601890afd80709  x\n"
        );
        assert_eq!(
            format_line(&[0xab], "a\\b"),
            "\\ab  a\\\\b\n",
            "coreutils escapes backslashes"
        );
    }
}
