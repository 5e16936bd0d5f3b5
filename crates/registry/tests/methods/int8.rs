//! `int8` on the tiny model: flex, ndarray and wgpu agree, the result is close to the full
//! cache, and the bytes held are what the packing should take.
//!
//! Tolerances across backends: wgpu stores what flex stores (f16 scales), so its logits match
//! flex's to float rounding. ndarray keeps the scales in f32 (no f16 storage); at 8 bits their
//! f16 rounding is of the order of the quantization error itself, so ndarray is held to the
//! same bound as the quantization (close to the full cache), not to flex.

use burn::backend::{Flex, NdArray, Wgpu};
use burn::tensor::backend::Backend;

use longctx_core::tensor_util::max_relative_error;
use longctx_core::{KvMethod, MethodDescriptor, Params, RawParams};
use longctx_kvquant::testing::*;
use longctx_method_int8::Int8;

const PROMPT: usize = 256;
const DECODE: usize = 16;
const CROSS_BACKEND: f64 = 1e-3;

fn method<B: Backend>() -> Box<dyn KvMethod<B>> {
    let p = Params::resolve(Int8::NAME, &Int8::params(), &RawParams::new()).unwrap();
    Int8::build::<B>(&p).unwrap()
}

fn run<B: Backend>() -> ForcedRun {
    let model = tiny_model::<B>(&Default::default());
    teacher_forced(&model, method::<B>().as_ref(), PROMPT, DECODE)
}

#[test]
fn int8_on_flex_and_ndarray() {
    let model = tiny_model::<Flex>(&Default::default());
    let vocab = model.config.vocab_size;
    let full = teacher_forced_full(&model, PROMPT, DECODE);
    let (flex, ndarray) = (run::<Flex>(), run::<NdArray>());
    for (name, r) in [("flex", &flex), ("ndarray", &ndarray)] {
        let prefill = max_relative_error(&r.logits[..vocab], &full.logits[..vocab]);
        assert!(prefill <= 1e-5, "{name}: prefill vs full {prefill}");
        let decode = max_relative_error(&r.logits[vocab..], &full.logits[vocab..]);
        assert!(
            decode > 0.0 && decode < 5e-3,
            "{name}: 8-bit decode vs full {decode}"
        );
    }
    let err = max_relative_error(&ndarray.logits, &flex.logits);
    assert!(err <= 5e-3, "ndarray vs flex {err}");
    // Per token and head: 64 codes in 16 words plus one f16 scale (f32 on ndarray); keys and
    // values; 2 heads.
    assert_eq!(
        flex.bytes_after_prefill,
        vec![2 * 2 * PROMPT * (16 * 4 + 2); 2]
    );
    assert_eq!(
        ndarray.bytes_after_prefill,
        vec![2 * 2 * PROMPT * (16 * 4 + 4); 2]
    );
}

#[test]
fn int8_on_wgpu_matches_flex() {
    if !wgpu_available() {
        return;
    }
    let (flex, wgpu) = (run::<Flex>(), run::<Wgpu>());
    let err = max_relative_error(&wgpu.logits, &flex.logits);
    assert!(err <= CROSS_BACKEND, "wgpu vs flex {err}");
    assert_eq!(wgpu.bytes_after_prefill, flex.bytes_after_prefill);
    assert_eq!(wgpu.bytes_end, flex.bytes_end);
}

#[test]
fn int8_through_the_runner() {
    let model = tiny_model::<Flex>(&Default::default());
    let result = generate_greedy(&model, method::<Flex>().as_ref(), 200, 8);
    assert_eq!(result.tokens.len(), 8);
    assert_eq!(result.tokens_held_end, vec![Some(207); 2]);
}
