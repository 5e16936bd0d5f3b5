use std::time::Instant;

use burn::tensor::{backend::Backend, Tensor};
use serde::{Deserialize, Serialize};

use longctx_core::{
    Budget, CacheContext, CausalLm, CompressionPhase, Error, KvMethod, LogitsSelection,
    MethodCapabilities, Result, SequenceState,
};

use crate::sampling::{Sampler, Sampling};

/// Settings of one generation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GenerationConfig {
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    /// Token ids that end generation (not included in the output).
    pub stop_tokens: Vec<u32>,
    /// Upper bound on prefill chunk length, independent of the method (bounds activation
    /// memory); `None` = the method's chunk size, or the whole prompt.
    pub max_prefill_chunk: Option<usize>,
    /// How many tokens at the end of the prompt are the question (0 = none known). For a
    /// method that declares `compresses_question: false`, those tokens are processed after the
    /// end-of-prefill compression and are never compressed in prefill.
    #[serde(default)]
    pub question_tokens: usize,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 32,
            sampling: Sampling::Greedy,
            stop_tokens: Vec::new(),
            max_prefill_chunk: None,
            question_tokens: 0,
        }
    }
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    StopToken,
    MaxNewTokens,
}

/// Generated tokens with timings and KV memory.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GenerationResult {
    pub prompt_tokens: usize,
    /// Generated ids, without the stop token.
    pub tokens: Vec<u32>,
    pub stop_reason: StopReason,
    /// Prompt processing, up to and including the first generated token's logits (with a
    /// shared prefill: its seconds plus this method's own compression and question tail).
    pub prefill_seconds: f64,
    /// All decode forward passes.
    pub decode_seconds: f64,
    /// The part of `decode_seconds` spent inside the model's `forward` calls. On a GPU backend
    /// `forward` only records and launches kernels and the wait for them falls in the token
    /// choice that reads the logits back, so this is the host's share of a decode step: near
    /// `decode_seconds` when launching, not computing, is what bounds decode speed.
    #[serde(default)]
    pub decode_forward_seconds: f64,
    /// Number of decode forward passes (generated tokens after the first).
    pub decode_steps: usize,
    /// Time spent inside `compress` calls (also counted in prefill or decode time).
    pub compression_seconds: f64,
    /// Bytes of sequence state per layer once the prompt is processed (after any end-of-prefill
    /// compression).
    pub state_bytes_after_prefill: Vec<usize>,
    /// Bytes per layer at the end of generation.
    pub state_bytes_end: Vec<usize>,
    /// Bytes per layer a cache keeps off the device (host memory: InfLLM's offloaded blocks)
    /// once the prompt is processed; not part of `state_bytes_after_prefill`.
    #[serde(default)]
    pub host_state_bytes_after_prefill: Vec<usize>,
    /// Bytes per layer kept off the device at the end of generation.
    #[serde(default)]
    pub host_state_bytes_end: Vec<usize>,
    /// Tokens held per attention layer after prefill (`None` for recurrent layers).
    pub tokens_held_after_prefill: Vec<Option<usize>>,
    /// Tokens held per attention layer at the end.
    pub tokens_held_end: Vec<Option<usize>>,
    /// Prompt tokens at the end (the question) kept out of prefill compression.
    #[serde(default)]
    pub uncompressed_question_tokens: usize,
    /// Each attention layer's resolved token budget (`None`: unlimited or recurrent).
    #[serde(default)]
    pub budget_tokens_per_layer: Vec<Option<usize>>,
    /// Original positions held per layer and KV head at the end, for caches that drop tokens
    /// (`None`: everything held, or a recurrent layer). Not serialised: large; for tests and
    /// needle survival checks.
    #[serde(skip)]
    pub held_positions_end: Vec<Option<Vec<Vec<usize>>>>,
    /// Seconds of a context prefill computed once for several methods and shared among them
    /// ([`crate::generate_shared`]): the same value in each of their results, and part of
    /// `prefill_seconds`. `None` when this method prefilled its prompt alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_prefill_seconds: Option<f64>,
}

impl GenerationResult {
    /// Prompt tokens per second of prefill.
    pub fn prefill_tokens_per_second(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill_seconds.max(1e-12)
    }

    /// Decode steps per second (`NaN` when no decode step ran).
    pub fn decode_tokens_per_second(&self) -> f64 {
        if self.decode_steps == 0 {
            f64::NAN
        } else {
            self.decode_steps as f64 / self.decode_seconds.max(1e-12)
        }
    }
}

