//! Host top-k selection with protected sets.

use longctx_core::{Error, Result};

/// Slots to keep per KV head: ascending slot indices, the same count for every head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keep {
    pub per_head: Vec<Vec<usize>>,
}

impl Keep {
    /// Keep the same slots in each of `n_heads` heads.
    pub fn shared(slots: Vec<usize>, n_heads: usize) -> Self {
        Self {
            per_head: vec![slots; n_heads],
        }
    }

    /// Slots kept per head.
    pub fn count(&self) -> usize {
        self.per_head.first().map_or(0, Vec::len)
    }

    /// Checks that every head keeps the same number of distinct, ascending slots below `len`.
    pub fn validate(&self, len: usize) -> Result<()> {
        let count = self.count();
        for (h, slots) in self.per_head.iter().enumerate() {
            if slots.len() != count {
                return Err(Error::Other(format!(
                    "eviction keeps {} slots in head {h} but {count} in head 0; heads must keep equal counts",
                    slots.len()
                )));
            }
            if slots.windows(2).any(|w| w[0] >= w[1]) || slots.last().is_some_and(|&s| s >= len) {
                return Err(Error::Other(format!(
                    "eviction keep list of head {h} is not ascending and below {len}: {slots:?}"
                )));
            }
        }
        Ok(())
    }
}

/// Slots that are kept before any score is read: the first `sinks` and the last `recent`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Protect {
    pub sinks: usize,
    pub recent: usize,
}

/// Chooses `budget` of `len` slots for one head: the last `recent` slots first, then the first
/// `sinks`, then the highest `scores` among the rest (ties keep the older slot). Protected sets
/// shrink to fit a budget smaller than them (recent first). Returns ascending slot indices.
///
/// `scores` has one value per slot (higher keeps); it may be empty when the protected sets
/// fill the budget.
pub fn select_head(len: usize, budget: usize, protect: Protect, scores: &[f32]) -> Vec<usize> {
    if budget >= len {
        return (0..len).collect();
    }
    let recent = protect.recent.min(budget);
    let sinks = protect.sinks.min(budget - recent);
    let mut keep = vec![false; len];
    for k in keep.iter_mut().skip(len - recent) {
        *k = true;
    }
    for k in keep.iter_mut().take(sinks) {
        *k = true;
    }
    let rest = budget - recent - sinks;
    if rest > 0 {
        let mut candidates: Vec<usize> = (sinks..len - recent).collect();
        let score = |i: usize| scores.get(i).copied().unwrap_or(f32::NEG_INFINITY);
        // Descending score, NaN last, older first among equals: the same on every backend.
        candidates.sort_by(|&a, &b| {
            score(b)
                .partial_cmp(&score(a))
                .unwrap_or_else(|| score(a).is_nan().cmp(&score(b).is_nan()))
                .then(a.cmp(&b))
        });
        for &i in candidates.iter().take(rest) {
            keep[i] = true;
        }
    }
    (0..len).filter(|&i| keep[i]).collect()
}

/// [`select_head`] for every head: `scores[h]` are head `h`'s scores (may be empty).
pub fn select(len: usize, budget: usize, protect: Protect, scores: &[Vec<f32>]) -> Keep {
    Keep {
        per_head: scores
            .iter()
            .map(|s| select_head(len, budget, protect, s))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protected_slots_come_first_then_the_best_scores() {
        let scores = [0.0, 9.0, 1.0, 8.0, 2.0, 7.0, 3.0, 6.0];
        let p = Protect {
            sinks: 1,
            recent: 2,
        };
        // Sinks {0}, recent {6, 7}, then the best two of 1..6: slots 1 and 3.
        assert_eq!(select_head(8, 5, p, &scores), vec![0, 1, 3, 6, 7]);
        // A budget below the protected sets keeps the newest first.
        assert_eq!(select_head(8, 2, p, &scores), vec![6, 7]);
        assert_eq!(select_head(8, 3, p, &scores), vec![0, 6, 7]);
        // Nothing to evict.
        assert_eq!(select_head(4, 9, p, &scores), vec![0, 1, 2, 3]);
    }

    #[test]
    fn ties_keep_the_older_slot_and_nan_scores_go_last() {
        let scores = [1.0, 1.0, f32::NAN, 1.0];
        assert_eq!(select_head(4, 2, Protect::default(), &scores), vec![0, 1]);
        let scores = [f32::NAN, 0.5, 0.1, 0.2];
        assert_eq!(
            select_head(4, 3, Protect::default(), &scores),
            vec![1, 2, 3]
        );
    }

    #[test]
    fn keep_lists_are_validated() {
        assert!(Keep::shared(vec![0, 2], 2).validate(3).is_ok());
        assert!(Keep::shared(vec![2, 0], 1).validate(3).is_err());
        assert!(Keep::shared(vec![0, 3], 1).validate(3).is_err());
        let uneven = Keep {
            per_head: vec![vec![0], vec![0, 1]],
        };
        assert!(uneven.validate(3).is_err());
    }
}
