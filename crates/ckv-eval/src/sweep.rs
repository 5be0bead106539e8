//! `clusterkv sweep`: the recorded sweep from which ClusterKV's defaults are chosen (DESIGN
//! sections 4 and 8).
//!
//! A grid of ClusterKV settings, each a [`SelectParams`] varied one factor at a time around
//! [`SelectParams::default`] (tokens per cluster, window, window clusters, sink, k-means
//! init and iterations, GQA policy, mass target), runs on the perplexity and copy tasks at
//! each context and budget (`B = context / f` for each budget fraction `f`) through
//! [`run_probes`], one call per context so that the dense prefills are shared; the
//! fixed-budget oracle (and the exact top-p oracle at each mass), Quest and StreamingLLM run
//! beside them as references. Each point's decode step of one attention layer at the 8B
//! shape is timed at `step_context` (32k) with `B = step_context / f`, dense beside it
//! ([`StepTimer`]). The report holds one [`SweepRecord`] per (point, context, budget, task),
//! a [`SweepSummary`] per (task, point) with the [`pareto_front`] of mean accuracy gap
//! against mean step time marked, and is written as JSON, Markdown and an SVG plot by
//! [`write_sweep`].

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use ckv_core::ParamGuard;
use ckv_model::{Model, Tokenizer};
use ckv_select::{Budget, GqaPolicy, Init, Method, SelectParams, ValidSelectParams};
use plotters::coord::Shift;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::Progress;
use crate::eval::{probe_set, task_score};
use crate::probe::{ProbeOptions, ProbeScore, Setting, SettingResult, probes_context, run_probes};
use crate::report::FONT;
use ckv_bench::{BenchConfig, Flusher, LayerShape, StepTimer};
use ckv_sim::{MarkdownTable, Variant};

use crate::{EvalConfig, EvalError, RunMeta, Task};

/// The tasks of the sweep.
pub const SWEEP_TASKS: [Task; 2] = [Task::Ppl, Task::Copy];

/// What `clusterkv sweep` measures.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepConfig {
    /// Contexts `C` of the accuracy runs: each probe fills exactly `C` tokens.
    pub contexts: Vec<usize>,
    /// Budget fractions `f`: at context `C` the budget is `B = C / f`; the step time uses
    /// `B = step_context / f`.
    pub budget_fractions: Vec<usize>,
    /// Explicit tokens per cluster, each a point (`tpc=N`); the default point derives it
    /// from the budget.
    pub tokens_per_cluster: Vec<usize>,
    /// Explicit tail windows, each a point (`window=N`).
    pub windows: Vec<usize>,
    /// Explicit clusters per tail window, each a point (`wclusters=N`).
    pub window_clusters: Vec<usize>,
    /// Sink lengths, each a point (`sink=N`) unless it is the default's.
    pub sinks: Vec<usize>,
    /// k-means initialisations, each a point (`init=NAME`) unless it is the default's.
    pub inits: Vec<Init>,
    /// k-means iteration caps, each a point (`iters=N`) unless it is the default's.
    pub iters: Vec<usize>,
    /// GQA policies, each a point (`gqa=NAME`) unless it is the default's.
    pub gqa: Vec<GqaPolicy>,
    /// Mass targets `p`: ClusterKV (`mass=p`) and the exact top-p oracle (`oracle/mass=p`)
    /// at [`Budget::Mass`] capped by each budget.
    pub masses: Vec<f32>,
    /// Probe construction (positions, decode, copy passages), dense layers and seed; its
    /// `tasks` are set to [`SWEEP_TASKS`] and its budgets, contexts and variants unused.
    pub eval: EvalConfig,
    /// Context of the timed decode step.
    pub step_context: usize,
    /// Timed steps per point (the median is kept).
    pub reps: usize,
    /// The layer of the timed step.
    pub shape: LayerShape,
    /// k-means iterations of the timed step's index (its cluster count and sizes matter,
    /// not how long they were refined).
    pub index_iters: usize,
    /// Flush the cache before each timed step.
    pub flush: bool,
}

impl SweepConfig {
    /// The full sweep: contexts 2k, 4k, 8k, budgets 1/32, 1/16, 1/8 of the context, every
    /// factor, steps timed at 32k (9 reps).
    pub fn full() -> Self {
        Self {
            contexts: vec![2048, 4096, 8192],
            budget_fractions: vec![32, 16, 8],
            tokens_per_cluster: vec![8, 16, 32, 80],
            windows: vec![64, 128],
            window_clusters: vec![1, 2, 4, 8],
            sinks: vec![4, 16, 64],
            inits: vec![Init::RandomRows, Init::PlusPlus],
            iters: vec![5, 10, 20],
            gqa: vec![GqaPolicy::PerQueryHead, GqaPolicy::PerKvHead],
            masses: vec![0.9, 0.95, 0.98],
            eval: EvalConfig { tasks: SWEEP_TASKS.to_vec(), ..EvalConfig::quick() },
            step_context: 32768,
            reps: 9,
            shape: LayerShape::LLAMA_8B,
            index_iters: 2,
            flush: true,
        }
    }

    /// A test-sized sweep: context 1024, budget 1/8, tokens per cluster 16 and 80 beside the
    /// default, no other factor, steps timed at 8k (3 reps).
    pub fn quick() -> Self {
        Self {
            contexts: vec![1024],
            budget_fractions: vec![8],
            tokens_per_cluster: vec![16, 80],
            windows: Vec::new(),
            window_clusters: Vec::new(),
            sinks: Vec::new(),
            inits: Vec::new(),
            iters: Vec::new(),
            gqa: Vec::new(),
            masses: Vec::new(),
            step_context: 8192,
            reps: 3,
            ..Self::full()
        }
    }

