//! Python's `difflib.SequenceMatcher` with `isjunk=None`, on `char` sequences (Python strings
//! are sequences of code points), including its "autojunk" heuristic: when the second sequence
//! has 200 or more items, items occurring more than `1 + len/100` times are "popular" and do
//! not seed matches (they can still extend one). Scores that depend on it (fuzzywuzzy's
//! `ratio`, hence LongBench's `code_sim`) need it reproduced exactly.

use std::collections::HashMap;

/// A matcher for sequences `a` and `b`.
pub struct SequenceMatcher {
    a: Vec<char>,
    b: Vec<char>,
    /// Positions of each non-popular item of `b`, ascending.
    b2j: HashMap<char, Vec<usize>>,
}

impl SequenceMatcher {
    /// `SequenceMatcher(None, a, b, autojunk=autojunk)`.
    pub fn new(a: &str, b: &str, autojunk: bool) -> Self {
        let a: Vec<char> = a.chars().collect();
        let b: Vec<char> = b.chars().collect();
        let mut b2j: HashMap<char, Vec<usize>> = HashMap::new();
        for (j, &c) in b.iter().enumerate() {
            b2j.entry(c).or_default().push(j);
        }
        if autojunk && b.len() >= 200 {
            let ntest = b.len() / 100 + 1;
            b2j.retain(|_, idxs| idxs.len() <= ntest);
        }
        Self { a, b, b2j }
    }

    /// `find_longest_match(alo, ahi, blo, bhi)`: `(i, j, size)` of the longest matching block
    /// in `a[alo..ahi]` and `b[blo..bhi]`, earliest in `a`, then earliest in `b`, extended
    /// over popular items as Python does.
    pub fn find_longest_match(
        &self,
        alo: usize,
        ahi: usize,
        blo: usize,
        bhi: usize,
    ) -> (usize, usize, usize) {
        let (a, b) = (&self.a, &self.b);
        let (mut besti, mut bestj, mut bestsize) = (alo, blo, 0usize);
        let mut j2len: HashMap<usize, usize> = HashMap::new();
        for (i, ai) in a.iter().enumerate().take(ahi).skip(alo) {
            let mut newj2len = HashMap::new();
            if let Some(js) = self.b2j.get(ai) {
                for &j in js {
                    if j < blo {
                        continue;
                    }
                    if j >= bhi {
                        break;
                    }
                    let k = j.checked_sub(1).and_then(|p| j2len.get(&p)).unwrap_or(&0) + 1;
                    newj2len.insert(j, k);
                    if k > bestsize {
                        besti = i + 1 - k;
                        bestj = j + 1 - k;
                        bestsize = k;
                    }
                }
            }
            j2len = newj2len;
        }
        // No item is junk (isjunk=None), so Python's extension over equal non-junk neighbours
        // is all there is; it reaches over popular items, even from an empty match.
        while besti > alo && bestj > blo && a[besti - 1] == b[bestj - 1] {
            besti -= 1;
            bestj -= 1;
            bestsize += 1;
        }
        while besti + bestsize < ahi
            && bestj + bestsize < bhi
            && a[besti + bestsize] == b[bestj + bestsize]
        {
            bestsize += 1;
        }
        (besti, bestj, bestsize)
    }

    /// Total size of `get_matching_blocks()`.
    pub fn matching_characters(&self) -> usize {
        let mut queue = vec![(0, self.a.len(), 0, self.b.len())];
        let mut total = 0;
        while let Some((alo, ahi, blo, bhi)) = queue.pop() {
            let (i, j, k) = self.find_longest_match(alo, ahi, blo, bhi);
            if k > 0 {
                total += k;
                if alo < i && blo < j {
                    queue.push((alo, i, blo, j));
                }
                if i + k < ahi && j + k < bhi {
                    queue.push((i + k, ahi, j + k, bhi));
                }
            }
        }
        total
    }

    /// `ratio()`: `2 * matches / (len(a) + len(b))`, 1.0 for two empty sequences.
    pub fn ratio(&self) -> f64 {
        let total = self.a.len() + self.b.len();
        if total == 0 {
            return 1.0;
        }
        2.0 * self.matching_characters() as f64 / total as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values printed by Python 3.11's difflib.

    #[test]
    fn ratio_matches_python() {
        let r = SequenceMatcher::new("abcd", "bcde", true).ratio();
        assert!((r - 0.75).abs() < 1e-12);
        let r = SequenceMatcher::new(
            "private Thread currentThread;",
            "private Thread thread;",
            true,
        )
        .ratio();
        assert!((r - 0.8627450980392157).abs() < 1e-12, "{r}");
        assert_eq!(SequenceMatcher::new("", "", true).ratio(), 1.0);
        assert_eq!(SequenceMatcher::new("a", "", true).ratio(), 0.0);
    }

    #[test]
    fn autojunk_changes_long_second_sequences_like_python() {
        // b has 200 items, so 'a' (199 > 3 times) is popular and cannot seed a match.
        let b = format!("{}b", "a".repeat(199));
        // The 'b' seeds, then the match extends back over the popular 'a's.
        let with = SequenceMatcher::new("aab", &b, true).ratio();
        assert!((with - 0.029556650246305417).abs() < 1e-12, "{with}");
        // Nothing seeds a match here, yet Python extends the empty match at (0, 0) over the
        // equal popular items: 2 * 2 / 202.
        let lone = SequenceMatcher::new("aa", &b, true).ratio();
        assert!((lone - 0.019801980198019802).abs() < 1e-12, "{lone}");
        // A code line against a long one, where autojunk lowers the ratio.
        let long = "    return self.value + other.value  # add the two values together, then return them to caller ".repeat(3);
        let short = "return self.value+other.value";
        let r = SequenceMatcher::new(short, &long, true).ratio();
        assert!((r - 0.11464968152866242).abs() < 1e-12, "{r}");
        let r = SequenceMatcher::new(short, &long, false).ratio();
        assert!((r - 0.18471337579617833).abs() < 1e-12, "{r}");
    }
}
