use super::*;
use burn::backend::Flex;
use burn::tensor::TensorData;
use longctx_core::{
    AttentionLayerSpec, Budget, CacheContext, MethodCapabilities, ObservationNeeds, RawParams,
};
use longctx_evict::testing::{context, encoded, filled_cache, layer, noise, observation, weights};
use longctx_evict::{DenseStore, Keep, LayerBudget, Scorer, TopKPolicy};
use longctx_model_transformer::attend;

/// Bytes of one token of one KV head in the test layer: keys and values, 4 f32 channels.
const PER_HEAD_TOKEN: usize = 2 * 4 * 4;

fn resolve(given: &[(&str, &str)]) -> Result<Params> {
    let raw: RawParams = given
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Params::resolve("adakv", &AdaKv::params(), &raw)
}

fn adakv(given: &[(&str, &str)]) -> Box<dyn KvMethod<Flex>> {
    AdaKv::build::<Flex>(&resolve(given).unwrap()).unwrap()
}

fn tensor(values: Vec<f32>, shape: [usize; 4]) -> Tensor<Flex, 4> {
    Tensor::from_data(TensorData::new(values, shape), &Default::default())
}

/// A method whose scores are given by hand (no protected slots).
struct Fixed(Vec<Vec<f32>>);

struct FixedScores(Vec<Vec<f32>>);

impl<B: Backend> Scorer<B> for FixedScores {
    fn scores(&mut self, _: CompressionPhase, _: &DenseStore<B>) -> Result<Vec<Vec<f32>>> {
        Ok(self.0.clone())
    }
}

impl<B: Backend> PolicyFactory<B> for Fixed {
    fn capabilities(&self) -> MethodCapabilities {
        PolicyFactory::<B>::capabilities(&KNorm {
            decode_interval: 0,
            query_aware: true,
        })
    }

    fn layer(
        &self,
        _: &AttentionLayerSpec,
        _: &CacheContext,
        budget: LayerBudget,
    ) -> Result<(TopKPolicy, Box<dyn longctx_evict::Scorer<B>>)> {
        Ok((
            TopKPolicy::after_prefill(budget),
            Box::new(FixedScores(self.0.clone())),
        ))
    }
}

