//! Every token-dropping method on the tiny model through the real runner, on flex and wgpu:
//! budgets met exactly, memory freed, the same tokens kept on both backends, `Unlimited`
//! identical to `full`, and StreamingLLM's chunked prefill equal to its reference (the
//! uncompressed cache under the sinks-plus-window mask). Also every built-in method through a
//! shared prefill (`generate_shared`) against the same method alone.

use burn::tensor::backend::Backend;

use longctx_core::{
    AttentionLayerSpec, Budget, CacheContext, CompressionSchedule, KvCache, KvMethod, KvView,
    MethodCapabilities, MethodFamily, ObservationNeeds, RawParams, Result, ViewWindow,
};
use longctx_engine::{
    generate, generate_shared, score_continuation, score_continuation_shared,
    shared_prefill_groups, ContinuationScore, GenerationConfig, GenerationResult,
};
use longctx_kvquant::testing::{tiny_model, tokens, wgpu_available};
use longctx_method_full::FullCache;

use crate::common::method;

const EVICTION_METHODS: [&str; 8] = [
    "streaming-llm",
    "h2o",
    "snapkv",
    "pyramidkv",
    "tova",
    "knorm",
    "adakv",
    "infllm",
];

/// Parameters for the 200-token matrix prompt: InfLLM's defaults (a local window of at least
/// 512, blocks of 128) would hold the whole prompt, so blocks of 8 and a floor of 16 make it
/// retrieve (ratio 4: 1 sink, 2 blocks, 33 local).
fn matrix_params(name: &str) -> &'static [(&'static str, &'static str)] {
    match name {
        "infllm" => &[
            ("block_size", "8"),
            ("local_floor", "16"),
            ("exc_block_size", "16"),
        ],
        _ => &[],
    }
}

/// Prefill of `prompt` tokens, then `decode` teacher-forced steps, through the runner.
fn run<B: Backend>(
    device: &B::Device,
    m: &dyn KvMethod<B>,
    budget: Budget,
    prompt: usize,
    decode: usize,
    chunk: Option<usize>,
) -> ContinuationScore {
    let model = tiny_model::<B>(device);
    let ids = tokens(prompt + decode, 3);
    score_continuation(&model, m, budget, &ids[..prompt], &ids[prompt..], chunk).unwrap()
}

fn check_budgets(
    name: &str,
    caps: MethodCapabilities,
    out: &ContinuationScore,
    full: &ContinuationScore,
) {
    let g = &out.generation;
    for (layer, budget) in g.budget_tokens_per_layer.iter().enumerate() {
        let budget = budget.unwrap_or_else(|| panic!("{name}: layer {layer} has no budget"));
        let held_end = g.tokens_held_end[layer].unwrap();
        let held_prefill = g.tokens_held_after_prefill[layer].unwrap();
        let compresses_in_prefill =
            caps.schedule.after_prefill || caps.schedule.prefill_chunk_tokens.is_some();
        if compresses_in_prefill && name != "h2o" {
            assert_eq!(held_prefill, budget, "{name}: layer {layer} after prefill");
            assert!(
                g.state_bytes_after_prefill[layer]
                    < full.generation.state_bytes_after_prefill[layer],
                "{name}: memory not freed in layer {layer}"
            );
        }
        if caps.schedule.decode_interval == Some(1) {
            assert_eq!(held_end, budget, "{name}: layer {layer} at the end");
        }
        let kept = g.held_positions_end[layer].as_ref().unwrap();
        // `held_end` per head; Ada-KV's heads hold different counts, `held_end` on average.
        let total: usize = kept.iter().map(Vec::len).sum();
        assert_eq!(total, held_end * kept.len(), "{name}: layer {layer}");
        assert!(name == "adakv" || kept.iter().all(|h| h.len() == held_end));
        // Bytes are exactly the kept tokens' (no spare capacity); full holds the 200-token
        // prompt exactly after prefill (initial_capacity 0).
        let per_token = full.generation.state_bytes_after_prefill[layer] / 200;
        // InfLLM also keeps each block's representative keys on the device (f32, 4 query heads
        // x 64 channels); its blocks of 8 and pending tokens are in host memory.
        let repr = match name {
            "infllm" => g.host_state_bytes_end[layer] / per_token / 8 * 4 * 64 * 4,
            _ => 0,
        };
        assert_eq!(
            g.state_bytes_end[layer],
            per_token * held_end + repr,
            "{name}: layer {layer}"
        );
    }
}