    /// The points of the grid: the default first, then one per factor value that differs
    /// from it, then the references (oracle, oracle at each mass, Quest, StreamingLLM).
    pub fn points(&self) -> Vec<SweepPoint> {
        let base = SelectParams::default();
        let defaults = base.clone().validate().ok();
        let (d_sink, d_init, d_iters) =
            defaults.as_ref().map_or((16, Init::RandomRows, 20), |v| (v.sink(), v.init(), v.max_iters()));
        let ckv = |label: String, params: SelectParams, gqa: GqaPolicy, mass: Option<f32>| SweepPoint {
            label,
            variant: Variant { method: Method::ClusterKv, gqa },
            params,
            mass,
            reference: false,
        };
        let pqh = GqaPolicy::PerQueryHead;
        let mut points = vec![ckv("default".into(), base.clone(), pqh, None)];
        for &t in &self.tokens_per_cluster {
            points.push(ckv(format!("tpc={t}"), base.clone().tokens_per_cluster(t), pqh, None));
        }
        for &w in &self.windows {
            points.push(ckv(format!("window={w}"), base.clone().window(w), pqh, None));
        }
        for &w in &self.window_clusters {
            points.push(ckv(format!("wclusters={w}"), base.clone().window_clusters(w), pqh, None));
        }
        for &s in self.sinks.iter().filter(|&&s| s != d_sink) {
            points.push(ckv(format!("sink={s}"), base.clone().sink(s), pqh, None));
        }
        for &i in self.inits.iter().filter(|&&i| i != d_init) {
            points.push(ckv(format!("init={i}"), base.clone().init(i), pqh, None));
        }
        for &n in self.iters.iter().filter(|&&n| n != d_iters) {
            points.push(ckv(format!("iters={n}"), base.clone().max_iters(n), pqh, None));
        }
        for &g in self.gqa.iter().filter(|&&g| g != pqh) {
            points.push(ckv(format!("gqa={g}"), base.clone().gqa(g), g, None));
        }
        for &p in &self.masses {
            points.push(ckv(format!("mass={p}"), base.clone(), pqh, Some(p)));
        }
        let reference = |label: String, method: Method, mass: Option<f32>| SweepPoint {
            label,
            variant: Variant { method, gqa: pqh },
            params: base.clone(),
            mass,
            reference: true,
        };
        points.push(reference("oracle".into(), Method::Oracle, None));
        for &p in &self.masses {
            points.push(reference(format!("oracle/mass={p}"), Method::Oracle, Some(p)));
        }
        points.push(reference("quest".into(), Method::Quest, None));
        points.push(reference("streamingllm".into(), Method::StreamingLlm, None));
        // A factor listed twice makes one point.
        let mut seen = std::collections::HashSet::new();
        points.retain(|p| seen.insert(p.label.clone()));
        points
    }
}

impl ckv_core::ParamGuard for SweepConfig {
    type Checked = Self;
    type Error = EvalError;

    fn check_ref(&self) -> Result<(), EvalError> {
        let bad = |name: &'static str, value: String, expected: &'static str| {
            Err(EvalError::from(ckv_core::ParamError::new(name, value, expected)))
        };
        if self.contexts.is_empty() || self.budget_fractions.is_empty() {
            return bad(
                "contexts/budget_fractions",
                format!("{:?} / {:?}", self.contexts, self.budget_fractions),
                "at least one of each",
            );
        }
        let smallest = self.contexts.iter().copied().min().unwrap_or(0).min(self.step_context);
        if let Some(f) = self.budget_fractions.iter().find(|&&f| f == 0 || smallest / f < 2) {
            return bad(
                "budget_fraction",
                f.to_string(),
                "at least 1, and at most half the smallest context (a budget of 2 or more tokens)",
            );
        }
        if let Some(p) = self.masses.iter().find(|p| !(**p > 0.0 && **p <= 1.0)) {
            return bad("mass", p.to_string(), "a share of the attention mass in (0, 1]");
        }
        if let Some(t) = self.tokens_per_cluster.iter().find(|&&t| t == 0) {
            return bad("tokens_per_cluster", t.to_string(), "at least 1");
        }
        if let Some(w) = self.windows.iter().chain(&self.window_clusters).find(|&&w| w == 0) {
            return bad("window/window_clusters", w.to_string(), "at least 1");
        }
        if let Some(i) = self.iters.iter().find(|&&i| i == 0) {
            return bad("iters", i.to_string(), "at least 1");
        }
        if self.reps == 0 || self.index_iters == 0 {
            return bad(
                "reps/index_iters",
                format!("{} / {}", self.reps, self.index_iters),
                "at least 1 each",
            );
        }
        let s = &self.shape;
        if s.head_dim == 0 || s.n_kv_heads == 0 || !s.n_q_heads.is_multiple_of(s.n_kv_heads) {
            return bad("shape", format!("{s:?}"), "d >= 1 and Hq a multiple of Hkv >= 1");
        }
        Ok(())
    }

    fn validate(self) -> Result<Self, EvalError> {
        self.check_ref()?;
        Ok(self)
    }
}

