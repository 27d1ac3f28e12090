//! The explain figure: a test image beside its input relevance, under a title naming the
//! class, the explained logit and the LRP rules, with a colour bar that gives the relevance
//! scale. Each image pixel is drawn as one square block, so the heatmap can be read (and
//! checked) pixel by pixel.

use super::*;

/// One explained image, as [`explain_figure`] draws it.
pub struct ExplainPanel<'a> {
    /// First line of the title (image, class, logit).
    pub title: String,
    /// Second line (the rules).
    pub subtitle: String,
    /// `[C, H, W]`.
    pub shape: [usize; 3],
    /// The input as stored, `C·H·W` bytes (3 channels: RGB; otherwise their mean as grey).
    pub pixels: &'a [u8],
    /// Relevance per pixel (`H·W`, channels summed).
    pub relevance: &'a [f32],
}

/// Where the two images sit in the PNG: the top-left corner of each, and the side of one
/// image pixel's block, in PNG pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExplainLayout {
    pub input: (u32, u32),
    pub relevance: (u32, u32),
    pub cell: u32,
}

/// Size of the explain figure at 100 dpi.
pub(super) const EXPLAIN_SIZE: (u32, u32) = (900, 470);
const BOX: i32 = 320;
const BOX_TOP: i32 = 82;
const INPUT_LEFT: i32 = 40;
const RELEVANCE_LEFT: i32 = 400;
const BAR_LEFT: i32 = 745;

/// Red for positive, blue for negative, white for zero; `v` in [-1, 1] (NaN: white).
pub fn relevance_colour(v: f64) -> RGBColor {
    let v = if v.is_finite() {
        v.clamp(-1.0, 1.0)
    } else {
        0.0
    };
    let fade = |t: f64| (255.0 * (1.0 - t)).round() as u8;
    if v >= 0.0 {
        RGBColor(255, fade(v), fade(v))
    } else {
        RGBColor(fade(-v), fade(-v), 255)
    }
}

/// The blocks' layout at the scale being drawn.
fn layout([_, h, w]: [usize; 3]) -> ExplainLayout {
    let side = h.max(w).max(1) as i32;
    let cell = (px(BOX) / side).max(1);
    let pad_x = (px(BOX) - cell * w as i32).max(0) / 2;
    let pad_y = (px(BOX) - cell * h as i32).max(0) / 2;
    let at = |left: i32| ((px(left) + pad_x) as u32, (px(BOX_TOP) + pad_y) as u32);
    ExplainLayout {
        input: at(INPUT_LEFT),
        relevance: at(RELEVANCE_LEFT),
        cell: cell as u32,
    }
}

/// Checks the panel's sizes and writes it; returns the files and the PNG's layout.
pub fn explain_figure(
    path_stem: &Path,
    panel: &ExplainPanel<'_>,
    look: &Look,
) -> Result<(Vec<PathBuf>, ExplainLayout), FigureError> {
    let [c, h, w] = panel.shape;
    if panel.pixels.len() != c * h * w || panel.relevance.len() != h * w {
        return Err(invalid(
            path_stem,
            format!(
                "an image of shape {:?} needs {} pixel bytes and {} relevances, not {} and {}",
                panel.shape,
                c * h * w,
                h * w,
                panel.pixels.len(),
                panel.relevance.len()
            ),
        ));
    }
    let files = render(path_stem, EXPLAIN_SIZE, &Fig::Explain { panel }, look)?;
    let _at = Scaled::new(look.dpi as f64 / BASE_DPI as f64);
    Ok((files, layout(panel.shape)))
}

/// Fills `cell`-sided blocks from `(x0, y0)`, merging horizontal runs of one colour (a much
/// smaller SVG for flat backgrounds).
fn draw_blocks<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    (x0, y0): (u32, u32),
    cell: u32,
    (h, w): (usize, usize),
    colour: impl Fn(usize) -> RGBColor,
) -> DrawResult<(), DB> {
    let (x0, y0, cell) = (x0 as i32, y0 as i32, cell as i32);
    for row in 0..h {
        let mut col = 0;
        while col < w {
            let c = colour(row * w + col);
            let mut end = col + 1;
            while end < w && colour(row * w + end) == c {
                end += 1;
            }
            let (y, x) = (y0 + row as i32 * cell, x0 + col as i32 * cell);
            area.draw(&Rectangle::new(
                [(x, y), (x0 + end as i32 * cell, y + cell)],
                c.filled(),
            ))?;
            col = end;
        }
    }
    Ok(())
}

pub(super) fn draw_explain<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    p: &ExplainPanel<'_>,
) -> DrawResult<(), DB> {
    let [c, h, w] = p.shape;
    let (width, _) = root.dim_in_pixel();
    let centre = |y: i32| (width as i32 / 2, px(y));
    let mid = Pos::new(HPos::Center, VPos::Center);
    root.draw(&Text::new(
        p.title.clone(),
        centre(24),
        text(TITLE_PT - 2).pos(mid),
    ))?;
    root.draw(&Text::new(
        p.subtitle.clone(),
        centre(56),
        text(LABEL_PT).color(&GREY).pos(mid),
    ))?;
    let at = layout(p.shape);
    let hw = h * w;
    let grey = |i: usize| -> RGBColor {
        if c == 3 {
            RGBColor(p.pixels[i], p.pixels[hw + i], p.pixels[2 * hw + i])
        } else {
            let sum: u32 = (0..c).map(|ch| p.pixels[ch * hw + i] as u32).sum();
            let g = (sum / c.max(1) as u32) as u8;
            RGBColor(g, g, g)
        }
    };
    draw_blocks(root, at.input, at.cell, (h, w), grey)?;
    let max = p
        .relevance
        .iter()
        .filter(|v| v.is_finite())
        .fold(0f32, |m, v| m.max(v.abs()));
    let heat = |i: usize| {
        let v = p.relevance[i];
        relevance_colour(if max > 0.0 { (v / max) as f64 } else { 0.0 })
    };
    draw_blocks(root, at.relevance, at.cell, (h, w), heat)?;
    // Frames around the image boxes, and what each shows under it.
    let (bw, bh) = (at.cell as i32 * w as i32, at.cell as i32 * h as i32);
    for ((x, y), caption) in [
        (at.input, format!("input ({h} × {w} px)")),
        (
            at.relevance,
            "relevance per pixel (channels summed)".to_string(),
        ),
    ] {
        let (x, y) = (x as i32, y as i32);
        root.draw(&Rectangle::new(
            [(x - 1, y - 1), (x + bw, y + bh)],
            GREY.stroke_width(upx(1)),
        ))?;
        root.draw(&Text::new(
            caption,
            (x + bw / 2, px(BOX_TOP + BOX + 22)),
            text(LABEL_PT).pos(mid),
        ))?;
    }
    let bar = root.clone().shrink(
        (px(BAR_LEFT), px(BOX_TOP - 45)),
        (upx(150), upx((BOX + 90) as u32)),
    );
    let desc = if max > 0.0 {
        "relevance"
    } else {
        "relevance (all 0)"
    };
    draw_colour_bar(&bar, max as f64, desc, &relevance_colour)
}
