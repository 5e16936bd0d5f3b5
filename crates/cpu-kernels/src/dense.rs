//! Element-wise and skinny matrix kernels: the decode step's `[1, in] x [in, out]` products,
//! which flex's GEMM runs at a fraction of memory bandwidth (the 576x49152 head of SmolLM2
//! took 18.7 ms, 3 GFLOP/s), and SiLU, whose scalar `exp` cost as much as a projection.

use rayon::prelude::*;

use crate::simd::{self, dispatch, MulAdd};

/// Output columns per parallel task: long enough rows to stream, small enough to balance.
const COLUMNS_PER_TASK: usize = 512;

/// `y[r, :] = x[r, :] W` for `x` `[m, k]` (contiguous) and a weight stored row-major as
/// `[k, n]` (`w[i * n + j]`), into `y` `[m, n]`; parallel over column ranges, so every
/// weight element is read once per call.
pub fn gemm_skinny_kn(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, y: &mut [f32]) {
    assert_eq!(x.len(), m * k, "skinny gemm: x is [m, k]");
    assert!(w.len() >= k * n, "skinny gemm: weight is [k, n]");
    assert_eq!(y.len(), m * n, "skinny gemm: y is [m, n]");
    by_column_ranges(m, n, y, |c0, c1, out| {
        columns_kn(x, m, k, w, n, c0, c1, out)
    });
}

/// Fills `y` `[m, n]` by computing column ranges `[c0, c1)` in parallel with `fill(c0, c1,
/// out)`, `out` being that range's `[m, c1 - c0]` block.
fn by_column_ranges(
    m: usize,
    n: usize,
    y: &mut [f32],
    fill: impl Fn(usize, usize, &mut [f32]) + Sync,
) {
    let tasks = n.div_ceil(COLUMNS_PER_TASK);
    let parts: Vec<Vec<f32>> = (0..tasks)
        .into_par_iter()
        .map(|task| {
            let c0 = task * COLUMNS_PER_TASK;
            let c1 = (c0 + COLUMNS_PER_TASK).min(n);
            let mut out = vec![0f32; m * (c1 - c0)];
            fill(c0, c1, &mut out);
            out
        })
        .collect();
    for (task, part) in parts.iter().enumerate() {
        let c0 = task * COLUMNS_PER_TASK;
        let width = part.len() / m;
        for r in 0..m {
            y[r * n + c0..r * n + c0 + width].copy_from_slice(&part[r * width..(r + 1) * width]);
        }
    }
}

dispatch!(fn columns_kn(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, c0: usize, c1: usize, out: &mut [f32]) => columns_kn_body);

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn columns_kn_body(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    n: usize,
    c0: usize,
    c1: usize,
    out: &mut [f32],
) {
    let width = c1 - c0;
    for r in 0..m {
        let acc = &mut out[r * width..(r + 1) * width];
        for i in 0..k {
            let xi = x[r * k + i];
            let row = &w[i * n + c0..i * n + c1];
            for (a, wv) in acc.iter_mut().zip(row) {
                *a += xi * wv;
            }
        }
    }
}

/// `y[r, j] = dot(x[r, :], w[j, :])` for `x` `[m, k]` and a weight stored as `[n, k]` (the
/// transpose of the product's right operand, as GGUF and PyTorch store it); parallel over `j`.
pub fn gemm_skinny_nk(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, y: &mut [f32]) {
    assert_eq!(x.len(), m * k, "skinny gemm: x is [m, k]");
    assert!(w.len() >= k * n, "skinny gemm: weight is [n, k]");
    assert_eq!(y.len(), m * n, "skinny gemm: y is [m, n]");
    by_column_ranges(m, n, y, |c0, c1, out| rows_nk(x, m, k, w, c0, c1, out));
}

dispatch!(fn rows_nk(x: &[f32], m: usize, k: usize, w: &[f32], c0: usize, c1: usize, out: &mut [f32]) => rows_nk_body);

