//! `kivi` on the tiny model: flex, ndarray and wgpu agree; prefill attention is exactly the
//! full cache's; the bytes held are what the packing should take.
//!
//! Tolerances across backends: wgpu stores what flex stores (32-bit words, f16 scales, minima
//! and residual), so its logits match flex's to float rounding. ndarray has no f16 storage: it
//! keeps scales, minima and the residual in f32 (and counts them at 4 bytes), so its logits
//! differ from flex's by the f16 rounding of those, which must stay far below the quantization
//! error itself. (A 1-ulp difference in a model key could also flip a 2-bit code; the data here
//! are fixed, and `kvquant`'s bookkeeping test checks the caches exactly on every backend.)

use burn::backend::{Flex, NdArray, Wgpu};
use burn::tensor::backend::Backend;

use longctx_core::tensor_util::max_relative_error;
use longctx_core::{
    AttentionLayerSpec, Budget, CacheContext, KvMethod, MethodDescriptor, Params, RawParams,
};
use longctx_kvquant::testing::*;
use longctx_kvquant::{packed_bytes, KeyPosition, StoredWidths};
use longctx_method_kivi::Kivi;

/// Keys 256 quantized (two whole blocks), values 128 quantized and 128 in the residual: the
/// stores are exactly full, so the bytes held equal the packing's.
const PROMPT: usize = 256;
/// Crosses the key block at 384 tokens.
const DECODE: usize = 140;
/// wgpu vs flex (same storage types).
const CROSS_BACKEND: f64 = 1e-3;
/// ndarray vs flex, as a fraction of the quantization error (f32 vs f16 parameters/residual).
const NDARRAY_VS_QUANT_ERROR: f64 = 0.3;

fn params(given: &[(&str, &str)]) -> Params {
    let given: RawParams = given
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Params::resolve(Kivi::NAME, &Kivi::params(), &given).unwrap()
}

fn method<B: Backend>(bits: &str) -> Box<dyn KvMethod<B>> {
    Kivi::build::<B>(&params(&[("bits", bits)])).unwrap()
}

fn run<B: Backend>(bits: &str) -> ForcedRun {
    let model = tiny_model::<B>(&Default::default());
    teacher_forced(&model, method::<B>(bits).as_ref(), PROMPT, DECODE)
}

#[test]
fn kivi_on_flex_and_ndarray() {
    let model = tiny_model::<Flex>(&Default::default());
    let vocab = model.config.vocab_size;
    let full = teacher_forced_full(&model, PROMPT, DECODE);
    for bits in ["2", "4"] {
        let flex = run::<Flex>(bits);
        let ndarray = run::<NdArray>(bits);
        // Prefill attention runs over full-precision keys/values.
        let prefill = max_relative_error(&flex.logits[..vocab], &full.logits[..vocab]);
        assert!(
            prefill <= 1e-6,
            "{bits}-bit: prefill logits differ from full by {prefill}"
        );
        // Decoding attends over the quantized cache.
        let decode = max_relative_error(&flex.logits[vocab..], &full.logits[vocab..]);
        assert!(
            decode > 1e-4 && decode < 0.5,
            "{bits}-bit: decode vs full {decode}"
        );
        let err = max_relative_error(&ndarray.logits[..vocab], &flex.logits[..vocab]);
        assert!(err <= 1e-5, "{bits}-bit: ndarray vs flex prefill {err}");
        let err = max_relative_error(&ndarray.logits[vocab..], &flex.logits[vocab..]);
        assert!(
            err <= NDARRAY_VS_QUANT_ERROR * decode,
            "{bits}-bit: ndarray vs flex {err}, quantization error {decode}"
        );
        // Bytes held: exactly what the packing takes (32-bit words, f16 scales/minima/residual).
        let config = Kivi::config(&params(&[("bits", bits)])).unwrap();
        let widths = StoredWidths {
            word: 4,
            param: 2,
            residual: 2,
        };
        // ndarray stores f32 parameters and residual, and that is what it counts.
        let ndarray_widths = StoredWidths {
            word: 4,
            param: 4,
            residual: 4,
        };
        let layers = attention_layers(&model);
        for (i, layer) in layers.iter().enumerate() {
            assert_eq!(
                flex.bytes_after_prefill[i],
                packed_bytes(&config, layer, PROMPT, widths),
                "{bits}-bit, flex"
            );
            assert_eq!(
                ndarray.bytes_after_prefill[i],
                packed_bytes(&config, layer, PROMPT, ndarray_widths),
                "{bits}-bit, ndarray"
            );
        }
    }
}

