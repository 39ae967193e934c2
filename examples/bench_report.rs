//! Draws the benchmark results as SVG plots, for the docs.
//!
//! ```text
//! cargo run --release --example bench_report [-- --results DIR] [--out DIR]
//! ```
//!
//! Reads the JSON files the benches write (`cargo bench --bench <name>`) from
//! `--results DIR`, by default `$CARGO_TARGET_DIR/bench-results/` (`target/` when
//! the variable is unset, relative to the crate root, as the benches resolve it), and
//! writes one SVG per plot into `--out DIR`, by default `docs/plots/`:
//!
//! | plot | from | shows |
//! |---|---|---|
//! | `throughput.svg` | `throughput.json` | echo requests/s against concurrent callers, one line per client |
//! | `checkout.svg` | `checkout.json` | checkouts/s per `pool/workers` case, one bar per pool |
//! | `redis.svg` | `redis.json` | GET and SET commands/s against concurrent callers, one panel per command |
//! | `scale_memory.svg` | `scale.json` | client memory per idle connection against N, with the 16 KiB target |
//! | `scale_cpu.svg` | `scale.json` | heartbeat CPU against N, with the 10 % target |
//!
//! A plot whose input is missing or unreadable is skipped with one line saying why;
//! the others are still drawn. Rows that cannot be plotted (a field missing or not a
//! number, a value that is not positive on a log axis) are left out and counted in a
//! note under the plot's path. The example exits non-zero only if no plot was drawn.
//!
//! The plots are meant to be read in print too: every series has its own colour, its
//! own point marker and its own dash pattern, and the legend sits below the chart so
//! it never covers data.

use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::CoordTranslate;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde_json::Value;

/// Size of a one-panel figure, in pixels; every further panel adds `PANEL_WIDTH`.
const FIGURE_SIZE: (u32, u32) = (800, 500);
const PANEL_WIDTH: u32 = 200;
const FONT: &str = "sans-serif";
/// Legend geometry in pixels: the height of a row, the width of a line sample with
/// the space before its label, and the space between two entries.
const LEGEND_ROW: i32 = 22;
const LEGEND_SAMPLE: i32 = 44;
const LEGEND_GAP: i32 = 32;

