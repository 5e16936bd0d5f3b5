//! RULER's common words extraction (`common_words_extraction.py`): a numbered list where 10
//! words repeat often and the rest rarely; the answer is the 10 common words. Words come from
//! the wonderwords nouns + adjectives + verbs (sorted, de-duplicated, shuffled by the seed).

use rand::{rngs::StdRng, seq::IndexedRandom, seq::SliceRandom};

use longctx_core::Result;

use crate::{Generated, Generator};

const INSTRUCTION: &str = "Below is a numbered list of words. In these words, some appear more often than others. Memorize the ones that appear most often.\n";
const QUESTION: &str = "\nQuestion: What are the 10 most common words in the above list?";
const ANSWER_PREFIX: &str = " Answer: The top 10 words that appear most often in the list are:";

/// The common words generator.
pub struct CommonWords {
    /// The shuffled vocabulary.
    pub words: Vec<String>,
    /// Below 4096 tokens RULER uses fewer repeats (6/1) and a smaller example (20 words at
    /// 3/1); otherwise 30/3 and a 40-word example at 10/3.
    pub short: bool,
    pub num_common: usize,
}

fn numbered(words: &[String]) -> String {
    words
        .iter()
        .enumerate()
        .map(|(i, w)| format!("{}. {w}", i + 1))
        .collect::<Vec<_>>()
        .join(" ")
}

impl CommonWords {
    /// `(numbered list, common words)` for `num_words` distinct words.
    fn example(
        &self,
        rng: &mut StdRng,
        num_words: usize,
        common: usize,
        uncommon: usize,
    ) -> (String, Vec<String>) {
        let num_words = num_words.clamp(self.num_common, self.words.len());
        let picked: Vec<String> = self
            .words
            .choose_multiple(rng, num_words)
            .cloned()
            .collect();
        let (top, rest) = picked.split_at(self.num_common);
        let mut list: Vec<String> = Vec::new();
        for _ in 0..common {
            list.extend(top.iter().cloned());
        }
        for _ in 0..uncommon {
            list.extend(rest.iter().cloned());
        }
        list.shuffle(rng);
        (numbered(&list), top.to_vec())
    }
}

impl Generator for CommonWords {
    fn tokens_to_generate(&self) -> usize {
        120
    }

    fn generate(&self, rng: &mut StdRng, size: usize, _index: usize) -> Result<Generated> {
        let ((ex_words, ex_c, ex_u), (c, u)) = if self.short {
            ((20, 3, 1), (6, 1))
        } else {
            ((40, 10, 3), (30, 3))
        };
        let (ex_list, ex_answer) = self.example(rng, ex_words, ex_c, ex_u);
        let (list, answer) = self.example(rng, size, c, u);
        let example = format!(
            "{INSTRUCTION}{ex_list}{QUESTION}{ANSWER_PREFIX} {}\n",
            numbered(&ex_answer)
        );
        Ok(Generated {
            instruction: format!("{example}{INSTRUCTION}"),
            context: list,
            question: QUESTION.to_string(),
            answer_prefix: ANSWER_PREFIX.to_string(),
            outputs: answer,
        })
    }
}
