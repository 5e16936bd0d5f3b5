//! Decode-step linear layers read straight from GGUF's quantized blocks.
//!
//! Why: a decode step reads every weight once, so its speed is set by the bytes read. The
//! dequantized f32 weights of SmolLM2-135M are 540 MB per token; its Q4_1/Q8_0 blocks are
//! 96 MB. [`QuantMatrix`] keeps a weight as those blocks and [`QuantMatrix::matmul`] computes
//! `y = x W^T` for up to [`MAX_ROWS`] rows of `x`, decoding each block in registers.
//!
//! Exactness: activations stay f32 (unlike llama.cpp, which quantizes `x` too), so the
//! product equals `x @ dequantize(W)^T` in exact arithmetic and differs from it by f32
//! rounding only. The portable and AVX-512 kernels form every weight with the formula and
//! operation order of longctx-io's dequantizer (`crates/io/src/gguf/dequant.rs`), then
//! differ only in the order of the sums; the AVX2 kernel factors each block's scale out
//! (`d * sum x q + min * sum x`), which saved 30% of a SmolLM2 decode step's products on a
//! 2-core AMD EPYC (`examples/quant_speed.rs`: 11.1 -> 7.6 ms). Every kernel still returns
//! each weight bit-exactly for a one-hot `x` (tested).

use std::fmt;

use rayon::prelude::*;

/// Weights per block along a row, in every supported format.
pub const BLOCK: usize = 32;

/// Largest row count of `x` that [`QuantMatrix::matmul`] takes (decode steps and short
/// tails); longer inputs belong to a GEMM over the f32 weights.
pub const MAX_ROWS: usize = 4;

/// Blocks per parallel task: enough that rayon's per-task cost stays small, few enough that
/// two threads get a dozen or more tasks on a large matrix.
const MIN_BLOCKS_PER_TASK: usize = 512;
const MAX_BLOCKS_PER_TASK: usize = 16 * 1024;
/// Matrices up to this many blocks (~15 us on one core) run on the calling thread: handing
/// work to rayon's sleeping workers and waiting for them costs 20-150 us on the 2-vCPU VM
/// (a 192x576 product took 34 us through rayon, 14 us serially). A 576x576 one (10,368
/// blocks) is faster on two threads: SmolLM2's decode products took 9.8 ms a token with
/// 12,288 here, 8.1 ms with 4,096 (`examples/quant_speed.rs`).
const SERIAL_MAX_BLOCKS: usize = 4 * 1024;

/// The GGUF block formats [`QuantMatrix`] reads (blocks of 32 weights, little-endian).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuantFormat {
    /// `d: f16, qs: [u8; 16]`; weight `(q - 8) * d` (low nibbles are weights 0-15, high 16-31).
    Q4_0,
    /// `d: f16, m: f16, qs: [u8; 16]`; weight `q * d + m`.
    Q4_1,
    /// `d: f16, qs: [i8; 32]`; weight `q * d`.
    Q8_0,
}

impl QuantFormat {
    /// Bytes of one block of 32 weights.
    pub const fn block_bytes(self) -> usize {
        match self {
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q8_0 => 34,
        }
    }

    /// The ggml name, e.g. `"Q4_1"`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q8_0 => "Q8_0",
        }
    }
}

impl fmt::Display for QuantFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a [`QuantMatrix`] could not be built or multiplied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QuantError {
    /// Rows of blocks need a column count that is a positive multiple of [`BLOCK`].
    Columns { cols: usize },
    /// The bytes are not exactly `rows * cols / 32` blocks.
    Length {
        format: QuantFormat,
        rows: usize,
        cols: usize,
        expected: Option<usize>,
        actual: usize,
    },
    /// `x` has 0 or more than [`MAX_ROWS`] rows.
    Rows { m: usize },
    /// `x` or `y` has the wrong length for `m` rows.
    Shape {
        what: &'static str,
        expected: usize,
        actual: usize,
    },
    /// A row permutation named a row outside the matrix.
    RowIndex { row: usize, rows: usize },
}

impl fmt::Display for QuantError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Columns { cols } => write!(
                f,
                "{cols} columns is not a positive multiple of the block size {BLOCK}"
            ),
            Self::Length {
                format,
                rows,
                cols,
                expected,
                actual,
            } => match expected {
                Some(e) => write!(
                    f,
                    "a [{rows}, {cols}] {format} matrix needs {e} bytes, {actual} given"
                ),
                None => write!(
                    f,
                    "a [{rows}, {cols}] {format} matrix does not fit in memory"
                ),
            },
            Self::Rows { m } => write!(
                f,
                "{m} rows of x; the quantized product takes 1 to {MAX_ROWS}"
            ),
            Self::Shape {
                what,
                expected,
                actual,
            } => write!(f, "{what} has {actual} elements, expected {expected}"),
            Self::RowIndex { row, rows } => write!(f, "row {row} is outside 0..{rows}"),
        }
    }
}

impl std::error::Error for QuantError {}

/// A `[rows, cols]` matrix (`rows` = output features, `cols` = input features) stored as raw
/// GGUF blocks: row `j` is `cols / 32` consecutive blocks holding `W[j, 0..cols]`. This is
/// how GGUF stores a linear weight of ggml shape `[in, out]` (row-major `[out, in]`).
#[derive(Clone)]
pub struct QuantMatrix {
    format: QuantFormat,
    rows: usize,
    cols: usize,
    data: Vec<u8>,
}

