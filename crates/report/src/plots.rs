//! Cost-quality plots from records: a Pareto plot per task and setting (KV bytes per token
//! against the task's main metric) and per-length curves (metric against context length).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

use longctx_core::{Error, Result};
use longctx_harness::RunRecord;

use crate::cells::{
    group_cells, lower_is_better, method_label, method_settings, metric_caption, MethodFamily,
};
use crate::heatmap::register_font;
use crate::primary_metric;

/// Indices of the points of `points` (`(cost, quality)`) that no other point dominates, sorted
/// by cost then quality. Lower cost is better; higher quality is better unless
/// `lower_quality_is_better`. A point dominates another when it is at least as good on both
/// axes and strictly better on one, so identical points (ties) do not dominate each other and
/// both stay on the front; points with a non-finite coordinate are never on it.
pub fn pareto_front(points: &[(f64, f64)], lower_quality_is_better: bool) -> Vec<usize> {
    let better_eq = |a: f64, b: f64| {
        if lower_quality_is_better {
            a <= b
        } else {
            a >= b
        }
    };
    let dominates = |a: (f64, f64), b: (f64, f64)| {
        a.0 <= b.0 && better_eq(a.1, b.1) && (a.0 < b.0 || a.1 != b.1)
    };
    let finite = |p: &(f64, f64)| p.0.is_finite() && p.1.is_finite();
    let mut front: Vec<usize> = (0..points.len())
        .filter(|&i| finite(&points[i]))
        .filter(|&i| {
            !points
                .iter()
                .enumerate()
                .any(|(j, p)| j != i && finite(p) && dominates(*p, points[i]))
        })
        .collect();
    front.sort_by(|&a, &b| {
        points[a]
            .0
            .total_cmp(&points[b].0)
            .then(points[a].1.total_cmp(&points[b].1))
    });
    front
}

/// One point of a Pareto plot: a record's KV bytes per token and main metric.
#[derive(Clone, Debug, PartialEq)]
pub struct ParetoPoint {
    /// `method (params) budget`, plus the backend where the plot mixes backends.
    pub label: String,
    pub family: MethodFamily,
    pub bytes_per_token: f64,
    pub value: f64,
}

/// A Pareto plot's data: the records of one task, model and setting.
#[derive(Clone, Debug, PartialEq)]
pub struct ParetoPlot {
    pub title: String,
    /// `<task>__<model>[__<setting>]`.
    pub file_stem: String,
    pub metric: String,
    pub points: Vec<ParetoPoint>,
    /// Indices into `points`, by increasing bytes per token.
    pub front: Vec<usize>,
}

impl ParetoPlot {
    /// The plot's series, one per method family present, in legend order
    /// ([`MethodFamily::ALL`]): the family and the indices of its points.
    pub fn series(&self) -> Vec<(MethodFamily, Vec<usize>)> {
        MethodFamily::ALL
            .into_iter()
            .filter_map(|family| {
                let members: Vec<usize> = (0..self.points.len())
                    .filter(|&i| self.points[i].family == family)
                    .collect();
                (!members.is_empty()).then_some((family, members))
            })
            .collect()
    }

    /// The x axis caption: KV bytes, or KV and recurrent-state bytes where a recurrent or
    /// hybrid model is plotted (its fixed-size state counts as what it holds per token).
    pub fn x_caption(&self) -> &'static str {
        if self
            .points
            .iter()
            .any(|p| p.family == MethodFamily::Recurrent)
        {
            "KV or recurrent-state bytes per token (log scale)"
        } else {
            "KV bytes per token (log scale)"
        }
    }
}

/// Per-length curves: the records of one task, model and setting (lengths aside).
#[derive(Clone, Debug, PartialEq)]
pub struct LengthCurves {
    pub title: String,
    pub file_stem: String,
    pub metric: String,
    /// "words" or "tokens" where the samples say.
    pub length_unit: String,
    /// One line per record, lengths ascending.
    pub lines: Vec<CurveLine>,
}

/// `(label, family, [(length, value)])` of one record.
pub type CurveLine = (String, MethodFamily, Vec<(u64, f64)>);

/// `(title, SVG path)` of each figure written.
type Figures = Vec<(String, PathBuf)>;

