//! The size-vs-quality plot of a release: one PNG, two panels side by side, file size against
//! mean KL divergence (log scale) and against perplexity, each point labelled with its type.
//!
//! Drawn by plotters into an in-memory RGB buffer with DejaVu Sans embedded (no system fonts),
//! encoded by the `png` crate and written whole through [`crate::output_files::write_whole`].
//! The same points always give the same bytes.

use crate::error::{Error, Result};
use ab_glyph::{Font, FontRef, ScaleFont};
use plotters::coord::ranged1d::ValueFormatter;
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters_backend::text_anchor::{HPos, VPos};
use plotters_backend::{
    BackendColor, BackendCoord, BackendStyle, BackendTextStyle, DrawingErrorKind,
};
use std::path::Path;
use std::sync::OnceLock;

/// One quantization of a release, as its quality table row has it.
#[derive(Debug, Clone, PartialEq)]
pub struct QualityPoint {
    /// The type's name, e.g. `Q4_K_M`.
    pub label: String,
    /// File size in bytes (all files of a split set together).
    pub bytes: u64,
    pub bits_per_weight: f64,
    /// Mean KL divergence against the reference; `None` for the reference itself.
    pub kld_mean: Option<f64>,
    pub perplexity: f64,
    /// A file whose types smelt chose for a size (`--target-size`/`--target-bpw`) rather than
    /// one of llama.cpp's fixed mixes: these are joined into a curve, in their own colour.
    pub optimised: bool,
}

/// Width and height of the PNG in pixels.
pub const PLOT_SIZE: (u32, u32) = (1200, 600);

/// The family the plot's text is drawn in, registered with plotters from the embedded font.
const FONT: &str = "sans-serif";
/// The colour of the points (both panels).
const POINT: RGBColor = RGBColor(31, 119, 180);
/// The colour of the optimised files' curve and points.
const CURVE: RGBColor = RGBColor(255, 127, 14);
/// The reference perplexity's dashed line.
const REFERENCE: RGBColor = RGBColor(214, 39, 40);
const LABEL: RGBColor = RGBColor(40, 40, 40);
const POINT_RADIUS: i32 = 4;

/// Mean KL divergences at or below zero (a type as exact as the reference, or rounding noise
/// of a few ulps below zero) cannot sit on a log axis: they are drawn at this floor instead.
const KLD_FLOOR: f64 = 1e-6;

/// Writes the size-vs-quality plot of `points` to `target` (PNG, [`PLOT_SIZE`]): file size
/// (MiB or GiB, chosen by the largest file) against mean KLD on a log scale, the points
/// without a KLD (the reference) left out of that panel; and against perplexity, with
/// `reference_ppl` as a dashed horizontal line when given. Each point is labelled with its
/// type and bits per weight. A value that is NaN or infinite leaves its point out of that
/// panel. Written through an exclusive temporary file beside `target`, renamed into place.
pub fn write_quality_png(
    target: &Path,
    title: &str,
    points: &[QualityPoint],
    reference_ppl: Option<f64>,
) -> Result<()> {
    let bytes = render(title, points, reference_ppl).map_err(|e| match e {
        RenderError::Nothing => Error::Invalid(format!(
            "{}: nothing to plot: no point has a finite perplexity or mean KLD",
            target.display()
        )),
        RenderError::Draw(msg) => Error::io(
            target,
            std::io::Error::other(format!("cannot draw the plot: {msg}")),
        ),
    })?;
    crate::output_files::write_whole(target, &bytes)
}

#[derive(Debug)]
enum RenderError {
    Nothing,
    Draw(String),
}

fn draw_err(e: impl std::fmt::Display) -> RenderError {
    RenderError::Draw(e.to_string())
}

/// DejaVu Sans, parsed once per process and registered as plotters' `sans-serif` (plotters
/// measures text with it, [`Canvas`] draws it; every style falls back to this one).
fn font() -> std::result::Result<&'static FontRef<'static>, RenderError> {
    static FONT_REF: OnceLock<Option<FontRef<'static>>> = OnceLock::new();
    FONT_REF
        .get_or_init(|| {
            let bytes = dejavu::sans::regular();
            plotters::style::register_font(FONT, FontStyle::Normal, bytes).ok()?;
            FontRef::try_from_slice(bytes).ok()
        })
        .as_ref()
        .ok_or_else(|| RenderError::Draw("the embedded DejaVu font was refused".into()))
}

