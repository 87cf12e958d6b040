//! The `s3sftp users ...` admin commands: what each does with the users file and what it prints.
//!
//! Conventions: standard output carries only what was asked for (the `list` table, `show`, a
//! generated password, a hash), so scripts can capture it; confirmations and notes go to
//! standard error. Expensive work (hashing a password) is done before the users-file lock is
//! taken, so a waiting admin waits for the write only.

use std::io::{self, BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use chrono::Utc;

use crate::cli::{KeyCommand, PasswordSource, UsersArgs, UsersCommand, UsersS3Args};
use crate::users::edit::{self, parse_key_source};
use crate::users::remote::{Guard, ObjectLocation, RemoteError, RemoteUsers};
use crate::users::sftpgo::{self, Import};
use crate::users::{
    generate_password, hash_password, update, NewUser, User, UsersError, UsersFile,
};

/// Why an admin command failed; printed once by `main`.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Anything about the users file: reading, rules, locking, writing, the change itself.
    #[error(transparent)]
    Users(#[from] UsersError),
    /// The password could not be read, or the two entries differ, or it is empty.
    #[error("{0}")]
    Password(String),
    /// Writing to standard output failed (a closed pipe, a full disk).
    #[error("cannot write the output: {0}")]
    Output(#[source] io::Error),
    /// The command line asks for nothing, or for something inconsistent.
    #[error("{0}")]
    Usage(String),
    /// The users object in the bucket: reading, rules, the conditional write.
    #[error(transparent)]
    Remote(Box<RemoteError>),
    /// The async runtime for the S3 requests could not start.
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] io::Error),
}

impl From<RemoteError> for AdminError {
    fn from(e: RemoteError) -> Self {
        AdminError::Remote(Box::new(e))
    }
}

/// Where the users live: a local file (locked, replaced atomically) or an object in the
/// bucket (written conditionally on the ETag read).
enum Target {
    File(PathBuf),
    Object(Box<ObjectTarget>),
}

/// The users object and the runtime its requests run on.
struct ObjectTarget {
    remote: RemoteUsers,
    runtime: tokio::runtime::Runtime,
}