/// Picks the next token from logits `[1, vocab]`; reading the result synchronises the device.
fn pick<B: Backend>(logits: Tensor<B, 2>, sampler: &mut Option<Sampler>) -> Result<u32> {
    match sampler {
        None => {
            let vocab = logits.dims()[1];
            let data = logits.argmax(1).into_data();
            let id = data
                .iter::<i64>()
                .next()
                .ok_or_else(|| Error::Other("empty logits".into()))?;
            // An argmax outside the vocabulary means no logit compared greater than the
            // kernel's start value: the logits are NaN. Say so instead of feeding the model a
            // token id that does not exist.
            if !(0..vocab as i64).contains(&id) {
                return Err(Error::Other(format!(
                    "greedy decoding: argmax returned {id} for a vocabulary of {vocab}; the logits are not finite (NaN)"
                )));
            }
            Ok(id as u32)
        }
        Some(s) => {
            let data = logits.into_data().convert::<f32>();
            let row = data
                .as_slice::<f32>()
                .map_err(|e| Error::Other(format!("reading logits: {e:?}")))?;
            Ok(s.sample(row))
        }
    }
}

/// Runs one prompt through `model` with caches from `method` under `budget`.
///
/// `on_token` is called with each generated id as soon as it is chosen (for streaming).
pub fn generate<B: Backend>(
    model: &dyn CausalLm<B>,
    method: &dyn KvMethod<B>,
    budget: Budget,
    prompt: &[u32],
    config: &GenerationConfig,
    on_token: &mut dyn FnMut(u32),
) -> Result<GenerationResult> {
    run_sequence(model, method, budget, prompt, config, None, on_token).map(|(r, _)| r)
}

/// A continuation scored under teacher forcing.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContinuationScore {
    /// Natural log-probability of each continuation token given everything before it.
    pub token_logprobs: Vec<f64>,
    /// How many continuation tokens were the model's greedy choice.
    pub argmax_hits: usize,
    /// Timings and KV memory, as for generation (`tokens` is the continuation).
    pub generation: GenerationResult,
}

impl ContinuationScore {
    /// Mean negative log-likelihood per token (nats).
    pub fn mean_nll(&self) -> f64 {
        -self.token_logprobs.iter().sum::<f64>() / self.token_logprobs.len().max(1) as f64
    }

    /// `exp(mean_nll)`.
    pub fn perplexity(&self) -> f64 {
        self.mean_nll().exp()
    }
}

/// Scores `continuation` after `context` exactly as [`generate`] would process it: the context is
/// prefilled (in chunks, with the method's compression schedule), then the continuation is fed
/// one token at a time as decode steps (with decode-time compression), and the log-probability
/// of each continuation token is read from the logits before it. A KV method's effect on the
/// language model itself is measured this way, without generation.
pub fn score_continuation<B: Backend>(
    model: &dyn CausalLm<B>,
    method: &dyn KvMethod<B>,
    budget: Budget,
    context: &[u32],
    continuation: &[u32],
    max_prefill_chunk: Option<usize>,
) -> Result<ContinuationScore> {
    let config = scoring_config(continuation, max_prefill_chunk)?;
    let (generation, forced) = run_sequence(
        model,
        method,
        budget,
        context,
        &config,
        Some(continuation),
        &mut |_| {},
    )?;
    Ok(continuation_score(generation, forced))
}

/// The generation settings that score `continuation` under teacher forcing.
pub(crate) fn scoring_config(
    continuation: &[u32],
    max_prefill_chunk: Option<usize>,
) -> Result<GenerationConfig> {
    if continuation.is_empty() {
        return Err(Error::InvalidInput(
            "the continuation to score is empty".into(),
        ));
    }
    Ok(GenerationConfig {
        max_new_tokens: continuation.len(),
        sampling: Sampling::Greedy,
        stop_tokens: Vec::new(),
        max_prefill_chunk,
        question_tokens: 0,
    })
}

/// A scored continuation from a teacher-forced run and its per-token scores.
pub(crate) fn continuation_score(
    generation: GenerationResult,
    forced: Vec<(f64, bool)>,
) -> ContinuationScore {
    let (token_logprobs, hits): (Vec<f64>, Vec<bool>) = forced.into_iter().unzip();
    ContinuationScore {
        argmax_hits: hits.into_iter().filter(|&h| h).count(),
        token_logprobs,
        generation,
    }
}

