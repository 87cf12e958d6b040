//! Public keys from the users file: parsing `authorized_keys`-style lines and matching the key a
//! client offers.

use russh::keys::PublicKey;

/// One `public_keys` entry of a user: the parsed key, compared at login, and the line as written,
/// kept for messages and for writing the file back unchanged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthorizedKey {
    key: PublicKey,
    line: String,
}

/// Why a `public_keys` line was refused.
///
/// Each message says what to do about it; the caller adds the user and the entry's position.
#[derive(Debug, thiserror::Error)]
pub enum KeyLineError {
    /// The line is empty or only blanks.
    #[error("is empty")]
    Empty,

    /// The line holds a newline, tab or other control character.
    #[error("contains a newline, tab or other control character; give one key per entry, fields separated by single spaces")]
    ControlCharacter,

    /// The line starts with `authorized_keys` options (`no-pty`, `from="..."`, ...).
    ///
    /// Refused rather than ignored: silently dropping a `from="..."` restriction the administrator
    /// believes is enforced would be worse than refusing to start.
    #[error("starts with authorized_keys options ({options:?}), which s3sftp does not support; remove them and keep `<type> <base64> [comment]`")]
    Options {
        /// The text before the key type.
        options: String,
    },

    /// The line is an OpenSSH certificate, not a plain public key.
    #[error("is an OpenSSH certificate ({algorithm}); certificates are not supported, give the plain public key (the .pub file, not -cert.pub)")]
    Certificate {
        /// The certificate type named on the line.
        algorithm: String,
    },

    /// The key parses, but is of a type no client can log in with here (DSA, or a type ssh-key
    /// only carries as opaque bytes).
    #[error("is a {algorithm:?} key, a type s3sftp does not accept; use an ssh-ed25519, ecdsa-sha2-nistp256/384/521 or ssh-rsa key")]
    UnsupportedType {
        /// The key type named in the key.
        algorithm: String,
    },

    /// The line does not parse as a public key.
    #[error("does not parse as an OpenSSH public key ({source}); expected a line like `ssh-ed25519 AAAAC3Nza... comment`, as in ~/.ssh/id_ed25519.pub")]
    Invalid {
        /// What ssh-key said.
        #[source]
        source: russh::keys::ssh_key::Error,
    },
}

impl AuthorizedKey {
    /// Parses one line in OpenSSH public key format: `<type> <base64> [comment]`.
    ///
    /// Surrounding blanks are ignored. `authorized_keys` options, certificates, DSA keys and
    /// unknown key types are refused (see [`KeyLineError`]).
    pub fn parse(line: &str) -> Result<AuthorizedKey, KeyLineError> {
        let trimmed = line.trim_matches(' ');
        if trimmed.is_empty() {
            return Err(KeyLineError::Empty);
        }
        if trimmed.chars().any(char::is_control) {
            return Err(KeyLineError::ControlCharacter);
        }
        let first = trimmed.split(' ').next().unwrap_or_default();
        if first.ends_with("-cert-v01@openssh.com") {
            return Err(KeyLineError::Certificate {
                algorithm: first.to_owned(),
            });
        }
        let key = PublicKey::from_openssh(trimmed).map_err(|e| explain_failure(trimmed, e))?;
        let data = key.key_data();
        if data.is_other() || data.is_dsa() {
            return Err(KeyLineError::UnsupportedType {
                algorithm: key.algorithm().as_str().to_owned(),
            });
        }
        Ok(AuthorizedKey {
            key,
            line: line.to_owned(),
        })
    }

    /// The parsed key.
    pub fn key(&self) -> &PublicKey {
        &self.key
    }

    /// The line as it appears in the users file.
    pub fn line(&self) -> &str {
        &self.line
    }

    /// The key's SHA-256 fingerprint as `ssh-keygen -l` prints it: `SHA256:<base64>`.
    pub fn fingerprint(&self) -> String {
        self.key
            .fingerprint(russh::keys::HashAlg::Sha256)
            .to_string()
    }

    /// The key type, e.g. `ssh-ed25519`.
    pub fn algorithm(&self) -> String {
        self.key.algorithm().as_str().to_owned()
    }

    /// The comment, e.g. `alice@laptop` (may be empty).
    pub fn comment(&self) -> String {
        self.key.comment().as_str_lossy().to_owned()
    }

    /// Whether `offered` is this key. Compares the key material only: comments differ freely
    /// between a `.pub` file and what a client sends (which carries none).
    pub fn matches(&self, offered: &PublicKey) -> bool {
        self.key.key_data() == offered.key_data()
    }
}

