//! Clustering parameters and their validation.

use crate::error::ClusterError;

/// Default number of Lloyd iterations (update + re-assignment rounds).
const DEFAULT_MAX_ITERS: usize = 20;

/// Builder for k-means parameters; turn it into [`ValidClusterParams`] with
/// [`ClusterParams::validate`].
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterParams {
    n_clusters: usize,
    max_iters: usize,
    seed: u64,
}

impl ClusterParams {
    /// Parameters for `n_clusters` clusters, with `max_iters` 20 and `seed` 0.
    pub fn new(n_clusters: usize) -> Self {
        Self { n_clusters, max_iters: DEFAULT_MAX_ITERS, seed: 0 }
    }

    /// Sets the maximum number of update + re-assignment rounds after the initial
    /// assignment (0 is allowed: initial assignment plus one centroid update).
    pub fn max_iters(self, max_iters: usize) -> Self {
        Self { max_iters, ..self }
    }

    /// Sets the seed of the initial centroid sampling.
    pub fn seed(self, seed: u64) -> Self {
        Self { seed, ..self }
    }

    /// Checks the parameters.
    ///
    /// # Errors
    /// [`ClusterError::InvalidParam`] if `n_clusters` is 0.
    pub fn validate(self) -> Result<ValidClusterParams, ClusterError> {
        if self.n_clusters == 0 {
            return Err(ClusterError::InvalidParam {
                name: "n_clusters",
                value: "0".into(),
                expected: "at least 1",
            });
        }
        Ok(ValidClusterParams { n_clusters: self.n_clusters, max_iters: self.max_iters, seed: self.seed })
    }
}

/// Parameters that passed [`ClusterParams::validate`]; the only way to call
/// [`kmeans`](crate::kmeans).
#[derive(Debug, Clone, PartialEq)]
pub struct ValidClusterParams {
    n_clusters: usize,
    max_iters: usize,
    seed: u64,
}

impl ValidClusterParams {
    /// Number of clusters `k` (at least 1).
    pub fn n_clusters(&self) -> usize {
        self.n_clusters
    }

    /// Maximum number of update + re-assignment rounds.
    pub fn max_iters(&self) -> usize {
        self.max_iters
    }

    /// Seed of the initial centroid sampling.
    pub fn seed(&self) -> u64 {
        self.seed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_builders() {
        let p = ClusterParams::new(7).validate().unwrap();
        assert_eq!((p.n_clusters(), p.max_iters(), p.seed()), (7, 20, 0));
        let p = ClusterParams::new(3).max_iters(0).seed(42).validate().unwrap();
        assert_eq!((p.n_clusters(), p.max_iters(), p.seed()), (3, 0, 42));
    }

    #[test]
    fn zero_clusters_rejected() {
        let err = ClusterParams::new(0).validate().unwrap_err();
        assert_eq!(
            err,
            ClusterError::InvalidParam { name: "n_clusters", value: "0".into(), expected: "at least 1" }
        );
        assert!(err.to_string().contains("n_clusters"));
    }
}
