//! Prefill clustering beside dense causal prefill attention over the same prompt (DESIGN
//! section 9), both through the pipeline: `LayerPipeline::prefill` attending every query
//! head over `P` tokens, against `finish_prefill` clustering every KV head's keys `[s, P)`.

use std::time::Instant;

use ckv_attn::{LayerPipeline, PipelineConfig, PrefillInput};
use ckv_core::{ParamGuard, derive_seed};
use ckv_select::{Method, SelectParams};
use half::f16;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tracing::info;

use super::memory::{median, median_time};
use super::{BenchConfig, BenchRecord};
use crate::BenchError;

/// Random token-major rows: `[tokens, heads, d]`.
fn random_rows(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// Dense causal prefill attention and prefill clustering at `config.prefill_context`.
pub fn prefill_case(config: &BenchConfig) -> Result<Vec<BenchRecord>, BenchError> {
    let shape = &config.shape;
    let (p, d, hkv) = (config.prefill_context, shape.head_dim, shape.n_kv_heads);
    let select = SelectParams::new(Method::Dense).max_context(p);
    let pipeline = PipelineConfig::new(shape.n_q_heads, hkv, d, select).validate()?;
    let tokens = p * hkv * d;
    let (keys, values) = (
        random_rows(tokens, derive_seed(config.seed, &[1])),
        random_rows(tokens, derive_seed(config.seed, &[2])),
    );
    let queries = random_rows(p * shape.n_q_heads * d, derive_seed(config.seed, &[3]));
    let mut out = vec![0.0f32; queries.len()];
    let mut layer = LayerPipeline::<f16>::new(pipeline);
    let mut result = Ok(());
    let dense_s = median_time(
        config.prefill_reps,
        || {},
        || {
            let input = PrefillInput { keys: &keys, values: &values, queries: Some(&queries) };
            result = layer.prefill(input, Some(&mut out)).and_then(|seq| layer.remove(seq));
        },
    );
    result?;
    info!(context = p, seconds = dense_s, "dense causal prefill attention");
    // The pipeline's own prompt clustering: a ClusterKV layer restored from the stored
    // prompt, each run timing its `finish_prefill` (the k-means of every KV head's keys
    // `[s, P)`, heads in parallel).
    let seq = layer.add_sequence()?;
    layer.extend(seq, PrefillInput { keys: &keys, values: &values, queries: None }, None)?;
    let snapshot = layer.snapshot(seq)?;
    drop(layer);
    let select = SelectParams::new(Method::ClusterKv)
        .tokens_per_cluster(config.tokens_per_cluster)
        .max_iters(config.cluster_iters)
        .seed(config.seed)
        .max_context(p);
    let mut clustering =
        LayerPipeline::<f16>::new(PipelineConfig::new(shape.n_q_heads, hkv, d, select).validate()?);
    let (mut times, mut clusters) = (Vec::with_capacity(config.cluster_reps), 0);
    for _ in 0..config.cluster_reps.max(1) {
        let seq = clustering.restore(&snapshot)?;
        let started = Instant::now();
        clustering.finish_prefill(seq)?;
        times.push(started.elapsed().as_secs_f64());
        clusters = clustering.index(seq, 0)?.map_or(0, |index| index.n_clusters());
        clustering.remove(seq)?;
    }
    let cluster_s = median(&mut times);
    info!(context = p, clusters, heads = hkv, seconds = cluster_s, "prefill clustering");
    let record = |method: &str, median_s: f64| BenchRecord {
        batch: None,
        case: "prefill".into(),
        method: method.into(),
        context: p,
        budget: None,
        median_s,
        ratio_to_dense: Some(dense_s / median_s),
        bandwidth_share: None,
    };
    Ok(vec![record("dense_attention", dense_s), record(&format!("clustering/{clusters}x{hkv}"), cluster_s)])
}
