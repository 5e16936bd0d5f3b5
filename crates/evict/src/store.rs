//! Keys and values of the kept tokens, with physical removal.

use burn::tensor::{backend::Backend, Int, Tensor, TensorData};

use longctx_core::{tensor_util::tensor_bytes, Error, Result};

use crate::select::Keep;

/// Keys/values `[1, H_kv, n, D]` holding exactly the `n` kept slots of each head (no spare
/// capacity: appends concatenate, evictions gather into fresh tensors of the kept size), and
/// the original position of every slot of every head (heads may keep different tokens).
pub struct DenseStore<B: Backend> {
    keys: Option<Tensor<B, 4>>,
    values: Option<Tensor<B, 4>>,
    /// `positions[h][j]`: original position of slot `j` of head `h`, ascending.
    positions: Vec<Vec<usize>>,
}

impl<B: Backend> Default for DenseStore<B> {
    fn default() -> Self {
        Self {
            keys: None,
            values: None,
            positions: Vec::new(),
        }
    }
}

impl<B: Backend> DenseStore<B> {
    /// Slots per head.
    pub fn len(&self) -> usize {
        self.positions.first().map_or(0, Vec::len)
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Original positions per head and slot.
    pub fn positions(&self) -> &[Vec<usize>] {
        &self.positions
    }

    /// The position of each slot as attention masks it: the newest over heads (exact for
    /// causal masking, since every held token precedes every later query).
    pub fn slot_positions(&self) -> Vec<usize> {
        (0..self.len())
            .map(|j| self.positions.iter().map(|p| p[j]).max().unwrap_or(0))
            .collect()
    }

    /// Keys `[1, H_kv, n, D]`.
    pub fn keys(&self) -> Option<&Tensor<B, 4>> {
        self.keys.as_ref()
    }

    /// Values `[1, H_kv, n, D]`.
    pub fn values(&self) -> Option<&Tensor<B, 4>> {
        self.values.as_ref()
    }

    /// Appends `keys`/`values` `[1, H_kv, T, D]` of tokens at `positions` to every head.
    pub fn append(&mut self, keys: Tensor<B, 4>, values: Tensor<B, 4>, positions: &[usize]) {
        let heads = keys.dims()[1];
        if self.positions.is_empty() {
            self.positions = vec![Vec::new(); heads];
        }
        for p in &mut self.positions {
            p.extend_from_slice(positions);
        }
        let cat = |old: Option<Tensor<B, 4>>, new: Tensor<B, 4>| match old {
            Some(old) => Tensor::cat(vec![old, new], 2),
            None => new,
        };
        self.keys = Some(cat(self.keys.take(), keys));
        self.values = Some(cat(self.values.take(), values));
    }

    /// Keeps the slots in `keep` (per head) and frees the rest: keys and values become new
    /// tensors `[1, H_kv, keep.count(), D]`.
    pub fn retain(&mut self, keep: &Keep) -> Result<()> {
        let len = self.len();
        keep.validate(len)?;
        if keep.per_head.len() != self.positions.len() {
            return Err(Error::Other(format!(
                "eviction keep list has {} heads, the store {}",
                keep.per_head.len(),
                self.positions.len()
            )));
        }
        let n = keep.count();
        if n == len {
            return Ok(());
        }
        let (Some(keys), Some(values)) = (self.keys.take(), self.values.take()) else {
            return Ok(());
        };
        let [b, h, _, d] = keys.dims();
        let flat: Vec<i64> = keep
            .per_head
            .iter()
            .flat_map(|slots| slots.iter().map(|&s| s as i64))
            .collect();
        let index =
            Tensor::<B, 4, Int>::from_data(TensorData::new(flat, [b, h, n, 1]), &keys.device())
                .expand([b, h, n, d]);
        self.keys = Some(keys.gather(2, index.clone()));
        self.values = Some(values.gather(2, index));
        for (p, slots) in self.positions.iter_mut().zip(&keep.per_head) {
            *p = slots.iter().map(|&s| p[s]).collect();
        }
        Ok(())
    }

    /// Bytes of the key and value tensors as allocated.
    pub fn memory_bytes(&self) -> usize {
        self.keys.as_ref().map_or(0, tensor_bytes) + self.values.as_ref().map_or(0, tensor_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    /// `[1, 2, n, 2]` whose entries encode `1000 * head + position`.
    fn encoded(positions: &[usize]) -> Tensor<Flex, 4> {
        let n = positions.len();
        let mut v = Vec::new();
        for h in 0..2 {
            for &p in positions {
                v.extend([(1000 * h + p) as f32; 2]);
            }
        }
        Tensor::from_data(TensorData::new(v, [1, 2, n, 2]), &Default::default())
    }

    #[test]
    fn retain_gathers_per_head_and_frees_memory() {
        let mut store = DenseStore::<Flex>::default();
        let pos: Vec<usize> = (0..6).collect();
        store.append(encoded(&pos[..4]), encoded(&pos[..4]), &pos[..4]);
        store.append(encoded(&pos[4..]), encoded(&pos[4..]), &pos[4..]);
        let before = store.memory_bytes();
        assert_eq!(before, 2 * 2 * 6 * 2 * 4);
        let keep = Keep {
            per_head: vec![vec![0, 2, 5], vec![1, 3, 4]],
        };
        store.retain(&keep).unwrap();
        assert_eq!(store.memory_bytes(), before / 2);
        assert_eq!(store.positions(), &[vec![0, 2, 5], vec![1, 3, 4]]);
        assert_eq!(store.slot_positions(), vec![1, 3, 5]);
        let keys: Vec<f32> = store.keys().unwrap().clone().into_data().to_vec().unwrap();
        let firsts: Vec<f32> = keys.iter().step_by(2).copied().collect();
        assert_eq!(firsts, vec![0.0, 2.0, 5.0, 1001.0, 1003.0, 1004.0]);
        assert!(store.retain(&Keep::shared(vec![0, 9], 2)).is_err());
    }
}