fn matrix<B: Backend>(device: &B::Device) -> Vec<(String, ContinuationScore)> {
    let full = run::<B>(
        device,
        method::<B>("full", &[("initial_capacity", "0")]).as_ref(),
        Budget::Unlimited,
        200,
        10,
        None,
    );
    let mut out = Vec::new();
    for name in EVICTION_METHODS {
        let m = method::<B>(name, matrix_params(name));
        let scored = run::<B>(device, m.as_ref(), Budget::Ratio(4.0), 200, 10, None);
        check_budgets(name, m.capabilities(), &scored, &full);
        out.push((name.to_string(), scored));
    }
    out
}

#[test]
fn every_eviction_method_meets_its_budget_and_keeps_the_same_tokens_on_cpu_and_wgpu() {
    let flex = matrix::<burn::backend::Flex>(&Default::default());
    if !wgpu_available() {
        return;
    }
    let wgpu = matrix::<burn::backend::Wgpu>(&Default::default());
    for ((name, a), (_, b)) in flex.iter().zip(&wgpu) {
        assert_eq!(
            a.generation.held_positions_end, b.generation.held_positions_end,
            "{name}: kept tokens differ"
        );
        for (x, y) in a.token_logprobs.iter().zip(&b.token_logprobs) {
            assert!((x - y).abs() < 1e-3, "{name}: log-probs {x} vs {y}");
        }
    }
}

#[test]
fn an_unlimited_budget_is_exactly_full() {
    let device = Default::default();
    let full = run::<burn::backend::Flex>(
        &device,
        method("full", &[]).as_ref(),
        Budget::Unlimited,
        120,
        8,
        None,
    );
    for name in EVICTION_METHODS {
        let out = run::<burn::backend::Flex>(
            &device,
            method(name, &[]).as_ref(),
            Budget::Unlimited,
            120,
            8,
            None,
        );
        for (x, y) in out.token_logprobs.iter().zip(&full.token_logprobs) {
            assert!((x - y).abs() < 1e-4, "{name}: {x} vs full {y}");
        }
        assert_eq!(
            out.generation.tokens_held_end, full.generation.tokens_held_end,
            "{name}"
        );
    }
}

/// The uncompressed cache whose view carries StreamingLLM's sinks-plus-window mask.
struct WindowedFull(ViewWindow);

impl<B: Backend> KvMethod<B> for WindowedFull {
    fn name(&self) -> &str {
        "windowed-full"
    }
    fn capabilities(&self) -> MethodCapabilities {
        MethodCapabilities {
            family: MethodFamily::Baseline,
            observes: ObservationNeeds::default(),
            observes_decode: ObservationNeeds::default(),
            schedule: CompressionSchedule::default(),
            uses_budget: false,
            compresses_question: true,
            // The view is masked to sinks plus a window.
            exact_prefill: false,
        }
    }
    fn new_cache(&self, _: &AttentionLayerSpec, _: &CacheContext) -> Result<Box<dyn KvCache<B>>> {
        Ok(Box::new(Windowed(FullCache::with_capacity(0), self.0)))
    }
}

struct Windowed<B: Backend>(FullCache<B>, ViewWindow);

impl<B: Backend> KvCache<B> for Windowed<B> {
    fn append(
        &mut self,
        k: burn::tensor::Tensor<B, 4>,
        v: burn::tensor::Tensor<B, 4>,
        p: &[usize],
    ) -> Result<()> {
        self.0.append(k, v, p)
    }
    fn view(&self) -> KvView<B> {
        let mut v = self.0.view();
        v.window = Some(self.1);
        v
    }
    fn len(&self) -> usize {
        self.0.len()
    }
    fn memory_bytes(&self) -> usize {
        self.0.memory_bytes()
    }
}

