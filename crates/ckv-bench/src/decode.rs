//! The decode-step sweep (DESIGN section 9): one attention layer of an 8B-model shape, one
//! sequence, timed through [`LayerPipeline::decode`] (append the token's K/V, select,
//! attend; every KV head in parallel), dense against ClusterKV under each GQA policy and
//! Quest, from a flushed cache. The synthetic prompt of a context is made once and
//! snapshotted; each setting restores it into a pipeline of its own, whose
//! `finish_prefill` clusters it as a real prefill would.

use ckv_attn::{DecodeInput, LayerPipeline, PipelineConfig, PrefillInput, PrefillSnapshot, SeqId};
use ckv_core::{ParamGuard, derive_seed};
use ckv_select::{GqaPolicy, Method, SelectParams, ValidSelectParams};
use half::f16;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use tracing::info;

use super::memory::{Flusher, median_time};
use super::{BenchConfig, BenchRecord, LayerShape};
use crate::BenchError;

/// Key directions per head in the synthetic keys: tokens are noisy copies of them.
const TOPICS: usize = 512;

/// Rows of keys around `TOPICS` directions, values uniform, queries near one topic.
pub(super) fn synthetic_head(shape: &LayerShape, tokens: usize, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (d, g) = (shape.head_dim, shape.group());
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let topics: Vec<f32> = (0..TOPICS * d).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let mut keys = vec![0.0f32; tokens * d];
    for row in keys.chunks_exact_mut(d) {
        let t = rng.random_range(0..TOPICS);
        for (k, c) in row.iter_mut().zip(&topics[t * d..(t + 1) * d]) {
            *k = c + rng.random_range(-0.3f32..0.3);
        }
    }
    let values: Vec<f32> = (0..tokens * d).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let topic = rng.random_range(0..TOPICS);
    let queries: Vec<f32> =
        (0..g * d).map(|i| 2.0 * topics[topic * d + i % d] + rng.random_range(-0.5..0.5)).collect();
    (keys, values, queries)
}

/// The synthetic layer at one context: the prompt of every KV head as one snapshot, and the
/// timed step's query `[Hq, d]`, key and value `[Hkv, d]` rows.
struct Layer {
    shape: LayerShape,
    snapshot: PrefillSnapshot<f16>,
    query: Vec<f32>,
    key: Vec<f32>,
    value: Vec<f32>,
}

impl Layer {
    /// The layer of `config.shape` with a prompt of `context` tokens (seeded by
    /// `config.seed`); `context + 1`-th rows are the step's.
    fn new(config: &BenchConfig, context: usize) -> Result<Self, BenchError> {
        let shape = config.shape;
        let (hkv, d) = (shape.n_kv_heads, shape.head_dim);
        let heads: Vec<_> = (0..hkv)
            .into_par_iter()
            .map(|h| synthetic_head(&shape, context + 1, derive_seed(config.seed, &[h as u64])))
            .collect();
        let keys: Vec<&[f32]> = heads.iter().map(|h| h.0.as_slice()).collect();
        let values: Vec<&[f32]> = heads.iter().map(|h| h.1.as_slice()).collect();
        let (key, value) =
            (interleave(&keys, d, context..context + 1), interleave(&values, d, context..context + 1));
        let (keys, values) = (interleave(&keys, d, 0..context), interleave(&values, d, 0..context));
        let query = heads.iter().flat_map(|h| h.2.iter().copied()).collect();
        let dense = SelectParams::new(Method::Dense).max_context(context);
        let mut prompt =
            LayerPipeline::<f16>::new(PipelineConfig::new(shape.n_q_heads, hkv, d, dense).validate()?);
        let seq = prompt.add_sequence()?;
        prompt.extend(seq, PrefillInput { keys: &keys, values: &values, queries: None }, None)?;
        let snapshot = prompt.snapshot(seq)?;
        Ok(Self { shape, snapshot, query, key, value })
    }

