//! Answer-matching metrics with the semantics of the benchmark's Python code.

/// ASCII punctuation as Python's `string.punctuation`.
const PUNCTUATION: &str = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";

/// SQuAD's `normalize_answer`: lower-case, drop punctuation, drop the articles a/an/the,
/// collapse whitespace.
pub fn normalize_answer(text: &str) -> String {
    let lowered = text.to_lowercase();
    let no_punct: String = lowered
        .chars()
        .filter(|c| !PUNCTUATION.contains(*c))
        .collect();
    // Python's `re.sub(r"\b(a|an|the)\b", " ", s)` then `" ".join(s.split())`: splitting on
    // whitespace and dropping article words gives the same result.
    no_punct
        .split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// 1.0 if the normalised reference occurs in the normalised prediction, else 0.0
/// (the needle test's `exact_match`).
pub fn contains_match(reference: &str, prediction: &str) -> f64 {
    if normalize_answer(prediction).contains(&normalize_answer(reference)) {
        1.0
    } else {
        0.0
    }
}

/// Length of the longest common contiguous block of characters, as
/// `difflib.SequenceMatcher(None, a, b, autojunk=False).find_longest_match(...)` gives with
/// no junk: the longest common substring.
pub fn longest_common_block(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut best = 0;
    let mut prev = vec![0usize; b.len() + 1];
    let mut cur = vec![0usize; b.len() + 1];
    for &ca in &a {
        for (j, &cb) in b.iter().enumerate() {
            cur[j + 1] = if ca == cb { prev[j] + 1 } else { 0 };
            best = best.max(cur[j + 1]);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    best
}

/// The needle test's `partial_match`: longest common block over the reference length.
pub fn partial_match(reference: &str, prediction: &str) -> f64 {
    let n = reference.chars().count();
    if n == 0 {
        return 0.0;
    }
    longest_common_block(reference, prediction) as f64 / n as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_follows_squad() {
        assert_eq!(
            normalize_answer("The  Pass-Key, is: 0123!"),
            "passkey is 0123"
        );
        assert_eq!(normalize_answer("An apple a day"), "apple day");
        assert_eq!(normalize_answer("theater"), "theater");
    }

    #[test]
    fn contains_match_is_substring_after_normalisation() {
        assert_eq!(contains_match("4821", "The pass key is 4821."), 1.0);
        assert_eq!(contains_match("4821", "The pass key is 482."), 0.0);
    }

    #[test]
    fn partial_match_is_longest_block_over_reference_length() {
        // Values checked with Python's difflib.SequenceMatcher(autojunk=False).
        assert_eq!(longest_common_block("1234567", "xx12345yy67"), 5);
        assert!((partial_match("1234567", "34 is 1234") - 4.0 / 7.0).abs() < 1e-12);
        assert_eq!(partial_match("", "abc"), 0.0);
        assert_eq!(partial_match("abc", ""), 0.0);
    }
}
