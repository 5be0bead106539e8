//! Writing an evaluation run to `reports/`: JSON, CSV, Markdown and SVG plots.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use ckv_sim::MarkdownTable;
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::{EvalError, EvalRecord, EvalReport, Task};

/// The method label of dense attention.
const DENSE: &str = "dense";
/// Series colors (Tableau 10), indexed by a method's place in the report.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];
/// Marker shapes as polygons around the point: circle, triangle, square, diamond, triangle
/// down, cross.
const SHAPES: [&[(i32, i32)]; 6] = [
    &[(2, -5), (5, -2), (5, 2), (2, 5), (-2, 5), (-5, 2), (-5, -2), (-2, -5)],
    &[(0, -6), (6, 4), (-6, 4)],
    &[(-4, -4), (4, -4), (4, 4), (-4, 4)],
    &[(0, -6), (6, 0), (0, 6), (-6, 0)],
    &[(0, 6), (6, -4), (-6, -4)],
    &[
        (-2, -6),
        (2, -6),
        (2, -2),
        (6, -2),
        (6, 2),
        (2, 2),
        (2, 6),
        (-2, 6),
        (-2, 2),
        (-6, 2),
        (-6, -2),
        (-2, -2),
    ],
];
/// Size of one plot panel in pixels.
const PANEL: (u32, u32) = (540, 420);
/// The plots' font family.
pub(crate) const FONT: &str = "sans-serif";

/// What a drawing step returns; turned into [`EvalError::Plot`] per file.
type DrawResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Writes `report` into `dir` (created if missing): `eval.json`, `eval.csv`,
/// `fidelity_layers.csv`, `report.md`, one `<task>.svg` per task with records and
/// `fidelity_layers.svg` when there are fidelity records; returns the files in that order.
pub fn write_reports(dir: &Path, report: &EvalReport) -> Result<Vec<PathBuf>, EvalError> {
    fs::create_dir_all(dir).map_err(|source| EvalError::Io { path: dir.to_owned(), source })?;
    let json = serde_json::to_string_pretty(report)
        .map_err(|e| EvalError::Io { path: dir.join("eval.json"), source: e.into() })?;
    let (records_csv, layers_csv) = csv(report);
    let mut files = Vec::new();
    for (name, text) in [
        ("eval.json", json),
        ("eval.csv", records_csv),
        ("fidelity_layers.csv", layers_csv),
        ("report.md", markdown(report)),
    ] {
        let path = dir.join(name);
        fs::write(&path, text).map_err(|source| EvalError::Io { path: path.clone(), source })?;
        files.push(path);
    }
    let methods = methods(&report.records.iter().collect::<Vec<_>>());
    let tasks = tasks(report);
    for &task in &tasks {
        let path = dir.join(format!("{}.svg", task.name()));
        let panels = contexts(report, task).into_iter().map(|c| budget_panel(report, task, c, &methods));
        draw_figure(&path, &format!("{}: score by token budget", task.name()), &panels.collect::<Vec<_>>())?;
        files.push(path);
    }
    if tasks.contains(&Task::Fidelity) {
        let path = dir.join("fidelity_layers.svg");
        let panels = contexts(report, Task::Fidelity).into_iter().map(|c| layer_panel(report, c, &methods));
        draw_figure(&path, "fidelity: attention-mass recall by layer", &panels.collect::<Vec<_>>())?;
        files.push(path);
    }
    Ok(files)
}

/// The tasks with records, in [`Task::ALL`] order.
fn tasks(report: &EvalReport) -> Vec<Task> {
    Task::ALL.into_iter().filter(|&t| report.records.iter().any(|r| r.task == t)).collect()
}

/// The contexts of `task`'s records, ascending.
fn contexts(report: &EvalReport, task: Task) -> Vec<usize> {
    let set: BTreeSet<usize> = report.records.iter().filter(|r| r.task == task).map(|r| r.context).collect();
    set.into_iter().collect()
}

/// The records of `task` at `context`.
fn group(report: &EvalReport, task: Task, context: usize) -> Vec<&EvalRecord> {
    report.records.iter().filter(|r| r.task == task && r.context == context).collect()
}

