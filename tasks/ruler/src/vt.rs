//! RULER's variable tracking (`variable_tracking.py`): a chain `VAR A = 12345`,
//! `VAR B = VAR A`, ... hidden in noise sentences; the answer is every variable holding the
//! value. A one-shot example (3-letter names, fitted to 500 tokens as RULER does) precedes
//! the task.

use std::collections::BTreeSet;

use rand::{rngs::StdRng, Rng};

use longctx_core::Result;

use crate::{Generated, Generator};

const INSTRUCTION: &str =
    "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n";
const QUESTION: &str =
    "\nQuestion: Find all variables that are assigned the value {query} in the text above.";
const ANSWER_PREFIX: &str = " Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables are assigned the value {query}, they are: ";
const NOISE_LINE: &str =
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.\n";

/// The variable tracking generator.
pub struct VariableTracking {
    pub num_chains: usize,
    pub num_hops: usize,
    /// The one-shot example (prompt, answer prefix and answer), prepended to every sample.
    pub example: String,
}

fn random_name(rng: &mut StdRng, letters: usize) -> String {
    (0..letters)
        .map(|_| char::from(b'A' + rng.random_range(0..26u8)))
        .collect()
}

/// One chain-in-noise prompt: `(parts, variables of the first chain)`.
fn chains_in_noise(
    rng: &mut StdRng,
    noises: usize,
    num_chains: usize,
    num_hops: usize,
    letters: usize,
) -> Generated {
    let mut names: Vec<String> = Vec::new();
    let mut seen = BTreeSet::new();
    while names.len() < num_chains * (num_hops + 1) {
        let n = random_name(rng, letters);
        if seen.insert(n.clone()) {
            names.push(n);
        }
    }
    let mut chains = Vec::new();
    for vars in names.chunks(num_hops + 1) {
        let mut chain = vec![format!(
            "VAR {} = {}",
            vars[0],
            rng.random_range(10000..99999u32)
        )];
        for j in 0..num_hops {
            chain.push(format!("VAR {} = VAR {} ", vars[j + 1], vars[j]));
        }
        chains.push(chain);
    }
    let mut sentences: Vec<String> = vec![NOISE_LINE.to_string(); noises];
    if sentences.len() <= chains[0].len() {
        // Too few noise lines: split them into sentences, as RULER does.
        sentences = sentences
            .iter()
            .flat_map(|s| s.split('.'))
            .map(|x| {
                if x.trim().is_empty() {
                    x.to_string()
                } else {
                    format!("{x}.")
                }
            })
            .collect();
    }
    for chain in &chains {
        let mut at =
            rand::seq::index::sample(rng, sentences.len(), chain.len().min(sentences.len()))
                .into_vec();
        at.sort_unstable();
        for (j, (pos, line)) in at.iter().zip(chain).enumerate() {
            sentences.insert(pos + j, line.clone());
        }
    }
    let context = sentences.join(" ").replace(". \n", ".\n");
    let value = chains[0][0]
        .rsplit('=')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    Generated {
        instruction: INSTRUCTION.to_string(),
        context,
        question: QUESTION.replace("{query}", &value),
        answer_prefix: ANSWER_PREFIX
            .replace("{num_v}", &(num_hops + 1).to_string())
            .replace("{query}", &value),
        outputs: names[..num_hops + 1].to_vec(),
    }
}

impl VariableTracking {
    /// The one-shot example: 3-letter names, at most 10 hops, noise lines added in steps of 5
    /// while the example with its answer stays within `example_tokens` tokens.
    pub fn one_shot(
        rng: &mut StdRng,
        num_chains: usize,
        num_hops: usize,
        example_tokens: usize,
        count_tokens: &mut dyn FnMut(&str) -> Result<usize>,
    ) -> Result<String> {
        let hops = num_hops.min(10);
        let render = |g: &Generated| format!("{} {}", g.prompt(), g.outputs.join(" "));
        let mut noises = 5;
        let mut example = render(&chains_in_noise(rng, noises, num_chains, hops, 3));
        loop {
            let next = render(&chains_in_noise(rng, noises + 5, num_chains, hops, 3));
            if count_tokens(&next)? > example_tokens {
                break;
            }
            noises += 5;
            example = next;
        }
        Ok(example)
    }
}

impl Generator for VariableTracking {
    fn tokens_to_generate(&self) -> usize {
        30
    }

    fn generate(&self, rng: &mut StdRng, size: usize, _index: usize) -> Result<Generated> {
        let mut g = chains_in_noise(rng, size, self.num_chains, self.num_hops, 5);
        // RULER puts the example before the task: ' ' + example + '\n\n' + '\n\n' + task.
        g.instruction = format!(" {}\n\n\n\n{}", self.example, g.instruction);
        Ok(g)
    }
}
