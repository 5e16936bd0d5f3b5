use burn::tensor::{backend::Backend, Tensor, TensorData};

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
        let theta = theta as f32;
        let inv_freq = (0..head_dim / 2)
            .map(|i| 1.0f32 / theta.powf((2 * i) as f32 / head_dim as f32))
            .collect();
        Self { inv_freq }
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
