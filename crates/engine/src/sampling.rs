use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// How the next token is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Sampling {
    /// Arg-max (the benchmark's setting).
    Greedy,
    /// Temperature sampling restricted to the smallest set of tokens whose probability reaches
    /// `top_p` (nucleus sampling), from a seeded generator.
    Sample {
        temperature: f64,
        top_p: f64,
        seed: u64,
    },
}

/// Draws tokens from host-side logits for [`Sampling::Sample`].
pub(crate) struct Sampler {
    temperature: f64,
    top_p: f64,
    rng: StdRng,
}

impl Sampler {
    pub(crate) fn new(temperature: f64, top_p: f64, seed: u64) -> Self {
        Self {
            temperature,
            top_p,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// Samples an index from `logits` (one row over the vocabulary).
    pub(crate) fn sample(&mut self, logits: &[f32]) -> u32 {
        let t = self.temperature.max(1e-6);
        let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let mut probs: Vec<(usize, f64)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i, ((l as f64 - max) / t).exp()))
            .collect();
        let total: f64 = probs.iter().map(|p| p.1).sum();
        probs.iter_mut().for_each(|p| p.1 /= total);
        probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut cumulative = 0.0;
        let mut keep = probs.len();
        for (i, p) in probs.iter().enumerate() {
            cumulative += p.1;
            if cumulative >= self.top_p {
                keep = i + 1;
                break;
            }
        }
        let kept = &probs[..keep];
        let mass: f64 = kept.iter().map(|p| p.1).sum();
        let mut r = self.rng.random::<f64>() * mass;
        for p in kept {
            if r < p.1 {
                return p.0 as u32;
            }
            r -= p.1;
        }
        kept[kept.len() - 1].0 as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_p_restricts_to_the_nucleus() {
        // Token 2 holds ~98% of the mass: with top_p 0.9 it is the only candidate.
        let logits = [0.0f32, 0.0, 5.0, 0.0];
        let mut s = Sampler::new(1.0, 0.9, 7);
        assert!((0..50).all(|_| s.sample(&logits) == 2));
    }

    #[test]
    fn same_seed_same_draws() {
        let logits = [1.0f32, 1.1, 0.9, 1.0, 1.2];
        let draw = |seed| {
            let mut s = Sampler::new(1.0, 1.0, seed);
            (0..20).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert!((0..5).any(|seed| draw(seed) != draw(seed + 1)));
    }
}
