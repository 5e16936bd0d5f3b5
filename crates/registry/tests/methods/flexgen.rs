//! `flexgen` on the tiny model: flex, ndarray and wgpu agree; `quantize_prefill` decides
//! whether prefill attention sees quantized keys/values; the bytes held are what the packing
//! should take.
//!
//! Tolerances across backends: wgpu stores what flex stores (32-bit words, f16 scales and
//! minima), so its logits match flex's to float rounding; ndarray has no f16 storage and keeps
//! scales and minima in f32, so its logits differ from flex's by their f16 rounding, which must
//! stay far below the quantization error itself.

use burn::backend::{Flex, NdArray, Wgpu};
use burn::tensor::backend::Backend;

use longctx_core::tensor_util::max_relative_error;
use longctx_core::{KvMethod, MethodDescriptor, Params, RawParams};
use longctx_kvquant::testing::*;
use longctx_kvquant::{packed_bytes, StoredWidths};
use longctx_method_flexgen::FlexGen;

const PROMPT: usize = 256;
const DECODE: usize = 16;
/// wgpu vs flex (same storage types).
const CROSS_BACKEND: f64 = 1e-3;
/// ndarray vs flex, as a fraction of the quantization error (f32 vs f16 parameters).
const NDARRAY_VS_QUANT_ERROR: f64 = 0.3;

fn params(given: &[(&str, &str)]) -> Params {
    let given: RawParams = given
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Params::resolve(FlexGen::NAME, &FlexGen::params(), &given).unwrap()
}

fn method<B: Backend>(quantize_prefill: &str) -> Box<dyn KvMethod<B>> {
    FlexGen::build::<B>(&params(&[("quantize_prefill", quantize_prefill)])).unwrap()
}

fn run<B: Backend>(quantize_prefill: &str) -> ForcedRun {
    let model = tiny_model::<B>(&Default::default());
    teacher_forced(
        &model,
        method::<B>(quantize_prefill).as_ref(),
        PROMPT,
        DECODE,
    )
}

#[test]
fn flexgen_on_flex_and_ndarray() {
    let model = tiny_model::<Flex>(&Default::default());
    let vocab = model.config.vocab_size;
    let full = teacher_forced_full(&model, PROMPT, DECODE);
    for (quantize_prefill, prefill_exact) in [("true", false), ("false", true)] {
        let flex = run::<Flex>(quantize_prefill);
        let ndarray = run::<NdArray>(quantize_prefill);
        let quant_err = max_relative_error(&flex.logits, &full.logits);
        let err = max_relative_error(&ndarray.logits, &flex.logits);
        assert!(
            err <= NDARRAY_VS_QUANT_ERROR * quant_err,
            "quantize_prefill={quantize_prefill}: ndarray vs flex {err}, quantization error {quant_err}"
        );
        let prefill = max_relative_error(&flex.logits[..vocab], &full.logits[..vocab]);
        assert_eq!(
            prefill <= 1e-6,
            prefill_exact,
            "quantize_prefill={quantize_prefill}: prefill vs full {prefill}"
        );
        let decode = max_relative_error(&flex.logits[vocab..], &full.logits[vocab..]);
        assert!(decode > 1e-5 && decode < 0.5, "decode vs full {decode}");
        let config = FlexGen::config(&params(&[("quantize_prefill", quantize_prefill)])).unwrap();
        let widths = StoredWidths {
            word: 4,
            param: 2,
            residual: 2,
        };
        // ndarray stores f32 parameters, and that is what it counts.
        let ndarray_widths = StoredWidths { param: 4, ..widths };
        for (i, layer) in attention_layers(&model).iter().enumerate() {
            let packed = |w| packed_bytes(&config, layer, PROMPT, w);
            assert_eq!(flex.bytes_after_prefill[i], packed(widths), "flex");
            assert_eq!(
                ndarray.bytes_after_prefill[i],
                packed(ndarray_widths),
                "ndarray"
            );
        }
    }
}

#[test]
fn flexgen_on_wgpu_matches_flex() {
    if !wgpu_available() {
        return;
    }
    let (flex, wgpu) = (run::<Flex>("true"), run::<Wgpu>("true"));
    let err = max_relative_error(&wgpu.logits, &flex.logits);
    assert!(err <= CROSS_BACKEND, "wgpu vs flex {err}");
    assert_eq!(wgpu.bytes_after_prefill, flex.bytes_after_prefill);
    assert_eq!(wgpu.bytes_end, flex.bytes_end);
}

#[test]
fn flexgen_through_the_runner() {
    let model = tiny_model::<Flex>(&Default::default());
    let result = generate_greedy(&model, method::<Flex>("true").as_ref(), 256, 8);
    assert_eq!(result.tokens.len(), 8);
    // 256 tokens, 4-bit codes of 64 channels in 8 words, 2 groups with f16 scale and minimum.
    let per_token_and_head = 8 * 4 + 2 * 2 * 2;
    assert_eq!(
        result.state_bytes_after_prefill,
        vec![2 * 2 * 256 * per_token_and_head; 2]
    );
}

/// Opt-in: `LONGCTX_CUDA_TESTS=1 cargo test --release -p longctx-registry --features cuda --test methods` on a GPU machine.
/// Observed on an H200 (2026-11-28): FAILS, cuda vs flex logits differ by 5.3e-3 with quantize_prefill while the
/// kvquant cache tests pass on CUDA exactly. CUDA's f32 matmuls run in TF32
/// (`results/backends/parity-ndarray-wgpu-cuda-h100.json`), and that noise can flip low-bit
/// codes; whether it explains all of the gap is open (see `crates/kvquant/README.md`).
#[cfg(feature = "cuda")]
#[test]
fn flexgen_on_cuda_matches_flex() {
    if !cuda_requested() {
        return;
    }
    for quantize_prefill in ["true", "false"] {
        let (flex, cuda) = (
            run::<Flex>(quantize_prefill),
            run::<burn::backend::Cuda>(quantize_prefill),
        );
        let err = max_relative_error(&cuda.logits, &flex.logits);
        assert!(
            err <= CROSS_BACKEND,
            "quantize_prefill={quantize_prefill}: cuda vs flex {err}"
        );
        assert_eq!(cuda.bytes_end, flex.bytes_end);
    }
}
