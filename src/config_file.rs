//! `serve --config FILE`: a TOML file holding `serve` settings, under the flags' own names
//! (`idle-timeout = "10m"`). Flags and `S3SFTP_*` variables override it.
//!
//! The file's values are not parsed here: each one the command line and the environment left
//! at its default becomes one more `--flag=value` argument, so the file takes exactly what the
//! flag takes (`10m`, `8MiB`, `:2222`) and goes through the same checks. What is checked here
//! is the file's shape: a key that is no setting (with the closest one suggested), or a value
//! of a type no flag takes.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches};

/// Flags of `serve` that are no setting: they cannot be in the file.
const NOT_SETTINGS: &[&str] = &["config", "check", "help", "version"];

/// Which settings came from the config file, to name them in errors.
#[derive(Debug, Clone, Default)]
pub struct FileOrigins {
    /// The file; `None` without `--config`.
    pub path: Option<PathBuf>,
    /// The keys whose value was taken from it (`idle-timeout`).
    pub keys: BTreeSet<String>,
}

impl FileOrigins {
    /// `--idle-timeout (from FILE key idle-timeout)` when the file set the flag `flag`.
    pub fn describe(&self, flag: &str) -> Option<String> {
        let key = flag.strip_prefix("--").unwrap_or(flag);
        let path = self.path.as_ref()?;
        self.keys
            .contains(key)
            .then(|| format!("{flag} (from {} key {key})", path.display()))
    }
}

/// The settings of the config file, as arguments to add to the command line.
#[derive(Debug, Default)]
pub struct FileArguments {
    pub args: Vec<OsString>,
    pub origins: FileOrigins,
}

/// Reads `path` and returns the arguments it adds: one per key whose flag neither the command
/// line nor the environment set. `settings` are the flags the file may hold (those of
/// `serve`, and the global ones), each with the matches it is looked up in.
///
/// The error lists every mistake of the file, one line each.
pub fn arguments(
    path: &Path,
    settings: &[(&clap::Arg, &ArgMatches)],
) -> Result<FileArguments, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the config file {}: {e}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| format_toml_error(path, &e))?;
    let mut out = FileArguments {
        args: Vec::new(),
        origins: FileOrigins {
            path: Some(path.to_path_buf()),
            keys: BTreeSet::new(),
        },
    };
    let mut mistakes = Vec::new();
    let known: Vec<&str> = settings.iter().filter_map(|(a, _)| a.get_long()).collect();
    for (key, value) in &table {
        let Some((arg, matches)) = settings.iter().find(|(a, _)| a.get_long() == Some(key)) else {
            mistakes.push(unknown_key(path, key, &known));
            continue;
        };
        let values = match values_of(arg, value) {
            Ok(values) => values,
            Err(e) => {
                mistakes.push(format!("{} key {key}: {e}", path.display()));
                continue;
            }
        };
        let given = matches!(
            matches.value_source(arg.get_id().as_str()),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        if given {
            continue;
        }
        for v in values {
            out.args.push(match v {
                Some(v) => OsString::from(format!("--{key}={v}")),
                None => OsString::from(format!("--{key}")),
            });
        }
        out.origins.keys.insert(key.clone());
    }
    if mistakes.is_empty() {
        Ok(out)
    } else {
        Err(mistakes.join("\n"))
    }
}

/// Whether `long` is a flag the config file may hold.
pub fn is_setting(long: &str) -> bool {
    !NOT_SETTINGS.contains(&long)
}

/// The command-line values of `value` for `arg`: `None` for a switch that is on; nothing for
/// one that is off.
fn values_of(arg: &clap::Arg, value: &toml::Value) -> Result<Vec<Option<String>>, String> {
    let switch = matches!(arg.get_action(), ArgAction::SetTrue);
    let many = matches!(arg.get_action(), ArgAction::Append);
    match value {
        toml::Value::Boolean(on) if switch => Ok(if *on { vec![None] } else { Vec::new() }),
        _ if switch => Err(format!("must be true or false, not {}", value.type_str())),
        toml::Value::Array(items) if many => items.iter().map(|v| scalar(v).map(Some)).collect(),
        toml::Value::Array(_) => Err("takes one value, not a list".to_owned()),
        other => Ok(vec![Some(scalar(other)?)]),
    }
}

