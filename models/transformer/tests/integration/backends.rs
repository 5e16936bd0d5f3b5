//! The tiny transformer against an independent f64 reference, across backends, and
//! incremental decoding against one-shot prefill.

use burn::backend::{Flex, NdArray, Wgpu};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use longctx_core::tensor_util::max_relative_error;
use longctx_core::{
    AttentionLayerSpec, Budget, CacheContext, CausalLm, CompressionSchedule, KvCache, KvMethod,
    KvView, LogitsSelection, MethodCapabilities, MethodFamily, ObservationNeeds, RawParams, Result,
    SequenceState,
};
use longctx_core::{AttentionObservation, ModelDescriptor, Params};
use longctx_method_full::FullCache;
use longctx_model_transformer::{TinyModel, Transformer, TransformerConfig};

const TOLERANCE: f64 = 1e-4;

fn tiny_params(extra: &[(&str, &str)]) -> Params {
    let given: RawParams = extra
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Params::resolve("tiny", &TinyModel::params(), &given).unwrap()
}

fn build<B: Backend>(extra: &[(&str, &str)]) -> Transformer<B> {
    let p = tiny_params(extra);
    TinyModel::build::<B>(TinyModel::config(&p).unwrap(), 0, &Default::default()).unwrap()
}

/// A `full` cache whose method may ask to observe attention weights, to test that path.
struct TestMethod {
    observe_weights: bool,
}

struct ObservingCache<B: Backend> {
    inner: FullCache<B>,
    observed: usize,
}

impl<B: Backend> KvCache<B> for ObservingCache<B> {
    fn append(&mut self, k: Tensor<B, 4>, v: Tensor<B, 4>, p: &[usize]) -> Result<()> {
        self.inner.append(k, v, p)
    }
    fn view(&self) -> KvView<B> {
        self.inner.view()
    }
    fn observe(&mut self, o: AttentionObservation<B>) -> Result<()> {
        let w = o.weights.expect("weights were declared");
        let [_, _, t, s] = w.dims();
        assert_eq!(t, o.query_positions.len());
        assert_eq!(s, self.inner.len());
        // Each row is a distribution over the visible keys.
        let sums = w.sum_dim(3).into_data().convert::<f32>();
        assert!(sums
            .as_slice::<f32>()
            .unwrap()
            .iter()
            .all(|x| (x - 1.0).abs() < 1e-4));
        self.observed += 1;
        Ok(())
    }
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn memory_bytes(&self) -> usize {
        self.inner.memory_bytes()
    }
}

impl<B: Backend> KvMethod<B> for TestMethod {
    fn name(&self) -> &str {
        "test"
    }
    fn capabilities(&self) -> MethodCapabilities {
        MethodCapabilities {
            family: MethodFamily::Baseline,
            observes: ObservationNeeds {
                queries: false,
                attention_weights: self.observe_weights,
                weight_rows: None,
                queries_before_attention: false,
            },
            observes_decode: ObservationNeeds {
                queries: false,
                attention_weights: self.observe_weights,
                weight_rows: None,
                queries_before_attention: false,
            },
            schedule: CompressionSchedule::default(),
            uses_budget: false,
            compresses_question: true,
            exact_prefill: true,
        }
    }
    fn new_cache(&self, _: &AttentionLayerSpec, _: &CacheContext) -> Result<Box<dyn KvCache<B>>> {
        Ok(Box::new(ObservingCache {
            inner: FullCache::with_capacity(8),
            observed: 0,
        }))
    }
}

fn new_state<B: Backend>(
    model: &Transformer<B>,
    observe_weights: bool,
    prompt: usize,
) -> SequenceState<B> {
    let ctx = CacheContext {
        budget: Budget::Unlimited,
        prompt_tokens: prompt,
        n_layers: model.config.n_layers,
    };
    SequenceState::new(&model.info().layers, &TestMethod { observe_weights }, &ctx).unwrap()
}

fn to_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

