//! End-to-end decode speed of the real model (DESIGN section 9): one sequence, greedy, dense
//! against ClusterKV from the same dense prefill.

use std::time::Instant;

use ckv_model::{Model, argmax};
use ckv_select::{Method, SelectParams};
use tracing::info;

use super::memory::median;
use super::{BenchConfig, BenchRecord};
use crate::SimError;

/// Decode `config.e2e_tokens` tokens after a prompt of each of `config.e2e_contexts` tokens
/// of `tokens`, densely and with ClusterKV (budget `config.e2e_budget`); the median seconds
/// per token (model forward and logits) of each.
pub fn e2e_decode(config: &BenchConfig, model: &Model, tokens: &[u32]) -> Result<Vec<BenchRecord>, SimError> {
    let mut records = Vec::new();
    for &context in &config.e2e_contexts {
        if context == 0 || context > tokens.len() || context + config.e2e_tokens > model.config().context {
            return Err(SimError::InvalidConfig {
                name: "e2e context",
                value: context.to_string(),
                expected: "at least 1, within the text and, with the decoded tokens, the model's context",
            });
        }
        let max_context = context + config.e2e_tokens + 1;
        let dense = SelectParams::new(Method::Dense).max_context(max_context);
        let clusterkv =
            SelectParams::new(Method::ClusterKv).budget(config.e2e_budget).max_context(max_context);
        let started = Instant::now();
        let (snapshot, hidden) = model.runner(&dense, config.dense_layers)?.snapshot(&tokens[..context])?;
        info!(context, seconds = started.elapsed().as_secs_f64(), "e2e: dense prefill");
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
