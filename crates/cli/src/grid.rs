//! `longctx grid`: every cell of a study file, run one after another in this process.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use burn::tensor::backend::Backend;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use longctx_backend::{run_on, BackendInfo, BackendJob, BackendKind};
use longctx_grid::{shard_cells, share_groups, Cell, Shard, Study};
use longctx_harness::{
    partial_path, remove_stale_temporaries, run_cell_resumable, run_cells_shared_resumable,
    RunRecord,
};

/// What `longctx grid` was asked.
pub struct GridArgs {
    pub file: PathBuf,
    pub out: Option<PathBuf>,
    pub shard: Option<Shard>,
    pub quiet: bool,
    pub dry_run: bool,
    /// Run every cell on its own, prefilling each prompt for each cell (an A/B check of the
    /// shared prefill).
    pub no_share: bool,
    /// Methods one shared prefill feeds at most (over the study's `max_shared`).
    pub max_shared: Option<usize>,
}

/// Progress output: bars on a terminal unless `--quiet`, one line per finished cell always.
struct Ui {
    multi: Option<MultiProgress>,
    total: Option<ProgressBar>,
    cell: Option<ProgressBar>,
    finished: usize,
    count: usize,
}

impl Ui {
    fn new(count: usize, quiet: bool) -> Self {
        if quiet {
            return Self {
                multi: None,
                total: None,
                cell: None,
                finished: 0,
                count,
            };
        }
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let total = multi.add(ProgressBar::new(count as u64));
        total.set_style(
            ProgressStyle::with_template(
                "grid {bar:30} {pos}/{len} cells, {elapsed_precise} elapsed, ETA {eta_precise}",
            )
            .expect("valid template"),
        );
        total.enable_steady_tick(Duration::from_millis(500));
        Self {
            multi: Some(multi),
            total: Some(total),
            cell: None,
            finished: 0,
            count,
        }
    }

    fn println(&self, line: &str) {
        match &self.multi {
            Some(m) => m.suspend(|| println!("{line}")),
            None => println!("{line}"),
        }
    }

    fn start_cell(&mut self, cell: &Cell) {
        if let Some(m) = &self.multi {
            let bar = m.add(ProgressBar::new(0));
            bar.set_style(
                ProgressStyle::with_template(
                    "cell {bar:30} {pos}/{len} samples, ETA {eta_precise}  {msg}",
                )
                .expect("valid template"),
            );
            bar.set_message(cell.label.clone());
            self.cell = Some(bar);
        }
    }

