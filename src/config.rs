//! The optional settings file, `clientrules.yaml`: the same settings as the flags, by
//! their long names (`body-limit: 2MiB`, `trusted-proxy: [10.0.0.0/8]`). A flag wins over
//! a `CLIENTRULES_*` variable, which wins over the file, which wins over the defaults.
//! The file is `--config FILE`, else `CLIENTRULES_CONFIG`, else `clientrules.yaml` in
//! the working folder when there is one.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::Command;
use serde_yaml::Value;

/// The settings file looked for in the working folder.
pub const DEFAULT_FILE: &str = "clientrules.yaml";

/// Subcommands that take no settings from the file: the simulator is a separate server.
const NOT_FROM_FILE: &[&str] = &["sim"];

/// Where the settings file is, from the command line and the environment: `None` when
/// none is named and the working folder has none.
pub fn locate(args: &[OsString]) -> Option<PathBuf> {
    let mut named = None;
    let mut args = args.iter().skip(1);
    while let Some(arg) = args.next() {
        let Some(text) = arg.to_str() else { continue };
        if text == "--" {
            break;
        }
        if text == "--config" {
            named = args.next().map(PathBuf::from);
        } else if let Some(path) = text.strip_prefix("--config=") {
            named = Some(PathBuf::from(path));
        }
    }
    named
        .or_else(|| std::env::var_os("CLIENTRULES_CONFIG").map(PathBuf::from))
        .or_else(|| {
            let default = PathBuf::from(DEFAULT_FILE);
            default.is_file().then_some(default)
        })
}

/// One setting of the file: its long name, its values and its line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    name: String,
    values: Vec<String>,
    line: usize,
}

/// Reads the settings file at `path` and makes its values the defaults of every
/// subcommand that has the setting; an error names the file, the line and the setting.
pub fn apply(command: Command, path: &std::path::Path) -> Result<Command, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the settings file {}: {e}", path.display()))?;
    let at = |line: usize| format!("{} line {line}", path.display());
    let entries = entries(&text).map_err(|(line, message)| format!("{}: {message}", at(line)))?;
    let known = settings_of(&command);
    let mut command = command;
    for entry in entries {
        if entry.name.ends_with("api-key") {
            return Err(format!(
                "{}: the API key is read from SPECTORA_API_KEY in the environment only, so that it never sits in a file",
                at(entry.line)
            ));
        }
        if entry.name == "config" {
            return Err(format!(
                "{}: a settings file cannot name another",
                at(entry.line)
            ));
        }
        let Some(arg) = known
            .iter()
            .find(|a| a.get_long() == Some(entry.name.as_str()))
        else {
            let names: Vec<&str> = known.iter().filter_map(|a| a.get_long()).collect();
            let nearest = names
                .iter()
                .map(|n| (strsim::jaro_winkler(n, &entry.name), *n))
                .filter(|(score, _)| *score > 0.8)
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .map(|(_, n)| format!(" did you mean `{n}`?"))
                .unwrap_or_default();
            return Err(format!(
                "{}: unknown setting `{}`.{nearest} Settings: {}",
                at(entry.line),
                entry.name,
                names.join(", ")
            ));
        };
        if entry.values.len() > 1 && !matches!(arg.get_action(), clap::ArgAction::Append) {
            return Err(format!(
                "{}: `{}` takes one value, found a list of {}",
                at(entry.line),
                entry.name,
                entry.values.len()
            ));
        }
        // The value is checked here, so that a mistake names the file rather than a flag
        // that nobody typed.
        for value in &entry.values {
            check_value(arg, value).map_err(|reason| {
                format!(
                    "{}: `{}`: invalid value {value:?}: {reason}{}",
                    at(entry.line),
                    entry.name,
                    expected(arg)
                )
            })?;
        }
        command = with_default(command, arg.get_id(), &entry.values);
    }
    Ok(command)
}

/// Makes `values` the default of the argument `id` in every subcommand that has it, at
/// any depth (`clients list` as well as `serve`).
fn with_default(command: Command, id: &clap::Id, values: &[String]) -> Command {
    let names: Vec<String> = command
        .get_subcommands()
        .filter(|c| !NOT_FROM_FILE.contains(&c.get_name()))
        .map(|c| c.get_name().to_owned())
        .collect();
    let mut command = command;
    for name in names {
        command = command.mut_subcommand(name, |sub| {
            let has = sub.get_arguments().any(|a| a.get_id() == id);
            let sub = if has {
                sub.mut_arg(id.clone(), |arg| {
                    if values.len() == 1 {
                        arg.default_value(values[0].clone())
                    } else {
                        arg.default_values(values.to_vec())
                    }
                })
            } else {
                sub
            };
            with_default(sub, id, values)
        });
    }
    command
}

