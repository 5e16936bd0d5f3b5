//! A small GGUF writer, for tests, fuzz corpora and tools that need to produce a file.
//! It holds everything in memory; it is not meant for multi-gigabyte models.

use std::path::Path;

use super::types::{GgmlType, MetadataArray, MetadataValue};
use super::{ALIGNMENT_KEY, DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_DIMS};
use crate::{Error, Result};

/// Builds a GGUF file from metadata and raw tensor bytes.
///
/// Tensors are laid out in the order added, each padded to the alignment, exactly as
/// llama.cpp's writer does.
///
/// ```
/// use longctx_io::gguf::{GgmlType, GgufFile, GgufWriter, MetadataValue};
/// let mut w = GgufWriter::new();
/// w.add_metadata("general.architecture", MetadataValue::String("llama".into()));
/// let data: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0].iter().flat_map(|v| v.to_le_bytes()).collect();
/// // ggml order: 3 columns (fastest-varying) by 2 rows.
/// w.add_tensor("w", &[3, 2], GgmlType::F32, data)?;
/// let file = GgufFile::from_bytes(w.to_bytes())?;
/// assert_eq!(file.tensor_info("w")?.shape(), vec![2, 3]);
/// assert_eq!(file.dequantize_f32("w")?, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
/// # Ok::<(), longctx_io::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct GgufWriter {
    version: u32,
    alignment: u32,
    explicit_alignment: bool,
    metadata: Vec<(String, MetadataValue)>,
    tensors: Vec<PendingTensor>,
}

#[derive(Debug, Clone)]
struct PendingTensor {
    name: String,
    dims: Vec<u64>,
    type_id: u32,
    data: Vec<u8>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufWriter {
    /// An empty version-3 file with the default alignment (32).
    pub fn new() -> Self {
        GgufWriter {
            version: 3,
            alignment: DEFAULT_ALIGNMENT as u32,
            explicit_alignment: false,
            metadata: Vec::new(),
            tensors: Vec::new(),
        }
    }

    /// Sets the version number written in the header. Any value is accepted so tests can
    /// produce files the reader must reject; the layout written is always v2/v3's.
    pub fn set_version(&mut self, version: u32) -> &mut Self {
        self.version = version;
        self
    }

    /// Sets the alignment and writes it as `general.alignment`. Must be a power of two.
    pub fn set_alignment(&mut self, alignment: u32) -> Result<&mut Self> {
        if !alignment.is_power_of_two() {
            return Err(Error::Writer(format!(
                "alignment {alignment} is not a power of two"
            )));
        }
        self.alignment = alignment;
        self.explicit_alignment = true;
        Ok(self)
    }

    /// Adds a metadata entry. Keys are written in insertion order; adding a key twice writes
    /// it twice (which readers reject), so tests can produce that case too.
    /// `general.alignment` is written by [`Self::set_alignment`], not here.
    pub fn add_metadata(&mut self, key: impl Into<String>, value: MetadataValue) -> &mut Self {
        self.metadata.push((key.into(), value));
        self
    }

    /// Adds a tensor from its raw bytes. `dims_ggml` is in ggml order (fastest-varying
    /// first); `data` must be exactly the size those dims take in `ggml_type`.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        dims_ggml: &[u64],
        ggml_type: GgmlType,
        data: Vec<u8>,
    ) -> Result<&mut Self> {
        let name = name.into();
        if dims_ggml.len() > MAX_DIMS {
            return Err(Error::Writer(format!(
                "tensor '{name}': {} dims, at most {MAX_DIMS} allowed",
                dims_ggml.len()
            )));
        }
        let n = dims_ggml
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .ok_or_else(|| Error::Writer(format!("tensor '{name}': element count overflows")))?;
        let row = dims_ggml.first().copied().unwrap_or(1);
        if !row.is_multiple_of(ggml_type.block_size()) {
            return Err(Error::Writer(format!(
                "tensor '{name}': first dim {row} is not a multiple of the {ggml_type} block size {}",
                ggml_type.block_size()
            )));
        }
        let expected = n / ggml_type.block_size() * ggml_type.type_size();
        if data.len() as u64 != expected {
            return Err(Error::Writer(format!(
                "tensor '{name}': shape {dims_ggml:?} of {ggml_type} needs {expected} bytes, got {}",
                data.len()
            )));
        }
        self.tensors.push(PendingTensor {
            name,
            dims: dims_ggml.to_vec(),
            type_id: ggml_type.id(),
            data,
        });
        Ok(self)
    }

