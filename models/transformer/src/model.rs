use std::sync::Arc;

use burn::tensor::{activation::silu, backend::Backend, DType, Int, Tensor, TensorData};
use longctx_cpu_kernels::flex::{
    flex_matmul, flex_quant_matmul, flex_rms_norm, flex_silu, flex_silu_mul, is_flex,
};
use longctx_cpu_kernels::QuantMatrix;

use longctx_core::{
    AttentionObservation, CausalLm, Error, LogitsSelection, ModelInfo, Result, SequenceState,
};

use crate::attention::attend;
use crate::config::{Family, LayerType, TransformerConfig};
use crate::rope::Rope;

/// Weights of one decoder layer. Linear weights are stored `[in, out]` (`x @ w`); norm gains
/// are the factor applied to the normalised input (for Gemma, `1 + w` of the checkpoint).
#[derive(Clone, Debug)]
pub struct LayerWeights<B: Backend> {
    /// `[hidden]`: before attention.
    pub attn_norm: Tensor<B, 1>,
    /// `[hidden, H_q * D]`
    pub wq: Tensor<B, 2>,
    /// `[hidden, H_kv * D]`
    pub wk: Tensor<B, 2>,
    /// `[hidden, H_kv * D]`
    pub wv: Tensor<B, 2>,
    /// `[H_q * D, hidden]`
    pub wo: Tensor<B, 2>,
    /// `[H_q * D]`, `[H_kv * D]`, `[H_kv * D]`: present iff `config.qkv_bias`.
    pub qkv_bias: Option<[Tensor<B, 1>; 3]>,
    /// `[hidden]`: present iff `config.o_bias`.
    pub o_bias: Option<Tensor<B, 1>>,
    /// `[D]` each: RMSNorm over every query/key head before RoPE (Gemma-3).
    pub qk_norm: Option<[Tensor<B, 1>; 2]>,
    /// `[hidden]`: on the attention output before the residual add (Gemma-3).
    pub post_attn_norm: Option<Tensor<B, 1>>,
    /// `[hidden]`: before the MLP.
    pub mlp_norm: Tensor<B, 1>,
    /// `[hidden]`: on the MLP output before the residual add (Gemma-3).
    pub post_mlp_norm: Option<Tensor<B, 1>>,
    /// `[hidden, intermediate]`
    pub w_gate: Tensor<B, 2>,
    /// `[hidden, intermediate]`
    pub w_up: Tensor<B, 2>,
    /// `[intermediate, hidden]`
    pub w_down: Tensor<B, 2>,
    /// The GGUF blocks of the linear weights, for decode steps on the CPU (see
    /// [`QuantLinears`]); empty unless loaded from GGUF onto flex.
    pub quant: QuantLinears,
}

/// Linear weights kept as their GGUF blocks (`[out, in]`, blocks along `in`: the transpose
/// of the f32 tensors beside them) when the file stores them as Q4_0, Q4_1 or Q8_0 and the
/// model runs on flex with the CPU kernels on. Products of at most four rows (decode steps)
/// read these instead of the f32 weights: 4-7 times fewer bytes, the same weight values
/// (exact up to f32 rounding). Prefill keeps the f32 GEMM.
///
/// [`QuantLinears::with_merged_inputs`] concatenates the projections that read the same input
/// (q, k, v; gate, up) into one matrix each, so a decode step makes one parallel dispatch
/// where it made three or two (one token's products on SmolLM2's shapes: 9.8 -> 7.8 ms on 2
/// cores, `crates/cpu-kernels/examples/quant_speed.rs`).
#[derive(Clone, Debug, Default)]
pub struct QuantLinears {
    /// `[(H_q + 2 H_kv) D, hidden]`: q, k and v rows one after another (then the three below
    /// are `None`).
    pub qkv: Option<Arc<QuantMatrix>>,
    pub wq: Option<Arc<QuantMatrix>>,
    pub wk: Option<Arc<QuantMatrix>>,
    pub wv: Option<Arc<QuantMatrix>>,
    pub wo: Option<Arc<QuantMatrix>>,
    /// `[2 F, hidden]`: gate rows, then up rows (then `w_gate` and `w_up` are `None`).
    pub gate_up: Option<Arc<QuantMatrix>>,
    pub w_gate: Option<Arc<QuantMatrix>>,
    pub w_up: Option<Arc<QuantMatrix>>,
    pub w_down: Option<Arc<QuantMatrix>>,
}

