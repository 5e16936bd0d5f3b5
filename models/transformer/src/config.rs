use serde::{Deserialize, Serialize};

use longctx_core::{AttentionLayerSpec, Error, LayerSpec, Result};

use crate::rope::{RopeScaling, RopeSpec};

/// Which block layout a checkpoint follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Family {
    /// Llama, Mistral, Qwen2: pre-norm blocks, SwiGLU MLP, norm gain `x * w`.
    Llama,
    /// Gemma-3: embeddings scaled by `sqrt(hidden)`, RMSNorm over each query/key head before
    /// RoPE, a norm after attention and after the MLP too, gated GELU (tanh) MLP.
    Gemma3,
}

/// Attention reach of one layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LayerType {
    /// Every earlier token.
    Global,
    /// The last [`TransformerConfig::sliding_window`] tokens (the query included), with the
    /// local RoPE base when there is one.
    Local,
}

/// Hyper-parameters of a decoder-only transformer of the Llama or Gemma-3 family.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TransformerConfig {
    /// Architecture name for records (`llama`, `mistral`, `qwen2`, `gemma3`, ...).
    pub architecture: String,
    pub family: Family,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// RoPE base of global layers (and of local ones when `local_rope_theta` is `None`).
    pub rope_theta: f64,
    /// RoPE frequency scaling of global layers (and of local ones when `local_rope_theta` is
    /// `None`).
    pub rope_scaling: RopeScaling,
    /// RoPE base of local layers, unscaled (Gemma-3's `rope_local_base_freq`).
    pub local_rope_theta: Option<f64>,
    pub rms_norm_eps: f64,
    pub max_context: usize,
    pub tie_embeddings: bool,
    /// Window of the [`LayerType::Local`] layers, in tokens.
    pub sliding_window: Option<usize>,
    /// One entry per layer.
    pub layer_types: Vec<LayerType>,
    /// Bias on the query, key and value projections (Qwen2, Llama `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on the output projection (Llama `attention_bias`).
    pub o_bias: bool,
    /// Attention scores are scaled by `query_pre_attn_scalar^-0.5` instead of
    /// `head_dim^-0.5` (Gemma).
    pub query_pre_attn_scalar: Option<f64>,
    /// `logits = c * tanh(logits / c)` (Gemma).
    pub final_logit_softcap: Option<f64>,
}

impl TransformerConfig {
    /// A Llama-architecture configuration: every layer global, or every layer local with
    /// `sliding_window` (Mistral); no biases, no RoPE scaling.
    #[allow(clippy::too_many_arguments)]
    pub fn llama(
        vocab_size: usize,
        hidden_size: usize,
        intermediate_size: usize,
        n_layers: usize,
        n_heads: usize,
        n_kv_heads: usize,
        head_dim: usize,
        rope_theta: f64,
        rms_norm_eps: f64,
        max_context: usize,
        tie_embeddings: bool,
        sliding_window: Option<usize>,
    ) -> Self {
        let kind = if sliding_window.is_some() {
            LayerType::Local
        } else {
            LayerType::Global
        };
        Self {
            architecture: "llama".into(),
            family: Family::Llama,
            vocab_size,
            hidden_size,
            intermediate_size,
            n_layers,
            n_heads,
            n_kv_heads,
            head_dim,
            rope_theta,
            rope_scaling: RopeScaling::None,
            local_rope_theta: None,
            rms_norm_eps,
            max_context,
            tie_embeddings,
            sliding_window,
            layer_types: vec![kind; n_layers],
            qkv_bias: false,
            o_bias: false,
            query_pre_attn_scalar: None,
            final_logit_softcap: None,
        }
    }

