//! Prefill clustering beside dense causal prefill attention over the same prompt (DESIGN
//! section 9): the k-means of every KV head's keys `[s, P)` against the attention of every
//! query head over `P` tokens.

use ckv_attn::{LayerPipeline, PipelineConfig, PrefillInput};
use ckv_cluster::{ClusterParams, kmeans_heads};
use ckv_core::{ParamGuard, derive_seed};
use ckv_select::{Method, SelectParams};
use half::f16;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tracing::info;

use super::memory::median_time;
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
    // The keys the pipeline stored (f16), per KV head, without the sink.
    let seq = layer.prefill(PrefillInput { keys: &keys, values: &values, queries: None }, None)?;
    let sink = SelectParams::default().validate()?.sink();
    let heads: Vec<&[f16]> =
        (0..hkv).map(|h| layer.kv(seq, h).map(|kv| &kv.keys()[sink * d..])).collect::<Result<_, _>>()?;
    let clusters = (p - sink).div_ceil(config.tokens_per_cluster);
    let params = ClusterParams::new(clusters).max_iters(config.cluster_iters).seed(config.seed).validate()?;
    let mut iterations = 0;
    let mut result = Ok(());
    let cluster_s = median_time(
        config.cluster_reps,
        || {},
        || {
            result =
                kmeans_heads(&params, &heads, d).map(|c| iterations = c.iter().map(|c| c.iterations()).sum());
        },
    );
    result?;
    info!(
        context = p,
        clusters,
        heads = hkv,
        mean_iterations = iterations as f64 / hkv as f64,
        seconds = cluster_s,
        "prefill clustering"
    );
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
