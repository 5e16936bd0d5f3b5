//! Opt-in CUDA parity of every method on the tiny model, through the real runner:
//! `LONGCTX_CUDA_TESTS=1 cargo test --release -p longctx-registry --features cuda --test cuda_parity -- --nocapture`
//! on an NVIDIA machine. Each method runs on flex, on burn's CUDA backend (with fusion, as
//! `--backend cuda` uses it) and on the same CUDA runtime without fusion, so a gap can be
//! pinned on the fused path or on the kernels. The cache operations the compressing caches use
//! and `full` does not (concatenating and gathering keys handed over as strided views) are
//! also compared on their own.
#![cfg(feature = "cuda")]

use burn::backend::wgpu::CubeBackend;
use burn::tensor::{backend::Backend, Int, Tensor, TensorData};
use cubecl::cuda::CudaRuntime;

use longctx_core::Budget;
use longctx_engine::{score_continuation, ContinuationScore};
use longctx_kvquant::testing::{cuda_requested, tiny_model, tokens};

mod common;
use common::method;

type Fused = burn::backend::Cuda<f32, i32>;
type Unfused = CubeBackend<CudaRuntime, f32, i32, u8>;
type Cpu = burn::backend::Flex;

const METHODS: [(&str, &[(&str, &str)], Budget); 10] = [
    ("full", &[], Budget::Unlimited),
    ("kivi", &[("bits", "2")], Budget::Unlimited),
    ("kivi", &[("bits", "4")], Budget::Unlimited),
    ("flexgen", &[], Budget::Unlimited),
    ("int8", &[], Budget::Unlimited),
    ("streaming-llm", &[], Budget::Ratio(4.0)),
    ("h2o", &[], Budget::Ratio(4.0)),
    ("snapkv", &[], Budget::Ratio(4.0)),
    ("pyramidkv", &[], Budget::Ratio(4.0)),
    ("tova", &[], Budget::Ratio(4.0)),
];

fn run<B: Backend>(
    name: &str,
    given: &[(&str, &str)],
    budget: Budget,
    prompt: usize,
) -> ContinuationScore {
    let device = Default::default();
    let model = tiny_model::<B>(&device);
    let ids = tokens(prompt + 12, 7);
    let m = method::<B>(name, given);
    score_continuation(
        &model,
        m.as_ref(),
        budget,
        &ids[..prompt],
        &ids[prompt..],
        None,
    )
    .unwrap()
}

fn max_abs_diff<T: Copy + Into<f64>>(a: &[T], b: &[T]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x.into() - y.into()).abs())
        .fold(0.0, f64::max)
}

