//! Publication figures for `cfpipe report`: mean accuracy with free capacity (Fig. 2a of the
//! RNF paper), per-task accuracy curves (Fig. 2b), prune curves, and for importance
//! correlations a method × method heatmap per layer and correlation-vs-task panels. Every figure is written
//! twice, as `<stem>.svg` (vector, for papers) and `<stem>.png` (raster, for quick viewing),
//! with `plotters`. Text is laid out with the DejaVu Sans font embedded in the binary
//! (`assets/fonts/`, registered once through `ab_glyph`), so rendering needs neither a system
//! font nor fontconfig and works unchanged on headless CI. The functions only draw what they
//! are given: non-finite points leave gaps, empty inputs give an empty chart with a note, and
//! inconsistent inputs (mismatched lengths) are reported as [`FigureError::InvalidData`].
//!
//! This file holds the API, the theme (font, palette, sizes), rendering to both formats, the
//! input checks and the axes; each chart is its own file (`lines`: mean accuracy and per-task
//! panels; `heatmap`; `prune`), and `legend` lays out what they share.

use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{register_font, FontStyle};
use std::cell::Cell;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;

mod explain;
mod heatmap;
mod legend;
mod lines;
mod prune;
use explain::*;
pub use explain::{explain_figure, relevance_colour, ExplainLayout, ExplainPanel};
use heatmap::*;
use legend::*;
use lines::*;
use prune::*;

/// How every figure is drawn, from the command's options.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Look {
    /// Resolution of the PNG. The layout is that of a 9 × 6 inch figure at any resolution:
    /// text, lines and margins scale with it, so `--dpi 300` is the same figure, sharper. The
    /// SVG is always laid out at 100 dpi (it is vector).
    pub dpi: u32,
    /// Percent axes span 0–100 instead of fitting the data.
    pub full_range: bool,
}

impl Default for Look {
    fn default() -> Self {
        Look {
            dpi: BASE_DPI,
            full_range: false,
        }
    }
}

/// The resolution the sizes and pixel constants below are given at.
pub const BASE_DPI: u32 = 100;

thread_local! {
    /// The scale of the drawing in progress: 1 for the SVG, dpi / 100 for the PNG. A thread
    /// local rather than a parameter because every chart helper lays out in pixels.
    static SCALE: Cell<f64> = const { Cell::new(1.0) };
}

fn scale() -> f64 {
    SCALE.with(Cell::get)
}

/// `v` pixels of the 100-dpi layout, at the scale being drawn.
fn px(v: i32) -> i32 {
    (v as f64 * scale()).round() as i32
}

/// [`px`] for sizes.
fn upx(v: u32) -> u32 {
    (v as f64 * scale()).round() as u32
}

/// One line with an optional ±std band.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Series {
    pub label: String,
    pub x: Vec<f64>,
    pub y: Vec<f64>,
    pub std: Option<Vec<f64>>,
}

/// One prune curve: accuracy (percent) after pruning a share (percent) of the candidate units.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PruneCurve {
    pub label: String,
    pub share: Vec<f64>,
    pub accuracy: Vec<f64>,
    /// Accuracy below which pruning is rejected (`baseline - threshold`), in percent.
    pub threshold_line: f64,
    /// Share of units (percent) that was finally accepted; marked on the curve.
    pub accepted_share: f64,
}

/// One square matrix drawn as a heatmap: `values[i][j]` in [-1, 1] (NaN: no value), rows and
/// columns both named by `labels`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Heatmap {
    pub title: String,
    pub labels: Vec<String>,
    pub values: Vec<Vec<f64>>,
}

/// Why a figure could not be written; every variant names the file (or stem) concerned.
#[derive(Debug, thiserror::Error)]
pub enum FigureError {
    #[error("cannot create the directory for figure {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the embedded figure font could not be loaded")]
    Font,
    #[error("invalid data for figure {path}: {message}")]
    InvalidData { path: PathBuf, message: String },
    #[error("drawing figure {path}: {message}")]
    Draw { path: PathBuf, message: String },
}

const FONT_FAMILY: &str = "sans-serif";
static FONT_BYTES: &[u8] = include_bytes!("../../../assets/fonts/DejaVuSans.ttf");
static FONT_INIT: Once = Once::new();
static FONT_OK: AtomicBool = AtomicBool::new(false);

/// Registers the embedded font as `sans-serif` (once per process).
fn ensure_font() -> Result<(), FigureError> {
    FONT_INIT.call_once(|| {
        let ok = register_font(FONT_FAMILY, FontStyle::Normal, FONT_BYTES).is_ok();
        FONT_OK.store(ok, Ordering::SeqCst);
    });
    if FONT_OK.load(Ordering::SeqCst) {
        Ok(())
    } else {
        Err(FigureError::Font)
    }
}

/// Okabe–Ito colour-blind-safe palette (yellow last: it is faint on white).
const PALETTE: [RGBColor; 8] = [
    RGBColor(0, 114, 178),   // blue
    RGBColor(213, 94, 0),    // vermillion
    RGBColor(0, 158, 115),   // bluish green
    RGBColor(204, 121, 167), // reddish purple
    RGBColor(230, 159, 0),   // orange
    RGBColor(86, 180, 233),  // sky blue
    RGBColor(0, 0, 0),       // black
    RGBColor(240, 228, 66),  // yellow
];
const GREY: RGBColor = RGBColor(90, 90, 90);
const GRID: RGBColor = RGBColor(225, 225, 225);

/// Colour of the i-th line, and whether it is dashed (second round through the palette).
fn line_style(i: usize) -> (RGBColor, bool) {
    (PALETTE[i % PALETTE.len()], (i / PALETTE.len()) % 2 == 1)
}

const SIZE: (u32, u32) = (900, 600);
const TITLE_PT: u32 = 26;
const CAPTION_PT: u32 = 20;
const DESC_PT: u32 = 19;
const LABEL_PT: u32 = 16;
const LEGEND_PT: u32 = 16;
const LINE_W: u32 = 2;
const DASH: (u32, u32) = (9, 5);
const NO_DATA: &str = "no data to plot";

type DrawResult<T, DB> = Result<T, DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

fn text(pt: u32) -> TextStyle<'static> {
    TextStyle::from((FONT_FAMILY, pt as f64 * scale()).into_font()).color(&BLACK)
}

// ---------------------------------------------------------------------------------------------
// Public entry points

/// (a) Mean accuracy over seen tasks vs task, one series per strategy (percent), plus free
/// capacity per strategy on a second y axis (percent), dashed. Like Fig. 2a of the RNF paper.
/// Each axis fits its data, or spans 0–100 with [`Look::full_range`].
///
/// A capacity series takes the colour of the accuracy series with the same label, otherwise
/// the next free colour; its legend entry reads "<label> free capacity". Series that are
/// identical point for point (strategies that differ only in evaluation share a capacity) are
/// drawn once, labelled "a = b". Writes `<path_stem>.svg` and `<path_stem>.png`.
pub fn mean_accuracy_figure(
    path_stem: &Path,
    title: &str,
    accuracy: &[Series],
    capacity: &[Series],
    look: &Look,
) -> Result<Vec<PathBuf>, FigureError> {
    for s in accuracy.iter().chain(capacity) {
        check_series(path_stem, s)?;
    }
    let fig = Fig::MeanAccuracy {
        title,
        accuracy,
        capacity,
        full: look.full_range,
    };
    render(path_stem, SIZE, &fig, look)
}

