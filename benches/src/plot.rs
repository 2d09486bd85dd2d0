//! The latency plot: one latency-by-percentile curve per scenario, written as SVG text by hand.
//!
//! x is the percentile on a "nines" axis (distance `-log10(1 - q)`, so p50, p90, p99, p99.9 and
//! p99.99 are evenly spaced); y is latency in ms on a log scale, so the p50 of a fast scenario and
//! the tail of a slow one are both readable. Each scenario's curve is the median over rounds of
//! the per-round curves at each percentile, the same statistic as the table.

use std::fmt::Write as _;

use crate::report::{self, Report, RunResult, ScenarioReport};

/// What to draw.
#[derive(Debug, Clone, Default)]
pub struct Plot {
    /// First line at the top (the run settings).
    pub title: String,
    /// Second, smaller line (more settings, what the curves are).
    pub subtitle: String,
    /// One curve each, in legend order.
    pub series: Vec<Series>,
}

/// One scenario's curve.
#[derive(Debug, Clone, Default)]
pub struct Series {
    pub name: String,
    /// `(quantile, latency in ms)`, quantile ascending in `[0.5, 1)`.
    pub points: Vec<(f64, f64)>,
}

/// Image size in px.
const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 500.0;
/// Plot area (axes box) in px.
const LEFT: f64 = 66.0;
const RIGHT: f64 = 640.0;
const TOP: f64 = 70.0;
const BOTTOM: f64 = 430.0;
/// Left edge of the legend.
const LEGEND_X: f64 = 658.0;
/// The x axis: p50 .. p99.99 in nines.
const X_MIN_Q: f64 = 0.5;
const X_MAX_Q: f64 = 0.9999;
/// Latencies below this (ms) are drawn at it: a log axis has no zero.
const Y_FLOOR_MS: f64 = 0.001;

/// Tableau 10: distinct hues that stay distinguishable for most colour-blind readers.
const COLORS: [&str; 10] =
    ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];

/// Labelled x ticks (quantile, label) and unlabelled minor ones.
const X_TICKS: [(f64, &str); 5] = [(0.5, "50"), (0.9, "90"), (0.99, "99"), (0.999, "99.9"), (0.9999, "99.99")];
const X_MINOR: [f64; 4] = [0.75, 0.95, 0.995, 0.9995];

/// The plot of a report: each scenario's median curve over its rounds.
pub fn from_report(report: &Report, title: String, subtitle: String) -> Plot {
    let name = |s: &ScenarioReport| match s.median.latency_lower_bound {
        true => format!("{} (rate not met: a lower bound)", s.name),
        false => s.name.clone(),
    };
    let series = report.scenarios.iter().map(|s| Series { name: name(s), points: median_curve(&s.rounds) }).collect();
    Plot { title, subtitle, series }
}

/// `(quantile, ms)`: at each curve point, the median over rounds. A round whose curve stopped
/// early (few samples) shortens the result to the points every round has.
pub fn median_curve(rounds: &[RunResult]) -> Vec<(f64, f64)> {
    let len = rounds.iter().map(|r| r.latency_curve.len()).min().unwrap_or(0);
    (0..len)
        .map(|i| {
            let quantile = rounds[0].latency_curve[i].quantile;
            let us = report::median(rounds.iter().map(|r| f64::from(r.latency_curve[i].us)).collect());
            (quantile, us / 1000.0)
        })
        .collect()
}