fn main() -> ExitCode {
    let options = match parse_options() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(error) = std::fs::create_dir_all(&options.out) {
        eprintln!("cannot create {}: {error}", options.out.display());
        return ExitCode::FAILURE;
    }

    let plots: [(&str, PlotBuilder); 5] = [
        ("throughput.svg", throughput_plot),
        ("checkout.svg", checkout_plot),
        ("redis.svg", redis_plot),
        ("scale_memory.svg", scale_memory_plot),
        ("scale_cpu.svg", scale_cpu_plot),
    ];
    let mut drawn = 0;
    for (file, build) in plots {
        let path = options.out.join(file);
        let outcome = build(&options.results).and_then(|plot| {
            plot.draw(&path)?;
            Ok(plot.notes)
        });
        match outcome {
            Ok(notes) => {
                drawn += 1;
                println!("wrote {}", path.display());
                for note in notes {
                    println!("  note: {note}");
                }
            }
            Err(error) => eprintln!("skipped {file}: {error}"),
        }
    }
    if drawn == 0 {
        eprintln!("no plot drawn; run the benches first (cargo bench)");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// Reads one plot's data from the results directory.
type PlotBuilder = fn(&Path) -> Result<Plot, ReportError>;

struct Options {
    results: PathBuf,
    out: PathBuf,
}

fn parse_options() -> Result<Options, String> {
    // The defaults resolve against the crate root, not the working directory, so that
    // `cargo run` finds the same files the benches wrote from anywhere in the tree.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root.join("target"), |dir| root.join(dir));
    let mut options = Options {
        results: target.join("bench-results"),
        out: root.join("docs").join("plots"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match flag.as_str() {
            "--results" => options.results = value("--results")?.into(),
            "--out" => options.out = value("--out")?.into(),
            "--help" | "-h" => return Err("usage: bench_report [--results DIR] [--out DIR]".into()),
            other => return Err(format!("unknown argument {other}; try --help")),
        }
    }
    Ok(options)
}

/// Why a plot could not be drawn.
#[derive(Debug, thiserror::Error)]
enum ReportError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{} is not valid JSON: {source}", path.display())]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{} has no `rows` array", path.display())]
    NoRows { path: PathBuf },
    #[error("no row of {} has {wanted}", path.display())]
    NoData { path: PathBuf, wanted: &'static str },
    #[error("drawing failed: {0}")]
    Draw(#[from] DrawingAreaErrorKind<io::Error>),
}

// ---------------------------------------------------------------------------------
// From bench results to plots
// ---------------------------------------------------------------------------------

/// One plot, decided from the data and ready to draw, with what was left out.
struct Plot {
    figure: Figure,
    notes: Vec<String>,
}

enum Figure {
    /// Lines over a numeric x axis, in one or more panels side by side.
    Lines(LineChart),
    /// Grouped bars over categories.
    Bars(BarChart),
}

struct LineChart {
    title: String,
    x: Axis,
    y: Axis,
    panels: Vec<Panel>,
    /// Horizontal target lines, drawn across every panel.
    targets: Vec<Target>,
}

struct Panel {
    caption: Option<String>,
    series: Vec<Series>,
}

struct BarChart {
    title: String,
    /// Bars are placed at the category's index on this axis.
    x: Axis,
    y: Axis,
    series: Vec<Series>,
}

/// The points of one line (or one set of bars), in data units.
struct Series {
    label: String,
    points: Vec<(f64, f64)>,
}

struct Target {
    label: String,
    y: f64,
}

fn throughput_plot(results: &Path) -> Result<Plot, ReportError> {
    let path = results.join("throughput.json");
    let rows = load_rows(&path)?;
    let mut skipped = Skipped::default();
    // One line per client; should the bench ever add a second payload case, the
    // case goes into the label rather than lines being silently merged.
    let several_cases = distinct(&rows, "case").len() > 1;
    let series = collect_series(
        &rows,
        "concurrency",
        "ops_per_sec",
        true,
        &mut skipped,
        |row| {
            let system = text(row, "system")?;
            Some(vec![match (several_cases, text(row, "case")) {
                (true, Some(case)) => format!("{system} ({case})"),
                _ => system.to_owned(),
            }])
        },
    );
    if series.is_empty() {
        return Err(ReportError::NoData {
            path,
            wanted: "a `system`, a `concurrency` and a positive `ops_per_sec`",
        });
    }
    let all: Vec<&Series> = series.iter().collect();
    Ok(Plot {
        figure: Figure::Lines(LineChart {
            title: "Echo round trips over one connection (64 B payload)".into(),
            x: log_axis_at_data("concurrent callers (log scale)", xs(&all)),
            y: log_axis("requests per second (log scale)", ys(&all), si_units),
            panels: vec![Panel {
                caption: None,
                series,
            }],
            targets: Vec::new(),
        }),
        notes: skipped.notes("ops_per_sec"),
    })
}

fn checkout_plot(results: &Path) -> Result<Plot, ReportError> {
    let path = results.join("checkout.json");
    let rows = load_rows(&path)?;
    // The cases are categories, kept in the order the bench ran them.
    let cases = distinct(&rows, "case");
    let mut skipped = Skipped::default();
    let mut systems: Vec<Series> = Vec::new();
    for row in &rows {
        let (Some(case), Some(system)) = (text(row, "case"), text(row, "system")) else {
            skipped.unlabelled += 1;
            continue;
        };
        let Some(ops) = number(row, "ops_per_sec") else {
            skipped.no_value += 1;
            continue;
        };
        let index = cases.iter().position(|known| known == case).unwrap_or(0) as f64;
        series_named(&mut systems, system).points.push((index, ops));
    }
    if systems.is_empty() {
        return Err(ReportError::NoData {
            path,
            wanted: "a `case`, a `system` and a numeric `ops_per_sec`",
        });
    }
    let all: Vec<&Series> = systems.iter().collect();
    let last = cases.len().saturating_sub(1) as f64;
    Ok(Plot {
        figure: Figure::Bars(BarChart {
            title: "Pool checkout and return (get + drop)".into(),
            x: Axis {
                desc: "case: pool size / worker tasks".into(),
                scale: Scale {
                    log: false,
                    range: (-0.5, last + 0.5),
                    labelled: (0..cases.len()).map(|index| index as f64).collect(),
                    light: Vec::new(),
                },
                format: Box::new(move |index| {
                    let index = index.round();
                    let case = (index >= 0.0).then(|| cases.get(index as usize)).flatten();
                    case.cloned().unwrap_or_default()
                }),
            },
            y: linear_axis("checkouts per second", ys(&all), si_units),
            series: systems,
        }),
        notes: skipped.notes("ops_per_sec"),
    })
}

fn redis_plot(results: &Path) -> Result<Plot, ReportError> {
    let path = results.join("redis.json");
    let rows = load_rows(&path)?;
    let mut skipped = Skipped {
        unlabelled: rows
            .iter()
            .filter(|row| text(row, "case").is_none())
            .count(),
        ..Skipped::default()
    };
    // One panel per command, in file order, so that GET and SET lines of the same
    // client, which run close together, do not hide each other.
    let panels: Vec<Panel> = distinct(&rows, "case")
        .into_iter()
        .map(|case| {
            let rows: Vec<Value> = rows
                .iter()
                .filter(|row| text(row, "case") == Some(case.as_str()))
                .cloned()
                .collect();
            let series = collect_series(
                &rows,
                "concurrency",
                "ops_per_sec",
                true,
                &mut skipped,
                redis_series_names,
            );
            Panel {
                caption: Some(case),
                series,
            }
        })
        .filter(|panel| !panel.series.is_empty())
        .collect();
    if panels.is_empty() {
        return Err(ReportError::NoData {
            path,
            wanted: "a `case`, a `system`, a `concurrency` and a positive `ops_per_sec`",
        });
    }
    let all: Vec<&Series> = panels.iter().flat_map(|panel| &panel.series).collect();
    Ok(Plot {
        figure: Figure::Lines(LineChart {
            title: "Redis GET and SET against concurrent callers".into(),
            x: log_axis_at_data("concurrent callers (log scale)", xs(&all)),
            y: log_axis("commands per second (log scale)", ys(&all), si_units),
            panels,
            targets: Vec::new(),
        }),
        notes: skipped.notes("ops_per_sec"),
    })
}

/// The line(s) a `redis.json` row belongs to.
///
/// `redis-benchmark` rows carry the concurrency in their name (`-c1 -P64`,
/// `-c64 -P1`), which would make every row a line of one point. They are joined into
/// the two shapes the bench runs: one connection pipelining C requests (`-c1 -P<C>`)
/// and C connections with one request each (`-c<C> -P1`). At C = 1 both shapes are
/// the same run, `-c1 -P1`, so that row starts both lines.
fn redis_series_names(row: &Value) -> Option<Vec<String>> {
    let system = text(row, "system")?;
    if !system.starts_with("redis-benchmark") {
        return Some(vec![system.to_owned()]);
    }
    let pipelined = "redis-benchmark -c1 -P<C>".to_owned();
    let connections = "redis-benchmark -c<C> -P1".to_owned();
    let one_connection = number(row, "clients") == Some(1.0);
    let one_request = number(row, "pipeline") == Some(1.0);
    Some(match (one_connection, one_request) {
        (true, true) => vec![pipelined, connections],
        (true, false) => vec![pipelined],
        (false, true) => vec![connections],
        (false, false) => vec![system.to_owned()],
    })
}

/// One figure of the scale bench's `idle` rows: a field against N, one line per
/// client, and the budget the bench checks it against.
struct ScaleFigure {
    field: &'static str,
    /// Divides the field's values, to show them in a friendlier unit.
    unit: f64,
    title: &'static str,
    y_desc: &'static str,
    target: f64,
    target_label: &'static str,
}

const SCALE_MEMORY: ScaleFigure = ScaleFigure {
    field: "rss_per_conn_bytes",
    // Bytes per connection run into the thousands; KiB reads better, and the
    // budget is set in KiB.
    unit: 1024.0,
    title: "Client memory per idle connection (heartbeat every 1 s)",
    y_desc: "resident memory per connection (KiB)",
    target: 16.0,
    target_label: "target (16 KiB)",
};

const SCALE_CPU: ScaleFigure = ScaleFigure {
    field: "heartbeat_cpu_percent",
    unit: 1.0,
    title: "Client CPU spent on heartbeats while idle (one every 1 s)",
    y_desc: "CPU (% of one core)",
    // 10,000 idle connections with a heartbeat a second cost at most a tenth of a
    // core.
    target: 10.0,
    target_label: "target (10,000 conns @ 1 s)",
};

fn scale_memory_plot(results: &Path) -> Result<Plot, ReportError> {
    scale_plot(results, &SCALE_MEMORY)
}

fn scale_cpu_plot(results: &Path) -> Result<Plot, ReportError> {
    scale_plot(results, &SCALE_CPU)
}

fn scale_plot(results: &Path, figure: &ScaleFigure) -> Result<Plot, ReportError> {
    let path = results.join("scale.json");
    // Only the `idle` rows: the recovery rows measure something else.
    let rows: Vec<Value> = load_rows(&path)?
        .into_iter()
        .filter(|row| text(row, "case") == Some("idle"))
        .collect();
    let mut skipped = Skipped::default();
    let mut series = collect_series(
        &rows,
        "concurrency",
        figure.field,
        false,
        &mut skipped,
        |row| Some(vec![text(row, "system")?.to_owned()]),
    );
    if series.is_empty() {
        return Err(ReportError::NoData {
            path,
            wanted: "an `idle` row with a `system`, a `concurrency` and the plotted field",
        });
    }
    for point in series.iter_mut().flat_map(|line| &mut line.points) {
        point.1 /= figure.unit;
    }
    let all: Vec<&Series> = series.iter().collect();
    let mut values = ys(&all);
    values.push(figure.target);
    Ok(Plot {
        figure: Figure::Lines(LineChart {
            title: figure.title.into(),
            x: log_axis_at_data("idle connections N (log scale)", xs(&all)),
            y: linear_axis(figure.y_desc, values, plain),
            panels: vec![Panel {
                caption: None,
                series,
            }],
            targets: vec![Target {
                label: figure.target_label.into(),
                y: figure.target,
            }],
        }),
        notes: skipped.notes(figure.field),
    })
}

// ---------------------------------------------------------------------------------
// Reading rows
// ---------------------------------------------------------------------------------

/// The `rows` array of a bench's JSON file.
fn load_rows(path: &Path) -> Result<Vec<Value>, ReportError> {
    let bytes = std::fs::read(path).map_err(|source| ReportError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut document: Value =
        serde_json::from_slice(&bytes).map_err(|source| ReportError::Parse {
            path: path.to_owned(),
            source,
        })?;
    match document.get_mut("rows").map(Value::take) {
        Some(Value::Array(rows)) => Ok(rows),
        _ => Err(ReportError::NoRows {
            path: path.to_owned(),
        }),
    }
}

fn text<'a>(row: &'a Value, key: &str) -> Option<&'a str> {
    row.get(key)?.as_str()
}

/// A field as a finite number. JSON has no NaN, but a bench may write `null` for one.
fn number(row: &Value, key: &str) -> Option<f64> {
    row.get(key)?.as_f64().filter(|value| value.is_finite())
}

/// The distinct string values of `key`, in the order they first appear.
fn distinct(rows: &[Value], key: &str) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    for value in rows.iter().filter_map(|row| text(row, key)) {
        if !seen.iter().any(|known| known == value) {
            seen.push(value.to_owned());
        }
    }
    seen
}

