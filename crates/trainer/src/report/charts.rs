//! The report's charts, drawn with plotters' SVG backend into strings that the page inlines
//! (no files beside it, no network, text left to the browser's fonts).
//!
//! Colours are Okabe-Ito (told apart with the common colour-vision deficiencies), and every
//! line also differs by dash and marker shape. Legends sit below the plot, never on the data.

use std::ops::Range;

use anyhow::{Result, anyhow};
use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::calibration::ReliabilityBin;
use crate::threshold::CurvePoint;

/// The plot's size; the legend rows add to the height below it.
const SIZE: (u32, u32) = (460, 320);
const MARGIN: u32 = 12;
const X_LABELS: u32 = 36;
const Y_LABELS: u32 = 60;
const LEGEND_ROW: u32 = 18;
const LEGEND_FONT: u32 = 16;

// Okabe-Ito. The train split is blue (sky blue for its second figure), the validation split
// vermillion (orange for its second figure), in every chart.
const BLUE: RGBColor = RGBColor(0, 114, 178);
const SKY_BLUE: RGBColor = RGBColor(86, 180, 233);
const VERMILLION: RGBColor = RGBColor(213, 94, 0);
const ORANGE: RGBColor = RGBColor(230, 159, 0);
const GREEN: RGBColor = RGBColor(0, 158, 115);
const GREY: RGBColor = RGBColor(85, 85, 85);

const TRAIN: RGBColor = BLUE;
const VALID: RGBColor = VERMILLION;

/// One named line of a chart.
pub struct Series {
    pub name: String,
    pub color: RGBColor,
    pub dashed: bool,
    pub points: Vec<(f64, f64)>,
}

impl Series {
    pub fn train(name: &str, points: Vec<(f64, f64)>) -> Self {
        Self {
            name: name.to_string(),
            color: TRAIN,
            dashed: false,
            points,
        }
    }

    pub fn valid(name: &str, points: Vec<(f64, f64)>) -> Self {
        Self {
            name: name.to_string(),
            color: VALID,
            dashed: false,
            points,
        }
    }

    /// A second figure of the same split: drawn dashed, with triangles, in the split's second
    /// colour (sky blue for train, orange for validation).
    pub fn dashed(mut self) -> Self {
        self.dashed = true;
        self.color = match self.color {
            TRAIN => SKY_BLUE,
            VALID => ORANGE,
            other => other,
        };
        self
    }
}

/// `n` with thousands separators: 6400 -> "6,400".
pub fn thousands(n: usize) -> String {
    group(&n.to_string())
}

/// Commas into the integer digits of a formatted number ("-12345.67" -> "-12,345.67").
fn group(s: &str) -> String {
    let (sign, rest) = s.strip_prefix('-').map_or(("", s), |r| ("-", r));
    let (int, frac) = rest.find('.').map_or((rest, ""), |i| rest.split_at(i));
    let mut out = String::new();
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    format!("{sign}{out}{frac}")
}

/// A tick label of an axis spanning `span`: enough decimals for about ten ticks, and
/// thousands separators.
fn tick(v: f64, span: f64) -> String {
    let step = (span.abs() / 10.0).max(1e-12);
    let decimals = (-step.log10().floor()).clamp(0.0, 6.0) as usize;
    let v = if v.abs() < 0.5 * 10f64.powi(-(decimals as i32)) {
        0.0
    } else {
        v
    };
    group(&format!("{v:.decimals$}"))
}

/// A legend entry's key.
#[derive(Clone, Copy)]
enum Key {
    /// A line, solid or dashed, with its point marker.
    Line(RGBColor, bool),
    /// A line without markers, solid or dashed.
    Rule(RGBColor, bool),
    /// A marker alone.
    Mark(Shape, RGBColor),
    /// A bar filled with the colour at this opacity.
    Bar(RGBColor, f64),
}

#[derive(Clone, Copy, PartialEq)]
enum Shape {
    Dot,
    Triangle,
    Ring,
}

/// How wide a legend entry is, in pixels (text width estimated from its length).
fn entry_width(name: &str) -> u32 {
    30 + name.chars().count() as u32 * 7 + 14
}

