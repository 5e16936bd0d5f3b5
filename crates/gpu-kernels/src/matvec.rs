//! One-token (decode) products and RoPE for burn's unfused GPU backends, each one launch with
//! its neighbours fused in: RMSNorm before a product, the residual add or `silu(gate) * up`
//! after it, RoPE and the head split of the merged q/k/v product.
//!
//! A decode step on the H100 is bound by launches (about 25 a layer through burn's ops, each
//! ~15 us of host time: 85 tokens/s at any context, README "Performance"); these take a
//! layer's non-attention work to five launches. Models use them where
//! [`crate::rows_wanted`] (on CUDA only with `LONGCTX_CUDA_ROW_KERNELS=1` until measured).
//!
//! Weights are read as rows `[N, K]` (`W^T` of the `[K, N]` matrices `x @ W` uses, unit
//! stride along `K`): one plane (warp) per output row, whose 32 units read 32 consecutive
//! floats of the row per step, so every load is coalesced and a cube of 8 planes covers 8
//! outputs. The model keeps its `[K, N]` weights as transposed views of these rows, so no
//! weight is stored twice.

use burn::tensor::{backend::Backend, DType, Tensor};
use burn_cubecl::{tensor::CubeTensor, CubeRuntime};
use cubecl::prelude::{CubeCount, CubeDim};

use crate::{empty_f32, supported, tensor_arg};

/// Units a plane (warp) has on the GPUs targeted; a row's dot product is split over them.
const LANES: usize = 32;
/// Output rows per cube (one plane each).
const ROWS_PER_CUBE: usize = 8;

/// What a product does with its dot products.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Epilogue {
    /// `out[n] = dot(x, w[n])`.
    Plain = 0,
    /// `out[n] = residual[n] + dot(x, w[n])`.
    Residual = 1,
    /// `out[n] = silu(dot(x, w[n])) * dot(x, w[n + F])` for `n < F` (gate rows, then up rows).
    SiluGateUp = 2,
}

mod kernels {
    use cubecl::prelude::*;

    /// Steps of a product's inner loop unrolled into one (see `matvec_kernel`).
    const UNROLL: usize = 8;

    /// The sum of `value` over every unit of the cube (`unit` its linear index), through
    /// `shared` (one slot per unit); every unit gets it.
    #[cube]
    fn cube_sum<F: Float>(shared: &mut SharedMemory<F>, value: F, unit: usize) -> F {
        shared[unit] = value;
        sync_cube();
        let mut stride = (CUBE_DIM_X * CUBE_DIM_Y) as usize / 2; // runtime: halved below
        while stride > 0 {
            if unit < stride {
                let other = shared[unit + stride];
                shared[unit] += other;
            }
            sync_cube();
            stride /= 2;
        }
        let total = shared[0];
        sync_cube();
        total
    }

    /// The sum of `value` over the `CUBE_DIM_X` lanes of row `row` of the cube, through
    /// `shared` (one slot per unit); every lane of the row gets it.
    #[cube]
    fn lane_sum<F: Float>(shared: &mut SharedMemory<F>, value: F, lane: usize, row: usize) -> F {
        let base = row * CUBE_DIM_X as usize;
        shared[base + lane] = value;
        sync_cube();
        let mut stride = CUBE_DIM_X as usize / 2; // runtime: halved below
        while stride > 0 {
            if lane < stride {
                let other = shared[base + lane + stride];
                shared[base + lane] += other;
            }
            sync_cube();
            stride /= 2;
        }
        shared[base]
    }

