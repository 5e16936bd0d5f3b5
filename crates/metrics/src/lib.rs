//! Answer-matching metrics with the semantics of the benchmarks' Python code.
//!
//! - here: SQuAD normalisation and the needle test's exact and partial match;
//! - [`difflib`]: Python's `difflib.SequenceMatcher` (matching blocks, `ratio`);
//! - [`longbench`]: LongBench's `metrics.py` (qa F1, Rouge-L, classification, retrieval,
//!   count, code similarity);
//! - [`ruler`]: RULER's `string_match_all` / `string_match_part`.

pub mod difflib;
pub mod longbench;
pub mod ruler;

/// ASCII punctuation as Python's `string.punctuation`.
const PUNCTUATION: &str = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";

/// Python's `str.isspace` (what `str.split()` splits on): Unicode whitespace plus the ASCII
/// information separators U+001C..U+001F, which Rust's `char::is_whitespace` leaves out.
pub fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `text.split()`: runs of whitespace separate words, no empty words.
pub fn python_split(text: &str) -> Vec<&str> {
    text.split(is_python_space)
        .filter(|w| !w.is_empty())
        .collect()
}

/// A character of Python's `\w` (Unicode word characters).
fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// SQuAD's `normalize_answer` (as in LongBench's and the needle test's code): lower-case,
/// drop `string.punctuation`, replace `\b(a|an|the)\b` with a space, collapse whitespace.
pub fn normalize_answer(text: &str) -> String {
    let no_punct: String = text
        .to_lowercase()
        .chars()
        .filter(|c| !PUNCTUATION.contains(*c))
        .collect();
    // `\b(a|an|the)\b` can only match a whole maximal run of word characters, so replace
    // runs that are exactly an article.
    let mut no_articles = String::with_capacity(no_punct.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if matches!(run.as_str(), "a" | "an" | "the") {
            out.push(' ');
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in no_punct.chars() {
        if is_word_char(c) {
            run.push(c);
        } else {
            flush(&mut run, &mut no_articles);
            no_articles.push(c);
        }
    }
    flush(&mut run, &mut no_articles);
    python_split(&no_articles).join(" ")
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
        // `\b` also separates non-ASCII punctuation, which `string.punctuation` keeps.
        assert_eq!(normalize_answer("the—end of a’s"), "—end of ’s");
        assert_eq!(normalize_answer("x\u{1f}an y"), "x y");
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
