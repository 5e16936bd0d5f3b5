//! LongBench's `metrics.py` (THUDM/LongBench, v1), English metrics, per (prediction, one
//! ground truth); the task takes the max over a sample's answers and the mean over samples.
//! Reference values in the tests and in `tasks/longbench/fixtures` come from the committed
//! script `tasks/longbench/scripts/reference_scores.py`, which calls the same pip packages the
//! official code does (`rouge`, `fuzzywuzzy` without python-Levenshtein).

use std::collections::HashMap;
use std::collections::HashSet;
use std::sync::LazyLock;

use regex::Regex;

use crate::difflib::SequenceMatcher;
use crate::{normalize_answer, python_split};

/// `f1_score(prediction_tokens, ground_truth_tokens)`: token-multiset F1.
pub fn token_f1(prediction: &[&str], ground_truth: &[&str]) -> f64 {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for t in ground_truth {
        *counts.entry(t).or_default() += 1;
    }
    let mut same = 0usize;
    for t in prediction {
        if let Some(c) = counts.get_mut(t).filter(|c| **c > 0) {
            *c -= 1;
            same += 1;
        }
    }
    if same == 0 {
        return 0.0;
    }
    let precision = same as f64 / prediction.len() as f64;
    let recall = same as f64 / ground_truth.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// `qa_f1_score`: token F1 after SQuAD normalisation.
pub fn qa_f1(prediction: &str, ground_truth: &str) -> f64 {
    let p = normalize_answer(prediction);
    let g = normalize_answer(ground_truth);
    token_f1(&python_split(&p), &python_split(&g))
}

/// The `rouge` package's sentence split: on `.`, empty pieces dropped, whitespace collapsed.
fn rouge_sentences(text: &str) -> Vec<String> {
    text.split('.')
        .filter(|s| !s.is_empty())
        .map(|s| python_split(s).join(" "))
        .collect()
}

/// The words of an LCS of `x` and `y` (split on single spaces), reconstructed with the
/// `rouge` package's tie-breaking (`_recon_lcs`): which words enter the union depends on it.
fn lcs_words<'a>(x: &[&'a str], y: &[&'a str]) -> Vec<&'a str> {
    let (n, m) = (x.len(), y.len());
    let mut table = vec![0u32; (n + 1) * (m + 1)];
    let at = |i: usize, j: usize| i * (m + 1) + j;
    for i in 1..=n {
        for j in 1..=m {
            table[at(i, j)] = if x[i - 1] == y[j - 1] {
                table[at(i - 1, j - 1)] + 1
            } else {
                table[at(i - 1, j)].max(table[at(i, j - 1)])
            };
        }
    }
    let (mut i, mut j) = (n, m);
    let mut out = Vec::new();
    while i > 0 && j > 0 {
        if x[i - 1] == y[j - 1] {
            out.push(x[i - 1]);
            i -= 1;
            j -= 1;
        } else if table[at(i - 1, j)] > table[at(i, j - 1)] {
            i -= 1;
        } else {
            j -= 1;
        }
    }
    out
}

/// `rouge_score`: `Rouge().get_scores([prediction], [ground_truth], avg=True)["rouge-l"]["f"]`
/// of the `rouge` package (summary-level ROUGE-L over `.`-separated sentences, words as sets),
/// 0.0 where the package raises (a side without any sentence, e.g. an empty prediction).
///
/// One divergence: the package reconstructs each LCS recursively, so a single pair of
/// sentences with more than about 1000 words together exceeds Python's recursion limit and
/// LongBench scores 0; here such pairs are scored normally.
pub fn rouge_l_f(prediction: &str, ground_truth: &str) -> f64 {
    let hyp = rouge_sentences(prediction);
    let refs = rouge_sentences(ground_truth);
    if hyp.is_empty() || refs.is_empty() {
        return 0.0;
    }
    let words = |sents: &[String]| -> HashSet<String> {
        sents
            .iter()
            .flat_map(|s| s.split(' ').map(str::to_string))
            .collect()
    };
    let m = words(&refs).len();
    let n = words(&hyp).len();
    let hyp_words: Vec<Vec<&str>> = hyp.iter().map(|s| s.split(' ').collect()).collect();
    let mut union: HashSet<&str> = HashSet::new();
    for r in &refs {
        let ref_words: Vec<&str> = r.split(' ').collect();
        for h in &hyp_words {
            union.extend(lcs_words(&ref_words, h));
        }
    }
    let llcs = union.len() as f64;
    let (r, p) = (llcs / m as f64, llcs / n as f64);
    2.0 * (p * r) / (p + r + 1e-8)
}

/// `classification_score`: the classes named in the prediction, less those that are part of
/// (but not equal to) the ground truth, with Python's skip-the-next-item quirk of removing
/// from a list while iterating over it; `1/len` if the ground truth is among them.
pub fn classification(prediction: &str, ground_truth: &str, all_classes: &[String]) -> f64 {
    let mut matched: Vec<&str> = all_classes
        .iter()
        .map(String::as_str)
        .filter(|c| prediction.contains(c))
        .collect();
    let mut i = 0;
    while i < matched.len() {
        let term = matched[i];
        if ground_truth.contains(term) && term != ground_truth {
            let first = matched.iter().position(|m| *m == term).expect("present");
            matched.remove(first);
        }
        i += 1;
    }
    if matched.contains(&ground_truth) {
        1.0 / matched.len() as f64
    } else {
        0.0
    }
}

static NUMBER: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\d+").expect("valid regex"));
static PARAGRAPH: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"Paragraph (\d+)").expect("valid regex"));

