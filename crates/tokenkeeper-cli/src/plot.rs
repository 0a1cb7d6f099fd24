//! `--plot FILE.svg`: a run's timeline as a picture, for `simulate` and
//! `demo`.
//!
//! Three panels share the time axis: requests to the authority per second;
//! what reads of the token found (fresh, stale from the grace period, or
//! nothing usable), as shares of the reads; and the lifetimes of the tokens
//! one instance held (fresh, then stale, until expiry). Outages are shaded
//! across all three, wall-clock steps drawn as vertical lines.
//!
//! Drawn with plotters' SVG backend alone: no system library and no font is
//! needed, since an SVG file names its fonts and the viewer draws the text
//! (plotters only estimates text widths for the layout).

use std::path::Path;
use std::time::Duration;

use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use crate::error::CliError;

/// Size of the picture, in pixels.
const WIDTH: u32 = 1000;
const HEIGHT: u32 = 820;

const BLUE: RGBColor = RGBColor(31, 119, 180);
const FRESH: RGBColor = RGBColor(46, 160, 67);
const STALE: RGBColor = RGBColor(232, 160, 0);
const NOTHING: RGBColor = RGBColor(214, 39, 40);
const DOWN: RGBColor = RGBColor(214, 39, 40);
const STEP: RGBColor = RGBColor(148, 103, 189);
const INK: RGBColor = RGBColor(40, 40, 40);

const FONT: &str = "sans-serif";

/// What the reads of one bucket found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Reads {
    /// A fresh token.
    pub(crate) fresh: u64,
    /// A stale one, still valid (the grace period).
    pub(crate) stale: u64,
    /// No usable token (none, or only an expired one).
    pub(crate) nothing: u64,
}

impl Reads {
    fn total(self) -> u64 {
        self.fresh + self.stale + self.nothing
    }
}

/// One token's life, from the start of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    /// When it was issued.
    pub(crate) issued: Duration,
    /// When it went stale.
    pub(crate) stale: Duration,
    /// When it expired.
    pub(crate) expiry: Duration,
}

/// A run, ready to draw.
#[derive(Debug, Clone, Default)]
pub(crate) struct Timeline {
    /// The picture's title.
    pub(crate) title: String,
    /// A line under it: the settings of the run.
    pub(crate) subtitle: String,
    /// How long the run was.
    pub(crate) duration: Duration,
    /// Width of one bucket of `requests_per_second` and `reads`.
    pub(crate) bucket: Duration,
    /// Requests per second in each bucket (for buckets longer than a
    /// second: the busiest second of the bucket).
    pub(crate) requests_per_second: Vec<u64>,
    /// Reads in each bucket.
    pub(crate) reads: Vec<Reads>,
    /// Windows when the authority was down: start and end.
    pub(crate) outages: Vec<(Duration, Duration)>,
    /// Instants when the wall clock stepped.
    pub(crate) clock_steps: Vec<Duration>,
    /// Tokens one instance held, in order.
    pub(crate) tokens: Vec<Span>,
    /// Whose tokens those are.
    pub(crate) tokens_of: String,
}

/// The unit of the time axis: hours, minutes or seconds, by the run's length.
fn time_unit(duration: Duration) -> (f64, &'static str) {
    let secs = duration.as_secs_f64();
    if secs >= 2.0 * 3600.0 {
        (3600.0, "h")
    } else if secs >= 120.0 {
        (60.0, "min")
    } else {
        (1.0, "s")
    }
}

/// `23 s`, `3 min`, `24 h`, `1.5 s`.
pub(crate) fn seconds_in_words(d: Duration) -> String {
    let secs = d.as_secs();
    if d.subsec_millis() != 0 {
        format!("{:.1} s", d.as_secs_f64())
    } else if secs >= 3600 && secs.is_multiple_of(3600) {
        format!("{} h", secs / 3600)
    } else if secs >= 60 && secs.is_multiple_of(60) {
        format!("{} min", secs / 60)
    } else {
        format!("{secs} s")
    }
}

/// Draws `timeline` as an SVG document.
pub(crate) fn render(timeline: &Timeline) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        draw(&root, timeline).map_err(|e| format!("{e:?}"))?;
        root.present().map_err(|e| format!("{e:?}"))?;
    }
    Ok(svg)
}

/// Draws `timeline` into the SVG file `path`.
pub(crate) fn write(path: &Path, timeline: &Timeline) -> Result<(), CliError> {
    let svg =
        render(timeline).map_err(|e| CliError::other(format!("cannot draw the timeline: {e}")))?;
    std::fs::write(path, svg)
        .map_err(|e| CliError::other(format!("cannot write {}: {e}", path.display())))
}

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;
type Failure = DrawingAreaErrorKind<std::io::Error>;