    /// Cube `(c)`, plane `r` (`UNIT_POS_Y`) computes output `n = c * CUBE_DIM_Y + r` of a
    /// one-row product over weight rows `w` `[N, K]` (row stride `w_row`, unit stride along
    /// `K`), with `x` RMS-normalised by `gain` first when `normed`, and the `mode`'s epilogue
    /// (`Epilogue` as a number).
    #[cube(launch)]
    // The `mode` tests are resolved when the kernel is expanded (comptime); they stay apart
    // from the runtime ones.
    #[allow(clippy::too_many_arguments, clippy::collapsible_if)]
    pub fn matvec_kernel<F: Float>(
        x: &Tensor<F>,
        gain: &Tensor<F>,
        w: &Tensor<F>,
        residual: &Tensor<F>,
        out: &mut Tensor<F>,
        k_len: usize,
        n_out: usize,
        w_row: usize,
        up_offset: usize,
        eps: f32,
        #[comptime] normed: bool,
        #[comptime] mode: u32,
        #[comptime] units: usize,
    ) {
        let lane = UNIT_POS_X as usize;
        let row = UNIT_POS_Y as usize;
        let unit = row * CUBE_DIM_X as usize + lane;
        let n = CUBE_POS_X as usize * CUBE_DIM_Y as usize + row;

        let mut inv = F::new(1.0);
        if normed {
            // Every cube normalises `x` itself: K values, cheaper than a launch.
            let mut squares = F::new(0.0);
            let mut i = unit;
            while i < k_len {
                let v = x[i];
                squares += v * v;
                i += units;
            }
            let mut partial = SharedMemory::<F>::new(units);
            let mean = cube_sum::<F>(&mut partial, squares, unit) / F::cast_from(k_len);
            inv = F::new(1.0) / F::sqrt(mean + F::cast_from(eps));
        }

        let mut acc = F::new(0.0);
        let mut acc_up = F::new(0.0);
        if n < n_out {
            let base = n * w_row;
            let up_base = (n + up_offset) * w_row;
            let stride = CUBE_DIM_X as usize;
            let mut k = lane;
            // Eight loads in flight per unit: one at a time, each waits for memory (~1 us),
            // which left these products latency-bound.
            while k + (UNROLL - 1) * stride < k_len {
                #[unroll]
                for u in 0..UNROLL {
                    let at = k + u * stride;
                    let mut xv = x[at];
                    if normed {
                        // The order of the RMSNorm kernel: `x * inv * gain`.
                        xv = xv * inv * gain[at];
                    }
                    acc += xv * w[base + at];
                    if mode == 2 {
                        acc_up += xv * w[up_base + at];
                    }
                }
                k += UNROLL * stride;
            }
            while k < k_len {
                let mut xv = x[k];
                if normed {
                    xv = xv * inv * gain[k];
                }
                acc += xv * w[base + k];
                if mode == 2 {
                    acc_up += xv * w[up_base + k];
                }
                k += stride;
            }
        }
        let mut sums = SharedMemory::<F>::new(units);
        let dot = lane_sum::<F>(&mut sums, acc, lane, row);
        if mode == 2 {
            sync_cube();
            let up = lane_sum::<F>(&mut sums, acc_up, lane, row);
            if lane == 0 && n < n_out {
                // silu(g) = g * sigmoid(g), as burn's `silu`.
                let sigmoid = F::new(1.0) / (F::new(1.0) + F::exp(F::new(0.0) - dot));
                out[n] = dot * sigmoid * up;
            }
        }
        if mode != 2 {
            if lane == 0 && n < n_out {
                if mode == 1 {
                    out[n] = residual[n] + dot;
                } else {
                    out[n] = dot;
                }
            }
        }
    }