fn tokens(n: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 37 + 11) % 250 + 3) as u32).collect()
}

/// Logits `[T, vocab]` of a one-shot prefill, flattened.
fn prefill_logits<B: Backend>(model: &Transformer<B>, ids: &[u32], observe: bool) -> Vec<f32> {
    let mut state = new_state(model, observe, ids.len());
    let pos: Vec<usize> = (0..ids.len()).collect();
    to_vec(
        model
            .forward(ids, &pos, &mut state, LogitsSelection::All)
            .unwrap(),
    )
}

// ---------- an independent f64 reference of the same architecture ----------

struct RefLayer {
    attn_norm: Vec<f64>,
    wq: Vec<f64>,
    wk: Vec<f64>,
    wv: Vec<f64>,
    wo: Vec<f64>,
    mlp_norm: Vec<f64>,
    w_gate: Vec<f64>,
    w_up: Vec<f64>,
    w_down: Vec<f64>,
}

fn host<B: Backend, const D: usize>(t: &Tensor<B, D>) -> Vec<f64> {
    to_vec(t.clone()).into_iter().map(|x| x as f64).collect()
}

/// `x [rows, n] @ w [n, m]`.
fn matmul(x: &[f64], w: &[f64], n: usize, m: usize) -> Vec<f64> {
    let rows = x.len() / n;
    let mut out = vec![0.0; rows * m];
    for r in 0..rows {
        for k in 0..n {
            let a = x[r * n + k];
            for c in 0..m {
                out[r * m + c] += a * w[k * m + c];
            }
        }
    }
    out
}

fn rms(x: &[f64], g: &[f64], eps: f64) -> Vec<f64> {
    let n = g.len();
    x.chunks(n)
        .flat_map(|row| {
            let ms = row.iter().map(|v| v * v).sum::<f64>() / n as f64;
            let inv = 1.0 / (ms + eps).sqrt();
            row.iter()
                .zip(g)
                .map(move |(v, g)| v * inv * g)
                .collect::<Vec<_>>()
        })
        .collect()
}

fn rope(x: &mut [f64], heads: usize, d: usize, pos: usize, theta: f64) {
    for h in 0..heads {
        let v = &mut x[h * d..(h + 1) * d];
        for i in 0..d / 2 {
            let f = 1.0 / theta.powf((2 * i) as f64 / d as f64);
            let (s, c) = (pos as f64 * f).sin_cos();
            let (a, b) = (v[i], v[i + d / 2]);
            v[i] = a * c - b * s;
            v[i + d / 2] = b * c + a * s;
        }
    }
}