/// One setting of the sweep: ClusterKV parameters (or a reference method) without a budget.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepPoint {
    /// What differs from the defaults (`default`, `tpc=16`, `sink=64`, `init=kmeans++`,
    /// `gqa=per-kv-head`, `mass=0.95`), or the reference's name (`oracle`, `quest`, ...).
    pub label: String,
    /// The method and GQA policy.
    pub variant: Variant,
    /// The selection parameters; method, GQA policy, budget and seed are set per run.
    pub params: SelectParams,
    /// The mass target `p`, capped by each budget.
    pub mass: Option<f32>,
    /// Whether this is a reference row (oracle, Quest, StreamingLLM), not a ClusterKV point.
    pub reference: bool,
}

impl SweepPoint {
    /// The budget rule at `budget` tokens: fixed, or the point's mass capped by it.
    pub fn budget(&self, budget: usize) -> Budget {
        match self.mass {
            Some(p) => Budget::Mass { p, max: budget },
            None => Budget::Tokens(budget),
        }
    }

    /// The point's parameters at `budget` tokens for contexts of at most `max_context`
    /// tokens, validated (the way [`run_probes`] resolves them).
    pub fn resolve(
        &self,
        budget: usize,
        seed: u64,
        max_context: usize,
    ) -> Result<ValidSelectParams, ckv_select::SelectError> {
        self.params
            .clone()
            .method(self.variant.method)
            .gqa(self.variant.gqa)
            .budget_rule(self.budget(budget))
            .seed(seed)
            .max_context(max_context)
            .validate()
    }

    /// Whether its decode step can be timed (ClusterKV and Quest).
    fn timed(&self) -> bool {
        matches!(self.variant.method, Method::ClusterKv | Method::Quest)
    }
}

/// The resolved parameters of a point at one budget, as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointParams {
    /// The method label (`clusterkv`, `clusterkv/per-kv-head`, `oracle`, ...).
    pub method: String,
    /// Sink tokens `s`.
    pub sink: usize,
    /// Prompt tokens per cluster at this budget.
    pub tokens_per_cluster: usize,
    /// Whether the tokens per cluster are derived from the budget (the default).
    pub tokens_per_cluster_auto: bool,
    /// Tail window.
    pub window: usize,
    /// Clusters per tail window.
    pub window_clusters: usize,
    /// k-means initialisation.
    pub init: String,
    /// k-means iterations at most.
    pub max_iters: usize,
    /// GQA policy.
    pub gqa: String,
}

impl PointParams {
    fn new(point: &SweepPoint, valid: &ValidSelectParams) -> Self {
        Self {
            method: point.variant.label(),
            sink: valid.sink(),
            tokens_per_cluster: valid.tokens_per_cluster(),
            tokens_per_cluster_auto: !point.label.starts_with("tpc="),
            window: valid.window(),
            window_clusters: valid.window_clusters(),
            init: valid.init().to_string(),
            max_iters: valid.max_iters(),
            gqa: valid.gqa().to_string(),
        }
    }
}

/// One measurement: a point at a context and budget on one task, with its step time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepRecord {
    /// The point's label.
    pub label: String,
    /// Whether the point is a reference (oracle, Quest, StreamingLLM).
    pub reference: bool,
    /// The point's parameters at this budget.
    pub params: PointParams,
    /// Prompt plus scored tokens of each probe.
    pub context: usize,
    /// The budget fraction `f`: `budget = context / f`.
    pub fraction: usize,
    /// The token budget (the cap of a mass target).
    pub budget: usize,
    /// The mass target `p`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mass: Option<f32>,
    /// The task (`ppl` or `copy`).
    pub task: Task,
    /// The task's score: perplexity, or the copy accuracy per token.
    pub score: f64,
    /// Dense attention's score on the same probes.
    pub dense_score: f64,
    /// The accuracy gap to dense, lower is better: `100 (score / dense - 1)` percent for
    /// perplexity, `100 (dense - score)` points of accuracy for copy.
    pub gap: f64,
    /// What the score averages over: predicted tokens (`ppl`) or probes (`copy`).
    pub n: usize,
    /// Mean tokens one query head attended to per decode step in the selecting layers.
    pub attended: f64,
    /// Median decode-step time of the point (ms) at `step_context` with
    /// `B = step_context / fraction`; `None` for the oracle and StreamingLLM, not timed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_ms: Option<f64>,
    /// Tokens per cluster of the timed step's index (ClusterKV): the point's, resolved at
    /// `B = step_context / fraction` (the default derives it from that budget).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_tokens_per_cluster: Option<usize>,
    /// Median dense decode-step time (ms) at `step_context`.
    pub dense_step_ms: f64,
    /// `dense_step_ms / step_ms`: how many times faster than dense.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio_to_dense: Option<f64>,
}

/// One point's figures on one task, averaged over every (context, budget).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepSummary {
    /// The task.
    pub task: Task,
    /// The point's label.
    pub label: String,
    /// Whether the point is a reference.
    pub reference: bool,
    /// Mean gap to dense over its records (see [`SweepRecord::gap`]).
    pub mean_gap: f64,
    /// Mean attended tokens.
    pub mean_attended: f64,
    /// Mean step time (ms) over the budget fractions, when timed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_step_ms: Option<f64>,
    /// `dense_step_ms / mean_step_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio_to_dense: Option<f64>,
    /// Whether it has a record at every (context, budget): only complete points enter the
    /// front.
    pub complete: bool,
    /// Whether it is on the Pareto front of mean gap against mean step time among the
    /// complete, timed ClusterKV points.
    pub on_front: bool,
}

