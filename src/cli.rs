//! The command line: `serve` and the `users` admin commands. Every `serve` flag has an
//! `S3SFTP_*` environment variable, and so has the users file. Errors about a value name the
//! variable when that is where the value came from.

use std::error::Error as _;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, FixedOffset};
use clap::builder::BoolishValueParser;
use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{ArgAction, ArgMatches, Args, CommandFactory, Parser, Subcommand};
use ipnet::IpNet;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::EnvFilter;

use crate::config_file::{self, FileArguments, FileOrigins};
use crate::storage::client::ChecksumMode;
use crate::storage::policy::PolicyScope;
use crate::storage::signing::PayloadSigning;
use crate::storage::{DirMarkers, StorageClass, UploadChecksum};
use crate::units;
use crate::users::{self, edit, PermissionSet, Settings};

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Parser)]
#[command(
    name = "s3sftp",
    version,
    about = "An SFTP and SCP server whose storage is S3"
)]
pub struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `s3sftp=debug`.
    #[arg(
        long,
        global = true,
        env = "S3SFTP_LOG",
        default_value = "info",
        value_parser = log_filter
    )]
    pub log: String,
    /// Log format: `text` (one readable line per event) or `json` (one JSON object per
    /// line, for log shippers; see docs/operations.md for the audit events' fields).
    #[arg(
        long,
        global = true,
        env = "S3SFTP_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The command line of this process. Exits with clap's message when it is wrong, except
    /// that a bad value taken from an `S3SFTP_*` variable is reported under the variable's
    /// name: the admin looking for `--listen` on the command line would not find it.
    pub fn from_env_and_args() -> Cli {
        let argv: Vec<OsString> = std::env::args_os().collect();
        Cli::parse_with_config(&argv).unwrap_or_else(|e| {
            // `serve --check` fails with 1, like the mistakes it finds itself.
            let checking = argv.iter().skip(1).any(|a| a == "--check");
            if checking && e.use_stderr() {
                let _ = e.print();
                std::process::exit(1);
            }
            e.exit()
        })
    }

    /// Parses `argv` (program name first) and, for `serve --config FILE`, adds the file's
    /// settings that neither the command line nor the environment gave.
    pub fn parse_with_config(argv: &[OsString]) -> Result<Cli, clap::Error> {
        // A first look, for the file and for which settings are given: without the checks
        // that one setting requires another, which the file may provide.
        let matches = Cli::command()
            .mut_subcommand("serve", |serve| {
                serve.mut_args(|a| a.requires(clap::builder::Resettable::<clap::Id>::Reset))
            })
            .try_get_matches_from(argv)
            .map_err(|e| name_the_variable(e, argv))?;
        let file = match matches.subcommand() {
            Some(("serve", serve)) => match serve.get_one::<PathBuf>("config") {
                Some(path) => file_arguments(path, &matches, serve)?,
                None => FileArguments::default(),
            },
            _ => FileArguments::default(),
        };
        let mut full = argv.to_vec();
        full.extend(file.args.iter().cloned());
        let mut cli = Cli::try_parse_from(&full).map_err(|e| {
            name_the_key(e, &file.origins).unwrap_or_else(|e| name_the_variable(e, &full))
        })?;
        if let Command::Serve(args) = &mut cli.command {
            args.origins = file.origins;
        }
        Ok(cli)
    }
}

/// The arguments `serve --config path` adds: the settings of `serve` and the global ones,
/// each looked up in the matches that hold it.
fn file_arguments(
    path: &std::path::Path,
    root: &ArgMatches,
    serve: &ArgMatches,
) -> Result<FileArguments, clap::Error> {
    let command = Cli::command();
    let mut settings: Vec<(&clap::Arg, &ArgMatches)> = command
        .get_arguments()
        .filter(|a| a.is_global_set())
        .map(|a| (a, root))
        .collect();
    if let Some(sub) = command.find_subcommand("serve") {
        settings.extend(sub.get_arguments().map(|a| (a, serve)));
    }
    settings.retain(|(a, _)| a.get_long().is_some_and(config_file::is_setting));
    config_file::arguments(path, &settings)
        .map_err(|message| Cli::command().error(ErrorKind::ValueValidation, message))
}

/// `err` reworded to name the config file key its bad value came from, if it did; else `err`
/// back.
fn name_the_key(err: clap::Error, origins: &FileOrigins) -> Result<clap::Error, clap::Error> {
    if !matches!(
        err.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        return Err(err);
    }
    let Some(ContextValue::String(arg)) = err.get(ContextKind::InvalidArg) else {
        return Err(err);
    };
    let long = arg.split([' ', '=']).next().unwrap_or_default().to_owned();
    let Some(named) = origins.describe(&long) else {
        return Err(err);
    };
    let (value, reason) = value_and_reason(&err);
    Ok(Cli::command().error(
        ErrorKind::ValueValidation,
        format!("{named}: invalid value {value:?}: {reason}"),
    ))
}

/// The bad value of a clap value error, and why it was refused.
fn value_and_reason(err: &clap::Error) -> (String, String) {
    let value = match err.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(value)) => value.clone(),
        _ => String::new(),
    };
    let reason = match (err.source(), err.get(ContextKind::ValidValue)) {
        (Some(source), _) => source.to_string(),
        (None, Some(ContextValue::Strings(valid))) => {
            format!("possible values: {}", valid.join(", "))
        }
        _ => "not a valid value".to_owned(),
    };
    (value, reason)
}

