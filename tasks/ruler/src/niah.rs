//! RULER's needle-in-a-haystack family (`niah.py`): 8 configurations of haystack (noise
//! sentences, essays, or distractor needles), key and value types, and numbers of keys,
//! values and queries.

use rand::{rngs::StdRng, seq::IndexedRandom, seq::SliceRandom, Rng};

use longctx_core::Result;

use crate::{Generated, Generator, Haystack, NOISE};

const TEMPLATE: &str = "Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize it. I will quiz you about the {type_needle_v} afterwards.\n{context}\nWhat are all the special magic {type_needle_v} for {query} mentioned in the provided text?";
const ANSWER_PREFIX: &str =
    " The special magic {type_needle_v} for {query} mentioned in the provided text are";
const NEEDLE: &str = "One of the special magic {type_needle_v} for {key} is: {value}.";

/// What keys and values are made of.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    /// `adjective-noun` pairs from the wonderwords lists.
    Words,
    /// 7-digit numbers.
    Numbers,
    /// Version-4 UUIDs.
    Uuids,
}

impl Kind {
    fn plural(self) -> &'static str {
        match self {
            Kind::Words => "words",
            Kind::Numbers => "numbers",
            Kind::Uuids => "uuids",
        }
    }
}

/// One NIAH configuration (a row of RULER's `synthetic.yaml`).
#[derive(Clone, Copy, Debug)]
pub struct NiahConfig {
    pub haystack: Haystack,
    pub key: Kind,
    pub value: Kind,
    pub num_keys: usize,
    pub num_values: usize,
    pub num_queries: usize,
}

/// A NIAH generator with the data it draws from.
pub struct Niah {
    pub config: NiahConfig,
    /// `(adjectives, nouns)`; needed when keys or values are words.
    pub words: Option<(Vec<String>, Vec<String>)>,
    /// Essay words (whitespace-split), for the essay haystack.
    pub essay_words: Vec<String>,
}

/// RULER's 40 depths: `round(linspace(0, 100, 40))`.
fn depths() -> Vec<usize> {
    (0..40)
        .map(|i| (i as f64 * 100.0 / 39.0).round_ties_even() as usize)
        .collect()
}

/// A random version-4 UUID, as `uuid.UUID(int=random.getrandbits(128), version=4)`.
pub fn random_uuid(rng: &mut StdRng) -> String {
    let mut b: [u8; 16] = rng.random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

impl Niah {
    fn random(&self, kind: Kind, rng: &mut StdRng) -> String {
        match kind {
            Kind::Numbers => rng.random_range(1_000_000..=9_999_999u32).to_string(),
            Kind::Uuids => random_uuid(rng),
            Kind::Words => {
                let (adjs, nouns) = self
                    .words
                    .as_ref()
                    .expect("word lists loaded for word keys");
                format!(
                    "{}-{}",
                    adjs.choose(rng).expect("non-empty"),
                    nouns.choose(rng).expect("non-empty")
                )
            }
        }
    }

    fn needle(&self, key: &str, value: &str) -> String {
        NEEDLE
            .replace("{type_needle_v}", self.config.value.plural())
            .replace("{key}", key)
            .replace("{value}", value)
    }
}

impl Generator for Niah {
    fn tokens_to_generate(&self) -> usize {
        128
    }

    fn generate(&self, rng: &mut StdRng, size: usize, _index: usize) -> Result<Generated> {
        let c = &self.config;
        let num_keys = c.num_keys.max(c.num_queries);
        let (mut keys, mut values, mut needles) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..num_keys {
            let key = self.random(c.key, rng);
            let mut vs = Vec::new();
            for _ in 0..c.num_values {
                let v = self.random(c.value, rng);
                needles.push(self.needle(&key, &v));
                vs.push(v);
            }
            keys.push(key);
            values.push(vs);
        }
        needles.shuffle(rng);
        let context = match c.haystack {
            Haystack::Essay => {
                let text: Vec<&str> = (0..size)
                    .map(|i| self.essay_words[i % self.essay_words.len()].as_str())
                    .collect();
                let sents = crate::sentences::split_sentences(&text.join(" "));
                let mut at: Vec<usize> = depths()
                    .choose_multiple(rng, needles.len())
                    .map(|d| sents.len() * d / 100)
                    .collect();
                at.sort_unstable();
                let mut parts = Vec::new();
                let mut last = 0;
                for (pos, needle) in at.iter().zip(&needles) {
                    parts.push(sents[last..*pos].join(" "));
                    parts.push(needle.clone());
                    last = *pos;
                }
                parts.push(sents[last..].join(" "));
                parts.join(" ")
            }
            Haystack::Noise | Haystack::Needle => {
                let n = size.max(needles.len());
                let mut lines: Vec<String> = (0..n)
                    .map(|_| match c.haystack {
                        Haystack::Noise => NOISE.to_string(),
                        _ => {
                            let (k, v) = (self.random(c.key, rng), self.random(c.value, rng));
                            self.needle(&k, &v)
                        }
                    })
                    .collect();
                let mut at = rand::seq::index::sample(rng, n, needles.len()).into_vec();
                at.sort_unstable_by(|a, b| b.cmp(a));
                for (pos, needle) in at.into_iter().zip(&needles) {
                    lines.insert(pos, needle.clone());
                }
                lines.join("\n")
            }
        };
        let asked = rand::seq::index::sample(rng, num_keys, c.num_queries).into_vec();
        let queries: Vec<&str> = asked.iter().map(|&i| keys[i].as_str()).collect();
        let outputs: Vec<String> = asked.iter().flat_map(|&i| values[i].clone()).collect();
        let query = match queries.as_slice() {
            [one] => one.to_string(),
            [rest @ .., last] => format!("{}, and {last}", rest.join(", ")),
            [] => String::new(),
        };
        let mut template = format!("{TEMPLATE}{ANSWER_PREFIX}");
        let mut type_v = c.value.plural().to_string();
        if c.num_queries * c.num_values == 1 {
            template = template
                .replace("Some", "A")
                .replace("are all", "is")
                .replace("are", "is")
                .replace("answers", "answer");
            type_v.pop();
        }
        let template = template
            .replace("{type_needle_v}", &type_v)
            .replace("{query}", &query);
        let (instruction, rest) = template
            .split_once("{context}")
            .expect("template has a context");
        let cut = rest
            .rfind(" The special magic")
            .expect("template has an answer prefix");
        Ok(Generated {
            instruction: instruction.to_string(),
            context,
            question: rest[..cut].to_string(),
            answer_prefix: rest[cut..].to_string(),
            outputs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn uuids_have_version_4_and_the_rfc_variant() {
        let u = random_uuid(&mut StdRng::seed_from_u64(1));
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!("89ab".contains(&u[19..20]), "{u}");
        assert_eq!(depths()[..4], [0, 3, 5, 8]);
        assert_eq!(depths()[39], 100);
    }
}