/// Rows left out of a plot, by reason.
#[derive(Default)]
struct Skipped {
    unlabelled: usize,
    no_value: usize,
    not_positive: usize,
}

impl Skipped {
    fn notes(&self, value: &str) -> Vec<String> {
        let mut notes = Vec::new();
        if self.unlabelled > 0 {
            notes.push(format!(
                "left out {} row(s) without a `system` or `case` name",
                self.unlabelled
            ));
        }
        if self.no_value > 0 {
            notes.push(format!(
                "left out {} row(s) without a numeric `{value}` or x value",
                self.no_value
            ));
        }
        if self.not_positive > 0 {
            notes.push(format!(
                "left out {} row(s) with a zero or negative value, which a log axis cannot show",
                self.not_positive
            ));
        }
        notes
    }
}

/// Groups rows into lines of `(x_key, y_key)` points, in the order the lines first
/// appear. `names` gives the line(s) a row belongs to. Points a log axis could not
/// place are dropped: those with an x not above zero (every line chart here has a
/// log x axis), and with `log_y`, those with a y not above zero.
fn collect_series(
    rows: &[Value],
    x_key: &str,
    y_key: &str,
    log_y: bool,
    skipped: &mut Skipped,
    names: impl Fn(&Value) -> Option<Vec<String>>,
) -> Vec<Series> {
    let mut series: Vec<Series> = Vec::new();
    for row in rows {
        let Some(names) = names(row) else {
            skipped.unlabelled += 1;
            continue;
        };
        let (Some(x), Some(y)) = (number(row, x_key), number(row, y_key)) else {
            skipped.no_value += 1;
            continue;
        };
        if x <= 0.0 || (log_y && y <= 0.0) {
            skipped.not_positive += 1;
            continue;
        }
        for name in names {
            series_named(&mut series, &name).points.push((x, y));
        }
    }
    // Lines are drawn left to right whatever order the bench wrote its rows in.
    for line in &mut series {
        line.points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    series
}

fn series_named<'a>(series: &'a mut Vec<Series>, label: &str) -> &'a mut Series {
    let index = match series.iter().position(|line| line.label == label) {
        Some(index) => index,
        None => {
            series.push(Series {
                label: label.to_owned(),
                points: Vec::new(),
            });
            series.len() - 1
        }
    };
    &mut series[index]
}