/// Where the baseline sits in plotters' layout box of a line of text (0.81 of the font size
/// high, from the top), as a fraction of the size: DejaVu's capitals reach 0.63 of the size
/// above the baseline and its underscore 0.2 below, so this centres `Q4_K_M (4.92)` in the box.
const BASELINE: f64 = 0.62;

/// A [`BitMapBackend`] that draws text itself. plotters 0.3.7's ab_glyph text places each glyph
/// without its left side bearing (`4.92` comes out as `4. 92`); here each glyph goes where the
/// font says. Everything else, text measurement included, is the bitmap backend's.
struct Canvas<'a> {
    inner: BitMapBackend<'a>,
    font: &'static FontRef<'static>,
}

type CanvasError = DrawingErrorKind<<BitMapBackend<'static> as DrawingBackend>::ErrorType>;

impl DrawingBackend for Canvas<'_> {
    type ErrorType = <BitMapBackend<'static> as DrawingBackend>::ErrorType;

    fn get_size(&self) -> (u32, u32) {
        self.inner.get_size()
    }

    fn ensure_prepared(&mut self) -> std::result::Result<(), CanvasError> {
        self.inner.ensure_prepared()
    }

    fn present(&mut self) -> std::result::Result<(), CanvasError> {
        self.inner.present()
    }

    fn draw_pixel(
        &mut self,
        point: BackendCoord,
        color: BackendColor,
    ) -> std::result::Result<(), CanvasError> {
        self.inner.draw_pixel(point, color)
    }

    fn draw_line<S: BackendStyle>(
        &mut self,
        from: BackendCoord,
        to: BackendCoord,
        style: &S,
    ) -> std::result::Result<(), CanvasError> {
        self.inner.draw_line(from, to, style)
    }

    fn draw_rect<S: BackendStyle>(
        &mut self,
        upper_left: BackendCoord,
        bottom_right: BackendCoord,
        style: &S,
        fill: bool,
    ) -> std::result::Result<(), CanvasError> {
        self.inner.draw_rect(upper_left, bottom_right, style, fill)
    }

    fn blit_bitmap(
        &mut self,
        pos: BackendCoord,
        size: (u32, u32),
        src: &[u8],
    ) -> std::result::Result<(), CanvasError> {
        self.inner.blit_bitmap(pos, size, src)
    }

    /// The default `draw_text` (anchor, rotation, plotters' layout box), with the glyphs laid
    /// out and rasterized by ab_glyph directly.
    fn draw_text<S: BackendTextStyle>(
        &mut self,
        text: &str,
        style: &S,
        pos: BackendCoord,
    ) -> std::result::Result<(), CanvasError> {
        let color = style.color();
        if color.alpha == 0.0 {
            return Ok(());
        }
        let ((min_x, min_y), (max_x, max_y)) = style
            .layout_box(text)
            .map_err(|e| DrawingErrorKind::FontError(Box::new(e)))?;
        let dx = match style.anchor().h_pos {
            HPos::Left => 0,
            HPos::Right => -(max_x - min_x),
            HPos::Center => -(max_x - min_x) / 2,
        };
        let dy = match style.anchor().v_pos {
            VPos::Top => 0,
            VPos::Center => -(max_y - min_y) / 2,
            VPos::Bottom => -(max_y - min_y),
        };
        let trans = style.transform();
        let mut result = Ok(());
        rasterize(self.font, style.size(), text, |x, y, coverage| {
            let (x, y) = trans.transform(x + dx - min_x, y + dy - min_y);
            let c = BackendColor {
                alpha: color.alpha * f64::from(coverage),
                rgb: color.rgb,
            };
            if result.is_ok() {
                result = self.inner.draw_pixel((pos.0 + x, pos.1 + y), c);
            }
        });
        result
    }
}

/// Calls `put(x, y, coverage)` for each pixel of `text` in `font` at `size` pixels, the line's
/// top-left corner at (0, 0): advances and kerning as plotters measures them, each glyph at
/// its own bounds.
fn rasterize(font: &FontRef<'static>, size: f64, text: &str, mut put: impl FnMut(i32, i32, f32)) {
    let scaled = font.as_scaled(size as f32);
    let baseline = (size * BASELINE) as f32;
    let mut caret = 0f32;
    let mut prev = None;
    for c in text.chars() {
        let id = scaled.glyph_id(c);
        if let Some(p) = prev {
            caret += scaled.kern(p, id);
        }
        let glyph = id.with_scale_and_position(scaled.scale(), ab_glyph::point(caret, baseline));
        if let Some(outline) = font.outline_glyph(glyph) {
            let b = outline.px_bounds();
            let (x0, y0) = (b.min.x as i32, b.min.y as i32);
            outline.draw(|x, y, coverage| put(x0 + x as i32, y0 + y as i32, coverage));
        }
        caret += scaled.h_advance(id);
        prev = Some(id);
    }
}

