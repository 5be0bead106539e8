//! `clusterkv gpu-bench` (feature `cuda`): the decode step and the clustering on a GPU,
//! timed with CUDA events (medians), every run after an L2 flush.
//!
//! - memory reference: a device-to-device copy, bytes read plus written per second;
//! - decode step of one layer (the shape of DESIGN section 9, one sequence): dense against
//!   ClusterKV (selection kernel, id lists, attention, merge) under each GQA policy, at each
//!   context and budget; the attention kernels alone for the bandwidth share of the sparse
//!   attention;
//! - clustering of one layer (every KV head at once) at one context.

use ckv_core::derive_seed;
use ckv_core::{ParamGuard, Regions};
use ckv_kernels::{DecodeScratch, DecodeStep, DeviceKv, Gpu, KernelError, L2Flush};
use ckv_select::{SelectError, SelectParams};
use half::f16;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use tracing::info;

use super::decode::synthetic_head;
use super::memory::median;
use super::{BenchRecord, LayerShape, case_table};
use crate::BenchError;

/// Bytes written to flush the L2 cache (60 MiB on an H200) before each timed run.
const FLUSH_BYTES: usize = 512 << 20;

/// Bytes of each buffer of the copy reference.
const COPY_BYTES: usize = 1 << 30;

/// What one `clusterkv gpu-bench` run measures.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuBenchConfig {
    /// The layer.
    pub shape: LayerShape,
    /// Contexts of the decode steps.
    pub contexts: Vec<usize>,
    /// Budgets of ClusterKV's steps.
    pub budgets: Vec<usize>,
    /// Timed runs per case (the median is kept).
    pub reps: usize,
    /// k-means iterations of the index the decode steps rank.
    pub index_iters: usize,
    /// Context of the clustering case.
    pub cluster_context: usize,
    /// Timed clusterings.
    pub cluster_reps: usize,
    /// k-means iterations at most in the clustering case.
    pub cluster_iters: usize,
    /// Prompt tokens per cluster.
    pub tokens_per_cluster: usize,
    /// Seed of the synthetic data.
    pub seed: u64,
}

impl GpuBenchConfig {
    /// Issue 6's protocol: contexts 32k and 128k, budgets 1024 and 2048, clustering at 32k
    /// (410 clusters of 80 tokens, at most 20 iterations).
    pub fn full() -> Self {
        Self {
            shape: LayerShape::LLAMA_8B,
            contexts: vec![32768, 131072],
            budgets: vec![1024, 2048],
            reps: 30,
            index_iters: 5,
            cluster_context: 32768,
            cluster_reps: 3,
            cluster_iters: 20,
            tokens_per_cluster: 80,
            seed: 0,
        }
    }
}

impl ckv_core::ParamGuard for GpuBenchConfig {
    type Checked = Self;
    type Error = BenchError;

    fn check_ref(&self) -> Result<(), BenchError> {
        let bad = |name, value: String, expected| {
            Err(BenchError::from(ckv_core::ParamError::new(name, value, expected)))
        };
        let sink = SelectParams::default().validate()?.sink();
        if let Some(&c) = self
            .contexts
            .iter()
            .chain([&self.cluster_context])
            .find(|&&c| c <= sink + self.tokens_per_cluster)
        {
            return bad("context", c.to_string(), "larger than the sink (16) plus a cluster");
        }
        for &budget in &self.budgets {
            SelectParams::default().budget(budget).validate()?;
        }
        if self.reps == 0 || self.cluster_reps == 0 || self.index_iters == 0 || self.tokens_per_cluster == 0 {
            return bad("repetitions", format!("{self:?}"), "reps, iterations and tokens per cluster >= 1");
        }
        Ok(())
    }

    fn validate(self) -> Result<Self, BenchError> {
        self.check_ref()?;
        Ok(self)
    }
}

/// Everything one GPU run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuBenchReport {
    /// The device.
    pub device: String,
    /// Copy bandwidth, bytes per second (read plus written).
    pub bandwidth: f64,
    /// Every case.
    pub records: Vec<BenchRecord>,
}

/// A GPU error as a [`BenchError`].
fn gpu_error(e: KernelError) -> BenchError {
    BenchError::Gpu(e.to_string())
}

/// One layer on the device: the KV of `context + 1` tokens per KV head, the group's
/// queries `[Hq, d]` and the host keys (initial centroids come from them).
struct DeviceLayer {
    kv: DeviceKv,
    keys: Vec<Vec<f16>>,
    queries: Vec<f32>,
}