fn xs(series: &[&Series]) -> Vec<f64> {
    series
        .iter()
        .flat_map(|line| &line.points)
        .map(|point| point.0)
        .collect()
}

fn ys(series: &[&Series]) -> Vec<f64> {
    series
        .iter()
        .flat_map(|line| &line.points)
        .map(|point| point.1)
        .collect()
}

// ---------------------------------------------------------------------------------
// Axes
// ---------------------------------------------------------------------------------

/// One axis: its name, its scale and how its tick labels read.
struct Axis {
    desc: String,
    scale: Scale,
    format: Box<dyn Fn(f64) -> String>,
}

/// Where values sit along an axis, and its ticks, all in data units.
///
/// This is the axis's plotters coordinate. It is our own rather than plotters'
/// `log_scale()` and `with_key_points()` so that ticks sit exactly where they are
/// chosen here (at the concurrencies a bench ran, say), and so that a log and a
/// linear axis are one type, which keeps one drawing path for every chart.
#[derive(Clone)]
struct Scale {
    log: bool,
    range: (f64, f64),
    /// Ticks with a label and a darker grid line.
    labelled: Vec<f64>,
    /// Grid lines without a label.
    light: Vec<f64>,
}

impl Scale {
    /// How far along the axis `value` sits: 0 at the start of the range, 1 at its end.
    fn fraction(&self, value: f64) -> f64 {
        let along = |value: f64| if self.log { value.log10() } else { value };
        let (start, end) = (along(self.range.0), along(self.range.1));
        (along(value) - start) / (end - start)
    }
}

