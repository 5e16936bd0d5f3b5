//! Custom CubeCL kernels for decode steps on burn's *unfused* GPU backends.
//!
//! On the H200 a SmolLM2 decode step is bound by the host, not the GPU: about 11 us of host
//! time per kernel launch and 56 launches per layer on burn's unfused CUDA backend
//! (`results/perf/cuda-decode-kernel-census-h200.txt`, README "Performance"). RMSNorm alone is
//! seven element-wise and reduction launches and burn's attention fallback about twelve; the
//! kernels here take one and two.
//!
//! Each entry point takes burn tensors of any backend and returns `None` unless the backend is
//! one of burn's unfused CubeCL backends in f32 ([`CubeBackend`] over WGPU, or over CUDA with the
//! `cuda` feature) and the inputs have the layout the kernel reads; callers then keep their
//! generic burn code. The fused backends (`burn::backend::Wgpu`, `Cuda`) are not covered: a
//! custom kernel there must be registered as a fusion operation.

use std::any::{Any, TypeId};

use burn::tensor::{backend::Backend, DType, Tensor, TensorPrimitive};
use burn_cubecl::{tensor::CubeTensor, CubeBackend, CubeRuntime};
use cubecl::prelude::{CubeCount, CubeDim, TensorArg};

/// Units per cube: a power of two (the reductions halve it).
const BLOCK: usize = 256;

/// burn's unfused WGPU backend in f32 (what `burn::backend::Wgpu` wraps in fusion).
pub type WgpuUnfused = CubeBackend<cubecl::wgpu::WgpuRuntime, f32, i32, u32>;
/// burn's unfused CUDA backend in f32 (what `burn::backend::Cuda` wraps in fusion).
#[cfg(feature = "cuda")]
pub type CudaUnfused = CubeBackend<cubecl::cuda::CudaRuntime, f32, i32, u8>;

/// Whether `B` is a backend these kernels run on.
///
/// On CUDA they are on unless `LONGCTX_GPU_KERNELS=0` (for A/B runs). Their first H100 run
/// (2026-12-05) gave non-finite logits: outputs were allocated with `empty_tensor`, which may
/// pitch rows on CUDA, and written as if contiguous; allocated contiguous since, they gave the
/// CPU's greedy continuation token for token on an H100
/// (`results/perf/cuda-kernels-greedy-check-h100-2026-12-06.txt`).
pub fn supported<B: Backend>() -> bool {
    let b = TypeId::of::<B>();
    #[cfg(feature = "cuda")]
    if b == TypeId::of::<CudaUnfused>() {
        return cuda_enabled(std::env::var("LONGCTX_GPU_KERNELS").ok().as_deref());
    }
    b == TypeId::of::<WgpuUnfused>()
}

/// Whether models should lay their weights out as rows for the one-token products
/// ([`norm_matvec`] and the others in `matvec`) on backend `B`: on burn's unfused WGPU
/// backend always, on CUDA only with `LONGCTX_CUDA_ROW_KERNELS=1` (`on`, `true`) beside the
/// kernels being on. Off by default on CUDA until measured there: their first version (no
/// unrolled loads) decoded at 46-55 tokens/s on an H100 against 84-85 without them, and the
/// unrolled one has given the CPU's greedy continuation on an H100 but no speed figure yet
/// (`docs/plans/issue-3-cuda-decode-and-ci-time.md`).
pub fn rows_wanted<B: Backend>() -> bool {
    #[cfg(feature = "cuda")]
    if TypeId::of::<B>() == TypeId::of::<CudaUnfused>() {
        return supported::<B>()
            && rows_enabled(std::env::var("LONGCTX_CUDA_ROW_KERNELS").ok().as_deref());
    }
    supported::<B>()
}

/// Whether the value of `LONGCTX_CUDA_ROW_KERNELS` turns the one-token products on for CUDA
/// (`1`, `on` or `true`).
#[cfg(any(feature = "cuda", test))]
fn rows_enabled(value: Option<&str>) -> bool {
    matches!(
        value.map(|v| v.trim().to_ascii_lowercase()).as_deref(),
        Some("1" | "on" | "true")
    )
}

