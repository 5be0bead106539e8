//! Errors of attention and the decode pipeline.

use ckv_core::ValueError;

use crate::SeqId;

/// Errors of `ckv-attn`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AttnError {
    /// A configuration value out of range.
    #[error(transparent)]
    Param(#[from] ckv_core::ParamError),
    /// An input of the wrong length, or values that are not finite or do not fit the KV
    /// storage type.
    #[error(transparent)]
    Value(#[from] ValueError),
    /// A sequence id the pipeline does not hold.
    #[error("unknown sequence {0}")]
    UnknownSequence(SeqId),
    /// A decode step for a sequence whose prefill is not finished.
    #[error("sequence {0} is still in prefill: call finish_prefill before decoding")]
    InPrefill(SeqId),
    /// A prompt chunk for a sequence whose prefill is finished.
    #[error("sequence {0} has finished its prefill: prompt chunks are no longer accepted")]
    PrefillClosed(SeqId),
    /// The same sequence twice in one batch.
    #[error("sequence {0} appears twice in one decode batch")]
    DuplicateSequence(SeqId),
    /// Selection failed.
    #[error(transparent)]
    Select(#[from] ckv_select::SelectError),
    /// The GPU failed (driver, kernel loading or launch); the sequence's device state may
    /// be partly updated, so remove the sequence.
    #[cfg(feature = "cuda")]
    #[error("GPU: {0}")]
    Gpu(String),
    /// The KV store failed.
    #[error(transparent)]
    Cache(#[from] ckv_cache::CacheError),
}