impl Ranged for Scale {
    // Labels come from `Axis::format`, through the mesh's label formatters.
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        // A value a log axis cannot place (zero, negative) gives NaN, which the cast
        // turns into the axis start rather than a panic; such points are filtered
        // out before drawing anyway.
        let pixels = f64::from(limit.1 - limit.0) * self.fraction(*value);
        limit.0.saturating_add(pixels.round() as i32)
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        // The mesh asks once for the labelled ticks, once for the light grid lines.
        if hint.weight().allow_light_points() {
            self.light.clone()
        } else {
            self.labelled.clone()
        }
    }

    fn range(&self) -> Range<f64> {
        self.range.0..self.range.1
    }
}

/// A log axis with a tick at each distinct data value: the concurrencies a bench
/// ran (1, 64, 512) or its connection counts, rather than powers of ten that no
/// measurement sits on.
fn log_axis_at_data(desc: &str, values: Vec<f64>) -> Axis {
    let mut ticks: Vec<f64> = values.into_iter().filter(|value| *value > 0.0).collect();
    ticks.sort_by(f64::total_cmp);
    ticks.dedup();
    let (low, high) = match (ticks.first(), ticks.last()) {
        (Some(&low), Some(&high)) if low < high => (low, high),
        (Some(&only), _) => (only / 2.0, only * 2.0),
        _ => (1.0, 10.0),
    };
    // A third of a tick's width on either side keeps end markers off the frame.
    let pad = (high / low).powf(0.06).max(1.2);
    Axis {
        desc: desc.into(),
        scale: Scale {
            log: true,
            range: (low / pad, high * pad),
            labelled: ticks,
            light: Vec::new(),
        },
        format: Box::new(thousands),
    }
}

/// A log axis over `values` with ticks at 1, 2 and 5 times a power of ten.
fn log_axis(desc: &str, values: Vec<f64>, format: fn(f64) -> String) -> Axis {
    let positive: Vec<f64> = values.into_iter().filter(|value| *value > 0.0).collect();
    let low = positive.iter().copied().fold(f64::INFINITY, f64::min);
    let high = positive.iter().copied().fold(0.0, f64::max);
    let (low, high) = if low.is_finite() && high > 0.0 {
        // Start at a 1, 2 or 5 below the lowest point, so that the bottom of the
        // axis has a label; leave some room over the highest.
        let below = low / 1.15;
        let decade = 10f64.powf(below.log10().floor());
        let start = [5.0, 2.0, 1.0]
            .into_iter()
            .map(|step| step * decade)
            .find(|tick| *tick <= below)
            .unwrap_or(decade);
        // Guards for values at the ends of `f64`: below a subnormal value there is
        // no power of ten, and room above one near `f64::MAX` is infinite.
        let start = if start > 0.0 {
            start
        } else {
            f64::MIN_POSITIVE
        };
        (start, (high * 1.4).min(f64::MAX))
    } else {
        (1.0, 10.0)
    };
    let decades = low.log10().floor() as i32..=high.log10().ceil() as i32;
    // Only the powers of ten when the data spans more than three decades; and never
    // more than a dozen labels, which only absurd data would ask for.
    let steps: &[f64] = if high / low > 1e3 {
        &[1.0]
    } else {
        &[1.0, 2.0, 5.0]
    };
    let mut labelled = Vec::new();
    let mut light = Vec::new();
    for exponent in decades {
        for step in 1..10 {
            let value = f64::from(step) * 10f64.powi(exponent);
            if value < low || value > high {
                continue;
            }
            if steps.contains(&f64::from(step)) {
                labelled.push(value);
            } else {
                light.push(value);
            }
        }
    }
    let stride = labelled.len().div_ceil(12).max(1);
    let labelled = labelled.into_iter().step_by(stride).collect();
    Axis {
        desc: desc.into(),
        scale: Scale {
            log: true,
            range: (low, high),
            labelled,
            light,
        },
        format: Box::new(format),
    }
}