/// Whether the value of `LONGCTX_GPU_KERNELS` leaves the kernels on for CUDA (anything but
/// `0`, `off` or `false`).
#[cfg(any(feature = "cuda", test))]
fn cuda_enabled(value: Option<&str>) -> bool {
    !matches!(
        value.map(|v| v.trim().to_ascii_lowercase()).as_deref(),
        Some("0" | "off" | "false")
    )
}

/// The CubeCL tensor under a burn float tensor of backend `C` (`B` must be `C`).
pub(crate) fn cube_of<B: Backend, C: Backend, R: CubeRuntime, const D: usize>(
    tensor: Tensor<B, D>,
) -> Option<CubeTensor<R>> {
    if TypeId::of::<B>() != TypeId::of::<C>() {
        return None;
    }
    let primitive: Box<dyn Any> = Box::new(tensor.into_primitive().tensor());
    primitive.downcast::<CubeTensor<R>>().ok().map(|t| *t)
}

/// A burn tensor of backend `B` around a CubeCL tensor.
pub(crate) fn tensor_of<B: Backend, R: CubeRuntime, const D: usize>(
    t: CubeTensor<R>,
) -> Option<Tensor<B, D>> {
    let primitive: Box<dyn Any> = Box::new(t);
    let primitive = primitive.downcast::<B::FloatTensorPrimitive>().ok()?;
    Some(Tensor::from_primitive(TensorPrimitive::Float(*primitive)))
}

/// Runs `f` on the CubeCL tensors of `inputs` when `B` is a supported backend; `f` returns
/// CubeCL tensors, given back as burn tensors of `D` dimensions. `None` on other backends, or
/// when `f` declines.
macro_rules! on_cube_many {
    ($B:ty, $D:tt, [$($input:expr),+], $f:expr) => {
        (|| -> Option<Vec<::burn::tensor::Tensor<$B, $D>>> {
            #[cfg(feature = "cuda")]
            if ::std::any::TypeId::of::<$B>() == ::std::any::TypeId::of::<$crate::CudaUnfused>() {
                let outs: Vec<::burn_cubecl::tensor::CubeTensor<::cubecl::cuda::CudaRuntime>> =
                    $f($($crate::cube_of::<$B, $crate::CudaUnfused, ::cubecl::cuda::CudaRuntime, _>($input)?),+)?;
                return outs.into_iter().map($crate::tensor_of::<$B, _, $D>).collect();
            }
            if ::std::any::TypeId::of::<$B>() == ::std::any::TypeId::of::<$crate::WgpuUnfused>() {
                let outs: Vec<::burn_cubecl::tensor::CubeTensor<::cubecl::wgpu::WgpuRuntime>> =
                    $f($($crate::cube_of::<$B, $crate::WgpuUnfused, ::cubecl::wgpu::WgpuRuntime, _>($input)?),+)?;
                return outs.into_iter().map($crate::tensor_of::<$B, _, $D>).collect();
            }
            None
        })()
    };
}

/// [`on_cube_many`] for an `f` that returns one CubeCL tensor (`Option<CubeTensor>`); the
/// inputs are named by identifiers, which `f` takes in order.
macro_rules! on_cube {
    ($B:ty, $D:tt, [$($input:ident),+], $f:expr) => {
        on_cube_many!($B, $D, [$($input),+], |$($input),+| $f($($input),+).map(|t| vec![t]))
            .and_then(|mut outs| outs.pop())
    };
}

// After the macros: `macro_rules!` are visible only below their definition.
mod matvec;
pub use matvec::{contiguous, matvec_residual, norm_matvec, norm_matvec_silu_gate_up, rope_split};

/// Whether `t` is f32 with unit stride on its last axis and rows `row_stride` apart.
fn rows_of<R: CubeRuntime>(t: &CubeTensor<R>) -> Option<(usize, usize)> {
    let shape = t.meta.shape();
    let strides = t.meta.strides();
    let n = shape.len();
    if t.dtype != DType::F32 || n == 0 || strides[n - 1] != 1 {
        return None;
    }
    Some((shape[n - 1], if n >= 2 { strides[n - 2] } else { shape[0] }))
}