impl Target {
    fn open(setting: &Path, s3: &UsersS3Args) -> Result<Target, AdminError> {
        let Some(location) = ObjectLocation::parse(setting)? else {
            return Ok(Target::File(setting.to_owned()));
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(AdminError::Runtime)?;
        let settings = s3.settings(&location.bucket);
        let remote = runtime.block_on(RemoteUsers::connect(&settings, location));
        Ok(Target::Object(Box::new(ObjectTarget { remote, runtime })))
    }

    /// The users (an empty file or object holds none); a missing one is an error.
    fn load(&self) -> Result<UsersFile, AdminError> {
        match self {
            Target::File(path) => Ok(UsersFile::load_empty_ok(path)?),
            Target::Object(object) => Ok(object.runtime.block_on(object.remote.load())?.0),
        }
    }

    /// The users, or none when the file or object does not exist yet.
    fn load_or_none(&self) -> Result<Vec<User>, AdminError> {
        match self {
            Target::File(path) => match UsersFile::load_empty_ok(path) {
                Ok(file) => Ok(file.into_users()),
                Err(UsersError::Read { source, .. })
                    if source.kind() == io::ErrorKind::NotFound =>
                {
                    Ok(Vec::new())
                }
                Err(e) => Err(e.into()),
            },
            Target::Object(object) => Ok(object
                .runtime
                .block_on(object.remote.read())?
                .map(|(file, _)| file.into_users())
                .unwrap_or_default()),
        }
    }

    /// [`update`] on a file, telling the admin when it waits for another command's lock;
    /// [`RemoteUsers::update`] on an object, warning when the store could not guard the
    /// write.
    fn change<T>(
        &self,
        create: bool,
        edit: impl FnOnce(&mut Vec<User>) -> Result<T, UsersError>,
    ) -> Result<T, AdminError> {
        match self {
            Target::File(file) => Ok(update(
                file,
                create,
                |lock| {
                    eprintln!(
                        "waiting for another `s3sftp users` command to finish (lock {})",
                        lock.display()
                    )
                },
                edit,
            )?),
            Target::Object(object) => {
                let (out, guard) = object
                    .runtime
                    .block_on(object.remote.update(create, edit))?;
                if guard == Guard::Unguarded {
                    eprintln!(
                        "warning: the store does not refuse a PutObject whose If-Match fails, so this \
                         write of {} was not guarded against a concurrent edit: run the `s3sftp users` \
                         commands from one place at a time (see docs/scale-out.md)",
                        object.remote.location()
                    );
                }
                Ok(out)
            }
        }
    }
}

/// Runs one `s3sftp users` command; `Ok(ExitCode::FAILURE)` when `check` found problems.
pub fn run(args: UsersArgs) -> Result<ExitCode, AdminError> {
    let file = args.users_file.as_path();
    // Commands that never read the users file named by --users-file reach no bucket.
    let elsewhere = matches!(
        &args.command,
        UsersCommand::HashPassword
            | UsersCommand::Check { file: Some(_) }
            | UsersCommand::ImportSftpgo { into: Some(_), .. }
    );
    let target = if elsewhere {
        Target::File(file.to_owned())
    } else {
        Target::open(file, &args.s3)?
    };
    match args.command {
        UsersCommand::Add(add) => {
            let keys = add
                .keys
                .iter()
                .map(|k| parse_key_source(k))
                .collect::<Result<Vec<_>, _>>()
                .map_err(UsersError::from)?
                .into_iter()
                .flatten()
                .collect();
            let (hash, generated) = new_password(&add.password, false)?;
            let settings = add.settings.to_settings(None);
            let new = NewUser {
                username: add.name.clone(),
                key_prefix: add.prefix,
                password: hash,
                public_keys: keys,
            };
            target.change(true, |users| {
                edit::add_user(users, new, &settings)?;
                if add.disabled {
                    edit::find_mut(users, &add.name)?.enabled = false;
                }
                Ok(())
            })?;
            if let Some(password) = generated {
                println_out(&password)?;
            }
            done(file, &format!("added user {:?}", add.name));
        }
        UsersCommand::Passwd {
            name,
            source,
            remove,
        } => {
            let (hash, generated) = if remove {
                (None, None)
            } else {
                // Fail fast on an unknown user before asking for a password.
                if target.load()?.get(&name).is_none() {
                    return Err(UsersError::from(edit::EditError::NoSuchUser { name }).into());
                }
                new_password(&source, true)?
            };
            target.change(false, |users| {
                edit::find_mut(users, &name)?.password = hash;
                Ok(())
            })?;
            if let Some(password) = generated {
                println_out(&password)?;
            }
            let what = if remove {
                "removed the password of"
            } else {
                "set the password of"
            };
            done(file, &format!("{what} user {name:?}"));
        }
        UsersCommand::Key(KeyCommand::Add { name, key }) => {
            let keys = parse_key_source(&key).map_err(UsersError::from)?;
            let count = keys.len();
            target.change(false, |users| {
                Ok(edit::add_keys(edit::find_mut(users, &name)?, keys)?)
            })?;
            let plural = if count == 1 { "key" } else { "keys" };
            done(file, &format!("added {count} {plural} to user {name:?}"));
        }
        UsersCommand::Key(KeyCommand::Rm { name, key }) => {
            let removed = target.change(false, |users| {
                Ok(edit::remove_key(edit::find_mut(users, &name)?, &key)?)
            })?;
            done(
                file,
                &format!("removed key {} from user {name:?}", removed.fingerprint()),
            );
        }
        UsersCommand::Disable { name } => set_enabled(&target, file, &name, false)?,
        UsersCommand::Enable { name } => set_enabled(&target, file, &name, true)?,
        UsersCommand::Rm { name } => {
            let removed = target.change(false, |users| Ok(edit::remove_user(users, &name)?))?;
            done(
                file,
                &format!(
                    "removed user {name:?}; its files under {:?} are still in the bucket",
                    removed.key_prefix
                ),
            );
        }
        UsersCommand::List { json } => {
            let users = target.load()?;
            let now = Utc::now();
            if json {
                let all: Vec<serde_json::Value> =
                    users.users().iter().map(|u| user_json(u, now)).collect();
                println_out(&serde_json::Value::Array(all).to_string())?;
            } else {
                print_out(&list_table(users.users(), now))?;
            }
            if users.users().is_empty() {
                eprintln!("{}: no users", file.display());
            }
        }
        UsersCommand::Show { name, json } => {
            let users = target.load()?;
            let user = users
                .get(&name)
                .ok_or(edit::EditError::NoSuchUser { name })
                .map_err(UsersError::from)?;
            if json {
                println_out(&user_json(user, Utc::now()).to_string())?;
            } else {
                print_out(&show(user, Utc::now()))?;
            }
        }
        UsersCommand::Set {
            name,
            prefix,
            settings,
        } => {
            let settings = settings.to_settings(prefix);
            if settings.is_empty() {
                return Err(AdminError::Usage(
                    "nothing to change; give --prefix, --permission, --allowed-ip, --max-sessions, --expires-at or one of their --no-/--unset- forms (see `s3sftp users set --help`)".into(),
                ));
            }
            target.change(false, |users| {
                Ok(settings.apply(edit::find_mut(users, &name)?)?)
            })?;
            done(file, &format!("updated user {name:?}"));
        }
        UsersCommand::Check { file: given } => {
            let path = given.as_deref().unwrap_or(file);
            let loaded = match &given {
                Some(path) => UsersFile::load_empty_ok(path).map_err(AdminError::from),
                None => target.load(),
            };
            return match loaded {
                Ok(users) => {
                    println_out(&format!(
                        "{}: {} users, valid",
                        path.display(),
                        users.users().len()
                    ))?;
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("{e}");
                    Ok(ExitCode::FAILURE)
                }
            };
        }
        UsersCommand::HashPassword => {
            let password = read_password(false)?;
            println_out(&hash_password(&password)?)?;
        }
        UsersCommand::ImportSftpgo {
            dump,
            into,
            dry_run,
        } => match into {
            Some(into) => {
                let into_target = Target::open(&into, &args.s3)?;
                import_sftpgo(&dump, &into_target, &into, dry_run)?;
            }
            None => import_sftpgo(&dump, &target, file, dry_run)?,
        },
    }
    Ok(ExitCode::SUCCESS)
}

fn set_enabled(target: &Target, file: &Path, name: &str, enabled: bool) -> Result<(), AdminError> {
    target.change(false, |users| {
        edit::find_mut(users, name)?.enabled = enabled;
        Ok(())
    })?;
    let what = if enabled { "enabled" } else { "disabled" };
    done(file, &format!("{what} user {name:?}"));
    Ok(())
}

fn done(file: &Path, what: &str) {
    eprintln!("{what} in {}", file.display());
}

fn print_out(text: &str) -> Result<(), AdminError> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(AdminError::Output)
}

