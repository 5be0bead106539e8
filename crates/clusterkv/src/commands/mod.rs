//! One module per command, each with its `run`.

pub(crate) mod bench;
pub(crate) mod cache_sim;
pub(crate) mod eval;
pub(crate) mod generate;
pub(crate) mod gpu_bench;
pub(crate) mod ppl;
pub(crate) mod simulate;
pub(crate) mod sweep;
