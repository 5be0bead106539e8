//! The decode-step sweep (DESIGN section 9): one attention layer of an 8B-model shape, one
//! sequence, every KV head in parallel; dense attention against ClusterKV (score centroids,
//! rank, gather ids, attend) under each GQA policy and Quest, from a flushed cache.

use ckv_attn::{AttnScratch, Selected, attend_selected, dense_attention};
use ckv_cache::HeadKv;
use ckv_select::{
    ClusterKvSelector, GqaPolicy, Growth, Method, QuestSelector, Regions, SelectParams, Selector, StepCtx,
    ValidSelectParams, default_tokens_per_cluster, derive_seed, select_group,
};
use half::f16;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use tracing::info;

use super::memory::{Flusher, median_time};
use super::{BenchConfig, BenchRecord, LayerShape};
use crate::SimError;

/// Key directions per head in the synthetic keys: tokens are noisy copies of them.
const TOPICS: usize = 512;

/// One KV head of the synthetic layer: its KV (`context + 1` tokens: the clustered prompt
/// and the current token) and the selectors, built once: Quest's pages, and ClusterKV's
/// index at each cluster size the budgets derive (`clusterkv[i]` for `sizes[i]`).
struct Head {
    kv: HeadKv<f16>,
    clusterkv: Vec<ClusterKvSelector>,
    quest: QuestSelector,
    queries: Vec<f32>,
    selections: Vec<Vec<u32>>,
    probs: Vec<f32>,
    scratch: AttnScratch,
    out: Vec<f32>,
}

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

/// The cluster sizes the defaults derive from `budgets`, ascending, each once.
fn cluster_sizes(budgets: &[usize]) -> Vec<usize> {
    let mut sizes: Vec<usize> = budgets.iter().map(|&b| default_tokens_per_cluster(b)).collect();
    sizes.sort_unstable();
    sizes.dedup();
    sizes
}

/// Builds the heads of one context: KV, ClusterKV's index at each of `sizes` tokens per
/// cluster (k-means with `config.index_iters` iterations) and Quest's pages over
/// `[s, context)`.
fn build_heads(config: &BenchConfig, context: usize, sizes: &[usize]) -> Result<Vec<Head>, SimError> {
    let sink = SelectParams::new(Method::ClusterKv).validate()?.sink();
    let indexes: Vec<(usize, usize)> = sizes.iter().map(|&size| (size, sink)).collect();
    build_indexed_heads(config, context, &indexes)
}

/// Builds the heads of one context with ClusterKV's index at each `(tokens per cluster,
/// sink)` of `indexes` (`clusterkv[i]` for `indexes[i]`, each over `[sink, context)`), and
/// Quest's pages over `[s, context)` at the default sink.
fn build_indexed_heads(
    config: &BenchConfig,
    context: usize,
    indexes: &[(usize, usize)],
) -> Result<Vec<Head>, SimError> {
    let shape = &config.shape;
    let d = shape.head_dim;
    let index_params = SelectParams::new(Method::ClusterKv).max_iters(config.index_iters).validate()?;
    let sink = index_params.sink() as u32;
    (0..shape.n_kv_heads)
        .into_par_iter()
        .map(|h| {
            let (keys, values, queries) =
                synthetic_head(shape, context + 1, derive_seed(config.seed, &[h as u64]));
            let mut kv = HeadKv::with_capacity(d, context + 1)?;
            kv.extend(&keys, &values)?;
            drop((keys, values));
            let prompt = sink..context as u32;
            let clusterkv = indexes
                .iter()
                .map(|&(size, index_sink)| {
                    let params = SelectParams::new(Method::ClusterKv)
                        .max_iters(config.index_iters)
                        .tokens_per_cluster(size)
                        .sink(index_sink)
                        .validate()?;
                    let mut selector =
                        ClusterKvSelector::new(&params, derive_seed(config.seed, &[h as u64, 1]));
                    let clustered = index_sink as u32..context as u32;
                    Selector::<f16>::grow(&mut selector, kv.keys(), d, clustered, Growth::Prompt)?;
                    Ok(selector)
                })
                .collect::<Result<Vec<_>, SimError>>()?;
            let mut quest = QuestSelector::new(index_params.quest_page_size());
            Selector::<f16>::grow(&mut quest, kv.keys(), d, prompt, Growth::Prompt)?;
            let g = shape.group();
            Ok(Head {
                kv,
                clusterkv,
                quest,
                queries,
                selections: Vec::new(),
                probs: Vec::with_capacity(g * (context + 1)),
                scratch: AttnScratch::default(),
                out: vec![0.0; g * d],
            })
        })
        .collect()
}

