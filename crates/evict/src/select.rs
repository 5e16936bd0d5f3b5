//! Host top-k selection with protected sets.

use std::cmp::Ordering;

use longctx_core::{Error, Result};

/// Slots to keep per KV head: ascending slot indices, the same count for every head (a
/// [`crate::RaggedStore`] also takes different counts, see [`select_adaptive`]).
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

    /// Slots kept over all heads.
    pub fn total(&self) -> usize {
        self.per_head.iter().map(Vec::len).sum()
    }

    /// Checks that every head keeps the same number of distinct, ascending slots below `len`.
    pub fn validate(&self, len: usize) -> Result<()> {
        let count = self.count();
        if let Some((h, slots)) = self
            .per_head
            .iter()
            .enumerate()
            .find(|(_, s)| s.len() != count)
        {
            return Err(Error::Other(format!(
                "eviction keeps {} slots in head {h} but {count} in head 0; heads must keep equal counts",
                slots.len()
            )));
        }
        self.validate_each(&vec![len; self.per_head.len()])
    }

    /// Checks that head `h` keeps distinct, ascending slots below `lens[h]` (heads may keep
    /// different counts: a ragged store).
    pub fn validate_each(&self, lens: &[usize]) -> Result<()> {
        if lens.len() != self.per_head.len() {
            return Err(Error::Other(format!(
                "eviction keep list has {} heads, the store {}",
                self.per_head.len(),
                lens.len()
            )));
        }
        for (h, (slots, &len)) in self.per_head.iter().zip(lens).enumerate() {
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

/// Orders scores from the highest down, NaN last; equal scores compare equal (callers break
/// ties by age, so every backend keeps the same tokens).
fn highest_first(a: f32, b: f32) -> Ordering {
    b.partial_cmp(&a)
        .unwrap_or_else(|| a.is_nan().cmp(&b.is_nan()))
}

/// Score of slot `i`, or `-inf` where the scorer gave none (protected sets filled the budget).
fn score_at(scores: &[f32], i: usize) -> f32 {
    scores.get(i).copied().unwrap_or(f32::NEG_INFINITY)
}

/// How many slots the protected sets take of a `budget` (recent first, as [`select_head`]).
pub fn protected_count(protect: Protect, budget: usize) -> usize {
    let recent = protect.recent.min(budget);
    recent + protect.sinks.min(budget - recent)
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
    let sinks = protected_count(protect, budget) - recent;
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
        // Descending score, NaN last, older first among equals: the same on every backend.
        candidates.sort_by(|&a, &b| {
            highest_first(score_at(scores, a), score_at(scores, b)).then(a.cmp(&b))
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

/// Ada-KV's head-adaptive allocation (Feng et al., arXiv 2407.11550): `heads x budget` slots
/// of `len` per head, shared unevenly among the heads of a layer. `scores[h]` are head `h`'s
/// scores (higher keeps; empty when the protected sets fill the budget), compared across heads
/// as they are (Ada-KV and kvpress: attention-based scores are softmax mass, so every head's
/// sum to the same total).
///
/// 1. Each head keeps its top `max(protected, floor(alpha * budget))` slots as [`select_head`]
///    chooses them: the protected sets, then its best scores (kvpress's `alpha_safeguard`,
///    which counts the protected slots, there scored at the maximum).
/// 2. The other `heads * budget - chosen` slots go to the highest scores among all unchosen
///    `(head, slot)` pairs (ties: the older slot, then the lower head).
///
/// Every head keeps at most `len` slots and the total is exactly `heads * min(budget, len)`.
/// With `alpha = 1` this is [`select`]. Heads keep different counts: store them in a
/// [`crate::RaggedStore`].
pub fn select_adaptive(
    len: usize,
    budget: usize,
    protect: Protect,
    scores: &[Vec<f32>],
    alpha: f64,
) -> Keep {
    if budget >= len {
        return select(len, budget, protect, scores);
    }
    let safe =
        ((alpha * budget as f64).floor() as usize).clamp(protected_count(protect, budget), budget);
    let mut keep = select(len, safe, protect, scores);
    let mut rest = scores.len() * budget - keep.total();
    if rest > 0 {
        let mut candidates: Vec<(usize, usize)> = keep
            .per_head
            .iter()
            .enumerate()
            .flat_map(|(h, kept)| {
                let mut chosen = vec![false; len];
                for &s in kept {
                    chosen[s] = true;
                }
                (0..len).filter(move |&s| !chosen[s]).map(move |s| (h, s))
            })
            .collect();
        let order = |&(ha, a): &(usize, usize), &(hb, b): &(usize, usize)| {
            highest_first(score_at(&scores[ha], a), score_at(&scores[hb], b))
                .then(a.cmp(&b))
                .then(ha.cmp(&hb))
        };
        rest = rest.min(candidates.len());
        // A total order, so the partition (linear time) is deterministic as a full sort.
        if rest < candidates.len() {
            candidates.select_nth_unstable_by(rest - 1, order);
        }
        for &(h, s) in &candidates[..rest] {
            keep.per_head[h].push(s);
        }
        for slots in &mut keep.per_head {
            slots.sort_unstable();
        }
    }
    keep
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

    #[test]
    fn adaptive_allocation_gives_the_informative_head_more_slots() {
        // Head 0 has many high scores, head 1 one: B = 4 per head, alpha 0.25 (1 safe slot).
        let head0 = vec![0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.29, 0.28, 0.27];
        let head1 = vec![0.2, 0.02, 0.01, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        let keep = select_adaptive(10, 4, Protect::default(), &[head0, head1], 0.25);
        assert_eq!(keep.per_head, vec![(0..7).collect::<Vec<_>>(), vec![0]]);
        assert_eq!(keep.total(), 8);
        assert!(keep.validate_each(&[10, 10]).is_ok());
        assert!(
            keep.validate(10).is_err(),
            "ragged counts are not a uniform keep"
        );
    }

    #[test]
    fn adaptive_allocation_keeps_the_protected_slots_and_the_safeguard() {
        let p = Protect {
            sinks: 1,
            recent: 2,
        };
        // Head 1's scores are all below head 0's: it keeps only what is guaranteed.
        let head0: Vec<f32> = (0..12).map(|i| 10.0 + i as f32).collect();
        let head1: Vec<f32> = (0..12).map(|i| i as f32 * 0.01).collect();
        // B = 6, alpha 0.5: each head keeps max(3 protected, 3) = its sinks and recent.
        let keep = select_adaptive(12, 6, p, &[head0.clone(), head1.clone()], 0.5);
        assert_eq!(keep.per_head[1], vec![0, 10, 11]);
        assert_eq!(keep.per_head[0], vec![0, 4, 5, 6, 7, 8, 9, 10, 11]);
        // alpha 0.75: 4 safe slots, one above the protected (head 1's best unprotected: 9).
        let keep = select_adaptive(12, 6, p, &[head0, head1], 0.75);
        assert_eq!(keep.per_head[1], vec![0, 9, 10, 11]);
        assert_eq!(keep.total(), 12);
    }

    #[test]
    fn adaptive_allocation_meets_the_total_and_alpha_one_is_per_head_top_k() {
        let p = Protect {
            sinks: 2,
            recent: 3,
        };
        for seed in 0..20u64 {
            let scores: Vec<Vec<f32>> = (0..3)
                .map(|h| crate::testing::noise(40, seed * 3 + h))
                .collect();
            for budget in [4, 9, 17, 39] {
                for alpha in [0.0, 0.2, 0.5, 1.0] {
                    let keep = select_adaptive(40, budget, p, &scores, alpha);
                    assert_eq!(keep.total(), 3 * budget, "seed {seed} B {budget} a {alpha}");
                    keep.validate_each(&[40; 3]).unwrap();
                    let protected = select_head(40, protected_count(p, budget), p, &[]);
                    for slots in &keep.per_head {
                        assert!(protected.iter().all(|s| slots.contains(s)), "{slots:?}");
                    }
                }
                let uniform = select(40, budget, p, &scores);
                assert_eq!(select_adaptive(40, budget, p, &scores, 1.0), uniform);
            }
        }
        // Nothing to evict: every slot of every head.
        let all = select_adaptive(5, 9, p, &[vec![], vec![]], 0.2);
        assert_eq!(all.per_head, vec![(0..5).collect::<Vec<_>>(); 2]);
    }
}
