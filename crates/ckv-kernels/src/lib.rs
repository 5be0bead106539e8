//! CUDA kernels of the ClusterKV decode path.
//!
//! This crate will hold the CUDA C sources (`kernels/*.cu`) and safe launchers over
//! `cudarc` behind the `cuda` feature, each kernel the twin of a CPU operation in
//! `ckv-cluster`, `ckv-select` or `ckv-attn`. **No kernel exists yet**: they arrive in a
//! later release. Until then the crate is empty on purpose, so that nothing pretends to
//! run on a GPU; the CPU path in `ckv-attn` is the complete implementation.
//!
//! The `cuda` feature is off by default: the workspace builds and every CPU test runs on
//! a machine without a CUDA toolkit or a GPU.
