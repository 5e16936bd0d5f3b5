use burn::backend::Flex;
use burn::tensor::{Tensor, TensorData};

use longctx_core::{
    Budget, CompressionPhase, KvCache, KvMethod, MethodDescriptor, Params, RawParams, RopeSpec,
    ViewWindow,
};
use longctx_engine::{score_continuation, ContinuationScore};
use longctx_evict::testing::{context, encoded, layer, weights};
use longctx_kvquant::testing::{tiny_model, tokens};
use longctx_kvquant::KeyRotation;

use super::*;

type B = Flex;

/// Block 4, two keys per representative, sinks 10% and blocks 40% of the budget, local floor 4:
/// `Tokens(10)` splits into 1 sink, 1 block of 4 and 5 local tokens.
fn small() -> InfLlm {
    InfLlm {
        block_size: 4,
        repr_topk: 2,
        exc_block_size: 4,
        init_ratio: 0.1,
        context_ratio: 0.4,
        local_floor: 4,
        query_aware: true,
    }
}

fn rotation() -> KeyRotation {
    KeyRotation::new(&RopeSpec::neox(4, 10_000.0), 4).unwrap()
}

fn small_cache(budget: usize) -> InfLlmCache<B> {
    InfLlmCache::new(
        small(),
        &layer(4, 2, 4),
        &context(Budget::Tokens(budget), 30, 1),
    )
    .unwrap()
}

/// One forward through the cache as the model drives it: append, prepare, view, observe
/// (uniform weights over the view), compress.
fn forward(
    cache: &mut InfLlmCache<B>,
    keys: Tensor<B, 4>,
    queries: Tensor<B, 4>,
    positions: &[usize],
    phase: CompressionPhase,
) {
    let values = encoded::<B>(2, 4, positions, &Default::default());
    cache.append(keys, values, positions).unwrap();
    cache.prepare(&queries, positions).unwrap();
    let view = cache.view();
    let s = view.len();
    let w = Tensor::<B, 4>::ones([1, 4, positions.len(), s], &Default::default()) / s as f64;
    cache
        .observe(longctx_core::AttentionObservation {
            queries: None,
            weights: Some(w),
            query_positions: positions.to_vec(),
        })
        .unwrap();
    cache.compress(phase).unwrap();
}

#[test]
fn splits_the_budget_as_the_reference_table() {
    let s = |t| split(t, 128, 0.021, 0.324, 512);
    let row = |n_init, topk, n_local| Split {
        n_init,
        topk,
        n_local,
        block_size: 128,
    };
    // Reference 2.5, Llama-3 at 2x / 4x / 6x / 8x of 7,500.
    assert_eq!(s(3750), row(78, 9, 2520));
    assert_eq!(s(1875), row(39, 4, 1324));
    assert_eq!(s(1275), row(26, 3, 865));
    assert_eq!(s(937), row(19, 2, 662));
    for t in [3750, 1875, 1275, 937] {
        assert_eq!(s(t).tokens(), t);
    }
    // SmolLM2 at 4x of 3,744 context tokens.
    assert_eq!(s(936), row(19, 2, 661));
    // The local floor binds: the real budget exceeds the one asked for.
    assert_eq!(s(500), row(10, 1, 512));
    assert_eq!(s(500).tokens(), 650);
    assert_eq!(s(300), row(6, 0, 512));
    assert_eq!(
        small().split(10),
        Split {
            n_init: 1,
            topk: 1,
            n_local: 5,
            block_size: 4
        }
    );
}