#[test]
fn an_informative_head_gets_more_slots_and_memory_is_what_is_held() {
    let device = Default::default();
    let spec = layer(4, 2, 4);
    // Head 0 scores high everywhere, head 1 on one token: B = 4, alpha 0.25.
    let head0 = vec![0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.29, 0.28, 0.27];
    let head1 = vec![0.2, 0.02, 0.01, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
    let m = AdaKv::method::<Flex>(Arc::new(Fixed(vec![head0, head1])), 0.25).unwrap();
    let ctx = context(Budget::Tokens(4), 10, 1);
    let mut cache = filled_cache::<Flex>(&m, &spec, &ctx, 10, &device);
    assert_eq!(cache.memory_bytes(), 2 * 10 * PER_HEAD_TOKEN);

    cache.compress(CompressionPhase::PrefillEnd).unwrap();
    let held = cache.held_positions().unwrap();
    assert_eq!(held, vec![(0..7).collect::<Vec<_>>(), vec![0]]);
    assert_eq!(held.iter().map(Vec::len).sum::<usize>(), 2 * 4);
    assert_eq!((cache.len(), cache.budget_tokens()), (4, Some(4)));
    assert_eq!(cache.memory_bytes(), 8 * PER_HEAD_TOKEN);
    // The view is 7 wide; head 1 has 6 padded slots.
    let view = cache.view();
    assert_eq!(view.keys.dims(), [1, 2, 7, 4]);
    let masked: Vec<bool> = view.padding_mask.unwrap().into_data().to_vec().unwrap();
    assert_eq!(masked.iter().filter(|&&m| m).count(), 6);
    assert!(masked[7..13].iter().all(|&m| m) && !masked[13]);

    // Decoding appends to every head and evicts nothing more.
    let kv = encoded::<Flex>(2, 4, &[10], &device);
    cache.append(kv.clone(), kv, &[10]).unwrap();
    cache.compress(CompressionPhase::Decode).unwrap();
    cache.compress(CompressionPhase::PrefillEnd).unwrap();
    let held = cache.held_positions().unwrap();
    assert_eq!((held[0].len(), held[1].clone()), (8, vec![0, 10]));
    assert_eq!(cache.len(), 5);
    assert_eq!(cache.memory_bytes(), 10 * PER_HEAD_TOKEN);
}

#[test]
fn snapkv_scores_share_the_layer_budget_and_the_window_is_kept() {
    let device = Default::default();
    let spec = layer(4, 2, 4);
    let m = adakv(&[("window", "4"), ("kernel", "1"), ("alpha", "0.25")]);
    let mut cache = filled_cache::<Flex>(
        m.as_ref(),
        &spec,
        &context(Budget::Tokens(6), 16, 1),
        16,
        &device,
    );
    // KV head 0 (query heads 0, 1) attends diffusely to tokens 0..8 (0.2 each after the GQA
    // average); KV head 1 (query heads 2, 3) to token 3 alone (1.0).
    let mut entries: Vec<(usize, usize, usize, f32)> = (0..4)
        .flat_map(|row| (0..8).map(move |j| (0, row, j, 0.1)))
        .collect();
    entries.push((2, 0, 3, 2.0));
    let w = weights::<Flex>(4, 4, 16, &entries, &device);
    cache.observe(observation(w, (0..16).collect())).unwrap();
    cache.compress(CompressionPhase::PrefillEnd).unwrap();
    // Each head: its window (4 >= floor(0.25 x 6)); the 4 other slots: head 1's token 3, then
    // head 0's oldest equal scores.
    assert_eq!(
        cache.held_positions().unwrap(),
        vec![vec![0, 1, 2, 12, 13, 14, 15], vec![3, 12, 13, 14, 15]]
    );
    assert_eq!(cache.len(), 6);
    assert_eq!(cache.memory_bytes(), 12 * PER_HEAD_TOKEN);
}

/// The held positions and budget of `m` after prefill of `len` noisy keys and window weights.
fn run(
    m: &dyn KvMethod<Flex>,
    budget: usize,
    len: usize,
    n_layers: usize,
) -> (Vec<Vec<usize>>, Option<usize>) {
    let spec = layer(4, 2, 4);
    let mut cache = m
        .new_cache(&spec, &context(Budget::Tokens(budget), len, n_layers))
        .unwrap();
    let pos: Vec<usize> = (0..len).collect();
    let keys = tensor(noise(2 * len * 4, 7), [1, 2, len, 4]);
    let values = tensor(noise(2 * len * 4, 8), [1, 2, len, 4]);
    cache.append(keys, values, &pos).unwrap();
    let w = tensor(noise(4 * 4 * len, 9), [1, 4, 4, len]);
    if m.capabilities().observes.any() {
        cache.observe(observation(w, pos)).unwrap();
    }
    cache.compress(CompressionPhase::PrefillEnd).unwrap();
    (cache.held_positions().unwrap(), cache.budget_tokens())
}

#[test]
fn alpha_one_keeps_what_the_wrapped_method_keeps() {
    let snap = [("window", "4"), ("kernel", "1")];
    let plain = SnapKv::build::<Flex>(
        &Params::resolve("snapkv", &SnapKv::params(), &to_raw(&snap)).unwrap(),
    )
    .unwrap();
    let ada = adakv(&[("alpha", "1"), snap[0], snap[1]]);
    let want = run(plain.as_ref(), 8, 16, 1);
    assert_eq!(run(ada.as_ref(), 8, 16, 1), want);
    // With alpha 0.2 the heads share differently, the total stays.
    let shared = run(adakv(&snap).as_ref(), 8, 16, 1).0;
    assert_ne!(shared, want.0);
    assert_eq!(shared.iter().map(Vec::len).sum::<usize>(), 16);

    // PyramidKV's layer budget (layer 0 of 2 keeps 12 of a mean 8) is the one shared out.
    let pyr = [("window", "4"), ("kernel", "1"), ("beta", "2")];
    let plain = PyramidKv::build::<Flex>(
        &Params::resolve("pyramidkv", &PyramidKv::params(), &to_raw(&pyr)).unwrap(),
    )
    .unwrap();
    let ada = adakv(&[
        ("scorer", "pyramidkv"),
        ("alpha", "1"),
        pyr[0],
        pyr[1],
        pyr[2],
    ]);
    let want = run(plain.as_ref(), 8, 40, 2);
    assert_eq!(want.1, Some(12));
    assert_eq!(run(ada.as_ref(), 8, 40, 2), want);

    let plain = KNorm::build::<Flex>(
        &Params::resolve("knorm", &KNorm::params(), &RawParams::new()).unwrap(),
    )
    .unwrap();
    let ada = adakv(&[("scorer", "knorm"), ("alpha", "1")]);
    assert_eq!(run(ada.as_ref(), 5, 12, 1), run(plain.as_ref(), 5, 12, 1));
}

fn to_raw(given: &[(&str, &str)]) -> RawParams {
    given
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn the_padded_view_attends_like_each_head_alone() {
    let (h_q, h_kv, d, n) = (4, 2, 4, 14);
    let k = noise(h_kv * n * d, 1);
    let v = noise(h_kv * n * d, 2);
    // `[1, 1, len, D]` of head `h`'s rows at `pos`.
    let rows = |data: &[f32], h: usize, pos: &[usize]| {
        let mut out = Vec::new();
        for &p in pos {
            out.extend_from_slice(&data[(h * n + p) * d..(h * n + p + 1) * d]);
        }
        tensor(out, [1, 1, pos.len(), d])
    };
    let all = |data: &[f32], pos: &[usize]| {
        Tensor::cat((0..h_kv).map(|h| rows(data, h, pos)).collect(), 1)
    };
    let mut store = RaggedStore::<Flex>::default();
    let prompt: Vec<usize> = (0..10).collect();
    store.append(all(&k, &prompt), all(&v, &prompt), &prompt);
    store
        .retain(&Keep {
            per_head: vec![vec![0, 2, 3, 5, 7, 8, 9], vec![1, 9]],
        })
        .unwrap();
    // A 3-token question after the compression, then one decode step.
    for (step, new) in [vec![10, 11, 12], vec![13]].into_iter().enumerate() {
        store.append(all(&k, &new), all(&v, &new), &new);
        let t = new.len();
        let q = tensor(noise(h_q * t * d, 3 + step as u64), [1, h_q, t, d]);
        let view = store.view().unwrap();
        assert!(view.padding_mask.is_some());
        let held = store.positions();
        for needs in [ObservationNeeds::default(), ObservationNeeds::all_weights()] {
            let got = attend(q.clone(), &new, &view, None, 0.5, needs).output;
            let group = h_q / h_kv;
            let want = Tensor::cat(
                (0..h_kv)
                    .map(|h| {
                        let alone = KvView::dense(
                            rows(&k, h, &held[h]),
                            rows(&v, h, &held[h]),
                            held[h].clone(),
                        );
                        let qh = q
                            .clone()
                            .slice([0..1, h * group..(h + 1) * group, 0..t, 0..d]);
                        attend(qh, &new, &alone, None, 0.5, needs).output
                    })
                    .collect(),
                1,
            );
            let diff: f32 = (got - want.clone()).abs().max().into_scalar();
            assert!(diff < 1e-5, "step {step}: {diff}");
            // Not vacuous: without the mask the padded slots would be attended.
            let unmasked = KvView {
                padding_mask: None,
                ..view.clone()
            };
            let wrong = attend(q.clone(), &new, &unmasked, None, 0.5, needs).output;
            let diff: f32 = (wrong - want).abs().max().into_scalar();
            assert!(diff > 1e-3, "step {step}: {diff}");
        }
    }
}

#[test]
fn bad_parameters_are_clear_errors() {
    // The message of the first error, from resolving or from building ("" if none).
    let err = |given: &[(&str, &str)]| {
        resolve(given)
            .and_then(|p| AdaKv::build::<Flex>(&p).map(|_| ()))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    assert!(err(&[("alpha", "1.5")]).contains("alpha must be in [0, 1], got 1.5"));
    assert!(err(&[("alpha", "-0.1")]).contains("alpha must be in [0, 1]"));
    let e = err(&[("scorer", "h2o")]);
    assert!(
        e.contains("'h2o' is not one of snapkv, pyramidkv, knorm"),
        "{e}"
    );
    let e = err(&[("scorer", "knorm"), ("decode_interval", "2")]);
    assert!(e.contains("decode_interval must be 0"), "{e}");
    let e = err(&[("scorer", "pyramidkv"), ("beta", "0.5")]);
    assert!(e.contains("beta must be >= 1"), "{e}");
    assert!(err(&[("kernel", "4")]).contains("kernel must be odd"));
    assert_eq!(err(&[]), "");
}

#[test]
fn parameters_are_the_union_of_the_scorers() {
    let names: Vec<&str> = AdaKv::params().iter().map(|s| s.name).collect();
    for name in [
        "scorer",
        "alpha",
        "window",
        "kernel",
        "pool",
        "query_aware",
        "beta",
        "decode_interval",
    ] {
        assert_eq!(names.iter().filter(|&&n| n == name).count(), 1, "{name}");
    }
    // Capabilities are the wrapped method's.
    let caps = adakv(&[("query_aware", "true")]).capabilities();
    assert!(caps.compresses_question && caps.observes.attention_weights);
    let caps = adakv(&[("scorer", "knorm")]).capabilities();
    assert!(!caps.compresses_question && !caps.observes.any());
}
