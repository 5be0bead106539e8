//! The performance protocol of DESIGN section 9 in one run (`clusterkv bench`), every case
//! timing the code the pipeline runs:
//!
//! - the memory bandwidth of a large parallel copy (bytes read plus written per second);
//! - the decode-step sweep: one attention layer of an 8B-model shape (`Hq = 32`, `Hkv = 8`,
//!   `d = 128`, f16 KV), dense against ClusterKV (each GQA policy) and Quest at each context
//!   and budget, every run from a flushed cache, with ratios to dense and the bandwidth
//!   share of the bytes each step reads;
//! - prefill clustering beside dense causal prefill attention at one context;
//! - end-to-end decode tokens/s of the real model, dense against ClusterKV.
//!
//! Timings are medians of repeated runs; ratios are measured side by side in the same run.

mod decode;
mod e2e;
mod error;
#[cfg(feature = "cuda")]
mod gpu;
mod memory;
pub mod peer;
mod prefill;

use std::fmt::Write as _;

use ckv_core::ParamGuard;
use ckv_model::Model;
use ckv_sim::MarkdownTable;
use serde::{Deserialize, Serialize};
use tracing::info;

pub use decode::StepTimer;
pub use e2e::{LLAMA_CPP, Peer};
pub use error::BenchError;
#[cfg(feature = "cuda")]
pub use gpu::{GpuBenchConfig, GpuBenchReport, gpu_bench_tables, run_gpu_bench};
pub use memory::{Flusher, copy_bandwidth, last_level_cache_bytes};

/// The attention layer's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerShape {
    /// Query heads (`Hq`).
    pub n_q_heads: usize,
    /// KV heads (`Hkv`).
    pub n_kv_heads: usize,
    /// Head dimension (`d`).
    pub head_dim: usize,
}

impl LayerShape {
    /// The shape of DESIGN section 9: an 8B model's layer.
    pub const LLAMA_8B: Self = Self { n_q_heads: 32, n_kv_heads: 8, head_dim: 128 };

    /// Query heads per KV head.
    pub fn group(&self) -> usize {
        self.n_q_heads / self.n_kv_heads.max(1)
    }

    /// The attention scale `1 / sqrt(d)`.
    pub fn scale(&self) -> f32 {
        1.0 / (self.head_dim as f32).sqrt()
    }
}

/// What one `clusterkv bench` run measures.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchConfig {
    /// The layer of the decode sweep and the prefill case.
    pub shape: LayerShape,
    /// Contexts of the decode sweep.
    pub contexts: Vec<usize>,
    /// Budgets of the decode sweep.
    pub budgets: Vec<usize>,
    /// Timed runs per decode case (the median is kept).
    pub reps: usize,
    /// Flush the cache before each timed decode step (the default); without it, each step
    /// runs right after the previous one and small contexts read from the cache.
    pub flush: bool,
    /// k-means iterations of the index the decode sweep ranks (step time depends on the
    /// number and sizes of clusters, not on how long they were refined).
    pub index_iters: usize,
    /// Prompt length of the prefill case.
    pub prefill_context: usize,
    /// Timed dense prefills.
    pub prefill_reps: usize,
    /// Timed clusterings.
    pub cluster_reps: usize,
    /// k-means iterations of the prefill clustering.
    pub cluster_iters: usize,
    /// Prompt tokens per cluster of the prefill clustering.
    pub tokens_per_cluster: usize,
    /// Contexts of the end-to-end case: prompt plus decoded tokens (empty: skip it).
    pub e2e_contexts: Vec<usize>,
    /// Tokens decoded per end-to-end run.
    pub e2e_tokens: usize,
    /// Sequences decoded together in the end-to-end case, one run per batch size.
    pub e2e_batches: Vec<usize>,
    /// ClusterKV's budget in the end-to-end case.
    pub e2e_budget: usize,
    /// Leading layers of the real model that stay dense.
    pub dense_layers: usize,
    /// Seed of the synthetic data and the clusterings.
    pub seed: u64,
}

impl BenchConfig {
    /// The protocol of DESIGN section 9: contexts 8k, 32k and 128k, budgets 512, 1024 and
    /// 2048, prefill at 32k (410 clusters of 80 tokens, 20 iterations), the real model at 4k
    /// and 8k.
    pub fn full() -> Self {
        Self {
            shape: LayerShape::LLAMA_8B,
            contexts: vec![8192, 32768, 131072],
            budgets: vec![512, 1024, 2048],
            reps: 15,
            flush: true,
            index_iters: 2,
            prefill_context: 32768,
            prefill_reps: 1,
            cluster_reps: 3,
            cluster_iters: 20,
            tokens_per_cluster: 80,
            e2e_contexts: vec![4096, 8192],
            e2e_tokens: 32,
            e2e_batches: vec![1, 4, 16],
            e2e_budget: 1024,
            dense_layers: 2,
            seed: 0,
        }
    }