impl QuantLinears {
    /// The packed weights present, with their names.
    fn named(&self) -> [(&'static str, Option<&QuantMatrix>); 9] {
        [
            ("qkv", self.qkv.as_deref()),
            ("wq", self.wq.as_deref()),
            ("wk", self.wk.as_deref()),
            ("wv", self.wv.as_deref()),
            ("wo", self.wo.as_deref()),
            ("gate_up", self.gate_up.as_deref()),
            ("w_gate", self.w_gate.as_deref()),
            ("w_up", self.w_up.as_deref()),
            ("w_down", self.w_down.as_deref()),
        ]
    }

    /// Moves q, k, v into `qkv` and gate, up into `gate_up` where each group is present and
    /// shares one block format; a group that does not stays as it is.
    pub fn with_merged_inputs(mut self) -> Self {
        if let (Some(q), Some(k), Some(v)) = (&self.wq, &self.wk, &self.wv) {
            if let Some(qkv) = QuantMatrix::concat_rows(&[q, k, v]) {
                self.qkv = Some(Arc::new(qkv));
                (self.wq, self.wk, self.wv) = (None, None, None);
            }
        }
        if let (Some(g), Some(u)) = (&self.w_gate, &self.w_up) {
            if let Some(gate_up) = QuantMatrix::concat_rows(&[g, u]) {
                self.gate_up = Some(Arc::new(gate_up));
                (self.w_gate, self.w_up) = (None, None);
            }
        }
        self
    }
}

impl<B: Backend> LayerWeights<B> {
    /// A Llama layer: no biases, no extra norms.
    #[allow(clippy::too_many_arguments)]
    pub fn llama(
        attn_norm: Tensor<B, 1>,
        wq: Tensor<B, 2>,
        wk: Tensor<B, 2>,
        wv: Tensor<B, 2>,
        wo: Tensor<B, 2>,
        mlp_norm: Tensor<B, 1>,
        w_gate: Tensor<B, 2>,
        w_up: Tensor<B, 2>,
        w_down: Tensor<B, 2>,
    ) -> Self {
        Self {
            attn_norm,
            wq,
            wk,
            wv,
            wo,
            qkv_bias: None,
            o_bias: None,
            qk_norm: None,
            post_attn_norm: None,
            mlp_norm,
            post_mlp_norm: None,
            w_gate,
            w_up,
            w_down,
            quant: QuantLinears::default(),
        }
    }
}

/// One layer's projections that read the same input, concatenated along their outputs so a
/// GPU backend runs one product where it ran three (q, k, v) or two (gate, up): decode steps
/// there are bound by launches, not arithmetic. Built at load for every backend but flex,
/// whose decode products read the GGUF blocks per projection instead.
#[derive(Clone, Debug)]
struct MergedProjections<B: Backend> {
    /// `[hidden, (H_q + 2 H_kv) D]`: `wq | wk | wv`.
    qkv: Tensor<B, 2>,
    /// `[(H_q + 2 H_kv) D]`: present iff `config.qkv_bias`.
    qkv_bias: Option<Tensor<B, 1>>,
    /// `[hidden, 2 F]`: `w_gate | w_up`.
    gate_up: Tensor<B, 2>,
    /// The same weights as rows, for one-token steps on burn's unfused GPU backends.
    decode_rows: Option<DecodeRows<B>>,
}

/// One layer's weights as rows `[N, K]` (unit stride along the input `K`) for the one-token
/// kernels of `longctx_gpu_kernels`, which read a row per plane with coalesced loads; the
/// layer's `[K, N]` weights (and `MergedProjections`' `qkv`, `gate_up`) are transposed views
/// of these, so nothing is stored twice. Present only where `longctx_gpu_kernels::rows_wanted`
/// (unfused WGPU; CUDA with `LONGCTX_CUDA_ROW_KERNELS=1`), for f32 layers of the plain Llama
/// shape (no biases, no extra norms).
#[derive(Clone, Debug)]
struct DecodeRows<B: Backend> {
    /// `[(H_q + 2 H_kv) D, hidden]`
    qkv: Tensor<B, 2>,
    /// `[hidden, H_q D]`
    wo: Tensor<B, 2>,
    /// `[2 F, hidden]`: gate rows, then up rows.
    gate_up: Tensor<B, 2>,
    /// `[hidden, F]`
    w_down: Tensor<B, 2>,
}

/// `w` `[K, N]` stored as rows `[N, K]`, and `w` again as a transposed view of them.
fn as_rows<B: Backend>(w: Tensor<B, 2>) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let rows = longctx_gpu_kernels::contiguous(w.transpose());
    (rows.clone(), rows.transpose())
}

