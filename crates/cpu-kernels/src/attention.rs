//! Flash attention on the CPU, with visibility given by token positions.
//!
//! Work is split into items of (KV head, block of queries, chunk of keys). An item holds the
//! queries of every query head that shares its KV head (grouped-query attention without
//! repeating keys), walks the chunk's key tiles with an online softmax, and skips a tile when
//! positions hide it from every query of the block (the upper triangle of a causal prompt,
//! keys outside a sliding window). Key chunks are merged with the usual log-sum-exp rule; they
//! exist so that a decode step (one query per head) still keeps every thread busy.

use rayon::prelude::*;

use crate::dense::{gemm_serial, Strided};
use crate::simd::{self, dispatch, MulAdd};

/// Keys per tile: the `[rows, 128]` scores stay in L1/L2, and the two products per tile are
/// large enough for the GEMM kernels (64 keys ran at 84 GFLOP/s at 2,048 tokens, 128 at 110).
const KEY_TILE: usize = 128;
/// Query rows (all heads of a group together) per work item.
const ROWS_PER_ITEM: usize = 64;

/// A `[heads, rows, dim]` view of an f32 buffer whose last dimension is contiguous (the
/// layout of one batch element of a `[1, H, S, D]` tensor, possibly a slice of a larger one).
#[derive(Clone, Copy, Debug)]
pub struct Heads<'a> {
    pub data: &'a [f32],
    /// Index of element `[0, 0, 0]`.
    pub offset: usize,
    pub head_stride: usize,
    pub row_stride: usize,
    pub heads: usize,
    pub rows: usize,
    pub dim: usize,
}

impl<'a> Heads<'a> {
    /// A densely packed `[heads, rows, dim]` buffer.
    pub fn contiguous(data: &'a [f32], heads: usize, rows: usize, dim: usize) -> Self {
        Self {
            data,
            offset: 0,
            head_stride: rows * dim,
            row_stride: dim,
            heads,
            rows,
            dim,
        }
    }

    #[inline(always)]
    fn start(&self, head: usize, row: usize) -> usize {
        self.offset + head * self.head_stride + row * self.row_stride
    }

    #[inline(always)]
    fn row(&self, head: usize, row: usize) -> &'a [f32] {
        let start = self.start(head, row);
        &self.data[start..start + self.dim]
    }

    /// Panics with `name` unless every element of the view lies inside `data`.
    fn check(&self, name: &str) {
        if self.heads == 0 || self.rows == 0 || self.dim == 0 {
            return;
        }
        let last = self.start(self.heads - 1, self.rows - 1) + self.dim;
        assert!(
            last <= self.data.len(),
            "attention: {name} view ends at {last}, past its buffer of {}",
            self.data.len()
        );
    }
}

/// Which keys each query sees, from absolute positions (the rules of
/// `longctx_core::KvView`): key `j` is visible to query `i` iff
/// `key_positions[j] <= query_positions[i]`, it is inside the layer's sliding `window`
/// (`q - window < k`), it is a sink or within the local span of a sinks-plus-local pattern,
/// and it is not padding of its KV head.
#[derive(Clone, Copy, Debug, Default)]
pub struct Visibility<'a> {
    /// One per query row (length `T`).
    pub query_positions: &'a [usize],
    /// One per key row (length `S`).
    pub key_positions: &'a [usize],
    /// The layer's sliding window in tokens.
    pub window: Option<usize>,
    /// `(sinks, local)`: the first `sinks` key rows are visible to all later queries; any other
    /// key only within `local` of the query.
    pub sinks_local: Option<(usize, usize)>,
    /// `[H_kv, S]`, `true` = padding to ignore (ragged per-head caches).
    pub padding: Option<&'a [bool]>,
}

