//! `passkey`: a pass key hidden in repeated filler sentences, the synthetic retrieval test of
//! Mohtashami & Jaggi ("Landmark Attention", 2023). It needs no data files, so it is the task
//! every model and method is smoke-tested with; the paper's Paul Graham haystack is `niah`.
//!
//! Lengths are in the evaluated model's tokens: for each target length the number of filler
//! repetitions is the largest whose whole prompt (with BOS) fits.

use std::collections::BTreeMap;

use rand::{rngs::StdRng, Rng, SeedableRng};

use longctx_core::{Error, ParamSpec, Params, Result, Sample, Task, TaskDescriptor, TextTokenizer};
use longctx_metrics::{contains_match, partial_match};

const INSTRUCTION: &str = "There is an important info hidden inside a lot of irrelevant text. \
Find it and memorize it. I will quiz you about the important information there.\n";
const FILLER: &str =
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ";
const QUESTION: &str = "\nWhat is the pass key?";
const ANSWER_PREFIX: &str = " The pass key is";

/// The registered task.
pub struct Passkey;

/// A configured pass-key task.
#[derive(Clone, Debug)]
pub struct PasskeyTask {
    lengths: Vec<usize>,
    depths: Vec<f64>,
    iterations: usize,
    digits: usize,
    seed: u64,
    max_new_tokens: usize,
}

impl TaskDescriptor for Passkey {
    const NAME: &'static str = "passkey";
    const DESCRIPTION: &'static str =
        "Pass key hidden in repeated filler sentences (synthetic retrieval; no data files)";

    fn params() -> Vec<ParamSpec> {
        vec![
            ParamSpec::int_list(
                "lengths",
                &[256, 512],
                "prompt lengths in the model's tokens",
            ),
            ParamSpec::float_list("depths", &[0.0, 0.5, 1.0], "needle depths in [0, 1]"),
            ParamSpec::int("iterations", 1, "random keys per (length, depth) cell"),
            ParamSpec::int("digits", 5, "digits of the pass key"),
            ParamSpec::int("seed", 42, "seed of the keys"),
            ParamSpec::int("max_new_tokens", 16, "tokens to generate"),
        ]
    }

    fn build(params: &Params) -> Result<Box<dyn Task>> {
        let bad = |param: &str, reason: &str| Error::InvalidParam {
            owner: "task passkey".into(),
            param: param.into(),
            reason: reason.into(),
        };
        let lengths = params.int_list("lengths")?;
        if lengths.is_empty() || lengths.iter().any(|&l| l < 1) {
            return Err(bad("lengths", "give at least one positive length"));
        }
        let depths = params.float_list("depths")?;
        if depths.is_empty() || depths.iter().any(|d| !(0.0..=1.0).contains(d)) {
            return Err(bad("depths", "give at least one depth, each in [0, 1]"));
        }
        Ok(Box::new(PasskeyTask {
            lengths: lengths.into_iter().map(|l| l as usize).collect(),
            depths,
            iterations: params.usize_at_least("iterations", 1)?,
            digits: params.usize_at_least("digits", 1)?,
            seed: params.int("seed")? as u64,
            max_new_tokens: params.usize_at_least("max_new_tokens", 1)?,
        }))
    }
}

impl PasskeyTask {
    fn sample(&self, repetitions: usize, depth: f64, key: &str) -> (String, String) {
        let before = (repetitions as f64 * depth).round() as usize;
        let needle = format!("The pass key is {key}. Remember it. {key} is the pass key. ");
        let context = format!(
            "{}{needle}{}",
            FILLER.repeat(before),
            FILLER.repeat(repetitions - before)
        );
        (context, needle)
    }
}

impl Task for PasskeyTask {
    fn name(&self) -> &str {
        Passkey::NAME
    }

