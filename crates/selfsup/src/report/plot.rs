//! Line charts as PNG and SVG, drawn with `plotters`.
//!
//! Every chart is written twice, `<stem>.png` (bitmap backend, encoded with the `image` crate)
//! and `<stem>.svg` (svg backend). Text in PNGs is rendered with an embedded copy of DejaVu Sans
//! (`assets/fonts/DejaVuSans.ttf`, Bitstream Vera license in `assets/fonts/LICENSE-DejaVu.txt`)
//! through plotters' `ab_glyph` support, so nothing depends on system fonts or C libraries.
//!
//! Data rules, shared by every function here:
//! - Points whose x or y is NaN or ±∞ are skipped.
//! - On a logarithmic axis, points whose coordinate on that axis is ≤ 0 are skipped as well
//!   (they have no place on a log scale); a band's lower edge that would fall to ≤ 0 is clipped
//!   at the bottom of the chart.
//! - A series that is empty (or has nothing left after skipping) is drawn as nothing and gets
//!   no legend entry; a chart with no drawable point at all is still written, with empty axes
//!   and a "no data" note, so a report never lacks a file it announced.
//! - A series with one point is drawn as a marker; series with up to [`MARKER_LIMIT`] points
//!   get markers on top of their line.
//! - `band[i]` is the ± half-width at `points[i]`, drawn as a shaded band (two or more points)
//!   plus error bars. Its length must equal the number of points and its entries must not be
//!   negative (NaN/∞ entries mean "no band at this point"); otherwise it is an error.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ab_glyph::{point, Font, FontRef, GlyphId, PxScale, ScaleFont};
use anyhow::{anyhow, bail, Context, Result};
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, VPos};
use plotters_backend::{BackendColor, BackendCoord, BackendTextStyle, DrawingErrorKind};

/// One line on a chart.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series {
    /// Legend entry; an empty name gets no legend entry.
    pub name: String,
    /// (x, y) pairs, drawn in the given order.
    pub points: Vec<(f64, f64)>,
    /// Optional ± half-width per point (same length as `points`), e.g. a standard deviation.
    pub band: Option<Vec<f64>>,
}

impl Series {
    /// A series without a band.
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Series {
            name: name.into(),
            points,
            band: None,
        }
    }

    /// A series with a ± band (one half-width per point).
    pub fn with_band(name: impl Into<String>, points: Vec<(f64, f64)>, band: Vec<f64>) -> Self {
        Series {
            name: name.into(),
            points,
            band: Some(band),
        }
    }
}

/// Titles and axis scales of a [`line_plot`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PlotSpec {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// Logarithmic x axis (points with x ≤ 0 are skipped).
    pub log_x: bool,
    /// Logarithmic y axis (points with y ≤ 0 are skipped).
    pub log_y: bool,
}

/// Size of a [`line_plot`] in pixels (the SVG uses the same user units).
pub const LINE_PLOT_SIZE: (u32, u32) = (900, 600);
/// Size of one cell of a [`panel_plot`].
pub const PANEL_SIZE: (u32, u32) = (450, 300);
/// Series with at most this many drawable points get a marker on each point.
pub const MARKER_LIMIT: usize = 40;
/// [`plot_run`] reduces longer metric series to about this many points (bucket means).
pub const RUN_PLOT_MAX_POINTS: usize = 2000;

/// Panel order of [`plot_run`] for the metrics the trainer writes.
pub const RUN_PLOT_ORDER: &[&str] = &[
    "loss",
    "val_loss",
    "lr",
    "collapse_std",
    "effective_rank",
    "alignment",
    "uniformity",
    "knn_acc",
    "samples_per_s",
    "data_wait_frac",
];

const FONT: &str = "sans-serif";
const DEJAVU_SANS: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

/// Distinct colours (Tableau 20: the ten strong colours, then their light variants, so that a
/// chart of up to 20 series never repeats one), cycled when there are more series.
const COLORS: [RGBColor; 20] = [
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
    RGBColor(174, 199, 232),
    RGBColor(255, 187, 120),
    RGBColor(152, 223, 138),
    RGBColor(255, 152, 150),
    RGBColor(197, 176, 213),
    RGBColor(196, 156, 148),
    RGBColor(247, 182, 210),
    RGBColor(199, 199, 199),
    RGBColor(219, 219, 141),
    RGBColor(158, 218, 229),
];

