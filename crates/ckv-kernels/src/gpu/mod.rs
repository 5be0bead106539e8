//! The kernels on a GPU through cudarc's driver API: a context and one stream, every
//! source compiled once by NVRTC for the device's architecture, device-resident KV and
//! indexes, the decode step, GPU k-means, and CUDA-event timing.

mod decode;
mod host;
mod index;
mod kv;
mod offload;
mod timing;

use std::path::PathBuf;
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream, DriverError, LaunchConfig};
use cudarc::nvrtc::Ptx;

use crate::{KernelError, SOURCES, compile_ptx};

pub use decode::{ATTENTION_SHAPES, DecodeScratch, DecodeStep};
pub use index::{DeviceClustering, DeviceIndex, IndexParts};
pub use kv::DeviceKv;
pub use offload::{GpuTier, PinnedKv};
pub use timing::{GpuTimer, L2Flush};

/// A GPU with every kernel loaded, and the stream all work goes to, in order.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    modules: Vec<(&'static str, Arc<CudaModule>)>,
    arch: &'static str,
    multiprocessors: usize,
}

/// The architecture name NVRTC takes for a compute capability, among those the kernels are
/// checked for (`sm_80` and newer as `sm_90`).
fn arch_of(major: i32, minor: i32) -> Result<&'static str, KernelError> {
    match (major, minor) {
        (8, _) => Ok("sm_80"),
        (m, _) if m >= 9 => Ok("sm_90"),
        _ => Err(KernelError::NoGpu(format!("compute capability {major}.{minor} is below 8.0"))),
    }
}

/// A driver error as a [`KernelError`].
fn driver(e: DriverError) -> KernelError {
    KernelError::Driver(e)
}

/// A one-dimensional launch of `blocks` blocks (`heads` along y) of `threads` threads.
fn grid(blocks: usize, heads: usize, threads: u32, shared_bytes: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks as u32, heads as u32, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: shared_bytes as u32,
    }
}

/// A size as the `int` a kernel takes, or a shape error naming it.
fn int(what: &str, value: usize) -> Result<i32, KernelError> {
    i32::try_from(value)
        .map_err(|_| KernelError::Shape(format!("{what} = {value} does not fit a kernel's int")))
}

impl Gpu {
    /// GPU `ordinal`, with every kernel compiled by NVRTC (headers such as `cuda_fp16.h`
    /// from `include_dirs`). [`KernelError::NoGpu`] where there is no driver or no device.
    pub fn open(ordinal: usize, include_dirs: &[PathBuf]) -> Result<Self, KernelError> {
        // SAFETY: only tries to dlopen libcuda under its usual names; no symbol is called.
        #[allow(unsafe_code)]
        let present = unsafe { cudarc::driver::sys::is_culib_present() };
        if !present {
            return Err(KernelError::NoGpu("no CUDA driver (libcuda) on this machine".into()));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| KernelError::NoGpu(format!("GPU {ordinal}: {e}")))?;
        let (major, minor) = ctx.compute_capability().map_err(driver)?;
        let arch = arch_of(major, minor)?;
        let multiprocessors = ctx
            .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(driver)?
            .max(1) as usize;
        let modules = SOURCES
            .iter()
            .map(|source| {
                let ptx = compile_ptx(source, arch, include_dirs)?;
                Ok((source.name, ctx.load_module(Ptx::from_src(ptx)).map_err(driver)?))
            })
            .collect::<Result<_, KernelError>>()?;
        Ok(Self { stream: ctx.default_stream(), ctx, modules, arch, multiprocessors })
    }

    /// Kernel `name` of source `module`.
    fn function(&self, module: &str, name: &str) -> Result<CudaFunction, KernelError> {
        let m = self
            .modules
            .iter()
            .find(|(n, _)| *n == module)
            .map(|(_, m)| m)
            .ok_or_else(|| KernelError::Shape(format!("no kernel source {module}")))?;
        m.load_function(name).map_err(driver)
    }

    /// The device's name and the architecture the kernels were compiled for.
    pub fn describe(&self) -> String {
        format!(
            "{} ({}, {} SMs)",
            self.ctx.name().unwrap_or_else(|_| "unknown GPU".into()),
            self.arch,
            self.multiprocessors
        )
    }
}
