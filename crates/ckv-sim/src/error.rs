//! Errors of the simulator.

/// Errors of `ckv-sim`.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A trace setting out of range.
    #[error("invalid {name} = {value}: expected {expected}")]
    InvalidConfig {
        /// The setting.
        name: &'static str,
        /// Its value.
        value: String,
        /// What is accepted.
        expected: &'static str,
    },
    /// The pipeline failed.
    #[error(transparent)]
    Attn(#[from] ckv_attn::AttnError),
    /// The model failed to load or run.
    #[error(transparent)]
    Model(#[from] ckv_model::ModelError),
    /// Selection parameters were rejected.
    #[error(transparent)]
    Select(#[from] ckv_select::SelectError),
}