#[test]
fn the_budget_is_met_after_every_chunk_and_decode_step() {
    let device = Default::default();
    let mut cache = small_cache(10);
    let bpt = 2 * 2 * 4 * 4; // K and V, 2 KV heads, 4 channels, f32
    let mut total = 0;
    let check = |cache: &InfLlmCache<B>, total: usize| {
        let local = total.min(5);
        let sinks = total.saturating_sub(5).min(1);
        let blocks = cache.n_blocks();
        assert_eq!(
            sinks + 4 * blocks + cache.pending_tokens() + local,
            total,
            "every token is somewhere"
        );
        assert!(cache.pending_tokens() < 4);
        let loaded = cache.loaded_blocks().len();
        assert!(loaded <= 1);
        assert_eq!(cache.len(), sinks + 4 * loaded + local);
        assert!(cache.len() <= 10);
        assert_eq!(cache.budget_tokens(), Some(10));
        let held = cache.held_positions().unwrap();
        assert_eq!(held.len(), 2);
        assert_eq!(held[0], held[1]);
        // The sink (position 0) and the last five tokens are always held.
        assert_eq!(held[0][0], 0);
        let recent: Vec<usize> = (total - local..total).collect();
        assert_eq!(held[0][held[0].len() - local..], recent[..]);
        // Device: held tokens plus the representative keys; host: blocks and pending.
        assert_eq!(cache.memory_bytes(), cache.len() * bpt + blocks * 4 * 4 * 4);
        assert_eq!(
            cache.host_memory_bytes(),
            (4 * blocks + cache.pending_tokens()) * bpt
        );
    };
    for start in (0..30).step_by(4) {
        let pos: Vec<usize> = (start..(start + 4).min(30)).collect();
        let kv = encoded::<B>(2, 4, &pos, &device);
        let q = encoded::<B>(4, 4, &pos, &device);
        forward(&mut cache, kv, q, &pos, CompressionPhase::PrefillChunk);
        total += pos.len();
        check(&cache, total);
    }
    cache.compress(CompressionPhase::PrefillEnd).unwrap();
    check(&cache, total);
    assert_eq!(cache.len(), 10);
    for p in 30..36 {
        let before = cache.memory_bytes();
        let kv = encoded::<B>(2, 4, &[p], &device);
        let q = encoded::<B>(4, 4, &[p], &device);
        forward(&mut cache, kv, q, &[p], CompressionPhase::Decode);
        total += 1;
        check(&cache, total);
        assert_eq!(cache.len(), 10);
        assert!(cache.memory_bytes() <= before + 4 * 4 * 4);
    }
    // 36 tokens: 1 sink, 7 blocks and 2 pending on the host, 5 local.
    assert_eq!(cache.n_blocks(), 7);
    assert_eq!(cache.pending_tokens(), 2);
}

#[test]
fn memory_drops_when_tokens_leave_the_window() {
    let device = Default::default();
    let mut cache = small_cache(10);
    let pos: Vec<usize> = (0..25).collect();
    cache
        .append(
            encoded::<B>(2, 4, &pos, &device),
            encoded::<B>(2, 4, &pos, &device),
            &pos,
        )
        .unwrap();
    let before = cache.memory_bytes();
    assert_eq!(before, 25 * 64);
    assert_eq!(cache.host_memory_bytes(), 0);
    cache.compress(CompressionPhase::PrefillChunk).unwrap();
    // 1 sink + 5 local on the device (no block loaded yet) + 4 blocks' representative keys.
    assert_eq!(cache.memory_bytes(), 6 * 64 + 4 * 64);
    assert_eq!(cache.host_memory_bytes(), 19 * 64);
}

/// Pre-RoPE keys: position 0 and the tokens after 16 are zero; block `b` (positions
/// `1 + 4b ..= 4 + 4b`) points along channel `b` in both heads.
fn block_keys(positions: &[usize]) -> Tensor<B, 4> {
    let mut v = Vec::new();
    for _head in 0..2 {
        for &p in positions {
            let mut k = [0.0f32; 4];
            if (1..=16).contains(&p) {
                k[(p - 1) / 4] = 1.0;
            }
            v.extend(k);
        }
    }
    Tensor::from_data(
        TensorData::new(v, [1, 2, positions.len(), 4]),
        &Default::default(),
    )
}

/// A query at `position` (after RoPE) whose pre-RoPE mean, rotated at `n_local - 1 = 4` as
/// InfLLM does, is channel `b` in every head.
fn query_for_block(b: usize, position: usize) -> Tensor<B, 4> {
    let mut v = Vec::new();
    for _ in 0..4 {
        let mut q = [0.0f32; 4];
        q[b] = 1.0;
        v.extend(q);
    }
    let target = Tensor::<B, 4>::from_data(TensorData::new(v, [1, 4, 1, 4]), &Default::default());
    let rot = rotation();
    let pre = rot.unrotate(target, &[4]);
    rot.rotate(pre, &[position])
}