/// The x axis unit: MiB, or GiB once the largest file reaches 1 GiB.
fn size_unit(max_bytes: u64) -> (f64, &'static str) {
    if max_bytes >= 1 << 30 {
        ((1u64 << 30) as f64, "GiB")
    } else {
        ((1u64 << 20) as f64, "MiB")
    }
}

/// `lo..hi` widened by `frac` of its span on each side; a single value (or equal values) gets
/// a span of its own, so that a range is never empty.
fn padded(lo: f64, hi: f64, frac: f64) -> (f64, f64) {
    let span = hi - lo;
    if span > 0.0 {
        (lo - span * frac, hi + span * frac)
    } else {
        let half = if lo != 0.0 { lo.abs() * 0.1 } else { 1.0 };
        (lo - half, hi + half)
    }
}

/// A log axis from whole decade to whole decade around `lo..hi`, with some room on both
/// sides, two decades at least. plotters ticks the decades inside the range, finding the first
/// as `10^ceil(log10(lo))`: the ends are moved out by a hair so that rounding cannot push a
/// decade at either end off its axis. (Over a single decade it would add steps between the
/// decades and draw the top one twice.)
fn log_range(lo: f64, hi: f64) -> (f64, f64) {
    let mut a = 10f64.powf((lo / 1.5).log10().floor());
    let mut b = 10f64.powf((hi * 1.5).log10().ceil());
    if b < a * 99.0 {
        // One decade: add the one on the side the points are nearer to, so they stay central.
        if (lo * hi).sqrt() < (a * b).sqrt() {
            a /= 10.0;
        } else {
            b *= 10.0;
        }
    }
    (a * (1.0 - 1e-9), b * (1.0 + 1e-9))
}

/// A tick value, short: at most 3 significant digits, trailing zeros dropped; exponent form
/// outside 0.01..10000.
fn tick(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let e = v.abs().log10().floor();
    if (-2.0..=3.0).contains(&e) {
        let decimals = (2.0 - e).max(0.0) as usize;
        let s = format!("{v:.decimals$}");
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    } else {
        format!("{v:.1e}").replace(".0e", "e")
    }
}

/// A tick of a linear axis spanning `span`: as many decimals as tell its ticks apart (a
/// perplexity axis from 523.8 to 525.2 reads 524.0, 524.5, not 524, 524).
fn linear_tick(v: f64, span: f64) -> String {
    if !(span.is_finite() && span > 0.0 && v.abs() < 1e4) {
        return tick(v);
    }
    // Ticks come about a tenth of the span apart: the decimals that step needs.
    let decimals = (-(span / 10.0).log10().floor()).clamp(0.0, 6.0) as usize;
    format!("{v:.decimals$}")
}

/// A pixel rectangle, `x0..x1` by `y0..y1`.
#[derive(Clone, Copy)]
struct Rect {
    x0: i32,
    y0: i32,
    x1: i32,
    y1: i32,
}

impl Rect {
    fn overlap(&self, o: &Rect) -> i64 {
        let w = (self.x1.min(o.x1) - self.x0.max(o.x0)).max(0) as i64;
        let h = (self.y1.min(o.y1) - self.y0.max(o.y0)).max(0) as i64;
        w * h
    }

    /// How much of `self` lies outside `area`.
    fn outside(&self, area: &Rect) -> i64 {
        let all = (self.x1 - self.x0) as i64 * (self.y1 - self.y0) as i64;
        all - self.overlap(area)
    }
}

/// What a panel has drawn before its labels: text and lines they should keep clear of.
#[derive(Default)]
struct Drawn {
    texts: Vec<Rect>,
    lines: Vec<Rect>,
}