/// The kernels (CubeCL's `Tensor`, not burn's).
mod kernels {
    use cubecl::prelude::*;

    /// The sum of every unit's `value` over the cube, through `shared` (one slot per unit);
    /// every unit gets it. The caller syncs before writing `shared` again.
    #[cube]
    fn block_sum<F: Float>(shared: &mut SharedMemory<F>, value: F, unit: usize) -> F {
        shared[unit] = value;
        sync_cube();
        let mut stride = CUBE_DIM_X as usize / 2; // runtime: halved below
        while stride > 0 {
            if unit < stride {
                let other = shared[unit + stride];
                shared[unit] += other;
            }
            sync_cube();
            stride /= 2;
        }
        shared[0]
    }

    #[cube(launch)]
    pub fn rms_norm_kernel<F: Float>(
        x: &Tensor<F>,
        w: &Tensor<F>,
        out: &mut Tensor<F>,
        width: usize,
        x_row_stride: usize,
        eps: f32,
        #[comptime] block: usize,
    ) {
        let row = CUBE_POS_X as usize;
        let unit = UNIT_POS_X as usize;
        let base = row * x_row_stride;
        let mut acc = F::new(0.0);
        let mut i = unit;
        while i < width {
            let v = x[base + i];
            acc += v * v;
            i += block;
        }
        let mut partial = SharedMemory::<F>::new(block);
        let mean = block_sum::<F>(&mut partial, acc, unit) / F::cast_from(width);
        let inv = F::new(1.0) / F::sqrt(mean + F::cast_from(eps));
        let out_base = row * width;
        let mut j = unit;
        while j < width {
            out[out_base + j] = x[base + j] * inv * w[j];
            j += block;
        }
    }

    /// One split of a decode step's attention (flash-decoding): cube `(head, split)` scores
    /// keys `split * block ..` (at most `block`, one per unit) against query head `head`, and
    /// writes `[acc (D), max, sum]` to `partial[head, split]`: the unnormalised output over
    /// its keys, their largest score and the sum of `exp(score - max)`.
    #[cube(launch)]
    #[allow(clippy::too_many_arguments)]
    pub fn decode_attention_split_kernel<F: Float>(
        q: &Tensor<F>,
        k: &Tensor<F>,
        v: &Tensor<F>,
        partial: &mut Tensor<F>,
        len: usize,
        head_dim: usize,
        groups: usize,
        n_splits: usize,
        scale: f32,
        #[comptime] block: usize,
    ) {
        let head = CUBE_POS_X as usize;
        let split = CUBE_POS_Y as usize;
        let kv_head = head / groups;
        let unit = UNIT_POS_X as usize;
        let first = split * block;
        let mut count = len - first;
        if count > block {
            count = block;
        }
        let k_head = kv_head * k.stride(1);
        let v_head = kv_head * v.stride(1);
        let v_row = v.stride(2);

        // This unit's key score (units past the split's end hold the lowest value).
        let mut score = F::min_value();
        if unit < count {
            let q_base = head * q.stride(1);
            let k_base = k_head + (first + unit) * k.stride(2);
            let mut dot = F::new(0.0);
            for c in 0..head_dim {
                dot += q[q_base + c] * k[k_base + c];
            }
            score = dot * F::cast_from(scale);
        }
        let mut shared = SharedMemory::<F>::new(block);
        shared[unit] = score;
        sync_cube();
        let mut stride = CUBE_DIM_X as usize / 2; // runtime: halved below
        while stride > 0 {
            if unit < stride {
                let other = shared[unit + stride];
                shared[unit] = F::max(shared[unit], other);
            }
            sync_cube();
            stride /= 2;
        }
        let max = shared[0];
        sync_cube();

        let mut p = F::new(0.0);
        if unit < count {
            p = F::exp(score - max);
        }
        let mut probs = SharedMemory::<F>::new(block);
        probs[unit] = p;
        // `block_sum` syncs after its first write, which also publishes `probs`.
        let sum = block_sum::<F>(&mut shared, p, unit);
        sync_cube();

        // Units split into `block / head_dim` lanes over the keys, one value column each.
        let lanes = block / head_dim;
        let lane = unit / head_dim;
        let c = unit % head_dim;
        let mut acc = F::new(0.0);
        if lane < lanes {
            let mut j = lane;
            while j < count {
                acc += probs[j] * v[v_head + (first + j) * v_row + c];
                j += lanes;
            }
        }
        shared[unit] = acc;
        sync_cube();
        if unit < head_dim {
            let mut total = F::new(0.0);
            for l in 0..lanes {
                total += shared[l * head_dim + unit];
            }
            let base = (head * n_splits + split) * (head_dim + 2);
            partial[base + unit] = total;
            if unit == 0 {
                partial[base + head_dim] = max;
                partial[base + head_dim + 1] = sum;
            }
        }
    }