/// Method labels in report order: dense first, then the others as they first appear.
fn methods<'a>(records: &[&'a EvalRecord]) -> Vec<&'a str> {
    let mut out = vec![DENSE];
    for r in records {
        if !out.contains(&r.method.as_str()) {
            out.push(&r.method);
        }
    }
    out
}

/// The budgets of the non-dense records (of all records if there are only dense ones), ascending.
fn budgets(records: &[&EvalRecord]) -> Vec<usize> {
    let set: BTreeSet<usize> = records.iter().filter(|r| r.method != DENSE).map(|r| r.budget).collect();
    if set.is_empty() { records.iter().map(|r| r.budget).collect() } else { set }.into_iter().collect()
}

/// The dense figure of a group: the dense record's score, else the records' dense score.
fn dense_figure(records: &[&EvalRecord]) -> f64 {
    let dense = records.iter().find(|r| r.method == DENSE).map(|r| r.score);
    dense.or_else(|| records.first().map(|r| r.dense_score)).unwrap_or(f64::NAN)
}

/// The record of `method` at `budget`.
fn find<'a>(records: &[&'a EvalRecord], method: &str, budget: usize) -> Option<&'a EvalRecord> {
    records.iter().copied().find(|r| r.method == method && r.budget == budget)
}

/// The budget of the per-layer fidelity figures: the largest budget <= context/16, else the
/// smallest.
fn reference_budget(budgets: &[usize], context: usize) -> Option<usize> {
    budgets.iter().copied().filter(|&b| b <= context / 16).max().or_else(|| budgets.first().copied())
}

/// The y axis description of a task.
fn score_name(task: Task) -> &'static str {
    match task {
        Task::Ppl => "perplexity",
        Task::Copy | Task::Passkey => "exact-match accuracy",
        Task::Fidelity => "attention-mass recall",
    }
}

/// What a task's `n` counts.
fn n_unit(task: Task) -> &'static str {
    match task {
        Task::Ppl => "predicted tokens",
        Task::Copy | Task::Passkey => "probes",
        Task::Fidelity => "samples per layer",
    }
}

/// A score as the tables show it.
fn fmt_score(task: Task, score: f64) -> String {
    match task {
        Task::Copy | Task::Passkey => format!("{:.1}%", score * 100.0),
        Task::Ppl | Task::Fidelity => format!("{score:.3}"),
    }
}

/// The `n` of some records: one value or a range.
fn n_text(records: &[&EvalRecord]) -> String {
    let lo = records.iter().map(|r| r.n).min().unwrap_or(0);
    let hi = records.iter().map(|r| r.n).max().unwrap_or(0);
    if lo == hi { format!("n = {lo}") } else { format!("n = {lo}–{hi}") }
}

/// A CSV field, quoted only when it holds a comma, quote or line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_owned() }
}

