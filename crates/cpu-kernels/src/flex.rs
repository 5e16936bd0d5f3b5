//! Runs the kernels on tensors of burn's flex backend, reading their buffers in place (strided
//! slices of a cache included). For any other backend, or a layout the kernels do not take,
//! the functions return `None` and the caller keeps burn's ops.

use std::any::{Any, TypeId};
use std::sync::OnceLock;

use burn::backend::flex::{Flex, FlexTensor};
use burn::tensor::{backend::Backend, DType, Tensor, TensorData, TensorPrimitive};

use crate::attention::{attention_in_order, Heads, OutputOrder, Visibility};
use crate::quant::{QuantMatrix, MAX_ROWS};
use crate::rows::{self, RowsRef};

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
    // Token-major memory seen as `[1, H_q, T, D_v]`: the caller's `swap_dims(1, 2)` back to
    // `[1, T, H_q, D_v]` before the output projection is then free, where flex would copy the
    // head-major result element by element on one thread.
    attention_in_order(
        qh,
        kh,
        vh,
        scale,
        visibility,
        &mut out,
        OutputOrder::TokenMajor,
    );
    let shape = [1, qh.rows, qh.heads, vh.dim];
    let tokens_first: Tensor<B, 4> = from_flex(FlexTensor::from_data(TensorData::new(out, shape)))?;
    Some(tokens_first.swap_dims(1, 2))
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

/// `x` `[m, k]` times `w` `[k, n]` in f32 for any `m`: [`flex_skinny_matmul`] up to
/// [`SKINNY_ROWS`] rows, else the `gemm` crate called directly (`w` read in place, row-major
/// `[k, n]` or the transposed view of `[n, k]`), which on SmolLM2's shapes runs about 1.5x
/// faster than flex's own call of it; `None` for other backends, dtypes or layouts.
pub fn flex_matmul<B: Backend>(x: &Tensor<B, 2>, w: &Tensor<B, 2>) -> Option<Tensor<B, 2>> {
    let [m, k] = x.dims();
    let [k2, n] = w.dims();
    if k != k2 {
        return None;
    }
    if m <= SKINNY_ROWS {
        return flex_skinny_matmul(x, w);
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
    if strides.iter().any(|s| *s < 0) {
        return None;
    }
    let mut y = vec![0f32; m * n];
    crate::dense::gemm_strided(
        xs,
        m,
        k,
        &w.storage::<f32>()[start..],
        strides[0] as usize,
        strides[1] as usize,
        n,
        &mut y,
    );
    from_flex(FlexTensor::from_data(TensorData::new(y, [m, n])))
}

/// `x` `[m, in]` (f32) times the transpose of `w` (`[out, in]` as GGUF blocks), i.e. the
/// `[m, out]` result of `x @ W^T`, for `1 <= m <= MAX_ROWS`; `None` for other row counts, a
/// mismatched `in`, other dtypes, other backends, or with the kernels turned off.
pub fn flex_quant_matmul<B: Backend>(x: &Tensor<B, 2>, w: &QuantMatrix) -> Option<Tensor<B, 2>> {
    let [m, k] = x.dims();
    if m == 0 || m > MAX_ROWS || k != w.cols() {
        return None;
    }
    let x = to_flex(x.clone())?;
    let x = if x.is_contiguous() {
        x
    } else {
        x.to_contiguous()
    };
    let xs = contiguous_f32(&x)?;
    let mut y = vec![0f32; m * w.rows()];
    w.matmul(xs, m, &mut y).ok()?;
    from_flex(FlexTensor::from_data(TensorData::new(y, [m, w.rows()])))
}

/// A 2-D f32 flex tensor as [`RowsRef`], if its rows have unit stride and do not overlap.
fn rows_of(tensor: &FlexTensor) -> Option<RowsRef<'_>> {
    if tensor.dtype() != DType::F32 {
        return None;
    }
    let layout = tensor.layout();
    let (shape, strides) = (layout.shape(), layout.strides());
    if shape.num_dims() != 2 || (shape[1] > 1 && strides[1] != 1) {
        return None;
    }
    let (rows, cols) = (shape[0], shape[1]);
    let row_stride = if rows > 1 { strides[0] } else { cols as isize };
    if row_stride < cols as isize {
        return None;
    }
    Some(RowsRef {
        data: tensor.storage::<f32>(),
        offset: layout.start_offset(),
        row_stride: row_stride as usize,
        rows,
        cols,
    })
}

