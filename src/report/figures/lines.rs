//! The line charts: mean accuracy with free capacity (the RNF paper's Fig. 2a) and per-task
//! accuracy panels (Fig. 2b), with the line, band and note helpers they share.

use super::*;

/// Writes a note in the middle of a chart's plotting area (empty charts).
pub(super) fn draw_note<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    note: &str,
) -> DrawResult<(), DB> {
    let (w, h) = area.dim_in_pixel();
    area.draw(&Text::new(
        note.to_string(),
        (w as i32 / 2, h as i32 / 2),
        text(DESC_PT)
            .color(&GREY)
            .pos(Pos::new(HPos::Center, VPos::Center)),
    ))
}

/// Draws one series as solid line(s) with point markers, splitting at non-finite points.
pub(super) fn draw_line<DB, CT>(
    chart: &mut ChartContext<'_, DB, CT>,
    s: &Series,
    color: RGBColor,
    dashed: bool,
    frame: &Frame,
) -> DrawResult<usize, DB>
where
    DB: DrawingBackend,
    CT: CoordTranslate<From = (f64, f64)>,
{
    draw_line_as(chart, s, color, dashed, frame, LINE_W, 3)
}

/// [`draw_line`] with a line width and point size (0: no points) of the 100-dpi layout.
pub(super) fn draw_line_as<DB, CT>(
    chart: &mut ChartContext<'_, DB, CT>,
    s: &Series,
    color: RGBColor,
    dashed: bool,
    frame: &Frame,
    width: u32,
    point: u32,
) -> DrawResult<usize, DB>
where
    DB: DrawingBackend,
    CT: CoordTranslate<From = (f64, f64)>,
{
    let style = ShapeStyle::from(&color).stroke_width(upx(width));
    let runs = finite_runs(&s.x, &s.y, frame);
    let n = runs.iter().map(Vec::len).sum();
    let point = upx(point);
    for run in runs {
        if dashed {
            let (on, off) = (upx(DASH.0), upx(DASH.1));
            chart.draw_series(DashedLineSeries::new(run.clone(), on, off, style))?;
        } else {
            chart.draw_series(LineSeries::new(run.clone(), style))?;
        }
        if point > 0 {
            chart.draw_series(
                run.into_iter()
                    .map(|p| Circle::new(p, point, color.filled())),
            )?;
        }
    }
    Ok(n)
}

/// ±std error bars at a series' finite points (clipped to the frame).
pub(super) fn draw_error_bars<DB, CT>(
    chart: &mut ChartContext<'_, DB, CT>,
    s: &Series,
    color: RGBColor,
    frame: &Frame,
) -> DrawResult<(), DB>
where
    DB: DrawingBackend,
    CT: CoordTranslate<From = (f64, f64)>,
{
    let Some(std) = &s.std else { return Ok(()) };
    let clip = |v: f64| v.clamp(frame.y.start, frame.y.end);
    let style = ShapeStyle::from(&color).stroke_width(upx(2));
    chart.draw_series(
        s.x.iter()
            .zip(&s.y)
            .zip(std)
            .filter(|((x, y), d)| x.is_finite() && y.is_finite() && d.is_finite() && **d > 0.0)
            .map(|((&x, &y), &d)| {
                ErrorBar::new_vertical(x, clip(y - d), clip(y), clip(y + d), style, upx(10))
            }),
    )?;
    Ok(())
}

