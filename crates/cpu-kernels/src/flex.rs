//! Runs the kernels on tensors of burn's flex backend, reading their buffers in place (strided
//! slices of a cache included). For any other backend, or a layout the kernels do not take,
//! the functions return `None` and the caller keeps burn's ops.

use std::any::{Any, TypeId};
use std::sync::OnceLock;

use burn::backend::flex::{Flex, FlexTensor};
use burn::tensor::{backend::Backend, DType, Tensor, TensorData, TensorPrimitive};

use crate::attention::{attention, Heads, Visibility};

/// Whether `B` is burn's flex CPU backend and the kernels are on: setting the environment
/// variable `LONGCTX_CPU_KERNELS=0` keeps burn's own ops (for A/B measurements).
pub fn is_flex<B: Backend>() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    TypeId::of::<B>() == TypeId::of::<Flex>()
        && *ENABLED.get_or_init(|| std::env::var("LONGCTX_CPU_KERNELS").as_deref() != Ok("0"))
}

fn to_flex<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Option<FlexTensor> {
    if !is_flex::<B>() {
        return None;
    }
    let primitive: Box<dyn Any> = Box::new(tensor.into_primitive().tensor());
    primitive.downcast::<FlexTensor>().ok().map(|t| *t)
}

fn from_flex<B: Backend, const D: usize>(tensor: FlexTensor) -> Option<Tensor<B, D>> {
    let primitive: Box<dyn Any> = Box::new(tensor);
    let primitive = primitive.downcast::<B::FloatTensorPrimitive>().ok()?;
    Some(Tensor::from_primitive(TensorPrimitive::Float(*primitive)))
}

/// A `[1, H, S, D]` f32 flex tensor as [`Heads`], if its last dimension is contiguous and its
/// strides are non-negative.
fn heads_of(tensor: &FlexTensor) -> Option<Heads<'_>> {
    if tensor.dtype() != DType::F32 {
        return None;
    }
    let layout = tensor.layout();
    let shape = layout.shape();
    let strides = layout.strides();
    if shape.num_dims() != 4 || shape[0] != 1 || strides[3] != 1 {
        return None;
    }
    if strides[1] < 0 || strides[2] < 0 {
        return None;
    }
    Some(Heads {
        data: tensor.storage::<f32>(),
        offset: layout.start_offset(),
        head_stride: strides[1] as usize,
        row_stride: strides[2] as usize,
        heads: shape[1],
        rows: shape[2],
        dim: shape[3],
    })
}

/// Attention of `queries` `[1, H_q, T, D]` over `keys`/`values` `[1, H_kv, S, D]` with the
/// visibility rules of [`Visibility`], returning `[1, H_q, T, D_v]`; `None` when `B` is not
/// flex or a tensor is not f32 with a contiguous last dimension.
pub fn flex_attention<B: Backend>(
    queries: &Tensor<B, 4>,
    keys: &Tensor<B, 4>,
    values: &Tensor<B, 4>,
    scale: f32,
    visibility: &Visibility<'_>,
) -> Option<Tensor<B, 4>> {
    let q = to_flex(queries.clone())?;
    let k = to_flex(keys.clone())?;
    let v = to_flex(values.clone())?;
    let (qh, kh, vh) = (heads_of(&q)?, heads_of(&k)?, heads_of(&v)?);
    let mut out = vec![0f32; qh.heads * qh.rows * vh.dim];
    attention(qh, kh, vh, scale, visibility, &mut out);
    let shape = [1, qh.heads, qh.rows, vh.dim];
    from_flex(FlexTensor::from_data(TensorData::new(out, shape)))
}

/// Largest row count that [`flex_skinny_matmul`] takes: decode steps and short tails, where
/// reading the weight once dominates and flex's GEMM parallelises poorly.
pub const SKINNY_ROWS: usize = 4;

/// A contiguous f32 `[rows, cols]` flex tensor's data.
fn contiguous_f32(tensor: &FlexTensor) -> Option<&[f32]> {
    if tensor.dtype() != DType::F32 {
        return None;
    }
    let (start, end) = tensor.layout().contiguous_offsets()?;
    Some(&tensor.storage::<f32>()[start..end])
}

