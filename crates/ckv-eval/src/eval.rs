//! The accuracy evaluation on a real model (DESIGN section 8): perplexity, copy and passkey
//! retrieval and attention fidelity, for every method and budget at each context, from one
//! dense prefill per probe.

use ckv_model::{Model, Tokenizer};
use ckv_select::{Budget, GqaPolicy, Method, SelectParams};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::Progress;
use crate::probe::{Probe, ProbeOptions, ProbeScore, Setting, SettingResult, run_probes};
use ckv_sim::Variant;

use crate::{EvalError, EvalRecord, Task};

/// What `clusterkv eval` measures.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalConfig {
    /// Contexts `C`: each probe's prompt and continuation fill exactly `C` tokens.
    pub contexts: Vec<usize>,
    /// Budgets.
    pub budgets: Vec<usize>,
    /// Mass targets `p`: ClusterKV and the oracle (exact top-p) also run at each, capped
    /// by each budget ([`Budget::Mass`]).
    pub masses: Vec<f32>,
    /// Methods with their GQA policy; dense is always measured, as the reference.
    pub variants: Vec<Variant>,
    /// Tasks to run.
    pub tasks: Vec<Task>,
    /// Perplexity positions spread over the text.
    pub positions: usize,
    /// Teacher-forced tokens scored per perplexity position.
    pub decode: usize,
    /// Depths (share of the prompt before it) of the copied passage.
    pub copy_depths: Vec<f64>,
    /// Copy probes per depth, each with another passage and filler.
    pub copy_passages: usize,
    /// Tokens of a copied passage.
    pub passage_len: usize,
    /// Tokens of the passage repeated as the cue before the scored part.
    pub cue_len: usize,
    /// Depths of the passkey.
    pub passkey_depths: Vec<f64>,
    /// Passkey probes per depth, each with its own key and filler.
    pub passkey_seeds: usize,
    /// Leading layers that always attend densely.
    pub dense_layers: usize,
    /// Selection parameters every setting starts from (sink, tokens per cluster, window,
    /// ...; DESIGN's defaults unless changed).
    pub select: SelectParams,
    /// Seed of the clustering and of the passkeys.
    pub seed: u64,
    /// Attention fidelity is measured every this many decode steps.
    pub fidelity_every: usize,
    /// Probes decoded together ([`ProbeOptions::batch`]): peak memory grows with it (about
    /// two KV caches of a context per probe), not with the number of probes or contexts.
    pub batch: usize,
}

impl EvalConfig {
    /// The full protocol: contexts 2k, 4k and 8k (the default model's maximum), budgets 128
    /// to 1024, every method.
    pub fn full() -> Self {
        Self {
            contexts: vec![2048, 4096, 8192],
            budgets: vec![128, 256, 512, 1024],
            positions: 8,
            passkey_seeds: 2,
            fidelity_every: 4,
            ..Self::quick()
        }
    }

    /// A run of a few minutes on 2 cores: context 1024, budgets 128 and 256, two
    /// perplexity positions.
    pub fn quick() -> Self {
        Self {
            contexts: vec![1024],
            budgets: vec![128, 256],
            masses: Vec::new(),
            variants: Variant::all(),
            tasks: Task::ALL.to_vec(),
            positions: 2,
            decode: 64,
            copy_depths: vec![0.1, 0.5, 0.9],
            copy_passages: 1,
            passage_len: 64,
            cue_len: 8,
            passkey_depths: vec![0.1, 0.5, 0.9],
            passkey_seeds: 1,
            dense_layers: 2,
            select: SelectParams::default(),
            seed: 0,
            fidelity_every: 1,
            batch: 4,
        }
    }
}

/// Opens every passkey prompt.
const PASSKEY_INTRO: &str = "There is a pass key hidden inside this text. Find it and remember it.\n";

/// The probes of one context and the task of each.
pub(crate) struct ProbeSet {
    /// The probes, perplexity windows first, then copy and passkey prompts.
    pub(crate) probes: Vec<Probe>,
    /// The task of each probe.
    pub(crate) tasks: Vec<Task>,
}

