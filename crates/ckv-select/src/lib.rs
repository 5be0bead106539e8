//! KV selection for ClusterKV and its baselines: stage 3 of cluster -> index -> **select**
//! -> attend.
//!
//! Every method implements [`Selector`] for one (sequence, layer, KV head) and is driven
//! by [`select_step`] / [`select_group`], the one place where the budget rule of DESIGN
//! section 4 and the GQA policy apply: the step attends to the sink, `min(B - s - |tail| -
//! 1, c - s)` clustered tokens chosen by the method, the tail and the current token,
//! `min(B, t + 1)` ids in all, sorted and unique. Methods: [`Method::Dense`],
//! [`Method::Oracle`], [`Method::ClusterKv`], [`Method::Quest`], [`Method::StreamingLlm`],
//! [`Method::H2o`].
//!
//! ```
//! use ckv_select::{Growth, Method, ParamGuard, Regions, SelectParams, StepCtx, new_selector, select_step};
//!
//! let d = 4;
//! let keys: Vec<f32> = (0..200 * d).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect();
//! let params = SelectParams::new(Method::ClusterKv).budget(64).sink(4).validate().unwrap();
//! let mut selector = new_selector::<f32>(&params, 1);
//! // A prompt of 150 tokens: the sink is [0, 4), the clustered region [4, 150).
//! selector.grow(&keys, d, 4..150, Growth::Prompt).unwrap();
//! let step = StepCtx {
//!     queries: &[1.0, 0.0, 0.0, 0.0],
//!     n_queries: 1,
//!     keys: &keys,
//!     d,
//!     scale: 0.5,
//!     regions: Regions::new(4, 150, 160).unwrap(),
//! };
//! let mut ids = Vec::new();
//! select_step(selector.as_mut(), &params, &step, &mut ids).unwrap();
//! assert_eq!(ids.len(), 64);
//! assert!(ids.windows(2).all(|w| w[0] < w[1]));
//! assert_eq!(ids.last(), Some(&160));
//! ```

mod error;
mod mass;
mod methods;
mod params;
mod rank;
mod selector;

pub use ckv_cluster::Init;
pub use ckv_core::{ParamGuard, Regions};
pub use error::SelectError;
pub use methods::{
    ClusterKvSelector, DenseSelector, H2oSelector, OracleSelector, QuestSelector, StreamingLlmSelector,
    new_selector,
};
pub use params::{
    Budget, CLUSTERS_PER_BUDGET, GqaPolicy, MAX_TOKENS_PER_CLUSTER, MIN_TOKENS_PER_CLUSTER, Method,
    SelectParams, ValidSelectParams, default_tokens_per_cluster,
};
pub use rank::{partition_top, rank_covering, take_units};
pub use selector::{Goal, Growth, Selector, StepCtx, select_group, select_step};
