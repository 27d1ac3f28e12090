//! The legend of the line charts: one row per series, sample and label, laid out in rows that
//! fit the chart's width, and split into two when too long.

use super::*;

#[derive(Clone, Copy, PartialEq)]
pub(super) enum Mark {
    Dashed,
    /// A line with point markers.
    SolidDots,
    /// A large filled marker with a black rim (accepted point).
    Accepted,
    /// A thick line without markers (a mean).
    Thick,
}

pub(super) struct LegendEntry {
    pub(super) label: String,
    pub(super) color: RGBColor,
    pub(super) mark: Mark,
}

impl LegendEntry {
    /// The entry of a series drawn in `line_style`'s `(color, dashed)`.
    pub(super) fn line(label: String, (color, dashed): (RGBColor, bool)) -> LegendEntry {
        LegendEntry {
            label,
            color,
            mark: if dashed {
                Mark::Dashed
            } else {
                Mark::SolidDots
            },
        }
    }
}

pub(super) const LEGEND_SAMPLE: i32 = 38;
pub(super) const LEGEND_GAP: i32 = 7;
pub(super) const LEGEND_SPACING: i32 = 26;
pub(super) const LEGEND_ROW: i32 = 26;
pub(super) const LEGEND_MARGIN: i32 = 14;

/// Legend entries laid out in centred rows that fit `width`: (x offset, entry) per row.
pub(super) fn legend_layout<'e, DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    entries: &'e [LegendEntry],
) -> DrawResult<Vec<Vec<(i32, &'e LegendEntry)>>, DB> {
    let style = text(LEGEND_PT);
    let width = area.dim_in_pixel().0 as i32 - 2 * px(LEGEND_MARGIN);
    let mut rows: Vec<Vec<(i32, &LegendEntry)>> = Vec::new();
    let mut row: Vec<(i32, &LegendEntry)> = Vec::new();
    let mut used = 0;
    for e in entries {
        let (tw, _) = area.estimate_text_size(&e.label, &style)?;
        let w = px(LEGEND_SAMPLE) + px(LEGEND_GAP) + tw as i32;
        let need = if row.is_empty() {
            w
        } else {
            px(LEGEND_SPACING) + w
        };
        if !row.is_empty() && used + need > width {
            rows.push(std::mem::take(&mut row));
            used = 0;
        }
        let x = if row.is_empty() {
            0
        } else {
            used + px(LEGEND_SPACING)
        };
        used = x + w;
        row.push((x, e));
    }
    if !row.is_empty() {
        rows.push(row);
    }
    // Centre each row: shift by half the free space.
    for row in &mut rows {
        let (last_x, last) = *row.last().expect("rows are non-empty");
        let (tw, _) = area.estimate_text_size(&last.label, &style)?;
        let total = last_x + px(LEGEND_SAMPLE) + px(LEGEND_GAP) + tw as i32;
        let shift = px(LEGEND_MARGIN) + ((width - total) / 2).max(0);
        for (x, _) in row.iter_mut() {
            *x += shift;
        }
    }
    Ok(rows)
}

pub(super) fn legend_height(rows: usize) -> u32 {
    if rows == 0 {
        0
    } else {
        (rows as i32 * px(LEGEND_ROW) + px(12)) as u32
    }
}

/// Splits a legend strip off the bottom of `area`: (remaining area, legend area, layout).
#[allow(clippy::type_complexity)]
pub(super) fn split_legend<'e, DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    entries: &'e [LegendEntry],
) -> DrawResult<
    (
        DrawingArea<DB, Shift>,
        DrawingArea<DB, Shift>,
        Vec<Vec<(i32, &'e LegendEntry)>>,
    ),
    DB,
> {
    let rows = legend_layout(area, entries)?;
    let h = area.dim_in_pixel().1 as i32;
    let (upper, lower) = area.split_vertically(h - legend_height(rows.len()) as i32);
    Ok((upper, lower, rows))
}

pub(super) fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    rows: &[Vec<(i32, &LegendEntry)>],
) -> DrawResult<(), DB> {
    let style = text(LEGEND_PT).pos(Pos::new(HPos::Left, VPos::Center));
    for (r, row) in rows.iter().enumerate() {
        let y = px(6) + r as i32 * px(LEGEND_ROW) + px(LEGEND_ROW) / 2;
        for &(x, e) in row {
            let line = ShapeStyle::from(&e.color).stroke_width(upx(LINE_W + 1));
            let ends = vec![(x, y), (x + px(LEGEND_SAMPLE), y)];
            match e.mark {
                Mark::SolidDots => {
                    area.draw(&PathElement::new(ends, line))?;
                    area.draw(&Circle::new(
                        (x + px(LEGEND_SAMPLE) / 2, y),
                        upx(4),
                        e.color.filled(),
                    ))?;
                }
                Mark::Dashed => {
                    area.draw(&DashedPathElement::new(
                        ends,
                        upx(DASH.0),
                        upx(DASH.1),
                        line,
                    ))?;
                }
                Mark::Thick => {
                    area.draw(&PathElement::new(ends, line.stroke_width(upx(LINE_W + 2))))?;
                }
                Mark::Accepted => draw_accepted(area, (x + px(LEGEND_SAMPLE) / 2, y), e.color, 8)?,
            }
            area.draw(&Text::new(
                e.label.clone(),
                (x + px(LEGEND_SAMPLE) + px(LEGEND_GAP), y),
                style.clone(),
            ))?;
        }
    }
    Ok(())
}

/// The accepted-point marker: a filled circle of `radius` (100-dpi pixels) with a black rim.
pub(super) fn draw_accepted<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    at: (i32, i32),
    color: RGBColor,
    radius: u32,
) -> DrawResult<(), DB> {
    area.draw(&Circle::new(at, upx(radius), color.filled()))?;
    area.draw(&Circle::new(at, upx(radius), BLACK.stroke_width(upx(2))))
}
