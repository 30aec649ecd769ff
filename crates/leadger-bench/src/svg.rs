//! Self-contained SVG charts for the report: a line chart over categories
//! (throughput at each concurrency level) and a grouped bar chart (latency
//! percentiles, events/s side by side). No scripts, no external fonts or
//! styles; every mark carries its value in a `<title>` so a reader hovering
//! it, or a test reading the file, gets the exact figure.

use std::fmt::Write as _;

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 360.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 80.0;
const COLORS: [&str; 8] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"];

/// One named series: a value per category (`None`: not measured).
pub struct Series {
    pub name: String,
    pub values: Vec<Option<f64>>,
}

pub struct Chart<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub categories: Vec<String>,
    pub series: Vec<Series>,
}

impl Chart<'_> {
    /// Lines through each series' values, one point per category.
    pub fn lines(&self) -> String {
        let (mut svg, scale) = self.frame();
        let step = self.plot_width() / self.categories.len().max(1) as f64;
        for (index, series) in self.series.iter().enumerate() {
            let color = COLORS[index % COLORS.len()];
            let points: Vec<(f64, f64, f64)> = series
                .values
                .iter()
                .enumerate()
                .filter_map(|(at, value)| value.map(|v| (LEFT + step * (at as f64 + 0.5), scale(v), v)))
                .collect();
            let path: Vec<String> = points.iter().map(|(x, y, _)| format!("{x:.1},{y:.1}")).collect();
            let _ = writeln!(
                svg,
                r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
                path.join(" ")
            );
            for (x, y, value) in points {
                let _ = writeln!(
                    svg,
                    r#"<circle cx="{x:.1}" cy="{y:.1}" r="4" fill="{color}" data-value="{value}"><title>{}: {}</title></circle>"#,
                    escape(&series.name),
                    format_value(value)
                );
            }
        }
        self.finish(svg)
    }

    /// Bars grouped by category, one bar per series.
    pub fn bars(&self) -> String {
        let (mut svg, scale) = self.frame();
        let step = self.plot_width() / self.categories.len().max(1) as f64;
        let bar = step * 0.8 / self.series.len().max(1) as f64;
        for (index, series) in self.series.iter().enumerate() {
            let color = COLORS[index % COLORS.len()];
            for (at, value) in series.values.iter().enumerate() {
                let Some(value) = *value else { continue };
                let x = LEFT + step * at as f64 + step * 0.1 + bar * index as f64;
                let y = scale(value);
                let _ = writeln!(
                    svg,
                    r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{color}" data-value="{value}"><title>{} / {}: {}</title></rect>"#,
                    bar * 0.95,
                    (HEIGHT - BOTTOM - y).max(0.0),
                    escape(&self.categories[at]),
                    escape(&series.name),
                    format_value(value)
                );
            }
        }
        self.finish(svg)
    }

    fn plot_width(&self) -> f64 {
        WIDTH - LEFT - RIGHT
    }

    /// The title, axes, grid and category labels; and the value → y mapping.
    fn frame(&self) -> (String, impl Fn(f64) -> f64 + use<>) {
        let max = self.series.iter().flat_map(|s| s.values.iter().flatten()).fold(0.0_f64, |a, &b| a.max(b));
        let top = nice_ceiling(max);
        let plot_height = HEIGHT - TOP - BOTTOM;
        let scale = move |value: f64| HEIGHT - BOTTOM - plot_height * (value / top).clamp(0.0, 1.0);
        let mut svg = String::new();
        let _ = writeln!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(svg, r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#);
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="22" text-anchor="middle" font-size="15" font-weight="bold">{}</text>"#,
            WIDTH / 2.0,
            escape(self.title)
        );
        for tick in 0..=4 {
            let value = top * f64::from(tick) / 4.0;
            let y = scale(value);
            let _ = writeln!(
                svg,
                r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
                WIDTH - RIGHT,
                LEFT - 6.0,
                y + 4.0,
                format_value(value)
            );
        }
        let step = self.plot_width() / self.categories.len().max(1) as f64;
        for (at, category) in self.categories.iter().enumerate() {
            // Long labels slant, so that neighbours do not overlap.
            let (x, y) = (LEFT + step * (at as f64 + 0.5), HEIGHT - BOTTOM + 18.0);
            let _ = if category.len() > 6 {
                writeln!(
                    svg,
                    r#"<text transform="translate({x:.1} {y}) rotate(-20)" text-anchor="end">{}</text>"#,
                    escape(category)
                )
            } else {
                writeln!(svg, r#"<text x="{x:.1}" y="{y}" text-anchor="middle">{}</text>"#, escape(category))
            };
        }
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            LEFT + self.plot_width() / 2.0,
            HEIGHT - 10.0,
            escape(self.x_label)
        );
        let _ = writeln!(
            svg,
            r#"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
            TOP + plot_height / 2.0,
            escape(self.y_label)
        );
        let _ = writeln!(
            svg,
            r#"<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{}" stroke="black"/><line x1="{LEFT}" x2="{}" y1="{0}" y2="{0}" stroke="black"/>"#,
            HEIGHT - BOTTOM,
            WIDTH - RIGHT,
        );
        (svg, scale)
    }

    /// The legend and the closing tag.
    fn finish(&self, mut svg: String) -> String {
        for (index, series) in self.series.iter().enumerate() {
            let y = TOP + 18.0 * index as f64;
            let x = WIDTH - RIGHT + 12.0;
            let _ = writeln!(
                svg,
                r#"<rect x="{x}" y="{y}" width="12" height="12" fill="{}"/><text x="{}" y="{}">{}</text>"#,
                COLORS[index % COLORS.len()],
                x + 18.0,
                y + 10.0,
                escape(&series.name)
            );
        }
        svg.push_str("</svg>\n");
        svg
    }
}

/// 1, 2 or 5 times a power of ten, at or above `value`.
fn nice_ceiling(value: f64) -> f64 {
    if value <= 0.0 || !value.is_finite() {
        return 1.0;
    }
    let power = 10f64.powf(value.log10().floor());
    [1.0, 1.2, 1.6, 2.0, 2.4, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0]
        .iter()
        .map(|m| m * power)
        .find(|&c| c >= value * (1.0 - 1e-9))
        .unwrap_or(10.0 * power)
}

fn format_value(value: f64) -> String {
    if value == 0.0 {
        "0".to_string()
    } else if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_are_round() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(7.0), 8.0);
        assert_eq!(nice_ceiling(10_898.0), 12_000.0);
        assert_eq!(nice_ceiling(63_500.0), 80_000.0);
        assert_eq!(nice_ceiling(0.42), 0.5);
    }

    #[test]
    fn every_value_is_in_the_chart() {
        let chart = Chart {
            title: "t",
            x_label: "x",
            y_label: "y",
            categories: vec!["1".into(), "16".into()],
            series: vec![Series { name: "a<b".into(), values: vec![Some(3.0), None] }],
        };
        for svg in [chart.lines(), chart.bars()] {
            assert_eq!(svg.matches(r#"data-value="3""#).count(), 1, "{svg}");
            assert!(svg.contains("a&lt;b"));
            assert!(svg.ends_with("</svg>\n"));
        }
    }
}
