//! InfLLM's per-layer cache: sinks and the local window on the device, past tokens in blocks in
//! host memory, the retrieved blocks loaded for each chunk or decode step.
//!
//! **What is held where.**
//! - `local` ([`DenseStore`], device): the recent tokens, keys as the model rotated them
//!   (original positions), plus the current forward's tokens until the next compression.
//! - `sinks` ([`DenseStore`], device): the first `n_init` tokens of the sequence, moved there
//!   when they leave the local window; keys un-rotated (pre-RoPE).
//! - `pending` (host, f32): tokens that left the local window after the sinks filled, until
//!   `block_size` of them form a block. Not attended (see the deviations below).
//! - `blocks` (host, burn `TensorData` in the model's element type): every block, keys
//!   un-rotated; `loaded` (device): the blocks retrieved for the current chunk or step, at most
//!   `topk` (InfLLM's LRU with `max_cached_block = topk`: a block retrieved again is not
//!   reloaded, the others are dropped from the device).
//! - `repr` (device, f32 `[n_blocks, H_q * D]`): each block's representative key per query
//!   head, as InfLLM's `block_k`.
//!
//! `memory_bytes` = sinks + local + loaded blocks + representative keys; `host_memory_bytes` =
//! every block (K and V) + the pending tokens. After each compression the device holds at most
//! `n_init + block_size * topk + n_local` tokens, [`KvCache::budget_tokens`].
//!
//! **Retrieval, as InfLLM's code** (`ContextManager.calc_block_topk`, `get_block_k`,
//! `append_global`): keys are expanded to the query heads; a block's representative key for
//! query head `h` is the mean of the `repr_topk` keys of `h`'s KV head with the highest
//! attention received from `h` (softmax weights summed over every query row) while in the local
//! window. A chunk's score for a block is `sum_h <q̄_h, r_h>`, where `q̄_h` is the chunk's mean
//! pre-RoPE query of head `h`, rotated at the single position `n_local - 1`
//! (`apply_rotary_pos_emb_one_angle(q, n_local)`), and `r_h` is un-rotated. One set of `topk`
//! blocks is chosen per layer, shared by all heads (InfLLM's default `perhead=False`). With at
//! most `topk` blocks, all are taken.
//!
//! **Positions.** The local window keeps the model's rotation (relative RoPE, exact). Sinks and
//! retrieved blocks are stored un-rotated and rotated, at each view, to one virtual position
//! `v = p0 - (n_local - 1)`, where `p0` is the first query position of the forward; they are
//! the view's "sinks" entries (`ViewWindow::sinks`), visible to every query without a distance
//! check. InfLLM rotates the query at one angle instead and leaves the keys at position 0, so
//! every query sees the distant memory at distance `n_local - 1`. Here the first query of a
//! chunk sees it at exactly that distance and the query `i` tokens later at `n_local - 1 + i`
//! (up to `exc_block_size - 1` more); a decode step (one query) is exact.
//!
//! **Deviations from InfLLM's code, on purpose.**
//! - Attention runs over `[sinks ; retrieved ; local]` only, so the attended tokens are exactly
//!   the budget. InfLLM's global pass also sees its "remainder" at the fixed distance: the
//!   tokens waiting to form a block (fewer than `block_size`) and, inside a chunk, the tokens
//!   that have slid out of a later query's window but not yet out of the chunk's. Here those
//!   are not attended until they are part of a retrieved block.
//! - Sinks are not scored or retrieved; they are always attended, as in InfLLM.
//! - Layers with their own sliding window are refused (the distant memory would fall outside
//!   it).

use std::collections::BTreeMap;

use burn::tensor::{backend::Backend, DType, FloatDType, Tensor, TensorData};

use longctx_core::{
    tensor_util::tensor_bytes, AttentionLayerSpec, AttentionObservation, CacheContext,
    CompressionPhase, Error, KvCache, KvView, Result, ViewWindow,
};
use longctx_evict::{DenseStore, Keep, LayerBudget};
use longctx_kvquant::KeyRotation;

use crate::{InfLlm, Split};