#[test]
fn the_block_aligned_with_the_query_is_retrieved() {
    let rot = rotation();
    let mut cache = small_cache(10);
    let pos: Vec<usize> = (0..25).collect();
    let keys = rot.rotate(block_keys(&pos), &pos);
    cache
        .append(keys, encoded::<B>(2, 4, &pos, &Default::default()), &pos)
        .unwrap();
    cache.compress(CompressionPhase::PrefillChunk).unwrap();
    assert_eq!(cache.n_blocks(), 4);
    assert_eq!(cache.block_positions(2), &[9, 10, 11, 12]);
    // Every key of block b is channel b, so its representative key is too (per query head).
    for (b, repr) in cache.representative_keys().iter().enumerate() {
        for head in repr.chunks(4) {
            let mut want = [0.0f32; 4];
            want[b] = 1.0;
            for (x, y) in head.iter().zip(want) {
                assert!((x - y).abs() < 1e-5, "block {b}: {repr:?}");
            }
        }
    }

    let step = |cache: &mut InfLlmCache<B>, b: usize, p: usize| {
        let k = rot.rotate(block_keys(&[p]), &[p]);
        cache
            .append(k, encoded::<B>(2, 4, &[p], &Default::default()), &[p])
            .unwrap();
        cache.prepare(&query_for_block(b, p), &[p]).unwrap();
        let view = cache.view();
        cache.compress(CompressionPhase::Decode).unwrap();
        view
    };
    let view = step(&mut cache, 2, 25);
    assert_eq!(cache.loaded_blocks(), vec![2]);
    assert_eq!(cache.loads(), 1);
    // Sink and block at one position, n_local - 1 = 4 before the query; then the local window.
    assert_eq!(view.window, Some(ViewWindow { sinks: 5, local: 5 }));
    assert_eq!(
        view.positions,
        vec![21, 21, 21, 21, 21, 20, 21, 22, 23, 24, 25]
    );
    let held = cache.held_positions().unwrap();
    assert_eq!(held[0], vec![0, 9, 10, 11, 12, 21, 22, 23, 24, 25]);
    // The distant keys are the un-rotated ones rotated to the virtual position.
    let distant = view.keys.slice([0..1, 0..1, 1..2, 0..4]);
    let back: Vec<f32> = rot.unrotate(distant, &[21]).into_data().to_vec().unwrap();
    for (x, y) in back.iter().zip([0.0, 0.0, 1.0, 0.0]) {
        assert!((x - y).abs() < 1e-5, "{back:?}");
    }

    // The same block again: not reloaded. Another block: swapped in (LRU of topk = 1).
    step(&mut cache, 2, 26);
    assert_eq!((cache.loaded_blocks(), cache.loads()), (vec![2], 1));
    step(&mut cache, 0, 27);
    assert_eq!((cache.loaded_blocks(), cache.loads()), (vec![0], 2));
}

#[test]
fn representative_keys_are_the_most_attended_keys_of_the_block() {
    let device = Default::default();
    let rot = rotation();
    let mut cache = small_cache(10);
    let pos: Vec<usize> = (0..10).collect();
    // Pre-RoPE keys encode 1000 * head + position in every channel.
    let pre = encoded::<B>(2, 4, &pos, &device);
    cache
        .append(
            rot.rotate(pre, &pos),
            encoded::<B>(2, 4, &pos, &device),
            &pos,
        )
        .unwrap();
    let view = cache.view();
    assert_eq!(view.len(), 10);
    // Query heads 0, 1 share KV head 0; 2, 3 share KV head 1. Block 0 is positions 1..=4.
    // Head 0 attends most to 2 and 4 (over two rows), head 1 to 1 and 3, head 2 to 3 and 4,
    // head 3 to 1 and 2; everything else gets less.
    let w = weights::<B>(
        4,
        10,
        10,
        &[
            (0, 5, 2, 0.5),
            (0, 6, 2, 0.3),
            (0, 5, 4, 0.6),
            (0, 5, 1, 0.2),
            (1, 5, 1, 0.7),
            (1, 5, 3, 0.7),
            (1, 5, 2, 0.1),
            (2, 5, 3, 0.4),
            (2, 5, 4, 0.4),
            (3, 5, 1, 0.9),
            (3, 5, 2, 0.8),
            (3, 5, 3, 0.1),
            (3, 5, 4, 0.1),
        ],
        &device,
    );
    cache
        .observe(longctx_core::AttentionObservation {
            queries: None,
            weights: Some(w),
            query_positions: pos.clone(),
        })
        .unwrap();
    cache.compress(CompressionPhase::PrefillChunk).unwrap();
    assert_eq!(cache.n_blocks(), 1);
    let repr = &cache.representative_keys()[0];
    let want = [3.0f32, 2.0, 1003.5, 1001.5]; // means of {2,4}, {1,3}, {1003,1004}, {1001,1002}
    for (h, w) in want.iter().enumerate() {
        for x in &repr[h * 4..h * 4 + 4] {
            assert!((x - w).abs() < 1e-2, "query head {h}: {repr:?}");
        }
    }
}