fn labels(records: &[&RunRecord], members: &[usize]) -> Vec<String> {
    let rs: Vec<&RunRecord> = members.iter().map(|&i| records[i]).collect();
    let settings = method_settings(&rs);
    // Where a group mixes backends, records off the most common one name theirs.
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    for r in &rs {
        *counts.entry(r.config.backend.to_string()).or_default() += 1;
    }
    let common = counts
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(b, _)| b.clone())
        .unwrap_or_default();
    rs.iter()
        .zip(settings)
        .map(|(r, s)| {
            let l = method_label(r, &s);
            if r.config.backend.to_string() != common {
                format!("{l} [{}]", r.config.backend)
            } else {
                l
            }
        })
        .collect()
}

/// The Pareto plots of `records`: one per task, model and distinguishing task parameters, with
/// the main metric of [`primary_metric`] (records lacking it or without bytes are left out).
pub fn pareto_plots(records: &[&RunRecord]) -> Vec<ParetoPlot> {
    let mut plots = Vec::new();
    for group in group_cells(records, &[]) {
        let Some(metric) = primary_metric(records[group.members[0]]) else {
            continue;
        };
        let names = labels(records, &group.members);
        let points: Vec<ParetoPoint> = group
            .members
            .iter()
            .zip(names)
            .filter_map(|(&i, label)| {
                let r = records[i];
                let value = *r.metrics.overall.get(&metric)?;
                let bytes = r.memory.bytes_per_token;
                (bytes > 0.0 && bytes.is_finite() && value.is_finite()).then(|| ParetoPoint {
                    label,
                    family: MethodFamily::of(r),
                    bytes_per_token: bytes,
                    value,
                })
            })
            .collect();
        if points.is_empty() {
            continue;
        }
        let xy: Vec<(f64, f64)> = points
            .iter()
            .map(|p| (p.bytes_per_token, p.value))
            .collect();
        let front = pareto_front(&xy, lower_is_better(&metric));
        plots.push(ParetoPlot {
            title: group.title(),
            file_stem: group.file_stem(),
            metric,
            points,
            front,
        });
    }
    plots
}

/// The per-length curves of `records`: for each task, model and setting (the `lengths`
/// parameter aside) where at least one record covers several lengths.
pub fn length_curves(records: &[&RunRecord]) -> Vec<LengthCurves> {
    let mut out = Vec::new();
    for group in group_cells(records, &["lengths"]) {
        let Some(metric) = primary_metric(records[group.members[0]]) else {
            continue;
        };
        let names = labels(records, &group.members);
        let mut lines = Vec::new();
        let mut all_lengths = BTreeSet::new();
        let mut unit = None;
        for (&i, label) in group.members.iter().zip(names) {
            let r = records[i];
            let Some(by_length) = r.metrics.by.get("length") else {
                continue;
            };
            let mut pts: Vec<(u64, f64)> = by_length
                .iter()
                .filter_map(|(l, m)| Some((l.parse().ok()?, *m.get(&metric)?)))
                .filter(|(_, v): &(u64, f64)| v.is_finite())
                .collect();
            pts.sort_by_key(|p| p.0);
            if pts.is_empty() {
                continue;
            }
            all_lengths.extend(pts.iter().map(|p| p.0));
            if unit.is_none() {
                unit = r
                    .samples
                    .iter()
                    .find_map(|s| s.metadata.get("unit").and_then(|u| u.as_str()))
                    .map(String::from);
            }
            lines.push((label, MethodFamily::of(r), pts));
        }
        // Curves need a record that covers several lengths; single points are the Pareto
        // plots' business.
        if all_lengths.len() < 2 || lines.iter().all(|l| l.2.len() < 2) {
            continue;
        }
        out.push(LengthCurves {
            title: group.title(),
            file_stem: group.file_stem(),
            metric,
            length_unit: unit.unwrap_or_else(|| "tokens".into()),
            lines,
        });
    }
    out
}

/// Colour of a method family: black baseline, blue quantization, orange token dropping, green
/// prompt compression, purple composite, red recurrent/hybrid models, grey other.
pub fn family_color(family: MethodFamily) -> RGBColor {
    match family {
        MethodFamily::Baseline => RGBColor(0, 0, 0),
        MethodFamily::Quantization => RGBColor(31, 119, 180),
        MethodFamily::TokenDropping => RGBColor(255, 127, 14),
        MethodFamily::PromptCompression => RGBColor(44, 160, 44),
        MethodFamily::Composite => RGBColor(148, 103, 189),
        MethodFamily::Recurrent => RGBColor(214, 39, 40),
        MethodFamily::Other => RGBColor(127, 127, 127),
    }
}

/// A point marker shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Marker {
    Square,
    Circle,
    TriangleUp,
    TriangleDown,
    Diamond,
    Cross,
    Hexagon,
}

