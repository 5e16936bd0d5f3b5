//! An append-only store of quantized tokens of one layer (keys or values).
//!
//! Codes, scales and minima live in preallocated device buffers that grow in steps of
//! [`GROWTH_TOKENS`] tokens: a decode step writes one slot instead of re-concatenating, and the
//! allocated-but-unused tail stays small (at most one step), so the bytes held stay close to
//! what the packing nominally takes.

use burn::tensor::{backend::Backend, FloatDType, Int, IntDType, Tensor};

use longctx_core::{tensor_util::tensor_bytes, Result};

use crate::quantizer::{QuantAxis, QuantizedChunk, Quantizer};

/// Buffers grow by this many tokens (rounded up to whole groups on the channel axis).
pub const GROWTH_TOKENS: usize = 128;

/// Quantized tokens `[0, len)` of one layer, `H` heads of `D` channels.
pub struct QuantStore<B: Backend> {
    quantizer: Quantizer,
    head_dim: usize,
    /// `[1, H, capacity, words]`.
    codes: Option<Tensor<B, 4, Int>>,
    /// Token axis `[1, H, capacity, D/group]`; channel axis `[1, H, capacity/group, D]`.
    scales: Option<Tensor<B, 4>>,
    mins: Option<Tensor<B, 4>>,
    len: usize,
}

impl<B: Backend> QuantStore<B> {
    /// An empty store for heads of `head_dim` channels.
    pub fn new(quantizer: Quantizer, head_dim: usize) -> Self {
        Self {
            quantizer,
            head_dim,
            codes: None,
            scales: None,
            mins: None,
            len: 0,
        }
    }

    /// Tokens held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The quantizer of this store.
    pub fn quantizer(&self) -> &Quantizer {
        &self.quantizer
    }

    fn capacity(&self) -> usize {
        self.codes.as_ref().map_or(0, |c| c.dims()[2])
    }

    /// Tokens per row of `scales`/`mins` (1 on the token axis, the group on the channel axis).
    fn tokens_per_param_row(&self) -> usize {
        match self.quantizer.spec.axis {
            QuantAxis::Token => 1,
            QuantAxis::Channel => self.quantizer.spec.group_size,
        }
    }

    /// Quantizes and appends `x`: `[1, H, T, D]` (on the channel axis `T` a multiple of the group).
    pub fn push(&mut self, x: Tensor<B, 4>) -> Result<()> {
        let t = x.dims()[2];
        if t == 0 {
            return Ok(());
        }
        let chunk = self.quantizer.quantize(x)?;
        if self.len + t > self.capacity() {
            self.grow(&chunk, self.len + t);
        }
        let rows = self.tokens_per_param_row();
        let (start, end) = (self.len, self.len + t);
        fn write<B: Backend, K: burn::tensor::BasicOps<B>>(
            buf: &mut Option<Tensor<B, 4, K>>,
            part: Tensor<B, 4, K>,
            from: usize,
            to: usize,
        ) {
            let b = buf.take().expect("buffer allocated by grow");
            let [o, h, _, w] = b.dims();
            *buf = Some(b.slice_assign([0..o, 0..h, from..to, 0..w], part));
        }
        write(&mut self.codes, chunk.codes, start, end);
        write(&mut self.scales, chunk.scales, start / rows, end / rows);
        if let Some(m) = chunk.mins {
            write(&mut self.mins, m, start / rows, end / rows);
        }
        self.len = end;
        Ok(())
    }

    /// Reallocates the buffers for at least `needed` tokens, keeping the valid prefix.
    fn grow(&mut self, like: &QuantizedChunk<B>, needed: usize) {
        let rows = self.tokens_per_param_row();
        let step = GROWTH_TOKENS.next_multiple_of(rows);
        let capacity = needed.next_multiple_of(step);
        let (len, len_rows) = (self.len, self.len / rows);
        // Fresh zero buffers of `slots` rows in the chunk's stored dtype, the valid prefix copied.
        fn keep<B: Backend, K: burn::tensor::BasicOps<B>>(
            buf: Tensor<B, 4, K>,
            old: Option<Tensor<B, 4, K>>,
            valid: usize,
        ) -> Tensor<B, 4, K> {
            let [o, h, _, w] = buf.dims();
            match old {
                Some(old) if valid > 0 => buf.slice_assign(
                    [0..o, 0..h, 0..valid, 0..w],
                    old.slice([0..o, 0..h, 0..valid, 0..w]),
                ),
                _ => buf,
            }
        }
        let int_buf = |like: &Tensor<B, 4, Int>, slots: usize| {
            let [o, h, _, w] = like.dims();
            Tensor::<B, 4, Int>::zeros([o, h, slots, w], &like.device())
                .cast(IntDType::from(like.dtype()))
        };
        let float_buf = |like: &Tensor<B, 4>, slots: usize| {
            let [o, h, _, w] = like.dims();
            Tensor::<B, 4>::zeros([o, h, slots, w], &like.device())
                .cast(FloatDType::from(like.dtype()))
        };
        self.codes = Some(keep(int_buf(&like.codes, capacity), self.codes.take(), len));
        self.scales = Some(keep(
            float_buf(&like.scales, capacity / rows),
            self.scales.take(),
            len_rows,
        ));
        if let Some(m) = &like.mins {
            self.mins = Some(keep(
                float_buf(m, capacity / rows),
                self.mins.take(),
                len_rows,
            ));
        }
    }
    /// The dequantized tokens `[1, H, len, D]` in `float_dtype`, or `None` when empty.
    pub fn dequantize(&self, float_dtype: FloatDType) -> Option<Tensor<B, 4>> {
        if self.len == 0 {
            return None;
        }
        let rows = self.tokens_per_param_row();
        let prefix = |t: &Tensor<B, 4>, n: usize| {
            let [o, h, _, w] = t.dims();
            t.clone().slice([0..o, 0..h, 0..n, 0..w])
        };
        let codes = self.codes.as_ref().expect("non-empty store has codes");
        let [o, h, _, w] = codes.dims();
        let chunk = QuantizedChunk {
            codes: codes.clone().slice([0..o, 0..h, 0..self.len, 0..w]),
            scales: prefix(self.scales.as_ref().expect("scales"), self.len / rows),
            mins: self.mins.as_ref().map(|m| prefix(m, self.len / rows)),
        };
        Some(
            self.quantizer
                .dequantize(&chunk, self.len, self.head_dim, float_dtype),
        )
    }

    /// The packed codes of the tokens held, `[1, H, len, words]`, or `None` when empty.
    pub fn codes(&self) -> Option<Tensor<B, 4, Int>> {
        let codes = self.codes.as_ref().filter(|_| self.len > 0)?;
        let [o, h, _, w] = codes.dims();
        Some(codes.clone().slice([0..o, 0..h, 0..self.len, 0..w]))
    }

    /// Bytes of the allocated buffers (capacity, element width as stored).
    pub fn memory_bytes(&self) -> usize {
        self.codes.as_ref().map_or(0, tensor_bytes_int)
            + self.scales.as_ref().map_or(0, tensor_bytes)
            + self.mins.as_ref().map_or(0, tensor_bytes)
    }
}

/// Bytes of an integer tensor: element count times its stored element size.
pub fn tensor_bytes_int<B: Backend, const D: usize>(t: &Tensor<B, D, Int>) -> usize {
    t.shape().num_elements() * t.dtype().size()
}
