//! `dtype=f16|bf16` smoke test: the same checkpoint stored in 16-bit agrees with f32 on the
//! greedy token at every position of a 40-token input (flex backend).

use std::path::PathBuf;

use burn::backend::Flex;
use longctx_core::tensor_util::max_relative_error;
use longctx_core::{
    Budget, CacheContext, CausalLm, LogitsSelection, MethodDescriptor, Params, RawParams,
    SequenceState,
};
use longctx_method_full::Full;
use longctx_model_transformer::hf::load_hf;
use longctx_model_transformer::WeightDtype;

fn logits(dtype: WeightDtype, ids: &[u32]) -> (Vec<f32>, String) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf/llama-linear");
    let model = load_hf::<Flex>(&dir, "llama-linear", dtype, &Default::default()).unwrap();
    let params = Params::resolve("full", &Full::params(), &RawParams::new()).unwrap();
    let method = Full::build::<Flex>(&params).unwrap();
    let ctx = CacheContext {
        budget: Budget::Unlimited,
        prompt_tokens: ids.len(),
        n_layers: model.config.n_layers,
    };
    let mut state = SequenceState::new(&model.info().layers, method.as_ref(), &ctx).unwrap();
    let pos: Vec<usize> = (0..ids.len()).collect();
    let out = model
        .forward(ids, &pos, &mut state, LogitsSelection::All)
        .unwrap();
    (
        out.into_data().convert::<f32>().to_vec().unwrap(),
        model.info().dtype.clone(),
    )
}

fn argmax_rows(x: &[f32], vocab: usize) -> Vec<usize> {
    x.chunks(vocab)
        .map(|r| {
            r.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .unwrap()
                .0
        })
        .collect()
}

#[test]
fn half_precision_weights_agree_with_f32_on_the_greedy_token() {
    let ids: Vec<u32> = (0..40u32).map(|i| (i * 37 + 11) % 290 + 3).collect();
    let (reference, dtype) = logits(WeightDtype::F32, &ids);
    assert_eq!(dtype, "f32");
    let vocab = reference.len() / ids.len();
    for (half, name) in [(WeightDtype::F16, "f16"), (WeightDtype::BF16, "bf16")] {
        let (got, dtype) = logits(half, &ids);
        assert_eq!(dtype, name);
        let e = max_relative_error(&got, &reference);
        let same = argmax_rows(&got, vocab)
            .iter()
            .zip(argmax_rows(&reference, vocab))
            .filter(|(a, b)| **a == *b)
            .count();
        eprintln!("{name}: relative error {e:e} vs f32, greedy token equal at {same}/40 positions");
        assert!(e < 5e-2, "{name}: relative error {e:e}");
        assert!(
            same >= 38,
            "{name}: greedy token differs at {} positions",
            40 - same
        );
    }
}