/// Colour of the `i`-th series of a chart.
pub fn series_color(i: usize) -> RGBColor {
    COLORS[i % COLORS.len()]
}

/// Writes `<stem>.png` and `<stem>.svg` with one line per series and a legend.
///
/// `stem` is the output path without extension (a trailing `.png`/`.svg` is ignored); missing
/// parent folders are created. Returns the two paths written (PNG first). Errors name the file.
pub fn line_plot(stem: &Path, spec: &PlotSpec, series: &[Series]) -> Result<Vec<PathBuf>> {
    let prepared = prepare_all(series, spec.log_x, spec.log_y)?;
    let x_axis = axis_for(prepared.iter().flat_map(|s| s.x_values()), spec.log_x, true);
    let y_axis = axis_for(prepared.iter().flat_map(|s| s.y_extent()), spec.log_y, true);
    let chart = ChartDesc {
        caption: spec.title.clone(),
        caption_size: 24,
        label_size: 14,
        x_label: spec.x_label.clone(),
        y_label: spec.y_label.clone(),
        x_axis,
        y_axis,
        series: prepared,
        legend: true,
    };
    write_figure(stem, LINE_PLOT_SIZE, &LineFigure(chart))
}

/// Writes `<stem>.png` and `<stem>.svg`: a grid of small line charts (two columns when there
/// is more than one panel), one per `(y label, series)` entry, all with the same linear x axis
/// spanning the data of every panel. A panel with more than one named series gets a legend.
/// `panels` must not be empty.
pub fn panel_plot(
    stem: &Path,
    title: &str,
    x_label: &str,
    panels: &[(String, Vec<Series>)],
) -> Result<Vec<PathBuf>> {
    if panels.is_empty() {
        bail!("panel plot {}: no panels to draw", stem.display());
    }
    let mut prepared = Vec::with_capacity(panels.len());
    for (label, series) in panels {
        let p = prepare_all(series, false, false).with_context(|| format!("panel {label:?}"))?;
        prepared.push((label.clone(), p));
    }
    let x_axis = axis_for(
        prepared
            .iter()
            .flat_map(|(_, p)| p.iter().flat_map(|s| s.x_values())),
        false,
        false,
    );
    let charts: Vec<ChartDesc> = prepared
        .into_iter()
        .map(|(label, series)| ChartDesc {
            caption: label.clone(),
            caption_size: 16,
            label_size: 12,
            x_label: x_label.to_string(),
            y_label: String::new(),
            x_axis: x_axis.clone(),
            y_axis: axis_for(series.iter().flat_map(|s| s.y_extent()), false, true),
            legend: series.iter().filter(|s| !s.name.is_empty()).count() > 1,
            series,
        })
        .collect();
    let n = charts.len();
    let cols = if n == 1 { 1 } else { 2 };
    let rows = n.div_ceil(cols);
    let title_h = if title.is_empty() { 0 } else { 40 };
    let size = (
        PANEL_SIZE.0 * cols as u32,
        PANEL_SIZE.1 * rows as u32 + title_h,
    );
    let fig = PanelFigure {
        title: title.to_string(),
        rows,
        cols,
        charts,
    };
    write_figure(stem, size, &fig)
}

/// Writes `<stem>.png` and `<stem>.svg`: charts side by side (up to two per row), each with its
/// own title, axis labels, x and y ranges and log/linear scales from its [`PlotSpec`], and a
/// legend when it has more than one named series. `panels` must not be empty.
pub fn spec_panels(
    stem: &Path,
    title: &str,
    panels: &[(PlotSpec, Vec<Series>)],
) -> Result<Vec<PathBuf>> {
    if panels.is_empty() {
        bail!("plot {}: no panels to draw", stem.display());
    }
    let mut charts = Vec::with_capacity(panels.len());
    for (spec, series) in panels {
        let series = prepare_all(series, spec.log_x, spec.log_y)
            .with_context(|| format!("panel {:?}", spec.title))?;
        charts.push(ChartDesc {
            caption: spec.title.clone(),
            caption_size: 18,
            label_size: 13,
            x_label: spec.x_label.clone(),
            y_label: spec.y_label.clone(),
            x_axis: axis_for(series.iter().flat_map(|s| s.x_values()), spec.log_x, true),
            y_axis: axis_for(series.iter().flat_map(|s| s.y_extent()), spec.log_y, true),
            legend: series.iter().filter(|s| !s.name.is_empty()).count() > 1,
            series,
        });
    }
    let cols = charts.len().min(2);
    let rows = charts.len().div_ceil(cols);
    let title_h = if title.is_empty() { 0 } else { 40 };
    let size = (
        LINE_PLOT_SIZE.0 * cols as u32,
        LINE_PLOT_SIZE.1 * rows as u32 + title_h,
    );
    let fig = PanelFigure {
        title: title.to_string(),
        rows,
        cols,
        charts,
    };
    write_figure(stem, size, &fig)
}

