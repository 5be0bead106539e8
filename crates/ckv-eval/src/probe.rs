//! The engine of the real-model evaluations: probes (a prompt, then a teacher-forced
//! continuation) decoded through every (method, budget) setting from one shared dense
//! prefill per probe.

use std::ops::Range;
use std::time::Instant;

use ckv_attn::{DecodeInput, LayerPipeline};
use ckv_model::{Model, PromptSnapshot, Sequence, argmax, nll};
use ckv_select::{Budget, GqaPolicy, Method, SelectParams};
use half::f16;
use tracing::info;

use crate::Progress;
use ckv_sim::{FidelitySum, Variant, step_fidelity};

use crate::{EvalError, LayerFidelity};

/// A prompt prefilled densely, then a continuation teacher-forced through the method under
/// test. Decode step `i` feeds `continuation[i]` and predicts `continuation[i + 1]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    /// Prompt tokens, prefilled densely once and shared by every setting.
    pub prompt: Vec<u32>,
    /// Tokens after the prompt.
    pub continuation: Vec<u32>,
    /// Indices into `continuation` of the scored predictions (each at least 1: the first
    /// token is predicted by the dense prefill).
    pub scored: Range<usize>,
    /// Whether its steps are scored for attention fidelity.
    pub fidelity: bool,
}

impl Probe {
    /// Decode steps: up to the last scored prediction.
    fn steps(&self) -> usize {
        self.scored.end.saturating_sub(1)
    }

    /// Positions the probe fills: the prompt, then one per decode step (the last scored
    /// token is only predicted, never fed).
    fn positions(&self) -> usize {
        self.prompt.len() + self.steps()
    }
}

/// The context the longest of `probes` fills (0 for none).
pub(crate) fn probes_context(probes: &[Probe]) -> usize {
    probes.iter().map(Probe::positions).max().unwrap_or(0)
}

/// A method at a budget.
#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    /// The method and its GQA policy.
    pub variant: Variant,
    /// The budget: a token count, or a mass target with its cap.
    pub budget: Budget,
    /// Selection parameters this setting starts from instead of the probes' shared ones (a
    /// point of a sweep); `None` keeps [`ProbeOptions::select`].
    pub select: Option<SelectParams>,
}

impl Setting {
    /// `variant` at a fixed budget of `budget` tokens, with the shared parameters.
    pub fn fixed(variant: Variant, budget: usize) -> Self {
        Self { variant, budget: Budget::Tokens(budget), select: None }
    }
}

/// How probes run.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeOptions {
    /// Selection parameters every setting starts from (sink, tokens per cluster, window,
    /// ...); the method, GQA policy, budget, seed and context are set per setting.
    pub select: SelectParams,
    /// Leading layers that always attend densely.
    pub dense_layers: usize,
    /// Seed of the clustering.
    pub seed: u64,
    /// Fidelity is measured every this many decode steps (at least 1).
    pub fidelity_every: usize,
    /// Probes decoded together (at least 1): their dense prefill snapshots and sequences are
    /// held at once, so peak memory grows with it and not with the number of probes.
    pub batch: usize,
}

/// The result of one probe under one setting. The greedy continuation reproduces the scored
/// tokens exactly when `hits == tokens`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ProbeScore {
    /// Sum of the negative log-likelihoods of the scored tokens (nats).
    pub nll_sum: f64,
    /// Scored tokens.
    pub tokens: usize,
    /// Scored tokens that were the argmax of their prediction (teacher-forced).
    pub hits: usize,
}

/// Every probe's result under one setting, and the attention fidelity per selecting layer.
#[derive(Debug, Clone, PartialEq)]
pub struct SettingResult {
    /// The setting.
    pub setting: Setting,
    /// One score per probe, in probe order.
    pub scores: Vec<ProbeScore>,
    /// Fidelity per layer from `dense_layers` on, averaged over the (step, query head,
    /// probe) samples of probes with `fidelity` set.
    pub fidelity: Vec<LayerFidelity>,
    /// Samples per layer behind `fidelity`.
    pub fidelity_samples: usize,
    /// Mean tokens one query head attended to per decode step, over the selecting layers
    /// (sink, selected, tail and current token).
    pub attended: f64,
}