    /// A bar for the samples of a group of cells that share their prefill.
    fn start_group(&mut self, group: &[Cell]) {
        if let Some(m) = &self.multi {
            let bar = m.add(ProgressBar::new(0));
            bar.set_style(
                ProgressStyle::with_template(
                    "cells {bar:30} {pos}/{len} samples, ETA {eta_precise}  {msg}",
                )
                .expect("valid template"),
            );
            bar.set_message(format!(
                "{} cells sharing prefill: {}",
                group.len(),
                group
                    .iter()
                    .map(|c| c.label.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
            self.cell = Some(bar);
        }
    }

    fn sample(&mut self, done: usize, total: usize, resumed: bool) {
        if let Some(bar) = &self.cell {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
            if resumed {
                // Samples read back took no time: keep them out of the rate.
                bar.reset_eta();
            }
        }
    }

    fn end_cell(&mut self, cell: &Cell, outcome: std::result::Result<&RunRecord, &str>) {
        if let Some(bar) = self.cell.take() {
            bar.finish_and_clear();
            if let Some(m) = &self.multi {
                m.remove(&bar);
            }
        }
        self.finished += 1;
        if let Some(t) = &self.total {
            t.inc(1);
        }
        let line = match outcome {
            Ok(record) => {
                let metrics: Vec<String> = record
                    .metrics
                    .overall
                    .iter()
                    .map(|(k, v)| format!("{k}={v:.3}"))
                    .collect();
                format!(
                    "[{}/{}] done {} {} ({} samples, {:.1} s; {}) -> {}",
                    self.finished,
                    self.count,
                    &cell.hash[..12],
                    cell.label,
                    record.samples.len(),
                    record.timing.wall_seconds,
                    metrics.join(" "),
                    cell.path.display()
                )
            }
            Err(e) => format!(
                "[{}/{}] FAILED {} {}: {e}",
                self.finished,
                self.count,
                &cell.hash[..12],
                cell.label
            ),
        };
        self.println(&line);
    }

    fn finish(&self) {
        if let Some(t) = &self.total {
            t.finish_and_clear();
        }
    }
}

/// The cells of one backend, run on it: each group of cells that share their prefill together
/// (a group of one as `longctx run` runs it).
struct GridJob<'a> {
    groups: Vec<Vec<Cell>>,
    max_shared: usize,
    ui: &'a mut Ui,
}

/// The message of a panic caught while running cells.
fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    format!(
        "panicked: {}",
        panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("(no message)")
    )
}

impl BackendJob for GridJob<'_> {
    /// Failed cells with their errors.
    type Output = Vec<(Cell, String)>;
    fn run<B: Backend>(self, device: B::Device, info: BackendInfo) -> Self::Output {
        let registry = longctx_registry::builtin::<B>();
        let mut failed = Vec::new();
        for group in self.groups {
            let outcomes: Vec<std::result::Result<RunRecord, String>> = if let [cell] = &group[..] {
                self.ui.start_cell(cell);
                let ui = &mut *self.ui;
                let outcome = catch_unwind(AssertUnwindSafe(|| {
                    run_cell_resumable(
                        &registry,
                        &cell.config,
                        &device,
                        info.clone(),
                        &cell.path,
                        &mut |p| ui.sample(p.done, p.total, p.resumed),
                    )
                }));
                vec![match outcome {
                    Ok(Ok(record)) => Ok(record),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(panic) => Err(panic_message(panic)),
                }]
            } else {
                self.ui.start_group(&group);
                let ui = &mut *self.ui;
                let cells: Vec<_> = group
                    .iter()
                    .map(|c| (c.config.clone(), c.path.clone()))
                    .collect();
                // Samples finished per cell, shown summed over the group.
                let mut done = vec![0; group.len()];
                let outcome = catch_unwind(AssertUnwindSafe(|| {
                    run_cells_shared_resumable(
                        &registry,
                        &cells,
                        &device,
                        info.clone(),
                        self.max_shared,
                        &mut |c, p| {
                            done[c] = p.done;
                            ui.sample(done.iter().sum(), p.total * done.len(), p.resumed)
                        },
                    )
                }));
                match outcome {
                    Ok(results) => results
                        .into_iter()
                        .map(|r| r.map_err(|e| e.to_string()))
                        .collect(),
                    Err(panic) => {
                        let e = panic_message(panic);
                        group.iter().map(|_| Err(e.clone())).collect()
                    }
                }
            };
            // The group's bar goes with its first cell's line.
            for (cell, outcome) in group.into_iter().zip(outcomes) {
                match outcome {
                    Ok(record) => self.ui.end_cell(&cell, Ok(&record)),
                    Err(e) => {
                        self.ui.end_cell(&cell, Err(&e));
                        failed.push((cell, e));
                    }
                }
            }
        }
        failed
    }
}

/// Removes the partial file of a cell whose record exists (a crash between writing the record
/// and deleting it), and temporary files a killed process left beside it.
fn remove_stale_partial(cell: &Cell) {
    remove_stale_temporaries(&cell.path);
    let partial = partial_path(&cell.path);
    if partial.exists() {
        let _ = std::fs::remove_file(partial);
    }
}

