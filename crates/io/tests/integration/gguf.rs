//! GGUF reader, writer and dequantizer tests.
//!
//! Dequantizers are checked against fixtures produced by gguf-py (see
//! tests/fixtures/make_quant_fixtures.py) and against blocks worked out by hand from the
//! format definition.

use std::path::{Path, PathBuf};

use longctx_io::gguf::{
    dequantize, DequantError, GgmlType, GgufFile, GgufWriter, MetadataArray, MetadataValue,
};
use longctx_io::{sha256_file, Error};

// ---------------------------------------------------------------------------------------
// helpers

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "longctx-io-gguf-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn parse_err(bytes: Vec<u8>) -> String {
    match GgufFile::from_bytes(bytes) {
        Ok(_) => panic!("expected a parse error"),
        Err(e) => e.to_string(),
    }
}

fn assert_contains(msg: &str, needle: &str) {
    assert!(
        msg.contains(needle),
        "error message {msg:?} does not contain {needle:?}"
    );
}

/// Byte position of the `offset` field of the tensor-directory entry for `name` in a file
/// produced by [`GgufWriter`].
fn offset_field_pos(bytes: &[u8], name: &str, n_dims: usize) -> usize {
    let mut needle = (name.len() as u64).to_le_bytes().to_vec();
    needle.extend_from_slice(name.as_bytes());
    needle.extend_from_slice(&(n_dims as u32).to_le_bytes());
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle.as_slice())
        .expect("tensor entry present");
    at + needle.len() + 8 * n_dims + 4
}

