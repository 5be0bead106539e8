//! Errors of the simulator.

/// Errors of `ckv-sim`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SimError {
    /// A trace setting out of range.
    #[error(transparent)]
    Param(#[from] ckv_core::ParamError),
    /// The pipeline failed.
    #[error(transparent)]
    Attn(#[from] ckv_attn::AttnError),
    /// Selection parameters were rejected.
    #[error(transparent)]
    Select(#[from] ckv_select::SelectError),
}