pub(super) fn draw_bands<DB, CT>(
    chart: &mut ChartContext<'_, DB, CT>,
    s: &Series,
    color: RGBColor,
    frame: &Frame,
) -> DrawResult<(), DB>
where
    DB: DrawingBackend,
    CT: CoordTranslate<From = (f64, f64)>,
{
    let polys = band_polygons(s, frame);
    chart.draw_series(
        polys
            .into_iter()
            .map(|p| Polygon::new(p, color.mix(0.18).filled())),
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The three figures

pub(super) fn draw_mean_accuracy<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    accuracy: &[Series],
    capacity: &[Series],
    full: bool,
) -> DrawResult<(), DB> {
    let area = root.titled(title, text(TITLE_PT))?;

    // Colours: accuracy by index; capacity like the accuracy series of the same label.
    let acc_colors: Vec<(RGBColor, bool)> = (0..accuracy.len()).map(line_style).collect();
    let mut next = accuracy.len();
    let cap_colors: Vec<(RGBColor, bool)> = capacity
        .iter()
        .map(|c| match accuracy.iter().position(|a| a.label == c.label) {
            Some(i) => (acc_colors[i].0, true),
            None => {
                next += 1;
                (line_style(next - 1).0, true)
            }
        })
        .collect();
    let accuracy = merge_identical(accuracy, &acc_colors);
    let capacity = merge_identical(capacity, &cap_colors);

    let mut entries: Vec<LegendEntry> = accuracy
        .iter()
        .map(|(s, style)| LegendEntry::line(s.label.clone(), *style))
        .collect();
    entries.extend(capacity.iter().map(|(s, (color, _))| LegendEntry {
        label: format!("{} free capacity", s.label),
        color: *color,
        mark: Mark::Dashed,
    }));
    let (area, legend_area, rows) = split_legend(&area, &entries)?;

    let all: Vec<&Series> = accuracy.iter().chain(&capacity).map(|(s, _)| s).collect();
    let xs = series_x(&all);
    let x_range = axis_range(finite_bounds(xs.iter().copied()), 0.03);
    let fit = |series: &[(Series, (RGBColor, bool))]| {
        if full {
            0.0..100.0
        } else {
            fit_range(
                series.iter().flat_map(|(s, _)| series_extent(s)),
                0.0..100.0,
            )
        }
    };
    let (acc_range, cap_range) = (fit(&accuracy), fit(&capacity));
    let has_cap = !capacity.is_empty();
    let mut chart = ChartBuilder::on(&area)
        .margin(px(10))
        .margin_right(px(if has_cap { 10 } else { 25 }))
        .x_label_area_size(px(55))
        .y_label_area_size(px(75))
        .right_y_label_area_size(px(if has_cap { 75 } else { 0 }))
        .build_cartesian_2d(x_range.clone(), acc_range.clone())?
        .set_secondary_coord(x_range.clone(), cap_range.clone());
    let frame = Frame {
        x: x_range.clone(),
        y: acc_range,
    };
    let cap_frame = Frame {
        x: x_range.clone(),
        y: cap_range,
    };
    chart
        .configure_mesh()
        .x_desc("task")
        .y_desc("mean accuracy over seen tasks (%)")
        .x_labels(task_ticks(&xs, &x_range))
        .y_labels(11)
        .x_label_formatter(&fmt_tick)
        .y_label_formatter(&fmt_tick)
        .label_style(text(LABEL_PT))
        .axis_desc_style(text(DESC_PT))
        .max_light_lines(0)
        .bold_line_style(GRID)
        .draw()?;
    if has_cap {
        chart
            .configure_secondary_axes()
            .y_desc("free capacity (%, dashed)")
            .y_labels(11)
            .y_label_formatter(&fmt_tick)
            .label_style(text(LABEL_PT))
            .axis_desc_style(text(DESC_PT))
            .draw()?;
    }

    for (s, (color, _)) in &accuracy {
        draw_bands(&mut chart, s, *color, &frame)?;
    }
    let mut drawn = 0;
    for (s, (color, dashed)) in &accuracy {
        drawn += draw_line(&mut chart, s, *color, *dashed, &frame)?;
    }
    let dash = (upx(DASH.0), upx(DASH.1));
    for (s, (color, _)) in &capacity {
        let style = ShapeStyle::from(color).stroke_width(upx(LINE_W));
        for p in band_polygons(s, &cap_frame) {
            chart.draw_secondary_series(std::iter::once(Polygon::new(
                p,
                color.mix(0.12).filled(),
            )))?;
        }
        for run in finite_runs(&s.x, &s.y, &cap_frame) {
            drawn += run.len();
            chart.draw_secondary_series(DashedLineSeries::new(run, dash.0, dash.1, style))?;
        }
    }
    if drawn == 0 {
        draw_note(&chart.plotting_area().strip_coord_spec(), NO_DATA)?;
    }
    draw_legend(&legend_area, &rows)
}

/// Series with their styles, where series identical point for point (x, y and std) are one,
/// labelled "a = b" and styled as the first.
pub(super) fn merge_identical(
    series: &[Series],
    styles: &[(RGBColor, bool)],
) -> Vec<(Series, (RGBColor, bool))> {
    let mut out: Vec<(Series, (RGBColor, bool))> = Vec::new();
    for (s, &style) in series.iter().zip(styles) {
        let same = |o: &Series| {
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            bits(&o.x) == bits(&s.x)
                && bits(&o.y) == bits(&s.y)
                && o.std.as_deref().map(bits) == s.std.as_deref().map(bits)
        };
        match out.iter_mut().find(|(o, _)| same(o)) {
            Some((o, _)) => o.label = format!("{} = {}", o.label, s.label),
            None => out.push((s.clone(), style)),
        }
    }
    out
}

pub(super) fn draw_per_task<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    panels: &[(String, Vec<Series>)],
    grid: (usize, usize),
    y: YAxis<'_>,
) -> DrawResult<(), DB> {
    let area = root.titled(title, text(TITLE_PT))?;

    // One colour per distinct line label, shared by all panels.
    let mut labels: Vec<&str> = Vec::new();
    for s in panels.iter().flat_map(|(_, series)| series) {
        if !labels.contains(&s.label.as_str()) {
            labels.push(&s.label);
        }
    }
    let color_of = |label: &str| line_style(labels.iter().position(|l| *l == label).unwrap_or(0));
    let entries: Vec<LegendEntry> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| LegendEntry::line(l.to_string(), line_style(i)))
        .collect();
    let (area, legend_area, rows) = split_legend(&area, &entries)?;

    let all: Vec<&Series> = panels.iter().flat_map(|(_, s)| s).collect();
    let xs = series_x(&all);
    let x_range = axis_range(finite_bounds(xs.iter().copied()), 0.04);
    let ticks = task_ticks(&xs, &x_range).min(if grid.1 >= 3 { 6 } else { 11 });

    let cells = area.split_evenly(grid);
    let empty = [(String::new(), Vec::new())];
    let panels = if panels.is_empty() {
        &empty[..]
    } else {
        panels
    };
    let everything: Vec<Series> = panels.iter().flat_map(|(_, s)| s.clone()).collect();
    let shared = y.range_for(&everything);
    for (cell, (name, series)) in cells.iter().zip(panels) {
        let pct = if y.shared {
            shared.clone()
        } else {
            y.range_for(series)
        };
        let mut chart = ChartBuilder::on(cell)
            .margin(px(10))
            .margin_right(px(18))
            .caption(name, text(CAPTION_PT))
            .x_label_area_size(px(50))
            .y_label_area_size(px(68))
            .build_cartesian_2d(x_range.clone(), pct.clone())?;
        let frame = Frame {
            x: x_range.clone(),
            y: pct.clone(),
        };
        chart
            .configure_mesh()
            .x_desc(y.x_desc)
            .y_desc(y.desc)
            .x_labels(ticks)
            .y_labels(6)
            .x_label_formatter(&fmt_tick)
            .y_label_formatter(&fmt_tick)
            .label_style(text(LABEL_PT))
            .axis_desc_style(text(DESC_PT))
            .max_light_lines(0)
            .bold_line_style(GRID)
            .draw()?;
        for s in series {
            if y.bars {
                draw_error_bars(&mut chart, s, color_of(&s.label).0, &frame)?;
            } else {
                draw_bands(&mut chart, s, color_of(&s.label).0, &frame)?;
            }
        }
        let mut drawn = 0;
        for s in series {
            let (color, dashed) = color_of(&s.label);
            drawn += draw_line(&mut chart, s, color, dashed, &frame)?;
        }
        if drawn == 0 {
            draw_note(&chart.plotting_area().strip_coord_spec(), NO_DATA)?;
        }
    }
    draw_legend(&legend_area, &rows)
}