impl Visibility<'_> {
    #[inline(always)]
    fn visible(&self, query: usize, key_index: usize, kv_head: usize, n_keys: usize) -> bool {
        let k = self.key_positions[key_index];
        if k > query {
            return false;
        }
        if let Some(w) = self.window {
            if k + w <= query {
                return false;
            }
        }
        if let Some((sinks, local)) = self.sinks_local {
            if key_index >= sinks && k + local <= query {
                return false;
            }
        }
        match self.padding {
            Some(p) => !p[kv_head * n_keys + key_index],
            None => true,
        }
    }
}

/// Softmax attention `softmax(scale * Q K^T + mask) V` written into `out`.
///
/// Shapes: `q` `[H_q, T, D]`, `k` `[H_kv, S, D]`, `v` `[H_kv, S, D_v]`, `out` `[H_q, T, D_v]`
/// contiguous; `H_q` a multiple of `H_kv` (query head `h` uses KV head `h / (H_q / H_kv)`).
/// A query that sees no key gets zeros. Runs on rayon's current pool.
///
/// Panics when shapes disagree (a caller's bug, not bad input).
pub fn attention(
    q: Heads<'_>,
    k: Heads<'_>,
    v: Heads<'_>,
    scale: f32,
    vis: &Visibility<'_>,
    out: &mut [f32],
) {
    attention_in_order(q, k, v, scale, vis, out, OutputOrder::HeadMajor)
}

/// How [`attention_in_order`] lays out its output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputOrder {
    /// `[H_q, T, D_v]`, as [`attention`] returns it.
    HeadMajor,
    /// `[T, H_q, D_v]`: each token's heads side by side, the layout the output projection
    /// reads, so no strided copy is needed to get there.
    TokenMajor,
}

/// [`attention`] with the output laid out as `order` says.
pub fn attention_in_order(
    q: Heads<'_>,
    k: Heads<'_>,
    v: Heads<'_>,
    scale: f32,
    vis: &Visibility<'_>,
    out: &mut [f32],
    order: OutputOrder,
) {
    let (h_q, t, d) = (q.heads, q.rows, q.dim);
    let (h_kv, s, d_v) = (k.heads, k.rows, v.dim);
    assert!(
        h_kv > 0 && h_q % h_kv == 0,
        "attention: {h_q} query heads over {h_kv} KV heads"
    );
    assert_eq!(k.dim, d, "attention: key and query dims differ");
    assert_eq!(
        (v.heads, v.rows),
        (h_kv, s),
        "attention: values and keys differ in shape"
    );
    assert_eq!(
        vis.query_positions.len(),
        t,
        "attention: one position per query"
    );
    assert_eq!(
        vis.key_positions.len(),
        s,
        "attention: one position per key"
    );
    assert_eq!(
        out.len(),
        h_q * t * d_v,
        "attention: output is [H_q, T, D_v]"
    );
    if let Some(p) = vis.padding {
        assert_eq!(p.len(), h_kv * s, "attention: padding is [H_kv, S]");
    }
    q.check("query");
    k.check("key");
    v.check("value");
    out.fill(0.0);
    if t == 0 || s == 0 {
        return;
    }

    let groups = h_q / h_kv;
    let block_q = (ROWS_PER_ITEM / groups).clamp(1, t);
    let n_blocks = t.div_ceil(block_q);
    let n_tiles = s.div_ceil(KEY_TILE);
    let tiles = TileBounds::new(vis, h_kv, s, n_tiles);

    // Few items (a decode step) split the keys too, so that every thread has work.
    let want = 4 * rayon::current_num_threads();
    let base = h_kv * n_blocks;
    let chunks = want.div_ceil(base).clamp(1, (n_tiles / 4).max(1));
    let tiles_per_chunk = n_tiles.div_ceil(chunks);
    let chunks = n_tiles.div_ceil(tiles_per_chunk);

    let job = Job {
        q,
        k,
        v,
        scale,
        vis,
        tiles: &tiles,
        groups,
        block_q,
    };
    let partials: Vec<Partial> = (0..h_kv * n_blocks * chunks)
        .into_par_iter()
        .map(|item| {
            let chunk = item % chunks;
            let block = (item / chunks) % n_blocks;
            let kv_head = item / (chunks * n_blocks);
            let first = chunk * tiles_per_chunk;
            let tiles = first..(first + tiles_per_chunk).min(n_tiles);
            run_item(&job, kv_head, block, tiles)
        })
        .collect();

    for (index, group) in partials.chunks(chunks).enumerate() {
        let (kv_head, block) = (index / n_blocks, index % n_blocks);
        let t0 = block * block_q;
        let rows_t = block_q.min(t - t0);
        for r in 0..groups * rows_t {
            let max = group
                .iter()
                .map(|p| p.max[r])
                .fold(f32::NEG_INFINITY, f32::max);
            if max == f32::NEG_INFINITY {
                continue;
            }
            let weights: Vec<f32> = group.iter().map(|p| (p.max[r] - max).exp()).collect();
            let sum: f32 = group.iter().zip(&weights).map(|(p, w)| p.sum[r] * w).sum();
            let (g, ti) = (r / rows_t, r % rows_t);
            let head = kv_head * groups + g;
            let start = match order {
                OutputOrder::HeadMajor => (head * t + t0 + ti) * d_v,
                OutputOrder::TokenMajor => ((t0 + ti) * h_q + head) * d_v,
            };
            let dst = &mut out[start..start + d_v];
            for (p, w) in group.iter().zip(&weights) {
                let f = w / sum;
                for (o, a) in dst.iter_mut().zip(&p.acc[r * d_v..(r + 1) * d_v]) {
                    *o += f * a;
                }
            }
        }
    }
}

