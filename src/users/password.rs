//! Password hashes: making argon2id hashes for the users file and checking passwords against
//! them, and against the bcrypt and sha512-crypt hashes accepted for migrations.
//!
//! All functions here are plain, CPU-heavy sync functions (tens of milliseconds each); async
//! callers run them in `tokio::task::spawn_blocking`.

use std::fmt;

use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::TryRng;

use super::{User, UsersError};

/// The command an administrator runs to turn a password into a hash for the users file.
pub const HASH_PASSWORD_COMMAND: &str = "s3sftp users hash-password";

/// argon2 memory cost in KiB (OWASP's recommended minimum for argon2id: 19 MiB).
const M_COST: u32 = 19_456;
/// argon2 passes over memory (OWASP).
const T_COST: u32 = 2;
/// argon2 lanes (OWASP).
const P_COST: u32 = 1;
/// Salt length in bytes (the PHC recommendation).
const SALT_LEN: usize = 16;

/// Largest memory cost accepted in a users file, in KiB (1 GiB): a typo such as `m=194560000`
/// would otherwise make every login try to allocate 185 GiB.
const MAX_M_COST: u32 = 1024 * 1024;
/// Largest number of passes accepted in a users file, for the same reason.
const MAX_T_COST: u32 = 64;
/// Largest number of lanes accepted in a users file, for the same reason.
const MAX_P_COST: u32 = 64;
/// Largest bcrypt cost accepted (2^16 rounds, a few seconds per login).
const MAX_BCRYPT_COST: u32 = 16;
/// Largest sha512-crypt rounds accepted (about half a second per login).
const MAX_SHA_CRYPT_ROUNDS: u32 = 1_000_000;
/// Smallest sha512-crypt rounds a valid hash has (glibc's minimum).
const MIN_SHA_CRYPT_ROUNDS: u32 = 1_000;

/// Length of a generated password, in characters from [`PASSWORD_ALPHABET`] (~119 bits).
const GENERATED_LEN: usize = 20;
/// Characters of generated passwords: letters and digits, safe to paste anywhere.
const PASSWORD_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// The alphabet of bcrypt and crypt(3) hashes.
fn is_crypt_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'.' || c == b'/'
}

/// A hash with exactly the parameters [`hash_password`] uses, of a random password nobody knows.
///
/// [`verify_password_or_dummy`] checks against it when there is no real hash to check, so that a
/// login attempt costs the same time whether or not the user exists. A unit test keeps its
/// parameters equal to the ones above.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$BCyhYHXMjnOY4JiHGGdEow$W9JvirPp80xD+gx63hoVWW2HFE5YHV0f22QC+4faZwo";

/// The kinds of password hash the users file may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashKind {
    /// `$argon2id$...`, what s3sftp makes.
    Argon2id,
    /// `$argon2i$...`.
    Argon2i,
    /// `$argon2d$...`.
    Argon2d,
    /// `$2a$`, `$2b$` or `$2y$` (bcrypt), accepted for migrations.
    Bcrypt,
    /// `$6$` (sha512-crypt, as in `/etc/shadow`), accepted for migrations.
    Sha512Crypt,
}

impl HashKind {
    /// The kind of `hash`, judged by its prefix only; `None` for anything else (plain text,
    /// other algorithms). [`check_hash`] checks the rest.
    pub fn of(hash: &str) -> Option<HashKind> {
        let kind = if hash.starts_with("$argon2id$") {
            HashKind::Argon2id
        } else if hash.starts_with("$argon2i$") {
            HashKind::Argon2i
        } else if hash.starts_with("$argon2d$") {
            HashKind::Argon2d
        } else if ["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p)) {
            HashKind::Bcrypt
        } else if hash.starts_with("$6$") {
            HashKind::Sha512Crypt
        } else {
            return None;
        };
        Some(kind)
    }

    /// `argon2id`, `bcrypt`, `sha512-crypt`, ...
    pub fn name(self) -> &'static str {
        match self {
            HashKind::Argon2id => "argon2id",
            HashKind::Argon2i => "argon2i",
            HashKind::Argon2d => "argon2d",
            HashKind::Bcrypt => "bcrypt",
            HashKind::Sha512Crypt => "sha512-crypt",
        }
    }
}