    /// Median time (seconds) of `config.reps` decode steps of a pipeline of `select` holding
    /// the prompt (clustered by it, with `config.index_iters` k-means iterations for
    /// ClusterKV), each from a flushed cache when `config.flush`; and the bytes the last step
    /// read: the distinct KV rows of its id lists, plus the centroids (f16) or page bounds
    /// (f32) it scored.
    fn time(
        &self,
        select: &SelectParams,
        config: &BenchConfig,
        flusher: &Flusher,
    ) -> Result<(f64, usize), BenchError> {
        let shape = &self.shape;
        let (hq, hkv, d) = (shape.n_q_heads, shape.n_kv_heads, shape.head_dim);
        // Every timed step appends its token: room for all of them.
        let select =
            select.clone().max_iters(config.index_iters).max_context(self.snapshot.len() + config.reps + 1);
        let mut pipeline = LayerPipeline::<f16>::new(PipelineConfig::new(hq, hkv, d, select).validate()?);
        let seq = pipeline.restore(&self.snapshot)?;
        pipeline.finish_prefill(seq)?;
        let input = DecodeInput { seq, query: &self.query, key: &self.key, value: &self.value };
        let mut out = vec![0.0f32; hq * d];
        let mut result = Ok(());
        let seconds = median_time(
            config.reps,
            || {
                if config.flush {
                    std::hint::black_box(flusher.flush());
                }
            },
            || {
                if result.is_ok() {
                    result = pipeline.decode(&[input], &mut out);
                }
            },
        );
        result?;
        Ok((seconds, step_bytes(&pipeline, seq)?))
    }
}

/// Rows `tokens` of every head's `[_, d]` rows, token-major (`[tokens, heads, d]`), as the
/// pipeline takes them.
fn interleave(heads: &[&[f32]], d: usize, tokens: std::ops::Range<usize>) -> Vec<f32> {
    tokens.flat_map(|t| heads.iter().flat_map(move |rows| &rows[t * d..(t + 1) * d])).copied().collect()
}

/// Bytes the last decode step of `seq` read: the distinct KV rows of each KV head's id
/// lists (f16 K and V) and the summaries its selector scored.
fn step_bytes(pipeline: &LayerPipeline<f16>, seq: SeqId) -> Result<usize, BenchError> {
    let config = pipeline.config();
    let (g, d, select) = (config.group(), config.head_dim(), config.select());
    let tokens = pipeline.len(seq)?;
    let mut bytes = 0;
    let mut rows = Vec::new();
    for h in 0..config.n_kv_heads() {
        let attended = if select.method() == Method::Dense {
            tokens
        } else {
            rows.clear();
            for q in h * g..(h + 1) * g {
                rows.extend_from_slice(pipeline.selection(seq, q)?);
            }
            rows.sort_unstable();
            rows.dedup();
            rows.len()
        };
        let summaries = match select.method() {
            Method::ClusterKv => pipeline.index(seq, h)?.map_or(0, |i| i.n_clusters()) * d * 2,
            Method::Quest => tokens.div_ceil(select.quest_page_size()) * 2 * d * 4,
            _ => 0,
        };
        bytes += attended * 2 * d * 2 + summaries;
    }
    Ok(bytes)
}

/// A selection method of the sweep.
#[derive(Debug, Clone, Copy)]
struct Sparse {
    method: Method,
    gqa: GqaPolicy,
}

impl Sparse {
    const ALL: [Sparse; 4] = [
        Sparse { method: Method::ClusterKv, gqa: GqaPolicy::PerQueryHead },
        Sparse { method: Method::ClusterKv, gqa: GqaPolicy::PerKvHead },
        Sparse { method: Method::Quest, gqa: GqaPolicy::PerQueryHead },
        Sparse { method: Method::Quest, gqa: GqaPolicy::PerKvHead },
    ];

    fn label(self) -> String {
        format!("{}/{}", self.method, self.gqa)
    }
}

