//! A sentence splitter standing in for NLTK's `sent_tokenize` (Punkt), which RULER uses to
//! place needles between essay sentences. It ends a sentence after a word ending in `.`, `!`
//! or `?` (closing quotes and brackets allowed) unless the word is a common abbreviation or a
//! single letter (an initial). Punkt learns more abbreviations, so boundaries can differ on
//! rare words; needle placement only needs sentence boundaries, not Punkt's exact ones.

const ABBREVIATIONS: [&str; 16] = [
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "inc", "ltd",
    "co", "no",
];

fn ends_sentence(word: &str) -> bool {
    let core = word.trim_end_matches(['"', '\'', ')', ']', '\u{201d}', '\u{2019}']);
    let Some(last) = core.chars().last() else {
        return false;
    };
    if last == '!' || last == '?' {
        return true;
    }
    if last != '.' {
        return false;
    }
    let stem = core
        .trim_end_matches('.')
        .trim_start_matches(['"', '\'', '(', '[']);
    let lower = stem.to_lowercase();
    !(ABBREVIATIONS.contains(&lower.as_str()) || stem.chars().count() == 1)
}

/// Splits whitespace-normalised text into sentences (words joined by single spaces).
pub fn split_sentences(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Vec<&str> = Vec::new();
    for w in text.split_whitespace() {
        cur.push(w);
        if ends_sentence(w) {
            out.push(cur.join(" "));
            cur.clear();
        }
    }
    if !cur.is_empty() {
        out.push(cur.join(" "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_at_sentence_ends_not_abbreviations() {
        assert_eq!(
            split_sentences("Mr. Smith went home. He said \"hi!\" Then J. Doe left? Yes"),
            vec![
                "Mr. Smith went home.",
                "He said \"hi!\"",
                "Then J. Doe left?",
                "Yes"
            ]
        );
        assert!(split_sentences("  ").is_empty());
    }
}