/// A block in host memory.
struct HostBlock {
    /// Un-rotated keys `[1, H_kv, block_size, D]`, the model's element type.
    keys: TensorData,
    /// Values `[1, H_kv, block_size, D]`.
    values: TensorData,
    positions: Vec<usize>,
}

/// A block loaded on the device.
struct Loaded<B: Backend> {
    keys: Tensor<B, 4>,
    values: Tensor<B, 4>,
}

/// Tokens that left the local window and wait (on the host) to fill a block.
#[derive(Default)]
struct Pending {
    /// Un-rotated keys per KV head, `n * D` each.
    keys: Vec<Vec<f32>>,
    /// Values per KV head, `n * D` each.
    values: Vec<Vec<f32>>,
    positions: Vec<usize>,
    /// Attention received in the local window, per query head (`n` each).
    scores: Vec<Vec<f32>>,
}

/// The resolved layout, fixed at the first append (when the element width is known).
struct Resolved<B: Backend> {
    /// `None`: unlimited budget, the cache behaves as `full`.
    split: Option<Split>,
    dtype: DType,
    device: B::Device,
}

/// One layer's InfLLM cache; see the module documentation.
pub struct InfLlmCache<B: Backend> {
    config: InfLlm,
    layer: AttentionLayerSpec,
    ctx: CacheContext,
    rotation: KeyRotation,
    resolved: Option<Resolved<B>>,
    sinks: DenseStore<B>,
    local: DenseStore<B>,
    /// `[H_q][local.len()]`: attention each local token received so far.
    local_scores: Vec<Vec<f32>>,
    pending: Pending,
    blocks: Vec<HostBlock>,
    /// Representative keys per block, `H_q * D` each (host copy, for inspection).
    repr_host: Vec<Vec<f32>>,
    /// The same on the device, f32 `[n_blocks, H_q * D]`.
    repr: Option<Tensor<B, 2>>,
    loaded: BTreeMap<usize, Loaded<B>>,
    loads: usize,
    /// First query position of the latest forward.
    first_query: usize,
}

impl<B: Backend> InfLlmCache<B> {
    /// The cache of `layer` under `ctx` (the budget is resolved at the first append).
    pub fn new(config: InfLlm, layer: &AttentionLayerSpec, ctx: &CacheContext) -> Result<Self> {
        let spec = layer.rope.as_ref().ok_or_else(|| {
            Error::InvalidInput(format!(
                "infllm: the distant memory is re-positioned with RoPE, and the model does not declare layer {}'s RoPE",
                layer.layer
            ))
        })?;
        if let Some(w) = layer.sliding_window {
            return Err(Error::InvalidInput(format!(
                "infllm: layer {} has its own sliding window of {w} tokens, outside which the retrieved blocks would be masked; not supported",
                layer.layer
            )));
        }
        let h_q = layer.n_query_heads;
        Ok(Self {
            rotation: KeyRotation::new(spec, layer.head_dim)?,
            config,
            layer: layer.clone(),
            ctx: ctx.clone(),
            resolved: None,
            sinks: DenseStore::default(),
            local: DenseStore::default(),
            local_scores: vec![Vec::new(); h_q],
            pending: Pending {
                keys: vec![Vec::new(); layer.n_kv_heads],
                values: vec![Vec::new(); layer.n_kv_heads],
                positions: Vec::new(),
                scores: vec![Vec::new(); h_q],
            },
            blocks: Vec::new(),
            repr_host: Vec::new(),
            repr: None,
            loaded: BTreeMap::new(),
            loads: 0,
            first_query: 0,
        })
    }

    /// The split of the resolved budget (`None`: unlimited, or nothing appended yet).
    pub fn split(&self) -> Option<Split> {
        self.resolved.as_ref().and_then(|r| r.split)
    }

    /// Blocks formed so far (all in host memory).
    pub fn n_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Original positions of the tokens of block `id`.
    pub fn block_positions(&self, id: usize) -> &[usize] {
        &self.blocks[id].positions
    }

    /// The blocks on the device now (retrieved for the latest chunk or step), ascending.
    pub fn loaded_blocks(&self) -> Vec<usize> {
        self.loaded.keys().copied().collect()
    }

    /// How many times a block was copied from host memory to the device.
    pub fn loads(&self) -> usize {
        self.loads
    }

