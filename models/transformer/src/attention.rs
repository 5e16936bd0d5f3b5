use burn::tensor::{
    activation::softmax, backend::Backend, module::attention, ops::AttentionModuleOptions, Bool,
    Int, Tensor, TensorData,
};

use longctx_core::{KvView, ObservationNeeds, ViewWindow};

/// The output of [`attend`]: the attention output and, if asked for, the softmax weights.
pub struct Attended<B: Backend> {
    /// `[1, H_q, T, D]`.
    pub output: Tensor<B, 4>,
    /// `[1, H_q, T, T_kv]`, present when `needs.attention_weights`.
    pub weights: Option<Tensor<B, 4>>,
}

/// Whether the view's entries are exactly "everything before the queries, then the queries"
/// and no entry falls outside a sliding window: then causal masking aligned at the bottom-right
/// corner is exact and no explicit mask is needed, which keeps the fused kernels.
fn plain_causal(
    view_positions: &[usize],
    query_positions: &[usize],
    window: Option<usize>,
) -> bool {
    let t = query_positions.len();
    let s = view_positions.len();
    if s < t || view_positions[s - t..] != *query_positions {
        return false;
    }
    if query_positions.windows(2).any(|w| w[1] != w[0] + 1) {
        return false;
    }
    let first_query = query_positions[0];
    if view_positions[..s - t].iter().any(|&p| p >= first_query) {
        return false;
    }
    match window {
        // The earliest key must still be inside the window of the last query.
        Some(w) => view_positions
            .iter()
            .min()
            .is_none_or(|&p| p + w > query_positions[t - 1]),
        None => true,
    }
}

/// Whether a view's sinks-plus-local pattern hides nothing from these queries: every entry
/// after the sinks is within `local` of the last query.
fn window_hides_nothing(
    view_positions: &[usize],
    query_positions: &[usize],
    view_window: Option<ViewWindow>,
) -> bool {
    let Some(w) = view_window else {
        return true;
    };
    let last_query = query_positions.iter().copied().max().unwrap_or(0);
    view_positions
        .iter()
        .skip(w.sinks)
        .min()
        .is_none_or(|&k| k + w.local > last_query)
}

/// Boolean mask `[1, 1, T, T_kv]`, `true` = masked: keys after the query, outside the layer's
/// sliding window, or hidden by the view's sinks-plus-local pattern.
fn position_mask<B: Backend>(
    view_positions: &[usize],
    query_positions: &[usize],
    window: Option<usize>,
    view_window: Option<ViewWindow>,
    device: &B::Device,
) -> Tensor<B, 4, Bool> {
    let t = query_positions.len();
    let s = view_positions.len();
    let to_int = |v: &[usize], shape: [usize; 2]| {
        Tensor::<B, 2, Int>::from_data(
            TensorData::new(v.iter().map(|&p| p as i64).collect::<Vec<_>>(), shape),
            device,
        )
    };
    let q = to_int(query_positions, [t, 1]);
    let k = to_int(view_positions, [1, s]);
    let future = k.clone().greater(q.clone());
    let mut mask = match window {
        // Visible iff q - w < k, i.e. masked iff k + w <= q.
        Some(w) => future.bool_or((k.clone() + w as i64).lower_equal(q.clone())),
        None => future,
    };
    if let Some(vw) = view_window {
        // Entries after the first `sinks` are visible only within `local` of the query.
        let index = Tensor::<B, 1, Int>::arange(0..s as i64, device).reshape([1, s]);
        let not_sink = index.greater_equal_elem(vw.sinks as i64);
        let distant = (k + vw.local as i64).lower_equal(q);
        mask = mask.bool_or(distant.bool_and(not_sink.expand([t, s])));
    }
    mask.reshape([1, 1, t, s])
}

/// The `scale` option for burn's `attention` on the unmasked paths: `None` for decode steps
/// (`T = 1`) when `scale` is the default `D^-0.5`, so burn's CubeCL backends (CUDA, WGPU) may
/// take their flash kernel, which they skip whenever a scale is given (falling back to about
/// twelve separate kernels). Prefills keep the explicit scale: on the H200 the flash kernel
/// made the 8,000-token causal prefill 5x slower (3.9k against 19.9k tokens/s,
/// `results/perf/smollm2-135m__cuda__nvidia-h200__flash-prefill.json`), and it aligns its
/// causal mask at the top-left corner where burn's fallback aligns it at the bottom-right.
fn flash_scale(scale: f64, head_dim: usize, t: usize) -> Option<f64> {
    let default = 1.0 / (head_dim as f64).sqrt();
    if t == 1 && scale == default {
        None
    } else {
        Some(scale)
    }
}