/// Marker of a method family on the Pareto plot, so that families stay apart without colour:
/// baseline square, quantization circle, token dropping triangle, prompt compression
/// down-pointing triangle, composite diamond, recurrent/hybrid cross, other hexagon.
pub fn family_marker(family: MethodFamily) -> Marker {
    match family {
        MethodFamily::Baseline => Marker::Square,
        MethodFamily::Quantization => Marker::Circle,
        MethodFamily::TokenDropping => Marker::TriangleUp,
        MethodFamily::PromptCompression => Marker::TriangleDown,
        MethodFamily::Composite => Marker::Diamond,
        MethodFamily::Recurrent => Marker::Cross,
        MethodFamily::Other => Marker::Hexagon,
    }
}

/// The outline of `marker` centred on `(x, y)` in pixels, about 10 pixels across; every
/// shape is one polygon so that all families draw through the same element type.
fn marker_polygon(marker: Marker, (x, y): (i32, i32)) -> Vec<(i32, i32)> {
    let ring = |n: usize, r: f64, phase: f64| -> Vec<(i32, i32)> {
        (0..n)
            .map(|k| {
                let a = phase + k as f64 * std::f64::consts::TAU / n as f64;
                (
                    x + (r * a.cos()).round() as i32,
                    y + (r * a.sin()).round() as i32,
                )
            })
            .collect()
    };
    match marker {
        Marker::Square => vec![
            (x - 4, y - 4),
            (x + 4, y - 4),
            (x + 4, y + 4),
            (x - 4, y + 4),
        ],
        Marker::Circle => ring(16, 4.5, 0.0),
        Marker::TriangleUp => vec![(x, y - 6), (x + 5, y + 4), (x - 5, y + 4)],
        Marker::TriangleDown => vec![(x, y + 6), (x - 5, y - 4), (x + 5, y - 4)],
        Marker::Diamond => vec![(x, y - 6), (x + 5, y), (x, y + 6), (x - 5, y)],
        Marker::Hexagon => ring(6, 5.0, 0.0),
        Marker::Cross => {
            // A plus sign of half-width 1.6 and reach 6.5, turned 45 degrees.
            let (a, r) = (1.6f64, 6.5f64);
            let plus = [
                (a, r),
                (a, a),
                (r, a),
                (r, -a),
                (a, -a),
                (a, -r),
                (-a, -r),
                (-a, -a),
                (-r, -a),
                (-r, a),
                (-a, a),
                (-a, r),
            ];
            let s = std::f64::consts::FRAC_1_SQRT_2;
            plus.iter()
                .map(|&(px, py)| {
                    (
                        x + ((px - py) * s).round() as i32,
                        y + ((px + py) * s).round() as i32,
                    )
                })
                .collect()
        }
    }
}

/// Ten distinguishable line colours (matplotlib's tab10).
const LINE_COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

fn draw_err(e: &dyn std::fmt::Display) -> Error {
    Error::Other(format!("drawing a plot: {e}"))
}

