//! The methods behind [`Selector`](crate::Selector), and [`new_selector`] to build one.

mod clusterkv;
mod dense;
mod h2o;
mod oracle;
mod quest;
mod streaming;

pub use clusterkv::ClusterKvSelector;
pub use dense::DenseSelector;
pub use h2o::H2oSelector;
pub use oracle::OracleSelector;
pub use quest::QuestSelector;
pub use streaming::StreamingLlmSelector;

use ckv_core::Element;

use crate::{Method, Selector, ValidSelectParams};

/// A fresh selector of `params.method()` for one (sequence, layer, KV head); `seed` is that
/// head's seed (see [`derive_seed`](ckv_core::derive_seed)).
pub fn new_selector<E: Element>(params: &ValidSelectParams, seed: u64) -> Box<dyn Selector<E>> {
    match params.method() {
        Method::Dense => Box::new(DenseSelector),
        Method::Oracle => Box::new(OracleSelector::default()),
        Method::ClusterKv => Box::new(ClusterKvSelector::new(params, seed)),
        Method::Quest => Box::new(QuestSelector::new(params.quest_page_size())),
        Method::StreamingLlm => Box::new(StreamingLlmSelector),
        Method::H2o => Box::new(H2oSelector::with_capacity(params.max_context().unwrap_or(0))),
    }
}
