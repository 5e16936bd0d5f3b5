//! One prefill shared by several methods (a fan-out cache).
//!
//! Every method whose capabilities say [`MethodCapabilities::shares_prefill`] holds the prompt
//! exactly as appended until its first `compress`, so its prefill attention is attention over
//! the uncompressed prompt. For such methods the context is prefilled once: each attention
//! layer gets a [`FanOut`] cache that appends every key and value to an uncompressed reference
//! (what attention runs over) and to each member's own cache, and hands each member the
//! observations it declared (the model computes the union of the members' needs:
//! [`ObservationNeeds::union`]). After the context, each member's caches become its own
//! [`SequenceState`], which then goes on exactly as [`crate::generate`] goes on after its own
//! context: the end-of-prefill compression, the question tail, decoding.
//!
//! What a member receives is what it receives alone: the same appends in the same chunks, the
//! same observation rows (the union's weights are cut to the rows it asked for), and the same
//! attention output. So members share only with members that prefill the same tokens: with a
//! question at the end of the prompt, those that compress it too (`compresses_question`: `full`,
//! the quantizers) apart from those that stop before it. And members whose prefill attention
//! must materialise every weight row (H2O's prefill scores) take another attention path than the
//! fused one, so they share only among themselves.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use burn::tensor::{backend::Backend, Tensor};

use longctx_core::{
    AttentionObservation, Budget, CacheContext, CausalLm, CompressionPhase, Error, KvCache,
    KvMethod, KvView, LayerSpec, LayerState, LogitsSelection, MethodCapabilities, ObservationNeeds,
    RecurrentState, Result, SequenceState,
};

use crate::generate::{
    check_prompt, continuation_score, continue_sequence, question_split, run_sequence,
    scoring_config, ContinuationScore, GenerationConfig, GenerationResult, Started,
};

/// Default number of methods one shared prefill feeds: each holds its own copy of the prompt's
/// KV while the prompt is prefilled, so this bounds that memory; larger sets run in groups of
/// this size, one after another.
pub const DEFAULT_MAX_SHARED: usize = 4;

/// Which members prefill together when the prompt ends in `question_tokens` tokens of question
/// ([`GenerationConfig::question_tokens`]): groups of indices into `caps`, each at most
/// `max_shared` long (`0` counts as 1), in order of first appearance. A member that cannot
/// share ([`MethodCapabilities::shares_prefill`]) is a group of one, and so is a member left
/// alone in its class; a group of one prefills alone, exactly as [`crate::generate`]. Members
/// share only with members that prefill the same tokens the same way:
/// - the same context: with a question, the methods that compress it too
///   (`compresses_question`) prefill the whole prompt before compressing, the others stop
///   before the question;
/// - the same attention path: those that need every attention weight row of the prompt (which
///   leaves the fused path) apart from the others.
pub fn shared_prefill_groups(
    caps: &[MethodCapabilities],
    question_tokens: usize,
    max_shared: usize,
) -> Vec<Vec<usize>> {
    let max_shared = max_shared.max(1);
    // (class, members) in order of first appearance; `None`: cannot share.
    let mut classes: Vec<(Option<PrefillClass>, Vec<usize>)> = Vec::new();
    for (i, c) in caps.iter().enumerate() {
        if !c.shares_prefill() {
            classes.push((None, vec![i]));
            continue;
        }
        let class = Some(PrefillClass {
            all_rows: c.observes.attention_weights && c.observes.weight_rows.is_none(),
            whole_prompt: c.compresses_question || question_tokens == 0,
        });
        match classes.iter_mut().find(|(k, _)| *k == class) {
            Some((_, members)) => members.push(i),
            None => classes.push((class, vec![i])),
        }
    }
    let mut groups: Vec<Vec<usize>> = classes
        .into_iter()
        .flat_map(|(_, members)| {
            members
                .chunks(max_shared)
                .map(<[usize]>::to_vec)
                .collect::<Vec<_>>()
        })
        .collect();
    groups.sort_by_key(|g| g[0]);
    groups
}