/// `err` reworded to name the environment variable its bad value came from, if it did.
fn name_the_variable(err: clap::Error, argv: &[OsString]) -> clap::Error {
    if err.kind() == ErrorKind::MissingRequiredArgument {
        return name_missing_variables(err);
    }
    if !matches!(
        err.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        return err;
    }
    let Some(ContextValue::String(arg)) = err.get(ContextKind::InvalidArg) else {
        return err;
    };
    let long = arg.split([' ', '=']).next().unwrap_or_default();
    let Some(env) = variable_of(long) else {
        return err;
    };
    if given_in(argv, long) || std::env::var_os(&env).is_none() {
        return err;
    }
    let (value, reason) = value_and_reason(&err);
    Cli::command().error(
        ErrorKind::ValueValidation,
        format!("invalid value {value:?} in the environment variable {env} (the variable of {long}): {reason}"),
    )
}

/// A missing required setting (`--s3-secret-key`, required by an access key that may have come
/// from the environment) named with its variable too, since either one provides it.
fn name_missing_variables(err: clap::Error) -> clap::Error {
    let Some(ContextValue::Strings(missing)) = err.get(ContextKind::InvalidArg) else {
        return err;
    };
    let named: Vec<String> = missing
        .iter()
        .map(|arg| {
            let long = arg.split([' ', '=']).next().unwrap_or_default();
            match variable_of(long) {
                Some(env) => format!("{long} (or the environment variable {env})"),
                None => arg.clone(),
            }
        })
        .collect();
    Cli::command().error(
        ErrorKind::MissingRequiredArgument,
        format!("missing setting: {}", named.join(", ")),
    )
}

/// Whether `long` (`--listen`) is on the command line `argv`.
fn given_in(argv: &[OsString], long: &str) -> bool {
    argv.iter().skip(1).any(|arg| {
        let arg = arg.to_string_lossy();
        arg == long
            || arg
                .strip_prefix(long)
                .is_some_and(|rest| rest.starts_with('='))
    })
}

/// The environment variable of the flag `long` (`--listen` → `S3SFTP_LISTEN`), in any
/// subcommand.
fn variable_of(long: &str) -> Option<String> {
    fn find(cmd: &clap::Command, name: &str) -> Option<String> {
        cmd.get_arguments()
            .find(|a| a.get_long() == Some(name))
            .and_then(|a| a.get_env())
            .map(|env| env.to_string_lossy().into_owned())
            .or_else(|| cmd.get_subcommands().find_map(|sub| find(sub, name)))
    }
    find(&Cli::command(), long.strip_prefix("--")?)
}

/// How the admin set the flag `flag` (`--part-size-mib`): the flag itself when it is on this
/// process's command line or has no variable, else its environment variable when that is set.
/// For errors about a setting, so they name what the admin actually wrote.
pub fn setting_name(flag: &str) -> String {
    let argv: Vec<OsString> = std::env::args_os().collect();
    match variable_of(flag) {
        Some(env) if !given_in(&argv, flag) && std::env::var_os(&env).is_some() => env,
        _ => flag.to_owned(),
    }
}

/// Checks a `--log` filter. EnvFilter takes a bare word that is not a level as a target to
/// log at every level, so a typo (`degub`, `warning`) would silence the server without a
/// word; here a bare word must be a level, and `target=level` says what it means.
pub fn log_filter(text: &str) -> Result<String, String> {
    for directive in text.split(',').map(str::trim) {
        if directive.is_empty() || directive.contains(['=', '[']) {
            continue;
        }
        if directive.parse::<LevelFilter>().is_err() {
            return Err(format!(
                "{directive:?} is not a level (error, warn, info, debug, trace or off); \
                 to log a module at every level write {directive}=trace"
            ));
        }
    }
    EnvFilter::try_new(text).map_err(|e| format!("not a valid log filter: {e}"))?;
    Ok(text.to_owned())
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    Serve(Box<ServeArgs>),
    /// Manage the users file (see docs/users.md).
    Users(UsersArgs),
    /// Print the least-privilege IAM policy (JSON) for the bucket and the users' prefixes
    /// (see docs/s3-providers.md).
    Policy(PolicyArgs),
    /// List the running server's logged-in sessions (over its control socket).
    Sessions(SessionsArgs),
    /// Disconnect a user's sessions, or one session by its id, on the running server.
    Kick(KickArgs),
    /// List the sources the running server has banned after failed logins.
    Bans(BansArgs),
    /// Lift the running server's ban on an address (an IPv6 address lifts its /64).
    Unban(UnbanArgs),
}

/// Which running server an admin command talks to (see docs/operations.md).
#[derive(Debug, Args)]
pub struct ControlArgs {
    /// The running server's state directory: its control socket is `control.sock` there.
    #[arg(long, env = "S3SFTP_STATE_DIR", default_value = "state")]
    pub state_dir: PathBuf,
}

