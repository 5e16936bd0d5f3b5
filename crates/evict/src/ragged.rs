//! Keys and values with a different number of tokens per KV head (Ada-KV), really freed.

use burn::tensor::{backend::Backend, Bool, Int, Tensor, TensorData};

use longctx_core::{tensor_util::tensor_bytes, Error, KvView, Result};

use crate::select::Keep;
use crate::store::DenseStore;

/// Per-head token sets of different sizes.
///
/// Two parts:
/// - the compacted tokens of every head, `n_h` rows for head `h`, stored flat and head after
///   head as keys/values `[N, D]` with `N = sum_h n_h` (no padding is held);
/// - a [`DenseStore`] tail `[1, H_kv, t, D]` of the tokens appended since the last
///   [`RaggedStore::retain`], the same for every head (before the first one it holds
///   everything, so scorers read it as they read a [`crate::TopKCache`]'s store).
///
/// [`RaggedStore::view`] right-aligns the heads: head `h`'s compacted tokens take the last `n_h`
/// of `W = max_h n_h` slots, then the tail follows in the same slots for every head. So the
/// tokens appended later (a question processed after the compression, decode steps) sit at one
/// slot for all heads, and masking from one position per slot stays exactly causal.
pub struct RaggedStore<B: Backend> {
    keys: Option<Tensor<B, 2>>,
    values: Option<Tensor<B, 2>>,
    /// `positions[h]`: original positions of head `h`'s compacted tokens, ascending (empty
    /// before the first retain).
    positions: Vec<Vec<usize>>,
    tail: DenseStore<B>,
}

impl<B: Backend> Default for RaggedStore<B> {
    fn default() -> Self {
        Self {
            keys: None,
            values: None,
            positions: Vec::new(),
            tail: DenseStore::default(),
        }
    }
}

impl<B: Backend> RaggedStore<B> {
    /// The tokens appended since the last [`Self::retain`] (all of them before the first).
    pub fn tail(&self) -> &DenseStore<B> {
        &self.tail
    }

    /// Whether a [`Self::retain`] has compacted the heads (they may hold different counts).
    pub fn is_compacted(&self) -> bool {
        !self.positions.is_empty()
    }

    /// Tokens held per head.
    pub fn head_lens(&self) -> Vec<usize> {
        let heads = self.positions.len().max(self.tail.positions().len());
        (0..heads)
            .map(|h| self.positions.get(h).map_or(0, Vec::len) + self.tail.len())
            .collect()
    }

    /// Tokens held over all heads.
    pub fn total_tokens(&self) -> usize {
        self.head_lens().iter().sum()
    }

    /// Original positions per head and slot (compacted tokens, then the tail).
    pub fn positions(&self) -> Vec<Vec<usize>> {
        let tail = self.tail.positions();
        (0..self.head_lens().len())
            .map(|h| {
                let mut p = self.positions.get(h).cloned().unwrap_or_default();
                p.extend(tail.get(h).into_iter().flatten());
                p
            })
            .collect()
    }

    /// Appends `keys`/`values` `[1, H_kv, T, D]` of tokens at `positions` to every head.
    pub fn append(&mut self, keys: Tensor<B, 4>, values: Tensor<B, 4>, positions: &[usize]) {
        self.tail.append(keys, values, positions);
    }

