//! CUDA kernels of the ClusterKV decode path, each the twin of a CPU operation in
//! `ckv-cluster`, `ckv-select` or `ckv-attn`.
//!
//! - [`SOURCES`]: the CUDA C sources (`kernels/*.cu`), always available, so that tools can
//!   compile them without this crate's `cuda` feature.
//! - With the `cuda` feature: [`compile_ptx`] compiles a source to PTX with NVRTC (loaded at
//!   run time through `cudarc`), and the `ckv-ptx` binary writes every kernel's PTX for
//!   every target architecture (`cargo xtask kernels` runs it, then `ptxas`).
//!
//! Work in progress (issue 6): decode attention (flash-decoding over selected ids, GQA
//! aware, f16 KV, f32 accumulation) is written; clustering, ranking, selection and the GPU
//! pipeline backend are not yet. Nothing runs on a GPU yet: the CPU path in `ckv-attn` is
//! the complete implementation.

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
