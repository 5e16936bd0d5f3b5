//! Deterministic fuzzing on stable Rust: replays the committed seed corpus
//! (tests/corpus/{gguf,safetensors}) and thousands of mutations of each file (every
//! truncation, bit flips, boundary values written over every header position, seeded random
//! overwrites/insertions/deletions) through the same entry points as the cargo-fuzz targets,
//! and fails if any input panics.
//!
//! Regenerate the corpus with
//! `cargo test -p longctx-io --test integration corpus_replay:: -- --ignored regenerate_corpus`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use longctx_io::fuzzing;
use longctx_io::gguf::{GgmlType, GgufWriter, MetadataArray, MetadataValue, ALL_GGML_TYPES};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

fn corpus_dir(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(kind)
}

/// xorshift64*: tiny, seedable, and good enough to pick mutation sites.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Values that hit edge cases when they land on a count, length, type id or offset field.
const BOUNDARY: &[u64] = &[
    0,
    1,
    2,
    4,
    5,
    9,
    13,
    31,
    32,
    33,
    255,
    0x7FFF_FFFF,
    0xFFFF_FFFF,
    1 << 32,
    1 << 40,
    i64::MAX as u64,
    u64::MAX,
    u64::MAX - 31,
];

/// All mutants of `seed`, produced lazily and fed to `f`.
fn for_each_mutant(seed: &[u8], rng_seed: u64, mut f: impl FnMut(&str, &[u8])) {
    f("original", seed);
    let len = seed.len();

    // Truncation at every length (or at 512 spread lengths for larger files).
    if len <= 4096 {
        for n in 0..len {
            f("truncate", &seed[..n]);
        }
    } else {
        for k in 0..512 {
            f("truncate", &seed[..k * len / 512]);
        }
    }

    // One bit flip per byte, and all eight bits for the first 256 bytes (the header).
    let mut m = seed.to_vec();
    for i in 0..len {
        let bits: &[u8] = if i < 256 {
            &[0, 1, 2, 3, 4, 5, 6, 7]
        } else {
            &[(i % 8) as u8]
        };
        for &bit in bits {
            m[i] ^= 1 << bit;
            f("bitflip", &m);
            m[i] ^= 1 << bit;
        }
    }

    // Boundary values written as u64 and u32 over every position of the first 512 bytes.
    for i in 0..len.min(512) {
        for &v in BOUNDARY {
            for width in [8usize, 4] {
                if i + width > len {
                    continue;
                }
                let mut m = seed.to_vec();
                m[i..i + width].copy_from_slice(&v.to_le_bytes()[..width]);
                f("boundary", &m);
            }
        }
    }

    // Seeded random mutations: a few overwrites, insertions and deletions each.
    let mut rng = Rng::new(rng_seed);
    for _ in 0..8000 {
        let mut m = seed.to_vec();
        for _ in 0..1 + rng.below(6) {
            match rng.below(4) {
                0 | 1 if !m.is_empty() => {
                    let at = rng.below(m.len());
                    let n = (1 + rng.below(8)).min(m.len() - at);
                    let b = rng.bytes(n);
                    m[at..at + n].copy_from_slice(&b);
                }
                2 => {
                    let at = rng.below(m.len() + 1);
                    let n = 1 + rng.below(16);
                    let b = rng.bytes(n);
                    m.splice(at..at, b);
                }
                _ if !m.is_empty() => {
                    let at = rng.below(m.len());
                    let n = (1 + rng.below(16)).min(m.len() - at);
                    m.drain(at..at + n);
                }
                _ => {}
            }
        }
        f("random", &m);
    }
}

/// Replays every corpus file and its mutants; returns (inputs run, inputs that parsed).
fn replay(kind: &str, target: fn(&[u8]) -> bool) -> (usize, usize) {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir(kind))
        .unwrap_or_else(|e| panic!("corpus dir {kind}: {e}"))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(
        files.len() >= 5,
        "{kind} corpus has only {} files",
        files.len()
    );
    let mut count = 0;
    let mut parsed = 0;
    for (idx, path) in files.iter().enumerate() {
        let seed = std::fs::read(path).unwrap();
        for_each_mutant(&seed, idx as u64 + 1, |how, input| {
            count += 1;
            let result = catch_unwind(AssertUnwindSafe(|| target(input)));
            if result.is_err() {
                let out = std::env::temp_dir().join(format!(
                    "longctx-io-crash-{kind}-{}",
                    path.file_name().unwrap().to_string_lossy()
                ));
                std::fs::write(&out, input).unwrap();
                panic!(
                    "{kind}: a {how} mutant of {} panicked; input saved to {}",
                    path.display(),
                    out.display()
                );
            }
            parsed += usize::from(matches!(result, Ok(true)));
        });
    }
    (count, parsed)
}

