//! Needle heatmaps (context length x needle depth), like the paper's needle figures.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use longctx_core::{Error, Result};
use longctx_harness::RunRecord;

/// Mean score per (depth, length) cell of a needle-style record.
#[derive(Clone, Debug, PartialEq)]
pub struct NeedleGrid {
    /// Caption: model, method, budget, task, backend.
    pub title: String,
    pub metric: String,
    /// "words" or "tokens": what `lengths` count.
    pub length_unit: String,
    /// Ascending.
    pub lengths: Vec<u64>,
    /// Ascending, in [0, 1].
    pub depths: Vec<f64>,
    /// `cells[d][l]`: the mean of `metric` over the samples at `depths[d]`, `lengths[l]`
    /// (iterations averaged); `None` where the record has no sample.
    pub cells: Vec<Vec<Option<f64>>>,
}

impl NeedleGrid {
    /// The grid of `metric` from a record whose samples carry `length` and `depth` metadata
    /// (needle-in-a-haystack, passkey); `None` for any other record.
    pub fn from_record(record: &RunRecord, metric: &str) -> Option<Self> {
        // Depths are keyed in millionths so that float noise does not split a row.
        let mut sums: BTreeMap<(i64, u64), (f64, usize)> = BTreeMap::new();
        let mut unit = None;
        for s in &record.samples {
            let length = s.metadata.get("length")?.as_u64()?;
            let depth = s.metadata.get("depth")?.as_f64()?;
            let score = *s.scores.get(metric)?;
            if unit.is_none() {
                unit = s
                    .metadata
                    .get("unit")
                    .and_then(|u| u.as_str())
                    .map(String::from);
            }
            let e = sums
                .entry(((depth * 1e6).round() as i64, length))
                .or_default();
            e.0 += score;
            e.1 += 1;
        }
        if sums.is_empty() {
            return None;
        }
        let mut lengths: Vec<u64> = sums.keys().map(|k| k.1).collect();
        lengths.sort_unstable();
        lengths.dedup();
        let mut depth_keys: Vec<i64> = sums.keys().map(|k| k.0).collect();
        depth_keys.dedup();
        let cells = depth_keys
            .iter()
            .map(|d| {
                lengths
                    .iter()
                    .map(|l| sums.get(&(*d, *l)).map(|(s, n)| s / *n as f64))
                    .collect()
            })
            .collect();
        let c = &record.config;
        Some(Self {
            title: format!(
                "{} | {} | {} | {} | {}",
                c.model.name, c.method.name, c.budget, c.task.name, c.backend
            ),
            metric: metric.to_string(),
            length_unit: unit.unwrap_or_else(|| "tokens".into()),
            lengths,
            depths: depth_keys.iter().map(|d| *d as f64 / 1e6).collect(),
            cells,
        })
    }
}

/// Red (0) through yellow (0.5) to green (1), the usual needle-figure palette.
pub fn score_color(score: f64) -> RGBColor {
    let lerp = |a: u8, b: u8, t: f64| (a as f64 + (b as f64 - a as f64) * t).round() as u8;
    let (lo, hi, t) = if score < 0.5 {
        ((215, 48, 39), (254, 224, 102), score / 0.5)
    } else {
        ((254, 224, 102), (26, 152, 80), (score - 0.5) / 0.5)
    };
    let t = t.clamp(0.0, 1.0);
    RGBColor(
        lerp(lo.0, hi.0, t),
        lerp(lo.1, hi.1, t),
        lerp(lo.2, hi.2, t),
    )
}

static FONT: Once = Once::new();

/// Plotters measures and rasterises text with a bundled font (DejaVu Sans), so figures look
/// the same on every machine and need no system fonts.
pub(crate) fn register_font() {
    FONT.call_once(|| {
        let bytes: &'static [u8] = include_bytes!("../assets/DejaVuSans.ttf");
        // The bundled font is valid; if registration ever failed, text would be missing from
        // the figure rather than the report failing.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, bytes);
    });
}

/// Figure size in pixels for a grid.
fn figure_size(grid: &NeedleGrid) -> (u32, u32) {
    (
        (160 + 80 * grid.lengths.len() as u32).max(480),
        (140 + 34 * grid.depths.len() as u32).max(300),
    )
}

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, grid: &NeedleGrid) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: &dyn std::fmt::Display| Error::Other(format!("drawing the heatmap: {e}"));
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (n_len, n_depth) = (grid.lengths.len() as u32, grid.depths.len() as u32);
    let mut chart = ChartBuilder::on(&root)
        .caption(&grid.title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        // A discrete u32 range includes its end: `0..n-1` is n segments.
        .build_cartesian_2d(
            (0u32..n_len - 1).into_segmented(),
            (0u32..n_depth - 1).into_segmented(),
        )
        .map_err(|e| err(&e))?;
    // Row 0 (depth 0, the start of the context) is drawn at the top, as in the paper.
    let row_of = |d: u32| n_depth - 1 - d;
    let lengths = grid.lengths.clone();
    let depths = grid.depths.clone();
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc(format!("context length ({})", grid.length_unit))
        .y_desc(format!("needle depth  [{}]", grid.metric))
        .x_labels(grid.lengths.len())
        .y_labels(grid.depths.len())
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => lengths
                .get(*i as usize)
                .map_or(String::new(), |l| l.to_string()),
            _ => String::new(),
        })
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) if *i < n_depth => {
                format!("{:.0}%", depths[(n_depth - 1 - i) as usize] * 100.0)
            }
            _ => String::new(),
        })
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 14))
        .draw()
        .map_err(|e| err(&e))?;
    let mut rects = Vec::new();
    let mut labels = Vec::new();
    for (d, row) in grid.cells.iter().enumerate() {
        for (l, cell) in row.iter().enumerate() {
            let (x, y) = (l as u32, row_of(d as u32));
            let color = cell.map_or(RGBColor(220, 220, 220), score_color);
            rects.push(Rectangle::new(
                [
                    (SegmentValue::Exact(x), SegmentValue::Exact(y + 1)),
                    (SegmentValue::Exact(x + 1), SegmentValue::Exact(y)),
                ],
                color.filled(),
            ));
            labels.push(Text::new(
                cell.map_or("-".into(), |v| format!("{v:.2}")),
                (SegmentValue::CenterOf(x), SegmentValue::CenterOf(y)),
                ("sans-serif", 14)
                    .into_font()
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Center, VPos::Center)),
            ));
        }
    }
    chart.draw_series(rects).map_err(|e| err(&e))?;
    chart.draw_series(labels).map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// Writes `grid` as an SVG figure at `path`.
pub fn write_heatmap_svg(grid: &NeedleGrid, path: &Path) -> Result<()> {
    register_font();
    let root = SVGBackend::new(path, figure_size(grid)).into_drawing_area();
    draw(root, grid).map_err(|e| Error::file(path, e.to_string()))
}

/// Writes `grid` as a PNG figure at `path`.
pub fn write_heatmap_png(grid: &NeedleGrid, path: &Path) -> Result<()> {
    register_font();
    let root = BitMapBackend::new(path, figure_size(grid)).into_drawing_area();
    draw(root, grid).map_err(|e| Error::file(path, e.to_string()))
}