impl<B: Backend> MergedProjections<B> {
    /// Concatenates `layer`'s projections, then points the layer's own `wq`, `wk`, `wv`,
    /// `w_gate` and `w_up` at column slices of the merged tensors, so the separate copies are
    /// dropped (the fields keep their values for anything that reads them).
    fn merge(layer: &mut LayerWeights<B>) -> Self {
        let (q, kv) = (layer.wq.dims()[1], layer.wk.dims()[1]);
        let (hidden, f) = (layer.w_gate.dims()[0], layer.w_gate.dims()[1]);
        let mut qkv = Tensor::cat(
            vec![layer.wq.clone(), layer.wk.clone(), layer.wv.clone()],
            1,
        );
        let mut gate_up = Tensor::cat(vec![layer.w_gate.clone(), layer.w_up.clone()], 1);
        let plain_llama = layer.qkv_bias.is_none()
            && layer.o_bias.is_none()
            && layer.qk_norm.is_none()
            && layer.post_attn_norm.is_none()
            && layer.post_mlp_norm.is_none();
        let all_f32 = [&qkv, &gate_up, &layer.wo, &layer.w_down]
            .iter()
            .all(|w| w.dtype() == DType::F32);
        let decode_rows =
            (longctx_gpu_kernels::rows_wanted::<B>() && plain_llama && all_f32).then(|| {
                let (qkv_rows, qkv_view) = as_rows(qkv.clone());
                let (gate_up_rows, gate_up_view) = as_rows(gate_up.clone());
                let (wo_rows, wo_view) = as_rows(layer.wo.clone());
                let (down_rows, down_view) = as_rows(layer.w_down.clone());
                (qkv, gate_up, layer.wo, layer.w_down) =
                    (qkv_view, gate_up_view, wo_view, down_view);
                DecodeRows {
                    qkv: qkv_rows,
                    wo: wo_rows,
                    gate_up: gate_up_rows,
                    w_down: down_rows,
                }
            });
        layer.wq = qkv.clone().slice([0..hidden, 0..q]);
        layer.wk = qkv.clone().slice([0..hidden, q..q + kv]);
        layer.wv = qkv.clone().slice([0..hidden, q + kv..q + 2 * kv]);
        layer.w_gate = gate_up.clone().slice([0..hidden, 0..f]);
        layer.w_up = gate_up.clone().slice([0..hidden, f..2 * f]);
        let qkv_bias = layer
            .qkv_bias
            .as_ref()
            .map(|[bq, bk, bv]| Tensor::cat(vec![bq.clone(), bk.clone(), bv.clone()], 0));
        Self {
            qkv,
            qkv_bias,
            gate_up,
            decode_rows,
        }
    }
}

/// A decoder-only transformer of the Llama or Gemma-3 family.
#[derive(Debug)]
pub struct Transformer<B: Backend> {
    pub config: TransformerConfig,
    info: ModelInfo,
    /// `[vocab, hidden]`
    pub embed: Tensor<B, 2>,
    pub layers: Vec<LayerWeights<B>>,
    /// `[hidden]`
    pub final_norm: Tensor<B, 1>,
    /// `[hidden, vocab]`
    pub lm_head: Tensor<B, 2>,
    /// `lm_head` as GGUF blocks `[vocab, hidden]` (see [`QuantLinears`]).
    lm_head_quant: Option<Arc<QuantMatrix>>,
    /// `lm_head` as rows `[vocab, hidden]` for the one-token kernels (see [`DecodeRows`]);
    /// `lm_head` is then a transposed view of them.
    lm_head_rows: Option<Tensor<B, 2>>,
    /// Whether decode steps use the GGUF blocks where present (default on).
    quantized_decode: bool,
    /// RoPE of global layers, and of local layers unless `local_rope` is set.
    rope: Rope,
    /// RoPE of local layers when their base differs (Gemma-3).
    local_rope: Option<Rope>,
    /// Per layer, the merged projections the GPU backends use (empty on flex).
    merged: Vec<MergedProjections<B>>,
    device: B::Device,
}

// Activations are f32 throughout; weights may be stored in f16/bf16 (`--model-param dtype`).
// Matrix products then run in the weights' dtype and small vectors (gains, biases) are
// widened on use, so norms, softmax and the KV cache stay f32.

/// `w` `[N]` as f32.
fn widened<B: Backend>(w: &Tensor<B, 1>) -> Tensor<B, 1> {
    if w.dtype() == DType::F32 {
        w.clone()
    } else {
        w.clone().cast(DType::F32)
    }
}