/// The entries laid out in rows that fit the chart's width.
fn legend_rows(entries: &[(String, Key)]) -> Vec<Vec<(String, Key)>> {
    let room = SIZE.0 - 2 * MARGIN;
    let mut rows: Vec<Vec<(String, Key)>> = Vec::new();
    let mut used = room;
    for e in entries {
        let w = entry_width(&e.0);
        if used + w > room || rows.is_empty() {
            rows.push(Vec::new());
            used = 0;
        }
        used += w;
        if let Some(r) = rows.last_mut() {
            r.push(e.clone());
        }
    }
    rows
}

type Area<'b> = DrawingArea<SVGBackend<'b>, Shift>;
type DrawResult = Result<(), Box<dyn std::error::Error>>;

/// Draws `shape` centred on the pixel `at`.
fn shape_at(area: &Area, at: (i32, i32), shape: Shape, color: RGBColor) -> DrawResult {
    match shape {
        Shape::Dot => area.draw(&Circle::new(at, 4, color.filled()))?,
        Shape::Triangle => area.draw(&TriangleMarker::new(at, 5, color.filled()))?,
        Shape::Ring => area.draw(&Circle::new(at, 6, color.stroke_width(2)))?,
    }
    Ok(())
}

/// Draws the legend rows on `area` (the strip below the plot), left-aligned with the plot.
fn draw_legend(area: &Area, rows: &[Vec<(String, Key)>]) -> DrawResult {
    let font = ("sans-serif", LEGEND_FONT)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Left, VPos::Center));
    for (r, row) in rows.iter().enumerate() {
        let y = (LEGEND_ROW / 2 + r as u32 * LEGEND_ROW) as i32;
        let mut x = (MARGIN + 4) as i32;
        for (name, key) in row {
            match *key {
                Key::Line(color, dashed) => {
                    let style = color.stroke_width(2);
                    if dashed {
                        area.draw(&PathElement::new(vec![(x, y), (x + 7, y)], style))?;
                        area.draw(&PathElement::new(vec![(x + 15, y), (x + 22, y)], style))?;
                        shape_at(area, (x + 11, y), Shape::Triangle, color)?;
                    } else {
                        area.draw(&PathElement::new(vec![(x, y), (x + 22, y)], style))?;
                        shape_at(area, (x + 11, y), Shape::Dot, color)?;
                    }
                }
                Key::Rule(color, dashed) => {
                    let style = color.stroke_width(if dashed { 1 } else { 2 });
                    if dashed {
                        for x0 in [x, x + 8, x + 16] {
                            area.draw(&PathElement::new(vec![(x0, y), (x0 + 5, y)], style))?;
                        }
                    } else {
                        area.draw(&PathElement::new(vec![(x, y), (x + 22, y)], style))?;
                    }
                }
                Key::Mark(shape, color) => shape_at(area, (x + 11, y), shape, color)?,
                Key::Bar(color, alpha) => area.draw(&Rectangle::new(
                    [(x + 3, y - 6), (x + 19, y + 6)],
                    color.mix(alpha).filled(),
                ))?,
            }
            area.draw(&Text::new(name.clone(), (x + 30, y), font.clone()))?;
            x += entry_width(name) as i32;
        }
    }
    Ok(())
}

/// Draws `draw` on the plot area of a fresh SVG canvas, `legend` below it, and returns the
/// document.
fn svg(legend: &[(String, Key)], draw: impl FnOnce(&Area) -> DrawResult) -> Result<String> {
    let rows = legend_rows(legend);
    let height = SIZE.1 + rows.len() as u32 * LEGEND_ROW + 6;
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (SIZE.0, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
        let (plot, below) = root.split_vertically(SIZE.1);
        draw(&plot).map_err(|e| anyhow!("drawing a chart: {e}"))?;
        draw_legend(&below, &rows).map_err(|e| anyhow!("drawing a legend: {e}"))?;
        root.present().map_err(|e| anyhow!("{e}"))?;
    }
    Ok(out)
}

/// A y range around `values` with a little room, clamped to `limits` when given.
pub fn padded(values: impl Iterator<Item = f64>, limits: Option<Range<f64>>) -> Range<f64> {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
    let pad = ((hi - lo) * 0.1).max(1e-3);
    let (mut lo, mut hi) = (lo - pad, hi + pad);
    if let Some(l) = limits {
        lo = lo.max(l.start);
        hi = hi.min(l.end);
    }
    lo..hi
}