/// Draws `RUN_DIR/metrics.jsonl` into `RUN_DIR/plots/training.{png,svg}`: one panel per numeric
/// key (all keys but `step` and `epoch`), x = `step`; the keys of [`RUN_PLOT_ORDER`] come first
/// in that order, other keys follow alphabetically.
///
/// Each non-blank line must be a JSON object with a numeric `step`; other keys whose value is
/// not a number (strings, null, nested objects) are ignored. Series longer than
/// [`RUN_PLOT_MAX_POINTS`] are reduced to that many bucket means. Errors name the file and,
/// for a bad line, its line number.
pub fn plot_run(run_dir: &Path) -> Result<Vec<PathBuf>> {
    let path = run_dir.join("metrics.jsonl");
    let text = fs::read_to_string(&path)
        .with_context(|| format!("cannot read metrics file {}", path.display()))?;
    let mut order: Vec<String> = Vec::new();
    let mut data: HashMap<String, Vec<(f64, f64)>> = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let at = || format!("{} line {}", path.display(), i + 1);
        let value: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{}: invalid JSON", at()))?;
        let obj = value
            .as_object()
            .ok_or_else(|| anyhow!("{}: expected a JSON object", at()))?;
        let step = obj
            .get("step")
            .ok_or_else(|| anyhow!("{}: missing \"step\"", at()))?
            .as_f64()
            .ok_or_else(|| anyhow!("{}: \"step\" is not a number", at()))?;
        for (key, v) in obj {
            if key == "step" || key == "epoch" {
                continue;
            }
            if let Some(y) = v.as_f64() {
                data.entry(key.clone())
                    .or_insert_with(|| {
                        order.push(key.clone());
                        Vec::new()
                    })
                    .push((step, y));
            }
        }
    }
    if order.is_empty() {
        bail!("{}: no numeric metrics to plot", path.display());
    }
    // Known metrics first, in a fixed reading order; anything else after them, by name.
    let rank = |k: &str| {
        RUN_PLOT_ORDER
            .iter()
            .position(|p| *p == k)
            .unwrap_or(usize::MAX)
    };
    order.sort_by(|a, b| rank(a).cmp(&rank(b)).then_with(|| a.cmp(b)));
    let panels: Vec<(String, Vec<Series>)> = order
        .into_iter()
        .map(|key| {
            let points = downsample(data.remove(&key).unwrap_or_default(), RUN_PLOT_MAX_POINTS);
            (key.clone(), vec![Series::new(key, points)])
        })
        .collect();
    let name = run_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| run_dir.display().to_string());
    panel_plot(
        &run_dir.join("plots").join("training"),
        &format!("Training: {name}"),
        "step",
        &panels,
    )
}

// ---------------------------------------------------------------------------------------------
// Data preparation

/// A series reduced to what can be drawn.
struct Prepared {
    name: String,
    color: RGBColor,
    points: Vec<(f64, f64)>,
    /// (x, lower, upper) for points with a finite band.
    band: Vec<(f64, f64, f64)>,
}

impl Prepared {
    fn x_values(&self) -> impl Iterator<Item = f64> + '_ {
        self.points.iter().map(|p| p.0)
    }

    fn y_extent(&self) -> impl Iterator<Item = f64> + '_ {
        self.points
            .iter()
            .map(|p| p.1)
            .chain(self.band.iter().flat_map(|b| [b.1, b.2]))
    }
}