/// One dense decode step of every head, in parallel.
fn dense_step(heads: &mut [Head], shape: &LayerShape) {
    let d = shape.head_dim;
    heads.par_iter_mut().for_each(|h| {
        dense_attention(&h.queries, d, h.kv.keys(), h.kv.values(), shape.scale(), &mut h.probs, &mut h.out)
    });
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

/// One step of one head: select, then attend (ClusterKV with its index `size`). Returns the
/// bytes the step read: the KV rows attended (a row the group shares once) and the
/// selector's summaries (centroids or page bounds).
fn sparse_step(
    head: &mut Head,
    size: usize,
    sparse: Sparse,
    params: &ValidSelectParams,
    shape: &LayerShape,
) -> Result<usize, SimError> {
    let (d, g) = (shape.head_dim, shape.group());
    let context = head.kv.len();
    let regions = Regions::new(params.sink() as u32, (context - 1) as u32, (context - 1) as u32)?;
    let step = StepCtx {
        queries: &head.queries,
        n_queries: g,
        keys: head.kv.keys(),
        d,
        scale: shape.scale(),
        regions,
    };
    head.selections.resize_with(params.gqa().selections_per_group(g), Vec::new);
    let (selector, summary_bytes): (&mut dyn Selector<f16>, usize) = match sparse.method {
        Method::ClusterKv => {
            let clusterkv = &mut head.clusterkv[size];
            let clusters = Selector::<f16>::index(clusterkv).map_or(0, |i| i.n_clusters());
            // The f16 centroids, read once for the group under either policy.
            (clusterkv, clusters * d * 2)
        }
        _ => ((&mut head.quest), (context - 1).div_ceil(params.quest_page_size()) * 2 * d * 4),
    };
    select_group(selector, params, &step, &mut head.selections)?;
    let selected = Selected { lists: &head.selections, context };
    let (keys, values) = (head.kv.keys(), head.kv.values());
    attend_selected(
        &head.queries,
        d,
        keys,
        values,
        selected,
        shape.scale(),
        &mut head.scratch,
        &mut head.out,
        |_, _| {},
    );
    Ok(head.scratch.rows_read() * 2 * d * 2 + summary_bytes)
}

/// The sweep at one context: dense once, then every (method, budget).
fn sweep_context(
    config: &BenchConfig,
    context: usize,
    flusher: &Flusher,
    bandwidth: f64,
) -> Result<Vec<BenchRecord>, SimError> {
    let shape = &config.shape;
    let started = std::time::Instant::now();
    let sizes = cluster_sizes(&config.budgets);
    let mut heads = build_heads(config, context, &sizes)?;
    info!(context, seconds = started.elapsed().as_secs_f64(), "decode sweep: layer built");
    let d = shape.head_dim;
    let flush = || {
        if config.flush {
            std::hint::black_box(flusher.flush());
        }
    };
    let dense_s = median_time(config.reps, flush, || dense_step(&mut heads, shape));
    let dense_bytes = shape.n_kv_heads * (context + 1) * 2 * d * 2;
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
            let params = SelectParams::new(sparse.method).budget(budget).gqa(sparse.gqa).validate()?;
            let size = sizes.binary_search(&params.tokens_per_cluster()).unwrap_or(0);
            let mut bytes = Ok(0);
            let seconds = median_time(config.reps, flush, || {
                bytes = heads.par_iter_mut().map(|h| sparse_step(h, size, sparse, &params, shape)).sum();
            });
            records.push(record(sparse.label(), Some(budget), seconds, bytes?));
        }
    }
    Ok(records)
}

