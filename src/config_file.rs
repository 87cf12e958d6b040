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
