//! End-to-end decode speed of the real model (DESIGN section 9): batches of sequences,
//! greedy, dense against ClusterKV from the same dense prefill; llama.cpp's `llama-bench` at
//! the same depths beside them when the bench is given its path.

use std::path::PathBuf;
use std::time::Instant;

use ckv_model::{Model, Sequence};
use ckv_select::{GqaPolicy, Method, SelectParams};
use tracing::info;

use super::memory::median;
use super::peer::llama_bench;
use super::{BenchConfig, BenchRecord};
use crate::BenchError;

/// The method name of llama.cpp's rows.
pub const LLAMA_CPP: &str = "llama.cpp";
/// ClusterKV at its defaults (per query head).
const CLUSTERKV: &str = "clusterkv";
/// ClusterKV at its defaults but one selection per KV head, which its query heads share.
const CLUSTERKV_PER_KV_HEAD: &str = "clusterkv/per-kv-head";

/// llama.cpp's `llama-bench` and the model file it runs (the bench's own model).
#[derive(Debug, Clone, PartialEq)]
pub struct Peer {
    /// The `llama-bench` program (`cargo xtask peer` builds it).
    pub llama_bench: PathBuf,
    /// The GGUF file, the one the bench's model was loaded from.
    pub model: PathBuf,
}

/// Checks that every end-to-end context fits the model and the text, and holds more
/// than the decoded tokens.
pub fn check_e2e(config: &BenchConfig, model: &Model, tokens: &[u32]) -> Result<(), BenchError> {
    let limit = model.config().context.min(tokens.len());
    if let Some(&context) = config.e2e_contexts.iter().find(|&&c| c <= config.e2e_tokens || c > limit) {
        return Err(BenchError::from(ckv_core::ParamError::new(
            "e2e context",
            context,
            "more than the decoded tokens and at most the model's context and the text's length",
        )));
    }
    if let Some(&batch) = config.e2e_batches.iter().find(|&&b| b == 0) {
        return Err(BenchError::from(ckv_core::ParamError::new("e2e batch", batch, "at least 1")));
    }
    Ok(())
}

/// For each of `config.e2e_contexts`: a prompt of `context - config.e2e_tokens` tokens of
/// `tokens`, prefilled once densely; then, for each batch size of `config.e2e_batches`, that
/// many copies of it decode `config.e2e_tokens` greedy tokens together, densely, with
/// ClusterKV at its defaults (budget `config.e2e_budget`) and with ClusterKV selecting per
/// KV head, so that the last step sees
/// `context` tokens: the median seconds per step (model forward and logits) of each. With a
/// `peer`, llama.cpp's batch-1 decode at the same depths follows.
pub fn e2e_decode(
    config: &BenchConfig,
    model: &Model,
    tokens: &[u32],
    peer: Option<&Peer>,
) -> Result<Vec<BenchRecord>, BenchError> {
    check_e2e(config, model, tokens)?;
    let mut records = Vec::new();
    for &context in &config.e2e_contexts {
        let prompt = context - config.e2e_tokens;
        let dense = SelectParams::new(Method::Dense).max_context(context);
        let clusterkv = SelectParams::new(Method::ClusterKv).budget(config.e2e_budget).max_context(context);
        let per_kv_head = clusterkv.clone().gqa(GqaPolicy::PerKvHead);
        let started = Instant::now();
        let (snapshot, hidden) = model.runner(&dense, config.dense_layers)?.snapshot(&tokens[..prompt])?;
        info!(prompt, seconds = started.elapsed().as_secs_f64(), "e2e: dense prefill");
        let first = model.greedy_next(&hidden);
        for &batch in &config.e2e_batches {
            let mut dense_s = f64::NAN;
            let methods = [("dense", &dense), (CLUSTERKV, &clusterkv), (CLUSTERKV_PER_KV_HEAD, &per_kv_head)];
            for (label, select) in methods {
                let mut runner = model.runner(select, config.dense_layers)?;
                let mut seqs =
                    (0..batch).map(|_| runner.restore(&snapshot)).collect::<Result<Vec<Sequence>, _>>()?;
                let mut step: Vec<(&mut Sequence, u32)> = seqs.iter_mut().map(|s| (s, first)).collect();
                let mut times = Vec::with_capacity(config.e2e_tokens);
                for _ in 0..config.e2e_tokens {
                    let started = Instant::now();
                    runner.decode_greedy(&mut step)?;
                    times.push(started.elapsed().as_secs_f64());
                }
                let seconds = median(&mut times);
                if label == "dense" {
                    dense_s = seconds;
                }
                info!(context, batch, method = label, tokens_per_s = batch as f64 / seconds, "e2e decode");
                records.push(BenchRecord {
                    case: "e2e_decode".into(),
                    method: label.into(),
                    context,
                    budget: (label != "dense").then_some(config.e2e_budget),
                    batch: Some(batch),
                    median_s: seconds,
                    ratio_to_dense: Some(dense_s / seconds),
                    bandwidth_share: None,
                });
            }
        }
    }
    if let Some(peer) = peer {
        let depths: Vec<usize> = config.e2e_contexts.iter().map(|c| c - config.e2e_tokens).collect();
        info!(program = %peer.llama_bench.display(), ?depths, "e2e: llama.cpp's llama-bench");
        let rows = llama_bench(
            &peer.llama_bench,
            &peer.model,
            &depths,
            config.e2e_tokens,
            rayon::current_num_threads(),
        )?;
        for row in rows {
            let context = row.depth + config.e2e_tokens;
            let dense_s = records
                .iter()
                .find(|r| r.method == "dense" && r.context == context && r.batch == Some(1))
                .map(|r| r.median_s);
            let seconds = 1.0 / row.tokens_per_s;
            info!(
                context,
                tokens_per_s = row.tokens_per_s,
                flash_attn = row.flash_attn,
                "e2e decode: llama.cpp"
            );
            records.push(BenchRecord {
                case: "e2e_decode".into(),
                method: LLAMA_CPP.into(),
                context,
                budget: None,
                batch: Some(1),
                median_s: seconds,
                ratio_to_dense: dense_s.map(|d| d / seconds),
                bandwidth_share: None,
            });
        }
    }
    Ok(records)
}