/// A linear axis from zero (or the lowest value, if negative) to a round number
/// above the highest, with five to ten ticks at 1, 2 or 5 times a power of ten.
fn linear_axis(desc: &str, values: Vec<f64>, format: fn(f64) -> String) -> Axis {
    let low = values.iter().copied().fold(0.0, f64::min);
    let mut high = values.iter().copied().fold(0.0, f64::max);
    if high <= low {
        high = low + 1.0;
    }
    let rough = (high - low) / 5.0;
    let magnitude = 10f64.powf(rough.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|factor| factor * magnitude)
        .find(|step| *step >= rough)
        .unwrap_or(10.0 * magnitude);
    // Some headroom over the highest point, so that it is not drawn on the frame.
    let low = (low / step).floor() * step;
    let high = ((high * 1.05) / step).ceil() * step;
    // At most a few dozen ticks even for values near `f64::MAX`, whose arithmetic
    // above may overflow to infinity.
    let count = (((high - low) / step).round() as usize).min(40);
    Axis {
        desc: desc.into(),
        scale: Scale {
            log: false,
            range: (low, high),
            labelled: (0..=count).map(|index| low + index as f64 * step).collect(),
            light: Vec::new(),
        },
        format: Box::new(format),
    }
}

/// 1,000 and 10,000 rather than 1000 and 10000.
fn thousands(value: f64) -> String {
    let digits = format!("{}", value.round().abs() as u64);
    let mut grouped = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    if value.round() < 0.0 {
        grouped.insert(0, '-');
    }
    grouped
}

/// 20k, 1.5M: rates over several orders of magnitude.
fn si_units(value: f64) -> String {
    match value.abs() {
        magnitude if magnitude >= 1e6 => format!("{}M", plain(value / 1e6)),
        magnitude if magnitude >= 1e3 => format!("{}k", plain(value / 1e3)),
        _ => plain(value),
    }
}

/// A tick value without the float noise (`0.30000000000000004`) of its arithmetic.
fn plain(value: f64) -> String {
    format!("{}", (value * 1e6).round() / 1e6)
}

// ---------------------------------------------------------------------------------
// Drawing
// ---------------------------------------------------------------------------------

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;
type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<Scale, Scale>>;
type DrawResult<T> = Result<T, DrawingAreaErrorKind<io::Error>>;

/// How one series is told apart: colour, point marker and dash pattern all differ,
/// so the plot can be read in grey too. Colours are the Okabe-Ito palette, which
/// stays distinct for the common kinds of colour blindness.
#[derive(Clone, Copy)]
struct Look {
    color: RGBColor,
    marker: Option<Marker>,
    /// Dash and gap length in pixels; `None` is a solid line.
    dash: Option<(u32, u32)>,
}

#[derive(Clone, Copy)]
enum Marker {
    Circle,
    Square,
    Triangle,
    Diamond,
    Cross,
}

const LOOKS: [Look; 5] = [
    Look {
        color: RGBColor(0, 114, 178),
        marker: Some(Marker::Circle),
        dash: None,
    },
    Look {
        color: RGBColor(213, 94, 0),
        marker: Some(Marker::Square),
        dash: Some((9, 5)),
    },
    Look {
        color: RGBColor(0, 158, 115),
        marker: Some(Marker::Triangle),
        dash: Some((3, 4)),
    },
    Look {
        color: RGBColor(204, 121, 167),
        marker: Some(Marker::Diamond),
        dash: Some((16, 4)),
    },
    Look {
        color: RGBColor(86, 86, 86),
        marker: Some(Marker::Cross),
        dash: Some((6, 3)),
    },
];

/// Target lines: black, long dashes, no markers.
const TARGET_LOOK: Look = Look {
    color: RGBColor(0, 0, 0),
    marker: None,
    dash: Some((12, 6)),
};

impl Plot {
    fn draw(&self, path: &Path) -> Result<(), ReportError> {
        match &self.figure {
            Figure::Lines(chart) => chart.draw(path)?,
            Figure::Bars(chart) => chart.draw(path)?,
        }
        Ok(())
    }
}

/// Looks by label, in the order labels first appear: a label keeps its look in
/// every panel of a figure.
fn assign_looks<'a>(labels: impl IntoIterator<Item = &'a str>) -> Vec<(String, Look)> {
    let mut looks: Vec<(String, Look)> = Vec::new();
    for label in labels {
        if !looks.iter().any(|(known, _)| known == label) {
            looks.push((label.to_owned(), LOOKS[looks.len() % LOOKS.len()]));
        }
    }
    looks
}

fn look_of(looks: &[(String, Look)], label: &str) -> Look {
    looks
        .iter()
        .find(|(known, _)| known == label)
        .map_or(LOOKS[0], |(_, look)| *look)
}