fn device_layer(gpu: &Gpu, config: &GpuBenchConfig, context: usize) -> Result<DeviceLayer, BenchError> {
    let shape = &config.shape;
    let heads: Vec<(Vec<f16>, Vec<f16>, Vec<f32>)> = (0..shape.n_kv_heads)
        .into_par_iter()
        .map(|h| {
            let (keys, values, queries) =
                synthetic_head(shape, context + 1, derive_seed(config.seed, &[h as u64]));
            let half = |v: Vec<f32>| v.into_iter().map(f16::from_f32).collect::<Vec<f16>>();
            (half(keys), half(values), queries)
        })
        .collect();
    let mut kv = gpu.kv(shape.n_kv_heads, shape.head_dim, context + 1).map_err(gpu_error)?;
    let rows: Vec<(&[f16], &[f16])> = heads.iter().map(|(k, v, _)| (&k[..], &v[..])).collect();
    gpu.upload_kv(&mut kv, &rows).map_err(gpu_error)?;
    let queries = heads.iter().flat_map(|(_, _, q)| q.iter().copied()).collect();
    Ok(DeviceLayer { kv, keys: heads.into_iter().map(|(k, _, _)| k).collect(), queries })
}

/// Initial centroids `[Hkv, k, d]`: `k` distinct seeded rows of `tokens` of every head.
fn initial_centroids(
    layer: &DeviceLayer,
    d: usize,
    tokens: std::ops::Range<usize>,
    k: usize,
    seed: u64,
) -> Vec<f32> {
    let mut out = Vec::with_capacity(layer.keys.len() * k * d);
    for (h, keys) in layer.keys.iter().enumerate() {
        let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(seed, &[h as u64, 7]));
        for row in rand::seq::index::sample(&mut rng, tokens.len(), k) {
            let t = tokens.start + row;
            out.extend(keys[t * d..(t + 1) * d].iter().map(|x| x.to_f32()));
        }
    }
    out
}

/// Median GPU seconds of `reps` runs of `run`, each after an L2 flush.
fn time(
    gpu: &Gpu,
    flush: &mut L2Flush,
    reps: usize,
    mut run: impl FnMut() -> Result<(), KernelError>,
) -> Result<f64, BenchError> {
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        gpu.flush_l2(flush).map_err(gpu_error)?;
        let timer = gpu.start_timer().map_err(gpu_error)?;
        run().map_err(gpu_error)?;
        times.push(timer.stop(gpu).map_err(gpu_error)?);
    }
    Ok(median(&mut times))
}