/// (b) Per-task accuracy curves over the task sequence: one panel per strategy, one line per task
/// (task j's line starts at x = j). Like Fig. 2b.
///
/// Lines with the same label get the same colour in every panel; one legend is shared.
/// Panels are laid out up to three per row (the PNG grows in height with more rows).
pub fn per_task_figure(
    path_stem: &Path,
    title: &str,
    panels: &[(String, Vec<Series>)],
    look: &Look,
) -> Result<Vec<PathBuf>, FigureError> {
    panels_over_tasks(path_stem, title, panels, YAxis::ACCURACY, look)
}

/// (d) Correlation vs task: one panel per layer, one line per pair of methods (y: Pearson r in
/// [-1, 1], with the ±std band of each series). Laid out like the per-task figure.
pub fn correlation_figure(
    path_stem: &Path,
    title: &str,
    panels: &[(String, Vec<Series>)],
    look: &Look,
) -> Result<Vec<PathBuf>, FigureError> {
    panels_over_tasks(path_stem, title, panels, YAxis::PEARSON, look)
}

/// Training curves: one panel per strategy, one line per task (its mean training loss per
/// epoch, with the ±std band over seeds), epochs counted through the task sequence. The y axis
/// runs from 0 to just above the largest loss drawn.
pub fn training_curves_figure(
    path_stem: &Path,
    title: &str,
    panels: &[(String, Vec<Series>)],
    look: &Look,
) -> Result<Vec<PathBuf>, FigureError> {
    let top = panels
        .iter()
        .flat_map(|(_, s)| s)
        .flat_map(|s| {
            let std = s.std.clone().unwrap_or_else(|| vec![0.0; s.y.len()]);
            s.y.iter().zip(std).map(|(y, d)| y + d).collect::<Vec<_>>()
        })
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    let y = YAxis {
        lo: 0.0,
        hi: if top > 0.0 { top * 1.05 } else { 1.0 },
        desc: "training loss",
        x_desc: "epoch (tasks in sequence)",
        bars: false,
        fit: false,
        shared: false,
    };
    panels_over_tasks(path_stem, title, panels, y, look)
}

/// The ablation figure papers print: one panel per metric (final accuracy, free capacity), each
/// metric (percent) against the swept parameter `x_desc`, one line per strategy with ±std
/// error bars over seeds; each panel's y range fits its data.
pub fn ablation_figure(
    path_stem: &Path,
    title: &str,
    x_desc: &str,
    panels: &[(String, Vec<Series>)],
    look: &Look,
) -> Result<Vec<PathBuf>, FigureError> {
    let y = YAxis {
        desc: "percent",
        x_desc,
        bars: true,
        // Final accuracy and free capacity: each panel its own range.
        shared: false,
        ..YAxis::ACCURACY
    };
    panels_over_tasks(path_stem, title, panels, y, look)
}

/// Panels of series over the task sequence, up to three per row, on the y axis `y` (fitted to
/// each panel's data unless [`Look::full_range`] asks for the whole axis).
fn panels_over_tasks(
    path_stem: &Path,
    title: &str,
    panels: &[(String, Vec<Series>)],
    mut y: YAxis<'_>,
    look: &Look,
) -> Result<Vec<PathBuf>, FigureError> {
    y.fit &= !look.full_range;
    for (_, series) in panels {
        for s in series {
            check_series(path_stem, s)?;
        }
    }
    let (rows, cols) = panel_grid(panels.len());
    let fig = Fig::PerTask {
        title,
        panels,
        grid: (rows, cols),
        y,
    };
    render(path_stem, per_task_size(rows), &fig, look)
}

/// (e) Heatmaps of correlation matrices, one panel each (e.g. one per layer), on a diverging
/// scale shared by all panels and shown as a colour bar: red positive, blue negative, white 0.
/// Every cell has its value written in it.
pub fn heatmap_figure(
    path_stem: &Path,
    title: &str,
    maps: &[Heatmap],
    look: &Look,
) -> Result<Vec<PathBuf>, FigureError> {
    for m in maps {
        let n = m.labels.len();
        if m.values.len() != n || m.values.iter().any(|r| r.len() != n) {
            return Err(invalid(
                path_stem,
                format!(
                    "heatmap {:?}: {n} labels but a {}-row matrix with rows of {:?} values",
                    m.title,
                    m.values.len(),
                    m.values.iter().map(Vec::len).collect::<Vec<_>>()
                ),
            ));
        }
    }
    let grid = panel_grid(maps.len());
    let size = heatmap_size(grid);
    render(path_stem, size, &Fig::Heatmaps { title, maps, grid }, look)
}

/// (c) Prune curves: accuracy (percent) vs share of candidate units pruned (percent), one panel
/// per search (a task), one thin line per seed with a marker at its accepted point, and with
/// more than one seed their mean as a thick black line and the mean threshold
/// (`baseline - threshold`) dashed. Non-monotone curves are drawn as given (no smoothing, no
/// sorting); an accepted point is placed on its curve by linear interpolation.
pub fn prune_figure(
    path_stem: &Path,
    title: &str,
    panels: &[(String, Vec<PruneCurve>)],
    look: &Look,
) -> Result<Vec<PathBuf>, FigureError> {
    for c in panels.iter().flat_map(|(_, c)| c) {
        if c.share.len() != c.accuracy.len() {
            return Err(invalid(
                path_stem,
                format!(
                    "prune curve {:?}: {} shares but {} accuracies",
                    c.label,
                    c.share.len(),
                    c.accuracy.len()
                ),
            ));
        }
    }
    let grid = panel_grid(panels.len());
    let fig = Fig::Prune {
        title,
        panels,
        grid,
        full: look.full_range,
    };
    render(path_stem, per_task_size(grid.0), &fig, look)
}

// ---------------------------------------------------------------------------------------------
// Rendering to both backends

/// What to draw; one drawing routine serves both backends.
enum Fig<'a> {
    MeanAccuracy {
        title: &'a str,
        accuracy: &'a [Series],
        capacity: &'a [Series],
        full: bool,
    },
    PerTask {
        title: &'a str,
        panels: &'a [(String, Vec<Series>)],
        grid: (usize, usize),
        y: YAxis<'a>,
    },
    Heatmaps {
        title: &'a str,
        maps: &'a [Heatmap],
        grid: (usize, usize),
    },
    Explain {
        panel: &'a ExplainPanel<'a>,
    },
    Prune {
        title: &'a str,
        panels: &'a [(String, Vec<PruneCurve>)],
        grid: (usize, usize),
        full: bool,
    },
}

