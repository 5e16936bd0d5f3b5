//! Conversion of ggml blocks to `f32`, following ggml's block layouts byte for byte.
//!
//! All multi-byte fields are little-endian. `d`/`dmin`/`m` scales are IEEE f16 except Q8_K's
//! `d`, which is f32. The arithmetic order matches ggml's reference (non-SIMD) code, so
//! results are bit-identical to llama.cpp's and gguf-py's dequantizers.

use half::f16;

use super::GgmlType;

/// Why a buffer could not be dequantized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DequantError {
    /// The type is known but has no dequantizer here.
    #[error("dequantizing ggml type {0} is not supported")]
    Unsupported(GgmlType),
    /// The element count is not a whole number of blocks.
    #[error("{n_elements} elements is not a multiple of the {ty} block size {block_size}")]
    PartialBlock {
        /// The type.
        ty: GgmlType,
        /// Requested element count.
        n_elements: u64,
        /// Elements per block of `ty`.
        block_size: u64,
    },
    /// The byte buffer does not hold exactly the blocks the element count needs.
    #[error("{n_elements} {ty} elements need {expected} bytes but {actual} were given")]
    Length {
        /// The type.
        ty: GgmlType,
        /// Requested element count.
        n_elements: u64,
        /// Bytes those elements take.
        expected: u64,
        /// Bytes given.
        actual: u64,
    },
}

/// Dequantizes `data`, which holds `out.len()` elements of type `ty`, into `out`.
///
/// `out.len()` must be a multiple of `ty`'s block size and `data.len()` exactly the size of
/// those blocks.
pub fn dequantize_into(ty: GgmlType, data: &[u8], out: &mut [f32]) -> Result<(), DequantError> {
    if !ty.can_dequantize() {
        return Err(DequantError::Unsupported(ty));
    }
    let n = out.len() as u64;
    let bs = ty.block_size();
    if !n.is_multiple_of(bs) {
        return Err(DequantError::PartialBlock {
            ty,
            n_elements: n,
            block_size: bs,
        });
    }
    // n / bs * type_size cannot overflow: type_size <= bs * 8 for every supported type.
    let expected = n / bs * ty.type_size();
    if data.len() as u64 != expected {
        return Err(DequantError::Length {
            ty,
            n_elements: n,
            expected,
            actual: data.len() as u64,
        });
    }
    let ts = ty.type_size() as usize;
    let bs = bs as usize;
    let blocks = data.chunks_exact(ts).zip(out.chunks_exact_mut(bs));
    match ty {
        GgmlType::F32 => blocks.for_each(|(b, o)| o[0] = f32::from_le_bytes(arr(b))),
        GgmlType::F16 => blocks.for_each(|(b, o)| o[0] = half_at(b, 0)),
        GgmlType::BF16 => blocks.for_each(|(b, o)| o[0] = bf16_at(b, 0)),
        GgmlType::F64 => blocks.for_each(|(b, o)| o[0] = f64::from_le_bytes(arr(b)) as f32),
        GgmlType::I8 => blocks.for_each(|(b, o)| o[0] = b[0] as i8 as f32),
        GgmlType::I16 => blocks.for_each(|(b, o)| o[0] = i16::from_le_bytes(arr(b)) as f32),
        GgmlType::I32 => blocks.for_each(|(b, o)| o[0] = i32::from_le_bytes(arr(b)) as f32),
        GgmlType::Q4_0 => blocks.for_each(|(b, o)| q4_0(b, o)),
        GgmlType::Q4_1 => blocks.for_each(|(b, o)| q4_1(b, o)),
        GgmlType::Q5_0 => blocks.for_each(|(b, o)| q5_0(b, o)),
        GgmlType::Q5_1 => blocks.for_each(|(b, o)| q5_1(b, o)),
        GgmlType::Q8_0 => blocks.for_each(|(b, o)| q8_0(b, o)),
        GgmlType::Q4_K => blocks.for_each(|(b, o)| q4_k(b, o)),
        GgmlType::Q5_K => blocks.for_each(|(b, o)| q5_k(b, o)),
        GgmlType::Q6_K => blocks.for_each(|(b, o)| q6_k(b, o)),
        GgmlType::Q8_K => blocks.for_each(|(b, o)| q8_k(b, o)),
        _ => unreachable!("can_dequantize() lists exactly the types handled here"),
    }
    Ok(())
}

