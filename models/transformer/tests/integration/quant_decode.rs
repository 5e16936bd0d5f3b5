//! Decode steps over the GGUF blocks (Q4_0/Q4_1/Q8_0) instead of the dequantized f32 weights:
//! the packed copies hold exactly the loaded f32 weights (layout, Q/K unpermutation and every
//! value bit for bit), and logits with the quantized products match the f32 path up to
//! summation order — on a small random GGUF and on SmolLM2-135M (skipped when not cached).

use burn::backend::Flex;
use burn::tensor::Tensor;
use longctx_core::tensor_util::max_relative_error;
use longctx_core::{
    Budget, CacheContext, CausalLm, LogitsSelection, MethodDescriptor, Params, RawParams,
    SequenceState,
};
use longctx_cpu_kernels::flex::is_flex;
use longctx_cpu_kernels::QuantMatrix;
use longctx_io::gguf::{dequantize, GgmlType, GgufFile, GgufWriter, MetadataArray, MetadataValue};
use longctx_method_full::Full;
use longctx_model_transformer::gguf::{load_gguf, load_llama};
use longctx_model_transformer::pretrained::default_cache_dir;
use longctx_model_transformer::{SmolLm2, Transformer, WeightDtype};
use rand::{rngs::StdRng, Rng, SeedableRng};

const VOCAB: usize = 50;
const HIDDEN: usize = 64;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = 16;
const FFN: usize = 96;
const LAYERS: usize = 2;

/// Random blocks of `ty` for a row-major `[rows, cols]` tensor, with random finite f16
/// scales (subnormal ones included).
fn random_blocks(ty: GgmlType, rows: usize, cols: usize, rng: &mut StdRng) -> Vec<u8> {
    let (bytes, scales) = match ty {
        GgmlType::Q4_0 => (18, 1),
        GgmlType::Q4_1 => (20, 2),
        GgmlType::Q8_0 => (34, 1),
        other => panic!("{other}"),
    };
    let mut out = Vec::new();
    for _ in 0..rows * cols / 32 {
        let start = out.len();
        out.extend((0..bytes).map(|_| rng.random::<u8>()));
        for s in 0..scales {
            // Exponent 0 (subnormal) to 14: magnitudes up to ~1, as in real files.
            let exp: u16 = rng.random_range(0..15);
            let bits = (rng.random::<u16>() & 0x83FF) | (exp << 10);
            out[start + 2 * s..start + 2 * s + 2].copy_from_slice(&bits.to_le_bytes());
        }
    }
    out
}

/// A small Llama GGUF whose linear weights and tied embeddings are Q4_0, Q4_1 and Q8_0.
fn quantized_gguf(seed: u64) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut w = GgufWriter::new();
    let u = MetadataValue::U32;
    w.add_metadata(
        "general.architecture",
        MetadataValue::String("llama".into()),
    )
    .add_metadata("llama.block_count", u(LAYERS as u32))
    .add_metadata("llama.context_length", u(256))
    .add_metadata("llama.embedding_length", u(HIDDEN as u32))
    .add_metadata("llama.feed_forward_length", u(FFN as u32))
    .add_metadata("llama.attention.head_count", u(HEADS as u32))
    .add_metadata("llama.attention.head_count_kv", u(KV_HEADS as u32))
    .add_metadata(
        "llama.attention.layer_norm_rms_epsilon",
        MetadataValue::F32(1e-5),
    )
    .add_metadata(
        "tokenizer.ggml.tokens",
        MetadataValue::Array(MetadataArray::String(
            (0..VOCAB).map(|i| format!("t{i}")).collect(),
        )),
    );
    let mut add = |w: &mut GgufWriter, name: String, ty: GgmlType, rows: usize, cols: usize| {
        let data = random_blocks(ty, rows, cols, &mut rng);
        w.add_tensor(name, &[cols as u64, rows as u64], ty, data)
            .unwrap();
    };
    add(
        &mut w,
        "token_embd.weight".into(),
        GgmlType::Q8_0,
        VOCAB,
        HIDDEN,
    );
    let ones = vec![1.0f32; HIDDEN];
    for l in 0..LAYERS {
        let n = |t: &str| format!("blk.{l}.{t}.weight");
        let (q, kv) = (HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM);
        w.add_f32_tensor(n("attn_norm"), &[HIDDEN], &ones).unwrap();
        w.add_f32_tensor(n("ffn_norm"), &[HIDDEN], &ones).unwrap();
        // Even layers mix formats (each projection packed alone); odd layers share Q4_1
        // across q, k, v and gate, up (packed as one matrix per group).
        let mixed = |ty| if l % 2 == 0 { ty } else { GgmlType::Q4_1 };
        add(&mut w, n("attn_q"), mixed(GgmlType::Q4_0), q, HIDDEN);
        add(&mut w, n("attn_k"), GgmlType::Q4_1, kv, HIDDEN);
        add(&mut w, n("attn_v"), mixed(GgmlType::Q8_0), kv, HIDDEN);
        add(&mut w, n("attn_output"), GgmlType::Q4_1, HIDDEN, q);
        add(&mut w, n("ffn_gate"), mixed(GgmlType::Q4_0), FFN, HIDDEN);
        add(&mut w, n("ffn_up"), GgmlType::Q4_1, FFN, HIDDEN);
        add(&mut w, n("ffn_down"), GgmlType::Q8_0, HIDDEN, FFN);
    }
    w.add_f32_tensor("output_norm.weight", &[HIDDEN], &ones)
        .unwrap();
    w.to_bytes()
}