/// Where to put each label (its top-left pixel): the first of a few positions around its point
/// that stays inside the plotting area and clear of the other labels, the points and what is
/// already drawn (`texts`, `lines`), else the position that collides least. Greedy, in the
/// order given, so it is deterministic.
fn place_labels(
    marks: &[(i32, i32)],
    sizes: &[(i32, i32)],
    area: Rect,
    drawn: &Drawn,
) -> Vec<(i32, i32)> {
    let gap = POINT_RADIUS + 3;
    // The points themselves: no candidate position overlaps its own point.
    let dots: Vec<Rect> = marks
        .iter()
        .map(|&(x, y)| Rect {
            x0: x - POINT_RADIUS,
            y0: y - POINT_RADIUS,
            x1: x + POINT_RADIUS + 1,
            y1: y + POINT_RADIUS + 1,
        })
        .collect();
    let mut placed: Vec<Rect> = drawn.texts.clone();
    for (&(x, y), &(w, h)) in marks.iter().zip(sizes) {
        // Beside, then diagonally, above and below; then the same farther out.
        let mut candidates = vec![
            (x + gap, y - h / 2),
            (x - gap - w, y - h / 2),
            (x + gap, y - gap - h),
            (x + gap, y + gap),
            (x - gap - w, y - gap - h),
            (x - gap - w, y + gap),
            (x - w / 2, y - gap - h),
            (x - w / 2, y + gap),
        ];
        for k in 1..=3 {
            let d = k * (h + 2);
            candidates.extend([
                (x + gap, y - h / 2 - d),
                (x + gap, y - h / 2 + d),
                (x - gap - w, y - h / 2 - d),
                (x - gap - w, y - h / 2 + d),
                (x - w / 2, y - gap - h - d),
                (x - w / 2, y + gap + d),
            ]);
        }
        let boxed = |(cx, cy): (i32, i32)| Rect {
            x0: cx,
            y0: cy,
            x1: cx + w,
            y1: cy + h,
        };
        // Leaving the plot is worst, then covering text, then a point, then a line.
        let cost = |r: &Rect| -> i64 {
            let sum = |rs: &[Rect]| rs.iter().map(|o| r.overlap(o)).sum::<i64>();
            r.outside(&area) * 8 + sum(&placed) * 4 + sum(&dots) * 2 + sum(&drawn.lines)
        };
        // The first free candidate, else the least bad one (the first of equals).
        let mut best = boxed(candidates[0]);
        let mut best_cost = i64::MAX;
        for &c in &candidates {
            let r = boxed(c);
            let k = cost(&r);
            if k < best_cost {
                (best, best_cost) = (r, k);
                if k == 0 {
                    break;
                }
            }
        }
        placed.push(best);
    }
    placed[drawn.texts.len()..]
        .iter()
        .map(|r| (r.x0, r.y0))
        .collect()
}

/// One panel's points: x (in the size unit), y, label, optimised (drawn on the curve).
type Series = Vec<(f64, f64, String, bool)>;

fn label_of(p: &QualityPoint) -> String {
    if p.bits_per_weight.is_finite() {
        format!("{} ({:.2})", p.label, p.bits_per_weight)
    } else {
        p.label.clone()
    }
}

