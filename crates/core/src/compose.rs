//! Composition of two registered methods, `SELECT+STORE` (e.g. `snapkv+kivi`): the first
//! chooses which tokens survive the prompt, the second stores the survivors.
//!
//! During prefill every call goes to the selector's cache. At the end of prefill the selector
//! compresses, its kept keys/values are appended to the store's cache, and the store compresses
//! at `PrefillEnd` (KIVI quantizes then, so its scales are computed over the kept tokens only).
//! From then on every call goes to the store. No method-specific code: both halves are any
//! registered methods whose capabilities allow the hand-over; [`Composed::new`] says why a pair
//! does not.

use burn::tensor::{backend::Backend, Tensor};

use crate::budget::Budget;
use crate::cache::{AttentionObservation, CompressionPhase, KvCache, KvView};
use crate::error::{Error, Result};
use crate::method::{
    CacheContext, CompressionSchedule, KvMethod, MethodCapabilities, MethodFamily,
};
use crate::model::AttentionLayerSpec;

/// Joins the two method names of a composition.
pub const SEPARATOR: char = '+';

/// `Some((select, store))` when `name` names a composition.
pub fn split(name: &str) -> Option<(&str, &str)> {
    name.split_once(SEPARATOR)
}

/// A selector method whose kept tokens are stored by a storage method.
pub struct Composed<B: Backend> {
    name: String,
    select: Box<dyn KvMethod<B>>,
    store: Box<dyn KvMethod<B>>,
}

impl<B: Backend> Composed<B> {
    /// Composes `select` (a token-dropping method that compresses once, at the end of prefill)
    /// with `store` (a method that keeps every token it is given, e.g. a quantized cache).
    pub fn new(select: Box<dyn KvMethod<B>>, store: Box<dyn KvMethod<B>>) -> Result<Self> {
        let name = format!("{}{SEPARATOR}{}", select.name(), store.name());
        let (s, t) = (select.capabilities(), store.capabilities());
        let refuse = |why: String| Err(Error::InvalidInput(format!("method {name}: {why}")));
        if !s.uses_budget {
            return refuse(format!(
                "{} drops no tokens, so there is nothing to select; put a token-dropping method first",
                select.name()
            ));
        }
        if s.schedule.prefill_chunk_tokens.is_some()
            || s.schedule.decode_interval.is_some()
            || !s.schedule.after_prefill
            || s.observes_decode.any()
        {
            return refuse(format!(
                "{} evicts during chunked prefill or decoding; only methods that select once at \
                 the end of prefill (snapkv, pyramidkv, knorm) can hand their tokens to a store \
                 (evicting from quantized blocks would mean re-quantizing them)",
                select.name()
            ));
        }
        if t.uses_budget {
            return refuse(format!(
                "{} drops tokens itself; the second method must store every token it is given",
                store.name()
            ));
        }
        if t.observes.any() || t.schedule.prefill_chunk_tokens.is_some() {
            return refuse(format!(
                "{} needs to observe or chunk the prompt, which the selector owns",
                store.name()
            ));
        }
        Ok(Self {
            name,
            select,
            store,
        })
    }
}