/// A new `[rows, cols]` flex tensor filled by `fill`.
fn new_rows<B: Backend>(
    rows: usize,
    cols: usize,
    fill: impl FnOnce(&mut [f32]),
) -> Option<Tensor<B, 2>> {
    let mut out = vec![0f32; rows * cols];
    fill(&mut out);
    from_flex(FlexTensor::from_data(TensorData::new(out, [rows, cols])))
}

/// RMSNorm of each row of `x` `[N, W]` with gain `w` `[W]` in one parallel pass (see
/// [`rows::rms_norm`]); `None` for other backends, dtypes or layouts.
pub fn flex_rms_norm<B: Backend>(
    x: &Tensor<B, 2>,
    w: &Tensor<B, 1>,
    eps: f64,
) -> Option<Tensor<B, 2>> {
    let (x, w) = (to_flex(x.clone())?, to_flex(w.clone())?);
    let (xs, ws) = (rows_of(&x)?, contiguous_f32(&w)?);
    if ws.len() != xs.cols {
        return None;
    }
    new_rows(xs.rows, xs.cols, |out| {
        rows::rms_norm(xs, ws, eps as f32, out)
    })
}

/// Rotary embedding of every head of `x` `[T, H * D]` with `cos2` / `sin_signed` `[T, 1, D]`
/// in one parallel pass, bit for bit the model's generic formula (see [`rows::rope`]); `None`
/// for other backends, dtypes or layouts.
pub fn flex_rope<B: Backend>(
    x: &Tensor<B, 2>,
    cos2: &Tensor<B, 3>,
    sin_signed: &Tensor<B, 3>,
) -> Option<Tensor<B, 2>> {
    let [t, _, d] = cos2.dims();
    let x = to_flex(x.clone())?;
    let (cos2, sin_signed) = (to_flex(cos2.clone())?, to_flex(sin_signed.clone())?);
    let xs = rows_of(&x)?;
    let (cs, ss) = (contiguous_f32(&cos2)?, contiguous_f32(&sin_signed)?);
    let tables_fit = cs.len() == t * d && ss.len() == t * d;
    if xs.rows != t || d == 0 || d % 2 != 0 || xs.cols % d != 0 || !tables_fit {
        return None;
    }
    new_rows(xs.rows, xs.cols, |out| rows::rope(xs, d, cs, ss, out))
}

/// `silu(gate) * up` for `gate`, `up` `[N, F]` (views of a wider product included) in one
/// parallel pass (see [`rows::silu_mul`]); `None` for other backends, dtypes or layouts.
pub fn flex_silu_mul<B: Backend>(gate: &Tensor<B, 2>, up: &Tensor<B, 2>) -> Option<Tensor<B, 2>> {
    let (gate, up) = (to_flex(gate.clone())?, to_flex(up.clone())?);
    let (gs, us) = (rows_of(&gate)?, rows_of(&up)?);
    if (gs.rows, gs.cols) != (us.rows, us.cols) {
        return None;
    }
    new_rows(gs.rows, gs.cols, |out| rows::silu_mul(gs, us, out))
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

    #[test]
    fn quantized_products_run_on_flex_rows_up_to_four() {
        use crate::quant::{QuantFormat, QuantMatrix};
        let device = Default::default();
        // A [70, 64] Q8_0 matrix, d = 2^-7 (f16 0x2000), q = (row * 7 + col) % 200 - 100.
        let (rows, cols) = (70, 64);
        let mut data = Vec::new();
        for r in 0..rows {
            for b in 0..cols / 32 {
                data.extend([0x00, 0x20]);
                data.extend(
                    (0..32)
                        .map(|i| ((r * 7 + b * 32 + i) % 200) as i32 - 100)
                        .map(|q| q as i8 as u8),
                );
            }
        }
        let q = QuantMatrix::new(QuantFormat::Q8_0, rows, cols, data).unwrap();
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| ((((i / cols) * 7 + i % cols) % 200) as f32 - 100.0) / 128.0)
            .collect();
        // As the model stores it: [in, out].
        let w = Tensor::<Flex, 2>::from_data(TensorData::new(w, [rows, cols]), &device).transpose();
        for m in 1..=4 {
            let x =
                Tensor::<Flex, 2>::random([m, cols], burn::tensor::Distribution::Default, &device);
            let want = x.clone().matmul(w.clone());
            let got = flex_quant_matmul(&x, &q).expect("flex, m <= 4");
            assert_eq!(got.dims(), [m, rows]);
            assert!((got - want).abs().max().into_scalar() < 1e-4);
            // A strided view of x is made contiguous first.
            let wide = Tensor::<Flex, 2>::random(
                [m, 2 * cols],
                burn::tensor::Distribution::Default,
                &device,
            );
            let view = wide.slice([0..m, 0..cols]);
            let want = view.clone().matmul(w.clone());
            let got = flex_quant_matmul(&view, &q).expect("strided x");
            assert!((got - want).abs().max().into_scalar() < 1e-4);
        }
        let x5 = Tensor::<Flex, 2>::ones([5, cols], &device);
        assert!(flex_quant_matmul(&x5, &q).is_none());
        let bad = Tensor::<Flex, 2>::ones([1, 32], &device);
        assert!(flex_quant_matmul(&bad, &q).is_none());
        let nd = Tensor::<NdArray, 2>::ones([1, cols], &Default::default());
        assert!(flex_quant_matmul(&nd, &q).is_none());
    }
}

