//! The real-model evaluation of ClusterKV (DESIGN section 8), as a library.
//!
//! [`evaluate`] runs the accuracy evaluation (perplexity, copy and passkey retrieval,
//! attention fidelity per layer) through [`run_probes`]: each [`Probe`]'s prompt is
//! prefilled densely once, snapshotted and restored into every (method, budget)
//! [`Setting`]; [`write_reports`] writes the [`EvalReport`] as JSON, CSV, Markdown and SVG
//! plots. [`run_sweep`] is the settings sweep from which ClusterKV's defaults are chosen:
//! accuracy gap against decode-step time for a grid of
//! [`SelectParams`](ckv_select::SelectParams), the [`pareto_front`] marked. [`cache_sim`]
//! runs ClusterKV with offload on the real model and reports the device tier's hit rate
//! and traffic per layer. Long work reports through [`Progress`] (`&()` shows nothing).
//!
//! The default model and text of DESIGN section 7 are [`DEFAULT_MODEL`] and
//! [`DEFAULT_TEXT`] in the workspace's `assets/` folder (`cargo xtask fetch`).

mod cache_sim;
mod error;
mod eval;
mod probe;
mod progress;
mod record;
mod report;
mod sweep;

pub use cache_sim::{CacheSimConfig, CacheSimRecord, cache_sim, cache_sim_table};
pub use error::EvalError;
pub use eval::{EvalConfig, evaluate, window_starts};
pub use probe::{Probe, ProbeOptions, ProbeScore, Setting, SettingResult, run_probes};
pub use progress::Progress;
pub use record::{EvalRecord, EvalReport, LayerFidelity, RunMeta, Task};
pub use report::{score_tables, write_reports};
pub use sweep::{
    PointParams, SWEEP_TASKS, SweepConfig, SweepPoint, SweepRecord, SweepReport, SweepRun, SweepSettings,
    SweepSummary, pareto_front, run_sweep, sweep_tables, write_sweep,
};

/// The default model's file name in the assets folder (DESIGN section 7).
pub const DEFAULT_MODEL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The default text's file name in the assets folder (DESIGN section 7).
pub const DEFAULT_TEXT: &str = "moby-dick.txt";
