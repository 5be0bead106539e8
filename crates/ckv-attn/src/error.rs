//! Errors of attention and the decode pipeline.

use ckv_cluster::Element;

use crate::SeqId;

/// Errors of `ckv-attn`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AttnError {
    /// A configuration value out of range.
    #[error("invalid {name} = {value}: expected {expected}")]
    InvalidConfig {
        /// The field.
        name: &'static str,
        /// Its value.
        value: String,
        /// What is accepted.
        expected: String,
    },
    /// An input of the wrong length.
    #[error("{what}: expected {expected} values, got {given}")]
    Shape {
        /// Which input.
        what: &'static str,
        /// Expected length.
        expected: usize,
        /// Given length.
        given: usize,
    },
    /// A NaN or an infinity in an input.
    #[error("{what}: non-finite value {value} at index {index}")]
    NonFinite {
        /// Which input.
        what: &'static str,
        /// Flat index of the value.
        index: usize,
        /// The value.
        value: f32,
    },
    /// A finite value too large for the KV storage type (it would become an infinity).
    #[error("{what}: value {value} at index {index} exceeds the largest {storage} value {max}")]
    OutOfRange {
        /// Which input.
        what: &'static str,
        /// Flat index of the value.
        index: usize,
        /// The value.
        value: f32,
        /// The storage type.
        storage: &'static str,
        /// Its largest finite magnitude.
        max: f32,
    },
    /// A sequence id the pipeline does not hold.
    #[error("unknown sequence {0}")]
    UnknownSequence(SeqId),
    /// The same sequence twice in one batch.
    #[error("sequence {0} appears twice in one decode batch")]
    DuplicateSequence(SeqId),
    /// Selection failed.
    #[error(transparent)]
    Select(#[from] ckv_select::SelectError),
    /// The KV store failed.
    #[error(transparent)]
    Cache(#[from] ckv_cache::CacheError),
}

/// Checks that `xs` has `expected` values, all finite and representable in `E`.
pub(crate) fn check_input<E: Element>(
    what: &'static str,
    xs: &[f32],
    expected: usize,
) -> Result<(), AttnError> {
    if xs.len() != expected {
        return Err(AttnError::Shape { what, expected, given: xs.len() });
    }
    match xs.iter().position(|x| x.is_nan() || x.abs() > E::MAX) {
        Some(index) if xs[index].is_finite() => {
            Err(AttnError::OutOfRange { what, index, value: xs[index], storage: E::NAME, max: E::MAX })
        }
        Some(index) => Err(AttnError::NonFinite { what, index, value: xs[index] }),
        None => Ok(()),
    }
}