fn draw(root: &Area<'_>, t: &Timeline) -> Result<(), Failure> {
    root.fill(&WHITE)?;
    let (head, body) = root.split_vertically(58);
    head.draw_text(
        &t.title,
        &(FONT, 22).into_font().style(FontStyle::Bold).color(&INK),
        (16, 8),
    )?;
    head.draw_text(&t.subtitle, &(FONT, 15).into_font().color(&INK), (16, 36))?;
    let panels = body.split_by_breakpoints([] as [i32; 0], [240, 480]);
    let (unit, unit_name) = time_unit(t.duration);
    let x_end = t.duration.as_secs_f64() / unit;
    let at = |d: Duration| d.as_secs_f64() / unit;
    let bucket_x = |i: usize| (t.bucket.as_secs_f64() * i as f64 / unit).min(x_end);
    let x_desc = format!("time since the start ({unit_name})");

    // 1. Requests per second.
    let peak = t.requests_per_second.iter().copied().max().unwrap_or(0);
    let per = if t.bucket > Duration::from_secs(1) {
        format!(
            "authority requests per second (the busiest second of every {})",
            seconds_in_words(t.bucket)
        )
    } else {
        "authority requests per second".to_owned()
    };
    let mut items = vec![(per.as_str(), BLUE.mix(0.6))];
    if !t.outages.is_empty() {
        items.push(("authority down", DOWN.mix(0.25)));
    }
    if !t.clock_steps.is_empty() {
        items.push(("wall clocks stepped", STEP.mix(1.0)));
    }
    let area = legend(&panels[0], &items)?;
    // A logarithmic axis, so that a fleet's burst of a thousand requests and
    // the trickle of one refresh at a time both show; a second without
    // requests sits on the floor of the axis.
    let floor = 0.5;
    let y_top = (peak.max(1) as f64) * 3.0;
    let mut chart = ChartBuilder::on(&area)
        .margin_right(24)
        .x_label_area_size(28)
        .y_label_area_size(72)
        .build_cartesian_2d(0.0..x_end, (floor..y_top).log_scale())?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_desc("requests / s")
        .y_label_formatter(&|v| {
            // Whole numbers: all of them up to 9, then the powers of ten.
            let exponent = v.log10();
            let whole = (v - v.round()).abs() < 1e-9;
            let power_of_ten = (exponent - exponent.round()).abs() < 1e-9;
            if *v >= 1.0 && whole && (*v < 10.0 || power_of_ten) {
                format!("{v:.0}")
            } else {
                String::new()
            }
        })
        .x_label_formatter(&axis_number)
        .light_line_style(TRANSPARENT)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .draw()?;
    shade(&mut chart, t, at, floor, y_top)?;
    let steps = t
        .requests_per_second
        .iter()
        .enumerate()
        .flat_map(|(i, &n)| {
            let v = (n as f64).max(floor);
            [(bucket_x(i), v), (bucket_x(i + 1), v)]
        });
    chart.draw_series(AreaSeries::new(steps, floor, BLUE.mix(0.35)).border_style(BLUE))?;

    // 2. What reads found.
    let area = legend(
        &panels[1],
        &[
            ("reads served a fresh token", FRESH.mix(0.8)),
            ("a stale one (grace period)", STALE.mix(0.8)),
            ("nothing usable", NOTHING.mix(0.8)),
        ],
    )?;
    let mut chart = ChartBuilder::on(&area)
        .margin_right(24)
        .x_label_area_size(28)
        .y_label_area_size(72)
        .build_cartesian_2d(0.0..x_end, 0.0..100.0)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_desc("% of reads")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .x_label_formatter(&axis_number)
        .light_line_style(TRANSPARENT)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .draw()?;
    shade(&mut chart, t, at, 0.0, 100.0)?;
    // Stacked: the whole (nothing on top), then fresh + stale, then fresh.
    // A bucket without reads (reads come less often than buckets end)
    // shows what the last reads found.
    let mut last = Reads::default();
    let held: Vec<Reads> = t
        .reads
        .iter()
        .map(|&r| {
            if r.total() > 0 {
                last = r;
            }
            last
        })
        .collect();
    let share = |pick: fn(Reads) -> u64| {
        held.iter().enumerate().flat_map(move |(i, &r)| {
            let v = if r.total() == 0 {
                0.0
            } else {
                pick(r) as f64 * 100.0 / r.total() as f64
            };
            [(bucket_x(i), v), (bucket_x(i + 1), v)]
        })
    };
    chart.draw_series(AreaSeries::new(share(Reads::total), 0.0, NOTHING.mix(0.8)))?;
    chart.draw_series(AreaSeries::new(
        share(|r| r.fresh + r.stale),
        0.0,
        STALE.mix(0.8),
    ))?;
    chart.draw_series(AreaSeries::new(share(|r| r.fresh), 0.0, FRESH.mix(0.8)))?;

    // 3. Token lifetimes, each on the first row free at its issue, so that
    // tokens alive at once sit one above the other.
    let rows = rows_for(&t.tokens);
    let row_count = rows.iter().copied().max().map_or(2, |r| (r + 1).max(2));
    let caption = format!(
        "the tokens {} held ({}): fresh",
        t.tokens_of,
        t.tokens.len()
    );
    let area = legend(
        &panels[2],
        &[
            (caption.as_str(), FRESH.mix(0.8)),
            ("then stale, until expiry", STALE.mix(0.8)),
        ],
    )?;
    let mut chart = ChartBuilder::on(&area)
        .margin_right(24)
        .x_label_area_size(44)
        .y_label_area_size(72)
        .build_cartesian_2d(0.0..x_end, 0.0..row_count as f64)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc(x_desc.as_str())
        .x_label_formatter(&axis_number)
        .y_desc("token")
        .y_labels(0)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .draw()?;
    shade(&mut chart, t, at, 0.0, row_count as f64)?;
    let bars = t.tokens.iter().zip(&rows).flat_map(|(s, &row)| {
        let row = row as f64;
        let (low, high) = (row + 0.2, row + 0.8);
        let end = at(s.expiry).min(x_end);
        let stale = at(s.stale).min(end);
        [
            Rectangle::new(
                [(at(s.issued), low), (stale, high)],
                FRESH.mix(0.8).filled(),
            ),
            Rectangle::new([(stale, low), (end, high)], STALE.mix(0.8).filled()),
        ]
    });
    chart.draw_series(bars)?;
    Ok(())
}

