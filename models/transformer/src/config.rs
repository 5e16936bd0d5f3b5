use serde::{Deserialize, Serialize};

use longctx_core::{AttentionLayerSpec, Error, LayerSpec, Result};

/// Hyper-parameters of a Llama-family transformer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TransformerConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    pub max_context: usize,
    pub tie_embeddings: bool,
    /// Local attention window for every layer (Mistral); `None` = global attention.
    pub sliding_window: Option<usize>,
}

impl TransformerConfig {
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
        if self.rope_theta.is_nan() || self.rope_theta <= 0.0 {
            return bad(format!("rope_theta ({}) must be positive", self.rope_theta));
        }
        Ok(())
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
                    sliding_window: self.sliding_window,
                })
            })
            .collect()
    }

    /// Number of weight parameters.
    pub fn parameter_count(&self) -> usize {
        let h = self.hidden_size;
        let q = self.n_heads * self.head_dim;
        let kv = self.n_kv_heads * self.head_dim;
        let per_layer = 2 * h + h * q + 2 * h * kv + q * h + 3 * h * self.intermediate_size;
        let embed = self.vocab_size * h;
        let head = if self.tie_embeddings { 0 } else { embed };
        embed + head + h + self.n_layers * per_layer
    }
}