/// How the sweep ran, beside the run's metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepSettings {
    /// Contexts of the accuracy runs.
    pub contexts: Vec<usize>,
    /// Budget fractions.
    pub budget_fractions: Vec<usize>,
    /// Context of the timed step.
    pub step_context: usize,
    /// Timed steps per point.
    pub reps: usize,
    /// The timed layer: `Hq`, `Hkv`, `d` (f16 KV).
    pub shape: [usize; 3],
    /// k-means iterations of the timed index.
    pub index_iters: usize,
    /// Whether the cache was flushed before each timed step.
    pub flush: bool,
    /// Copy probes per context.
    pub copy_probes: usize,
    /// Median dense step time (ms) at `step_context`.
    pub dense_step_ms: f64,
}

/// What [`run_sweep`] measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepRun {
    /// How it ran.
    pub settings: SweepSettings,
    /// One record per (point, context, budget, task).
    pub records: Vec<SweepRecord>,
    /// One summary per (task, point), points in grid order.
    pub summary: Vec<SweepSummary>,
    /// (point, budget) pairs left out because their parameters are invalid there (e.g. a
    /// sink of 64 at a budget of 64), each with the reason.
    pub skipped: Vec<String>,
}

/// A whole sweep: metadata and results (`sweep.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepReport {
    /// How the run was made (model, text, commit, command).
    pub meta: RunMeta,
    /// What it measured.
    #[serde(flatten)]
    pub run: SweepRun,
}

/// Indices of the points on the Pareto front of `(cost, loss)` pairs, both lower is better:
/// the points no other point dominates (no larger in both and smaller in one), ascending by
/// cost then loss. Equal points are all kept (neither dominates the other); points with a
/// non-finite coordinate are left out.
pub fn pareto_front(points: &[(f64, f64)]) -> Vec<usize> {
    let finite = |&(x, y): &(f64, f64)| x.is_finite() && y.is_finite();
    let dominates = |a: (f64, f64), b: (f64, f64)| a.0 <= b.0 && a.1 <= b.1 && (a.0 < b.0 || a.1 < b.1);
    let mut front: Vec<usize> = (0..points.len())
        .filter(|&i| finite(&points[i]))
        .filter(|&i| !points.iter().filter(|p| finite(p)).any(|&p| dominates(p, points[i])))
        .collect();
    front.sort_by(|&a, &b| points[a].0.total_cmp(&points[b].0).then(points[a].1.total_cmp(&points[b].1)));
    front
}

/// Budget of `fraction` at `context`.
fn budget_of(context: usize, fraction: usize) -> usize {
    context / fraction.max(1)
}

/// A key equal for two resolved parameter sets that run identically.
fn run_key(v: &ValidSelectParams) -> String {
    format!(
        "{:?}",
        (
            v.method(),
            v.gqa(),
            v.budget_rule(),
            v.sink(),
            v.tokens_per_cluster(),
            v.init(),
            v.max_iters(),
            v.window(),
            v.window_clusters(),
            v.quest_page_size(),
            v.seed()
        )
    )
}

/// A key equal for two resolved parameter sets whose decode step is the same.
fn step_key(v: &ValidSelectParams) -> String {
    format!("{:?}", (v.method(), v.gqa(), v.budget_rule(), v.sink(), v.tokens_per_cluster()))
}

/// Step time (seconds) and the tokens per cluster of the timed index, per point and budget
/// fraction; `None` where not timed.
type StepTimes = Vec<Vec<Option<(f64, usize)>>>;

/// Step times (seconds) per (point, fraction) and the dense step time.
fn step_times(
    config: &SweepConfig,
    points: &[SweepPoint],
    progress: &dyn Progress,
    skipped: &mut Vec<String>,
) -> Result<(StepTimes, f64), EvalError> {
    let context = config.step_context;
    let seed = config.eval.seed;
    let mut resolved: Vec<Vec<Option<ValidSelectParams>>> = Vec::with_capacity(points.len());
    for point in points {
        let row = config.budget_fractions.iter().map(|&f| {
            let budget = budget_of(context, f);
            if !point.timed() {
                return None;
            }
            match point.resolve(budget, seed, context + 1) {
                Ok(v) => Some(v),
                Err(e) => {
                    skipped.push(format!("step time of {} at B={budget} ({context}/{f}): {e}", point.label));
                    None
                }
            }
        });
        resolved.push(row.collect());
    }
    let mut keys: Vec<String> = resolved.iter().flatten().flatten().map(step_key).collect();
    keys.sort();
    keys.dedup();
    progress.start(&format!("step time at {context}"), keys.len() as u64 + 1);
    progress.message("building the layer");
    let bench = BenchConfig {
        shape: config.shape,
        reps: config.reps,
        flush: config.flush,
        index_iters: config.index_iters,
        seed: config.eval.seed,
        ..BenchConfig::full()
    };
    let mut timer = StepTimer::new(&bench, context)?;
    let flusher = Flusher::for_this_machine();
    progress.message("dense");
    let dense = timer.dense(&flusher)?;
    progress.advance(1);
    let mut timed: Vec<(String, f64)> = Vec::new();
    let mut times = Vec::with_capacity(points.len());
    for (point, row) in points.iter().zip(&resolved) {
        let mut out = Vec::with_capacity(row.len());
        for v in row {
            let Some(v) = v else {
                out.push(None);
                continue;
            };
            let key = step_key(v);
            let seconds = match timed.iter().find(|(k, _)| *k == key) {
                Some(&(_, s)) => s,
                None => {
                    progress.message(&format!("{} B={}", point.label, v.budget_rule()));
                    let s = timer.sparse(v, &flusher)?;
                    progress.advance(1);
                    timed.push((key, s));
                    s
                }
            };
            out.push(Some((seconds, v.tokens_per_cluster())));
        }
        times.push(out);
    }
    info!(context, dense_ms = dense * 1e3, timed = timed.len(), "step times measured");
    Ok((times, dense))
}