/// The PNG bytes of the plot.
fn render(
    title: &str,
    points: &[QualityPoint],
    reference_ppl: Option<f64>,
) -> std::result::Result<Vec<u8>, RenderError> {
    let reference_ppl = reference_ppl.filter(|r| r.is_finite());
    let max_bytes = points.iter().map(|p| p.bytes).max().unwrap_or(0);
    let (unit, unit_name) = size_unit(max_bytes);
    let kld: Series = points
        .iter()
        .filter_map(|p| {
            let k = p.kld_mean.filter(|k| k.is_finite())?;
            Some((
                p.bytes as f64 / unit,
                k.max(KLD_FLOOR),
                label_of(p),
                p.optimised,
            ))
        })
        .collect();
    let ppl: Series = points
        .iter()
        .filter(|p| p.perplexity.is_finite())
        .map(|p| {
            (
                p.bytes as f64 / unit,
                p.perplexity,
                label_of(p),
                p.optimised,
            )
        })
        .collect();
    if kld.is_empty() && ppl.is_empty() {
        return Err(RenderError::Nothing);
    }
    let font = font()?;

    // One size range for both panels, so that they line up.
    let xs = kld.iter().chain(&ppl).map(|p| p.0);
    let (x_lo, x_hi) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
        (lo.min(x), hi.max(x))
    });
    let (x_lo, x_hi) = padded(x_lo, x_hi, 0.08);
    let x_lo = x_lo.max(0.0);

    let (w, h) = PLOT_SIZE;
    let mut buf = vec![0u8; w as usize * h as usize * 3];
    {
        let root = Canvas {
            inner: BitMapBackend::with_buffer(&mut buf, (w, h)),
            font,
        }
        .into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let body = root
            .titled(title, (FONT, 24).into_font().color(&BLACK))
            .map_err(draw_err)?;
        // What the numbers in the labels are, at the right end of the title's line, and what
        // the curve is when there is one.
        let note = if points.iter().any(|p| p.optimised) {
            "labels: type (bits per weight); curve: types chosen for a size"
        } else {
            "labels: type (bits per weight)"
        };
        let style = (FONT, 13).into_font().color(&LABEL);
        let (tw, _) = root.estimate_text_size(note, &style).map_err(draw_err)?;
        root.draw(&Text::new(note, (w as i32 - tw as i32 - 12, 12), style))
            .map_err(draw_err)?;
        let panels = body.split_evenly((1, 2));
        let x_desc = format!("file size ({unit_name})");

        // Left: mean KLD, log scale.
        let (k_lo, k_hi) = kld
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
                (lo.min(p.1), hi.max(p.1))
            });
        let (k_lo, k_hi) = if kld.is_empty() {
            log_range(1e-3, 1e-2) // an empty panel, 1e-4 to 0.1
        } else {
            log_range(k_lo, k_hi)
        };
        let mut chart = chart_on(&panels[0])
            .build_cartesian_2d(x_lo..x_hi, (k_lo..k_hi).log_scale())
            .map_err(draw_err)?;
        mesh(&mut chart, &x_desc, "mean KLD (log)", None)?;
        draw_points(
            &root,
            &mut chart,
            &kld,
            "no KLD measured",
            &Drawn::default(),
        )?;

        // Right: perplexity, the reference as a dashed line.
        let (p_lo, p_hi) = ppl
            .iter()
            .map(|p| p.1)
            .chain(reference_ppl)
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), y| {
                (lo.min(y), hi.max(y))
            });
        let (p_lo, p_hi) = if p_lo.is_finite() {
            padded(p_lo, p_hi, 0.1)
        } else {
            (0.0, 1.0)
        };
        let mut chart = chart_on(&panels[1])
            .build_cartesian_2d(x_lo..x_hi, p_lo..p_hi)
            .map_err(draw_err)?;
        mesh(&mut chart, &x_desc, "perplexity", Some(p_hi - p_lo))?;
        let mut drawn = Drawn::default();
        if let Some(r) = reference_ppl {
            let style = ShapeStyle {
                color: REFERENCE.to_rgba(),
                filled: false,
                stroke_width: 2,
            };
            chart
                .draw_series(DashedLineSeries::new([(x_lo, r), (x_hi, r)], 10, 6, style))
                .map_err(draw_err)?;
            let (xs, ys) = chart.plotting_area().get_pixel_range();
            let (_, py) = chart.backend_coord(&(x_hi, r));
            drawn.lines.push(Rect {
                x0: xs.start,
                y0: py - 2,
                x1: xs.end,
                y1: py + 3,
            });
            let text = format!("reference {r:.2}");
            let font = (FONT, 14).into_font().color(&REFERENCE);
            let (tw, th) = root.estimate_text_size(&text, &font).map_err(draw_err)?;
            let (tw, th) = (tw as i32, th as i32);
            // Above the line at its right end, or below it at the top of the panel.
            let tx = xs.end - tw - 6;
            let ty = if py - th - 4 >= ys.start {
                py - th - 4
            } else {
                py + 5
            };
            drawn.texts.push(Rect {
                x0: tx,
                y0: ty,
                x1: tx + tw,
                y1: ty + th,
            });
            root.draw(&Text::new(text, (tx, ty), font))
                .map_err(draw_err)?;
        }
        draw_points(&root, &mut chart, &ppl, "no perplexity measured", &drawn)?;
        root.present().map_err(draw_err)?;
    }
    encode_png(&buf, w, h)
}

fn chart_on<'a, 'b>(area: &'a DrawingArea<Canvas<'b>, Shift>) -> ChartBuilder<'a, 'b, Canvas<'b>> {
    let mut c = ChartBuilder::on(area);
    c.margin(12)
        .margin_right(24)
        .x_label_area_size(48)
        .y_label_area_size(70);
    c
}