fn method(given: &[(&str, &str)]) -> Box<dyn KvMethod<B>> {
    let raw: RawParams = given
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let p = Params::resolve("infllm", &InfLlm::params(), &raw).unwrap();
    InfLlm::build::<B>(&p).unwrap()
}

#[test]
fn declares_chunks_queries_before_attention_and_weights() {
    let caps = method(&[]).capabilities();
    assert_eq!(caps.schedule.prefill_chunk_tokens, Some(512));
    assert_eq!(caps.schedule.decode_interval, Some(1));
    for needs in [caps.observes, caps.observes_decode] {
        assert!(needs.queries_before_attention && needs.attention_weights);
        assert_eq!(needs.weight_rows, None);
    }
    assert!(!caps.compresses_question);
    let bad = [("repr_topk", "9"), ("block_size", "8")];
    let raw: RawParams = bad
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let p = Params::resolve("infllm", &InfLlm::params(), &raw).unwrap();
    assert!(InfLlm::build::<B>(&p).is_err());
}

fn run(m: &dyn KvMethod<B>, budget: Budget, prompt: usize, decode: usize) -> ContinuationScore {
    let model = tiny_model::<B>(&Default::default());
    let ids = tokens(prompt + decode, 7);
    score_continuation(&model, m, budget, &ids[..prompt], &ids[prompt..], None).unwrap()
}

fn full() -> Box<dyn KvMethod<B>> {
    let p = Params::resolve(
        "full",
        &longctx_method_full::Full::params(),
        &RawParams::new(),
    )
    .unwrap();
    longctx_method_full::Full::build::<B>(&p).unwrap()
}

#[test]
fn a_budget_covering_the_input_equals_full() {
    let want = run(full().as_ref(), Budget::Unlimited, 300, 8);
    // The prompt and continuation fit the local window (floor 512): nothing leaves it.
    for (given, budget) in [
        (vec![], Budget::Unlimited),
        (vec![], Budget::Tokens(308)),
        (vec![("exc_block_size", "64")], Budget::Tokens(308)),
    ] {
        let got = run(method(&given).as_ref(), budget, 300, 8);
        for (x, y) in got.token_logprobs.iter().zip(&want.token_logprobs) {
            assert!(
                (x - y).abs() < 1e-4,
                "{given:?} {budget:?}: {x} vs full {y}"
            );
        }
        assert_eq!(got.generation.host_state_bytes_end, vec![0, 0]);
    }
}

#[test]
fn through_the_runner_blocks_move_to_the_host_and_the_budget_holds() {
    // Ratio 4 of 200 tokens = 50: 1 sink, 2 blocks of 8, 33 local.
    let m = method(&[
        ("block_size", "8"),
        ("local_floor", "16"),
        ("exc_block_size", "16"),
    ]);
    let full = run(full().as_ref(), Budget::Unlimited, 200, 10);
    let got = run(m.as_ref(), Budget::Ratio(4.0), 200, 10);
    let g = &got.generation;
    let per_token = 2 * 2 * 64 * 4; // K and V, 2 KV heads of 64 channels, f32
    for layer in 0..2 {
        assert_eq!(g.budget_tokens_per_layer[layer], Some(50));
        assert_eq!(g.tokens_held_after_prefill[layer], Some(50));
        assert_eq!(g.tokens_held_end[layer], Some(50));
        // 209 tokens: 1 sink + 33 local on the device, 21 blocks + 7 pending on the host.
        assert_eq!(g.host_state_bytes_end[layer], (21 * 8 + 7) * per_token);
        assert!(
            g.state_bytes_after_prefill[layer] < full.generation.state_bytes_after_prefill[layer]
        );
        let held = g.held_positions_end[layer].as_ref().unwrap();
        assert_eq!(held[0][0], 0);
        assert_eq!(held[0][17..], (176..209).collect::<Vec<_>>()[..]);
    }
    assert!(got.token_logprobs.iter().all(|x| x.is_finite()));
}
