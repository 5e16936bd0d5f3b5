//! Study grids: a TOML study file (models x methods x budgets x tasks x backends x seeds)
//! expanded into cells, each resolved through the registry exactly as `longctx run` resolves
//! one ([`CellConfig::resolve`]), so a cell's content hash and record path are those
//! `longctx run` would write; and a deterministic partition of the cells into shards.
//!
//! The schema (see `studies/example.toml`):
//!
//! ```toml
//! name = "needle-4x"
//! out = "results/runs"        # optional (default results/runs), relative to the working directory
//! models = [{ name = "smollm2-135m" }]            # each may have params = { k = "v" }
//! methods = [{ name = "full" }, { name = "snapkv", params = { window = [16, 32] } }]
//! budgets = ["4x"]            # optional (default ["unlimited"]); only for methods that use one
//! tasks = [{ name = "niah", params = { unit = "tokens", lengths = "3300", digits = [7, 64] } }]
//! backends = ["cpu"]          # optional (default ["cpu"])
//! seeds = [0, 1]              # optional: the `seed` parameter of every task that declares one
//! max_prefill_chunk = 4096    # optional, as `longctx run --max-prefill-chunk`
//! ```
//!
//! A parameter value that is a list gives one cell per element (the cartesian product over
//! an entry's list-valued parameters); a list inside a list is one value, its elements joined
//! with commas (`lengths = [[512, 1024], [2048]]`: two cells). Scalars are passed as the text
//! `longctx run --NAME VALUE` would pass (`lengths = "1000,2000"` or `depths = 5`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use burn::backend::Flex;
use serde::Deserialize;

use longctx_backend::BackendKind;
use longctx_core::{Budget, Error, Params, RawParams, Registry, Result};
use longctx_engine::Sampling;
use longctx_harness::{config_hash, record_path, CellConfig, Component};

/// Where records go when neither the study nor the command line says.
pub const DEFAULT_OUT: &str = "results/runs";

/// A model, method or task of a study: its registered name and parameters.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Registered name (see `longctx list`); a method may be a composition `A+B`.
    pub name: String,
    /// Parameters; a list value gives one cell per element.
    #[serde(default)]
    pub params: BTreeMap<String, toml::Value>,
}

/// A study file as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Study {
    /// The study's name (shown in progress output).
    pub name: String,
    /// Directory records are written under (default [`DEFAULT_OUT`]).
    #[serde(default)]
    pub out: Option<PathBuf>,
    pub models: Vec<Entry>,
    pub methods: Vec<Entry>,
    /// Budgets for methods that use one (`MethodCapabilities::uses_budget`); the others run
    /// once, unlimited. Default `["unlimited"]`.
    #[serde(default)]
    pub budgets: Vec<String>,
    pub tasks: Vec<Entry>,
    /// Default `["cpu"]`.
    #[serde(default)]
    pub backends: Vec<String>,
    /// Values of the `seed` parameter, for every task that declares one (others run once).
    #[serde(default)]
    pub seeds: Vec<i64>,
    /// Largest prefill chunk in tokens regardless of the method.
    #[serde(default)]
    pub max_prefill_chunk: Option<usize>,
    /// Methods one shared prefill feeds at most (`longctx grid --max-shared` overrides it;
    /// default `longctx_engine::DEFAULT_MAX_SHARED`). Each member holds its own copy of the
    /// prompt's KV during prefill, so this trades memory for prefills saved.
    #[serde(default)]
    pub max_shared: Option<usize>,
    /// Once every cell of the study has its record, write `longctx report <out> --out
    /// <out>/report` and print its tables (default false).
    #[serde(default)]
    pub report: bool,
}

/// One cell of a study.
#[derive(Clone, Debug)]
pub struct Cell {
    /// The resolved configuration, as `longctx run` resolves it.
    pub config: CellConfig,
    /// [`config_hash`] of `config`.
    pub hash: String,
    /// Where its record lands ([`record_path`]).
    pub path: PathBuf,
    /// A short human-readable name: model, method, budget, task, backend and the parameters
    /// the study sets.
    pub label: String,
}

impl Cell {
    /// Whether the cell's record exists.
    pub fn is_done(&self) -> bool {
        self.path.exists()
    }
}

/// A share of a study's cells: shard `index` of `count`, numbered from 1 (`2/4` is the second
/// of four). Cells sorted by hash; cell `k` (from 0) belongs to shard `k % count + 1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// 1-based.
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// Whether the `k`-th cell (from 0, in hash order) belongs to this shard.
    pub fn owns(&self, k: usize) -> bool {
        k % self.count == self.index - 1
    }
}

impl FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad =
            || format!("shard '{s}': expected I/N with 1 <= I <= N (shards are numbered from 1)");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let index: usize = i.trim().parse().map_err(|_| bad())?;
        let count: usize = n.trim().parse().map_err(|_| bad())?;
        if count == 0 || index == 0 || index > count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// Sorts `cells` by hash and keeps those of `shard` (all of them for `None`).