    /// Keeps, per head, the slots in `keep.per_head[h]` (indices into that head's
    /// [`Self::positions`]; heads may keep different counts) and frees the rest: the kept
    /// tokens become new flat tensors `[sum_h kept_h, D]` and the tail empties.
    pub fn retain(&mut self, keep: &Keep) -> Result<()> {
        let lens = self.head_lens();
        keep.validate_each(&lens)?;
        let held: Vec<usize> = self.positions.iter().map(Vec::len).collect();
        let n_held: usize = held.iter().sum();
        let t = self.tail.len();
        // Rows of the source `[compacted; tail as [H * t, D]]` (both head-major).
        let mut rows = Vec::with_capacity(keep.total());
        let mut offset = 0;
        for (h, slots) in keep.per_head.iter().enumerate() {
            let n_h = held.get(h).copied().unwrap_or(0);
            rows.extend(slots.iter().map(|&s| {
                if s < n_h {
                    (offset + s) as i64
                } else {
                    (n_held + h * t + s - n_h) as i64
                }
            }));
            offset += n_h;
        }
        let all = self.positions();
        self.positions = keep
            .per_head
            .iter()
            .zip(&all)
            .map(|(slots, p)| slots.iter().map(|&s| p[s]).collect())
            .collect();
        let tail = std::mem::take(&mut self.tail);
        let source = |held: Option<Tensor<B, 2>>, tail: Option<&Tensor<B, 4>>| {
            let tail = tail.map(|x| {
                let [_, h, t, d] = x.dims();
                x.clone().reshape([h * t, d])
            });
            match (held, tail) {
                (Some(a), Some(b)) => Some(Tensor::cat(vec![a, b], 0)),
                (a, b) => a.or(b),
            }
        };
        let keys = source(self.keys.take(), tail.keys());
        let values = source(self.values.take(), tail.values());
        if rows.is_empty() {
            return Ok(());
        }
        let (Some(keys), Some(values)) = (keys, values) else {
            return Err(Error::Other(
                "ragged store: keep list given for an empty store".into(),
            ));
        };
        let index = Tensor::<B, 1, Int>::from_data(
            TensorData::new(rows.clone(), [rows.len()]),
            &keys.device(),
        );
        self.keys = Some(keys.select(0, index.clone()));
        self.values = Some(values.select(0, index));
        Ok(())
    }

    /// What attention runs over: keys and values `[1, H_kv, W + t, D]` with every head
    /// right-aligned to the widest (`W = max_h n_h` compacted tokens, then the `t` tail
    /// tokens); `padding_mask` `[1, H_kv, 1, W + t]` marks each head's first `W - n_h` slots
    /// (`None` when no head is shorter); a slot's position is the newest over the heads that
    /// hold a token there (exact for causal masking: every held token precedes every later
    /// query, and the tail is the same for all heads). The padded tensors are transient.
    /// `None` when nothing is held.
    pub fn view(&self) -> Option<KvView<B>> {
        let t = self.tail.len();
        let (Some(keys), Some(values)) = (&self.keys, &self.values) else {
            let (k, v) = (self.tail.keys()?, self.tail.values()?);
            return Some(KvView::dense(
                k.clone(),
                v.clone(),
                self.tail.slot_positions(),
            ));
        };
        let heads = self.positions.len();
        let w = self.positions.iter().map(Vec::len).max().unwrap_or(0);
        let mut index = Vec::with_capacity(heads * w);
        let mut masked = Vec::with_capacity(heads * (w + t));
        let mut positions = vec![0usize; w];
        let mut offset = 0;
        for p in &self.positions {
            let pad = w - p.len();
            for slot in 0..w {
                if slot < pad {
                    index.push(0); // any held row: the mask hides it
                    masked.push(true);
                } else {
                    index.push((offset + slot - pad) as i64);
                    masked.push(false);
                    positions[slot] = positions[slot].max(p[slot - pad]);
                }
            }
            masked.extend(std::iter::repeat_n(false, t));
            offset += p.len();
        }
        positions.extend(self.tail.slot_positions());
        let device = keys.device();
        let d = keys.dims()[1];
        let index = Tensor::<B, 1, Int>::from_data(TensorData::new(index, [heads * w]), &device);
        let pad = |flat: &Tensor<B, 2>, tail: Option<&Tensor<B, 4>>| {
            let padded = flat
                .clone()
                .select(0, index.clone())
                .reshape([1, heads, w, d]);
            match tail {
                Some(tail) => Tensor::cat(vec![padded, tail.clone()], 2),
                None => padded,
            }
        };
        let mut view = KvView::dense(
            pad(keys, self.tail.keys()),
            pad(values, self.tail.values()),
            positions,
        );
        if masked.iter().any(|&m| m) {
            view.padding_mask = Some(Tensor::<B, 4, Bool>::from_data(
                TensorData::new(masked, [1, heads, 1, w + t]),
                &device,
            ));
        }
        Some(view)
    }

