//! The result of a k-means run.

use ndarray::ArrayView2;

use crate::error::ClusterError;

/// Result of [`kmeans`](crate::kmeans) on one head.
///
/// Invariants, which every `Clustering` holds (the fields are private: one comes only from
/// [`kmeans`](crate::kmeans), [`kmeans_heads`](crate::kmeans_heads) or the checked
/// [`Clustering::from_parts`]): `d >= 1`, at least one cluster, `labels().len()` is the
/// number of rows, every label is `< n_clusters()`, `sizes()[j]` is the number of rows
/// labelled `j` (so `sizes()` sums to the number of rows), `centroids()` holds
/// `n_clusters() * d` finite values. From k-means, the centroid of every non-empty cluster is
/// also the mean of its members' raw rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Clustering {
    d: usize,
    labels: Vec<u32>,
    centroids: Vec<f32>,
    sizes: Vec<u32>,
    iterations: usize,
    objective: f64,
    objective_history: Vec<f64>,
}

impl Clustering {
    /// A clustering computed elsewhere (e.g. by the GPU k-means): `labels` `[n]`, `centroids`
    /// `[k, d]` row-major and `sizes` `[k]`, with `k = sizes.len()`. Nothing says how it was
    /// computed, so [`iterations`](Self::iterations) is 0, the
    /// [`objective_history`](Self::objective_history) is empty and the
    /// [`objective`](Self::objective) is 0.
    ///
    /// # Errors
    /// Checked in this order: [`ClusterError::Param`] if `d == 0` (name `"d"`) or `sizes` is
    /// empty (name `"sizes"`); [`ClusterError::CentroidShape`] if `centroids.len() != k * d`;
    /// [`ClusterError::LabelOutOfRange`] for the first label `>= k`;
    /// [`ClusterError::SizeMismatch`] for the first cluster whose size is not the number of
    /// rows carrying its label; [`ClusterError::NonFiniteCentroid`] for the first NaN or
    /// infinity of `centroids` in row-major order.
    ///
    /// ```
    /// use ckv_cluster::{ClusterError, Clustering};
    ///
    /// let c = Clustering::from_parts(2, vec![1, 0, 1], vec![1.0, 0.0, 0.0, 1.0], vec![1, 2])?;
    /// assert_eq!((c.n_clusters(), c.n_rows(), c.centroid(1)), (2, 3, &[0.0, 1.0][..]));
    /// let bad = Clustering::from_parts(2, vec![1, 0, 1], vec![1.0, 0.0, 0.0, 1.0], vec![2, 1]);
    /// assert_eq!(bad, Err(ClusterError::SizeMismatch { cluster: 0, size: 2, count: 1 }));
    /// # Ok::<(), ClusterError>(())
    /// ```
    pub fn from_parts(
        d: usize,
        labels: Vec<u32>,
        centroids: Vec<f32>,
        sizes: Vec<u32>,
    ) -> Result<Self, ClusterError> {
        if d == 0 {
            return Err(ClusterError::Param(ckv_core::ParamError::zero_dim()));
        }
        let k = sizes.len();
        if k == 0 {
            return Err(ckv_core::ParamError::new("sizes", "[] (no cluster)", "at least one cluster").into());
        }
        if centroids.len() != k * d {
            return Err(ClusterError::CentroidShape { len: centroids.len(), clusters: k, d });
        }
        let mut counts = vec![0usize; k];
        for (row, &label) in labels.iter().enumerate() {
            let count = counts.get_mut(label as usize).ok_or(ClusterError::LabelOutOfRange {
                row,
                label,
                clusters: k,
            })?;
            *count += 1;
        }
        if let Some((cluster, (&size, &count))) =
            sizes.iter().zip(&counts).enumerate().find(|(_, (s, c))| **s as usize != **c)
        {
            return Err(ClusterError::SizeMismatch { cluster, size, count });
        }
        if let Some(pos) = centroids.iter().position(|v| !v.is_finite()) {
            return Err(ClusterError::NonFiniteCentroid {
                cluster: pos / d,
                col: pos % d,
                value: centroids[pos],
            });
        }
        Ok(Self { d, labels, centroids, sizes, iterations: 0, objective: 0.0, objective_history: Vec::new() })
    }

    /// A k-means result; the caller (the k-means loop) guarantees the invariants.
    pub(crate) fn from_kmeans(
        d: usize,
        labels: Vec<u32>,
        centroids: Vec<f32>,
        sizes: Vec<u32>,
        iterations: usize,
        objective: f64,
        objective_history: Vec<f64>,
    ) -> Self {
        debug_assert!(d >= 1 && !sizes.is_empty() && centroids.len() == sizes.len() * d);
        Self { d, labels, centroids, sizes, iterations, objective, objective_history }
    }

    /// Row (and centroid) dimension.
    pub fn d(&self) -> usize {
        self.d
    }

    /// Number of clusters `k`.
    pub fn n_clusters(&self) -> usize {
        self.sizes.len()
    }

    /// Number of rows that were clustered.
    pub fn n_rows(&self) -> usize {
        self.labels.len()
    }