/// An optional number as a CSV cell (empty for `None`).
fn opt_cell(v: Option<f64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

/// `eval.csv` (one row per record) and `fidelity_layers.csv` (one row per fidelity layer).
fn csv(report: &EvalReport) -> (String, String) {
    let mut rows =
        String::from("task,method,budget,context,score,dense_score,n,nll,dense_nll,mass,attended\n");
    let mut layers = String::from("method,budget,context,layer,topk_recall,mass_recall,output_rel_error\n");
    for r in &report.records {
        let method = csv_field(&r.method);
        let (nll, dense_nll) = (opt_cell(r.nll), opt_cell(r.dense_nll));
        let (mass, attended) = (opt_cell(r.mass.map(f64::from)), opt_cell(r.attended));
        let _ = writeln!(
            rows,
            "{},{method},{},{},{},{},{},{nll},{dense_nll},{mass},{attended}",
            r.task.name(),
            r.budget,
            r.context,
            r.score,
            r.dense_score,
            r.n
        );
        for l in r.layers.iter().filter(|_| r.task == Task::Fidelity) {
            let (b, c) = (r.budget, r.context);
            let (t, m, e) = (l.topk_recall, l.mass_recall, l.output_rel_error);
            let _ = writeln!(layers, "{method},{b},{c},{},{t},{m},{e}", l.layer);
        }
    }
    (rows, layers)
}

/// `report.md`: the run's metadata, then per task and context a method x budget table.
fn markdown(report: &EvalReport) -> String {
    let m = &report.meta;
    let mut out = String::from("# ClusterKV evaluation\n\n");
    let _ = writeln!(out, "- model: `{}` (sha256 `{}`)", m.model, m.model_sha256);
    let _ = writeln!(out, "- text: `{}` (sha256 `{}`, {} tokens)", m.text, m.text_sha256, m.text_tokens);
    let _ = writeln!(out, "- commit: `{}`\n- seed: {}\n- mode: {}", m.commit, m.seed, m.mode);
    let _ = writeln!(out, "- dense layers: {}", m.dense_layers);
    let _ = writeln!(out, "- perplexity positions per context: {}, decode: {} tokens", m.positions, m.decode);
    let _ = writeln!(out, "- command: `{}`\n- seconds: {:.1}", m.command, m.seconds);
    out.push_str(&tables(report, true));
    out
}

/// The score table of every task and context of `report`, as in `report.md` (without the
/// per-layer fidelity tables): what `clusterkv eval` prints.
pub fn score_tables(report: &EvalReport) -> String {
    tables(report, false)
}

/// Per task and context a method x budget table, and with `layers` the fidelity per layer.
fn tables(report: &EvalReport, layers: bool) -> String {
    let mut out = String::new();
    for task in tasks(report) {
        let better = if task.higher_is_better() { "higher" } else { "lower" };
        let _ = writeln!(out, "\n## {}: {} ({better} is better)", task.name(), score_name(task));
        for context in contexts(report, task) {
            let records = group(report, task, context);
            score_table(&mut out, task, context, &records);
            if layers && task == Task::Fidelity {
                layer_table(&mut out, context, &records);
            }
        }
    }
    out
}

/// One task's table at one context: a row per method, a column per budget.
fn score_table(out: &mut String, task: Task, context: usize, records: &[&EvalRecord]) {
    let budgets = budgets(records);
    let dense = dense_figure(records);
    let list = budgets.iter().map(usize::to_string).collect::<Vec<_>>().join(", ");
    let _ = writeln!(out, "\n### {} at context {context}\n", task.name());
    let _ = writeln!(out, "Token budgets {list}; {} {} per cell.\n", n_text(records), n_unit(task));
    let _ = writeln!(out, "dense: {}\n", fmt_score(task, dense));
    let header = std::iter::once("method".to_owned()).chain(budgets.iter().map(usize::to_string));
    let mut table = MarkdownTable::new(header, "l");
    for method in methods(records) {
        let cells = budgets.iter().map(|&b| match find(records, method, b) {
            Some(r) if task == Task::Ppl && method != DENSE => {
                let gap = format!(
                    "{} ({:+.2}%)",
                    fmt_score(task, r.score),
                    (r.score / r.dense_score - 1.0) * 100.0
                );
                with_attended(gap, r)
            }
            Some(r) => with_attended(fmt_score(task, r.score), r),
            None if method == DENSE => fmt_score(task, dense),
            None => "–".to_owned(),
        });
        table.row(std::iter::once(method.to_owned()).chain(cells));
    }
    let _ = write!(out, "{table}");
}

/// A cell of a mass-targeted run, with the mean tokens it attended (its budget is a cap).
fn with_attended(cell: String, r: &EvalRecord) -> String {
    match (r.mass, r.attended) {
        (Some(_), Some(tokens)) => format!("{cell} [{tokens:.0} tok]"),
        _ => cell,
    }
}

/// The per-layer attention-mass recall at the reference budget of `context`.
fn layer_table(out: &mut String, context: usize, records: &[&EvalRecord]) {
    let Some(budget) = reference_budget(&budgets(records), context) else { return };
    let at: Vec<&EvalRecord> =
        records.iter().copied().filter(|r| r.budget == budget && !r.layers.is_empty()).collect();
    let layers: BTreeSet<usize> = at.iter().flat_map(|r| r.layers.iter().map(|l| l.layer)).collect();
    let methods: Vec<&str> = methods(&at).into_iter().filter(|&m| find(&at, m, budget).is_some()).collect();
    let _ = writeln!(out, "\n#### fidelity per layer at context {context}, budget {budget}\n");
    let _ = writeln!(out, "Attention-mass recall; {} {}.\n", n_text(&at), n_unit(Task::Fidelity));
    let mut table = MarkdownTable::new(std::iter::once("layer").chain(methods.iter().copied()), "");
    for layer in layers {
        let cells = methods.iter().map(|&m| {
            let recall = find(&at, m, budget).and_then(|r| r.layers.iter().find(|l| l.layer == layer));
            recall.map_or_else(|| "–".to_owned(), |l| format!("{:.3}", l.mass_recall))
        });
        table.row(std::iter::once(layer.to_string()).chain(cells));
    }
    let _ = write!(out, "{table}");
}

/// One method's line in a panel.
struct Series {
    /// The legend label.
    label: String,
    /// Index into [`PALETTE`] and the marker shapes.
    style: usize,
    /// The points, in plot coordinates.
    points: Vec<(f64, f64)>,
}

/// One panel of a figure.
struct Panel {
    /// The panel caption.
    caption: String,
    /// The x and y axis descriptions.
    desc: (&'static str, &'static str),
    /// Tick positions on the x axis, ascending.
    x_ticks: Vec<f64>,
    /// Tick label of an x position.
    x_label: fn(&f64) -> String,
    /// The y range.
    y_range: (f64, f64),
    /// Dense attention's figure, drawn as a dashed reference line.
    dense: f64,
    /// The methods' lines.
    series: Vec<Series>,
}

/// A y range over `values` with a 5% margin; clamped to [0, 1.05] for scores in [0, 1].
fn y_range(task: Task, values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return (0.0, 1.05);
    }
    let pad = ((hi - lo) * 0.05).max(hi.abs().max(1.0) * 1e-3);
    let (lo, hi) = (lo - pad, hi + pad);
    if !task.higher_is_better() {
        (lo, hi)
    } else if lo.max(0.0) < hi.min(1.05) {
        (lo.max(0.0), hi.min(1.05))
    } else {
        (0.0, 1.05)
    }
}