fn sample_writer() -> GgufWriter {
    let mut w = GgufWriter::new();
    w.add_metadata(
        "general.architecture",
        MetadataValue::String("llama".into()),
    )
    .add_metadata("general.name", MetadataValue::String("tiny ✓".into()))
    .add_metadata("llama.block_count", MetadataValue::U32(2))
    .add_metadata("llama.context_length", MetadataValue::U64(4096))
    .add_metadata("llama.rope.freq_base", MetadataValue::F32(10000.0))
    .add_metadata("test.u8", MetadataValue::U8(200))
    .add_metadata("test.i8", MetadataValue::I8(-100))
    .add_metadata("test.u16", MetadataValue::U16(60000))
    .add_metadata("test.i16", MetadataValue::I16(-30000))
    .add_metadata("test.i32", MetadataValue::I32(-7))
    .add_metadata("test.i64", MetadataValue::I64(-1 << 40))
    .add_metadata("test.f64", MetadataValue::F64(0.125))
    .add_metadata("test.bool", MetadataValue::Bool(true))
    .add_metadata(
        "tokenizer.ggml.tokens",
        MetadataValue::Array(MetadataArray::String(vec![
            "<s>".into(),
            "</s>".into(),
            "hello".into(),
            String::new(),
        ])),
    )
    .add_metadata(
        "tokenizer.ggml.scores",
        MetadataValue::Array(MetadataArray::F32(vec![0.0, -1.5, 2.25, 3.0])),
    )
    .add_metadata(
        "test.nested",
        MetadataValue::Array(MetadataArray::Array(vec![
            MetadataArray::I32(vec![1, 2, 3]),
            MetadataArray::Bool(vec![true, false]),
            MetadataArray::String(vec!["x".into()]),
            MetadataArray::U64(vec![]),
        ])),
    );
    // ggml order [3, 2]: two rows of three.
    w.add_tensor(
        "t.f32",
        &[3, 2],
        GgmlType::F32,
        f32_bytes(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
    )
    .unwrap();
    let f16: Vec<u8> = [0.5f32, -2.0, 65504.0, 0.0]
        .iter()
        .flat_map(|&v| half::f16::from_f32(v).to_bits().to_le_bytes())
        .collect();
    w.add_tensor("t.f16", &[4], GgmlType::F16, f16).unwrap();
    w.add_tensor(
        "t.q8_0",
        &[32, 1, 1, 2],
        GgmlType::Q8_0,
        q8_0_hand_block().repeat(2),
    )
    .unwrap();
    // A type that is recognised but not dequantizable: Q2_K, one block.
    w.add_tensor("t.q2_k", &[256], GgmlType::Q2_K, vec![0u8; 84])
        .unwrap();
    w
}

// ---------------------------------------------------------------------------------------
// hand-computed blocks

/// Q4_0: d = 0.5 (f16 0x3800); qs[j] = j in the low nibble, 15 - j in the high nibble.
/// Element j (j < 16) is (j - 8) * 0.5, element j + 16 is ((15 - j) - 8) * 0.5.
#[test]
fn q4_0_hand_block() {
    let mut block = vec![0x00, 0x38];
    block.extend((0u8..16).map(|j| j | ((15 - j) << 4)));
    let got = dequantize(GgmlType::Q4_0, &block, 32).unwrap();
    let mut want = Vec::new();
    for j in 0..16 {
        want.push((j as f32 - 8.0) * 0.5);
    }
    for j in 0..16 {
        want.push(((15 - j) as f32 - 8.0) * 0.5);
    }
    assert_eq!(got, want);
    assert_eq!(got[0], -4.0);
    assert_eq!(got[15], 3.5);
    assert_eq!(got[16], 3.5);
    assert_eq!(got[31], -4.0);
}

/// Q8_0: d = 0.25 (f16 0x3400); qs[i] = 8 * i - 128 as i8, so values are 2 * i - 32.
fn q8_0_hand_block() -> Vec<u8> {
    let mut block = vec![0x00, 0x34];
    block.extend((0..32).map(|i| (8 * i - 128) as i8 as u8));
    block
}

#[test]
fn q8_0_hand_block_values() {
    let got = dequantize(GgmlType::Q8_0, &q8_0_hand_block(), 32).unwrap();
    let want: Vec<f32> = (0..32).map(|i| 2.0 * i as f32 - 32.0).collect();
    assert_eq!(got, want);
    // -128 * 0.25 and 120 * 0.25
    assert_eq!((got[0], got[31]), (-32.0, 30.0));
}

/// Q8_0 with a negative, non-power-of-two scale: d = -1.5 (f16 0xBE00).
#[test]
fn q8_0_hand_negative_scale() {
    let mut block = vec![0x00, 0xBE];
    block.extend([1u8, 0xFF, 127, 0x80]);
    block.extend([0u8; 28]);
    let got = dequantize(GgmlType::Q8_0, &block, 32).unwrap();
    assert_eq!(&got[..5], &[-1.5, 1.5, -190.5, 192.0, -0.0]);
}

/// Q5_0: d = 1.0; qs all 0x0F (low nibble 15, high 0); qh = bit 0 and bit 16 set, so
/// element 0 is (15|16) - 16 = 15, element 16 is (0|16) - 16 = 0, others 15 - 16 / 0 - 16.
#[test]
fn q5_0_hand_block() {
    let mut block = vec![0x00, 0x3C];
    block.extend(0x0001_0001u32.to_le_bytes());
    block.extend([0x0F; 16]);
    let got = dequantize(GgmlType::Q5_0, &block, 32).unwrap();
    assert_eq!(got[0], 15.0);
    assert_eq!(got[1], -1.0);
    assert_eq!(got[16], 0.0);
    assert_eq!(got[17], -16.0);
}

#[test]
fn dequantize_rejects_bad_lengths_and_types() {
    assert_eq!(
        dequantize(GgmlType::Q4_0, &[0u8; 18], 31),
        Err(DequantError::PartialBlock {
            ty: GgmlType::Q4_0,
            n_elements: 31,
            block_size: 32
        })
    );
    assert!(matches!(
        dequantize(GgmlType::Q6_K, &[0u8; 209], 256),
        Err(DequantError::Length {
            expected: 210,
            actual: 209,
            ..
        })
    ));
    assert_eq!(
        dequantize(GgmlType::IQ2_XXS, &[0u8; 66], 256),
        Err(DequantError::Unsupported(GgmlType::IQ2_XXS))
    );
    // A huge element count with a tiny buffer must fail before allocating.
    assert!(dequantize(GgmlType::F32, &[0u8; 4], usize::MAX / 8).is_err());
}

// ---------------------------------------------------------------------------------------
// fixtures from gguf-py

const FIXTURE_TYPES: &[(&str, GgmlType)] = &[
    ("F32", GgmlType::F32),
    ("F16", GgmlType::F16),
    ("BF16", GgmlType::BF16),
    ("Q4_0", GgmlType::Q4_0),
    ("Q4_1", GgmlType::Q4_1),
    ("Q5_0", GgmlType::Q5_0),
    ("Q5_1", GgmlType::Q5_1),
    ("Q8_0", GgmlType::Q8_0),
    ("Q4_K", GgmlType::Q4_K),
    ("Q5_K", GgmlType::Q5_K),
    ("Q6_K", GgmlType::Q6_K),
    ("Q8_K", GgmlType::Q8_K),
];

fn fixture(name: &str) -> (Vec<u8>, Vec<f32>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/quant");
    let raw = std::fs::read(dir.join(format!("{name}.bin"))).unwrap();
    let want = std::fs::read(dir.join(format!("{name}.f32")))
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (raw, want)
}

fn assert_same_values(name: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = g == w || (g.is_nan() && w.is_nan()) || (g - w).abs() <= 1e-6;
        assert!(ok, "{name}[{i}]: got {g:e}, gguf-py gives {w:e}");
    }
}

