//! CUDA kernels of the ClusterKV decode path, each the twin of a CPU operation in
//! `ckv-core`, `ckv-cluster`, `ckv-select` or `ckv-attn`. The items named below in code
//! (not links) exist with the `cuda` feature.
//!
//! - [`SOURCES`]: the CUDA C sources (`kernels/*.cu`), always available, so that tools can
//!   compile them without this crate's `cuda` feature.
//! - With the `cuda` feature: `compile_ptx` compiles a source to PTX with NVRTC (loaded at
//!   run time through `cudarc`), and the `ckv-ptx` binary writes every kernel's PTX for
//!   every target architecture (`cargo xtask kernels` runs it, then `ptxas`).
//! - With the `cuda` feature, `Gpu`: a context with every source compiled by NVRTC for the device, and on it:
//!   - `DeviceKv`: a sequence's f16 KV of every KV head, appended one token at a time
//!     (`Gpu::append_kv`);
//!   - `DeviceIndex`: a sequence's cluster index (CSR, f16 centroids, any number of
//!     clusters) of every KV head, uploaded (`Gpu::upload_index`) or built by k-means on
//!     the GPU (`Gpu::cluster`);
//!   - `Gpu::decode_step`: the id lists of a step (ClusterKV's selection under either GQA
//!     policy, or every clustered token) and flash-decoding attention over them, or dense
//!     attention; results stay on the device until read;
//!   - `GpuTimer` and `L2Flush` for the GPU benchmark (CUDA events);
//!   - launchers over host slices (`Gpu::attention`, `Gpu::select`, `Gpu::kmeans`)
//!     that the GPU tests (`ckv-sim/tests/gpu.rs`) hold against the CPU path.
//!
//! `ckv-attn`'s decode pipeline runs on the GPU through these (its `cuda` feature).

#[cfg(feature = "cuda")]
mod compile;
#[cfg(feature = "cuda")]
mod gpu;
mod sources;

#[cfg(feature = "cuda")]
pub use compile::{KernelError, compile_ptx, default_include_dirs};
#[cfg(feature = "cuda")]
pub use gpu::ATTENTION_SHAPES;
#[cfg(feature = "cuda")]
pub use gpu::{
    DecodeScratch, DecodeStep, DeviceClustering, DeviceIndex, DeviceKv, Gpu, GpuTier, GpuTimer, IndexParts,
    L2Flush, PinnedKv,
};
pub use sources::{ARCHS, KernelSource, PRELUDE, SOURCES};