/// The plot corner where the legend hides the least of the lines, sampled along each
/// segment, markers weighing five samples; `x` is the x range. The legend's size is
/// estimated from its labels.
fn legend_corner(p: &Panel, x: (f64, f64)) -> SeriesLabelPosition {
    let norm =
        |(px, py): (f64, f64)| ((px - x.0) / (x.1 - x.0), (py - p.y_range.0) / (p.y_range.1 - p.y_range.0));
    let dense = (0..=20).map(|k| (k as f64 / 20.0, norm((x.0, p.dense)).1));
    let mut samples: Vec<(f64, f64)> = dense.collect();
    for pair in p.series.iter().flat_map(|s| s.points.windows(2)) {
        let (a, b) = (norm(pair[0]), norm(pair[1]));
        samples.extend(
            (0..=10).map(|k| k as f64 / 10.0).map(|t| (a.0 + t * (b.0 - a.0), a.1 + t * (b.1 - a.1))),
        );
    }
    let markers = p.series.iter().flat_map(|s| s.points.iter().map(|&pt| [norm(pt); 5]));
    samples.extend(markers.flatten());
    let longest = p.series.iter().map(|s| s.label.len()).max().unwrap_or(0).max(DENSE.len());
    let width = (50.0 + 8.0 * longest as f64) / f64::from(PANEL.0 - 92);
    let height = (30.0 + 17.0 * (p.series.len() + 1) as f64) / f64::from(PANEL.1 - 100);
    let hidden = |right: bool, upper: bool| {
        let in_x = |nx: f64| if right { nx > 1.0 - width } else { nx < width };
        let in_y = |ny: f64| if upper { ny > 1.0 - height } else { ny < height };
        samples.iter().filter(|&&(nx, ny)| in_x(nx) && in_y(ny)).count()
    };
    let corners = [
        (SeriesLabelPosition::UpperRight, hidden(true, true)),
        (SeriesLabelPosition::LowerRight, hidden(true, false)),
        (SeriesLabelPosition::UpperLeft, hidden(false, true)),
        (SeriesLabelPosition::LowerLeft, hidden(false, false)),
    ];
    corners.into_iter().min_by_key(|c| c.1).map_or(SeriesLabelPosition::UpperRight, |c| c.0)
}