/// What members sharing a prefill must have in common.
#[derive(Clone, Copy, PartialEq, Eq)]
struct PrefillClass {
    /// Prefill attention materialises every weight row (not the fused path).
    all_rows: bool,
    /// The whole prompt goes through prefill before compression (no question tail apart).
    whole_prompt: bool,
}

/// A method with its budget.
type Member<'a, B> = (&'a dyn KvMethod<B>, Budget);

/// One attention layer's cache per member, or one member's cache per attention layer.
type Caches<B> = Vec<Box<dyn KvCache<B>>>;

/// Runs `prompt` for every member `(method, budget)` as [`crate::generate`] runs it alone, with
/// the context prefilled once per group of [`shared_prefill_groups`]. One result per member, in
/// order; a member's error (or its group's) is its own entry. A result's
/// `shared_prefill_seconds` says whether and how long its prefill was shared.
pub fn generate_shared<B: Backend>(
    model: &dyn CausalLm<B>,
    members: &[(&dyn KvMethod<B>, Budget)],
    prompt: &[u32],
    config: &GenerationConfig,
    max_shared: usize,
) -> Vec<Result<GenerationResult>> {
    run_shared(model, members, prompt, config, None, max_shared)
        .into_iter()
        .map(|r| r.map(|(g, _)| g))
        .collect()
}

/// [`crate::score_continuation`] for every member, with shared prefills as in
/// [`generate_shared`].
pub fn score_continuation_shared<B: Backend>(
    model: &dyn CausalLm<B>,
    members: &[(&dyn KvMethod<B>, Budget)],
    context: &[u32],
    continuation: &[u32],
    max_prefill_chunk: Option<usize>,
    max_shared: usize,
) -> Vec<Result<ContinuationScore>> {
    let config = match scoring_config(continuation, max_prefill_chunk) {
        Ok(c) => c,
        Err(e) => return members.iter().map(|_| Err(copy_error(&e))).collect(),
    };
    run_shared(
        model,
        members,
        context,
        &config,
        Some(continuation),
        max_shared,
    )
    .into_iter()
    .map(|r| r.map(|(g, forced)| continuation_score(g, forced)))
    .collect()
}

/// An error for each member of a group that one failure ended.
fn copy_error(e: &Error) -> Error {
    Error::Other(e.to_string())
}

type Outcome = Result<(GenerationResult, Vec<(f64, bool)>)>;