    /// Checks that the numbers fit together; names the first that does not.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidInput(format!("transformer config: {m}")));
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("n_layers", self.n_layers),
            ("n_heads", self.n_heads),
            ("n_kv_heads", self.n_kv_heads),
            ("head_dim", self.head_dim),
            ("max_context", self.max_context),
        ] {
            if v == 0 {
                return bad(format!("{name} must be positive"));
            }
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad(format!(
                "n_heads ({}) must be a multiple of n_kv_heads ({})",
                self.n_heads, self.n_kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad(format!(
                "head_dim ({}) must be even for RoPE",
                self.head_dim
            ));
        }
        for (name, theta) in [
            ("rope_theta", Some(self.rope_theta)),
            ("local_rope_theta", self.local_rope_theta),
        ] {
            if let Some(t) = theta.filter(|t| t.is_nan() || *t <= 0.0) {
                return bad(format!("{name} ({t}) must be positive"));
            }
        }
        self.rope_scaling.validate()?;
        if self.layer_types.len() != self.n_layers {
            return bad(format!(
                "{} layer types for {} layers",
                self.layer_types.len(),
                self.n_layers
            ));
        }
        if self.sliding_window == Some(0) {
            return bad("sliding_window must be positive".into());
        }
        if self.sliding_window.is_none() && self.layer_types.contains(&LayerType::Local) {
            return bad("local layers need a sliding_window".into());
        }
        for (name, v) in [
            ("query_pre_attn_scalar", self.query_pre_attn_scalar),
            ("final_logit_softcap", self.final_logit_softcap),
        ] {
            if let Some(x) = v.filter(|x| x.is_nan() || *x <= 0.0) {
                return bad(format!("{name} ({x}) must be positive"));
            }
        }
        Ok(())
    }

    /// The attention window of layer `layer` (`None` = global).
    pub fn window_of(&self, layer: usize) -> Option<usize> {
        match self.layer_types[layer] {
            LayerType::Global => None,
            LayerType::Local => self.sliding_window,
        }
    }

    /// RoPE of the global layers (and of local ones unless `local_rope_theta` is set).
    pub fn global_rope_spec(&self) -> RopeSpec {
        RopeSpec {
            scaling: self.rope_scaling.clone(),
            ..RopeSpec::neox(self.head_dim, self.rope_theta)
        }
    }

    /// RoPE of the local layers when it differs from the global one (Gemma-3: its own base,
    /// unscaled).
    pub fn local_rope_spec(&self) -> Option<RopeSpec> {
        self.local_rope_theta
            .map(|theta| RopeSpec::neox(self.head_dim, theta))
    }

    /// The RoPE the model applies to the queries and keys of layer `layer`.
    pub fn rope_spec_of(&self, layer: usize) -> RopeSpec {
        match (self.layer_types[layer], self.local_rope_spec()) {
            (LayerType::Local, Some(local)) => local,
            _ => self.global_rope_spec(),
        }
    }

    /// The scale applied to attention scores.
    pub fn attention_scale(&self) -> f64 {
        1.0 / self
            .query_pre_attn_scalar
            .unwrap_or(self.head_dim as f64)
            .sqrt()
    }

    /// The layer specs a KV method sees.
    pub fn layer_specs(&self) -> Vec<LayerSpec> {
        (0..self.n_layers)
            .map(|layer| {
                LayerSpec::Attention(AttentionLayerSpec {
                    layer,
                    n_query_heads: self.n_heads,
                    n_kv_heads: self.n_kv_heads,
                    head_dim: self.head_dim,
                    sliding_window: self.window_of(layer),
                    rope: Some(self.rope_spec_of(layer)),
                })
            })
            .collect()
    }

    /// Number of weight parameters.
    pub fn parameter_count(&self) -> usize {
        let h = self.hidden_size;
        let q = self.n_heads * self.head_dim;
        let kv = self.n_kv_heads * self.head_dim;
        let norms = match self.family {
            Family::Llama => 2 * h,
            Family::Gemma3 => 4 * h + 2 * self.head_dim,
        };
        let biases = usize::from(self.qkv_bias) * (q + 2 * kv) + usize::from(self.o_bias) * h;
        let per_layer =
            norms + biases + h * q + 2 * h * kv + q * h + 3 * h * self.intermediate_size;
        let embed = self.vocab_size * h;
        let head = if self.tie_embeddings { 0 } else { embed };
        embed + head + h + self.n_layers * per_layer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rope::Rope;

    #[test]
    fn layer_specs_carry_each_layers_rope() {
        let mut c =
            TransformerConfig::llama(100, 64, 128, 3, 4, 2, 16, 10000.0, 1e-6, 512, true, Some(8));
        c.layer_types = vec![LayerType::Local, LayerType::Global, LayerType::Local];
        c.rope_theta = 1e6;
        c.rope_scaling = RopeScaling::Linear { factor: 8.0 };
        c.local_rope_theta = Some(10000.0);
        c.validate().unwrap();
        let ropes: Vec<RopeSpec> = c
            .layer_specs()
            .into_iter()
            .map(|l| match l {
                LayerSpec::Attention(a) => a.rope.expect("every layer declares its RoPE"),
                LayerSpec::Recurrent(_) => unreachable!(),
            })
            .collect();
        assert_eq!(ropes[0], RopeSpec::neox(16, 10000.0));
        assert_eq!(ropes[2], ropes[0]);
        assert_eq!(ropes[1].theta, 1e6);
        assert_eq!(ropes[1].scaling, RopeScaling::Linear { factor: 8.0 });
        assert_eq!(ropes[1].rotary_dim, 16);
        // What the model rotates with is what the specs say.
        assert_eq!(
            Rope::scaled(16, 1e6, &RopeScaling::Linear { factor: 8.0 }).inv_freq(),
            &ropes[1].inv_freq()[..]
        );
        // Without a local base every layer uses the global RoPE.
        c.local_rope_theta = None;
        assert_eq!(c.rope_spec_of(0), c.global_rope_spec());
    }
}