impl LineChart {
    fn draw(&self, path: &Path) -> DrawResult<()> {
        let labels = self.panels.iter().flat_map(|panel| &panel.series);
        let mut legend = assign_looks(labels.map(|line| line.label.as_str()));
        let looks = legend.clone();
        legend.extend(
            self.targets
                .iter()
                .map(|target| (target.label.clone(), TARGET_LOOK)),
        );

        let extra_panels = self.panels.len().saturating_sub(1) as u32;
        let size = (FIGURE_SIZE.0 + PANEL_WIDTH * extra_panels, FIGURE_SIZE.1);
        let root = SVGBackend::new(path, size).into_drawing_area();
        let plot_area = frame(&root, &self.title, &legend, Sample::Line)?;
        let panel_areas = plot_area.split_evenly((1, self.panels.len().max(1)));
        for (index, (panel, area)) in self.panels.iter().zip(&panel_areas).enumerate() {
            // Panels share the y axis, so only the first one names it.
            let y_desc = index == 0;
            let mut chart = axes(
                area,
                panel.caption.as_deref(),
                &self.x,
                &self.y,
                true,
                y_desc,
            )?;
            for target in &self.targets {
                let (start, end) = self.x.scale.range;
                let across = [(start, target.y), (end, target.y)];
                draw_line(&mut chart, &across, TARGET_LOOK)?;
            }
            for line in &panel.series {
                let look = look_of(&looks, &line.label);
                draw_line(&mut chart, &line.points, look)?;
            }
        }
        root.present()
    }
}

impl BarChart {
    fn draw(&self, path: &Path) -> DrawResult<()> {
        let legend = assign_looks(self.series.iter().map(|bars| bars.label.as_str()));
        let root = SVGBackend::new(path, FIGURE_SIZE).into_drawing_area();
        let plot_area = frame(&root, &self.title, &legend, Sample::Bar)?;
        // No vertical grid: its lines would run through the middle bar of a group.
        let mut chart = axes(&plot_area, None, &self.x, &self.y, false, true)?;

        // Each category gets 80 % of its width, split evenly between the series.
        let width = 0.8 / self.series.len().max(1) as f64;
        let baseline = self.y.scale.range.0.max(0.0);
        for (slot, bars) in self.series.iter().enumerate() {
            let look = look_of(&legend, &bars.label);
            let left = |index: f64| index - 0.4 + slot as f64 * width;
            // A light fill with a solid outline, and the series' marker on top, so
            // that neighbouring bars differ in more than their colour.
            let corners = |index: f64, value: f64| {
                [
                    (left(index) + 0.01, baseline),
                    (left(index) + width - 0.01, value),
                ]
            };
            chart.draw_series(bars.points.iter().map(|&(index, value)| {
                Rectangle::new(corners(index, value), look.color.mix(0.35).filled())
            }))?;
            chart.draw_series(bars.points.iter().map(|&(index, value)| {
                Rectangle::new(corners(index, value), look.color.stroke_width(1))
            }))?;
            if let Some(marker) = look.marker {
                for &(index, value) in &bars.points {
                    let top = (left(index) + width / 2.0, value);
                    draw_marker(chart.plotting_area(), marker, top, look.color)?;
                }
            }
        }
        root.present()
    }
}

/// What a legend entry shows next to its label.
#[derive(Clone, Copy, PartialEq)]
enum Sample {
    Line,
    Bar,
}

/// Paints the background, the title and the legend, and returns the area left for
/// the chart itself. The legend goes below the chart, so it never covers data.
fn frame<'a>(
    root: &Area<'a>,
    title: &str,
    legend: &[(String, Look)],
    sample: Sample,
) -> DrawResult<Area<'a>> {
    root.fill(&WHITE)?;
    let body = root.titled(title, (FONT, 22))?;
    let (width, height) = (body.dim_in_pixel().0 as i32, body.dim_in_pixel().1 as i32);

    // Entries flow left to right, each as wide as its label, into as many rows as
    // they need; every row is centred under the chart.
    let entry_width = |label: &str| LEGEND_SAMPLE + text_width(label, 14) + LEGEND_GAP;
    let mut rows: Vec<Vec<&(String, Look)>> = Vec::new();
    let mut row_width = 0;
    for entry in legend {
        let wanted = entry_width(&entry.0);
        match rows.last_mut() {
            Some(row) if row_width + wanted <= width - 40 => row.push(entry),
            _ => {
                rows.push(vec![entry]);
                row_width = 0;
            }
        }
        row_width += wanted;
    }
    let legend_height = rows.len() as i32 * LEGEND_ROW + 12;
    let (chart_area, legend_area) = body.split_vertically(height - legend_height);

    for (row_index, row) in rows.iter().enumerate() {
        let row_width: i32 = row.iter().map(|(label, _)| entry_width(label)).sum();
        let mut x = (width - row_width + LEGEND_GAP) / 2;
        let y = 4 + row_index as i32 * LEGEND_ROW + LEGEND_ROW / 2;
        for (label, look) in row {
            // A 36-pixel sample of the line or bar, with its marker in the middle.
            if sample == Sample::Bar {
                let corners = [(x + 4, y - 7), (x + 32, y + 7)];
                legend_area.draw(&Rectangle::new(corners, look.color.mix(0.35).filled()))?;
                legend_area.draw(&Rectangle::new(corners, look.color.stroke_width(1)))?;
            } else {
                for segment in dashes(x, x + 36, y, look.dash) {
                    legend_area.draw(&PathElement::new(segment, look.color.stroke_width(2)))?;
                }
            }
            if let Some(marker) = look.marker {
                draw_marker(&legend_area, marker, (x + 18, y), look.color)?;
            }
            let style = TextStyle::from((FONT, 14)).pos(Pos::new(HPos::Left, VPos::Center));
            legend_area.draw(&Text::new(label.clone(), (x + LEGEND_SAMPLE, y), style))?;
            x += entry_width(label);
        }
    }
    Ok(chart_area)
}

