//! End-to-end decode speed of the real model (DESIGN section 9): one sequence, greedy, dense
//! against ClusterKV from the same dense prefill.

use std::time::Instant;

use ckv_model::{Model, argmax};
use ckv_select::{Method, SelectParams};
use tracing::info;

use super::memory::median;
use super::{BenchConfig, BenchRecord};
use crate::SimError;

/// Checks that every end-to-end context fits the model and the text, and holds more
/// than the decoded tokens.
pub fn check_e2e(config: &BenchConfig, model: &Model, tokens: &[u32]) -> Result<(), SimError> {
    let limit = model.config().context.min(tokens.len());
    match config.e2e_contexts.iter().find(|&&c| c <= config.e2e_tokens || c > limit) {
        Some(&context) => Err(SimError::InvalidConfig {
            name: "e2e context",
            value: context.to_string(),
            expected: "more than the decoded tokens and at most the model's context and the text's length",
        }),
        None => Ok(()),
    }
}

/// For each of `config.e2e_contexts`: a prompt of `context - config.e2e_tokens` tokens of
/// `tokens`, then `config.e2e_tokens` greedy tokens decoded densely and with ClusterKV
/// (budget `config.e2e_budget`), so that the last step sees `context` tokens; the median
/// seconds per token (model forward and logits) of each.
pub fn e2e_decode(config: &BenchConfig, model: &Model, tokens: &[u32]) -> Result<Vec<BenchRecord>, SimError> {
    check_e2e(config, model, tokens)?;
    let mut records = Vec::new();
    for &context in &config.e2e_contexts {
        let prompt = context - config.e2e_tokens;
        let max_context = context;
        let dense = SelectParams::new(Method::Dense).max_context(max_context);
        let clusterkv =
            SelectParams::new(Method::ClusterKv).budget(config.e2e_budget).max_context(max_context);
        let started = Instant::now();
        let (snapshot, hidden) = model.runner(&dense, config.dense_layers)?.snapshot(&tokens[..prompt])?;
        info!(prompt, seconds = started.elapsed().as_secs_f64(), "e2e: dense prefill");
        let last = &hidden[hidden.len() - model.config().hidden..];
        let first = argmax(&model.logits(last));
        let mut dense_s = f64::NAN;
        for (label, select) in [("dense", dense), (Method::ClusterKv.name(), clusterkv)] {
            let mut runner = model.runner(&select, config.dense_layers)?;
            let mut seq = runner.restore(&snapshot)?;
            let mut next = first;
            let mut times = Vec::with_capacity(config.e2e_tokens);
            for _ in 0..config.e2e_tokens {
                let started = Instant::now();
                let hidden = runner.decode(&mut [(&mut seq, next)])?;
                next = argmax(&model.logits(&hidden));
                times.push(started.elapsed().as_secs_f64());
            }
            let seconds = median(&mut times);
            if label == "dense" {
                dense_s = seconds;
            }
            info!(context, method = label, tokens_per_s = 1.0 / seconds, "e2e decode");
            records.push(BenchRecord {
                case: "e2e_decode".into(),
                method: label.into(),
                context,
                budget: (label != "dense").then_some(config.e2e_budget),
                median_s: seconds,
                ratio_to_dense: Some(dense_s / seconds),
                bandwidth_share: None,
            });
        }
    }
    Ok(records)
}
