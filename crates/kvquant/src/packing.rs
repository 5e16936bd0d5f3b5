//! Bit-packing of small unsigned codes into integer words, as tensor ops on the device.
//!
//! A word holds `word_bits / bits` codes, code `j` in bits `[j*bits, (j+1)*bits)`. Words are
//! signed integers of the backend (32-bit where the backend can store them, else its native
//! width). When the top field reaches the sign bit (1, 2, 4 and 8 bits in 32-bit words), its
//! code is shifted in as the signed value `c - 2^bits` for `c >= 2^(bits-1)`: the bit pattern
//! is the same, but no shift or sum ever leaves the word's signed range (ndarray checks that).
//! Unpacking is an arithmetic right shift followed by a mask, exact for every field.

use burn::tensor::{backend::Backend, DType, Int, IntDType, Tensor, TensorData};

/// How codes of one bit width are laid out in the backend's integer words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WordLayout {
    /// Bits per code (1..=8).
    pub bits: usize,
    /// The word's integer type as the backend really stores it.
    pub word: IntDType,
}

impl WordLayout {
    /// The layout for `bits`-bit codes on backend `B`: 32-bit words if the backend supports
    /// `i32` tensors, else its default integer type (counted at that width everywhere).
    pub fn for_backend<B: Backend>(bits: usize, device: &B::Device) -> Self {
        let word = if B::supports_dtype(device, DType::I32) {
            IntDType::I32
        } else {
            Tensor::<B, 1, Int>::zeros([1], device).dtype().into()
        };
        Self { bits, word }
    }

    /// Bits in one word as stored.
    pub fn word_bits(&self) -> usize {
        DType::from(self.word).size() * 8
    }

    /// Bytes of one word as stored.
    pub fn word_bytes(&self) -> usize {
        DType::from(self.word).size()
    }

    /// Codes held by one word.
    pub fn codes_per_word(&self) -> usize {
        self.word_bits() / self.bits
    }

    /// Words needed for `n` codes.
    pub fn words_for(&self, n: usize) -> usize {
        n.div_ceil(self.codes_per_word())
    }

    /// Shift amounts `j * bits` for the codes of one word, shaped `[1, 1, 1, 1, codes_per_word]`.
    fn shifts<B: Backend>(&self, device: &B::Device) -> Tensor<B, 5, Int> {
        let c = self.codes_per_word();
        let shifts: Vec<i32> = (0..c).map(|j| (j * self.bits) as i32).collect();
        Tensor::<B, 1, Int>::from_data(TensorData::new(shifts, [c]), device)
            .cast(self.word)
            .reshape([1, 1, 1, 1, c])
    }

    /// Packs codes along the last axis.
    ///
    /// `codes`: `[a, b, c, n]` integers in `[0, 2^bits)`; returns `[a, b, c, words_for(n)]` words.
    /// A ragged tail is padded with zero codes.
    pub fn pack<B: Backend>(&self, codes: Tensor<B, 4, Int>) -> Tensor<B, 4, Int> {
        let [a, b, c, n] = codes.dims();
        let per_word = self.codes_per_word();
        let words = self.words_for(n);
        let device = codes.device();
        let mut codes = codes.cast(self.word);
        if words * per_word > n {
            let pad = Tensor::<B, 4, Int>::zeros([a, b, c, words * per_word - n], &device)
                .cast(self.word);
            codes = Tensor::cat(vec![codes, pad], 3);
        }
        let mut codes = codes.reshape([a, b, c, words, per_word]);
        if per_word * self.bits == self.word_bits() {
            // The top field holds the sign bit: store its codes `>= 2^(bits-1)` as
            // `c - 2^bits` (same bits in two's complement, no signed overflow).
            let top: Vec<i32> = (0..per_word)
                .map(|j| if j + 1 == per_word { 1 << self.bits } else { 0 })
                .collect();
            let top = Tensor::<B, 1, Int>::from_data(TensorData::new(top, [per_word]), &device)
                .cast(self.word)
                .reshape([1, 1, 1, 1, per_word])
                .expand([a, b, c, words, per_word]);
            let high = codes
                .clone()
                .greater_equal_elem(1 << (self.bits - 1))
                .int()
                .cast(self.word);
            codes = codes - high * top;
        }
        // Fields do not overlap, so their sum is their bitwise OR; every partial sum stays
        // within the signed word.
        codes
            .bitwise_left_shift(self.shifts::<B>(&device).expand([a, b, c, words, per_word]))
            .sum_dim(4)
            .reshape([a, b, c, words])
    }

    /// Unpacks the first `n` codes along the last axis.
    ///
    /// `words`: `[a, b, c, w]`; returns `[a, b, c, n]` codes in `[0, 2^bits)` (word dtype).
    pub fn unpack<B: Backend>(&self, words: Tensor<B, 4, Int>, n: usize) -> Tensor<B, 4, Int> {
        let [a, b, c, w] = words.dims();
        let per_word = self.codes_per_word();
        assert!(n <= w * per_word, "unpacking {n} codes from {w} words");
        let mask = Tensor::<B, 1, Int>::from_data(
            TensorData::new(vec![((1u32 << self.bits) - 1) as i32], [1]),
            &words.device(),
        )
        .cast(self.word)
        .reshape([1, 1, 1, 1, 1])
        .expand([a, b, c, w, per_word]);
        let shifts = self
            .shifts::<B>(&words.device())
            .expand([a, b, c, w, per_word]);
        let codes = words
            .unsqueeze_dim::<5>(4)
            .expand([a, b, c, w, per_word])
            .bitwise_right_shift(shifts)
            .bitwise_and(mask)
            .reshape([a, b, c, w * per_word]);
        if n == w * per_word {
            codes
        } else {
            codes.slice([0..a, 0..b, 0..c, 0..n])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    type B = Flex;

    #[test]
    fn layout_counts_words() {
        let l = WordLayout {
            bits: 2,
            word: IntDType::I32,
        };
        assert_eq!(l.codes_per_word(), 16);
        assert_eq!(l.words_for(64), 4);
        assert_eq!(l.words_for(65), 5);
        let l3 = WordLayout {
            bits: 3,
            word: IntDType::I32,
        };
        assert_eq!(l3.codes_per_word(), 10);
    }

    #[test]
    fn flex_stores_32_bit_words() {
        let l = WordLayout::for_backend::<B>(2, &Default::default());
        assert_eq!(l.word_bytes(), 4);
    }
}