#[test]
fn corpus_replay_gguf() {
    let (n, ok) = replay("gguf", fuzzing::gguf);
    eprintln!("gguf: {n} inputs replayed without a panic, {ok} of them parsed");
    assert!(n > 100_000);
    // Mutants must reach past the header parser often enough to exercise the dequantizers.
    assert!(ok > n / 20, "only {ok} of {n} mutants parsed");
}

#[test]
fn corpus_replay_safetensors() {
    let (n, ok) = replay("safetensors", fuzzing::safetensors);
    eprintln!("safetensors: {n} inputs replayed without a panic, {ok} of them parsed");
    assert!(n > 50_000);
    assert!(ok > n / 100, "only {ok} of {n} mutants parsed");
}

// ---------------------------------------------------------------------------------------
// corpus generation

fn block_bytes(rng: &mut Rng, ty: GgmlType, n_blocks: u64) -> Vec<u8> {
    let mut b = rng.bytes((n_blocks * ty.type_size()) as usize);
    // Keep f16/f32 scale fields finite-looking so the seeds dequantize to ordinary numbers:
    // clear the top exponent bit of every 16-bit word.
    for w in b.chunks_exact_mut(2) {
        w[1] &= 0x3F;
    }
    b
}

fn gguf_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut rng = Rng::new(7);
    let mut seeds = Vec::new();

    seeds.push(("empty.gguf", GgufWriter::new().to_bytes()));

    let mut w = GgufWriter::new();
    w.add_metadata(
        "general.architecture",
        MetadataValue::String("llama".into()),
    )
    .add_metadata("llama.block_count", MetadataValue::U32(1))
    .add_metadata("llama.context_length", MetadataValue::U64(128))
    .add_metadata("llama.rope.freq_base", MetadataValue::F32(10000.0))
    .add_metadata("t.u8", MetadataValue::U8(1))
    .add_metadata("t.i8", MetadataValue::I8(-1))
    .add_metadata("t.u16", MetadataValue::U16(2))
    .add_metadata("t.i16", MetadataValue::I16(-2))
    .add_metadata("t.i32", MetadataValue::I32(-3))
    .add_metadata("t.i64", MetadataValue::I64(-4))
    .add_metadata("t.f64", MetadataValue::F64(0.5))
    .add_metadata("t.bool", MetadataValue::Bool(true))
    .add_metadata(
        "tokenizer.ggml.tokens",
        MetadataValue::Array(MetadataArray::String(vec![
            "<s>".into(),
            "a".into(),
            "bc".into(),
        ])),
    )
    .add_metadata(
        "tokenizer.ggml.scores",
        MetadataValue::Array(MetadataArray::F32(vec![0.0, 1.0, 2.0])),
    )
    .add_metadata(
        "t.nested",
        MetadataValue::Array(MetadataArray::Array(vec![
            MetadataArray::U8(vec![1, 2]),
            MetadataArray::Bool(vec![false]),
        ])),
    );
    w.add_f32_tensor("norm", &[4], &[1.0, 2.0, 3.0, 4.0])
        .unwrap();
    seeds.push(("metadata_all_types.gguf", w.to_bytes()));

    // One file per dequantizable type (one or two blocks), plus the legacy and K-quants
    // together, so mutations reach each dequantizer.
    for &ty in ALL_GGML_TYPES {
        if !ty.can_dequantize() {
            continue;
        }
        let bs = ty.block_size();
        let dims = if bs == 1 { vec![8, 2] } else { vec![bs, 1] };
        let n_blocks = dims.iter().product::<u64>() / bs;
        let mut w = GgufWriter::new();
        w.add_tensor("w", &dims, ty, block_bytes(&mut rng, ty, n_blocks))
            .unwrap();
        let name: &'static str =
            Box::leak(format!("type_{}.gguf", ty.name().to_lowercase()).into_boxed_str());
        seeds.push((name, w.to_bytes()));
    }

    let mut w = GgufWriter::new();
    w.set_alignment(64).unwrap();
    w.set_version(2);
    for (i, ty) in [
        GgmlType::Q4_0,
        GgmlType::Q8_0,
        GgmlType::F16,
        GgmlType::Q2_K,
    ]
    .into_iter()
    .enumerate()
    {
        let bs = ty.block_size().max(4);
        w.add_tensor(
            format!("blk.{i}.w"),
            &[bs, 1],
            ty,
            block_bytes(&mut rng, ty, bs / ty.block_size()),
        )
        .unwrap();
    }
    seeds.push(("v2_align64_mixed.gguf", w.to_bytes()));

    // Broken files: each trips one validation rule.
    let mut w = GgufWriter::new();
    w.set_version(1);
    seeds.push(("broken_v1.gguf", w.to_bytes()));
    let mut w = GgufWriter::new();
    w.add_tensor_unchecked("w", &[4], 99, vec![0; 16]);
    seeds.push(("broken_unknown_type.gguf", w.to_bytes()));
    let mut w = GgufWriter::new();
    w.add_tensor_unchecked("w", &[1, 1, 1, 1, 1], 0, vec![0; 4]);
    seeds.push(("broken_five_dims.gguf", w.to_bytes()));
    let mut w = GgufWriter::new();
    w.add_tensor_unchecked("w", &[16], GgmlType::Q4_0.id(), vec![0; 18]);
    seeds.push(("broken_partial_block.gguf", w.to_bytes()));
    let mut w = GgufWriter::new();
    w.add_f32_tensor("w", &[64], &[1.0; 64]).unwrap();
    let mut b = w.to_bytes();
    b.truncate(b.len() - 40);
    seeds.push(("broken_data_past_eof.gguf", b));
    seeds
}

