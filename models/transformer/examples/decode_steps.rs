//! Times one-token decode steps of a GGUF model on burn's unfused GPU backends, with the
//! one-token kernels of `longctx-gpu-kernels` on or off (`LONGCTX_GPU_KERNELS=0`), and prints
//! the greedy tokens so two runs can be compared. A profiling aid, small enough to carry to a
//! GPU machine instead of the whole CLI:
//!
//! ```text
//! cargo build --release -p longctx-model-transformer --features cuda --example decode_steps
//! decode_steps MODEL.gguf cpu|wgpu|cuda [PROMPT_TOKENS] [STEPS]
//! ```
//!
//! Each step reports the host time spent in `forward` (launching) and the whole step (with
//! the greedy token read back, which waits for the GPU).

use std::path::Path;
use std::time::Instant;

use burn::tensor::backend::Backend;
use longctx_core::{
    Budget, CacheContext, CausalLm, LogitsSelection, MethodDescriptor, Params, SequenceState,
};
use longctx_method_full::Full;
use longctx_model_transformer::{gguf::load_gguf, WeightDtype};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: decode_steps MODEL.gguf cpu|wgpu|cuda [PROMPT_TOKENS] [STEPS]");
        std::process::exit(2);
    }
    let path = Path::new(&args[1]);
    let count = |at: usize, default: usize, what: &str| match args.get(at) {
        None => Ok(default),
        Some(a) => a
            .parse::<usize>()
            .map_err(|_| format!("{what} must be a whole number, not {a:?}")),
    };
    let result = count(3, 512, "PROMPT_TOKENS").and_then(|prompt| {
        count(4, 32, "STEPS").and_then(|steps| dispatch(&args[2], path, prompt, steps))
    });
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn dispatch(backend: &str, path: &Path, prompt: usize, steps: usize) -> Result<(), String> {
    match backend {
        // The reference: the CPU path, which takes none of the GPU kernels.
        "cpu" => run::<burn::backend::Flex>(path, prompt, steps),
        "wgpu" => run::<longctx_gpu_kernels::WgpuUnfused>(path, prompt, steps),
        #[cfg(feature = "cuda")]
        "cuda" => run::<longctx_gpu_kernels::CudaUnfused>(path, prompt, steps),
        other => Err(format!(
            "unknown backend {other} (this build: cpu, wgpu{})",
            if cfg!(feature = "cuda") { ", cuda" } else { "" }
        )),
    }
}

fn run<B: Backend>(path: &Path, prompt: usize, steps: usize) -> Result<(), String> {
    let device = B::Device::default();
    let file = longctx_io::gguf::GgufFile::open(path).map_err(|e| e.to_string())?;
    let model =
        load_gguf::<B>(&file, "model", WeightDtype::F32, &device).map_err(|e| e.to_string())?;
    let method = <Full as MethodDescriptor>::build::<B>(
        &Params::resolve("full", &Full::params(), &Default::default())
            .map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    let ctx = CacheContext {
        budget: Budget::Unlimited,
        prompt_tokens: prompt,
        n_layers: model.config.n_layers,
    };
    let ids: Vec<u32> = (0..prompt)
        .map(|i| ((i * 37 + 11) % 5000 + 3) as u32)
        .collect();
    let positions: Vec<usize> = (0..prompt).collect();
    // Twice: the first run compiles every kernel.
    for run in 0..2 {
        let mut state = SequenceState::new(&model.info().layers, method.as_ref(), &ctx)
            .map_err(|e| e.to_string())?;
        let started = Instant::now();
        let logits = model
            .forward(&ids, &positions, &mut state, LogitsSelection::Last)
            .map_err(|e| e.to_string())?;
        let mut next = argmax(logits);
        println!("run {run}: prefill {prompt} tokens {:.1} ms", ms(started));
        let (mut forward_total, mut step_total) = (0.0, 0.0);
        let mut tokens = vec![next];
        for step in 0..steps {
            let started = Instant::now();
            let logits = model
                .forward(&[next], &[prompt + step], &mut state, LogitsSelection::Last)
                .map_err(|e| e.to_string())?;
            let forward = ms(started);
            next = argmax(logits);
            let step_ms = ms(started);
            if run == 1 && step < 4 {
                println!("  step {step}: forward {forward:.2} ms, step {step_ms:.2} ms");
            }
            forward_total += forward;
            step_total += step_ms;
            tokens.push(next);
        }
        let n = steps.max(1) as f64;
        println!(
            "run {run}: {steps} steps, forward {:.2} ms/step, step {:.2} ms/step ({:.1} tokens/s); tokens {tokens:?}",
            forward_total / n,
            step_total / n,
            1e3 * n / step_total
        );
    }
    Ok(())
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

fn argmax<B: Backend>(logits: burn::tensor::Tensor<B, 2>) -> u32 {
    let values = logits
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .unwrap_or_default();
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best as u32
}
