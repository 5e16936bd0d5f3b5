//! Hugging Face safetensors checkpoints.
//!
//! A checkpoint is a directory with `config.json` and either one `model.safetensors` or a
//! `model.safetensors.index.json` whose `weight_map` maps each tensor name to a shard file in
//! the same directory. Shards are memory-mapped; [`SafetensorsCheckpoint::tensor_f32`] converts
//! F32, F16 and BF16 tensors to `f32`.
//!
//! ```no_run
//! # fn main() -> longctx_io::Result<()> {
//! use longctx_io::safetensors::SafetensorsCheckpoint;
//! let ckpt = SafetensorsCheckpoint::open("checkpoints/tiny-llama")?;
//! let config = ckpt.config_json()?;
//! let (shape, data) = ckpt.tensor_f32("model.embed_tokens.weight")?;
//! # let _ = (config, shape, data);
//! # Ok(())
//! # }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};

use ::safetensors::tensor::{Metadata, SafeTensorError};
pub use ::safetensors::Dtype;
use ::safetensors::SafeTensors;

use crate::storage::Storage;
use crate::{Error, Result};

/// File name of a single-file checkpoint.
pub const SINGLE_FILE: &str = "model.safetensors";
/// File name of the shard index of a sharded checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// File name of the model configuration.
pub const CONFIG_FILE: &str = "config.json";

/// Dtype, shape and size of one tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafetensorsTensorInfo {
    /// The element type.
    pub dtype: Dtype,
    /// Row-major shape.
    pub shape: Vec<usize>,
    /// Size of the data in bytes.
    pub n_bytes: usize,
}

/// One parsed `.safetensors` file whose data stays memory-mapped.
#[derive(Debug)]
pub struct SafetensorsFile {
    path: PathBuf,
    storage: Storage,
    /// Offset of the data section: 8 + header length.
    data_start: usize,
    metadata: Metadata,
}

impl SafetensorsFile {
    /// Memory-maps and parses the file at `path`, validating the header against the file size.
    pub fn open(path: impl AsRef<Path>) -> Result<SafetensorsFile> {
        let path = path.as_ref();
        Self::parse(path.to_path_buf(), Storage::map(path)?)
    }

    /// Parses a safetensors file held in memory; errors name it `<memory>`.
    pub fn from_bytes(bytes: impl Into<Vec<u8>>) -> Result<SafetensorsFile> {
        Self::parse(PathBuf::from("<memory>"), Storage::Owned(bytes.into()))
    }

    fn parse(path: PathBuf, storage: Storage) -> Result<SafetensorsFile> {
        let (header_len, metadata) = SafeTensors::read_metadata(&storage)
            .map_err(|e| Error::format(&path, describe(&e, &storage)))?;
        let data_start = header_len
            .checked_add(8)
            .ok_or_else(|| Error::format(&path, "header length overflows"))?;
        Ok(SafetensorsFile {
            path,
            storage,
            data_start,
            metadata,
        })
    }

    /// The file's path, or `<memory>`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tensor names in the order their data appears in the file.
    pub fn tensor_names(&self) -> Vec<String> {
        self.metadata.offset_keys()
    }

