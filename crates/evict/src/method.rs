//! The `KvMethod` behind every eviction method.

use std::sync::Arc;

use burn::tensor::backend::Backend;

use longctx_core::{
    AttentionLayerSpec, CacheContext, KvCache, KvMethod, MethodCapabilities, Result,
};

use crate::cache::{LayerBudget, LayerPlan, Scorer, TopKCache, TopKPolicy};

/// What an eviction method crate provides: its capabilities and, per layer, a policy and a
/// scorer.
pub trait PolicyFactory<B: Backend>: Send + Sync {
    /// What the runner must do (observations per phase, compression schedule).
    fn capabilities(&self) -> MethodCapabilities;

    /// The policy and scorer of one layer under `budget` (resolved against the real element
    /// width at the first append).
    fn layer(
        &self,
        layer: &AttentionLayerSpec,
        ctx: &CacheContext,
        budget: LayerBudget,
    ) -> Result<(TopKPolicy, Box<dyn Scorer<B>>)>;
}

/// Makes one layer's cache from its plan.
type MakeCache<B> = dyn Fn(LayerPlan<B>) -> Box<dyn KvCache<B>> + Send + Sync;

/// A named eviction method: [`TopKCache`]s (or another cache over the same per-layer
/// [`LayerPlan`]) built from a [`PolicyFactory`].
pub struct EvictMethod<B: Backend> {
    name: &'static str,
    factory: Arc<dyn PolicyFactory<B>>,
    make: Box<MakeCache<B>>,
}

impl<B: Backend> EvictMethod<B> {
    /// The method `name` made of `factory`, with [`TopKCache`]s.
    pub fn new(name: &'static str, factory: impl PolicyFactory<B> + 'static) -> Self {
        Self::with_cache(name, Arc::new(factory), |plan| {
            Box::new(TopKCache::from_plan(plan))
        })
    }

    /// The method `name` made of `factory`, whose layer caches `make` builds from their plans
    /// (Ada-KV's ragged cache).
    pub fn with_cache(
        name: &'static str,
        factory: Arc<dyn PolicyFactory<B>>,
        make: impl Fn(LayerPlan<B>) -> Box<dyn KvCache<B>> + Send + Sync + 'static,
    ) -> Self {
        Self {
            name,
            factory,
            make: Box::new(make),
        }
    }

    /// Boxed, as `MethodDescriptor::build` returns it.
    pub fn boxed(
        name: &'static str,
        factory: impl PolicyFactory<B> + 'static,
    ) -> Result<Box<dyn KvMethod<B>>> {
        Ok(Box::new(Self::new(name, factory)))
    }
}

impl<B: Backend> KvMethod<B> for EvictMethod<B> {
    fn name(&self) -> &str {
        self.name
    }

    fn capabilities(&self) -> MethodCapabilities {
        self.factory.capabilities()
    }

    fn new_cache(
        &self,
        layer: &AttentionLayerSpec,
        ctx: &CacheContext,
    ) -> Result<Box<dyn KvCache<B>>> {
        Ok((self.make)(LayerPlan::new(
            self.factory.clone(),
            layer,
            ctx,
        )))
    }
}