fn mesh<'b, Y>(
    chart: &mut ChartContext<'_, Canvas<'b>, Cartesian2d<RangedCoordf64, Y>>,
    x_desc: &str,
    y_desc: &str,
    linear_y_span: Option<f64>,
) -> std::result::Result<(), RenderError>
where
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_label_formatter(&|v| tick(*v))
        .y_label_formatter(&|v| match linear_y_span {
            Some(span) => linear_tick(*v, span),
            None => tick(*v),
        })
        .label_style((FONT, 13).into_font().color(&BLACK))
        .axis_desc_style((FONT, 16).into_font().color(&BLACK))
        .light_line_style(RGBColor(235, 235, 235))
        .bold_line_style(RGBColor(210, 210, 210))
        .draw()
        .map_err(draw_err)
}

/// The points of one panel as filled circles, each labelled; `empty` written in the middle of
/// a panel without points.
fn draw_points<'b, Y>(
    root: &DrawingArea<Canvas<'b>, Shift>,
    chart: &mut ChartContext<'_, Canvas<'b>, Cartesian2d<RangedCoordf64, Y>>,
    series: &Series,
    empty: &str,
    drawn: &Drawn,
) -> std::result::Result<(), RenderError>
where
    Y: Ranged<ValueType = f64>,
{
    let (xs, ys) = chart.plotting_area().get_pixel_range();
    let font = (FONT, 13).into_font().color(&LABEL);
    if series.is_empty() {
        let (tw, th) = root.estimate_text_size(empty, &font).map_err(draw_err)?;
        let at = (
            (xs.start + xs.end - tw as i32) / 2,
            (ys.start + ys.end - th as i32) / 2,
        );
        return root
            .draw(&Text::new(empty.to_string(), at, font))
            .map_err(draw_err);
    }
    let mut curve: Vec<(f64, f64)> = series.iter().filter(|p| p.3).map(|p| (p.0, p.1)).collect();
    curve.sort_by(|a, b| a.0.total_cmp(&b.0));
    chart
        .draw_series(LineSeries::new(
            curve,
            ShapeStyle::from(&CURVE).stroke_width(2),
        ))
        .map_err(draw_err)?;
    chart
        .draw_series(series.iter().map(|p| {
            let colour = if p.3 { CURVE } else { POINT };
            Circle::new((p.0, p.1), POINT_RADIUS, colour.filled())
        }))
        .map_err(draw_err)?;
    let marks: Vec<(i32, i32)> = series
        .iter()
        .map(|p| chart.backend_coord(&(p.0, p.1)))
        .collect();
    let sizes = series
        .iter()
        .map(|p| {
            // A pixel of margin around the measured box.
            let (w, h) = root.estimate_text_size(&p.2, &font).map_err(draw_err)?;
            Ok((w as i32 + 2, h as i32 + 2))
        })
        .collect::<std::result::Result<Vec<_>, RenderError>>()?;
    let area = Rect {
        x0: xs.start,
        y0: ys.start,
        x1: xs.end,
        y1: ys.end,
    };
    for (p, at) in series.iter().zip(place_labels(&marks, &sizes, area, drawn)) {
        root.draw(&Text::new(p.2.clone(), (at.0 + 1, at.1 + 1), font.clone()))
            .map_err(draw_err)?;
    }
    Ok(())
}