fn st_bytes(tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)], meta: bool) -> Vec<u8> {
    let views: Vec<(&str, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| (*n, TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let info = meta.then(|| [("format".to_string(), "pt".to_string())].into());
    safetensors::serialize(views, info).unwrap()
}

fn safetensors_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut rng = Rng::new(11);
    let mut seeds = Vec::new();
    seeds.push(("empty.safetensors", st_bytes(&[], false)));
    let f32s = rng.bytes(4 * 6);
    let halves = rng.bytes(2 * 8);
    let bf = rng.bytes(2 * 4);
    let ints = rng.bytes(4 * 3);
    let all = [
        ("a.f32", Dtype::F32, vec![2, 3], f32s.clone()),
        ("b.f16", Dtype::F16, vec![8], halves.clone()),
        ("c.bf16", Dtype::BF16, vec![2, 1, 2], bf.clone()),
        ("d.i32", Dtype::I32, vec![3], ints),
        ("e.scalar", Dtype::F32, vec![], f32s[..4].to_vec()),
        ("f.empty", Dtype::F16, vec![0, 5], vec![]),
    ];
    seeds.push(("mixed.safetensors", st_bytes(&all, true)));
    seeds.push(("f32.safetensors", st_bytes(&all[..1], false)));
    seeds.push(("f16.safetensors", st_bytes(&all[1..2], false)));
    seeds.push(("bf16.safetensors", st_bytes(&all[2..3], true)));
    let mut b = st_bytes(&all[..2], false);
    b.truncate(b.len() - 5);
    seeds.push(("broken_truncated.safetensors", b));
    let mut b = st_bytes(&all[..1], false);
    b[0..8].copy_from_slice(&1_000_000u64.to_le_bytes());
    seeds.push(("broken_header_len.safetensors", b));
    seeds
}

/// Writes the seed corpus. Ignored by default: the corpus is committed.
#[test]
#[ignore]
fn regenerate_corpus() {
    for (kind, seeds) in [("gguf", gguf_seeds()), ("safetensors", safetensors_seeds())] {
        let dir = corpus_dir(kind);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in seeds {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
}

/// The committed corpus must be what the generator produces, so it stays in sync with the
/// writer and the seeds above.
#[test]
fn corpus_matches_generator() {
    for (kind, seeds) in [("gguf", gguf_seeds()), ("safetensors", safetensors_seeds())] {
        for (name, bytes) in seeds {
            let path = corpus_dir(kind).join(name);
            let on_disk = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("{}: {e}; regenerate the corpus", path.display()));
            assert!(
                on_disk == bytes,
                "{} is stale; regenerate the corpus",
                path.display()
            );
        }
    }
}