#[test]
fn streaming_llm_chunked_prefill_equals_the_windowed_reference() {
    let device = Default::default();
    // 120-token prompt in chunks of 16, budget 40 split 4 sinks + 36 local (init_ratio 0.1).
    let streaming = method::<burn::backend::Flex>(
        "streaming-llm",
        &[
            ("positions", "original"),
            ("chunk_size", "16"),
            ("init_ratio", "0.1"),
        ],
    );
    let model = tiny_model::<burn::backend::Flex>(&device);
    let ids = tokens(121, 5);
    let got = score_continuation(
        &model,
        streaming.as_ref(),
        Budget::Tokens(40),
        &ids[..120],
        &ids[120..],
        None,
    )
    .unwrap();
    let reference = WindowedFull(ViewWindow {
        sinks: 4,
        local: 36,
    });
    let want = score_continuation(
        &model,
        &reference,
        Budget::Unlimited,
        &ids[..120],
        &ids[120..],
        None,
    )
    .unwrap();
    assert!(
        (got.token_logprobs[0] - want.token_logprobs[0]).abs() < 1e-4,
        "{} vs {}",
        got.token_logprobs[0],
        want.token_logprobs[0]
    );
    assert_eq!(got.generation.tokens_held_after_prefill[0], Some(40));
}

/// `snapkv+kivi`: SnapKV's selection stored by KIVI. The same tokens as SnapKV alone are kept
/// (selection reads the full-precision prompt), KIVI then holds them in fewer bytes, on flex
/// and wgpu alike.
#[test]
fn snapkv_selection_stored_with_kivi_keeps_snapkvs_tokens_in_fewer_bytes() {
    fn pair<B: Backend>(device: &B::Device) -> (ContinuationScore, ContinuationScore) {
        let given = [("bits", "4"), ("residual_length", "32")];
        let composed = run::<B>(
            device,
            method::<B>("snapkv+kivi", &given).as_ref(),
            Budget::Ratio(4.0),
            400,
            6,
            None,
        );
        let alone = run::<B>(
            device,
            method::<B>("snapkv", &[]).as_ref(),
            Budget::Ratio(4.0),
            400,
            6,
            None,
        );
        (composed, alone)
    }
    let (composed, alone) = pair::<burn::backend::Flex>(&Default::default());
    let (c, a) = (&composed.generation, &alone.generation);
    assert_eq!(
        c.held_positions_end, a.held_positions_end,
        "same tokens kept"
    );
    assert_eq!(c.budget_tokens_per_layer, a.budget_tokens_per_layer);
    assert_eq!(c.tokens_held_after_prefill, a.tokens_held_after_prefill);
    for layer in 0..c.state_bytes_after_prefill.len() {
        // 100 kept tokens: 96 quantized to 4 bits, 4 in the f16 residual, against f32.
        assert!(
            3 * c.state_bytes_after_prefill[layer] < a.state_bytes_after_prefill[layer],
            "layer {layer}: {} vs {}",
            c.state_bytes_after_prefill[layer],
            a.state_bytes_after_prefill[layer]
        );
    }
    for (x, y) in composed.token_logprobs.iter().zip(&alone.token_logprobs) {
        assert!(
            (x - y).abs() < 0.1,
            "4-bit storage moved a log-prob from {y} to {x}"
        );
    }
    let e = longctx_registry::builtin::<burn::backend::Flex>()
        .method_params("h2o+kivi", &RawParams::new())
        .and_then(|p| {
            longctx_registry::builtin::<burn::backend::Flex>()
                .build_method("h2o+kivi", &p)
                .map(|_| ())
        })
        .unwrap_err();
    assert!(e.to_string().contains("evicts during"), "{e}");
    let r = longctx_registry::builtin::<burn::backend::Flex>();
    let raw = RawParams::from([("key_position".to_string(), "pre_rope".to_string())]);
    let p = r.method_params("snapkv+kivi", &raw).unwrap();
    let e = r.build_method("snapkv+kivi", &p).err().unwrap();
    assert!(e.to_string().contains("post_rope"), "{e}");
    if !wgpu_available() {
        return;
    }
    let (on_wgpu, _) = pair::<burn::backend::Wgpu>(&Default::default());
    assert_eq!(
        on_wgpu.generation.held_positions_end,
        composed.generation.held_positions_end
    );
    for (x, y) in on_wgpu.token_logprobs.iter().zip(&composed.token_logprobs) {
        assert!((x - y).abs() < 1e-2, "wgpu {x} vs flex {y}");
    }
}