impl Fig<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<(), DB> {
        root.fill(&WHITE)?;
        match *self {
            Fig::MeanAccuracy {
                title,
                accuracy,
                capacity,
                full,
            } => draw_mean_accuracy(root, title, accuracy, capacity, full),
            Fig::PerTask {
                title,
                panels,
                grid,
                y,
            } => draw_per_task(root, title, panels, grid, y),
            Fig::Heatmaps { title, maps, grid } => draw_heatmaps(root, title, maps, grid),
            Fig::Prune {
                title,
                panels,
                grid,
                full,
            } => draw_prune(root, title, panels, grid, full),
            Fig::Explain { panel } => draw_explain(root, panel),
        }
    }
}

/// Sets the drawing scale for as long as it lives.
struct Scaled(f64);

impl Scaled {
    fn new(k: f64) -> Scaled {
        Scaled(SCALE.with(|s| s.replace(k)))
    }
}

impl Drop for Scaled {
    fn drop(&mut self) {
        SCALE.with(|s| s.set(self.0));
    }
}

/// The resolutions a PNG may be drawn at.
pub const DPI_RANGE: std::ops::RangeInclusive<u32> = 25..=1200;

/// Writes `<stem>.svg` and `<stem>.png` (at `look.dpi`) and returns both paths.
fn render(
    stem: &Path,
    size: (u32, u32),
    fig: &Fig<'_>,
    look: &Look,
) -> Result<Vec<PathBuf>, FigureError> {
    ensure_font()?;
    if !DPI_RANGE.contains(&look.dpi) {
        return Err(invalid(
            stem,
            format!(
                "{} dpi is outside {}..={}",
                look.dpi,
                DPI_RANGE.start(),
                DPI_RANGE.end()
            ),
        ));
    }
    if let Some(dir) = stem.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| FigureError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let svg = with_suffix(stem, "svg");
    let png = with_suffix(stem, "png");
    {
        let _at = Scaled::new(1.0);
        let root = SVGBackend::new(&svg, size).into_drawing_area();
        fig.draw(&root)
            .and_then(|_| root.present())
            .map_err(|e| draw_err(&svg, e))?;
    }
    {
        let k = look.dpi as f64 / BASE_DPI as f64;
        let _at = Scaled::new(k);
        let size = (
            (size.0 as f64 * k).round() as u32,
            (size.1 as f64 * k).round() as u32,
        );
        let root = BitMapBackend::new(&png, size).into_drawing_area();
        fig.draw(&root)
            .and_then(|_| root.present())
            .map_err(|e| draw_err(&png, e))?;
    }
    Ok(vec![svg, png])
}