fn println_out(line: &str) -> Result<(), AdminError> {
    print_out(&format!("{line}\n"))
}

/// The hash of a new password, and the password itself when it was generated (to print it).
/// `prompt_by_default`: ask on the terminal when no source flag is given (`passwd`); without
/// it (`add`), no flag means no password.
fn new_password(
    source: &PasswordSource,
    prompt_by_default: bool,
) -> Result<(Option<String>, Option<String>), AdminError> {
    if source.generate_password {
        let password = generate_password()?;
        return Ok((Some(hash_password(&password)?), Some(password)));
    }
    let password = if source.password_stdin {
        read_password(true)?
    } else if source.ask_password || prompt_by_default {
        if !io::stdin().is_terminal() {
            return Err(AdminError::Password(
                "standard input is not a terminal: give --password-stdin to read the password from it, or --generate-password".into(),
            ));
        }
        read_password(false)?
    } else {
        return Ok((None, None));
    };
    Ok((Some(hash_password(&password)?), None))
}

/// One password: prompted twice without echo on a terminal (unless `from_stdin`), else one
/// line of standard input without its line ending.
fn read_password(from_stdin: bool) -> Result<String, AdminError> {
    let stdin = io::stdin();
    let password = if !from_stdin && stdin.is_terminal() {
        let ask = |prompt: &str| {
            rpassword::prompt_password(prompt)
                .map_err(|e| AdminError::Password(format!("cannot read the password: {e}")))
        };
        let first = ask("Password: ")?;
        let again = ask("Again: ")?;
        if first != again {
            return Err(AdminError::Password("the two passwords differ".into()));
        }
        first
    } else {
        let mut line = String::new();
        stdin.lock().read_line(&mut line).map_err(|e| {
            AdminError::Password(format!("cannot read the password from stdin: {e}"))
        })?;
        line.trim_end_matches(['\n', '\r']).to_owned()
    };
    if password.is_empty() {
        return Err(AdminError::Password("empty password".into()));
    }
    Ok(password)
}