fn prepare_all(series: &[Series], log_x: bool, log_y: bool) -> Result<Vec<Prepared>> {
    series
        .iter()
        .enumerate()
        .map(|(i, s)| prepare(s, series_color(i), log_x, log_y))
        .collect()
}

fn prepare(s: &Series, color: RGBColor, log_x: bool, log_y: bool) -> Result<Prepared> {
    if let Some(band) = &s.band {
        if band.len() != s.points.len() {
            bail!(
                "series {:?}: band has {} values for {} points",
                s.name,
                band.len(),
                s.points.len()
            );
        }
        if let Some(h) = band.iter().find(|h| **h < 0.0) {
            bail!("series {:?}: negative band half-width {h}", s.name);
        }
    }
    let ok = |v: f64, log: bool| v.is_finite() && (!log || v > 0.0);
    let mut points = Vec::with_capacity(s.points.len());
    let mut band = Vec::new();
    for (i, &(x, y)) in s.points.iter().enumerate() {
        if !ok(x, log_x) || !ok(y, log_y) {
            continue;
        }
        points.push((x, y));
        if let Some(h) = s.band.as_ref().map(|b| b[i]).filter(|h| h.is_finite()) {
            let lo = y - h;
            // NaN marks a lower edge that a log axis cannot show; it is clipped when drawn.
            let lo = if log_y && lo <= 0.0 { f64::NAN } else { lo };
            band.push((x, lo, y + h));
        }
    }
    Ok(Prepared {
        name: s.name.clone(),
        color,
        points,
        band,
    })
}

