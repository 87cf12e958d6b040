//! Password hashes: making argon2id hashes for the users file and checking passwords against them.
//!
//! All functions here are plain, CPU-heavy sync functions (tens of milliseconds each); async
//! callers run them in `tokio::task::spawn_blocking`.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
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

/// A hash with exactly the parameters [`hash_password`] uses, of a random password nobody knows.
///
/// [`verify_password_or_dummy`] checks against it when there is no real hash to check, so that a
/// login attempt costs the same time whether or not the user exists. A unit test keeps its
/// parameters equal to the ones above.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$BCyhYHXMjnOY4JiHGGdEow$W9JvirPp80xD+gx63hoVWW2HFE5YHV0f22QC+4faZwo";

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

/// Whether `password` matches the argon2 PHC string `phc` (`$argon2id$`, `$argon2i$` or
/// `$argon2d$`, with the parameters and salt written in it). False on any error, including a
/// string that is not a valid hash. The final comparison is constant-time.
pub fn verify_password(phc: &str, password: &str) -> bool {
    match PasswordHash::new(phc) {
        // `Argon2::default()` only provides the code: algorithm, version, parameters and salt
        // all come from the PHC string.
        Ok(hash) => Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok(),
        Err(_) => false,
    }
}

/// Checks `password` for a login as `user`, spending one argon2 verification whatever happens.
///
/// True only for an existing, enabled user with a password that matches. When the user is
/// missing, disabled or has no password, it verifies against a fixed dummy hash with the same
/// parameters as [`hash_password`] and returns false, so the time taken does not reveal which
/// usernames exist.
pub fn verify_password_or_dummy(user: Option<&User>, password: &str) -> bool {
    match user {
        Some(User {
            enabled: true,
            password: Some(phc),
            ..
        }) => verify_password(phc, password),
        _ => {
            // The result is ignored: this call only spends the time a real check would.
            let _ = verify_password(DUMMY_HASH, password);
            false
        }
    }
}

/// Checks that a users-file `password` value is a usable argon2 hash; the error is the message
/// for the administrator. Never echoes the value: it may be a plain-text password.
pub(crate) fn check_hash(value: &str) -> Result<(), String> {
    let hint = format!("run `{HASH_PASSWORD_COMMAND}` and paste its output");
    if value.is_empty() {
        return Err(format!(
            "password is empty; remove the field (or set it to null) to turn password login off, or {hint}"
        ));
    }
    if !value.starts_with('$') {
        return Err(format!(
            "password looks like plain text; the users file stores only argon2 hashes: {hint}"
        ));
    }
    let hash = PasswordHash::new(value)
        .map_err(|e| format!("password is not a valid PHC hash string ({e}); {hint}"))?;
    let algorithm = hash.algorithm.as_str();
    if Algorithm::new(algorithm).is_err() {
        return Err(format!(
            "password is a {algorithm:?} hash; only argon2 hashes ($argon2id$, $argon2i$, $argon2d$) are supported: {hint}"
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
        assert!(check_hash(&phc).is_ok());
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
        assert!(check_hash(DUMMY_HASH).is_ok());
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
            assert!(check_hash(&phc).is_ok());
        }
    }

    #[test]
    fn verify_is_false_for_garbage() {
        assert!(!verify_password("", "x"));
        assert!(!verify_password("plain", "plain"));
        assert!(!verify_password("$argon2id$v=19$m=19456,t=2,p=1$", "x"));
    }

    #[test]
    fn check_hash_refuses_plain_text_without_echoing_it() {
        let message = check_hash("hunter2").unwrap_err();
        assert!(message.contains("plain text"), "{message}");
        assert!(message.contains(HASH_PASSWORD_COMMAND), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
    }

    #[test]
    fn check_hash_refuses_other_algorithms_and_costly_params() {
        let bcrypt_like = "$pbkdf2-sha256$i=1000$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo";
        assert!(check_hash(bcrypt_like).unwrap_err().contains("only argon2"));
        let costly = DUMMY_HASH.replace("m=19456", "m=194560000");
        assert!(check_hash(&costly).unwrap_err().contains("too costly"));
        let broken = "$argon2id$v=19$m=19456,t=2,p=1";
        assert!(check_hash(broken).is_err());
    }
}