/// The fraction of the numbers in `prediction` equal to `target` (0 without numbers).
fn share_of_numbers_equal(prediction: &str, target: &str) -> f64 {
    let numbers: Vec<&str> = NUMBER.find_iter(prediction).map(|m| m.as_str()).collect();
    if numbers.is_empty() {
        return 0.0;
    }
    numbers.iter().filter(|n| **n == target).count() as f64 / numbers.len() as f64
}

/// The paragraph number in a `passage_retrieval_en` answer (`"Paragraph 12"` -> `"12"`);
/// `None` where LongBench's code would fail (no such pattern).
pub fn retrieval_target(ground_truth: &str) -> Option<&str> {
    PARAGRAPH
        .captures(ground_truth)
        .and_then(|c| c.get(1))
        .map(|m| m.as_str())
}

/// `retrieval_score`: share of the numbers in the prediction equal to the ground truth's
/// paragraph number (0.0 if the ground truth names none, where the original raises).
pub fn retrieval(prediction: &str, ground_truth: &str) -> f64 {
    retrieval_target(ground_truth)
        .map(|id| share_of_numbers_equal(prediction, id))
        .unwrap_or(0.0)
}

/// `count_score`: share of the numbers in the prediction equal to the ground truth.
pub fn count(prediction: &str, ground_truth: &str) -> f64 {
    share_of_numbers_equal(prediction, ground_truth)
}

/// fuzzywuzzy's `fuzz.ratio` without python-Levenshtein: equal strings 100, an empty one 0,
/// else `round(100 * difflib.SequenceMatcher(None, a, b).ratio())` with Python's round half
/// to even.
pub fn fuzz_ratio(a: &str, b: &str) -> u32 {
    if a == b {
        return 100;
    }
    if a.is_empty() || b.is_empty() {
        return 0;
    }
    (100.0 * SequenceMatcher::new(a, b, true).ratio()).round_ties_even() as u32
}

/// `code_sim_score`: the first line of the prediction (leading newlines dropped) without
/// `` ` ``, `#` or `//` (else the empty string), then `fuzz.ratio(line, ground_truth) / 100`.
pub fn code_sim(prediction: &str, ground_truth: &str) -> f64 {
    let line = prediction
        .trim_start_matches('\n')
        .split('\n')
        .find(|l| !l.contains('`') && !l.contains('#') && !l.contains("//"))
        .unwrap_or("");
    fuzz_ratio(line, ground_truth) as f64 / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values: the official functions run in Python 3.11 (see the module docs).
    #[test]
    fn qa_f1_counts_shared_tokens() {
        assert!((qa_f1("The Eiffel Tower, Paris", "Eiffel Tower") - 0.8).abs() < 1e-12);
        assert_eq!(qa_f1("no", "yes"), 0.0);
        assert_eq!(qa_f1("", "yes"), 0.0);
        // The article "a" is dropped: "b b c" against "b b b d".
        assert!((qa_f1("a b b c", "b b b d") - 0.5714285714285715).abs() < 1e-12);
    }

    #[test]
    fn classification_keeps_python_quirks() {
        let classes: Vec<String> = ["Abbreviation", "Abbreviation expansion", "Animal", "Color"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(classification("Animal", "Animal", &classes), 1.0);
        assert_eq!(classification("Animal or Color", "Animal", &classes), 0.5);
        // "Abbreviation" is part of the ground truth "Abbreviation expansion": removed.
        assert_eq!(
            classification("Abbreviation expansion", "Abbreviation expansion", &classes),
            1.0
        );
        assert_eq!(classification("Nothing", "Animal", &classes), 0.0);
    }

    #[test]
    fn retrieval_and_count_share_of_numbers() {
        assert_eq!(retrieval("Paragraph 12", "Paragraph 12"), 1.0);
        assert_eq!(retrieval("Paragraph 12 or 3", "Paragraph 12"), 0.5);
        assert_eq!(retrieval("none", "Paragraph 12"), 0.0);
        assert_eq!(retrieval_target("no paragraph"), None);
        assert!((count("3, 4, 3", "3") - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn fuzz_ratio_rounds_half_to_even() {
        // 2 * 1 / 16 = 0.125 -> 12.5 -> 12 (Python's round), not 13.
        assert_eq!(fuzz_ratio("abcdefgh", "aijklmno"), 12);
        assert_eq!(fuzz_ratio("", ""), 100);
        assert_eq!(fuzz_ratio("", "a"), 0);
        assert_eq!(code_sim("\n# comment\nx = 1\n", "x = 1"), 1.0);
        assert_eq!(code_sim("// only comments", "x = 1"), 0.0);
    }

    #[test]
    fn rouge_l_follows_the_rouge_package() {
        assert_eq!(rouge_l_f("", "a b"), 0.0);
        assert_eq!(rouge_l_f("...", "a b"), 0.0);
        let f = rouge_l_f("the cat sat on the mat", "the cat lay on the mat");
        // words: hyp {the,cat,sat,on,mat}=5, ref {the,cat,lay,on,mat}=5, union LCS {the,cat,on,mat}=4
        assert!((f - (2.0 * 0.8 * 0.8 / (1.6 + 1e-8))).abs() < 1e-12, "{f}");
    }
}
