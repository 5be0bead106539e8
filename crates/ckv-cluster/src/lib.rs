//! K-means clustering of attention key rows, one KV head at a time.
//!
//! This crate is stage 1 of the ClusterKV pipeline (cluster -> index -> select -> attend):
//! the key rows of a head (`[n, d]`, `f32` or `f16`) are grouped into `k` clusters so that
//! later stages can score whole clusters against a query and attend only to the tokens of
//! the most relevant ones.
//!
//! The assignment uses cosine similarity (the semantic closeness of keys, independent of
//! their norm); centroids are means of the raw member keys. The objective
//! `sum_i x_i · c(label_i) / |c(label_i)|` never decreases, and results are deterministic:
//! bitwise identical for the same seed and input whatever the number of rayon threads.
//!
//! ```
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
//! assert_eq!(c.labels[0], c.labels[1]);
//! assert_eq!(c.labels[3], c.labels[5]);
//! assert_ne!(c.labels[0], c.labels[3]);
//! assert_eq!(c.sizes.iter().sum::<u32>(), 6);
//! # Ok::<(), ckv_cluster::ClusterError>(())
//! ```

mod clustering;
mod dot;
mod element;
mod error;
mod kmeans;
mod matmul;
mod params;
mod rows;
mod values;

pub use clustering::Clustering;
pub use dot::{axpy, dot};
pub use element::Element;
pub use error::ClusterError;
pub use kmeans::{kmeans, kmeans_heads};
pub use matmul::{matmul_nn, matmul_nt};
pub use params::{ClusterParams, Init, ValidClusterParams};
pub use rows::{RowData, score_rows, simd_level, softmax, weigh_rows};
pub use values::{ValueError, check_values};