/// A method of the shared-prefill check: name, parameters, budget, and whether its
/// capabilities let it share a prefill.
type SharingMember = (&'static str, Given, Budget, bool);
type Given = Vec<(&'static str, &'static str)>;

/// Every built-in method (and a composition) for the shared-prefill check.
fn sharing_members() -> Vec<SharingMember> {
    let r4 = Budget::Ratio(4.0);
    vec![
        ("full", vec![], Budget::Unlimited, true),
        (
            "kivi",
            vec![("residual_length", "32")],
            Budget::Unlimited,
            true,
        ),
        ("int8", vec![], Budget::Unlimited, true),
        // Quantizes in `append` by default: prefill is not exact.
        ("flexgen", vec![], Budget::Unlimited, false),
        (
            "flexgen",
            vec![("quantize_prefill", "false")],
            Budget::Unlimited,
            true,
        ),
        ("h2o", vec![], r4, true),
        // Prefill scores need every weight row (another attention path): shares with itself.
        ("h2o", vec![("evict_after_prefill", "true")], r4, true),
        (
            "h2o",
            vec![("evict_after_prefill", "true")],
            Budget::Ratio(2.0),
            true,
        ),
        ("snapkv", vec![], r4, true),
        // Compresses the question too: a longer context than the others'.
        (
            "snapkv",
            vec![("query_aware", "true"), ("window", "8")],
            r4,
            true,
        ),
        ("pyramidkv", vec![], r4, true),
        ("tova", vec![], r4, true),
        ("knorm", vec![], r4, true),
        ("adakv", vec![], r4, true),
        (
            "snapkv+kivi",
            vec![("bits", "4"), ("residual_length", "32")],
            r4,
            true,
        ),
        ("streaming-llm", vec![("chunk_size", "32")], r4, false),
        ("infllm", matrix_params("infllm").to_vec(), r4, false),
    ]
}

/// What must be equal between a shared and an alone run (timing aside).
fn assert_same_run(what: &str, shared: &GenerationResult, alone: &GenerationResult) {
    assert_eq!(shared.tokens, alone.tokens, "{what}: tokens");
    assert_eq!(
        shared.held_positions_end, alone.held_positions_end,
        "{what}: kept positions"
    );
    assert_eq!(
        shared.state_bytes_after_prefill, alone.state_bytes_after_prefill,
        "{what}: bytes after prefill"
    );
    assert_eq!(
        shared.state_bytes_end, alone.state_bytes_end,
        "{what}: bytes"
    );
    assert_eq!(
        shared.host_state_bytes_end, alone.host_state_bytes_end,
        "{what}: host bytes"
    );
    assert_eq!(
        shared.tokens_held_after_prefill, alone.tokens_held_after_prefill,
        "{what}: held after prefill"
    );
    assert_eq!(shared.tokens_held_end, alone.tokens_held_end, "{what}");
    assert_eq!(
        shared.budget_tokens_per_layer, alone.budget_tokens_per_layer,
        "{what}"
    );
    assert_eq!(
        shared.uncompressed_question_tokens, alone.uncompressed_question_tokens,
        "{what}"
    );
    assert!(alone.shared_prefill_seconds.is_none(), "{what}");
}

/// Every method through `generate_shared` and `score_continuation_shared` equals the same
/// method alone: tokens, log-probs (1e-5), kept positions, bytes. `quick` (for slow devices)
/// leaves out the methods that cannot share (they run exactly as alone), decodes fewer tokens
/// and skips the chunked scoring (the same mechanism, in other shapes).
fn shared_equals_alone<B: Backend>(device: &B::Device, quick: bool) {
    let model = tiny_model::<B>(device);
    let mut specs = sharing_members();
    if quick {
        specs.retain(|(_, _, _, shares)| *shares);
    }
    let decode = if quick { 4 } else { 10 };
    let methods: Vec<Box<dyn KvMethod<B>>> = specs
        .iter()
        .map(|(name, params, _, _)| method::<B>(name, params))
        .collect();
    let caps: Vec<MethodCapabilities> = methods.iter().map(|m| m.capabilities()).collect();
    for ((name, params, _, shares), c) in specs.iter().zip(&caps) {
        assert_eq!(c.shares_prefill(), *shares, "{name} {params:?}");
    }
    let members: Vec<(&dyn KvMethod<B>, Budget)> = methods
        .iter()
        .zip(&specs)
        .map(|(m, (_, _, budget, _))| (m.as_ref(), *budget))
        .collect();
    // Generation with a question tail of 24 tokens, past `full`'s initial capacity (256), so
    // that its bytes would show a different chunking.
    let ids = tokens(300, 7);
    let config = GenerationConfig {
        max_new_tokens: decode,
        question_tokens: 24,
        ..Default::default()
    };
    // Groups of at most 4 that share; the rest alone.
    let groups = shared_prefill_groups(&caps, config.question_tokens, 4);
    let in_shared_group = |i: usize| groups.iter().any(|g| g.len() > 1 && g.contains(&i));
    assert!(groups.iter().all(|g| g.len() <= 4));
    assert!(
        groups.iter().filter(|g| g.len() > 1).count() >= 3,
        "{groups:?}"
    );
    let label = |i: usize| format!("{} {:?} {}", specs[i].0, specs[i].1, specs[i].2);

    let shared = generate_shared(&model, &members, &ids, &config, 4);
    assert_eq!(shared.len(), members.len());
    for (i, out) in shared.into_iter().enumerate() {
        let out = out.unwrap_or_else(|e| panic!("{}: {e}", label(i)));
        let (m, budget) = members[i];
        let alone = generate(&model, m, budget, &ids, &config, &mut |_| {}).unwrap();
        assert_same_run(&label(i), &out, &alone);
        assert_eq!(
            out.shared_prefill_seconds.is_some(),
            in_shared_group(i),
            "{}",
            label(i)
        );
    }

    if quick {
        return;
    }
    // Teacher-forced scoring, in chunks of 64.
    let ids = tokens(200 + decode, 9);
    let shared = score_continuation_shared(&model, &members, &ids[..200], &ids[200..], Some(64), 4);
    for (i, out) in shared.into_iter().enumerate() {
        let out = out.unwrap_or_else(|e| panic!("{}: {e}", label(i)));
        let (m, budget) = members[i];
        let alone =
            score_continuation(&model, m, budget, &ids[..200], &ids[200..], Some(64)).unwrap();
        assert_same_run(&label(i), &out.generation, &alone.generation);
        assert_eq!(out.token_logprobs.len(), alone.token_logprobs.len());
        for (x, y) in out.token_logprobs.iter().zip(&alone.token_logprobs) {
            assert!(
                (x - y).abs() < 1e-5,
                "{}: log-prob {x} shared vs {y} alone",
                label(i)
            );
        }
        assert_eq!(out.argmax_hits, alone.argmax_hits, "{}", label(i));
    }
}

#[test]
fn a_shared_prefill_gives_every_method_what_it_gets_alone_on_cpu_and_wgpu() {
    shared_equals_alone::<burn::backend::Flex>(&Default::default(), false);
    if wgpu_available() {
        shared_equals_alone::<burn::backend::Wgpu>(&Default::default(), true);
    }
}
