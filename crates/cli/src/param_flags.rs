//! `--NAME VALUE` shorthands for registered parameters.
//!
//! `longctx run --task niah --lengths 1000,2000 --method kivi --bits 2` is read as
//! `--task-param lengths=1000,2000 --method-param bits=2`: any option that is not one of the
//! subcommand's own is looked up among the parameters of the chosen task, method and model.
//! Nothing here knows a particular method or task; the registry's parameter specs decide.

use anyhow::{bail, Result};
use clap::Command;

use longctx_core::ParamSpec;

/// An option the subcommand does not declare, kept for routing: `--key-digits 64` gives
/// `("key_digits", "64")` (dashes become underscores, as parameter names use them).
#[derive(Clone, Debug, PartialEq)]
pub struct ParamFlag {
    pub flag: String,
    pub name: String,
    pub value: String,
}

/// Splits `argv` into what clap should parse and the `--NAME VALUE` parameter flags unknown to
/// `subcommand_names`' definitions in `cli`. Other subcommands pass through untouched.
pub fn split_param_flags(
    cli: &Command,
    argv: Vec<String>,
    subcommand_names: &[&str],
) -> (Vec<String>, Vec<ParamFlag>) {
    let Some(sub_name) = argv.get(1).cloned() else {
        return (argv, Vec::new());
    };
    let Some(sub) = cli
        .get_subcommands()
        .find(|s| s.get_name() == sub_name && subcommand_names.contains(&s.get_name()))
    else {
        return (argv, Vec::new());
    };
    // Long option name -> whether it takes a value.
    let known: Vec<(String, bool)> = sub
        .get_arguments()
        .filter_map(|a| {
            a.get_long()
                .map(|l| (l.to_string(), a.get_action().takes_values()))
        })
        .chain([("help".to_string(), false)])
        .collect();

    let mut kept = argv[..2].to_vec();
    let mut flags = Vec::new();
    let mut i = 2;
    while i < argv.len() {
        let arg = &argv[i];
        i += 1;
        let Some(body) = arg.strip_prefix("--").filter(|b| !b.is_empty()) else {
            kept.push(arg.clone());
            continue;
        };
        let (name, inline_value) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (body, None),
        };
        if let Some((_, takes_value)) = known.iter().find(|(l, _)| l == name) {
            kept.push(arg.clone());
            if *takes_value && inline_value.is_none() && i < argv.len() {
                kept.push(argv[i].clone());
                i += 1;
            }
            continue;
        }
        // A parameter flag: its value is inline, the next word, or (a bare flag) "true".
        let value = match inline_value {
            Some(v) => v,
            None if i < argv.len() && !argv[i].starts_with("--") => {
                i += 1;
                argv[i - 1].clone()
            }
            None => "true".to_string(),
        };
        flags.push(ParamFlag {
            flag: format!("--{name}"),
            name: name.replace('-', "_"),
            value,
        });
    }
    (kept, flags)
}

/// Where a parameter flag goes.
pub struct ParamOwner<'a> {
    /// e.g. "task", "method", "model".
    pub kind: &'static str,
    /// The registered name, e.g. "niah".
    pub name: &'a str,
    pub specs: &'a [ParamSpec],
}

