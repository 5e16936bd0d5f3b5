//! Row-wise kernels of a transformer layer that burn's flex backend runs as several
//! passes: RMSNorm (seven ops), rotary embedding (a strided flip, then three element-wise
//! ops) and SwiGLU's `silu(gate) * up` (two). These run in one parallel pass each.
//!
//! Inputs are [`RowsRef`]: rows of a buffer with unit stride inside a row and any row stride
//! (slices of a wider product are read in place). Outputs are contiguous `[rows, cols]`.

use rayon::prelude::*;

use crate::simd::{self, dispatch, MulAdd};

/// Elements per parallel task: big enough to amortise rayon, small enough to balance two cores.
const ELEMENTS_PER_TASK: usize = 1 << 14;

/// `rows` rows of `cols` values: row `r` is `data[offset + r * row_stride ..][..cols]`.
#[derive(Clone, Copy, Debug)]
pub struct RowsRef<'a> {
    pub data: &'a [f32],
    pub offset: usize,
    pub row_stride: usize,
    pub rows: usize,
    pub cols: usize,
}

impl<'a> RowsRef<'a> {
    /// A densely packed `[rows, cols]` buffer.
    pub fn contiguous(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            offset: 0,
            row_stride: cols,
            rows,
            cols,
        }
    }

    #[inline(always)]
    fn row(&self, r: usize) -> &'a [f32] {
        let start = self.offset + r * self.row_stride;
        &self.data[start..start + self.cols]
    }

    /// Panics with `name` unless every row lies inside `data` (a caller's bug).
    fn check(&self, name: &str) {
        if self.rows > 0 && self.cols > 0 {
            let end = self.offset + (self.rows - 1) * self.row_stride + self.cols;
            assert!(
                end <= self.data.len() && self.row_stride >= self.cols,
                "{name}: rows end at {end}, past a buffer of {} (or overlap)",
                self.data.len()
            );
        }
    }
}

/// Runs `body(first_row, out_rows)` over `out` (`[rows, cols]`) in parallel blocks of rows, or
/// on the calling thread when the whole job is one block (a decode step).
fn by_rows(out: &mut [f32], cols: usize, body: impl Fn(usize, &mut [f32]) + Sync) {
    if cols == 0 || out.is_empty() {
        return;
    }
    let rows_per_task = (ELEMENTS_PER_TASK / cols).max(1);
    if out.len() <= rows_per_task * cols {
        body(0, out);
    } else {
        out.par_chunks_mut(rows_per_task * cols)
            .enumerate()
            .for_each(|(task, block)| body(task * rows_per_task, block));
    }
}

/// RMSNorm of each row: `out[r] = x[r] * (1 / sqrt(mean(x[r]^2) + eps)) * w`, the operations
/// and order of the model's generic code (only the sum of squares is summed in lanes).
/// `x` is `[rows, cols]`, `w` `[cols]`, `out` `[rows, cols]`.
pub fn rms_norm(x: RowsRef<'_>, w: &[f32], eps: f32, out: &mut [f32]) {
    x.check("rms_norm input");
    assert_eq!(w.len(), x.cols, "rms_norm: one gain per column");
    assert_eq!(
        out.len(),
        x.rows * x.cols,
        "rms_norm: output is [rows, cols]"
    );
    by_rows(out, x.cols, |first, block| {
        rms_norm_block(x, w, eps, first, block)
    });
}