/// `tensor` with `value` written into the block `ranges`, as burn's `slice_assign`, but in
/// place on flex when `tensor` is an f32 buffer nobody else holds.
///
/// Why: burn-flex 0.21's `slice_assign` keeps a second handle on the buffer while it writes, so
/// its copy-on-write always copies: appending one decode step's keys to an 8,000-slot KV cache
/// copied the whole cache, every layer, every token. Any other case (another backend, another
/// dtype, a shared or strided buffer, ranges that do not fit) is burn's `slice_assign`.
pub fn slice_assign<B: Backend, const D: usize>(
    tensor: Tensor<B, D>,
    ranges: [std::ops::Range<usize>; D],
    value: Tensor<B, D>,
) -> Tensor<B, D> {
    let dims = tensor.dims();
    let fits = ranges
        .iter()
        .zip(dims)
        .zip(value.dims())
        .all(|((r, n), v)| r.start <= r.end && r.end <= n && r.end - r.start == v);
    if !is_flex::<B>()
        || !fits
        || D == 0
        || tensor.dtype() != DType::F32
        || value.dtype() != DType::F32
    {
        return tensor.slice_assign(ranges, value);
    }
    let (Some(mut dst), Some(src)) = (to_flex(tensor), to_flex(value)) else {
        unreachable!("is_flex checked the backend");
    };
    let whole = dst.layout().contiguous_offsets() == Some((0, dims.iter().product()))
        && dst.storage::<f32>().len() == dims.iter().product::<usize>();
    let src = if src.is_contiguous() {
        src
    } else {
        src.to_contiguous()
    };
    let written = whole
        && match (contiguous_f32(&src), dst.try_storage_mut::<f32>()) {
            (Some(values), Some(out)) => {
                write_block(out, &dims, &ranges, values);
                true
            }
            _ => false,
        };
    let (Some(dst), Some(src)) = (from_flex::<B, D>(dst), from_flex::<B, D>(src)) else {
        unreachable!("the tensors came from B");
    };
    if written {
        dst
    } else {
        dst.slice_assign(ranges, src)
    }
}

/// Copies `values` (row-major, the block's shape) into the block `ranges` of the row-major
/// buffer `out` of shape `dims`, one run of the last axis at a time.
fn write_block<const D: usize>(
    out: &mut [f32],
    dims: &[usize; D],
    ranges: &[std::ops::Range<usize>; D],
    values: &[f32],
) {
    let run = ranges[D - 1].len();
    if run == 0 || ranges.iter().any(|r| r.is_empty()) {
        return;
    }
    let mut strides = [1usize; D];
    for a in (0..D - 1).rev() {
        strides[a] = strides[a + 1] * dims[a + 1];
    }
    // Index over the outer axes of the block, last outer axis fastest.
    let mut index: [usize; D] = std::array::from_fn(|a| ranges[a].start);
    for chunk in values.chunks_exact(run) {
        let at: usize = (0..D).map(|a| index[a] * strides[a]).sum();
        out[at..at + run].copy_from_slice(chunk);
        for a in (0..D - 1).rev() {
            index[a] += 1;
            if index[a] < ranges[a].end {
                break;
            }
            index[a] = ranges[a].start;
        }
    }
}

