//! Errors of the evaluation.

use std::path::PathBuf;

/// Errors of `ckv-eval`.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// An evaluation setting out of range.
    #[error(transparent)]
    Param(#[from] ckv_core::ParamError),
    /// The pipeline failed.
    #[error(transparent)]
    Attn(#[from] ckv_attn::AttnError),
    /// The offload settings were rejected.
    #[error(transparent)]
    Cache(#[from] ckv_cache::CacheError),
    /// The model failed to load or run.
    #[error(transparent)]
    Model(#[from] ckv_model::ModelError),
    /// The tokenizer failed.
    #[error(transparent)]
    Tokenizer(#[from] ckv_model::TokenizerError),
    /// Selection parameters were rejected.
    #[error(transparent)]
    Select(#[from] ckv_select::SelectError),
    /// A step-time measurement of the sweep failed.
    #[error(transparent)]
    Bench(#[from] ckv_bench::BenchError),
    /// Reading or writing a file failed.
    #[error("i/o error on {}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Drawing a plot failed.
    #[error("cannot draw plot {}: {message}", path.display())]
    Plot {
        /// The plot file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}