/// The decode-step sweep over `config.contexts` and `config.budgets`.
pub fn decode_sweep(
    config: &BenchConfig,
    flusher: &Flusher,
    bandwidth: f64,
) -> Result<Vec<BenchRecord>, SimError> {
    let mut records = Vec::new();
    for &context in &config.contexts {
        records.extend(sweep_context(config, context, flusher, bandwidth)?);
    }
    Ok(records)
}

/// One attention layer at one context, built once, whose decode step is timed for any
/// selection parameters: the synthetic KV of [`decode_sweep`] (one sequence, every KV head
/// in parallel) with ClusterKV's index at each (tokens per cluster, sink) given, and
/// Quest's pages. Used by the settings sweep (`clusterkv sweep`) to time each point.
pub struct StepTimer {
    config: BenchConfig,
    context: usize,
    indexes: Vec<(usize, usize)>,
    heads: Vec<Head>,
}

impl StepTimer {
    /// Builds the layer at `context` tokens with the shape, seed, k-means iterations of the
    /// index (`index_iters`), reps and flushing of `config`, and one ClusterKV index per
    /// distinct `(tokens per cluster, sink)` of `indexes`.
    pub fn new(config: &BenchConfig, context: usize, indexes: &[(usize, usize)]) -> Result<Self, SimError> {
        let mut indexes = indexes.to_vec();
        indexes.sort_unstable();
        indexes.dedup();
        if context < 2 {
            return Err(SimError::InvalidConfig {
                name: "step_context",
                value: context.to_string(),
                expected: "at least 2 tokens",
            });
        }
        if let Some(&(size, sink)) = indexes.iter().find(|&&(size, sink)| size == 0 || sink >= context) {
            return Err(SimError::InvalidConfig {
                name: "index",
                value: format!("{size} tokens per cluster, sink {sink}"),
                expected: "at least 1 token per cluster and a sink below the context",
            });
        }
        let started = std::time::Instant::now();
        let heads = build_indexed_heads(config, context, &indexes)?;
        info!(
            context,
            indexes = indexes.len(),
            seconds = started.elapsed().as_secs_f64(),
            "step timer built"
        );
        Ok(Self { config: config.clone(), context, indexes, heads })
    }

    /// The context of the layer.
    pub fn context(&self) -> usize {
        self.context
    }

    /// Median time (seconds) of a dense decode step over `config.reps` runs, each from a
    /// flushed cache (when `config.flush`).
    pub fn dense(&mut self, flusher: &Flusher) -> f64 {
        let (shape, flush) = (self.config.shape, self.config.flush);
        let heads = &mut self.heads;
        median_time(
            self.config.reps,
            || {
                if flush {
                    std::hint::black_box(flusher.flush());
                }
            },
            || dense_step(heads, &shape),
        )
    }

    /// Median time (seconds) of one sparse decode step (select, then attend) under `params`
    /// over `config.reps` runs, each from a flushed cache: ClusterKV with the index of its
    /// tokens per cluster and sink (which must be among those the timer was built with),
    /// under its GQA policy and budget (a mass target selects by estimated mass, as the
    /// pipeline does), or Quest. Other methods are refused.
    pub fn sparse(&mut self, params: &ValidSelectParams, flusher: &Flusher) -> Result<f64, SimError> {
        let sparse = Sparse { method: params.method(), gqa: params.gqa() };
        let size = match sparse.method {
            Method::ClusterKv => {
                let key = (params.tokens_per_cluster(), params.sink());
                self.indexes.binary_search(&key).map_err(|_| SimError::InvalidConfig {
                    name: "tokens_per_cluster/sink",
                    value: format!("{key:?}"),
                    expected: "an index the step timer was built with",
                })?
            }
            Method::Quest => 0,
            other => {
                return Err(SimError::InvalidConfig {
                    name: "method",
                    value: other.to_string(),
                    expected: "clusterkv or quest for a timed step",
                });
            }
        };
        let (shape, flush) = (self.config.shape, self.config.flush);
        let heads = &mut self.heads;
        let mut result = Ok(0);
        let seconds = median_time(
            self.config.reps,
            || {
                if flush {
                    std::hint::black_box(flusher.flush());
                }
            },
            || {
                result = heads.par_iter_mut().map(|h| sparse_step(h, size, sparse, params, &shape)).sum();
            },
        );
        result?;
        Ok(seconds)
    }
}