/// Reduces `points` to at most about `max` points by averaging consecutive buckets.
fn downsample(points: Vec<(f64, f64)>, max: usize) -> Vec<(f64, f64)> {
    if points.len() <= max || max == 0 {
        return points;
    }
    let bucket = points.len().div_ceil(max);
    points
        .chunks(bucket)
        .filter_map(|c| {
            let good: Vec<_> = c
                .iter()
                .filter(|p| p.0.is_finite() && p.1.is_finite())
                .collect();
            if good.is_empty() {
                return None;
            }
            let n = good.len() as f64;
            let x = good.iter().map(|p| p.0).sum::<f64>() / n;
            let y = good.iter().map(|p| p.1).sum::<f64>() / n;
            Some((x, y))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Axes

/// A linear or logarithmic axis over f64, so one chart type serves all four scale combinations.
#[derive(Clone, Debug)]
struct Axis {
    log: bool,
    range: Range<f64>,
}

impl Axis {
    fn linear(&self) -> RangedCoordf64 {
        self.range.clone().into()
    }

    fn logarithmic(&self) -> LogCoord<f64> {
        self.range.clone().log_scale().into()
    }
}

impl Ranged for Axis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        if self.log {
            self.logarithmic().map(value, limit)
        } else {
            self.linear().map(value, limit)
        }
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if !self.log {
            return self.linear().key_points(hint);
        }
        let max = hint.max_num_points();
        let pts = self.logarithmic().key_points(max);
        if pts.len() >= 3 || max < 3 {
            pts
        } else {
            // About a decade or less: plotters' log ticks would leave the axis nearly bare.
            let lin = self.linear().key_points(max.min(6));
            lin.into_iter().filter(|v| *v > 0.0).collect()
        }
    }

    fn range(&self) -> Range<f64> {
        self.range.clone()
    }
}

/// Axis spanning `values` (already finite, and positive for a log axis), with a margin when
/// `pad` is set, and a sensible default when there are no values or only one.
fn axis_for(values: impl Iterator<Item = f64>, log: bool, pad: bool) -> Axis {
    let (mut lo, mut hi) = values
        .filter(|v| v.is_finite() && (!log || *v > 0.0))
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if log {
        if lo > hi {
            (lo, hi) = (1.0, 10.0);
        } else if lo == hi {
            (lo, hi) = (lo / 2.0, hi * 2.0);
        } else if pad {
            let r = (hi / lo).powf(0.05);
            (lo, hi) = (lo / r, hi * r);
        }
        Axis {
            log: true,
            range: lo..hi,
        }
    } else {
        if lo > hi {
            (lo, hi) = (0.0, 1.0);
        } else if lo == hi {
            let d = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
            (lo, hi) = (lo - d, hi + d);
        } else if pad {
            let d = (hi - lo) * 0.05;
            (lo, hi) = (lo - d, hi + d);
        }
        Axis {
            log: false,
            range: lo..hi,
        }
    }
}

/// Short tick labels: integers as such, otherwise up to 4 significant digits, exponents for
/// very large or small magnitudes.
fn format_tick(v: &f64) -> String {
    let v = *v;
    let a = v.abs();
    if v == 0.0 {
        "0".to_string()
    } else if !(1e-3..1e6).contains(&a) {
        let s = format!("{v:.2e}");
        // 1.00e4 -> 1e4, 2.50e-5 -> 2.5e-5
        match s.split_once('e') {
            Some((m, e)) => {
                let m = m.trim_end_matches('0').trim_end_matches('.');
                format!("{m}e{e}")
            }
            None => s,
        }
    } else if (v - v.round()).abs() < 1e-9 * a.max(1.0) {
        format!("{}", v.round() as i64)
    } else {
        let digits = (3 - a.log10().floor() as i32).clamp(0, 8) as usize;
        let s = format!("{v:.digits$}");
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Drawing

struct ChartDesc {
    caption: String,
    caption_size: u32,
    label_size: u32,
    x_label: String,
    y_label: String,
    x_axis: Axis,
    y_axis: Axis,
    series: Vec<Prepared>,
    legend: bool,
}

fn draw_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing failed: {e:?}")
}

fn draw_chart<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, c: &ChartDesc) -> Result<()> {
    let label_font = (FONT, c.label_size);
    let mut builder = ChartBuilder::on(area);
    builder
        .margin(10)
        .margin_right(25)
        .x_label_area_size(if c.x_label.is_empty() { 25 } else { 45 })
        .y_label_area_size(if c.y_label.is_empty() { 55 } else { 75 });
    if !c.caption.is_empty() {
        builder.caption(&c.caption, (FONT, c.caption_size));
    }
    let mut chart = builder
        .build_cartesian_2d(c.x_axis.clone(), c.y_axis.clone())
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .x_desc(c.x_label.as_str())
        .y_desc(c.y_label.as_str())
        .axis_desc_style(label_font)
        .label_style((FONT, c.label_size.saturating_sub(2).max(8)))
        .x_label_formatter(&format_tick)
        .y_label_formatter(&format_tick)
        .x_labels(8)
        .y_labels(8)
        .light_line_style(RGBColor(235, 235, 235))
        .bold_line_style(RGBColor(210, 210, 210))
        .draw()
        .map_err(draw_err)?;

    let y_range = c.y_axis.range();
    let x_range = c.x_axis.range();
    let mut any = false;
    let mut legend_entries = false;
    for s in &c.series {
        if s.points.is_empty() {
            continue;
        }
        any = true;
        let color = s.color;
        // Band: shaded polygon, then error bars.
        if !s.band.is_empty() {
            let lower = |b: &(f64, f64, f64)| if b.1.is_nan() { y_range.start } else { b.1 };
            if s.band.len() >= 2 {
                let mut poly: Vec<(f64, f64)> = s.band.iter().map(|b| (b.0, b.2)).collect();
                poly.extend(s.band.iter().rev().map(|b| (b.0, lower(b))));
                chart
                    .draw_series(std::iter::once(Polygon::new(
                        poly,
                        color.mix(0.15).filled(),
                    )))
                    .map_err(draw_err)?;
            }
            let cap = cap_width(&x_range, c.x_axis.log);
            for b in &s.band {
                let (x, lo, hi) = (b.0, lower(b), b.2);
                let (xl, xr) = cap(x);
                chart
                    .draw_series([
                        PathElement::new(vec![(x, lo), (x, hi)], color.stroke_width(1)),
                        PathElement::new(vec![(xl, lo), (xr, lo)], color.stroke_width(1)),
                        PathElement::new(vec![(xl, hi), (xr, hi)], color.stroke_width(1)),
                    ])
                    .map_err(draw_err)?;
            }
        }
        let style = color.stroke_width(2);
        let anno = if s.points.len() >= 2 {
            chart
                .draw_series(LineSeries::new(s.points.iter().copied(), style))
                .map_err(draw_err)?
        } else {
            chart
                .draw_series(s.points.iter().map(|&p| Circle::new(p, 4, color.filled())))
                .map_err(draw_err)?
        };
        if !s.name.is_empty() {
            legend_entries = true;
            anno.label(s.name.as_str()).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        }
        if s.points.len() >= 2 && s.points.len() <= MARKER_LIMIT {
            chart
                .draw_series(s.points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(draw_err)?;
        }
    }
    if !any {
        let (w, h) = area.dim_in_pixel();
        area.draw(&Text::new(
            "no data",
            (w as i32 / 2 - 25, h as i32 / 2),
            (FONT, c.label_size)
                .into_font()
                .color(&RGBColor(128, 128, 128)),
        ))
        .map_err(draw_err)?;
    }
    if c.legend && legend_entries {
        chart
            .configure_series_labels()
            .position(legend_corner(c))
            .label_font((FONT, c.label_size))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(160, 160, 160))
            .draw()
            .map_err(draw_err)?;
    }
    Ok(())
}

/// The chart corner whose region (40% × 30% of the plot) holds the fewest data points and
/// band edges, so the legend covers as little as possible; ties go to the upper right.
fn legend_corner(c: &ChartDesc) -> SeriesLabelPosition {
    let norm = |axis: &Axis, v: f64| f64::from(axis.map(&v, (0, 1000))) / 1000.0;
    let mut counts = [0usize; 4]; // upper right, upper left, lower right, lower left
    for s in &c.series {
        let pts = s.points.iter().copied();
        let edges = s.band.iter().flat_map(|b| [(b.0, b.1), (b.0, b.2)]);
        for (x, y) in pts.chain(edges).filter(|p| p.1.is_finite()) {
            let (u, v) = (norm(&c.x_axis, x), norm(&c.y_axis, y));
            let (right, left) = (u >= 0.6, u <= 0.4);
            let (upper, lower) = (v >= 0.7, v <= 0.3);
            for (i, hit) in [right && upper, left && upper, right && lower, left && lower]
                .into_iter()
                .enumerate()
            {
                counts[i] += usize::from(hit);
            }
        }
    }
    let best = (0..4).min_by_key(|&i| counts[i]).unwrap_or(0);
    [
        SeriesLabelPosition::UpperRight,
        SeriesLabelPosition::UpperLeft,
        SeriesLabelPosition::LowerRight,
        SeriesLabelPosition::LowerLeft,
    ][best]
        .clone()
}

/// Error-bar cap half-width around `x`: 0.8% of the axis (multiplicative on a log axis).
fn cap_width(x_range: &Range<f64>, log: bool) -> impl Fn(f64) -> (f64, f64) {
    let (a, b) = (x_range.start, x_range.end);
    let d = (b - a) * 0.008;
    let r = if log && a > 0.0 {
        (b / a).powf(0.008)
    } else {
        1.0
    };
    move |x| if log { (x / r, x * r) } else { (x - d, x + d) }
}

// ---------------------------------------------------------------------------------------------
// Output

fn register_fonts() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        [FONT, "serif", "monospace"].iter().all(|name| {
            plotters::style::register_font(name, FontStyle::Normal, DEJAVU_SANS).is_ok()
        })
    });
    if ok {
        Ok(())
    } else {
        bail!("the embedded DejaVu Sans font could not be loaded")
    }
}