    /// A run of about half a minute with the same cases at small sizes (CI).
    pub fn quick() -> Self {
        Self {
            contexts: vec![2048, 8192],
            budgets: vec![512, 1024],
            reps: 5,
            index_iters: 3,
            prefill_context: 2048,
            cluster_reps: 1,
            e2e_contexts: vec![520],
            e2e_tokens: 8,
            e2e_batches: vec![1, 2],
            e2e_budget: 256,
            ..Self::full()
        }
    }
}

impl ckv_core::ParamGuard for BenchConfig {
    type Checked = Self;
    type Error = BenchError;

    fn check_ref(&self) -> Result<(), BenchError> {
        let bad = |name: &'static str, value: String, expected: &'static str| {
            Err(BenchError::from(ckv_core::ParamError::new(name, value, expected)))
        };
        let s = &self.shape;
        if s.head_dim == 0 || s.n_kv_heads == 0 || !s.n_q_heads.is_multiple_of(s.n_kv_heads) {
            return bad("shape", format!("{s:?}"), "d >= 1 and Hq a multiple of Hkv >= 1");
        }
        let sink = ckv_select::SelectParams::default().validate()?.sink();
        if let Some(&c) = self.contexts.iter().find(|&&c| c <= sink) {
            return bad("context", c.to_string(), "larger than the sink (16)");
        }
        for &budget in &self.budgets {
            ckv_select::SelectParams::default().budget(budget).validate()?;
        }
        if self.prefill_context <= sink + self.tokens_per_cluster {
            return bad(
                "prefill context",
                self.prefill_context.to_string(),
                "larger than the sink plus a cluster",
            );
        }
        if self.reps == 0 || self.prefill_reps == 0 || self.cluster_reps == 0 || self.e2e_tokens == 0 {
            return bad("repetitions", format!("{self:?}"), "at least 1 of each");
        }
        if self.tokens_per_cluster == 0 || self.index_iters == 0 {
            return bad("clustering", format!("{self:?}"), "tokens per cluster and iterations >= 1");
        }
        if let Some(&batch) = self.e2e_batches.iter().find(|&&b| b == 0) {
            return bad("e2e batch", batch.to_string(), "at least 1 sequence");
        }
        ckv_select::SelectParams::default().budget(self.e2e_budget).validate()?;
        Ok(())
    }

    fn validate(self) -> Result<Self, BenchError> {
        self.check_ref()?;
        Ok(self)
    }
}

/// One measured case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchRecord {
    /// `memory_copy`, `memory_read`, `decode_step`, `prefill` or `e2e_decode`.
    pub case: String,
    /// The method (`dense`, `clusterkv/per-kv-head`, `quest/per-query-head`, ...).
    pub method: String,
    /// Context in tokens (0 for the copy).
    pub context: usize,
    /// Token budget, for sparse methods.
    pub budget: Option<usize>,
    /// Sequences decoded together (the end-to-end case).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<usize>,
    /// Median seconds of one run (one step, one prefill, one decode step of the batch).
    pub median_s: f64,
    /// Dense's median over this one's, in the same case and context: the speed-up.
    pub ratio_to_dense: Option<f64>,
    /// Bytes read per second over the copy bandwidth (decode steps and the copy).
    pub bandwidth_share: Option<f64>,
}

/// Everything one run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchReport {
    /// Copy bandwidth in bytes per second (read plus written): the reference of every
    /// bandwidth share.
    pub bandwidth: f64,
    /// Bandwidth of a parallel read of the flush buffer, bytes per second: what a read-only
    /// kernel such as decode attention can reach at best.
    pub read_bandwidth: f64,
    /// Rayon threads.
    pub threads: usize,
    /// The instructions of the row kernels (`ckv_core::simd_level`).
    pub simd: &'static str,
    /// Every case.
    pub records: Vec<BenchRecord>,
}