#[inline(always)]
fn rows_nk_body(x: &[f32], m: usize, k: usize, w: &[f32], c0: usize, c1: usize, out: &mut [f32]) {
    let width = c1 - c0;
    for j in c0..c1 {
        let row = &w[j * k..(j + 1) * k];
        for r in 0..m {
            let xr = &x[r * k..(r + 1) * k];
            // Sixteen partial sums: a vector register's worth, so the loop vectorises.
            let mut partial = [0f32; 16];
            let chunks = k / 16;
            for c in 0..chunks {
                for l in 0..16 {
                    partial[l] += xr[c * 16 + l] * row[c * 16 + l];
                }
            }
            let mut sum: f32 = partial.iter().sum();
            for i in chunks * 16..k {
                sum += xr[i] * row[i];
            }
            out[r * width + (j - c0)] = sum;
        }
    }
}

/// `y = x W` for `x` `[m, k]` (contiguous) and `W` `[k, n]` read with strides
/// (`W[i, j] = w[i * w_row_stride + j * w_col_stride]`: a row-major `[k, n]` buffer or the
/// transposed view of an `[n, k]` one), into `y` `[m, n]` (overwritten); the `gemm` crate's
/// kernels, split over rayon's pool.
///
/// Panics when a buffer is too short for its shape (a caller's bug).
#[allow(clippy::too_many_arguments)]
pub fn gemm_strided(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    w_row_stride: usize,
    w_col_stride: usize,
    n: usize,
    y: &mut [f32],
) {
    assert_eq!(x.len(), m * k, "gemm: x is [m, k]");
    assert_eq!(y.len(), m * n, "gemm: y is [m, n]");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        y.fill(0.0);
        return;
    }
    let last = (k - 1) * w_row_stride + (n - 1) * w_col_stride;
    assert!(last < w.len(), "gemm: weight view ends past its buffer");
    // SAFETY: the asserts above keep every index gemm reads or writes inside the slices
    // (x: r * k + i, w: i * w_row_stride + j * w_col_stride, y: r * n + j), and `y` is an
    // exclusive borrow that aliases neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            y.as_mut_ptr(),
            1,
            n as isize,
            false,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            w_col_stride as isize,
            w_row_stride as isize,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(rayon::current_num_threads()),
        )
    }
}

/// A read-only strided matrix: element `(i, j)` is `data[i * row_stride + j * col_stride]`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Strided<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl Strided<'_> {
    /// Panics with `name` unless every element lies inside `data`.
    fn check(&self, name: &str) {
        if self.rows > 0 && self.cols > 0 {
            let last = (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride;
            assert!(
                last < self.data.len(),
                "gemm: {name} view ends past its buffer"
            );
        }
    }
}

/// `dst = lhs rhs`, or `dst += lhs rhs` with `accumulate`, on the calling thread (for work
/// items that are already parallel): `lhs` `[m, k]`, `rhs` `[k, n]`, `dst` `[m, n]` with rows
/// `dst_row_stride` apart. The `gemm` crate's kernels (AVX-512 where present) read both
/// operands in place, transposed views included.
///
/// Panics when shapes disagree or a view leaves its buffer (a caller's bug).
pub(crate) fn gemm_serial(
    lhs: Strided<'_>,
    rhs: Strided<'_>,
    dst: &mut [f32],
    dst_row_stride: usize,
    accumulate: bool,
) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert_eq!(rhs.rows, k, "gemm: inner dimensions differ");
    if m == 0 || n == 0 {
        return;
    }
    assert!(n <= dst_row_stride || m == 1, "gemm: dst rows overlap");
    assert!(
        (m - 1) * dst_row_stride + n <= dst.len(),
        "gemm: dst view ends past its buffer"
    );
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                dst[r * dst_row_stride..r * dst_row_stride + n].fill(0.0);
            }
        }
        return;
    }
    lhs.check("lhs");
    rhs.check("rhs");
    // SAFETY: the asserts above keep every element gemm reads (through the two views) or
    // writes (`dst[r * dst_row_stride + j]`, `r < m`, `j < n`) inside its slice; `dst` is an
    // exclusive borrow, so it aliases neither operand.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_row_stride as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.data.as_ptr(),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// SiLU `x / (1 + e^-x)` in place, with the vectorisable `exp`; parallel in chunks.
pub fn silu_in_place(x: &mut [f32]) {
    x.par_chunks_mut(1 << 14).for_each(silu_chunk);
}

dispatch!(fn silu_chunk(x: &mut [f32]) => silu_body::<Madd>);

