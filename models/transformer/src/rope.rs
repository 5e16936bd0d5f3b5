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

    /// Tables for `positions`, each `[T, 1, D]`: `cos2` is `[cos, cos]` and `sin_signed` is
    /// `[-sin, sin]` over the head dimension, the factors [`Rope::apply`] needs.
    pub fn tables<B: Backend>(
        &self,
        positions: &[usize],
        device: &B::Device,
    ) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let half = self.inv_freq.len();
        let (cos, sin) = rope_tables(&self.inv_freq, positions);
        let mut cos2 = Vec::with_capacity(cos.len() * 2);
        let mut sin_signed = Vec::with_capacity(sin.len() * 2);
        for (c, s) in cos.chunks_exact(half).zip(sin.chunks_exact(half)) {
            cos2.extend_from_slice(c);
            cos2.extend_from_slice(c);
            sin_signed.extend(s.iter().map(|v| -v));
            sin_signed.extend_from_slice(s);
        }
        let shape = [positions.len(), 1, 2 * half];
        (
            Tensor::from_data(TensorData::new(cos2, shape), device),
            Tensor::from_data(TensorData::new(sin_signed, shape), device),
        )
    }

    /// Rotates every head of `x` `[T, H * D]` by the angles in `cos2` / `sin_signed`
    /// `[T, 1, D]` (from [`Rope::tables`]); returns `[T, H * D]`.
    ///
    /// `x * [cos, cos] + [x2, x1] * [-sin, sin]` is `[x1 cos - x2 sin, x2 cos + x1 sin]`
    /// bit for bit (`a + (-b)` is `a - b` in IEEE arithmetic), in two kernels on the GPU
    /// backends (the half swap, then one fused element-wise expression) where slicing the
    /// halves and concatenating them took about eleven.
    pub fn apply<B: Backend>(
        x: Tensor<B, 2>,
        cos2: &Tensor<B, 3>,
        sin_signed: &Tensor<B, 3>,
    ) -> Tensor<B, 2> {
        // One parallel pass on flex, with the same products and sums.
        if let Some(y) = longctx_cpu_kernels::flex::flex_rope(&x, cos2, sin_signed) {
            return y;
        }
        let [t, width] = x.dims();
        let d = cos2.dims()[2];
        let heads = x.reshape([t, width / d, d]);
        let swapped = heads
            .clone()
            .reshape([t, width / d, 2, d / 2])
            .flip([2])
            .reshape([t, width / d, d]);
        (heads * cos2.clone() + swapped * sin_signed.clone()).reshape([t, width])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rotation against the half-split formula written out, on positions far apart.
    #[test]
    fn apply_rotates_each_half_pair() {
        use burn::backend::Flex;
        let rope = Rope::new(8, 10000.0);
        let positions = [0, 7, 4000];
        let (heads, d, half) = (2, 8, 4);
        let x: Vec<f32> = (0..positions.len() * heads * d)
            .map(|i| ((i * 37 % 19) as f32 - 9.0) / 7.0)
            .collect();
        let device = Default::default();
        let (cos2, sin_signed) = rope.tables::<Flex>(&positions, &device);
        let input = Tensor::<Flex, 2>::from_data(
            TensorData::new(x.clone(), [positions.len(), heads * d]),
            &device,
        );
        let got = Rope::apply(input, &cos2, &sin_signed)
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let (cos, sin) = rope_tables(rope.inv_freq(), &positions);
        for t in 0..positions.len() {
            for h in 0..heads {
                for i in 0..half {
                    let at = t * heads * d + h * d;
                    let (x1, x2) = (x[at + i], x[at + half + i]);
                    let (c, s) = (cos[t * half + i], sin[t * half + i]);
                    assert_eq!(got[at + i], x1 * c - x2 * s, "t {t} h {h} i {i}");
                    assert_eq!(got[at + half + i], x2 * c + x1 * s, "t {t} h {h} i {i}");
                }
            }
        }
    }

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
