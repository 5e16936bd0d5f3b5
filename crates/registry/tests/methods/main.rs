//! Every built-in KV method on the tiny model through the real runner, in one test binary:
//! the token-dropping methods' matrix (`evict_matrix`) and the quantizers (`int8`, `kivi`,
//! `flexgen`), one module each. The model and the backends are then compiled once for all of
//! them (as separate binaries each took 150-200 s of CI's compile time).

#[path = "../common/mod.rs"]
mod common;
mod evict_matrix;
mod flexgen;
mod int8;
mod kivi;
