//! One cell of a study: a model x method x budget x task on one backend, run sample by sample,
//! and written as a JSON [`RunRecord`] whose file name carries the hash of its configuration.

mod provenance;
mod record;
mod run;

pub use provenance::{Provenance, BURN_VERSION};
pub use record::{
    bootstrap_ci95, write_record_atomically, Aggregate, MemorySummary, RecordKind, RunRecord,
    SampleRecord, TimingSummary, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED,
};
pub use run::{
    config_hash, partial_path, prompt_text, read_partial, record_path, remove_stale_temporaries,
    run_cell, run_cell_resumable, run_cells_shared_resumable, CellConfig, Component, PartialHeader,
    SampleProgress, PARTIAL_SCHEMA,
};
