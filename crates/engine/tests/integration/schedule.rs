//! The runner follows a method's declared capabilities and nothing else.

use std::sync::{Arc, Mutex};

use burn::backend::Flex;
use burn::tensor::Tensor;

use longctx_core::{
    AttentionLayerSpec, Budget, CacheContext, CompressionPhase, CompressionSchedule, KvCache,
    KvMethod, KvView, MethodCapabilities, MethodFamily, ModelDescriptor, ObservationNeeds, Params,
    RawParams, Result,
};
use longctx_engine::{generate, GenerationConfig, Sampling, StopReason};
use longctx_method_full::FullCache;
use longctx_model_transformer::{TinyModel, Transformer};

type B = Flex;

fn model() -> Transformer<B> {
    let p = Params::resolve("tiny", &TinyModel::params(), &RawParams::new()).unwrap();
    TinyModel::build::<B>(TinyModel::config(&p).unwrap(), 0, &Default::default()).unwrap()
}

/// Records every call the runner makes.
#[derive(Default)]
struct Log {
    appends: Vec<usize>,
    phases: Vec<CompressionPhase>,
    observed: usize,
    /// Every call in order: `a` append, `p` prepare, `v` view, `o` observe, `c` compress.
    calls: String,
    /// Query count and positions handed to `prepare`.
    prepared: Vec<(usize, Vec<usize>)>,
}

struct Recording {
    schedule: CompressionSchedule,
    observe: ObservationNeeds,
    log: Arc<Mutex<Log>>,
}

struct RecordingCache {
    inner: FullCache<B>,
    layer: usize,
    log: Arc<Mutex<Log>>,
}

impl KvCache<B> for RecordingCache {
    fn append(&mut self, k: Tensor<B, 4>, v: Tensor<B, 4>, p: &[usize]) -> Result<()> {
        if self.layer == 0 {
            let mut log = self.log.lock().unwrap();
            log.appends.push(p.len());
            log.calls.push('a');
        }
        self.inner.append(k, v, p)
    }
    fn prepare(&mut self, q: &Tensor<B, 4>, p: &[usize]) -> Result<()> {
        // Queries of this forward, all query heads, before attention.
        assert_eq!(q.dims()[2], p.len());
        assert_eq!(q.dims()[1], 4);
        if self.layer == 0 {
            let mut log = self.log.lock().unwrap();
            log.calls.push('p');
            log.prepared.push((q.dims()[2], p.to_vec()));
        }
        Ok(())
    }
    fn view(&self) -> KvView<B> {
        if self.layer == 0 {
            self.log.lock().unwrap().calls.push('v');
        }
        self.inner.view()
    }
    fn observe(&mut self, o: longctx_core::AttentionObservation<B>) -> Result<()> {
        assert!(o.queries.is_some() && o.weights.is_none());
        if self.layer == 0 {
            let mut log = self.log.lock().unwrap();
            log.observed += 1;
            log.calls.push('o');
        }
        Ok(())
    }
    fn compress(&mut self, phase: CompressionPhase) -> Result<()> {
        if self.layer == 0 {
            let mut log = self.log.lock().unwrap();
            log.phases.push(phase);
            log.calls.push('c');
        }
        Ok(())
    }
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn memory_bytes(&self) -> usize {
        self.inner.memory_bytes()
    }
}

impl KvMethod<B> for Recording {
    fn name(&self) -> &str {
        "recording"
    }
    fn capabilities(&self) -> MethodCapabilities {
        MethodCapabilities {
            family: MethodFamily::TokenDropping,
            observes: self.observe,
            observes_decode: self.observe,
            schedule: self.schedule,
            uses_budget: true,
            compresses_question: true,
            exact_prefill: true,
        }
    }
    fn new_cache(
        &self,
        layer: &AttentionLayerSpec,
        _: &CacheContext,
    ) -> Result<Box<dyn KvCache<B>>> {
        Ok(Box::new(RecordingCache {
            inner: FullCache::with_capacity(0),
            layer: layer.layer,
            log: self.log.clone(),
        }))
    }
}

fn prompt(n: usize) -> Vec<u32> {
    (0..n).map(|i| (i % 200 + 3) as u32).collect()
}

