use burn::tensor::{backend::Backend, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use longctx_core::{Error, Result};

/// How RoPE frequencies are stretched for contexts longer than the model was trained on,
/// as in transformers' `rope_scaling` / `rope_parameters`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum RopeScaling {
    None,
    /// Every frequency divided by `factor` (position interpolation).
    Linear {
        factor: f64,
    },
    /// Llama 3.1: low frequencies divided by `factor`, high ones kept, a smooth blend between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
}

impl RopeScaling {
    /// Checks the parameters (positive factors, distinct low/high frequency factors).
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidInput(format!("rope scaling: {m}")));
        match *self {
            RopeScaling::None => Ok(()),
            RopeScaling::Linear { factor } if factor.is_nan() || factor <= 0.0 => {
                bad(format!("factor ({factor}) must be positive"))
            }
            RopeScaling::Linear { .. } => Ok(()),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                if [factor, low_freq_factor, high_freq_factor]
                    .iter()
                    .any(|x| x.is_nan() || *x <= 0.0)
                {
                    return bad("llama3 factors must be positive".into());
                }
                if low_freq_factor == high_freq_factor {
                    return bad("llama3 low_freq_factor must differ from high_freq_factor".into());
                }
                if original_max_position_embeddings == 0 {
                    return bad("llama3 original_max_position_embeddings must be positive".into());
                }
                Ok(())
            }
        }
    }

    /// Applies the scaling to unscaled inverse frequencies (f32, as transformers computes them).
    fn apply(&self, inv_freq: &mut [f32]) {
        match *self {
            RopeScaling::None => {}
            RopeScaling::Linear { factor } => {
                for f in inv_freq.iter_mut() {
                    *f /= factor as f32;
                }
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let (factor, low, high) = (
                    factor as f32,
                    low_freq_factor as f32,
                    high_freq_factor as f32,
                );
                let old_context = original_max_position_embeddings as f32;
                let low_freq_wavelen = old_context / low;
                let high_freq_wavelen = old_context / high;
                for f in inv_freq.iter_mut() {
                    let wavelen = 2.0 * std::f32::consts::PI / *f;
                    if wavelen > low_freq_wavelen {
                        *f /= factor;
                    } else if wavelen >= high_freq_wavelen {
                        // Medium frequencies: blend the scaled and the original frequency.
                        let smooth = (old_context / wavelen - low) / (high - low);
                        *f = (1.0 - smooth) * *f / factor + smooth * *f;
                    }
                }
            }
        }
    }
}

/// Rotary position embedding in the "rotate half" layout used by Hugging Face Llama models.
///
/// Angles are computed on the host in f32 exactly as transformers does (`inv_freq` from
/// `base ** (arange(0, D, 2) / D)`, then `position * inv_freq`), so long positions match.
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
        let theta = theta as f32;
        let mut inv_freq: Vec<f32> = (0..head_dim / 2)
            .map(|i| 1.0f32 / theta.powf((2 * i) as f32 / head_dim as f32))
            .collect();
        scaling.apply(&mut inv_freq);
        Self { inv_freq }
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
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        for &p in positions {
            for &f in &self.inv_freq {
                let angle = p as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
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