fn host(t: &Tensor<Flex, 2>) -> Vec<f32> {
    t.clone().into_data().to_vec::<f32>().unwrap()
}

/// Every packed weight's rows are the f32 weight's columns (it is stored `[in, out]`), bit
/// for bit, whether packed alone or as rows of a merged `qkv` / `gate_up` matrix; returns
/// how many weights were checked and how many of them sat in merged matrices.
fn assert_packed_equals_f32(model: &Transformer<Flex>, layers: &[usize]) -> (usize, usize) {
    let check = |what: String, packed: &QuantMatrix, first_row: usize, w: &Tensor<Flex, 2>| {
        let [inp, out] = w.dims();
        assert_eq!(packed.cols(), inp, "{what}");
        assert!(first_row + out <= packed.rows(), "{what}");
        let w = host(w);
        let mut row = vec![0f32; inp];
        for j in 0..out {
            packed.dequantize_row(first_row + j, &mut row);
            for (i, v) in row.iter().enumerate() {
                assert_eq!(
                    v.to_bits(),
                    w[i * out + j].to_bits(),
                    "{what}: weight [{j}, {i}]"
                );
            }
        }
    };
    let (mut n, mut in_merged) = (0, 0);
    for &l in layers {
        let (lw, p) = (&model.layers[l], &model.layers[l].quant);
        let (q, kv, f) = (lw.wq.dims()[1], lw.wk.dims()[1], lw.w_gate.dims()[1]);
        for (name, alone, merged, first_row, w) in [
            ("wq", &p.wq, &p.qkv, 0, &lw.wq),
            ("wk", &p.wk, &p.qkv, q, &lw.wk),
            ("wv", &p.wv, &p.qkv, q + kv, &lw.wv),
            ("wo", &p.wo, &None, 0, &lw.wo),
            ("w_gate", &p.w_gate, &p.gate_up, 0, &lw.w_gate),
            ("w_up", &p.w_up, &p.gate_up, f, &lw.w_up),
            ("w_down", &p.w_down, &None, 0, &lw.w_down),
        ] {
            match (alone.as_deref(), merged.as_deref()) {
                (Some(packed), None) => check(format!("layer {l} {name}"), packed, 0, w),
                (None, Some(packed)) => {
                    check(format!("layer {l} {name} (merged)"), packed, first_row, w);
                    in_merged += 1;
                }
                _ => panic!("layer {l} {name} must be packed exactly once"),
            }
            n += 1;
        }
    }
    (n, in_merged)
}

fn new_state(model: &Transformer<Flex>, prompt: usize) -> SequenceState<Flex> {
    let params = Params::resolve("full", &Full::params(), &RawParams::new()).unwrap();
    let method = Full::build::<Flex>(&params).unwrap();
    let ctx = CacheContext {
        budget: Budget::Unlimited,
        prompt_tokens: prompt,
        n_layers: model.config.n_layers,
    };
    SequenceState::new(&model.info().layers, method.as_ref(), &ctx).unwrap()
}

/// Logits `[steps.len() * vocab]` of decode steps after `prompt`, one forward per slice of
/// `steps` (all positions' logits), with the quantized products on or off.
fn decode_logits(
    model: &mut Transformer<Flex>,
    quantized: bool,
    prompt: &[u32],
    steps: &[&[u32]],
) -> Vec<Vec<f32>> {
    model.set_quantized_decode(quantized);
    let mut state = new_state(model, prompt.len());
    let positions: Vec<usize> = (0..prompt.len()).collect();
    model
        .forward(prompt, &positions, &mut state, LogitsSelection::Last)
        .unwrap();
    let mut pos = prompt.len();
    let mut out = Vec::new();
    for step in steps {
        let positions: Vec<usize> = (pos..pos + step.len()).collect();
        pos += step.len();
        let logits = model
            .forward(step, &positions, &mut state, LogitsSelection::All)
            .unwrap();
        out.push(logits.into_data().to_vec::<f32>().unwrap());
    }
    model.set_quantized_decode(true);
    out
}