/// Runs the evaluation on `tokens` (the tokenized text); one [`EvalRecord`] per (task,
/// method, budget, context), dense beside each. `progress` is reset for each context.
pub fn evaluate(
    model: &Model,
    tokenizer: &Tokenizer,
    tokens: &[u32],
    config: &EvalConfig,
    progress: &dyn Progress,
) -> Result<Vec<EvalRecord>, EvalError> {
    check(config)?;
    let dense = Variant { method: Method::Dense, gqa: GqaPolicy::PerQueryHead };
    let mut settings = vec![Setting::fixed(dense, config.budgets[0])];
    for &budget in &config.budgets {
        settings.extend(
            config
                .variants
                .iter()
                .filter(|v| v.method != Method::Dense)
                .map(|&variant| Setting::fixed(variant, budget)),
        );
        for &p in &config.masses {
            let takes_mass = |v: &&Variant| matches!(v.method, Method::ClusterKv | Method::Oracle);
            settings.extend(config.variants.iter().filter(takes_mass).map(|&variant| Setting {
                variant,
                budget: Budget::Mass { p, max: budget },
                select: None,
            }));
        }
    }
    let options = ProbeOptions {
        select: config.select.clone(),
        dense_layers: config.dense_layers,
        seed: config.seed,
        fidelity_every: config.fidelity_every,
        batch: config.batch,
    };
    let mut records = Vec::new();
    for &context in &config.contexts {
        let set = probe_set(tokenizer, tokens, config, context)?;
        progress.start(&format!("context {context}"), 0);
        let results = run_probes(model, &set.probes, &settings, &options, progress)?;
        records.extend(context_records(config, context, &set, &results));
    }
    Ok(records)
}

impl EvalConfig {
    /// Tokens of text the probes of every context need: a context for the perplexity
    /// windows, a context and a half where copy or passkey prompts take their fillers from
    /// windows offset by half a context.
    pub fn text_tokens(&self) -> usize {
        let retrieval = self.tasks.iter().any(|t| matches!(t, Task::Copy | Task::Passkey));
        let largest = self.contexts.iter().copied().max().unwrap_or(0);
        if retrieval { largest + largest / 2 } else { largest }
    }
}

fn check(config: &EvalConfig) -> Result<(), EvalError> {
    let invalid = |name, value: String, expected| {
        Err(EvalError::from(ckv_core::ParamError::new(name, value, expected)))
    };
    if config.contexts.is_empty() || config.budgets.is_empty() || config.tasks.is_empty() {
        return invalid(
            "contexts/budgets/tasks",
            format!("{:?} / {:?} / {:?}", config.contexts, config.budgets, config.tasks),
            "at least one of each",
        );
    }
    if config.cue_len == 0 || config.cue_len >= config.passage_len {
        return invalid(
            "cue_len",
            format!("{} for passages of {}", config.cue_len, config.passage_len),
            "at least 1 and below the passage length",
        );
    }
    if let Some(d) =
        config.copy_depths.iter().chain(&config.passkey_depths).find(|d| !(0.0..=1.0).contains(*d))
    {
        return invalid("depth", d.to_string(), "a share of the prompt in [0, 1]");
    }
    if config.decode == 0 || config.fidelity_every == 0 {
        return invalid(
            "decode/fidelity_every",
            format!("{} / {}", config.decode, config.fidelity_every),
            "at least 1 each",
        );
    }
    Ok(())
}

/// The first token of each of `positions` windows of `span` tokens spread evenly over
/// `len` tokens, the first at 0.
pub fn window_starts(len: usize, span: usize, positions: usize) -> Result<Vec<usize>, EvalError> {
    if positions == 0 || span > len {
        return Err(EvalError::from(ckv_core::ParamError::new(
            "positions",
            format!("{positions} windows of {span} tokens in a text of {len}"),
            "at least one window that fits the text",
        )));
    }
    let last = len - span;
    Ok((0..positions).map(|k| if positions == 1 { 0 } else { k * last / (positions - 1) }).collect())
}

