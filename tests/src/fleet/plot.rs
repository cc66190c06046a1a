//! The picture of a run (`--plot FILE.svg`): agents connected (left axis),
//! CONNACKs/s and credentials issued/s (right axis) over time, the run's
//! events as vertical lines. plotters' SVG backend: no external program.

use std::path::Path;

use plotters::prelude::*;

use crate::{
    error::{E2eError, Result},
    fleet::run::FleetReport,
};

/// Picture size, pixels.
const SIZE: (u32, u32) = (1000, 520);

/// Averages rates over this many samples: a 100 ms sample of a few
/// CONNACKs is noise, a second is a rate.
const SMOOTH: usize = 5;

/// Draws `report`'s timeline into `path` (SVG).
pub fn draw(report: &FleetReport, path: &Path) -> Result<()> {
    draw_svg(report, path).map_err(|e| E2eError::failed(format!("drawing {}: {e}", path.display())))
}

fn smooth(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    points
        .iter()
        .enumerate()
        .map(|(i, &(t, _))| {
            let lo = i.saturating_sub(SMOOTH / 2);
            let hi = (i + SMOOTH / 2 + 1).min(points.len());
            let window = &points[lo..hi];
            (
                t,
                window.iter().map(|p| p.1).sum::<f64>() / window.len() as f64,
            )
        })
        .collect()
}

fn draw_svg(
    report: &FleetReport,
    path: &Path,
) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let timeline = &report.timeline;
    let connected: Vec<(f64, f64)> = timeline
        .samples
        .iter()
        .map(|s| (s.t, s.connected as f64))
        .collect();
    let connects = smooth(&timeline.rate(|s| s.connects));
    let issued = smooth(&timeline.rate(|s| s.issued));
    let t_max = timeline.samples.last().map_or(1.0, |s| s.t).max(1.0);
    let rate_max = connects
        .iter()
        .chain(&issued)
        .map(|p| p.1)
        .fold(1.0, f64::max)
        * 1.1;
    let n_max = report.agents as f64 * 1.1;

    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let caption = format!(
        "enos-fleet: {} agents, {} (signer limit {}/s per identity, backoff cap {:.0} s)",
        report.agents,
        report.scenario,
        report.rate_limit.0,
        report.backoff_max.as_secs_f64()
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .right_y_label_area_size(60)
        .build_cartesian_2d(0f64..t_max, 0f64..n_max)
        .map_err(|e| e.to_string())?
        .set_secondary_coord(0f64..t_max, 0f64..rate_max);
    chart
        .configure_mesh()
        .x_desc("seconds since the run started")
        .y_desc("agents connected")
        .draw()
        .map_err(|e| e.to_string())?;
    chart
        .configure_secondary_axes()
        .y_desc("per second")
        .draw()
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(LineSeries::new(connected, BLUE.stroke_width(2)))
        .map_err(|e| e.to_string())?
        .label("agents connected (left)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
    chart
        .draw_secondary_series(LineSeries::new(connects, GREEN.stroke_width(1)))
        .map_err(|e| e.to_string())?
        .label("CONNACKs/s (right)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GREEN));
    chart
        .draw_secondary_series(LineSeries::new(issued, MAGENTA.stroke_width(1)))
        .map_err(|e| e.to_string())?
        .label("credentials issued/s (right)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], MAGENTA));
    for event in &timeline.events {
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(event.t, 0.0), (event.t, n_max)],
                RED.mix(0.6),
            )))
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(std::iter::once(Text::new(
                event.label.clone(),
                (event.t, n_max * 0.97),
                ("sans-serif", 13).into_font().color(&RED),
            )))
            .map_err(|e| e.to_string())?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}