    /// Cluster id of every input row, in input order, `[n]`.
    pub fn labels(&self) -> &[u32] {
        &self.labels
    }

    /// Centroids, `[n_clusters * d]` row-major. From k-means, a non-empty cluster's centroid
    /// is the mean of the raw (not normalised) member rows, accumulated in `f64` in ascending
    /// row order; an empty cluster keeps its previous centroid.
    pub fn centroids(&self) -> &[f32] {
        &self.centroids
    }

    /// The centroids as a `[k, d]` view (no copy).
    pub fn centroids_view(&self) -> ArrayView2<'_, f32> {
        ArrayView2::from_shape((self.n_clusters(), self.d), &self.centroids)
            .expect("the centroids hold n_clusters * d values")
    }

    /// Centroid `j` as a `d`-length slice.
    ///
    /// # Panics
    /// If `j >= n_clusters()`.
    pub fn centroid(&self, j: usize) -> &[f32] {
        &self.centroids[j * self.d..(j + 1) * self.d]
    }

    /// Number of members of every cluster, `[k]`.
    pub fn sizes(&self) -> &[u32] {
        &self.sizes
    }

    /// Number of centroid updates that were followed by a re-assignment (`<= max_iters`); 0
    /// for a clustering from [`from_parts`](Self::from_parts).
    pub fn iterations(&self) -> usize {
        self.iterations
    }

    /// Objective `J = sum_i x_i · ĉ(label_i)` (raw row dot unit centroid, i.e.
    /// `sum |x| cos(x, c)`) of the returned labels and centroids; higher is better. 0 for a
    /// clustering from [`from_parts`](Self::from_parts), which has no rows to compute it.
    ///
    /// It equals the last entry of [`objective_history`](Self::objective_history), unless the
    /// run stopped with labels that changed after the last update (`max_iters` reached, or
    /// `max_iters == 0`): then a final update made the centroids the means of the returned
    /// members, and `objective` is the (never smaller, up to rounding) value for those
    /// centroids.
    pub fn objective(&self) -> f64 {
        self.objective
    }

    /// Objective after every assignment step; the first entry is after the initial
    /// assignment. Non-decreasing up to floating-point rounding. Empty for a clustering from
    /// [`from_parts`](Self::from_parts).
    pub fn objective_history(&self) -> &[f64] {
        &self.objective_history
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts() -> (Vec<u32>, Vec<f32>, Vec<u32>) {
        (vec![1, 0, 1, 2], vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0], vec![1, 2, 1])
    }

    #[test]
    fn from_parts_keeps_the_parts() {
        let (labels, centroids, sizes) = parts();
        let c = Clustering::from_parts(2, labels.clone(), centroids.clone(), sizes.clone()).unwrap();
        assert_eq!((c.d(), c.n_clusters(), c.n_rows()), (2, 3, 4));
        assert_eq!((c.labels(), c.centroids(), c.sizes()), (&labels[..], &centroids[..], &sizes[..]));
        assert_eq!(c.centroid(2), &[4.0, 5.0]);
        assert_eq!(c.centroids_view().shape(), &[3, 2]);
        assert_eq!(c.centroids_view()[[1, 0]], 2.0);
        assert_eq!((c.iterations(), c.objective(), c.objective_history()), (0, 0.0, &[][..]));
        // No rows: every size is 0.
        assert!(Clustering::from_parts(1, vec![], vec![0.5], vec![0]).is_ok());
    }

    #[test]
    fn from_parts_checks_every_invariant_in_order() {
        let (labels, centroids, sizes) = parts();
        let from = |d, l: &[u32], c: &[f32], s: &[u32]| {
            Clustering::from_parts(d, l.to_vec(), c.to_vec(), s.to_vec())
        };
        assert_eq!(
            from(0, &labels, &centroids, &sizes),
            Err(ClusterError::Param(ckv_core::ParamError::zero_dim()))
        );
        let err = from(2, &labels, &centroids, &[]).unwrap_err();
        assert!(matches!(err, ClusterError::Param(ckv_core::ParamError { name: "sizes", .. })), "{err:?}");
        assert_eq!(
            from(3, &labels, &centroids, &sizes),
            Err(ClusterError::CentroidShape { len: 6, clusters: 3, d: 3 })
        );
        assert_eq!(
            from(2, &[1, 0, 3, 7], &centroids, &sizes),
            Err(ClusterError::LabelOutOfRange { row: 2, label: 3, clusters: 3 })
        );
        assert_eq!(
            from(2, &labels, &centroids, &[1, 1, 2]),
            Err(ClusterError::SizeMismatch { cluster: 1, size: 1, count: 2 })
        );
        let mut bad = centroids.clone();
        bad[3] = f32::NEG_INFINITY;
        bad[5] = f32::NAN;
        assert_eq!(
            from(2, &labels, &bad, &sizes),
            Err(ClusterError::NonFiniteCentroid { cluster: 1, col: 1, value: f32::NEG_INFINITY })
        );
    }
}
