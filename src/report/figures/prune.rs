//! The prune curves: accuracy against the share of units pruned, one panel per search, a thin
//! line per seed with its accepted step marked, and their mean.

use super::*;

pub(super) fn draw_prune<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    panels: &[(String, Vec<PruneCurve>)],
    grid: (usize, usize),
    full: bool,
) -> DrawResult<(), DB> {
    let area = root.titled(title, text(TITLE_PT))?;

    // One colour per curve label (a seed), shared by all panels.
    let mut labels: Vec<&str> = Vec::new();
    for c in panels.iter().flat_map(|(_, c)| c) {
        if !labels.contains(&c.label.as_str()) {
            labels.push(&c.label);
        }
    }
    let style_of = |label: &str| line_style(labels.iter().position(|l| *l == label).unwrap_or(0));
    let several = panels.iter().any(|(_, c)| c.len() > 1);
    let mut entries: Vec<LegendEntry> = labels
        .iter()
        .map(|l| LegendEntry::line(l.to_string(), style_of(l)))
        .collect();
    if several {
        entries.push(LegendEntry {
            label: "mean".into(),
            color: BLACK,
            mark: Mark::Thick,
        });
    }
    if !labels.is_empty() {
        entries.push(LegendEntry {
            label: if several {
                "threshold (mean)"
            } else {
                "threshold"
            }
            .into(),
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

    // x: at least 0..100 (the whole possible range), shared by the panels.
    let xb = finite_bounds(
        panels
            .iter()
            .flat_map(|(_, c)| c)
            .flat_map(|c| c.share.iter().copied().chain([c.accepted_share]))
            .chain([0.0, 100.0]),
    );
    let x_range = axis_range(xb, 0.02);
    let empty = [(String::new(), Vec::new())];
    let panels = if panels.is_empty() {
        &empty[..]
    } else {
        panels
    };
    for (cell, (name, curves)) in area.split_evenly(grid).iter().zip(panels) {
        let y_range = if full {
            0.0..100.0
        } else {
            prune_y_range(curves)
        };
        let mut chart = ChartBuilder::on(cell)
            .margin(px(10))
            .margin_right(px(18))
            .caption(name, text(CAPTION_PT))
            .x_label_area_size(px(50))
            .y_label_area_size(px(68))
            .build_cartesian_2d(x_range.clone(), y_range.clone())?;
        let frame = Frame {
            x: x_range.clone(),
            y: y_range.clone(),
        };
        chart
            .configure_mesh()
            .x_desc("share of units pruned (%)")
            .y_desc("accuracy (%)")
            .x_labels(if grid.1 >= 3 { 6 } else { 11 })
            .y_labels(8)
            .x_label_formatter(&fmt_tick)
            .y_label_formatter(&fmt_tick)
            .label_style(text(LABEL_PT))
            .axis_desc_style(text(DESC_PT))
            .max_light_lines(0)
            .bold_line_style(GRID)
            .draw()?;
        let dash = (upx(DASH.0), upx(DASH.1));
        let threshold = |chart: &mut ChartContext<'_, DB, _>, at: f64, color: RGBColor| {
            if !at.is_finite() {
                return Ok(());
            }
            chart
                .draw_series(DashedLineSeries::new(
                    [
                        frame.clip((x_range.start, at)),
                        frame.clip((x_range.end, at)),
                    ],
                    dash.0,
                    dash.1,
                    ShapeStyle::from(&color.mix(0.9)).stroke_width(upx(LINE_W)),
                ))
                .map(|_| ())
        };
        let mut drawn = 0;
        let mut accepted = Vec::new();
        for c in curves {
            let (color, dashed) = style_of(&c.label);
            if !several {
                threshold(&mut chart, c.threshold_line, color)?;
            }
            let s = Series {
                label: c.label.clone(),
                x: c.share.clone(),
                y: c.accuracy.clone(),
                std: None,
            };
            let (width, point) = if several { (1, 2) } else { (LINE_W, 3) };
            drawn += draw_line_as(&mut chart, &s, color, dashed, &frame, width, point)?;
            if let Some(a) = accuracy_at(&c.share, &c.accuracy, c.accepted_share) {
                let at = frame.clip((c.accepted_share, a));
                accepted.push((chart.backend_coord(&at), color));
            }
        }
        if several {
            let lines: Vec<f64> = curves.iter().map(|c| c.threshold_line).collect();
            threshold(&mut chart, mean_of_finite(&lines), GREY)?;
            let mean = mean_prune_curve(curves);
            draw_line_as(&mut chart, &mean, BLACK, false, &frame, LINE_W + 1, 0)?;
        }
        // Markers last, on top of all lines; drawn in pixel space so the rim is exact.
        let plot = chart.plotting_area();
        let (ox, oy) = plot.get_base_pixel();
        let plot = plot.strip_coord_spec();
        for ((x, y), color) in accepted {
            draw_accepted(&plot, (x - ox, y - oy), color, if several { 6 } else { 8 })?;
        }
        if drawn == 0 {
            draw_note(&plot, NO_DATA)?;
        }
    }
    draw_legend(&legend_area, &rows)
}

/// The y range of a panel: fitted to its curves and thresholds, so that small non-monotone
/// steps stay visible, and within 0..100 when the data is.
fn prune_y_range(curves: &[PruneCurve]) -> Range<f64> {
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
    y_range
}

fn mean_of_finite(v: &[f64]) -> f64 {
    let f: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if f.is_empty() {
        f64::NAN
    } else {
        f.iter().sum::<f64>() / f.len() as f64
    }
}

/// The mean of several seeds' curves on the first curve's shares, each curve read at a share
/// by linear interpolation; it ends where the shortest curve ends, since a mean over the seeds
/// still searching would not be a mean over seeds.
pub(super) fn mean_prune_curve(curves: &[PruneCurve]) -> Series {
    let mut s = Series {
        label: "mean".into(),
        ..Series::default()
    };
    let Some(first) = curves.first() else {
        return s;
    };
    for &x in first.share.iter().filter(|x| x.is_finite()) {
        let at: Option<Vec<f64>> = curves
            .iter()
            .map(|c| accuracy_at(&c.share, &c.accuracy, x))
            .collect();
        let Some(at) = at else { break };
        s.x.push(x);
        s.y.push(at.iter().sum::<f64>() / at.len() as f64);
    }
    s
}
