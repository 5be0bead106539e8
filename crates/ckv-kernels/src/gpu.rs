//! The kernels on a GPU through cudarc's driver API: a context, the sources compiled once
//! by NVRTC for the device's architecture, and launchers over host slices that the GPU
//! tests hold against the CPU path.

use std::path::PathBuf;
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaModule, CudaStream, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::Ptx;
use half::f16;

use crate::{KernelError, SOURCES, compile_ptx};

/// Threads of an attention block (4 warps), as in `attention.cu`.
const ATTENTION_THREADS: u32 = 128;

/// Group sizes and head dimensions `attention.cu` instantiates.
const ATTENTION_SHAPES: [(usize, usize); 9] =
    [(1, 64), (2, 64), (3, 64), (4, 64), (1, 128), (2, 128), (3, 128), (4, 128), (8, 128)];

/// A GPU with every kernel loaded.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    attention: Arc<CudaModule>,
    arch: &'static str,
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
        let (major, minor) = ctx.compute_capability().map_err(KernelError::Driver)?;
        let arch = arch_of(major, minor)?;
        let source = SOURCES.iter().find(|s| s.name == "attention").expect("attention.cu is a source");
        let ptx = compile_ptx(source, arch, include_dirs)?;
        let attention = ctx.load_module(Ptx::from_src(ptx)).map_err(KernelError::Driver)?;
        Ok(Self { stream: ctx.default_stream(), ctx, attention, arch })
    }

    /// The device's name and the architecture the kernels were compiled for.
    pub fn describe(&self) -> String {
        format!("{} ({})", self.ctx.name().unwrap_or_else(|_| "unknown GPU".into()), self.arch)
    }

    /// Decode attention of `g` query rows (`queries`, `[g, d]`) over the rows `ids` of
    /// `keys`/`values` (`[_, d]` f16), or over rows `0..n` when `ids` is `None`; ids split
    /// into chunks of `chunk_len`, merged after. Returns `[g, d]`.
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        &self,
        keys: &[f16],
        values: &[f16],
        d: usize,
        queries: &[f32],
        ids: Option<&[u32]>,
        n: usize,
        scale: f32,
        chunk_len: usize,
    ) -> Result<Vec<f32>, KernelError> {
        let g = queries.len() / d.max(1);
        if !ATTENTION_SHAPES.contains(&(g, d)) || queries.len() != g * d {
            return Err(KernelError::Shape(format!(
                "group {g} x d {d}: instantiated are {ATTENTION_SHAPES:?}"
            )));
        }
        if ids.is_some_and(|ids| ids.len() != n)
            || keys.len() != values.len()
            || !keys.len().is_multiple_of(d.max(1))
        {
            return Err(KernelError::Shape(format!("{n} ids over {} key rows", keys.len() / d)));
        }
        let rows = keys.len() / d;
        if let Some(&bad) = ids.and_then(|ids| ids.iter().find(|&&i| i as usize >= rows)) {
            return Err(KernelError::Shape(format!("id {bad} beyond {rows} rows")));
        }
        if ids.is_none() && n > rows {
            return Err(KernelError::Shape(format!("{n} rows asked of {rows}")));
        }
        let chunk_len = chunk_len.max(1);
        let chunks = n.div_ceil(chunk_len).max(1);
        let s = &self.stream;
        let driver = KernelError::Driver;
        let (k_dev, v_dev) = (s.clone_htod(keys).map_err(driver)?, s.clone_htod(values).map_err(driver)?);
        let q_dev = s.clone_htod(queries).map_err(driver)?;
        let ids_dev = s.clone_htod(ids.unwrap_or(&[0])).map_err(driver)?;
        let n_dev = s.clone_htod(&[n as i32]).map_err(driver)?;
        let mut part_out = s.alloc_zeros::<f32>(g * chunks * d).map_err(driver)?;
        let mut part_max = s.alloc_zeros::<f32>(g * chunks).map_err(driver)?;
        let mut part_sum = s.alloc_zeros::<f32>(g * chunks).map_err(driver)?;
        let mut out = s.alloc_zeros::<f32>(g * d).map_err(driver)?;
        let chunk = self.attention.load_function(&format!("attention_chunk_g{g}_d{d}")).map_err(driver)?;
        let merge = self.attention.load_function(&format!("attention_merge_d{d}")).map_err(driver)?;
        let (head_stride, heads_per_kv, ids_stride) = (0i64, 1i32, n as i32);
        let (chunk_len, chunks_i) = (chunk_len as i32, chunks as i32);
        let mut launch = s.launch_builder(&chunk);
        launch.arg(&k_dev).arg(&v_dev).arg(&head_stride).arg(&heads_per_kv).arg(&q_dev);
        let null = 0u64;
        match ids {
            Some(_) => launch.arg(&ids_dev),
            None => launch.arg(&null),
        };
        launch.arg(&ids_stride).arg(&n_dev).arg(&chunk_len).arg(&scale);
        launch.arg(&mut part_out).arg(&mut part_max).arg(&mut part_sum);
        let grid = LaunchConfig {
            grid_dim: (chunks as u32, 1, 1),
            block_dim: (ATTENTION_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the arguments match `attention_chunk_g{g}_d{d}` in order and type; the
        // buffers hold the sizes the kernel reads and writes for one head of `g` rows and
        // `chunks` chunks; every id was checked against the rows.
        #[allow(unsafe_code)]
        unsafe { launch.launch(grid) }.map_err(driver)?;
        let mut launch = s.launch_builder(&merge);
        launch.arg(&part_out).arg(&part_max).arg(&part_sum).arg(&chunks_i).arg(&mut out);
        let grid =
            LaunchConfig { grid_dim: (g as u32, 1, 1), block_dim: (d as u32, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: the arguments match `attention_merge_d{d}`; `g` rows of `chunks` parts.
        #[allow(unsafe_code)]
        unsafe { launch.launch(grid) }.map_err(driver)?;
        s.clone_dtoh(&out).map_err(driver)
    }
}
