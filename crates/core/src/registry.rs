//! The registry: models, methods and tasks by name, with typed parameters and defaults.
//!
//! A registry is built for one backend `B` (factories are generic over the backend); the
//! descriptions and parameters it lists do not depend on `B`.

use std::collections::BTreeMap;

use burn::tensor::backend::Backend;

use crate::compose::{self, Composed};
use crate::error::{Error, Result};
use crate::method::{KvMethod, MethodDescriptor};
use crate::model::{LoadedModel, ModelDescriptor};
use crate::params::{ParamSpec, Params, RawParams};
use crate::task::{Task, TaskDescriptor};

type BuildMethod<B> = fn(&Params) -> Result<Box<dyn KvMethod<B>>>;
type LoadModel<B> = fn(&Params, &burn::tensor::Device<B>) -> Result<LoadedModel<B>>;
type BuildTask = fn(&Params) -> Result<Box<dyn Task>>;

/// A registered entry: name, description, parameters and a factory.
pub struct Entry<F> {
    pub name: &'static str,
    pub description: &'static str,
    pub params: Vec<ParamSpec>,
    factory: F,
}

/// Everything that can be named on the command line or in a study file.
pub struct Registry<B: Backend> {
    models: BTreeMap<&'static str, Entry<LoadModel<B>>>,
    methods: BTreeMap<&'static str, Entry<BuildMethod<B>>>,
    tasks: BTreeMap<&'static str, Entry<BuildTask>>,
}

impl<B: Backend> Default for Registry<B> {
    fn default() -> Self {
        Self {
            models: BTreeMap::new(),
            methods: BTreeMap::new(),
            tasks: BTreeMap::new(),
        }
    }
}

/// Every parameter name of a composition's halves, written `A.name` and `B.name`.
fn composed_spec_names<F>(a: &Entry<F>, b: &Entry<F>) -> Vec<String> {
    [a, b]
        .iter()
        .flat_map(|e| {
            e.params
                .iter()
                .map(move |p| format!("{}.{}", e.name, p.name))
        })
        .collect()
}

fn lookup<'a, F>(
    map: &'a BTreeMap<&'static str, Entry<F>>,
    kind: &'static str,
    name: &str,
) -> Result<&'a Entry<F>> {
    map.get(name).ok_or_else(|| Error::UnknownName {
        kind,
        name: name.to_string(),
        valid: map.keys().map(|k| k.to_string()).collect(),
    })
}

impl<B: Backend> Registry<B> {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a model family. Panics on a duplicate name (a programming error).
    pub fn register_model<M: ModelDescriptor>(&mut self) -> &mut Self {
        let entry = Entry {
            name: M::NAME,
            description: M::DESCRIPTION,
            params: M::params(),
            factory: M::load::<B> as LoadModel<B>,
        };
        assert!(
            self.models.insert(M::NAME, entry).is_none(),
            "model {} registered twice",
            M::NAME
        );
        self
    }

    /// Registers a KV method. Panics on a duplicate name (a programming error).
    pub fn register_method<M: MethodDescriptor>(&mut self) -> &mut Self {
        let entry = Entry {
            name: M::NAME,
            description: M::DESCRIPTION,
            params: M::params(),
            factory: M::build::<B> as BuildMethod<B>,
        };
        assert!(
            self.methods.insert(M::NAME, entry).is_none(),
            "method {} registered twice",
            M::NAME
        );
        self
    }

    /// Registers a task. Panics on a duplicate name (a programming error).
    pub fn register_task<T: TaskDescriptor>(&mut self) -> &mut Self {
        let entry = Entry {
            name: T::NAME,
            description: T::DESCRIPTION,
            params: T::params(),
            factory: T::build as BuildTask,
        };
        assert!(
            self.tasks.insert(T::NAME, entry).is_none(),
            "task {} registered twice",
            T::NAME
        );
        self
    }

    /// Registered models, by name.
    pub fn models(&self) -> impl Iterator<Item = &Entry<LoadModel<B>>> {
        self.models.values()
    }
    /// Registered methods, by name.
    pub fn methods(&self) -> impl Iterator<Item = &Entry<BuildMethod<B>>> {
        self.methods.values()
    }
    /// Registered tasks, by name.
    pub fn tasks(&self) -> impl Iterator<Item = &Entry<BuildTask>> {
        self.tasks.values()
    }