/// `x @ w` for f32 `x` `[T, in]` and `w` `[in, out]` in its stored dtype; returns f32 `[T, out]`.
/// `packed` is `w`'s GGUF blocks (`[out, in]`), used for decode steps when present.
fn matmul<B: Backend>(
    x: Tensor<B, 2>,
    w: &Tensor<B, 2>,
    packed: Option<&QuantMatrix>,
) -> Tensor<B, 2> {
    let dtype = w.dtype();
    if dtype == DType::F32 {
        // On the CPU: decode steps make one pass over the weight (its quantized blocks when
        // there are any) instead of flex's GEMM; prompts call the GEMM directly, which flex's
        // own call runs about 1.5x slower on these shapes.
        if is_flex::<B>() {
            if let Some(y) = packed.and_then(|p| flex_quant_matmul(&x, p)) {
                return y;
            }
            if let Some(y) = flex_matmul(&x, w) {
                return y;
            }
        }
        x.matmul(w.clone())
    } else {
        x.cast(dtype).matmul(w.clone()).cast(DType::F32)
    }
}

/// RMSNorm over the last axis of `x` `[N, width]` with gain `w` `[width]`.
fn rms_norm<B: Backend>(x: Tensor<B, 2>, w: &Tensor<B, 1>, eps: f64) -> Tensor<B, 2> {
    // One launch instead of seven on burn's unfused GPU backends, where launches bound decode.
    if let Some(y) = longctx_gpu_kernels::rms_norm(&x, w, eps) {
        return y;
    }
    // One parallel pass instead of seven single-threaded ops on flex.
    if let Some(y) = flex_rms_norm(&x, w, eps) {
        return y;
    }
    let variance = x.clone().powi_scalar(2).mean_dim(1);
    let normed = x * (variance + eps).sqrt().recip();
    normed * widened(w).unsqueeze::<2>()
}

/// RMSNorm of every head of `x` `[T, H * D]` over its `D` values, gain `w` `[D]`.
fn head_norm<B: Backend>(x: Tensor<B, 2>, w: &Tensor<B, 1>, eps: f64) -> Tensor<B, 2> {
    let [t, width] = x.dims();
    let d = w.dims()[0];
    rms_norm(x.reshape([t * width / d, d]), w, eps).reshape([t, width])
}

/// GELU with the tanh approximation (PyTorch's `gelu(approximate="tanh")`) of `x` `[N, F]`.
fn gelu_tanh<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let sqrt_2_over_pi = (2.0 / std::f64::consts::PI).sqrt();
    let inner = (x.clone() + x.clone().powi_scalar(3) * 0.044715) * sqrt_2_over_pi;
    x * (inner.tanh() + 1.0) * 0.5
}

/// `x @ w (+ b)` for `x` `[T, in]`, `w` `[in, out]`, `b` `[out]`.
fn linear<B: Backend>(
    x: Tensor<B, 2>,
    w: &Tensor<B, 2>,
    packed: Option<&QuantMatrix>,
    b: Option<&Tensor<B, 1>>,
) -> Tensor<B, 2> {
    add_bias(matmul(x, w, packed), b)
}

/// `y` `[T, out]` plus `b` `[out]` on every row, or `y` when there is no bias.
fn add_bias<B: Backend>(y: Tensor<B, 2>, b: Option<&Tensor<B, 1>>) -> Tensor<B, 2> {
    match b {
        Some(b) => y + widened(b).unsqueeze::<2>(),
        None => y,
    }
}