/// Dequantizes `n_elements` elements of type `ty` from `data` into a new vector.
pub fn dequantize(ty: GgmlType, data: &[u8], n_elements: usize) -> Result<Vec<f32>, DequantError> {
    if !ty.can_dequantize() {
        return Err(DequantError::Unsupported(ty));
    }
    // Check the length before allocating, so a bogus count cannot request a huge buffer.
    let bs = ty.block_size();
    let n = n_elements as u64;
    if !n.is_multiple_of(bs) {
        return Err(DequantError::PartialBlock {
            ty,
            n_elements: n,
            block_size: bs,
        });
    }
    let expected = n / bs * ty.type_size();
    if data.len() as u64 != expected {
        return Err(DequantError::Length {
            ty,
            n_elements: n,
            expected,
            actual: data.len() as u64,
        });
    }
    let mut out = vec![0.0f32; n_elements];
    dequantize_into(ty, data, &mut out)?;
    Ok(out)
}

fn arr<const N: usize>(b: &[u8]) -> [u8; N] {
    // Callers pass slices cut to exactly N bytes by chunks_exact or fixed ranges.
    let mut a = [0u8; N];
    a.copy_from_slice(&b[..N]);
    a
}

fn half_at(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

fn bf16_at(b: &[u8], at: usize) -> f32 {
    f32::from_bits((u32::from(u16::from_le_bytes([b[at], b[at + 1]]))) << 16)
}

/// block_q4_0: d: f16, qs: [u8; 16]. Element j is the low nibble of qs[j], element j+16 the
/// high nibble; values are (q - 8) * d.
fn q4_0(b: &[u8], out: &mut [f32]) {
    let d = half_at(b, 0);
    let qs = &b[2..18];
    for j in 0..16 {
        out[j] = ((qs[j] & 0x0F) as i32 - 8) as f32 * d;
        out[j + 16] = ((qs[j] >> 4) as i32 - 8) as f32 * d;
    }
}

/// block_q4_1: d: f16, m: f16, qs: [u8; 16]; values are q * d + m.
fn q4_1(b: &[u8], out: &mut [f32]) {
    let d = half_at(b, 0);
    let m = half_at(b, 2);
    let qs = &b[4..20];
    for j in 0..16 {
        out[j] = (qs[j] & 0x0F) as f32 * d + m;
        out[j + 16] = (qs[j] >> 4) as f32 * d + m;
    }
}

/// The fifth bits of Q5 elements j and j+16, taken from the 32-bit mask qh.
fn q5_high_bits(qh: u32, j: usize) -> (u8, u8) {
    let h0 = (((qh >> j) << 4) & 0x10) as u8;
    let h1 = ((qh >> (j + 12)) & 0x10) as u8;
    (h0, h1)
}

/// block_q5_0: d: f16, qh: u32 (bit j is the fifth bit of element j), qs: [u8; 16];
/// values are (q - 16) * d.
fn q5_0(b: &[u8], out: &mut [f32]) {
    let d = half_at(b, 0);
    let qh = u32::from_le_bytes(arr(&b[2..6]));
    let qs = &b[6..22];
    for j in 0..16 {
        let (h0, h1) = q5_high_bits(qh, j);
        let x0 = ((qs[j] & 0x0F) | h0) as i32 - 16;
        let x1 = ((qs[j] >> 4) | h1) as i32 - 16;
        out[j] = x0 as f32 * d;
        out[j + 16] = x1 as f32 * d;
    }
}

/// block_q5_1: d: f16, m: f16, qh: u32, qs: [u8; 16]; values are q * d + m.
fn q5_1(b: &[u8], out: &mut [f32]) {
    let d = half_at(b, 0);
    let m = half_at(b, 2);
    let qh = u32::from_le_bytes(arr(&b[4..8]));
    let qs = &b[8..24];
    for j in 0..16 {
        let (h0, h1) = q5_high_bits(qh, j);
        let x0 = (qs[j] & 0x0F) | h0;
        let x1 = (qs[j] >> 4) | h1;
        out[j] = x0 as f32 * d + m;
        out[j + 16] = x1 as f32 * d + m;
    }
}

/// block_q8_0: d: f16, qs: [i8; 32]; values are q * d.
fn q8_0(b: &[u8], out: &mut [f32]) {
    let d = half_at(b, 0);
    for (o, &q) in out.iter_mut().zip(&b[2..34]) {
        *o = q as i8 as f32 * d;
    }
}

/// Scale and min of sub-block `j` (0..8) from the 12-byte packed 6-bit table of Q4_K/Q5_K.
/// Sub-blocks 0-3 keep their 6 bits in the low bits of bytes j and j+4; sub-blocks 4-7 take
/// their low 4 bits from byte j+4 and their top 2 bits from the spare top bits of bytes j-4
/// (scale) and j (min).
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        let sc = (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4);
        let m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
        (sc, m)
    }
}