    /// Adds an `F32` tensor given in row-major order with a row-major `shape`.
    pub fn add_f32_tensor(
        &mut self,
        name: impl Into<String>,
        shape: &[usize],
        values: &[f32],
    ) -> Result<&mut Self> {
        let dims: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.add_tensor(name, &dims, GgmlType::F32, data)
    }

    /// Adds a tensor with an arbitrary type id and no size check, for producing invalid files
    /// in tests. `data` is written as is and padded to the alignment.
    pub fn add_tensor_unchecked(
        &mut self,
        name: impl Into<String>,
        dims_ggml: &[u64],
        type_id: u32,
        data: Vec<u8>,
    ) -> &mut Self {
        self.tensors.push(PendingTensor {
            name: name.into(),
            dims: dims_ggml.to_vec(),
            type_id,
            data,
        });
        self
    }

    /// The complete file.
    pub fn to_bytes(&self) -> Vec<u8> {
        let align = u64::from(self.alignment);
        let mut out = Vec::new();
        out.extend_from_slice(&GGUF_MAGIC);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        let n_kv = self.metadata.len() + usize::from(self.explicit_alignment);
        out.extend_from_slice(&(n_kv as u64).to_le_bytes());
        if self.explicit_alignment {
            write_string(&mut out, ALIGNMENT_KEY);
            write_value(&mut out, &MetadataValue::U32(self.alignment));
        }
        for (key, value) in &self.metadata {
            write_string(&mut out, key);
            write_value(&mut out, value);
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            write_string(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.type_id.to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offset += padded(t.data.len() as u64, align);
        }
        pad(&mut out, align);
        for t in &self.tensors {
            out.extend_from_slice(&t.data);
            pad(&mut out, align);
        }
        out
    }

    /// Writes the file to `path`.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        std::fs::write(path, self.to_bytes()).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            op: "write",
            source,
        })
    }
}

fn padded(len: u64, align: u64) -> u64 {
    len.div_ceil(align) * align
}

fn pad(out: &mut Vec<u8>, align: u64) {
    let target = padded(out.len() as u64, align) as usize;
    out.resize(target, 0);
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn write_value(out: &mut Vec<u8>, v: &MetadataValue) {
    out.extend_from_slice(&v.value_type().id().to_le_bytes());
    write_payload(out, v);
}

fn write_payload(out: &mut Vec<u8>, v: &MetadataValue) {
    match v {
        MetadataValue::U8(x) => out.push(*x),
        MetadataValue::I8(x) => out.push(*x as u8),
        MetadataValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::Bool(x) => out.push(u8::from(*x)),
        MetadataValue::String(s) => write_string(out, s),
        MetadataValue::Array(a) => write_array(out, a),
        MetadataValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
    }
}

fn write_array(out: &mut Vec<u8>, a: &MetadataArray) {
    out.extend_from_slice(&a.element_type().id().to_le_bytes());
    out.extend_from_slice(&(a.len() as u64).to_le_bytes());
    macro_rules! each_le {
        ($v:expr) => {
            for x in $v {
                out.extend_from_slice(&x.to_le_bytes());
            }
        };
    }
    match a {
        MetadataArray::U8(v) => out.extend_from_slice(v),
        MetadataArray::I8(v) => out.extend(v.iter().map(|&x| x as u8)),
        MetadataArray::U16(v) => each_le!(v),
        MetadataArray::I16(v) => each_le!(v),
        MetadataArray::U32(v) => each_le!(v),
        MetadataArray::I32(v) => each_le!(v),
        MetadataArray::F32(v) => each_le!(v),
        MetadataArray::U64(v) => each_le!(v),
        MetadataArray::I64(v) => each_le!(v),
        MetadataArray::F64(v) => each_le!(v),
        MetadataArray::Bool(v) => out.extend(v.iter().map(|&b| u8::from(b))),
        MetadataArray::String(v) => v.iter().for_each(|s| write_string(out, s)),
        MetadataArray::Array(v) => v.iter().for_each(|inner| write_array(out, inner)),
    }
}
