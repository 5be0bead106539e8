//! K-means clustering of attention key rows, one KV head at a time.
//!
//! This crate is stage 1 of the ClusterKV pipeline (cluster -> index -> select -> attend):
//! the key rows of a head (`[n, d]`, `f32` or `f16`) are grouped into `k` clusters so that
//! later stages can score whole clusters against a query and attend only to the tokens of
//! the most relevant ones.
//!
//! The rows come as a slice with its `d` ([`kmeans`], [`kmeans_heads`]), or as an `ndarray`
//! view `[n, d]` ([`kmeans_view`]; `[H, n, d]` for [`kmeans_heads_view`]) in standard
//! layout, read in place. A [`Clustering`] holds the labels, centroids and sizes, always
//! consistent with each other.
//!
//! The assignment uses cosine similarity (the semantic closeness of keys, independent of
//! their norm); centroids are means of the raw member keys. The objective
//! `sum_i x_i · c(label_i) / |c(label_i)|` never decreases, and results are deterministic:
//! bitwise identical for the same seed and input whatever the number of rayon threads.
//!
//! ```
//! use ckv_core::ParamGuard;
//! use ckv_cluster::{kmeans, ClusterParams};
//!
//! // Six keys in d = 2: three pointing right, three pointing up.
//! let keys: Vec<f32> = vec![
//!     1.0, 0.1, 2.0, 0.0, 1.5, -0.1, //
//!     0.0, 1.0, 0.1, 3.0, -0.1, 2.0,
//! ];
//! let params = ClusterParams::new(2).seed(7).validate()?;
//! let c = kmeans(&params, &keys, 2)?;
//! assert_eq!(c.n_clusters(), 2);
//! assert_eq!(c.labels()[0], c.labels()[1]);
//! assert_eq!(c.labels()[3], c.labels()[5]);
//! assert_ne!(c.labels()[0], c.labels()[3]);
//! assert_eq!(c.sizes().iter().sum::<u32>(), 6);
//! # Ok::<(), ckv_cluster::ClusterError>(())
//! ```

mod clustering;
mod error;
mod kmeans;
mod params;

/// The trait that turns [`ClusterParams`] into [`ValidClusterParams`] (`validate()`),
/// re-exported so that this crate alone is enough to call [`kmeans`].
pub use ckv_core::ParamGuard;
pub use clustering::Clustering;
pub use error::ClusterError;
pub use kmeans::{kmeans, kmeans_heads, kmeans_heads_view, kmeans_view};
pub use params::{ClusterParams, Init, ValidClusterParams};