dispatch!(fn rms_norm_block(x: RowsRef<'_>, w: &[f32], eps: f32, first: usize, out: &mut [f32]) => rms_norm_body);

#[inline(always)]
fn rms_norm_body(x: RowsRef<'_>, w: &[f32], eps: f32, first: usize, out: &mut [f32]) {
    for (i, dst) in out.chunks_exact_mut(x.cols).enumerate() {
        let row = x.row(first + i);
        let mut lanes = [0f32; 16];
        let mut chunks = row.chunks_exact(16);
        for chunk in &mut chunks {
            for (l, v) in lanes.iter_mut().zip(chunk) {
                *l += v * v;
            }
        }
        let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
        let mean = (lanes.iter().sum::<f32>() + tail) / x.cols as f32;
        let inv = 1.0 / (mean + eps).sqrt();
        for ((o, v), g) in dst.iter_mut().zip(row).zip(w) {
            *o = v * inv * g;
        }
    }
}

/// Rotary embedding in the half-split layout of every head of `x` `[T, heads * D]`, with
/// `cos2` and `sin_signed` `[T, D]` (`[cos, cos]` and `[-sin, sin]` per position):
/// `out = x * cos2 + swap_halves(x) * sin_signed`, bit for bit the model's generic formula
/// (two products and a sum per value, no fused multiply-add).
pub fn rope(x: RowsRef<'_>, head_dim: usize, cos2: &[f32], sin_signed: &[f32], out: &mut [f32]) {
    x.check("rope input");
    assert!(
        head_dim > 0 && head_dim.is_multiple_of(2) && x.cols.is_multiple_of(head_dim),
        "rope: rows of {} are not whole heads of even size {head_dim}",
        x.cols
    );
    assert_eq!(cos2.len(), x.rows * head_dim, "rope: cos2 is [T, D]");
    assert_eq!(
        sin_signed.len(),
        x.rows * head_dim,
        "rope: sin_signed is [T, D]"
    );
    assert_eq!(out.len(), x.rows * x.cols, "rope: output is [T, H * D]");
    by_rows(out, x.cols, |first, block| {
        rope_block(x, head_dim, cos2, sin_signed, first, block)
    });
}

dispatch!(fn rope_block(x: RowsRef<'_>, head_dim: usize, cos2: &[f32], sin_signed: &[f32], first: usize, out: &mut [f32]) => rope_body);

#[inline(always)]
fn rope_body(
    x: RowsRef<'_>,
    d: usize,
    cos2: &[f32],
    sin_signed: &[f32],
    first: usize,
    out: &mut [f32],
) {
    let half = d / 2;
    for (i, dst) in out.chunks_exact_mut(x.cols).enumerate() {
        let t = first + i;
        let row = x.row(t);
        let (c, s) = (&cos2[t * d..(t + 1) * d], &sin_signed[t * d..(t + 1) * d]);
        for (head, o) in row.chunks_exact(d).zip(dst.chunks_exact_mut(d)) {
            let (x1, x2) = head.split_at(half);
            let (o1, o2) = o.split_at_mut(half);
            for j in 0..half {
                o1[j] = x1[j] * c[j] + x2[j] * s[j];
                o2[j] = x2[j] * c[half + j] + x1[j] * s[half + j];
            }
        }
    }
}

/// SwiGLU's gate: `out = silu(gate) * up` for `gate`, `up` `[rows, cols]`, with the same
/// `silu` as [`crate::dense::silu_in_place`] (`x / (1 + e^-x)`), then one product.
pub fn silu_mul(gate: RowsRef<'_>, up: RowsRef<'_>, out: &mut [f32]) {
    gate.check("silu_mul gate");
    up.check("silu_mul up");
    assert_eq!(
        (gate.rows, gate.cols),
        (up.rows, up.cols),
        "silu_mul: gate and up differ in shape"
    );
    assert_eq!(
        out.len(),
        gate.rows * gate.cols,
        "silu_mul: output is [rows, cols]"
    );
    by_rows(out, gate.cols, |first, block| {
        silu_mul_block(gate, up, first, block)
    });
}

dispatch!(fn silu_mul_block(gate: RowsRef<'_>, up: RowsRef<'_>, first: usize, out: &mut [f32]) => silu_mul_body::<Madd>);

#[inline(always)]
fn silu_mul_body<M: MulAdd>(gate: RowsRef<'_>, up: RowsRef<'_>, first: usize, out: &mut [f32]) {
    for (i, dst) in out.chunks_exact_mut(gate.cols).enumerate() {
        let (g, u) = (gate.row(first + i), up.row(first + i));
        for ((o, g), u) in dst.iter_mut().zip(g).zip(u) {
            *o = g / (1.0 + simd::exp_with::<M>(-g)) * u;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 2001) as f32 / 500.0 - 2.0
            })
            .collect()
    }

    /// A `[rows, cols]` view at columns `start..start + cols` of a `[rows, width]` buffer.
    fn view(data: &[f32], rows: usize, width: usize, start: usize, cols: usize) -> RowsRef<'_> {
        RowsRef {
            data,
            offset: start,
            row_stride: width,
            rows,
            cols,
        }
    }

    #[test]
    fn rms_norm_matches_the_formula_on_views_and_many_rows() {
        // 3 rows run on the caller's thread, 100 rows of 576 in parallel blocks.
        for (rows, cols, width, start) in [(3, 20, 50, 7), (100, 576, 576, 0)] {
            let x = values(rows * width, 1);
            let w = values(cols, 2);
            let mut out = vec![0f32; rows * cols];
            rms_norm(view(&x, rows, width, start, cols), &w, 1e-5, &mut out);
            for r in 0..rows {
                let row = &x[r * width + start..r * width + start + cols];
                let mean = row.iter().map(|v| (v * v) as f64).sum::<f64>() / cols as f64;
                let inv = 1.0 / (mean + 1e-5).sqrt();
                for c in 0..cols {
                    let want = row[c] as f64 * inv * w[c] as f64;
                    let got = out[r * cols + c] as f64;
                    assert!(
                        (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                        "{got} {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn rope_is_bit_exact_against_the_split_formula() {
        let (t, heads, d, width, start) = (40, 3, 8, 30, 2);
        let x = values(t * width, 3);
        let cos2: Vec<f32> = values(t * d, 4);
        let sin_signed: Vec<f32> = values(t * d, 5);
        let mut out = vec![0f32; t * heads * d];
        rope(
            view(&x, t, width, start, heads * d),
            d,
            &cos2,
            &sin_signed,
            &mut out,
        );
        let half = d / 2;
        for r in 0..t {
            for h in 0..heads {
                for i in 0..d {
                    let at = r * width + start + h * d;
                    let swapped = if i < half {
                        x[at + i + half]
                    } else {
                        x[at + i - half]
                    };
                    let want = x[at + i] * cos2[r * d + i] + swapped * sin_signed[r * d + i];
                    assert_eq!(out[(r * heads + h) * d + i], want, "t {r} h {h} i {i}");
                }
            }
        }
    }

    #[test]
    fn silu_mul_matches_silu_then_product() {
        let (rows, cols) = (70, 300);
        let both = values(rows * 2 * cols, 6); // [gate | up] per row, as a merged product
        let gate = view(&both, rows, 2 * cols, 0, cols);
        let up = view(&both, rows, 2 * cols, cols, cols);
        let mut out = vec![0f32; rows * cols];
        silu_mul(gate, up, &mut out);
        for r in 0..rows {
            for c in 0..cols {
                let (g, u) = (both[r * 2 * cols + c], both[r * 2 * cols + cols + c]);
                let want = g / (1.0 + (-g).exp()) * u;
                let got = out[r * cols + c];
                assert!(
                    (got - want).abs() <= 1e-6 * (1.0 + want.abs()),
                    "{got} {want}"
                );
            }
        }
    }

    #[test]
    #[should_panic(expected = "past a buffer")]
    fn a_view_past_its_buffer_is_refused() {
        let x = vec![0f32; 10];
        let mut out = vec![0f32; 12];
        rms_norm(view(&x, 3, 4, 0, 4), &[1.0; 4], 1e-5, &mut out);
    }
}