/// The most bytes one f32 score tensor `[1, H_q, rows, S]` of burn's (unfused) attention may
/// take before [`in_query_blocks`] splits the queries: 128 MiB, or `LONGCTX_SCORE_BLOCK_MIB`
/// (`0`: never split; for A/B runs). burn's fallback keeps a few such tensors alive at once,
/// and at 8,000 keys a 2,048-token chunk's is 590 MB for SmolLM2's 9 heads: the CUDA prefill
/// peaked at 8.4 GiB against 2.6 GiB at 2,048 tokens. WGPU binds at most 128 MiB per storage
/// buffer by default (lavapipe: "can't allocate buffer", a panic in cubecl), so a larger
/// score tensor could not be made there at all.
fn score_block_bytes() -> usize {
    static BYTES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *BYTES.get_or_init(|| {
        let mib = std::env::var("LONGCTX_SCORE_BLOCK_MIB")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(128);
        if mib == 0 {
            usize::MAX
        } else {
            mib << 20
        }
    })
}

/// burn's `attention` of `queries` `[1, H, T, D]` over `keys` / `values` `[1, H, S, D]`, in
/// blocks of query rows whose f32 scores `[1, H, rows, S]` stay within `budget` bytes; returns
/// `[1, H, T, D]`, the same as one call. `mask` `[1, H, T, S]` (`true` = hidden) is sliced per
/// block. With `options.is_causal` (bottom-right aligned: the queries are the last `T` of the
/// `S` keys) a block attends only to the keys up to its last query, so the blocks also skip
/// the scores every query of the block would mask.
fn in_query_blocks<B: Backend>(
    queries: Tensor<B, 4>,
    keys: Tensor<B, 4>,
    values: Tensor<B, 4>,
    mask: Option<Tensor<B, 4, Bool>>,
    options: AttentionModuleOptions,
    budget: usize,
) -> Tensor<B, 4> {
    let [_, h, t, d] = queries.dims();
    let s = keys.dims()[2];
    let score_bytes = h * t * s * size_of::<f32>();
    if score_bytes <= budget || t == 1 {
        return attention(queries, keys, values, mask, None, options);
    }
    // Equal blocks, so a prefill allocates few distinct score sizes.
    let blocks = score_bytes.div_ceil(budget).min(t);
    let rows = t.div_ceil(blocks);
    let outputs = (0..t)
        .step_by(rows)
        .map(|start| {
            let end = (start + rows).min(t);
            let seen = if options.is_causal { s - t + end } else { s };
            attention(
                queries.clone().slice([0..1, 0..h, start..end, 0..d]),
                keys.clone().slice([0..1, 0..h, 0..seen, 0..d]),
                values.clone().slice([0..1, 0..h, 0..seen, 0..d]),
                mask.clone()
                    .map(|m| m.slice([0..1, 0..h, start..end, 0..seen])),
                None,
                options,
            )
        })
        .collect();
    Tensor::cat(outputs, 2)
}

/// Repeats `[1, H_kv, S, D]` to `[1, H_kv * groups, S, D]` (grouped-query attention).
fn repeat_kv<B: Backend>(x: Tensor<B, 4>, groups: usize) -> Tensor<B, 4> {
    if groups == 1 {
        return x;
    }
    let [b, h, s, d] = x.dims();
    x.unsqueeze_dim::<5>(2)
        .expand([b, h, groups, s, d])
        .reshape([b, h * groups, s, d])
}

