//! Typed parameters with defaults, declared by every registered model, method and task.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The type of a parameter.
#[derive(Clone, Debug, PartialEq)]
pub enum ParamKind {
    Int,
    Float,
    Bool,
    Str,
    /// One of a fixed set of strings.
    Choice(&'static [&'static str]),
    /// A comma-separated list of integers.
    IntList,
    /// A comma-separated list of floats.
    FloatList,
}

impl fmt::Display for ParamKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamKind::Int => write!(f, "int"),
            ParamKind::Float => write!(f, "float"),
            ParamKind::Bool => write!(f, "bool"),
            ParamKind::Str => write!(f, "string"),
            ParamKind::Choice(c) => write!(f, "one of {}", c.join("|")),
            ParamKind::IntList => write!(f, "int list"),
            ParamKind::FloatList => write!(f, "float list"),
        }
    }
}

/// A parameter value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ParamValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    IntList(Vec<i64>),
    FloatList(Vec<f64>),
}

impl fmt::Display for ParamValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |v: Vec<String>| v.join(",");
        match self {
            ParamValue::Bool(b) => write!(f, "{b}"),
            ParamValue::Int(i) => write!(f, "{i}"),
            ParamValue::Float(x) => write!(f, "{x}"),
            ParamValue::Str(s) => write!(f, "{s}"),
            ParamValue::IntList(v) => {
                write!(f, "{}", join(v.iter().map(|x| x.to_string()).collect()))
            }
            ParamValue::FloatList(v) => {
                write!(f, "{}", join(v.iter().map(|x| x.to_string()).collect()))
            }
        }
    }
}

/// The declaration of one parameter: name, type, default and help.
#[derive(Clone, Debug)]
pub struct ParamSpec {
    pub name: &'static str,
    pub kind: ParamKind,
    pub default: ParamValue,
    pub help: &'static str,
}

impl ParamSpec {
    pub fn int(name: &'static str, default: i64, help: &'static str) -> Self {
        Self {
            name,
            kind: ParamKind::Int,
            default: ParamValue::Int(default),
            help,
        }
    }
    pub fn float(name: &'static str, default: f64, help: &'static str) -> Self {
        Self {
            name,
            kind: ParamKind::Float,
            default: ParamValue::Float(default),
            help,
        }
    }
    pub fn bool(name: &'static str, default: bool, help: &'static str) -> Self {
        Self {
            name,
            kind: ParamKind::Bool,
            default: ParamValue::Bool(default),
            help,
        }
    }
    pub fn string(name: &'static str, default: &str, help: &'static str) -> Self {
        Self {
            name,
            kind: ParamKind::Str,
            default: ParamValue::Str(default.into()),
            help,
        }
    }
    pub fn choice(
        name: &'static str,
        choices: &'static [&'static str],
        default: &str,
        help: &'static str,
    ) -> Self {
        Self {
            name,
            kind: ParamKind::Choice(choices),
            default: ParamValue::Str(default.into()),
            help,
        }
    }
    pub fn int_list(name: &'static str, default: &[i64], help: &'static str) -> Self {
        Self {
            name,
            kind: ParamKind::IntList,
            default: ParamValue::IntList(default.to_vec()),
            help,
        }
    }
    pub fn float_list(name: &'static str, default: &[f64], help: &'static str) -> Self {
        Self {
            name,
            kind: ParamKind::FloatList,
            default: ParamValue::FloatList(default.to_vec()),
            help,
        }
    }

    /// Parses `text` as this parameter's type.
    pub fn parse(&self, owner: &str, text: &str) -> Result<ParamValue> {
        let err = |reason: String| Error::InvalidParam {
            owner: owner.to_string(),
            param: self.name.to_string(),
            reason,
        };
        let t = text.trim();
        match &self.kind {
            ParamKind::Int => t
                .parse()
                .map(ParamValue::Int)
                .map_err(|_| err(format!("'{t}' is not an integer"))),
            ParamKind::Float => t
                .parse()
                .map(ParamValue::Float)
                .map_err(|_| err(format!("'{t}' is not a number"))),
            ParamKind::Bool => match t.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Ok(ParamValue::Bool(true)),
                "false" | "0" | "no" | "off" => Ok(ParamValue::Bool(false)),
                _ => Err(err(format!("'{t}' is not a boolean (true/false)"))),
            },
            ParamKind::Str => Ok(ParamValue::Str(t.to_string())),
            ParamKind::Choice(choices) => {
                if choices.contains(&t) {
                    Ok(ParamValue::Str(t.to_string()))
                } else {
                    Err(err(format!("'{t}' is not one of {}", choices.join(", "))))
                }
            }
            ParamKind::IntList => t
                .split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|s| s.trim().parse::<i64>())
                .collect::<std::result::Result<Vec<_>, _>>()
                .map(ParamValue::IntList)
                .map_err(|_| err(format!("'{t}' is not a comma-separated list of integers"))),
            ParamKind::FloatList => t
                .split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|s| s.trim().parse::<f64>())
                .collect::<std::result::Result<Vec<_>, _>>()
                .map(ParamValue::FloatList)
                .map_err(|_| err(format!("'{t}' is not a comma-separated list of numbers"))),
        }
    }
}

/// Parameters as a user wrote them (`name=value` pairs), before validation.
pub type RawParams = BTreeMap<String, String>;

/// Parses `name=value` strings (as given on the command line) into [`RawParams`].
pub fn parse_assignments(items: &[String]) -> Result<RawParams> {
    let mut out = RawParams::new();
    for item in items {
        let (k, v) = item.split_once('=').ok_or_else(|| {
            Error::InvalidInput(format!("parameter '{item}' is not of the form name=value"))
        })?;
        out.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(out)
}

/// Validated parameters: every declared parameter has a value (given or default).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Params {
    pub owner: String,
    pub values: BTreeMap<String, ParamValue>,
}

