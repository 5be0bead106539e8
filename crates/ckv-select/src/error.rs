//! Errors of selection and its parameters.

/// Errors of `ckv-select`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SelectError {
    /// A parameter outside its valid range.
    #[error(transparent)]
    Param(#[from] ckv_core::ParamError),
    /// An unknown method name.
    #[error("unknown method {0:?}: expected one of dense, oracle, clusterkv, quest, streamingllm, h2o")]
    UnknownMethod(String),
    /// An unknown GQA policy name.
    #[error("unknown GQA policy {0:?}: expected per-query-head or per-kv-head")]
    UnknownGqaPolicy(String),
    /// Regions that contradict each other.
    #[error(transparent)]
    Regions(#[from] ckv_core::RegionsError),
    /// The context outgrew what the parameters were validated for.
    #[error(
        "context of {context} tokens exceeds max_context {max_context}, the longest context the budget was validated for"
    )]
    ContextTooLong {
        /// Tokens in the context.
        context: usize,
        /// The validated maximum.
        max_context: usize,
    },
    /// Query rows of the wrong shape.
    #[error("queries: expected {expected} values ({heads} heads x d {d}), got {given}")]
    QueryShape {
        /// Expected length.
        expected: usize,
        /// Heads.
        heads: usize,
        /// Head dimension.
        d: usize,
        /// Given length.
        given: usize,
    },
    /// Keys that do not cover the current token.
    #[error("keys hold {given} tokens, the step at position {current} needs {expected}")]
    KeysShape {
        /// Tokens needed.
        expected: usize,
        /// Tokens given.
        given: usize,
        /// Current position.
        current: u32,
    },
    /// Clustering failed.
    #[error(transparent)]
    Cluster(#[from] ckv_cluster::ClusterError),
    /// The cluster index rejected a clustering.
    #[error(transparent)]
    Index(#[from] ckv_index::IndexError),
}
