//! Token dropping: what every eviction method shares.
//!
//! - [`store::DenseStore`]: keys and values `[1, H_kv, n, D]` with the original position of
//!   every slot per head. Eviction gathers the kept slots into new tensors of exactly the kept
//!   size, so the memory is really freed and `memory_bytes()` drops at once.
//! - [`select::select`]: host top-k per head with protected sinks and a protected recent
//!   window; deterministic (ties keep the older token) so backends agree.
//! - [`cache::TopKCache`]: the generic "keep the top-k per head" cache. A method is a
//!   [`cache::Scorer`] plus a [`cache::TopKPolicy`] (budget, protected sets, when to compress,
//!   position handling), so H2O, SnapKV, PyramidKV, TOVA, KNorm and StreamingLLM are each a few
//!   dozen lines in their own crate.
//! - [`ragged::RaggedStore`]: a different number of tokens per KV head (Ada-KV), stored flat
//!   without padding and presented to attention right-aligned with a `padding_mask`;
//!   [`select::select_adaptive`] is Ada-KV's allocation of a layer's budget across its heads.
//! - [`method::EvictMethod`]: the `KvMethod` behind all of them; methods declare capabilities,
//!   the runner never names them.
//! - [`params`]: parameters every eviction method takes (`query_aware`).

pub mod cache;
pub mod method;
pub mod params;
pub mod ragged;
pub mod select;
pub mod store;
pub mod testing;

pub use cache::{LayerBudget, LayerPlan, PositionMode, Scorer, TopKCache, TopKPolicy};
pub use method::{EvictMethod, PolicyFactory};
pub use ragged::RaggedStore;
pub use select::{select, select_adaptive, Keep, Protect};
pub use store::DenseStore;

/// Sums attention weights `[1, H_q, R, S]` over rows and over the query heads of each KV head's
/// group, on the device, and reads the result back: `[H_kv][S]` on the host.
pub fn group_weight_sums<B: burn::tensor::backend::Backend>(
    weights: &burn::tensor::Tensor<B, 4>,
    n_kv_heads: usize,
) -> Vec<Vec<f32>> {
    let [_, h_q, _, s] = weights.dims();
    let groups = h_q / n_kv_heads;
    let summed = weights
        .clone()
        .sum_dim(2) // [1, H_q, 1, S]
        .reshape([n_kv_heads, groups, s])
        .sum_dim(1) // [H_kv, 1, S]
        .reshape([n_kv_heads, s]);
    let flat: Vec<f32> = summed
        .into_data()
        .convert::<f32>()
        .to_vec()
        .expect("f32 after convert");
    flat.chunks(s.max(1)).map(<[f32]>::to_vec).collect()
}
