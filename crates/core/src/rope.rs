//! What a layer's rotary position embedding (RoPE) is, and its inverse frequencies.
//!
//! This is the one place the frequencies are computed: the transformer model builds its
//! rotation tables from [`RopeSpec::inv_freq`], and a KV method that needs to undo or redo the
//! rotation (pre-RoPE key quantization) reads the same [`RopeSpec`] from the layer's
//! [`AttentionLayerSpec`](crate::AttentionLayerSpec).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

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

/// Which channels are rotated together.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RopeLayout {
    /// "Rotate half" (GPT-NeoX, Hugging Face Llama/Qwen2/Gemma): of the first `rotary_dim`
    /// channels, channel `i` and channel `i + rotary_dim/2` form a pair rotated by
    /// `position * inv_freq[i]`; channels from `rotary_dim` on are not rotated.
    #[serde(rename = "neox")]
    NeoX,
}

/// A layer's rotary position embedding: base, rotated channels, layout and frequency scaling.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RopeSpec {
    /// The base (`rope_theta`).
    pub theta: f64,
    /// Rotated channels of a head, even and at most `head_dim` (a partial rotary dimension
    /// where the model has one, else `head_dim`).
    pub rotary_dim: usize,
    pub layout: RopeLayout,
    pub scaling: RopeScaling,
}

impl RopeSpec {
    /// Half-split RoPE over all `head_dim` channels with base `theta`, unscaled.
    pub fn neox(head_dim: usize, theta: f64) -> Self {
        Self {
            theta,
            rotary_dim: head_dim,
            layout: RopeLayout::NeoX,
            scaling: RopeScaling::None,
        }
    }

    /// Checks the spec for heads of `head_dim` channels.
    pub fn validate(&self, head_dim: usize) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidInput(format!("rope: {m}")));
        if self.theta.is_nan() || self.theta <= 0.0 {
            return bad(format!("theta ({}) must be positive", self.theta));
        }
        if self.rotary_dim == 0 || !self.rotary_dim.is_multiple_of(2) || self.rotary_dim > head_dim
        {
            return bad(format!(
                "rotary_dim ({}) must be even, positive and at most head_dim ({head_dim})",
                self.rotary_dim
            ));
        }
        self.scaling.validate()
    }

    /// The inverse frequencies, `rotary_dim / 2` of them, in f32 exactly as transformers
    /// computes them: `1 / theta^(2i / rotary_dim)`, then the scaling.
    pub fn inv_freq(&self) -> Vec<f32> {
        let theta = self.theta as f32;
        let dim = self.rotary_dim;
        let mut inv_freq: Vec<f32> = (0..dim / 2)
            .map(|i| 1.0f32 / theta.powf((2 * i) as f32 / dim as f32))
            .collect();
        self.scaling.apply(&mut inv_freq);
        inv_freq
    }
}

/// `cos` and `sin` of `position * inv_freq[i]` (f32 product, as transformers computes the
/// angles) for every position, row-major `[positions.len(), inv_freq.len()]` each.
pub fn rope_tables(inv_freq: &[f32], positions: &[usize]) -> (Vec<f32>, Vec<f32>) {
    let mut cos = Vec::with_capacity(positions.len() * inv_freq.len());
    let mut sin = Vec::with_capacity(positions.len() * inv_freq.len());
    for &p in positions {
        for &f in inv_freq {
            let angle = p as f32 * f;
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    (cos, sin)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The transformer model's frequency code as it was before it moved here (reference for
    /// bit-identity): unscaled `1 / theta^(2i/D)` in f32, then the Llama-3 blend.
    fn model_inv_freq_before(head_dim: usize, theta: f64, llama3: Option<[f64; 4]>) -> Vec<f32> {
        let theta = theta as f32;
        let mut inv: Vec<f32> = (0..head_dim / 2)
            .map(|i| 1.0f32 / theta.powf((2 * i) as f32 / head_dim as f32))
            .collect();
        if let Some([factor, low, high, old]) = llama3 {
            let (factor, low, high, old) = (factor as f32, low as f32, high as f32, old as f32);
            for f in inv.iter_mut() {
                let wavelen = 2.0 * std::f32::consts::PI / *f;
                if wavelen > old / low {
                    *f /= factor;
                } else if wavelen >= old / high {
                    let smooth = (old / wavelen - low) / (high - low);
                    *f = (1.0 - smooth) * *f / factor + smooth * *f;
                }
            }
        }
        inv
    }

    #[test]
    fn plain_theta_matches_the_model_and_the_formula() {
        for (d, theta) in [(64, 10000.0), (64, 100000.0), (128, 500000.0), (256, 1e6)] {
            let spec = RopeSpec::neox(d, theta);
            let got = spec.inv_freq();
            assert_eq!(got.len(), d / 2);
            assert_eq!(
                got,
                model_inv_freq_before(d, theta, None),
                "d {d}, theta {theta}"
            );
            for (i, &f) in got.iter().enumerate() {
                let want = 1.0 / theta.powf(2.0 * i as f64 / d as f64);
                assert!(
                    ((f as f64 - want) / want).abs() < 1e-6,
                    "{i}: {f} vs {want}"
                );
            }
        }
    }

    #[test]
    fn llama3_scaling_matches_the_model() {
        // Llama-3.1-8B's parameters, and a small original context so all three bands occur.
        for (old, d) in [(8192usize, 128usize), (64, 16)] {
            let spec = RopeSpec {
                scaling: RopeScaling::Llama3 {
                    factor: 8.0,
                    low_freq_factor: 1.0,
                    high_freq_factor: 4.0,
                    original_max_position_embeddings: old,
                },
                ..RopeSpec::neox(d, 500000.0)
            };
            let got = spec.inv_freq();
            let want = model_inv_freq_before(d, 500000.0, Some([8.0, 1.0, 4.0, old as f64]));
            assert_eq!(got, want);
            let plain = RopeSpec::neox(d, 500000.0).inv_freq();
            let (mut kept, mut divided, mut blended) = (0, 0, 0);
            for (&s, &p) in got.iter().zip(&plain) {
                if s == p {
                    kept += 1;
                } else if s == p / 8.0 {
                    divided += 1;
                } else {
                    assert!(s < p && s > p / 8.0);
                    blended += 1;
                }
            }
            assert!(
                kept > 0 && divided > 0 && blended > 0,
                "{kept} {divided} {blended}"
            );
        }
    }

    #[test]
    fn partial_rotary_dim_and_validation() {
        let spec = RopeSpec {
            rotary_dim: 32,
            ..RopeSpec::neox(64, 10000.0)
        };
        assert_eq!(spec.inv_freq(), RopeSpec::neox(32, 10000.0).inv_freq());
        assert!(spec.validate(64).is_ok());
        assert!(spec.validate(16).is_err());
        assert!(RopeSpec::neox(63, 10000.0).validate(63).is_err());
        assert!(RopeSpec::neox(64, 0.0).validate(64).is_err());
        let linear = RopeSpec {
            scaling: RopeScaling::Linear { factor: 4.0 },
            ..RopeSpec::neox(8, 10000.0)
        };
        for (s, p) in linear
            .inv_freq()
            .iter()
            .zip(RopeSpec::neox(8, 10000.0).inv_freq())
        {
            assert_eq!(*s, p / 4.0);
        }
        let json = serde_json::to_string(&linear).unwrap();
        assert!(json.contains("\"neox\""), "{json}");
        assert_eq!(serde_json::from_str::<RopeSpec>(&json).unwrap(), linear);
    }
}
