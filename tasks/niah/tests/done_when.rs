//! The issue's end-to-end check, in process (what `longctx run --model smollm2-135m --method
//! full --task niah --task-param lengths=1000,2000,4000 --task-param depths=5
//! --task-param iterations=1` does on the CPU): runs the cell, prints per-length exact match and
//! writes the record under `results/runs/niah/` at the path the CLI would use. Minutes of CPU,
//! so ignored by default:
//!
//! ```bash
//! cargo test -p longctx-task-niah --test done_when -- --ignored --nocapture
//! ```

use std::path::Path;

use burn::tensor::backend::Backend;
use longctx_backend::{run_on, BackendInfo, BackendJob, BackendKind};
use longctx_core::{Budget, RawParams};
use longctx_engine::Sampling;
use longctx_harness::{record_path, run_cell, write_record_atomically, CellConfig};

struct DoneWhen;

impl BackendJob for DoneWhen {
    type Output = ();
    fn run<B: Backend>(self, device: B::Device, info: BackendInfo) {
        let registry = longctx_registry::builtin::<B>();
        let task = RawParams::from([
            ("lengths".to_string(), "1000,2000,4000".to_string()),
            ("depths".to_string(), "5".to_string()),
            ("iterations".to_string(), "1".to_string()),
        ]);
        let config = CellConfig::resolve(
            &registry,
            ("smollm2-135m", &RawParams::new()),
            ("full", &RawParams::new()),
            Budget::Unlimited,
            ("niah", &task),
            info.kind,
            Sampling::Greedy,
            None,
        )
        .unwrap();
        let record = run_cell(&registry, &config, &device, info, &mut |line| {
            eprintln!("{line}")
        })
        .unwrap();
        let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../results/runs");
        let path = write_record_atomically(&record_path(&out, &config), &record).unwrap();
        for (length, metrics) in &record.metrics.by["length"] {
            println!(
                "length {length} words: exact_match {:.3}, partial_match {:.3}",
                metrics["exact_match"], metrics["partial_match"]
            );
        }
        println!(
            "overall exact_match {:.3}; record {}",
            record.metrics.overall["exact_match"],
            path.display()
        );
        assert_eq!(record.samples.len(), 15);
    }
}

#[test]
#[ignore = "runs SmolLM2-135M on 15 prompts of up to ~5.5K tokens (minutes of CPU)"]
fn smollm2_full_niah_three_lengths_five_depths() {
    run_on(BackendKind::Cpu, DoneWhen).unwrap();
}