    /// Merges the splits of [`decode_attention_split_kernel`] with the log-sum-exp rule:
    /// cube `head`, one unit per output column.
    #[cube(launch)]
    pub fn decode_attention_combine_kernel<F: Float>(
        partial: &Tensor<F>,
        out: &mut Tensor<F>,
        n_splits: usize,
        head_dim: usize,
    ) {
        let head = CUBE_POS_X as usize;
        let c = UNIT_POS_X as usize;
        if c < head_dim {
            let stride = head_dim + 2;
            let base = head * n_splits * stride;
            let mut max = F::min_value();
            for s in 0..n_splits {
                max = F::max(max, partial[base + s * stride + head_dim]);
            }
            let mut total = F::new(0.0);
            let mut acc = F::new(0.0);
            for s in 0..n_splits {
                let w = F::exp(partial[base + s * stride + head_dim] - max);
                total += partial[base + s * stride + head_dim + 1] * w;
                acc += partial[base + s * stride + c] * w;
            }
            out[head * head_dim + c] = acc / total;
        }
    }
}

/// The launch argument for `t`, read through its own strides (views included).
pub(crate) fn tensor_arg<R: CubeRuntime>(t: &CubeTensor<R>) -> TensorArg<R> {
    // SAFETY: the handle, strides and shape are the tensor's own, so every index the kernels
    // compute from them stays inside its buffer.
    unsafe {
        TensorArg::from_raw_parts(
            t.handle.clone(),
            t.meta.strides().clone(),
            t.meta.shape().clone(),
        )
    }
}

/// A new contiguous f32 tensor of `shape` on `like`'s device. Contiguous on purpose: the
/// kernels write outputs by row-major index, and cubecl may pad ("pitch") the rows of a plain
/// new tensor on CUDA, which WGPU never does.
pub(crate) fn empty_f32<R: CubeRuntime>(like: &CubeTensor<R>, shape: Vec<usize>) -> CubeTensor<R> {
    burn_cubecl::ops::numeric::empty_device_contiguous_dtype(
        like.client.clone(),
        like.device.clone(),
        shape.into(),
        DType::F32,
    )
}

fn rms_norm_cube<R: CubeRuntime>(
    x: CubeTensor<R>,
    w: CubeTensor<R>,
    eps: f64,
) -> Option<CubeTensor<R>> {
    let (width, row_stride) = rows_of(&x)?;
    let rows = x.meta.shape()[0];
    if x.meta.num_dims() != 2 || w.dtype != DType::F32 || !w.is_contiguous() {
        return None;
    }
    if w.meta.shape()[0] != width || rows == 0 || rows > u16::MAX as usize {
        return None;
    }
    let client = x.client.clone();
    let out = empty_f32(&x, x.meta.shape().to_vec());
    kernels::rms_norm_kernel::launch::<f32, R>(
        &client,
        CubeCount::Static(rows as u32, 1, 1),
        CubeDim::new_1d(BLOCK as u32),
        tensor_arg(&x),
        tensor_arg(&w),
        tensor_arg(&out),
        width,
        row_stride,
        eps as f32,
        BLOCK,
    );
    Some(out)
}

