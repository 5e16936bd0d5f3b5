//! `longctx export`: run records as a CSV for pandas and in lm-evaluation-harness's format.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// Reads every run record under `records` and writes the CSV to `csv` (`-`: standard output)
/// and the lm-eval files under `lm_eval`; with neither, the CSV goes to standard output.
pub fn export(records: &Path, csv: Option<&Path>, lm_eval: Option<&Path>) -> Result<()> {
    let all = longctx_report::load_records(records)?;
    if all.is_empty() {
        bail!(
            "no {} records under {}",
            longctx_report::RUN_RECORD_SCHEMA,
            records.display()
        );
    }
    let csv = match (csv, lm_eval) {
        (None, None) => Some(Path::new("-")),
        (c, _) => c,
    };
    if let Some(path) = csv {
        let text = longctx_report::export::csv_export(&all, records);
        if path == Path::new("-") {
            std::io::stdout()
                .lock()
                .write_all(text.as_bytes())
                .context("writing the CSV to standard output")?;
        } else {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
            eprintln!("{} records -> {}", all.len(), path.display());
        }
    }
    if let Some(dir) = lm_eval {
        let files = longctx_report::export::write_lm_eval(&all, records, dir)?;
        eprintln!(
            "{} records -> {} lm-eval files under {}",
            all.len(),
            files.len(),
            dir.display()
        );
    }
    Ok(())
}