/// Scaled dot-product attention of `queries` `[1, H_q, T, D]` at `query_positions` over a
/// cache view, with causal and sliding-window masking derived from positions; scores are
/// multiplied by `scale` (usually `D^-0.5`).
///
/// Takes the fused backend kernel unless attention weights are needed or the view needs an
/// explicit mask; decode steps (`T = 1`) fold the query-head groups so keys are not repeated.
/// When only the last `n` rows of weights are asked for (`needs.weight_rows`), the output still
/// takes the fastest path and the weights are computed for those rows alone.
pub fn attend<B: Backend>(
    queries: Tensor<B, 4>,
    query_positions: &[usize],
    view: &KvView<B>,
    window: Option<usize>,
    scale: f64,
    needs: ObservationNeeds,
) -> Attended<B> {
    let [_, n_q, t, d] = queries.dims();
    if let (true, Some(rows)) = (needs.attention_weights, needs.weight_rows) {
        let rows = rows.clamp(1, t);
        let output = attend(
            queries.clone(),
            query_positions,
            view,
            window,
            scale,
            ObservationNeeds::default(),
        )
        .output;
        let last = queries.slice([0..1, 0..n_q, t - rows..t, 0..d]);
        let weights = attend(
            last,
            &query_positions[t - rows..],
            view,
            window,
            scale,
            ObservationNeeds::all_weights(),
        )
        .weights;
        return Attended { output, weights };
    }
    if !needs.attention_weights && longctx_cpu_kernels::flex::is_flex::<B>() {
        // burn's flex attention is single-threaded, scalar in its softmax and blind to causal
        // structure; the CPU kernel reads the cache in place and skips hidden tiles.
        let padding = view.padding_mask.as_ref().and_then(|p| {
            // `[1, H_kv, 1, S]` -> `[H_kv * S]`.
            p.clone().into_data().to_vec::<bool>().ok()
        });
        let visibility = longctx_cpu_kernels::Visibility {
            query_positions,
            key_positions: &view.positions,
            window,
            sinks_local: view.window.map(|w| (w.sinks, w.local)),
            padding: padding.as_deref(),
        };
        if view.padding_mask.is_none() || padding.is_some() {
            if let Some(output) = longctx_cpu_kernels::flex::flex_attention(
                &queries,
                &view.keys,
                &view.values,
                scale as f32,
                &visibility,
            ) {
                return Attended {
                    output,
                    weights: None,
                };
            }
        }
    }
    let n_kv = view.keys.dims()[1];
    let groups = n_q / n_kv;
    let device = queries.device();
    let causal_only = plain_causal(&view.positions, query_positions, window)
        && window_hides_nothing(&view.positions, query_positions, view.window);
    let plain = causal_only && view.padding_mask.is_none();
    // A decode step sees every held key, so a ragged (padded) view needs only its padding
    // masked and keeps the grouped decode kernel below.
    let padded_decode = t == 1 && causal_only;

    if !needs.attention_weights && (plain || padded_decode) {
        let options = AttentionModuleOptions {
            scale: flash_scale(scale, d, t),
            softcap: None,
            is_causal: t > 1,
        };
        if t == 1 {
            // Decode on burn's unfused GPU backends: one custom kernel instead of burn's
            // fallback (about twelve launches), reading the cache in place.
            if view.padding_mask.is_none() {
                if let Some(output) =
                    longctx_gpu_kernels::decode_attention(&queries, &view.keys, &view.values, scale)
                {
                    return Attended {
                        output,
                        weights: None,
                    };
                }
            }
            // Decode: every key is visible; view the query-head groups as a batch of queries
            // per KV head instead of repeating the keys.
            let q = queries.reshape([1, n_kv, groups, d]);
            let padding = view
                .padding_mask
                .as_ref()
                .map(|p| p.clone().expand([1, n_kv, groups, view.len()]));
            let out = attention(
                q,
                view.keys.clone(),
                view.values.clone(),
                padding,
                None,
                options,
            );
            return Attended {
                output: out.reshape([1, n_q, 1, d]),
                weights: None,
            };
        }
        let k = repeat_kv(view.keys.clone(), groups);
        let v = repeat_kv(view.values.clone(), groups);
        return Attended {
            output: in_query_blocks(queries, k, v, None, options, score_block_bytes()),
            weights: None,
        };
    }

    let s = view.len();
    if t == 1 && needs.attention_weights {
        return decode_with_weights(queries, query_positions, view, window, scale);
    }
    let mut mask = position_mask::<B>(
        &view.positions,
        query_positions,
        window,
        view.window,
        &device,
    )
    .expand([1, n_q, t, s]);
    if let Some(padding) = &view.padding_mask {
        let per_query_head = padding
            .clone()
            .unsqueeze_dim::<5>(2)
            .expand([1, n_kv, groups, 1, s])
            .reshape([1, n_q, 1, s])
            .expand([1, n_q, t, s]);
        mask = mask.bool_or(per_query_head);
    }
    let k = repeat_kv(view.keys.clone(), groups);
    let v = repeat_kv(view.values.clone(), groups);

    if !needs.attention_weights {
        let options = AttentionModuleOptions {
            scale: Some(scale),
            softcap: None,
            is_causal: false,
        };
        return Attended {
            output: in_query_blocks(queries, k, v, Some(mask), options, score_block_bytes()),
            weights: None,
        };
    }

    let scores = queries.matmul(k.swap_dims(2, 3)) * scale;
    let scores = scores.mask_fill(mask, f32::NEG_INFINITY);
    let weights = softmax(scores, 3);
    let output = weights.clone().matmul(v);
    Attended {
        output,
        weights: Some(weights),
    }
}