impl<B: Backend> Transformer<B> {
    /// Assembles a model from weights; checks every shape against `config`, and that the
    /// optional weights are present exactly when the config asks for them.
    pub fn new(
        config: TransformerConfig,
        name: &str,
        embed: Tensor<B, 2>,
        layers: Vec<LayerWeights<B>>,
        final_norm: Tensor<B, 1>,
        lm_head: Tensor<B, 2>,
    ) -> Result<Self> {
        config.validate()?;
        let c = &config;
        let (h, q, kv, f, d) = (
            c.hidden_size,
            c.n_heads * c.head_dim,
            c.n_kv_heads * c.head_dim,
            c.intermediate_size,
            c.head_dim,
        );
        let check = |what: String, got: Vec<usize>, want: Vec<usize>| {
            if got == want {
                Ok(())
            } else {
                Err(Error::InvalidInput(format!(
                    "weight {what} has shape {got:?}, expected {want:?}"
                )))
            }
        };
        let presence = |what: String, present: bool, wanted: bool| {
            if present == wanted {
                Ok(())
            } else {
                Err(Error::InvalidInput(format!(
                    "weight {what} is {} but the config {} it",
                    if present { "present" } else { "missing" },
                    if wanted { "needs" } else { "has no use for" }
                )))
            }
        };
        check("embed".into(), embed.dims().to_vec(), vec![c.vocab_size, h])?;
        check("final_norm".into(), final_norm.dims().to_vec(), vec![h])?;
        check(
            "lm_head".into(),
            lm_head.dims().to_vec(),
            vec![h, c.vocab_size],
        )?;
        if layers.len() != c.n_layers {
            return Err(Error::InvalidInput(format!(
                "{} layers given, config says {}",
                layers.len(),
                c.n_layers
            )));
        }
        let gemma = c.family == Family::Gemma3;
        for (i, l) in layers.iter().enumerate() {
            let name = |w: &str| format!("layers.{i}.{w}");
            check(name("attn_norm"), l.attn_norm.dims().to_vec(), vec![h])?;
            check(name("wq"), l.wq.dims().to_vec(), vec![h, q])?;
            check(name("wk"), l.wk.dims().to_vec(), vec![h, kv])?;
            check(name("wv"), l.wv.dims().to_vec(), vec![h, kv])?;
            check(name("wo"), l.wo.dims().to_vec(), vec![q, h])?;
            check(name("mlp_norm"), l.mlp_norm.dims().to_vec(), vec![h])?;
            check(name("w_gate"), l.w_gate.dims().to_vec(), vec![h, f])?;
            check(name("w_up"), l.w_up.dims().to_vec(), vec![h, f])?;
            check(name("w_down"), l.w_down.dims().to_vec(), vec![f, h])?;
            presence(name("qkv_bias"), l.qkv_bias.is_some(), c.qkv_bias)?;
            if let Some([bq, bk, bv]) = &l.qkv_bias {
                check(name("bq"), bq.dims().to_vec(), vec![q])?;
                check(name("bk"), bk.dims().to_vec(), vec![kv])?;
                check(name("bv"), bv.dims().to_vec(), vec![kv])?;
            }
            presence(name("o_bias"), l.o_bias.is_some(), c.o_bias)?;
            if let Some(bo) = &l.o_bias {
                check(name("o_bias"), bo.dims().to_vec(), vec![h])?;
            }
            let want_packed = [
                (q + 2 * kv, h),
                (q, h),
                (kv, h),
                (kv, h),
                (h, q),
                (2 * f, h),
                (f, h),
                (f, h),
                (h, f),
            ];
            for ((w, packed), (out, inp)) in l.quant.named().into_iter().zip(want_packed) {
                if let Some(p) = packed {
                    let what = name(&format!("quant.{w}"));
                    check(what, vec![p.rows(), p.cols()], vec![out, inp])?;
                }
            }
            presence(name("qk_norm"), l.qk_norm.is_some(), gemma)?;
            if let Some([qn, kn]) = &l.qk_norm {
                check(name("q_norm"), qn.dims().to_vec(), vec![d])?;
                check(name("k_norm"), kn.dims().to_vec(), vec![d])?;
            }
            presence(name("post_attn_norm"), l.post_attn_norm.is_some(), gemma)?;
            presence(name("post_mlp_norm"), l.post_mlp_norm.is_some(), gemma)?;
            for (w, t) in [
                ("post_attn_norm", &l.post_attn_norm),
                ("post_mlp_norm", &l.post_mlp_norm),
            ] {
                if let Some(t) = t {
                    check(name(w), t.dims().to_vec(), vec![h])?;
                }
            }
        }
        let info = ModelInfo {
            name: name.to_string(),
            architecture: c.architecture.clone(),
            vocab_size: c.vocab_size,
            max_context: c.max_context,
            layers: c.layer_specs(),
            dtype: format!("{:?}", embed.dtype()).to_lowercase(),
            parameter_count: c.parameter_count(),
        };
        // The same specs the layers declare to KV methods (`c.rope_spec_of`).
        let rope = Rope::from_spec(&c.global_rope_spec());
        let local_rope = c.local_rope_spec().map(|spec| Rope::from_spec(&spec));
        let device = embed.device();
        let mut layers = layers;
        let merged = if is_flex::<B>() {
            Vec::new()
        } else {
            layers.iter_mut().map(MergedProjections::merge).collect()
        };
        let (lm_head, lm_head_rows) =
            if longctx_gpu_kernels::rows_wanted::<B>() && lm_head.dtype() == DType::F32 {
                let (rows, view) = as_rows(lm_head);
                (view, Some(rows))
            } else {
                (lm_head, None)
            };
        Ok(Self {
            config,
            info,
            embed,
            layers,
            final_norm,
            lm_head,
            lm_head_quant: None,
            lm_head_rows,
            quantized_decode: true,
            rope,
            local_rope,
            merged,
            device,
        })
    }

