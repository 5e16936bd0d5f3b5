//! RULER's scoring (`scripts/eval/synthetic/constants.py` and `evaluate.py`), per sample in
//! `[0, 1]`; RULER reports the mean times 100.

use crate::is_python_space;

/// RULER's `postprocess_pred`: strip, turn control characters `\x00-\x1f` into newlines,
/// strip again.
pub fn postprocess(prediction: &str) -> String {
    let replaced: String = prediction
        .trim_matches(is_python_space)
        .chars()
        .map(|c| if c <= '\u{1f}' { '\n' } else { c })
        .collect();
    replaced.trim_matches(is_python_space).to_string()
}

fn contains_lower(prediction_lower: &str, reference: &str) -> bool {
    prediction_lower.contains(&reference.to_lowercase())
}

/// `string_match_all` for one sample: the fraction of references contained in the
/// (post-processed) prediction, case-insensitively.
pub fn string_match_all(prediction: &str, references: &[String]) -> f64 {
    if references.is_empty() {
        return 0.0;
    }
    let p = postprocess(prediction).to_lowercase();
    references.iter().filter(|r| contains_lower(&p, r)).count() as f64 / references.len() as f64
}

/// `string_match_part` for one sample: 1.0 if any reference is contained in the
/// (post-processed) prediction, case-insensitively.
pub fn string_match_part(prediction: &str, references: &[String]) -> f64 {
    let p = postprocess(prediction).to_lowercase();
    if references.iter().any(|r| contains_lower(&p, r)) {
        1.0
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(r: &[&str]) -> Vec<String> {
        r.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn match_all_and_part() {
        let r = refs(&["1234567", "Apple", "pear"]);
        assert!((string_match_all(" 1234567 and APPLE\x00", &r) - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(string_match_part("apple", &r), 1.0);
        assert_eq!(string_match_part("banana", &r), 0.0);
        assert_eq!(string_match_all("", &refs(&[])), 0.0);
        // Control characters become newlines, so a reference cannot match across them.
        assert_eq!(string_match_all("app\tle", &refs(&["app le"])), 0.0);
        assert_eq!(postprocess("\n a\x01b \t"), "a\nb");
    }
}