/// RGB8 `buf` as PNG bytes (default compression: the same pixels give the same bytes).
fn encode_png(buf: &[u8], w: u32, h: u32) -> std::result::Result<Vec<u8>, RenderError> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().map_err(draw_err)?;
    writer.write_image_data(buf).map_err(draw_err)?;
    writer.finish().map_err(draw_err)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(label: &str, mib: f64, kld: Option<f64>, ppl: f64) -> QualityPoint {
        QualityPoint {
            label: label.into(),
            bytes: (mib * 1048576.0) as u64,
            bits_per_weight: mib / 270.0 * 16.0,
            kld_mean: kld,
            perplexity: ppl,
            optimised: false,
        }
    }

    /// A release of a 135M model: the reference and a ladder of types.
    fn release() -> Vec<QualityPoint> {
        vec![
            point("F16", 258.0, None, 17.31),
            point("Q8_0", 138.0, Some(0.0009), 17.33),
            point("Q6_K", 110.0, Some(0.0041), 17.38),
            point("Q5_K_M", 98.0, Some(0.0112), 17.52),
            point("Q5_0", 95.0, Some(0.0131), 17.60),
            point("Q4_K_M", 88.0, Some(0.0337), 17.95),
            point("Q4_K_S", 85.0, Some(0.0402), 18.07),
            point("Q4_0", 83.0, Some(0.0521), 18.31),
            point("IQ4_XS", 80.0, Some(0.0389), 18.02),
            point("Q3_K_L", 77.0, Some(0.0911), 18.90),
            point("Q3_K_M", 74.0, Some(0.1187), 19.41),
            point("Q3_K_S", 69.0, Some(0.2105), 20.77),
            point("IQ3_XXS", 64.0, Some(0.2650), 21.60),
            point("Q2_K", 62.0, Some(0.4551), 24.85),
        ]
    }

    fn decode(bytes: &[u8]) -> (png::OutputInfo, Vec<u8>) {
        let mut reader = png::Decoder::new(std::io::Cursor::new(bytes))
            .read_info()
            .unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        buf.truncate(info.buffer_size());
        (info, buf)
    }

    /// Pixels of exactly `c` in the left and the right half.
    fn count(info: &png::OutputInfo, px: &[u8], c: RGBColor) -> (usize, usize) {
        let w = info.width as usize;
        let mut n = (0, 0);
        for (i, p) in px.chunks_exact(3).enumerate() {
            if p == [c.0, c.1, c.2] {
                if i % w < w / 2 {
                    n.0 += 1;
                } else {
                    n.1 += 1;
                }
            }
        }
        n
    }

    #[test]
    fn a_release_plot_decodes_and_shows_its_points_in_both_panels() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("quality.png");
        write_quality_png(&out, "SmolLM2 135M", &release(), Some(17.31)).unwrap();
        let (info, px) = decode(&std::fs::read(&out).unwrap());
        assert_eq!((info.width, info.height), PLOT_SIZE);
        assert_eq!(info.color_type, png::ColorType::Rgb);
        let colours: std::collections::BTreeSet<&[u8]> = px.chunks_exact(3).collect();
        assert!(colours.len() > 10, "{} colours", colours.len());
        let (left, right) = count(&info, &px, POINT);
        assert!(left > 100 && right > 100, "{left} {right}");
        let (_, dashed) = count(&info, &px, REFERENCE);
        assert!(dashed > 100, "{dashed}");
        // Only the finished file is left in the folder.
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn the_same_points_give_the_same_bytes() {
        let a = render("t", &release(), Some(17.31)).unwrap();
        let b = render("t", &release(), Some(17.31)).unwrap();
        assert!(a == b);
        let dir = tempfile::tempdir().unwrap();
        let (p, q) = (dir.path().join("a.png"), dir.path().join("b.png"));
        write_quality_png(&p, "t", &release(), Some(17.31)).unwrap();
        write_quality_png(&q, "t", &release(), Some(17.31)).unwrap();
        assert!(std::fs::read(&p).unwrap() == std::fs::read(&q).unwrap());
        assert!(std::fs::read(&p).unwrap() == a);
    }

    #[test]
    fn an_error_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("missing").join("quality.png");
        let err = write_quality_png(&out, "t", &release(), None).unwrap_err();
        assert!(err.to_string().contains(&*out.to_string_lossy()), "{err}");
        let none = [point("Q4_0", 80.0, Some(f64::NAN), f64::NAN)];
        let err = write_quality_png(&out, "t", &none, None).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&*out.to_string_lossy()) && msg.contains("nothing to plot"));
        let err = write_quality_png(&out, "t", &[], None).unwrap_err();
        assert!(err.to_string().contains("nothing to plot"), "{err}");
    }

    #[test]
    fn awkward_values_render() {
        let big = |gib: f64| QualityPoint {
            bytes: (gib * 1073741824.0) as u64,
            ..point("Q4_K_M", 0.0, Some(0.03), 6.5)
        };
        let cases: Vec<(Vec<QualityPoint>, Option<f64>)> = vec![
            // A single point, with and without a reference.
            (vec![point("Q4_K_M", 88.0, Some(0.03), 18.0)], None),
            (vec![point("Q4_K_M", 88.0, Some(0.03), 18.0)], Some(17.3)),
            // Only the reference: an empty KLD panel.
            (vec![point("F16", 258.0, None, 17.31)], Some(17.31)),
            // Equal values everywhere.
            (
                vec![
                    point("A", 80.0, Some(0.05), 18.0),
                    point("B", 80.0, Some(0.05), 18.0),
                    point("C", 80.0, Some(0.05), 18.0),
                ],
                Some(18.0),
            ),
            // Zero, negative and NaN KLD, NaN and infinite perplexity, a NaN reference.
            (
                vec![
                    point("F32", 520.0, Some(0.0), 17.3),
                    point("F16", 260.0, Some(-1e-9), 17.3),
                    point("Q8_0", 138.0, Some(f64::NAN), f64::INFINITY),
                    point("Q4_0", 83.0, Some(0.05), f64::NAN),
                    point("Q2_K", 62.0, Some(f64::INFINITY), 25.0),
                ],
                Some(f64::NAN),
            ),
            // Gigabytes, a zero-byte file, a NaN bits per weight.
            (
                vec![
                    big(4.1),
                    big(7.9),
                    QualityPoint {
                        bits_per_weight: f64::NAN,
                        ..big(0.0)
                    },
                ],
                Some(6.1),
            ),
            // Many labels on top of each other.
            (
                (0..40)
                    .map(|i| point(&format!("T{i}"), 80.0 + i as f64 * 0.1, Some(0.05), 18.0))
                    .collect(),
                None,
            ),
        ];
        for (points, reference) in cases {
            let bytes = render("awkward", &points, reference).unwrap();
            let (info, px) = decode(&bytes);
            assert_eq!((info.width, info.height), PLOT_SIZE);
            let (left, right) = count(&info, &px, POINT);
            assert!(left + right > 0, "{points:?}");
        }
    }

    #[test]
    fn optimised_files_are_a_curve_in_their_own_colour() {
        let fixed = release();
        let mut points = fixed.clone();
        for (mib, kld, ppl) in [(74.0, 0.09, 19.0), (88.0, 0.028, 17.8), (98.0, 0.009, 17.5)] {
            points.push(QualityPoint {
                optimised: true,
                ..point(&format!("{mib}M"), mib, Some(kld), ppl)
            });
        }
        let (info, px) = decode(&render("t", &points, Some(17.31)).unwrap());
        let (left, right) = count(&info, &px, CURVE);
        // Three circles (about 50 pixels each) and the two lines joining them, in each panel.
        assert!(left > 150 && right > 150, "{left} {right}");
        let (info, px) = decode(&render("t", &fixed, Some(17.31)).unwrap());
        assert_eq!(count(&info, &px, CURVE), (0, 0));
    }

    #[test]
    fn linear_ticks_tell_close_values_apart() {
        assert_eq!(linear_tick(524.5, 1.4), "524.5");
        assert_ne!(linear_tick(524.0, 1.4), linear_tick(524.2, 1.4));
        assert_eq!(linear_tick(20.0, 8.0), "20.0");
        assert_eq!(linear_tick(1500.0, 900.0), "1500");
    }

    #[test]
    fn ticks_are_short() {
        assert_eq!(tick(0.001), "1e-3");
        assert_eq!(tick(0.0009999999999), "1e-3");
        assert_eq!(tick(0.01), "0.01");
        assert_eq!(tick(0.25), "0.25");
        assert_eq!(tick(17.3125), "17.3");
        assert_eq!(tick(128.0), "128");
        assert_eq!(tick(12345.0), "1.2e4");
        assert_eq!(tick(0.0), "0");
    }

    #[test]
    fn log_ranges_hold_a_decade() {
        let near = |(lo, hi): (f64, f64), (a, b): (f64, f64)| {
            assert!(lo < a && (lo - a).abs() < a * 1e-6, "{lo} {a}");
            assert!(hi > b && (hi - b).abs() < b * 1e-6, "{hi} {b}");
        };
        near(log_range(0.0009, 0.4551), (1e-4, 1.0));
        near(log_range(KLD_FLOOR, KLD_FLOOR), (1e-7, 1e-5));
        // A single decade gets a second, on the side the points are nearer to.
        near(log_range(0.02, 0.03), (0.001, 0.1));
        near(log_range(0.04, 0.05), (0.01, 1.0));
        assert_eq!(padded(5.0, 5.0, 0.1), (4.5, 5.5));
        assert_eq!(padded(0.0, 0.0, 0.1), (-1.0, 1.0));
    }
}
