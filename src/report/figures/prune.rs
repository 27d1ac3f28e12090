//! The prune curve: accuracy against the share of units pruned, with the accepted step marked.

use super::*;

pub(super) fn draw_prune<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    curves: &[PruneCurve],
) -> DrawResult<(), DB> {
    let area = root.titled(title, text(TITLE_PT))?;

    let mut entries: Vec<LegendEntry> = curves
        .iter()
        .enumerate()
        .map(|(i, c)| LegendEntry::line(c.label.clone(), line_style(i)))
        .collect();
    if !curves.is_empty() {
        entries.push(LegendEntry {
            label: "threshold".into(),
            color: GREY,
            mark: Mark::Dashed,
        });
        entries.push(LegendEntry {
            label: "accepted".into(),
            color: GREY,
            mark: Mark::Accepted,
        });
    }
    let (area, legend_area, rows) = split_legend(&area, &entries)?;

    // x: at least 0..100 (the whole possible range); y: fitted to the curves and thresholds
    // so that small non-monotone steps stay visible.
    let xb = finite_bounds(
        curves
            .iter()
            .flat_map(|c| c.share.iter().copied().chain([c.accepted_share]))
            .chain([0.0, 100.0]),
    );
    let x_range = axis_range(xb, 0.02);
    let yb = finite_bounds(
        curves
            .iter()
            .flat_map(|c| c.accuracy.iter().copied().chain([c.threshold_line])),
    );
    let mut y_range = axis_range(yb.or(Some((0.0, 100.0))), 0.08);
    if let Some((lo, hi)) = yb {
        if lo >= 0.0 {
            y_range.start = y_range.start.max(0.0);
        }
        if hi <= 100.0 {
            y_range.end = y_range.end.min(100.0);
        }
    }

    let mut chart = ChartBuilder::on(&area)
        .margin(10)
        .margin_right(25)
        .x_label_area_size(55)
        .y_label_area_size(75)
        .build_cartesian_2d(x_range.clone(), y_range.clone())?;
    let frame = Frame {
        x: x_range.clone(),
        y: y_range.clone(),
    };
    chart
        .configure_mesh()
        .x_desc("share of units pruned (%)")
        .y_desc("accuracy (%)")
        .x_labels(11)
        .y_labels(10)
        .x_label_formatter(&fmt_tick)
        .y_label_formatter(&fmt_tick)
        .label_style(text(LABEL_PT))
        .axis_desc_style(text(DESC_PT))
        .max_light_lines(0)
        .bold_line_style(GRID)
        .draw()?;

    let mut drawn = 0;
    let mut accepted = Vec::new();
    for (i, c) in curves.iter().enumerate() {
        let (color, dashed) = line_style(i);
        if c.threshold_line.is_finite() {
            chart.draw_series(DashedLineSeries::new(
                [
                    frame.clip((x_range.start, c.threshold_line)),
                    frame.clip((x_range.end, c.threshold_line)),
                ],
                DASH.0,
                DASH.1,
                ShapeStyle::from(&color.mix(0.9)).stroke_width(LINE_W),
            ))?;
        }
        let s = Series {
            label: c.label.clone(),
            x: c.share.clone(),
            y: c.accuracy.clone(),
            std: None,
        };
        drawn += draw_line(&mut chart, &s, color, dashed, &frame)?;
        if let Some(a) = accuracy_at(&c.share, &c.accuracy, c.accepted_share) {
            let at = frame.clip((c.accepted_share, a));
            accepted.push((chart.backend_coord(&at), color));
        }
    }
    // Markers last, on top of all lines; drawn in pixel space so the rim is exact.
    let plot = chart.plotting_area();
    let (ox, oy) = plot.get_base_pixel();
    let plot = plot.strip_coord_spec();
    for ((x, y), color) in accepted {
        draw_accepted(&plot, (x - ox, y - oy), color)?;
    }
    if drawn == 0 {
        draw_note(&plot, NO_DATA)?;
    }
    draw_legend(&legend_area, &rows)
}