/// The row of each token: the lowest whose last token expired by the time
/// this one was issued.
fn rows_for(tokens: &[Span]) -> Vec<usize> {
    let mut ends: Vec<Duration> = Vec::new();
    tokens
        .iter()
        .map(
            |token| match ends.iter().position(|&end| end <= token.issued) {
                Some(row) => {
                    ends[row] = token.expiry;
                    row
                }
                None => {
                    ends.push(token.expiry);
                    ends.len() - 1
                }
            },
        )
        .collect()
}

/// A number on the time axis: `5`, `2.5`.
fn axis_number(v: &f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Shades the outages and marks the clock steps on a panel whose y axis
/// runs from `y_floor` to `y_top`.
fn shade<Y>(
    chart: &mut ChartContext<'_, SVGBackend<'_>, Cartesian2d<RangedCoordf64, Y>>,
    t: &Timeline,
    at: impl Fn(Duration) -> f64,
    y_floor: f64,
    y_top: f64,
) -> Result<(), Failure>
where
    Y: Ranged<ValueType = f64>,
{
    chart.draw_series(t.outages.iter().map(|&(from, to)| {
        Rectangle::new(
            [(at(from), y_floor), (at(to), y_top)],
            DOWN.mix(0.18).filled(),
        )
    }))?;
    chart.draw_series(t.clock_steps.iter().map(|&when| {
        PathElement::new(
            vec![(at(when), y_floor), (at(when), y_top)],
            STEP.stroke_width(2),
        )
    }))?;
    Ok(())
}

/// Writes a row of legend entries (a coloured square, then the text) at the
/// top of `area`, and returns the rest of it for the chart.
fn legend<'a>(area: &Area<'a>, items: &[(&str, RGBAColor)]) -> Result<Area<'a>, Failure> {
    let (row, rest) = area.split_vertically(26);
    let mut x = 80;
    for (text, color) in items {
        row.draw(&Rectangle::new([(x, 8), (x + 12, 20)], color.filled()))?;
        row.draw_text(text, &(FONT, 16).into_font().color(&INK), (x + 18, 7))?;
        // About 7 pixels a character at this size, and a gap.
        x += 18 + 7 * text.chars().count() as i32 + 28;
    }
    Ok(rest)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn sample() -> Timeline {
        Timeline {
            title: "a test run".into(),
            subtitle: "three buckets".into(),
            duration: Duration::from_secs(30),
            bucket: Duration::from_secs(10),
            requests_per_second: vec![3, 0, 1],
            reads: vec![
                Reads {
                    fresh: 8,
                    stale: 2,
                    nothing: 0,
                },
                Reads {
                    fresh: 0,
                    stale: 5,
                    nothing: 5,
                },
                Reads::default(),
            ],
            outages: vec![(Duration::from_secs(12), Duration::from_secs(18))],
            clock_steps: vec![Duration::from_secs(25)],
            tokens: vec![Span {
                issued: Duration::from_secs(1),
                stale: Duration::from_secs(7),
                expiry: Duration::from_secs(13),
            }],
            tokens_of: "the watcher".into(),
        }
    }

    /// The texts of an SVG document (plotters writes each on a line of its
    /// own between the tags).
    pub(crate) fn texts(svg: &str) -> Vec<String> {
        svg.split("<text")
            .skip(1)
            .filter_map(|t| {
                let body = t.split_once('>')?.1;
                Some(body.split_once("</text>")?.0.trim().to_owned())
            })
            .collect()
    }

    #[test]
    fn the_picture_has_its_panels_labels_and_shapes() {
        let svg = render(&sample()).unwrap();
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"));
        let texts = texts(&svg);
        for text in [
            "a test run",
            "three buckets",
            "authority requests per second (the busiest second of every 10 s)",
            "authority down",
            "wall clocks stepped",
            "requests / s",
            "reads served a fresh token",
            "a stale one (grace period)",
            "nothing usable",
            "% of reads",
            "the tokens the watcher held (1): fresh",
            "then stale, until expiry",
            "time since the start (s)",
        ] {
            assert!(
                texts.iter().any(|t| t == text),
                "{text:?} missing: {texts:?}"
            );
        }
        // The axes are numbered: requests per second in powers of ten from
        // 1, reads from 0 to 100 %, time in seconds.
        for tick in ["1", "0", "100", "30", "25"] {
            assert!(texts.iter().any(|t| t == tick), "tick {tick}: {texts:?}");
        }
        // The outage is shaded on each of the three panels (and in the
        // legend), the clock step drawn on each.
        let outage = "opacity=\"0.18\" fill=\"#D62728\"";
        assert_eq!(svg.matches(outage).count(), 3, "{svg}");
        assert_eq!(svg.matches("stroke=\"#9467BD\"").count(), 3, "{svg}");
        // The token is two bars: fresh from 1 s to 7 s, stale to 13 s; its
        // stale bar starts where the fresh one ends.
        let bars: Vec<&str> = svg
            .lines()
            .filter(|l| l.starts_with("<rect") && l.contains("opacity=\"0.8\""))
            .filter(|l| !l.contains("width=\"12\" height=\"12\""))
            .collect();
        assert_eq!(bars.len(), 2, "{bars:?}");
        assert!(
            bars[0].contains("#2EA043") && bars[1].contains("#E8A000"),
            "{bars:?}"
        );
        let attr = |line: &str, name: &str| -> i64 {
            let from = line.find(&format!(" {name}=\"")).unwrap() + name.len() + 3;
            line[from..].split('"').next().unwrap().parse().unwrap()
        };
        assert_eq!(
            attr(bars[0], "x") + attr(bars[0], "width"),
            attr(bars[1], "x")
        );
        assert!(attr(bars[1], "width") > 0);
    }

    #[test]
    fn tokens_alive_together_get_rows_of_their_own() {
        let span = |issued: u64, expiry: u64| Span {
            issued: Duration::from_secs(issued),
            stale: Duration::from_secs(issued),
            expiry: Duration::from_secs(expiry),
        };
        // Three alive at 11 s; the fourth reuses the first row.
        let tokens = [span(0, 12), span(4, 16), span(10, 22), span(12, 24)];
        assert_eq!(rows_for(&tokens), [0, 1, 2, 0]);
        assert_eq!(rows_for(&[]), Vec::<usize>::new());
    }

    #[test]
    fn units_follow_the_length_of_the_run() {
        assert_eq!(time_unit(Duration::from_secs(36)).1, "s");
        assert_eq!(time_unit(Duration::from_secs(600)).1, "min");
        assert_eq!(time_unit(Duration::from_secs(24 * 3600)).1, "h");
        let mut day = sample();
        day.duration = Duration::from_secs(24 * 3600);
        day.bucket = Duration::from_secs(180);
        let texts = texts(&render(&day).unwrap());
        assert!(
            texts.iter().any(|t| t == "time since the start (h)"),
            "{texts:?}"
        );
        assert!(
            texts
                .iter()
                .any(|t| t.ends_with("(the busiest second of every 3 min)")),
            "{texts:?}"
        );
    }
}