    /// Tokens waiting on the host to form a block.
    pub fn pending_tokens(&self) -> usize {
        self.pending.positions.len()
    }

    /// Representative keys of each block, `[H_q * D]` (query head major), un-rotated.
    pub fn representative_keys(&self) -> &[Vec<f32>] {
        &self.repr_host
    }

    /// Tokens attended before the local window: sinks and loaded blocks.
    fn n_distant(&self) -> usize {
        self.sinks.len() + self.loaded.len() * self.config.block_size
    }

    /// The blocks the queries `[1, H_q, T, D]` (after RoPE, at `positions`) score highest.
    fn retrieve(&self, queries: &Tensor<B, 4>, positions: &[usize], split: Split) -> Vec<usize> {
        let n = self.blocks.len();
        let Some(repr) = self.repr.as_ref() else {
            return Vec::new();
        };
        if n <= split.topk {
            return (0..n).collect();
        }
        let [_, h_q, _, d] = queries.dims();
        let pre = self.rotation.unrotate(queries.clone(), positions);
        let mean = pre.cast(FloatDType::F32).mean_dim(2); // [1, H_q, 1, D]
        let angle = split.n_local.saturating_sub(1);
        let query = self.rotation.rotate(mean, &[angle]).reshape([1, h_q * d]);
        let scores: Vec<f32> = query
            .matmul(repr.clone().transpose()) // [1, n]
            .into_data()
            .convert::<f32>()
            .to_vec()
            .expect("f32 after convert");
        top_indices(&scores, split.topk)
    }

    /// Moves the oldest tokens beyond the local window to the sinks, then to the pending
    /// tokens, and forms blocks.
    fn spill(&mut self, split: Split) -> Result<()> {
        let len = self.local.len();
        if len <= split.n_local {
            return Ok(());
        }
        let m = len - split.n_local;
        let (heads, d) = (self.layer.n_kv_heads, self.layer.head_dim);
        let keys = self.local.keys().expect("held").clone();
        let values = self.local.values().expect("held").clone();
        let positions = self.local.slot_positions();
        let old_k = self
            .rotation
            .unrotate(keys.slice([0..1, 0..heads, 0..m, 0..d]), &positions[..m]);
        let old_v = values.slice([0..1, 0..heads, 0..m, 0..d]);
        let to_sinks = split.n_init.saturating_sub(self.sinks.len()).min(m);
        if to_sinks > 0 {
            self.sinks.append(
                old_k.clone().slice([0..1, 0..heads, 0..to_sinks, 0..d]),
                old_v.clone().slice([0..1, 0..heads, 0..to_sinks, 0..d]),
                &positions[..to_sinks],
            );
        }
        let rest = m - to_sinks;
        if rest > 0 {
            let host = |t: Tensor<B, 4>| -> Vec<f32> {
                t.slice([0..1, 0..heads, to_sinks..m, 0..d])
                    .into_data()
                    .convert::<f32>()
                    .to_vec()
                    .expect("f32 after convert")
            };
            let (k, v) = (host(old_k), host(old_v));
            for h in 0..heads {
                let span = h * rest * d..(h + 1) * rest * d;
                self.pending.keys[h].extend_from_slice(&k[span.clone()]);
                self.pending.values[h].extend_from_slice(&v[span]);
            }
            self.pending
                .positions
                .extend_from_slice(&positions[to_sinks..m]);
            for (p, s) in self.pending.scores.iter_mut().zip(&self.local_scores) {
                p.extend_from_slice(&s[to_sinks..m]);
            }
        }
        for s in &mut self.local_scores {
            s.drain(..m);
        }
        self.local
            .retain(&Keep::shared((m..len).collect(), heads))?;
        while self.pending.positions.len() >= self.config.block_size {
            self.form_block();
        }
        Ok(())
    }