/// block_q4_K: d: f16, dmin: f16, scales: [u8; 12], qs: [u8; 128]. Eight sub-blocks of 32;
/// each 32-byte run of qs holds two sub-blocks (low nibbles, then high nibbles).
/// Values are d * sc * q - dmin * m.
fn q4_k(b: &[u8], out: &mut [f32]) {
    let d = half_at(b, 0);
    let dmin = half_at(b, 2);
    let scales = &b[4..16];
    let qs = &b[16..144];
    for chunk in 0..4 {
        let (sc1, m1) = scale_min_k4(2 * chunk, scales);
        let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
        let (d1, min1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, min2) = (d * sc2 as f32, dmin * m2 as f32);
        let q = &qs[32 * chunk..32 * chunk + 32];
        let o = &mut out[64 * chunk..64 * chunk + 64];
        for l in 0..32 {
            o[l] = d1 * (q[l] & 0x0F) as f32 - min1;
            o[l + 32] = d2 * (q[l] >> 4) as f32 - min2;
        }
    }
}

/// block_q5_K: d: f16, dmin: f16, scales: [u8; 12], qh: [u8; 32], qs: [u8; 128]. As Q4_K,
/// with the fifth bit of element l of sub-block s in bit s of qh[l].
fn q5_k(b: &[u8], out: &mut [f32]) {
    let d = half_at(b, 0);
    let dmin = half_at(b, 2);
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..176];
    for chunk in 0..4 {
        let (sc1, m1) = scale_min_k4(2 * chunk, scales);
        let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
        let (d1, min1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, min2) = (d * sc2 as f32, dmin * m2 as f32);
        let u1 = 1u8 << (2 * chunk);
        let u2 = 2u8 << (2 * chunk);
        let q = &qs[32 * chunk..32 * chunk + 32];
        let o = &mut out[64 * chunk..64 * chunk + 64];
        for l in 0..32 {
            let hi1 = if qh[l] & u1 != 0 { 16 } else { 0 };
            let hi2 = if qh[l] & u2 != 0 { 16 } else { 0 };
            o[l] = d1 * ((q[l] & 0x0F) + hi1) as f32 - min1;
            o[l + 32] = d2 * ((q[l] >> 4) + hi2) as f32 - min2;
        }
    }
}

/// block_q6_K: ql: [u8; 128] (low 4 bits), qh: [u8; 64] (high 2 bits), scales: [i8; 16],
/// d: f16. Two halves of 128 elements; within a half, element l + 32k (k = 0..4) takes its
/// low nibble from ql (low/high nibble of ql[l] or ql[l+32]) and bits 2k..2k+2 of qh[l].
/// Values are d * scale * (q - 32), one scale per 16 elements.
fn q6_k(b: &[u8], out: &mut [f32]) {
    let d = half_at(b, 208);
    for half_idx in 0..2 {
        let ql = &b[64 * half_idx..64 * half_idx + 64];
        let qh = &b[128 + 32 * half_idx..128 + 32 * half_idx + 32];
        let sc = &b[192 + 8 * half_idx..192 + 8 * half_idx + 8];
        let o = &mut out[128 * half_idx..128 * half_idx + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            o[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            o[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            o[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            o[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}

/// block_q8_K: d: f32, qs: [i8; 256], bsums: [i16; 16] (bsums only speed up dot products);
/// values are d * q.
fn q8_k(b: &[u8], out: &mut [f32]) {
    let d = f32::from_le_bytes(arr(&b[0..4]));
    for (o, &q) in out.iter_mut().zip(&b[4..260]) {
        *o = d * q as i8 as f32;
    }
}
