//! `--plot FILE.svg`: the per-second series as a chart a person can open in a browser.
//!
//! Three panels share the time axis: calls/s, swaps/s, and the grace-period latencies (retire ->
//! free p50 and p99, `synchronize()`) on a log scale. Each panel is drawn by plotters' SVG
//! backend into its own `<svg>` element, with an `id` (`calls-per-second`, `swaps-per-second`,
//! `gp-latency`), inside one outer `<svg>`: a test (or a script) finds each series by its
//! panel. Every series is one `<polyline>` with `stroke-width="2"` (axes and ticks are
//! polylines of width 1); legends use rectangles, not lines.

use plotters::prelude::*;

use crate::report::{exact_quantile, nanos, si, Second};

/// Width of the chart, and height of one panel (pixels).
const WIDTH: u32 = 960;
const PANEL: u32 = 300;
/// Height of the title band above the panels (two lines).
const TITLE: u32 = 52;

/// Panel ids, top to bottom.
pub const PANELS: [&str; 3] = ["calls-per-second", "swaps-per-second", "gp-latency"];

fn err(e: impl std::fmt::Display) -> String {
    format!("drawing the chart: {e}")
}

/// The chart of `series` as an SVG document, under a title and a `subtitle` line.
pub fn svg(series: &[Second], title: &str, subtitle: &str) -> Result<String, String> {
    let x_max = series.last().map_or(1.0, |s| s.t).max(1.0);
    let panels = [
        rate_panel(
            series,
            x_max,
            "calls/s (all caller tasks)",
            |s| s.calls_per_s,
            BLUE,
        )?,
        rate_panel(
            series,
            x_max,
            "swaps/s (re-JITs and probe attaches/detaches)",
            |s| s.swaps_per_s,
            RED,
        )?,
        latency_panel(series, x_max)?,
    ];
    let height = TITLE + PANEL * panels.len() as u32;
    let mut out = format!(
        "<svg width=\"{WIDTH}\" height=\"{height}\" viewBox=\"0 0 {WIDTH} {height}\" \
         xmlns=\"http://www.w3.org/2000/svg\">\n<title>{title}: {subtitle}</title>\n\
         <rect x=\"0\" y=\"0\" width=\"{WIDTH}\" height=\"{height}\" fill=\"#FFFFFF\"/>\n\
         <text x=\"{x}\" y=\"22\" text-anchor=\"middle\" font-family=\"sans-serif\" \
         font-size=\"17\">{title}</text>\n\
         <text x=\"{x}\" y=\"42\" text-anchor=\"middle\" font-family=\"sans-serif\" \
         font-size=\"12\">{subtitle}</text>\n",
        title = escape(title),
        subtitle = escape(subtitle),
        x = WIDTH / 2,
    );
    for (i, (id, panel)) in PANELS.iter().zip(&panels).enumerate() {
        // plotters' document starts with `<svg width=.. height=.. viewBox=.. xmlns=..>`: nest
        // it, placed below the previous panel.
        let rest = panel
            .strip_prefix("<svg ")
            .ok_or("plotters wrote an SVG document that does not start with <svg")?;
        out.push_str(&format!(
            "<svg id=\"{id}\" x=\"0\" y=\"{}\" {rest}",
            TITLE + PANEL * i as u32
        ));
    }
    out.push_str("</svg>\n");
    Ok(out)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One rate over time, on a linear axis from 0.
fn rate_panel(
    series: &[Second],
    x_max: f64,
    caption: &str,
    value: impl Fn(&Second) -> f64,
    color: RGBColor,
) -> Result<String, String> {
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, (WIDTH, PANEL)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let y_max = series.iter().map(&value).fold(0.0, f64::max).max(1.0) * 1.15;
        let mut chart = ChartBuilder::on(&root)
            .caption(caption, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(0f64..x_max, 0f64..y_max)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("time (s)")
            .y_label_formatter(&|v| si(*v))
            .draw()
            .map_err(err)?;
        chart
            .draw_series(LineSeries::new(
                series.iter().map(|s| (s.t, value(s))),
                color.stroke_width(2),
            ))
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(buf)
}

/// Retire -> free p50 and p99 and `synchronize()`, in µs on a log axis. Seconds without a
/// sample are left out of that series.
fn latency_panel(series: &[Second], x_max: f64) -> Result<String, String> {
    let us = |v: &[u64], q: f64| exact_quantile(v, q).map(|ns| (ns as f64 / 1e3).max(0.1));
    type Pick = fn(&Second) -> &[u64];
    let lines: [(&str, Pick, f64, RGBColor); 3] = [
        (
            "retire -> free p50 (one GP + callback delay)",
            |s| &s.free,
            0.5,
            RGBColor(0, 128, 0),
        ),
        (
            "retire -> free p99",
            |s| &s.free,
            0.99,
            RGBColor(230, 140, 0),
        ),
        (
            "synchronize() (one GP, once a second)",
            |s| &s.sync,
            0.5,
            RGBColor(110, 0, 160),
        ),
    ];
    let points: Vec<Vec<(f64, f64)>> = lines
        .iter()
        .map(|&(_, pick, q, _)| {
            series
                .iter()
                .filter_map(|s| us(pick(s), q).map(|v| (s.t, v)))
                .collect()
        })
        .collect();
    let all = || points.iter().flatten().map(|p| p.1);
    let (lo, hi) = (
        all().fold(f64::INFINITY, f64::min),
        all().fold(0.0, f64::max),
    );
    let (lo, hi) = if lo.is_finite() {
        (lo / 2.0, hi * 40.0) // headroom: the legend sits above the lines
    } else {
        (1.0, 1000.0)
    };
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, (WIDTH, PANEL)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("grace-period latency (log scale)", ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(0f64..x_max, (lo..hi).log_scale())
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("time (s)")
            .y_label_formatter(&|v| nanos((*v * 1e3) as u64))
            .draw()
            .map_err(err)?;
        for ((label, _, _, color), pts) in lines.iter().zip(points) {
            let color = *color;
            chart
                .draw_series(LineSeries::new(pts, color.stroke_width(2)))
                .map_err(err)?
                .label(*label)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 3), (x + 18, y + 3)], color.filled())
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(buf)
}