/// Runs the sweep on `tokens` (the tokenized text): the step times first, then for each
/// context one [`run_probes`] call over every (point, budget) with dense first. Settings
/// that resolve to the same parameters run once. `progress` is reset for each phase.
pub fn run_sweep(
    model: &Model,
    tokenizer: &Tokenizer,
    tokens: &[u32],
    config: &SweepConfig,
    progress: &dyn Progress,
) -> Result<SweepRun, EvalError> {
    config.check_ref()?;
    let eval = EvalConfig { tasks: SWEEP_TASKS.to_vec(), ..config.eval.clone() };
    let points = config.points();
    let mut skipped = Vec::new();
    // Probe construction errors (a context too short for its passages) before the long work.
    for &context in &config.contexts {
        probe_set(tokenizer, tokens, &eval, context)?;
    }
    let (times, dense_s) = step_times(config, &points, progress, &mut skipped)?;
    let dense_ms = dense_s * 1e3;
    let options = ProbeOptions {
        select: SelectParams::default(),
        dense_layers: eval.dense_layers,
        seed: eval.seed,
        fidelity_every: 1,
        batch: eval.batch,
    };
    let dense_variant = Variant { method: Method::Dense, gqa: GqaPolicy::PerQueryHead };
    let mut records = Vec::new();
    let mut copy_probes = 0;
    for &context in &config.contexts {
        let set = probe_set(tokenizer, tokens, &eval, context)?;
        copy_probes = set.tasks.iter().filter(|&&t| t == Task::Copy).count();
        let max_context = probes_context(&set.probes);
        // (point, fraction) -> index into `settings`, with the resolved parameters.
        let mut settings =
            vec![Setting::fixed(dense_variant, budget_of(context, config.budget_fractions[0]))];
        let mut keys: Vec<String> = vec![String::new()];
        let mut runs: Vec<(usize, usize, usize, ValidSelectParams)> = Vec::new();
        for (pi, point) in points.iter().enumerate() {
            for (fi, &f) in config.budget_fractions.iter().enumerate() {
                let budget = budget_of(context, f);
                let valid = match point.resolve(budget, eval.seed, max_context) {
                    Ok(v) => v,
                    Err(e) => {
                        skipped.push(format!("{} at context {context}, B={budget}: {e}", point.label));
                        continue;
                    }
                };
                let key = run_key(&valid);
                let at = keys.iter().position(|k| *k == key).unwrap_or_else(|| {
                    keys.push(key);
                    settings.push(Setting {
                        variant: point.variant,
                        budget: point.budget(budget),
                        select: Some(point.params.clone()),
                    });
                    settings.len() - 1
                });
                runs.push((pi, fi, at, valid));
            }
        }
        progress.start(&format!("context {context}"), 0);
        info!(context, settings = settings.len(), points = points.len(), "sweep: decoding");
        let results = run_probes(model, &set.probes, &settings, &options, progress)?;
        for task in SWEEP_TASKS {
            let pick = |r: &SettingResult| -> Vec<ProbeScore> {
                r.scores.iter().zip(&set.tasks).filter(|(_, t)| **t == task).map(|(s, _)| *s).collect()
            };
            let dense_scores = pick(&results[0]);
            if dense_scores.is_empty() {
                continue;
            }
            let dense_score = task_score(task, &dense_scores).0;
            for (pi, fi, at, valid) in &runs {
                let (point, f, r) = (&points[*pi], config.budget_fractions[*fi], &results[*at]);
                let scores = pick(r);
                let score = task_score(task, &scores).0;
                let gap = match task {
                    Task::Ppl => 100.0 * (score / dense_score - 1.0),
                    _ => 100.0 * (dense_score - score),
                };
                let n = if task == Task::Ppl { scores.iter().map(|s| s.tokens).sum() } else { scores.len() };
                let step = times[*pi][*fi];
                let step_ms = step.map(|s| s.0 * 1e3);
                records.push(SweepRecord {
                    label: point.label.clone(),
                    reference: point.reference,
                    params: PointParams::new(point, valid),
                    context,
                    fraction: f,
                    budget: budget_of(context, f),
                    mass: point.mass,
                    task,
                    score,
                    dense_score,
                    gap,
                    n,
                    attended: r.attended,
                    step_ms,
                    step_tokens_per_cluster: step
                        .filter(|_| point.variant.method == Method::ClusterKv)
                        .map(|s| s.1),
                    dense_step_ms: dense_ms,
                    ratio_to_dense: step_ms.map(|s| dense_ms / s),
                });
            }
        }
    }
    for s in &skipped {
        warn!("skipped: {s}");
    }
    let combos = config.contexts.len() * config.budget_fractions.len();
    let summary = summarize(&points, &records, combos, dense_ms);
    let settings = SweepSettings {
        contexts: config.contexts.clone(),
        budget_fractions: config.budget_fractions.clone(),
        step_context: config.step_context,
        reps: config.reps,
        shape: [config.shape.n_q_heads, config.shape.n_kv_heads, config.shape.head_dim],
        index_iters: config.index_iters,
        flush: config.flush,
        copy_probes,
        dense_step_ms: dense_ms,
    };
    Ok(SweepRun { settings, records, summary, skipped })
}