/// The SVG document (about 900x500 px).
pub fn svg(plot: &Plot) -> String {
    let series: Vec<Vec<(f64, f64)>> = plot.series.iter().map(|s| clean(&s.points)).collect();
    let y = YAxis::fit(series.iter().flatten().map(|&(_, ms)| ms));
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">"#
    );
    let _ = writeln!(out, r##"<rect width="100%" height="100%" fill="#ffffff"/>"##);
    let _ = writeln!(
        out,
        r##"<text x="{LEFT}" y="26" font-size="{}" font-weight="bold" fill="#222">{}</text>"##,
        font_size(&plot.title, 16.0, 0.64),
        escape(&plot.title)
    );
    let _ = writeln!(
        out,
        r##"<text x="{LEFT}" y="48" font-size="{}" fill="#555">{}</text>"##,
        font_size(&plot.subtitle, 12.0, 0.58),
        escape(&plot.subtitle)
    );

    // Grid and ticks: y (horizontal lines) first, then x (vertical).
    for tick in y.ticks() {
        let py = fmt(y.px(tick.ms));
        let (stroke, width) = if tick.major { ("#c8c8c8", 1.0) } else { ("#ececec", 1.0) };
        let _ = writeln!(
            out,
            r#"<line x1="{LEFT}" y1="{py}" x2="{RIGHT}" y2="{py}" stroke="{stroke}" stroke-width="{width}"/>"#
        );
        let _ = writeln!(
            out,
            r##"<text x="{}" y="{py}" font-size="11" fill="#444" text-anchor="end" dominant-baseline="middle">{}</text>"##,
            LEFT - 6.0,
            tick.label
        );
    }
    for q in X_MINOR {
        let px = fmt(x_px(q));
        let _ = writeln!(out, r##"<line x1="{px}" y1="{TOP}" x2="{px}" y2="{BOTTOM}" stroke="#ececec"/>"##);
    }
    for (q, label) in X_TICKS {
        let px = fmt(x_px(q));
        let _ = writeln!(out, r##"<line x1="{px}" y1="{TOP}" x2="{px}" y2="{BOTTOM}" stroke="#c8c8c8"/>"##);
        let _ = writeln!(
            out,
            r##"<text x="{px}" y="{}" font-size="11" fill="#444" text-anchor="middle">{label}</text>"##,
            BOTTOM + 16.0
        );
    }
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT}" y="{TOP}" width="{}" height="{}" fill="none" stroke="#888"/>"##,
        RIGHT - LEFT,
        BOTTOM - TOP
    );
    let _ = writeln!(
        out,
        r##"<text x="{}" y="{}" font-size="12" fill="#222" text-anchor="middle">percentile (%), evenly spaced nines</text>"##,
        fmt((LEFT + RIGHT) / 2.0),
        BOTTOM + 36.0
    );
    let _ = writeln!(
        out,
        r##"<text transform="translate(16 {}) rotate(-90)" font-size="12" fill="#222" text-anchor="middle">latency (ms, log scale)</text>"##,
        fmt((TOP + BOTTOM) / 2.0)
    );

    // Curves, then dots at the labelled percentiles so values can be read off the grid.
    for (i, points) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let dash = if i >= COLORS.len() { r#" stroke-dasharray="6 3""# } else { "" };
        if points.is_empty() {
            continue;
        }
        let coords: Vec<String> = points.iter().map(|&(q, ms)| format!("{},{}", fmt(x_px(q)), fmt(y.px(ms)))).collect();
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" stroke-linejoin="round"{dash} points="{}"/>"#,
            coords.join(" ")
        );
        for &(q, ms) in points.iter().filter(|(q, _)| X_TICKS.iter().any(|t| t.0 == *q)) {
            let _ = writeln!(out, r#"<circle cx="{}" cy="{}" r="3" fill="{color}"/>"#, fmt(x_px(q)), fmt(y.px(ms)));
        }
    }

    // Legend: a line sample and the name, then the key figures under it.
    let _ = writeln!(
        out,
        r##"<text x="{LEGEND_X}" y="{TOP}" font-size="12" font-weight="bold" fill="#222">scenario <tspan font-weight="normal" font-size="10" fill="#555">(latency in ms)</tspan></text>"##
    );
    for (i, (s, points)) in plot.series.iter().zip(&series).enumerate() {
        let color = COLORS[i % COLORS.len()];
        let dash = if i >= COLORS.len() { r#" stroke-dasharray="6 3""# } else { "" };
        let top = TOP + 22.0 + 38.0 * i as f64;
        let _ = writeln!(
            out,
            r#"<line x1="{LEGEND_X}" y1="{top}" x2="{}" y2="{top}" stroke="{color}" stroke-width="3"{dash}/>"#,
            LEGEND_X + 22.0
        );
        let _ = writeln!(
            out,
            r##"<text x="{}" y="{top}" font-size="12" fill="#222" dominant-baseline="middle">{}</text>"##,
            LEGEND_X + 28.0,
            escape(&s.name)
        );
        let _ = writeln!(
            out,
            r##"<text x="{}" y="{}" font-size="10" fill="#555">{}</text>"##,
            LEGEND_X + 28.0,
            top + 16.0,
            escape(&key_figures(points))
        );
    }
    out.push_str("</svg>\n");
    out
}

/// `preferred` px, or smaller so that `text` fits between the left edge of the axes and the
/// right edge of the image; `em` is the font's average character width per px of size.
fn font_size(text: &str, preferred: f64, em: f64) -> String {
    let room = WIDTH - LEFT - 10.0;
    let chars = text.chars().count().max(1) as f64;
    fmt(preferred.min(room / (chars * em)).max(7.0))
}

/// `p50 0.41 · p99 1.23 · p99.9 4.56` (ms) from a curve (`-` where it has no such point).
fn key_figures(points: &[(f64, f64)]) -> String {
    if points.is_empty() {
        return "no data".to_owned();
    }
    let at = |q: f64| points.iter().find(|p| p.0 == q).map_or_else(|| "-".to_owned(), |p| fmt_ms(p.1));
    // SVG collapses runs of spaces, so the separator is a visible one.
    format!("p50 {} · p99 {} · p99.9 {}", at(0.5), at(0.99), at(0.999))
}

/// Short, about three significant digits, µs resolution: `0.041`, `0.412`, `4.12`, `41.2`, `412`.
fn fmt_ms(ms: f64) -> String {
    match ms {
        m if m >= 100.0 => format!("{m:.0}"),
        m if m >= 10.0 => format!("{m:.1}"),
        m if m >= 1.0 => format!("{m:.2}"),
        m => format!("{m:.3}"),
    }
}

/// Drops points that cannot be drawn (non-finite, quantile off the axis), clamps latency to
/// the floor of the log axis and keeps the quantiles strictly ascending.
fn clean(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64)> = points
        .iter()
        .filter(|(q, ms)| q.is_finite() && ms.is_finite() && (X_MIN_Q..=X_MAX_Q).contains(q))
        .map(|&(q, ms)| (q, ms.max(Y_FLOOR_MS)))
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out.dedup_by(|b, a| a.0 == b.0);
    out
}