    /// RoPE and head split of one token's merged q/k/v product `qkv` `[(H_q + 2 H_kv) D]`:
    /// cube `h` (one unit per channel) rotates head `h` into `q` `[H_q D]` or `k` `[H_kv D]`
    /// by `cos2` / `sin_signed` `[D]` (`[cos, cos]`, `[-sin, sin]`), or copies it into `v`.
    #[cube(launch)]
    #[allow(clippy::too_many_arguments)]
    pub fn rope_split_kernel<F: Float>(
        qkv: &Tensor<F>,
        cos2: &Tensor<F>,
        sin_signed: &Tensor<F>,
        q: &mut Tensor<F>,
        k: &mut Tensor<F>,
        v: &mut Tensor<F>,
        n_q: usize,
        n_kv: usize,
        head_dim: usize,
    ) {
        let head = CUBE_POS_X as usize;
        let c = UNIT_POS_X as usize;
        if c < head_dim {
            let half = head_dim / 2;
            let mut partner = c + half;
            if c >= half {
                partner = c - half;
            }
            let base = head * head_dim;
            if head < n_q + n_kv {
                // `x * [cos, cos] + swap_halves(x) * [-sin, sin]`, as `Rope::apply`.
                let rotated = qkv[base + c] * cos2[c] + qkv[base + partner] * sin_signed[c];
                if head < n_q {
                    q[base + c] = rotated;
                } else {
                    k[base - n_q * head_dim + c] = rotated;
                }
            } else {
                v[base - (n_q + n_kv) * head_dim + c] = qkv[base + c];
            }
        }
    }
}

/// Whether `t` is f32 and laid out as rows with unit stride along its last axis; returns
/// `(rows, row length, row stride)` of its last two axes.
fn matrix_rows<R: CubeRuntime>(t: &CubeTensor<R>) -> Option<(usize, usize, usize)> {
    let shape = t.meta.shape();
    let strides = t.meta.strides();
    if t.dtype != DType::F32 || shape.len() != 2 || strides[1] != 1 {
        return None;
    }
    Some((shape[0], shape[1], strides[0]))
}

/// Whether `t` is an f32 contiguous vector of `len` values (any shape whose elements are
/// `len` in row-major order).
fn flat<R: CubeRuntime>(t: &CubeTensor<R>, len: usize) -> bool {
    t.dtype == DType::F32 && t.is_contiguous() && t.meta.num_elements() == len
}

#[allow(clippy::too_many_arguments)]
fn matvec_cube<R: CubeRuntime>(
    x: CubeTensor<R>,
    gain: Option<(CubeTensor<R>, f64)>,
    w: CubeTensor<R>,
    residual: Option<CubeTensor<R>>,
    epilogue: Epilogue,
) -> Option<CubeTensor<R>> {
    let (rows, k_len, w_row) = matrix_rows(&w)?;
    if k_len == 0 || !flat(&x, k_len) {
        return None;
    }
    let n_out = match epilogue {
        Epilogue::SiluGateUp if rows.is_multiple_of(2) => rows / 2,
        Epilogue::SiluGateUp => return None,
        _ => rows,
    };
    if let Some((g, _)) = &gain {
        if !flat(g, k_len) {
            return None;
        }
    }
    if let Some(r) = &residual {
        if !flat(r, n_out) {
            return None;
        }
    }
    let cubes = n_out.div_ceil(ROWS_PER_CUBE);
    if n_out == 0 || cubes > u16::MAX as usize {
        return None;
    }
    let client = x.client.clone();
    let out = empty_f32(&x, vec![1, n_out]);
    let eps = gain.as_ref().map_or(0.0, |(_, eps)| *eps);
    let normed = gain.is_some();
    // Unused inputs are bound to `x` (the kernel never reads them).
    let gain_arg = tensor_arg(gain.as_ref().map_or(&x, |(g, _)| g));
    let residual_arg = tensor_arg(residual.as_ref().unwrap_or(&x));
    kernels::matvec_kernel::launch::<f32, R>(
        &client,
        CubeCount::Static(cubes as u32, 1, 1),
        CubeDim::new_2d(LANES as u32, ROWS_PER_CUBE as u32),
        tensor_arg(&x),
        gain_arg,
        tensor_arg(&w),
        residual_arg,
        tensor_arg(&out),
        k_len,
        n_out,
        w_row,
        n_out,
        eps as f32,
        normed,
        epilogue as u32,
        LANES * ROWS_PER_CUBE,
    );
    Some(out)
}

