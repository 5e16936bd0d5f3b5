//! The integration tests of this crate, in one test binary (one link and one
//! monomorphisation of burn instead of one per file): `cargo test -p <crate> --test
//! integration <module>::` runs one file's tests.

mod backends;
mod common;
mod dtype;
mod gemma3_gguf;
mod gguf_llama;
mod gguf_reference;
mod hf_parity;
mod quant_decode;
mod smollm2;