/// A value range padded by 8% (or by a unit-scaled amount when all values are equal); metrics
/// in [0, 1] keep that range visible.
fn value_range(values: impl Iterator<Item = f64>, unit_interval: bool) -> (f64, f64) {
    let (mut lo, mut hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if unit_interval && lo >= 0.0 && hi <= 1.0 {
        return (-0.03, 1.05);
    }
    if !lo.is_finite() {
        (lo, hi) = (0.0, 1.0);
    }
    let pad = if hi > lo {
        (hi - lo) * 0.08
    } else {
        lo.abs().max(1.0) * 0.05
    };
    lo -= pad;
    hi += pad;
    (lo, hi)
}

/// Tick values 1, 2, 5 x 10^k inside `range` (plotters' own log ticks crowd at the top).
fn log_ticks(range: &std::ops::Range<f64>) -> Vec<f64> {
    let mut ticks = Vec::new();
    let mut decade = 10f64.powi(range.start.log10().floor() as i32);
    while decade <= range.end {
        for m in [1.0, 2.0, 5.0] {
            let v = m * decade;
            if range.contains(&v) {
                ticks.push(v);
            }
        }
        decade *= 10.0;
    }
    ticks
}

fn log_range(lo: f64, hi: f64) -> std::ops::Range<f64> {
    if hi > lo {
        lo / 1.35..hi * 1.35
    } else {
        lo / 2.0..hi * 2.0
    }
}

fn draw_pareto<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, plot: &ParetoPlot) -> Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(|e| draw_err(&e))?;
    let lower = lower_is_better(&plot.metric);
    let (xlo, xhi) = plot
        .points
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
            (lo.min(p.bytes_per_token), hi.max(p.bytes_per_token))
        });
    let (ylo, yhi) = value_range(plot.points.iter().map(|p| p.value), !lower);
    let mut chart = ChartBuilder::on(&root)
        .caption(&plot.title, ("sans-serif", 18))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(70)
        .build_cartesian_2d(
            log_range(xlo, xhi)
                .log_scale()
                .with_key_points(log_ticks(&log_range(xlo, xhi))),
            ylo..yhi,
        )
        .map_err(|e| draw_err(&e))?;
    chart
        .configure_mesh()
        .x_desc(plot.x_caption())
        .y_desc(metric_caption(&plot.metric))
        .x_label_formatter(&|v| format!("{v:.0}"))
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 14))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(|e| draw_err(&e))?;
    // The front, as a line through its points by increasing cost.
    let front: Vec<(f64, f64)> = plot
        .front
        .iter()
        .map(|&i| (plot.points[i].bytes_per_token, plot.points[i].value))
        .collect();
    chart
        .draw_series(LineSeries::new(
            front.clone(),
            ShapeStyle::from(&RGBColor(90, 90, 90)).stroke_width(2),
        ))
        .map_err(|e| draw_err(&e))?
        .label("Pareto front")
        .legend(|(x, y)| {
            PathElement::new(
                vec![(x, y), (x + 18, y)],
                RGBColor(90, 90, 90).stroke_width(2),
            )
        });
    chart
        .draw_series(
            front
                .iter()
                .map(|&p| Circle::new(p, 7, BLACK.stroke_width(1))),
        )
        .map_err(|e| draw_err(&e))?;
    // Points with their family's colour and marker; labels stacked where points sit close
    // together.
    let y_span = (yhi - ylo).max(f64::MIN_POSITIVE);
    let mut placed: Vec<(f64, f64)> = Vec::new();
    for (family, members) in plot.series() {
        let color = family_color(family);
        let marker = family_marker(family);
        let mut elements = Vec::new();
        for p in members.iter().map(|&i| &plot.points[i]) {
            let near = placed
                .iter()
                .filter(|(x, y)| {
                    (x / p.bytes_per_token).ln().abs() < 0.12
                        && ((y - p.value) / y_span).abs() < 0.05
                })
                .count() as i32;
            placed.push((p.bytes_per_token, p.value));
            elements.push(
                EmptyElement::at((p.bytes_per_token, p.value))
                    + Polygon::new(marker_polygon(marker, (0, 0)), color.filled())
                    + Text::new(
                        p.label.clone(),
                        (8, -14 - 12 * near),
                        ("sans-serif", 11).into_font().color(&color),
                    ),
            );
        }
        chart
            .draw_series(elements)
            .map_err(|e| draw_err(&e))?
            .label(family.name())
            .legend(move |(x, y)| Polygon::new(marker_polygon(marker, (x + 9, y)), color.filled()));
    }
    chart
        .configure_series_labels()
        .position(if lower {
            SeriesLabelPosition::UpperRight
        } else {
            SeriesLabelPosition::LowerRight
        })
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(200, 200, 200))
        .label_font(("sans-serif", 12))
        .draw()
        .map_err(|e| draw_err(&e))?;
    root.present().map_err(|e| draw_err(&e))?;
    Ok(())
}

const CURVE_LEGEND_WIDTH: u32 = 300;

