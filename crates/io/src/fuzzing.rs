//! Entry points shared by the cargo-fuzz targets (`crates/io/fuzz`) and the deterministic
//! corpus-replay test. Not part of the stable API.
//!
//! Each function parses arbitrary bytes and then drives every accessor, so a fuzzer explores
//! the dequantizers and getters too, not only the header parser. Errors are expected and
//! ignored; only a panic (or an abort) is a bug.

use crate::gguf::{GgufFile, MetadataValue};
use crate::safetensors::SafetensorsFile;

/// Parses `data` as GGUF, reads every metadata key with every getter, and dequantizes every
/// tensor. Returns whether the bytes parsed.
pub fn gguf(data: &[u8]) -> bool {
    let Ok(file) = GgufFile::from_bytes(data) else {
        return false;
    };
    let keys: Vec<String> = file.metadata().keys().cloned().collect();
    for key in &keys {
        let _ = file.get_u8(key);
        let _ = file.get_i8(key);
        let _ = file.get_u16(key);
        let _ = file.get_i16(key);
        let _ = file.get_u32(key);
        let _ = file.get_i32(key);
        let _ = file.get_u64(key);
        let _ = file.get_i64(key);
        let _ = file.get_f32(key);
        let _ = file.get_f64(key);
        let _ = file.get_bool(key);
        let _ = file.get_str(key);
        let _ = file.get_uint(key);
        let _ = file.get_float(key);
        let _ = file.get_array(key);
        let _ = file.get_string_array(key);
        let _ = file.get_f32_array(key);
        let _ = file.get_i32_array(key);
        let _ = file.get_u32_array(key);
        let _ = file.get_u64_array(key);
        if let Ok(v) = file.get(key) {
            let _ = (v.as_u64(), v.as_f64(), v.as_str(), v.value_type());
            if let MetadataValue::Array(a) = v {
                let _ = (a.len(), a.element_type());
            }
        }
    }
    let _ = file.architecture();
    let names: Vec<String> = file
        .tensors()
        .iter()
        .map(|t| t.name().to_string())
        .collect();
    for name in &names {
        let Ok(info) = file.tensor_info(name) else {
            continue;
        };
        let _ = (info.shape(), info.shape_ggml(), info.file_range());
        let _ = file.tensor_bytes(name);
        if let Ok(values) = file.dequantize_f32(name) {
            assert_eq!(values.len() as u64, info.n_elements());
        }
        let _ = file.tensor_f16(name);
    }
    true
}

/// Parses `data` as one safetensors file and converts every tensor to `f32`. Returns whether
/// the bytes parsed.
pub fn safetensors(data: &[u8]) -> bool {
    let Ok(file) = SafetensorsFile::from_bytes(data) else {
        return false;
    };
    let _ = file.user_metadata();
    for name in file.tensor_names() {
        let _ = file.tensor_info(&name);
        let _ = file.tensor_bytes(&name);
        if let Ok((shape, values)) = file.tensor_f32(&name) {
            assert_eq!(shape.iter().product::<usize>(), values.len());
        }
    }
    true
}