/// `x` `[m, k]` times `w` `[k, n]` for `m <= SKINNY_ROWS`, f32, reading `w` in place whether
/// it is stored `[k, n]` row-major or is the transposed view of a `[n, k]` matrix; `None`
/// otherwise (and for backends other than flex).
pub fn flex_skinny_matmul<B: Backend>(x: &Tensor<B, 2>, w: &Tensor<B, 2>) -> Option<Tensor<B, 2>> {
    let [m, k] = x.dims();
    let [k2, n] = w.dims();
    if m > SKINNY_ROWS || k != k2 {
        return None;
    }
    let x = to_flex(x.clone())?;
    let w = to_flex(w.clone())?;
    if w.dtype() != DType::F32 {
        return None;
    }
    let x = if x.is_contiguous() {
        x
    } else {
        x.to_contiguous()
    };
    let xs = contiguous_f32(&x)?;
    let layout = w.layout();
    let (strides, start) = (layout.strides(), layout.start_offset());
    let data = &w.storage::<f32>()[start..];
    let mut y = vec![0f32; m * n];
    if strides == [n as isize, 1] {
        crate::dense::gemm_skinny_kn(xs, m, k, data, n, &mut y);
    } else if strides == [1, k as isize] {
        crate::dense::gemm_skinny_nk(xs, m, k, data, n, &mut y);
    } else {
        return None;
    }
    from_flex(FlexTensor::from_data(TensorData::new(y, [m, n])))
}

/// SiLU of an f32 flex tensor with the vectorised `exp` (in place when the buffer is not
/// shared); `Err` gives the tensor back for other backends and dtypes.
pub fn flex_silu<B: Backend, const D: usize>(
    x: Tensor<B, D>,
) -> Result<Tensor<B, D>, Tensor<B, D>> {
    if !is_flex::<B>() || x.dtype() != DType::F32 {
        return Err(x);
    }
    let flex = to_flex(x).expect("checked: flex");
    let mut flex = if flex.is_contiguous() && flex.layout().start_offset() == 0 {
        flex
    } else {
        flex.to_contiguous()
    };
    let n = flex.layout().num_elements();
    crate::dense::silu_in_place(&mut flex.storage_mut::<f32>()[..n]);
    Ok(from_flex(flex).expect("flex round trip"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    #[test]
    fn flex_tensors_and_their_slices_run_and_other_backends_decline() {
        let device = Default::default();
        let cache = Tensor::<Flex, 4>::from_data(
            TensorData::new(
                (0..2 * 10 * 4).map(|i| (i as f32).sin()).collect(),
                [1, 2, 10, 4],
            ),
            &device,
        );
        let keys = cache.clone().slice([0..1, 0..2, 0..6, 0..4]);
        let queries = Tensor::<Flex, 4>::ones([1, 4, 2, 4], &device);
        let positions: Vec<usize> = (0..6).collect();
        let vis = Visibility {
            query_positions: &positions[4..],
            key_positions: &positions,
            ..Default::default()
        };
        let out = flex_attention(&queries, &keys, &keys, 0.5, &vis).expect("flex runs");
        assert_eq!(out.dims(), [1, 4, 2, 4]);
        // Query heads 0-1 use KV head 0, heads 2-3 KV head 1.
        let grouped = keys
            .clone()
            .unsqueeze_dim::<5>(2)
            .expand([1, 2, 2, 6, 4])
            .reshape([1, 4, 6, 4]);
        let reference = burn::tensor::module::attention(
            queries,
            grouped.clone(),
            grouped,
            None,
            None,
            burn::tensor::ops::AttentionModuleOptions {
                scale: Some(0.5),
                softcap: None,
                is_causal: true,
            },
        );
        let diff = (out - reference).abs().max().into_scalar();
        assert!(diff < 1e-5, "{diff}");

        // Skinny products in both weight layouts, and SiLU, against burn's ops.
        let x = Tensor::<Flex, 2>::random([2, 40], burn::tensor::Distribution::Default, &device);
        let w = Tensor::<Flex, 2>::random([40, 700], burn::tensor::Distribution::Default, &device);
        let want = x.clone().matmul(w.clone());
        let got = flex_skinny_matmul(&x, &w).expect("row-major weight");
        assert!((got - want.clone()).abs().max().into_scalar() < 1e-4);
        let wt = w.clone().transpose().into_data();
        let w_nk = Tensor::<Flex, 2>::from_data(wt, &device).transpose();
        let got = flex_skinny_matmul(&x, &w_nk).expect("transposed weight");
        assert!((got - want).abs().max().into_scalar() < 1e-4);
        let want = burn::tensor::activation::silu(w.clone());
        let got = flex_silu(w).expect("flex");
        assert!((got - want).abs().max().into_scalar() < 1e-5);

        let nd = Tensor::<NdArray, 4>::ones([1, 1, 2, 4], &Default::default());
        assert!(flex_attention(&nd, &nd, &nd, 1.0, &vis).is_none());
    }
}
