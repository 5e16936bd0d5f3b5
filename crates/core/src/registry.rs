//! The registry: models, methods and tasks by name, with typed parameters and defaults.
//!
//! A registry is built for one backend `B` (factories are generic over the backend); the
//! descriptions and parameters it lists do not depend on `B`.

use std::collections::BTreeMap;

use burn::tensor::backend::Backend;

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
    /// Validates a method's parameters.
    pub fn method_params(&self, name: &str, given: &RawParams) -> Result<Params> {
        let e = lookup(&self.methods, "method", name)?;
        Params::resolve(&format!("method {name}"), &e.params, given)
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
    /// Builds method `name` from validated `params`.
    pub fn build_method(&self, name: &str, params: &Params) -> Result<Box<dyn KvMethod<B>>> {
        (lookup(&self.methods, "method", name)?.factory)(params)
    }
    /// Builds task `name` from validated `params`.
    pub fn build_task(&self, name: &str, params: &Params) -> Result<Box<dyn Task>> {
        (lookup(&self.tasks, "task", name)?.factory)(params)
    }
}