/// Nines of quantile `q`: 0.9 -> 1, 0.99 -> 2, ...
fn nines(q: f64) -> f64 {
    -(1.0 - q).log10()
}

fn x_px(q: f64) -> f64 {
    let (lo, hi) = (nines(X_MIN_Q), nines(X_MAX_Q));
    LEFT + (nines(q) - lo) / (hi - lo) * (RIGHT - LEFT)
}

/// Widest y axis (in decades) with grid lines at 2 and 5 too.
const MAX_DECADES_1_2_5: i32 = 3;

/// A log y axis from one 1-2-5 value to another.
#[derive(Debug, Clone, Copy)]
struct YAxis {
    lo: Nice,
    hi: Nice,
}

/// `mantissa * 10^exp` with mantissa 1, 2 or 5: the values of the y grid.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Nice {
    mantissa: u32,
    exp: i32,
}

impl Nice {
    fn value(self) -> f64 {
        f64::from(self.mantissa) * 10f64.powi(self.exp)
    }

    fn next(self) -> Nice {
        match self.mantissa {
            1 => Nice { mantissa: 2, ..self },
            2 => Nice { mantissa: 5, ..self },
            _ => Nice { mantissa: 1, exp: self.exp + 1 },
        }
    }

    fn prev(self) -> Nice {
        match self.mantissa {
            5 => Nice { mantissa: 2, ..self },
            2 => Nice { mantissa: 1, ..self },
            _ => Nice { mantissa: 5, exp: self.exp - 1 },
        }
    }

    /// The largest 1-2-5 value at or below `v` (> 0).
    fn floor(v: f64) -> Nice {
        let exp = v.log10().floor() as i32;
        let mut n = Nice { mantissa: 5, exp };
        while n.value() > v * (1.0 + 1e-9) {
            n = n.prev();
        }
        n
    }

    /// Decimal text without float noise: `0.05`, `2`, `500`.
    fn label(self) -> String {
        if self.exp >= 0 {
            format!("{}{}", self.mantissa, "0".repeat(self.exp as usize))
        } else {
            format!("0.{}{}", "0".repeat((-self.exp - 1) as usize), self.mantissa)
        }
    }
}

/// One horizontal grid line.
#[derive(Debug)]
struct Tick {
    ms: f64,
    label: String,
    /// A power of ten (drawn darker).
    major: bool,
}