/// The non-dense methods of `records` as series of the `points` of their records, styled
/// by their place in `methods`.
fn series(
    records: &[&EvalRecord],
    methods: &[&str],
    points: impl Fn(&EvalRecord) -> Vec<(f64, f64)>,
) -> Vec<Series> {
    let used = methods.iter().enumerate().skip(1).filter(|(_, m)| records.iter().any(|r| r.method == **m));
    used.map(|(i, &m)| {
        let mut points: Vec<_> = records.iter().filter(|r| r.method == m).flat_map(|r| points(r)).collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        Series { label: m.to_owned(), style: i - 1, points }
    })
    .collect()
}

/// Score against budget (log2 axis) for each method, at one context.
fn budget_panel(report: &EvalReport, task: Task, context: usize, methods: &[&str]) -> Panel {
    let records = group(report, task, context);
    let x_ticks = budgets(&records).into_iter().filter(|&b| b > 0).map(|b| (b as f64).log2()).collect();
    // A mass-targeted run stands at the tokens it attended, beside the fixed budgets.
    let point = |r: &EvalRecord| {
        let tokens = r.mass.and(r.attended).unwrap_or(r.budget as f64);
        (tokens > 0.0).then(|| (tokens.log2(), r.score))
    };
    let series = series(&records, methods, |r| point(r).into_iter().collect());
    let dense = dense_figure(&records);
    let values = series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).chain([dense]);
    Panel {
        caption: format!("context {context}"),
        desc: ("tokens attended (fixed budget, or a mass target's mean)", score_name(task)),
        x_ticks,
        x_label: |x| x.exp2().round().to_string(),
        y_range: y_range(task, values),
        dense,
        series,
    }
}

/// Attention-mass recall against layer for each method at the reference budget of `context`.
fn layer_panel(report: &EvalReport, context: usize, methods: &[&str]) -> Panel {
    let records = group(report, Task::Fidelity, context);
    let budget = reference_budget(&budgets(&records), context);
    let at: Vec<&EvalRecord> = records.iter().copied().filter(|r| Some(r.budget) == budget).collect();
    let layers: BTreeSet<usize> = at.iter().flat_map(|r| r.layers.iter().map(|l| l.layer)).collect();
    let step = layers.len().div_ceil(16).max(1);
    let series = series(&at, methods, |r| r.layers.iter().map(|l| (l.layer as f64, l.mass_recall)).collect());
    let dense = dense_figure(&records);
    let values = series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).chain([dense]);
    Panel {
        caption: format!("context {context}, budget {}", budget.unwrap_or(0)),
        desc: ("layer", score_name(Task::Fidelity)),
        x_ticks: layers.iter().step_by(step).map(|&l| l as f64).collect(),
        x_label: |x| format!("{x:.0}"),
        y_range: y_range(Task::Fidelity, values),
        dense,
        series,
    }
}

/// Draws `panels` side by side under `title` into the SVG file `path`.
fn draw_figure(path: &Path, title: &str, panels: &[Panel]) -> Result<(), EvalError> {
    let draw = || -> DrawResult {
        let size = (PANEL.0 * panels.len().max(1) as u32, PANEL.1 + 40);
        let root = SVGBackend::new(path, size).into_drawing_area();
        root.fill(&WHITE)?;
        let body = root.titled(title, (FONT, 24))?;
        for (area, panel) in body.split_evenly((1, panels.len().max(1))).iter().zip(panels) {
            draw_panel(area, panel)?;
        }
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| EvalError::Plot { path: path.to_owned(), message: e.to_string() })
}

