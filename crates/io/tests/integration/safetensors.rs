//! Safetensors checkpoint tests: files are written with the `safetensors` crate's serializer.

use std::path::{Path, PathBuf};

use longctx_io::safetensors::{Dtype, SafetensorsCheckpoint, SafetensorsFile};
use safetensors::tensor::TensorView;

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "longctx-io-st-{tag}-{}-{:?}",
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

fn assert_contains(msg: &str, needle: &str) {
    assert!(
        msg.contains(needle),
        "error message {msg:?} does not contain {needle:?}"
    );
}

struct Owned {
    name: &'static str,
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

fn f32_t(name: &'static str, shape: &[usize], v: &[f32]) -> Owned {
    Owned {
        name,
        dtype: Dtype::F32,
        shape: shape.to_vec(),
        data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

fn f16_t(name: &'static str, shape: &[usize], v: &[f32]) -> Owned {
    Owned {
        name,
        dtype: Dtype::F16,
        shape: shape.to_vec(),
        data: v
            .iter()
            .flat_map(|&x| half::f16::from_f32(x).to_bits().to_le_bytes())
            .collect(),
    }
}

fn bf16_t(name: &'static str, shape: &[usize], v: &[f32]) -> Owned {
    Owned {
        name,
        dtype: Dtype::BF16,
        shape: shape.to_vec(),
        data: v
            .iter()
            .flat_map(|&x| half::bf16::from_f32(x).to_bits().to_le_bytes())
            .collect(),
    }
}

fn i32_t(name: &'static str, v: &[i32]) -> Owned {
    Owned {
        name,
        dtype: Dtype::I32,
        shape: vec![v.len()],
        data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

fn serialize(tensors: &[Owned]) -> Vec<u8> {
    let views: Vec<(&str, TensorView<'_>)> = tensors
        .iter()
        .map(|t| {
            (
                t.name,
                TensorView::new(t.dtype, t.shape.clone(), &t.data).unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, None).unwrap()
}

fn sample_tensors() -> Vec<Owned> {
    vec![
        f32_t(
            "model.embed.weight",
            &[2, 3],
            &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        ),
        f16_t("model.norm.weight", &[4], &[0.5, -1.0, 65504.0, 0.0]),
        bf16_t("lm_head.weight", &[2, 2], &[1.5, -3.0, 256.0, 0.0078125]),
        i32_t("model.position_ids", &[0, 1, 2]),
    ]
}

const CONFIG: &str = r#"{"architectures": ["LlamaForCausalLM"], "hidden_size": 3}"#;

fn check_sample(ckpt: &SafetensorsCheckpoint) {
    assert_eq!(
        ckpt.tensor_names(),
        [
            "lm_head.weight",
            "model.embed.weight",
            "model.norm.weight",
            "model.position_ids"
        ]
    );
    let (shape, v) = ckpt.tensor_f32("model.embed.weight").unwrap();
    assert_eq!(shape, [2, 3]);
    assert_eq!(v, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let (shape, v) = ckpt.tensor_f32("model.norm.weight").unwrap();
    assert_eq!(shape, [4]);
    assert_eq!(v, [0.5, -1.0, 65504.0, 0.0]);
    let (shape, v) = ckpt.tensor_f32("lm_head.weight").unwrap();
    assert_eq!(shape, [2, 2]);
    assert_eq!(v, [1.5, -3.0, 256.0, 0.0078125]);
    let info = ckpt.tensor_info("model.norm.weight").unwrap();
    assert_eq!(info.dtype, Dtype::F16);
    assert_eq!(info.n_bytes, 8);
    let (dtype, shape, bytes) = ckpt.tensor_bytes("model.position_ids").unwrap();
    assert_eq!((dtype, shape, bytes.len()), (Dtype::I32, &[3usize][..], 12));
    let e = ckpt
        .tensor_f32("model.position_ids")
        .unwrap_err()
        .to_string();
    assert_contains(
        &e,
        "tensor 'model.position_ids': dtype I32 is not supported",
    );
    let e = ckpt.tensor_f32("nope").unwrap_err().to_string();
    assert_contains(&e, "no tensor named 'nope'");
    assert!(ckpt.contains("lm_head.weight"));
    assert!(!ckpt.contains("nope"));
}

#[test]
fn single_file_checkpoint() {
    let dir = TempDir::new("single");
    std::fs::write(
        dir.path().join("model.safetensors"),
        serialize(&sample_tensors()),
    )
    .unwrap();
    std::fs::write(dir.path().join("config.json"), CONFIG).unwrap();
    let ckpt = SafetensorsCheckpoint::open(dir.path()).unwrap();
    check_sample(&ckpt);
    assert_eq!(ckpt.files().len(), 1);
    assert_eq!(ckpt.config_json().unwrap()["hidden_size"], 3);

    // Opening the file itself works too, with config.json looked up beside it.
    let ckpt = SafetensorsCheckpoint::open(dir.path().join("model.safetensors")).unwrap();
    check_sample(&ckpt);
    assert_eq!(
        ckpt.config_json().unwrap()["architectures"][0],
        "LlamaForCausalLM"
    );
}

fn write_sharded(dir: &Path) {
    let mut all = sample_tensors();
    let second: Vec<Owned> = all.drain(2..).collect();
    std::fs::write(
        dir.join("model-00001-of-00002.safetensors"),
        serialize(&all),
    )
    .unwrap();
    std::fs::write(
        dir.join("model-00002-of-00002.safetensors"),
        serialize(&second),
    )
    .unwrap();
    let index = serde_json::json!({
        "metadata": {"total_size": 44},
        "weight_map": {
            "model.embed.weight": "model-00001-of-00002.safetensors",
            "model.norm.weight": "model-00001-of-00002.safetensors",
            "lm_head.weight": "model-00002-of-00002.safetensors",
            "model.position_ids": "model-00002-of-00002.safetensors",
        }
    });
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    std::fs::write(dir.join("config.json"), CONFIG).unwrap();
}

#[test]
fn sharded_checkpoint() {
    let dir = TempDir::new("sharded");
    write_sharded(dir.path());
    let ckpt = SafetensorsCheckpoint::open(dir.path()).unwrap();
    check_sample(&ckpt);
    assert_eq!(ckpt.files().len(), 2);
}

#[test]
fn sharded_errors() {
    let dir = TempDir::new("sharded-err");
    write_sharded(dir.path());
    let index_path = dir.path().join("model.safetensors.index.json");
    let original = std::fs::read_to_string(&index_path).unwrap();

    // Index pointing to a missing shard.
    std::fs::write(
        &index_path,
        original.replace("model-00002-of-00002", "model-00003-of-00003"),
    )
    .unwrap();
    let e = SafetensorsCheckpoint::open(dir.path())
        .unwrap_err()
        .to_string();
    assert_contains(&e, "model.safetensors.index.json: tensor 'lm_head.weight'");
    assert_contains(&e, "shard 'model-00003-of-00003.safetensors'");
    assert_contains(&e, "does not exist");

    // Index listing a tensor its shard lacks.
    std::fs::write(
        &index_path,
        original.replace("\"model.norm.weight\"", "\"model.extra.weight\""),
    )
    .unwrap();
    let e = SafetensorsCheckpoint::open(dir.path())
        .unwrap_err()
        .to_string();
    assert_contains(
        &e,
        "model-00001-of-00002.safetensors: tensor 'model.extra.weight'",
    );
    assert_contains(&e, "absent from this shard");

    // Shard names escaping the directory.
    std::fs::write(
        &index_path,
        original.replace("model-00002-of-00002", "../model-00002-of-00002"),
    )
    .unwrap();
    let e = SafetensorsCheckpoint::open(dir.path())
        .unwrap_err()
        .to_string();
    assert_contains(&e, "is not a file name inside the checkpoint directory");

    // Broken JSON.
    std::fs::write(&index_path, "{\"weight_map\": ").unwrap();
    let e = SafetensorsCheckpoint::open(dir.path())
        .unwrap_err()
        .to_string();
    assert_contains(&e, "model.safetensors.index.json: invalid JSON");
    std::fs::write(&index_path, "{}").unwrap();
    let e = SafetensorsCheckpoint::open(dir.path())
        .unwrap_err()
        .to_string();
    assert_contains(&e, "missing field `weight_map`");

    // A truncated shard.
    std::fs::write(&index_path, &original).unwrap();
    let shard = dir.path().join("model-00002-of-00002.safetensors");
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() - 3]).unwrap();
    let e = SafetensorsCheckpoint::open(dir.path())
        .unwrap_err()
        .to_string();
    assert_contains(&e, "model-00002-of-00002.safetensors: file is truncated");
}

#[test]
fn directory_errors() {
    let e = SafetensorsCheckpoint::open("/nonexistent/ckpt")
        .unwrap_err()
        .to_string();
    assert_contains(&e, "/nonexistent/ckpt: cannot open checkpoint");

    let dir = TempDir::new("empty");
    let e = SafetensorsCheckpoint::open(dir.path())
        .unwrap_err()
        .to_string();
    assert_contains(
        &e,
        "no model.safetensors or model.safetensors.index.json in the checkpoint directory",
    );

    std::fs::write(
        dir.path().join("model.safetensors"),
        serialize(&sample_tensors()),
    )
    .unwrap();
    let ckpt = SafetensorsCheckpoint::open(dir.path()).unwrap();
    let e = ckpt.config_json().unwrap_err().to_string();
    assert_contains(&e, "config.json: cannot read");
    std::fs::write(dir.path().join("config.json"), "{not json").unwrap();
    let e = ckpt.config_json().unwrap_err().to_string();
    assert_contains(&e, "config.json: invalid JSON");
}

#[test]
fn corrupt_files() {
    let bytes = serialize(&sample_tensors());
    let err = |b: &[u8]| {
        SafetensorsFile::from_bytes(b.to_vec())
            .unwrap_err()
            .to_string()
    };

    assert_contains(&err(&bytes[..5]), "too short");
    assert_contains(&err(&bytes[..20]), "header length");
    assert_contains(&err(&bytes[..bytes.len() - 1]), "file is truncated");
    let mut extra = bytes.clone();
    extra.push(0);
    assert_contains(&err(&extra), "trailing bytes");
    let mut b = bytes.clone();
    b[0..8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert_contains(&err(&b), "header length 18446744073709551615");
    let mut b = bytes.clone();
    b[9] = 0xFF;
    assert_contains(&err(&b), "invalid safetensors header");

    // Every truncation fails; the full file parses.
    for len in 0..bytes.len() {
        assert!(SafetensorsFile::from_bytes(bytes[..len].to_vec()).is_err());
    }
    let f = SafetensorsFile::from_bytes(bytes).unwrap();
    assert_eq!(f.tensor_names().len(), 4);
    assert_eq!(f.tensor_f32("model.embed.weight").unwrap().1[5], 6.0);

    // On disk, the message names the file.
    let dir = TempDir::new("corrupt");
    let p = dir.path().join("model.safetensors");
    std::fs::write(&p, b"\x10\x00\x00\x00\x00\x00\x00\x00{}").unwrap();
    let e = SafetensorsFile::open(&p).unwrap_err().to_string();
    assert!(e.starts_with(&p.display().to_string()), "{e}");
}