    /// Turns the oldest `block_size` pending tokens into a host block and its representative
    /// keys.
    fn form_block(&mut self) {
        let Some(resolved) = self.resolved.as_ref() else {
            return;
        };
        let (bs, d) = (self.config.block_size, self.layer.head_dim);
        let (heads, h_q) = (self.layer.n_kv_heads, self.layer.n_query_heads);
        let groups = (h_q / heads).max(1);
        let mut keys = Vec::with_capacity(heads * bs * d);
        let mut values = Vec::with_capacity(heads * bs * d);
        for h in 0..heads {
            keys.extend(self.pending.keys[h].drain(..bs * d));
            values.extend(self.pending.values[h].drain(..bs * d));
        }
        let positions: Vec<usize> = self.pending.positions.drain(..bs).collect();
        let mut repr = Vec::with_capacity(h_q * d);
        for q in 0..h_q {
            let scores: Vec<f32> = self.pending.scores[q].drain(..bs).collect();
            let g = q / groups;
            let chosen = top_indices(&scores, self.config.repr_topk);
            let mut mean = vec![0.0f32; d];
            for &i in &chosen {
                let key = &keys[(g * bs + i) * d..(g * bs + i + 1) * d];
                for (m, k) in mean.iter_mut().zip(key) {
                    *m += k;
                }
            }
            repr.extend(mean.iter().map(|m| m / chosen.len().max(1) as f32));
        }
        let row = Tensor::<B, 2>::from_data(
            TensorData::new(repr.clone(), [1, h_q * d]),
            &resolved.device,
        )
        .cast(FloatDType::F32);
        self.repr = Some(match self.repr.take() {
            Some(old) => Tensor::cat(vec![old, row], 0),
            None => row,
        });
        self.repr_host.push(repr);
        let shape = [1, heads, bs, d];
        self.blocks.push(HostBlock {
            keys: TensorData::new(keys, shape).convert_dtype(resolved.dtype),
            values: TensorData::new(values, shape).convert_dtype(resolved.dtype),
            positions,
        });
    }

    /// Keeps exactly `chosen` on the device: drops the others, loads the missing ones.
    fn load(&mut self, chosen: &[usize]) {
        let Some(resolved) = self.resolved.as_ref() else {
            return;
        };
        self.loaded.retain(|id, _| chosen.contains(id));
        let dtype: FloatDType = resolved.dtype.into();
        for &id in chosen {
            if self.loaded.contains_key(&id) {
                continue;
            }
            let block = &self.blocks[id];
            let to_device = |data: &TensorData| {
                Tensor::<B, 4>::from_data(data.clone(), &resolved.device).cast(dtype)
            };
            self.loaded.insert(
                id,
                Loaded {
                    keys: to_device(&block.keys),
                    values: to_device(&block.values),
                },
            );
            self.loads += 1;
        }
    }
}

/// Indices of the `k` largest values, ascending; ties keep the lower index, NaN goes last.
fn top_indices(values: &[f32], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| {
        let (x, y) = (values[a], values[b]);
        match (x.is_nan(), y.is_nan()) {
            (true, true) => a.cmp(&b),
            (true, false) => std::cmp::Ordering::Greater,
            (false, true) => std::cmp::Ordering::Less,
            _ => y.total_cmp(&x).then(a.cmp(&b)),
        }
    });
    order.truncate(k);
    order.sort_unstable();
    order
}

impl<B: Backend> KvCache<B> for InfLlmCache<B> {
    /// `keys`, `values`: `[1, H_kv, T, D]`.
    fn append(
        &mut self,
        keys: Tensor<B, 4>,
        values: Tensor<B, 4>,
        positions: &[usize],
    ) -> Result<()> {
        if self.resolved.is_none() {
            let dtype = keys.dtype();
            let budget = LayerBudget::resolve(&self.ctx, &self.layer, dtype.size());
            self.resolved = Some(Resolved {
                split: budget.tokens().map(|t| self.config.split(t)),
                dtype,
                device: keys.device(),
            });
        }
        self.first_query = positions.first().copied().unwrap_or(0);
        for s in &mut self.local_scores {
            s.resize(s.len() + positions.len(), 0.0);
        }
        self.local.append(keys, values, positions);
        Ok(())
    }

    fn prepare(&mut self, queries: &Tensor<B, 4>, positions: &[usize]) -> Result<()> {
        let Some(split) = self.split() else {
            return Ok(());
        };
        if self.blocks.is_empty() {
            return Ok(());
        }
        let chosen = self.retrieve(queries, positions, split);
        self.load(&chosen);
        Ok(())
    }

