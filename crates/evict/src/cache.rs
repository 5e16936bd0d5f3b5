//! The generic "keep the top-k per head" cache.

use std::sync::Arc;

use burn::tensor::{backend::Backend, Tensor};

use longctx_core::{
    AttentionLayerSpec, AttentionObservation, Budget, CacheContext, CompressionPhase, Error,
    KvCache, KvView, Result, ViewWindow,
};
use longctx_kvquant::KeyRotation;

use crate::method::PolicyFactory;
use crate::select::{select, Keep, Protect};
use crate::store::DenseStore;

/// Scores the held tokens of one layer; a method that only ranks tokens is one of these.
pub trait Scorer<B: Backend>: Send {
    /// Receives what attention handed over, in the phases the method observes. The store
    /// already holds this forward's tokens (appended before attention), and the weights cover
    /// its slots in order.
    fn observe(
        &mut self,
        _observation: &AttentionObservation<B>,
        _store: &DenseStore<B>,
    ) -> Result<()> {
        Ok(())
    }

    /// Scores `[H_kv][n]` of the `n` held slots (higher keeps), or a single row shared by every
    /// head, when compression at `phase` must choose.
    fn scores(&mut self, phase: CompressionPhase, store: &DenseStore<B>) -> Result<Vec<Vec<f32>>>;

    /// The store kept `keep`: per-slot state must follow.
    fn retained(&mut self, _keep: &Keep) {}
}

/// A scorer for methods whose protected sets fill the budget (StreamingLLM): no score needed.
pub struct NoScores;

impl<B: Backend> Scorer<B> for NoScores {
    fn scores(&mut self, _: CompressionPhase, _: &DenseStore<B>) -> Result<Vec<Vec<f32>>> {
        Ok(Vec::new())
    }
}

/// Where attention sees the held keys.
#[derive(Clone, Debug)]
pub enum PositionMode {
    /// At the positions they were written at (keys keep the model's rotation).
    Original,
    /// At contiguous positions inside the cache, ending at the newest token's position (the
    /// StreamingLLM paper's code): keys are stored un-rotated and rotated to their slot's
    /// virtual position at each view, so RoPE distances are distances in cache slots.
    Reindexed(KeyRotation),
}

impl PositionMode {
    /// `original` or `reindexed` for a layer (reindexing needs the layer's RoPE).
    pub fn parse(owner: &str, text: &str, layer: &AttentionLayerSpec) -> Result<Self> {
        match text {
            "original" => Ok(Self::Original),
            "reindexed" => {
                let spec = layer.rope.as_ref().ok_or_else(|| {
                    Error::InvalidInput(format!(
                        "{owner}: positions=reindexed needs the model to declare layer {}'s RoPE, and it does not",
                        layer.layer
                    ))
                })?;
                Ok(Self::Reindexed(KeyRotation::new(spec, layer.head_dim)?))
            }
            other => Err(Error::InvalidInput(format!(
                "{owner}: positions must be original or reindexed, not '{other}'"
            ))),
        }
    }
}

/// A layer's budget before the stored element width is known.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LayerBudget {
    Unlimited,
    Tokens(usize),
}

impl LayerBudget {
    /// Tokens a layer of `layer`'s shape may hold under `ctx.budget`, when each stored element
    /// takes `element_bytes` (bytes budgets are divided by the real bytes per token).
    pub fn resolve(ctx: &CacheContext, layer: &AttentionLayerSpec, element_bytes: usize) -> Self {
        let bytes_per_token = 2 * layer.n_kv_heads * layer.head_dim * element_bytes;
        match ctx.budget {
            Budget::Unlimited => Self::Unlimited,
            b => Self::Tokens(
                b.tokens_for(ctx.prompt_tokens, bytes_per_token)
                    .unwrap_or(usize::MAX),
            ),
        }
    }

    /// The tokens, or `None` when unlimited.
    pub fn tokens(self) -> Option<usize> {
        match self {
            Self::Unlimited => None,
            Self::Tokens(t) => Some(t),
        }
    }
}

/// How one layer's cache compresses.
#[derive(Clone, Debug)]
pub struct TopKPolicy {
    /// Tokens kept per head after a compression (`usize::MAX`: unlimited).
    pub budget: usize,
    /// Slots kept before any score is read.
    pub protect: Protect,
    /// Phases at which the cache evicts down to the budget.
    pub at_prefill_chunk: bool,
    pub at_prefill_end: bool,
    pub at_decode: bool,
    /// Sparse attention pattern while the prompt is processed (StreamingLLM); dropped after
    /// the end of prefill.
    pub prefill_window: Option<ViewWindow>,
    pub positions: PositionMode,
}