fn reference_logits<B: Backend>(m: &Transformer<B>, ids: &[u32]) -> Vec<f32> {
    let c: &TransformerConfig = &m.config;
    let (h, d, nq, nkv, f) = (
        c.hidden_size,
        c.head_dim,
        c.n_heads,
        c.n_kv_heads,
        c.intermediate_size,
    );
    let embed = host(&m.embed);
    let layers: Vec<RefLayer> = m
        .layers
        .iter()
        .map(|l| RefLayer {
            attn_norm: host(&l.attn_norm),
            wq: host(&l.wq),
            wk: host(&l.wk),
            wv: host(&l.wv),
            wo: host(&l.wo),
            mlp_norm: host(&l.mlp_norm),
            w_gate: host(&l.w_gate),
            w_up: host(&l.w_up),
            w_down: host(&l.w_down),
        })
        .collect();
    let t = ids.len();
    let mut x: Vec<f64> = ids
        .iter()
        .flat_map(|&i| embed[i as usize * h..(i as usize + 1) * h].to_vec())
        .collect();
    for l in &layers {
        let hn = rms(&x, &l.attn_norm, c.rms_norm_eps);
        let mut q = matmul(&hn, &l.wq, h, nq * d);
        let mut k = matmul(&hn, &l.wk, h, nkv * d);
        let v = matmul(&hn, &l.wv, h, nkv * d);
        for p in 0..t {
            rope(&mut q[p * nq * d..(p + 1) * nq * d], nq, d, p, c.rope_theta);
            rope(
                &mut k[p * nkv * d..(p + 1) * nkv * d],
                nkv,
                d,
                p,
                c.rope_theta,
            );
        }
        let mut attn = vec![0.0; t * nq * d];
        for p in 0..t {
            for hq in 0..nq {
                let hk = hq / (nq / nkv);
                let qv = &q[p * nq * d + hq * d..][..d];
                let visible: Vec<usize> = (0..=p)
                    .filter(|&j| c.sliding_window.is_none_or(|w| j + w > p))
                    .collect();
                let scores: Vec<f64> = visible
                    .iter()
                    .map(|&j| {
                        qv.iter()
                            .zip(&k[j * nkv * d + hk * d..][..d])
                            .map(|(a, b)| a * b)
                            .sum::<f64>()
                            / (d as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let z: f64 = e.iter().sum();
                for (w, &j) in e.iter().zip(&visible) {
                    for i in 0..d {
                        attn[p * nq * d + hq * d + i] += w / z * v[j * nkv * d + hk * d + i];
                    }
                }
            }
        }
        let o = matmul(&attn, &l.wo, nq * d, h);
        x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
        let hn = rms(&x, &l.mlp_norm, c.rms_norm_eps);
        let g = matmul(&hn, &l.w_gate, h, f);
        let u = matmul(&hn, &l.w_up, h, f);
        let act: Vec<f64> = g
            .iter()
            .zip(&u)
            .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
            .collect();
        let down = matmul(&act, &l.w_down, f, h);
        x.iter_mut().zip(&down).for_each(|(a, b)| *a += b);
    }
    let xn = rms(&x, &host(&m.final_norm), c.rms_norm_eps);
    matmul(&xn, &host(&m.lm_head), h, c.vocab_size)
        .into_iter()
        .map(|v| v as f32)
        .collect()
}

// ---------- tests ----------

fn wgpu_available() -> bool {
    match longctx_backend_probe() {
        Ok(()) => true,
        Err(e) if std::env::var("LONGCTX_SKIP_WGPU").is_ok() => {
            eprintln!("skipping wgpu: {e}");
            false
        }
        Err(e) => panic!(
            "wgpu is not usable ({e}); install mesa-vulkan-drivers, or set LONGCTX_SKIP_WGPU=1"
        ),
    }
}

fn longctx_backend_probe() -> std::result::Result<(), String> {
    std::panic::catch_unwind(|| {
        let x = Tensor::<Wgpu, 1>::ones([2], &Default::default());
        x.sum().into_scalar()
    })
    .map(|_| ())
    .map_err(|_| "WGPU device initialisation panicked".to_string())
}

#[test]
fn matches_f64_reference_on_cpu_backends() {
    let ids = tokens(40);
    for window in ["0", "7"] {
        let extra = [("sliding_window", window)];
        let flex = build::<Flex>(&extra);
        let reference = reference_logits(&flex, &ids);
        let got_flex = prefill_logits(&flex, &ids, false);
        let got_nd = prefill_logits(&build::<NdArray>(&extra), &ids, false);
        let e1 = max_relative_error(&got_flex, &reference);
        let e2 = max_relative_error(&got_nd, &reference);
        assert!(
            e1 < TOLERANCE,
            "flex vs reference (window {window}): {e1:e}"
        );
        assert!(
            e2 < TOLERANCE,
            "ndarray vs reference (window {window}): {e2:e}"
        );
    }
}

#[test]
fn observed_weights_path_matches_fused_path() {
    let ids = tokens(33);
    let m = build::<Flex>(&[]);
    let fused = prefill_logits(&m, &ids, false);
    let explicit = prefill_logits(&m, &ids, true);
    let e = max_relative_error(&explicit, &fused);
    assert!(e < TOLERANCE, "{e:e}");
}

#[test]
fn wgpu_matches_cpu() {
    if !wgpu_available() {
        return;
    }
    let ids = tokens(48);
    for window in ["0", "9"] {
        let extra = [("sliding_window", window)];
        let cpu = prefill_logits(&build::<Flex>(&extra), &ids, false);
        let gpu = prefill_logits(&build::<Wgpu>(&extra), &ids, false);
        let e = max_relative_error(&gpu, &cpu);
        assert!(e < TOLERANCE, "wgpu vs flex (window {window}): {e:e}");
        let gpu_observed = prefill_logits(&build::<Wgpu>(&extra), &ids, true);
        let e = max_relative_error(&gpu_observed, &cpu);
        assert!(
            e < TOLERANCE,
            "wgpu explicit-attention path vs flex (window {window}): {e:e}"
        );
    }
}

/// Prefill n tokens then decode one at a time == prefill everything at once, at every step.
fn incremental_equals_prefill<B: Backend>(window: &str) {
    let m = build::<B>(&[("sliding_window", window)]);
    let ids = tokens(24);
    let all = prefill_logits(&m, &ids, false);
    let vocab = m.config.vocab_size;
    for observe in [false, true] {
        let mut state = new_state(&m, observe, 16);
        let first: Vec<usize> = (0..16).collect();
        let _ = m
            .forward(&ids[..16], &first, &mut state, LogitsSelection::Last)
            .unwrap();
        for p in 16..ids.len() {
            let got = to_vec(
                m.forward(&ids[p..p + 1], &[p], &mut state, LogitsSelection::Last)
                    .unwrap(),
            );
            let want = &all[p * vocab..(p + 1) * vocab];
            let e = max_relative_error(&got, want);
            assert!(
                e < TOLERANCE,
                "{} step {p} (observe {observe}, window {window}): {e:e}",
                B::name(&Default::default())
            );
        }
    }
    // Chunked prefill (chunks of 5) gives the same last logits.
    let mut state = new_state(&m, false, ids.len());
    let mut last = Vec::new();
    for start in (0..ids.len()).step_by(5) {
        let end = (start + 5).min(ids.len());
        let pos: Vec<usize> = (start..end).collect();
        last = to_vec(
            m.forward(&ids[start..end], &pos, &mut state, LogitsSelection::Last)
                .unwrap(),
        );
    }
    let e = max_relative_error(&last, &all[(ids.len() - 1) * vocab..]);
    assert!(e < TOLERANCE, "chunked prefill (window {window}): {e:e}");
}

#[test]
fn incremental_decoding_equals_prefill_on_cpu() {
    for w in ["0", "6"] {
        incremental_equals_prefill::<Flex>(w);
        incremental_equals_prefill::<NdArray>(w);
    }
}

#[test]
fn incremental_decoding_equals_prefill_on_wgpu() {
    if wgpu_available() {
        for w in ["0", "6"] {
            incremental_equals_prefill::<Wgpu>(w);
            // burn's unfused WGPU backend: RMSNorm and decode attention as custom kernels.
            incremental_equals_prefill::<longctx_gpu_kernels::WgpuUnfused>(w);
        }
    }
}

#[test]
fn bad_inputs_are_errors() {
    let m = build::<Flex>(&[]);
    let mut state = new_state(&m, false, 4);
    let err = m
        .forward(&[1, 2], &[0], &mut state, LogitsSelection::Last)
        .unwrap_err()
        .to_string();
    assert!(err.contains("as many positions as tokens"), "{err}");
    let err = m
        .forward(&[100_000], &[0], &mut state, LogitsSelection::Last)
        .unwrap_err()
        .to_string();
    assert!(err.contains("outside the vocabulary"), "{err}");
    let bad = tiny_params(&[("heads", "3"), ("kv_heads", "2")]);
    let err = TinyModel::build::<Flex>(TinyModel::config(&bad).unwrap(), 0, &Default::default())
        .unwrap_err();
    assert!(err.to_string().contains("multiple of n_kv_heads"), "{err}");
}