impl<B: Backend> KvMethod<B> for Composed<B> {
    fn name(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> MethodCapabilities {
        let (s, t) = (self.select.capabilities(), self.store.capabilities());
        MethodCapabilities {
            family: MethodFamily::Composite,
            observes: s.observes,
            observes_decode: t.observes_decode,
            schedule: CompressionSchedule {
                prefill_chunk_tokens: None,
                after_prefill: true,
                decode_interval: t.schedule.decode_interval,
            },
            uses_budget: true,
            compresses_question: s.compresses_question,
            // Prefill goes to the selector alone; the store first sees tokens at the hand-over.
            exact_prefill: s.exact_prefill && t.exact_prefill,
        }
    }

    fn new_cache(
        &self,
        layer: &AttentionLayerSpec,
        ctx: &CacheContext,
    ) -> Result<Box<dyn KvCache<B>>> {
        if matches!(ctx.budget, Budget::Bytes(_)) {
            // The selector would divide the bytes by its own full-precision token size.
            return Err(Error::InvalidInput(format!(
                "method {}: give the budget as a ratio or in tokens; a bytes budget would be \
                 converted at the selector's full-precision bytes per token, not the store's",
                self.name
            )));
        }
        let store_ctx = CacheContext {
            budget: Budget::Unlimited,
            ..ctx.clone()
        };
        Ok(Box::new(SelectThenStore {
            select: Some(self.select.new_cache(layer, ctx)?),
            store: self.store.new_cache(layer, &store_ctx)?,
            budget: None,
            held: Vec::new(),
        }))
    }
}

/// One layer of a [`Composed`] method.
pub struct SelectThenStore<B: Backend> {
    /// The selector's cache until the end of prefill, then `None`.
    select: Option<Box<dyn KvCache<B>>>,
    store: Box<dyn KvCache<B>>,
    /// The selector's budget, kept after the hand-over.
    budget: Option<usize>,
    /// Original positions held per KV head after the hand-over.
    held: Vec<Vec<usize>>,
}

impl<B: Backend> SelectThenStore<B> {
    fn active(&self) -> &dyn KvCache<B> {
        self.select.as_deref().unwrap_or(self.store.as_ref())
    }

    /// Moves the selector's kept tokens into the store.
    fn hand_over(&mut self, mut select: Box<dyn KvCache<B>>) -> Result<()> {
        select.compress(CompressionPhase::PrefillEnd)?;
        self.budget = select.budget_tokens();
        if select.is_empty() {
            return Ok(());
        }
        let KvView {
            keys,
            values,
            positions,
            padding_mask,
            ..
        } = select.view();
        if padding_mask.is_some() {
            return Err(Error::InvalidInput(
                "a selection that keeps a different number of tokens per head (ragged) cannot \
                 be handed to a store, which holds the same tokens count in every head"
                    .into(),
            ));
        }
        let heads = keys.dims()[1];
        self.held = select
            .held_positions()
            .unwrap_or_else(|| vec![positions.clone(); heads]);
        self.store.append(keys, values, &positions)?;
        self.store.compress(CompressionPhase::PrefillEnd)
    }
}

impl<B: Backend> KvCache<B> for SelectThenStore<B> {
    fn append(
        &mut self,
        keys: Tensor<B, 4>,
        values: Tensor<B, 4>,
        positions: &[usize],
    ) -> Result<()> {
        match self.select.as_mut() {
            Some(select) => select.append(keys, values, positions),
            None => {
                if self.held.is_empty() {
                    self.held = vec![Vec::new(); keys.dims()[1]];
                }
                for head in &mut self.held {
                    head.extend_from_slice(positions);
                }
                self.store.append(keys, values, positions)
            }
        }
    }

    fn prepare(&mut self, queries: &Tensor<B, 4>, positions: &[usize]) -> Result<()> {
        match self.select.as_mut() {
            Some(select) => select.prepare(queries, positions),
            None => self.store.prepare(queries, positions),
        }
    }

    fn view(&self) -> KvView<B> {
        self.active().view()
    }

    fn observe(&mut self, observation: AttentionObservation<B>) -> Result<()> {
        match self.select.as_mut() {
            Some(select) => select.observe(observation),
            None => self.store.observe(observation),
        }
    }

    fn compress(&mut self, phase: CompressionPhase) -> Result<()> {
        match (self.select.take(), phase) {
            (Some(select), CompressionPhase::PrefillEnd) => self.hand_over(select),
            (Some(mut select), phase) => {
                let out = select.compress(phase);
                self.select = Some(select);
                out
            }
            (None, phase) => self.store.compress(phase),
        }
    }

    fn len(&self) -> usize {
        self.active().len()
    }

    fn budget_tokens(&self) -> Option<usize> {
        match &self.select {
            Some(select) => select.budget_tokens(),
            None => self.budget,
        }
    }