#[test]
fn quantized_blocks_dequantize_exactly_like_longctx_io() {
    let mut rng = StdRng::seed_from_u64(5);
    for (ty, format) in [
        (GgmlType::Q4_0, longctx_cpu_kernels::QuantFormat::Q4_0),
        (GgmlType::Q4_1, longctx_cpu_kernels::QuantFormat::Q4_1),
        (GgmlType::Q8_0, longctx_cpu_kernels::QuantFormat::Q8_0),
    ] {
        let (rows, cols) = (37, 160);
        let bytes = random_blocks(ty, rows, cols, &mut rng);
        let want = dequantize(ty, &bytes, rows * cols).unwrap();
        let packed = QuantMatrix::new(format, rows, cols, bytes).unwrap();
        let mut row = vec![0f32; cols];
        for r in 0..rows {
            packed.dequantize_row(r, &mut row);
            for (c, v) in row.iter().enumerate() {
                assert_eq!(v.to_bits(), want[r * cols + c].to_bits(), "{ty} [{r}, {c}]");
            }
        }
    }
}

#[test]
fn small_quantized_gguf_decodes_like_its_f32_weights() {
    let file = GgufFile::from_bytes(quantized_gguf(3)).unwrap();
    let mut model = load_llama::<Flex>(&file, "tiny-quant", &Default::default()).unwrap();
    if !is_flex::<Flex>() {
        // LONGCTX_CPU_KERNELS=0: nothing is packed.
        assert_eq!(model.quantized_weights(), (0, 0));
        return;
    }
    // 7 linears per even layer, 4 matrices per odd one (qkv, wo, gate_up, w_down), and the
    // tied head from the Q8_0 embeddings.
    let even = LAYERS.div_ceil(2);
    assert_eq!(
        model.quantized_weights().0,
        even * 7 + (LAYERS - even) * 4 + 1
    );
    assert_eq!(assert_packed_equals_f32(&model, &[0, 1]), (14, 5));

    // Steps of 1, 3 and 4 rows use the quantized products; 5 rows take the f32 GEMM.
    let prompt = [1u32, 7, 3, 9, 4, 4, 2];
    let steps: [&[u32]; 4] = [&[5], &[6, 8, 10], &[11, 12, 13, 14], &[1, 2, 3, 4, 5]];
    let quant = decode_logits(&mut model, true, &prompt, &steps);
    let f32 = decode_logits(&mut model, false, &prompt, &steps);
    for (i, (a, b)) in quant.iter().zip(&f32).enumerate() {
        let err = max_relative_error(a, b);
        // f32 rounding only: the AVX2 kernel sums `d * sum x q + min * sum x` per block
        // (1.4e-5 seen with these random scales), the f32 path `sum x (q d + min)`.
        assert!(err < 5e-5, "step {i}: max relative error {err}");
    }
    // Not bit-identical (different rounding), or the test would not test the path.
    assert_ne!(quant[0], f32[0]);
}

#[test]
fn smollm2_decode_with_quantized_weights_matches_f32() {
    let path = SmolLm2::cached_path(&default_cache_dir());
    if !path.is_file() {
        assert!(
            std::env::var("LONGCTX_REQUIRE_MODELS").is_err(),
            "LONGCTX_REQUIRE_MODELS is set but {} is missing",
            path.display()
        );
        eprintln!("skipping: {} not found", path.display());
        return;
    }
    let file = GgufFile::open(&path).unwrap();
    let mut model =
        load_gguf::<Flex>(&file, "smollm2-135m", WeightDtype::F32, &Default::default()).unwrap();
    if !is_flex::<Flex>() {
        assert_eq!(model.quantized_weights(), (0, 0));
        return;
    }
    let (count, bytes) = model.quantized_weights();
    eprintln!("SmolLM2-135M: {count} packed weights, {bytes} bytes");
    // Every linear of the 30 layers (all Q4_1: packed as qkv, wo, gate_up, w_down) and the
    // tied head (Q8_0 embeddings).
    assert_eq!(count, 30 * 4 + 1);
    assert_eq!(assert_packed_equals_f32(&model, &[0, 29]), (14, 10));

    // "The capital of France is" and a few more tokens, then 1- and 4-row decode steps.
    let prompt: Vec<u32> = [504, 3575, 282, 4649, 314, 7042, 30, 378, 3575, 282]
        .into_iter()
        .cycle()
        .take(40)
        .collect();
    let steps: [&[u32]; 3] = [&[4649], &[314, 7042, 30, 504], &[3575]];
    let quant = decode_logits(&mut model, true, &prompt, &steps);
    let f32 = decode_logits(&mut model, false, &prompt, &steps);
    for (i, (a, b)) in quant.iter().zip(&f32).enumerate() {
        let err = max_relative_error(a, b);
        eprintln!("step {i}: max relative error {err:.2e}");
        assert!(err < 1e-4, "step {i}: max relative error {err}");
    }
    assert_ne!(quant[0], f32[0], "the quantized path was not taken");
}
