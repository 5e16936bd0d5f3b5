//! A tiny-model driver shared by the method crates' tests (feature `testing`): runs a method
//! on the built-in tiny transformer on any backend, teacher-forced so that backends can be
//! compared logit by logit, and through the real runner (`longctx_engine::generate`).

use burn::tensor::{backend::Backend, Tensor};

use longctx_core::{
    AttentionLayerSpec, Budget, CacheContext, CausalLm, CompressionPhase, KvMethod, LayerSpec,
    LogitsSelection, ModelDescriptor, Params, RawParams, SequenceState,
};
use longctx_engine::{generate, GenerationConfig, GenerationResult};
use longctx_model_transformer::{TinyModel, Transformer};

/// The tiny model with SmolLM2-like heads (head_dim 64, 2 KV heads, 2 layers).
pub fn tiny_model<B: Backend>(device: &B::Device) -> Transformer<B> {
    let given: RawParams = [
        ("hidden", "128"),
        ("heads", "4"),
        ("kv_heads", "2"),
        ("head_dim", "64"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let p = Params::resolve("tiny", &TinyModel::params(), &given).expect("tiny params");
    TinyModel::build::<B>(TinyModel::config(&p).expect("tiny config"), 0, device)
        .expect("tiny model")
}

/// Attention layer specs of a model.
pub fn attention_layers<B: Backend>(model: &dyn CausalLm<B>) -> Vec<AttentionLayerSpec> {
    model
        .info()
        .layers
        .iter()
        .filter_map(|l| match l {
            LayerSpec::Attention(a) => Some(a.clone()),
            LayerSpec::Recurrent(_) => None,
        })
        .collect()
}

/// Deterministic token ids (bytes of the tiny model's vocabulary).
pub fn tokens(n: usize, seed: usize) -> Vec<u32> {
    (0..n)
        .map(|i| ((i * 37 + seed * 11 + 11) % 250 + 3) as u32)
        .collect()
}

/// What a teacher-forced run produced.
pub struct ForcedRun {
    /// Last-position logits after the prefill and after each decode step, concatenated.
    pub logits: Vec<f32>,
    /// Bytes per layer after the prefill (after `compress(PrefillEnd)`).
    pub bytes_after_prefill: Vec<usize>,
    /// Bytes per layer at the end.
    pub bytes_end: Vec<usize>,
}

/// Prefills `prompt` tokens, then feeds `decode` fixed tokens one at a time, calling `compress`
/// as the method's schedule says.
pub fn teacher_forced<B: Backend>(
    model: &Transformer<B>,
    method: &dyn KvMethod<B>,
    prompt: usize,
    decode: usize,
) -> ForcedRun {
    let caps = method.capabilities();
    let ids = tokens(prompt + decode, 0);
    let ctx = CacheContext {
        budget: Budget::Unlimited,
        prompt_tokens: prompt,
        n_layers: model.config.n_layers,
    };
    let mut state = SequenceState::new(&model.info().layers, method, &ctx).expect("state");
    let to_vec = |t: Tensor<B, 2>| t.into_data().convert::<f32>().to_vec::<f32>().unwrap();
    let positions: Vec<usize> = (0..prompt).collect();
    let mut logits = to_vec(
        model
            .forward(
                &ids[..prompt],
                &positions,
                &mut state,
                LogitsSelection::Last,
            )
            .expect("prefill"),
    );
    if caps.schedule.after_prefill {
        state
            .compress(CompressionPhase::PrefillEnd)
            .expect("compress");
    }
    let bytes_after_prefill = state.memory_bytes_per_layer();
    for (step, t) in (prompt..prompt + decode).enumerate() {
        let out = model
            .forward(&ids[t..t + 1], &[t], &mut state, LogitsSelection::Last)
            .expect("decode");
        logits.extend(to_vec(out));
        if caps
            .schedule
            .decode_interval
            .is_some_and(|n| (step + 1) % n == 0)
        {
            state.compress(CompressionPhase::Decode).expect("compress");
        }
    }
    ForcedRun {
        logits,
        bytes_after_prefill,
        bytes_end: state.memory_bytes_per_layer(),
    }
}

/// Greedy generation of `new_tokens` tokens through the runner.
pub fn generate_greedy<B: Backend>(
    model: &Transformer<B>,
    method: &dyn KvMethod<B>,
    prompt: usize,
    new_tokens: usize,
) -> GenerationResult {
    let config = GenerationConfig {
        max_new_tokens: new_tokens,
        ..Default::default()
    };
    generate(
        model,
        method,
        Budget::Unlimited,
        &tokens(prompt, 1),
        &config,
        &mut |_| {},
    )
    .expect("generate")
}

/// The same teacher-forced run with the uncompressed `full` cache.
pub fn teacher_forced_full<B: Backend>(
    model: &Transformer<B>,
    prompt: usize,
    decode: usize,
) -> ForcedRun {
    let p = Params::resolve(
        "full",
        &<longctx_method_full::Full as longctx_core::MethodDescriptor>::params(),
        &RawParams::new(),
    )
    .expect("full params");
    let full = <longctx_method_full::Full as longctx_core::MethodDescriptor>::build::<B>(&p)
        .expect("full");
    teacher_forced(model, full.as_ref(), prompt, decode)
}

/// Whether wgpu can run here; panics unless `LONGCTX_SKIP_WGPU` allows skipping.
pub fn wgpu_available() -> bool {
    let probe = std::panic::catch_unwind(|| {
        Tensor::<burn::backend::Wgpu, 1>::ones([2], &Default::default())
            .sum()
            .into_scalar()
    });
    match probe {
        Ok(_) => true,
        Err(_) if std::env::var("LONGCTX_SKIP_WGPU").is_ok() => {
            eprintln!("skipping wgpu: no usable Vulkan device");
            false
        }
        Err(_) => {
            panic!("wgpu is not usable; install mesa-vulkan-drivers, or set LONGCTX_SKIP_WGPU=1")
        }
    }
}

/// Whether to run the CUDA variants: only when `LONGCTX_CUDA_TESTS=1` (CI has no GPU).
pub fn cuda_requested() -> bool {
    let on = std::env::var("LONGCTX_CUDA_TESTS").is_ok_and(|v| v == "1");
    if !on {
        eprintln!("skipping cuda: set LONGCTX_CUDA_TESTS=1 on a machine with an NVIDIA GPU");
    }
    on
}