impl Params {
    /// Checks `given` against `specs`, fills defaults and parses values.
    /// An unknown name is an error that lists the valid ones.
    pub fn resolve(owner: &str, specs: &[ParamSpec], given: &RawParams) -> Result<Params> {
        let mut values = BTreeMap::new();
        for (name, text) in given {
            let spec =
                specs
                    .iter()
                    .find(|s| s.name == name)
                    .ok_or_else(|| Error::UnknownParam {
                        owner: owner.to_string(),
                        param: name.clone(),
                        valid: specs.iter().map(|s| s.name.to_string()).collect(),
                    })?;
            values.insert(name.clone(), spec.parse(owner, text)?);
        }
        for spec in specs {
            values
                .entry(spec.name.to_string())
                .or_insert_with(|| spec.default.clone());
        }
        Ok(Params {
            owner: owner.to_string(),
            values,
        })
    }

    fn get(&self, name: &str) -> Result<&ParamValue> {
        self.values.get(name).ok_or_else(|| Error::UnknownParam {
            owner: self.owner.clone(),
            param: name.to_string(),
            valid: self.values.keys().cloned().collect(),
        })
    }

    fn wrong(&self, name: &str, want: &str) -> Error {
        Error::InvalidParam {
            owner: self.owner.clone(),
            param: name.to_string(),
            reason: format!("expected {want}"),
        }
    }

    pub fn int(&self, name: &str) -> Result<i64> {
        match self.get(name)? {
            ParamValue::Int(i) => Ok(*i),
            _ => Err(self.wrong(name, "an integer")),
        }
    }

    /// An integer parameter that must be at least `min`, as `usize`.
    pub fn usize_at_least(&self, name: &str, min: usize) -> Result<usize> {
        let v = self.int(name)?;
        if v < min as i64 {
            return Err(Error::InvalidParam {
                owner: self.owner.clone(),
                param: name.to_string(),
                reason: format!("{v} is below the minimum {min}"),
            });
        }
        Ok(v as usize)
    }

    pub fn float(&self, name: &str) -> Result<f64> {
        match self.get(name)? {
            ParamValue::Float(x) => Ok(*x),
            ParamValue::Int(i) => Ok(*i as f64),
            _ => Err(self.wrong(name, "a number")),
        }
    }

    pub fn bool(&self, name: &str) -> Result<bool> {
        match self.get(name)? {
            ParamValue::Bool(b) => Ok(*b),
            _ => Err(self.wrong(name, "a boolean")),
        }
    }

    pub fn str(&self, name: &str) -> Result<&str> {
        match self.get(name)? {
            ParamValue::Str(s) => Ok(s),
            _ => Err(self.wrong(name, "a string")),
        }
    }

    pub fn int_list(&self, name: &str) -> Result<Vec<i64>> {
        match self.get(name)? {
            ParamValue::IntList(v) => Ok(v.clone()),
            ParamValue::Int(i) => Ok(vec![*i]),
            _ => Err(self.wrong(name, "a list of integers")),
        }
    }

    pub fn float_list(&self, name: &str) -> Result<Vec<f64>> {
        match self.get(name)? {
            ParamValue::FloatList(v) => Ok(v.clone()),
            ParamValue::Float(x) => Ok(vec![*x]),
            _ => Err(self.wrong(name, "a list of numbers")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs() -> Vec<ParamSpec> {
        vec![
            ParamSpec::int("bits", 2, "bits per code"),
            ParamSpec::choice("axis", &["channel", "token"], "channel", "key axis"),
            ParamSpec::float_list("depths", &[0.0, 0.5], "depths"),
            ParamSpec::bool("query_aware", false, "include question"),
        ]
    }

    #[test]
    fn defaults_fill_and_values_parse() {
        let given = parse_assignments(&["bits=4".into(), "depths=0.1, 0.2".into()]).unwrap();
        let p = Params::resolve("kivi", &specs(), &given).unwrap();
        assert_eq!(p.int("bits").unwrap(), 4);
        assert_eq!(p.str("axis").unwrap(), "channel");
        assert_eq!(p.float_list("depths").unwrap(), vec![0.1, 0.2]);
        assert!(!p.bool("query_aware").unwrap());
    }

    #[test]
    fn unknown_param_lists_valid_ones() {
        let given = parse_assignments(&["bitz=4".into()]).unwrap();
        let err = Params::resolve("kivi", &specs(), &given)
            .unwrap_err()
            .to_string();
        assert!(err.contains("kivi has no parameter 'bitz'"), "{err}");
        assert!(err.contains("bits, axis, depths, query_aware"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        for (assign, needle) in [
            ("bits=two", "'two' is not an integer"),
            ("axis=row", "'row' is not one of channel, token"),
            ("query_aware=maybe", "not a boolean"),
            ("depths=0.1,x", "not a comma-separated list of numbers"),
        ] {
            let given = parse_assignments(&[assign.into()]).unwrap();
            let err = Params::resolve("m", &specs(), &given)
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{assign}: {err}");
        }
        assert!(parse_assignments(&["novalue".into()]).is_err());
    }

    #[test]
    fn minimum_is_enforced() {
        let given = parse_assignments(&["bits=0".into()]).unwrap();
        let p = Params::resolve("m", &specs(), &given).unwrap();
        assert!(p.usize_at_least("bits", 1).is_err());
    }
}