#[cfg(test)]
mod slice_assign_tests {
    use super::*;

    type F = Flex;

    fn ramp(dims: [usize; 4], start: f32) -> Tensor<F, 4> {
        let n: usize = dims.iter().product();
        let v: Vec<f32> = (0..n).map(|i| start + i as f32).collect();
        Tensor::from_data(TensorData::new(v, dims), &Default::default())
    }

    fn values(t: &Tensor<F, 4>) -> Vec<f32> {
        t.to_data().to_vec().unwrap()
    }

    #[test]
    fn writes_the_same_block_as_burn_in_place_or_not() {
        let cases = [
            [0..1, 0..3, 5..6, 0..8],
            [0..1, 1..3, 2..7, 0..8],
            [0..1, 0..3, 0..10, 2..5],
            [0..1, 2..3, 9..10, 7..8],
        ];
        for ranges in cases {
            let dims: [usize; 4] = std::array::from_fn(|a| ranges[a].len());
            let value = ramp(dims, 1000.0);
            let want = ramp([1, 3, 10, 8], 0.0).slice_assign(ranges.clone(), value.clone());
            // Unique buffer: written in place.
            let got = slice_assign(ramp([1, 3, 10, 8], 0.0), ranges.clone(), value.clone());
            assert_eq!(values(&got), values(&want), "{ranges:?}");
            // A buffer someone else holds stays as it was.
            let base = ramp([1, 3, 10, 8], 0.0);
            let kept = base.clone();
            let got = slice_assign(base, ranges.clone(), value.clone());
            assert_eq!(values(&got), values(&want), "{ranges:?}");
            assert_eq!(values(&kept), values(&ramp([1, 3, 10, 8], 0.0)));
            // A strided value and a strided target.
            let strided_value = ramp([dims[0], dims[1], dims[3], dims[2]], 1000.0).swap_dims(2, 3);
            let want = ramp([1, 3, 10, 8], 0.0).slice_assign(ranges.clone(), strided_value.clone());
            let got = slice_assign(ramp([1, 3, 10, 8], 0.0), ranges.clone(), strided_value);
            assert_eq!(values(&got), values(&want), "{ranges:?}");
            let target = ramp([1, 3, 8, 10], 0.0).swap_dims(2, 3);
            let want = target.clone().slice_assign(ranges.clone(), value.clone());
            let got = slice_assign(target, ranges.clone(), value);
            assert_eq!(values(&got), values(&want), "{ranges:?}");
        }
    }

    /// The address of a flex tensor's buffer.
    fn buffer_address(t: &Tensor<F, 4>) -> usize {
        to_flex(t.clone()).unwrap().storage::<f32>().as_ptr() as usize
    }

    #[test]
    fn appending_to_an_unshared_buffer_keeps_its_allocation() {
        let mut buf = Tensor::<F, 4>::zeros([1, 3, 64, 8], &Default::default());
        buf = slice_assign(buf, [0..1, 0..3, 0..1, 0..8], ramp([1, 3, 1, 8], 0.0));
        let address = buffer_address(&buf);
        for i in 1..64 {
            buf = slice_assign(
                buf,
                [0..1, 0..3, i..i + 1, 0..8],
                ramp([1, 3, 1, 8], i as f32),
            );
            assert_eq!(
                buffer_address(&buf),
                address,
                "append {i} copied the buffer"
            );
        }
        let row = buf.clone().slice([0..1, 2..3, 63..64, 0..8]);
        assert_eq!(values(&row)[0], 63.0 + 2.0 * 8.0);
        // burn's own slice_assign copies (the reason for this function): if a burn release
        // fixes that, this function can go.
        let before = buffer_address(&buf);
        let burned = buf.slice_assign([0..1, 0..3, 0..1, 0..8], ramp([1, 3, 1, 8], 0.0));
        eprintln!(
            "burn's slice_assign {} the buffer",
            if buffer_address(&burned) == before {
                "kept"
            } else {
                "copied"
            }
        );
    }
}