/// `s3sftp sessions`.
#[derive(Debug, Args)]
pub struct SessionsArgs {
    #[command(flatten)]
    pub control: ControlArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `s3sftp kick`.
#[derive(Debug, Args)]
pub struct KickArgs {
    #[command(flatten)]
    pub control: ControlArgs,
    /// A user name (all their sessions), or a session id (digits only) from `s3sftp sessions`.
    #[arg(value_name = "USER|SESSION")]
    pub target: String,
    /// TARGET is a user name even if it is all digits.
    #[arg(long)]
    pub user: bool,
}

/// `s3sftp bans`.
#[derive(Debug, Args)]
pub struct BansArgs {
    #[command(flatten)]
    pub control: ControlArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `s3sftp unban`.
#[derive(Debug, Args)]
pub struct UnbanArgs {
    #[command(flatten)]
    pub control: ControlArgs,
    /// The banned IP address (or any address of a banned IPv6 /64).
    #[arg(value_name = "ADDR")]
    pub address: String,
}

/// `s3sftp policy`: what the IAM policy is made from.
#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// The S3 bucket.
    #[arg(long, env = "S3SFTP_BUCKET")]
    pub bucket: String,
    /// The users file whose prefixes the policy grants (JSON; see docs/users.md).
    #[arg(long, env = "S3SFTP_USERS_FILE", default_value = "users.json")]
    pub users_file: PathBuf,
    /// The KMS key objects are encrypted with (SSE-KMS): given as an ARN, the policy
    /// grants kms:GenerateDataKey and kms:Decrypt on it.
    #[arg(long, env = "S3SFTP_S3_SSE_KMS_KEY_ID", value_name = "KEY_ARN")]
    pub s3_sse_kms_key_id: Option<String>,
    /// The ARN partition (aws-cn in China, aws-us-gov in GovCloud).
    #[arg(long, default_value = "aws")]
    pub partition: String,
    /// The servers' --system-prefix: the policy grants the gateways their own objects there.
    #[arg(long, env = "S3SFTP_SYSTEM_PREFIX", value_name = "PREFIX", default_value = crate::storage::intent::DEFAULT_SYSTEM_PREFIX)]
    pub system_prefix: String,
}

impl PolicyArgs {
    /// The policy's scope: the bucket, and the prefixes of every user in the users file
    /// (disabled ones too: they may be enabled again without a policy change).
    pub fn scope(&self) -> Result<PolicyScope, users::UsersError> {
        let file = users::UsersFile::load(&self.users_file)?;
        Ok(PolicyScope {
            bucket: self.bucket.clone(),
            prefixes: file.users().iter().map(|u| u.key_prefix.clone()).collect(),
            kms_key_arn: self
                .s3_sse_kms_key_id
                .clone()
                .filter(|k| k.starts_with("arn:")),
            partition: self.partition.clone(),
            system_prefix: crate::storage::intent::normalize_system_prefix(&self.system_prefix),
        })
    }
}

/// `s3sftp users ...`: the admin commands on the users file.
///
/// Commands that change the file take a lock, check the result with the server's own rules and
/// replace the file atomically. Passwords are never taken from the command line.
#[derive(Debug, Args)]
pub struct UsersArgs {
    /// The users file (JSON; see docs/users.md), or s3://BUCKET/KEY for the users object
    /// the gateways share (edited with conditional writes; see docs/scale-out.md).
    #[arg(
        long,
        global = true,
        env = "S3SFTP_USERS_FILE",
        default_value = "users.json"
    )]
    pub users_file: PathBuf,
    #[command(flatten)]
    pub s3: UsersS3Args,
    #[command(subcommand)]
    pub command: UsersCommand,
}

/// How `s3sftp users` reaches the bucket of an s3:// users file: the same settings (and
/// variables) as `serve`'s; the rest from the standard AWS chain.
#[derive(Debug, Args)]
pub struct UsersS3Args {
    /// S3 endpoint URL for MinIO, Garage, Ceph and others; omit for AWS.
    #[arg(long, global = true, env = "S3SFTP_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// S3 region; default from the AWS chain, else us-east-1.
    #[arg(long, global = true, env = "S3SFTP_S3_REGION")]
    pub s3_region: Option<String>,
    /// Path-style addressing (endpoint/bucket/key), needed by most self-hosted servers.
    #[arg(long, global = true, env = "S3SFTP_S3_PATH_STYLE", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub s3_path_style: bool,
    /// Access key id; without it the standard AWS credential chain is used.
    #[arg(long, global = true, env = "S3SFTP_S3_ACCESS_KEY")]
    pub s3_access_key: Option<String>,
    /// Secret access key (prefer the environment variable to the flag).
    #[arg(
        long,
        global = true,
        env = "S3SFTP_S3_SECRET_KEY",
        hide_env_values = true
    )]
    pub s3_secret_key: Option<String>,
}

