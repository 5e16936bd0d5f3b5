//! Undoing and redoing a layer's RoPE on cached keys, for pre-RoPE key quantization.
//!
//! The cache receives keys after the model rotated them. With `key_position = pre_rope` it
//! rotates them back by their positions (the inverse rotation, exact up to float rounding:
//! RoPE rotates channel pairs by an angle, and the inverse is the rotation by minus that
//! angle) before quantizing, and rotates the dequantized keys forward again when attention
//! reads them. The frequencies come from the layer's [`RopeSpec`], the same computation the
//! model's RoPE uses.
//!
//! Unrotation (at a flush, a handful of tokens) uses `cos`/`sin` tables computed on the host
//! exactly as the model computes its own ([`longctx_core::rope::rope_tables`]), so the keys
//! quantized are the model's pre-RoPE keys to float rounding. Re-rotation (every `view`, every
//! stored token) computes the angles on the device: `position * inv_freq` is the same f32
//! product, reduced modulo 2π in three exact steps (Cody–Waite) so that `cos`/`sin` stay
//! accurate at large positions on backends whose own range reduction is coarse (GPUs). No
//! table is kept, so pre-RoPE quantization holds exactly the bytes of post-RoPE quantization.

use burn::tensor::{backend::Backend, FloatDType, Tensor, TensorData};

use longctx_core::rope::{rope_tables, RopeLayout, RopeSpec};
use longctx_core::Result;

/// 2π split into two parts of 8 significant bits and a remainder: `k * C1` and `k * C2` are
/// exact in f32 for `k < 2^16` (angles below about 4·10^5 radians).
fn two_pi_parts() -> (f32, f32, f32) {
    let tau = std::f64::consts::TAU;
    let c1 = (tau * 32.0).floor() / 32.0; // 201/32: 8 bits
    let rest = tau - c1; // about 1.9e-3, in [2^-10, 2^-9)
    let c2 = (rest * 131072.0).floor() / 131072.0; // 8 bits below 2^-9
    let c3 = rest - c2;
    (c1 as f32, c2 as f32, c3 as f32)
}

/// The rotation of one layer's keys.
#[derive(Clone, Debug)]
pub struct KeyRotation {
    inv_freq: Vec<f32>,
    rotary_dim: usize,
}

impl KeyRotation {
    /// The rotation `spec` describes, for heads of `head_dim` channels.
    pub fn new(spec: &RopeSpec, head_dim: usize) -> Result<Self> {
        spec.validate(head_dim)?;
        match spec.layout {
            RopeLayout::NeoX => {}
        }
        Ok(Self {
            inv_freq: spec.inv_freq(),
            rotary_dim: spec.rotary_dim,
        })
    }

    /// `cos`/`sin` `[1, 1, T, rotary_dim/2]` computed on the host, as the model does.
    pub fn host_tables<B: Backend>(
        &self,
        positions: &[usize],
        device: &B::Device,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let (cos, sin) = rope_tables(&self.inv_freq, positions);
        let shape = [1, 1, positions.len(), self.inv_freq.len()];
        (
            Tensor::from_data(TensorData::new(cos, shape), device),
            Tensor::from_data(TensorData::new(sin, shape), device),
        )
    }

    /// `cos`/`sin` `[1, 1, T, rotary_dim/2]` computed on the device (f32), angles reduced
    /// modulo 2π first.
    pub fn device_tables<B: Backend>(
        &self,
        positions: &[usize],
        device: &B::Device,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let (t, half) = (positions.len(), self.inv_freq.len());
        let pos: Vec<f32> = positions.iter().map(|&p| p as f32).collect();
        let pos = Tensor::<B, 4>::from_data(TensorData::new(pos, [1, 1, t, 1]), device)
            .cast(FloatDType::F32);
        let freq = Tensor::<B, 4>::from_data(
            TensorData::new(self.inv_freq.clone(), [1, 1, 1, half]),
            device,
        )
        .cast(FloatDType::F32);
        let angle = pos * freq; // the model's f32 product
        let (c1, c2, c3) = two_pi_parts();
        let k = (angle.clone() * (1.0 / std::f64::consts::TAU)).round();
        let reduced = angle - k.clone() * c1 as f64 - k.clone() * c2 as f64 - k * c3 as f64;
        (reduced.clone().cos(), reduced.sin())
    }

    /// Rotates `x` `[1, H, T, D]` by the angles of `cos`/`sin` `[1, 1, T, rotary_dim/2]`
    /// (`inverse`: by minus those angles). Computed in f32, returned in `x`'s float type.
    pub fn apply<B: Backend>(
        &self,
        x: Tensor<B, 4>,
        (cos, sin): (&Tensor<B, 4>, &Tensor<B, 4>),
        inverse: bool,
    ) -> Tensor<B, 4> {
        let dtype: FloatDType = x.dtype().into();
        let x = x.cast(FloatDType::F32);
        let [b, h, t, d] = x.dims();
        let (half, rot) = (self.rotary_dim / 2, self.rotary_dim);
        let x1 = x.clone().slice([0..b, 0..h, 0..t, 0..half]);
        let x2 = x.clone().slice([0..b, 0..h, 0..t, half..rot]);
        let (y1, y2) = if inverse {
            (
                x1.clone() * cos.clone() + x2.clone() * sin.clone(),
                x2 * cos.clone() - x1 * sin.clone(),
            )
        } else {
            (
                x1.clone() * cos.clone() - x2.clone() * sin.clone(),
                x2 * cos.clone() + x1 * sin.clone(),
            )
        };
        let mut parts = vec![y1, y2];
        if rot < d {
            parts.push(x.slice([0..b, 0..h, 0..t, rot..d]));
        }
        Tensor::cat(parts, 3).cast(dtype)
    }

    /// Keys at `positions` as they were before the model's RoPE (host tables).
    pub fn unrotate<B: Backend>(&self, x: Tensor<B, 4>, positions: &[usize]) -> Tensor<B, 4> {
        let (cos, sin) = self.host_tables::<B>(positions, &x.device());
        self.apply(x, (&cos, &sin), true)
    }

    /// Pre-RoPE keys at `positions` rotated as the model rotates them (device tables).
    pub fn rotate<B: Backend>(&self, x: Tensor<B, 4>, positions: &[usize]) -> Tensor<B, 4> {
        let (cos, sin) = self.device_tables::<B>(positions, &x.device());
        self.apply(x, (&cos, &sin), false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_pi_parts_sum_to_two_pi_and_are_short() {
        let (c1, c2, c3) = two_pi_parts();
        let sum = c1 as f64 + c2 as f64 + c3 as f64;
        assert!((sum - std::f64::consts::TAU).abs() < 1e-12, "{sum}");
        // 8 significant bits: k * c < 2^24 ulps for k < 2^16.
        assert_eq!((c1 as f64 * 32.0).fract(), 0.0);
        assert!(c1 as f64 * 32.0 < 256.0);
        assert_eq!((c2 as f64 * 131072.0).fract(), 0.0);
        assert!(c2 as f64 * 131072.0 < 256.0);
    }
}