type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// The chart frame every figure shares: caption, axes, tick labels with separators.
fn frame<'a, 'b>(
    area: &'a Area<'b>,
    caption: &str,
    x: Range<f64>,
    y: Range<f64>,
    labels: (&str, &str),
    x_ticks: Option<usize>,
) -> Result<Chart<'a, 'b>, Box<dyn std::error::Error>> {
    let (x_span, y_span) = (x.end - x.start, y.end - y.start);
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(MARGIN)
        .x_label_area_size(X_LABELS)
        .y_label_area_size(Y_LABELS)
        .build_cartesian_2d(x, y)?;
    let x_fmt = move |v: &f64| tick(*v, x_span);
    let whole = |v: &f64| match (v - v.round()).abs() < 1e-6 {
        true => group(&format!("{v:.0}")),
        false => String::new(),
    };
    let y_fmt = move |v: &f64| tick(*v, y_span);
    let mut mesh = chart.configure_mesh();
    mesh.x_desc(labels.0)
        .y_desc(labels.1)
        .y_label_formatter(&y_fmt)
        .light_line_style(WHITE);
    match x_ticks {
        // Whole numbers only (epochs), at most a dozen.
        Some(n) => mesh.x_labels(n).x_label_formatter(&whole),
        None => mesh.x_label_formatter(&x_fmt),
    };
    mesh.draw()?;
    Ok(chart)
}

/// The marker of a line: dots for solid lines, triangles for dashed ones.
fn line_shape(dashed: bool) -> Shape {
    if dashed { Shape::Triangle } else { Shape::Dot }
}

/// Per-epoch lines (x: epoch).
pub fn epochs(title: &str, y_label: &str, series: &[Series], y: Range<f64>) -> Result<String> {
    let last = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(1.0, f64::max);
    let legend: Vec<(String, Key)> = series
        .iter()
        .map(|s| (s.name.clone(), Key::Line(s.color, s.dashed)))
        .collect();
    svg(&legend, |area| {
        let ticks = (last as usize + 1).min(12);
        let mut chart = frame(
            area,
            title,
            0.8..last + 0.2,
            y,
            ("epoch", y_label),
            Some(ticks),
        )?;
        for s in series {
            let style = s.color.stroke_width(2);
            if s.dashed {
                chart.draw_series(DashedLineSeries::new(s.points.clone(), 6, 4, style))?;
            } else {
                chart.draw_series(LineSeries::new(s.points.clone(), style))?;
            }
            let fill = s.color.filled();
            match line_shape(s.dashed) {
                Shape::Triangle => {
                    chart.draw_series(s.points.iter().map(|&p| TriangleMarker::new(p, 5, fill)))?
                }
                _ => chart.draw_series(s.points.iter().map(|&p| Circle::new(p, 3, fill)))?,
            };
        }
        Ok(())
    })
}

/// A point marked on the precision-recall curve.
pub struct Marker {
    pub name: String,
    pub point: CurvePoint,
}

/// Recall below which a strong model's curve is a flat line at the top: the chart starts
/// there when it is high, so the bend and the markers get the width.
const ZOOM_FROM: f64 = 0.8;

/// What the precision-recall chart shows: the curve up to its first point of full recall
/// (flagging more after it only lowers precision), zoomed in x to where precision moves when
/// the curve is flat before that, and in y to the shown points and markers.
struct PrView {
    x: Range<f64>,
    y: Range<f64>,
    points: Vec<(f64, f64)>,
    /// The lowest precision left of the zoomed x range, when zoomed.
    hidden: Option<f64>,
}