    fn view(&self) -> KvView<B> {
        let local_k = self.local.keys().expect("view() before append").clone();
        let local_v = self.local.values().expect("view() before append").clone();
        let Some(split) = self.split() else {
            return KvView::dense(local_k, local_v, self.local.slot_positions());
        };
        let mut keys: Vec<Tensor<B, 4>> = self.sinks.keys().into_iter().cloned().collect();
        let mut values: Vec<Tensor<B, 4>> = self.sinks.values().into_iter().cloned().collect();
        for block in self.loaded.values() {
            keys.push(block.keys.clone());
            values.push(block.values.clone());
        }
        let n_distant = self.n_distant();
        let virtual_position = self
            .first_query
            .saturating_sub(split.n_local.saturating_sub(1));
        let mut positions = vec![virtual_position; n_distant];
        positions.extend(self.local.slot_positions());
        let (keys, values) = if keys.is_empty() {
            (local_k, local_v)
        } else {
            let distant = self
                .rotation
                .rotate(Tensor::cat(keys, 2), &positions[..n_distant]);
            (
                Tensor::cat(vec![distant, local_k], 2),
                Tensor::cat(vec![Tensor::cat(values, 2), local_v], 2),
            )
        };
        let mut view = KvView::dense(keys, values, positions);
        view.window = Some(ViewWindow {
            sinks: n_distant,
            local: split.n_local,
        });
        view
    }

    fn observe(&mut self, observation: AttentionObservation<B>) -> Result<()> {
        let (Some(weights), Some(_)) = (observation.weights, self.split()) else {
            return Ok(());
        };
        let [_, h_q, _, s] = weights.dims();
        let n_distant = self.n_distant();
        let n_local = self.local.len();
        if s != n_distant + n_local || h_q != self.local_scores.len() {
            return Err(Error::Other(format!(
                "infllm layer {}: attention weights over {s} entries for {h_q} heads, the view has {} entries for {} heads",
                self.layer.layer,
                n_distant + n_local,
                self.local_scores.len()
            )));
        }
        let sums: Vec<f32> = weights
            .sum_dim(2)
            .reshape([h_q, s])
            .into_data()
            .convert::<f32>()
            .to_vec()
            .expect("f32 after convert");
        for (h, scores) in self.local_scores.iter_mut().enumerate() {
            let row = &sums[h * s + n_distant..(h + 1) * s];
            for (acc, w) in scores.iter_mut().zip(row) {
                *acc += w;
            }
        }
        Ok(())
    }

    fn compress(&mut self, _phase: CompressionPhase) -> Result<()> {
        match self.split() {
            Some(split) => self.spill(split),
            None => Ok(()),
        }
    }

    fn len(&self) -> usize {
        self.n_distant() + self.local.len()
    }

    fn budget_tokens(&self) -> Option<usize> {
        self.split().map(|s| s.tokens())
    }

    fn held_positions(&self) -> Option<Vec<Vec<usize>>> {
        let mut held: Vec<usize> = self.sinks.slot_positions();
        for id in self.loaded.keys() {
            held.extend_from_slice(&self.blocks[*id].positions);
        }
        held.extend(self.local.slot_positions());
        Some(vec![held; self.layer.n_kv_heads])
    }

    fn memory_bytes(&self) -> usize {
        self.sinks.memory_bytes()
            + self.local.memory_bytes()
            + self
                .loaded
                .values()
                .map(|b| tensor_bytes(&b.keys) + tensor_bytes(&b.values))
                .sum::<usize>()
            + self.repr.as_ref().map_or(0, tensor_bytes)
    }

    fn host_memory_bytes(&self) -> usize {
        let blocks: usize = self
            .blocks
            .iter()
            .map(|b| b.keys.as_bytes().len() + b.values.as_bytes().len())
            .sum();
        let pending: usize = self
            .pending
            .keys
            .iter()
            .chain(&self.pending.values)
            .map(|v| v.len() * std::mem::size_of::<f32>())
            .sum();
        blocks + pending
    }
}