#[test]
fn every_method_on_cuda_matches_flex() {
    if !cuda_requested() {
        return;
    }
    let mut failures = Vec::new();
    for prompt in [200, 1000] {
        for (name, given, budget) in METHODS {
            let cpu = run::<Cpu>(name, given, budget, prompt);
            for (backend, out) in [
                ("cuda", run::<Fused>(name, given, budget, prompt)),
                ("cuda-unfused", run::<Unfused>(name, given, budget, prompt)),
            ] {
                let diff = max_abs_diff(&out.token_logprobs, &cpu.token_logprobs);
                let same_kept =
                    out.generation.held_positions_end == cpu.generation.held_positions_end;
                println!(
                    "{prompt:>5} {name:<14} {given:?} {backend:<13} max |dlogprob| {diff:.2e} same kept tokens: {same_kept}"
                );
                if diff > 2e-3 || !same_kept {
                    failures.push(format!(
                        "{prompt} {name} {given:?} {backend}: {diff:.2e} {same_kept}"
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// `[1, T, H, D]` data swapped to `[1, H, T, D]`, as the model hands keys to a cache.
fn strided<B: Backend>(t: usize, h: usize, d: usize, seed: usize) -> Tensor<B, 4> {
    let data: Vec<f32> = (0..t * h * d)
        .map(|i| (((i * 7919 + seed * 104_729) % 1000) as f32) / 500.0 - 1.0)
        .collect();
    Tensor::<B, 4>::from_data(TensorData::new(data, [1, t, h, d]), &Default::default())
        .swap_dims(1, 2)
}

/// Appends three strided chunks with `cat`, gathers every third slot per head, then appends
/// again: the store operations of the compressing caches.
fn cache_ops<B: Backend>() -> Vec<f32> {
    let (h, d) = (3, 64);
    let mut keys = strided::<B>(300, h, d, 1);
    keys = Tensor::cat(vec![keys, strided::<B>(1, h, d, 2)], 2);
    keys = Tensor::cat(vec![keys, strided::<B>(17, h, d, 3)], 2);
    let n = keys.dims()[2] / 3;
    let slots: Vec<i64> = (0..h)
        .flat_map(|head| (0..n).map(move |j| (3 * j + head) as i64))
        .collect();
    let index =
        Tensor::<B, 4, Int>::from_data(TensorData::new(slots, [1, h, n, 1]), &keys.device())
            .expand([1, h, n, d]);
    keys = keys.gather(2, index);
    keys = Tensor::cat(vec![keys, strided::<B>(1, h, d, 4)], 2);
    let scores = keys.clone().matmul(keys.clone().swap_dims(2, 3));
    Tensor::cat(vec![keys.flatten::<1>(0, 3), scores.flatten::<1>(0, 3)], 0)
        .into_data()
        .to_vec()
        .unwrap()
}

#[test]
fn cache_store_operations_on_cuda_match_flex() {
    if !cuda_requested() {
        return;
    }
    let cpu = cache_ops::<Cpu>();
    for (backend, out) in [
        ("cuda", cache_ops::<Fused>()),
        ("cuda-unfused", cache_ops::<Unfused>()),
    ] {
        let diff = max_abs_diff(&out, &cpu);
        println!("cache ops {backend}: max abs diff {diff:.2e}");
        assert!(diff < 0.1, "{backend}: {diff}");
    }
}

/// `strided` data with a per-channel scale (1x to 13x), like real keys' outlier channels.
fn keys_like<B: Backend>(t: usize, h: usize, d: usize, seed: usize) -> Tensor<B, 4> {
    let scale: Vec<f32> = (0..d).map(|c| 1.0 + 2.0 * (c % 7) as f32).collect();
    let scale = Tensor::<B, 1>::from_data(TensorData::new(scale, [d]), &Default::default())
        .reshape([1, 1, 1, d]);
    strided::<B>(t, h, d, seed) * scale
}

/// SmolLM2's attention shapes (9 query heads, 3 KV heads, head_dim 64): the output and the last
/// 32 rows of weights SnapKV scores with, plus SnapKV's column sums.
fn weight_rows<B: Backend>(t: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    use longctx_core::{KvView, ObservationNeeds};
    let q = keys_like::<B>(t, 9, 64, 11);
    let view = KvView::dense(
        keys_like::<B>(t, 3, 64, 12),
        strided::<B>(t, 3, 64, 13),
        (0..t).collect(),
    );
    let positions: Vec<usize> = (0..t).collect();
    let out = longctx_model_transformer::attend(
        q,
        &positions,
        &view,
        None,
        0.125,
        ObservationNeeds::last_weights(32),
    );
    let weights = out.weights.unwrap();
    let columns = weights.clone().sum_dim(2);
    let host = |x: Tensor<B, 4>| -> Vec<f32> { x.into_data().convert::<f32>().to_vec().unwrap() };
    (host(out.output), host(weights), host(columns))
}

/// Fraction of the top quarter of `a` (per row of `n`) that is also in `b`'s top quarter.
fn top_quarter_overlap(a: &[f32], b: &[f32], n: usize) -> f64 {
    let top = |x: &[f32]| {
        let mut idx: Vec<usize> = (0..x.len()).collect();
        idx.sort_by(|&i, &j| x[j].partial_cmp(&x[i]).unwrap());
        idx.truncate(x.len() / 4);
        idx.sort();
        idx
    };
    let (mut same, mut all) = (0, 0);
    for (ra, rb) in a.chunks(n).zip(b.chunks(n)) {
        let (ta, tb) = (top(ra), top(rb));
        same += ta.iter().filter(|i| tb.binary_search(i).is_ok()).count();
        all += ta.len();
    }
    same as f64 / all as f64
}

#[test]
fn smollm2_shaped_weight_rows_on_cuda_match_flex() {
    if !cuda_requested() {
        return;
    }
    for t in [1000, 3744] {
        let (o, w, c) = weight_rows::<Cpu>(t);
        for (backend, (o2, w2, c2)) in [
            ("cuda", weight_rows::<Fused>(t)),
            ("cuda-unfused", weight_rows::<Unfused>(t)),
        ] {
            let (dout, dw) = (max_abs_diff(&o, &o2), max_abs_diff(&w, &w2));
            let overlap = top_quarter_overlap(&c, &c2, t);
            println!(
                "{t:>5} {backend:<13} output {dout:.2e} weights {dw:.2e} top-quarter overlap of column sums {overlap:.4}"
            );
            assert!(
                dout < 1e-2 && dw < 1e-3 && overlap > 0.99,
                "{backend} at {t}"
            );
        }
    }
}

/// KIVI 2-bit over SmolLM2-shaped keys/values (3 KV heads, 3,744 tokens): what attention sees
/// after the end-of-prefill quantization.
fn kivi_view<B: Backend>(bits: &str) -> (Vec<f32>, Vec<f32>) {
    use longctx_core::{AttentionLayerSpec, CacheContext, CompressionPhase};
    let t = 3744;
    let m = method::<B>("kivi", &[("bits", bits)]);
    let layer = AttentionLayerSpec {
        layer: 0,
        n_query_heads: 9,
        n_kv_heads: 3,
        head_dim: 64,
        sliding_window: None,
        rope: None,
    };
    let ctx = CacheContext {
        budget: Budget::Unlimited,
        prompt_tokens: t,
        n_layers: 1,
    };
    let mut cache = m.new_cache(&layer, &ctx).unwrap();
    let positions: Vec<usize> = (0..t).collect();
    cache
        .append(
            keys_like::<B>(t, 3, 64, 21),
            strided::<B>(t, 3, 64, 22),
            &positions,
        )
        .unwrap();
    cache.compress(CompressionPhase::PrefillEnd).unwrap();
    let view = cache.view();
    let host = |x: Tensor<B, 4>| -> Vec<f32> { x.into_data().convert::<f32>().to_vec().unwrap() };
    (host(view.keys), host(view.values))
}

#[test]
fn smollm2_shaped_kivi_cache_on_cuda_matches_flex() {
    if !cuda_requested() {
        return;
    }
    for bits in ["2", "4"] {
        let (k, v) = kivi_view::<Cpu>(bits);
        for (backend, (k2, v2)) in [
            ("cuda", kivi_view::<Fused>(bits)),
            ("cuda-unfused", kivi_view::<Unfused>(bits)),
        ] {
            let off = |a: &[f32], b: &[f32]| {
                a.iter()
                    .zip(b)
                    .filter(|(x, y)| (*x - *y).abs() > 1e-3)
                    .count() as f64
                    / a.len() as f64
            };
            println!(
                "kivi {bits}-bit {backend:<13} keys max {:.2e} ({:.4} differ), values max {:.2e} ({:.4} differ)",
                max_abs_diff(&k, &k2),
                off(&k, &k2),
                max_abs_diff(&v, &v2),
                off(&v, &v2)
            );
            assert!(
                off(&k, &k2) < 1e-3 && off(&v, &v2) < 1e-3,
                "{bits}-bit {backend}"
            );
        }
    }
}