    /// Bytes of the tensors held: the compacted tokens and the tail (never the padded view).
    pub fn memory_bytes(&self) -> usize {
        self.keys.as_ref().map_or(0, tensor_bytes)
            + self.values.as_ref().map_or(0, tensor_bytes)
            + self.tail.memory_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::encoded;
    use burn::backend::Flex;

    /// Bytes per token and head: keys and values of 2 f32 channels.
    const PER_HEAD_TOKEN: usize = 2 * 2 * 4;

    fn first_channel(t: Tensor<Flex, 4>) -> Vec<Vec<f32>> {
        let [_, h, n, d] = t.dims();
        let v: Vec<f32> = t.into_data().to_vec().unwrap();
        (0..h)
            .map(|head| (0..n).map(|j| v[(head * n + j) * d]).collect())
            .collect()
    }

    fn mask(view: &KvView<Flex>) -> Vec<bool> {
        view.padding_mask
            .clone()
            .expect("padded")
            .into_data()
            .to_vec()
            .unwrap()
    }

    #[test]
    fn retain_keeps_ragged_heads_and_frees_the_rest() {
        let device = Default::default();
        let mut store = RaggedStore::<Flex>::default();
        let pos: Vec<usize> = (0..6).collect();
        let kv = encoded::<Flex>(2, 2, &pos, &device);
        store.append(kv.clone(), kv, &pos);
        assert!(!store.is_compacted());
        assert_eq!(store.memory_bytes(), 2 * 6 * PER_HEAD_TOKEN);
        assert!(store.view().unwrap().padding_mask.is_none());

        let keep = Keep {
            per_head: vec![vec![0, 2, 5], vec![4]],
        };
        store.retain(&keep).unwrap();
        assert!(store.is_compacted());
        assert_eq!(store.head_lens(), vec![3, 1]);
        assert_eq!(store.memory_bytes(), 4 * PER_HEAD_TOKEN);
        assert_eq!(store.positions(), vec![vec![0, 2, 5], vec![4]]);

        // Right-aligned: head 1's one token in the last slot, two padded slots before it.
        let view = store.view().unwrap();
        assert_eq!(view.keys.dims(), [1, 2, 3, 2]);
        assert_eq!(view.positions, vec![0, 2, 5]);
        assert_eq!(mask(&view), vec![false, false, false, true, true, false]);
        let values = first_channel(view.values);
        assert_eq!(values[0], vec![0.0, 2.0, 5.0]);
        assert_eq!(values[1][2], 1004.0);

        // A later token goes to every head, in one slot for all.
        let kv = encoded::<Flex>(2, 2, &[6], &device);
        store.append(kv.clone(), kv, &[6]);
        assert_eq!(store.head_lens(), vec![4, 2]);
        assert_eq!(store.memory_bytes(), 6 * PER_HEAD_TOKEN);
        let view = store.view().unwrap();
        assert_eq!(view.positions, vec![0, 2, 5, 6]);
        assert_eq!(
            mask(&view),
            vec![false, false, false, false, true, true, false, false]
        );
        let keys = first_channel(view.keys);
        assert_eq!(keys[0], vec![0.0, 2.0, 5.0, 6.0]);
        assert_eq!(keys[1][2..], [1004.0, 1006.0]);

        // Compacting again mixes compacted and tail slots.
        let keep = Keep {
            per_head: vec![vec![1, 3], vec![0, 1]],
        };
        store.retain(&keep).unwrap();
        assert_eq!(store.positions(), vec![vec![2, 6], vec![4, 6]]);
        assert_eq!(store.memory_bytes(), 4 * PER_HEAD_TOKEN);
        let view = store.view().unwrap();
        assert!(view.padding_mask.is_none(), "equal lengths need no mask");
        assert_eq!(
            first_channel(view.keys),
            vec![vec![2.0, 6.0], vec![1004.0, 1006.0]]
        );

        assert!(store.retain(&Keep::shared(vec![0, 9], 2)).is_err());
    }
}