/// Selection parameters of `setting` for probes of at most `max_context` tokens.
fn select_params(options: &ProbeOptions, setting: &Setting, max_context: usize) -> SelectParams {
    setting
        .select
        .as_ref()
        .unwrap_or(&options.select)
        .clone()
        .method(setting.variant.method)
        .gqa(setting.variant.gqa)
        .budget_rule(setting.budget)
        .seed(options.seed)
        .max_context(max_context)
}

/// Runs every probe under every setting, `options.batch` probes at a time: one dense prefill
/// per probe of the batch (snapshotted), then for each setting the batch decodes together;
/// the batch's snapshots are dropped before the next. Batching changes no result (decoding a
/// batch is bitwise decoding each sequence alone). `progress` counts prefills and decode
/// steps (its length is set here).
pub fn run_probes(
    model: &Model,
    probes: &[Probe],
    settings: &[Setting],
    options: &ProbeOptions,
    progress: &dyn Progress,
) -> Result<Vec<SettingResult>, EvalError> {
    if options.batch == 0 {
        return Err(EvalError::from(ckv_core::ParamError::new("batch", 0, "at least 1 probe")));
    }
    let max_context = probes_context(probes);
    if let Some(p) = probes.iter().find(|p| p.scored.start == 0 || p.scored.end > p.continuation.len()) {
        return Err(EvalError::from(ckv_core::ParamError::new(
            "scored",
            format!("{:?} of a continuation of {}", p.scored, p.continuation.len()),
            "a range inside the continuation starting at 1 or later",
        )));
    }
    if max_context > model.config().context {
        return Err(EvalError::from(ckv_core::ParamError::new(
            "context",
            max_context,
            "at most the model's context length",
        )));
    }
    // Validate every setting before the long work.
    for setting in settings {
        model.runner(&select_params(options, setting, max_context), options.dense_layers)?;
    }
    let batches: Vec<&[Probe]> = probes.chunks(options.batch).collect();
    let steps: usize = batches.iter().map(|b| b.iter().map(Probe::steps).max().unwrap_or(0)).sum();
    progress.set_units((probes.len() + settings.len() * steps) as u64);
    let dense_variant = Variant { method: Method::Dense, gqa: GqaPolicy::PerQueryHead };
    let dense = select_params(options, &Setting::fixed(dense_variant, max_context.max(1)), max_context);
    let mut totals: Vec<SettingTotals> =
        settings.iter().map(|_| SettingTotals::new(model.config().n_layers)).collect();
    for (b, batch) in batches.iter().enumerate() {
        progress.message(&format!("dense prefill, batch {}/{}", b + 1, batches.len()));
        let started = Instant::now();
        let mut prefill = model.runner(&dense, options.dense_layers)?;
        let snapshots = batch
            .iter()
            .map(|p| {
                let snapshot = prefill.snapshot(&p.prompt).map(|(s, _)| s);
                progress.advance(1);
                snapshot
            })
            .collect::<Result<Vec<PromptSnapshot>, _>>()?;
        drop(prefill);
        let bytes: usize = snapshots.iter().map(PromptSnapshot::memory_bytes).sum();
        info!(
            probes = batch.len(),
            seconds = started.elapsed().as_secs_f64(),
            bytes,
            "dense prefills snapshotted"
        );
        for (setting, total) in settings.iter().zip(&mut totals) {
            let started = Instant::now();
            progress.message(&format!("{} B={}", setting.variant.label(), setting.budget));
            let run = Run { model, probes: batch, snapshots: &snapshots, options, max_context };
            run.decode(setting, total, progress)?;
            let method = setting.variant.label();
            info!(
                method,
                budget = %setting.budget,
                seconds = started.elapsed().as_secs_f64(),
                "setting decoded"
            );
        }
    }
    Ok(settings
        .iter()
        .zip(totals)
        .map(|(setting, total)| total.finish(setting, options.dense_layers))
        .collect())
}

/// One batch of probes and their dense prefill snapshots, decoded under each setting.
struct Run<'a> {
    model: &'a Model,
    probes: &'a [Probe],
    snapshots: &'a [PromptSnapshot],
    options: &'a ProbeOptions,
    max_context: usize,
}

