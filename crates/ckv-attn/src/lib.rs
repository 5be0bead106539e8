//! Attention for ClusterKV: stage 4 of cluster -> index -> select -> **attend**, and the
//! per-layer decode pipeline that composes the four stages.
//!
//! - [`dense_attention`] and [`sparse_attention`]: decode attention of one query row over
//!   f16 or f32 KV rows, f32 accumulation, numerically stable softmax; one implementation
//!   ([`attend_rows`]), so a sparse step over every id is bitwise the dense one.
//! - [`LayerPipeline`]: prefill (dense causal attention, blocked as matrix products, then
//!   clustering of `[s, P)`; a [`PrefillSnapshot`] lets one prefill serve every method) and
//!   decode steps (append, re-cluster every full tail window, select under the budget,
//!   attend) for a batch of sequences of different lengths, parallel over (sequence, KV
//!   head); layers below `dense_layers` attend densely.
//! - Offload ([`PipelineConfig::offload`]): each (sequence, KV head) attends through a
//!   device tier that keeps the rows of the last `reuse` steps and fetches only what a step
//!   newly needs from the host tier; outputs are bitwise those without it, and
//!   [`LayerPipeline::offload_stats`] gives the hit rate and the bytes fetched.
//! - `ndarray` at the boundary: [`PrefillInput::from_views`] (`[P, Hkv, d]` / `[P, Hq, d]`),
//!   [`DecodeInput::from_views`] (`[Hq, d]` / `[Hkv, d]`), [`dense_attention_view`] and
//!   [`sparse_attention_view`] take views in standard layout, check their shapes and read
//!   them in place; the slice forms are what they call.
//! - [`Backend`]: where decode steps run, chosen when the pipeline is built
//!   ([`LayerPipeline::with_backend`]): the CPU, or with the feature `cuda` a GPU through
//!   `ckv-kernels`, with the same API and the same selections.
//!
//! ```
//! use ckv_core::ParamGuard;
//! use ckv_attn::{DecodeInput, LayerPipeline, PipelineConfig, PrefillInput};
//! use ckv_select::{Method, SelectParams};
//! use half::f16;
//!
//! let (hq, hkv, d, prompt) = (4, 2, 8, 300);
//! let select = SelectParams::new(Method::ClusterKv).budget(128).sink(4);
//! let config = PipelineConfig::new(hq, hkv, d, select).validate().unwrap();
//! let mut layer = LayerPipeline::<f16>::new(config);
//! let kv: Vec<f32> = (0..prompt * hkv * d).map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0).collect();
//! let seq = layer.prefill(PrefillInput { keys: &kv, values: &kv, queries: None }, None).unwrap();
//! let (q, k) = (vec![0.1f32; hq * d], vec![0.2f32; hkv * d]);
//! let mut out = vec![0.0f32; hq * d];
//! layer.decode(&[DecodeInput { seq, query: &q, key: &k, value: &k }], &mut out).unwrap();
//! assert_eq!(layer.selection(seq, 0).unwrap().len(), 128);
//! assert_eq!(layer.len(seq).unwrap(), prompt + 1);
//! ```

mod attention;
mod backend;
mod config;
#[cfg(feature = "cuda")]
mod device;
mod error;
mod pipeline;
mod prefill;

pub use attention::{
    AttnScratch, Selected, attend_rows, attend_selected, dense_attention, dense_attention_view,
    sparse_attention, sparse_attention_view,
};
pub use backend::Backend;
pub use ckv_cache::{OffloadParams, TierStats};
/// The trait that turns [`PipelineConfig`] into [`ValidPipelineConfig`] (`validate()`),
/// re-exported so that this crate alone is enough to build a pipeline.
pub use ckv_core::ParamGuard;
pub use config::{PipelineConfig, ValidPipelineConfig};
pub use error::AttnError;
pub use pipeline::{DecodeInput, LayerPipeline, PrefillInput, PrefillSnapshot, SeqId};

/// The README's "Using the pipeline" example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeExample;