    /// Sets the GGUF blocks of `lm_head` (`[vocab, hidden]`) used for decode steps.
    pub fn with_quantized_lm_head(mut self, packed: Option<Arc<QuantMatrix>>) -> Result<Self> {
        if let Some(p) = &packed {
            let want = [self.config.vocab_size, self.config.hidden_size];
            if [p.rows(), p.cols()] != want {
                return Err(Error::InvalidInput(format!(
                    "quantized lm_head is [{}, {}], expected {want:?}",
                    p.rows(),
                    p.cols()
                )));
            }
        }
        self.lm_head_quant = packed;
        Ok(self)
    }

    /// Turns the quantized decode products on (the default) or off; off, decode steps use
    /// the f32 weights, which only changes the order of float sums.
    pub fn set_quantized_decode(&mut self, on: bool) {
        self.quantized_decode = on;
    }

    /// `(count, bytes)` of the packed weights kept for decode steps (layers and `lm_head`).
    pub fn quantized_weights(&self) -> (usize, usize) {
        self.layers
            .iter()
            .flat_map(|l| l.quant.named().map(|(_, p)| p))
            .chain([self.lm_head_quant.as_deref()])
            .flatten()
            .fold((0, 0), |(n, bytes), p| (n + 1, bytes + p.data().len()))
    }

