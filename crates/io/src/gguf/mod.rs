//! GGUF (llama.cpp's weight format), versions 2 and 3.
//!
//! Layout, all little-endian: magic `"GGUF"`, `u32` version, `u64` tensor count, `u64`
//! metadata count, the metadata entries (string key, `u32` value type, value), the tensor
//! directory (string name, `u32` n_dims, `n_dims` × `u64` dims with the fastest-varying first,
//! `u32` ggml type, `u64` offset), padding to `general.alignment` (default 32), then the data
//! section; tensor offsets are relative to its start. Strings are a `u64` byte length and
//! UTF-8 bytes.
//!
//! [`GgufFile`] validates all of that up front — every count against the bytes left, every
//! tensor's data range against the file size, all offset arithmetic checked — so that the
//! accessors afterwards cannot fail on a structurally bad file.
//!
//! ```no_run
//! # fn main() -> longctx_io::Result<()> {
//! use longctx_io::gguf::GgufFile;
//! let file = GgufFile::open("model.gguf")?;
//! let n_layers = file.get_u32("llama.block_count")?;
//! let vocab = file.get_string_array("tokenizer.ggml.tokens")?;
//! let info = file.tensor_info("token_embd.weight")?;
//! println!("{} {:?} {}", info.name(), info.shape(), info.ggml_type());
//! let embd: Vec<f32> = file.dequantize_f32("token_embd.weight")?;
//! # let _ = (n_layers, vocab, embd);
//! # Ok(())
//! # }
//! ```

mod dequant;
mod parse;
mod types;
mod writer;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

pub use dequant::{dequantize, dequantize_into, DequantError};
pub use types::{GgmlType, MetadataArray, MetadataValue, ValueType, ALL_GGML_TYPES};
pub use writer::GgufWriter;

use crate::storage::Storage;
use crate::{Error, Result};

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of the data section and tensor offsets when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// The metadata key that overrides [`DEFAULT_ALIGNMENT`].
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// ggml tensors have at most four dimensions.
pub const MAX_DIMS: usize = 4;

/// Label used in error messages for buffers parsed with [`GgufFile::from_bytes`].
const MEMORY_LABEL: &str = "<memory>";

/// One entry of the tensor directory, validated against the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    name: String,
    dims: Vec<u64>,
    ggml_type: GgmlType,
    offset: u64,
    n_elements: u64,
    n_bytes: u64,
    /// Absolute byte offset in the file of the first data byte.
    start: u64,
}

impl TensorInfo {
    /// The tensor's name, e.g. `"blk.0.attn_q.weight"`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Dimensions in ggml order: `ne[0]` first, the fastest-varying (contiguous) one.
    pub fn shape_ggml(&self) -> &[u64] {
        &self.dims
    }

    /// Dimensions in row-major ("PyTorch") order: the reverse of [`Self::shape_ggml`], so a
    /// ggml `[n_embd, n_vocab]` embedding is `[n_vocab, n_embd]` here, and the flat data from
    /// [`GgufFile::dequantize_f32`] is laid out row-major in this shape.
    pub fn shape(&self) -> Vec<usize> {
        // The parser rejects dims and element counts above usize::MAX, so this is lossless.
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    /// The element type.
    pub fn ggml_type(&self) -> GgmlType {
        self.ggml_type
    }

    /// Offset of the data relative to the start of the data section, as stored.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Absolute byte range of the data in the file.
    pub fn file_range(&self) -> std::ops::Range<u64> {
        self.start..self.start + self.n_bytes
    }

    /// Number of elements (the product of the dims; 1 for zero dims).
    pub fn n_elements(&self) -> u64 {
        self.n_elements
    }

    /// Size of the data in bytes.
    pub fn n_bytes(&self) -> u64 {
        self.n_bytes
    }
}

/// A parsed GGUF file whose tensor data stays memory-mapped until asked for.
#[derive(Debug)]
pub struct GgufFile {
    path: PathBuf,
    storage: Storage,
    version: u32,
    metadata: BTreeMap<String, MetadataValue>,
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
    alignment: u64,
    data_offset: u64,
}

impl GgufFile {
    /// Memory-maps and parses the file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref();
        let storage = Storage::map(path)?;
        Self::parse(path.to_path_buf(), storage)
    }