/// The summaries per (task, point), with the front marked.
fn summarize(
    points: &[SweepPoint],
    records: &[SweepRecord],
    combos: usize,
    dense_ms: f64,
) -> Vec<SweepSummary> {
    let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    let mut out = Vec::new();
    for task in SWEEP_TASKS {
        let start = out.len();
        for point in points {
            let own: Vec<&SweepRecord> =
                records.iter().filter(|r| r.task == task && r.label == point.label).collect();
            if own.is_empty() {
                continue;
            }
            let gaps: Vec<f64> = own.iter().map(|r| r.gap).collect();
            let attended: Vec<f64> = own.iter().map(|r| r.attended).collect();
            // Each fraction's step time once (it does not depend on the context).
            let mut steps: Vec<(usize, f64)> =
                own.iter().filter_map(|r| r.step_ms.map(|s| (r.fraction, s))).collect();
            steps.sort_by_key(|s| s.0);
            steps.dedup_by_key(|s| s.0);
            let timed_all = steps.len()
                == own.iter().map(|r| r.fraction).collect::<std::collections::BTreeSet<_>>().len();
            let step = if timed_all { mean(&steps.iter().map(|s| s.1).collect::<Vec<_>>()) } else { None };
            out.push(SweepSummary {
                task,
                label: point.label.clone(),
                reference: point.reference,
                mean_gap: mean(&gaps).unwrap_or(f64::NAN),
                mean_attended: mean(&attended).unwrap_or(f64::NAN),
                mean_step_ms: step,
                ratio_to_dense: step.map(|s| dense_ms / s),
                complete: own.len() == combos,
                on_front: false,
            });
        }
        let candidates: Vec<usize> = (start..out.len())
            .filter(|&i| !out[i].reference && out[i].complete && out[i].mean_step_ms.is_some())
            .collect();
        let xy: Vec<(f64, f64)> =
            candidates.iter().map(|&i| (out[i].mean_step_ms.unwrap_or(f64::NAN), out[i].mean_gap)).collect();
        for k in pareto_front(&xy) {
            out[candidates[k]].on_front = true;
        }
    }
    out
}

/// The score's name in tables.
fn gap_name(task: Task) -> &'static str {
    match task {
        Task::Ppl => "ppl gap (%)",
        _ => "copy accuracy gap (points)",
    }
}

/// The Markdown tables: one per task, rows = points, columns = the gap at each context x
/// budget, then the mean gap, mean attended tokens, mean step time and its ratio to dense;
/// `*` marks the Pareto front.
pub fn sweep_tables(report: &SweepReport) -> String {
    let (meta, run) = (&report.meta, &report.run);
    let s = &run.settings;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# ClusterKV settings sweep\n\nmodel {} (sha256 {:.12}), text {} ({} tokens), seed {}, dense layers {}, \
         commit {}\n",
        meta.model, meta.model_sha256, meta.text, meta.text_tokens, meta.seed, meta.dense_layers, meta.commit
    );
    let _ = writeln!(
        out,
        "Accuracy: {} perplexity positions x {} scored tokens and {} copy probes per context; budget B = \
         context / f. Step time: one attention layer at {} tokens (Hq {}, Hkv {}, d {}, f16 KV), B = {} / f, \
         median of {} steps{}, dense {:.3} ms. `*`: on the Pareto front of mean gap against mean step time.\n",
        meta.positions,
        meta.decode,
        s.copy_probes,
        s.step_context,
        s.shape[0],
        s.shape[1],
        s.shape[2],
        s.step_context,
        s.reps,
        if s.flush { " from a flushed cache" } else { "" },
        s.dense_step_ms
    );
    let combos: Vec<(usize, usize)> =
        s.contexts.iter().flat_map(|&c| s.budget_fractions.iter().map(move |&f| (c, f))).collect();
    for task in SWEEP_TASKS {
        let rows: Vec<&SweepSummary> = run.summary.iter().filter(|r| r.task == task).collect();
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(out, "## {} ({})\n", task.name(), gap_name(task));
        let header = std::iter::once("point".to_owned())
            .chain(combos.iter().map(|&(c, f)| format!("{c} B={}", budget_of(c, f))))
            .chain(["mean gap", "attended", "step ms", "x dense"].map(String::from));
        let mut table = MarkdownTable::new(header, "l");
        for row in rows {
            let mark = if row.on_front { " *" } else { "" };
            let gaps = combos.iter().map(|&(c, f)| {
                run.records
                    .iter()
                    .find(|r| r.task == task && r.label == row.label && r.context == c && r.fraction == f)
                    .map_or("-".to_owned(), |r| format!("{:+.2}", r.gap))
            });
            let opt = |v: Option<f64>, p: usize| v.map_or("-".to_owned(), |v| format!("{v:.p$}"));
            let summary = [
                format!("{:+.2}", row.mean_gap),
                format!("{:.1}", row.mean_attended),
                opt(row.mean_step_ms, 3),
                opt(row.ratio_to_dense, 2),
            ];
            table.row(std::iter::once(format!("{}{mark}", row.label)).chain(gaps).chain(summary));
        }
        let _ = write!(out, "{table}");
        let dense: Vec<String> = s
            .contexts
            .iter()
            .filter_map(|&c| {
                let r = run.records.iter().find(|r| r.task == task && r.context == c)?;
                Some(format!("{c}: {:.4}", r.dense_score))
            })
            .collect();
        let _ = writeln!(
            out,
            "\nDense {}: {}.\n",
            if task == Task::Ppl { "perplexity" } else { "copy accuracy" },
            dense.join(", ")
        );
    }
    if !run.skipped.is_empty() {
        let _ = writeln!(out, "Skipped (invalid there):\n");
        for s in &run.skipped {
            let _ = writeln!(out, "- {s}");
        }
        out.push('\n');
    }
    let _ = writeln!(out, "Command: `{}` ({:.0} s)", meta.command, meta.seconds);
    out
}

