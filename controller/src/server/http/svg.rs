//! Server-rendered SVG charts for the status page: no JavaScript, every value also in a
//! `<title>` (a tooltip in a browser, and what tests and screen readers read) and every
//! text through [`esc`].

use std::fmt::Write;

use super::html::esc;

/// Chart width and height in SVG units (the chart scales to its box).
const W: f64 = 640.0;
const H: f64 = 200.0;
/// Plot margins: left (axis labels), right, top, bottom (time labels).
const ML: f64 = 40.0;
const MR: f64 = 10.0;
const MT: f64 = 10.0;
const MB: f64 = 36.0;

/// One series of a chart: name, colour, and one value per column or point.
#[derive(Debug, Clone)]
pub struct Series {
    /// Shown in the legend and titles.
    pub name: String,
    /// A CSS colour.
    pub colour: &'static str,
    /// The values, one per column (bars) or point (lines).
    pub values: Vec<f64>,
}

fn open(id: &str, summary: &str) -> String {
    format!(
        "<svg id=\"{id}\" class=\"chart\" viewBox=\"0 0 {W} {H}\" width=\"100%\" preserveAspectRatio=\"xMidYMid meet\" role=\"img\" xmlns=\"http://www.w3.org/2000/svg\"><title>{}</title>",
        esc(summary),
        id = esc(id)
    )
}

/// A round upper bound for the y axis (at least 1).
fn nice_max(max: f64) -> f64 {
    if !max.is_finite() || max <= 1.0 {
        return 1.0;
    }
    let mag = 10f64.powf(max.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * mag >= max {
            return m * mag;
        }
    }
    10.0 * mag
}

fn num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.1}")
    }
}

fn axis(out: &mut String, max: f64, unit: &str) {
    let bottom = H - MB;
    let _ = write!(
        out,
        "<line x1=\"{ML}\" y1=\"{bottom}\" x2=\"{}\" y2=\"{bottom}\" stroke=\"#99a\"/>",
        W - MR
    );
    for frac in [0.0, 0.5, 1.0] {
        let y = bottom - frac * (bottom - MT);
        let _ = write!(
            out,
            "<text x=\"{}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"end\" fill=\"#667\">{}{}</text>",
            ML - 4.0,
            y + 3.0,
            esc(&num(max * frac)),
            esc(unit)
        );
        if frac > 0.0 {
            let _ = write!(
                out,
                "<line x1=\"{ML}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\" stroke=\"#e6e8ee\"/>",
                W - MR
            );
        }
    }
}

fn legend(out: &mut String, series: &[Series], totals: bool) {
    let mut x = ML;
    for s in series {
        let label = if totals {
            format!("{} {}", s.name, num(s.values.iter().sum()))
        } else {
            s.name.clone()
        };
        let _ = write!(
            out,
            "<rect x=\"{x:.1}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{}\"/><text class=\"legend\" x=\"{:.1}\" y=\"{}\" font-size=\"11\" fill=\"#334\">{}</text>",
            H - 12.0,
            s.colour,
            x + 14.0,
            H - 3.0,
            esc(&label)
        );
        x += 28.0 + 7.0 * label.chars().count() as f64;
    }
}

/// Stacked columns, one per label (`labels[i]` under column `i`, every `label_every`th
/// shown); each segment's title reads `<label>: <value> <series>`.
pub fn stacked_bars(
    id: &str,
    summary: &str,
    labels: &[String],
    label_every: usize,
    series: &[Series],
) -> String {
    let n = labels.len().max(1);
    let totals: Vec<f64> = (0..n)
        .map(|i| {
            series
                .iter()
                .map(|s| s.values.get(i).copied().unwrap_or(0.0))
                .sum()
        })
        .collect();
    let max = nice_max(totals.iter().copied().fold(0.0, f64::max));
    let mut out = open(id, summary);
    axis(&mut out, max, "");
    let plot_h = H - MB - MT;
    let slot = (W - ML - MR) / n as f64;
    let bar = (slot * 0.7).max(1.0);
    for (i, label) in labels.iter().enumerate() {
        let x = ML + slot * i as f64 + (slot - bar) / 2.0;
        let mut y = H - MB;
        for s in series {
            let v = s.values.get(i).copied().unwrap_or(0.0);
            if v <= 0.0 {
                continue;
            }
            let h = v / max * plot_h;
            y -= h;
            let _ = write!(
                out,
                "<rect class=\"bar\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{bar:.1}\" height=\"{h:.1}\" fill=\"{}\"><title>{}</title></rect>",
                s.colour,
                esc(&format!("{label}: {} {}", num(v), s.name))
            );
        }
        if label_every > 0 && i % label_every == 0 {
            let _ = write!(
                out,
                "<text x=\"{:.1}\" y=\"{}\" font-size=\"10\" text-anchor=\"middle\" fill=\"#667\">{}</text>",
                x + bar / 2.0,
                H - MB + 12.0,
                esc(label)
            );
        }
    }
    legend(&mut out, series, true);
    out.push_str("</svg>");
    out
}