    /// Parses a GGUF file held in memory; errors name the file `<memory>`.
    pub fn from_bytes(bytes: impl Into<Vec<u8>>) -> Result<GgufFile> {
        Self::parse(PathBuf::from(MEMORY_LABEL), Storage::Owned(bytes.into()))
    }

    fn parse(path: PathBuf, storage: Storage) -> Result<GgufFile> {
        let header = parse::parse(&path, &storage)?;
        let by_name = header
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(GgufFile {
            path,
            storage,
            version: header.version,
            metadata: header.metadata,
            tensors: header.tensors,
            by_name,
            alignment: header.alignment,
            data_offset: header.data_offset,
        })
    }

    /// The path given to [`Self::open`], or `<memory>`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The alignment of the data section and tensor offsets.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute offset of the data section in the file.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// The size of the file in bytes.
    pub fn file_len(&self) -> u64 {
        self.storage.len() as u64
    }

    /// All metadata entries, sorted by key.
    pub fn metadata(&self) -> &BTreeMap<String, MetadataValue> {
        &self.metadata
    }

    /// The value at `key`, if present.
    pub fn metadata_value(&self, key: &str) -> Option<&MetadataValue> {
        self.metadata.get(key)
    }

    /// The value at `key`, or an error naming the key when it is missing.
    pub fn get(&self, key: &str) -> Result<&MetadataValue> {
        self.metadata
            .get(key)
            .ok_or_else(|| Error::metadata(&self.path, key, "missing"))
    }

    fn wrong_type(&self, key: &str, expected: &str, found: &MetadataValue) -> Error {
        let found = match found {
            MetadataValue::Array(a) => format!("array of {}", a.element_type()),
            other => other.value_type().to_string(),
        };
        Error::metadata(
            &self.path,
            key,
            format!("expected {expected}, found {found}"),
        )
    }
}