fn pr_view(points: &[(f64, f64)], marks: &[Marker]) -> PrView {
    let top = points.iter().map(|p| p.0).fold(0.0, f64::max);
    let end = points
        .iter()
        .position(|p| p.0 >= top)
        .map_or(points.len(), |i| i + 1);
    let points = &points[..end];
    // The knee: from recall 0.5 on, the last point before precision falls a point below its
    // level at recall 0.5 (the start, where a few items decide precision, is ignored).
    let knee = points.iter().position(|p| p.0 >= 0.5).map(|from| {
        let level = points[from].1 - 0.01;
        let drop = points[from..].iter().position(|p| p.1 < level);
        match drop {
            Some(0) | None => points[from].0,
            Some(k) => points[from + k - 1].0,
        }
    });
    let marked = marks.iter().map(|m| m.point.recall).fold(1.0, f64::min);
    let lowest = points.iter().map(|p| p.0).fold(1.0, f64::min);
    let start = knee.unwrap_or(0.0).min(marked).max(lowest);
    let x_lo = if start >= ZOOM_FROM || lowest >= ZOOM_FROM {
        let margin = ((top - start) * 0.25).max(0.01);
        ((start - margin) * 100.0).floor() / 100.0
    } else {
        0.0
    };
    let x_lo = x_lo.clamp(0.0, (top - 0.05).max(0.0));
    let hidden = points
        .iter()
        .filter(|p| p.0 < x_lo)
        .map(|p| p.1)
        .reduce(f64::min);
    let mut shown: Vec<(f64, f64)> = points.iter().copied().filter(|p| p.0 >= x_lo).collect();
    let y = padded(
        shown
            .iter()
            .map(|p| p.1)
            .chain(marks.iter().map(|m| m.point.precision)),
        Some(0.0..1.0),
    );
    let y = y.start..(y.end + (y.end - y.start) * 0.03).max(y.start + 1e-3);
    // The line enters from the left edge: the curve interpolated at `x_lo`.
    if let (Some(a), Some(&b)) = (points.iter().rev().find(|p| p.0 < x_lo), shown.first()) {
        let t = (x_lo - a.0) / (b.0 - a.0).max(1e-12);
        let at = a.1 + (b.1 - a.1) * t;
        shown.insert(0, (x_lo, at.clamp(y.start, y.end)));
    }
    let x_hi = top.max(x_lo + 0.05).min(1.0);
    PrView {
        x: x_lo..x_hi + (x_hi - x_lo) * 0.02,
        y,
        points: shown,
        hidden,
    }
}

/// Precision against recall of the positive label as its threshold moves, with markers.
pub fn precision_recall(label: &str, curve: &[CurvePoint], marks: &[Marker]) -> Result<String> {
    // One point per pixel column is all a 460-pixel chart can show.
    let step = (curve.len() / 600).max(1);
    let points: Vec<(f64, f64)> = curve
        .iter()
        .step_by(step)
        .chain(curve.last())
        .map(|p| (p.recall, p.precision))
        .collect();
    let view = pr_view(&points, marks);
    // The first marker (saved or target threshold) a green triangle, the second (p >= 0.5) a
    // black ring around where it sits, so both show when they coincide.
    let styles = [(Shape::Triangle, GREEN), (Shape::Ring, BLACK)];
    let mut legend = vec![("validation split".to_string(), Key::Rule(VALID, false))];
    for (m, &(shape, color)) in marks.iter().zip(styles.iter().cycle()) {
        legend.push((m.name.clone(), Key::Mark(shape, color)));
    }
    svg(&legend, |area| {
        let mut chart = frame(
            area,
            &format!("precision-recall of \u{201c}{label}\u{201d}"),
            view.x.clone(),
            view.y.clone(),
            ("recall", "precision"),
            None,
        )?;
        chart.draw_series(LineSeries::new(view.points.clone(), VALID.stroke_width(2)))?;
        if let Some(p) = view.hidden {
            let note = format!(
                "recall < {}: precision ≥ {} (not shown)",
                tick(view.x.start, 0.1),
                tick(p, 0.01)
            );
            let font = ("sans-serif", 14)
                .into_font()
                .color(&GREY)
                .pos(Pos::new(HPos::Left, VPos::Bottom));
            chart.draw_series([
                EmptyElement::at((view.x.start, view.y.start)) + Text::new(note, (6, -6), font)
            ])?;
        }
        let x_mid = (view.x.start + view.x.end) / 2.0;
        for (i, (m, &(shape, color))) in marks.iter().zip(styles.iter().cycle()).enumerate() {
            let at = (m.point.recall, m.point.precision);
            match shape {
                Shape::Triangle => {
                    chart.draw_series([TriangleMarker::new(at, 6, color.filled())])?
                }
                Shape::Ring => chart.draw_series([Circle::new(at, 8, color.stroke_width(2))])?,
                Shape::Dot => chart.draw_series([Circle::new(at, 4, color.filled())])?,
            };
            // Labels on the roomier side, the first above its marker and the second below, so
            // two markers at one point keep both readable.
            let left = at.0 > x_mid;
            let h = if left { HPos::Right } else { HPos::Left };
            let dx = if left { -10 } else { 10 };
            // The first above its marker and the second below; near the bottom of the plot
            // both go above, one line apart, and near the top both go below.
            let (above, row) = match (at.1 - view.y.start) / (view.y.end - view.y.start) {
                f if f < 0.15 => (true, i as i32),
                f if f > 0.85 => (false, i as i32),
                _ => (i % 2 == 0, 0),
            };
            let (v, dy) = if above {
                (VPos::Bottom, -10 - 14 * row)
            } else {
                (VPos::Top, 10 + 14 * row)
            };
            let font = ("sans-serif", 14)
                .into_font()
                .color(&color)
                .pos(Pos::new(h, v));
            let text = format!("{} ({} flagged)", m.name, thousands(m.point.flagged));
            chart.draw_series([EmptyElement::at(at) + Text::new(text, (dx, dy), font)])?;
        }
        Ok(())
    })
}

