use burn::tensor::{
    activation::softmax, backend::Backend, module::attention, ops::AttentionModuleOptions, Bool,
    Int, Tensor, TensorData,
};

use longctx_core::{KvView, ObservationNeeds};

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

/// Boolean mask `[1, 1, T, T_kv]`, `true` = masked: keys after the query, or outside the window.
fn position_mask<B: Backend>(
    view_positions: &[usize],
    query_positions: &[usize],
    window: Option<usize>,
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
    let mask = match window {
        // Visible iff q - w < k, i.e. masked iff k + w <= q.
        Some(w) => future.bool_or((k + w as i64).lower_equal(q)),
        None => future,
    };
    mask.reshape([1, 1, t, s])
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
pub fn attend<B: Backend>(
    queries: Tensor<B, 4>,
    query_positions: &[usize],
    view: &KvView<B>,
    window: Option<usize>,
    scale: f64,
    needs: ObservationNeeds,
) -> Attended<B> {
    let [_, n_q, t, d] = queries.dims();
    let n_kv = view.keys.dims()[1];
    let groups = n_q / n_kv;
    let device = queries.device();
    let plain =
        plain_causal(&view.positions, query_positions, window) && view.padding_mask.is_none();

    if !needs.attention_weights && plain {
        let options = AttentionModuleOptions {
            scale: Some(scale),
            softcap: None,
            is_causal: t > 1,
        };
        if t == 1 {
            // Decode: every key is visible; view the query-head groups as a batch of queries
            // per KV head instead of repeating the keys.
            let q = queries.reshape([1, n_kv, groups, d]);
            let out = attention(
                q,
                view.keys.clone(),
                view.values.clone(),
                None,
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
            output: attention(queries, k, v, None, None, options),
            weights: None,
        };
    }

    let s = view.len();
    let mut mask = position_mask::<B>(&view.positions, query_positions, window, &device)
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
            output: attention(queries, k, v, Some(mask), None, options),
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

#[cfg(test)]
mod tests {
    use super::*;

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
