//! `clusterkv cache-sim`: the device tier's policy on the real model. One dense prefill
//! serves every reuse window; then ClusterKV decodes greedily with offload on, and each
//! layer reports, summed over its KV heads, the hit rate and the bytes fetched per step
//! against fetching the whole selection every step.

use std::fmt::Write as _;

use ckv_attn::OffloadParams;
use ckv_core::ParamGuard;
use ckv_model::Model;
use ckv_select::{Method, SelectParams};
use ckv_sim::MarkdownTable;
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::EvalError;
use crate::Progress;

/// What one `clusterkv cache-sim` run measures.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheSimConfig {
    /// Context at the last step: prompt plus decoded tokens.
    pub context: usize,
    /// ClusterKV's budget.
    pub budget: usize,
    /// Tokens decoded.
    pub steps: usize,
    /// Reuse windows (steps whose attended rows the device tier keeps).
    pub reuse: Vec<usize>,
    /// Leading layers that attend densely.
    pub dense_layers: usize,
}

impl Default for CacheSimConfig {
    /// 8k context, `B = 512`, 64 steps, reuse 1, 2 and 4, two dense layers.
    fn default() -> Self {
        Self { context: 8192, budget: 512, steps: 64, reuse: vec![1, 2, 4], dense_layers: 2 }
    }
}

/// One layer under one reuse window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheSimRecord {
    /// The layer.
    pub layer: usize,
    /// How the layer selects (`dense` for the leading dense layers, else `clusterkv`).
    pub method: String,
    /// The reuse window.
    pub reuse: usize,
    /// Attended rows the tier already held, over all attended rows (steps after the
    /// first; the current token aside).
    pub hit_rate: f64,
    /// Bytes fetched from the host per step, over the layer's KV heads.
    pub bytes_per_step: f64,
    /// Bytes per step when every attended row is fetched every step.
    pub bytes_per_step_no_cache: f64,
    /// Bytes the first step fetched into the empty tier.
    pub cold_bytes: u64,
}

impl CacheSimConfig {
    /// Checks the settings against the model and the text before any work.
    pub fn validate(&self, model: &Model, tokens: &[u32]) -> Result<(), EvalError> {
        let bad = |name, value: String, expected| {
            Err(EvalError::from(ckv_core::ParamError::new(name, value, expected)))
        };
        let limit = model.config().context.min(tokens.len());
        if self.context > limit || self.steps < 2 || self.steps >= self.context {
            return bad(
                "context and steps",
                format!("context {} with {} steps", self.context, self.steps),
                "at least 2 steps, fewer than the context, which fits the model and the text",
            );
        }
        if let Some(&r) = self.reuse.iter().find(|&&r| r == 0) {
            return bad("reuse", r.to_string(), "at least 1 step");
        }
        if self.reuse.is_empty() {
            return bad("reuse", "none".into(), "at least one window");
        }
        SelectParams::new(Method::ClusterKv).budget(self.budget).validate()?;
        Ok(())
    }
}

/// Runs the simulation: one record per (reuse window, layer). The decoded tokens must be
/// the same for every window (offload never changes an output); they are checked.
pub fn cache_sim(
    config: &CacheSimConfig,
    model: &Model,
    tokens: &[u32],
    progress: &dyn Progress,
) -> Result<Vec<CacheSimRecord>, EvalError> {
    config.validate(model, tokens)?;
    let prompt = config.context - config.steps;
    let dense = SelectParams::new(Method::Dense).max_context(config.context);
    let select = SelectParams::new(Method::ClusterKv).budget(config.budget).max_context(config.context);
    info!(prompt, "cache-sim: dense prefill");
    let (snapshot, hidden) = model.runner(&dense, config.dense_layers)?.snapshot(&tokens[..prompt])?;
    let first = model.greedy_next(&hidden);
    let mut records = Vec::new();
    let mut decoded: Option<Vec<u32>> = None;
    for &reuse in &config.reuse {
        let offload = OffloadParams::new(reuse)?;
        let mut runner = model.runner_with(&select, config.dense_layers, Some(offload))?;
        let mut seq = runner.restore(&snapshot)?;
        progress.start(&format!("reuse {reuse}"), config.steps as u64);
        let mut these = Vec::with_capacity(config.steps);
        let mut step = [(&mut seq, first)];
        for _ in 0..config.steps {
            these.push(step[0].1);
            runner.decode_greedy(&mut step)?;
            progress.advance(1);
        }
        match &decoded {
            Some(earlier) if *earlier != these => {
                return Err(EvalError::from(ckv_core::ParamError::new(
                    "offload",
                    format!("reuse {reuse}"),
                    "the same decoded tokens for every reuse window",
                )));
            }
            _ => decoded = Some(these),
        }
        let layers = runner.offload_stats(&seq)?.unwrap_or_default();
        for (layer, stats) in layers.into_iter().enumerate() {
            info!(layer, reuse, hit_rate = stats.hit_rate(), "cache-sim");
            records.push(CacheSimRecord {
                layer,
                method: if layer < config.dense_layers { "dense" } else { Method::ClusterKv.name() }.into(),
                reuse,
                hit_rate: stats.hit_rate(),
                bytes_per_step: stats.bytes_per_step(),
                bytes_per_step_no_cache: stats.bytes_per_step_no_cache(),
                cold_bytes: stats.cold_bytes,
            });
        }
        runner.remove(seq)?;
    }
    Ok(records)
}

/// The records as a Markdown table per reuse window, and a summary of the sparse layers.
pub fn cache_sim_table(config: &CacheSimConfig, records: &[CacheSimRecord]) -> String {
    let mut out = format!(
        "Device tier on the real model: context {}, B = {}, {} steps (figures per step after the first)\n\n",
        config.context, config.budget, config.steps
    );
    let mut layers = MarkdownTable::new(
        [
            "reuse",
            "layer",
            "method",
            "hit rate",
            "KiB fetched / step",
            "KiB / step without the tier",
            "saved",
        ],
        "rrl",
    );
    for r in records {
        let saved = 1.0 - r.bytes_per_step / r.bytes_per_step_no_cache.max(f64::MIN_POSITIVE);
        layers.row([
            r.reuse.to_string(),
            r.layer.to_string(),
            r.method.clone(),
            format!("{:.3}", r.hit_rate),
            format!("{:.1}", r.bytes_per_step / 1024.0),
            format!("{:.1}", r.bytes_per_step_no_cache / 1024.0),
            format!("{:.1}%", 100.0 * saved),
        ]);
    }
    let _ = writeln!(out, "{layers}\nSparse layers together:\n");
    let mut together =
        MarkdownTable::new(["reuse", "hit rate", "KiB fetched / step", "KiB / step without the tier"], "");
    for &reuse in &config.reuse {
        let rows: Vec<&CacheSimRecord> =
            records.iter().filter(|r| r.reuse == reuse && r.layer >= config.dense_layers).collect();
        let fetched: f64 = rows.iter().map(|r| r.bytes_per_step).sum();
        let no_cache: f64 = rows.iter().map(|r| r.bytes_per_step_no_cache).sum();
        together.row([
            reuse.to_string(),
            format!("{:.3}", 1.0 - fetched / no_cache.max(f64::MIN_POSITIVE)),
            format!("{:.1}", fetched / 1024.0),
            format!("{:.1}", no_cache / 1024.0),
        ]);
    }
    let _ = write!(out, "{together}");
    out
}