/// Horizontal bars, one per `(label, value)`, in groups; each bar's title reads
/// `<label> <value><unit>`, and the value is written beside it.
pub fn hbars(id: &str, summary: &str, unit: &str, bars: &[(String, f64, &'static str)]) -> String {
    let max = nice_max(bars.iter().map(|b| b.1).fold(0.0, f64::max));
    let mut out = open(id, summary);
    let n = bars.len().max(1) as f64;
    let row = ((H - MT - 6.0) / n).min(28.0);
    let left = 130.0;
    let width = W - left - 70.0;
    for (i, (label, v, colour)) in bars.iter().enumerate() {
        let y = MT + row * i as f64;
        let w = (v / max * width).max(if *v > 0.0 { 1.0 } else { 0.0 });
        let text = format!("{label} {}{unit}", num(*v));
        let _ = write!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\" fill=\"#334\">{}</text><rect class=\"bar\" x=\"{left}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{:.1}\" fill=\"{colour}\"><title>{}</title></rect><text class=\"value\" x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" fill=\"#334\">{}</text>",
            left - 6.0,
            y + row * 0.6,
            esc(label),
            row * 0.75,
            esc(&text),
            left + w + 4.0,
            y + row * 0.6,
            esc(&format!("{}{unit}", num(*v)))
        );
    }
    out.push_str("</svg>");
    out
}

/// Lines over time, one per series (`labels` under the x axis, every `label_every`th
/// shown); each line's title reads `<series>: <last> now, max <max>`.
pub fn lines(
    id: &str,
    summary: &str,
    labels: &[String],
    label_every: usize,
    series: &[Series],
) -> String {
    let max = nice_max(
        series
            .iter()
            .flat_map(|s| s.values.iter().copied())
            .fold(0.0, f64::max),
    );
    let mut out = open(id, summary);
    axis(&mut out, max, "");
    let n = labels.len();
    let plot_h = H - MB - MT;
    let step = if n > 1 {
        (W - ML - MR) / (n - 1) as f64
    } else {
        0.0
    };
    for s in series {
        let points: Vec<String> = s
            .values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                format!(
                    "{:.1},{:.1}",
                    ML + step * i as f64,
                    H - MB - v / max * plot_h
                )
            })
            .collect();
        let last = s.values.last().copied().unwrap_or(0.0);
        let peak = s.values.iter().copied().fold(0.0, f64::max);
        let _ = write!(
            out,
            "<polyline class=\"line\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"><title>{}</title></polyline>",
            s.colour,
            points.join(" "),
            esc(&format!("{}: {} now, max {}", s.name, num(last), num(peak)))
        );
    }
    for (i, label) in labels.iter().enumerate() {
        if label_every > 0 && i % label_every == 0 {
            let _ = write!(
                out,
                "<text x=\"{:.1}\" y=\"{}\" font-size=\"10\" text-anchor=\"middle\" fill=\"#667\">{}</text>",
                ML + step * i as f64,
                H - MB + 12.0,
                esc(label)
            );
        }
    }
    legend(&mut out, series, false);
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_in_titles_and_text_is_escaped() {
        let s = stacked_bars(
            "c",
            "jobs <all>",
            &["10:00".into(), "11:00".into()],
            1,
            &[
                Series {
                    name: "success".into(),
                    colour: "#2e9d57",
                    values: vec![3.0, 0.0],
                },
                Series {
                    name: "failed".into(),
                    colour: "#c63b3b",
                    values: vec![1.0, 2.0],
                },
            ],
        );
        assert!(s.contains("<title>jobs &lt;all&gt;</title>"), "{s}");
        assert!(s.contains("<title>10:00: 3 success</title>"), "{s}");
        assert!(s.contains("<title>11:00: 2 failed</title>"), "{s}");
        assert!(
            !s.contains("11:00: 0 success"),
            "empty segments are not drawn"
        );
        assert!(s.contains(">success 3<") && s.contains(">failed 3<"), "{s}");
        let h = hbars("h", "p", " s", &[("p50 <x>".into(), 2.5, "#333")]);
        assert!(h.contains("<title>p50 &lt;x&gt; 2.5 s</title>"), "{h}");
        let l = lines(
            "l",
            "agents",
            &["a".into(), "b".into()],
            1,
            &[Series {
                name: "healthy".into(),
                colour: "#2e9d57",
                values: vec![3.0, 2.0],
            }],
        );
        assert!(l.contains("<title>healthy: 2 now, max 3</title>"), "{l}");
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(7.0), 10.0);
        assert_eq!(nice_max(230.0), 250.0);
    }
}
