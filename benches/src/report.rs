//! The report: a Markdown table (`report.md`) and a bar plot of the ratios
//! (`report.svg`, drawn with plotters' SVG backend).

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use crate::measure::Summary;

/// One line of the report: a measurement next to its baseline.
#[derive(Debug, Clone)]
pub struct Row {
    /// The scenario group, e.g. `socketpair`.
    pub group: &'static str,
    /// What is measured, e.g. `64 B recvmmsg`.
    pub name: String,
    /// Unit of the figures.
    pub unit: &'static str,
    /// What the baseline is.
    pub baseline_name: String,
    /// The outcome.
    pub outcome: Outcome,
}

/// A measured row, or why it has no figures.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Measured: the figure, its baseline, `ratio = figure / baseline`.
    Measured {
        /// The measured figure.
        value: Summary,
        /// The baseline, measured in the same run.
        baseline: Summary,
        /// `value.median / baseline.median`, or its inverse for times
        /// (see [`Row::ratio`]).
        ratio: f64,
    },
    /// Not run (no root, a missing feature), with the reason.
    Skipped(String),
    /// The scenario failed, with the error.
    Failed(String),
    /// The baseline — a peer project, not fdlink — failed, with its error:
    /// reported, but the run still succeeds.
    BaselineFailed(String),
}

impl Row {
    /// A measured row; the ratio is `value / baseline` of the medians.
    pub fn measured(
        group: &'static str,
        name: impl Into<String>,
        unit: &'static str,
        baseline_name: impl Into<String>,
        value: Summary,
        baseline: Summary,
    ) -> Row {
        Row {
            group,
            name: name.into(),
            unit,
            baseline_name: baseline_name.into(),
            outcome: Outcome::Measured {
                value,
                baseline,
                ratio: value.median / baseline.median,
            },
        }
    }

    /// A row without figures.
    pub fn without(group: &'static str, name: impl Into<String>, outcome: Outcome) -> Row {
        Row {
            group,
            name: name.into(),
            unit: "",
            baseline_name: String::new(),
            outcome,
        }
    }

    /// The ratio, when measured.
    pub fn ratio(&self) -> Option<f64> {
        match self.outcome {
            Outcome::Measured { ratio, .. } => Some(ratio),
            _ => None,
        }
    }

    /// `group: name`.
    pub fn label(&self) -> String {
        format!("{}: {}", self.group, self.name)
    }
}

/// A goal on one row.
#[derive(Debug, Clone)]
pub struct Goal {
    /// What the goal says.
    pub text: &'static str,
    /// The row (by [`Row::label`]) that is checked.
    pub row: String,
    /// What meets it.
    pub bound: Bound,
}

/// What meets a [`Goal`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Bound {
    /// The row's ratio is at least this.
    RatioAtLeast(f64),
    /// The row's own figure (median, in the row's unit) is at most this.
    ValueAtMost(f64),
}

impl Goal {
    /// A goal met by a ratio of at least `min`.
    pub fn ratio(text: &'static str, row: impl Into<String>, min: f64) -> Goal {
        Goal {
            text,
            row: row.into(),
            bound: Bound::RatioAtLeast(min),
        }
    }

    /// A goal met by a figure of at most `max`.
    pub fn value_at_most(text: &'static str, row: impl Into<String>, max: f64) -> Goal {
        Goal {
            text,
            row: row.into(),
            bound: Bound::ValueAtMost(max),
        }
    }
}

/// Formats a figure with a precision that suits its size.
pub fn fmt_value(v: f64) -> String {
    if !v.is_finite() {
        "—".to_owned()
    } else if v >= 1e6 {
        format!("{:.3} M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1} k", v / 1e3)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn spread(s: &Summary) -> String {
    if s.runs <= 1 {
        "—".to_owned()
    } else {
        format!("{}–{}", fmt_value(s.min), fmt_value(s.max))
    }
}

fn cpu(s: &Summary) -> String {
    match (s.cpu, s.wall) {
        (Some(c), Some(w)) => format!("{c:.2}/{w:.2}"),
        _ => "—".to_owned(),
    }
}

fn wakeups(s: &Summary) -> Option<String> {
    s.per_wakeup.map(|w| format!("{w:.1}"))
}

/// How each goal fared: `(goal, achieved ratio or figure, met)`.
pub fn check_goals<'g>(rows: &[Row], goals: &'g [Goal]) -> Vec<(&'g Goal, Option<f64>, bool)> {
    goals
        .iter()
        .map(|g| {
            let row = rows.iter().find(|r| r.label() == g.row);
            match g.bound {
                Bound::RatioAtLeast(min) => {
                    let ratio = row.and_then(Row::ratio);
                    (g, ratio, ratio.is_some_and(|r| r >= min))
                }
                Bound::ValueAtMost(max) => {
                    let value = row.and_then(|r| match r.outcome {
                        Outcome::Measured { value, .. } => Some(value.median),
                        _ => None,
                    });
                    (g, value, value.is_some_and(|v| v <= max))
                }
            }
        })
        .collect()
}

/// The Markdown report.
pub fn markdown(rows: &[Row], goals: &[Goal], header: &str) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# fdlink benchmarks\n\n{header}\n");
    md.push_str(
        "| scenario | fdlink | baseline | ratio | fdlink min–max | baseline min–max | \
         CPU s / wall s (fdlink; baseline) | pkts/wakeup (fdlink; baseline) |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        match &r.outcome {
            Outcome::Measured {
                value,
                baseline,
                ratio,
            } => {
                let w = match (wakeups(value), wakeups(baseline)) {
                    (None, None) => "—".to_owned(),
                    (a, b) => format!("{}; {}", a.unwrap_or("—".into()), b.unwrap_or("—".into())),
                };
                let _ = writeln!(
                    md,
                    "| {} | {} {} | {} {} ({}) | **{:.2}** | {} | {} | {}; {} | {} |",
                    r.label(),
                    fmt_value(value.median),
                    r.unit,
                    fmt_value(baseline.median),
                    r.unit,
                    r.baseline_name,
                    ratio,
                    spread(value),
                    spread(baseline),
                    cpu(value),
                    cpu(baseline),
                    w
                );
            }
            Outcome::Skipped(why) => {
                let _ = writeln!(md, "| {} | skipped: {why} | | | | | | |", r.label());
            }
            Outcome::Failed(why) => {
                let _ = writeln!(md, "| {} | FAILED: {why} | | | | | | |", r.label());
            }
            Outcome::BaselineFailed(why) => {
                let _ = writeln!(md, "| {} | | FAILED: {why} | | | | | |", r.label());
            }
        }
    }
    md.push_str("\n## Goals\n\n| goal | ratio (or figure) | |\n|---|---:|---|\n");
    for (g, achieved, met) in check_goals(rows, goals) {
        let unit = rows
            .iter()
            .find(|r| r.label() == g.row)
            .map_or("", |r| r.unit);
        let (r, verdict) = match (achieved, g.bound) {
            (Some(r), Bound::RatioAtLeast(_)) => {
                (format!("{r:.2}"), if met { "met" } else { "**missed**" })
            }
            (Some(v), Bound::ValueAtMost(_)) => (
                format!("{} {unit}", fmt_value(v)),
                if met { "met" } else { "**missed**" },
            ),
            (None, _) => ("—".to_owned(), "not measured"),
        };
        let _ = writeln!(md, "| {} | {r} | {verdict} |", g.text);
    }
    md
}

