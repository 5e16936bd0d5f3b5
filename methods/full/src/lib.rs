//! `full`: the uncompressed KV cache, the baseline of every comparison.
//!
//! Keys and values are kept in preallocated device buffers that grow geometrically, so that a
//! decode step writes one slot instead of re-concatenating the whole cache.
//! [`KvCache::memory_bytes`] counts the allocated capacity, which is what the device holds.

use burn::tensor::{backend::Backend, Tensor};

use longctx_core::{
    tensor_util::tensor_bytes, AttentionLayerSpec, CacheContext, CompressionSchedule, KvCache,
    KvMethod, KvView, MethodCapabilities, MethodDescriptor, MethodFamily, ObservationNeeds,
    ParamSpec, Params, Result,
};
use longctx_cpu_kernels::flex::slice_assign;

/// The `full` method.
pub struct Full {
    initial_capacity: usize,
}

impl MethodDescriptor for Full {
    const NAME: &'static str = "full";
    const DESCRIPTION: &'static str = "Uncompressed KV cache (baseline)";

    fn params() -> Vec<ParamSpec> {
        vec![ParamSpec::int(
            "initial_capacity",
            256,
            "tokens preallocated per layer; the buffer doubles when full (0 = exactly the prompt)",
        )]
    }

    fn build<B: Backend>(params: &Params) -> Result<Box<dyn KvMethod<B>>> {
        Ok(Box::new(Full {
            initial_capacity: params.usize_at_least("initial_capacity", 0)?,
        }))
    }
}

impl<B: Backend> KvMethod<B> for Full {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn capabilities(&self) -> MethodCapabilities {
        MethodCapabilities {
            family: MethodFamily::Baseline,
            observes: ObservationNeeds::default(),
            observes_decode: ObservationNeeds::default(),
            schedule: CompressionSchedule::default(),
            uses_budget: false,
            compresses_question: true,
            exact_prefill: true,
        }
    }

    fn new_cache(
        &self,
        _layer: &AttentionLayerSpec,
        ctx: &CacheContext,
    ) -> Result<Box<dyn KvCache<B>>> {
        let capacity = if self.initial_capacity == 0 {
            ctx.prompt_tokens
        } else {
            self.initial_capacity
        };
        Ok(Box::new(FullCache::<B>::with_capacity(capacity)))
    }
}

/// Growable `[1, H_kv, capacity, D]` key and value buffers; the first `len` slots are valid.
pub struct FullCache<B: Backend> {
    keys: Option<Tensor<B, 4>>,
    values: Option<Tensor<B, 4>>,
    positions: Vec<usize>,
    min_capacity: usize,
}

impl<B: Backend> FullCache<B> {
    /// An empty cache that allocates at least `min_capacity` slots on first append.
    pub fn with_capacity(min_capacity: usize) -> Self {
        Self {
            keys: None,
            values: None,
            positions: Vec::new(),
            min_capacity,
        }
    }

    fn capacity(&self) -> usize {
        self.keys.as_ref().map_or(0, |k| k.dims()[2])
    }

    /// Moves the valid prefix into new buffers of `capacity` slots.
    fn grow(&mut self, like: &Tensor<B, 4>, capacity: usize) {
        let [b, h, _, d] = like.dims();
        let device = like.device();
        let len = self.positions.len();
        let fresh = |old: Option<Tensor<B, 4>>| {
            let buf = Tensor::<B, 4>::zeros([b, h, capacity, d], &device).cast(like.dtype());
            match old {
                Some(old) if len > 0 => slice_assign(
                    buf,
                    [0..b, 0..h, 0..len, 0..d],
                    old.slice([0..b, 0..h, 0..len, 0..d]),
                ),
                _ => buf,
            }
        };
        self.keys = Some(fresh(self.keys.take()));
        self.values = Some(fresh(self.values.take()));
    }
}

impl<B: Backend> KvCache<B> for FullCache<B> {
    fn append(
        &mut self,
        keys: Tensor<B, 4>,
        values: Tensor<B, 4>,
        positions: &[usize],
    ) -> Result<()> {
        let [b, h, t, d] = keys.dims();
        let len = self.positions.len();
        if len + t > self.capacity() {
            let capacity = (len + t).max(self.min_capacity).max(2 * self.capacity());
            self.grow(&keys, capacity);
        }
        // In place when nothing else holds the buffer (every decode step of a long prompt).
        let range = [0..b, 0..h, len..len + t, 0..d];
        self.keys = self
            .keys
            .take()
            .map(|k| slice_assign(k, range.clone(), keys));
        self.values = self.values.take().map(|v| slice_assign(v, range, values));
        self.positions.extend_from_slice(positions);
        Ok(())
    }

    fn view(&self) -> KvView<B> {
        let len = self.positions.len();
        let take = |t: &Option<Tensor<B, 4>>| {
            let t = t.as_ref().expect("view() of an empty cache: append first");
            let [b, h, _, d] = t.dims();
            t.clone().slice([0..b, 0..h, 0..len, 0..d])
        };
        KvView::dense(take(&self.keys), take(&self.values), self.positions.clone())
    }

    fn len(&self) -> usize {
        self.positions.len()
    }

    fn memory_bytes(&self) -> usize {
        self.keys.as_ref().map_or(0, tensor_bytes) + self.values.as_ref().map_or(0, tensor_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::TensorData;

    type B = Flex;

    fn kv(t: usize, start: f32) -> Tensor<B, 4> {
        let v: Vec<f32> = (0..2 * t * 4).map(|i| start + i as f32).collect();
        Tensor::from_data(TensorData::new(v, [1, 2, t, 4]), &Default::default())
    }

    #[test]
    fn appends_grow_and_view_returns_everything_in_order() {
        let mut cache = FullCache::<B>::with_capacity(4);
        cache.append(kv(3, 0.0), kv(3, 100.0), &[0, 1, 2]).unwrap();
        assert_eq!(cache.memory_bytes(), 2 * 2 * 4 * 4 * 4); // capacity 4, f32
        cache.append(kv(2, 50.0), kv(2, 150.0), &[3, 4]).unwrap();
        assert_eq!(cache.len(), 5);
        assert_eq!(cache.memory_bytes(), 2 * 2 * 8 * 4 * 4); // doubled to 8
        let view = cache.view();
        assert_eq!(view.positions, vec![0, 1, 2, 3, 4]);
        let expected = Tensor::cat(vec![kv(3, 0.0), kv(2, 50.0)], 2);
        view.keys.into_data().assert_eq(&expected.into_data(), true);
        let expected_v = Tensor::cat(vec![kv(3, 100.0), kv(2, 150.0)], 2);
        view.values
            .into_data()
            .assert_eq(&expected_v.into_data(), true);
    }
}