/// `longctx grid`.
pub fn grid(args: GridArgs) -> Result<()> {
    let study = Study::load(&args.file)?;
    let out = study.out_dir(args.out.as_deref());
    let all = study.cells(&args.file, &out)?;
    let total = all.len();
    let cells = shard_cells(all, args.shard);
    let shard = args
        .shard
        .map_or(String::new(), |s| format!(", shard {s}: {}", cells.len()));
    let (done, todo): (Vec<Cell>, Vec<Cell>) = cells.into_iter().partition(Cell::is_done);
    let max_shared = args
        .max_shared
        .or(study.max_shared)
        .unwrap_or(longctx_engine::DEFAULT_MAX_SHARED);
    if max_shared == 0 {
        bail!("max_shared (--max-shared or the study's key) must be at least 1");
    }
    let sharing = if args.no_share {
        ", each prefilled alone (--no-share)".to_string()
    } else {
        let groups: Vec<usize> = share_groups(todo.clone())
            .iter()
            .map(Vec::len)
            .filter(|&n| n > 1)
            .collect();
        match groups.len() {
            0 => String::new(),
            g => format!(
                ", {} of them in {g} group(s) run together to share prefills",
                groups.iter().sum::<usize>()
            ),
        }
    };
    let header = format!(
        "study {} ({}): {total} cells{shard}; {} done, {} to run{sharing}; records under {}",
        study.name,
        args.file.display(),
        done.len(),
        todo.len(),
        out.display()
    );
    if args.dry_run {
        println!("{header}");
        let mut listed: Vec<&Cell> = done.iter().chain(&todo).collect();
        listed.sort_by(|a, b| a.hash.cmp(&b.hash));
        for cell in listed {
            let state = if cell.is_done() {
                "done"
            } else if partial_path(&cell.path).exists() {
                "partial"
            } else {
                "todo"
            };
            println!(
                "{}  {state:<7}  {}  {}",
                &cell.hash[..12],
                cell.path.display(),
                cell.label
            );
        }
        return Ok(());
    }
    eprintln!("{header}");
    done.iter().for_each(remove_stale_partial);

    let started = Instant::now();
    let mut ui = Ui::new(todo.len(), args.quiet);
    // One backend at a time, in the order of first appearance (cells stay in hash order).
    let mut backends: Vec<BackendKind> = Vec::new();
    for c in &todo {
        if !backends.contains(&c.config.backend) {
            backends.push(c.config.backend);
        }
    }
    let mut failed: Vec<(Cell, String)> = Vec::new();
    for backend in backends {
        let cells: Vec<Cell> = todo
            .iter()
            .filter(|c| c.config.backend == backend)
            .cloned()
            .collect();
        let groups = if args.no_share {
            cells.iter().cloned().map(|c| vec![c]).collect()
        } else {
            share_groups(cells.clone())
        };
        match run_on(
            backend,
            GridJob {
                groups,
                max_shared,
                ui: &mut ui,
            },
        ) {
            Ok(f) => failed.extend(f),
            Err(e) => {
                for cell in cells {
                    ui.end_cell(&cell, Err(&e.to_string()));
                    failed.push((cell, e.to_string()));
                }
            }
        }
    }
    ui.finish();
    let ran = todo.len();
    eprintln!(
        "study {}: {} of {ran} cells finished, {} failed, in {:.1} s",
        study.name,
        ran - failed.len(),
        failed.len(),
        started.elapsed().as_secs_f64()
    );
    if study.report {
        report_when_complete(&study, &args.file, &out)?;
    }
    if !failed.is_empty() {
        let list: Vec<String> = failed
            .iter()
            .map(|(c, e)| format!("  {} {} ({}): {e}", &c.hash[..12], c.label, path(&c.path)))
            .collect();
        bail!(
            "{} of {ran} cells failed (their finished samples are kept in .partial.jsonl files; \
             run the grid again to retry them):\n{}",
            failed.len(),
            list.join("\n")
        );
    }
    Ok(())
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// The study's report (`report = true`): written under `<out>/report` and its tables printed
/// once every cell of the study (every shard) has its record; otherwise a line saying why not.
fn report_when_complete(study: &Study, file: &Path, out: &Path) -> Result<()> {
    let missing = study
        .cells(file, out)?
        .iter()
        .filter(|c| !c.is_done())
        .count();
    if missing > 0 {
        eprintln!("report not written: {missing} cells of the study have no record yet");
        return Ok(());
    }
    let dir = out.join("report");
    let files = longctx_report::write_report(out, &dir)?;
    println!("{}", files.summary);
    eprintln!(
        "report of {} records -> {} (heatmaps, Pareto plots and curves under {})",
        files.records,
        files.markdown.display(),
        dir.display()
    );
    Ok(())
}
