//! The HTML report: one self-contained file (inline CSS, inline SVG charts drawn with
//! `plotters`, no script, nothing loaded from anywhere), so it can be mailed or archived
//! as is and opened offline.

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;

use super::{Report, Row};

const DAY_MS: i64 = 86_400_000;
/// Daily charts cover at most this many days (the most recent ones).
const MAX_DAYS: i64 = 400;
const WIDTH: u32 = 560;
const HEIGHT: u32 = 300;

/// Escapes text for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// One coloured series of a bar chart.
struct Series {
    name: &'static str,
    color: RGBColor,
    values: Vec<usize>,
}

/// A bar chart as an SVG string: one bar per label, series stacked.
fn bar_chart(title: &str, y_desc: &str, labels: &[String], series: &[Series]) -> anyhow::Result<String> {
    let n = labels.len().max(1);
    let max = (0..n)
        .map(|i| {
            series
                .iter()
                .map(|s| s.values.get(i).copied().unwrap_or(0))
                .sum::<usize>()
        })
        .max()
        .unwrap_or(0)
        .max(1);
    // Headroom for the legend.
    let top = (max as f64 * 1.25).ceil() as u32 + 1;
    let mut svg = String::new();
    {
        let fail = |e: &dyn std::fmt::Display| anyhow::anyhow!("drawing the chart “{title}”: {e}");
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| fail(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(48)
            // A u32 range is inclusive for segments: `0..n-1` gives n of them.
            .build_cartesian_2d((0..n as u32 - 1).into_segmented(), 0u32..top)
            .map_err(|e| fail(&e))?;
        let label_step = n.div_ceil(15).max(1);
        chart
            .configure_mesh()
            .disable_x_mesh()
            .y_desc(y_desc)
            .x_labels(n.min(40))
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) if (*i as usize) % label_step == 0 => labels
                    .get(*i as usize)
                    .map(|l| crate::text::truncate(l, 14))
                    .unwrap_or_default(),
                _ => String::new(),
            })
            .x_label_style(("sans-serif", 11))
            .draw()
            .map_err(|e| fail(&e))?;
        let mut base = vec![0u32; n];
        for s in series {
            let color = s.color;
            let bars: Vec<Rectangle<(SegmentValue<u32>, u32)>> = (0..n)
                .filter_map(|i| {
                    let v = s.values.get(i).copied().unwrap_or(0) as u32;
                    if v == 0 {
                        return None;
                    }
                    let from = base[i];
                    base[i] += v;
                    let mut bar = Rectangle::new(
                        [
                            (SegmentValue::Exact(i as u32), from),
                            (SegmentValue::Exact(i as u32 + 1), from + v),
                        ],
                        color.filled(),
                    );
                    bar.set_margin(0, 0, 2, 2);
                    Some(bar)
                })
                .collect();
            chart
                .draw_series(bars)
                .map_err(|e| fail(&e))?
                .label(s.name)
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
        }
        if series.len() > 1 || !series.is_empty() && !series[0].name.is_empty() {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.9))
                .border_style(BLACK.mix(0.3))
                .draw()
                .map_err(|e| fail(&e))?;
        }
        root.present().map_err(|e| fail(&e))?;
    }
    Ok(svg)
}

const GREEN: RGBColor = RGBColor(46, 160, 67);
const RED: RGBColor = RGBColor(207, 34, 46);
const GREY: RGBColor = RGBColor(140, 149, 159);
const AMBER: RGBColor = RGBColor(191, 135, 0);
const BLUE: RGBColor = RGBColor(9, 105, 218);
const PURPLE: RGBColor = RGBColor(130, 80, 223);

/// The days of the period (UTC) as labels `MM-DD`, and the day index of a time.
fn days(report: &Report) -> (i64, Vec<String>) {
    let p = report.period;
    let total = ((p.until - p.since).max(1) + DAY_MS - 1) / DAY_MS;
    let first = p.since + (total - total.min(MAX_DAYS)) * DAY_MS;
    let n = total.min(MAX_DAYS);
    let labels = (0..n)
        .map(|d| {
            chrono::DateTime::from_timestamp_millis(first + d * DAY_MS)
                .map(|t| t.format("%m-%d").to_string())
                .unwrap_or_default()
        })
        .collect();
    (first, labels)
}

fn day_index(first: i64, n: usize, at: i64) -> Option<usize> {
    let d = (at - first).div_euclid(DAY_MS);
    (d >= 0 && (d as usize) < n).then_some(d as usize)
}

/// Buckets of time to decision.
const DECISION_BUCKETS: [(&str, i64); 7] = [
    ("< 1 min", 60),
    ("1–5 min", 300),
    ("5–15 min", 900),
    ("15–60 min", 3600),
    ("1–4 h", 4 * 3600),
    ("4–24 h", 86_400),
    ("> 1 day", i64::MAX),
];

