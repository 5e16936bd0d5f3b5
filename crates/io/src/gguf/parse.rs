//! The GGUF header parser. Everything here is untrusted input: counts are checked against the
//! bytes left before allocating, and all offset arithmetic is checked.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use super::types::{GgmlType, MetadataArray, MetadataValue, ValueType};
use super::{TensorInfo, ALIGNMENT_KEY, DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_DIMS};
use crate::{Error, Result};

/// Arrays of arrays deeper than this are rejected: real files nest at most once, and the
/// parser recurses per level, so unbounded nesting in a hostile file would overflow the stack.
const MAX_ARRAY_DEPTH: usize = 8;

pub(super) struct Header {
    pub version: u32,
    pub metadata: BTreeMap<String, MetadataValue>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    pub data_offset: u64,
}

/// What is being read, so errors can say where.
#[derive(Clone, Copy)]
enum Ctx<'a> {
    Header,
    KvEntry(u64),
    Key(&'a str),
    TensorEntry(u64),
    Tensor(&'a str),
}

struct Reader<'a> {
    path: &'a Path,
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn err(&self, ctx: Ctx<'_>, message: String) -> Error {
        match ctx {
            Ctx::Header => Error::format(self.path, message),
            Ctx::KvEntry(i) => Error::format(self.path, format!("metadata entry #{i}: {message}")),
            Ctx::Key(k) => Error::metadata(self.path, k, message),
            Ctx::TensorEntry(i) => {
                Error::format(self.path, format!("tensor entry #{i}: {message}"))
            }
            Ctx::Tensor(t) => Error::tensor(self.path, t, message),
        }
    }

    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    /// The next `n` bytes, or a truncation error naming `what`.
    fn take(&mut self, n: u64, ctx: Ctx<'_>, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            let end = (self.pos as u64).saturating_add(n);
            return Err(self.err(
                ctx,
                format!(
                    "file is truncated: {what} needs bytes {}..{end} but the file has {} bytes",
                    self.pos,
                    self.buf.len()
                ),
            ));
        }
        // n <= remaining, which fits usize.
        let n = n as usize;
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, ctx: Ctx<'_>, what: &str) -> Result<[u8; N]> {
        let s = self.take(N as u64, ctx, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, ctx: Ctx<'_>, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(ctx, what)?))
    }

    fn u64(&mut self, ctx: Ctx<'_>, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(ctx, what)?))
    }

    fn string(&mut self, ctx: Ctx<'_>, what: &str) -> Result<String> {
        let len = self.u64(ctx, what)?;
        if len > self.remaining() {
            return Err(self.err(
                ctx,
                format!(
                    "{what} claims {len} bytes at offset {} but only {} bytes remain in the file",
                    self.pos,
                    self.remaining()
                ),
            ));
        }
        let at = self.pos;
        let bytes = self.take(len, ctx, what)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_string()),
            Err(e) => Err(self.err(
                ctx,
                format!("{what} at offset {at} is not valid UTF-8: {e}"),
            )),
        }
    }

    /// Checks that `count` values of at least `min_size` bytes each can fit in what is left,
    /// so that a corrupt count is an error instead of a huge allocation.
    fn check_count(&self, count: u64, min_size: u64, ctx: Ctx<'_>, what: &str) -> Result<usize> {
        let fits = count
            .checked_mul(min_size)
            .is_some_and(|need| need <= self.remaining());
        if !fits {
            return Err(self.err(
                ctx,
                format!(
                    "{what} count {count} cannot fit in the {} bytes left in the file",
                    self.remaining()
                ),
            ));
        }
        // count <= remaining bytes, which fits usize.
        Ok(count as usize)
    }

    fn value_type(&mut self, ctx: Ctx<'_>, what: &str) -> Result<ValueType> {
        let id = self.u32(ctx, what)?;
        ValueType::from_id(id)
            .ok_or_else(|| self.err(ctx, format!("unknown metadata value type {id}")))
    }

    fn value(&mut self, ty: ValueType, ctx: Ctx<'_>) -> Result<MetadataValue> {
        let v = match ty {
            ValueType::U8 => MetadataValue::U8(self.array::<1>(ctx, "u8 value")?[0]),
            ValueType::I8 => MetadataValue::I8(self.array::<1>(ctx, "i8 value")?[0] as i8),
            ValueType::U16 => MetadataValue::U16(u16::from_le_bytes(self.array(ctx, "u16 value")?)),
            ValueType::I16 => MetadataValue::I16(i16::from_le_bytes(self.array(ctx, "i16 value")?)),
            ValueType::U32 => MetadataValue::U32(self.u32(ctx, "u32 value")?),
            ValueType::I32 => MetadataValue::I32(i32::from_le_bytes(self.array(ctx, "i32 value")?)),
            ValueType::F32 => MetadataValue::F32(f32::from_le_bytes(self.array(ctx, "f32 value")?)),
            ValueType::Bool => MetadataValue::Bool(self.bool(ctx)?),
            ValueType::String => MetadataValue::String(self.string(ctx, "string value")?),
            ValueType::Array => MetadataValue::Array(self.array_value(ctx, 0)?),
            ValueType::U64 => MetadataValue::U64(self.u64(ctx, "u64 value")?),
            ValueType::I64 => MetadataValue::I64(i64::from_le_bytes(self.array(ctx, "i64 value")?)),
            ValueType::F64 => MetadataValue::F64(f64::from_le_bytes(self.array(ctx, "f64 value")?)),
        };
        Ok(v)
    }

    fn bool(&mut self, ctx: Ctx<'_>) -> Result<bool> {
        let at = self.pos;
        match self.array::<1>(ctx, "bool value")?[0] {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(self.err(ctx, format!("bool at offset {at} has invalid byte {b}"))),
        }
    }

    fn array_value(&mut self, ctx: Ctx<'_>, depth: usize) -> Result<MetadataArray> {
        if depth >= MAX_ARRAY_DEPTH {
            return Err(self.err(
                ctx,
                format!("arrays nested deeper than {MAX_ARRAY_DEPTH} levels"),
            ));
        }
        let ty = self.value_type(ctx, "array element type")?;
        let count = self.u64(ctx, "array length")?;
        let n = self.check_count(count, ty.min_encoded_size(), ctx, "array element")?;

        macro_rules! fixed {
            ($variant:ident, $t:ty) => {{
                let size = std::mem::size_of::<$t>();
                // n * size <= remaining was checked above.
                let bytes = self.take((n * size) as u64, ctx, "array data")?;
                MetadataArray::$variant(
                    bytes
                        .chunks_exact(size)
                        .map(|c| <$t>::from_le_bytes(c.try_into().expect("chunk of size_of")))
                        .collect(),
                )
            }};
        }

        let a = match ty {
            ValueType::U8 => MetadataArray::U8(self.take(n as u64, ctx, "array data")?.to_vec()),
            ValueType::I8 => MetadataArray::I8(
                self.take(n as u64, ctx, "array data")?
                    .iter()
                    .map(|&b| b as i8)
                    .collect(),
            ),
            ValueType::U16 => fixed!(U16, u16),
            ValueType::I16 => fixed!(I16, i16),
            ValueType::U32 => fixed!(U32, u32),
            ValueType::I32 => fixed!(I32, i32),
            ValueType::F32 => fixed!(F32, f32),
            ValueType::U64 => fixed!(U64, u64),
            ValueType::I64 => fixed!(I64, i64),
            ValueType::F64 => fixed!(F64, f64),
            ValueType::Bool => {
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.bool(ctx)?);
                }
                MetadataArray::Bool(v)
            }
            ValueType::String => {
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.string(ctx, "string array element")?);
                }
                MetadataArray::String(v)
            }
            ValueType::Array => {
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.array_value(ctx, depth + 1)?);
                }
                MetadataArray::Array(v)
            }
        };
        Ok(a)
    }
}

