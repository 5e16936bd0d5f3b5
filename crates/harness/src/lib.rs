//! One cell of a study: a model x method x budget x task on one backend, run sample by sample,
//! and written as a JSON [`RunRecord`] whose file name carries the hash of its configuration.

mod provenance;
mod record;
mod run;

pub use provenance::{Provenance, BURN_VERSION};
pub use record::{
    write_record_atomically, Aggregate, MemorySummary, RunRecord, SampleRecord, TimingSummary,
};
pub use run::{config_hash, prompt_text, record_path, run_cell, CellConfig, Component};