/// Draws the ratios of the measured rows as horizontal bars, with a line
/// at 1 (parity with the baseline).
pub fn svg(rows: &[Row], path: &Path) -> Result<(), String> {
    let bars: Vec<(String, f64)> = rows
        .iter()
        .filter_map(|r| r.ratio().filter(|x| x.is_finite()).map(|x| (r.label(), x)))
        .collect();
    if bars.is_empty() {
        return svg_empty(path);
    }
    let n = bars.len();
    let max = bars.iter().map(|b| b.1).fold(1.0, f64::max) * 1.15;
    let height = 90 + 26 * n as u32;
    // Room for the longest label (about 6.5 px a character at 12 px).
    let longest = bars.iter().map(|b| b.0.chars().count()).max().unwrap_or(0) as u32;
    let label_width = (longest * 13 / 2 + 10).max(470);
    let root = SVGBackend::new(path, (630 + label_width, height)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| format!("plot: {e}");
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "fdlink / baseline (ratio, median of runs)",
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(label_width)
        .build_cartesian_2d(0.0..max, (0..n).into_segmented())
        .map_err(|e| err(&e))?;
    let labels: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n)
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .x_desc("ratio")
        .label_style(("sans-serif", 12))
        .draw()
        .map_err(|e| err(&e))?;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, (_, x))| {
            // One colour: whether above 1 is good depends on the row (the
            // micro time rows are multiples of a copy, lower is better).
            let color = BLUE;
            let mut bar = Rectangle::new(
                [
                    (0.0, SegmentValue::Exact(i)),
                    (*x, SegmentValue::Exact(i + 1)),
                ],
                color.mix(0.6).filled(),
            );
            bar.set_margin(3, 3, 0, 0);
            bar
        }))
        .map_err(|e| err(&e))?;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, (_, x))| {
            Text::new(
                format!("{x:.2}"),
                (*x, SegmentValue::CenterOf(i)),
                ("sans-serif", 12),
            )
        }))
        .map_err(|e| err(&e))?;
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![(1.0, SegmentValue::Exact(0)), (1.0, SegmentValue::Last)],
            BLACK.stroke_width(1),
        )))
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))
}

fn svg_empty(path: &Path) -> Result<(), String> {
    let root = SVGBackend::new(path, (600, 80)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    root.draw_text(
        "no measurement",
        &("sans-serif", 16).into_text_style(&root),
        (20, 30),
    )
    .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(name: &str, value: f64, baseline: f64) -> Row {
        Row::measured(
            "g",
            name,
            "KiB",
            "b",
            Summary::single(value),
            Summary::single(baseline),
        )
    }

    #[test]
    fn goals_check_a_ratio_from_below_and_a_figure_from_above() {
        let rows = [measured("fast", 5.0, 1.0), measured("small", 40.0, 80.0)];
        let goals = [
            Goal::ratio("ratio met", "g: fast", 4.0),
            Goal::ratio("ratio missed", "g: fast", 6.0),
            Goal::value_at_most("figure met", "g: small", 64.0),
            Goal::value_at_most("figure missed", "g: small", 32.0),
            Goal::ratio("absent", "g: none", 1.0),
        ];
        let verdicts: Vec<(Option<f64>, bool)> = check_goals(&rows, &goals)
            .into_iter()
            .map(|(_, achieved, met)| (achieved, met))
            .collect();
        assert_eq!(
            verdicts,
            [
                (Some(5.0), true),
                (Some(5.0), false),
                (Some(40.0), true),
                (Some(40.0), false),
                (None, false)
            ]
        );
        let md = markdown(&rows, &goals, "");
        assert!(md.contains("| figure met | 40.0 KiB | met |"), "{md}");
    }
}
