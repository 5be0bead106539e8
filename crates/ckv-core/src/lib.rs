//! The shared numerics of ClusterKV, used by every stage of the pipeline (cluster -> index
//! -> select -> attend) and by the model runtime:
//!
//! - [`Element`]: the KV storage type (`half::f16` by default, `f32`), with [`RowData`] for
//!   kernels written once per type;
//! - checks: [`check_values`] / [`ValueError`] for input values, [`ParamGuard`] /
//!   [`ParamError`] for settings;
//! - [`Regions`] of one (sequence, layer, KV head) at a decode step (DESIGN section 4), and
//!   [`derive_seed`] for the seeds of the clusterings; [`rope`] (rotary position embedding);
//! - the row kernels of decode ([`score_rows`], [`weigh_rows`], [`softmax`]: AVX-512F or
//!   AVX2 + FMA + F16C, checked at run time, with a portable path built on [`dot`] and
//!   [`axpy`]) and the blocked matrix products [`matmul_nt`] / [`matmul_nn`].
//!
//! Every reduction accumulates in `f32`.
//!
//! ```
//! use ckv_core::{Regions, score_rows, softmax};
//! use half::f16;
//!
//! // Two stored f16 rows of d = 2 scored against one query, then normalised.
//! let rows: Vec<f16> = [1.0, 0.0, 0.0, 1.0].map(f16::from_f32).to_vec();
//! let mut scores = vec![0.0; 2];
//! score_rows(&[2.0, 1.0], 2, &rows, 0..2, 1.0, &mut scores);
//! assert_eq!(scores, [2.0, 1.0]);
//! softmax(&mut scores);
//! assert!((scores.iter().sum::<f32>() - 1.0).abs() < 1e-6);
//!
//! let regions = Regions::new(4, 100, 120)?;
//! assert_eq!((regions.clustered(), regions.tail()), (4..100, 100..120));
//! # Ok::<(), ckv_core::RegionsError>(())
//! ```

mod dot;
mod element;
mod matmul;
mod params;
mod regions;
mod rope;
mod rows;
mod seed;
mod values;

pub use dot::{axpy, dot};
pub use element::Element;
pub use matmul::{matmul_nn, matmul_nt};
pub use params::{ParamError, ParamGuard};
pub use regions::{Regions, RegionsError};
pub use rope::{rope, rope_inv_freq};
pub use rows::{RowData, score_rows, simd_level, softmax, weigh_rows};
pub use seed::derive_seed;
pub use values::{ValueError, check_values, standard_slice};