/// Turns a parse failure into the most helpful error: options prefix, or plain garbage.
fn explain_failure(line: &str, source: russh::keys::ssh_key::Error) -> KeyLineError {
    // An options prefix may itself contain quoted spaces (`from="a, b"`), so try every space
    // as the start of the key rather than splitting once.
    for (at, _) in line.match_indices(' ') {
        let rest = line[at..].trim_start_matches(' ');
        if PublicKey::from_openssh(rest).is_ok() {
            return KeyLineError::Options {
                options: line[..at].to_owned(),
            };
        }
    }
    KeyLineError::Invalid { source }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIFbu/cWZHRfrWTCIft+VBlVnuhBS1uf9hTja8TpqBxW alice@laptop";
    const BOB: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMYXG1bbIOYA6M3cauIVEvQgyrqsg293LU4GF+O4TNdH bob@desk";

    /// `ssh-keygen -s a -I test -n alice a.pub` (a certificate for ALICE, signed by itself).
    const CERT: &str = "ssh-ed25519-cert-v01@openssh.com AAAAIHNzaC1lZDI1NTE5LWNlcnQtdjAxQG9wZW5zc2guY29tAAAAIK8eQA0BJjSsQlj9cS46FCthJD1QOPT+6munvGciw9UsAAAAIIFbu/cWZHRfrWTCIft+VBlVnuhBS1uf9hTja8TpqBxWAAAAAAAAAAAAAAABAAAABHRlc3QAAAAJAAAABWFsaWNlAAAAAAAAAAD//////////wAAAAAAAACCAAAAFXBlcm1pdC1YMTEtZm9yd2FyZGluZwAAAAAAAAAXcGVybWl0LWFnZW50LWZvcndhcmRpbmcAAAAAAAAAFnBlcm1pdC1wb3J0LWZvcndhcmRpbmcAAAAAAAAACnBlcm1pdC1wdHkAAAAAAAAADnBlcm1pdC11c2VyLXJjAAAAAAAAAAAAAAAzAAAAC3NzaC1lZDI1NTE5AAAAIIFbu/cWZHRfrWTCIft+VBlVnuhBS1uf9hTja8TpqBxWAAAAUwAAAAtzc2gtZWQyNTUxOQAAAEC835dc3+Ef5cXoRBKrcq2CVzNfBhWDrfFbkkVYGGVHJLQlLlfso9rWDohrl7TQfT/vmm8Sc2kdVi/CangK97kO alice@laptop";

    #[test]
    fn parses_a_plain_line_and_keeps_it() {
        let key = AuthorizedKey::parse(ALICE).unwrap();
        assert_eq!(key.line(), ALICE);
        assert_eq!(key.key().comment().as_str_lossy(), "alice@laptop");
    }

    #[test]
    fn fingerprint_is_what_ssh_keygen_prints() {
        // ssh-keygen -lf alice.pub
        let key = AuthorizedKey::parse(ALICE).unwrap();
        assert_eq!(
            key.fingerprint(),
            "SHA256:f7BXZ/Pc78Xk0UiEJFSVXhYGjkt71GpzHV61V4SMOqw"
        );
        assert_eq!(key.algorithm(), "ssh-ed25519");
        assert_eq!(key.comment(), "alice@laptop");
    }

    #[test]
    fn comment_with_spaces_and_no_comment_both_parse() {
        let body = ALICE.rsplit_once(' ').unwrap().0;
        assert!(AuthorizedKey::parse(body).is_ok());
        assert!(AuthorizedKey::parse(&format!("{body} Alice's old laptop")).is_ok());
    }

    #[test]
    fn matches_compares_key_material_only() {
        let key = AuthorizedKey::parse(ALICE).unwrap();
        let mut offered = PublicKey::from_openssh(ALICE).unwrap();
        offered.set_comment("something else");
        assert!(key.matches(&offered));
        let other = PublicKey::from_openssh(BOB).unwrap();
        assert!(!key.matches(&other));
    }

    #[test]
    fn options_prefix_is_refused_and_named() {
        let line = format!("no-pty,from=\"10.0.0.1, 10.0.0.2\" {ALICE}");
        match AuthorizedKey::parse(&line) {
            Err(KeyLineError::Options { options }) => {
                assert_eq!(options, "no-pty,from=\"10.0.0.1, 10.0.0.2\"")
            }
            other => panic!("expected Options, got {other:?}"),
        }
    }

    #[test]
    fn certificate_is_refused() {
        let line = CERT;
        match AuthorizedKey::parse(line) {
            Err(KeyLineError::Certificate { algorithm }) => {
                assert_eq!(algorithm, "ssh-ed25519-cert-v01@openssh.com")
            }
            other => panic!("expected Certificate, got {other:?}"),
        }
    }

    #[test]
    fn unsupported_types_are_refused() {
        let dsa = "ssh-dss AAAAB3NzaC1kc3MAAAABAQAAAAEBAAAAAQEAAAABAQ== old";
        let opaque = "ssh-foo@example.com AAAAE3NzaC1mb29AZXhhbXBsZS5jb20AAAAIYmxvYmRhdGE= x";
        for (line, algorithm) in [(dsa, "ssh-dss"), (opaque, "ssh-foo@example.com")] {
            match AuthorizedKey::parse(line) {
                Err(KeyLineError::UnsupportedType { algorithm: got }) => assert_eq!(got, algorithm),
                other => panic!("expected UnsupportedType for {line}, got {other:?}"),
            }
        }
    }

    #[test]
    fn garbage_empty_and_multiline_are_refused() {
        assert!(matches!(
            AuthorizedKey::parse("ssh-ed25519 notbase64!"),
            Err(KeyLineError::Invalid { .. })
        ));
        assert!(matches!(
            AuthorizedKey::parse("   "),
            Err(KeyLineError::Empty)
        ));
        assert!(matches!(
            AuthorizedKey::parse(&format!("{ALICE}\n{BOB}")),
            Err(KeyLineError::ControlCharacter)
        ));
    }
}
