//! The method × method correlation heatmap per layer, with its diverging colour bar.

use super::*;

/// Width of the colour bar strip on the right of the heatmap figure.
pub(super) const COLOUR_BAR_W: u32 = 120;
pub(super) const HEAT_POS: RGBColor = RGBColor(178, 24, 43);
pub(super) const HEAT_NEG: RGBColor = RGBColor(33, 102, 172);
pub(super) const HEAT_NAN: RGBColor = RGBColor(200, 200, 200);

/// Diverging colour of a correlation: white at 0, red towards +1, blue towards -1.
pub(super) fn diverging(v: f64) -> RGBColor {
    if !v.is_finite() {
        return HEAT_NAN;
    }
    let (end, t) = if v >= 0.0 {
        (HEAT_POS, v.min(1.0))
    } else {
        (HEAT_NEG, (-v).min(1.0))
    };
    let mix = |e: u8| (255.0 + (e as f64 - 255.0) * t).round() as u8;
    RGBColor(mix(end.0), mix(end.1), mix(end.2))
}

pub(super) fn draw_heatmaps<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    maps: &[Heatmap],
    grid: (usize, usize),
) -> DrawResult<(), DB> {
    let area = root.titled(title, text(TITLE_PT))?;
    let w = area.dim_in_pixel().0;
    let (main, bar) = area.split_horizontally(w.saturating_sub(upx(COLOUR_BAR_W)));
    if maps.is_empty() {
        draw_note(&main, NO_DATA)?;
    }
    for (cell, m) in main.split_evenly(grid).iter().zip(maps) {
        draw_heatmap(cell, m)?;
    }
    draw_colour_bar(&bar, 1.0, "Pearson r", &diverging)
}

pub(super) fn draw_heatmap<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    m: &Heatmap,
) -> DrawResult<(), DB> {
    let (w, h) = area.dim_in_pixel();
    let (w, h) = (w as i32, h as i32);
    let caption_h = px(40);
    area.draw(&Text::new(
        m.title.clone(),
        (w / 2, caption_h / 2),
        text(CAPTION_PT).pos(Pos::new(HPos::Center, VPos::Center)),
    ))?;
    let n = m.labels.len() as i32;
    if n == 0 {
        return draw_note(area, NO_DATA);
    }
    let label_style = text(LABEL_PT);
    let mut label_w = 0;
    for l in &m.labels {
        label_w = label_w.max(area.estimate_text_size(l, &label_style)?.0 as i32);
    }
    let left = label_w + px(14);
    let side_w = w - left - px(14);
    // Column labels go under the matrix; turned upright when they would not fit side by side.
    let upright = label_w + px(6) > side_w / n;
    let bottom = if upright { label_w + px(14) } else { px(30) };
    let side = side_w.min(h - caption_h - bottom - px(8)).max(n);
    let cell = side / n;
    let side = cell * n;
    let x0 = left + (side_w - side) / 2;
    let y0 = caption_h;
    // In points of the 100-dpi layout, as `text` takes them.
    let value_pt = ((cell as f64 / 3.4 / scale()) as u32).clamp(8, LABEL_PT);
    for (i, row) in m.values.iter().enumerate() {
        for (j, &v) in row.iter().enumerate() {
            let (x, y) = (x0 + j as i32 * cell, y0 + i as i32 * cell);
            area.draw(&Rectangle::new(
                [(x, y), (x + cell, y + cell)],
                diverging(v).filled(),
            ))?;
            area.draw(&Rectangle::new(
                [(x, y), (x + cell, y + cell)],
                WHITE.stroke_width(upx(1)),
            ))?;
            let label = if v.is_finite() {
                // No "-0.00" for a value that rounds to zero.
                format!("{:.2}", if v.abs() < 0.005 { 0.0 } else { v })
            } else {
                "–".into()
            };
            let ink = if v.is_finite() && v.abs() > 0.55 {
                WHITE
            } else {
                BLACK
            };
            area.draw(&Text::new(
                label,
                (x + cell / 2, y + cell / 2),
                text(value_pt)
                    .color(&ink)
                    .pos(Pos::new(HPos::Center, VPos::Center)),
            ))?;
        }
    }
    let right = label_style.pos(Pos::new(HPos::Right, VPos::Center));
    for (i, l) in m.labels.iter().enumerate() {
        let mid = i as i32 * cell + cell / 2;
        area.draw(&Text::new(l.clone(), (x0 - px(6), y0 + mid), right.clone()))?;
        let under = (x0 + mid, y0 + side + px(6));
        if upright {
            area.draw(&Text::new(
                l.clone(),
                under,
                text(LABEL_PT)
                    .transform(FontTransform::Rotate270)
                    .pos(Pos::new(HPos::Right, VPos::Center)),
            ))?;
        } else {
            area.draw(&Text::new(
                l.clone(),
                under,
                text(LABEL_PT).pos(Pos::new(HPos::Center, VPos::Top)),
            ))?;
        }
    }
    Ok(())
}

/// A colour bar from `-max` (bottom) to `+max` (top) in the colours of `colour` (which takes
/// values in [-1, 1]), with five ticks and `desc` above it.
pub(super) fn draw_colour_bar<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    max: f64,
    desc: &str,
    colour: &dyn Fn(f64) -> RGBColor,
) -> DrawResult<(), DB> {
    let (_, h) = area.dim_in_pixel();
    let (top, bottom) = (px(50), h as i32 - px(50));
    let (x0, x1) = (px(16), px(44));
    let steps = 100;
    let span = (bottom - top) as f64;
    for k in 0..steps {
        let ya = top + (span * k as f64 / steps as f64) as i32;
        let yb = top + (span * (k + 1) as f64 / steps as f64) as i32;
        let v = 1.0 - 2.0 * (k as f64 + 0.5) / steps as f64;
        area.draw(&Rectangle::new([(x0, ya), (x1, yb)], colour(v).filled()))?;
    }
    area.draw(&Rectangle::new(
        [(x0, top), (x1, bottom)],
        GREY.stroke_width(upx(1)),
    ))?;
    for v in [1.0, 0.5, 0.0, -0.5, -1.0] {
        let y = top + ((1.0 - v) / 2.0 * span) as i32;
        area.draw(&PathElement::new(vec![(x1, y), (x1 + px(5), y)], GREY))?;
        area.draw(&Text::new(
            fmt_scale(v * max),
            (x1 + px(9), y),
            text(LABEL_PT).pos(Pos::new(HPos::Left, VPos::Center)),
        ))?;
    }
    area.draw(&Text::new(
        desc.to_string(),
        (px(4), top - px(14)),
        text(LABEL_PT).pos(Pos::new(HPos::Left, VPos::Bottom)),
    ))
}

/// A colour-bar tick to three significant digits (relevance comes at any scale).
pub(super) fn fmt_scale(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 || !a.is_finite() {
        return fmt_tick(&0.0);
    }
    if !(1e-3..1e5).contains(&a) {
        return format!("{v:.2e}");
    }
    let digits = (2 - a.log10().floor() as i32).max(0) as usize;
    let s = format!("{v:.digits$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}