/// What a setting has gathered over the batches so far.
struct SettingTotals {
    scores: Vec<ProbeScore>,
    sums: Vec<FidelitySum>,
    attended: usize,
    attended_n: usize,
}

impl SettingTotals {
    fn new(n_layers: usize) -> Self {
        Self { scores: Vec::new(), sums: vec![FidelitySum::default(); n_layers], attended: 0, attended_n: 0 }
    }

    /// The result over every batch: fidelity per selecting layer, the mean attended count.
    fn finish(self, setting: &Setting, dense_layers: usize) -> SettingResult {
        let fidelity_samples = self.sums.get(dense_layers).map_or(0, |s| s.samples);
        let fidelity = self
            .sums
            .iter()
            .enumerate()
            .skip(dense_layers)
            .filter(|(_, s)| s.samples > 0)
            .map(|(layer, s)| {
                let mean = s.mean();
                LayerFidelity {
                    layer,
                    topk_recall: mean.topk_recall,
                    mass_recall: mean.mass_recall,
                    output_rel_error: mean.output_rel_error,
                }
            })
            .collect();
        let attended = self.attended as f64 / self.attended_n.max(1) as f64;
        SettingResult { setting: setting.clone(), scores: self.scores, fidelity, fidelity_samples, attended }
    }
}

impl Run<'_> {
    /// Decodes the batch under `setting`, adding its scores, fidelity and attended counts
    /// to `total`.
    fn decode(
        &self,
        setting: &Setting,
        total: &mut SettingTotals,
        progress: &dyn Progress,
    ) -> Result<(), EvalError> {
        let Run { model, probes, snapshots, options, max_context } = *self;
        let select = select_params(options, setting, max_context);
        let mut runner = model.runner(&select, options.dense_layers)?;
        let mut seqs: Vec<Sequence> =
            snapshots.iter().map(|s| runner.restore(s)).collect::<Result<_, _>>()?;
        let first = total.scores.len();
        total.scores.resize(first + probes.len(), ProbeScore::default());
        let (scores, sums) = (&mut total.scores[first..], &mut total.sums);
        let (attended, attended_n) = (&mut total.attended, &mut total.attended_n);
        let steps = probes.iter().map(Probe::steps).max().unwrap_or(0);
        for step in 0..steps {
            let active: Vec<usize> = (0..probes.len()).filter(|&i| step < probes[i].steps()).collect();
            // Dense attention is its own reference: nothing to measure.
            let sparse = setting.variant.method != Method::Dense;
            let measure: Vec<bool> = active
                .iter()
                .map(|&i| sparse && probes[i].fidelity && step % options.fidelity_every.max(1) == 0)
                .collect();
            let mut batch: Vec<(&mut Sequence, u32)> = seqs
                .iter_mut()
                .enumerate()
                .filter(|(i, _)| step < probes[*i].steps())
                .map(|(i, seq)| (seq, probes[i].continuation[step]))
                .collect();
            let mut observer = |layer: usize, pipeline: &LayerPipeline<f16>, inputs: &[DecodeInput<'_>]| {
                if layer >= options.dense_layers {
                    for input in inputs {
                        for h in 0..pipeline.config().n_q_heads() {
                            *attended += pipeline.selection(input.seq, h).map_or(0, <[u32]>::len);
                            *attended_n += 1;
                        }
                    }
                }
                if layer >= options.dense_layers && measure.iter().any(|&m| m) {
                    sums[layer] = sums[layer] + step_fidelity(pipeline, inputs, &measure);
                }
            };
            runner.decode_observed(&mut batch, &mut observer)?;
            let logits = runner.logits();
            let vocab = model.config().vocab;
            for (&i, row) in active.iter().zip(logits.chunks_exact(vocab)) {
                let target = step + 1;
                if probes[i].scored.contains(&target) {
                    let want = probes[i].continuation[target];
                    let score = &mut scores[i];
                    score.nll_sum += nll(row, want);
                    score.tokens += 1;
                    score.hits += usize::from(argmax(row) == want);
                }
            }
            progress.advance(1);
        }
        for seq in seqs {
            runner.remove(seq)?;
        }
        Ok(())
    }
}