/// Writes `sweep.json`, `sweep.md` and `sweep.svg` into `dir` (created if missing); returns
/// them in that order.
pub fn write_sweep(dir: &Path, report: &SweepReport) -> Result<Vec<PathBuf>, EvalError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| EvalError::Io { path, source }
    };
    fs::create_dir_all(dir).map_err(io(dir))?;
    let json = dir.join("sweep.json");
    let text = serde_json::to_string_pretty(report)
        .map_err(|e| EvalError::Io { path: json.clone(), source: std::io::Error::other(e) })?;
    fs::write(&json, text).map_err(io(&json))?;
    let md = dir.join("sweep.md");
    fs::write(&md, sweep_tables(report)).map_err(io(&md))?;
    let svg = dir.join("sweep.svg");
    draw_sweep(&svg, report)?;
    Ok(vec![json, md, svg])
}

/// Size of one plot panel in pixels.
const PANEL: (u32, u32) = (640, 500);

/// One panel of the sweep plot: a task's points.
struct Panel<'a> {
    task: Task,
    rows: Vec<&'a SweepSummary>,
}

/// Draws the sweep plot: per task, mean gap against mean step time, one labelled marker per
/// point, the front as a line, Quest as a reference marker and the oracle as a dashed line.
fn draw_sweep(path: &Path, report: &SweepReport) -> Result<(), EvalError> {
    let panels: Vec<Panel> = SWEEP_TASKS
        .into_iter()
        .map(|task| Panel { task, rows: report.run.summary.iter().filter(|r| r.task == task).collect() })
        .filter(|p| !p.rows.is_empty())
        .collect();
    let s = &report.run.settings;
    let title = format!(
        "ClusterKV sweep: gap to dense against decode step at {} (dense {:.2} ms)",
        s.step_context, s.dense_step_ms
    );
    let draw = || -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let size = (PANEL.0 * panels.len().max(1) as u32, PANEL.1 + 40);
        let root = SVGBackend::new(path, size).into_drawing_area();
        root.fill(&WHITE)?;
        let body = root.titled(&title, (FONT, 22))?;
        for (area, panel) in body.split_evenly((1, panels.len().max(1))).iter().zip(&panels) {
            draw_panel(area, panel, s.dense_step_ms)?;
        }
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| EvalError::Plot { path: path.to_owned(), message: e.to_string() })
}