fn run_shared<B: Backend>(
    model: &dyn CausalLm<B>,
    members: &[Member<'_, B>],
    prompt: &[u32],
    config: &GenerationConfig,
    forced: Option<&[u32]>,
    max_shared: usize,
) -> Vec<Outcome> {
    let caps: Vec<MethodCapabilities> = members.iter().map(|(m, _)| m.capabilities()).collect();
    let mut out: Vec<Option<Outcome>> = members.iter().map(|_| None).collect();
    for group in shared_prefill_groups(&caps, config.question_tokens, max_shared) {
        if let [i] = group[..] {
            let (method, budget) = members[i];
            out[i] = Some(run_sequence(
                model,
                method,
                budget,
                prompt,
                config,
                forced,
                &mut |_| {},
            ));
            continue;
        }
        let chosen: Vec<_> = group.iter().map(|&i| (members[i], caps[i])).collect();
        for (i, r) in group
            .iter()
            .zip(run_group(model, &chosen, prompt, config, forced))
        {
            out[*i] = Some(r);
        }
    }
    out.into_iter()
        .map(|r| r.expect("every member is in a group"))
        .collect()
}

/// One fan-out: the context prefilled once for `group`, then each member on its own.
fn run_group<B: Backend>(
    model: &dyn CausalLm<B>,
    group: &[(Member<'_, B>, MethodCapabilities)],
    prompt: &[u32],
    config: &GenerationConfig,
    forced: Option<&[u32]>,
) -> Vec<Outcome> {
    let fail_all = |e: Error| group.iter().map(|_| Err(copy_error(&e))).collect();
    if let Err(e) = check_prompt(model, prompt, config) {
        return fail_all(e);
    }
    let info = model.info();
    // Each member's caches, built for its own context length and budget as alone.
    let mut outcomes: Vec<Option<Outcome>> = group.iter().map(|_| None).collect();
    let mut built: Vec<(usize, Caches<B>)> = Vec::new();
    let mut context_lens = Vec::new();
    for (m, ((method, budget), caps)) in group.iter().enumerate() {
        let context_len = prompt.len() - question_split(caps, prompt.len(), config);
        let ctx = CacheContext {
            budget: *budget,
            prompt_tokens: context_len,
            n_layers: info.layers.len(),
        };
        let caches = info
            .layers
            .iter()
            .filter_map(|spec| match spec {
                LayerSpec::Attention(a) => Some(method.new_cache(a, &ctx)),
                LayerSpec::Recurrent(_) => None,
            })
            .collect::<Result<Vec<_>>>();
        match caches {
            Ok(c) => {
                built.push((m, c));
                context_lens.push(context_len);
            }
            Err(e) => outcomes[m] = Some(Err(e)),
        }
    }
    // One context length per group (shared_prefill_groups); the shortest, whatever happens.
    let Some(&shared_len) = context_lens.iter().min() else {
        return outcomes.into_iter().map(Option::unwrap).collect();
    };
    let needs: Vec<ObservationNeeds> = built.iter().map(|(m, _)| group[*m].1.observes).collect();
    let union = needs
        .iter()
        .fold(ObservationNeeds::default(), |u, n| u.union(*n));

    // The fan-out state: per attention layer one shared layer feeding every member.
    let mut per_layer: Vec<Caches<B>> = Vec::new();
    for (_, caches) in &mut built {
        for (l, cache) in caches.drain(..).enumerate() {
            if per_layer.len() <= l {
                per_layer.push(Vec::new());
            }
            per_layer[l].push(cache);
        }
    }
    let mut shared_layers = per_layer.into_iter().map(|members| {
        Arc::new(Mutex::new(FanOutLayer {
            reference: Reference::default(),
            members,
            needs: needs.clone(),
        }))
    });
    let mut handles = Vec::new();
    let layers = info
        .layers
        .iter()
        .map(|spec| match spec {
            LayerSpec::Attention(_) => {
                let layer = shared_layers.next().expect("one per attention layer");
                handles.push(layer.clone());
                LayerState::Attention(Box::new(FanOut(layer)))
            }
            LayerSpec::Recurrent(r) => LayerState::Recurrent(RecurrentState::with_slots(r.slots)),
        })
        .collect();
    let mut state = SequenceState {
        layers,
        observe: union,
        processed_tokens: 0,
    };

    // The shared context, chunked as each member would chunk it alone.
    let start = Instant::now();
    let chunk = config.max_prefill_chunk.unwrap_or(shared_len).max(1);
    let mut logits = None;
    let mut offset = 0;
    while offset < shared_len {
        let end = (offset + chunk).min(shared_len);
        let positions: Vec<usize> = (offset..end).collect();
        match model.forward(
            &prompt[offset..end],
            &positions,
            &mut state,
            LogitsSelection::Last,
        ) {
            Ok(l) => logits = Some(l),
            Err(e) => {
                let e = Error::Other(format!("shared prefill: {e}"));
                return outcomes
                    .into_iter()
                    .map(|o| o.unwrap_or_else(|| Err(copy_error(&e))))
                    .collect();
            }
        }
        offset = end;
    }
    let shared_seconds = start.elapsed().as_secs_f64();

    // Split: each member's caches (and a copy of each recurrent state) become its own state.
    let processed_tokens = state.processed_tokens;
    let recurrent: Vec<Option<RecurrentState<B>>> = state
        .layers
        .into_iter()
        .map(|l| match l {
            LayerState::Recurrent(r) => Some(r),
            LayerState::Attention(_) => None,
        })
        .collect();
    let mut member_caches: Vec<std::vec::IntoIter<Box<dyn KvCache<B>>>> = handles
        .into_iter()
        .map(|h| {
            let layer = Arc::try_unwrap(h)
                .ok()
                .expect("the shared state is dropped")
                .into_inner()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            layer.members.into_iter()
        })
        .collect();
    for (m, _) in &built {
        let mut caches = member_caches.iter_mut();
        let layers = recurrent
            .iter()
            .map(|r| match r {
                Some(r) => LayerState::Recurrent(r.clone()),
                None => LayerState::Attention(
                    caches
                        .next()
                        .and_then(Iterator::next)
                        .expect("one cache per member and attention layer"),
                ),
            })
            .collect();
        let caps = &group[*m].1;
        let started = Started {
            state: SequenceState {
                layers,
                observe: caps.observes,
                processed_tokens,
            },
            done: shared_len,
            logits: logits.clone(),
            shared_prefill_seconds: Some(shared_seconds),
        };
        outcomes[*m] = Some(continue_sequence(
            model,
            caps,
            started,
            prompt,
            config,
            forced,
            &mut |_| {},
        ));
    }
    outcomes.into_iter().map(Option::unwrap).collect()
}

/// Every key and value appended, uncompressed: what attention runs over during a shared
/// prefill.
struct Reference<B: Backend> {
    keys: Option<Tensor<B, 4>>,
    values: Option<Tensor<B, 4>>,
    positions: Vec<usize>,
}

impl<B: Backend> Default for Reference<B> {
    fn default() -> Self {
        Self {
            keys: None,
            values: None,
            positions: Vec::new(),
        }
    }
}

/// One attention layer of a shared prefill: the reference and each member's cache.
struct FanOutLayer<B: Backend> {
    reference: Reference<B>,
    members: Vec<Box<dyn KvCache<B>>>,
    /// Each member's own prefill needs.
    needs: Vec<ObservationNeeds>,
}

/// The cache a model sees during a shared prefill; the engine keeps a handle to take the
/// members' caches back afterwards.
struct FanOut<B: Backend>(Arc<Mutex<FanOutLayer<B>>>);

impl<B: Backend> FanOut<B> {
    fn layer(&self) -> MutexGuard<'_, FanOutLayer<B>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// What a member with `needs` would have observed alone, from the union's observation: the
/// queries if it asked for them, and the weights cut to its last rows.
fn member_observation<B: Backend>(
    observation: &AttentionObservation<B>,
    needs: ObservationNeeds,
) -> Option<AttentionObservation<B>> {
    if !needs.any() {
        return None;
    }
    let weights = match (&observation.weights, needs.attention_weights) {
        (Some(w), true) => {
            let [b, h, rows, t] = w.dims();
            let want = needs.weight_rows.map_or(rows, |n| n.clamp(1, rows));
            Some(if want == rows {
                w.clone()
            } else {
                w.clone().slice([0..b, 0..h, rows - want..rows, 0..t])
            })
        }
        _ => None,
    };
    Some(AttentionObservation {
        queries: observation.queries.clone().filter(|_| needs.queries),
        weights,
        query_positions: observation.query_positions.clone(),
    })
}

impl<B: Backend> KvCache<B> for FanOut<B> {
    fn append(
        &mut self,
        keys: Tensor<B, 4>,
        values: Tensor<B, 4>,
        positions: &[usize],
    ) -> Result<()> {
        let mut layer = self.layer();
        for member in &mut layer.members {
            member.append(keys.clone(), values.clone(), positions)?;
        }
        let reference = &mut layer.reference;
        let cat = |old: Option<Tensor<B, 4>>, new: Tensor<B, 4>| match old {
            Some(old) => Tensor::cat(vec![old, new], 2),
            None => new,
        };
        reference.keys = Some(cat(reference.keys.take(), keys));
        reference.values = Some(cat(reference.values.take(), values));
        reference.positions.extend_from_slice(positions);
        Ok(())
    }

    fn prepare(&mut self, queries: &Tensor<B, 4>, positions: &[usize]) -> Result<()> {
        for member in &mut self.layer().members {
            member.prepare(queries, positions)?;
        }
        Ok(())
    }

    fn view(&self) -> KvView<B> {
        let layer = self.layer();
        let r = &layer.reference;
        KvView::dense(
            r.keys
                .clone()
                .expect("view() of an empty cache: append first"),
            r.values
                .clone()
                .expect("view() of an empty cache: append first"),
            r.positions.clone(),
        )
    }

    fn observe(&mut self, observation: AttentionObservation<B>) -> Result<()> {
        let mut layer = self.layer();
        let FanOutLayer { members, needs, .. } = &mut *layer;
        for (member, needs) in members.iter_mut().zip(needs.iter()) {
            if let Some(o) = member_observation(&observation, *needs) {
                member.observe(o)?;
            }
        }
        Ok(())
    }

    fn compress(&mut self, phase: CompressionPhase) -> Result<()> {
        Err(Error::Other(format!(
            "compress({phase:?}) during a shared prefill: only methods that compress after \
             prefill can share one"
        )))
    }

    fn len(&self) -> usize {
        self.layer().reference.positions.len()
    }

    fn memory_bytes(&self) -> usize {
        self.layer()
            .members
            .iter()
            .map(|m| m.memory_bytes())
            .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use longctx_core::{CompressionSchedule, MethodFamily};

    fn caps(exact: bool, observes: ObservationNeeds, chunk: Option<usize>) -> MethodCapabilities {
        MethodCapabilities {
            family: MethodFamily::TokenDropping,
            observes,
            observes_decode: ObservationNeeds::default(),
            schedule: CompressionSchedule {
                prefill_chunk_tokens: chunk,
                after_prefill: true,
                decode_interval: None,
            },
            uses_budget: true,
            compresses_question: false,
            exact_prefill: exact,
        }
    }

    #[test]
    fn groups_follow_capabilities_and_the_attention_path() {
        let none = ObservationNeeds::default();
        let before = ObservationNeeds {
            queries_before_attention: true,
            ..none
        };
        let all = [
            caps(true, none, None),                              // 0: shares
            caps(false, none, None),                             // 1: quantizes in append
            caps(true, ObservationNeeds::last_weights(8), None), // 2: fused path
            caps(true, ObservationNeeds::all_weights(), None),   // 3: every weight row
            caps(true, none, Some(16)),                          // 4: chunked
            caps(true, before, None),                            // 5: queries before attention
            caps(true, ObservationNeeds::last_weights(1), None), // 6: fused path
            caps(true, ObservationNeeds::all_weights(), None),   // 7: every weight row
            caps(true, none, None),                              // 8: shares
        ];
        assert_eq!(
            shared_prefill_groups(&all, 0, 4),
            vec![vec![0, 2, 6, 8], vec![1], vec![3, 7], vec![4], vec![5]]
        );
        assert_eq!(
            shared_prefill_groups(&all, 0, 3),
            vec![
                vec![0, 2, 6],
                vec![1],
                vec![3, 7],
                vec![4],
                vec![5],
                vec![8]
            ]
        );
        assert_eq!(shared_prefill_groups(&all, 0, 0).len(), all.len());
        // With a question, the methods that compress it prefill more than the others.
        let mut question = all;
        question[2].compresses_question = true;
        question[6].compresses_question = true;
        assert_eq!(
            shared_prefill_groups(&question, 0, 4),
            shared_prefill_groups(&all, 0, 4)
        );
        assert_eq!(
            shared_prefill_groups(&question, 12, 4),
            vec![
                vec![0, 8],
                vec![1],
                vec![2, 6],
                vec![3, 7],
                vec![4],
                vec![5]
            ]
        );
    }

    #[test]
    fn a_member_observes_the_rows_it_asked_for() {
        type B = burn::backend::Flex;
        let w = Tensor::<B, 4>::from_data(
            burn::tensor::TensorData::new((0..2 * 3 * 4).map(|x| x as f32).collect(), [1, 2, 3, 4]),
            &Default::default(),
        );
        let observation = AttentionObservation {
            queries: None,
            weights: Some(w),
            query_positions: vec![0, 1, 2],
        };
        let last = member_observation(&observation, ObservationNeeds::last_weights(1)).unwrap();
        let got: Vec<f32> = last.weights.unwrap().into_data().to_vec().unwrap();
        assert_eq!(got, vec![8., 9., 10., 11., 20., 21., 22., 23.]);
        let every = member_observation(&observation, ObservationNeeds::last_weights(8)).unwrap();
        assert_eq!(every.weights.unwrap().dims(), [1, 2, 3, 4]);
        assert!(member_observation(&observation, ObservationNeeds::default()).is_none());
    }
}