/// Every probe of one context: perplexity windows, copy and passkey prompts (of the tasks
/// in `config.tasks`).
pub(crate) fn probe_set(
    tokenizer: &Tokenizer,
    tokens: &[u32],
    config: &EvalConfig,
    context: usize,
) -> Result<ProbeSet, EvalError> {
    let mut set = ProbeSet { probes: Vec::new(), tasks: Vec::new() };
    let runs = |task| config.tasks.contains(&task);
    if runs(Task::Ppl) || runs(Task::Fidelity) {
        let span = config.decode + 1;
        if context <= span {
            return Err(EvalError::from(ckv_core::ParamError::new(
                "context",
                context,
                "more tokens than the scored continuation",
            )));
        }
        for start in window_starts(tokens.len(), context, config.positions)? {
            let (prompt, continuation) = tokens[start..start + context].split_at(context - span);
            set.probes.push(Probe {
                prompt: prompt.to_vec(),
                continuation: continuation.to_vec(),
                scored: 1..span,
                fidelity: runs(Task::Fidelity),
            });
            set.tasks.push(Task::Ppl);
        }
    }
    let copies = if runs(Task::Copy) { config.copy_depths.len() * config.copy_passages } else { 0 };
    let keys = if runs(Task::Passkey) { config.passkey_depths.len() * config.passkey_seeds } else { 0 };
    if copies + keys == 0 {
        return Ok(set);
    }
    // Fillers of retrieval prompts come from windows spread over the book, offset by half a
    // window from the perplexity windows.
    let offset = context / 2;
    let fillers = window_starts(tokens.len().saturating_sub(offset), context, copies + keys)?;
    let mut fillers = fillers.into_iter().map(|s| s + offset);
    if copies > 0 {
        copy_probes(tokens, config, context, &mut fillers, &mut set)?;
    }
    if keys > 0 {
        passkey_probes(tokenizer, tokens, config, context, &mut fillers, &mut set)?;
    }
    Ok(set)
}

/// A passage from elsewhere in the book placed at each depth of a filler, repeated as the
/// continuation: its first `cue_len` tokens cue the scored rest.
fn copy_probes(
    tokens: &[u32],
    config: &EvalConfig,
    context: usize,
    fillers: &mut impl Iterator<Item = usize>,
    set: &mut ProbeSet,
) -> Result<(), EvalError> {
    let len = config.passage_len;
    let sources = tokens.len().saturating_sub(len).max(1);
    for (d, &depth) in config.copy_depths.iter().enumerate() {
        for j in 0..config.copy_passages {
            let start = fillers.next().unwrap_or(0);
            // Half the book away from the filler.
            let from = (start + tokens.len() / 2 + (d * config.copy_passages + j) * 7919) % sources;
            let passage = &tokens[from..(from + len).min(tokens.len())];
            let prompt = insert(tokens, start, context.saturating_sub(len), passage, depth)?;
            set.probes.push(Probe {
                prompt,
                continuation: passage.to_vec(),
                scored: config.cue_len..passage.len(),
                fidelity: false,
            });
            set.tasks.push(Task::Copy);
        }
    }
    Ok(())
}

/// A 5-digit key stated at each depth of a filler (after an opening that announces it),
/// asked for at the end; the key's tokens are scored.
fn passkey_probes(
    tokenizer: &Tokenizer,
    tokens: &[u32],
    config: &EvalConfig,
    context: usize,
    fillers: &mut impl Iterator<Item = usize>,
    set: &mut ProbeSet,
) -> Result<(), EvalError> {
    let question_text = " What is the pass key? The pass key is";
    let question = encode(tokenizer, question_text)?;
    let intro = encode(tokenizer, PASSKEY_INTRO)?;
    for (d, &depth) in config.passkey_depths.iter().enumerate() {
        for j in 0..config.passkey_seeds {
            let mut rng = ChaCha8Rng::seed_from_u64(config.seed ^ ((d as u64) << 32 | j as u64));
            let key: u32 = rng.random_range(10_000..100_000);
            let needle =
                encode(tokenizer, &format!(" The pass key is {key}. Remember it. {key} is the pass key. "))?;
            let full = encode(tokenizer, &format!("{question_text} {key}"))?;
            if !full.starts_with(&question) {
                return Err(EvalError::from(ckv_core::ParamError::new(
                    "passkey question",
                    question_text.to_owned(),
                    "text whose tokens do not merge with the key's",
                )));
            }
            let start = fillers.next().unwrap_or(0);
            let filled = context.saturating_sub(full.len() + intro.len());
            let prompt = [intro.clone(), insert(tokens, start, filled, &needle, depth)?].concat();
            set.probes.push(Probe {
                prompt,
                scored: question.len()..full.len(),
                continuation: full,
                fidelity: false,
            });
            set.tasks.push(Task::Passkey);
        }
    }
    Ok(())
}

