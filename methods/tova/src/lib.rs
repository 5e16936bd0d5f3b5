//! `tova`: token omission via attention (reference section 4).
//!
//! Whenever the cache holds more than the budget, it drops the tokens the current query
//! attends to least, with the weights averaged over all query heads: the same tokens leave
//! every KV head of the layer. There is no protected window (the newest token may go). At the
//! end of prefill the last prompt token's attention selects the kept set; each decode step
//! then appends one token and drops one. Only the last query row's weights are computed.

use burn::tensor::backend::Backend;

use longctx_core::{
    AttentionLayerSpec, AttentionObservation, CacheContext, CompressionPhase, CompressionSchedule,
    Error, KvMethod, MethodCapabilities, MethodDescriptor, MethodFamily, ObservationNeeds,
    ParamSpec, Params, Result,
};
use longctx_evict::{
    params, DenseStore, EvictMethod, LayerBudget, PolicyFactory, Scorer, TopKPolicy,
};

/// The `tova` method.
#[derive(Clone, Debug)]
pub struct Tova {
    pub query_aware: bool,
}

impl MethodDescriptor for Tova {
    const NAME: &'static str = "tova";
    const DESCRIPTION: &'static str =
        "TOVA: drops the tokens the current query attends to least (mean over heads), after prefill and every decode step";

    fn params() -> Vec<ParamSpec> {
        vec![params::query_aware()]
    }

    fn build<B: Backend>(params: &Params) -> Result<Box<dyn KvMethod<B>>> {
        EvictMethod::boxed(
            Self::NAME,
            Tova {
                query_aware: params::is_query_aware(params)?,
            },
        )
    }
}

impl<B: Backend> PolicyFactory<B> for Tova {
    fn capabilities(&self) -> MethodCapabilities {
        MethodCapabilities {
            family: MethodFamily::TokenDropping,
            observes: ObservationNeeds::last_weights(1),
            observes_decode: ObservationNeeds::last_weights(1),
            schedule: CompressionSchedule {
                prefill_chunk_tokens: None,
                after_prefill: true,
                decode_interval: Some(1),
            },
            uses_budget: true,
            compresses_question: self.query_aware,
            exact_prefill: true,
        }
    }

    fn layer(
        &self,
        _: &AttentionLayerSpec,
        _: &CacheContext,
        budget: LayerBudget,
    ) -> Result<(TopKPolicy, Box<dyn Scorer<B>>)> {
        Ok((
            TopKPolicy {
                at_decode: true,
                ..TopKPolicy::after_prefill(budget)
            },
            Box::new(LastQuery { latest: None }),
        ))
    }
}

/// The newest query's weights, averaged over the query heads.
pub struct LastQuery {
    latest: Option<Vec<f32>>,
}

impl<B: Backend> Scorer<B> for LastQuery {
    fn observe(&mut self, observation: &AttentionObservation<B>, _: &DenseStore<B>) -> Result<()> {
        if let Some(w) = &observation.weights {
            let [_, h_q, r, s] = w.dims();
            let last = w
                .clone()
                .slice([0..1, 0..h_q, r - 1..r, 0..s])
                .mean_dim(1)
                .reshape([s]);
            self.latest = Some(
                last.into_data()
                    .convert::<f32>()
                    .to_vec()
                    .map_err(|e| Error::Other(format!("reading attention weights: {e:?}")))?,
            );
        }
        Ok(())
    }

    fn scores(&mut self, _: CompressionPhase, store: &DenseStore<B>) -> Result<Vec<Vec<f32>>> {
        let row = self.latest.take().ok_or_else(|| {
            Error::Other("tova: no attention row was observed before compressing".into())
        })?;
        if row.len() != store.len() {
            return Err(Error::Other(format!(
                "tova: the last attention row covers {} tokens, the cache holds {}",
                row.len(),
                store.len()
            )));
        }
        Ok(vec![row])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use longctx_core::Budget;
    use longctx_evict::testing::{
        context, encoded, filled_cache, held_positions, layer, observation, weights,
    };

    fn method() -> Box<dyn KvMethod<Flex>> {
        let p = Params::resolve("tova", &Tova::params(), &Default::default()).unwrap();
        Tova::build::<Flex>(&p).unwrap()
    }

    #[test]
    fn keeps_what_the_last_query_attends_to_on_every_head() {
        let device = Default::default();
        let spec = layer(4, 2, 4);
        let m = method();
        let mut cache = filled_cache::<Flex>(
            m.as_ref(),
            &spec,
            &context(Budget::Tokens(6), 10, 1),
            10,
            &device,
        );
        let row = [0.3, 0.01, 0.2, 0.02, 0.15, 0.03, 0.1, 0.05, 0.03, 0.11];
        // Head-averaged row: head 0 carries it four times over, the others nothing.
        let entries: Vec<_> = row
            .iter()
            .enumerate()
            .map(|(j, &w)| (0, 0, j, 4.0 * w))
            .collect();
        cache
            .observe(observation(
                weights::<Flex>(4, 1, 10, &entries, &device),
                vec![9],
            ))
            .unwrap();
        cache.compress(CompressionPhase::PrefillEnd).unwrap();
        let want = vec![0, 2, 4, 6, 7, 9];
        assert_eq!(
            held_positions(cache.as_ref()),
            vec![want.clone(), want.clone()]
        );
        // A decode step whose query ignores the newest token drops it.
        let kv = encoded::<Flex>(2, 4, &[10], &device);
        cache.append(kv.clone(), kv, &[10]).unwrap();
        let entries: Vec<_> = (0..6)
            .map(|j| (1, 0, j, 1.0))
            .chain([(1, 0, 6, 0.001)])
            .collect();
        cache
            .observe(observation(
                weights::<Flex>(4, 1, 7, &entries, &device),
                vec![10],
            ))
            .unwrap();
        cache.compress(CompressionPhase::Decode).unwrap();
        assert_eq!(held_positions(cache.as_ref())[0], want);
    }
}