/// Draws one panel: axes, the dense reference line, a line with markers per method, legend.
fn draw_panel(area: &DrawingArea<SVGBackend, Shift>, p: &Panel) -> DrawResult {
    let first = p.x_ticks.first().copied().unwrap_or(0.0);
    let (x0, x1) = (first - 0.5, p.x_ticks.last().copied().unwrap_or(first) + 0.5);
    let mut chart = ChartBuilder::on(area)
        .caption(&p.caption, (FONT, 20))
        .margin(14)
        .x_label_area_size(48)
        .y_label_area_size(64)
        // `partial_axis` only to get a formattable range: plotters 0.3.7 implements no
        // formatter for key points over a plain f64 range.
        .build_cartesian_2d(
            (x0..x1).partial_axis(x0..x1).with_key_points(p.x_ticks.clone()),
            p.y_range.0..p.y_range.1,
        )?;
    chart
        .configure_mesh()
        .x_desc(p.desc.0)
        .y_desc(p.desc.1)
        .x_label_formatter(&p.x_label)
        .y_label_formatter(&|y| format!("{y:.2}"))
        .axis_desc_style((FONT, 17))
        .label_style((FONT, 14))
        .light_line_style(WHITE.mix(0.0))
        .bold_line_style(BLACK.mix(0.12))
        .draw()?;
    let dashed = DashedLineSeries::new([(x0, p.dense), (x1, p.dense)], 8, 5, BLACK.stroke_width(2));
    chart.draw_series(dashed)?.label(DENSE).legend(|(x, y)| {
        let style = BLACK.stroke_width(2);
        EmptyElement::at((x, y))
            + PathElement::new(vec![(-12, 0), (-3, 0)], style)
            + PathElement::new(vec![(3, 0), (12, 0)], style)
    });
    for s in &p.series {
        let (color, shape) = (PALETTE[s.style % PALETTE.len()], SHAPES[s.style % SHAPES.len()]);
        chart
            .draw_series(LineSeries::new(s.points.iter().copied(), color.stroke_width(2)))?
            .label(&s.label)
            .legend(move |(x, y)| {
                EmptyElement::at((x, y))
                    + PathElement::new(vec![(-12, 0), (12, 0)], color.stroke_width(2))
                    + Polygon::new(shape, color.filled())
            });
        let markers = s.points.iter().map(|&pt| EmptyElement::at(pt) + Polygon::new(shape, color.filled()));
        chart.draw_series(markers)?;
    }
    chart
        .configure_series_labels()
        .position(legend_corner(p, (x0, x1)))
        .margin(10)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK.mix(0.5))
        .label_font((FONT, 15))
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LayerFidelity, RunMeta};

    const METHODS: [&str; 4] = ["dense", "clusterkv", "quest", "streamingllm"];
    const CONTEXTS: [usize; 2] = [1024, 4096];

    /// A record of `METHODS[m]` at `budget`, better with more budget. Every figure is a
    /// dyadic fraction, so that it survives the JSON round trip exactly.
    fn record(task: Task, m: usize, budget: usize, context: usize) -> EvalRecord {
        let dense_score = if task == Task::Ppl { 40.0 } else { 1.0 };
        let gap = if m == 0 { 0.0 } else { m as f64 * 8.0 / budget as f64 };
        let score = if task == Task::Ppl { dense_score * (1.0 + gap) } else { dense_score * (1.0 - gap) };
        let lm = task != Task::Fidelity;
        let layers = (0..3).map(|layer| LayerFidelity {
            layer,
            topk_recall: score - 0.0625 * layer as f64,
            mass_recall: score - 0.03125 * layer as f64,
            output_rel_error: 1.0 - score,
        });
        EvalRecord {
            task,
            method: METHODS[m].to_owned(),
            budget,
            mass: None,
            attended: None,
            context,
            score,
            dense_score,
            n: if lm { 64 } else { 96 },
            nll: lm.then_some(score / 16.0),
            dense_nll: lm.then_some(dense_score / 16.0),
            layers: if lm { Vec::new() } else { layers.collect() },
        }
    }

    /// Two contexts, three budgets, four methods (dense once per context), all tasks.
    fn sample() -> EvalReport {
        let meta = RunMeta {
            model: "models/tiny.gguf".into(),
            model_sha256: "ab".repeat(32),
            text: "data/book.txt".into(),
            text_sha256: "cd".repeat(32),
            text_tokens: 70_000,
            commit: "e7be9e3".into(),
            seed: 7,
            mode: "quick".into(),
            dense_layers: 2,
            positions: 4,
            decode: 16,
            command: "clusterkv eval --quick".into(),
            seconds: 12.5,
        };
        let mut records = Vec::new();
        for task in Task::ALL {
            for context in CONTEXTS {
                records.push(record(task, 0, 0, context));
                for budget in [64, 128, 256] {
                    records.extend((1..4).map(|m| record(task, m, budget, context)));
                }
            }
        }
        EvalReport { meta, records }
    }

    /// A fresh directory for one test.
    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ckv-report-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn writes_every_report_file() {
        let report = sample();
        let dir = temp_dir("all");
        let files = write_reports(&dir, &report).unwrap();
        let names: Vec<_> = files.iter().map(|f| f.file_name().unwrap().to_str().unwrap()).collect();
        let expected = ["eval.json", "eval.csv", "fidelity_layers.csv", "report.md", "ppl.svg", "copy.svg"];
        assert_eq!(names[..6], expected);
        assert_eq!(names[6..], ["passkey.svg", "fidelity.svg", "fidelity_layers.svg"]);
        for file in &files {
            assert!(fs::metadata(file).unwrap().len() > 0, "{} is empty", file.display());
        }
        let read = |name: &str| fs::read_to_string(dir.join(name)).unwrap();

        let back: EvalReport = serde_json::from_str(&read("eval.json")).unwrap();
        assert_eq!(back, report);

        let csv = read("eval.csv");
        assert_eq!(csv.lines().count(), 1 + report.records.len());
        assert!(
            csv.starts_with("task,method,budget,context,score,dense_score,n,nll,dense_nll,mass,attended\n")
        );
        let fidelity = report.records.iter().filter(|r| r.task == Task::Fidelity).count();
        assert_eq!(read("fidelity_layers.csv").lines().count(), 1 + 3 * fidelity);

        let md = read("report.md");
        for text in METHODS.iter().map(|m| m.to_string()).chain(CONTEXTS.map(|c| format!("context {c}"))) {
            assert!(md.contains(&text), "report.md lacks {text}");
        }
        assert!(md.contains("dense: 40.000"), "{md}");
        assert!(md.contains("| clusterkv | 45.000 (+12.50%) | 42.500 (+6.25%) |"), "{md}");
        assert!(md.contains("| quest | 75.0% | 87.5% |"), "{md}");
        assert!(md.contains("fidelity per layer at context 1024, budget 64"), "{md}");
        assert!(md.contains("fidelity per layer at context 4096, budget 256"), "{md}");

        for svg in &files[4..] {
            let text = fs::read_to_string(svg).unwrap();
            assert!(text.starts_with("<svg") || text.starts_with("<?xml"), "{}", svg.display());
            // plotters writes each text element's content on a line of its own.
            let has = |label: &str| text.lines().any(|l| l.trim().starts_with(label));
            for label in METHODS.into_iter().chain(["context 1024", "context 4096"]) {
                assert!(has(label), "{} lacks {label}", svg.display());
            }
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn csv_fields_are_quoted_only_when_needed() {
        assert_eq!(csv_field("clusterkv/per-kv-head"), "clusterkv/per-kv-head");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }

    #[test]
    fn mass_runs_show_their_attended_tokens() {
        let mut r = record(Task::Ppl, 1, 512, 4096);
        assert_eq!(with_attended("x".into(), &r), "x");
        (r.mass, r.attended) = (Some(0.9), Some(301.6));
        assert_eq!(with_attended("x".into(), &r), "x [302 tok]");
        let mut table = String::new();
        score_table(&mut table, Task::Ppl, 4096, &[&r]);
        assert!(table.contains("[302 tok]"), "{table}");
    }

    #[test]
    fn reference_budget_is_largest_within_a_sixteenth() {
        assert_eq!(reference_budget(&[64, 128, 256], 4096), Some(256));
        assert_eq!(reference_budget(&[64, 128, 256], 3000), Some(128));
        assert_eq!(reference_budget(&[64, 128, 256], 512), Some(64));
        assert_eq!(reference_budget(&[], 512), None);
    }

    #[test]
    fn unwritable_directory_is_an_io_error() {
        let file = temp_dir("file");
        fs::write(&file, "not a directory").unwrap();
        let err = write_reports(&file.join("reports"), &sample()).unwrap_err();
        assert!(matches!(err, EvalError::Io { .. }), "{err}");
        assert!(err.to_string().contains("reports"), "{err}");
        fs::remove_file(&file).unwrap();
    }
}