/// The sweep at one context: dense once, then every (method, budget).
fn sweep_context(
    config: &BenchConfig,
    context: usize,
    flusher: &Flusher,
    bandwidth: f64,
) -> Result<Vec<BenchRecord>, BenchError> {
    let started = std::time::Instant::now();
    let layer = Layer::new(config, context)?;
    info!(context, seconds = started.elapsed().as_secs_f64(), "decode sweep: layer built");
    let (dense_s, dense_bytes) = layer.time(&SelectParams::new(Method::Dense), config, flusher)?;
    let record = |method: String, budget: Option<usize>, median_s: f64, bytes: usize| BenchRecord {
        batch: None,
        case: "decode_step".into(),
        method,
        context,
        budget,
        median_s,
        ratio_to_dense: Some(dense_s / median_s),
        bandwidth_share: Some(bytes as f64 / median_s / bandwidth),
    };
    let mut records = vec![record("dense".into(), None, dense_s, dense_bytes)];
    for &budget in &config.budgets {
        for sparse in Sparse::ALL {
            let select = SelectParams::new(sparse.method).budget(budget).gqa(sparse.gqa);
            let (seconds, bytes) = layer.time(&select, config, flusher)?;
            records.push(record(sparse.label(), Some(budget), seconds, bytes));
        }
    }
    Ok(records)
}

/// The decode-step sweep over `config.contexts` and `config.budgets`.
pub fn decode_sweep(
    config: &BenchConfig,
    flusher: &Flusher,
    bandwidth: f64,
) -> Result<Vec<BenchRecord>, BenchError> {
    let mut records = Vec::new();
    for &context in &config.contexts {
        records.extend(sweep_context(config, context, flusher, bandwidth)?);
    }
    Ok(records)
}

/// One attention layer at one context, built once, whose decode step is timed through
/// [`LayerPipeline::decode`] for any selection parameters: the synthetic prompt of
/// decode-step sweep (one sequence, every KV head in parallel), restored into a pipeline of
/// each setting. Used by the settings sweep (`clusterkv sweep`) to time each point.
pub struct StepTimer {
    config: BenchConfig,
    layer: Layer,
}

impl StepTimer {
    /// Builds the layer at `context` tokens with the shape, seed, k-means iterations of the
    /// index (`index_iters`), reps and flushing of `config`.
    pub fn new(config: &BenchConfig, context: usize) -> Result<Self, BenchError> {
        if context < 2 {
            return Err(BenchError::from(ckv_core::ParamError::new(
                "step_context",
                context,
                "at least 2 tokens",
            )));
        }
        let started = std::time::Instant::now();
        let layer = Layer::new(config, context)?;
        info!(context, seconds = started.elapsed().as_secs_f64(), "step timer built");
        Ok(Self { config: config.clone(), layer })
    }

    /// The context of the layer.
    pub fn context(&self) -> usize {
        self.layer.snapshot.len()
    }

    /// Median time (seconds) of a dense decode step over `config.reps` runs, each from a
    /// flushed cache (when `config.flush`).
    pub fn dense(&mut self, flusher: &Flusher) -> Result<f64, BenchError> {
        Ok(self.layer.time(&SelectParams::new(Method::Dense), &self.config, flusher)?.0)
    }

    /// Median time (seconds) of one sparse decode step under `params` over `config.reps`
    /// runs, each from a flushed cache: ClusterKV (its index built by the pipeline with
    /// `config.index_iters` k-means iterations; a mass target selects by estimated mass) or
    /// Quest. Other methods are refused.
    pub fn sparse(&mut self, params: &ValidSelectParams, flusher: &Flusher) -> Result<f64, BenchError> {
        if !matches!(params.method(), Method::ClusterKv | Method::Quest) {
            return Err(BenchError::from(ckv_core::ParamError::new(
                "method",
                params.method(),
                "clusterkv or quest for a timed step",
            )));
        }
        Ok(self.layer.time(params.params(), &self.config, flusher)?.0)
    }
}