/// Output paths for `stem`: a trailing `.png`/`.svg` is dropped, anything else is kept.
fn output_paths(stem: &Path) -> (PathBuf, PathBuf) {
    let base: PathBuf = match stem.extension().and_then(|e| e.to_str()) {
        Some(e) if e.eq_ignore_ascii_case("png") || e.eq_ignore_ascii_case("svg") => {
            stem.with_extension("")
        }
        _ => stem.to_path_buf(),
    };
    let with = |ext: &str| {
        let mut s = OsString::from(base.as_os_str());
        s.push(ext);
        PathBuf::from(s)
    };
    (with(".png"), with(".svg"))
}

/// The embedded font, parsed once.
fn dejavu() -> &'static FontRef<'static> {
    static FONT_REF: OnceLock<FontRef<'static>> = OnceLock::new();
    FONT_REF.get_or_init(|| FontRef::try_from_slice(DEJAVU_SANS).expect("embedded DejaVu Sans"))
}

/// Wraps a pixel backend and draws its text with ab_glyph directly: plotters 0.3.7's own
/// ab_glyph text path ignores each glyph's left side bearing, which squeezes letters together
/// ("cl" reads as "d"). Everything else is passed through. Text metrics match the SVG output,
/// where plotters writes `font-size = size / 1.24`.
struct GlyphText<B>(B);

