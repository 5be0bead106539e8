//! The ClusterKV reference simulator: synthetic traces, attention-fidelity metrics, and the
//! GPU-vs-CPU property tests (`tests/gpu.rs`, feature `cuda`).
//!
//! [`Trace::generate`] makes a seeded trace of clustered keys (RoPE applied) and queries
//! that attend mostly to a few clusters; [`simulate`] decodes it through the real
//! [`LayerPipeline`](ckv_attn::LayerPipeline) for each method and scores every step against
//! dense attention with [`fidelity`] (DESIGN section 8: top-k recall, attention-mass recall,
//! output relative error).
//!
//! The evaluation on a real model is `ckv-eval`; the performance protocol is `ckv-bench`.
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

mod error;
mod markdown;
mod metrics;
mod sim;
mod trace;

pub use error::SimError;
pub use markdown::MarkdownTable;
pub use metrics::{Fidelity, FidelityScratch, FidelitySum, fidelity, step_fidelity};
pub use sim::{SimConfig, Variant, VariantReport, simulate, table};
pub use trace::{Trace, TraceConfig};