impl fmt::Display for HashKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Hashes `password` with argon2id (m=19456 KiB, t=2, p=1) and a random 16-byte salt from the
/// operating system, returning the PHC string to put in the users file.
pub fn hash_password(password: &str) -> Result<String, UsersError> {
    if password.is_empty() {
        return Err(UsersError::EmptyPassword);
    }
    let mut salt = [0u8; SALT_LEN];
    rand::rngs::SysRng
        .try_fill_bytes(&mut salt)
        .map_err(UsersError::Random)?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| UsersError::Hash(e.to_string()))?;
    let params =
        Params::new(M_COST, T_COST, P_COST, None).map_err(|e| UsersError::Hash(e.to_string()))?;
    let hash = Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| UsersError::Hash(e.to_string()))?;
    Ok(hash.to_string())
}

/// A random password of 20 letters and digits from the operating system's generator.
pub fn generate_password() -> Result<String, UsersError> {
    let mut out = String::with_capacity(GENERATED_LEN);
    let mut byte = [0u8; 1];
    // 62 letters: keep bytes below 248 (= 4 * 62) so every letter is equally likely.
    let limit = (256 / PASSWORD_ALPHABET.len() * PASSWORD_ALPHABET.len()) as u8;
    while out.len() < GENERATED_LEN {
        rand::rngs::SysRng
            .try_fill_bytes(&mut byte)
            .map_err(UsersError::Random)?;
        if byte[0] < limit {
            out.push(char::from(
                PASSWORD_ALPHABET[usize::from(byte[0]) % PASSWORD_ALPHABET.len()],
            ));
        }
    }
    Ok(out)
}

/// Whether `password` matches `hash`: an argon2 PHC string (`$argon2id$`, `$argon2i$`,
/// `$argon2d$`, parameters and salt written in it), a bcrypt hash (`$2a$`, `$2b$`, `$2y$`;
/// as everywhere, only the first 72 bytes of the password count) or a sha512-crypt hash
/// (`$6$`). False on any error, including a string that is not a valid hash. The final
/// comparison is constant-time for every kind.
pub fn verify_password(hash: &str, password: &str) -> bool {
    match HashKind::of(hash) {
        Some(HashKind::Argon2id | HashKind::Argon2i | HashKind::Argon2d) => {
            match PasswordHash::new(hash) {
                Ok(parsed) => verify_argon2(&parsed, password.as_bytes()),
                Err(_) => false,
            }
        }
        Some(HashKind::Bcrypt) => bcrypt::verify(password, hash).unwrap_or(false),
        Some(HashKind::Sha512Crypt) => {
            use sha_crypt::PasswordVerifier as _;
            sha_crypt::ShaCrypt::SHA512
                .verify_password(password.as_bytes(), hash)
                .is_ok()
        }
        None => false,
    }
}