    fn samples(&self, tokenizer: &dyn TextTokenizer) -> Result<Vec<Sample>> {
        let key_for = |rng: &mut StdRng| {
            (0..self.digits)
                .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
                .collect::<String>()
        };
        let prompt_len = |reps: usize| -> Result<usize> {
            let (context, _) = self.sample(reps, 0.5, &"0".repeat(self.digits));
            Ok(tokenizer
                .encode(
                    &format!("{INSTRUCTION}{context}{QUESTION}{ANSWER_PREFIX}"),
                    true,
                )?
                .len())
        };
        let mut rng = StdRng::seed_from_u64(self.seed);
        let mut out = Vec::new();
        for &length in &self.lengths {
            // Largest repetition count whose prompt fits in `length` tokens.
            if prompt_len(0)? > length {
                return Err(Error::InvalidInput(format!(
                    "passkey: length {length} is shorter than the prompt without filler ({} tokens)",
                    prompt_len(0)?
                )));
            }
            let (mut lo, mut hi) = (0usize, 1usize);
            while prompt_len(hi)? <= length {
                lo = hi;
                hi *= 2;
            }
            while hi - lo > 1 {
                let mid = (lo + hi) / 2;
                if prompt_len(mid)? <= length {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            for &depth in &self.depths {
                for iteration in 0..self.iterations {
                    let key = key_for(&mut rng);
                    let (context, _) = self.sample(lo, depth, &key);
                    let mut metadata = BTreeMap::new();
                    metadata.insert("length".into(), length.into());
                    metadata.insert("depth".into(), depth.into());
                    metadata.insert("iteration".into(), iteration.into());
                    out.push(Sample {
                        id: format!("len{length}-depth{depth}-it{iteration}"),
                        instruction: INSTRUCTION.into(),
                        context,
                        question: QUESTION.into(),
                        answer_prefix: ANSWER_PREFIX.into(),
                        references: vec![key],
                        max_new_tokens: self.max_new_tokens,
                        chat_template: false,
                        metadata,
                        continuation: None,
                    });
                }
            }
        }
        Ok(out)
    }

    fn score(&self, sample: &Sample, prediction: &str) -> BTreeMap<String, f64> {
        let best = |f: fn(&str, &str) -> f64| {
            sample
                .references
                .iter()
                .map(|r| f(r, prediction))
                .fold(0.0, f64::max)
        };
        BTreeMap::from([
            ("exact_match".to_string(), best(contains_match)),
            ("partial_match".to_string(), best(partial_match)),
        ])
    }

    fn group_by(&self) -> Vec<&'static str> {
        vec!["length", "depth"]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use longctx_core::{ByteTokenizer, RawParams};

    fn task(given: &[(&str, &str)]) -> Box<dyn Task> {
        let raw: RawParams = given
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Passkey::build(&Params::resolve("task passkey", &Passkey::params(), &raw).unwrap()).unwrap()
    }

    #[test]
    fn samples_fit_their_length_and_hold_the_key_at_depth() {
        let t = task(&[
            ("lengths", "600,1200"),
            ("depths", "0,0.5,1"),
            ("iterations", "2"),
        ]);
        let samples = t.samples(&ByteTokenizer).unwrap();
        assert_eq!(samples.len(), 2 * 3 * 2);
        for s in &samples {
            let len = s.metadata["length"].as_u64().unwrap() as usize;
            let n = ByteTokenizer.encode(&s.prompt(), true).unwrap().len();
            // Fits, and one more filler sentence would not.
            assert!(
                n <= len && n + FILLER.len() > len,
                "{} tokens for length {len}",
                n
            );
            let key = &s.references[0];
            assert_eq!(key.len(), 5);
            let at = s.context.find(&format!("The pass key is {key}")).unwrap();
            let depth = s.metadata["depth"].as_f64().unwrap();
            let needle_len =
                format!("The pass key is {key}. Remember it. {key} is the pass key. ").len();
            let frac = at as f64 / (s.context.len() - needle_len) as f64;
            let reps = (s.context.len() - needle_len) / FILLER.len();
            assert!(
                (frac - depth).abs() <= 0.5 / reps as f64 + 1e-9,
                "needle at {frac}, depth {depth}"
            );
        }
        // Deterministic for a seed, different for another.
        assert_eq!(samples, t.samples(&ByteTokenizer).unwrap());
        let other = task(&[
            ("lengths", "600,1200"),
            ("depths", "0,0.5,1"),
            ("iterations", "2"),
            ("seed", "1"),
        ]);
        assert_ne!(
            samples[0].references,
            other.samples(&ByteTokenizer).unwrap()[0].references
        );
    }

    #[test]
    fn scores_exact_and_partial_match() {
        let t = task(&[]);
        let s = &t.samples(&ByteTokenizer).unwrap()[0];
        let key = s.references[0].clone();
        let hit = t.score(s, &format!(" {key}. Remember"));
        assert_eq!(hit["exact_match"], 1.0);
        assert_eq!(hit["partial_match"], 1.0);
        let half = t.score(s, &key[..2]);
        assert_eq!(half["exact_match"], 0.0);
        assert!((half["partial_match"] - 0.4).abs() < 1e-12);
    }

    #[test]
    fn too_short_a_length_is_an_error() {
        let err = task(&[("lengths", "10")])
            .samples(&ByteTokenizer)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("shorter than the prompt without filler"),
            "{err}"
        );
    }
}