impl fmt::Debug for QuantMatrix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuantMatrix")
            .field("format", &self.format)
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .field("bytes", &self.data.len())
            .finish()
    }
}

impl QuantMatrix {
    /// Wraps `data`, which must be exactly the `rows * cols / 32` blocks of a `[rows, cols]`
    /// matrix in `format`, rows one after another; `cols` must be a positive multiple of 32.
    pub fn new(
        format: QuantFormat,
        rows: usize,
        cols: usize,
        data: Vec<u8>,
    ) -> Result<Self, QuantError> {
        if cols == 0 || !cols.is_multiple_of(BLOCK) {
            return Err(QuantError::Columns { cols });
        }
        let expected = (cols / BLOCK)
            .checked_mul(format.block_bytes())
            .and_then(|row| row.checked_mul(rows));
        if expected != Some(data.len()) {
            return Err(QuantError::Length {
                format,
                rows,
                cols,
                expected,
                actual: data.len(),
            });
        }
        Ok(Self {
            format,
            rows,
            cols,
            data,
        })
    }

    pub fn format(&self) -> QuantFormat {
        self.format
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The blocks, row after row.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Bytes of one row's blocks.
    pub fn row_bytes(&self) -> usize {
        self.cols / BLOCK * self.format.block_bytes()
    }

    /// The matrix with its rows reordered: row `i` of the result is row `source_of(i)` of
    /// `self` (e.g. to undo llama.cpp's Q/K row permutation). Blocks are copied unchanged.
    pub fn permute_rows(
        &self,
        source_of: impl Fn(usize) -> usize,
    ) -> Result<QuantMatrix, QuantError> {
        let rb = self.row_bytes();
        let mut data = Vec::with_capacity(self.data.len());
        for i in 0..self.rows {
            let src = source_of(i);
            if src >= self.rows {
                return Err(QuantError::RowIndex {
                    row: src,
                    rows: self.rows,
                });
            }
            data.extend_from_slice(&self.data[src * rb..(src + 1) * rb]);
        }
        QuantMatrix::new(self.format, self.rows, self.cols, data)
    }

    /// The matrices' rows one after another (`[sum rows, cols]`), e.g. a layer's q, k and v
    /// projections as one matrix, so a decode step runs one product (one parallel dispatch)
    /// instead of three. `None` unless all share one format and column count.
    pub fn concat_rows(parts: &[&QuantMatrix]) -> Option<QuantMatrix> {
        let first = parts.first()?;
        if parts
            .iter()
            .any(|p| p.format != first.format || p.cols != first.cols)
        {
            return None;
        }
        let rows = parts.iter().map(|p| p.rows).sum();
        let data = parts.iter().flat_map(|p| p.data.iter().copied()).collect();
        QuantMatrix::new(first.format, rows, first.cols, data).ok()
    }

    /// Row `row` (`< rows`) as f32 into `out` (`cols` long), each weight bit-identical to
    /// longctx-io's dequantizer. Panics if `row` or `out.len()` is out of range.
    pub fn dequantize_row(&self, row: usize, out: &mut [f32]) {
        assert!(row < self.rows, "row {row} of {}", self.rows);
        assert_eq!(out.len(), self.cols, "a row has {} weights", self.cols);
        let rb = self.row_bytes();
        let blocks = &self.data[row * rb..(row + 1) * rb];
        let bytes = self.format.block_bytes();
        for (b, o) in blocks.chunks_exact(bytes).zip(out.chunks_exact_mut(BLOCK)) {
            let o: &mut [f32; BLOCK] = o.try_into().expect("chunks of BLOCK");
            match self.format {
                QuantFormat::Q4_0 => Q4_0::decode(b, o),
                QuantFormat::Q4_1 => Q4_1::decode(b, o),
                QuantFormat::Q8_0 => Q8_0::decode(b, o),
            }
        }
    }

    /// `y[m, rows] = x[m, cols] @ W^T` for `1 <= m <=` [`MAX_ROWS`], `x` and `y` row-major
    /// and contiguous. Parallel over ranges of output rows, so every block is read once per
    /// call. Errors (without touching `y`) when `m` or a length is out of range.
    pub fn matmul(&self, x: &[f32], m: usize, y: &mut [f32]) -> Result<(), QuantError> {
        self.matmul_with(Isa::best(), x, m, y)
    }

    fn matmul_with(&self, isa: Isa, x: &[f32], m: usize, y: &mut [f32]) -> Result<(), QuantError> {
        if m == 0 || m > MAX_ROWS {
            return Err(QuantError::Rows { m });
        }
        for (what, expected, actual) in
            [("x", m * self.cols, x.len()), ("y", m * self.rows, y.len())]
        {
            if expected != actual {
                return Err(QuantError::Shape {
                    what,
                    expected,
                    actual,
                });
            }
        }
        if self.rows == 0 {
            return Ok(());
        }
        let blocks_per_row = self.cols / BLOCK;
        let per_task = rows_per_task(self.rows, blocks_per_row, rayon::current_num_threads());
        let task_bytes = per_task * self.row_bytes();
        let (format, cols) = (self.format, self.cols);
        let run = |out: &mut [f32], w: &[u8]| kernel(isa, format, w, cols, x, m, out);
        if per_task >= self.rows && m == 1 {
            run(y, &self.data);
        } else if m == 1 {
            y.par_chunks_mut(per_task)
                .zip(self.data.par_chunks(task_bytes))
                .for_each(|(out, w)| run(out, w));
        } else {
            // Tasks fill `[rows, m]` (each task a contiguous range), transposed afterwards.
            let mut yt = vec![0f32; self.rows * m];
            if per_task >= self.rows {
                run(&mut yt, &self.data);
            } else {
                yt.par_chunks_mut(per_task * m)
                    .zip(self.data.par_chunks(task_bytes))
                    .for_each(|(out, w)| run(out, w));
            }
            for (j, ys) in yt.chunks_exact(m).enumerate() {
                for (r, v) in ys.iter().enumerate() {
                    y[r * self.rows + j] = *v;
                }
            }
        }
        Ok(())
    }
}

/// Output rows per task: about four tasks per thread, within the block bounds above; all
/// rows (one task on the calling thread) for a small matrix.
fn rows_per_task(rows: usize, blocks_per_row: usize, threads: usize) -> usize {
    if rows * blocks_per_row <= SERIAL_MAX_BLOCKS {
        return rows.max(1);
    }
    let balanced = rows.div_ceil(threads.max(1) * 4);
    let min = MIN_BLOCKS_PER_TASK.div_ceil(blocks_per_row);
    let max = (MAX_BLOCKS_PER_TASK / blocks_per_row).max(1);
    balanced.clamp(min.min(max), max).min(rows).max(1)
}

/// The instruction sets the kernel is compiled for; the widest available is used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Isa {
    Avx512,
    /// AVX2 with FMA and F16C.
    Avx2,
    /// Whatever the crate is compiled for (SSE2 on x86-64); no FMA, software f16.
    Baseline,
}