impl<B> GlyphText<B> {
    /// Pixel scale, ascent, descent and per-glyph layout of `text` at plotters size `size`:
    /// (glyph, x offset) pairs and the total advance width.
    fn layout(size: f64, text: &str) -> (PxScale, f32, f32, Vec<(GlyphId, f32)>, f32) {
        let font = dejavu();
        let em = (size / 1.24) as f32;
        let units = font.units_per_em().unwrap_or(2048.0);
        let scale = PxScale::from(em * font.height_unscaled() / units);
        let scaled = font.as_scaled(scale);
        let mut x = 0f32;
        let mut prev: Option<GlyphId> = None;
        let mut glyphs = Vec::with_capacity(text.len());
        for c in text.chars() {
            let id = scaled.glyph_id(c);
            if let Some(p) = prev {
                x += scaled.kern(p, id);
            }
            glyphs.push((id, x));
            x += scaled.h_advance(id);
            prev = Some(id);
        }
        (scale, scaled.ascent(), scaled.descent(), glyphs, x)
    }
}

impl<B: DrawingBackend> DrawingBackend for GlyphText<B> {
    type ErrorType = B::ErrorType;

    fn get_size(&self) -> (u32, u32) {
        self.0.get_size()
    }

    fn ensure_prepared(&mut self) -> Result<(), DrawingErrorKind<B::ErrorType>> {
        self.0.ensure_prepared()
    }

    fn present(&mut self) -> Result<(), DrawingErrorKind<B::ErrorType>> {
        self.0.present()
    }

    fn draw_pixel(
        &mut self,
        point: BackendCoord,
        color: BackendColor,
    ) -> Result<(), DrawingErrorKind<B::ErrorType>> {
        self.0.draw_pixel(point, color)
    }

    fn draw_line<S: plotters_backend::BackendStyle>(
        &mut self,
        from: BackendCoord,
        to: BackendCoord,
        style: &S,
    ) -> Result<(), DrawingErrorKind<B::ErrorType>> {
        self.0.draw_line(from, to, style)
    }

    fn draw_rect<S: plotters_backend::BackendStyle>(
        &mut self,
        upper_left: BackendCoord,
        bottom_right: BackendCoord,
        style: &S,
        fill: bool,
    ) -> Result<(), DrawingErrorKind<B::ErrorType>> {
        self.0.draw_rect(upper_left, bottom_right, style, fill)
    }

