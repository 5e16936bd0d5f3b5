//! Small tensor helpers shared by models and methods.

use burn::tensor::{backend::Backend, Tensor};

/// Bytes a tensor occupies: element count times the size of its stored element type.
pub fn tensor_bytes<B: Backend, const D: usize>(t: &Tensor<B, D>) -> usize {
    t.shape().num_elements() * t.dtype().size()
}

/// Relative error between two equally long slices: `max|a-b| / max(max|b|, tiny)`.
/// This is the error measure used by every parity check in longctx.
pub fn max_relative_error(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "compared slices differ in length");
    let scale = b
        .iter()
        .fold(0f64, |m, &x| m.max((x as f64).abs()))
        .max(1e-30);
    let diff = a
        .iter()
        .zip(b)
        .fold(0f64, |m, (&x, &y)| m.max((x as f64 - y as f64).abs()));
    diff / scale
}
