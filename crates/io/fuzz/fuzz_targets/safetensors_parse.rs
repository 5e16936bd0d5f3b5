//! Arbitrary bytes through the safetensors header parser and the f32 conversions.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    longctx_io::fuzzing::safetensors(data);
});