pub(super) fn parse(path: &Path, buf: &[u8]) -> Result<Header> {
    let mut r = Reader { path, buf, pos: 0 };
    let h = Ctx::Header;

    if buf.len() < 4 {
        return Err(Error::format(
            path,
            format!(
                "not a GGUF file: {} bytes is too short for the magic number",
                buf.len()
            ),
        ));
    }
    let magic: [u8; 4] = r.array(h, "magic")?;
    if magic != GGUF_MAGIC {
        return Err(Error::format(
            path,
            format!(
                "not a GGUF file: magic is {magic:02x?} ({:?}), expected \"GGUF\"",
                String::from_utf8_lossy(&magic)
            ),
        ));
    }
    let version = r.u32(h, "version")?;
    match version {
        2 | 3 => {}
        v if v.swap_bytes() == 2 || v.swap_bytes() == 3 => {
            return Err(Error::format(
                path,
                "big-endian GGUF files are not supported",
            ))
        }
        v => {
            return Err(Error::format(
                path,
                format!("unsupported GGUF version {v} (supported: 2, 3)"),
            ))
        }
    }
    let n_tensors = r.u64(h, "tensor count")?;
    let n_kv = r.u64(h, "metadata entry count")?;
    // Minimum sizes: key length (8) + value type (4) + a one-byte value; name length (8) +
    // n_dims (4) + type (4) + offset (8).
    r.check_count(n_kv, 13, h, "metadata entry")?;
    r.check_count(n_tensors, 24, h, "tensor")?;

    let mut metadata = BTreeMap::new();
    for i in 0..n_kv {
        let key = r.string(Ctx::KvEntry(i), "metadata key")?;
        let ctx = Ctx::Key(&key);
        let ty = r.value_type(ctx, "value type")?;
        let value = r.value(ty, ctx)?;
        if metadata.contains_key(&key) {
            return Err(Error::metadata(path, key, "duplicate key"));
        }
        metadata.insert(key, value);
    }

    let alignment = match metadata.get(ALIGNMENT_KEY) {
        None => DEFAULT_ALIGNMENT,
        Some(MetadataValue::U32(a)) if a.is_power_of_two() => u64::from(*a),
        Some(MetadataValue::U32(a)) => {
            return Err(Error::metadata(
                path,
                ALIGNMENT_KEY,
                format!("alignment {a} is not a power of two"),
            ))
        }
        Some(other) => {
            return Err(Error::metadata(
                path,
                ALIGNMENT_KEY,
                format!("expected u32, found {}", other.value_type()),
            ))
        }
    };

    let mut raw = Vec::with_capacity(n_tensors as usize);
    let mut names = HashSet::with_capacity(n_tensors as usize);
    for i in 0..n_tensors {
        let name = r.string(Ctx::TensorEntry(i), "tensor name")?;
        let ctx = Ctx::Tensor(&name);
        let n_dims = r.u32(ctx, "n_dims")?;
        if n_dims as usize > MAX_DIMS {
            return Err(r.err(
                ctx,
                format!("n_dims {n_dims} exceeds the maximum of {MAX_DIMS}"),
            ));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(r.u64(ctx, "dimension")?);
        }
        let type_id = r.u32(ctx, "ggml type")?;
        let ggml_type = GgmlType::from_id(type_id)
            .ok_or_else(|| r.err(ctx, format!("unknown ggml type id {type_id}")))?;
        let offset = r.u64(ctx, "data offset")?;
        if !names.insert(name.clone()) {
            return Err(r.err(ctx, "duplicate tensor name".to_string()));
        }
        raw.push((name, dims, ggml_type, offset));
    }

    let data_offset = align_up(r.pos as u64, alignment)
        .ok_or_else(|| Error::format(path, "data section offset overflows".to_string()))?;

    let file_len = buf.len() as u64;
    let mut tensors = Vec::with_capacity(raw.len());
    for (name, dims, ggml_type, offset) in raw {
        let info = tensor_info(
            name,
            dims,
            ggml_type,
            offset,
            alignment,
            data_offset,
            file_len,
        )
        .map_err(|(name, message)| Error::tensor(path, name, message))?;
        tensors.push(info);
    }

    Ok(Header {
        version,
        metadata,
        tensors,
        alignment,
        data_offset,
    })
}