    /// Whether the file has a tensor called `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.metadata.info(name).is_some()
    }

    /// The free-form `__metadata__` string map of the header, if any.
    pub fn user_metadata(&self) -> Option<&HashMap<String, String>> {
        self.metadata.metadata().as_ref()
    }

    /// Dtype and shape of the tensor called `name`.
    pub fn tensor_info(&self, name: &str) -> Result<SafetensorsTensorInfo> {
        let info = self.raw_info(name)?;
        Ok(SafetensorsTensorInfo {
            dtype: info.dtype,
            shape: info.shape.clone(),
            n_bytes: info.data_offsets.1.saturating_sub(info.data_offsets.0),
        })
    }

    fn raw_info(&self, name: &str) -> Result<&::safetensors::tensor::TensorInfo> {
        self.metadata
            .info(name)
            .ok_or_else(|| Error::TensorNotFound {
                path: self.path.clone(),
                tensor: name.to_string(),
            })
    }

    /// Dtype, shape and raw little-endian bytes of the tensor called `name`.
    pub fn tensor_bytes(&self, name: &str) -> Result<(Dtype, &[usize], &[u8])> {
        let info = self.raw_info(name)?;
        let (s, e) = info.data_offsets;
        // The header was validated against the file size; stay defensive anyway.
        let bytes = self
            .data_start
            .checked_add(s)
            .zip(self.data_start.checked_add(e))
            .and_then(|(a, b)| self.storage.get(a..b))
            .ok_or_else(|| {
                Error::tensor(
                    &self.path,
                    name,
                    format!(
                        "data range {s}..{e} lies outside the file ({} bytes)",
                        self.storage.len()
                    ),
                )
            })?;
        Ok((info.dtype, &info.shape, bytes))
    }

    /// The tensor called `name` as row-major shape and `f32` data; F32, F16 and BF16 only.
    pub fn tensor_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let (dtype, shape, bytes) = self.tensor_bytes(name)?;
        let data = match dtype {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16))
                .collect(),
            other => {
                return Err(Error::tensor(
                    &self.path,
                    name,
                    format!("dtype {other} is not supported (supported: F32, F16, BF16)"),
                ))
            }
        };
        Ok((shape.to_vec(), data))
    }
}

/// A message for a header error that says what is wrong in terms of this file.
fn describe(e: &SafeTensorError, buf: &[u8]) -> String {
    let len = buf.len();
    match e {
        SafeTensorError::HeaderTooSmall => {
            format!("not a safetensors file: {len} bytes is too short for the 8-byte header length")
        }
        SafeTensorError::InvalidHeaderLength | SafeTensorError::HeaderTooLarge => {
            let n = buf
                .get(..8)
                .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
                .unwrap_or(0);
            format!(
                "file is truncated or not safetensors: header length {n} runs past the end of the file ({len} bytes)"
            )
        }
        SafeTensorError::MetadataIncompleteBuffer => format!(
            "file is truncated or has trailing bytes: the header's tensor data does not end at the end of the file ({len} bytes)"
        ),
        SafeTensorError::InvalidOffset(name) => {
            format!("invalid safetensors header: tensor '{name}' has invalid data offsets")
        }
        other => format!("invalid safetensors header: {other}"),
    }
}

/// A Hugging Face checkpoint directory (single-file or sharded).
#[derive(Debug)]
pub struct SafetensorsCheckpoint {
    dir: PathBuf,
    files: Vec<SafetensorsFile>,
    /// Tensor name -> index into `files`.
    location: BTreeMap<String, usize>,
}

#[derive(serde::Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

