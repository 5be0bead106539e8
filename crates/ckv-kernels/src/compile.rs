//! NVRTC compilation of the sources to PTX.

use std::path::PathBuf;

use cudarc::nvrtc::{CompileOptions, compile_ptx_with_opts};

use crate::{KernelSource, PRELUDE};

/// Errors of kernel compilation.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// libnvrtc could not be loaded.
    #[error(
        "libnvrtc (CUDA 13) was not found: install the CUDA toolkit or the nvidia-cuda-nvrtc wheel \
         and put its lib folder on LD_LIBRARY_PATH (`cargo xtask kernels` does both)"
    )]
    NoNvrtc,
    /// No GPU to run on: no driver, no device, or one too old.
    #[error("no usable GPU: {0}")]
    NoGpu(String),
    /// The CUDA driver failed.
    #[error("CUDA driver error: {0}")]
    Driver(cudarc::driver::DriverError),
    /// Inputs of the wrong shape.
    #[error("bad kernel input: {0}")]
    Shape(String),
    /// A step of the GPU's device tier found more missing rows than free slots (the tier's
    /// sizing rules it out): those rows went unheld and the step's attention read wrong rows.
    #[error("head {head} of the device tier ran out of slots: {rows} rows went unheld")]
    TierFull {
        /// The KV head.
        head: usize,
        /// Rows its steps could not place, so far.
        rows: u64,
    },
    /// NVRTC rejected a source.
    #[error("kernel {name} does not compile for {arch}: {log}")]
    Compile {
        /// The source.
        name: &'static str,
        /// The target architecture.
        arch: &'static str,
        /// NVRTC's message and log.
        log: String,
    },
}

/// Where the CUDA headers (`cuda_fp16.h`) may be: the folders of `CKV_CUDA_INCLUDE` (a
/// path list; `cargo xtask kernels` and `gpu-check` set it to their toolkit), then
/// `$CUDA_HOME/include` and `/usr/local/cuda/include`.
pub fn default_include_dirs() -> Vec<PathBuf> {
    let listed = std::env::var_os("CKV_CUDA_INCLUDE").map(|v| std::env::split_paths(&v).collect::<Vec<_>>());
    let cuda_home = std::env::var_os("CUDA_HOME").map(|h| PathBuf::from(h).join("include"));
    listed.into_iter().flatten().chain(cuda_home).chain([PathBuf::from("/usr/local/cuda/include")]).collect()
}

/// Compiles `source` to PTX for `arch` (`"sm_80"`, `"sm_90"`, ...), with `include_dirs` on
/// the include path (the folder of `cuda_fp16.h` where no toolkit is installed).
pub fn compile_ptx(
    source: &KernelSource,
    arch: &'static str,
    include_dirs: &[PathBuf],
) -> Result<String, KernelError> {
    // SAFETY: only tries to dlopen libnvrtc under its usual names; no symbol is called.
    #[allow(unsafe_code)]
    let present = unsafe { cudarc::nvrtc::sys::is_culib_present() };
    if !present {
        return Err(KernelError::NoNvrtc);
    }
    let opts = CompileOptions {
        arch: Some(arch),
        include_paths: include_dirs.iter().map(|d| d.display().to_string()).collect(),
        options: vec!["--std=c++17".into()],
        name: Some(format!("{}.cu", source.name)),
        ..Default::default()
    };
    compile_ptx_with_opts(format!("{PRELUDE}\n{}", source.code), opts)
        .map(|ptx| ptx.to_src())
        .map_err(|e| KernelError::Compile { name: source.name, arch, log: e.to_string() })
}