/// Runs the whole protocol; the end-to-end case when a model and a tokenized text are given,
/// with llama.cpp's row beside it when `peer` is given.
pub fn run_bench(
    config: &BenchConfig,
    model: Option<(&Model, &[u32])>,
    peer: Option<&Peer>,
) -> Result<BenchReport, BenchError> {
    config.check_ref()?;
    if let Some((model, tokens)) = model {
        e2e::check_e2e(config, model, tokens)?;
    }
    let flusher = Flusher::for_this_machine();
    let bandwidth = copy_bandwidth(flusher.bytes(), 5);
    let read_s = memory::median_time(
        5,
        || {},
        || {
            std::hint::black_box(flusher.flush());
        },
    );
    let read_bandwidth = flusher.bytes() as f64 / read_s;
    info!(
        copy_gb_per_s = bandwidth / 1e9,
        read_gb_per_s = read_bandwidth / 1e9,
        flush_mib = flusher.bytes() >> 20,
        "memory bandwidth"
    );
    let memory = |case: &str, median_s: f64, share: f64| BenchRecord {
        case: case.into(),
        method: case.trim_start_matches("memory_").into(),
        context: 0,
        budget: None,
        batch: None,
        median_s,
        ratio_to_dense: None,
        bandwidth_share: Some(share),
    };
    let mut records = vec![
        memory("memory_copy", 2.0 * flusher.bytes() as f64 / bandwidth, 1.0),
        memory("memory_read", read_s, read_bandwidth / bandwidth),
    ];
    records.extend(decode::decode_sweep(config, &flusher, bandwidth)?);
    drop(flusher);
    records.extend(prefill::prefill_case(config)?);
    if let Some((model, tokens)) = model {
        records.extend(e2e::e2e_decode(config, model, tokens, peer)?);
    }
    Ok(BenchReport {
        bandwidth,
        read_bandwidth,
        threads: rayon::current_num_threads(),
        simd: ckv_core::simd_level(),
        records,
    })
}

/// `x` with `digits` decimals, or `-`.
fn optional(x: Option<f64>, digits: usize) -> String {
    x.map_or("-".to_owned(), |x| format!("{x:.digits$}"))
}

/// A record's budget, or `-`.
fn budget(r: &BenchRecord) -> String {
    r.budget.map_or("-".to_owned(), |b| b.to_string())
}

/// Appends the table of one case's records (nothing for none): `unit` is `s`, `ms` or
/// `ms/token`.
fn case_table(out: &mut String, rows: &[&BenchRecord], title: &str, unit: &str) {
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(out, "{title}\n");
    let median = format!("median {unit}");
    let mut table =
        MarkdownTable::new(["method", "context", "budget", &median, "x dense", "bandwidth share"], "l");
    for r in rows {
        let time = if unit == "s" { r.median_s } else { r.median_s * 1e3 };
        table.row([
            r.method.clone(),
            r.context.to_string(),
            budget(r),
            format!("{time:.3}"),
            optional(r.ratio_to_dense, 2),
            optional(r.bandwidth_share, 2),
        ]);
    }
    let _ = writeln!(out, "{table}");
}

/// The report as Markdown tables: one per case.
pub fn bench_tables(report: &BenchReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "memory copy: {:.1} GB/s (read + write); plain read: {:.1} GB/s ({:.2} of the copy); {} threads; \
         SIMD row kernels: {}\n",
        report.bandwidth / 1e9,
        report.read_bandwidth / 1e9,
        report.read_bandwidth / report.bandwidth,
        report.threads,
        report.simd
    );
    for (case, title, unit) in [
        ("decode_step", "Decode step, one layer (Hq 32, Hkv 8, d 128, f16), batch 1", "ms"),
        ("prefill", "Prefill: dense causal attention and clustering", "s"),
    ] {
        let rows: Vec<&BenchRecord> = report.records.iter().filter(|r| r.case == case).collect();
        case_table(&mut out, &rows, title, unit);
    }
    e2e_table(&mut out, &report.records);
    out
}

/// Appends the end-to-end table: per context and batch, each method's step time, tokens/s,
/// and its speed over our dense and over llama.cpp (batch 1, when it ran).
fn e2e_table(out: &mut String, records: &[BenchRecord]) {
    let rows: Vec<&BenchRecord> = records.iter().filter(|r| r.case == "e2e_decode").collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(out, "End-to-end decode, real model (tokens/s = batch / step time)\n");
    let mut table = MarkdownTable::new(
        ["method", "context", "batch", "budget", "ms/step", "tokens/s", "x our dense", "x llama.cpp"],
        "l",
    );
    for r in &rows {
        let batch = r.batch.unwrap_or(1);
        let peer = rows
            .iter()
            .find(|p| p.method == LLAMA_CPP && p.context == r.context && p.batch == Some(batch))
            .map(|p| batch as f64 * p.median_s / r.median_s);
        table.row([
            r.method.clone(),
            r.context.to_string(),
            batch.to_string(),
            budget(r),
            format!("{:.1}", r.median_s * 1e3),
            format!("{:.1}", batch as f64 / r.median_s),
            optional(r.ratio_to_dense, 2),
            optional(peer, 2),
        ]);
    }
    let _ = writeln!(out, "{table}");
}
