//! Configuration files and `leadger config check`.
//!
//! A config file (`--config FILE`, `LEADGER_CONFIG`) is TOML with one key per
//! flag, named like the flag without its dashes (`database_url`, `nats_url`,
//! `no_projector = true`). One file may serve every process of a deployment:
//! keys another subcommand uses are ignored, unknown keys are an error. A flag
//! beats its `LEADGER_*` environment variable, which beats the file, which
//! beats the default. Only the flags of the processes and the client
//! connection flags are settings; per-call arguments (`request_id`,
//! `email`, …) are not.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::Path;

use anyhow::{Context, bail};
use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, CommandFactory};

use crate::Cli;

/// Parsed arguments, and which of them came from the config file.
pub struct Resolved {
    pub matches: ArgMatches,
    pub from_file: BTreeSet<String>,
}

/// Parses `argv` like clap does, with the settings of `--config` added where
/// neither a flag nor an environment variable gave them. Help, version and
/// usage errors exit the process as clap does.
pub fn resolve(argv: Vec<OsString>) -> anyhow::Result<Resolved> {
    // The first pass only finds --config: settings the file gives may be
    // missing from the command line (a required --database-url).
    let first = Cli::command().ignore_errors(true).try_get_matches_from(&argv).ok();
    let Some(path) = first.as_ref().and_then(|m| m.get_one::<std::path::PathBuf>("config")).cloned() else {
        let matches = Cli::command().try_get_matches_from(&argv).unwrap_or_else(|error| error.exit());
        return Ok(Resolved { matches, from_file: BTreeSet::new() });
    };
    let first = first.unwrap_or_default();
    let settings = read(&path)?;
    let mut command = Cli::command();
    command.build();
    // The innermost subcommand the flags belong to (`serve`, `relay`, …).
    let (mut target, mut given) = (&command, &first);
    while let Some((name, matches)) = given.subcommand() {
        match target.find_subcommand(name) {
            Some(sub) => (target, given) = (sub, matches),
            None => break,
        }
    }
    let known = known_keys(&command);
    let mut argv = argv;
    let mut from_file = BTreeSet::new();
    for (key, value) in settings {
        if !known.contains(&key) {
            bail!(
                "{}: unknown setting `{key}` (settings are flag names with `_` for `-`, such as database_url)",
                path.display()
            );
        }
        let Some(arg) = target.get_arguments().find(|arg| arg.get_id().as_str() == key && arg.get_long().is_some())
        else {
            continue; // a setting of another subcommand
        };
        if matches!(given.value_source(&key), Some(ValueSource::CommandLine | ValueSource::EnvVariable)) {
            continue;
        }
        let long = arg.get_long().unwrap_or_default();
        match (arg.get_action(), &value) {
            (ArgAction::SetTrue, toml::Value::Boolean(true)) => argv.push(format!("--{long}").into()),
            (ArgAction::SetTrue, toml::Value::Boolean(false)) => continue,
            (ArgAction::SetTrue, _) => bail!("{}: `{key}` is a switch: true or false", path.display()),
            (_, value) => argv.push(format!("--{long}={}", scalar(&path, &key, value)?).into()),
        }
        from_file.insert(key);
    }
    let matches = match Cli::command().try_get_matches_from(&argv) {
        Ok(matches) => matches,
        Err(error) if !error.use_stderr() => error.exit(), // --help, --version
        Err(error) => bail!("with {}: {}", path.display(), error.render().to_string().trim_end()),
    };
    Ok(Resolved { matches, from_file })
}

/// The settings of a config file, in file order.
fn read(path: &Path) -> anyhow::Result<Vec<(String, toml::Value)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read the config file {}", path.display()))?;
    let table: toml::Table = text.parse().with_context(|| format!("parse the config file {}", path.display()))?;
    Ok(table.into_iter().map(|(key, value)| (key.replace('-', "_"), value)).collect())
}