impl UsersS3Args {
    /// Settings for the bucket `bucket`: few quick attempts, an admin is waiting.
    pub fn settings(&self, bucket: &str) -> crate::storage::client::S3Settings {
        crate::storage::client::S3Settings {
            bucket: bucket.to_string(),
            endpoint: self.s3_endpoint.clone(),
            region: self.s3_region.clone(),
            path_style: self.s3_path_style,
            credentials: self.s3_access_key.clone().zip(self.s3_secret_key.clone()),
            checksum: None,
            payload_signing: PayloadSigning::default(),
            max_attempts: 3,
            attempt_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Add a user (creates the users file if there is none).
    Add(AddArgs),
    /// Set a user's password: asked twice on a terminal, or one line of stdin with
    /// --password-stdin.
    Passwd {
        /// The user.
        name: String,
        #[command(flatten)]
        source: PasswordSource,
        /// Remove the password instead (the user then logs in with keys only).
        #[arg(long, conflicts_with_all = ["password_stdin", "generate_password"])]
        remove: bool,
    },
    /// Add or remove a user's public keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Refuse every login of a user, keeping its entry.
    Disable {
        /// The user.
        name: String,
    },
    /// Let a disabled user log in again.
    Enable {
        /// The user.
        name: String,
    },
    /// Remove a user (its files in the bucket stay).
    #[command(alias = "remove")]
    Rm {
        /// The user.
        name: String,
    },
    /// List the users: name, enabled, prefix, login methods, key fingerprints.
    #[command(alias = "ls")]
    List {
        /// Print a JSON array of the users, each as `show --json` prints it.
        #[arg(long)]
        json: bool,
    },
    /// Show everything about one user (the password hash itself is never shown).
    Show {
        /// The user.
        name: String,
        /// Print a JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Change a user's prefix, permissions and limits.
    Set {
        /// The user.
        name: String,
        /// A new S3 key prefix (the user's files are not moved).
        #[arg(long, value_name = "PREFIX")]
        prefix: Option<String>,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Validate a users file and list every problem (exit 1 if there is any).
    Check {
        /// The users file [default: --users-file].
        file: Option<PathBuf>,
    },
    /// Read a password (from the terminal, or one line of stdin) and print its argon2id hash
    /// for the users file's `password` field.
    HashPassword,
    /// Import the S3 users of an SFTPGo backup (`sftpgo dumpdata`).
    ImportSftpgo {
        /// The SFTPGo dump (JSON).
        dump: PathBuf,
        /// The users file to add them to [default: --users-file].
        #[arg(long, value_name = "FILE")]
        into: Option<PathBuf>,
        /// Show what would be imported without writing anything.
        #[arg(long)]
        dry_run: bool,
    },
}

/// `s3sftp users key ...`.
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Add public keys: a key line (`ssh-ed25519 AAAA... comment`) or a file of them.
    Add {
        /// The user.
        name: String,
        /// A public key line, or a .pub / authorized_keys-style file.
        #[arg(value_name = "LINE_OR_FILE")]
        key: String,
    },
    /// Remove a public key, by its number in `users show` or its SHA256: fingerprint.
    #[command(alias = "remove")]
    Rm {
        /// The user.
        name: String,
        /// The key's number (from 1) or fingerprint.
        #[arg(value_name = "FINGERPRINT_OR_INDEX")]
        key: String,
    },
}

/// `s3sftp users add` flags.
#[derive(Debug, Args)]
pub struct AddArgs {
    /// The login name: 1-64 ASCII letters, digits and . _ - @.
    pub name: String,
    /// The S3 key prefix that is the user's root directory, e.g. users/alice/.
    #[arg(long, value_name = "PREFIX")]
    pub prefix: String,
    #[command(flatten)]
    pub password: PasswordSource,
    /// A public key line, or a file of them; repeat for more.
    #[arg(long = "key", value_name = "LINE_OR_FILE")]
    pub keys: Vec<String>,
    /// Add the user disabled.
    #[arg(long)]
    pub disabled: bool,
    #[command(flatten)]
    pub settings: SettingsArgs,
}

/// Where a new password comes from. Never from the command line, where other local users
/// could read it in the process list.
#[derive(Debug, Args)]
pub struct PasswordSource {
    /// Read the password from one line of standard input.
    #[arg(long)]
    pub password_stdin: bool,
    /// Generate a random password and print it (once) on standard output.
    #[arg(long, conflicts_with = "password_stdin")]
    pub generate_password: bool,
    /// Ask for the password on the terminal (twice) [default for `passwd`].
    #[arg(long, conflicts_with_all = ["password_stdin", "generate_password"])]
    pub ask_password: bool,
}

/// Per-user permissions and limits, for `users add` and `users set`.
#[derive(Debug, Args)]
pub struct SettingsArgs {
    /// Set what the user may do in a subtree: PATH=PERM,PERM... with PERM one of list,
    /// download, upload, overwrite, delete, rename, create_dirs or *; `PATH=` allows nothing.
    /// Repeat for more paths.
    #[arg(long, value_name = "PATH=PERMS", value_parser = edit::parse_permission_arg)]
    pub permission: Vec<(String, PermissionSet)>,
    /// Remove the permissions entry of a path (its subtree then follows its parent).
    #[arg(long, value_name = "PATH")]
    pub unset_permission: Vec<String>,
    /// Go back to the default permissions (everything allowed) before the other changes.
    #[arg(long)]
    pub reset_permissions: bool,
    /// Allow logins only from this network (CIDR, e.g. 192.0.2.0/24); repeat for more.
    /// Replaces the current list.
    #[arg(long = "allowed-ip", value_name = "CIDR", value_parser = users::parse_cidr)]
    pub allowed_ips: Vec<IpNet>,
    /// Allow logins from any address (clears the allowed-ip list).
    #[arg(long, conflicts_with = "allowed_ips")]
    pub any_ip: bool,
    /// Allow at most N sessions at once.
    #[arg(long, value_name = "N", value_parser = edit::parse_max_sessions_arg)]
    pub max_sessions: Option<u32>,
    /// Remove the session limit.
    #[arg(long, conflicts_with = "max_sessions")]
    pub no_max_sessions: bool,
    /// Refuse logins from this time on (RFC 3339, e.g. 2026-12-31T23:59:59Z).
    #[arg(long, value_name = "TIME", value_parser = users::parse_expiry)]
    pub expires_at: Option<DateTime<FixedOffset>>,
    /// Remove the expiry date.
    #[arg(long, conflicts_with = "expires_at")]
    pub no_expiry: bool,
}

impl SettingsArgs {
    /// The changes these flags ask for, plus a new prefix if given.
    pub fn to_settings(&self, prefix: Option<String>) -> Settings {
        Settings {
            key_prefix: prefix,
            reset_permissions: self.reset_permissions,
            permissions: self.permission.clone(),
            unset_permissions: self.unset_permission.clone(),
            allowed_ips: if self.any_ip {
                Some(Vec::new())
            } else if self.allowed_ips.is_empty() {
                None
            } else {
                Some(self.allowed_ips.clone())
            },
            max_sessions: if self.no_max_sessions {
                Some(None)
            } else {
                self.max_sessions.map(Some)
            },
            expires_at: if self.no_expiry {
                Some(None)
            } else {
                self.expires_at.map(Some)
            },
        }
    }
}

/// `s3sftp serve` flags.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A TOML file of these settings, keyed by flag name (`idle-timeout = "10m"`; see
    /// docs/configuration.md). Flags and variables override it.
    #[arg(long, env = "S3SFTP_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Check the configuration, the users file, the host keys and access to S3, print what
    /// was found and exit (1 if anything is wrong); nothing is started or created.
    #[arg(long)]
    pub check: bool,
    /// Which settings came from the config file.
    #[arg(skip)]
    pub origins: FileOrigins,
    /// Address to listen on for SSH: ADDRESS:PORT, or :PORT for every address (IPv6 and
    /// IPv4).
    #[arg(
        long,
        env = "S3SFTP_LISTEN",
        default_value = "127.0.0.1:2222",
        value_parser = units::listen_addr
    )]
    pub listen: SocketAddr,
    /// Directory for the generated host keys (and the embedded store's data).
    #[arg(long, env = "S3SFTP_STATE_DIR", default_value = "state")]
    pub state_dir: PathBuf,
    /// A host key to serve instead of the generated ones: an OpenSSH private key without a
    /// passphrase, such as sshd's /etc/ssh/ssh_host_ed25519_key. Repeat for more (one per
    /// type); comma-separated in the variable. Without it, Ed25519, ECDSA P-256 and RSA 3072
    /// keys are generated in the state directory on first start. s3://BUCKET/KEY keeps a
    /// key in the served bucket, generated by the first gateway that starts (the type from
    /// the name: rsa, ecdsa, else ed25519), so every gateway serves the same host identity.
    #[arg(
        long = "host-key",
        env = "S3SFTP_HOST_KEY",
        value_name = "FILE",
        value_delimiter = ','
    )]
    pub host_keys: Vec<PathBuf>,
    /// The users file (JSON; see docs/users.md): a local path, or s3://BUCKET/KEY for an
    /// object in the served bucket that every gateway reads (see docs/scale-out.md).
    #[arg(long, env = "S3SFTP_USERS_FILE", default_value = "users.json")]
    pub users_file: PathBuf,
    /// With --users-file s3://...: how often the users object is checked for a new
    /// version (a conditional GET; SIGHUP checks at once). Seconds, or with units (1m).
    #[arg(long = "users-poll-secs", env = "S3SFTP_USERS_POLL_SECS", value_name = "DURATION", default_value = "10", value_parser = units::seconds)]
    pub users_poll: Duration,

    /// S3 bucket. Without it, an embedded S3 store on loopback is used (not for production).
    #[arg(long, env = "S3SFTP_BUCKET")]
    pub bucket: Option<String>,
    /// S3 endpoint URL for MinIO, Garage, Ceph and others; omit for AWS.
    #[arg(long, env = "S3SFTP_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// S3 region; default from the AWS chain, else us-east-1.
    #[arg(long, env = "S3SFTP_S3_REGION")]
    pub s3_region: Option<String>,
    /// Path-style addressing (endpoint/bucket/key), needed by most self-hosted servers.
    /// The variable takes true/false, 1/0, yes/no, on/off.
    #[arg(long, env = "S3SFTP_S3_PATH_STYLE", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub s3_path_style: bool,
    /// Access key id; without it the standard AWS credential chain is used.
    #[arg(long, env = "S3SFTP_S3_ACCESS_KEY", requires = "s3_secret_key")]
    pub s3_access_key: Option<String>,
    /// Secret access key (prefer the environment variable to the flag).
    #[arg(
        long,
        env = "S3SFTP_S3_SECRET_KEY",
        hide_env_values = true,
        requires = "s3_access_key"
    )]
    pub s3_secret_key: Option<String>,
    /// When to send request checksums: default when-required for custom endpoints,
    /// when-supported for AWS.
    #[arg(long, env = "S3SFTP_S3_CHECKSUM", value_enum)]
    pub s3_checksum: Option<ChecksumMode>,
    /// Whether upload bodies are hashed into the request signature: auto signs them only
    /// over plain HTTP to a host that is not loopback (TLS and loopback need no hash).
    #[arg(long, env = "S3SFTP_S3_PAYLOAD_SIGNING", value_enum, default_value_t = PayloadSigning::Auto)]
    pub s3_payload_signing: PayloadSigning,
    /// Storage class of every object written (STANDARD, STANDARD_IA, ONEZONE_IA,
    /// INTELLIGENT_TIERING, GLACIER_IR, REDUCED_REDUNDANCY, EXPRESS_ONEZONE); renames keep
    /// it. Archive classes are refused. Default: none sent, the bucket's default applies.
    #[arg(long, env = "S3SFTP_S3_STORAGE_CLASS", value_name = "CLASS", value_parser = StorageClass::parse)]
    pub s3_storage_class: Option<StorageClass>,
    /// Server-side encryption of every object written: aes256 (SSE-S3) or aws:kms
    /// (SSE-KMS); renames keep it. Default: none sent, the bucket's default applies.
    #[arg(long, env = "S3SFTP_S3_SSE", value_enum, value_name = "MODE")]
    pub s3_sse: Option<SseMode>,
    /// The KMS key (id, alias or ARN) of --s3-sse aws:kms; default the account's aws/s3 key.
    #[arg(long, env = "S3SFTP_S3_SSE_KMS_KEY_ID", value_name = "KEY")]
    pub s3_sse_kms_key_id: Option<String>,
    /// With --s3-sse aws:kms: use an S3 Bucket Key (far fewer KMS requests).
    #[arg(long, env = "S3SFTP_S3_SSE_BUCKET_KEY")]
    pub s3_sse_bucket_key: bool,
    /// The integrity header of every upload request, checked by S3 against the body:
    /// crc32c (cheap), md5 (Content-MD5, which every store's Object Lock accepts), none,
    /// or auto: none where the SDK already sends its CRC32 (--s3-checksum
    /// when-supported, the default for AWS), else crc32c where a probe shows the store
    /// checks it, md5 otherwise and on a bucket with Object Lock.
    #[arg(long, env = "S3SFTP_S3_UPLOAD_CHECKSUM", value_enum, default_value_t = UploadChecksum::Auto)]
    pub s3_upload_checksum: UploadChecksum,
    /// Whether mkdir writes empty `dir/` marker objects: on, off (for stores that cannot
    /// hold them, like rclone serve s3: empty directories are then kept in memory until a
    /// file is written in them), or auto: probe the store at start.
    #[arg(long, env = "S3SFTP_S3_DIR_MARKERS", value_enum, default_value_t = DirMarkers::Auto)]
    pub s3_dir_markers: DirMarkers,
    /// Attempts per S3 request, retries with jittered exponential backoff included.
    #[arg(long, env = "S3SFTP_S3_MAX_ATTEMPTS", default_value_t = 5)]
    pub s3_max_attempts: u32,
    /// Time allowed for one attempt of one S3 request (seconds, or with units: 2m).
    #[arg(long, env = "S3SFTP_S3_TIMEOUT", default_value = "120", value_parser = units::seconds)]
    pub s3_timeout: Duration,

    /// Address of the embedded S3 store (loopback only; port 0 picks a free one).
    #[arg(long, env = "S3SFTP_EMBEDDED_LISTEN", default_value = "127.0.0.1:0")]
    pub embedded_listen: SocketAddr,
    /// Data folder of the embedded S3 store [default: STATE_DIR/data].
    #[arg(long, env = "S3SFTP_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Multipart part size in MiB, or with units (8MiB); at least 5 MiB, grows for very
    /// large files.
    #[arg(
        long = "part-size-mib",
        env = "S3SFTP_PART_SIZE_MIB",
        value_name = "SIZE",
        default_value = "8",
        value_parser = units::mebibytes
    )]
    pub part_size: u64,
    /// Buffer ceiling of one transfer in MiB, or with units (64MiB).
    #[arg(
        long = "transfer-budget-mib",
        env = "S3SFTP_TRANSFER_BUDGET_MIB",
        value_name = "SIZE",
        default_value = "64",
        value_parser = units::mebibytes
    )]
    pub transfer_budget: u64,
    /// Buffer ceiling of all transfers together in MiB, or with units (1GiB).
    #[arg(
        long = "memory-budget-mib",
        env = "S3SFTP_MEMORY_BUDGET_MIB",
        value_name = "SIZE",
        default_value = "1024",
        value_parser = units::mebibytes
    )]
    pub memory_budget: u64,
    /// Size of one ranged GET of the download read-ahead, in MiB or with units (8MiB).
    #[arg(
        long = "download-chunk-mib",
        env = "S3SFTP_DOWNLOAD_CHUNK_MIB",
        value_name = "SIZE",
        default_value = "8",
        value_parser = units::mebibytes
    )]
    pub download_chunk: u64,
    /// Seconds a session trusts what a listing or HEAD told it about a file (so the STAT,
    /// REMOVE or OPEN that follows a listing costs no extra request); 0 turns it off.
    /// Changes made by other sessions or gateways, or directly in the bucket, show after at
    /// most this long (the freshness bound); a session's own changes show at once.
    #[arg(long = "metadata-cache-secs", env = "S3SFTP_METADATA_CACHE_SECS", value_name = "DURATION", default_value = "2", value_parser = units::seconds)]
    pub metadata_cache: Duration,
    /// Whether listings show the modification times clients set (kept in each object's
    /// `x-amz-meta-mtime`, which ListObjectsV2 does not return): `auto` sends one HEAD
    /// per file, 16 at a time, for directories of up to 1,000 files and shows S3's
    /// LastModified for larger ones; `off` always shows LastModified (no extra request).
    #[arg(
        long = "list-mtimes",
        env = "S3SFTP_LIST_MTIMES",
        value_name = "MODE",
        default_value = "auto"
    )]
    pub list_mtimes: crate::storage::ListMtimes,
    /// Threads the SSH connections are spread over; each connection stays on one
    /// [default: one per CPU core].
    #[arg(long, env = "S3SFTP_SESSION_THREADS", value_name = "N")]
    pub session_threads: Option<usize>,
    /// Open files and directories per SFTP session.
    #[arg(long, env = "S3SFTP_MAX_HANDLES", default_value_t = 256)]
    pub max_handles: usize,
    /// Minimum time of a failed login, in milliseconds (or with units: 1s).
    #[arg(long = "auth-failure-delay-ms", env = "S3SFTP_AUTH_FAILURE_DELAY_MS", value_name = "DURATION", default_value = "500", value_parser = units::millis)]
    pub auth_failure_delay: Duration,
    /// Files open for writing at once per SFTP session.
    #[arg(long, env = "S3SFTP_MAX_UPLOADS", default_value_t = 16)]
    pub max_uploads: usize,
    /// Close SFTP sessions with no request for this long (keepalives don't count), and SSH
    /// connections with no traffic at all for as long: seconds, or with units (10m).
    #[arg(long, env = "S3SFTP_IDLE_TIMEOUT", value_name = "DURATION", default_value = "600", value_parser = units::seconds)]
    pub idle_timeout: Duration,
    /// Time a connection has to log in before it is dropped (seconds, or with units: 1m).
    #[arg(long, env = "S3SFTP_AUTH_DEADLINE", value_name = "DURATION", default_value = "60", value_parser = units::seconds)]
    pub auth_deadline: Duration,
    /// Failed logins from one address (within 10 minutes) that ban it; connections that
    /// end without a login and refusals by a per-address limit count too (see
    /// --penalty-exempt-cidrs); an IPv6 /64 is one address; 0 disables bans.
    #[arg(long, env = "S3SFTP_BAN_THRESHOLD", default_value_t = 10)]
    pub ban_threshold: u32,
    /// First ban of an address (seconds, or with units: 5m); each further ban doubles, up to
    /// --ban-max-time.
    #[arg(long, env = "S3SFTP_BAN_TIME", value_name = "DURATION", default_value = "300", value_parser = units::seconds)]
    pub ban_time: Duration,
    /// Longest ban (seconds, or with units: 1d).
    #[arg(long, env = "S3SFTP_BAN_MAX_TIME", value_name = "DURATION", default_value = "86400", value_parser = units::seconds)]
    pub ban_max_time: Duration,
    /// Open connections allowed from one address (an IPv6 /64 is one address); 0 means no
    /// limit.
    #[arg(long, env = "S3SFTP_MAX_CONNECTIONS_PER_IP", default_value_t = 50)]
    pub max_connections_per_ip: usize,
    /// Open connections allowed in total; 0 means no limit.
    #[arg(long, env = "S3SFTP_MAX_CONNECTIONS", default_value_t = 2000)]
    pub max_connections: usize,
    /// Connections not logged in yet allowed in total (like sshd's MaxStartups); 0 means
    /// no limit.
    #[arg(long, env = "S3SFTP_MAX_UNAUTHENTICATED", default_value_t = 256)]
    pub max_unauthenticated: usize,
    /// Connections not logged in yet allowed from one address (an IPv6 /64 counts as one
    /// address); 0 means no limit.
    #[arg(long, env = "S3SFTP_MAX_UNAUTHENTICATED_PER_IP", default_value_t = 32)]
    pub max_unauthenticated_per_ip: usize,
    /// Networks never penalised for connections that do not log in or hit a limit, and
    /// not held to --max-unauthenticated-per-ip: comma-separated CIDRs (e.g. a load
    /// balancer's health checks). Wrong passwords still count towards bans.
    #[arg(
        long,
        env = "S3SFTP_PENALTY_EXEMPT_CIDRS",
        value_name = "CIDR,...",
        value_delimiter = ',',
        value_parser = parse_trusted_cidr
    )]
    pub penalty_exempt_cidrs: Vec<IpNet>,
    /// Password checks (argon2, 19 MiB each) running at once; the others wait their turn
    /// [default: one per CPU core, at most 4].
    #[arg(long, env = "S3SFTP_MAX_PASSWORD_CHECKS", value_name = "N")]
    pub max_password_checks: Option<usize>,
    /// Failed login attempts allowed on one connection before it is closed (like sshd's
    /// MaxAuthTries); each one counts towards --ban-threshold.
    #[arg(long, env = "S3SFTP_MAX_AUTH_ATTEMPTS", default_value_t = 6)]
    pub max_auth_attempts: usize,
    /// Channels (SFTP sessions, commands) open at once on one connection (like sshd's
    /// MaxSessions).
    #[arg(long, env = "S3SFTP_MAX_CHANNELS", default_value_t = 10)]
    pub max_channels: usize,
    /// Behind a load balancer: connections from --proxy-trusted-cidrs must begin with a PROXY
    /// protocol (v1 or v2) header, whose client address is then used for bans, limits,
    /// allowed_ips and logs. Other connections are served as direct clients.
    /// The variable takes true/false, 1/0, yes/no, on/off.
    #[arg(long, env = "S3SFTP_PROXY_PROTOCOL", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub proxy_protocol: bool,
    /// The load balancers' networks, comma-separated CIDRs (e.g. 10.0.0.0/8,192.0.2.10/32);
    /// required by --proxy-protocol, ignored without it.
    #[arg(
        long,
        env = "S3SFTP_PROXY_TRUSTED_CIDRS",
        value_name = "CIDR,...",
        value_delimiter = ',',
        value_parser = parse_trusted_cidr
    )]
    pub proxy_trusted_cidrs: Vec<IpNet>,
    /// On SIGTERM/SIGINT: time to let transfers in flight finish (new connections are
    /// refused, idle sessions closed at once); then the rest are disconnected and their
    /// uploads aborted. Seconds, or with units (2m).
    #[arg(long, env = "S3SFTP_SHUTDOWN_GRACE", value_name = "DURATION", default_value = "60", value_parser = units::seconds)]
    pub shutdown_grace: Duration,
    /// Multipart uploads under the users' prefixes older than this many hours (or with
    /// units: 2d) are aborted by the orphan sweep (at start, and every --orphan-sweep-hours).
    #[arg(long = "orphan-age-hours", env = "S3SFTP_ORPHAN_AGE_HOURS", value_name = "DURATION", default_value = "24", value_parser = units::hours)]
    pub orphan_age: Duration,
    /// Hours (or with units: 30m) between orphan sweeps after the one at start; 0 sweeps
    /// only at start.
    #[arg(long = "orphan-sweep-hours", env = "S3SFTP_ORPHAN_SWEEP_HOURS", value_name = "DURATION", default_value = "0", value_parser = units::hours)]
    pub orphan_sweep_every: Duration,
    /// The most objects one folder rename moves; a larger folder is refused up front
    /// (each object costs a server-side copy and a delete; see docs/folder-rename.md).
    #[arg(
        long,
        env = "S3SFTP_MAX_RENAME_OBJECTS",
        value_name = "N",
        default_value_t = 10_000
    )]
    pub max_rename_objects: u64,
    /// Key prefix where the gateways keep their own objects (folder-rename intents). It
    /// must lie outside every user's prefix; the server refuses to start otherwise.
    #[arg(long, env = "S3SFTP_SYSTEM_PREFIX", value_name = "PREFIX", default_value = crate::storage::intent::DEFAULT_SYSTEM_PREFIX)]
    pub system_prefix: String,
    /// Address of the operations listener: Prometheus metrics on /metrics, /healthz and
    /// /readyz. Off unless set; plain HTTP, so keep it on loopback or a private network.
    #[arg(long, env = "S3SFTP_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Time between the readiness probes of S3 (a one-key listing under a user's prefix):
    /// seconds, or with units (30s); /readyz fails when none succeeded for three times this.
    #[arg(long, env = "S3SFTP_READINESS_PROBE_EVERY", value_name = "DURATION", default_value = "10", value_parser = units::seconds)]
    pub readiness_probe_every: Duration,
    /// On SIGTERM with --metrics-listen set: how long /readyz already answers 503 while new
    /// connections are still accepted, so a load balancer's health check takes the gateway
    /// out before it stops accepting (seconds, or with units: 5s).
    #[arg(long, env = "S3SFTP_DRAIN_DELAY", value_name = "DURATION", default_value = "5", value_parser = units::seconds)]
    pub drain_delay: Duration,
}