    /// Validates a model's parameters.
    pub fn model_params(&self, name: &str, given: &RawParams) -> Result<Params> {
        let e = lookup(&self.models, "model", name)?;
        Params::resolve(&format!("model {name}"), &e.params, given)
    }
    /// Validates a method's parameters. For a composition `A+B` a parameter goes to the half
    /// that declares it; one both declare must be written `A.name` or `B.name`. The validated
    /// values are keyed `A.name` and `B.name`.
    pub fn method_params(&self, name: &str, given: &RawParams) -> Result<Params> {
        let Some((a, b)) = compose::split(name) else {
            let e = lookup(&self.methods, "method", name)?;
            return Params::resolve(&format!("method {name}"), &e.params, given);
        };
        let (ea, eb) = (self.method_entry(a)?, self.method_entry(b)?);
        let mut parts = [RawParams::new(), RawParams::new()];
        for (key, value) in given {
            let half = match key.split_once('.') {
                Some((owner, _)) if owner == a => Some((0, &key[a.len() + 1..])),
                Some((owner, _)) if owner == b => Some((1, &key[b.len() + 1..])),
                _ => None,
            };
            let (i, param) = match half {
                Some(h) => h,
                None => {
                    let declares =
                        |e: &Entry<BuildMethod<B>>| e.params.iter().any(|p| p.name == key);
                    match (declares(ea), declares(eb)) {
                        (true, true) => {
                            return Err(Error::InvalidParam {
                                owner: format!("method {name}"),
                                param: key.clone(),
                                reason: format!(
                                    "both {a} and {b} declare it; write {a}.{key} or {b}.{key}"
                                ),
                            })
                        }
                        (true, false) => (0, key.as_str()),
                        (false, true) => (1, key.as_str()),
                        (false, false) => {
                            return Err(Error::UnknownParam {
                                owner: format!("method {name}"),
                                param: key.clone(),
                                valid: composed_spec_names(ea, eb),
                            })
                        }
                    }
                }
            };
            parts[i].insert(param.to_string(), value.clone());
        }
        let mut values = std::collections::BTreeMap::new();
        for ((half, e), raw) in [a, b].into_iter().zip([ea, eb]).zip(&parts) {
            let p = Params::resolve(&format!("method {name} ({half})"), &e.params, raw)?;
            values.extend(
                p.values
                    .into_iter()
                    .map(|(k, v)| (format!("{half}.{k}"), v)),
            );
        }
        Ok(Params {
            owner: format!("method {name}"),
            values,
        })
    }

    /// The parameters a method (or each half of a composition `A+B`) declares, for routing
    /// command-line flags: a composition's are the union, the selector's first.
    pub fn method_specs(&self, name: &str) -> Result<Vec<ParamSpec>> {
        let Some((a, b)) = compose::split(name) else {
            return Ok(lookup(&self.methods, "method", name)?.params.clone());
        };
        let mut specs = self.method_entry(a)?.params.clone();
        for spec in &self.method_entry(b)?.params {
            if !specs.iter().any(|s| s.name == spec.name) {
                specs.push(spec.clone());
            }
        }
        Ok(specs)
    }

    /// A registered (not composed) method; a name with two separators is refused here.
    fn method_entry(&self, name: &str) -> Result<&Entry<BuildMethod<B>>> {
        lookup(&self.methods, "method", name)
    }
    /// Validates a task's parameters.
    pub fn task_params(&self, name: &str, given: &RawParams) -> Result<Params> {
        let e = lookup(&self.tasks, "task", name)?;
        Params::resolve(&format!("task {name}"), &e.params, given)
    }

    /// Loads model `name` with validated `params` on `device`.
    pub fn load_model(
        &self,
        name: &str,
        params: &Params,
        device: &burn::tensor::Device<B>,
    ) -> Result<LoadedModel<B>> {
        (lookup(&self.models, "model", name)?.factory)(params, device)
    }
    /// Builds method `name` from validated `params` (see [`Self::method_params`] for
    /// compositions).
    pub fn build_method(&self, name: &str, params: &Params) -> Result<Box<dyn KvMethod<B>>> {
        let Some((a, b)) = compose::split(name) else {
            return (lookup(&self.methods, "method", name)?.factory)(params);
        };
        let half = |part: &str| -> Result<Box<dyn KvMethod<B>>> {
            let prefix = format!("{part}.");
            let values = params
                .values
                .iter()
                .filter_map(|(k, v)| Some((k.strip_prefix(&prefix)?.to_string(), v.clone())))
                .collect();
            let p = Params {
                owner: format!("method {name} ({part})"),
                values,
            };
            (self.method_entry(part)?.factory)(&p)
        };
        // A store that rotates keys back by position gets one position per slot, while the
        // selector's heads may keep different tokens in the same slot.
        if params.values.get(&format!("{b}.key_position"))
            == Some(&crate::ParamValue::Str("pre_rope".into()))
        {
            return Err(Error::InvalidParam {
                owner: format!("method {name}"),
                param: format!("{b}.key_position"),
                reason: "pre_rope cannot store a per-head selection: the store un-rotates keys \
                         by one position per slot, and the selector's heads keep different \
                         tokens in the same slot; use post_rope"
                    .into(),
            });
        }
        Ok(Box::new(Composed::new(half(a)?, half(b)?)?))
    }
    /// Builds task `name` from validated `params`.
    pub fn build_task(&self, name: &str, params: &Params) -> Result<Box<dyn Task>> {
        (lookup(&self.tasks, "task", name)?.factory)(params)
    }
}
