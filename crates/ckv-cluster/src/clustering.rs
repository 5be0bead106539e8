//! The result of a k-means run.

/// Result of [`kmeans`](crate::kmeans) on one head.
///
/// Invariants: `labels.len()` is the number of rows, every label is `< n_clusters()`,
/// `sizes[j]` is the number of rows labelled `j` (so `sizes` sums to the number of rows),
/// and the centroid of every non-empty cluster is the mean of its members' raw rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Clustering {
    /// Row (and centroid) dimension.
    pub d: usize,
    /// Cluster id of every input row, in input order.
    pub labels: Vec<u32>,
    /// Centroids, `[n_clusters * d]` row-major. A non-empty cluster's centroid is the mean of
    /// the raw (not normalised) member rows, accumulated in `f64` in ascending row order; an
    /// empty cluster keeps its previous centroid.
    pub centroids: Vec<f32>,
    /// Number of members of every cluster.
    pub sizes: Vec<u32>,
    /// Number of centroid updates that were followed by a re-assignment (`<= max_iters`).
    pub iterations: usize,
    /// Objective `J = sum_i x_i · ĉ(label_i)` (raw row dot unit centroid, i.e.
    /// `sum |x| cos(x, c)`) of the returned labels and centroids; higher is better.
    ///
    /// It equals the last entry of `objective_history`, unless the run stopped with labels
    /// that changed after the last update (`max_iters` reached, or `max_iters == 0`): then a
    /// final update made the centroids the means of the returned members, and `objective`
    /// is the (never smaller, up to rounding) value for those centroids.
    pub objective: f64,
    /// Objective after every assignment step; the first entry is after the initial
    /// assignment. Non-decreasing up to floating-point rounding.
    pub objective_history: Vec<f64>,
}

impl Clustering {
    /// Number of clusters `k`.
    pub fn n_clusters(&self) -> usize {
        self.sizes.len()
    }

    /// Number of rows that were clustered.
    pub fn n_rows(&self) -> usize {
        self.labels.len()
    }

    /// Centroid `j` as a `d`-length slice.
    ///
    /// # Panics
    /// If `j >= n_clusters()`.
    pub fn centroid(&self, j: usize) -> &[f32] {
        &self.centroids[j * self.d..(j + 1) * self.d]
    }
}
