//! Errors of parameter and input validation.

/// Why a clustering request was rejected. All checks happen before any clustering work.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum ClusterError {
    /// A parameter is out of range.
    #[error("invalid parameter `{name}`: got {value}, expected {expected}")]
    InvalidParam {
        /// Parameter name.
        name: &'static str,
        /// The value given.
        value: String,
        /// What is accepted.
        expected: &'static str,
    },
    /// The row dimension `d` is zero.
    #[error("row dimension d is 0, expected at least 1")]
    ZeroDim,
    /// The input length is not a multiple of the row dimension.
    #[error("input length {len} is not a multiple of the row dimension d = {d}")]
    ShapeMismatch {
        /// Number of elements given.
        len: usize,
        /// Row dimension.
        d: usize,
    },
    /// Fewer rows than clusters (this is an error, not silently clamped).
    #[error("got {rows} rows, expected at least n_clusters = {clusters}")]
    TooFewRows {
        /// Number of rows given.
        rows: usize,
        /// Number of clusters requested.
        clusters: usize,
    },
    /// A NaN or infinite value in the input (the first one in row-major order).
    #[error("non-finite value {value} at row {row}, column {col}; expected finite values")]
    NonFinite {
        /// Row index of the offending value.
        row: usize,
        /// Column index of the offending value.
        col: usize,
        /// The offending value.
        value: f32,
    },
    /// An unknown k-means initialisation name (see [`Init`](crate::Init)); holds the name given.
    #[error("unknown k-means init {0:?}: expected random or kmeans++")]
    UnknownInit(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_values() {
        let m = ClusterError::ShapeMismatch { len: 10, d: 3 }.to_string();
        assert!(m.contains("10") && m.contains('3'), "{m}");
        let m = ClusterError::TooFewRows { rows: 2, clusters: 5 }.to_string();
        assert!(m.contains('2') && m.contains('5'), "{m}");
        let m = ClusterError::NonFinite { row: 4, col: 1, value: f32::NAN }.to_string();
        assert!(m.contains("row 4") && m.contains("column 1") && m.contains("NaN"), "{m}");
        assert!(ClusterError::ZeroDim.to_string().contains("d is 0"));
        let m = ClusterError::UnknownInit("kmeans--".into()).to_string();
        assert!(m.contains("\"kmeans--\"") && m.contains("kmeans++"), "{m}");
    }
}