/// The charts, each as (id, caption, svg).
fn charts(report: &Report) -> anyhow::Result<Vec<(&'static str, &'static str, String)>> {
    let (first, day_labels) = days(report);
    let n = day_labels.len();
    let mut granted = vec![0; n];
    let mut denied = vec![0; n];
    let mut lapsed = vec![0; n];
    let mut other = vec![0; n];
    let mut auto = vec![0; n];
    let mut glass = vec![0; n];
    for r in &report.records {
        let Some(d) = day_index(first, n, r.created_at) else {
            continue;
        };
        match r.state.as_str() {
            "denied" => denied[d] += 1,
            "expired" | "cancelled" => lapsed[d] += 1,
            _ if r.granted_at.is_some() => granted[d] += 1,
            _ => other[d] += 1,
        }
        if super::auto_approved(r) {
            auto[d] += 1;
        }
        if r.break_glass_at.is_some() {
            glass[d] += 1;
        }
    }
    let per_day = bar_chart(
        "Requests per day by outcome",
        "requests",
        &day_labels,
        &[
            Series {
                name: "granted",
                color: GREEN,
                values: granted,
            },
            Series {
                name: "denied",
                color: RED,
                values: denied,
            },
            Series {
                name: "timed out or withdrawn",
                color: GREY,
                values: lapsed,
            },
            Series {
                name: "pending or failed",
                color: AMBER,
                values: other,
            },
        ],
    )?;
    let mut buckets = vec![0; DECISION_BUCKETS.len()];
    for t in report.rows.iter().filter_map(|r| r.time_to_decision) {
        if let Some(i) = DECISION_BUCKETS.iter().position(|(_, upto)| t < *upto) {
            buckets[i] += 1;
        }
    }
    let decision = bar_chart(
        "Time to decision",
        "requests",
        &DECISION_BUCKETS.iter().map(|(l, _)| l.to_string()).collect::<Vec<_>>(),
        &[Series {
            name: "",
            color: BLUE,
            values: buckets,
        }],
    )?;
    let top = |title, counts: &[super::Count], color| {
        bar_chart(
            title,
            "requests",
            &counts.iter().map(|c| c.name.clone()).collect::<Vec<_>>(),
            &[Series {
                name: "",
                color,
                values: counts.iter().map(|c| c.requests).collect(),
            }],
        )
    };
    let resources = top("Top resources", &report.summary.top_resources, BLUE)?;
    let requesters = top("Top requesters", &report.summary.top_requesters, PURPLE)?;
    let bypass = bar_chart(
        "Auto-approvals and break-glass uses per day",
        "requests",
        &day_labels,
        &[
            Series {
                name: "on-call auto-approval",
                color: BLUE,
                values: auto,
            },
            Series {
                name: "break-glass",
                color: RED,
                values: glass,
            },
        ],
    )?;
    Ok(vec![
        ("chart-per-day", "Requests per day, by how they ended", per_day),
        (
            "chart-time-to-decision",
            "How long requests waited for a decision",
            decision,
        ),
        ("chart-top-resources", "Most requested resources", resources),
        ("chart-top-requesters", "People who asked most often", requesters),
        (
            "chart-bypass",
            "How often the normal approval path was bypassed",
            bypass,
        ),
    ])
}

