//! Clustering parameters and their validation.

use std::fmt;
use std::str::FromStr;

use ckv_core::ParamGuard;

use crate::error::ClusterError;

/// Default number of Lloyd iterations (update + re-assignment rounds).
const DEFAULT_MAX_ITERS: usize = 20;

/// How the initial centroids of k-means are chosen. Both draw from
/// `ChaCha8Rng::seed_from_u64(seed)` and pick `k` distinct rows, so they are deterministic
/// for a seed whatever the number of rayon threads.
///
/// ```
/// use ckv_cluster::{ClusterParams, Init, ParamGuard};
///
/// let init: Init = "KMeans++".parse()?;
/// assert_eq!(init, Init::PlusPlus);
/// assert_eq!(init.to_string(), "kmeans++");
/// let params = ClusterParams::new(4).init(init).validate()?;
/// assert_eq!(params.init(), Init::PlusPlus);
/// assert!("farthest".parse::<Init>().is_err());
/// # Ok::<(), ckv_cluster::ClusterError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Init {
    /// `k` distinct rows sampled uniformly without replacement (the default).
    #[default]
    RandomRows,
    /// k-means++ in cosine space: the first centre is a uniformly sampled row, each next one a
    /// not yet chosen row drawn with probability proportional to `D(x)^2`, the squared
    /// distance between the unit copies of `x` and of its nearest chosen centre
    /// (`2 - 2 cos` for non-zero rows; a zero row's unit copy is the zero vector). When every
    /// remaining `D` is 0 (duplicates, or fewer distinct directions than `k`), the remaining
    /// centres are distinct rows sampled uniformly from those not chosen yet.
    PlusPlus,
}

impl Init {
    /// Every initialisation, the default first.
    pub const ALL: [Init; 2] = [Init::RandomRows, Init::PlusPlus];

    /// The name as the CLI spells it: `"random"` or `"kmeans++"`.
    pub fn name(self) -> &'static str {
        match self {
            Init::RandomRows => "random",
            Init::PlusPlus => "kmeans++",
        }
    }
}

impl fmt::Display for Init {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Init {
    type Err = ClusterError;

    /// Parses a [`name`](Init::name), ignoring ASCII case.
    ///
    /// # Errors
    /// [`ClusterError::UnknownInit`] with the given string if it names no initialisation.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Init::ALL
            .into_iter()
            .find(|i| i.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| ClusterError::UnknownInit(s.to_owned()))
    }
}

/// Builder for k-means parameters; turn it into [`ValidClusterParams`] with
/// [`ClusterParams::validate`].
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterParams {
    n_clusters: usize,
    max_iters: usize,
    seed: u64,
    init: Init,
}

impl ClusterParams {
    /// Parameters for `n_clusters` clusters, with `max_iters` 20, `seed` 0 and
    /// [`Init::RandomRows`].
    pub fn new(n_clusters: usize) -> Self {
        Self { n_clusters, max_iters: DEFAULT_MAX_ITERS, seed: 0, init: Init::default() }
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

    /// Sets how the initial centroids are chosen (see [`Init`]).
    pub fn init(self, init: Init) -> Self {
        Self { init, ..self }
    }
}

impl ParamGuard for ClusterParams {
    type Checked = ValidClusterParams;
    type Error = ClusterError;

    fn check_ref(&self) -> Result<(), ClusterError> {
        self.clone().validate().map(drop)
    }

    fn validate(self) -> Result<ValidClusterParams, ClusterError> {
        if self.n_clusters == 0 {
            return Err(ClusterError::from(ckv_core::ParamError::new("n_clusters", "0", "at least 1")));
        }
        Ok(ValidClusterParams {
            n_clusters: self.n_clusters,
            max_iters: self.max_iters,
            seed: self.seed,
            init: self.init,
        })
    }
}

/// Parameters that passed [`ClusterParams::validate`]; the only way to call
/// [`kmeans`](crate::kmeans).
#[derive(Debug, Clone, PartialEq)]
pub struct ValidClusterParams {
    n_clusters: usize,
    max_iters: usize,
    seed: u64,
    init: Init,
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

    /// How the initial centroids are chosen.
    pub fn init(&self) -> Init {
        self.init
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
        assert_eq!(p.init(), Init::RandomRows);
        let p = ClusterParams::new(3).init(Init::PlusPlus).validate().unwrap();
        assert_eq!(p.init(), Init::PlusPlus);
    }

    #[test]
    fn init_names_round_trip() {
        assert_eq!(Init::default(), Init::RandomRows);
        assert_eq!(Init::ALL, [Init::RandomRows, Init::PlusPlus]);
        assert_eq!((Init::RandomRows.name(), Init::PlusPlus.name()), ("random", "kmeans++"));
        for init in Init::ALL {
            assert_eq!(init.to_string(), init.name());
            assert_eq!(init.name().parse::<Init>(), Ok(init));
            assert_eq!(init.name().to_ascii_uppercase().parse::<Init>(), Ok(init));
        }
        assert_eq!("KMeans++".parse::<Init>(), Ok(Init::PlusPlus));
        assert_eq!("Random".parse::<Init>(), Ok(Init::RandomRows));
        for bad in ["kmeans", "", " random", "plusplus++"] {
            let err = bad.parse::<Init>().unwrap_err();
            assert_eq!(err, ClusterError::UnknownInit(bad.to_owned()));
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn zero_clusters_rejected() {
        let err = ClusterParams::new(0).validate().unwrap_err();
        assert_eq!(err, ClusterError::from(ckv_core::ParamError::new("n_clusters", "0", "at least 1")));
        assert!(err.to_string().contains("n_clusters"));
    }
}