impl SafetensorsCheckpoint {
    /// Opens a checkpoint. `path` is the checkpoint directory, or a single `.safetensors` file
    /// (then [`Self::config_json`] looks for `config.json` beside it).
    ///
    /// In a directory, `model.safetensors.index.json` takes precedence over
    /// `model.safetensors`. Every shard the index names is opened and checked now: a missing
    /// shard, or a tensor the index lists but its shard lacks, is an error here rather than
    /// at first use.
    pub fn open(path: impl AsRef<Path>) -> Result<SafetensorsCheckpoint> {
        let path = path.as_ref();
        let meta = std::fs::metadata(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            op: "open checkpoint",
            source,
        })?;
        if meta.is_file() {
            let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
            return Ok(Self::single(dir, SafetensorsFile::open(path)?));
        }
        let index_path = path.join(INDEX_FILE);
        if index_path.is_file() {
            return Self::sharded(path, &index_path);
        }
        let single = path.join(SINGLE_FILE);
        if single.is_file() {
            return Ok(Self::single(
                path.to_path_buf(),
                SafetensorsFile::open(&single)?,
            ));
        }
        Err(Error::format(
            path,
            format!("no {SINGLE_FILE} or {INDEX_FILE} in the checkpoint directory"),
        ))
    }

    fn single(dir: PathBuf, file: SafetensorsFile) -> SafetensorsCheckpoint {
        let location = file
            .tensor_names()
            .into_iter()
            .map(|name| (name, 0))
            .collect();
        SafetensorsCheckpoint {
            dir,
            files: vec![file],
            location,
        }
    }

    fn sharded(dir: &Path, index_path: &Path) -> Result<SafetensorsCheckpoint> {
        let text = std::fs::read(index_path).map_err(|source| Error::Io {
            path: index_path.to_path_buf(),
            op: "read",
            source,
        })?;
        let index: ShardIndex = serde_json::from_slice(&text).map_err(|source| Error::Json {
            path: index_path.to_path_buf(),
            source,
        })?;

        let mut shard_ids: BTreeMap<&str, usize> = BTreeMap::new();
        let mut files = Vec::new();
        let mut location = BTreeMap::new();
        for (tensor, shard) in &index.weight_map {
            let id = match shard_ids.get(shard.as_str()) {
                Some(&id) => id,
                None => {
                    if !is_plain_relative(shard) {
                        return Err(Error::tensor(
                            index_path,
                            tensor,
                            format!("shard '{shard}' is not a file name inside the checkpoint directory"),
                        ));
                    }
                    let shard_path = dir.join(shard);
                    if !shard_path.is_file() {
                        return Err(Error::tensor(
                            index_path,
                            tensor,
                            format!(
                                "the index maps it to shard '{shard}', but {} does not exist",
                                shard_path.display()
                            ),
                        ));
                    }
                    files.push(SafetensorsFile::open(&shard_path)?);
                    shard_ids.insert(shard, files.len() - 1);
                    files.len() - 1
                }
            };
            if !files[id].contains(tensor) {
                return Err(Error::tensor(
                    files[id].path(),
                    tensor,
                    format!("listed in {INDEX_FILE} but absent from this shard"),
                ));
            }
            location.insert(tensor.clone(), id);
        }
        Ok(SafetensorsCheckpoint {
            dir: dir.to_path_buf(),
            files,
            location,
        })
    }

    /// The checkpoint directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The opened `.safetensors` files (one, or the shards the index names).
    pub fn files(&self) -> &[SafetensorsFile] {
        &self.files
    }

    /// All tensor names, sorted. For sharded checkpoints these are the index's names.
    pub fn tensor_names(&self) -> Vec<&str> {
        self.location.keys().map(String::as_str).collect()
    }

    /// Whether the checkpoint has a tensor called `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.location.contains_key(name)
    }

    fn file_of(&self, name: &str) -> Result<&SafetensorsFile> {
        self.location
            .get(name)
            .map(|&i| &self.files[i])
            .ok_or_else(|| Error::TensorNotFound {
                path: self.dir.clone(),
                tensor: name.to_string(),
            })
    }

    /// Dtype and shape of the tensor called `name`.
    pub fn tensor_info(&self, name: &str) -> Result<SafetensorsTensorInfo> {
        self.file_of(name)?.tensor_info(name)
    }

    /// Dtype, shape and raw bytes of the tensor called `name`.
    pub fn tensor_bytes(&self, name: &str) -> Result<(Dtype, &[usize], &[u8])> {
        self.file_of(name)?.tensor_bytes(name)
    }

    /// The tensor called `name` as row-major shape and `f32` data (from F32, F16 or BF16).
    pub fn tensor_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        self.file_of(name)?.tensor_f32(name)
    }

    /// Path of `config.json` in the checkpoint directory.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join(CONFIG_FILE)
    }

    /// The parsed `config.json`.
    pub fn config_json(&self) -> Result<serde_json::Value> {
        let path = self.config_path();
        let text = std::fs::read(&path).map_err(|source| Error::Io {
            path: path.clone(),
            op: "read",
            source,
        })?;
        serde_json::from_slice(&text).map_err(|source| Error::Json { path, source })
    }
}

/// Whether `name` is a relative path that stays inside the checkpoint directory, so a
/// hostile index cannot make the reader open arbitrary files.
fn is_plain_relative(name: &str) -> bool {
    let p = Path::new(name);
    !name.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)))
}
