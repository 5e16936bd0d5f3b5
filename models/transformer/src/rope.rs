use burn::tensor::{backend::Backend, Tensor, TensorData};

use longctx_core::rope::rope_tables;
pub use longctx_core::{RopeScaling, RopeSpec};

/// Rotary position embedding in the "rotate half" layout used by Hugging Face Llama models.
///
/// Angles are computed on the host in f32 exactly as transformers does (`inv_freq` from
/// `base ** (arange(0, D, 2) / D)`, then `position * inv_freq`), so long positions match.
/// The frequencies and angles come from `longctx_core::rope` ([`RopeSpec::inv_freq`]), the
/// same description a KV method reads from the layer's `AttentionLayerSpec`.
#[derive(Clone, Debug)]
pub struct Rope {
    inv_freq: Vec<f32>,
}

impl Rope {
    /// RoPE for heads of `head_dim` with base `theta`.
    pub fn new(head_dim: usize, theta: f64) -> Self {
        Self::scaled(head_dim, theta, &RopeScaling::None)
    }

    /// RoPE for heads of `head_dim` with base `theta` and frequency scaling `scaling`.
    pub fn scaled(head_dim: usize, theta: f64, scaling: &RopeScaling) -> Self {
        Self::from_spec(&RopeSpec {
            scaling: scaling.clone(),
            ..RopeSpec::neox(head_dim, theta)
        })
    }

    /// RoPE as `spec` describes it (half-split layout over all channels of the head: the
    /// models here rotate every channel, so `spec.rotary_dim` is the head dimension).
    pub fn from_spec(spec: &RopeSpec) -> Self {
        Self {
            inv_freq: spec.inv_freq(),
        }
    }

    /// The inverse frequencies, `D/2` of them.
    pub fn inv_freq(&self) -> &[f32] {
        &self.inv_freq
    }

    /// `cos` and `sin` tables for `positions`, each `[1, 1, T, D/2]`.
    pub fn tables<B: Backend>(
        &self,
        positions: &[usize],
        device: &B::Device,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let half = self.inv_freq.len();
        let (cos, sin) = rope_tables(&self.inv_freq, positions);
        let shape = [1, 1, positions.len(), half];
        (
            Tensor::from_data(TensorData::new(cos, shape), device),
            Tensor::from_data(TensorData::new(sin, shape), device),
        )
    }

    /// Rotates `x` `[1, H, T, D]` by the angles in `cos`/`sin` `[1, 1, T, D/2]`.
    pub fn apply<B: Backend>(
        x: Tensor<B, 4>,
        cos: &Tensor<B, 4>,
        sin: &Tensor<B, 4>,
    ) -> Tensor<B, 4> {
        let [b, h, t, d] = x.dims();
        let half = d / 2;
        let x1 = x.clone().slice([0..b, 0..h, 0..t, 0..half]);
        let x2 = x.slice([0..b, 0..h, 0..t, half..d]);
        let rotated_1 = x1.clone() * cos.clone() - x2.clone() * sin.clone();
        let rotated_2 = x2 * cos.clone() + x1 * sin.clone();
        Tensor::cat(vec![rotated_1, rotated_2], 3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_scaling_keeps_high_divides_low_and_blends_medium() {
        let scaling = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 64,
        };
        let plain = Rope::new(16, 500000.0);
        let scaled = Rope::scaled(16, 500000.0, &scaling);
        let mut kinds = [0; 3];
        for (&p, &s) in plain.inv_freq().iter().zip(scaled.inv_freq()) {
            let wavelen = 2.0 * std::f32::consts::PI / p;
            if wavelen < 16.0 {
                assert_eq!(s, p);
                kinds[0] += 1;
            } else if wavelen > 64.0 {
                assert_eq!(s, p / 8.0);
                kinds[2] += 1;
            } else {
                assert!(s < p && s > p / 8.0, "{s} vs {p}");
                kinds[1] += 1;
            }
        }
        assert!(kinds.iter().all(|&k| k > 0), "{kinds:?}");
    }

    #[test]
    fn linear_scaling_divides_every_frequency() {
        let plain = Rope::new(8, 10000.0);
        let scaled = Rope::scaled(8, 10000.0, &RopeScaling::Linear { factor: 4.0 });
        for (&p, &s) in plain.inv_freq().iter().zip(scaled.inv_freq()) {
            assert_eq!(s, p / 4.0);
        }
        assert!(RopeScaling::Linear { factor: 0.0 }.validate().is_err());
    }
}