/// Position range and padding of each key tile, to skip or unmask tiles without looking at
/// their keys.
struct TileBounds {
    min: Vec<usize>,
    max: Vec<usize>,
    /// `[H_kv, tiles]`: whether the tile holds padding for that head.
    padded: Vec<bool>,
}

impl TileBounds {
    fn new(vis: &Visibility<'_>, h_kv: usize, s: usize, n_tiles: usize) -> Self {
        let mut min = Vec::with_capacity(n_tiles);
        let mut max = Vec::with_capacity(n_tiles);
        for tile in vis.key_positions.chunks(KEY_TILE) {
            min.push(*tile.iter().min().unwrap());
            max.push(*tile.iter().max().unwrap());
        }
        let padded = (0..h_kv * n_tiles)
            .map(|i| {
                let (h, tile) = (i / n_tiles, i % n_tiles);
                let keys = tile * KEY_TILE..((tile + 1) * KEY_TILE).min(s);
                vis.padding
                    .is_some_and(|p| keys.into_iter().any(|j| p[h * s + j]))
            })
            .collect();
        Self { min, max, padded }
    }
}

struct Job<'a> {
    q: Heads<'a>,
    k: Heads<'a>,
    v: Heads<'a>,
    scale: f32,
    vis: &'a Visibility<'a>,
    tiles: &'a TileBounds,
    groups: usize,
    block_q: usize,
}

/// An item's online-softmax state: per row the running max and sum, and `[rows, D_v]`
/// unnormalised outputs.
struct Partial {
    max: Vec<f32>,
    sum: Vec<f32>,
    acc: Vec<f32>,
}

