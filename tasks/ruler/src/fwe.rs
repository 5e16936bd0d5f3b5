//! RULER's frequent words extraction (`freq_words_extraction.py`): "coded" 6-letter words
//! drawn with Zipf frequencies (`alpha = 2`); the most frequent is `...` noise, and the answer
//! is the next three.

use std::collections::BTreeSet;

use rand::{rngs::StdRng, seq::SliceRandom, Rng};

use longctx_core::Result;

use crate::{Generated, Generator};

const INSTRUCTION: &str = "Read the following coded text and track the frequency of each coded word. Find the three most frequently appeared coded words. ";
const QUESTION: &str = "\nQuestion: Do not provide any explanation. Please ignore the dots '....'. What are the three most frequently appeared words in the above coded text?";
const ANSWER_PREFIX: &str =
    " Answer: According to the coded text above, the three most frequently appeared words are:";

/// The frequent words generator.
pub struct FrequentWords {
    /// Vocabulary size: RULER's `max_seq_length // 50`.
    pub vocab_size: usize,
    pub alpha: f64,
}

/// Riemann zeta at `s > 1` (as `scipy.special.zeta(s)`), by direct sum plus the
/// Euler-Maclaurin tail.
pub fn zeta(s: f64) -> f64 {
    let n = 1000u32;
    let head: f64 = (1..n).map(|k| (k as f64).powf(-s)).sum();
    let nf = n as f64;
    head + nf.powf(1.0 - s) / (s - 1.0) + 0.5 * nf.powf(-s) + s * nf.powf(-s - 1.0) / 12.0
}

impl Generator for FrequentWords {
    fn tokens_to_generate(&self) -> usize {
        50
    }

    fn generate(&self, rng: &mut StdRng, size: usize, _index: usize) -> Result<Generated> {
        let mut set = BTreeSet::new();
        while set.len() < self.vocab_size.max(4) {
            let w: String = (0..6)
                .map(|_| char::from(b'a' + rng.random_range(0..26u8)))
                .collect();
            set.insert(w);
        }
        let mut vocab: Vec<String> = set.into_iter().collect();
        vocab.shuffle(rng);
        vocab[0] = "...".to_string();
        let z = zeta(self.alpha);
        let mut words: Vec<&str> = Vec::new();
        for (k, w) in vocab.iter().enumerate() {
            let count = (size as f64 * ((k + 1) as f64).powf(-self.alpha) / z) as usize;
            words.extend(std::iter::repeat_n(w.as_str(), count));
        }
        words.shuffle(rng);
        Ok(Generated {
            instruction: INSTRUCTION.to_string(),
            context: words.join(" "),
            question: QUESTION.to_string(),
            answer_prefix: ANSWER_PREFIX.to_string(),
            outputs: vocab[1..4].to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn zeta_of_two_is_pi_squared_over_six() {
        let z = super::zeta(2.0);
        assert!(
            (z - std::f64::consts::PI.powi(2) / 6.0).abs() < 1e-10,
            "{z}"
        );
    }
}