/// RMSNorm of each row of `x` `[N, W]` with gain `w` `[W]`: `x / sqrt(mean(x^2) + eps) * w`,
/// in one launch (one cube per row). `None` when the backend or layout is not supported.
pub fn rms_norm<B: Backend>(x: &Tensor<B, 2>, w: &Tensor<B, 1>, eps: f64) -> Option<Tensor<B, 2>> {
    if !supported::<B>() {
        return None;
    }
    let (x, w) = (x.clone(), w.clone());
    on_cube!(B, 2, [x, w], |x, w| rms_norm_cube(x, w, eps))
}

fn decode_attention_cube<R: CubeRuntime>(
    q: CubeTensor<R>,
    k: CubeTensor<R>,
    v: CubeTensor<R>,
    scale: f64,
) -> Option<CubeTensor<R>> {
    let [qs, ks, vs] = [&q, &k, &v].map(|t| t.meta.shape().clone());
    if q.meta.num_dims() != 4 || k.meta.num_dims() != 4 || v.meta.num_dims() != 4 {
        return None;
    }
    let (n_q, d) = (qs[1], qs[3]);
    let (n_kv, len) = (ks[1], ks[2]);
    let fits = qs[0] == 1
        && qs[2] == 1
        && ks[0] == 1
        && ks.as_slice() == vs.as_slice()
        && ks[3] == d
        && n_kv > 0
        && n_q % n_kv == 0
        && len > 0
        && d > 0
        && d <= BLOCK
        && BLOCK.is_multiple_of(d)
        && n_q <= u16::MAX as usize
        && len.div_ceil(BLOCK) <= u16::MAX as usize;
    let unit_last = |t: &CubeTensor<R>| t.dtype == DType::F32 && t.meta.strides()[3] == 1;
    if !fits || !unit_last(&q) || !unit_last(&k) || !unit_last(&v) {
        return None;
    }
    let client = q.client.clone();
    let n_splits = len.div_ceil(BLOCK);
    let partial = empty_f32(&q, vec![n_q, n_splits, d + 2]);
    let out = empty_f32(&q, vec![1, n_q, 1, d]);
    kernels::decode_attention_split_kernel::launch::<f32, R>(
        &client,
        CubeCount::Static(n_q as u32, n_splits as u32, 1),
        CubeDim::new_1d(BLOCK as u32),
        tensor_arg(&q),
        tensor_arg(&k),
        tensor_arg(&v),
        tensor_arg(&partial),
        len,
        d,
        n_q / n_kv,
        n_splits,
        scale as f32,
        BLOCK,
    );
    kernels::decode_attention_combine_kernel::launch::<f32, R>(
        &client,
        CubeCount::Static(n_q as u32, 1, 1),
        CubeDim::new_1d(d as u32),
        tensor_arg(&partial),
        tensor_arg(&out),
        n_splits,
        d,
    );
    Some(out)
}