fn draw_panel(
    area: &DrawingArea<SVGBackend, Shift>,
    p: &Panel<'_>,
    dense_ms: f64,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let timed: Vec<&SweepSummary> =
        p.rows.iter().copied().filter(|r| r.mean_step_ms.is_some() && r.mean_gap.is_finite()).collect();
    let oracle = p.rows.iter().find(|r| r.label == "oracle").map(|r| r.mean_gap).filter(|g| g.is_finite());
    let xs = timed.iter().filter_map(|r| r.mean_step_ms);
    let (x_lo, x_hi) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| (a.min(x), b.max(x)));
    let (x_lo, x_hi) = if x_lo <= x_hi { (x_lo, x_hi) } else { (0.0, 1.0) };
    let x_pad = ((x_hi - x_lo) * 0.12).max(x_hi.abs() * 0.05).max(1e-3);
    let ys = timed.iter().map(|r| r.mean_gap).chain(oracle);
    let (y_lo, y_hi) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| (a.min(y), b.max(y)));
    let (y_lo, y_hi) = if y_lo <= y_hi { (y_lo, y_hi) } else { (0.0, 1.0) };
    let y_pad = ((y_hi - y_lo) * 0.1).max(y_hi.abs() * 0.05).max(0.05);
    let (x0, x1, y0, y1) = ((x_lo - x_pad).max(0.0), x_hi + x_pad, y_lo - y_pad, y_hi + y_pad);
    let mut chart = ChartBuilder::on(area)
        .caption(format!("{} against step time", gap_name(p.task)), (FONT, 19))
        .margin(14)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    chart
        .configure_mesh()
        .x_desc("mean decode-step time (ms; x dense speed-up)")
        .y_desc(gap_name(p.task))
        .x_label_formatter(&|x| {
            if *x > 0.0 { format!("{x:.2} ({:.1}x)", dense_ms / x) } else { format!("{x:.2}") }
        })
        .y_label_formatter(&|y| format!("{y:.1}"))
        .x_labels(5)
        .axis_desc_style((FONT, 16))
        .label_style((FONT, 13))
        .light_line_style(WHITE.mix(0.0))
        .bold_line_style(BLACK.mix(0.12))
        .draw()?;
    let blue = RGBColor(31, 119, 180);
    let red = RGBColor(214, 39, 40);
    if let Some(g) = oracle {
        chart
            .draw_series(DashedLineSeries::new([(x0, g), (x1, g)], 8, 5, BLACK.stroke_width(2)))?
            .label("oracle (fixed budget)")
            .legend(|(x, y)| PathElement::new(vec![(x - 12, y), (x + 12, y)], BLACK.stroke_width(2)));
    }
    let point = |r: &SweepSummary| (r.mean_step_ms.unwrap_or(0.0), r.mean_gap);
    let mut front: Vec<(f64, f64)> = timed.iter().filter(|r| r.on_front).map(|r| point(r)).collect();
    front.sort_by(|a, b| a.0.total_cmp(&b.0));
    chart
        .draw_series(LineSeries::new(front.iter().copied(), red.stroke_width(2)))?
        .label("Pareto front")
        .legend(move |(x, y)| PathElement::new(vec![(x - 12, y), (x + 12, y)], red.stroke_width(2)));
    let ckv: Vec<&SweepSummary> = timed.iter().copied().filter(|r| !r.reference).collect();
    chart
        .draw_series(ckv.iter().map(|r| {
            let color = if r.on_front { red } else { blue };
            EmptyElement::at(point(r))
                + Circle::new((0, 0), 5, color.filled())
                + Text::new(r.label.clone(), (7, -14), (FONT, 12).into_font())
        }))?
        .label("ClusterKV point")
        .legend(move |(x, y)| Circle::new((x, y), 5, blue.filled()));
    let refs: Vec<&SweepSummary> = timed.iter().copied().filter(|r| r.reference).collect();
    if !refs.is_empty() {
        chart
            .draw_series(refs.iter().map(|r| {
                EmptyElement::at(point(r))
                    + TriangleMarker::new((0, 0), 7, BLACK.filled())
                    + Text::new(r.label.clone(), (8, -14), (FONT, 12).into_font())
            }))?
            .label("reference (Quest)")
            .legend(|(x, y)| TriangleMarker::new((x, y), 7, BLACK.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .margin(10)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK.mix(0.5))
        .label_font((FONT, 14))
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pareto_front_keeps_only_undominated_points() {
        // (cost, loss): 0 and 2 are on the front; 1 is dominated by 0 (slower, worse); 3 by
        // 2 at equal cost; 4 ties 0 exactly (kept); 5 is not finite (left out); 6 is the
        // slowest but the most accurate (kept).
        let points =
            [(1.0, 5.0), (2.0, 6.0), (3.0, 2.0), (3.0, 4.0), (1.0, 5.0), (f64::NAN, 0.0), (9.0, 1.0)];
        assert_eq!(pareto_front(&points), vec![0, 4, 2, 6]);
        // Equal loss at a higher cost is dominated.
        assert_eq!(pareto_front(&[(2.0, 1.0), (1.0, 1.0)]), vec![1]);
        assert!(pareto_front(&[]).is_empty());
        assert_eq!(pareto_front(&[(f64::INFINITY, 1.0), (5.0, 3.0)]), vec![1]);
    }

    #[test]
    fn points_vary_one_factor_at_a_time() {
        let points = SweepConfig::full().points();
        let labels: Vec<&str> = points.iter().map(|p| p.label.as_str()).collect();
        for want in [
            "default",
            "tpc=8",
            "tpc=80",
            "window=64",
            "wclusters=2",
            "sink=4",
            "sink=64",
            "init=kmeans++",
            "iters=5",
            "gqa=per-kv-head",
            "mass=0.95",
            "oracle",
            "oracle/mass=0.9",
            "quest",
            "streamingllm",
        ] {
            assert!(labels.contains(&want), "{want} missing from {labels:?}");
        }
        // The defaults' own values make no second point.
        for dup in ["sink=16", "init=random", "iters=20", "gqa=per-query-head"] {
            assert!(!labels.contains(&dup), "{dup} in {labels:?}");
        }
        let sink = points.iter().find(|p| p.label == "sink=64").unwrap();
        let v = sink.resolve(512, 0, 8192).unwrap();
        assert_eq!(
            (v.sink(), v.method(), v.tokens_per_cluster()),
            (64, Method::ClusterKv, ckv_select::default_tokens_per_cluster(512))
        );
        let gqa = points.iter().find(|p| p.label == "gqa=per-kv-head").unwrap();
        assert_eq!(gqa.resolve(512, 0, 8192).unwrap().gqa(), GqaPolicy::PerKvHead);
        let mass = points.iter().find(|p| p.label == "oracle/mass=0.9").unwrap();
        assert_eq!(mass.resolve(512, 0, 8192).unwrap().budget_rule(), Budget::Mass { p: 0.9, max: 512 });
        let quick: Vec<String> = SweepConfig::quick().points().into_iter().map(|p| p.label).collect();
        assert_eq!(quick, ["default", "tpc=16", "tpc=80", "oracle", "quest", "streamingllm"]);
    }

    #[test]
    fn bad_configs_are_refused_by_name() {
        let ok = SweepConfig::quick();
        assert!(ok.check_ref().is_ok());
        let name = |c: SweepConfig| match c.validate() {
            Err(EvalError::Param(ckv_core::ParamError { name, .. })) => name,
            other => panic!("{other:?}"),
        };
        assert_eq!(name(SweepConfig { budget_fractions: vec![0], ..ok.clone() }), "budget_fraction");
        assert_eq!(name(SweepConfig { budget_fractions: vec![4096], ..ok.clone() }), "budget_fraction");
        assert_eq!(name(SweepConfig { masses: vec![1.5], ..ok.clone() }), "mass");
        assert_eq!(name(SweepConfig { masses: vec![0.0], ..ok.clone() }), "mass");
        assert_eq!(name(SweepConfig { tokens_per_cluster: vec![0], ..ok.clone() }), "tokens_per_cluster");
        assert_eq!(name(SweepConfig { contexts: vec![], ..ok }), "contexts/budget_fractions");
    }
}