impl ServeArgs {
    /// The setting `flag` (`--idle-timeout`) named as the admin set it: with the config
    /// file's key, its environment variable, or the flag itself.
    pub fn setting_name(&self, flag: &str) -> String {
        self.origins
            .describe(flag)
            .unwrap_or_else(|| setting_name(flag))
    }
}

/// `--s3-sse`: the server-side encryption asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SseMode {
    /// SSE-S3 (`x-amz-server-side-encryption: AES256`).
    #[value(name = "aes256", alias = "AES256")]
    Aes256,
    /// SSE-KMS (`x-amz-server-side-encryption: aws:kms`).
    #[value(name = "aws:kms", alias = "kms")]
    AwsKms,
}

/// One entry of `--proxy-trusted-cidrs` or `--penalty-exempt-cidrs` (spaces around it
/// allowed).
fn parse_trusted_cidr(text: &str) -> Result<IpNet, String> {
    users::parse_cidr(text.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_filters_with_a_typo_are_refused() {
        for good in [
            "info",
            "WARN",
            "s3sftp=debug",
            "info,s3sftp::ssh=trace",
            "warn,russh=off",
            "",
        ] {
            assert_eq!(log_filter(good).as_deref(), Ok(good));
        }
        for bad in ["degub", "warning", "info,verbose"] {
            let err = log_filter(bad).expect_err(bad);
            assert!(err.contains("is not a level"), "{err}");
        }
        let err = log_filter("s3sftp=verbose").expect_err("bad level");
        assert!(err.contains("not a valid log filter"), "{err}");
    }

    #[test]
    fn flags_and_variables_are_found_by_name() {
        assert_eq!(variable_of("--listen").as_deref(), Some("S3SFTP_LISTEN"));
        assert_eq!(variable_of("--log").as_deref(), Some("S3SFTP_LOG"));
        assert_eq!(variable_of("--nope"), None);
        let argv: Vec<OsString> = ["s3sftp", "serve", "--listen=:22", "--listening"]
            .iter()
            .map(OsString::from)
            .collect();
        assert!(given_in(&argv, "--listen"));
        assert!(!given_in(&argv, "--log"));
    }
}
