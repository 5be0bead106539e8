//! Errors of parameter and input validation.

/// Why a clustering request was rejected. All checks happen before any clustering work.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum ClusterError {
    /// A parameter out of range, or a row dimension `d` of 0.
    #[error(transparent)]
    Param(#[from] ckv_core::ParamError),
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
    /// An input view that is not in standard (row-major, contiguous) layout, e.g. the rows of
    /// one head taken out of a token-major `[P, Hkv, d]` array; the error names its shape and
    /// strides (see [`kmeans_view`](crate::kmeans_view)).
    #[error(transparent)]
    Value(#[from] ckv_core::ValueError),
    /// [`Clustering::from_parts`](crate::Clustering::from_parts): the centroids are not
    /// `[k, d]`.
    #[error("centroids hold {len} values, expected clusters * d = {clusters} * {d}")]
    CentroidShape {
        /// Number of centroid values given.
        len: usize,
        /// Number of clusters (`sizes.len()`).
        clusters: usize,
        /// Row dimension.
        d: usize,
    },
    /// [`Clustering::from_parts`](crate::Clustering::from_parts): a label that names no
    /// cluster (the first one).
    #[error("label {label} of row {row} is not below the number of clusters {clusters}")]
    LabelOutOfRange {
        /// The row.
        row: usize,
        /// Its label.
        label: u32,
        /// Number of clusters.
        clusters: usize,
    },
    /// [`Clustering::from_parts`](crate::Clustering::from_parts): a cluster size that is not
    /// the number of rows carrying its label (the first one).
    #[error("cluster {cluster} has size {size}, but {count} rows carry its label")]
    SizeMismatch {
        /// The cluster.
        cluster: usize,
        /// Its size as given.
        size: u32,
        /// Rows labelled with it.
        count: usize,
    },
    /// [`Clustering::from_parts`](crate::Clustering::from_parts): a NaN or infinite centroid
    /// value (the first one in row-major order).
    #[error("non-finite centroid value {value} of cluster {cluster}, column {col}; expected finite values")]
    NonFiniteCentroid {
        /// The cluster.
        cluster: usize,
        /// Column index of the value.
        col: usize,
        /// The value.
        value: f32,
    },
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
        let m = ClusterError::UnknownInit("kmeans--".into()).to_string();
        assert!(m.contains("\"kmeans--\"") && m.contains("kmeans++"), "{m}");
        let m = ClusterError::CentroidShape { len: 7, clusters: 2, d: 4 }.to_string();
        assert!(m.contains('7') && m.contains("2 * 4"), "{m}");
        let m = ClusterError::LabelOutOfRange { row: 3, label: 9, clusters: 2 }.to_string();
        assert!(m.contains("label 9") && m.contains("row 3") && m.contains('2'), "{m}");
        let m = ClusterError::SizeMismatch { cluster: 1, size: 5, count: 4 }.to_string();
        assert!(m.contains("cluster 1") && m.contains('5') && m.contains('4'), "{m}");
        let m = ClusterError::NonFiniteCentroid { cluster: 2, col: 0, value: f32::NAN }.to_string();
        assert!(m.contains("cluster 2") && m.contains("column 0") && m.contains("NaN"), "{m}");
    }
}