    fn held_positions(&self) -> Option<Vec<Vec<usize>>> {
        match &self.select {
            Some(select) => select.held_positions(),
            None => Some(self.held.clone()),
        }
    }

    fn memory_bytes(&self) -> usize {
        self.active().memory_bytes()
    }

    fn host_memory_bytes(&self) -> usize {
        self.active().host_memory_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::{ParamSpec, Params, RawParams};
    use crate::registry::Registry;
    use crate::MethodDescriptor;
    use crate::ObservationNeeds;
    use burn::backend::Flex;
    use burn::tensor::TensorData;

    /// Appended keys (used as values too) and their positions.
    #[derive(Default)]
    struct Held {
        kv: Option<Tensor<Flex, 4>>,
        positions: Vec<usize>,
    }

    impl Held {
        fn append(&mut self, k: Tensor<Flex, 4>, p: &[usize]) -> Result<()> {
            self.kv = Some(match self.kv.take() {
                Some(old) => Tensor::cat(vec![old, k], 2),
                None => k,
            });
            self.positions.extend_from_slice(p);
            Ok(())
        }
        fn view(&self) -> KvView<Flex> {
            let kv = self.kv.clone().unwrap();
            KvView::dense(kv.clone(), kv, self.positions.clone())
        }
    }

    /// Keeps the last `budget` tokens at the end of prefill (a stand-in selector).
    struct KeepLast {
        budget: usize,
        held: Held,
    }

    /// Keeps everything and counts its compress calls (a stand-in store).
    struct Keeper {
        held: Held,
        compressed: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    }

    impl KvCache<Flex> for KeepLast {
        fn append(&mut self, k: Tensor<Flex, 4>, _: Tensor<Flex, 4>, p: &[usize]) -> Result<()> {
            self.held.append(k, p)
        }
        fn view(&self) -> KvView<Flex> {
            self.held.view()
        }
        fn compress(&mut self, phase: CompressionPhase) -> Result<()> {
            assert_eq!(phase, CompressionPhase::PrefillEnd);
            let n = self.held.positions.len();
            let kv = self.held.kv.take().unwrap();
            self.held.kv = Some(kv.slice([0..1, 0..2, n - self.budget..n, 0..1]));
            self.held.positions.drain(..n - self.budget);
            Ok(())
        }
        fn len(&self) -> usize {
            self.held.positions.len()
        }
        fn budget_tokens(&self) -> Option<usize> {
            Some(self.budget)
        }
        fn memory_bytes(&self) -> usize {
            8 * self.held.positions.len()
        }
    }

    impl KvCache<Flex> for Keeper {
        fn append(&mut self, k: Tensor<Flex, 4>, _: Tensor<Flex, 4>, p: &[usize]) -> Result<()> {
            self.held.append(k, p)
        }
        fn view(&self) -> KvView<Flex> {
            self.held.view()
        }
        fn compress(&mut self, _: CompressionPhase) -> Result<()> {
            self.compressed
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }
        fn len(&self) -> usize {
            self.held.positions.len()
        }
        fn memory_bytes(&self) -> usize {
            self.held.positions.len()
        }
    }

    struct Fake {
        name: &'static str,
        caps: MethodCapabilities,
        compressed: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    }

    fn caps(uses_budget: bool, decode_interval: Option<usize>) -> MethodCapabilities {
        MethodCapabilities {
            family: MethodFamily::Baseline,
            observes: ObservationNeeds::default(),
            observes_decode: ObservationNeeds::default(),
            schedule: CompressionSchedule {
                prefill_chunk_tokens: None,
                after_prefill: true,
                decode_interval,
            },
            uses_budget,
            compresses_question: false,
            exact_prefill: true,
        }
    }

    impl KvMethod<Flex> for Fake {
        fn name(&self) -> &str {
            self.name
        }
        fn capabilities(&self) -> MethodCapabilities {
            self.caps
        }
        fn new_cache(
            &self,
            _: &AttentionLayerSpec,
            ctx: &CacheContext,
        ) -> Result<Box<dyn KvCache<Flex>>> {
            Ok(if self.caps.uses_budget {
                Box::new(KeepLast {
                    budget: ctx.budget.tokens_for(ctx.prompt_tokens, 1).unwrap(),
                    held: Held::default(),
                })
            } else {
                assert_eq!(ctx.budget, Budget::Unlimited, "the store gets no budget");
                Box::new(Keeper {
                    held: Held::default(),
                    compressed: self.compressed.clone(),
                })
            })
        }
    }

    fn fake(name: &'static str, caps: MethodCapabilities) -> Box<dyn KvMethod<Flex>> {
        Box::new(Fake {
            name,
            caps,
            compressed: Default::default(),
        })
    }

    fn layer() -> AttentionLayerSpec {
        AttentionLayerSpec {
            layer: 0,
            n_query_heads: 2,
            n_kv_heads: 2,
            head_dim: 1,
            sliding_window: None,
            rope: None,
        }
    }

    /// `[1, 2, n, 1]` whose entries are the token positions.
    fn tokens(positions: &[usize]) -> Tensor<Flex, 4> {
        let v: Vec<f32> = [positions, positions]
            .concat()
            .iter()
            .map(|&p| p as f32)
            .collect();
        Tensor::from_data(
            TensorData::new(v, [1, 2, positions.len(), 1]),
            &Default::default(),
        )
    }

    #[test]
    fn the_selection_is_handed_to_the_store_at_the_end_of_prefill() {
        let compressed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let store = Box::new(Fake {
            name: "store",
            caps: caps(false, Some(1)),
            compressed: compressed.clone(),
        });
        let m = Composed::new(fake("select", caps(true, None)), store).unwrap();
        assert_eq!(m.name(), "select+store");
        let c = m.capabilities();
        assert_eq!(c.family, MethodFamily::Composite);
        assert!(
            c.exact_prefill && c.shares_prefill(),
            "both halves are exact"
        );
        let inexact = MethodCapabilities {
            exact_prefill: false,
            ..caps(false, Some(1))
        };
        let composed = Composed::new(fake("select", caps(true, None)), fake("store", inexact));
        assert!(!composed.unwrap().capabilities().shares_prefill());
        assert_eq!(
            c.schedule.decode_interval,
            Some(1),
            "the store's decode schedule"
        );
        let ctx = CacheContext {
            budget: Budget::Tokens(4),
            prompt_tokens: 10,
            n_layers: 1,
        };
        let mut cache = m.new_cache(&layer(), &ctx).unwrap();
        let prompt: Vec<usize> = (0..10).collect();
        cache
            .append(tokens(&prompt), tokens(&prompt), &prompt)
            .unwrap();
        assert_eq!(
            (cache.len(), cache.memory_bytes()),
            (10, 80),
            "the selector holds it"
        );
        cache.compress(CompressionPhase::PrefillEnd).unwrap();
        assert_eq!(compressed.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(
            (cache.len(), cache.memory_bytes()),
            (4, 4),
            "the store holds it"
        );
        cache.append(tokens(&[10]), tokens(&[10]), &[10]).unwrap();
        cache.compress(CompressionPhase::Decode).unwrap();
        assert_eq!(compressed.load(std::sync::atomic::Ordering::SeqCst), 2);
        let view = cache.view();
        assert_eq!(view.positions, vec![6, 7, 8, 9, 10]);
        let keys: Vec<f32> = view.keys.into_data().to_vec().unwrap();
        assert_eq!(keys, vec![6., 7., 8., 9., 10., 6., 7., 8., 9., 10.]);
        assert_eq!(
            cache.held_positions().unwrap(),
            vec![vec![6, 7, 8, 9, 10]; 2]
        );
        assert_eq!(cache.budget_tokens(), Some(4));
        let bytes = CacheContext {
            budget: Budget::Bytes(100),
            ..ctx
        };
        assert!(m.new_cache(&layer(), &bytes).is_err());
    }

    #[test]
    fn pairs_that_cannot_hand_over_are_refused_with_the_reason() {
        let err = |a, b| Composed::new(a, b).err().unwrap().to_string();
        let e = err(
            fake("h2o", caps(true, Some(1))),
            fake("kivi", caps(false, Some(1))),
        );
        assert!(e.contains("evicts during") && e.contains("h2o+kivi"), "{e}");
        let e = err(
            fake("kivi", caps(false, None)),
            fake("int8", caps(false, None)),
        );
        assert!(e.contains("drops no tokens"), "{e}");
        let e = err(
            fake("snapkv", caps(true, None)),
            fake("knorm", caps(true, None)),
        );
        assert!(e.contains("drops tokens itself"), "{e}");
    }

    struct Sel;
    struct Sto;

    impl MethodDescriptor for Sel {
        const NAME: &'static str = "sel";
        const DESCRIPTION: &'static str = "selector";
        fn params() -> Vec<ParamSpec> {
            vec![
                ParamSpec::int("window", 8, ""),
                ParamSpec::int("shared", 1, ""),
            ]
        }
        fn build<B: Backend>(p: &Params) -> Result<Box<dyn KvMethod<B>>> {
            assert_eq!(p.values.len(), 2, "only the selector's own parameters");
            p.int("window")?;
            Ok(Box::new(Named("sel", caps(true, None))))
        }
    }

    impl MethodDescriptor for Sto {
        const NAME: &'static str = "sto";
        const DESCRIPTION: &'static str = "store";
        fn params() -> Vec<ParamSpec> {
            vec![
                ParamSpec::int("bits", 2, ""),
                ParamSpec::int("shared", 1, ""),
            ]
        }
        fn build<B: Backend>(p: &Params) -> Result<Box<dyn KvMethod<B>>> {
            assert_eq!(p.int("bits")?, 4);
            Ok(Box::new(Named("sto", caps(false, Some(1)))))
        }
    }

    struct Named(&'static str, MethodCapabilities);

    impl<B: Backend> KvMethod<B> for Named {
        fn name(&self) -> &str {
            self.0
        }
        fn capabilities(&self) -> MethodCapabilities {
            self.1
        }
        fn new_cache(
            &self,
            _: &AttentionLayerSpec,
            _: &CacheContext,
        ) -> Result<Box<dyn KvCache<B>>> {
            unreachable!("not built in this test")
        }
    }

    #[test]
    fn composed_parameters_go_to_the_half_that_declares_them() {
        let mut r = Registry::<Flex>::new();
        r.register_method::<Sel>().register_method::<Sto>();
        let raw = |pairs: &[(&str, &str)]| -> RawParams {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let p = r
            .method_params("sel+sto", &raw(&[("bits", "4"), ("sto.shared", "3")]))
            .unwrap();
        assert_eq!(p.int("sto.bits").unwrap(), 4);
        assert_eq!(p.int("sto.shared").unwrap(), 3);
        assert_eq!(p.int("sel.shared").unwrap(), 1);
        assert_eq!(p.int("sel.window").unwrap(), 8);
        assert_eq!(r.build_method("sel+sto", &p).unwrap().name(), "sel+sto");

        let e = r
            .method_params("sel+sto", &raw(&[("shared", "2")]))
            .unwrap_err();
        assert!(e.to_string().contains("sel.shared or sto.shared"), "{e}");
        let e = r
            .method_params("sel+sto", &raw(&[("nope", "2")]))
            .unwrap_err();
        assert!(e.to_string().contains("sto.bits"), "{e}");
        let e = r
            .method_params("sel+nothing", &RawParams::new())
            .unwrap_err();
        assert!(e.to_string().contains("nothing"), "{e}");
        let names: Vec<_> = r
            .method_specs("sel+sto")
            .unwrap()
            .iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, vec!["window", "shared", "bits"]);
    }
}