/// Runs every case of `config` on `gpu`.
pub fn run_gpu_bench(gpu: &Gpu, config: &GpuBenchConfig) -> Result<GpuBenchReport, BenchError> {
    config.check_ref()?;
    let (shape, sink) = (&config.shape, SelectParams::default().validate()?.sink());
    let (hkv, g, d) = (shape.n_kv_heads, shape.group(), shape.head_dim);
    let mut copy = gpu.copy_times(COPY_BYTES, config.reps.min(10)).map_err(gpu_error)?;
    let copy_s = median(&mut copy);
    let bandwidth = 2.0 * COPY_BYTES as f64 / copy_s;
    info!(device = gpu.describe(), copy_gb_per_s = bandwidth / 1e9, "GPU memory bandwidth");
    let mut records = vec![BenchRecord {
        batch: None,
        case: "memory_copy".into(),
        method: "copy".into(),
        context: 0,
        budget: None,
        median_s: copy_s,
        ratio_to_dense: None,
        bandwidth_share: Some(1.0),
    }];
    let mut flush = gpu.l2_flush(FLUSH_BYTES).map_err(gpu_error)?;
    let mut scratch = gpu.scratch().map_err(gpu_error)?;
    let record =
        |case: &str, method: String, context, budget, median_s: f64, dense: Option<f64>, bytes: f64| {
            BenchRecord {
                batch: None,
                case: case.into(),
                method,
                context,
                budget,
                median_s,
                ratio_to_dense: dense.map(|dense| dense / median_s),
                bandwidth_share: Some(bytes / median_s / bandwidth),
            }
        };
    for &context in &config.contexts {
        let layer = device_layer(gpu, config, context)?;
        let k = (context - sink).div_ceil(config.tokens_per_cluster);
        let initial = initial_centroids(&layer, d, sink..context, k, config.seed);
        let clustering =
            gpu.cluster(&layer.kv, sink..context, &initial, config.index_iters).map_err(gpu_error)?;
        // The step at position `context`: the sink, the clustered region [sink, context),
        // no tail.
        let regions = Regions::new(sink as u32, context as u32, context as u32).map_err(SelectError::from)?;
        let step = |selected, per_kv_head| DecodeStep {
            group: g,
            per_kv_head,
            regions,
            selected,
            scale: shape.scale(),
        };
        let kv_bytes = |rows: usize| (hkv * rows * d * 2 * 2) as f64;
        let dense_step = step(None, true);
        // The queries are uploaded once: a model on the GPU has them there already.
        gpu.upload_queries(&layer.kv, &step(None, true), &layer.queries, &mut scratch).map_err(gpu_error)?;
        let run = |step: &DecodeStep, scratch: &mut DecodeScratch| {
            gpu.step_on_device(&layer.kv, Some(&clustering.index), step, scratch)
        };
        let dense = time(gpu, &mut flush, config.reps, || run(&dense_step, &mut scratch))?;
        info!(context, ms = dense * 1e3, "GPU dense step");
        records.push(record(
            "decode_step",
            "dense".into(),
            context,
            None,
            dense,
            Some(dense),
            kv_bytes(context + 1),
        ));
        for &budget in &config.budgets {
            let chosen = (budget - sink - 1).min(context - sink);
            let selected = Some(chosen);
            for per_kv_head in [true, false] {
                let sparse = step(selected, per_kv_head);
                let lists = sparse.lists(hkv);
                let policy = if per_kv_head { "per-kv-head" } else { "per-query-head" };
                let seconds = time(gpu, &mut flush, config.reps, || run(&sparse, &mut scratch))?;
                // The KV rows of every list (a list shared by the group once), and the f16
                // centroids every list scores.
                let bytes = (lists * sparse.attended() * d * 2 * 2 + lists * k * d * 2) as f64;
                info!(
                    context,
                    budget,
                    policy,
                    ms = seconds * 1e3,
                    speedup = dense / seconds,
                    "GPU ClusterKV step"
                );
                records.push(record(
                    "decode_step",
                    format!("clusterkv/{policy}"),
                    context,
                    Some(budget),
                    seconds,
                    Some(dense),
                    bytes,
                ));
                // The attention kernels alone, over the lists just written.
                let attend =
                    time(gpu, &mut flush, config.reps, || gpu.attend(&layer.kv, &sparse, &mut scratch))?;
                let bytes = (lists * sparse.attended() * d * 2 * 2) as f64;
                records.push(record(
                    "sparse_attention",
                    format!("clusterkv/{policy}"),
                    context,
                    Some(budget),
                    attend,
                    None,
                    bytes,
                ));
            }
        }
    }
    records.push(clustering_case(gpu, config, &mut flush)?);
    Ok(GpuBenchReport { device: gpu.describe(), bandwidth, records })
}

/// Clustering of one layer: every KV head of `cluster_context` tokens at once.
fn clustering_case(
    gpu: &Gpu,
    config: &GpuBenchConfig,
    flush: &mut L2Flush,
) -> Result<BenchRecord, BenchError> {
    let sink = SelectParams::default().validate()?.sink();
    let (context, d) = (config.cluster_context, config.shape.head_dim);
    let layer = device_layer(gpu, config, context)?;
    let k = (context - sink).div_ceil(config.tokens_per_cluster);
    let initial = initial_centroids(&layer, d, sink..context, k, config.seed);
    let mut iterations = 0;
    let seconds = time(gpu, flush, config.cluster_reps, || {
        iterations = gpu.cluster(&layer.kv, sink..context, &initial, config.cluster_iters)?.iterations;
        Ok(())
    })?;
    info!(context, clusters = k, iterations, ms = seconds * 1e3, "GPU clustering");
    Ok(BenchRecord {
        batch: None,
        case: "clustering".into(),
        method: format!("kmeans/{} heads/{k} clusters/{iterations} iterations", config.shape.n_kv_heads),
        context,
        budget: None,
        median_s: seconds,
        ratio_to_dense: None,
        bandwidth_share: None,
    })
}

/// The report as Markdown tables, the decode steps last.
pub fn gpu_bench_tables(report: &GpuBenchReport) -> String {
    let mut out =
        format!("GPU: {}; device copy: {:.0} GB/s (read + write)\n\n", report.device, report.bandwidth / 1e9);
    let shape = "one layer (Hq 32, Hkv 8, d 128, f16), batch 1";
    for (case, title, unit) in [
        ("clustering", "Clustering one layer (k-means on the GPU)".to_owned(), "ms"),
        ("sparse_attention", format!("Sparse attention kernels alone, {shape}"), "ms"),
        ("decode_step", format!("Decode step on the GPU, {shape}"), "ms"),
    ] {
        let rows: Vec<&BenchRecord> = report.records.iter().filter(|r| r.case == case).collect();
        case_table(&mut out, &rows, &title, unit);
    }
    out
}