#[test]
fn dequantizers_match_gguf_py() {
    for &(name, ty) in FIXTURE_TYPES {
        let (raw, want) = fixture(name);
        assert_eq!(want.len() as u64 % ty.block_size(), 0, "{name}");
        assert!(
            want.len() as u64 / ty.block_size() >= 2,
            "{name}: fixture too small"
        );
        let got = dequantize(ty, &raw, want.len()).unwrap();
        assert_same_values(name, &got, &want);
        // In practice every value is bit-identical: ggml's arithmetic order is followed.
        let exact = got
            .iter()
            .zip(&want)
            .all(|(g, w)| g.to_bits() == w.to_bits());
        assert!(
            exact,
            "{name}: values match within 1e-6 but not bit for bit"
        );
    }
}

/// The same fixtures stored as GGUF tensors and read back through the file API.
#[test]
fn fixtures_through_gguf_file() {
    let mut w = GgufWriter::new();
    for &(name, ty) in FIXTURE_TYPES {
        let (raw, want) = fixture(name);
        let bs = ty.block_size();
        let n = want.len() as u64;
        // A 2-D tensor: one block per row where possible.
        let dims = if bs > 1 { vec![bs, n / bs] } else { vec![n] };
        w.add_tensor(name, &dims, ty, raw).unwrap();
    }
    let dir = TempDir::new("fixtures");
    let path = dir.path().join("fixtures.gguf");
    w.write(&path).unwrap();
    let file = GgufFile::open(&path).unwrap();
    for &(name, ty) in FIXTURE_TYPES {
        let (raw, want) = fixture(name);
        let info = file.tensor_info(name).unwrap();
        assert_eq!(info.ggml_type(), ty);
        assert_eq!(info.n_elements(), want.len() as u64);
        assert_eq!(file.tensor_bytes(name).unwrap(), raw.as_slice());
        assert_same_values(name, &file.dequantize_f32(name).unwrap(), &want);
        let mut buf = vec![0.0; want.len()];
        file.dequantize_f32_into(name, &mut buf).unwrap();
        assert_same_values(name, &buf, &want);
    }
}

// ---------------------------------------------------------------------------------------
// reading