    /// The packed copy of a weight, if decode steps are to use it.
    fn packed<'a>(&self, p: &'a Option<Arc<QuantMatrix>>) -> Option<&'a QuantMatrix> {
        p.as_deref().filter(|_| self.quantized_decode)
    }

    /// `x @ W^T` `[T, out]` over the packed blocks `packed` (`[out, in]`) of a weight stored
    /// like `like` (which decides whether the f32 path applies), when the model uses them
    /// and the product is a decode step on flex; `None` otherwise.
    fn packed_product(
        &self,
        x: &Tensor<B, 2>,
        like: &Tensor<B, 2>,
        packed: &Option<Arc<QuantMatrix>>,
    ) -> Option<Tensor<B, 2>> {
        if like.dtype() != DType::F32 || !is_flex::<B>() {
            return None;
        }
        flex_quant_matmul(x, self.packed(packed)?)
    }

    /// Layer `i`'s queries, keys and values for `x` `[T, hidden]`, as heads `[1, H, T, D]`
    /// (`H_q`, `H_kv`, `H_kv`), q and k rotated by `cos2` / `sin_signed`.
    fn project_heads(
        &self,
        i: usize,
        x: Tensor<B, 2>,
        cos2: &Tensor<B, 3>,
        sin_signed: &Tensor<B, 3>,
    ) -> [Tensor<B, 4>; 3] {
        let c = &self.config;
        let layer = &self.layers[i];
        let t = x.dims()[0];
        let h = rms_norm(x, &layer.attn_norm, c.rms_norm_eps);
        let [bq, bk, bv] = match &layer.qkv_bias {
            Some([bq, bk, bv]) => [Some(bq), Some(bk), Some(bv)],
            None => [None, None, None],
        };
        let pk = &layer.quant;
        let merged = self.merged.get(i);
        // One product for q, k and v where their weights are merged: on GPUs always, on
        // flex for decode steps over the packed blocks (whose biases are added per part).
        let (qkv, part_biases) = match merged {
            Some(m) => (
                Some(linear(h.clone(), &m.qkv, None, m.qkv_bias.as_ref())),
                [None; 3],
            ),
            None => (self.packed_product(&h, &layer.wq, &pk.qkv), [bq, bk, bv]),
        };
        let (mut q, mut k, v) = match qkv {
            Some(qkv) => {
                let (qw, kw) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
                let [bq, bk, bv] = part_biases;
                (
                    add_bias(qkv.clone().slice([0..t, 0..qw]), bq),
                    add_bias(qkv.clone().slice([0..t, qw..qw + kw]), bk),
                    add_bias(qkv.slice([0..t, qw + kw..qw + 2 * kw]), bv),
                )
            }
            None => (
                linear(h.clone(), &layer.wq, self.packed(&pk.wq), bq),
                linear(h.clone(), &layer.wk, self.packed(&pk.wk), bk),
                linear(h, &layer.wv, self.packed(&pk.wv), bv),
            ),
        };
        if let Some([qn, kn]) = &layer.qk_norm {
            q = head_norm(q, qn, c.rms_norm_eps);
            k = head_norm(k, kn, c.rms_norm_eps);
        }
        let q = Self::heads(Rope::apply(q, cos2, sin_signed), c.n_heads, c.head_dim);
        let k = Self::heads(Rope::apply(k, cos2, sin_signed), c.n_kv_heads, c.head_dim);
        [q, k, Self::heads(v, c.n_kv_heads, c.head_dim)]
    }

    /// `x + o_proj(out)` (with Gemma's post-attention norm) for layer `i`'s attention output
    /// `out` `[1, H_q, T, D]` and residual `x` `[T, hidden]`.
    fn attention_output(&self, i: usize, x: Tensor<B, 2>, out: Tensor<B, 4>) -> Tensor<B, 2> {
        let c = &self.config;
        let layer = &self.layers[i];
        let pk = &layer.quant;
        let t = x.dims()[0];
        let out = out.swap_dims(1, 2).reshape([t, c.n_heads * c.head_dim]);
        let wo = self.packed(&pk.wo);
        let mut out = linear(out, &layer.wo, wo, layer.o_bias.as_ref());
        if let Some(norm) = &layer.post_attn_norm {
            out = rms_norm(out, norm, c.rms_norm_eps);
        }
        x + out
    }

    /// `x + mlp(rms_norm(x))` of layer `i` for `x` `[T, hidden]`.
    fn mlp(&self, i: usize, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let c = &self.config;
        let layer = &self.layers[i];
        let pk = &layer.quant;
        let merged = self.merged.get(i);
        let gemma = c.family == Family::Gemma3;
        let t = x.dims()[0];
        let h = rms_norm(x.clone(), &layer.mlp_norm, c.rms_norm_eps);
        let gate_up = match merged {
            Some(m) => Some(matmul(h.clone(), &m.gate_up, None)),
            None => self.packed_product(&h, &layer.w_gate, &pk.gate_up),
        };
        let (gate, up) = match gate_up {
            Some(gate_up) => {
                let f = c.intermediate_size;
                (
                    gate_up.clone().slice([0..t, 0..f]),
                    gate_up.slice([0..t, f..2 * f]),
                )
            }
            None => (
                matmul(h.clone(), &layer.w_gate, self.packed(&pk.w_gate)),
                matmul(h, &layer.w_up, self.packed(&pk.w_up)),
            ),
        };
        let gated = if gemma {
            gelu_tanh(gate) * up
        } else {
            // One parallel pass on flex (views of a merged product read in place).
            match flex_silu_mul(&gate, &up) {
                Some(gated) => gated,
                None => flex_silu(gate).unwrap_or_else(silu) * up,
            }
        };
        let mut out = matmul(gated, &layer.w_down, self.packed(&pk.w_down));
        if let Some(norm) = &layer.post_mlp_norm {
            out = rms_norm(out, norm, c.rms_norm_eps);
        }
        x + out
    }

    /// Layer `i`'s weights as rows, when a step of `t` tokens can take the one-token GPU
    /// kernels.
    fn decode_rows(&self, i: usize, t: usize) -> Option<&DecodeRows<B>> {
        if t != 1 {
            return None;
        }
        self.merged.get(i)?.decode_rows.as_ref()
    }

    /// Splits `[T, H * D]` into heads `[1, H, T, D]`.
    fn heads(x: Tensor<B, 2>, n_heads: usize, head_dim: usize) -> Tensor<B, 4> {
        let t = x.dims()[0];
        x.reshape([1, t, n_heads, head_dim]).swap_dims(1, 2)
    }
}

