//! Teacher-forced scoring equals the log-softmax of one forward pass over the whole text.

use burn::backend::Flex;
use burn::tensor::activation::log_softmax;

use longctx_core::{
    Budget, CacheContext, CausalLm, LogitsSelection, MethodDescriptor, ModelDescriptor, Params,
    RawParams, SequenceState,
};
use longctx_engine::score_continuation;
use longctx_method_full::Full;
use longctx_model_transformer::TinyModel;

type B = Flex;

#[test]
fn continuation_logprobs_match_a_single_forward_pass() {
    let p = Params::resolve("tiny", &TinyModel::params(), &RawParams::new()).unwrap();
    let model =
        TinyModel::build::<B>(TinyModel::config(&p).unwrap(), 0, &Default::default()).unwrap();
    let method =
        Full::build::<B>(&Params::resolve("full", &Full::params(), &RawParams::new()).unwrap())
            .unwrap();
    let text: Vec<u32> = (0..40).map(|i| ((i * 29 + 7) % 250 + 3) as u32).collect();
    let (context, continuation) = text.split_at(25);

    // Reference: all-position logits of one pass over the whole text.
    let ctx = CacheContext {
        budget: Budget::Unlimited,
        prompt_tokens: text.len(),
        n_layers: model.info().layers.len(),
    };
    let mut state = SequenceState::new(&model.info().layers, method.as_ref(), &ctx).unwrap();
    let positions: Vec<usize> = (0..text.len()).collect();
    let logits = model
        .forward(&text, &positions, &mut state, LogitsSelection::All)
        .unwrap();
    let logp = log_softmax(logits, 1).into_data().to_vec::<f32>().unwrap();
    let vocab = model.info().vocab_size;
    let expected: Vec<f64> = (context.len()..text.len())
        .map(|i| logp[(i - 1) * vocab + text[i] as usize] as f64)
        .collect();

    // Chunked prefill must not change anything either.
    for chunk in [None, Some(7)] {
        let scored = score_continuation(
            &model,
            method.as_ref(),
            Budget::Unlimited,
            context,
            continuation,
            chunk,
        )
        .unwrap();
        assert_eq!(scored.token_logprobs.len(), continuation.len());
        assert_eq!(scored.generation.tokens, continuation);
        for (got, want) in scored.token_logprobs.iter().zip(&expected) {
            assert!((got - want).abs() < 1e-4, "{got} vs {want}");
        }
        let nll = -expected.iter().sum::<f64>() / expected.len() as f64;
        assert!((scored.mean_nll() - nll).abs() < 1e-4);
        assert!((scored.perplexity() - nll.exp()).abs() < 1e-3 * nll.exp());
        assert!(scored.argmax_hits <= continuation.len());
    }
    let err = score_continuation(
        &model,
        method.as_ref(),
        Budget::Unlimited,
        context,
        &[],
        None,
    )
    .unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");
}