fn encode(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>, EvalError> {
    Ok(tokenizer.encode(text)?)
}

/// A prompt of `len` tokens: text from `start`, with `inserted` placed after `depth` of the
/// text around it.
fn insert(
    tokens: &[u32],
    start: usize,
    len: usize,
    inserted: &[u32],
    depth: f64,
) -> Result<Vec<u32>, EvalError> {
    let filler_len = len.checked_sub(inserted.len()).filter(|&n| n > 0 && start + n <= tokens.len());
    let Some(filler_len) = filler_len else {
        return Err(EvalError::from(ckv_core::ParamError::new(
            "context",
            format!("{len} prompt tokens around {} inserted", inserted.len()),
            "a context longer than the inserted passage and its repeat",
        )));
    };
    let filler = &tokens[start..start + filler_len];
    let at = (depth * filler_len as f64).round() as usize;
    Ok([&filler[..at], inserted, &filler[at..]].concat())
}

/// The records of one context from the results of every setting (the dense one first).
fn context_records(
    config: &EvalConfig,
    context: usize,
    set: &ProbeSet,
    results: &[SettingResult],
) -> Vec<EvalRecord> {
    let Some((dense, others)) = results.split_first() else { return Vec::new() };
    let mut records = Vec::new();
    for task in config.tasks.iter().copied().filter(|&t| t != Task::Fidelity) {
        let pick = |r: &SettingResult| -> Vec<ProbeScore> {
            r.scores.iter().zip(&set.tasks).filter(|(_, t)| **t == task).map(|(s, _)| *s).collect()
        };
        let dense_scores = pick(dense);
        if dense_scores.is_empty() {
            continue;
        }
        let (dense_score, dense_nll) = task_score(task, &dense_scores);
        for &budget in &config.budgets {
            records.push(record(
                task,
                "dense",
                budget,
                context,
                (dense_score, dense_nll),
                (dense_score, dense_nll),
                &dense_scores,
            ));
        }
        for r in others {
            let scores = pick(r);
            let label = setting_label(&r.setting);
            let mut rec = record(
                task,
                &label,
                r.setting.budget.max_tokens(),
                context,
                task_score(task, &scores),
                (dense_score, dense_nll),
                &scores,
            );
            rec.mass = r.setting.budget.mass();
            rec.attended = Some(r.attended);
            records.push(rec);
        }
    }
    if config.tasks.contains(&Task::Fidelity) {
        for r in others.iter().filter(|r| !r.fidelity.is_empty()) {
            let mass = r.fidelity.iter().map(|l| l.mass_recall).sum::<f64>() / r.fidelity.len() as f64;
            records.push(EvalRecord {
                task: Task::Fidelity,
                method: setting_label(&r.setting),
                budget: r.setting.budget.max_tokens(),
                mass: r.setting.budget.mass(),
                attended: Some(r.attended),
                context,
                score: mass,
                dense_score: 1.0,
                n: r.fidelity_samples,
                nll: None,
                dense_nll: None,
                layers: r.fidelity.clone(),
            });
        }
    }
    records
}

/// A setting's method label: the variant's, with `@p<p>` for a mass target (so that tables
/// and plots keep it apart from the fixed budget it is capped by).
fn setting_label(setting: &Setting) -> String {
    match setting.budget.mass() {
        Some(p) => format!("{}@p{p}", setting.variant.label()),
        None => setting.variant.label(),
    }
}

fn record(
    task: Task,
    method: &str,
    budget: usize,
    context: usize,
    (score, nll): (f64, f64),
    (dense_score, dense_nll): (f64, f64),
    scores: &[ProbeScore],
) -> EvalRecord {
    let n = if task == Task::Ppl { scores.iter().map(|s| s.tokens).sum() } else { scores.len() };
    EvalRecord {
        task,
        method: method.to_owned(),
        budget,
        mass: None,
        attended: None,
        context,
        score,
        dense_score,
        n,
        nll: Some(nll),
        dense_nll: Some(dense_nll),
        layers: Vec::new(),
    }
}

/// The score and mean NLL per token of a task over its probes: perplexity for `ppl`, the
/// share of passage tokens the greedy continuation reproduces for `copy`, the share of keys
/// reproduced whole for `passkey`.
pub(crate) fn task_score(task: Task, scores: &[ProbeScore]) -> (f64, f64) {
    let tokens: usize = scores.iter().map(|s| s.tokens).sum();
    let nll = scores.iter().map(|s| s.nll_sum).sum::<f64>() / tokens.max(1) as f64;
    let score = match task {
        Task::Ppl => nll.exp(),
        Task::Copy => scores.iter().map(|s| s.hits).sum::<usize>() as f64 / tokens.max(1) as f64,
        _ => scores.iter().filter(|s| s.hits == s.tokens).count() as f64 / scores.len().max(1) as f64,
    };
    (score, nll)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_spread_over_the_text() {
        assert_eq!(window_starts(100, 10, 1).unwrap(), [0]);
        assert_eq!(window_starts(100, 10, 4).unwrap(), [0, 30, 60, 90]);
        assert!(window_starts(5, 10, 1).is_err());
        assert!(window_starts(100, 10, 0).is_err());
    }

    #[test]
    fn insert_places_the_passage_at_its_depth() {
        let text: Vec<u32> = (100..200).collect();
        let prompt = insert(&text, 10, 12, &[1, 2], 0.5).unwrap();
        assert_eq!(prompt, [110, 111, 112, 113, 114, 1, 2, 115, 116, 117, 118, 119]);
        assert_eq!(insert(&text, 0, 5, &[7], 0.0).unwrap(), [7, 100, 101, 102, 103]);
        assert_eq!(insert(&text, 0, 5, &[7], 1.0).unwrap(), [100, 101, 102, 103, 7]);
        // No room for filler, or a filler beyond the text: typed errors.
        assert!(matches!(
            insert(&text, 0, 2, &[1, 2], 0.5),
            Err(EvalError::Param(ckv_core::ParamError { .. }))
        ));
        assert!(matches!(
            insert(&text, 95, 12, &[1, 2], 0.5),
            Err(EvalError::Param(ckv_core::ParamError { .. }))
        ));
    }

    #[test]
    fn task_scores_follow_their_definitions() {
        let scores = [
            ProbeScore { nll_sum: 2.0, tokens: 4, hits: 4 },
            ProbeScore { nll_sum: 6.0, tokens: 4, hits: 1 },
        ];
        let (ppl, nll) = task_score(Task::Ppl, &scores);
        assert_eq!(nll, 1.0);
        assert!((ppl - 1f64.exp()).abs() < 1e-12);
        assert_eq!(task_score(Task::Copy, &scores).0, 5.0 / 8.0);
        assert_eq!(task_score(Task::Passkey, &scores).0, 0.5);
    }

    #[test]
    fn bad_configs_are_refused() {
        let ok = EvalConfig::quick();
        assert!(check(&ok).is_ok());
        assert!(check(&EvalConfig { cue_len: 64, ..ok.clone() }).is_err());
        assert!(check(&EvalConfig { copy_depths: vec![1.5], ..ok.clone() }).is_err());
        assert!(check(&EvalConfig { budgets: vec![], ..ok.clone() }).is_err());
        assert!(check(&EvalConfig { fidelity_every: 0, ..ok }).is_err());
    }
}