fn draw_curves<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    curves: &LengthCurves,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(|e| draw_err(&e))?;
    let (w, _) = root.dim_in_pixel();
    let (left, right) = root.split_horizontally(w.saturating_sub(CURVE_LEGEND_WIDTH));
    let lower = lower_is_better(&curves.metric);
    let lengths: Vec<u64> = curves
        .lines
        .iter()
        .flat_map(|l| l.2.iter().map(|p| p.0))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let (xlo, xhi) = (lengths[0] as f64, *lengths.last().unwrap() as f64);
    let (ylo, yhi) = value_range(
        curves.lines.iter().flat_map(|l| l.2.iter().map(|p| p.1)),
        !lower,
    );
    let mut chart = ChartBuilder::on(&left)
        .caption(&curves.title, ("sans-serif", 18))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (xlo / 1.15..xhi * 1.15)
                .log_scale()
                .with_key_points(lengths.iter().map(|&l| l as f64).collect::<Vec<_>>()),
            ylo..yhi,
        )
        .map_err(|e| draw_err(&e))?;
    chart
        .configure_mesh()
        .x_desc(format!(
            "context length ({}, log scale)",
            curves.length_unit
        ))
        .y_desc(metric_caption(&curves.metric))
        .x_label_formatter(&|v| format!("{v:.0}"))
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 14))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(|e| draw_err(&e))?;
    let font = ("sans-serif", 12).into_font();
    for (k, (label, family, pts)) in curves.lines.iter().enumerate() {
        // Baselines in black; the rest cycle through the palette.
        let color = if *family == MethodFamily::Baseline {
            BLACK
        } else {
            LINE_COLORS[k % LINE_COLORS.len()]
        };
        let data: Vec<(f64, f64)> = pts.iter().map(|&(l, v)| (l as f64, v)).collect();
        chart
            .draw_series(LineSeries::new(data.clone(), color.stroke_width(2)))
            .map_err(|e| draw_err(&e))?;
        chart
            .draw_series(data.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(|e| draw_err(&e))?;
        let y = 40 + 18 * k as i32;
        right
            .draw(&PathElement::new(
                vec![(4, y), (26, y)],
                color.stroke_width(2),
            ))
            .map_err(|e| draw_err(&e))?;
        right
            .draw(&Text::new(label.clone(), (32, y - 7), font.clone()))
            .map_err(|e| draw_err(&e))?;
    }
    root.present().map_err(|e| draw_err(&e))?;
    Ok(())
}

fn pareto_size(plot: &ParetoPlot) -> (u32, u32) {
    (900, (560 + 6 * plot.points.len() as u32).min(900))
}

fn curves_size(curves: &LengthCurves) -> (u32, u32) {
    (
        620 + CURVE_LEGEND_WIDTH,
        (480u32).max(80 + 18 * curves.lines.len() as u32),
    )
}

/// Writes `plot` as SVG (`.svg`) or PNG (any other extension) at `path`.
pub fn write_pareto(plot: &ParetoPlot, path: &Path) -> Result<()> {
    register_font();
    let size = pareto_size(plot);
    if path.extension().is_some_and(|e| e == "svg") {
        draw_pareto(SVGBackend::new(path, size).into_drawing_area(), plot)
    } else {
        draw_pareto(BitMapBackend::new(path, size).into_drawing_area(), plot)
    }
    .map_err(|e| Error::file(path, e.to_string()))
}

/// Writes `curves` as SVG (`.svg`) or PNG (any other extension) at `path`.
pub fn write_curves(curves: &LengthCurves, path: &Path) -> Result<()> {
    register_font();
    let size = curves_size(curves);
    if path.extension().is_some_and(|e| e == "svg") {
        draw_curves(SVGBackend::new(path, size).into_drawing_area(), curves)
    } else {
        draw_curves(BitMapBackend::new(path, size).into_drawing_area(), curves)
    }
    .map_err(|e| Error::file(path, e.to_string()))
}

/// Writes every Pareto plot under `out_dir/pareto/` and every set of per-length curves under
/// `out_dir/curves/`, as `<task>__<model>[__<setting>].{svg,png}`; returns the titles and SVG
/// paths of the Pareto plots and of the curves (each PNG lies beside its SVG).
pub(crate) fn write_plots(records: &[&RunRecord], out_dir: &Path) -> Result<(Figures, Figures)> {
    let pareto = write_figures(
        &out_dir.join("pareto"),
        &pareto_plots(records),
        |p| (&p.file_stem, &p.title),
        write_pareto,
    )?;
    let curves = write_figures(
        &out_dir.join("curves"),
        &length_curves(records),
        |c| (&c.file_stem, &c.title),
        write_curves,
    )?;
    Ok((pareto, curves))
}

/// Writes each figure of `items` as `dir/<file_stem>.svg` and `.png` (creating `dir` only when
/// there is something to write); returns the titles and SVG paths.
fn write_figures<T>(
    dir: &Path,
    items: &[T],
    names: impl Fn(&T) -> (&String, &String),
    write: impl Fn(&T, &Path) -> Result<()>,
) -> Result<Figures> {
    let mut written = Vec::new();
    if items.is_empty() {
        return Ok(written);
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    for item in items {
        let (stem, title) = names(item);
        let svg = dir.join(format!("{stem}.svg"));
        write(item, &svg)?;
        write(item, &dir.join(format!("{stem}.png")))?;
        written.push((title.clone(), svg));
    }
    Ok(written)
}
