use burn::tensor::{activation::silu, backend::Backend, Int, Tensor, TensorData};

use longctx_core::{
    AttentionObservation, CausalLm, Error, LogitsSelection, ModelInfo, Result, SequenceState,
};

use crate::attention::attend;
use crate::config::TransformerConfig;
use crate::rope::Rope;

/// Weights of one decoder layer. Linear weights are stored `[in, out]` (`x @ w`).
#[derive(Clone, Debug)]
pub struct LayerWeights<B: Backend> {
    /// `[hidden]`
    pub attn_norm: Tensor<B, 1>,
    /// `[hidden, H_q * D]`
    pub wq: Tensor<B, 2>,
    /// `[hidden, H_kv * D]`
    pub wk: Tensor<B, 2>,
    /// `[hidden, H_kv * D]`
    pub wv: Tensor<B, 2>,
    /// `[H_q * D, hidden]`
    pub wo: Tensor<B, 2>,
    /// `[hidden]`
    pub mlp_norm: Tensor<B, 1>,
    /// `[hidden, intermediate]`
    pub w_gate: Tensor<B, 2>,
    /// `[hidden, intermediate]`
    pub w_up: Tensor<B, 2>,
    /// `[intermediate, hidden]`
    pub w_down: Tensor<B, 2>,
}

/// A Llama-family decoder-only transformer.
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
    rope: Rope,
    device: B::Device,
}

/// RMSNorm over the last axis of `x` `[T, hidden]` with gain `w` `[hidden]`.
fn rms_norm<B: Backend>(x: Tensor<B, 2>, w: &Tensor<B, 1>, eps: f64) -> Tensor<B, 2> {
    let variance = x.clone().powi_scalar(2).mean_dim(1);
    let normed = x * (variance + eps).sqrt().recip();
    normed * w.clone().unsqueeze::<2>()
}

impl<B: Backend> Transformer<B> {
    /// Assembles a model from weights; checks every shape against `config`.
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
        let (h, q, kv, f) = (
            c.hidden_size,
            c.n_heads * c.head_dim,
            c.n_kv_heads * c.head_dim,
            c.intermediate_size,
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
        for (i, l) in layers.iter().enumerate() {
            check(
                format!("layers.{i}.attn_norm"),
                l.attn_norm.dims().to_vec(),
                vec![h],
            )?;
            check(format!("layers.{i}.wq"), l.wq.dims().to_vec(), vec![h, q])?;
            check(format!("layers.{i}.wk"), l.wk.dims().to_vec(), vec![h, kv])?;
            check(format!("layers.{i}.wv"), l.wv.dims().to_vec(), vec![h, kv])?;
            check(format!("layers.{i}.wo"), l.wo.dims().to_vec(), vec![q, h])?;
            check(
                format!("layers.{i}.mlp_norm"),
                l.mlp_norm.dims().to_vec(),
                vec![h],
            )?;
            check(
                format!("layers.{i}.w_gate"),
                l.w_gate.dims().to_vec(),
                vec![h, f],
            )?;
            check(
                format!("layers.{i}.w_up"),
                l.w_up.dims().to_vec(),
                vec![h, f],
            )?;
            check(
                format!("layers.{i}.w_down"),
                l.w_down.dims().to_vec(),
                vec![f, h],
            )?;
        }
        let info = ModelInfo {
            name: name.to_string(),
            architecture: "llama".into(),
            vocab_size: c.vocab_size,
            max_context: c.max_context,
            layers: c.layer_specs(),
            dtype: format!("{:?}", embed.dtype()).to_lowercase(),
            parameter_count: c.parameter_count(),
        };
        let rope = Rope::new(c.head_dim, c.rope_theta);
        let device = embed.device();
        Ok(Self {
            config,
            info,
            embed,
            layers,
            final_norm,
            lm_head,
            rope,
            device,
        })
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
        let (cos, sin) = self.rope.tables::<B>(positions, &self.device);
        let needs = state.observe;

        for (i, layer) in self.layers.iter().enumerate() {
            let h = rms_norm(x.clone(), &layer.attn_norm, c.rms_norm_eps);
            let q = Self::heads(h.clone().matmul(layer.wq.clone()), c.n_heads, c.head_dim);
            let k = Self::heads(h.clone().matmul(layer.wk.clone()), c.n_kv_heads, c.head_dim);
            let v = Self::heads(h.matmul(layer.wv.clone()), c.n_kv_heads, c.head_dim);
            let q = Rope::apply(q, &cos, &sin);
            let k = Rope::apply(k, &cos, &sin);

            let cache = state.cache_mut(i)?;
            cache.append(k, v, positions)?;
            let view = cache.view();
            let attended = attend(q.clone(), positions, &view, c.sliding_window, needs);
            if needs.any() {
                cache.observe(AttentionObservation {
                    queries: needs.queries.then(|| q.clone()),
                    weights: attended.weights,
                    query_positions: positions.to_vec(),
                })?;
            }
            let out = attended
                .output
                .swap_dims(1, 2)
                .reshape([t, c.n_heads * c.head_dim]);
            x = x + out.matmul(layer.wo.clone());

            let h = rms_norm(x.clone(), &layer.mlp_norm, c.rms_norm_eps);
            let gate = silu(h.clone().matmul(layer.w_gate.clone()));
            let up = h.matmul(layer.w_up.clone());
            x = x + (gate * up).matmul(layer.w_down.clone());
        }
        state.processed_tokens += t;

        let x = match logits {
            LogitsSelection::Last => x.slice([t - 1..t, 0..c.hidden_size]),
            LogitsSelection::All => x,
        };
        let x = rms_norm(x, &self.final_norm, c.rms_norm_eps);
        Ok(x.matmul(self.lm_head.clone()))
    }
}