impl<B: Backend> CausalLm<B> for Transformer<B> {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// `tokens`/`positions`: `T` ids at absolute positions; returns `[T or 1, vocab]` logits.
    fn forward(
        &self,
        tokens: &[u32],
        positions: &[usize],
        state: &mut SequenceState<B>,
        logits: LogitsSelection,
    ) -> Result<Tensor<B, 2>> {
        let c = &self.config;
        let t = tokens.len();
        if t == 0 || t != positions.len() {
            return Err(Error::InvalidInput(format!(
                "forward needs as many positions as tokens and at least one token (got {t} tokens, {} positions)",
                positions.len()
            )));
        }
        if let Some(&bad) = tokens.iter().find(|&&id| id as usize >= c.vocab_size) {
            return Err(Error::InvalidInput(format!(
                "token id {bad} is outside the vocabulary of {}",
                c.vocab_size
            )));
        }
        if state.layers.len() != c.n_layers {
            return Err(Error::InvalidInput(format!(
                "sequence state has {} layers, the model {}",
                state.layers.len(),
                c.n_layers
            )));
        }
        let ids = Tensor::<B, 1, Int>::from_data(
            TensorData::new(tokens.iter().map(|&x| x as i64).collect::<Vec<_>>(), [t]),
            &self.device,
        );
        let mut x = self.embed.clone().select(0, ids); // [T, hidden]
        if x.dtype() != DType::F32 {
            x = x.cast(DType::F32);
        }
        let gemma = c.family == Family::Gemma3;
        if gemma {
            x = x * (c.hidden_size as f64).sqrt();
        }
        let global_tables = self.rope.tables::<B>(positions, &self.device);
        let local_tables = self
            .local_rope
            .as_ref()
            .map(|r| r.tables::<B>(positions, &self.device));
        let scale = c.attention_scale();
        let eps = c.rms_norm_eps;
        let needs = state.observe;

        for (i, layer) in self.layers.iter().enumerate() {
            let (cos2, sin_signed) = match (&local_tables, c.layer_types[i]) {
                (Some(local), LayerType::Local) => local,
                _ => &global_tables,
            };
            // One-token steps on burn's unfused GPU backends: RMSNorm, the merged product,
            // RoPE and the head split in two launches (about 20 through burn's ops).
            let rows = self.decode_rows(i, t);
            let fused = rows.and_then(|r| {
                let qkv = longctx_gpu_kernels::norm_matvec(&x, &layer.attn_norm, eps, &r.qkv)?;
                longctx_gpu_kernels::rope_split(&qkv, cos2, sin_signed, c.n_heads, c.n_kv_heads)
            });
            let [q, k, v] = match fused {
                Some(heads) => heads,
                None => self.project_heads(i, x.clone(), cos2, sin_signed),
            };

            let cache = state.cache_mut(i)?;
            cache.append(k, v, positions)?;
            if needs.queries_before_attention {
                cache.prepare(&q, positions)?;
            }
            let view = cache.view();
            let attended = attend(q.clone(), positions, &view, c.window_of(i), scale, needs);
            if needs.any() {
                cache.observe(AttentionObservation {
                    queries: needs.queries.then(|| q.clone()),
                    weights: attended.weights,
                    query_positions: positions.to_vec(),
                })?;
            }
            // One token: `[1, H_q, 1, D]` is already `[1, H_q D]` in memory.
            let fused = rows.and_then(|r| {
                let out = attended.output.clone().reshape([1, c.n_heads * c.head_dim]);
                longctx_gpu_kernels::matvec_residual(&out, &r.wo, &x)
            });
            x = match fused {
                Some(x) => x,
                None => self.attention_output(i, x, attended.output),
            };
            let fused = rows.and_then(|r| {
                let gated = longctx_gpu_kernels::norm_matvec_silu_gate_up(
                    &x,
                    &layer.mlp_norm,
                    eps,
                    &r.gate_up,
                )?;
                longctx_gpu_kernels::matvec_residual(&gated, &r.w_down, &x)
            });
            x = match fused {
                Some(x) => x,
                None => self.mlp(i, x),
            };
        }
        state.processed_tokens += t;

        let x = match logits {
            LogitsSelection::Last => x.slice([t - 1..t, 0..c.hidden_size]),
            LogitsSelection::All => x,
        };
        let one_row = self.lm_head_rows.as_ref().filter(|_| x.dims()[0] == 1);
        let fused = one_row
            .and_then(|rows| longctx_gpu_kernels::norm_matvec(&x, &self.final_norm, eps, rows));
        let logits = match fused {
            Some(logits) => logits,
            None => {
                let x = rms_norm(x, &self.final_norm, c.rms_norm_eps);
                matmul(x, &self.lm_head, self.packed(&self.lm_head_quant))
            }
        };
        Ok(match c.final_logit_softcap {
            Some(cap) => (logits / cap).tanh() * cap,
            None => logits,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn gelu_tanh_matches_the_formula() {
        let xs = [-3.0f32, -0.5, 0.0, 0.7, 2.5];
        let t =
            Tensor::<Flex, 2>::from_data(TensorData::new(xs.to_vec(), [1, 5]), &Default::default());
        let got: Vec<f32> = gelu_tanh(t).into_data().to_vec().unwrap();
        for (x, g) in xs.iter().zip(got) {
            let x = *x as f64;
            let want = 0.5
                * x
                * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh());
            assert!(
                (g as f64 - want).abs() < 1e-6,
                "gelu({x}) = {g}, want {want}"
            );
        }
    }
}
