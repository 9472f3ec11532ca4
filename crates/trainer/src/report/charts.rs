//! The report's charts, drawn with plotters' SVG backend into strings that the page inlines
//! (no files beside it, no network, text left to the browser's fonts).

use std::ops::Range;

use anyhow::{Result, anyhow};
use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use crate::calibration::ReliabilityBin;
use crate::threshold::CurvePoint;

const SIZE: (u32, u32) = (460, 320);
const TRAIN: RGBColor = RGBColor(31, 119, 180);
const VALID: RGBColor = RGBColor(214, 39, 40);
const MARK: RGBColor = RGBColor(44, 160, 44);

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

    /// The same line drawn dashed (a second figure of the same split).
    pub fn dashed(mut self) -> Self {
        self.dashed = true;
        self
    }
}

/// Draws `draw` on a fresh SVG canvas and returns the document.
fn svg(
    draw: impl FnOnce(&DrawingArea<SVGBackend, Shift>) -> Result<(), Box<dyn std::error::Error>>,
) -> Result<String> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
        draw(&root).map_err(|e| anyhow!("drawing a chart: {e}"))?;
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

/// Draws the chart's legend at `at`, on a translucent white box.
fn legend<'a, 'b: 'a>(
    chart: &mut Chart<'a, 'b>,
    at: SeriesLabelPosition,
) -> Result<(), Box<dyn std::error::Error>> {
    chart
        .configure_series_labels()
        .position(at)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()?;
    Ok(())
}

/// Per-epoch lines (x: epoch).
pub fn epochs(title: &str, y_label: &str, series: &[Series], y: Range<f64>) -> Result<String> {
    let last = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(1.0, f64::max);
    svg(|root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(0.8..last + 0.2, y)?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .y_desc(y_label)
            // At most a dozen ticks, however many epochs (plotters lays out each asked for).
            .x_labels((last as usize + 1).min(12))
            // Whole epochs only.
            .x_label_formatter(&|x| match (x - x.round()).abs() < 1e-6 {
                true => format!("{x:.0}"),
                false => String::new(),
            })
            .light_line_style(WHITE)
            .draw()?;
        for s in series {
            let color = s.color;
            let style = color.stroke_width(2);
            if s.dashed {
                chart.draw_series(DashedLineSeries::new(s.points.clone(), 6, 4, style))?;
            } else {
                chart.draw_series(LineSeries::new(s.points.clone(), style))?;
            }
            chart
                .draw_series(s.points.iter().map(|&p| Circle::new(p, 3, color.filled())))?
                .label(s.name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
        }
        legend(&mut chart, SeriesLabelPosition::LowerRight)?;
        Ok(())
    })
}

/// A point marked on the precision-recall curve.
pub struct Marker {
    pub name: String,
    pub point: CurvePoint,
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
    let y = padded(
        points
            .iter()
            .map(|p| p.1)
            .chain(marks.iter().map(|m| m.point.precision)),
        Some(0.0..1.0),
    );
    let y = y.start..1.0;
    svg(|root| {
        let mut chart = ChartBuilder::on(root)
            .caption(format!("precision-recall of `{label}`"), ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..1.0, y)?;
        chart
            .configure_mesh()
            .x_desc("recall")
            .y_desc("precision")
            .light_line_style(WHITE)
            .draw()?;
        chart
            .draw_series(LineSeries::new(points, VALID.stroke_width(2)))?
            .label("validation split")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], VALID));
        for (i, m) in marks.iter().enumerate() {
            let color = if i == 0 { MARK } else { BLACK };
            let at = (m.point.recall, m.point.precision);
            chart
                .draw_series([Circle::new(at, 5, color.filled())])?
                .label(m.name.as_str())
                .legend(move |(x, y)| Circle::new((x + 9, y), 4, color.filled()));
        }
        legend(&mut chart, SeriesLabelPosition::LowerLeft)?;
        Ok(())
    })
}

/// Accuracy against mean confidence per confidence bin; the diagonal is perfect calibration.
pub fn reliability(bins: &[ReliabilityBin]) -> Result<String> {
    let low = bins.iter().find(|b| b.count > 0).map_or(0.0, |b| b.lower);
    svg(|root| {
        let mut chart = ChartBuilder::on(root)
            .caption("reliability (validation split)", ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(low..1.0, low..1.0)?;
        chart
            .configure_mesh()
            .x_desc("confidence (top probability)")
            .y_desc("accuracy")
            .light_line_style(WHITE)
            .draw()?;
        chart.draw_series(bins.iter().filter(|b| b.count > 0).map(|b| {
            Rectangle::new(
                [(b.lower, low), (b.upper, b.accuracy.max(low))],
                TRAIN.mix(0.55).filled(),
            )
        }))?;
        chart
            .draw_series(DashedLineSeries::new(
                vec![(low, low), (1.0, 1.0)],
                5,
                4,
                BLACK.mix(0.6).stroke_width(1),
            ))?
            .label("calibrated")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK.mix(0.6)));
        chart
            .draw_series(
                bins.iter()
                    .filter(|b| b.count > 0)
                    .map(|b| Circle::new((b.confidence, b.accuracy), 3, VALID.filled())),
            )?
            .label("bin: mean confidence, accuracy")
            .legend(|(x, y)| Circle::new((x + 9, y), 3, VALID.filled()));
        legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
        Ok(())
    })
}