fn import_sftpgo(
    dump: &Path,
    into: &Target,
    target: &Path,
    dry_run: bool,
) -> Result<(), AdminError> {
    let import = if dry_run {
        let existing = into.load_or_none()?;
        let import = sftpgo::import_file(dump, &existing)?;
        let mut all = existing;
        all.extend(import.users.iter().cloned());
        if let Err(UsersError::Invalid { problems, .. }) = UsersFile::from_users(&all) {
            report_import(&import);
            return Err(UsersError::Rejected {
                path: target.to_owned(),
                problems,
            }
            .into());
        }
        import
    } else {
        into.change(true, |users| {
            let import = sftpgo::import_file(dump, users)?;
            users.extend(import.users.iter().cloned());
            Ok(import)
        })?
    };
    report_import(&import);
    let names: Vec<&str> = import.users.iter().map(|u| u.username.as_str()).collect();
    let verb = if dry_run { "would import" } else { "imported" };
    eprintln!(
        "{verb} {} users into {} ({}), skipped {}",
        names.len(),
        target.display(),
        if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        },
        import.skipped.len()
    );
    if dry_run {
        print_out(&list_table(&import.users, Utc::now()))?;
    }
    Ok(())
}

fn report_import(import: &Import) {
    for (name, reason) in &import.skipped {
        eprintln!("skipped {name:?}: {reason}");
    }
    for (name, note) in &import.notes {
        eprintln!("{name:?}: {note}");
    }
}

/// How a user may log in: `password`, `publickey`, both joined by a comma.
fn auth_methods(user: &User) -> String {
    let mut methods = Vec::new();
    if user.password.is_some() {
        methods.push("password");
    }
    if !user.public_keys.is_empty() {
        methods.push("publickey");
    }
    methods.join(",")
}

fn enabled_word(user: &User, now: chrono::DateTime<Utc>) -> &'static str {
    match (user.enabled, user.is_expired(now)) {
        (false, _) => "no",
        (true, true) => "expired",
        (true, false) => "yes",
    }
}