/// Log-probability of `target` under logits `[1, vocab]`, and whether it is the argmax.
fn forced_logprob<B: Backend>(logits: Tensor<B, 2>, target: u32) -> Result<(f64, bool)> {
    let data = logits.into_data().convert::<f32>();
    let row = data
        .as_slice::<f32>()
        .map_err(|e| Error::Other(format!("reading logits: {e:?}")))?;
    let target = target as usize;
    if target >= row.len() {
        return Err(Error::InvalidInput(format!(
            "token id {target} is outside the vocabulary of {}",
            row.len()
        )));
    }
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let log_sum = row
        .iter()
        .map(|&x| (x as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    let is_argmax = row.iter().all(|&x| x <= row[target]);
    Ok((row[target] as f64 - log_sum, is_argmax))
}

/// Checks that `prompt` is not empty and fits the model's context with the tokens to generate.
pub(crate) fn check_prompt<B: Backend>(
    model: &dyn CausalLm<B>,
    prompt: &[u32],
    config: &GenerationConfig,
) -> Result<()> {
    let info = model.info();
    if prompt.is_empty() {
        return Err(Error::InvalidInput("the prompt is empty".into()));
    }
    let needed = prompt.len() + config.max_new_tokens;
    if needed > info.max_context {
        return Err(Error::InvalidInput(format!(
            "prompt ({} tokens) plus max new tokens ({}) is {needed}, beyond {}'s context of {} tokens",
            prompt.len(),
            config.max_new_tokens,
            info.name,
            info.max_context
        )));
    }
    Ok(())
}

/// The question tail a method keeps out of prefill compression (at least one context token
/// remains): none when it compresses the question too.
pub(crate) fn question_split(
    caps: &MethodCapabilities,
    prompt_len: usize,
    config: &GenerationConfig,
) -> usize {
    if caps.compresses_question {
        0
    } else {
        config.question_tokens.min(prompt_len - 1)
    }
}

/// A sequence whose first `done` prompt tokens are in `state` (none, or a shared prefill's).
pub(crate) struct Started<B: Backend> {
    pub state: SequenceState<B>,
    /// Prompt tokens already processed.
    pub done: usize,
    /// Logits after the last processed token (`None` when `done` is 0).
    pub logits: Option<Tensor<B, 2>>,
    /// Seconds of the prefill shared with other methods (`None`: prefilled alone).
    pub shared_prefill_seconds: Option<f64>,
}

/// The prefill + decode loop behind [`generate`] and [`score_continuation`]. With `forced`, the
/// decoded tokens are `forced` (teacher forcing) and each one's log-probability is returned.
#[allow(clippy::type_complexity)]
pub(crate) fn run_sequence<B: Backend>(
    model: &dyn CausalLm<B>,
    method: &dyn KvMethod<B>,
    budget: Budget,
    prompt: &[u32],
    config: &GenerationConfig,
    forced: Option<&[u32]>,
    on_token: &mut dyn FnMut(u32),
) -> Result<(GenerationResult, Vec<(f64, bool)>)> {
    check_prompt(model, prompt, config)?;
    let info = model.info();
    let caps = method.capabilities();
    let context_len = prompt.len() - question_split(&caps, prompt.len(), config);
    let ctx = CacheContext {
        budget,
        prompt_tokens: context_len,
        n_layers: info.layers.len(),
    };
    let state = SequenceState::new(&info.layers, method, &ctx)?;
    let started = Started {
        state,
        done: 0,
        logits: None,
        shared_prefill_seconds: None,
    };
    continue_sequence(model, &caps, started, prompt, config, forced, on_token)
}

/// Runs a sequence from `started` to its end: the rest of the context (in chunks, with the
/// method's per-chunk compression), the end-of-prefill compression, the question tail, and
/// decoding. [`generate`] starts it from nothing; a shared prefill from its context.
#[allow(clippy::type_complexity)]
pub(crate) fn continue_sequence<B: Backend>(
    model: &dyn CausalLm<B>,
    caps: &MethodCapabilities,
    started: Started<B>,
    prompt: &[u32],
    config: &GenerationConfig,
    forced: Option<&[u32]>,
    on_token: &mut dyn FnMut(u32),
) -> Result<(GenerationResult, Vec<(f64, bool)>)> {
    let Started {
        mut state,
        done,
        mut logits,
        shared_prefill_seconds,
    } = started;
    let question = question_split(caps, prompt.len(), config);
    let context_len = prompt.len() - question;
    let mut sampler = match config.sampling {
        Sampling::Greedy => None,
        Sampling::Sample {
            temperature,
            top_p,
            seed,
        } => Some(Sampler::new(temperature, top_p, seed)),
    };
    let mut compression_seconds = 0.0;
    let mut compress = |state: &mut SequenceState<B>, phase| -> Result<()> {
        let t = Instant::now();
        state.compress(phase)?;
        compression_seconds += t.elapsed().as_secs_f64();
        Ok(())
    };

    // Prefill, in chunks when the method compresses per chunk or the caller bounds chunks.
    let start = Instant::now();
    let chunk = [caps.schedule.prefill_chunk_tokens, config.max_prefill_chunk]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(prompt.len())
        .max(1);
    let mut offset = done;
    while offset < context_len {
        let end = (offset + chunk).min(context_len);
        let positions: Vec<usize> = (offset..end).collect();
        logits = Some(model.forward(
            &prompt[offset..end],
            &positions,
            &mut state,
            LogitsSelection::Last,
        )?);
        offset = end;
        if caps.schedule.prefill_chunk_tokens.is_some() {
            compress(&mut state, CompressionPhase::PrefillChunk)?;
        }
    }
    if caps.schedule.after_prefill {
        compress(&mut state, CompressionPhase::PrefillEnd)?;
    }
    // The question, uncompressed, bounded only by the caller's chunk limit.
    let question_chunk = config.max_prefill_chunk.unwrap_or(question).max(1);
    while offset < prompt.len() {
        let end = (offset + question_chunk).min(prompt.len());
        let positions: Vec<usize> = (offset..end).collect();
        logits = Some(model.forward(
            &prompt[offset..end],
            &positions,
            &mut state,
            LogitsSelection::Last,
        )?);
        offset = end;
    }
    state.observe = caps.observes_decode;
    let mut forced_scores = Vec::new();
    // Chooses the next token: the forced one (scoring it) or the sampler's.
    let mut choose = |logits: Tensor<B, 2>, step: usize, sampler: &mut Option<Sampler>| match forced
    {
        Some(f) => {
            forced_scores.push(forced_logprob(logits, f[step])?);
            Ok(f[step])
        }
        None => pick(logits, sampler),
    };
    let mut next = choose(logits.expect("prompt is not empty"), 0, &mut sampler)?;
    let prefill_seconds = start.elapsed().as_secs_f64() + shared_prefill_seconds.unwrap_or(0.0);
    let state_bytes_after_prefill = state.memory_bytes_per_layer();
    let host_state_bytes_after_prefill = state.host_memory_bytes_per_layer();
    let tokens_held_after_prefill = state.tokens_per_layer();

    // Decode.
    let start = Instant::now();
    let mut tokens = Vec::with_capacity(config.max_new_tokens);
    let mut decode_steps = 0;
    let mut decode_forward_seconds = 0.0;
    let mut stop_reason = StopReason::MaxNewTokens;
    while tokens.len() < config.max_new_tokens {
        if forced.is_none() && config.stop_tokens.contains(&next) {
            stop_reason = StopReason::StopToken;
            break;
        }
        tokens.push(next);
        on_token(next);
        if tokens.len() == config.max_new_tokens {
            break;
        }
        let position = state.processed_tokens;
        let forward_started = Instant::now();
        let logits = model.forward(&[next], &[position], &mut state, LogitsSelection::Last)?;
        decode_forward_seconds += forward_started.elapsed().as_secs_f64();
        decode_steps += 1;
        if let Some(n) = caps.schedule.decode_interval {
            if decode_steps % n.max(1) == 0 {
                compress(&mut state, CompressionPhase::Decode)?;
            }
        }
        next = choose(logits, tokens.len(), &mut sampler)?;
    }
    let decode_seconds = start.elapsed().as_secs_f64();

    let result = GenerationResult {
        prompt_tokens: prompt.len(),
        tokens,
        stop_reason,
        prefill_seconds,
        decode_seconds,
        decode_forward_seconds,
        decode_steps,
        compression_seconds,
        state_bytes_after_prefill,
        state_bytes_end: state.memory_bytes_per_layer(),
        host_state_bytes_after_prefill,
        host_state_bytes_end: state.host_memory_bytes_per_layer(),
        tokens_held_after_prefill,
        tokens_held_end: state.tokens_per_layer(),
        uncompressed_question_tokens: question,
        budget_tokens_per_layer: state.budget_tokens_per_layer(),
        held_positions_end: state.held_positions_per_layer(),
        shared_prefill_seconds,
    };
    Ok((result, forced_scores))
}