#[test]
fn compress_is_called_exactly_at_the_declared_phases() {
    let log = Arc::new(Mutex::new(Log::default()));
    let method = Recording {
        schedule: CompressionSchedule {
            prefill_chunk_tokens: Some(10),
            after_prefill: true,
            decode_interval: Some(2),
        },
        observe: ObservationNeeds {
            queries: true,
            attention_weights: false,
            ..Default::default()
        },
        log: log.clone(),
    };
    let config = GenerationConfig {
        max_new_tokens: 7,
        ..Default::default()
    };
    let out = generate(
        &model(),
        &method,
        Budget::Ratio(2.0),
        &prompt(35),
        &config,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(out.tokens.len(), 7);
    assert_eq!(out.decode_steps, 6);
    let log = log.lock().unwrap();
    // 35 prompt tokens in chunks of 10, then 6 decode steps of one token.
    assert_eq!(log.appends, vec![10, 10, 10, 5, 1, 1, 1, 1, 1, 1]);
    use CompressionPhase::*;
    assert_eq!(
        log.phases,
        vec![
            PrefillChunk,
            PrefillChunk,
            PrefillChunk,
            PrefillChunk,
            PrefillEnd,
            Decode,
            Decode,
            Decode
        ]
    );
    assert_eq!(log.observed, 10);
}

#[test]
fn prepare_sees_each_forwards_queries_between_append_and_view() {
    let log = Arc::new(Mutex::new(Log::default()));
    let method = Recording {
        schedule: CompressionSchedule {
            prefill_chunk_tokens: Some(10),
            after_prefill: false,
            decode_interval: None,
        },
        observe: ObservationNeeds {
            queries: true,
            queries_before_attention: true,
            ..Default::default()
        },
        log: log.clone(),
    };
    let config = GenerationConfig {
        max_new_tokens: 3,
        ..Default::default()
    };
    generate(
        &model(),
        &method,
        Budget::Ratio(2.0),
        &prompt(15),
        &config,
        &mut |_| {},
    )
    .unwrap();
    let log = log.lock().unwrap();
    // Chunks of 10 and 5 (each compressed), then 2 decode steps.
    assert_eq!(log.calls, "apvocapvocapvoapvo");
    let want: Vec<(usize, Vec<usize>)> = vec![
        (10, (0..10).collect()),
        (5, (10..15).collect()),
        (1, vec![15]),
        (1, vec![16]),
    ];
    assert_eq!(log.prepared, want);
}

#[test]
fn prepare_is_not_called_unless_declared() {
    let log = Arc::new(Mutex::new(Log::default()));
    let method = Recording {
        schedule: CompressionSchedule::default(),
        observe: ObservationNeeds {
            queries: true,
            ..Default::default()
        },
        log: log.clone(),
    };
    generate(
        &model(),
        &method,
        Budget::Unlimited,
        &prompt(12),
        &GenerationConfig {
            max_new_tokens: 2,
            ..Default::default()
        },
        &mut |_| {},
    )
    .unwrap();
    let log = log.lock().unwrap();
    assert_eq!(log.calls, "avoavo");
    assert!(log.prepared.is_empty());
}

#[test]
fn a_method_that_declares_nothing_is_never_compressed_or_observed() {
    let log = Arc::new(Mutex::new(Log::default()));
    let method = Recording {
        schedule: CompressionSchedule::default(),
        observe: ObservationNeeds::default(),
        log: log.clone(),
    };
    let config = GenerationConfig {
        max_new_tokens: 3,
        ..Default::default()
    };
    generate(
        &model(),
        &method,
        Budget::Unlimited,
        &prompt(20),
        &config,
        &mut |_| {},
    )
    .unwrap();
    let log = log.lock().unwrap();
    assert_eq!(log.appends, vec![20, 1, 1]);
    assert!(log.phases.is_empty());
    assert_eq!(log.observed, 0);
}

fn full() -> Box<dyn KvMethod<B>> {
    use longctx_core::MethodDescriptor;
    let p = Params::resolve(
        "full",
        &longctx_method_full::Full::params(),
        &RawParams::new(),
    )
    .unwrap();
    longctx_method_full::Full::build::<B>(&p).unwrap()
}

#[test]
fn bounded_prefill_chunks_give_the_same_greedy_tokens() {
    let m = model();
    let method = full();
    let p = prompt(50);
    let one_shot = GenerationConfig {
        max_new_tokens: 12,
        ..Default::default()
    };
    let chunked = GenerationConfig {
        max_prefill_chunk: Some(16),
        ..one_shot.clone()
    };
    let a = generate(
        &m,
        method.as_ref(),
        Budget::Unlimited,
        &p,
        &one_shot,
        &mut |_| {},
    )
    .unwrap();
    let b = generate(
        &m,
        method.as_ref(),
        Budget::Unlimited,
        &p,
        &chunked,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(a.tokens, b.tokens);
    assert!(a.state_bytes_end.iter().all(|&b| b > 0));
}

#[test]
fn stop_tokens_end_generation_and_sampling_is_seeded() {
    let m = model();
    let method = full();
    let p = prompt(30);
    let greedy = generate(
        &m,
        method.as_ref(),
        Budget::Unlimited,
        &p,
        &GenerationConfig {
            max_new_tokens: 6,
            ..Default::default()
        },
        &mut |_| {},
    )
    .unwrap();
    let stop_at = greedy.tokens[2];
    let stopped = GenerationConfig {
        max_new_tokens: 6,
        stop_tokens: vec![stop_at],
        ..Default::default()
    };
    let out = generate(
        &m,
        method.as_ref(),
        Budget::Unlimited,
        &p,
        &stopped,
        &mut |_| {},
    )
    .unwrap();
    let first = greedy.tokens.iter().position(|&t| t == stop_at).unwrap();
    assert_eq!(out.tokens, greedy.tokens[..first]);
    assert_eq!(out.stop_reason, StopReason::StopToken);

    let sampled = |seed| {
        let c = GenerationConfig {
            max_new_tokens: 8,
            sampling: Sampling::Sample {
                temperature: 1.0,
                top_p: 0.95,
                seed,
            },
            ..Default::default()
        };
        generate(&m, method.as_ref(), Budget::Unlimited, &p, &c, &mut |_| {})
            .unwrap()
            .tokens
    };
    assert_eq!(sampled(1), sampled(1));
}

#[test]
fn a_context_beyond_the_model_is_an_error() {
    let p = Params::resolve(
        "tiny",
        &TinyModel::params(),
        &RawParams::from([("max_context".to_string(), "40".to_string())]),
    )
    .unwrap();
    let m = TinyModel::build::<B>(TinyModel::config(&p).unwrap(), 0, &Default::default()).unwrap();
    let method = full();
    let err = generate(
        &m,
        method.as_ref(),
        Budget::Unlimited,
        &prompt(35),
        &GenerationConfig {
            max_new_tokens: 10,
            ..Default::default()
        },
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("beyond tiny's context of 40 tokens"), "{err}");
    let empty = generate(
        &m,
        method.as_ref(),
        Budget::Unlimited,
        &[],
        &GenerationConfig::default(),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(empty.to_string().contains("empty"));
}