impl TopKPolicy {
    /// Evict to `budget` at the end of prefill only, nothing protected, original positions:
    /// the common case that methods adjust with struct update syntax.
    pub fn after_prefill(budget: LayerBudget) -> Self {
        Self {
            budget: budget.tokens().unwrap_or(usize::MAX),
            protect: Protect::default(),
            at_prefill_chunk: false,
            at_prefill_end: true,
            at_decode: false,
            prefill_window: None,
            positions: PositionMode::Original,
        }
    }

    /// Whether the cache evicts at `phase`.
    pub fn compresses_at(&self, phase: CompressionPhase) -> bool {
        match phase {
            CompressionPhase::PrefillChunk => self.at_prefill_chunk,
            CompressionPhase::PrefillEnd => self.at_prefill_end,
            CompressionPhase::Decode => self.at_decode,
        }
    }
}

/// A layer's policy and scorer, built by a [`PolicyFactory`] at the first append (when the
/// stored element width, and so a bytes budget, is known). [`TopKCache`] and caches that store
/// differently (Ada-KV's ragged one) share it.
pub struct LayerPlan<B: Backend> {
    factory: Arc<dyn PolicyFactory<B>>,
    layer: AttentionLayerSpec,
    ctx: CacheContext,
    built: Option<(TopKPolicy, Box<dyn Scorer<B>>)>,
}

impl<B: Backend> LayerPlan<B> {
    /// The plan `factory` builds for `layer` and `ctx`.
    pub fn new(
        factory: Arc<dyn PolicyFactory<B>>,
        layer: &AttentionLayerSpec,
        ctx: &CacheContext,
    ) -> Self {
        Self {
            factory,
            layer: layer.clone(),
            ctx: ctx.clone(),
            built: None,
        }
    }

    /// The layer's shape.
    pub fn layer(&self) -> &AttentionLayerSpec {
        &self.layer
    }

    /// Builds the policy and scorer (once) for elements stored `element_bytes` wide.
    pub fn build(&mut self, element_bytes: usize) -> Result<&TopKPolicy> {
        if self.built.is_none() {
            let budget = LayerBudget::resolve(&self.ctx, &self.layer, element_bytes);
            self.built = Some(self.factory.layer(&self.layer, &self.ctx, budget)?);
        }
        Ok(&self.built.as_ref().expect("built above").0)
    }

    /// The policy, once built.
    pub fn policy(&self) -> Option<&TopKPolicy> {
        self.built.as_ref().map(|(p, _)| p)
    }

    /// The budget in tokens per head, once built (`None`: unlimited).
    pub fn budget_tokens(&self) -> Option<usize> {
        self.policy().map(|p| p.budget).filter(|&b| b != usize::MAX)
    }

    /// The budget and protected sets when a store of `len` slots per head must be evicted at
    /// `phase` (the phase is scheduled and `len` exceeds the budget); `None` otherwise.
    pub fn due(&self, phase: CompressionPhase, len: usize) -> Option<(usize, Protect)> {
        self.policy()
            .filter(|p| p.compresses_at(phase) && len > p.budget)
            .map(|p| (p.budget, p.protect))
    }

    /// Hands an observation to the scorer (nothing before the first append).
    pub fn observe(
        &mut self,
        observation: &AttentionObservation<B>,
        store: &DenseStore<B>,
    ) -> Result<()> {
        match self.built.as_mut() {
            Some((_, scorer)) => scorer.observe(observation, store),
            None => Ok(()),
        }
    }

    /// Scores `[H_kv][n]` of the `n` slots of `store` for a compression at `phase`: one row per
    /// KV head (a scorer's single shared row is repeated), or empty rows when the protected
    /// sets fill the budget (no score needed). Errors on rows that do not match the store.
    pub fn scores(
        &mut self,
        phase: CompressionPhase,
        store: &DenseStore<B>,
    ) -> Result<Vec<Vec<f32>>> {
        let heads = self.layer.n_kv_heads;
        let len = store.len();
        let Some((policy, scorer)) = self.built.as_mut() else {
            return Ok(vec![Vec::new(); heads]);
        };
        if policy.protect.sinks + policy.protect.recent >= policy.budget {
            return Ok(vec![Vec::new(); heads]);
        }
        let s = scorer.scores(phase, store)?;
        let scores = match s.len() {
            1 => vec![s[0].clone(); heads],
            n if n == heads => s,
            n => {
                return Err(Error::Other(format!(
                    "layer {}: the scorer returned {n} score rows for {heads} KV heads",
                    self.layer.layer
                )))
            }
        };
        if let Some(bad) = scores.iter().find(|s| !s.is_empty() && s.len() != len) {
            return Err(Error::Other(format!(
                "layer {}: the scorer returned {} scores for {len} held tokens",
                self.layer.layer,
                bad.len()
            )));
        }
        Ok(scores)
    }