impl Isa {
    fn available(self) -> bool {
        match self {
            Self::Baseline => true,
            #[cfg(target_arch = "x86_64")]
            Self::Avx512 => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && Self::Avx2.available()
            }
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                    && std::arch::is_x86_feature_detected!("f16c")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    fn best() -> Isa {
        [Isa::Avx512, Isa::Avx2]
            .into_iter()
            .find(|isa| isa.available())
            .unwrap_or(Isa::Baseline)
    }
}

/// Computes output rows `out.len() / m` from their blocks `w`: `out` is `[rows, m]`.
fn kernel(
    isa: Isa,
    format: QuantFormat,
    w: &[u8],
    cols: usize,
    x: &[f32],
    m: usize,
    out: &mut [f32],
) {
    // The x86 kernels read `x` through raw pointers: these bounds make that sound.
    assert!(
        (1..=MAX_ROWS).contains(&m)
            && cols.is_multiple_of(BLOCK)
            && x.len() >= m * cols
            && w.len() == out.len() / m * (cols / BLOCK * format.block_bytes()),
        "quantized kernel: inconsistent shapes"
    );
    debug_assert!(isa.available());
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx512` is only chosen when `available()` found the features.
        Isa::Avx512 => unsafe { x86::kernel_avx512(format, w, cols, x, m, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => unsafe { x86::kernel_avx2(format, w, cols, x, m, out) },
        _ => match format {
            QuantFormat::Q4_0 => portable::<Q4_0>(w, cols, x, m, out),
            QuantFormat::Q4_1 => portable::<Q4_1>(w, cols, x, m, out),
            QuantFormat::Q8_0 => portable::<Q8_0>(w, cols, x, m, out),
        },
    }
}

/// The portable kernel: one row of `x` at a time, plain f32 arithmetic (the baseline target
/// has no FMA; `mul_add` would call libm).
fn portable<F: Block>(w: &[u8], cols: usize, x: &[f32], m: usize, out: &mut [f32]) {
    let row_bytes = cols / BLOCK * F::BYTES;
    let mut wv = [0f32; BLOCK];
    for (row, o) in w.chunks_exact(row_bytes).zip(out.chunks_exact_mut(m)) {
        for (r, o) in o.iter_mut().enumerate() {
            let xr = &x[r * cols..(r + 1) * cols];
            let mut acc = [0f32; BLOCK];
            for (block, xs) in row.chunks_exact(F::BYTES).zip(xr.chunks_exact(BLOCK)) {
                F::decode(block, &mut wv);
                for ((a, w), x) in acc.iter_mut().zip(&wv).zip(xs) {
                    *a += w * x;
                }
            }
            *o = acc.iter().sum();
        }
    }
}

/// IEEE f16 bits to f32, exact, in plain integer arithmetic; NaNs come out quiet, as with
/// F16C and the `half` crate.
#[inline(always)]
fn half(bits: u16) -> f32 {
    let sign = ((bits as u32) & 0x8000) << 16;
    let exp = (bits >> 10) & 0x1F;
    let man = (bits & 0x3FF) as u32;
    match exp {
        0 => {
            // Zero or subnormal: man * 2^-24, exact in f32.
            let v = man as f32 * f32::from_bits(0x3380_0000);
            f32::from_bits(v.to_bits() | sign)
        }
        0x1F if man == 0 => f32::from_bits(sign | 0x7F80_0000),
        0x1F => f32::from_bits(sign | 0x7FC0_0000 | (man << 13)),
        _ => f32::from_bits(sign | ((exp as u32 + 112) << 23) | (man << 13)),
    }
}

fn half_at(b: &[u8], at: usize) -> f32 {
    half(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// A block format: its size and its 32 weights, each computed exactly as
/// `crates/io/src/gguf/dequant.rs` does (same expression, same order of operations).
trait Block {
    const BYTES: usize;
    fn decode(b: &[u8], w: &mut [f32; BLOCK]);
}

#[allow(non_camel_case_types)]
struct Q4_0;
#[allow(non_camel_case_types)]
struct Q4_1;
#[allow(non_camel_case_types)]
struct Q8_0;

impl Block for Q4_0 {
    const BYTES: usize = 18;
    #[inline(always)]
    fn decode(b: &[u8], w: &mut [f32; BLOCK]) {
        let d = half_at(b, 0);
        let qs: &[u8; 16] = b[2..18].try_into().expect("Q4_0 block");
        for (j, q) in qs.iter().enumerate() {
            w[j] = ((q & 0x0F) as i32 - 8) as f32 * d;
            w[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
        }
    }
}

impl Block for Q4_1 {
    const BYTES: usize = 20;
    #[inline(always)]
    fn decode(b: &[u8], w: &mut [f32; BLOCK]) {
        let d = half_at(b, 0);
        let m = half_at(b, 2);
        let qs: &[u8; 16] = b[4..20].try_into().expect("Q4_1 block");
        // `q * d + m` rounded twice, as the dequantizer does (Rust never contracts to FMA).
        for (j, q) in qs.iter().enumerate() {
            w[j] = (q & 0x0F) as f32 * d + m;
            w[j + 16] = (q >> 4) as f32 * d + m;
        }
    }
}

impl Block for Q8_0 {
    const BYTES: usize = 34;
    #[inline(always)]
    fn decode(b: &[u8], w: &mut [f32; BLOCK]) {
        let d = half_at(b, 0);
        for (w, q) in w.iter_mut().zip(&b[2..34]) {
            *w = *q as i8 as f32 * d;
        }
    }
}

/// The x86 kernels, written with intrinsics: left to the auto-vectoriser, the loop over a
/// row's blocks was vectorised across blocks with gathers and ran 2x slower than f32.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{QuantFormat, Q4_0, Q4_1, Q8_0};

    /// Half the instructions of the AVX2 kernel: a block is two 16-lane vectors.
    #[target_feature(enable = "avx512f,avx512vl,avx2,fma,f16c")]
    pub(super) unsafe fn kernel_avx512(
        format: QuantFormat,
        w: &[u8],
        cols: usize,
        x: &[f32],
        m: usize,
        out: &mut [f32],
    ) {
        by_format::<true>(format, w, cols, x, m, out)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn kernel_avx2(
        format: QuantFormat,
        w: &[u8],
        cols: usize,
        x: &[f32],
        m: usize,
        out: &mut [f32],
    ) {
        by_format::<false>(format, w, cols, x, m, out)
    }

    #[inline(always)]
    unsafe fn by_format<const WIDE: bool>(
        format: QuantFormat,
        w: &[u8],
        cols: usize,
        x: &[f32],
        m: usize,
        out: &mut [f32],
    ) {
        match format {
            QuantFormat::Q4_0 => by_rows::<Q4_0, WIDE>(w, cols, x, m, out),
            QuantFormat::Q4_1 => by_rows::<Q4_1, WIDE>(w, cols, x, m, out),
            QuantFormat::Q8_0 => by_rows::<Q8_0, WIDE>(w, cols, x, m, out),
        }
    }

    #[inline(always)]
    unsafe fn by_rows<F: Decode, const WIDE: bool>(
        w: &[u8],
        cols: usize,
        x: &[f32],
        m: usize,
        out: &mut [f32],
    ) {
        match (m, WIDE) {
            (1, false) => rows::<F, 1>(w, cols, x, out),
            (2, false) => rows::<F, 2>(w, cols, x, out),
            (3, false) => rows::<F, 3>(w, cols, x, out),
            (4, false) => rows::<F, 4>(w, cols, x, out),
            (1, true) => rows512::<F, 1>(w, cols, x, out),
            (2, true) => rows512::<F, 2>(w, cols, x, out),
            (3, true) => rows512::<F, 3>(w, cols, x, out),
            (4, true) => rows512::<F, 4>(w, cols, x, out),
            _ => unreachable!("m is checked to be 1..=MAX_ROWS"),
        }
    }

    /// A block format as the x86 kernels read it.
    pub(super) trait Decode {
        const BYTES: usize;
        /// `p` points at a whole block; its 32 weights as two vectors of 16, each computed as
        /// the dequantizer does (needs AVX-512F).
        unsafe fn weights512(p: *const u8) -> [__m512; 2];
        /// Whether a weight is `q * d + min` rather than `q * d`.
        const HAS_MIN: bool;
        /// The block's integer values `q` (weights 0-7, 8-15, 16-23, 24-31, as exact f32),
        /// its scale `d` broadcast, and its `min` in lane 0 (zero when the format has none).
        unsafe fn ints(p: *const u8) -> ([__m256; 4], __m256, __m128);
    }

    /// The low and high nibbles of the 16 bytes at `p` as four vectors of eight i32
    /// (weights 0-7, 8-15 from the low nibbles, 16-23, 24-31 from the high ones).
    #[inline(always)]
    unsafe fn nibbles_i32(p: *const u8) -> [__m256i; 4] {
        let a = _mm256_cvtepu8_epi32(_mm_loadl_epi64(p as *const __m128i));
        let b = _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.add(8) as *const __m128i));
        let mask = _mm256_set1_epi32(0x0F);
        [
            _mm256_and_si256(a, mask),
            _mm256_and_si256(b, mask),
            _mm256_srli_epi32::<4>(a),
            _mm256_srli_epi32::<4>(b),
        ]
    }

    /// The f16 at `p` in lane 0.
    #[inline(always)]
    unsafe fn half_x1(p: *const u8) -> __m128 {
        let bits = (p as *const u16).read_unaligned();
        _mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32))
    }

    /// Sixteen bytes as f32, zero- or sign-extended.
    #[inline(always)]
    unsafe fn u8x16(v: __m128i) -> __m512 {
        _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(v))
    }
    #[inline(always)]
    unsafe fn i8x16(v: __m128i) -> __m512 {
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(v))
    }

    /// The f16 at `p`, broadcast to 16 lanes.
    #[inline(always)]
    unsafe fn half_x16(p: *const u8) -> __m512 {
        let bits = (p as *const u16).read_unaligned();
        _mm512_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    }

    /// The f16 at `p`, broadcast.
    #[inline(always)]
    unsafe fn half_x8(p: *const u8) -> __m256 {
        let bits = (p as *const u16).read_unaligned();
        _mm256_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    }

    /// Low and high nibbles of the 16 bytes at `p`, as bytes.
    #[inline(always)]
    unsafe fn nibbles(p: *const u8) -> (__m128i, __m128i) {
        let qs = _mm_loadu_si128(p as *const __m128i);
        let mask = _mm_set1_epi8(0x0F);
        (
            _mm_and_si128(qs, mask),
            _mm_and_si128(_mm_srli_epi16::<4>(qs), mask),
        )
    }

    impl Decode for Q4_0 {
        const BYTES: usize = 18;
        #[inline(always)]
        unsafe fn weights512(p: *const u8) -> [__m512; 2] {
            let d = half_x16(p);
            let (lo, hi) = nibbles(p.add(2));
            let eight = _mm_set1_epi8(8);
            let (lo, hi) = (_mm_sub_epi8(lo, eight), _mm_sub_epi8(hi, eight));
            [_mm512_mul_ps(i8x16(lo), d), _mm512_mul_ps(i8x16(hi), d)]
        }
        const HAS_MIN: bool = false;
        #[inline(always)]
        unsafe fn ints(p: *const u8) -> ([__m256; 4], __m256, __m128) {
            let eight = _mm256_set1_epi32(8);
            let [a, b, c, e] = nibbles_i32(p.add(2));
            let q = [
                _mm256_cvtepi32_ps(_mm256_sub_epi32(a, eight)),
                _mm256_cvtepi32_ps(_mm256_sub_epi32(b, eight)),
                _mm256_cvtepi32_ps(_mm256_sub_epi32(c, eight)),
                _mm256_cvtepi32_ps(_mm256_sub_epi32(e, eight)),
            ];
            (q, half_x8(p), _mm_setzero_ps())
        }
    }

    impl Decode for Q4_1 {
        const BYTES: usize = 20;
        #[inline(always)]
        unsafe fn weights512(p: *const u8) -> [__m512; 2] {
            let d = half_x16(p);
            let m = half_x16(p.add(2));
            let (lo, hi) = nibbles(p.add(4));
            [
                _mm512_add_ps(_mm512_mul_ps(u8x16(lo), d), m),
                _mm512_add_ps(_mm512_mul_ps(u8x16(hi), d), m),
            ]
        }
        const HAS_MIN: bool = true;
        #[inline(always)]
        unsafe fn ints(p: *const u8) -> ([__m256; 4], __m256, __m128) {
            let [a, b, c, e] = nibbles_i32(p.add(4));
            let q = [
                _mm256_cvtepi32_ps(a),
                _mm256_cvtepi32_ps(b),
                _mm256_cvtepi32_ps(c),
                _mm256_cvtepi32_ps(e),
            ];
            (q, half_x8(p), half_x1(p.add(2)))
        }
    }

    impl Decode for Q8_0 {
        const BYTES: usize = 34;
        #[inline(always)]
        unsafe fn weights512(p: *const u8) -> [__m512; 2] {
            let d = half_x16(p);
            let a = _mm_loadu_si128(p.add(2) as *const __m128i);
            let b = _mm_loadu_si128(p.add(18) as *const __m128i);
            [_mm512_mul_ps(i8x16(a), d), _mm512_mul_ps(i8x16(b), d)]
        }
        const HAS_MIN: bool = false;
        #[inline(always)]
        unsafe fn ints(p: *const u8) -> ([__m256; 4], __m256, __m128) {
            let at = |k: usize| _mm_loadl_epi64(p.add(2 + 8 * k) as *const __m128i);
            let q = [
                _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(at(0))),
                _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(at(1))),
                _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(at(2))),
                _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(at(3))),
            ];
            (q, half_x8(p), _mm_setzero_ps())
        }
    }

    /// `out[j, r] = dot(x[r, :], W[j, :])` for the rows of blocks in `w`; the caller checked
    /// that `x` holds `M` rows of `cols` and `w` whole rows.
    ///
    /// The scales are factored out of each block: `sum_k x_k (q_k d + min)` is computed as
    /// `d * sum_k x_k q_k + min * sum_k x_k`, the integer-valued `q_k` converted once and the
    /// per-block sums of `x` computed once per call. That is two of the five vector operations
    /// per eight weights fewer than decoding each weight first; the weights' values are no
    /// longer formed, so the result differs from `x @ dequantize(W)^T` by f32 rounding only
    /// (and a one-hot `x` still yields each weight exactly: `fl(fl(q d) + min)`).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn rows<F: Decode, const M: usize>(w: &[u8], cols: usize, x: &[f32], out: &mut [f32]) {
        let blocks = cols / 32;
        // Per-block sums of each row of x, for the `min` term.
        let xsum: Vec<f32> = if F::HAS_MIN {
            x[..M * cols]
                .chunks_exact(32)
                .map(|c| c.iter().sum::<f32>())
                .collect()
        } else {
            Vec::new()
        };
        for (row, o) in w
            .chunks_exact(blocks * F::BYTES)
            .zip(out.chunks_exact_mut(M))
        {
            // Two chains per row of x (weights 0-15 and 16-31 of each block); with more rows,
            // one, so that the accumulators stay within AVX2's 16 registers.
            let second = if M <= 2 { 1 } else { 0 };
            let mut acc = [[_mm256_setzero_ps(); 2]; M];
            let mut mins = [_mm_setzero_ps(); M];
            let mut p = row.as_ptr();
            for b in 0..blocks {
                let (q, d, min) = F::ints(p);
                p = p.add(F::BYTES);
                for r in 0..M {
                    let xp = x.as_ptr().add(r * cols + b * 32);
                    let lo = _mm256_mul_ps(q[0], _mm256_loadu_ps(xp));
                    let lo = _mm256_fmadd_ps(q[1], _mm256_loadu_ps(xp.add(8)), lo);
                    let hi = _mm256_mul_ps(q[2], _mm256_loadu_ps(xp.add(16)));
                    let hi = _mm256_fmadd_ps(q[3], _mm256_loadu_ps(xp.add(24)), hi);
                    acc[r][0] = _mm256_fmadd_ps(lo, d, acc[r][0]);
                    acc[r][second] = _mm256_fmadd_ps(hi, d, acc[r][second]);
                    if F::HAS_MIN {
                        let s = _mm_load_ss(xsum.as_ptr().add(r * blocks + b));
                        mins[r] = _mm_fmadd_ss(min, s, mins[r]);
                    }
                }
            }
            for ((o, acc), mins) in o.iter_mut().zip(&acc).zip(&mins) {
                let v = _mm256_add_ps(acc[0], acc[1]);
                let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
                let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                let s = _mm_add_ss(s, _mm_movehdup_ps(s));
                *o = _mm_cvtss_f32(_mm_add_ss(s, *mins));
            }
        }
    }

    /// [`rows`] with 16-lane vectors; blocks are taken in pairs so that each row of `x` has
    /// four FMA chains.
    #[target_feature(enable = "avx512f,avx512vl,avx2,fma,f16c")]
    #[inline]
    unsafe fn rows512<F: Decode, const M: usize>(
        w: &[u8],
        cols: usize,
        x: &[f32],
        out: &mut [f32],
    ) {
        let blocks = cols / 32;
        for (row, o) in w
            .chunks_exact(blocks * F::BYTES)
            .zip(out.chunks_exact_mut(M))
        {
            let mut acc = [[_mm512_setzero_ps(); 4]; M];
            let mut b = 0;
            while b < blocks {
                let p = row.as_ptr().add(b * F::BYTES);
                // The second block of a pair, or none at the end of an odd row.
                let pair = (b + 1 < blocks) as usize;
                let w0 = F::weights512(p);
                let w1 = if pair == 1 {
                    F::weights512(p.add(F::BYTES))
                } else {
                    [_mm512_setzero_ps(); 2]
                };
                for (r, acc) in acc.iter_mut().enumerate() {
                    let xp = x.as_ptr().add(r * cols + b * 32);
                    acc[0] = _mm512_fmadd_ps(w0[0], _mm512_loadu_ps(xp), acc[0]);
                    acc[1] = _mm512_fmadd_ps(w0[1], _mm512_loadu_ps(xp.add(16)), acc[1]);
                    if pair == 1 {
                        acc[2] = _mm512_fmadd_ps(w1[0], _mm512_loadu_ps(xp.add(32)), acc[2]);
                        acc[3] = _mm512_fmadd_ps(w1[1], _mm512_loadu_ps(xp.add(48)), acc[3]);
                    }
                }
                b += 2;
            }
            for (o, acc) in o.iter_mut().zip(&acc) {
                let v = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
                *o = _mm512_reduce_add_ps(v);
            }
        }
    }

    /// F16C's conversion, for checking [`super::half`] against it.
    #[cfg(test)]
    #[target_feature(enable = "f16c")]
    pub(super) unsafe fn half_f16c(bits: u16) -> f32 {
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORMATS: [QuantFormat; 3] = [QuantFormat::Q4_0, QuantFormat::Q4_1, QuantFormat::Q8_0];

    /// xorshift64*, so the tests need no dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn f32(&mut self) -> f32 {
            (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        }
        /// A finite f16 of either sign with exponent -14..=1 (some subnormal scales too).
        fn half(&mut self) -> [u8; 2] {
            let r = self.next();
            let exp = (r % 17) as u16; // 0 = subnormal
            let bits = (((r >> 8) & 1) as u16) << 15 | exp << 10 | ((r >> 16) & 0x3FF) as u16;
            bits.to_le_bytes()
        }
    }

    /// Random blocks with random finite f16 scales.
    fn random_matrix(format: QuantFormat, rows: usize, cols: usize, rng: &mut Rng) -> QuantMatrix {
        let bytes = format.block_bytes();
        let mut data = Vec::new();
        for _ in 0..rows * cols / BLOCK {
            let start = data.len();
            data.extend((0..bytes).map(|_| rng.next() as u8));
            let scales = if format == QuantFormat::Q4_1 { 2 } else { 1 };
            for s in 0..scales {
                data[start + 2 * s..start + 2 * s + 2].copy_from_slice(&rng.half());
            }
        }
        QuantMatrix::new(format, rows, cols, data).unwrap()
    }

    /// The dequantizer's formulas written out per element, for cross-checking `decode`.
    fn reference_weight(format: QuantFormat, b: &[u8], k: usize) -> f32 {
        let h = |at: usize| half(u16::from_le_bytes([b[at], b[at + 1]]));
        let nibble = |qs: &[u8]| {
            if k < 16 {
                qs[k] & 0x0F
            } else {
                qs[k - 16] >> 4
            }
        };
        match format {
            QuantFormat::Q4_0 => (nibble(&b[2..]) as i32 - 8) as f32 * h(0),
            QuantFormat::Q4_1 => nibble(&b[4..]) as f32 * h(0) + h(2),
            QuantFormat::Q8_0 => b[2 + k] as i8 as f32 * h(0),
        }
    }

    fn isas() -> Vec<Isa> {
        [Isa::Avx512, Isa::Avx2, Isa::Baseline]
            .into_iter()
            .filter(|i| i.available())
            .collect()
    }

    #[test]
    fn soft_f16_matches_the_hardware_conversion() {
        #[cfg(target_arch = "x86_64")]
        if Isa::Avx2.available() {
            for bits in 0..=u16::MAX {
                // SAFETY: F16C is present (checked above).
                let want = unsafe { x86::half_f16c(bits) };
                let got = half(bits);
                assert!(
                    got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                    "{bits:#06x}: {got} vs {want}"
                );
            }
        }
        assert_eq!(half(0x3C00), 1.0);
        assert_eq!(half(0xC000), -2.0);
        assert_eq!(half(0x0001), 2f32.powi(-24));
        assert_eq!(half(0x7BFF), 65504.0);
        assert_eq!(half(0xFC00), f32::NEG_INFINITY);
        assert!(half(0x7E01).is_nan());
    }

    #[test]
    fn decoded_blocks_follow_the_dequantizer_formulas() {
        let mut rng = Rng(7);
        for format in FORMATS {
            let q = random_matrix(format, 3, 64, &mut rng);
            let mut row = vec![0f32; 64];
            for r in 0..3 {
                q.dequantize_row(r, &mut row);
                for (k, v) in row.iter().enumerate() {
                    let b = &q.data()[r * q.row_bytes() + k / BLOCK * format.block_bytes()..];
                    let want = reference_weight(format, b, k % BLOCK);
                    assert_eq!(v.to_bits(), want.to_bits(), "{format} row {r} weight {k}");
                }
            }
        }
    }

    #[test]
    fn products_match_an_f64_dot_of_the_dequantized_weights() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for format in FORMATS {
            for (rows, cols) in [(1, 32), (7, 64), (45, 96), (333, 128), (1031, 576)] {
                let q = random_matrix(format, rows, cols, &mut rng);
                let mut w = vec![0f32; rows * cols];
                for (r, out) in w.chunks_exact_mut(cols).enumerate() {
                    q.dequantize_row(r, out);
                }
                for m in 1..=MAX_ROWS {
                    let x: Vec<f32> = (0..m * cols).map(|_| rng.f32()).collect();
                    for isa in isas() {
                        let mut y = vec![f32::NAN; m * rows];
                        q.matmul_with(isa, &x, m, &mut y).unwrap();
                        for r in 0..m {
                            for j in 0..rows {
                                let xr = &x[r * cols..(r + 1) * cols];
                                let wj = &w[j * cols..(j + 1) * cols];
                                let dot: f64 =
                                    xr.iter().zip(wj).map(|(a, b)| *a as f64 * *b as f64).sum();
                                let mag: f64 = xr
                                    .iter()
                                    .zip(wj)
                                    .map(|(a, b)| (*a as f64 * *b as f64).abs())
                                    .sum();
                                let got = y[r * rows + j] as f64;
                                // Relative to the sum of magnitudes: a dot can cancel to ~0.
                                assert!(
                                    (got - dot).abs() <= 1e-5 * mag.max(f64::MIN_POSITIVE),
                                    "{format} {isa:?} [{rows}, {cols}] m={m} ({r}, {j}): {got} vs {dot}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// With one-hot rows of `x` every sum has a single non-zero term, so each kernel must
    /// return the weights themselves: their values, not just a close dot product, are the
    /// dequantizer's.
    #[test]
    fn every_kernel_computes_the_dequantized_weights_exactly() {
        let mut rng = Rng(21);
        let (rows, cols) = (37, 96);
        for format in FORMATS {
            let q = random_matrix(format, rows, cols, &mut rng);
            let mut w = vec![0f32; rows * cols];
            for (r, out) in w.chunks_exact_mut(cols).enumerate() {
                q.dequantize_row(r, out);
            }
            for isa in isas() {
                for first in (0..cols).step_by(MAX_ROWS) {
                    let mut x = vec![0f32; MAX_ROWS * cols];
                    for r in 0..MAX_ROWS {
                        x[r * cols + first + r] = 1.0;
                    }
                    let mut y = vec![f32::NAN; MAX_ROWS * rows];
                    q.matmul_with(isa, &x, MAX_ROWS, &mut y).unwrap();
                    for r in 0..MAX_ROWS {
                        for j in 0..rows {
                            // `==`: a -0.0 weight sums to +0.0.
                            assert!(
                                y[r * rows + j] == w[j * cols + first + r],
                                "{format} {isa:?} W[{j}, {}]",
                                first + r
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn all_instruction_sets_agree_closely() {
        let mut rng = Rng(3);
        let q = random_matrix(QuantFormat::Q4_1, 300, 256, &mut rng);
        let x: Vec<f32> = (0..2 * 256).map(|_| rng.f32()).collect();
        let mut base = vec![0f32; 600];
        q.matmul_with(Isa::Baseline, &x, 2, &mut base).unwrap();
        // Outputs can cancel to near 0: compare against the largest.
        let scale = base.iter().fold(0f32, |m, v| m.max(v.abs()));
        for isa in isas() {
            let mut y = vec![0f32; 600];
            q.matmul_with(isa, &x, 2, &mut y).unwrap();
            for (a, b) in y.iter().zip(&base) {
                assert!((a - b).abs() <= 1e-5 * scale, "{isa:?}: {a} vs {b}");
            }
        }
        eprintln!("instruction sets tested: {:?}", isas());
    }

    #[test]
    fn bad_shapes_are_errors() {
        let f = QuantFormat::Q8_0;
        assert_eq!(
            QuantMatrix::new(f, 2, 48, vec![0; 102]).unwrap_err(),
            QuantError::Columns { cols: 48 }
        );
        assert!(QuantMatrix::new(f, 2, 0, vec![]).is_err());
        assert!(matches!(
            QuantMatrix::new(f, 2, 64, vec![0; 135]),
            Err(QuantError::Length {
                expected: Some(136),
                actual: 135,
                ..
            })
        ));
        assert!(matches!(
            QuantMatrix::new(QuantFormat::Q4_1, usize::MAX / 2, 64, vec![0; 40]),
            Err(QuantError::Length { expected: None, .. })
        ));
        let q = QuantMatrix::new(f, 2, 64, vec![0; 136]).unwrap();
        let mut y = vec![0f32; 10];
        assert_eq!(
            q.matmul(&[0.0; 320], 5, &mut y),
            Err(QuantError::Rows { m: 5 })
        );
        assert_eq!(q.matmul(&[], 0, &mut []), Err(QuantError::Rows { m: 0 }));
        assert!(matches!(
            q.matmul(&[0.0; 63], 1, &mut y[..2]),
            Err(QuantError::Shape { what: "x", .. })
        ));
        assert!(matches!(
            q.matmul(&[0.0; 64], 1, &mut y[..3]),
            Err(QuantError::Shape { what: "y", .. })
        ));
        assert!(q.permute_rows(|i| i + 1).is_err());
        let empty = QuantMatrix::new(f, 0, 64, vec![]).unwrap();
        empty.matmul(&[1.0; 64], 1, &mut []).unwrap();
    }

    #[test]
    fn concatenated_rows_are_the_parts_in_order() {
        let mut rng = Rng(5);
        let a = random_matrix(QuantFormat::Q4_1, 3, 64, &mut rng);
        let b = random_matrix(QuantFormat::Q4_1, 2, 64, &mut rng);
        let ab = QuantMatrix::concat_rows(&[&a, &b]).unwrap();
        assert_eq!((ab.rows(), ab.cols()), (5, 64));
        let (mut got, mut want) = (vec![0f32; 64], vec![0f32; 64]);
        for (i, (part, row)) in [(&a, 0), (&a, 1), (&a, 2), (&b, 0), (&b, 1)]
            .into_iter()
            .enumerate()
        {
            ab.dequantize_row(i, &mut got);
            part.dequantize_row(row, &mut want);
            assert_eq!(got, want, "row {i}");
        }
        let other_format = random_matrix(QuantFormat::Q8_0, 2, 64, &mut rng);
        let other_width = random_matrix(QuantFormat::Q4_1, 2, 96, &mut rng);
        assert!(QuantMatrix::concat_rows(&[&a, &other_format]).is_none());
        assert!(QuantMatrix::concat_rows(&[&a, &other_width]).is_none());
        assert!(QuantMatrix::concat_rows(&[]).is_none());
    }

    #[test]
    fn permuted_rows_carry_their_blocks() {
        let mut rng = Rng(11);
        let q = random_matrix(QuantFormat::Q4_0, 4, 64, &mut rng);
        let p = q.permute_rows(|i| 3 - i).unwrap();
        let (mut a, mut b) = (vec![0f32; 64], vec![0f32; 64]);
        for i in 0..4 {
            p.dequantize_row(i, &mut a);
            q.dequantize_row(3 - i, &mut b);
            assert_eq!(a, b);
        }
    }

    #[test]
    fn task_sizes_cover_small_and_large_matrices() {
        assert_eq!(rows_per_task(1, 1, 2), 1);
        assert_eq!(rows_per_task(192, 18, 2), 192, "serial");
        assert!(rows_per_task(576, 18, 2) < 576, "two threads");
        assert!((29..1536).contains(&rows_per_task(1536, 18, 2)));
        let head = rows_per_task(49152, 18, 2);
        assert!(
            head * 18 <= MAX_BLOCKS_PER_TASK && 49152 / head >= 16,
            "{head}"
        );
        assert_eq!(rows_per_task(3, 100_000, 2), 1);
    }
}