    fn draw_path<S: plotters_backend::BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        path: I,
        style: &S,
    ) -> Result<(), DrawingErrorKind<B::ErrorType>> {
        self.0.draw_path(path, style)
    }

    fn draw_circle<S: plotters_backend::BackendStyle>(
        &mut self,
        center: BackendCoord,
        radius: u32,
        style: &S,
        fill: bool,
    ) -> Result<(), DrawingErrorKind<B::ErrorType>> {
        self.0.draw_circle(center, radius, style, fill)
    }

    fn fill_polygon<S: plotters_backend::BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        vert: I,
        style: &S,
    ) -> Result<(), DrawingErrorKind<B::ErrorType>> {
        self.0.fill_polygon(vert, style)
    }

    fn blit_bitmap(
        &mut self,
        pos: BackendCoord,
        size: (u32, u32),
        src: &[u8],
    ) -> Result<(), DrawingErrorKind<B::ErrorType>> {
        self.0.blit_bitmap(pos, size, src)
    }

    fn estimate_text_size<TStyle: BackendTextStyle>(
        &self,
        text: &str,
        style: &TStyle,
    ) -> Result<(u32, u32), DrawingErrorKind<B::ErrorType>> {
        let (_, ascent, descent, _, width) = Self::layout(style.size(), text);
        Ok((width.ceil() as u32, (ascent - descent).ceil() as u32))
    }

    fn draw_text<TStyle: BackendTextStyle>(
        &mut self,
        text: &str,
        style: &TStyle,
        pos: BackendCoord,
    ) -> Result<(), DrawingErrorKind<B::ErrorType>> {
        let color = style.color();
        if color.alpha == 0.0 {
            return Ok(());
        }
        let (scale, ascent, descent, glyphs, width) = Self::layout(style.size(), text);
        let (w, h) = (width.ceil() as i32, (ascent - descent).ceil() as i32);
        let anchor = style.anchor();
        let dx = match anchor.h_pos {
            HPos::Left => 0,
            HPos::Center => -w / 2,
            HPos::Right => -w,
        };
        let dy = match anchor.v_pos {
            VPos::Top => 0,
            VPos::Center => -h / 2,
            VPos::Bottom => -h,
        };
        let transform = style.transform();
        let font = dejavu();
        let mut result = Ok(());
        for (id, x) in glyphs {
            let glyph = id.with_scale_and_position(scale, point(x, ascent));
            let Some(outline) = font.outline_glyph(glyph) else {
                continue;
            };
            let bounds = outline.px_bounds();
            let (bx, by) = (bounds.min.x as i32, bounds.min.y as i32);
            outline.draw(|gx, gy, coverage| {
                if result.is_err() || coverage <= 0.0 {
                    return;
                }
                let (tx, ty) = transform.transform(bx + gx as i32 + dx, by + gy as i32 + dy);
                let c = BackendColor {
                    alpha: color.alpha * f64::from(coverage.min(1.0)),
                    rgb: color.rgb,
                };
                result = self.0.draw_pixel((pos.0 + tx, pos.1 + ty), c);
            });
            result?;
            result = Ok(());
        }
        Ok(())
    }
}

/// Something drawn identically on any backend.
trait Figure {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>;
}

struct LineFigure(ChartDesc);

impl Figure for LineFigure {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        root.fill(&WHITE).map_err(draw_err)?;
        draw_chart(root, &self.0)
    }
}

struct PanelFigure {
    title: String,
    rows: usize,
    cols: usize,
    charts: Vec<ChartDesc>,
}

impl Figure for PanelFigure {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        root.fill(&WHITE).map_err(draw_err)?;
        let body = if self.title.is_empty() {
            root.clone()
        } else {
            root.titled(&self.title, (FONT, 24)).map_err(draw_err)?
        };
        for (cell, chart) in body
            .split_evenly((self.rows, self.cols))
            .iter()
            .zip(&self.charts)
        {
            draw_chart(cell, chart)?;
        }
        Ok(())
    }
}

/// Draws the figure on a bitmap and on an SVG backend and writes `<stem>.png`, `<stem>.svg`.
fn write_figure(stem: &Path, (w, h): (u32, u32), fig: &impl Figure) -> Result<Vec<PathBuf>> {
    register_fonts()?;
    let (png, svg) = output_paths(stem);
    if let Some(dir) = png.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir)
            .with_context(|| format!("cannot create folder {} for plots", dir.display()))?;
    }

    let mut pixels = vec![0u8; w as usize * h as usize * 3];
    {
        let backend = GlyphText(BitMapBackend::with_buffer(&mut pixels, (w, h)));
        let root = backend.into_drawing_area();
        fig.draw(&root)
            .with_context(|| format!("drawing {}", png.display()))?;
        root.present()
            .map_err(draw_err)
            .with_context(|| format!("drawing {}", png.display()))?;
    }
    let img = image::RgbImage::from_raw(w, h, pixels).ok_or_else(|| {
        anyhow!(
            "drawing {}: bitmap buffer has the wrong size",
            png.display()
        )
    })?;
    img.save_with_format(&png, image::ImageFormat::Png)
        .with_context(|| format!("cannot write plot {}", png.display()))?;

    let mut text = String::new();
    {
        let root = SVGBackend::with_string(&mut text, (w, h)).into_drawing_area();
        fig.draw(&root)
            .with_context(|| format!("drawing {}", svg.display()))?;
        root.present()
            .map_err(draw_err)
            .with_context(|| format!("drawing {}", svg.display()))?;
    }
    fs::write(&svg, text).with_context(|| format!("cannot write plot {}", svg.display()))?;
    Ok(vec![png, svg])
}