fn scalar(value: &toml::Value) -> Result<String, String> {
    match value {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(n) => Ok(n.to_string()),
        toml::Value::Float(x) => Ok(x.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        other => Err(format!(
            "must be a string or a number, not {}",
            other.type_str()
        )),
    }
}

/// An unknown key, with the closest setting's name when one is close.
fn unknown_key(path: &Path, key: &str, known: &[&str]) -> String {
    let wanted = key.replace('_', "-");
    let closest = known
        .iter()
        .filter(|k| is_setting(k))
        .map(|k| (strsim::jaro_winkler(&wanted, k), *k))
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .filter(|(score, _)| *score >= 0.8);
    let hint = match closest {
        Some((_, k)) => format!("; did you mean {k}?"),
        None => String::new(),
    };
    if !is_setting(&wanted) {
        return format!("{}: {key} cannot be set in the config file", path.display());
    }
    format!(
        "{}: unknown key {key:?}{hint} (keys are the names of the serve flags, such as idle-timeout)",
        path.display()
    )
}

/// A TOML syntax error on one line: the file, line and column, and what is wrong.
fn format_toml_error(path: &Path, err: &toml::de::Error) -> String {
    let message = err.message().trim().replace('\n', "; ");
    match err.span() {
        Some(span) => {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let before = text.get(..span.start).unwrap_or_default();
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!(
                "{}:{line}:{column}: not valid TOML: {message}",
                path.display()
            )
        }
        None => format!("{}: not valid TOML: {message}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;
    use std::path::Path;

    use clap::CommandFactory;

    use crate::cli::{Cli, Command, ServeArgs};

    fn parse(args: &[&str]) -> Result<ServeArgs, String> {
        let argv: Vec<OsString> = ["s3sftp", "serve"]
            .iter()
            .chain(args)
            .map(OsString::from)
            .collect();
        match Cli::parse_with_config(&argv)
            .map_err(|e| e.to_string())?
            .command
        {
            Command::Serve(args) => Ok(*args),
            other => panic!("not serve: {other:?}"),
        }
    }

    /// `serve --config FILE` with `toml` as the file, plus `flags`.
    fn with_file(toml: &str, flags: &[&str]) -> Result<ServeArgs, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s3sftp.toml");
        std::fs::write(&path, toml).unwrap();
        let path = path.to_str().unwrap().to_owned();
        let mut args = vec!["--config", path.as_str()];
        args.extend(flags);
        parse(&args)
    }

    fn config_of(args: &ServeArgs) -> String {
        format!("{:?}", crate::config::from_args(args).unwrap())
    }

    #[test]
    fn a_file_equal_to_flags_gives_the_same_server_config() {
        let flags = parse(&[
            "--listen",
            ":2200",
            "--state-dir",
            "/var/lib/s3sftp",
            "--host-key",
            "/etc/ssh/a",
            "--host-key",
            "/etc/ssh/b",
            "--users-file",
            "/etc/s3sftp/users.json",
            "--bucket",
            "b",
            "--s3-endpoint",
            "http://127.0.0.1:9000",
            "--s3-region",
            "eu-west-1",
            "--s3-path-style",
            "--s3-access-key",
            "AK",
            "--s3-secret-key",
            "SK",
            "--s3-storage-class",
            "STANDARD_IA",
            "--s3-sse",
            "aws:kms",
            "--s3-sse-bucket-key",
            "--s3-max-attempts",
            "3",
            "--s3-timeout",
            "2m",
            "--part-size-mib",
            "16MiB",
            "--transfer-budget-mib",
            "128",
            "--memory-budget-mib",
            "2GiB",
            "--idle-timeout",
            "10m",
            "--penalty-exempt-cidrs",
            "10.0.0.0/8,192.0.2.0/24",
            "--proxy-protocol",
            "--proxy-trusted-cidrs",
            "10.1.0.0/16",
            "--metrics-listen",
            "127.0.0.1:9100",
            "--shutdown-grace",
            "90s",
            "--max-connections",
            "100",
        ])
        .unwrap();
        let file = with_file(
            r#"
listen = ":2200"
state-dir = "/var/lib/s3sftp"
host-key = ["/etc/ssh/a", "/etc/ssh/b"]
users-file = "/etc/s3sftp/users.json"
bucket = "b"
s3-endpoint = "http://127.0.0.1:9000"
s3-region = "eu-west-1"
s3-path-style = true
s3-access-key = "AK"
s3-secret-key = "SK"
s3-storage-class = "STANDARD_IA"
s3-sse = "aws:kms"
s3-sse-bucket-key = true
s3-max-attempts = 3
s3-timeout = "2m"
part-size-mib = "16MiB"
transfer-budget-mib = 128
memory-budget-mib = "2GiB"
idle-timeout = "10m"
penalty-exempt-cidrs = ["10.0.0.0/8", "192.0.2.0/24"]
proxy-protocol = true
proxy-trusted-cidrs = "10.1.0.0/16"
metrics-listen = "127.0.0.1:9100"
shutdown-grace = "90s"
max-connections = 100
"#,
            &[],
        )
        .unwrap();
        assert_eq!(config_of(&file), config_of(&flags));
        assert_ne!(config_of(&file), config_of(&parse(&[]).unwrap()));
        assert!(file.origins.keys.contains("idle-timeout"));
    }

    #[test]
    fn flags_override_the_file_and_false_switches_keep_the_default() {
        let args = with_file(
            "idle-timeout = \"10m\"\nmax-handles = 10\ns3-path-style = false\n",
            &["--idle-timeout", "5m"],
        )
        .unwrap();
        assert_eq!(args.idle_timeout.as_secs(), 300);
        assert_eq!(args.max_handles, 10);
        assert!(!args.s3_path_style);
        assert!(!args.origins.keys.contains("idle-timeout"));
        assert_eq!(args.setting_name("--idle-timeout"), "--idle-timeout");
        assert!(args
            .setting_name("--max-handles")
            .ends_with("s3sftp.toml key max-handles)"));
        // The global log settings may be in the file too.
        let args = with_file("log = \"debug\"\n", &[]).unwrap();
        assert!(args.origins.keys.contains("log"));
    }

    #[test]
    fn unknown_keys_are_refused_with_the_closest_name() {
        let err = with_file("idle_timeout = 3\nmax-handels = 2\nzzz = 1\n", &[]).unwrap_err();
        assert!(
            err.contains("unknown key \"idle_timeout\"; did you mean idle-timeout?"),
            "{err}"
        );
        assert!(err.contains("did you mean max-handles?"), "{err}");
        assert!(
            err.contains("s3sftp.toml: unknown key \"zzz\" (keys"),
            "{err}"
        );
        let err = with_file("check = true\n", &[]).unwrap_err();
        assert!(
            err.contains("check cannot be set in the config file"),
            "{err}"
        );
    }

    #[test]
    fn bad_values_and_types_name_the_key() {
        let err = with_file("idle-timeout = \"10x\"\n", &[]).unwrap_err();
        assert!(
            err.contains("--idle-timeout (from ")
                && err.contains("s3sftp.toml key idle-timeout): invalid value \"10x\""),
            "{err}"
        );
        let err = with_file("listen = [\":22\"]\n", &[]).unwrap_err();
        assert!(
            err.contains("key listen: takes one value, not a list"),
            "{err}"
        );
        let err = with_file("s3-path-style = \"yes\"\n", &[]).unwrap_err();
        assert!(
            err.contains("key s3-path-style: must be true or false"),
            "{err}"
        );
        let err = with_file("listen = \":22\"\nx = [\n", &[]).unwrap_err();
        assert!(err.contains("s3sftp.toml:3:1: not valid TOML"), "{err}");
        let err = parse(&["--config", "/nonexistent/s3sftp.toml"]).unwrap_err();
        assert!(
            err.contains("cannot read the config file /nonexistent/s3sftp.toml"),
            "{err}"
        );
        // A value the flag parser takes but the settings check refuses.
        let args = with_file("part-size-mib = 1\n", &[]).unwrap();
        let err = crate::config::from_args(&args).unwrap_err();
        assert!(args.setting_name(err.flag).contains("key part-size-mib)"));
    }

    /// deploy/s3sftp.toml, the annotated example shipped with docs/configuration.md, parses,
    /// passes the settings check, and names every serve setting.
    #[test]
    fn the_shipped_example_is_valid_and_complete() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/s3sftp.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let args = parse(&["--config", path.to_str().unwrap()]).unwrap();
        crate::config::from_args(&args).unwrap();
        let cli = Cli::command();
        let serve = cli.find_subcommand("serve").unwrap();
        let longs = serve
            .get_arguments()
            .chain(cli.get_arguments().filter(|a| a.is_global_set()))
            .filter_map(|a| a.get_long())
            .filter(|l| super::is_setting(l));
        for long in longs {
            assert!(
                text.lines().any(|l| {
                    let l = l.trim_start_matches(['#', ' ']);
                    l.starts_with(&format!("{long} ="))
                }),
                "deploy/s3sftp.toml does not mention {long}"
            );
        }
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md");
        assert!(
            std::fs::read_to_string(docs).unwrap().contains(&text),
            "docs/configuration.md must show deploy/s3sftp.toml as it is"
        );
        // The examples in comments are valid values too.
        let uncommented: String = text
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest)
                    if rest.split(" = ").next().is_some_and(|k| {
                        !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '-')
                    }) =>
                {
                    format!("{rest}\n")
                }
                _ => format!("{l}\n"),
            })
            .collect();
        with_file(&uncommented, &[]).unwrap();
    }
}