    /// Tells the scorer which slots the store kept.
    pub fn retained(&mut self, keep: &Keep) {
        if let Some((_, scorer)) = self.built.as_mut() {
            scorer.retained(keep);
        }
    }
}

/// The generic top-k cache: a [`DenseStore`], a [`Scorer`] and a [`TopKPolicy`], built at the
/// first append (when the stored element width, and so a bytes budget, is known).
pub struct TopKCache<B: Backend> {
    plan: LayerPlan<B>,
    store: DenseStore<B>,
    prefill_done: bool,
}

impl<B: Backend> TopKCache<B> {
    /// A cache whose policy and scorer `factory` builds for `layer` and `ctx`.
    pub fn new(
        factory: Arc<dyn PolicyFactory<B>>,
        layer: &AttentionLayerSpec,
        ctx: &CacheContext,
    ) -> Self {
        Self::from_plan(LayerPlan::new(factory, layer, ctx))
    }

    /// A cache over `plan`.
    pub fn from_plan(plan: LayerPlan<B>) -> Self {
        Self {
            plan,
            store: DenseStore::default(),
            prefill_done: false,
        }
    }

    /// The store (for tests and inspection).
    pub fn store(&self) -> &DenseStore<B> {
        &self.store
    }

    /// The policy, once built.
    pub fn policy(&self) -> Option<&TopKPolicy> {
        self.plan.policy()
    }

    fn virtual_positions(&self) -> Vec<usize> {
        let n = self.store.len();
        let newest = self.store.slot_positions().last().copied().unwrap_or(0);
        (0..n).map(|j| newest + 1 + j - n).collect()
    }
}

impl<B: Backend> KvCache<B> for TopKCache<B> {
    /// `keys`, `values`: `[1, H_kv, T, D]`.
    fn append(
        &mut self,
        keys: Tensor<B, 4>,
        values: Tensor<B, 4>,
        positions: &[usize],
    ) -> Result<()> {
        let policy = self.plan.build(keys.dtype().size())?;
        let keys = match &policy.positions {
            PositionMode::Original => keys,
            PositionMode::Reindexed(rot) => rot.unrotate(keys, positions),
        };
        self.store.append(keys, values, positions);
        Ok(())
    }

    fn view(&self) -> KvView<B> {
        let policy = self
            .plan
            .policy()
            .expect("view() of an empty cache: append first");
        let keys = self.store.keys().expect("appended").clone();
        let values = self.store.values().expect("appended").clone();
        let (keys, positions) = match &policy.positions {
            PositionMode::Original => (keys, self.store.slot_positions()),
            PositionMode::Reindexed(rot) => {
                let virt = self.virtual_positions();
                (rot.rotate(keys, &virt), virt)
            }
        };
        let mut view = KvView::dense(keys, values, positions);
        if !self.prefill_done {
            view.window = policy.prefill_window;
        }
        view
    }

    fn observe(&mut self, observation: AttentionObservation<B>) -> Result<()> {
        self.plan.observe(&observation, &self.store)
    }

    fn compress(&mut self, phase: CompressionPhase) -> Result<()> {
        if phase == CompressionPhase::PrefillEnd {
            self.prefill_done = true;
        }
        let len = self.store.len();
        let Some((budget, protect)) = self.plan.due(phase, len) else {
            return Ok(());
        };
        let scores = self.plan.scores(phase, &self.store)?;
        let keep = select(len, budget, protect, &scores);
        self.store.retain(&keep)?;
        self.plan.retained(&keep);
        Ok(())
    }

    fn len(&self) -> usize {
        self.store.len()
    }

    fn budget_tokens(&self) -> Option<usize> {
        self.plan.budget_tokens()
    }

    fn held_positions(&self) -> Option<Vec<Vec<usize>>> {
        Some(self.store.positions().to_vec())
    }

    fn memory_bytes(&self) -> usize {
        self.store.memory_bytes()
    }
}
