//! CUDA kernels of the ClusterKV decode path, each the twin of a CPU operation in
//! `ckv-cluster`, `ckv-select` or `ckv-attn`.
//!
//! - [`SOURCES`]: the CUDA C sources (`kernels/*.cu`), always available, so that tools can
//!   compile them without this crate's `cuda` feature.
//! - With the `cuda` feature: [`compile_ptx`] compiles a source to PTX with NVRTC (loaded at
//!   run time through `cudarc`), and the `ckv-ptx` binary writes every kernel's PTX for
//!   every target architecture (`cargo xtask kernels` runs it, then `ptxas`).
//!
//! Work in progress (issue 6), compiled and ptxas-checked for sm_80 and sm_90 but not yet
//! run on a GPU:
//! - kernels: decode attention (flash-decoding over selected ids or a range, GQA aware,
//!   f16 KV, f32 accumulation, chunks merged after), ClusterKV selection (scores, bitonic
//!   ranking up to 4096 clusters, the budget filled with the last cluster cut), k-means
//!   (normalise, tiled cosine assignment, sizes, stable members, mean update);
//! - [`Gpu`]: a context with every source compiled by NVRTC for the device, and launchers
//!   over host slices for the GPU tests (`ckv-sim/tests/gpu.rs`, which skip without a GPU).
//!
//! Not yet: device-resident buffers and the GPU backend of `ckv-attn`'s pipeline, K/V
//! append, the GPU benchmark of `cargo xtask gpu-check` (CUDA events), tensor-core
//! assignment for the 2 ms clustering goal. The CPU path in `ckv-attn` is the complete
//! implementation.

#[cfg(feature = "cuda")]
mod compile;
#[cfg(feature = "cuda")]
mod gpu;
mod sources;

#[cfg(feature = "cuda")]
pub use compile::{KernelError, compile_ptx};
#[cfg(feature = "cuda")]
pub use gpu::Gpu;
pub use sources::{ARCHS, KernelSource, SOURCES};
