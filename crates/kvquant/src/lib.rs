//! Group-wise KV-cache quantization with real memory savings.
//!
//! - [`packing`]: codes bit-packed into the backend's integer words (tensor ops on the device);
//! - [`quantizer`]: asymmetric/symmetric min-max quantization per group of channels (token
//!   axis) or of tokens (channel axis), scales and minima stored in 16-bit floats;
//! - [`store`]: an append-only device store of quantized tokens;
//! - [`cache`]: [`QuantKvCache`], the quantized prefix plus a full-precision residual, with
//!   KIVI's bookkeeping, keys quantized after RoPE or (with the layer's RoPE undone) before;
//!   the `kivi`, `flexgen` and `int8` methods configure it;
//! - [`rope`]: undoing and redoing a layer's RoPE on cached keys (pre-RoPE quantization);
//! - [`memory`]: the paper's formula ratio, the bytes the packing should take, and reports of
//!   measured bytes against a 16-bit full cache.

pub mod cache;
pub mod host;
pub mod memory;
pub mod method;
pub mod packing;
pub mod quantizer;
pub mod rope;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;

pub use cache::{KeyPosition, QuantCacheConfig, QuantKvCache, ResidualPrecision};
pub use memory::{formula_ratio, packed_bytes, MemoryReport, StoredWidths};
pub use method::QuantMethod;
pub use packing::WordLayout;
pub use quantizer::{QuantAxis, QuantScheme, QuantSpec, QuantizedChunk, Quantizer};
pub use rope::KeyRotation;
pub use store::QuantStore;