/// Bins holding less than this share of the rows are drawn pale: their accuracy is noisy.
const FEW_ROWS: f64 = 0.02;

/// Accuracy against mean confidence per confidence bin; the diagonal is perfect calibration.
/// Each bar is labelled with its row count, and bins with few rows are pale.
pub fn reliability(bins: &[ReliabilityBin]) -> Result<String> {
    let filled: Vec<&ReliabilityBin> = bins.iter().filter(|b| b.count > 0).collect();
    let low = filled.first().map_or(0.0, |b| b.lower);
    let y_low = filled.iter().map(|b| b.accuracy).fold(low, f64::min);
    let rows: usize = filled.iter().map(|b| b.count).sum();
    let few = |b: &ReliabilityBin| (b.count as f64) < rows as f64 * FEW_ROWS;
    let (solid, pale) = (0.55, 0.15);
    let legend = vec![
        ("calibrated".to_string(), Key::Rule(GREY, true)),
        (
            "bin: mean confidence, accuracy".to_string(),
            Key::Mark(Shape::Dot, VALID),
        ),
        ("bar: accuracy, n rows".to_string(), Key::Bar(TRAIN, solid)),
        (
            format!(
                "pale: under {}% of {} rows",
                FEW_ROWS * 100.0,
                thousands(rows)
            ),
            Key::Bar(TRAIN, pale),
        ),
    ];
    svg(&legend, |area| {
        let mut chart = frame(
            area,
            "reliability (validation split)",
            low..1.0,
            y_low..1.0,
            ("confidence (top probability)", "accuracy"),
            None,
        )?;
        chart.draw_series(filled.iter().map(|b| {
            let alpha = if few(b) { pale } else { solid };
            Rectangle::new(
                [(b.lower, y_low), (b.upper, b.accuracy.max(y_low))],
                TRAIN.mix(alpha).filled(),
            )
        }))?;
        chart.draw_series(DashedLineSeries::new(
            vec![(y_low, y_low), (1.0, 1.0)],
            5,
            4,
            GREY.stroke_width(1),
        ))?;
        chart.draw_series(filled.iter().map(|b| {
            let style = if few(b) {
                VALID.mix(0.35).filled()
            } else {
                VALID.filled()
            };
            Circle::new((b.confidence, b.accuracy), 3, style)
        }))?;
        // Counts just inside the top of each bar (above it when the bar is too short), the
        // two rows alternating when bars are too narrow for their labels side by side.
        let plot_px = f64::from(SIZE.0 - 2 * MARGIN - Y_LABELS);
        let plot_py = f64::from(SIZE.1 - 2 * MARGIN - X_LABELS - 24);
        let font = ("sans-serif", 14).into_font().color(&BLACK);
        chart.draw_series(filled.iter().enumerate().map(|(i, b)| {
            let text = format!("n={}", thousands(b.count));
            let width_px = plot_px * (b.upper - b.lower) / (1.0 - low).max(1e-9);
            let narrow = width_px < text.chars().count() as f64 * 7.0 + 4.0;
            let shift = if narrow && i % 2 == 1 { 14 } else { 0 };
            let bar_px = plot_py * (b.accuracy - y_low) / (1.0 - y_low).max(1e-9);
            let inside = bar_px > f64::from(22 + shift);
            let (v, dy) = if inside {
                (VPos::Top, 6 + shift)
            } else {
                (VPos::Bottom, -6 - shift)
            };
            let color: &'static RGBColor = if few(b) { &GREY } else { &BLACK };
            let font = font.color(color).pos(Pos::new(HPos::Center, v));
            let top = b.accuracy.max(y_low);
            EmptyElement::at(((b.lower + b.upper) / 2.0, top)) + Text::new(text, (0, dy), font)
        }))?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::threshold::{for_precision, pr_curve};

    /// The texts of the SVG's `<text>` elements, with their y attributes.
    fn texts(svg: &str) -> Vec<(String, f64)> {
        svg.split("<text")
            .skip(1)
            .map(|t| {
                let y = t.find(" y=\"").unwrap() + 4;
                let len = t[y..].find('"').unwrap();
                let body = &t[t.find('>').unwrap() + 1..t.find("</text>").unwrap()];
                (body.trim().to_string(), t[y..y + len].parse().unwrap())
            })
            .collect()
    }

    /// The y attribute of the `<text>` element that reads `label`.
    fn text_y(svg: &str, label: &str) -> f64 {
        texts(svg)
            .into_iter()
            .find(|t| t.0 == label)
            .unwrap_or_else(|| panic!("no text {label:?} in {svg}"))
            .1
    }

    fn line(f: impl Fn(f64) -> f64) -> Vec<(f64, f64)> {
        (1..=10).map(|e| (e as f64, f(e as f64))).collect()
    }

    fn loss() -> String {
        let series = [
            Series::train("train", line(|e| 0.6 / e)),
            Series::valid("validation", line(|e| 0.1 + 0.5 / e)),
        ];
        epochs("loss", "cross-entropy", &series, 0.0..0.7).unwrap()
    }

    fn quality() -> String {
        let series = [
            Series::train("train accuracy", line(|e| 0.9 + e / 200.0)),
            Series::valid("validation accuracy", line(|e| 0.9 + e / 210.0)),
            Series::train("train macro F1", line(|e| 0.89 + e / 200.0)).dashed(),
            Series::valid("validation macro F1", line(|e| 0.89 + e / 210.0)).dashed(),
        ];
        epochs("accuracy and macro F1", "fraction", &series, 0.85..1.0).unwrap()
    }

    /// A strong classifier's curve over 6,400 rows: precision 1 up to recall about 0.96,
    /// then falling; and its markers (precision 0.99, p >= 0.5).
    fn strong_curve() -> (Vec<CurvePoint>, Vec<Marker>) {
        let n = 3200;
        let mut scores = Vec::new();
        let mut truth = Vec::new();
        for i in 0..n {
            let x = i as f32 / n as f32;
            scores.push(1.0 - 0.5 * x.powi(12));
            truth.push(true);
            scores.push(0.7 * x.powi(8));
            truth.push(false);
        }
        let curve = pr_curve(&scores, &truth);
        let target = for_precision(&curve, 0.99).unwrap();
        let half = *curve
            .iter()
            .take_while(|p| p.threshold >= 0.5)
            .last()
            .unwrap();
        let marks = vec![
            Marker {
                name: "precision ≥ 99.00%".into(),
                point: target,
            },
            Marker {
                name: "p ≥ 0.5".into(),
                point: half,
            },
        ];
        (curve, marks)
    }

    fn bins() -> Vec<ReliabilityBin> {
        let counts = [0, 0, 0, 0, 0, 39, 52, 61, 87, 6161];
        counts
            .iter()
            .enumerate()
            .map(|(i, &count)| {
                let lower = i as f64 / 10.0;
                ReliabilityBin {
                    lower,
                    upper: lower + 0.1,
                    count,
                    confidence: if count > 0 { lower + 0.06 } else { 0.0 },
                    accuracy: if count > 0 { lower + 0.02 } else { 0.0 },
                }
            })
            .collect()
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(6400), "6,400");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(tick(12345.0, 20000.0), "12,345");
        assert_eq!(tick(-1234.5, 1.0), "-1,234.5");
        assert_eq!(tick(0.95, 0.1), "0.95");
        assert_eq!(tick(-0.0001, 1.0), "0.0");
    }

    #[test]
    fn the_four_quality_lines_have_four_colours_and_two_dash_styles() {
        let svg = quality();
        // Okabe-Ito blue, sky blue, vermillion, orange.
        for colour in ["#0072B2", "#56B4E9", "#D55E00", "#E69F00"] {
            assert!(svg.contains(colour), "no {colour}");
        }
        // The loss chart keeps each split's colour.
        let loss = loss();
        assert!(loss.contains("#0072B2") && loss.contains("#D55E00"));
        // Dashed lines are drawn as many short segments; triangles mark the dashed lines.
        assert!(svg.matches("<polygon").count() >= 20, "no triangle markers");
    }

    #[test]
    fn legends_sit_below_the_plot() {
        for (svg, labels) in [
            (loss(), vec!["train", "validation"]),
            (
                quality(),
                vec![
                    "train accuracy",
                    "validation accuracy",
                    "train macro F1",
                    "validation macro F1",
                ],
            ),
        ] {
            for label in labels {
                // Below the x axis and its labels: the plot area ends at SIZE.1 - X_LABELS.
                assert!(text_y(&svg, label) > f64::from(SIZE.1), "{label}");
            }
        }
        let (curve, marks) = strong_curve();
        let pr = precision_recall("clickbait", &curve, &marks).unwrap();
        assert!(text_y(&pr, "validation split") > f64::from(SIZE.1));
    }

    #[test]
    fn a_strong_curve_is_zoomed_to_where_it_bends() {
        let (curve, marks) = strong_curve();
        let points: Vec<(f64, f64)> = curve.iter().map(|p| (p.recall, p.precision)).collect();
        let view = pr_view(&points, &marks);
        assert!(view.x.start >= 0.9 && view.x.start < marks[0].point.recall);
        assert!(view.x.end >= 1.0, "{:?}", view.x);
        assert!(view.y.start > 0.5, "{:?}", view.y);
        assert!(view.hidden.unwrap() >= 0.99);
        for m in &marks {
            assert!(view.x.contains(&m.point.recall) && view.y.contains(&m.point.precision));
        }
        let svg = precision_recall("clickbait", &curve, &marks).unwrap();
        assert!(svg.contains("(not shown)"), "no note on the hidden part");
        assert!(!svg.contains(">0.0</text>") && !svg.contains(">0.00</text>"));
    }

    #[test]
    fn a_weak_curve_keeps_the_whole_recall_axis() {
        let points: Vec<(f64, f64)> = (1..=100)
            .map(|i| (i as f64 / 100.0, 0.9 - 0.4 * i as f64 / 100.0))
            .collect();
        let view = pr_view(&points, &[]);
        assert_eq!(view.x.start, 0.0);
        assert!(view.hidden.is_none());
    }

    #[test]
    fn coinciding_markers_keep_distinct_shapes_and_labels() {
        let (curve, marks) = strong_curve();
        let same = |name: &str| Marker {
            name: name.into(),
            point: marks[0].point,
        };
        let svg = precision_recall("clickbait", &curve, &[same("saved"), same("p ≥ 0.5")]).unwrap();
        let flagged = thousands(marks[0].point.flagged);
        let a = text_y(&svg, &format!("saved ({flagged} flagged)"));
        let b = text_y(&svg, &format!("p ≥ 0.5 ({flagged} flagged)"));
        assert!((a - b).abs() >= 12.0, "labels overlap: {a} {b}");
        // A green triangle and a black ring.
        assert!(svg.contains("#009E73") && svg.contains("<circle"));
    }

    #[test]
    fn reliability_bins_show_their_counts_and_few_rows_are_pale() {
        let svg = reliability(&bins()).unwrap();
        for n in ["n=39", "n=52", "n=61", "n=87", "n=6,161"] {
            text_y(&svg, n);
        }
        assert!(svg.contains("of 6,400 rows"));
        assert!(svg.contains("opacity=\"0.15\""), "no pale bar");
        assert!(svg.contains("opacity=\"0.55\""), "no full bar");
    }

    /// Writes one example of each chart to /tmp/charts-*.svg, to look at.
    #[test]
    #[ignore]
    fn write_examples() {
        let (curve, marks) = strong_curve();
        for (name, svg) in [
            ("loss", loss()),
            ("quality", quality()),
            ("pr", precision_recall("clickbait", &curve, &marks).unwrap()),
            ("reliability", reliability(&bins()).unwrap()),
        ] {
            std::fs::write(format!("/tmp/charts-{name}.svg"), svg).unwrap();
        }
    }
}
