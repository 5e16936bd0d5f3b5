//! The KV-cache quantizers (`int8`, `kivi`, `flexgen`) on the tiny model, one module each, in
//! one test binary: the model and the backends are compiled once for all three (three binaries
//! took about 200 s of compile time each).

mod flexgen;
mod int8;
mod kivi;