/// `rms_norm(x) @ W` for one token: `x` `[1, K]`, RMSNorm gain `gain` `[K]` and `eps`,
/// weight rows `w_rows` `[N, K]` (`W^T`, unit stride along `K`); returns `[1, N]`. One launch.
/// `None` when the backend or a layout is not supported.
pub fn norm_matvec<B: Backend>(
    x: &Tensor<B, 2>,
    gain: &Tensor<B, 1>,
    eps: f64,
    w_rows: &Tensor<B, 2>,
) -> Option<Tensor<B, 2>> {
    if !supported::<B>() {
        return None;
    }
    let (x, g, w) = (x.clone(), gain.clone(), w_rows.clone());
    on_cube!(B, 2, [x, g, w], |x, g, w| matvec_cube(
        x,
        Some((g, eps)),
        w,
        None,
        Epilogue::Plain
    ))
}

/// `residual + x @ W` for one token: `x` `[1, K]`, weight rows `w_rows` `[N, K]`, `residual`
/// `[1, N]`; returns `[1, N]`. One launch. `None` when not supported.
pub fn matvec_residual<B: Backend>(
    x: &Tensor<B, 2>,
    w_rows: &Tensor<B, 2>,
    residual: &Tensor<B, 2>,
) -> Option<Tensor<B, 2>> {
    if !supported::<B>() {
        return None;
    }
    let (x, w, r) = (x.clone(), w_rows.clone(), residual.clone());
    on_cube!(B, 2, [x, w, r], |x, w, r| matvec_cube(
        x,
        None,
        w,
        Some(r),
        Epilogue::Residual
    ))
}

/// `silu(h @ W_gate) * (h @ W_up)` with `h = rms_norm(x)` for one token: `x` `[1, K]`, gain
/// `[K]`, `gate_up_rows` `[2 F, K]` (the `F` gate rows, then the `F` up rows); returns
/// `[1, F]`. One launch. `None` when not supported.
pub fn norm_matvec_silu_gate_up<B: Backend>(
    x: &Tensor<B, 2>,
    gain: &Tensor<B, 1>,
    eps: f64,
    gate_up_rows: &Tensor<B, 2>,
) -> Option<Tensor<B, 2>> {
    if !supported::<B>() {
        return None;
    }
    let (x, g, w) = (x.clone(), gain.clone(), gate_up_rows.clone());
    on_cube!(B, 2, [x, g, w], |x, g, w| matvec_cube(
        x,
        Some((g, eps)),
        w,
        None,
        Epilogue::SiluGateUp
    ))
}

fn rope_split_cube<R: CubeRuntime>(
    qkv: CubeTensor<R>,
    cos2: CubeTensor<R>,
    sin_signed: CubeTensor<R>,
    n_q: usize,
    n_kv: usize,
) -> Option<Vec<CubeTensor<R>>> {
    let d = cos2.meta.num_elements();
    let heads = n_q + 2 * n_kv;
    let fits = d > 0
        && d.is_multiple_of(2)
        && d <= 1024
        && n_kv > 0
        && heads <= u16::MAX as usize
        && flat(&qkv, heads * d)
        && flat(&cos2, d)
        && flat(&sin_signed, d);
    if !fits {
        return None;
    }
    let client = qkv.client.clone();
    let q = empty_f32(&qkv, vec![1, n_q, 1, d]);
    let k = empty_f32(&qkv, vec![1, n_kv, 1, d]);
    let v = empty_f32(&qkv, vec![1, n_kv, 1, d]);
    kernels::rope_split_kernel::launch::<f32, R>(
        &client,
        CubeCount::Static(heads as u32, 1, 1),
        CubeDim::new_1d(d.next_multiple_of(LANES) as u32),
        tensor_arg(&qkv),
        tensor_arg(&cos2),
        tensor_arg(&sin_signed),
        tensor_arg(&q),
        tensor_arg(&k),
        tensor_arg(&v),
        n_q,
        n_kv,
        d,
    );
    Some(vec![q, k, v])
}