/// `stem` + `.ext`, keeping any dots already in the stem (`fig.v1` → `fig.v1.svg`).
fn with_suffix(stem: &Path, ext: &str) -> PathBuf {
    let mut s = stem.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

fn draw_err(path: &Path, e: impl std::fmt::Display) -> FigureError {
    FigureError::Draw {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

fn invalid(stem: &Path, message: String) -> FigureError {
    FigureError::InvalidData {
        path: stem.to_path_buf(),
        message,
    }
}

fn check_series(stem: &Path, s: &Series) -> Result<(), FigureError> {
    if s.x.len() != s.y.len() {
        return Err(invalid(
            stem,
            format!(
                "series {:?}: {} x values but {} y values",
                s.label,
                s.x.len(),
                s.y.len()
            ),
        ));
    }
    if let Some(std) = &s.std {
        if std.len() != s.y.len() {
            return Err(invalid(
                stem,
                format!(
                    "series {:?}: {} std values but {} y values",
                    s.label,
                    std.len(),
                    s.y.len()
                ),
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Data helpers

/// The axis ranges of a chart. Points are clamped into it before drawing: values far outside
/// the axes would overflow plotters' pixel arithmetic (a panic in debug builds).
struct Frame {
    x: Range<f64>,
    y: Range<f64>,
}

impl Frame {
    fn clip(&self, (x, y): (f64, f64)) -> (f64, f64) {
        (
            x.clamp(self.x.start, self.x.end),
            y.clamp(self.y.start, self.y.end),
        )
    }
}

/// Runs of consecutive finite points, clamped to `frame`; a non-finite x or y ends a run
/// (drawn as a gap).
fn finite_runs(x: &[f64], y: &[f64], frame: &Frame) -> Vec<Vec<(f64, f64)>> {
    let mut runs = Vec::new();
    let mut cur = Vec::new();
    for (&a, &b) in x.iter().zip(y) {
        if a.is_finite() && b.is_finite() {
            cur.push(frame.clip((a, b)));
        } else if !cur.is_empty() {
            runs.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        runs.push(cur);
    }
    runs
}

/// Polygons of the ±std band, clamped to `frame`; points with a missing or negative std split it.
fn band_polygons(s: &Series, frame: &Frame) -> Vec<Vec<(f64, f64)>> {
    let Some(std) = &s.std else {
        return Vec::new();
    };
    let mut polys = Vec::new();
    let mut cur: Vec<(f64, f64, f64)> = Vec::new();
    let flush = |cur: &mut Vec<(f64, f64, f64)>, polys: &mut Vec<Vec<(f64, f64)>>| {
        if cur.len() >= 2 {
            let mut poly: Vec<(f64, f64)> = cur.iter().map(|&(x, _, hi)| (x, hi)).collect();
            poly.extend(cur.iter().rev().map(|&(x, lo, _)| (x, lo)));
            polys.push(poly);
        }
        cur.clear();
    };
    for ((&x, &y), &sd) in s.x.iter().zip(&s.y).zip(std) {
        if x.is_finite() && y.is_finite() && sd.is_finite() && sd >= 0.0 {
            let (x, lo) = frame.clip((x, y - sd));
            let (_, hi) = frame.clip((x, y + sd));
            cur.push((x, lo, hi));
        } else {
            flush(&mut cur, &mut polys);
        }
    }
    flush(&mut cur, &mut polys);
    polys
}

/// Min and max of the finite values, if any.
fn finite_bounds(values: impl IntoIterator<Item = f64>) -> Option<(f64, f64)> {
    values
        .into_iter()
        .filter(|v| v.is_finite())
        .fold(None, |acc, v| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
        })
}

/// A finite, non-empty axis range around `bounds` with a little padding.
fn axis_range(bounds: Option<(f64, f64)>, pad_frac: f64) -> Range<f64> {
    let r = match bounds {
        None => 0.0..1.0,
        Some((lo, hi)) if hi - lo <= f64::EPSILON * hi.abs().max(1.0) => (lo - 0.5)..(hi + 0.5),
        Some((lo, hi)) => {
            let pad = (hi - lo) * pad_frac;
            (lo - pad)..(hi + pad)
        }
    };
    // Absurd magnitudes (overflowing spans) would break tick computation: fall back.
    if (r.end - r.start).is_finite() && r.end > r.start {
        r
    } else {
        0.0..1.0
    }
}

/// Finite x values of all series (only where y is finite too).
fn series_x(series: &[&Series]) -> Vec<f64> {
    series
        .iter()
        .flat_map(|s| s.x.iter().zip(&s.y))
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .map(|(x, _)| *x)
        .collect()
}

/// Tick count for a task axis: one tick per task when the x values are whole numbers.
fn task_ticks(xs: &[f64], range: &Range<f64>) -> usize {
    let whole = !xs.is_empty() && xs.iter().all(|x| x.fract() == 0.0);
    let span = (range.end - range.start).floor();
    if whole && span.is_finite() && span >= 1.0 {
        span.min(11.0) as usize + 1
    } else {
        8
    }
}

fn fmt_tick(v: &f64) -> String {
    if v.abs() >= 1e6 {
        format!("{:.1e}", v)
    } else if v.fract().abs() < 1e-9 {
        format!("{:.0}", v)
    } else {
        let s = format!("{:.2}", v);
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// Accuracy of a curve at `share`, by linear interpolation along the points in the given order.
fn accuracy_at(share: &[f64], accuracy: &[f64], at: f64) -> Option<f64> {
    if !at.is_finite() {
        return None;
    }
    let pts: Vec<(f64, f64)> = share
        .iter()
        .zip(accuracy)
        .filter(|(s, a)| s.is_finite() && a.is_finite())
        .map(|(&s, &a)| (s, a))
        .collect();
    if let Some(&(_, a)) = pts.iter().find(|(s, _)| *s == at) {
        return Some(a);
    }
    pts.windows(2).find_map(|w| {
        let ((s0, a0), (s1, a1)) = (w[0], w[1]);
        let (lo, hi) = (s0.min(s1), s0.max(s1));
        (lo < at && at < hi).then(|| a0 + (a1 - a0) * (at - s0) / (s1 - s0))
    })
}

fn panel_grid(n: usize) -> (usize, usize) {
    let cols = match n {
        0 => 1,
        1..=3 => n,
        4 => 2,
        _ => 3,
    };
    (n.max(1).div_ceil(cols), cols)
}

/// The axes of a panel figure.
#[derive(Clone, Copy)]
struct YAxis<'a> {
    lo: f64,
    hi: f64,
    desc: &'a str,
    /// What the x axis counts.
    x_desc: &'a str,
    /// Draw each series' ±std as error bars at its points rather than as a band.
    bars: bool,
    /// Fit the range to the data (±std, padded), within `lo..hi`.
    fit: bool,
    /// Fit one range for all panels (that compare the same quantity), not one per panel.
    shared: bool,
}

impl YAxis<'_> {
    /// The y range of a panel showing `series`.
    fn range_for(&self, series: &[Series]) -> Range<f64> {
        if !self.fit {
            return self.lo..self.hi;
        }
        fit_range(series.iter().flat_map(series_extent), self.lo..self.hi)
    }
}

/// Every `y ± std` of a series (`y` where it has no std).
fn series_extent(s: &Series) -> Vec<f64> {
    let std = s.std.clone().unwrap_or_else(|| vec![0.0; s.y.len()]);
    s.y.iter()
        .zip(std)
        .flat_map(|(y, d)| [y - d, y + d])
        .collect()
}

/// A range around the finite `values`, padded by 15% (at least 0.5) and kept within `limit`;
/// `limit` itself when there is nothing to fit.
fn fit_range(values: impl IntoIterator<Item = f64>, limit: Range<f64>) -> Range<f64> {
    match finite_bounds(values) {
        Some((a, b)) => {
            let pad = ((b - a) * 0.15).max(0.5);
            let r = (a - pad).max(limit.start)..(b + pad).min(limit.end);
            if r.end > r.start && (r.end - r.start).is_finite() {
                r
            } else {
                limit
            }
        }
        None => limit,
    }
}

impl YAxis<'static> {
    const ACCURACY: YAxis<'static> = YAxis {
        lo: 0.0,
        hi: 100.0,
        desc: "accuracy (%)",
        x_desc: "task",
        bars: false,
        fit: true,
        shared: true,
    };
    const PEARSON: YAxis<'static> = YAxis {
        lo: -1.0,
        hi: 1.0,
        desc: "Pearson r",
        x_desc: "task",
        bars: false,
        fit: false,
        shared: false,
    };
}

/// Size of the heatmap figure at 100 dpi: about 420 × 440 px per panel, plus the colour bar.
fn heatmap_size((rows, cols): (usize, usize)) -> (u32, u32) {
    let width = (COLOUR_BAR_W + 420 * cols as u32).max(SIZE.0);
    let height = 60 + 440 * rows as u32;
    (width, height)
}

/// Size of a panel figure at 100 dpi: fixed width, about 400 px per row of panels.
fn per_task_size(rows: usize) -> (u32, u32) {
    let height = (160 + 400 * rows as u32).max(SIZE.1);
    (SIZE.0, height)
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Look = Look {
        dpi: BASE_DPI,
        full_range: false,
    };

    const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];

    /// Output directory: `CFPIPE_FIGURE_DIR` if set (to look at the figures), else a tempdir.
    fn out_dir() -> (Option<tempfile::TempDir>, PathBuf) {
        match std::env::var_os("CFPIPE_FIGURE_DIR") {
            Some(d) => (None, PathBuf::from(d)),
            None => {
                let t = tempfile::tempdir().unwrap();
                let p = t.path().to_path_buf();
                (Some(t), p)
            }
        }
    }

    /// Decodes an 8-bit, non-interlaced RGB(A) PNG (what the bitmap backend writes) into RGB
    /// pixels, so tests can check that lines were really drawn.
    fn decode_png(png: &[u8]) -> (u32, u32, Vec<[u8; 3]>) {
        use std::io::Read;
        assert_eq!(png[..8], PNG_SIGNATURE, "not a PNG");
        let (mut pos, mut idat) = (8, Vec::new());
        let (mut w, mut h, mut bpp) = (0, 0, 0);
        while pos + 8 <= png.len() {
            let len = u32::from_be_bytes(png[pos..pos + 4].try_into().unwrap()) as usize;
            let kind = &png[pos + 4..pos + 8];
            let data = &png[pos + 8..pos + 8 + len];
            match kind {
                b"IHDR" => {
                    w = u32::from_be_bytes(data[0..4].try_into().unwrap());
                    h = u32::from_be_bytes(data[4..8].try_into().unwrap());
                    assert_eq!((data[8], data[12]), (8, 0), "bit depth 8, no interlace");
                    bpp = match data[9] {
                        2 => 3,
                        6 => 4,
                        t => panic!("unexpected PNG colour type {t}"),
                    };
                }
                b"IDAT" => idat.extend_from_slice(data),
                _ => {}
            }
            pos += 12 + len;
        }
        let mut raw = Vec::new();
        flate2::read::ZlibDecoder::new(&idat[..])
            .read_to_end(&mut raw)
            .unwrap();
        let stride = w as usize * bpp;
        assert_eq!(raw.len(), h as usize * (stride + 1), "IDAT size");
        let mut prev = vec![0u8; stride];
        let mut pixels = Vec::with_capacity((w * h) as usize);
        for row in raw.chunks(stride + 1) {
            let (filter, line) = (row[0], &row[1..]);
            let mut cur = vec![0u8; stride];
            for i in 0..stride {
                let a = if i >= bpp { cur[i - bpp] as i16 } else { 0 };
                let b = prev[i] as i16;
                let c = if i >= bpp { prev[i - bpp] as i16 } else { 0 };
                let pred = match filter {
                    0 => 0,
                    1 => a,
                    2 => b,
                    3 => (a + b) / 2,
                    4 => {
                        let p = a + b - c;
                        let (pa, pb, pc) = ((p - a).abs(), (p - b).abs(), (p - c).abs());
                        if pa <= pb && pa <= pc {
                            a
                        } else if pb <= pc {
                            b
                        } else {
                            c
                        }
                    }
                    f => panic!("bad PNG filter {f}"),
                };
                cur[i] = line[i].wrapping_add(pred as u8);
            }
            pixels.extend(cur.chunks(bpp).map(|p| [p[0], p[1], p[2]]));
            prev = cur;
        }
        (w, h, pixels)
    }

    /// Number of pixels of exactly `color`.
    fn count_color(pixels: &[[u8; 3]], color: RGBColor) -> usize {
        pixels
            .iter()
            .filter(|p| **p == [color.0, color.1, color.2])
            .count()
    }

    /// Checks both files and returns the SVG text and the PNG's pixels.
    fn check_outputs(
        paths: &[PathBuf],
        stem: &Path,
        size: (u32, u32),
        labels: &[&str],
    ) -> (String, Vec<[u8; 3]>) {
        assert_eq!(paths, &[with_suffix(stem, "svg"), with_suffix(stem, "png")]);
        let svg = std::fs::read_to_string(&paths[0]).unwrap();
        assert!(svg.trim_start().starts_with("<svg"), "not an SVG");
        assert!(svg.trim_end().ends_with("</svg>"), "truncated SVG");
        assert!(svg.len() > 4096, "SVG too small: {} bytes", svg.len());
        for l in labels {
            assert!(svg.contains(l), "SVG lacks legend/axis text {l:?}");
        }
        let png = std::fs::read(&paths[1]).unwrap();
        assert!(png.len() > 8192, "PNG too small: {} bytes", png.len());
        assert_eq!(png[..8], PNG_SIGNATURE, "not a PNG");
        assert_eq!(&png[12..16], b"IHDR");
        let w = u32::from_be_bytes(png[16..20].try_into().unwrap());
        let h = u32::from_be_bytes(png[20..24].try_into().unwrap());
        assert_eq!((w, h), size, "PNG size");
        let (dw, dh, pixels) = decode_png(&png);
        assert_eq!((dw, dh), size);
        assert_eq!(pixels.len(), (w * h) as usize);
        (svg, pixels)
    }

    /// Plausible fake results: accuracy decays with the number of tasks, capacity shrinks.
    fn fake_mean(n_tasks: usize, strategies: &[&str]) -> (Vec<Series>, Vec<Series>) {
        let x: Vec<f64> = (1..=n_tasks).map(|t| t as f64).collect();
        let mut acc = Vec::new();
        let mut cap = Vec::new();
        for (k, name) in strategies.iter().enumerate() {
            let forget = 0.02 + 0.05 * k as f64;
            let y = x
                .iter()
                .map(|t| 97.0 * (1.0 - forget).powf(t - 1.0))
                .collect();
            let std = x.iter().map(|t| 0.8 + 0.3 * t).collect();
            acc.push(Series {
                label: name.to_string(),
                x: x.clone(),
                y,
                std: Some(std),
            });
            if k < 2 {
                let c = x
                    .iter()
                    .map(|t| 100.0 * (1.0 - (0.12 + 0.04 * k as f64) * t).max(0.0))
                    .collect();
                cap.push(Series {
                    label: name.to_string(),
                    x: x.clone(),
                    y: c,
                    std: None,
                });
            }
        }
        (acc, cap)
    }

    fn fake_per_task(n_tasks: usize, forget: f64) -> Vec<Series> {
        (1..=n_tasks)
            .map(|j| {
                let x: Vec<f64> = (j..=n_tasks).map(|t| t as f64).collect();
                let y = x
                    .iter()
                    .map(|t| (96.0 - j as f64) * (1.0 - forget).powf(t - j as f64))
                    .collect();
                Series {
                    label: format!("task {j}"),
                    x,
                    y,
                    std: None,
                }
            })
            .collect()
    }

    fn fake_prune() -> Vec<PruneCurve> {
        (0..3)
            .map(|k| {
                let share: Vec<f64> = (0..=18).map(|i| i as f64 * 5.0).collect();
                // Slow decay with a wiggle (non-monotone), then a cliff.
                let accuracy = share
                    .iter()
                    .map(|s| {
                        let cliff = 55.0 + 10.0 * k as f64;
                        let wiggle = 0.6 * (s / 7.0).sin();
                        let drop = if *s > cliff { (s - cliff) * 1.2 } else { 0.0 };
                        97.0 - 2.0 * k as f64 - 0.02 * s + wiggle - drop
                    })
                    .collect::<Vec<f64>>();
                let threshold_line = accuracy[0] - 2.0;
                let accepted_share = share
                    .iter()
                    .zip(&accuracy)
                    .take_while(|(_, a)| **a >= threshold_line)
                    .last()
                    .map(|(s, _)| *s)
                    .unwrap();
                PruneCurve {
                    label: format!("task {} (layer fc{})", k + 1, k + 1),
                    share,
                    accuracy,
                    threshold_line,
                    accepted_share,
                }
            })
            .collect()
    }

    #[test]
    fn mean_accuracy_writes_svg_and_png() {
        let (_t, dir) = out_dir();
        let stem = dir.join("mean_accuracy");
        let (acc, cap) = fake_mean(10, &["RNF", "RNF + LRP", "fine-tune"]);
        let paths = mean_accuracy_figure(&stem, "Split MNIST", &acc, &cap, &L).unwrap();
        let (svg, pixels) = check_outputs(
            &paths,
            &stem,
            SIZE,
            &[
                "RNF + LRP",
                "fine-tune",
                "RNF free capacity",
                "mean accuracy over seen tasks (%)",
                "free capacity (%, dashed)",
                "task",
                "Split MNIST",
            ],
        );
        // One ±std band per accuracy series; every strategy's colour really drawn in the PNG.
        assert_eq!(svg.matches("<polygon").count(), acc.len());
        for i in 0..acc.len() {
            let n = count_color(&pixels, line_style(i).0);
            assert!(n > 1000, "colour {i}: only {n} pixels");
        }
        assert_eq!(count_color(&pixels, line_style(acc.len()).0), 0);
    }

    #[test]
    fn per_task_writes_one_panel_per_strategy() {
        let (_t, dir) = out_dir();
        let stem = dir.join("per_task");
        let panels = vec![
            ("RNF".to_string(), fake_per_task(5, 0.01)),
            ("RNF + LRP".to_string(), fake_per_task(5, 0.005)),
            ("fine-tune".to_string(), fake_per_task(5, 0.25)),
        ];
        let paths = per_task_figure(&stem, "Per-task accuracy", &panels, &L).unwrap();
        let (svg, pixels) = check_outputs(
            &paths,
            &stem,
            per_task_size(1),
            &["RNF + LRP", "fine-tune", "task 1", "task 5", "accuracy (%)"],
        );
        // One y-axis description per panel; one colour per task, shared by the panels.
        assert_eq!(svg.matches("accuracy (%)").count(), 3);
        // Count above the legend strip only; task 5 is a single point per panel.
        let plot = &pixels[..(SIZE.0 * (SIZE.1 - 60)) as usize];
        for i in 0..5 {
            let n = count_color(plot, line_style(i).0);
            let min = if i == 4 { 50 } else { 300 };
            assert!(n > min, "task {}: only {n} pixels", i + 1);
        }
        assert_eq!(count_color(&pixels, line_style(5).0), 0);
    }

    #[test]
    fn per_task_grows_with_rows() {
        assert_eq!(panel_grid(4), (2, 2));
        assert_eq!(panel_grid(7), (3, 3));
        assert_eq!(panel_grid(0), (1, 1));
        let (_t, dir) = out_dir();
        let stem = dir.join("per_task_rows");
        let panels: Vec<(String, Vec<Series>)> = (0..4)
            .map(|k| (format!("strategy {k}"), fake_per_task(4, 0.05 * k as f64)))
            .collect();
        let paths = per_task_figure(&stem, "", &panels, &L).unwrap();
        let size = per_task_size(2);
        assert!(size.1 > SIZE.1);
        check_outputs(&paths, &stem, size, &["strategy 3", "task 4"]);
    }

    #[test]
    fn prune_writes_thresholds_and_accepted_points() {
        let (_t, dir) = out_dir();
        let stem = dir.join("prune");
        // One seed: a panel per search, each with its own threshold.
        let panels: Vec<(String, Vec<PruneCurve>)> = fake_prune()
            .into_iter()
            .map(|c| (c.label.clone(), vec![c]))
            .collect();
        let paths = prune_figure(&stem, "Prune curves", &panels, &L).unwrap();
        let (svg, pixels) = check_outputs(
            &paths,
            &stem,
            per_task_size(1),
            &[
                "task 1 (layer fc1)",
                "task 3 (layer fc3)",
                "share of units pruned (%)",
                "accuracy (%)",
                "accepted",
            ],
        );
        assert!(!svg.contains(">mean<"), "one seed has no mean");
        // One accepted marker per curve plus the legend sample, each a filled circle + rim.
        let markers = svg.matches("r=\"8\"").count();
        assert_eq!(markers, 2 * (panels.len() + 1));
        // Threshold lines are dashed: many short segments in each curve's colour in the SVG.
        for i in 0..panels.len() {
            let c = line_style(i).0;
            let stroke = format!("stroke=\"#{:02X}{:02X}{:02X}\"", c.0, c.1, c.2);
            let n = svg.matches(&stroke).count();
            assert!(n > 12, "curve {i}: only {n} strokes");
            assert!(count_color(&pixels, line_style(i).0) > 300, "curve {i}");
        }
    }

    #[test]
    fn prune_with_several_seeds_draws_each_and_their_mean() {
        let (_t, dir) = out_dir();
        let stem = dir.join("prune_seeds");
        let seeds: Vec<PruneCurve> = fake_prune()
            .into_iter()
            .enumerate()
            .map(|(k, c)| PruneCurve {
                label: format!("seed {k}"),
                ..c
            })
            .collect();
        let panels = vec![("task 1".to_string(), seeds.clone())];
        let paths = prune_figure(&stem, "seeds", &panels, &L).unwrap();
        let (svg, pixels) = check_outputs(
            &paths,
            &stem,
            per_task_size(1),
            &["seed 0", "seed 2", "mean", "threshold (mean)"],
        );
        assert!(count_color(&pixels, BLACK) > 300, "the mean line");
        // Smaller accepted markers per seed; the legend's stays full size.
        assert_eq!(svg.matches("r=\"6\"").count(), 2 * seeds.len());
        assert_eq!(svg.matches("r=\"8\"").count(), 2);
        // The mean follows the seeds while all three search, then stops with the shortest.
        let mean = mean_prune_curve(&seeds);
        let shortest = seeds.iter().map(|c| c.share.len()).min().unwrap();
        assert_eq!(mean.x.len(), shortest);
        let want: f64 = seeds.iter().map(|c| c.accuracy[2]).sum::<f64>() / 3.0;
        assert!((mean.y[2] - want).abs() < 1e-12);
        let cut = PruneCurve {
            share: seeds[0].share[..5].to_vec(),
            accuracy: seeds[0].accuracy[..5].to_vec(),
            ..seeds[0].clone()
        };
        assert_eq!(mean_prune_curve(&[seeds[1].clone(), cut]).x.len(), 5);
    }

    #[test]
    fn dpi_scales_the_png_and_not_its_layout() {
        let (_t, dir) = out_dir();
        let (acc, cap) = fake_mean(5, &["a", "b"]);
        let stem = dir.join("mean_dpi");
        let look = Look { dpi: 250, ..L };
        let paths = mean_accuracy_figure(&stem, "dpi", &acc, &cap, &look).unwrap();
        let png = std::fs::read(&paths[1]).unwrap();
        let (w, h, pixels) = decode_png(&png);
        assert_eq!((w, h), (SIZE.0 * 5 / 2, SIZE.1 * 5 / 2));
        // Lines are as wide relative to the figure: 2.5² times the pixels of each colour.
        let base = mean_accuracy_figure(&dir.join("mean_100"), "dpi", &acc, &cap, &L).unwrap();
        let (_, _, small) = decode_png(&std::fs::read(&base[1]).unwrap());
        let (big, little) = (
            count_color(&pixels, line_style(0).0) as f64,
            count_color(&small, line_style(0).0) as f64,
        );
        assert!(
            (big / little) > 4.0 && (big / little) < 8.5,
            "{big} vs {little}"
        );
        // The SVG is laid out at 100 dpi whatever the PNG's resolution.
        assert!(std::fs::read_to_string(&paths[0])
            .unwrap()
            .contains(&format!("width=\"{}\"", SIZE.0)));
        let bad = Look { dpi: 5, ..L };
        assert!(matches!(
            mean_accuracy_figure(&stem, "", &acc, &cap, &bad),
            Err(FigureError::InvalidData { .. })
        ));
    }

    #[test]
    fn percent_axes_fit_the_data_unless_the_full_range_is_asked_for() {
        let s = Series {
            label: "s".into(),
            x: vec![1.0, 2.0],
            y: vec![96.0, 98.0],
            std: Some(vec![1.0, 0.5]),
        };
        let r = YAxis::ACCURACY.range_for(std::slice::from_ref(&s));
        // 95..98.5 padded by 15% of its span, within 0..100.
        assert!((r.start - (95.0 - 0.525)).abs() < 1e-9, "{r:?}");
        assert!((r.end - (98.5 + 0.525)).abs() < 1e-9, "{r:?}");
        let full = YAxis {
            fit: false,
            ..YAxis::ACCURACY
        };
        assert_eq!(full.range_for(&[s]), 0.0..100.0);
        assert_eq!(fit_range([150.0, 160.0], 0.0..100.0), 0.0..100.0);
    }

    #[test]
    fn identical_series_are_drawn_once_under_both_names() {
        let (_, cap) = fake_mean(5, &["rnf", "other"]);
        let twin = Series {
            label: "rnf_isolated".into(),
            ..cap[0].clone()
        };
        let all = vec![cap[0].clone(), cap[1].clone(), twin];
        let styles: Vec<(RGBColor, bool)> = (0..3).map(line_style).collect();
        let merged = merge_identical(&all, &styles);
        let labels: Vec<&str> = merged.iter().map(|(s, _)| s.label.as_str()).collect();
        assert_eq!(labels, ["rnf = rnf_isolated", "other"]);
        assert_eq!(merged[0].1, styles[0]);
    }

    #[test]
    fn explain_figure_draws_each_pixel_as_a_block_with_a_colour_bar() {
        let (_t, dir) = out_dir();
        let stem = dir.join("explain");
        let relevance = [1.0f32, -0.5, 0.0, 0.25];
        let panel = ExplainPanel {
            title: "test image 0: class 3, logit 1.5".into(),
            subtitle: "LRP dense ε".into(),
            shape: [1, 2, 2],
            pixels: &[0, 255, 128, 64],
            relevance: &relevance,
        };
        let (paths, at) = explain_figure(&stem, &panel, &L).unwrap();
        let (svg, _) = check_outputs(
            &paths,
            &stem,
            EXPLAIN_SIZE,
            &[
                "class 3",
                "LRP dense ε",
                "relevance",
                "-0.5",
                "input (2 × 2 px)",
            ],
        );
        assert!(
            svg.contains(">\n1\n</text>"),
            "the bar's top tick is max |R|"
        );
        let (w, _, pixels) = decode_png(&std::fs::read(&paths[1]).unwrap());
        let px_at = |(x, y): (u32, u32), p: usize| {
            let (c, r) = ((p % 2) as u32, (p / 2) as u32);
            let (x, y) = (x + c * at.cell + at.cell / 2, y + r * at.cell + at.cell / 2);
            pixels[(y * w + x) as usize]
        };
        for (p, (&g, &r)) in panel.pixels.iter().zip(&relevance).enumerate() {
            assert_eq!(px_at(at.input, p), [g, g, g], "input pixel {p}");
            let c = relevance_colour(r as f64);
            assert_eq!(
                px_at(at.relevance, p),
                [c.0, c.1, c.2],
                "relevance pixel {p}"
            );
        }
        assert_eq!(relevance_colour(0.0), WHITE);
        assert_eq!(relevance_colour(-1.0), RGBColor(0, 0, 255));
        assert_eq!(relevance_colour(f64::NAN), WHITE);
        // At 300 dpi the blocks are three times the size and still where the layout says.
        let (paths, big) = explain_figure(&stem, &panel, &Look { dpi: 300, ..L }).unwrap();
        assert_eq!(big.cell, 3 * at.cell);
        let (w, _, pixels) = decode_png(&std::fs::read(&paths[1]).unwrap());
        let (x, y) = (
            big.relevance.0 + big.cell / 2,
            big.relevance.1 + big.cell / 2,
        );
        assert_eq!(pixels[(y * w + x) as usize], [255, 0, 0]);
        let short = ExplainPanel {
            relevance: &relevance[..3],
            ..panel
        };
        assert!(matches!(
            explain_figure(&stem, &short, &L),
            Err(FigureError::InvalidData { .. })
        ));
    }

    fn fake_heatmaps() -> Vec<Heatmap> {
        let labels: Vec<String> = ["FIS", "MAS", "MAS^2", "SI"].map(String::from).to_vec();
        (0..3)
            .map(|l| {
                let values = (0..4)
                    .map(|i| {
                        (0..4)
                            .map(|j| match (i, j) {
                                _ if i == j => 1.0,
                                (0, 3) | (3, 0) => -0.4 + 0.1 * l as f64,
                                (1, 2) | (2, 1) => f64::NAN,
                                _ => 0.85 - 0.1 * l as f64,
                            })
                            .collect()
                    })
                    .collect();
                Heatmap {
                    title: format!("layer {}", l + 1),
                    labels: labels.clone(),
                    values,
                }
            })
            .collect()
    }

    #[test]
    fn heatmap_writes_cells_values_and_colour_bar() {
        let (_t, dir) = out_dir();
        let stem = dir.join("heatmap");
        let maps = fake_heatmaps();
        let paths = heatmap_figure(&stem, "Pearson after task 10", &maps, &L).unwrap();
        let (svg, pixels) = check_outputs(
            &paths,
            &stem,
            heatmap_size((1, 3)),
            &[
                "layer 1",
                "layer 3",
                "MAS^2",
                "Pearson r",
                "0.85",
                "-0.40",
                "-0.20",
                "1.00",
            ],
        );
        // 16 cells per panel, each filled and outlined, plus the colour bar's 100 steps.
        assert!(svg.matches("<rect").count() >= 3 * 16 * 2 + 100);
        // Strong positive cells are red-ish, negative ones blue-ish, missing ones grey.
        let red = count_color(&pixels, diverging(0.85));
        let blue = count_color(&pixels, diverging(-0.4));
        let grey = count_color(&pixels, HEAT_NAN);
        assert!(
            red > 2000 && blue > 500 && grey > 500,
            "{red} {blue} {grey}"
        );
        assert_eq!(diverging(0.0), WHITE);
        assert_eq!(diverging(1.0), HEAT_POS);
        assert_eq!(diverging(-3.0), HEAT_NEG);
        let bad = Heatmap {
            title: "bad".into(),
            labels: vec!["a".into()],
            values: vec![vec![1.0, 0.0]],
        };
        assert!(matches!(
            heatmap_figure(&dir.join("bad_heatmap"), "", &[bad], &L),
            Err(FigureError::InvalidData { .. })
        ));
        let empty = heatmap_figure(&dir.join("empty_heatmap"), "", &[], &L).unwrap();
        assert!(std::fs::read_to_string(&empty[0])
            .unwrap()
            .contains(NO_DATA));
    }

    #[test]
    fn correlation_panels_span_minus_one_to_one() {
        let (_t, dir) = out_dir();
        let stem = dir.join("corr_vs_task");
        let x: Vec<f64> = (1..=5).map(|t| t as f64).collect();
        let panels: Vec<(String, Vec<Series>)> = (0..3)
            .map(|l| {
                let lines = (0..3)
                    .map(|k| Series {
                        label: format!("pair {k}"),
                        x: x.clone(),
                        y: x.iter()
                            .map(|t| 0.9 - 0.3 * k as f64 - 0.05 * t - 0.1 * l as f64)
                            .collect(),
                        std: Some(vec![0.05; 5]),
                    })
                    .collect();
                (format!("layer {}", l + 1), lines)
            })
            .collect();
        let paths = correlation_figure(&stem, "Pearson vs task", &panels, &L).unwrap();
        let (svg, pixels) = check_outputs(
            &paths,
            &stem,
            per_task_size(1),
            &["Pearson r", "pair 2", "layer 3", "-0.5"],
        );
        assert_eq!(svg.matches("Pearson r").count(), 3);
        assert_eq!(svg.matches("<polygon").count(), 9, "one ±std band per line");
        for k in 0..3 {
            assert!(count_color(&pixels, line_style(k).0) > 300, "pair {k}");
        }
    }

    #[test]
    fn accepted_point_is_interpolated_on_the_curve() {
        let share = [0.0, 10.0, 20.0, 30.0];
        let acc = [90.0, 92.0, 88.0, f64::NAN];
        assert_eq!(accuracy_at(&share, &acc, 10.0), Some(92.0));
        assert_eq!(accuracy_at(&share, &acc, 15.0), Some(90.0));
        assert_eq!(accuracy_at(&share, &acc, 25.0), None);
        assert_eq!(accuracy_at(&share, &acc, f64::NAN), None);
    }

    #[test]
    fn nan_splits_lines_and_bands() {
        let x = [1.0, 2.0, 3.0, 4.0, 5.0];
        let y = [1.0, f64::NAN, 3.0, 4.0, 5.0];
        let wide = Frame {
            x: -1e9..1e9,
            y: -1e9..1e9,
        };
        let runs = finite_runs(&x, &y, &wide);
        assert_eq!(
            runs,
            vec![vec![(1.0, 1.0)], vec![(3.0, 3.0), (4.0, 4.0), (5.0, 5.0)]]
        );
        let s = Series {
            label: "s".into(),
            x: x.to_vec(),
            y: y.to_vec(),
            std: Some(vec![1.0, 1.0, 1.0, f64::INFINITY, 200.0]),
        };
        let frame = Frame {
            x: 0.0..10.0,
            y: 0.0..100.0,
        };
        // Only [3] is a lone point between gaps; [5] alone: no polygon has < 2 points.
        assert!(band_polygons(&s, &frame).is_empty());
        let s = Series {
            std: Some(vec![1.0; 5]),
            ..s
        };
        let polys = band_polygons(&s, &frame);
        assert_eq!(polys.len(), 1);
        assert_eq!(polys[0].len(), 6);
        // Bands (and lines) are clamped into the frame.
        let wide = Series {
            label: "w".into(),
            x: vec![1.0, 20.0],
            y: vec![50.0, 50.0],
            std: Some(vec![200.0, 200.0]),
        };
        let polys = band_polygons(&wide, &frame);
        assert_eq!(
            polys,
            vec![vec![(1.0, 100.0), (10.0, 100.0), (10.0, 0.0), (1.0, 0.0)]]
        );
        assert_eq!(
            finite_runs(&wide.x, &[1e300, -5.0], &frame),
            vec![vec![(1.0, 100.0), (10.0, 0.0)]]
        );
    }

    #[test]
    fn empty_and_nan_inputs_draw_a_note_instead_of_panicking() {
        let (_t, dir) = out_dir();
        let nan = Series {
            label: "all NaN".into(),
            x: vec![1.0, 2.0],
            y: vec![f64::NAN, f64::NAN],
            std: Some(vec![f64::NAN, 1.0]),
        };
        for (name, acc) in [("empty_mean", vec![]), ("nan_mean", vec![nan.clone()])] {
            let stem = dir.join(name);
            let paths = mean_accuracy_figure(&stem, "empty", &acc, &[], &L).unwrap();
            let svg = std::fs::read_to_string(&paths[0]).unwrap();
            assert!(svg.contains(NO_DATA), "{name}: no note");
            assert!(paths[1].exists());
        }
        let stem = dir.join("empty_per_task");
        let paths = per_task_figure(&stem, "empty", &[], &L).unwrap();
        assert!(std::fs::read_to_string(&paths[0])
            .unwrap()
            .contains(NO_DATA));
        let stem = dir.join("empty_prune");
        let paths = prune_figure(&stem, "empty", &[], &L).unwrap();
        assert!(std::fs::read_to_string(&paths[0])
            .unwrap()
            .contains(NO_DATA));
        let stem = dir.join("nan_prune");
        let curve = PruneCurve {
            label: "nan".into(),
            share: vec![f64::NAN, 1.0],
            accuracy: vec![1.0, f64::INFINITY],
            threshold_line: f64::NAN,
            accepted_share: f64::NAN,
        };
        let paths = prune_figure(&stem, "nan", &[("t".into(), vec![curve])], &L).unwrap();
        assert!(std::fs::read_to_string(&paths[0])
            .unwrap()
            .contains(NO_DATA));
    }

    #[test]
    fn extreme_values_do_not_break_the_axes() {
        assert_eq!(axis_range(Some((-f64::MAX, f64::MAX)), 0.1), 0.0..1.0);
        let (_t, dir) = out_dir();
        let curve = PruneCurve {
            label: "huge".into(),
            share: vec![-f64::MAX, 0.0, f64::MAX],
            accuracy: vec![f64::MAX, 1.0, -f64::MAX],
            threshold_line: f64::MAX,
            accepted_share: 0.0,
        };
        prune_figure(
            &dir.join("huge_prune"),
            "huge",
            &[("t".into(), vec![curve])],
            &L,
        )
        .unwrap();
        let s = Series {
            label: "huge".into(),
            x: vec![1.0, 1e300, -1e300],
            y: vec![1e300, 0.0, -1e300],
            std: Some(vec![f64::MAX, 0.0, 1.0]),
        };
        let stem = dir.join("huge_per_task");
        per_task_figure(&stem, "huge", &[("p".into(), vec![s.clone()])], &L).unwrap();
        mean_accuracy_figure(
            &dir.join("huge_mean"),
            "huge",
            std::slice::from_ref(&s),
            std::slice::from_ref(&s),
            &L,
        )
        .unwrap();
    }

    #[test]
    fn mismatched_lengths_are_an_error_naming_the_figure() {
        let (_t, dir) = out_dir();
        let stem = dir.join("bad");
        let bad = Series {
            label: "bad".into(),
            x: vec![1.0, 2.0],
            y: vec![1.0],
            std: None,
        };
        let err = mean_accuracy_figure(&stem, "", &[bad], &[], &L).unwrap_err();
        assert!(matches!(&err, FigureError::InvalidData { path, .. } if path == &stem));
        assert!(err.to_string().contains("bad"));
        assert!(!with_suffix(&stem, "svg").exists());
        let curve = PruneCurve {
            label: "c".into(),
            share: vec![1.0],
            accuracy: vec![],
            threshold_line: 0.0,
            accepted_share: 0.0,
        };
        assert!(matches!(
            prune_figure(&stem, "", &[("t".into(), vec![curve])], &L),
            Err(FigureError::InvalidData { .. })
        ));
    }

    #[test]
    fn stem_with_dots_keeps_them() {
        assert_eq!(
            with_suffix(Path::new("out/fig.v1"), "svg"),
            PathBuf::from("out/fig.v1.svg")
        );
    }
}