/// What a setting takes, for a message: its values, or its default as an example.
fn expected(arg: &clap::Arg) -> String {
    let possible: Vec<String> = arg
        .get_possible_values()
        .iter()
        .map(|v| v.get_name().to_owned())
        .collect();
    if !possible.is_empty() {
        return format!("; expected one of: {}", possible.join(", "));
    }
    match arg.get_default_values().first() {
        Some(default) => format!(
            "; for example `{}` (the default)",
            default.to_string_lossy()
        ),
        None => String::new(),
    }
}

/// Parses `value` as the flag would, and says why it does not fit.
fn check_value(arg: &clap::Arg, value: &str) -> Result<(), String> {
    let Some(long) = arg.get_long() else {
        return Ok(());
    };
    let probe = Command::new("settings-file")
        .no_binary_name(true)
        .arg(arg.clone().env(None::<&str>).required(false));
    match probe.try_get_matches_from([format!("--{long}"), value.to_owned()]) {
        Ok(_) => Ok(()),
        Err(e) => {
            let text = e.to_string();
            let first = text
                .lines()
                .next()
                .unwrap_or("")
                .trim_start_matches("error: ");
            // "invalid value 'x' for '--flag <FLAG>': why" says why after the flag.
            Err(match first.split_once(">': ") {
                Some((_, why)) => why.to_owned(),
                None => first.to_owned(),
            })
        }
    }
}