/// `key_position = pre_rope` on the tiny model: prefill attention still sees the model's own
/// keys; decoding attends over re-rotated pre-RoPE keys, which differ from post-RoPE
/// quantization but hold the same bytes; at 8 bits the decode logits stay close to the full
/// cache's (a wrong rotation would not).
#[test]
fn kivi_pre_rope_on_flex() {
    let model = tiny_model::<Flex>(&Default::default());
    let vocab = model.config.vocab_size;
    assert!(attention_layers(&model).iter().all(|l| l.rope.is_some()));
    let full = teacher_forced_full(&model, PROMPT, DECODE);
    for bits in ["2", "8"] {
        let pre_params = params(&[("bits", bits), ("key_position", "pre_rope")]);
        assert_eq!(
            Kivi::config(&pre_params).unwrap().key_position,
            KeyPosition::PreRope
        );
        assert_eq!(pre_params.str("key_position").unwrap(), "pre_rope");
        let pre_method = Kivi::build::<Flex>(&pre_params).unwrap();
        let pre = teacher_forced(&model, pre_method.as_ref(), PROMPT, DECODE);
        let post = teacher_forced(&model, method::<Flex>(bits).as_ref(), PROMPT, DECODE);
        let prefill = max_relative_error(&pre.logits[..vocab], &full.logits[..vocab]);
        assert!(
            prefill <= 1e-6,
            "{bits}-bit pre-RoPE: prefill vs full {prefill}"
        );
        let pre_err = max_relative_error(&pre.logits[vocab..], &full.logits[vocab..]);
        let post_err = max_relative_error(&post.logits[vocab..], &full.logits[vocab..]);
        let between = max_relative_error(&pre.logits[vocab..], &post.logits[vocab..]);
        eprintln!(
            "{bits}-bit decode vs full: pre-RoPE {pre_err:.3e}, post-RoPE {post_err:.3e}; \
             pre vs post {between:.3e}"
        );
        assert!(
            pre_err > 1e-6 && pre_err < 0.5,
            "{bits}-bit pre-RoPE: decode vs full {pre_err}"
        );
        assert!(
            between > 1e-6,
            "{bits}-bit: pre- and post-RoPE decode agree ({between})"
        );
        assert_eq!(pre.bytes_after_prefill, post.bytes_after_prefill);
        assert_eq!(pre.bytes_end, post.bytes_end);
        if bits == "8" {
            assert!(
                pre_err < 0.02 && pre_err < 10.0 * post_err.max(1e-4),
                "8-bit pre-RoPE decode vs full {pre_err} (post-RoPE {post_err})"
            );
        }
    }
}

#[test]
fn kivi_on_wgpu_matches_flex() {
    if !wgpu_available() {
        return;
    }
    for bits in ["2", "4"] {
        let (flex, wgpu) = (run::<Flex>(bits), run::<Wgpu>(bits));
        let err = max_relative_error(&wgpu.logits, &flex.logits);
        assert!(err <= CROSS_BACKEND, "{bits}-bit: wgpu vs flex {err}");
        assert_eq!(wgpu.bytes_after_prefill, flex.bytes_after_prefill);
        assert_eq!(wgpu.bytes_end, flex.bytes_end);
    }
}

#[test]
fn kivi_through_the_runner() {
    let model = tiny_model::<Flex>(&Default::default());
    let result = generate_greedy(&model, method::<Flex>("2").as_ref(), 300, 20);
    assert_eq!(result.tokens.len(), 20);
    assert_eq!(result.tokens_held_end, vec![Some(319); 2]);
    let config = Kivi::config(&params(&[("bits", "2")])).unwrap();
    let layers = attention_layers(&model);
    // 300 tokens: keys 256 quantized + 44 fp, values 172 quantized + 128 fp; the stores hold
    // capacity for whole 128-token steps, which is at most 128 tokens of codes.
    let nominal = packed_bytes(
        &config,
        &layers[0],
        300,
        StoredWidths {
            word: 4,
            param: 2,
            residual: 2,
        },
    );
    let measured = result.state_bytes_after_prefill[0];
    assert!(
        measured >= nominal && measured <= nominal + 2 * 128 * 2 * (64 / 16 * 4 + 2 * 2 * 2),
        "{measured} vs {nominal}"
    );
}

#[test]
fn bad_parameters_are_errors() {
    let err = Kivi::build::<Flex>(&params(&[("residual_length", "100")]))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("residual_length (100) must be a positive multiple of group_size (32)"),
        "{err}"
    );
    let err = Kivi::build::<Flex>(&params(&[("bits", "9")]))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("bits = 9 is out of range"), "{err}");
    // pre_rope on a layer that declares no RoPE: an error naming the layer, no fallback.
    let method = Kivi::build::<Flex>(&params(&[("key_position", "pre_rope")])).unwrap();
    let layer = AttentionLayerSpec {
        layer: 5,
        n_query_heads: 4,
        n_kv_heads: 2,
        head_dim: 64,
        sliding_window: None,
        rope: None,
    };
    let ctx = CacheContext {
        budget: Budget::Unlimited,
        prompt_tokens: 10,
        n_layers: 6,
    };
    let err = method.new_cache(&layer, &ctx).err().unwrap().to_string();
    assert!(
        err.contains("kivi") && err.contains("key_position") && err.contains("layer 5"),
        "{err}"
    );
}

/// Opt-in: `LONGCTX_CUDA_TESTS=1 cargo test --release -p longctx-registry --features cuda --test methods` on a GPU machine.
/// Observed on an H200 (2026-11-28): FAILS, cuda vs flex logits differ by 8.3e-3 at 2 bits while the
/// kvquant cache tests pass on CUDA exactly. CUDA's f32 matmuls run in TF32
/// (`results/backends/parity-ndarray-wgpu-cuda-h100.json`), and that noise can flip low-bit
/// codes; whether it explains all of the gap is open (see `crates/kvquant/README.md`).
#[cfg(feature = "cuda")]
#[test]
fn kivi_on_cuda_matches_flex() {
    if !cuda_requested() {
        return;
    }
    for bits in ["2", "4"] {
        let (flex, cuda) = (run::<Flex>(bits), run::<burn::backend::Cuda>(bits));
        let err = max_relative_error(&cuda.logits, &flex.logits);
        assert!(err <= CROSS_BACKEND, "{bits}-bit: cuda vs flex {err}");
        assert_eq!(cuda.bytes_after_prefill, flex.bytes_after_prefill);
        assert_eq!(cuda.bytes_end, flex.bytes_end);
    }
}
