//! Long-context perplexity on a real model (DESIGN section 8): at each of K prefix positions
//! spread over the text, a dense prefill of `P` tokens (shared by every method), then `T`
//! teacher-forced tokens through the method under test (selection, tail and re-clustering
//! all live).

use ckv_model::Model;
use ckv_select::{GqaPolicy, Method, SelectParams};
use indicatif::ProgressBar;
use serde::Serialize;

use crate::probe::{Probe, ProbeOptions, Setting, SettingResult, run_probes};
use crate::{SimError, Variant};

/// What to measure.
#[derive(Debug, Clone, PartialEq)]
pub struct PplConfig {
    /// Prompt tokens `P` prefilled densely.
    pub context: usize,
    /// Teacher-forced tokens `T` decoded through the method.
    pub decode: usize,
    /// Prefix positions `K`, spread over the text (position 0 is the text's start).
    pub positions: usize,
    /// Methods to compare (dense is always measured, as the reference).
    pub methods: Vec<Method>,
    /// Budgets to compare.
    pub budgets: Vec<usize>,
    /// Leading layers that always attend densely.
    pub dense_layers: usize,
    /// Seed of the clustering.
    pub seed: u64,
}

/// One measurement: a method at a budget, over every position.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PplRecord {
    /// The method.
    pub method: String,
    /// The budget (dense ignores it).
    pub budget: usize,
    /// Prompt tokens `P`.
    pub context: usize,
    /// Teacher-forced tokens `T` per position.
    pub decode: usize,
    /// Positions `K`.
    pub positions: usize,
    /// Perplexity, `exp(nll)`.
    pub ppl: f64,
    /// Mean negative log-likelihood per predicted token (nats).
    pub nll: f64,
    /// Dense perplexity on the same tokens.
    pub ppl_dense: f64,
}

/// The first token of each of `positions` windows of `span` tokens spread evenly over
/// `len` tokens, the first at 0.
pub fn window_starts(len: usize, span: usize, positions: usize) -> Result<Vec<usize>, SimError> {
    if positions == 0 || span > len {
        return Err(SimError::InvalidConfig {
            name: "positions",
            value: format!("{positions} windows of {span} tokens in a text of {len}"),
            expected: "at least one window that fits the text",
        });
    }
    let last = len - span;
    Ok((0..positions).map(|k| if positions == 1 { 0 } else { k * last / (positions - 1) }).collect())
}

/// Measures every (method, budget) of `config` on `tokens`; one record each, dense beside
/// every one. `progress` counts dense prefills and decode steps.
pub fn perplexity(
    model: &Model,
    tokens: &[u32],
    config: &PplConfig,
    progress: &ProgressBar,
) -> Result<Vec<PplRecord>, SimError> {
    if config.decode == 0 || config.context == 0 || config.budgets.is_empty() {
        return Err(SimError::InvalidConfig {
            name: "context/decode/budgets",
            value: format!("{} / {} / {:?}", config.context, config.decode, config.budgets),
            expected: "positive context and decode lengths and at least one budget",
        });
    }
    let (p, t) = (config.context, config.decode);
    let probes: Vec<Probe> = window_starts(tokens.len(), p + t + 1, config.positions)?
        .into_iter()
        .map(|start| Probe {
            prompt: tokens[start..start + p].to_vec(),
            continuation: tokens[start + p..start + p + t + 1].to_vec(),
            scored: 1..t + 1,
            fidelity: false,
        })
        .collect();
    let variant = |method| Variant { method, gqa: GqaPolicy::PerQueryHead };
    let mut settings = vec![Setting::fixed(variant(Method::Dense), config.budgets[0])];
    for &budget in &config.budgets {
        settings.extend(
            config
                .methods
                .iter()
                .filter(|&&m| m != Method::Dense)
                .map(|&m| Setting::fixed(variant(m), budget)),
        );
    }
    let options = ProbeOptions {
        select: SelectParams::default(),
        dense_layers: config.dense_layers,
        seed: config.seed,
        fidelity_every: 1,
    };
    let results = run_probes(model, &probes, &settings, &options, progress)?;
    let mean_nll = |r: &SettingResult| {
        r.scores.iter().map(|s| s.nll_sum).sum::<f64>()
            / r.scores.iter().map(|s| s.tokens).sum::<usize>() as f64
    };
    let dense = mean_nll(&results[0]);
    let mut records = Vec::new();
    for &budget in &config.budgets {
        for &method in &config.methods {
            let nll = match method {
                Method::Dense => dense,
                _ => results
                    .iter()
                    .find(|r| r.setting == Setting::fixed(variant(method), budget))
                    .map_or(dense, mean_nll),
            };
            records.push(PplRecord {
                method: method.name().to_owned(),
                budget,
                context: config.context,
                decode: config.decode,
                positions: probes.len(),
                ppl: nll.exp(),
                nll,
                ppl_dense: dense.exp(),
            });
        }
    }
    Ok(records)
}

/// The records as a Markdown table.
pub fn ppl_table(records: &[PplRecord]) -> String {
    let mut s = String::from("| method | budget | ppl | vs dense | nll |\n|---|---:|---:|---:|---:|\n");
    for r in records {
        s.push_str(&format!(
            "| {} | {} | {:.3} | {:+.2}% | {:.4} |\n",
            r.method,
            r.budget,
            r.ppl,
            (r.ppl / r.ppl_dense - 1.0) * 100.0,
            r.nll
        ));
    }
    s
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
}