/// The settings that a file may hold: those of `serve`, which has them all.
fn settings_of(command: &Command) -> Vec<clap::Arg> {
    command
        .find_subcommand("serve")
        .map(|serve| {
            serve
                .get_arguments()
                .filter(|a| a.get_long().is_some_and(|l| l != "help" && l != "version"))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// The entries of the file, in order: a mapping of setting names to scalars or lists.
fn entries(text: &str) -> Result<Vec<Entry>, (usize, String)> {
    let value: Value = serde_yaml::from_str(text).map_err(|e| {
        let line = e.location().map_or(1, |l| l.line());
        (line, format!("not valid YAML: {e}"))
    })?;
    let mapping = match value {
        Value::Null => return Ok(Vec::new()),
        Value::Mapping(mapping) => mapping,
        other => {
            return Err((
                1,
                format!(
                    "expected a mapping of settings such as `listen: 127.0.0.1:8080`, found {}",
                    kind(&other)
                ),
            ));
        }
    };
    // The line of each top-level key, found in one pass.
    let mut lines: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (i, line) in text.lines().enumerate() {
        if let Some((key, _)) = line.split_once(':')
            && !key.starts_with([' ', '\t', '#', '-'])
        {
            lines.entry(key.trim_end()).or_insert(i + 1);
        }
    }
    let mut out = Vec::new();
    for (key, value) in mapping {
        let Some(key) = key.as_str() else {
            return Err((1, format!("expected setting names, found {}", kind(&key))));
        };
        let name = key.trim().to_lowercase().replace('_', "-");
        let line = lines.get(key).copied().unwrap_or(1);
        let values = match value {
            Value::Sequence(items) => items
                .iter()
                .map(|item| scalar(item).ok_or(item))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|item| {
                    (
                        line,
                        format!(
                            "`{name}`: expected a list of plain values, found {}",
                            kind(item)
                        ),
                    )
                })?,
            other => vec![scalar(&other).ok_or_else(|| {
                (
                    line,
                    format!("`{name}`: expected a plain value, found {}", kind(&other)),
                )
            })?],
        };
        if values.is_empty() {
            return Err((line, format!("`{name}`: expected at least one value")));
        }
        out.push(Entry { name, values, line });
    }
    Ok(out)
}

fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command as Sub};
    use clap::{CommandFactory, FromArgMatches};

    fn parse(file: &str, args: &[&str]) -> Result<Cli, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clientrules.yaml");
        std::fs::write(&path, file).unwrap();
        let command = apply(Cli::command(), &path)?;
        let matches = command
            .try_get_matches_from(args)
            .map_err(|e| e.to_string())?;
        Cli::from_arg_matches(&matches).map_err(|e| e.to_string())
    }

    fn serve_settings(cli: Cli) -> crate::settings::Settings {
        match cli.command {
            Sub::Serve { settings } => settings,
            other => panic!("expected serve, got {other:?}"),
        }
    }

    #[test]
    fn the_file_sets_defaults_and_flags_win() {
        let file = "listen: 127.0.0.1:9999\nbody_limit: 2MiB\nworkers: 2\ntrusted-proxy: [10.0.0.0/8, 192.168.1.1]\nwatch-rules: false\n";
        let settings = serve_settings(parse(file, &["clientrules", "serve"]).unwrap());
        assert_eq!(settings.listen.to_string(), "127.0.0.1:9999");
        assert_eq!(settings.body_limit, 2 * 1024 * 1024);
        assert_eq!(settings.workers, 2);
        assert_eq!(settings.trusted_proxies.len(), 2);
        assert!(!settings.watch_rules);
        let settings =
            serve_settings(parse(file, &["clientrules", "serve", "--workers", "7"]).unwrap());
        assert_eq!(settings.workers, 7);
        assert_eq!(settings.body_limit, 2 * 1024 * 1024);
    }

    #[test]
    fn other_commands_take_the_settings_they_have() {
        let cli = parse(
            "rules: ./elsewhere\nworkers: 3\n",
            &["clientrules", "validate"],
        )
        .unwrap();
        match cli.command {
            Sub::Validate { rules, .. } => assert_eq!(rules, PathBuf::from("./elsewhere")),
            other => panic!("expected validate, got {other:?}"),
        }
    }

    #[test]
    fn mistakes_name_the_file_the_line_and_the_setting() {
        let e = parse(
            "listen: 127.0.0.1:8080\nbody-limt: 2MiB\n",
            &["clientrules", "serve"],
        )
        .unwrap_err();
        assert!(e.contains("line 2: unknown setting `body-limt`"), "{e}");
        assert!(e.contains("did you mean `body-limit`?"), "{e}");
        let e = parse("workers: many\n", &["clientrules", "serve"]).unwrap_err();
        assert!(e.contains("line 1: `workers`:"), "{e}");
        assert!(e.contains("many"), "{e}");
        let e = parse("body-timeout: 0s\n", &["clientrules", "serve"]).unwrap_err();
        assert!(e.contains("above zero"), "{e}");
        let e = parse("spectora-api-key: abc\n", &["clientrules", "serve"]).unwrap_err();
        assert!(
            e.contains("SPECTORA_API_KEY in the environment only"),
            "{e}"
        );
        let e = parse("- listen\n", &["clientrules", "serve"]).unwrap_err();
        assert!(e.contains("expected a mapping of settings"), "{e}");
        let e = parse("listen: {a: 1}\n", &["clientrules", "serve"]).unwrap_err();
        assert!(
            e.contains("`listen`: expected a plain value, found a mapping"),
            "{e}"
        );
        let e = parse("listen: [\n", &["clientrules", "serve"]).unwrap_err();
        assert!(e.contains("not valid YAML"), "{e}");
        // An empty file sets nothing.
        let settings = serve_settings(parse("", &["clientrules", "serve"]).unwrap());
        assert_eq!(settings.workers, 4);
    }

    #[test]
    fn nested_commands_take_the_file_too_and_keys_ignore_case() {
        let cli = parse(
            "DATA: /srv/clientrules\n",
            &["clientrules", "clients", "list"],
        )
        .unwrap();
        match cli.command {
            Sub::Clients { command } => match command {
                crate::cli::ClientsCommand::List { workspace, .. } => {
                    assert_eq!(workspace.data, PathBuf::from("/srv/clientrules"));
                }
                other => panic!("expected clients list, got {other:?}"),
            },
            other => panic!("expected clients, got {other:?}"),
        }
        let e = parse("SPECTORA_API_KEY: abc\n", &["clientrules", "serve"]).unwrap_err();
        assert!(e.contains("environment only"), "{e}");
        let e = parse("watch-rules: maybe\n", &["clientrules", "serve"]).unwrap_err();
        assert!(e.contains("expected one of: true, false"), "{e}");
        let e = parse(
            "listen: [127.0.0.1:1, 127.0.0.1:2]\n",
            &["clientrules", "serve"],
        )
        .unwrap_err();
        assert!(
            e.contains("`listen` takes one value, found a list of 2"),
            "{e}"
        );
        let e = parse("workers: four\n", &["clientrules", "serve"]).unwrap_err();
        assert!(e.contains("for example `4` (the default)"), "{e}");
    }

    #[test]
    fn the_file_is_found_by_flag_before_the_environment() {
        let args: Vec<OsString> = ["clientrules", "serve", "--config", "a.yaml"]
            .iter()
            .map(OsString::from)
            .collect();
        assert_eq!(locate(&args), Some(PathBuf::from("a.yaml")));
        let args: Vec<OsString> = ["clientrules", "--config=b.yaml", "serve"]
            .iter()
            .map(OsString::from)
            .collect();
        assert_eq!(locate(&args), Some(PathBuf::from("b.yaml")));
    }
}