fn seconds(s: Option<i64>) -> String {
    match s {
        None => String::new(),
        Some(s) if s < 60 => format!("{s}s"),
        Some(s) if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        Some(s) => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

fn table_row(r: &Row, break_glass: bool) -> String {
    let cells = [
        r.requester.clone(),
        r.resource.clone(),
        r.role.clone(),
        r.reason.clone(),
        r.approvers.clone(),
        r.requested_at.clone(),
        r.decided_at.clone().unwrap_or_default(),
        r.granted_at.clone().unwrap_or_default(),
        r.ended_at.clone().unwrap_or_default(),
        seconds(r.time_to_decision),
        seconds(r.time_used),
        r.outcome.clone(),
        r.extensions.to_string(),
    ];
    let mut out = String::from(if break_glass {
        "<tr class=\"break-glass\">"
    } else {
        "<tr>"
    });
    for c in cells {
        out.push_str("<td>");
        out.push_str(&escape(&c));
        out.push_str("</td>");
    }
    out.push_str("</tr>\n");
    out
}

const STYLE: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px;color:#1f2328;}\
h1{font-size:24px;margin-bottom:4px}.period{color:#59636e;margin-top:0}\
.summary{display:flex;flex-wrap:wrap;gap:12px;margin:16px 0}\
.summary div{border:1px solid #d1d9e0;border-radius:6px;padding:8px 14px;min-width:110px}\
.summary b{display:block;font-size:22px}\
.charts{display:flex;flex-wrap:wrap;gap:16px}\
figure.chart{margin:0;border:1px solid #d1d9e0;border-radius:6px;padding:8px}\
figure.chart svg{max-width:100%;height:auto}figcaption{color:#59636e;font-size:13px}\
table{border-collapse:collapse;margin-top:20px;font-size:13px}\
th,td{border:1px solid #d1d9e0;padding:4px 6px;text-align:left;vertical-align:top}\
th{background:#f6f8fa}tr.break-glass td{background:#ffebe9}";

/// The whole page.
pub fn render(report: &Report) -> anyhow::Result<String> {
    let s = &report.summary;
    let mut page = String::with_capacity(64 * 1024);
    page.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    page.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">");
    // Nothing may load from anywhere: the policy makes the browser refuse it even if a
    // later change forgot.
    page.push_str(
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">",
    );
    page.push_str("<title>jitgate access report</title><style>");
    page.push_str(STYLE);
    page.push_str("</style></head><body>\n<h1>jitgate access report</h1>\n");
    page.push_str(&format!(
        "<p class=\"period\">From {} to {} · generated {}</p>\n",
        escape(&s.since),
        escape(&s.until),
        escape(&s.generated_at)
    ));
    page.push_str("<section class=\"summary\" id=\"summary\">");
    let time_used = seconds(Some(s.total_time_used));
    let median = seconds(s.median_time_to_decision);
    for (label, value) in [
        ("requests", s.requests.to_string()),
        ("granted", s.granted.to_string()),
        ("denied", s.outcomes.get("denied").copied().unwrap_or(0).to_string()),
        ("auto-approved", s.auto_approved.to_string()),
        ("break-glass", s.break_glass.to_string()),
        ("break-glass unreviewed", s.break_glass_unreviewed.to_string()),
        (
            "median time to decision",
            if median.is_empty() { "–".into() } else { median },
        ),
        ("access time used", time_used),
    ] {
        page.push_str(&format!("<div><b>{}</b>{}</div>", escape(&value), escape(label)));
    }
    page.push_str("</section>\n<section class=\"charts\">\n");
    for (id, caption, svg) in charts(report)? {
        page.push_str(&format!(
            "<figure class=\"chart\" id=\"{id}\">{svg}<figcaption>{}</figcaption></figure>\n",
            escape(caption)
        ));
    }
    page.push_str("</section>\n<table id=\"accesses\"><thead><tr>");
    for c in super::COLUMNS {
        page.push_str(&format!("<th>{c}</th>"));
    }
    page.push_str("</tr></thead><tbody>\n");
    for (row, rec) in report.rows.iter().zip(&report.records) {
        page.push_str(&table_row(row, rec.break_glass_at.is_some()));
    }
    if report.rows.is_empty() {
        page.push_str(&format!(
            "<tr><td colspan=\"{}\">No access requests in this period.</td></tr>",
            super::COLUMNS.len()
        ));
    }
    page.push_str("</tbody></table>\n</body></html>\n");
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::super::tests::record;
    use super::super::{build, Period};
    use super::*;

    fn report() -> Report {
        let day = DAY_MS;
        let mut recs: Vec<_> = (0..12).map(|i| record(i, i * day / 2)).collect();
        recs[1].reason = "<script>alert(1)</script>".into();
        recs[2].state = "denied".into();
        recs[3].break_glass_at = Some(recs[3].created_at);
        recs[4].approved_by = Some("oncall:db".into());
        build(
            Period {
                since: 0,
                until: 7 * day,
                generated_at: 7 * day,
            },
            recs,
        )
    }

    #[test]
    fn the_page_is_self_contained_with_five_charts_and_a_row_per_access() {
        let html = render(&report()).unwrap();
        assert_eq!(html.matches("<figure class=\"chart\"").count(), 5);
        assert_eq!(html.matches("<svg").count(), 5);
        assert_eq!(html.matches("<tr").count(), 1 + 12);
        assert_eq!(html.matches("<tr class=\"break-glass\">").count(), 1);
        // Nothing to fetch: no scripts, links, sources or CSS URLs; the only URL is the SVG
        // namespace, which is a name, not a load.
        for needle in ["<script", "<link", "src=", "href=", "url(", "@import"] {
            assert!(!html.contains(needle), "{needle} in the report");
        }
        assert!(!html.contains("https:") && !html.contains("//cdn"));
        assert_eq!(
            html.matches("http://").count(),
            html.matches("http://www.w3.org/2000/svg").count()
        );
    }

    #[test]
    fn user_text_is_escaped() {
        let html = render(&report()).unwrap();
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    }

    #[test]
    fn an_empty_period_still_renders() {
        let r = build(
            Period {
                since: 0,
                until: DAY_MS,
                generated_at: DAY_MS,
            },
            vec![],
        );
        let html = render(&r).unwrap();
        assert!(html.contains("No access requests in this period."));
        assert_eq!(html.matches("<svg").count(), 5);
    }
}