impl YAxis {
    /// From the 1-2-5 value at or below the smallest latency to the one at or above the largest
    /// (at least one step apart); 1..10 ms when there is nothing to show.
    fn fit(values: impl Iterator<Item = f64>) -> YAxis {
        let (min, max) = values.fold((f64::INFINITY, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
        if !(min.is_finite() && max.is_finite() && max > 0.0) {
            return YAxis { lo: Nice { mantissa: 1, exp: 0 }, hi: Nice { mantissa: 1, exp: 1 } };
        }
        let mut lo = Nice::floor(min.max(Y_FLOOR_MS));
        let mut hi = Nice::floor(max);
        if hi.value() < max * (1.0 - 1e-9) || hi == lo {
            hi = hi.next();
        }
        if hi.exp - lo.exp > MAX_DECADES_1_2_5 {
            // Only powers of ten get a grid line here, so the ends are powers of ten too.
            lo.mantissa = 1;
            while hi.mantissa != 1 {
                hi = hi.next();
            }
        }
        YAxis { lo, hi }
    }

    fn px(&self, ms: f64) -> f64 {
        let (lo, hi) = (self.lo.value().log10(), self.hi.value().log10());
        BOTTOM - (ms.max(Y_FLOOR_MS).log10() - lo) / (hi - lo) * (BOTTOM - TOP)
    }

    /// Every 1-2-5 value from `lo` to `hi`; only powers of ten when the axis spans more than
    /// `MAX_DECADES_1_2_5` decades (the labels would crowd).
    fn ticks(&self) -> Vec<Tick> {
        let decades = self.hi.exp - self.lo.exp;
        let mut ticks = Vec::new();
        let mut n = self.lo;
        loop {
            let major = n.mantissa == 1;
            if decades <= MAX_DECADES_1_2_5 || major {
                ticks.push(Tick { ms: n.value(), label: n.label(), major });
            }
            if n == self.hi {
                break;
            }
            n = n.next();
        }
        ticks
    }
}

/// A coordinate with two decimals (and no `-0`).
fn fmt(v: f64) -> String {
    let s = format!("{v:.2}");
    if s == "-0.00" {
        "0.00".to_owned()
    } else {
        s
    }
}

/// Text content or attribute value, XML-escaped.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Control characters other than tab and newline are not allowed in XML 1.0.
            c if c.is_control() && c != '\t' && c != '\n' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hist::CurvePoint;

    fn curve(scale_ms: f64) -> Vec<(f64, f64)> {
        crate::hist::curve_quantiles().map(|q| (q, scale_ms * (1.0 + nines(q)))).collect()
    }

    fn plot(names: &[&str]) -> Plot {
        Plot {
            title: "closed loop, 64 connections".to_owned(),
            subtitle: "median over rounds".to_owned(),
            series: names
                .iter()
                .enumerate()
                .map(|(i, n)| Series { name: (*n).to_owned(), points: curve(0.2 * (i + 1) as f64) })
                .collect(),
        }
    }

    /// Checks that every tag is closed in order and that text has no raw `<` or stray `&`.
    fn assert_well_formed(svg: &str) {
        let mut stack: Vec<&str> = Vec::new();
        let mut rest = svg;
        while let Some(open) = rest.find('<') {
            let text = &rest[..open];
            for (i, _) in text.match_indices('&') {
                let entity = &text[i..text[i..].find(';').map_or(text.len(), |e| i + e + 1)];
                assert!(
                    ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"].contains(&entity),
                    "bad entity {entity:?} in {text:?}"
                );
            }
            let close = rest[open..].find('>').expect("unclosed tag") + open;
            let tag = &rest[open + 1..close];
            assert!(!tag.contains('<'), "'<' inside a tag: {tag:?}");
            assert_eq!(tag.matches('"').count() % 2, 0, "unbalanced quotes: {tag:?}");
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(stack.pop(), Some(name), "mismatched </{name}>");
            } else if !tag.ends_with('/') {
                stack.push(tag.split_whitespace().next().expect("tag name"));
            }
            rest = &rest[close + 1..];
        }
        assert!(stack.is_empty(), "unclosed: {stack:?}");
        assert!(rest.trim().is_empty());
    }