pub fn shard_cells(mut cells: Vec<Cell>, shard: Option<Shard>) -> Vec<Cell> {
    cells.sort_by(|a, b| a.hash.cmp(&b.hash));
    match shard {
        None => cells,
        Some(s) => cells
            .into_iter()
            .enumerate()
            .filter(|(k, _)| s.owns(*k))
            .map(|(_, c)| c)
            .collect(),
    }
}

/// The text `longctx run --NAME VALUE` would pass for a scalar.
fn scalar_text(v: &toml::Value) -> std::result::Result<String, String> {
    match v {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        toml::Value::Array(items) => items
            .iter()
            .map(|x| match x {
                toml::Value::Array(_) | toml::Value::Table(_) => {
                    Err("lists nest at most two deep".to_string())
                }
                x => scalar_text(x),
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map(|v| v.join(",")),
        toml::Value::Datetime(_) => Err("a date is not a parameter value".into()),
        toml::Value::Table(_) => Err("a table is not a parameter value".into()),
    }
}

/// Every assignment of an entry's parameters: the cartesian product over list values.
fn expand_params(
    params: &BTreeMap<String, toml::Value>,
) -> std::result::Result<Vec<RawParams>, String> {
    let mut out = vec![RawParams::new()];
    for (name, value) in params {
        let choices = match value {
            toml::Value::Array(items) if items.is_empty() => {
                return Err(format!("parameter '{name}' is an empty list"))
            }
            toml::Value::Array(items) => items
                .iter()
                .map(scalar_text)
                .collect::<std::result::Result<Vec<_>, _>>(),
            v => scalar_text(v).map(|s| vec![s]),
        }
        .map_err(|e| format!("parameter '{name}': {e}"))?;
        out = out
            .into_iter()
            .flat_map(|base| {
                choices.iter().map(move |c| {
                    let mut p = base.clone();
                    p.insert(name.clone(), c.clone());
                    p
                })
            })
            .collect();
    }
    Ok(out)
}

/// `name` or `name(k=v, ...)` for the parameters a study sets.
fn describe(name: &str, raw: &RawParams) -> String {
    if raw.is_empty() {
        return name.to_string();
    }
    let params: Vec<String> = raw.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{name}({})", params.join(" "))
}

impl Study {
    /// Parses a study from TOML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Self> {
        let study: Study = toml::from_str(text).map_err(|e| Error::File {
            path: origin.to_path_buf(),
            message: format!("not a valid study file: {e}"),
        })?;
        Ok(study)
    }

    /// Reads and parses a study file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text, path)
    }

    /// The records directory: `out` if given, else the study's, else [`DEFAULT_OUT`].
    pub fn out_dir(&self, out: Option<&Path>) -> PathBuf {
        out.map(Path::to_path_buf)
            .or_else(|| self.out.clone())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_OUT))
    }

    /// Every cell, validated against the built-in registry, with its record under `out`, in
    /// study order (models, then methods with their parameter products, budgets, tasks with
    /// theirs, seeds, backends). Cells that resolve to the same configuration appear once.
    /// `origin` (the study file) names errors, which also name the entry and the problem.
    pub fn cells(&self, origin: &Path, out: &Path) -> Result<Vec<Cell>> {
        // Parameter specs and method capabilities do not depend on the backend.
        let registry: Registry<Flex> = longctx_registry::builtin();
        let err = |message: String| Error::File {
            path: origin.to_path_buf(),
            message,
        };
        for (list, what) in [
            (&self.models, "models"),
            (&self.methods, "methods"),
            (&self.tasks, "tasks"),
        ] {
            if list.is_empty() {
                return Err(err(format!("'{what}' is empty: give at least one")));
            }
        }
        let budgets = if self.budgets.is_empty() {
            vec![Budget::Unlimited]
        } else {
            self.budgets
                .iter()
                .enumerate()
                .map(|(i, b)| b.parse().map_err(|e| err(format!("budgets[{i}]: {e}"))))
                .collect::<Result<Vec<Budget>>>()?
        };
        let backends = if self.backends.is_empty() {
            vec![BackendKind::Cpu]
        } else {
            self.backends
                .iter()
                .enumerate()
                .map(|(i, b)| b.parse().map_err(|e| err(format!("backends[{i}]: {e}"))))
                .collect::<Result<Vec<BackendKind>>>()?
        };

        // Each list entry expanded and validated on its own, so an error names it.
        let expand = |kind: &str, entries: &[Entry]| -> Result<Vec<Vec<RawParams>>> {
            entries
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    let at = format!("{kind}[{i}] ({})", e.name);
                    let all = expand_params(&e.params).map_err(|m| err(format!("{at}: {m}")))?;
                    for raw in &all {
                        let checked = match kind {
                            "models" => registry.model_params(&e.name, raw).map(drop),
                            "methods" => registry
                                .method_params(&e.name, raw)
                                .and_then(|p| registry.build_method(&e.name, &p))
                                .map(drop),
                            _ => registry.task_params(&e.name, raw).map(drop),
                        };
                        checked.map_err(|m| err(format!("{at}: {m}")))?;
                    }
                    Ok(all)
                })
                .collect()
        };
        let models = expand("models", &self.models)?;
        let methods = expand("methods", &self.methods)?;
        let tasks = expand("tasks", &self.tasks)?;

        // Seeds go to the tasks that declare `seed`.
        let mut task_variants: Vec<Vec<RawParams>> = Vec::new();
        for (i, (entry, variants)) in self.tasks.iter().zip(&tasks).enumerate() {
            let declares_seed = registry
                .tasks()
                .find(|t| t.name == entry.name)
                .is_some_and(|t| t.params.iter().any(|p| p.name == "seed"));
            if self.seeds.is_empty() || !declares_seed {
                task_variants.push(variants.clone());
                continue;
            }
            if entry.params.contains_key("seed") {
                return Err(err(format!(
                    "tasks[{i}] ({}): sets 'seed' while the study gives 'seeds'; use one",
                    entry.name
                )));
            }
            task_variants.push(
                variants
                    .iter()
                    .flat_map(|raw| {
                        self.seeds.iter().map(move |s| {
                            let mut r = raw.clone();
                            r.insert("seed".into(), s.to_string());
                            r
                        })
                    })
                    .collect(),
            );
        }

        let mut cells = Vec::new();
        let mut seen = BTreeSet::new();
        for (model, model_variants) in self.models.iter().zip(&models) {
            for model_raw in model_variants {
                for (mi, (method, method_variants)) in self.methods.iter().zip(&methods).enumerate()
                {
                    for method_raw in method_variants {
                        let params = registry.method_params(&method.name, method_raw)?;
                        let uses_budget = registry
                            .build_method(&method.name, &params)?
                            .capabilities()
                            .uses_budget;
                        let method_budgets = if uses_budget {
                            budgets.clone()
                        } else {
                            vec![Budget::Unlimited]
                        };
                        for &budget in &method_budgets {
                            for (task, variants) in self.tasks.iter().zip(&task_variants) {
                                for task_raw in variants {
                                    for &backend in &backends {
                                        let config = CellConfig::resolve(
                                            &registry,
                                            (&model.name, model_raw),
                                            (&method.name, method_raw),
                                            budget,
                                            (&task.name, task_raw),
                                            backend,
                                            Sampling::Greedy,
                                            self.max_prefill_chunk,
                                        )
                                        .map_err(|e| {
                                            err(format!("methods[{mi}] ({}): {e}", method.name))
                                        })?;
                                        let hash = config_hash(&config);
                                        if !seen.insert(hash.clone()) {
                                            continue;
                                        }
                                        let label = format!(
                                            "{} | {} | {} | {} | {}",
                                            describe(&model.name, model_raw),
                                            describe(&method.name, method_raw),
                                            budget,
                                            describe(&task.name, task_raw),
                                            config.backend
                                        );
                                        cells.push(Cell {
                                            path: record_path(out, &config),
                                            config,
                                            hash,
                                            label,
                                        });
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok(cells)
    }
}

/// Whether two cells may share their prompts' prefill: the same configuration but for the
/// method and its budget (same model, task, backend, sampling and chunk limit, so the same
/// samples and prompts).
fn same_but_method(a: &CellConfig, b: &CellConfig) -> bool {
    let key = |c: &CellConfig| CellConfig {
        method: Component {
            name: String::new(),
            params: Params {
                owner: String::new(),
                values: BTreeMap::new(),
            },
        },
        budget: Budget::Unlimited,
        ..c.clone()
    };
    key(a) == key(b)
}

/// Groups `cells` for `longctx grid`'s shared prefill: the cells whose configurations differ
/// only in the method and its budget, and whose methods can share a prefill
/// (`MethodCapabilities::shares_prefill`: decided by capabilities, never by names), form one
/// group, run sample by sample with each prompt's context prefilled once
/// (`longctx_harness::run_cells_shared_resumable`). Every other cell is a group of its own.
/// Groups come in the order of their first cell, and each keeps the cells' order.
pub fn share_groups(cells: Vec<Cell>) -> Vec<Vec<Cell>> {
    // Capabilities do not depend on the backend.
    let registry: Registry<Flex> = longctx_registry::builtin();
    let shares = |c: &Cell| {
        registry
            .build_method(&c.config.method.name, &c.config.method.params)
            .is_ok_and(|m| m.capabilities().shares_prefill())
    };
    let mut groups: Vec<(bool, Vec<Cell>)> = Vec::new();
    for cell in cells {
        let share = shares(&cell);
        let joined = groups
            .iter_mut()
            .find(|(s, g)| share && *s && same_but_method(&g[0].config, &cell.config));
        match joined {
            Some((_, group)) => group.push(cell),
            None => groups.push((share, vec![cell])),
        }
    }
    groups.into_iter().map(|(_, g)| g).collect()
}

#[cfg(test)]
mod tests;
