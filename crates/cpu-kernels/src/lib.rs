//! CPU kernels for the hot loops that burn's CPU backend (flex) leaves slow, and the bridge that
//! runs them on flex tensors without copies.
//!
//! Why: flex's attention loops over heads on one thread, computes every tile of a causal
//! product (half of them fully masked), and calls the scalar `exp` for each score; at 8,000
//! tokens that made SmolLM2-135M prefill run at 41 tokens/s on 2 threads. [`attention`] tiles
//! over query blocks and key tiles, skips tiles that positions hide, groups the query heads
//! that share a KV head, spreads the blocks (and, for few queries, key chunks) over rayon's
//! pool, and uses a vectorisable `exp`.
//!
//! [`quant`] runs decode steps' linear layers over GGUF's Q4_0/Q4_1/Q8_0 blocks, reading 4-7
//! times fewer bytes than the dequantized f32 weights, exact up to summation order.
//!
//! [`rows`] fuses the row-wise passes of a layer (RMSNorm, rotary embedding, SwiGLU's gate)
//! that flex runs as several single-threaded ops each.
//!
//! The kernels take plain slices, so they are tested against a direct implementation here;
//! [`flex`] adapts burn tensors of the flex backend to them (any other backend gets `None` and
//! keeps burn's own ops).

pub mod attention;
pub mod dense;
pub mod flex;
pub mod quant;
pub mod rows;
mod simd;

pub use attention::{attention, attention_in_order, Heads, OutputOrder, Visibility};
pub use quant::{QuantFormat, QuantMatrix};