/// Builds a chart on `area` with the axes, grid and tick labels of `x` and `y`.
fn axes<'a, 'b>(
    area: &'a Area<'b>,
    caption: Option<&str>,
    x: &Axis,
    y: &Axis,
    x_grid: bool,
    y_desc: bool,
) -> DrawResult<Chart<'a, 'b>> {
    let mut builder = ChartBuilder::on(area);
    builder
        .margin_top(8)
        .margin_left(8)
        .margin_right(20)
        .x_label_area_size(48)
        .y_label_area_size(if y_desc { 66 } else { 48 });
    if let Some(caption) = caption {
        builder.caption(caption, (FONT, 18));
    }
    let mut chart = builder.build_cartesian_2d(x.scale.clone(), y.scale.clone())?;
    let x_label = |value: &f64| (x.format)(*value);
    let y_label = |value: &f64| (y.format)(*value);
    let mut mesh = chart.configure_mesh();
    mesh.x_desc(x.desc.as_str())
        .x_label_formatter(&x_label)
        .y_label_formatter(&y_label)
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 14))
        .bold_line_style(RGBColor(210, 210, 210))
        .light_line_style(RGBColor(238, 238, 238));
    if y_desc {
        mesh.y_desc(y.desc.as_str());
    }
    if !x_grid {
        mesh.disable_x_mesh();
    }
    mesh.draw()?;
    Ok(chart)
}

/// Draws a line through `points` in `look`.
fn draw_line(chart: &mut Chart<'_, '_>, points: &[(f64, f64)], look: Look) -> DrawResult<()> {
    let stroke = look.color.stroke_width(2);
    match look.dash {
        None => chart.draw_series(LineSeries::new(points.to_vec(), stroke))?,
        Some((dash, gap)) => {
            chart.draw_series(DashedLineSeries::new(points.to_vec(), dash, gap, stroke))?
        }
    };
    if let Some(marker) = look.marker {
        for &at in points {
            draw_marker(chart.plotting_area(), marker, at, look.color)?;
        }
    }
    Ok(())
}

/// Draws one marker centred on `at`, on a chart's plotting area (data units) or on
/// a plain area (pixels).
fn draw_marker<DB, CT>(
    area: &DrawingArea<DB, CT>,
    marker: Marker,
    at: CT::From,
    color: RGBColor,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>>
where
    DB: DrawingBackend,
    CT: CoordTranslate,
{
    // Plotters' markers are one type per shape, hence a match rather than a value.
    let fill = color.filled();
    let anchor = EmptyElement::at(at);
    match marker {
        Marker::Circle => area.draw(&(anchor + Circle::new((0, 0), 4, fill))),
        Marker::Square => area.draw(&(anchor + Rectangle::new([(-4, -4), (4, 4)], fill))),
        Marker::Triangle => area.draw(&(anchor + TriangleMarker::new((0, 0), 6, fill))),
        Marker::Diamond => {
            let corners = vec![(0, -6), (6, 0), (0, 6), (-6, 0)];
            area.draw(&(anchor + Polygon::new(corners, fill)))
        }
        Marker::Cross => area.draw(&(anchor + Cross::new((0, 0), 5, color.stroke_width(2)))),
    }
}

/// The segments of a horizontal line from `from` to `to` at height `y`, dashed as
/// `dash` says (a single segment when solid).
fn dashes(from: i32, to: i32, y: i32, dash: Option<(u32, u32)>) -> Vec<Vec<(i32, i32)>> {
    let Some((on, off)) = dash else {
        return vec![vec![(from, y), (to, y)]];
    };
    let (on, off) = (on.max(1) as i32, off as i32);
    let mut segments = Vec::new();
    let mut x = from;
    while x < to {
        segments.push(vec![(x, y), ((x + on).min(to), y)]);
        x += on + off;
    }
    segments
}

/// A generous estimate of a label's width in pixels: SVG leaves the real font to
/// the viewer, so the layout cannot measure it.
fn text_width(text: &str, font_size: i32) -> i32 {
    text.chars().count() as i32 * font_size * 6 / 10
}