    /// The coordinates of every polyline.
    fn polylines(svg: &str) -> Vec<Vec<(f64, f64)>> {
        svg.lines()
            .filter(|l| l.starts_with("<polyline"))
            .map(|l| {
                let points = l.split("points=\"").nth(1).and_then(|p| p.split('"').next()).expect("points");
                points
                    .split(' ')
                    .map(|xy| {
                        let (x, y) = xy.split_once(',').expect("x,y");
                        (x.parse().expect("x"), y.parse().expect("y"))
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn svg_one_polyline_and_legend_entry_per_series() {
        let names = ["direct", "gateway", "gateway-https", "nginx"];
        let svg = svg(&plot(&names));
        assert_well_formed(&svg);
        assert!(svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(polylines(&svg).len(), names.len());
        for name in names {
            assert!(svg.contains(&format!(">{name}</text>")), "legend lacks {name}");
        }
    }

    #[test]
    fn svg_coordinates_finite_inside_the_image_and_x_ascending() {
        let mut p = plot(&["a", "b", "c"]);
        // Points that must not reach the image: NaN, infinity, zero latency, off-axis quantile.
        p.series[0].points.extend([(0.9999, f64::NAN), (0.99999, 3.0), (f64::NAN, 1.0)]);
        p.series[1].points.insert(0, (0.5, 0.0));
        p.series[2].points.push((0.9999, f64::INFINITY));
        let svg = svg(&p);
        assert_well_formed(&svg);
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
        let lines = polylines(&svg);
        assert_eq!(lines.len(), 3);
        for line in lines {
            assert!(line.windows(2).all(|w| w[0].0 < w[1].0), "x not ascending: {line:?}");
            for (x, y) in line {
                assert!((LEFT..=RIGHT).contains(&x) && (TOP..=BOTTOM).contains(&y), "({x}, {y}) off the plot");
            }
        }
    }

    #[test]
    fn svg_escapes_title_and_names() {
        let mut p = plot(&["a<b>&\"c'"]);
        p.title = "rate <5k> & more".to_owned();
        let svg = svg(&p);
        assert_well_formed(&svg);
        assert!(svg.contains("a&lt;b&gt;&amp;&quot;c&apos;"));
        assert!(svg.contains("rate &lt;5k&gt; &amp; more"));
    }

    #[test]
    fn svg_without_data_is_still_a_document() {
        let svg = svg(&Plot::default());
        assert_well_formed(&svg);
        assert!(polylines(&svg).is_empty());
        let empty = svg_of_series(vec![Series { name: "x".to_owned(), points: Vec::new() }]);
        assert_well_formed(&empty);
        assert!(empty.contains("no data"));
    }

    fn svg_of_series(series: Vec<Series>) -> String {
        svg(&Plot { series, ..Plot::default() })
    }

    #[test]
    fn svg_flat_curve_gets_a_y_range() {
        let svg = svg_of_series(vec![Series { name: "flat".to_owned(), points: vec![(0.5, 1.0), (0.9, 1.0)] }]);
        let line = &polylines(&svg)[0];
        assert!(line.iter().all(|&(_, y)| y.is_finite() && (TOP..=BOTTOM).contains(&y)), "{line:?}");
    }

    #[test]
    fn x_axis_evenly_spaced_in_nines() {
        let xs: Vec<f64> = [0.9, 0.99, 0.999, 0.9999].into_iter().map(x_px).collect();
        let gaps: Vec<f64> = xs.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.iter().all(|g| (g - gaps[0]).abs() < 1e-6), "{gaps:?}");
        assert!((x_px(0.5) - LEFT).abs() < 1e-9 && (x_px(0.9999) - RIGHT).abs() < 1e-9);
    }

    #[test]
    fn y_axis_fits_one_two_five_bounds_and_labels() {
        let y = YAxis::fit([0.34, 12.0].into_iter());
        assert_eq!((y.lo.label(), y.hi.label()), ("0.2".to_owned(), "20".to_owned()));
        let labels: Vec<String> = y.ticks().into_iter().map(|t| t.label).collect();
        assert_eq!(labels, ["0.2", "0.5", "1", "2", "5", "10", "20"]);
        assert_eq!(Nice { mantissa: 5, exp: -3 }.label(), "0.005");
        assert_eq!(Nice { mantissa: 2, exp: 2 }.label(), "200");
        let exact = YAxis::fit([1.0, 5.0].into_iter());
        assert_eq!((exact.lo.value(), exact.hi.value()), (1.0, 5.0));
        let wide = YAxis::fit([0.07, 1500.0].into_iter());
        let labels: Vec<String> = wide.ticks().into_iter().map(|t| t.label).collect();
        assert_eq!(labels, ["0.01", "0.1", "1", "10", "100", "1000", "10000"]);
    }

    fn run(round: usize, us: &[u32]) -> RunResult {
        RunResult {
            latency_curve: crate::hist::curve_quantiles()
                .zip(us)
                .map(|(quantile, &us)| CurvePoint { quantile, us })
                .collect(),
            ..RunResult::empty(round)
        }
    }

    #[test]
    fn median_curve_per_point_over_rounds_and_shortest_round() {
        let rounds = [run(1, &[100, 200, 900]), run(2, &[300, 400]), run(3, &[200, 600, 700])];
        let got = median_curve(&rounds);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], (0.5, 0.2));
        assert!((got[1].1 - 0.4).abs() < 1e-12);
        assert!(median_curve(&[]).is_empty());
    }
}