fn scalar(path: &Path, key: &str, value: &toml::Value) -> anyhow::Result<String> {
    Ok(match value {
        toml::Value::String(text) => text.clone(),
        toml::Value::Integer(number) => number.to_string(),
        toml::Value::Float(number) => number.to_string(),
        toml::Value::Boolean(flag) => flag.to_string(),
        toml::Value::Array(items) => {
            let texts: Option<Vec<&str>> = items.iter().map(toml::Value::as_str).collect();
            match texts {
                Some(texts) => texts.join(","),
                None => bail!("{}: `{key}` must be a list of strings", path.display()),
            }
        }
        _ => bail!("{}: `{key}` must be a string, number, boolean or list of strings", path.display()),
    })
}

/// The processes whose flags a config file may set, and the connection
/// flags of the commands for people. The other arguments of those commands
/// (`request_id`, `email`, …) are per call, never settings.
const CONFIGURABLE: &[&str] = &["serve", "relay", "project", "purge-erased"];
const CLIENT_SETTINGS: &[&str] = &["server", "token", "ca_cert", "client_cert", "client_key"];

/// Every key a config file may hold: flag ids (the flag without dashes).
fn known_keys(command: &clap::Command) -> BTreeSet<String> {
    let flags = |command: &clap::Command| -> Vec<String> {
        command
            .get_arguments()
            .filter(|arg| arg.get_long().is_some() && !matches!(arg.get_id().as_str(), "config" | "help" | "version"))
            .map(|arg| arg.get_id().to_string())
            .collect()
    };
    let mut keys: BTreeSet<String> = flags(command).into_iter().collect();
    for name in CONFIGURABLE {
        if let Some(sub) = command.find_subcommand(name) {
            keys.extend(flags(sub));
        }
    }
    keys.extend(CLIENT_SETTINGS.iter().map(|key| key.to_string()));
    keys
}

/// Settings whose values are secret: shown masked.
const SECRETS: &[&str] = &["nats_token", "token"];

/// Resolves the settings of `process` (`serve`, `relay`, `project`) from
/// the config file and environment, checks them and prints each effective
/// setting with where it came from; secrets and passwords are masked.
pub fn check(config: Option<&Path>, process: &str) -> anyhow::Result<()> {
    let mut argv: Vec<OsString> = vec!["leadger".into()];
    if let Some(path) = config {
        argv.push("--config".into());
        argv.push(path.into());
    }
    argv.push(process.into());
    let resolved = resolve(argv)?;
    let Some((_, matches)) = resolved.matches.subcommand() else {
        bail!("`{process}` is not a subcommand");
    };
    let mut command = Cli::command();
    command.build();
    let sub = command.find_subcommand(process).context("find the subcommand")?;
    let mut rows = Vec::new();
    for arg in sub.get_arguments().filter(|arg| arg.get_long().is_some() && !arg.is_hide_set()) {
        let id = arg.get_id().as_str();
        if matches!(id, "help" | "version") {
            continue;
        }
        let source = if resolved.from_file.contains(id) {
            "file"
        } else {
            match matches.value_source(id) {
                Some(ValueSource::CommandLine) => "flag",
                Some(ValueSource::EnvVariable) => "env",
                Some(ValueSource::DefaultValue) => "default",
                _ => "unset",
            }
        };
        let value = match matches.get_raw(id) {
            Some(values) => values.map(|v| v.to_string_lossy().into_owned()).collect::<Vec<_>>().join(","),
            None => String::new(),
        };
        let value = if value.is_empty() {
            "-".to_string()
        } else if SECRETS.contains(&id) {
            "***".to_string()
        } else {
            crate::redact(&value)
        };
        rows.push((format!("--{}", arg.get_long().unwrap_or_default()), value, source));
    }
    crate::validate(process, matches)?;
    let width = rows.iter().map(|(flag, _, _)| flag.len()).max().unwrap_or(0);
    println!("leadger {process}: configuration is valid");
    for (flag, value, source) in rows {
        println!("  {flag:width$}  {value}  ({source})");
    }
    Ok(())
}