/// RoPE and the head split of one token's merged projection `qkv` `[1, (H_q + 2 H_kv) D]`
/// (q, then k, then v): q and k rotated by `cos2` / `sin_signed` `[1, 1, D]` (from
/// `Rope::tables`, `[cos, cos]` and `[-sin, sin]`), v copied; returns `[q, k, v]` as
/// `[1, H_q, 1, D]`, `[1, H_kv, 1, D]`, `[1, H_kv, 1, D]`. One launch. `None` when not
/// supported.
pub fn rope_split<B: Backend>(
    qkv: &Tensor<B, 2>,
    cos2: &Tensor<B, 3>,
    sin_signed: &Tensor<B, 3>,
    n_q: usize,
    n_kv: usize,
) -> Option<[Tensor<B, 4>; 3]> {
    if !supported::<B>() {
        return None;
    }
    let (qkv, c, s) = (qkv.clone(), cos2.clone(), sin_signed.clone());
    let outs = on_cube_many!(B, 4, [qkv, c, s], |qkv, c, s| rope_split_cube(
        qkv, c, s, n_q, n_kv
    ));
    outs?.try_into().ok()
}

/// A contiguous copy of `t` (or `t` itself when it already is) on the supported backends;
/// `t` unchanged on any other. For laying out weight rows once at load.
pub fn contiguous<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, D> {
    if !supported::<B>() {
        return t;
    }
    let copy = t.clone();
    let outs = on_cube_many!(B, D, [copy], |c| Some(vec![
        burn_cubecl::kernel::into_contiguous(c)
    ]));
    outs.and_then(|mut v| v.pop()).unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{max_diff, random};
    use crate::{cube_of, WgpuUnfused};
    use burn::tensor::activation::silu;

    type B = WgpuUnfused;

    fn normed(x: &Tensor<B, 2>, gain: &Tensor<B, 1>, eps: f64) -> Tensor<B, 2> {
        let variance = x.clone().powi_scalar(2).mean_dim(1);
        x.clone() / (variance + eps).sqrt() * gain.clone().unsqueeze::<2>()
    }

    // Shapes below, at and past the 32-lane and 8-row tiles, and SmolLM2's.
    const SHAPES: [(usize, usize); 5] = [(1, 1), (5, 3), (33, 17), (64, 96), (576, 960)];

    #[test]
    fn norm_matvec_is_rms_norm_then_the_product() {
        for (k, n) in SHAPES {
            let (x, gain, rows) = (random([1, k]), random([k]), random([n, k]));
            let got = norm_matvec(&x, &gain, 1e-5, &rows).expect("supported");
            let want = normed(&x, &gain, 1e-5).matmul(rows.transpose());
            let diff = max_diff(got, want);
            assert!(diff < 1e-3 * (k as f32).sqrt(), "[{k} -> {n}]: {diff}");
        }
    }

    #[test]
    fn matvec_residual_adds_the_residual() {
        for (k, n) in SHAPES {
            let (x, rows, residual) = (random([1, k]), random([n, k]), random([1, n]));
            let got = matvec_residual(&x, &rows, &residual).expect("supported");
            let want = residual + x.matmul(rows.transpose());
            let diff = max_diff(got, want);
            assert!(diff < 1e-4 * (k as f32).sqrt(), "[{k} -> {n}]: {diff}");
        }
    }

    #[test]
    fn silu_gate_up_multiplies_the_two_halves() {
        for (k, f) in SHAPES {
            let (x, gain, rows) = (random([1, k]), random([k]), random([2 * f, k]));
            let got = norm_matvec_silu_gate_up(&x, &gain, 1e-6, &rows).expect("supported");
            let both = normed(&x, &gain, 1e-6).matmul(rows.transpose());
            let gate = both.clone().slice([0..1, 0..f]);
            let up = both.slice([0..1, f..2 * f]);
            let want = silu(gate) * up;
            let diff = max_diff(got, want);
            assert!(diff < 1e-3 * (k as f32).sqrt(), "[{k} -> {f}]: {diff}");
        }
        // An odd number of rows has no gate/up halves.
        assert!(
            norm_matvec_silu_gate_up(&random([1, 4]), &random([4]), 1e-6, &random([3, 4]))
                .is_none()
        );
    }

    #[test]
    fn weight_rows_may_be_a_slice_of_a_wider_matrix() {
        // Rows 40 floats apart, 24 of them read: a column slice of `[N, 40]`.
        let wide = random([10, 40]);
        let rows = wide.slice([0..10, 8..32]);
        let (x, gain) = (random([1, 24]), random([24]));
        let got = norm_matvec(&x, &gain, 1e-5, &rows).expect("row-strided rows");
        let want = normed(&x, &gain, 1e-5).matmul(rows.transpose());
        assert!(max_diff(got, want) < 1e-3);
    }

    #[test]
    fn mismatched_shapes_and_column_major_rows_are_declined() {
        let (x, gain) = (random([1, 8]), random([8]));
        assert!(norm_matvec(&x, &gain, 1e-5, &random([4, 9])).is_none());
        assert!(norm_matvec(&x, &random([7]), 1e-5, &random([4, 8])).is_none());
        // `[K, N]` weights viewed as rows have stride K along a row: declined, not misread.
        let column_major = random([8, 4]).transpose();
        assert!(norm_matvec(&x, &gain, 1e-5, &column_major).is_none());
        assert!(matvec_residual(&x, &random([4, 8]), &random([1, 5])).is_none());
        let flex = Tensor::<burn::backend::Flex, 2>::ones([1, 4], &Default::default());
        let flex_gain = Tensor::<burn::backend::Flex, 1>::ones([4], &Default::default());
        assert!(norm_matvec(&flex, &flex_gain, 1e-5, &flex).is_none());
    }

    #[test]
    fn contiguous_lays_a_transposed_view_out_as_rows() {
        let w = random([6, 10]); // `[K, N]`
        let rows = contiguous(w.clone().transpose());
        let cube = cube_of::<B, B, cubecl::wgpu::WgpuRuntime, 2>(rows.clone()).unwrap();
        assert!(cube.is_contiguous());
        assert_eq!(max_diff(rows, w.transpose()), 0.0);
    }

    #[test]
    fn rope_split_rotates_q_and_k_and_copies_v() {
        for (n_q, n_kv, d) in [(9, 3, 64), (2, 1, 8), (4, 4, 32)] {
            let width = (n_q + 2 * n_kv) * d;
            let qkv = random([1, width]);
            let (cos2, sin_signed) = (random([1, 1, d]), random([1, 1, d]));
            let [q, k, v] = rope_split(&qkv, &cos2, &sin_signed, n_q, n_kv).expect("supported");
            // `x * cos2 + swap_halves(x) * sin_signed` per head, written out.
            let rotate = |x: Tensor<B, 2>, heads: usize| {
                let x = x.reshape([heads, d]);
                let swapped = x
                    .clone()
                    .reshape([heads, 2, d / 2])
                    .flip([1])
                    .reshape([heads, d]);
                (x * cos2.clone().reshape([1, d]) + swapped * sin_signed.clone().reshape([1, d]))
                    .reshape([1, heads, 1, d])
            };
            let part =
                |from: usize, heads: usize| qkv.clone().slice([0..1, from * d..(from + heads) * d]);
            let want_q = rotate(part(0, n_q), n_q);
            let want_k = rotate(part(n_q, n_kv), n_kv);
            let want_v = part(n_q + n_kv, n_kv).reshape([1, n_kv, 1, d]);
            assert!(max_diff(q, want_q) < 1e-5, "q ({n_q}, {n_kv}, {d})");
            assert!(max_diff(k, want_k) < 1e-5, "k ({n_q}, {n_kv}, {d})");
            assert_eq!(max_diff(v, want_v), 0.0, "v ({n_q}, {n_kv}, {d})");
        }
        // Tables of the wrong length are declined.
        let qkv = random([1, 5 * 8]);
        assert!(rope_split(&qkv, &random([1, 1, 6]), &random([1, 1, 6]), 3, 1).is_none());
    }
}