/// Appends each flag as `name=value` to the one owner declaring that parameter (`targets[i]`
/// belongs to `owners[i]`). A flag no owner declares, or that several declare, is an error that
/// says what is valid and how to disambiguate.
pub fn route_param_flags(
    flags: &[ParamFlag],
    owners: &[ParamOwner],
    targets: &mut [&mut Vec<String>],
) -> Result<()> {
    assert_eq!(owners.len(), targets.len());
    for flag in flags {
        let matches: Vec<usize> = owners
            .iter()
            .enumerate()
            .filter(|(_, o)| o.specs.iter().any(|s| s.name == flag.name))
            .map(|(i, _)| i)
            .collect();
        match matches[..] {
            [one] => targets[one].push(format!("{}={}", flag.name, flag.value)),
            [] => {
                let valid: Vec<String> = owners
                    .iter()
                    .map(|o| {
                        let names: Vec<String> =
                            o.specs.iter().map(|s| s.name.replace('_', "-")).collect();
                        format!(
                            "{} {}: {}",
                            o.kind,
                            o.name,
                            if names.is_empty() {
                                "none".to_string()
                            } else {
                                names.join(", ")
                            }
                        )
                    })
                    .collect();
                bail!(
                    "unknown option '{}': not an option of this command, nor a parameter of {} \
                     (parameters by owner: {})",
                    flag.flag,
                    owners
                        .iter()
                        .map(|o| format!("{} {}", o.kind, o.name))
                        .collect::<Vec<_>>()
                        .join(", "),
                    valid.join("; ")
                )
            }
            _ => {
                let both: Vec<String> = matches
                    .iter()
                    .map(|&i| {
                        format!(
                            "{} {} (--{}-param {}=...)",
                            owners[i].kind, owners[i].name, owners[i].kind, flag.name
                        )
                    })
                    .collect();
                bail!(
                    "option '{}' is ambiguous: it is a parameter of {}; give it with one of \
                     those explicit forms",
                    flag.flag,
                    both.join(" and ")
                )
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, ArgAction};

    fn cli() -> Command {
        Command::new("longctx").subcommand(
            Command::new("run")
                .arg(Arg::new("task").long("task"))
                .arg(Arg::new("force").long("force").action(ArgAction::SetTrue)),
        )
    }

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn unknown_options_become_parameter_flags_and_known_ones_stay() {
        let (kept, flags) = split_param_flags(
            &cli(),
            argv("longctx run --lengths 1000,2000 --task niah --force --key-digits=64 --chat --bits 2"),
            &["run"],
        );
        assert_eq!(kept, argv("longctx run --task niah --force"));
        let got: Vec<(&str, &str)> = flags
            .iter()
            .map(|f| (f.name.as_str(), f.value.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("lengths", "1000,2000"),
                ("key_digits", "64"),
                ("chat", "true"),
                ("bits", "2")
            ]
        );
        // Other subcommands are not touched.
        let (kept, flags) = split_param_flags(&cli(), argv("longctx list --lengths 3"), &["run"]);
        assert_eq!(kept, argv("longctx list --lengths 3"));
        assert!(flags.is_empty());
    }

    #[test]
    fn flags_go_to_the_one_owner_that_declares_them() {
        let task = [
            ParamSpec::int_list("lengths", &[512], "lengths"),
            ParamSpec::int("seed", 1, "seed"),
        ];
        let method = [
            ParamSpec::int("bits", 2, "bits"),
            ParamSpec::int("seed", 1, "seed"),
        ];
        let owners = [
            ParamOwner {
                kind: "task",
                name: "niah",
                specs: &task,
            },
            ParamOwner {
                kind: "method",
                name: "kivi",
                specs: &method,
            },
        ];
        let flag = |name: &str, value: &str| ParamFlag {
            flag: format!("--{name}"),
            name: name.to_string(),
            value: value.to_string(),
        };
        let (mut t, mut m) = (Vec::new(), Vec::new());
        route_param_flags(
            &[flag("lengths", "1000,2000"), flag("bits", "4")],
            &owners,
            &mut [&mut t, &mut m],
        )
        .unwrap();
        assert_eq!(t, ["lengths=1000,2000"]);
        assert_eq!(m, ["bits=4"]);

        let err = route_param_flags(&[flag("bitz", "4")], &owners, &mut [&mut t, &mut m])
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown option '--bitz'"), "{err}");
        assert!(err.contains("method kivi: bits, seed"), "{err}");
        let err = route_param_flags(&[flag("seed", "4")], &owners, &mut [&mut t, &mut m])
            .unwrap_err()
            .to_string();
        assert!(err.contains("ambiguous"), "{err}");
        assert!(err.contains("--task-param seed=..."), "{err}");
    }
}
