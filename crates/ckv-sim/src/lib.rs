//! The ClusterKV reference simulator: synthetic traces, attention-fidelity metrics, and the
//! `clusterkv` command line.
//!
//! [`Trace::generate`] makes a seeded trace of clustered keys (RoPE applied) and queries
//! that attend mostly to a few clusters; [`simulate`] decodes it through the real
//! [`LayerPipeline`](ckv_attn::LayerPipeline) for each method and scores every step against
//! dense attention with [`fidelity`] (DESIGN section 8: top-k recall, attention-mass recall,
//! output relative error).
//!
//! On a real model, [`evaluate`] runs the accuracy evaluation of DESIGN section 8
//! (perplexity, copy and passkey retrieval, attention fidelity per layer) through
//! [`run_probes`]: each [`Probe`]'s prompt is prefilled densely once, snapshotted and
//! restored into every (method, budget) [`Setting`]; [`write_reports`] writes the
//! [`EvalReport`] as JSON, CSV, Markdown and SVG plots. [`run_sweep`] is the settings sweep
//! from which ClusterKV's defaults are chosen: accuracy gap against decode-step time for a
//! grid of [`SelectParams`](ckv_select::SelectParams), the [`pareto_front`] marked.
//!
//! ```
//! use ckv_select::SelectParams;
//! use ckv_sim::{SimConfig, Trace, TraceConfig, Variant, simulate};
//!
//! let trace = Trace::generate(&TraceConfig {
//!     context: 600,
//!     steps: 2,
//!     head_dim: 16,
//!     n_q_heads: 2,
//!     n_kv_heads: 1,
//!     topics: 8,
//!     ..Default::default()
//! })
//! .unwrap();
//! let config = SimConfig { select: SelectParams::default().budget(128) };
//! let reports = simulate::<f32>(&trace, &config, &Variant::all()).unwrap();
//! let dense = &reports[0];
//! assert_eq!(dense.fidelity.mass_recall.round(), 1.0);
//! ```

mod bench;
mod cache_sim;
mod error;
mod eval;
mod metrics;
mod ppl;
mod probe;
mod record;
mod report;
mod sim;
mod sweep;
mod trace;

pub use bench::{
    BenchConfig, BenchRecord, BenchReport, Flusher, LLAMA_CPP, LayerShape, Peer, StepTimer, bench_tables,
    copy_bandwidth, last_level_cache_bytes, run_bench,
};
#[cfg(feature = "cuda")]
pub use bench::{GpuBenchConfig, GpuBenchReport, gpu_bench_tables, run_gpu_bench};
pub use cache_sim::{CacheSimConfig, CacheSimRecord, cache_sim, cache_sim_table};
pub use error::SimError;
pub use eval::{EvalConfig, evaluate};
pub use metrics::{Fidelity, FidelityScratch, fidelity};
pub use ppl::{PplConfig, PplRecord, perplexity, ppl_table, window_starts};
pub use probe::{Probe, ProbeOptions, ProbeScore, Setting, SettingResult, run_probes};
pub use record::{EvalRecord, EvalReport, LayerFidelity, RunMeta, Task};
pub use report::{score_tables, write_reports};
pub use sim::{SimConfig, Variant, VariantReport, simulate, table};
pub use sweep::{
    PointParams, SWEEP_TASKS, SweepConfig, SweepPoint, SweepRecord, SweepReport, SweepRun, SweepSettings,
    SweepSummary, pareto_front, run_sweep, sweep_tables, write_sweep,
};
pub use trace::{Trace, TraceConfig};