macro_rules! scalar_getters {
    ($($(#[$doc:meta])* $name:ident => $variant:ident: $t:ty, $tname:literal;)*) => {
        impl GgufFile {
            $(
                $(#[$doc])*
                pub fn $name(&self, key: &str) -> Result<$t> {
                    match self.get(key)? {
                        MetadataValue::$variant(v) => Ok(v.clone()),
                        other => Err(self.wrong_type(key, $tname, other)),
                    }
                }
            )*
        }
    };
}

scalar_getters! {
    /// The `u8` at `key`; an error if missing or of another type.
    get_u8 => U8: u8, "u8";
    /// The `i8` at `key`; an error if missing or of another type.
    get_i8 => I8: i8, "i8";
    /// The `u16` at `key`; an error if missing or of another type.
    get_u16 => U16: u16, "u16";
    /// The `i16` at `key`; an error if missing or of another type.
    get_i16 => I16: i16, "i16";
    /// The `u32` at `key`; an error if missing or of another type.
    get_u32 => U32: u32, "u32";
    /// The `i32` at `key`; an error if missing or of another type.
    get_i32 => I32: i32, "i32";
    /// The `u64` at `key`; an error if missing or of another type.
    get_u64 => U64: u64, "u64";
    /// The `i64` at `key`; an error if missing or of another type.
    get_i64 => I64: i64, "i64";
    /// The `f32` at `key`; an error if missing or of another type.
    get_f32 => F32: f32, "f32";
    /// The `f64` at `key`; an error if missing or of another type.
    get_f64 => F64: f64, "f64";
    /// The `bool` at `key`; an error if missing or of another type.
    get_bool => Bool: bool, "bool";
}

macro_rules! array_getters {
    ($($(#[$doc:meta])* $name:ident => $variant:ident: $t:ty, $tname:literal;)*) => {
        impl GgufFile {
            $(
                $(#[$doc])*
                pub fn $name(&self, key: &str) -> Result<&[$t]> {
                    match self.get(key)? {
                        MetadataValue::Array(MetadataArray::$variant(v)) => Ok(v),
                        other => Err(self.wrong_type(key, $tname, other)),
                    }
                }
            )*
        }
    };
}

array_getters! {
    /// The array of strings at `key` (e.g. `tokenizer.ggml.tokens`).
    get_string_array => String: String, "array of string";
    /// The array of `f32` at `key` (e.g. `tokenizer.ggml.scores`).
    get_f32_array => F32: f32, "array of f32";
    /// The array of `i32` at `key` (e.g. `tokenizer.ggml.token_type`).
    get_i32_array => I32: i32, "array of i32";
    /// The array of `u32` at `key`.
    get_u32_array => U32: u32, "array of u32";
    /// The array of `u64` at `key`.
    get_u64_array => U64: u64, "array of u64";
}

impl GgufFile {
    /// The string at `key`; an error if missing or of another type.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        match self.get(key)? {
            MetadataValue::String(s) => Ok(s),
            other => Err(self.wrong_type(key, "string", other)),
        }
    }

    /// The array at `key`, whatever its element type.
    pub fn get_array(&self, key: &str) -> Result<&MetadataArray> {
        match self.get(key)? {
            MetadataValue::Array(a) => Ok(a),
            other => Err(self.wrong_type(key, "array", other)),
        }
    }

    /// The integer at `key` as `u64`, accepting any integer width that holds a non-negative
    /// value; writers differ on widths for the same hyper-parameter.
    pub fn get_uint(&self, key: &str) -> Result<u64> {
        let v = self.get(key)?;
        v.as_u64()
            .ok_or_else(|| self.wrong_type(key, "non-negative integer", v))
    }

    /// The float at `key` as `f64`, accepting `f32` or `f64`.
    pub fn get_float(&self, key: &str) -> Result<f64> {
        let v = self.get(key)?;
        v.as_f64().ok_or_else(|| self.wrong_type(key, "float", v))
    }

    /// `general.architecture`, e.g. `"llama"`.
    pub fn architecture(&self) -> Result<&str> {
        self.get_str("general.architecture")
    }

    /// The tensor directory, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The directory entry of the tensor called `name`.
    pub fn tensor_info(&self, name: &str) -> Result<&TensorInfo> {
        self.by_name
            .get(name)
            .map(|&i| &self.tensors[i])
            .ok_or_else(|| Error::TensorNotFound {
                path: self.path.clone(),
                tensor: name.to_string(),
            })
    }

    /// The raw (still quantized) bytes of the tensor called `name`.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8]> {
        let info = self.tensor_info(name)?;
        Ok(self.bytes_of(info))
    }

    fn bytes_of(&self, info: &TensorInfo) -> &[u8] {
        // The parser checked start + n_bytes <= file length, so this cannot be out of range.
        let r = info.file_range();
        &self.storage[r.start as usize..r.end as usize]
    }

    /// The tensor called `name` converted to `f32`, flat, row-major in
    /// [`TensorInfo::shape`] order.
    pub fn dequantize_f32(&self, name: &str) -> Result<Vec<f32>> {
        let info = self.tensor_info(name)?;
        dequantize(
            info.ggml_type,
            self.bytes_of(info),
            info.n_elements as usize,
        )
        .map_err(|source| Error::Dequant {
            path: self.path.clone(),
            tensor: name.to_string(),
            source,
        })
    }

    /// Like [`Self::dequantize_f32`], writing into `out`, whose length must equal the
    /// tensor's element count.
    pub fn dequantize_f32_into(&self, name: &str, out: &mut [f32]) -> Result<()> {
        let info = self.tensor_info(name)?;
        if out.len() as u64 != info.n_elements {
            return Err(Error::tensor(
                &self.path,
                name,
                format!(
                    "output buffer has {} elements but the tensor has {}",
                    out.len(),
                    info.n_elements
                ),
            ));
        }
        dequantize_into(info.ggml_type, self.bytes_of(info), out).map_err(|source| Error::Dequant {
            path: self.path.clone(),
            tensor: name.to_string(),
            source,
        })
    }

    /// The tensor called `name` as `f16`: F16 data is copied bit for bit, other types are
    /// dequantized to `f32` and rounded to nearest.
    pub fn tensor_f16(&self, name: &str) -> Result<Vec<half::f16>> {
        let info = self.tensor_info(name)?;
        if info.ggml_type == GgmlType::F16 {
            return Ok(self
                .bytes_of(info)
                .chunks_exact(2)
                .map(|b| half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])))
                .collect());
        }
        Ok(self
            .dequantize_f32(name)?
            .into_iter()
            .map(half::f16::from_f32)
            .collect())
    }
}