dispatch!(fn run_item(job: &Job<'_>, kv_head: usize, block: usize, tiles: std::ops::Range<usize>) -> Partial => item_body::<Madd>);

/// One work item: rows ordered group-major (`r = g * rows_t + ti`).
#[inline(always)]
fn item_body<M: MulAdd>(
    job: &Job<'_>,
    kv_head: usize,
    block: usize,
    tiles: std::ops::Range<usize>,
) -> Partial {
    let Job { q, k, v, vis, .. } = *job;
    let (t, d, d_v, s) = (q.rows, q.dim, v.dim, k.rows);
    let t0 = block * job.block_q;
    let rows_t = job.block_q.min(t - t0);
    let rows = job.groups * rows_t;

    let mut queries = vec![0f32; rows * d];
    let mut positions = vec![0usize; rows];
    for g in 0..job.groups {
        for ti in 0..rows_t {
            let r = g * rows_t + ti;
            let src = q.row(kv_head * job.groups + g, t0 + ti);
            for (dst, x) in queries[r * d..(r + 1) * d].iter_mut().zip(src) {
                *dst = x * job.scale;
            }
            positions[r] = vis.query_positions[t0 + ti];
        }
    }
    let q_min = vis.query_positions[t0..t0 + rows_t]
        .iter()
        .copied()
        .min()
        .unwrap();
    let q_max = vis.query_positions[t0..t0 + rows_t]
        .iter()
        .copied()
        .max()
        .unwrap();

    let mut state = Partial {
        max: vec![f32::NEG_INFINITY; rows],
        sum: vec![0.0; rows],
        acc: vec![0.0; rows * d_v],
    };
    let mut scores = vec![0f32; rows * KEY_TILE];
    let queries_view = Strided {
        data: &queries,
        rows,
        cols: d,
        row_stride: d,
        col_stride: 1,
    };
    let n_tiles = job.tiles.min.len();

    for tile in tiles {
        let j0 = tile * KEY_TILE;
        let width = KEY_TILE.min(s - j0);
        let (k_min, k_max) = (job.tiles.min[tile], job.tiles.max[tile]);
        let padded = job.tiles.padded[kv_head * n_tiles + tile];
        let has_sink = vis.sinks_local.is_some_and(|(sinks, _)| j0 < sinks);
        // Hidden from every query of the block: all in the future, or all out of a window.
        if k_min > q_max
            || vis.window.is_some_and(|w| k_max + w <= q_min)
            || vis
                .sinks_local
                .is_some_and(|(_, local)| !has_sink && k_max + local <= q_min)
        {
            continue;
        }
        let fully_visible = k_max <= q_min
            && vis.window.is_none_or(|w| k_min + w > q_max)
            && vis.sinks_local.is_none_or(|(sinks, local)| {
                j0 + width <= sinks || (!has_sink && k_min + local > q_max)
            })
            && !padded;

        // scores[r, j] = queries[r, :] . keys[j0 + j, :], the keys read in place as a
        // transposed view.
        let keys = Strided {
            data: &k.data[k.start(kv_head, j0)..],
            rows: d,
            cols: width,
            row_stride: 1,
            col_stride: k.row_stride,
        };
        gemm_serial(queries_view, keys, &mut scores, KEY_TILE, false);

        for r in 0..rows {
            let row = &mut scores[r * KEY_TILE..(r + 1) * KEY_TILE];
            if !fully_visible {
                for (j, x) in row[..width].iter_mut().enumerate() {
                    if !vis.visible(positions[r], j0 + j, kv_head, s) {
                        *x = f32::NEG_INFINITY;
                    }
                }
            }
            row[width..].fill(f32::NEG_INFINITY);
            let row: &mut [f32; KEY_TILE] = row.try_into().unwrap();
            let new_max = state.max[r].max(lane_max(row));
            if new_max == f32::NEG_INFINITY {
                row.fill(0.0);
                continue;
            }
            // Separate loops without a serial reduction, so both vectorise.
            for x in row.iter_mut() {
                *x = simd::exp_with::<M>(*x - new_max);
            }
            let tile_sum = lane_sum(row);
            let correction = simd::exp_with::<M>(state.max[r] - new_max);
            if correction != 1.0 {
                for a in &mut state.acc[r * d_v..(r + 1) * d_v] {
                    *a *= correction;
                }
            }
            state.sum[r] = state.sum[r] * correction + tile_sum;
            state.max[r] = new_max;
        }
        // acc[r, :] += sum_j p[r, j] values[j0 + j, :]
        let weights = Strided {
            data: &scores,
            rows,
            cols: width,
            row_stride: KEY_TILE,
            col_stride: 1,
        };
        let values = Strided {
            data: &v.data[v.start(kv_head, j0)..],
            rows: width,
            cols: d_v,
            row_stride: v.row_stride,
            col_stride: 1,
        };
        gemm_serial(weights, values, &mut state.acc, d_v, true);
    }
    state
}

/// Maximum of a tile row, as 16 lanes then across them (a plain fold does not vectorise).
#[inline(always)]
fn lane_max(row: &[f32; KEY_TILE]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    for chunk in row.chunks_exact(16) {
        for (l, x) in lanes.iter_mut().zip(chunk) {
            *l = if *x > *l { *x } else { *l };
        }
    }
    lanes.iter().copied().fold(f32::NEG_INFINITY, f32::max)
}

/// Sum of a tile row, as 16 lanes then across them.
#[inline(always)]
fn lane_sum(row: &[f32; KEY_TILE]) -> f32 {
    let mut lanes = [0f32; 16];
    for chunk in row.chunks_exact(16) {
        for (l, x) in lanes.iter_mut().zip(chunk) {
            *l += x;
        }
    }
    lanes.iter().sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct softmax attention in f64 over the same visibility rules.
    fn reference(q: Heads, k: Heads, v: Heads, scale: f32, vis: &Visibility) -> Vec<f32> {
        let groups = q.heads / k.heads;
        let mut out = vec![0f32; q.heads * q.rows * v.dim];
        for h in 0..q.heads {
            let kv = h / groups;
            for i in 0..q.rows {
                let qi = q.row(h, i);
                let scores: Vec<Option<f64>> = (0..k.rows)
                    .map(|j| {
                        vis.visible(vis.query_positions[i], j, kv, k.rows).then(|| {
                            let kj = k.row(kv, j);
                            qi.iter().zip(kj).map(|(a, b)| (a * b) as f64).sum::<f64>()
                                * scale as f64
                        })
                    })
                    .collect();
                let max = scores
                    .iter()
                    .flatten()
                    .copied()
                    .fold(f64::NEG_INFINITY, f64::max);
                if max == f64::NEG_INFINITY {
                    continue;
                }
                let weights: Vec<f64> = scores
                    .iter()
                    .map(|s| s.map_or(0.0, |s| (s - max).exp()))
                    .collect();
                let total: f64 = weights.iter().sum();
                for (j, w) in weights.iter().enumerate() {
                    for (x, val) in v.row(kv, j).iter().enumerate() {
                        out[(h * q.rows + i) * v.dim + x] += (w / total * *val as f64) as f32;
                    }
                }
            }
        }
        out
    }

    fn filled(n: usize, seed: u64) -> Vec<f32> {
        let mut state = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn check(h_q: usize, h_kv: usize, t: usize, s: usize, d: usize, vis: Visibility) {
        let qd = filled(h_q * t * d, 1);
        // Keys and values as a slice of a larger cache: capacity 2s, inner contiguous.
        let kd = filled(h_kv * 2 * s * d + 7, 2);
        let vd = filled(h_kv * 2 * s * d + 7, 3);
        let q = Heads::contiguous(&qd, h_q, t, d);
        let strided = |data| Heads {
            data,
            offset: 7,
            head_stride: 2 * s * d,
            row_stride: d,
            heads: h_kv,
            rows: s,
            dim: d,
        };
        let (k, v) = (strided(&kd), strided(&vd));
        let scale = 1.0 / (d as f32).sqrt() * 3.0;
        let mut out = vec![0f32; h_q * t * d];
        attention(q, k, v, scale, &vis, &mut out);
        let want = reference(q, k, v, scale, &vis);
        let worst = out
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            worst < 2e-5,
            "worst abs error {worst} (t={t}, s={s}, d={d})"
        );
    }

    fn iota(range: std::ops::Range<usize>) -> Vec<usize> {
        range.collect()
    }

    #[test]
    fn token_major_output_is_the_head_major_one_transposed() {
        let (h_q, h_kv, t, d) = (4, 2, 37, 16);
        let (qd, kd, vd) = (
            filled(h_q * t * d, 1),
            filled(h_kv * t * d, 2),
            filled(h_kv * t * d, 3),
        );
        let q = Heads::contiguous(&qd, h_q, t, d);
        let k = Heads::contiguous(&kd, h_kv, t, d);
        let v = Heads::contiguous(&vd, h_kv, t, d);
        let pos = iota(0..t);
        let vis = Visibility {
            query_positions: &pos,
            key_positions: &pos,
            ..Default::default()
        };
        let mut heads_first = vec![0f32; h_q * t * d];
        let mut tokens_first = vec![0f32; h_q * t * d];
        attention(q, k, v, 0.25, &vis, &mut heads_first);
        attention_in_order(
            q,
            k,
            v,
            0.25,
            &vis,
            &mut tokens_first,
            OutputOrder::TokenMajor,
        );
        for h in 0..h_q {
            for ti in 0..t {
                assert_eq!(
                    heads_first[(h * t + ti) * d..(h * t + ti + 1) * d],
                    tokens_first[(ti * h_q + h) * d..(ti * h_q + h + 1) * d]
                );
            }
        }
    }

    #[test]
    fn causal_prefill_matches_direct_softmax() {
        for (t, d) in [(1, 64), (5, 64), (150, 64), (300, 32), (97, 80)] {
            let pos = iota(0..t);
            let vis = Visibility {
                query_positions: &pos,
                key_positions: &pos,
                ..Default::default()
            };
            check(9, 3, t, t, d, vis);
        }
    }

    #[test]
    fn question_tail_and_decode_over_a_longer_cache() {
        let keys = iota(0..700);
        for t in [1, 3, 40] {
            let queries = iota(700 - t..700);
            let vis = Visibility {
                query_positions: &queries,
                key_positions: &keys,
                ..Default::default()
            };
            check(4, 2, t, 700, 64, vis);
        }
    }

    #[test]
    fn windows_sinks_gaps_and_padding_mask_like_the_rules() {
        // An evicted cache: kept positions with gaps, a window, then sinks plus local.
        let keys: Vec<usize> = (0..400).map(|j| j * 3).collect();
        let queries = iota(1200..1230);
        let window = Visibility {
            query_positions: &queries,
            key_positions: &keys,
            window: Some(500),
            ..Default::default()
        };
        check(6, 2, 30, 400, 64, window);
        let sinks = Visibility {
            query_positions: &queries,
            key_positions: &keys,
            sinks_local: Some((4, 300)),
            ..Default::default()
        };
        check(6, 2, 30, 400, 64, sinks);
        let padding: Vec<bool> = (0..2 * 400).map(|i| i % 7 == 0 || i > 700).collect();
        let padded = Visibility {
            query_positions: &queries,
            key_positions: &keys,
            padding: Some(&padding),
            ..Default::default()
        };
        check(6, 2, 30, 400, 64, padded);
    }

    #[test]
    fn a_query_that_sees_nothing_gets_zeros() {
        let keys = iota(10..20);
        let queries = iota(0..4);
        let vis = Visibility {
            query_positions: &queries,
            key_positions: &keys,
            ..Default::default()
        };
        let data = vec![1f32; 10 * 8];
        let q = Heads::contiguous(&data[..4 * 8], 1, 4, 8);
        let k = Heads::contiguous(&data, 1, 10, 8);
        let mut out = vec![f32::NAN; 4 * 8];
        attention(q, k, k, 1.0, &vis, &mut out);
        assert!(out.iter().all(|x| *x == 0.0));
    }
}