/// The `users list` table: a header and one row per user, columns aligned with spaces.
pub fn list_table(users: &[User], now: chrono::DateTime<Utc>) -> String {
    let mut rows = vec![[
        "NAME".to_owned(),
        "ENABLED".to_owned(),
        "PREFIX".to_owned(),
        "AUTH".to_owned(),
        "KEYS".to_owned(),
    ]];
    for user in users {
        let keys: Vec<String> = user.public_keys.iter().map(|k| k.fingerprint()).collect();
        rows.push([
            user.username.clone(),
            enabled_word(user, now).to_owned(),
            user.key_prefix.clone(),
            auth_methods(user),
            if keys.is_empty() {
                "-".to_owned()
            } else {
                keys.join(",")
            },
        ]);
    }
    let mut widths = [0usize; 5];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 < row.len() {
                line.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            } else {
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A user for `show --json` and `list --json`: the users file's fields (the password as its
/// hash kind only, keys as fingerprint, algorithm and comment), plus `expired` and
/// `auth_methods`, so scripts need not work those out.
pub fn user_json(user: &User, now: chrono::DateTime<Utc>) -> serde_json::Value {
    let keys: Vec<serde_json::Value> = user
        .public_keys
        .iter()
        .map(|k| {
            serde_json::json!({
                "fingerprint": k.fingerprint(),
                "algorithm": k.algorithm(),
                "comment": k.comment(),
            })
        })
        .collect();
    let permissions: serde_json::Map<String, serde_json::Value> = user
        .permissions
        .entries()
        .map(|(path, set)| (path.to_owned(), serde_json::json!(set.names())))
        .collect();
    let methods = auth_methods(user);
    let methods: Vec<&str> = methods.split(',').filter(|m| !m.is_empty()).collect();
    serde_json::json!({
        "username": user.username,
        "enabled": user.enabled,
        "expired": user.is_expired(now),
        "key_prefix": user.key_prefix,
        "password": user.password_kind().map(|kind| kind.name()),
        "auth_methods": methods,
        "public_keys": keys,
        "permissions": permissions,
        "allowed_ips": user.allowed_ips.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "max_sessions": user.max_sessions,
        "expires_at": user.expires_at.map(|at| at.to_rfc3339()),
    })
}

/// The `users show` text: every field, the password as its kind only.
pub fn show(user: &User, now: chrono::DateTime<Utc>) -> String {
    const PAD: &str = "              ";
    let mut out = String::new();
    let mut field = |name: &str, value: &str| {
        out.push_str(&format!("{:<14}{value}\n", format!("{name}:")));
    };
    field("username", &user.username);
    field("enabled", enabled_word(user, now));
    field("key_prefix", &user.key_prefix);
    field(
        "password",
        &match user.password_kind() {
            Some(kind) => format!("set ({kind} hash)"),
            None => "none (no password login)".to_owned(),
        },
    );
    let keys: Vec<String> = user
        .public_keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let comment = k.comment();
            format!(
                "{}. {} {}{}",
                i + 1,
                k.fingerprint(),
                k.algorithm(),
                if comment.is_empty() {
                    String::new()
                } else {
                    format!(" {comment}")
                }
            )
        })
        .collect();
    field(
        "public_keys",
        &if keys.is_empty() {
            "none".to_owned()
        } else {
            keys.join(&format!("\n{PAD}"))
        },
    );
    let width = user
        .permissions
        .entries()
        .map(|(p, _)| p.len())
        .max()
        .unwrap_or(1);
    let perms: Vec<String> = user
        .permissions
        .entries()
        .map(|(path, set)| format!("{path:<width$}  {set}"))
        .collect();
    field("permissions", &perms.join(&format!("\n{PAD}")));
    field(
        "allowed_ips",
        &if user.allowed_ips.is_empty() {
            "any".to_owned()
        } else {
            user.allowed_ips
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        },
    );
    field(
        "max_sessions",
        &user
            .max_sessions
            .map_or("no limit".to_owned(), |n| n.to_string()),
    );
    field(
        "expires_at",
        &match user.expires_at {
            None => "never".to_owned(),
            Some(at) => format!(
                "{}{}",
                at.to_rfc3339(),
                if user.is_expired(now) {
                    " (expired)"
                } else {
                    ""
                }
            ),
        },
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> Vec<User> {
        let json = r#"{"users": [
            {"username": "demo", "password": "$argon2id$v=19$m=19456,t=2,p=1$RiPd4CqIXq3Z1WILePKMyw$m9ZmJ9lopPbVYv0zlAscUQCWflqKmefPI97jjGguHck", "key_prefix": "users/demo/"},
            {"username": "alice-long-name", "enabled": false, "public_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIFbu/cWZHRfrWTCIft+VBlVnuhBS1uf9hTja8TpqBxW alice@laptop"],
             "key_prefix": "a/", "permissions": {"/": ["list"], "/inbox": ["upload"]}, "allowed_ips": ["10.0.0.0/8"], "max_sessions": 2, "expires_at": "2001-01-01T00:00:00Z"}
        ]}"#;
        UsersFile::parse(json).unwrap().into_users()
    }

    #[test]
    fn list_is_aligned() {
        let table = list_table(&users(), Utc::now());
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "NAME             ENABLED  PREFIX       AUTH       KEYS"
        );
        assert_eq!(
            lines[1],
            "demo             yes      users/demo/  password   -"
        );
        assert_eq!(
            lines[2],
            "alice-long-name  no       a/           publickey  SHA256:f7BXZ/Pc78Xk0UiEJFSVXhYGjkt71GpzHV61V4SMOqw"
        );
    }

    #[test]
    fn json_has_every_field_and_no_hash() {
        let users = users();
        let demo = user_json(&users[0], Utc::now());
        assert_eq!(demo["username"], "demo");
        assert_eq!(demo["enabled"], true);
        assert_eq!(demo["expired"], false);
        assert_eq!(demo["password"], "argon2id");
        assert_eq!(demo["auth_methods"], serde_json::json!(["password"]));
        assert_eq!(demo["permissions"], serde_json::json!({"/": ["*"]}));
        assert_eq!(demo["max_sessions"], serde_json::Value::Null);
        assert!(!demo.to_string().contains("$argon2"));
        let alice = user_json(&users[1], Utc::now());
        assert_eq!(alice["enabled"], false);
        assert_eq!(alice["expired"], true);
        assert_eq!(alice["password"], serde_json::Value::Null);
        assert_eq!(
            alice["public_keys"][0]["fingerprint"],
            "SHA256:f7BXZ/Pc78Xk0UiEJFSVXhYGjkt71GpzHV61V4SMOqw"
        );
        assert_eq!(alice["public_keys"][0]["comment"], "alice@laptop");
        assert_eq!(
            alice["permissions"],
            serde_json::json!({"/": ["list"], "/inbox": ["upload"]})
        );
        assert_eq!(alice["allowed_ips"], serde_json::json!(["10.0.0.0/8"]));
        assert_eq!(alice["max_sessions"], 2);
        assert_eq!(alice["expires_at"], "2001-01-01T00:00:00+00:00");
    }

    #[test]
    fn show_names_the_hash_kind_only() {
        let users = users();
        let demo = show(&users[0], Utc::now());
        assert!(
            demo.contains("password:     set (argon2id hash)\n"),
            "{demo}"
        );
        assert!(!demo.contains("$argon2"), "{demo}");
        assert!(demo.contains("permissions:  /  *\n"), "{demo}");
        let alice = show(&users[1], Utc::now());
        assert!(
            alice.contains("permissions:  /       list\n              /inbox  upload\n"),
            "{alice}"
        );
        assert!(
            alice.contains("expires_at:   2001-01-01T00:00:00+00:00 (expired)"),
            "{alice}"
        );
        assert!(alice.contains("1. SHA256:f7BXZ"), "{alice}");
        assert!(
            alice.contains("allowed_ips:  10.0.0.0/8\nmax_sessions: 2\n"),
            "{alice}"
        );
    }
}