#[test]
fn roundtrip_metadata_and_tensors() {
    for version in [2, 3] {
        let mut w = sample_writer();
        w.set_version(version);
        let f = GgufFile::from_bytes(w.to_bytes()).unwrap();
        assert_eq!(f.version(), version);
        assert_eq!(f.alignment(), 32);
        assert_eq!(f.data_offset() % 32, 0);
        assert_eq!(f.architecture().unwrap(), "llama");
        assert_eq!(f.get_str("general.name").unwrap(), "tiny ✓");
        assert_eq!(f.get_u32("llama.block_count").unwrap(), 2);
        assert_eq!(f.get_u64("llama.context_length").unwrap(), 4096);
        assert_eq!(f.get_uint("llama.context_length").unwrap(), 4096);
        assert_eq!(f.get_uint("llama.block_count").unwrap(), 2);
        assert_eq!(f.get_f32("llama.rope.freq_base").unwrap(), 10000.0);
        assert_eq!(f.get_float("llama.rope.freq_base").unwrap(), 10000.0);
        assert_eq!(f.get_u8("test.u8").unwrap(), 200);
        assert_eq!(f.get_i8("test.i8").unwrap(), -100);
        assert_eq!(f.get_u16("test.u16").unwrap(), 60000);
        assert_eq!(f.get_i16("test.i16").unwrap(), -30000);
        assert_eq!(f.get_i32("test.i32").unwrap(), -7);
        assert_eq!(f.get_i64("test.i64").unwrap(), -1 << 40);
        assert_eq!(f.get_f64("test.f64").unwrap(), 0.125);
        assert!(f.get_bool("test.bool").unwrap());
        assert_eq!(
            f.get_string_array("tokenizer.ggml.tokens").unwrap(),
            &["<s>", "</s>", "hello", ""]
        );
        assert_eq!(
            f.get_f32_array("tokenizer.ggml.scores").unwrap(),
            &[0.0, -1.5, 2.25, 3.0]
        );
        match f.get_array("test.nested").unwrap() {
            MetadataArray::Array(inner) => {
                assert_eq!(inner.len(), 4);
                assert_eq!(inner[0], MetadataArray::I32(vec![1, 2, 3]));
                assert_eq!(inner[1], MetadataArray::Bool(vec![true, false]));
                assert_eq!(inner[3], MetadataArray::U64(vec![]));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(f.metadata().len(), 16);

        let names: Vec<&str> = f.tensors().iter().map(|t| t.name()).collect();
        assert_eq!(names, ["t.f32", "t.f16", "t.q8_0", "t.q2_k"]);
        let t = f.tensor_info("t.f32").unwrap();
        assert_eq!(t.shape_ggml(), &[3, 2]);
        assert_eq!(t.shape(), vec![2, 3]);
        assert_eq!(t.n_bytes(), 24);
        assert_eq!(t.offset(), 0);
        assert_eq!(
            f.dequantize_f32("t.f32").unwrap(),
            [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
        );
        assert_eq!(
            f.dequantize_f32("t.f16").unwrap(),
            [0.5, -2.0, 65504.0, 0.0]
        );
        let h = f.tensor_f16("t.f16").unwrap();
        assert_eq!(h[2], half::f16::MAX);
        let t = f.tensor_info("t.q8_0").unwrap();
        assert_eq!(t.shape(), vec![2, 1, 1, 32]);
        assert_eq!(t.offset() % 32, 0);
        let v = f.dequantize_f32("t.q8_0").unwrap();
        assert_eq!(v.len(), 64);
        assert_eq!(v[32 + 31], 30.0);
        assert_eq!(f.tensor_f16("t.q8_0").unwrap()[0].to_f32(), -32.0);
        assert_eq!(f.tensor_bytes("t.q2_k").unwrap().len(), 84);
    }
}

#[test]
fn custom_alignment() {
    let mut w = GgufWriter::new();
    w.set_alignment(64).unwrap();
    w.add_f32_tensor("a", &[3], &[1.0, 2.0, 3.0]).unwrap();
    w.add_f32_tensor("b", &[2, 2], &[4.0, 5.0, 6.0, 7.0])
        .unwrap();
    let f = GgufFile::from_bytes(w.to_bytes()).unwrap();
    assert_eq!(f.alignment(), 64);
    assert_eq!(f.get_u32("general.alignment").unwrap(), 64);
    assert_eq!(f.data_offset() % 64, 0);
    assert_eq!(f.tensor_info("b").unwrap().offset(), 64);
    assert_eq!(f.dequantize_f32("b").unwrap(), [4.0, 5.0, 6.0, 7.0]);
    assert_eq!(f.tensor_info("b").unwrap().shape(), vec![2, 2]);
    assert!(GgufWriter::new().set_alignment(48).is_err());
}

#[test]
fn empty_file_with_no_tensors() {
    let f = GgufFile::from_bytes(GgufWriter::new().to_bytes()).unwrap();
    assert!(f.tensors().is_empty());
    assert!(f.metadata().is_empty());
}

// ---------------------------------------------------------------------------------------
// errors

#[test]
fn getter_errors_name_the_key() {
    let f = GgufFile::from_bytes(sample_writer().to_bytes()).unwrap();
    let e = f.get_u32("llama.missing").unwrap_err().to_string();
    assert_eq!(e, "<memory>: metadata key 'llama.missing': missing");
    let e = f.get_u32("llama.context_length").unwrap_err().to_string();
    assert_eq!(
        e,
        "<memory>: metadata key 'llama.context_length': expected u32, found u64"
    );
    let e = f.get_str("tokenizer.ggml.tokens").unwrap_err().to_string();
    assert_contains(&e, "expected string, found array of string");
    let e = f
        .get_string_array("tokenizer.ggml.scores")
        .unwrap_err()
        .to_string();
    assert_contains(&e, "expected array of string, found array of f32");
    assert!(f.get_uint("test.i8").is_err());
    assert_eq!(f.get_uint("test.u8").unwrap(), 200);
    let e = f.tensor_info("nope").unwrap_err().to_string();
    assert_eq!(e, "<memory>: no tensor named 'nope'");
    assert!(matches!(
        f.dequantize_f32("nope"),
        Err(Error::TensorNotFound { .. })
    ));
    let e = f.dequantize_f32("t.q2_k").unwrap_err().to_string();
    assert_eq!(
        e,
        "<memory>: tensor 't.q2_k': dequantizing ggml type Q2_K is not supported"
    );
    let mut small = vec![0.0; 3];
    assert!(f.dequantize_f32_into("t.f32", &mut small).is_err());
}

#[test]
fn rejects_version_1_and_bad_magic() {
    let mut w = GgufWriter::new();
    w.set_version(1);
    assert_eq!(
        parse_err(w.to_bytes()),
        "<memory>: unsupported GGUF version 1 (supported: 2, 3)"
    );
    w.set_version(4);
    assert_contains(&parse_err(w.to_bytes()), "unsupported GGUF version 4");
    w.set_version(3u32.swap_bytes());
    assert_contains(&parse_err(w.to_bytes()), "big-endian");

    let mut bytes = GgufWriter::new().to_bytes();
    bytes[0] = b'X';
    assert_contains(&parse_err(bytes), "not a GGUF file: magic");
    assert_contains(&parse_err(b"GG".to_vec()), "too short");
    assert_contains(&parse_err(Vec::new()), "too short");
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = sample_writer().to_bytes();
    let last_end = {
        let f = GgufFile::from_bytes(bytes.clone()).unwrap();
        f.tensors()
            .iter()
            .map(|t| t.file_range().end)
            .max()
            .unwrap()
    };
    for len in 0..bytes.len() {
        // Trailing padding after the last tensor is not needed by anything.
        let result = GgufFile::from_bytes(bytes[..len].to_vec());
        if (len as u64) < last_end {
            assert!(result.is_err(), "truncated to {len} bytes but parsed");
        } else {
            assert!(result.is_ok(), "{len} bytes: {:?}", result.err());
        }
    }
}

#[test]
fn tensor_data_past_eof_names_file_and_tensor() {
    let mut w = GgufWriter::new();
    w.add_f32_tensor("blk.3.attn_q.weight", &[64], &[0.5; 64])
        .unwrap();
    let mut bytes = w.to_bytes();
    let len = bytes.len();
    bytes.truncate(len - 10);
    let dir = TempDir::new("eof");
    let path = dir.path().join("model.gguf");
    std::fs::write(&path, &bytes).unwrap();
    let e = GgufFile::open(&path).unwrap_err().to_string();
    let expected = format!(
        "{}: tensor 'blk.3.attn_q.weight': data ends at byte {} but the file has {} bytes",
        path.display(),
        len,
        len - 10
    );
    assert_eq!(e, expected);
}

#[test]
fn absurd_counts_are_rejected_before_allocating() {
    let bytes = GgufWriter::new().to_bytes();
    // tensor count
    let mut b = bytes.clone();
    b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert_contains(
        &parse_err(b),
        "tensor count 18446744073709551615 cannot fit",
    );
    // metadata count
    let mut b = bytes.clone();
    b[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert_contains(&parse_err(b), "metadata entry count");

    // array length
    let mut w = GgufWriter::new();
    w.add_metadata(
        "arr",
        MetadataValue::Array(MetadataArray::U64(vec![1, 2, 3])),
    );
    let mut b = w.to_bytes();
    // key "arr": 24 + 8 + 3 = 35, type 4 bytes, elem type 4 bytes, then the length
    b[43..51].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    let e = parse_err(b);
    assert_contains(&e, "metadata key 'arr'");
    assert_contains(&e, "cannot fit");
}

#[test]
fn string_length_past_eof() {
    let mut w = GgufWriter::new();
    w.add_metadata("general.name", MetadataValue::String("abc".into()));
    let mut b = w.to_bytes();
    // value string length sits after key (8 + 12) and type (4): offset 24 + 20 + 4
    b[48..56].copy_from_slice(&1000u64.to_le_bytes());
    let e = parse_err(b);
    assert_contains(&e, "metadata key 'general.name'");
    assert_contains(&e, "claims 1000 bytes");
    // key length
    let mut b = w.to_bytes();
    b[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
    assert_contains(&parse_err(b), "metadata entry #0: metadata key claims");
}

#[test]
fn invalid_utf8() {
    let mut w = GgufWriter::new();
    w.add_metadata("general.name", MetadataValue::String("abc".into()));
    let mut b = w.to_bytes();
    b[32] = 0xFF; // first byte of the key
    assert_contains(&parse_err(b), "not valid UTF-8");
    let mut b = w.to_bytes();
    b[56] = 0xC3; // first byte of the value: a lead byte without continuation
    let e = parse_err(b);
    assert_contains(&e, "metadata key 'general.name'");
    assert_contains(&e, "not valid UTF-8");
}

#[test]
fn bad_tensor_entries() {
    let one = |dims: &[u64], type_id: u32, data: Vec<u8>| {
        let mut w = GgufWriter::new();
        w.add_tensor_unchecked("w", dims, type_id, data);
        parse_err(w.to_bytes())
    };
    let e = one(&[4], 99, vec![0; 16]);
    assert_eq!(e, "<memory>: tensor 'w': unknown ggml type id 99");
    assert_contains(&one(&[4], 4, vec![0; 16]), "unknown ggml type id 4");
    assert_contains(
        &one(&[1, 1, 1, 1, 1], 0, vec![0; 4]),
        "n_dims 5 exceeds the maximum of 4",
    );
    assert_contains(
        &one(&[16], GgmlType::Q4_0.id(), vec![0; 18]),
        "first dimension 16 (shape [16]) is not a multiple of the Q4_0 block size 32",
    );
    assert_contains(&one(&[1 << 62, 1 << 62], 0, vec![]), "overflows");
    assert_contains(&one(&[u64::MAX], 0, vec![]), "too large");
    assert_contains(&one(&[1 << 61], 0, vec![]), "data ends at byte");

    // offset arithmetic overflow and misalignment
    let mut w = GgufWriter::new();
    w.add_f32_tensor("w", &[4], &[0.0; 4]).unwrap();
    let bytes = w.to_bytes();
    let pos = offset_field_pos(&bytes, "w", 1);
    let mut b = bytes.clone();
    b[pos..pos + 8].copy_from_slice(&(!31u64).to_le_bytes());
    assert_contains(&parse_err(b), "overflows");
    let mut b = bytes.clone();
    b[pos..pos + 8].copy_from_slice(&4u64.to_le_bytes());
    assert_contains(&parse_err(b), "not a multiple of the alignment 32");

    // zero-element tensor is fine
    let mut w = GgufWriter::new();
    w.add_tensor("empty", &[0, 7], GgmlType::F32, vec![])
        .unwrap();
    let f = GgufFile::from_bytes(w.to_bytes()).unwrap();
    assert!(f.dequantize_f32("empty").unwrap().is_empty());
    assert_eq!(f.tensor_info("empty").unwrap().shape(), vec![7, 0]);
}

#[test]
fn duplicates_and_bad_values() {
    let mut w = GgufWriter::new();
    w.add_metadata("k", MetadataValue::U8(1))
        .add_metadata("k", MetadataValue::U8(2));
    assert_eq!(
        parse_err(w.to_bytes()),
        "<memory>: metadata key 'k': duplicate key"
    );

    let mut w = GgufWriter::new();
    w.add_f32_tensor("w", &[1], &[1.0]).unwrap();
    w.add_f32_tensor("w", &[1], &[1.0]).unwrap();
    assert_eq!(
        parse_err(w.to_bytes()),
        "<memory>: tensor 'w': duplicate tensor name"
    );

    let mut w = GgufWriter::new();
    w.add_metadata("general.alignment", MetadataValue::U32(24));
    assert_contains(&parse_err(w.to_bytes()), "not a power of two");
    let mut w = GgufWriter::new();
    w.add_metadata("general.alignment", MetadataValue::U64(32));
    assert_contains(&parse_err(w.to_bytes()), "expected u32, found u64");

    // bool byte other than 0/1, and an unknown value type
    let mut w = GgufWriter::new();
    w.add_metadata("b", MetadataValue::Bool(true));
    let mut b = w.to_bytes();
    b[37] = 7; // header 24, key 8 + 1, type 4
    assert_contains(&parse_err(b), "invalid byte 7");
    let mut b = w.to_bytes();
    b[33..37].copy_from_slice(&13u32.to_le_bytes());
    assert_contains(&parse_err(b), "unknown metadata value type 13");
}

#[test]
fn deep_array_nesting_is_an_error_not_a_stack_overflow() {
    // Hand-build: key "a", type array, then 100_000 levels of "array of 1 array".
    let mut b = GgufWriter::new().to_bytes()[..24].to_vec();
    b[16..24].copy_from_slice(&1u64.to_le_bytes());
    b.extend(1u64.to_le_bytes());
    b.push(b'a');
    b.extend(9u32.to_le_bytes());
    for _ in 0..100_000 {
        b.extend(9u32.to_le_bytes());
        b.extend(1u64.to_le_bytes());
    }
    assert_contains(&parse_err(b), "nested deeper than");
}

#[test]
fn open_missing_file() {
    let e = GgufFile::open("/nonexistent/dir/model.gguf")
        .unwrap_err()
        .to_string();
    assert_contains(&e, "/nonexistent/dir/model.gguf: cannot open");
}

#[test]
fn writer_validates_sizes() {
    let mut w = GgufWriter::new();
    assert!(w.add_tensor("a", &[4], GgmlType::F32, vec![0; 15]).is_err());
    assert!(w
        .add_tensor("a", &[16], GgmlType::Q4_0, vec![0; 9])
        .is_err());
    assert!(w
        .add_tensor("a", &[1, 1, 1, 1, 1], GgmlType::F32, vec![0; 4])
        .is_err());
    assert!(w
        .add_tensor("a", &[32], GgmlType::Q4_0, vec![0; 18])
        .is_ok());
}

#[test]
fn sha256() {
    let dir = TempDir::new("sha");
    let p = dir.path().join("abc");
    std::fs::write(&p, b"abc").unwrap();
    assert_eq!(
        sha256_file(&p).unwrap(),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    std::fs::write(&p, b"").unwrap();
    assert_eq!(
        sha256_file(&p).unwrap(),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    // Larger than one read buffer: 3 MiB of a repeating pattern, checked against a digest
    // computed in one piece.
    let big: Vec<u8> = (0..3 * 1024 * 1024 + 17).map(|i| (i % 251) as u8).collect();
    std::fs::write(&p, &big).unwrap();
    use sha2::{Digest, Sha256};
    let want: String = Sha256::digest(&big)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(sha256_file(&p).unwrap(), want);
    assert!(sha256_file(dir.path().join("missing")).is_err());
}