#[inline(always)]
fn silu_body<M: MulAdd>(x: &mut [f32]) {
    for v in x.iter_mut() {
        *v /= 1.0 + simd::exp_with::<M>(-*v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_gemm_reads_transposed_views_and_accumulates() {
        // lhs [2, 3] row-major; rhs [3, 2] as the transposed view of a row-major [2, 3].
        let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let b = [1.0, 0.0, -1.0, 2.0, 1.0, 0.5];
        let lhs = Strided {
            data: &a,
            rows: 2,
            cols: 3,
            row_stride: 3,
            col_stride: 1,
        };
        let rhs = Strided {
            data: &b,
            rows: 3,
            cols: 2,
            row_stride: 1,
            col_stride: 3,
        };
        // Rows 4 apart, the last two columns of each row untouched.
        let mut dst = [9.0f32; 8];
        gemm_serial(lhs, rhs, &mut dst, 4, false);
        assert_eq!(dst, [-2.0, 5.5, 9.0, 9.0, -2.0, 16.0, 9.0, 9.0]);
        gemm_serial(lhs, rhs, &mut dst, 4, true);
        assert_eq!(dst, [-4.0, 11.0, 9.0, 9.0, -4.0, 32.0, 9.0, 9.0]);
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 2001) as f32 / 1000.0
                    - 1.0
            })
            .collect()
    }

    #[test]
    fn skinny_products_match_a_direct_loop_in_both_weight_layouts() {
        let (m, k, n) = (3, 70, 1100);
        let x = values(m * k, 1);
        let w_kn = values(k * n, 2);
        let mut want = vec![0f64; m * n];
        for r in 0..m {
            for j in 0..n {
                want[r * n + j] = (0..k)
                    .map(|i| x[r * k + i] as f64 * w_kn[i * n + j] as f64)
                    .sum();
            }
        }
        let mut y = vec![0f32; m * n];
        gemm_skinny_kn(&x, m, k, &w_kn, n, &mut y);
        let w_nk: Vec<f32> = (0..n * k)
            .map(|idx| w_kn[(idx % k) * n + idx / k])
            .collect();
        let mut y2 = vec![0f32; m * n];
        gemm_skinny_nk(&x, m, k, &w_nk, n, &mut y2);
        for ((a, b), w) in y.iter().zip(&y2).zip(&want) {
            assert!(
                (*a as f64 - w).abs() < 1e-4 && (*b as f64 - w).abs() < 1e-4,
                "{a} {b} {w}"
            );
        }
    }

    #[test]
    fn strided_gemm_matches_a_direct_loop_in_both_weight_layouts() {
        let (m, k, n) = (37, 70, 45);
        let x = values(m * k, 4);
        let w_kn = values(k * n, 5);
        let w_nk: Vec<f32> = (0..n * k)
            .map(|idx| w_kn[(idx % k) * n + idx / k])
            .collect();
        let mut want = vec![0f64; m * n];
        for r in 0..m {
            for j in 0..n {
                want[r * n + j] = (0..k)
                    .map(|i| x[r * k + i] as f64 * w_kn[i * n + j] as f64)
                    .sum();
            }
        }
        let mut y = vec![f32::NAN; m * n];
        gemm_strided(&x, m, k, &w_kn, n, 1, n, &mut y);
        let mut y2 = vec![f32::NAN; m * n];
        gemm_strided(&x, m, k, &w_nk, 1, k, n, &mut y2);
        for ((a, b), w) in y.iter().zip(&y2).zip(&want) {
            assert!(
                (*a as f64 - w).abs() < 1e-4 && (*b as f64 - w).abs() < 1e-4,
                "{a} {b} {w}"
            );
        }
    }

    #[test]
    #[should_panic(expected = "weight view ends past its buffer")]
    fn strided_gemm_rejects_a_short_weight() {
        let mut y = vec![0f32; 4];
        gemm_strided(&[1.0; 6], 2, 3, &[1.0; 5], 2, 1, 2, &mut y);
    }

    #[test]
    fn silu_matches_the_definition() {
        let mut x = values(40_000, 3)
            .iter()
            .map(|v| v * 20.0)
            .collect::<Vec<_>>();
        let want: Vec<f32> = x.iter().map(|v| v / (1.0 + (-v).exp())).collect();
        silu_in_place(&mut x);
        for (a, b) in x.iter().zip(&want) {
            assert!((a - b).abs() <= 1e-6 * (1.0 + b.abs()), "{a} {b}");
        }
    }
}