/// Attention of one decode query `q` `[1, H_q, 1, D]` over every key of `k`, `v`
/// `[1, H_kv, S, D]` (grouped heads: query head `h` reads KV head `h / (H_q / H_kv)`), scores
/// multiplied by `scale`; returns `[1, H_q, 1, D]`. Two launches (flash-decoding): one cube
/// per query head and 256 keys, so a long cache keeps every SM busy (one cube per head left
/// 123 of an H100's 132 SMs idle and cost 0.5 ms a layer at 8,000 keys), then one per head to
/// merge the splits. The keys and values are read in place (any row stride, e.g. a slice of a larger cache buffer).
/// `None` when the backend or layout is not supported (then use burn's `attention`).
pub fn decode_attention<B: Backend>(
    q: &Tensor<B, 4>,
    k: &Tensor<B, 4>,
    v: &Tensor<B, 4>,
    scale: f64,
) -> Option<Tensor<B, 4>> {
    if !supported::<B>() {
        return None;
    }
    let (q, k, v) = (q.clone(), k.clone(), v.clone());
    on_cube!(B, 4, [q, k, v], |q, k, v| decode_attention_cube(
        q, k, v, scale
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{activation::softmax, Distribution};

    type B = WgpuUnfused;

    pub(crate) fn random<const D: usize>(shape: [usize; D]) -> Tensor<B, D> {
        Tensor::random(shape, Distribution::Normal(0.0, 1.0), &Default::default())
    }

    pub(crate) fn max_diff<const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> f32 {
        (a - b).abs().max().into_scalar()
    }

    #[test]
    fn cuda_takes_the_row_kernels_only_when_asked() {
        assert!(!rows_enabled(None));
        assert!(!rows_enabled(Some("0")));
        for on in ["1", "on", " TRUE "] {
            assert!(rows_enabled(Some(on)), "{on}");
        }
        assert!(rows_wanted::<B>()); // unfused WGPU: always
        assert!(!rows_wanted::<burn::backend::Flex>());
    }

    #[test]
    fn cuda_runs_them_unless_turned_off() {
        assert!(cuda_enabled(None));
        assert!(cuda_enabled(Some("1")));
        for off in ["0", "off", " FALSE "] {
            assert!(!cuda_enabled(Some(off)), "{off}");
        }
    }

    #[test]
    fn other_backends_are_declined() {
        let x = Tensor::<burn::backend::Flex, 2>::ones([2, 4], &Default::default());
        let w = Tensor::<burn::backend::Flex, 1>::ones([4], &Default::default());
        assert!(rms_norm(&x, &w, 1e-5).is_none());
        assert!(!supported::<burn::backend::Wgpu>()); // fused: not covered
    }

    #[test]
    fn rms_norm_matches_the_formula() {
        for [rows, width] in [[1, 576], [3, 64], [5, 1000]] {
            let x = random([rows, width]);
            let w = random([width]);
            let got = rms_norm(&x, &w, 1e-5).expect("unfused wgpu is supported");
            let variance = x.clone().powi_scalar(2).mean_dim(1);
            let want = x / (variance + 1e-5).sqrt() * w.unsqueeze::<2>();
            let diff = max_diff(got, want);
            assert!(diff < 1e-4, "[{rows}, {width}]: differs by {diff}");
        }
    }

    #[test]
    fn rms_norm_reads_a_column_slice_in_place() {
        let x = random([2, 96]);
        let w = random([32]);
        let part = x.slice([0..2, 32..64]);
        let got = rms_norm(&part, &w, 1e-6).expect("row-strided input is supported");
        let variance = part.clone().powi_scalar(2).mean_dim(1);
        let want = part / (variance + 1e-6).sqrt() * w.unsqueeze::<2>();
        assert!(max_diff(got, want) < 1e-4);
    }

    #[test]
    fn decode_attention_matches_softmax_attention_with_grouped_heads() {
        // Lengths below, at and across the 256-key splits, so merging the splits is exercised.
        for (n_q, n_kv, len, d) in [
            (9, 3, 1, 64),
            (9, 3, 700, 64),
            (3, 1, 512, 64),
            (2, 2, 257, 16),
            (4, 2, 37, 32),
            (2, 1, 5, 8),
        ] {
            let q = random([1, n_q, 1, d]);
            // A cache buffer with spare capacity, viewed up to `len` as the model does.
            let k_buf = random([1, n_kv, len + 13, d]);
            let v_buf = random([1, n_kv, len + 13, d]);
            let k = k_buf.slice([0..1, 0..n_kv, 0..len, 0..d]);
            let v = v_buf.slice([0..1, 0..n_kv, 0..len, 0..d]);
            let scale = 1.0 / (d as f64).sqrt();
            let got = decode_attention(&q, &k, &v, scale).expect("supported layout");
            let groups = n_q / n_kv;
            let repeat = |x: Tensor<B, 4>| {
                x.unsqueeze_dim::<5>(2)
                    .expand([1, n_kv, groups, len, d])
                    .reshape([1, n_q, len, d])
            };
            let weights = softmax(q.matmul(repeat(k).swap_dims(2, 3)) * scale, 3);
            let want = weights.matmul(repeat(v));
            let diff = max_diff(got, want);
            assert!(
                diff < 1e-4,
                "({n_q}, {n_kv}, {len}, {d}): differs by {diff}"
            );
        }
    }
}