thread_local! {
    /// This thread's argon2 working memory, kept between checks (it grows to the largest
    /// memory cost seen). argon2's own API allocates 19 MiB per check; after a few hundred
    /// checks glibc kept those blocks in its per-thread arenas, and 100 wrong passwords
    /// left hundreds of MiB resident even with two checks at a time. Password checks run
    /// on a few dedicated threads, so this is a fixed cost per thread.
    static ARGON2_MEMORY: std::cell::RefCell<Vec<argon2::Block>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Checks `password` against an argon2 PHC hash (algorithm, version, parameters and salt
/// all from the hash) in this thread's reused working memory; the comparison of the
/// outputs is constant-time.
fn verify_argon2(parsed: &PasswordHash<'_>, password: &[u8]) -> bool {
    let (Some(expected), Some(salt)) = (parsed.hash, parsed.salt) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(parsed.algorithm) else {
        return false;
    };
    let version = match parsed.version.map(Version::try_from) {
        None => Version::default(),
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let Ok(params) = Params::try_from(parsed) else {
        return false;
    };
    let mut salt_bytes = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_bytes) else {
        return false;
    };
    let blocks = params.m_cost() as usize;
    let mut out = vec![0u8; expected.len()];
    let argon2 = Argon2::new(algorithm, version, params);
    let hashed = ARGON2_MEMORY.with(|memory| {
        let mut memory = memory.borrow_mut();
        if memory.len() < blocks {
            memory.resize(blocks, argon2::Block::new());
        }
        argon2.hash_password_into_with_memory(password, salt, &mut out, &mut memory[..blocks])
    });
    if hashed.is_err() {
        return false;
    }
    // `Output`'s equality is constant-time.
    argon2::password_hash::Output::new(&out).is_ok_and(|out| out == expected)
}

/// Checks `password` for a login as `user`, spending one hash verification whatever happens.
///
/// True only for an existing, enabled user with a password that matches. When the user is
/// missing, disabled or has no password, it verifies against a fixed dummy hash with the same
/// parameters as [`hash_password`] and returns false, so the time taken does not reveal which
/// usernames exist. (A user whose hash is bcrypt or sha512-crypt costs what that hash costs;
/// rehash with `s3sftp users passwd` to get uniform timing.)
pub fn verify_password_or_dummy(user: Option<&User>, password: &str) -> bool {
    match user {
        Some(User {
            enabled: true,
            password: Some(hash),
            ..
        }) => verify_password(hash, password),
        _ => {
            // The result is ignored: this call only spends the time a real check would.
            let _ = verify_password(DUMMY_HASH, password);
            false
        }
    }
}

/// Checks that a users-file `password` value is a usable hash; the error is the message for
/// the administrator, naming the command to fix it for `username`. Never echoes the value: it
/// may be a plain-text password.
pub(crate) fn check_hash(value: &str, username: Option<&str>) -> Result<(), String> {
    let name = username.filter(|n| !n.is_empty()).unwrap_or("NAME");
    let hint = format!(
        "run `s3sftp users passwd {name}` to set a new password, or `{HASH_PASSWORD_COMMAND}` and paste its output"
    );
    if value.is_empty() {
        return Err(format!(
            "password is empty; remove the field (or set it to null) to turn password login off, or {hint}"
        ));
    }
    if !value.starts_with('$') {
        return Err(format!(
            "password looks like plain text; the users file stores only password hashes: {hint}"
        ));
    }
    match HashKind::of(value) {
        Some(HashKind::Argon2id | HashKind::Argon2i | HashKind::Argon2d) => {
            check_argon2(value, &hint)
        }
        Some(HashKind::Bcrypt) => check_bcrypt(value, &hint),
        Some(HashKind::Sha512Crypt) => check_sha512_crypt(value, &hint),
        None => {
            let id = value[1..].split('$').next().unwrap_or_default();
            Err(format!(
                "password is a {id:?} hash, which s3sftp does not accept; the accepted kinds are argon2 ($argon2id$, $argon2i$, $argon2d$), bcrypt ($2a$, $2b$, $2y$) and sha512-crypt ($6$): {hint}"
            ))
        }
    }
}

fn check_argon2(value: &str, hint: &str) -> Result<(), String> {
    let hash = PasswordHash::new(value)
        .map_err(|e| format!("password is not a valid PHC hash string ({e}); {hint}"))?;
    let algorithm = hash.algorithm.as_str();
    if Algorithm::new(algorithm).is_err() {
        return Err(format!(
            "password is a {algorithm:?} hash, which s3sftp does not accept: {hint}"
        ));
    }
    if let Some(version) = hash.version {
        if Version::try_from(version).is_err() {
            return Err(format!(
                "password hash has unknown argon2 version v={version}; {hint}"
            ));
        }
    }
    let params = Params::try_from(&hash)
        .map_err(|e| format!("password hash has invalid argon2 parameters ({e}); {hint}"))?;
    if hash.salt.is_none() || hash.hash.is_none() {
        return Err(format!("password hash lacks its salt or hash part; {hint}"));
    }
    if params.m_cost() > MAX_M_COST || params.t_cost() > MAX_T_COST || params.p_cost() > MAX_P_COST
    {
        return Err(format!(
            "password hash parameters m={},t={},p={} are too costly (at most m={MAX_M_COST},t={MAX_T_COST},p={MAX_P_COST}): every login would pay them; {hint}",
            params.m_cost(),
            params.t_cost(),
            params.p_cost()
        ));
    }
    Ok(())
}

/// `$2b$12$` + 22 characters of salt + 31 of hash, all in the crypt alphabet.
fn check_bcrypt(value: &str, hint: &str) -> Result<(), String> {
    let bytes = value.as_bytes();
    let shape_ok = bytes.len() == 60
        && bytes[4].is_ascii_digit()
        && bytes[5].is_ascii_digit()
        && bytes[6] == b'$'
        && bytes[7..].iter().all(|&c| is_crypt_char(c));
    if !shape_ok || value.parse::<bcrypt::HashParts>().is_err() {
        return Err(format!(
            "password is not a valid bcrypt hash (expected $2b$<cost>$ and 53 more characters); {hint}"
        ));
    }
    let cost: u32 = value[4..6].parse().unwrap_or(u32::MAX);
    if !(4..=MAX_BCRYPT_COST).contains(&cost) {
        return Err(format!(
            "password is a bcrypt hash of cost {cost}; s3sftp accepts costs 4 to {MAX_BCRYPT_COST} (every login pays it); {hint}"
        ));
    }
    Ok(())
}

/// `$6$[rounds=N$]<salt, up to 16 characters>$<86 characters>`.
fn check_sha512_crypt(value: &str, hint: &str) -> Result<(), String> {
    let invalid = || {
        format!(
            "password is not a valid sha512-crypt hash (expected $6$[rounds=N$]<salt>$<86 characters>); {hint}"
        )
    };
    let fields: Vec<&str> = value["$6$".len()..].split('$').collect();
    let (rounds, salt, hash) = match fields.as_slice() {
        [salt, hash] => (None, *salt, *hash),
        [rounds, salt, hash] => {
            let n = rounds
                .strip_prefix("rounds=")
                .and_then(|n| n.parse::<u32>().ok())
                .ok_or_else(invalid)?;
            (Some(n), *salt, *hash)
        }
        _ => return Err(invalid()),
    };
    let salt_ok = !salt.is_empty() && salt.len() <= 16 && salt.bytes().all(is_crypt_char);
    if !salt_ok || hash.len() != 86 || !hash.bytes().all(is_crypt_char) {
        return Err(invalid());
    }
    if let Some(n) = rounds {
        if !(MIN_SHA_CRYPT_ROUNDS..=MAX_SHA_CRYPT_ROUNDS).contains(&n) {
            return Err(format!(
                "password is a sha512-crypt hash of {n} rounds; s3sftp accepts {MIN_SHA_CRYPT_ROUNDS} to {MAX_SHA_CRYPT_ROUNDS} (every login pays them); {hint}"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params_of(phc: &str) -> (String, Option<u32>, Params) {
        let hash = PasswordHash::new(phc).unwrap();
        let params = Params::try_from(&hash).unwrap();
        (hash.algorithm.to_string(), hash.version, params)
    }

    #[test]
    fn hash_then_verify_round_trips() {
        let phc = hash_password("correct horse").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(verify_password(&phc, "correct horse"));
        assert!(!verify_password(&phc, "correct hors"));
        assert!(check_hash(&phc, None).is_ok());
    }

    #[test]
    fn salts_differ_between_hashes() {
        let a = hash_password("same").unwrap();
        let b = hash_password("same").unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn empty_password_is_not_hashed() {
        assert!(matches!(hash_password(""), Err(UsersError::EmptyPassword)));
    }

    #[test]
    fn dummy_hash_has_the_parameters_of_real_hashes() {
        let real = hash_password("x").unwrap();
        let (dummy_alg, dummy_ver, dummy_params) = params_of(DUMMY_HASH);
        let (real_alg, real_ver, real_params) = params_of(&real);
        assert_eq!(dummy_alg, real_alg);
        assert_eq!(dummy_ver, real_ver);
        assert_eq!(dummy_params, real_params);
        assert!(check_hash(DUMMY_HASH, None).is_ok());
    }

    #[test]
    fn verify_accepts_argon2i_and_argon2d() {
        for algorithm in [Algorithm::Argon2i, Algorithm::Argon2d] {
            let params = Params::new(1024, 1, 1, None).unwrap();
            let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
            let phc = Argon2::new(algorithm, Version::V0x13, params)
                .hash_password(b"pw", &salt)
                .unwrap()
                .to_string();
            assert!(
                phc.starts_with(&format!("${}$", algorithm.as_str())),
                "{phc}"
            );
            assert!(verify_password(&phc, "pw"));
            assert!(!verify_password(&phc, "pW"));
            assert!(check_hash(&phc, None).is_ok());
        }
    }

    #[test]
    fn verify_is_false_for_garbage() {
        assert!(!verify_password("", "x"));
        assert!(!verify_password("plain", "plain"));
        assert!(!verify_password("$argon2id$v=19$m=19456,t=2,p=1$", "x"));
    }

    /// `crypt("secret", "$2b$04$abcdefghijklmnopqrstuv")` from libxcrypt (Python's `crypt`).
    const BCRYPT_SECRET: &str = "$2b$04$abcdefghijklmnopqrstuu2r9OfJnfCsdneAXAGHnS4UpFFP8WIrW";
    /// `openssl passwd -6 -salt saltsalt secret`.
    const SHA512_SECRET: &str = "$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1";
    /// `crypt("secret", "$6$rounds=5000$abcdefgh$")` from glibc.
    const SHA512_ROUNDS_SECRET: &str = "$6$rounds=5000$abcdefgh$ltjgWl6579NluT/Vi1nwEvcil.G5Nbc4NiXZaNGStk8PSwGfQv72N2CKPPrVACtLtip/cZ/1GM/O6IND4WQhG.";

    #[test]
    fn bcrypt_and_sha512_crypt_verify() {
        for hash in [BCRYPT_SECRET, SHA512_SECRET, SHA512_ROUNDS_SECRET] {
            assert!(check_hash(hash, None).is_ok(), "{hash}");
            assert!(verify_password(hash, "secret"), "{hash}");
            assert!(!verify_password(hash, "Secret"), "{hash}");
            assert!(!verify_password(hash, ""), "{hash}");
        }
        assert_eq!(HashKind::of(BCRYPT_SECRET), Some(HashKind::Bcrypt));
        assert_eq!(HashKind::of(SHA512_SECRET), Some(HashKind::Sha512Crypt));
        for prefix in ["$2a$", "$2y$"] {
            let other = BCRYPT_SECRET.replacen("$2b$", prefix, 1);
            assert!(check_hash(&other, None).is_ok());
            assert!(verify_password(&other, "secret"), "{other}");
        }
        let made = bcrypt::hash_with_salt("pw", 5, *b"0123456789abcdef")
            .unwrap()
            .to_string();
        assert!(check_hash(&made, None).is_ok());
        assert!(verify_password(&made, "pw"));
    }

    #[test]
    fn broken_or_costly_migration_hashes_are_refused() {
        let bad = |h: &str| check_hash(h, Some("bob")).unwrap_err();
        assert!(bad(&BCRYPT_SECRET[..59]).contains("not a valid bcrypt hash"));
        assert!(bad(&BCRYPT_SECRET.replacen("$04$", "$31$", 1)).contains("cost 31"));
        assert!(bad(&BCRYPT_SECRET.replacen("$2b$", "$2x$", 1)).contains("\"2x\""));
        assert!(bad(&SHA512_SECRET[..90]).contains("not a valid sha512-crypt hash"));
        assert!(bad(&SHA512_ROUNDS_SECRET.replace("5000", "99999999")).contains("99999999 rounds"));
        assert!(bad(&SHA512_ROUNDS_SECRET.replace("5000", "10")).contains("10 rounds"));
        assert!(bad(&SHA512_ROUNDS_SECRET.replace("rounds=", "r=")).contains("not a valid"));
        assert!(!verify_password(&SHA512_SECRET[..90], "secret"));
        assert!(!verify_password(&BCRYPT_SECRET[..59], "secret"));
    }

    #[test]
    fn generated_passwords_are_random_letters_and_digits() {
        let a = generate_password().unwrap();
        let b = generate_password().unwrap();
        assert_eq!(a.len(), 20);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()), "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn check_hash_refuses_plain_text_without_echoing_it() {
        let message = check_hash("hunter2", Some("bob")).unwrap_err();
        assert!(message.contains("plain text"), "{message}");
        assert!(message.contains("s3sftp users passwd bob"), "{message}");
        assert!(message.contains(HASH_PASSWORD_COMMAND), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
    }

    #[test]
    fn check_hash_refuses_other_algorithms_and_costly_params() {
        let pbkdf2 = "$pbkdf2-sha256$i=1000$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo";
        let message = check_hash(pbkdf2, None).unwrap_err();
        assert!(
            message.contains("\"pbkdf2-sha256\" hash, which s3sftp does not accept"),
            "{message}"
        );
        assert!(check_hash("$1$abc$def", None)
            .unwrap_err()
            .contains("\"1\""));
        let costly = DUMMY_HASH.replace("m=19456", "m=194560000");
        assert!(check_hash(&costly, None)
            .unwrap_err()
            .contains("too costly"));
        let broken = "$argon2id$v=19$m=19456,t=2,p=1";
        assert!(check_hash(broken, None).is_err());
    }
}
