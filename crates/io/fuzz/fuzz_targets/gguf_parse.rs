//! Arbitrary bytes through the GGUF parser, every metadata getter and every dequantizer.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    longctx_io::fuzzing::gguf(data);
});
