//! The integration tests of this crate, in one test binary (one link and one
//! monomorphisation of burn instead of one per file): `cargo test -p <crate> --test
//! integration <module>::` runs one file's tests.

mod gemma3_gguf;
mod gguf_spm_tokenizer;
mod gguf_tokenizer;
