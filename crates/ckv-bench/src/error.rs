//! Errors of the benchmarks.

use std::path::PathBuf;

/// Errors of `ckv-bench`.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A bench setting out of range.
    #[error(transparent)]
    Param(#[from] ckv_core::ParamError),
    /// The pipeline failed.
    #[error(transparent)]
    Attn(#[from] ckv_attn::AttnError),
    /// A KV store rejected its input.
    #[error(transparent)]
    Cache(#[from] ckv_cache::CacheError),
    /// The model failed to load or run.
    #[error(transparent)]
    Model(#[from] ckv_model::ModelError),
    /// Selection parameters were rejected.
    #[error(transparent)]
    Select(#[from] ckv_select::SelectError),
    /// The GPU failed (feature `cuda`).
    #[cfg(feature = "cuda")]
    #[error("GPU: {0}")]
    Gpu(String),
    /// Reading or writing a file failed.
    #[error("i/o error on {}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// llama.cpp's `llama-bench` (the bench's peer) failed, or its output was not understood.
    #[error("`{command}`: {message}")]
    Peer {
        /// The command line run.
        command: String,
        /// What went wrong.
        message: String,
    },
}
