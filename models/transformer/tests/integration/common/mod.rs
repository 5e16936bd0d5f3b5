//! Helpers shared by the real-model tests.

use burn::backend::Flex;
use longctx_core::{
    Budget, CacheContext, LoadedModel, LogitsSelection, MethodDescriptor, Params, RawParams,
    SequenceState,
};
use longctx_method_full::Full;

/// Last-position logits `[vocab]` of `prompt`, then `n` greedy tokens, with a full KV cache.
pub fn logits_and_greedy(m: &LoadedModel<Flex>, prompt: &[u32], n: usize) -> (Vec<f32>, Vec<u32>) {
    let model = m.model.as_ref();
    let params = Params::resolve("full", &Full::params(), &RawParams::new()).unwrap();
    let method = Full::build::<Flex>(&params).unwrap();
    let ctx = CacheContext {
        budget: Budget::Unlimited,
        prompt_tokens: prompt.len(),
        n_layers: model.info().layers.len(),
    };
    let mut state = SequenceState::new(&model.info().layers, method.as_ref(), &ctx).unwrap();
    let positions: Vec<usize> = (0..prompt.len()).collect();
    let mut logits = model
        .forward(prompt, &positions, &mut state, LogitsSelection::Last)
        .unwrap();
    let first = logits.clone().into_data().to_vec::<f32>().unwrap();
    let mut out = Vec::new();
    for step in 0..n {
        let id = logits
            .clone()
            .argmax(1)
            .into_data()
            .iter::<i64>()
            .next()
            .unwrap() as u32;
        out.push(id);
        if step + 1 < n {
            logits = model
                .forward(
                    &[id],
                    &[prompt.len() + step],
                    &mut state,
                    LogitsSelection::Last,
                )
                .unwrap();
        }
    }
    (first, out)
}