/// One decode query `[1, H_q, 1, D]` with its softmax weights, without repeating the keys: the
/// query heads of each KV head's group are a batch of queries against that head's keys (as the
/// fused decode path does). Repeating `[1, H_kv, S, D]` keys and values to `H_q` heads is a
/// strided copy that dominated H2O's and TOVA's decode steps on the CPU backends.
fn decode_with_weights<B: Backend>(
    queries: Tensor<B, 4>,
    query_positions: &[usize],
    view: &KvView<B>,
    window: Option<usize>,
    scale: f64,
) -> Attended<B> {
    let [_, n_q, _, d] = queries.dims();
    let n_kv = view.keys.dims()[1];
    let groups = n_q / n_kv;
    let s = view.len();
    let device = queries.device();
    let q = queries.reshape([1, n_kv, groups, d]);
    let scores = q.matmul(view.keys.clone().swap_dims(2, 3)) * scale; // [1, H_kv, G, S]
    let mut mask = position_mask::<B>(
        &view.positions,
        query_positions,
        window,
        view.window,
        &device,
    )
    .expand([1, n_kv, groups, s]);
    if let Some(padding) = &view.padding_mask {
        mask = mask.bool_or(padding.clone().expand([1, n_kv, groups, s]));
    }
    let weights = softmax(scores.mask_fill(mask, f32::NEG_INFINITY), 3);
    let output = weights.clone().matmul(view.values.clone()); // [1, H_kv, G, D]
    Attended {
        output: output.reshape([1, n_q, 1, d]),
        weights: Some(weights.reshape([1, n_q, 1, s])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_scale_is_left_to_the_backend_for_decode_steps_only() {
        assert_eq!(flash_scale(0.125, 64, 1), None);
        assert_eq!(flash_scale(0.125, 64, 900), Some(0.125)); // prefill keeps the fallback
        assert_eq!(flash_scale(0.0625, 64, 1), Some(0.0625)); // Gemma-style scalar
    }

    #[test]
    fn plain_causal_detects_standard_layouts() {
        assert!(plain_causal(&[0, 1, 2, 3], &[2, 3], None));
        assert!(plain_causal(&[0, 5, 9, 10], &[10], None)); // evicted middle keeps causality
        assert!(!plain_causal(&[0, 1, 2, 3], &[1, 2], None)); // queries not at the end
        assert!(!plain_causal(&[0, 1, 2, 3], &[3], Some(2))); // key 0 and 1 outside the window
        assert!(plain_causal(&[2, 3], &[3], Some(2)));
        assert!(!plain_causal(&[0, 1, 2], &[0, 1, 2], Some(2))); // query 2 must not see key 0
        assert!(plain_causal(&[0, 1, 2], &[0, 1, 2], Some(3)));
    }

    /// Query blocks within a small budget give one call's output: causal (queries the last
    /// 10 of 16 keys) and with an explicit mask.
    fn query_blocks_equal_one_call<B: Backend>(device: &B::Device) {
        use burn::tensor::{Distribution, ElementConversion};
        let [h, t, s, d] = [3, 10, 16, 4];
        let normal = Distribution::Normal(0.0, 1.0);
        let q = Tensor::<B, 4>::random([1, h, t, d], normal, device);
        let k = Tensor::<B, 4>::random([1, h, s, d], normal, device);
        let v = Tensor::<B, 4>::random([1, h, s, d], normal, device);
        let one_block = usize::MAX;
        // Half the scores: two blocks of five rows (few shapes: wgpu tunes each).
        let small = h * t * s * size_of::<f32>() / 2;
        let max_diff =
            |a: Tensor<B, 4>, b: Tensor<B, 4>| -> f32 { (a - b).abs().max().into_scalar().elem() };
        let causal = AttentionModuleOptions {
            scale: Some(0.3),
            softcap: None,
            is_causal: true,
        };
        let whole = in_query_blocks(q.clone(), k.clone(), v.clone(), None, causal, one_block);
        let blocked = in_query_blocks(q.clone(), k.clone(), v.clone(), None, causal, small);
        assert_eq!(blocked.dims(), [1, h, t, d]);
        assert!(max_diff(whole, blocked) < 1e-5);

        // Hide key j from query i when (i + j) % 3 == 0, except key 0 (no row fully hidden).
        let hidden: Vec<bool> = (0..h * t * s)
            .map(|x| {
                let (i, j) = ((x / s) % t, x % s);
                j > 0 && (i + j) % 3 == 0
            })
            .collect();
        let mask = Tensor::<B, 4, Bool>::from_data(TensorData::new(hidden, [1, h, t, s]), device);
        let masked = AttentionModuleOptions {
            is_causal: false,
            ..causal
        };
        let whole = in_query_blocks(
            q.clone(),
            k.clone(),
            v.clone(),
            Some(mask.clone()),
            masked,
            one_block,
        );
        let blocked = in_query_blocks(q, k, v, Some(mask), masked, small);
        assert!(max_diff(whole, blocked) < 1e-5);
    }

    #[test]
    fn query_blocks_equal_one_call_on_ndarray() {
        query_blocks_equal_one_call::<burn::backend::NdArray>(&Default::default());
    }

    #[test]
    fn query_blocks_equal_one_call_on_wgpu() {
        query_blocks_equal_one_call::<longctx_gpu_kernels::WgpuUnfused>(&Default::default());
    }
}
#[cfg(test)]
mod mask_tests {
    use super::*;
    #[test]
    fn window_mask_hides_future_and_distant_keys() {
        let m = position_mask::<burn::backend::Flex>(
            &[0, 1, 2, 3],
            &[0, 1, 2, 3],
            Some(2),
            None,
            &Default::default(),
        );
        let v: Vec<bool> = m.into_data().to_vec().unwrap();
        let expect = vec![
            false, true, true, true, //
            false, false, true, true, //
            true, false, false, true, //
            true, true, false, false,
        ];
        assert_eq!(v, expect);
    }
}

#[cfg(test)]
mod view_window_tests {
    use super::*;
    use burn::backend::Flex;

    /// Brute force: masked iff in the future, or after the sinks and at least `local` back.
    fn brute(view: &[usize], queries: &[usize], w: ViewWindow) -> Vec<bool> {
        let mut out = Vec::new();
        for &q in queries {
            for (i, &k) in view.iter().enumerate() {
                out.push(k > q || (i >= w.sinks && k + w.local <= q));
            }
        }
        out
    }

    #[test]
    fn sinks_and_local_window_mask_matches_brute_force() {
        let view: Vec<usize> = vec![0, 1, 5, 6, 7, 8, 9, 10, 11];
        let queries: Vec<usize> = vec![8, 9, 10, 11];
        let w = ViewWindow { sinks: 2, local: 3 };
        let m = position_mask::<Flex>(&view, &queries, None, Some(w), &Default::default());
        let got: Vec<bool> = m.into_data().to_vec().unwrap();
        assert_eq!(got, brute(&view, &queries, w));
        assert!(!window_hides_nothing(&view, &queries, Some(w)));
        assert!(window_hides_nothing(
            &view,
            &queries,
            Some(ViewWindow { sinks: 2, local: 7 })
        ));
    }

    /// A random decode query `[1, h_q, 1, d]` and keys/values `[1, h_kv, s, d]`.
    fn decode_inputs(h_q: usize, h_kv: usize, s: usize, d: usize) -> [Tensor<Flex, 4>; 3] {
        let normal = burn::tensor::Distribution::Normal(0.0, 1.0);
        let device = Default::default();
        [
            Tensor::random([1, h_q, 1, d], normal, &device),
            Tensor::random([1, h_kv, s, d], normal, &device),
            Tensor::random([1, h_kv, s, d], normal, &device),
        ]
    }

    #[test]
    fn decode_weights_without_repeated_keys_match_the_fused_output() {
        let [h_q, h_kv, s, d] = [6, 2, 9, 8];
        let [q, k, v] = decode_inputs(h_q, h_kv, s, d);
        let view = KvView::dense(k.clone(), v.clone(), (0..s).collect());
        let fused = attend(
            q.clone(),
            &[s - 1],
            &view,
            None,
            0.3,
            ObservationNeeds::default(),
        );
        let with = attend(
            q.clone(),
            &[s - 1],
            &view,
            None,
            0.3,
            ObservationNeeds::all_weights(),
        );
        let diff: f32 = (fused.output - with.output).abs().max().into_scalar();
        assert!(diff < 1e-5, "outputs differ by {diff}");
        // Reference weights: query head h attends with KV head h / (h_q / h_kv).
        let w: Vec<f32> = with.weights.unwrap().into_data().to_vec().unwrap();
        let qv: Vec<f32> = q.into_data().to_vec().unwrap();
        let kv: Vec<f32> = k.into_data().to_vec().unwrap();
        for h in 0..h_q {
            let g = h / (h_q / h_kv);
            let logits: Vec<f32> = (0..s)
                .map(|j| {
                    (0..d)
                        .map(|c| qv[h * d + c] * kv[(g * s + j) * d + c])
                        .sum::<f32>()
                        * 0.3
                })
                .collect();
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let z: f32 = logits.iter().map(|x| (x - max).exp()).sum();
            for j in 0..s {
                let want = (logits[j] - max).exp() / z;
                assert!((w[h * s + j] - want).abs() < 1e-5, "head {h} slot {j}");
            }
        }
    }

    #[test]
    fn a_padded_decode_step_keeps_the_grouped_kernel_and_matches_the_masked_path() {
        let device = Default::default();
        let [h_q, h_kv, s, d] = [6, 2, 9, 8];
        let [q, k, v] = decode_inputs(h_q, h_kv, s, d);
        // Head 0 holds all 9 slots, head 1 only the last 5 (right-aligned ragged heads).
        let pad: Vec<bool> = (0..2 * s).map(|i| i >= s && i < s + 4).collect();
        let mut view = KvView::dense(k, v, (0..s).collect());
        view.padding_mask = Some(Tensor::from_data(
            burn::tensor::TensorData::new(pad, [1, h_kv, 1, s]),
            &device,
        ));
        let fast = attend(
            q.clone(),
            &[s],
            &view,
            None,
            0.3,
            ObservationNeeds::default(),
        );
        let masked = attend(q, &[s], &view, None, 0.3, ObservationNeeds::all_weights());
        let diff: f32 = (fast.output - masked.output).abs().max().into_scalar();
        assert!(diff < 1e-5, "outputs differ by {diff}");
        let w: Vec<f32> = masked.weights.unwrap().into_data().to_vec().unwrap();
        // Query heads 3..6 use KV head 1, whose first 4 slots are padding.
        assert!(w[3 * s..3 * s + 4].iter().all(|&x| x == 0.0));
    }

    #[test]
    fn last_rows_weights_equal_the_last_rows_of_all_weights() {
        let device = Default::default();
        let [h_q, h_kv, t, d] = [4, 2, 7, 8];
        let q = Tensor::<Flex, 4>::random(
            [1, h_q, t, d],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        let k = Tensor::<Flex, 4>::random(
            [1, h_kv, t, d],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        let v = k.clone() * 0.5;
        let positions: Vec<usize> = (0..t).collect();
        let view = KvView::dense(k, v, positions.clone());
        let all = attend(
            q.clone(),
            &positions,
            &view,
            None,
            0.3,
            ObservationNeeds::all_weights(),
        );
        let last = attend(
            q,
            &positions,
            &view,
            None,
            0.3,
            ObservationNeeds::last_weights(3),
        );
        let all_w = all.weights.unwrap().slice([0..1, 0..h_q, t - 3..t, 0..t]);
        let diff: f32 = (all_w - last.weights.unwrap()).abs().max().into_scalar();
        assert!(diff < 1e-6, "weights differ by {diff}");
        let diff: f32 = (all.output - last.output).abs().max().into_scalar();
        assert!(diff < 1e-5, "outputs differ by {diff}");
    }
}