fn align_up(x: u64, alignment: u64) -> Option<u64> {
    // alignment is a power of two.
    Some(x.checked_add(alignment - 1)? & !(alignment - 1))
}

/// Validates one directory entry against the file; errors carry the name back for the message.
fn tensor_info(
    name: String,
    dims: Vec<u64>,
    ggml_type: GgmlType,
    offset: u64,
    alignment: u64,
    data_offset: u64,
    file_len: u64,
) -> std::result::Result<TensorInfo, (String, String)> {
    macro_rules! bail {
        ($($arg:tt)*) => { return Err((name, format!($($arg)*))) };
    }
    // ggml stores dims as int64, and consumers index with usize.
    let limit = (i64::MAX as u64).min(usize::MAX as u64);
    if let Some(d) = dims.iter().find(|&&d| d > limit) {
        bail!("dimension {d} is too large (shape {dims:?})");
    }
    let n_elements = match dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d)) {
        Some(n) if n <= limit => n,
        _ => bail!("element count of shape {dims:?} overflows"),
    };
    let block = ggml_type.block_size();
    let row = dims.first().copied().unwrap_or(1);
    if !row.is_multiple_of(block) {
        bail!(
            "first dimension {row} (shape {dims:?}) is not a multiple of the {ggml_type} block size {block}"
        );
    }
    let Some(n_bytes) = (n_elements / block).checked_mul(ggml_type.type_size()) else {
        bail!("byte size of shape {dims:?} ({ggml_type}) overflows");
    };
    if !offset.is_multiple_of(alignment) {
        bail!("data offset {offset} is not a multiple of the alignment {alignment}");
    }
    let Some(start) = data_offset.checked_add(offset) else {
        bail!("data offset {offset} overflows");
    };
    let Some(end) = start.checked_add(n_bytes) else {
        bail!("data end (offset {offset} + {n_bytes} bytes) overflows");
    };
    if end > file_len {
        bail!("data ends at byte {end} but the file has {file_len} bytes");
    }
    Ok(TensorInfo {
        name,
        dims,
        ggml_type,
        offset,
        n_elements,
        n_bytes,
        start,
    })
}
