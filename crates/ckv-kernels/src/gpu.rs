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

/// Most clusters the selection kernel ranks, and its largest head dimension.
const SELECT_MAX_CLUSTERS: usize = 4096;
const SELECT_MAX_D: usize = 256;

/// Rows of a k-means assignment block and centroids per shared-memory tile.
const ASSIGN_ROWS: usize = 32;
const ASSIGN_CENTROIDS: usize = 32;

/// A GPU with every kernel loaded.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    modules: Vec<(&'static str, Arc<CudaModule>)>,
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
        let modules = SOURCES
            .iter()
            .map(|source| {
                let ptx = compile_ptx(source, arch, include_dirs)?;
                Ok((source.name, ctx.load_module(Ptx::from_src(ptx)).map_err(KernelError::Driver)?))
            })
            .collect::<Result<_, KernelError>>()?;
        Ok(Self { stream: ctx.default_stream(), ctx, modules, arch })
    }

    /// Kernel `name` of source `module`.
    fn function(&self, module: &str, name: &str) -> Result<cudarc::driver::CudaFunction, KernelError> {
        let (_, m) = self.modules.iter().find(|(n, _)| *n == module).expect("every source is loaded");
        m.load_function(name).map_err(KernelError::Driver)
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
        let chunk = self.function("attention", &format!("attention_chunk_g{g}_d{d}"))?;
        let merge = self.function("attention", &format!("attention_merge_d{d}"))?;
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

impl Gpu {
    /// ClusterKV's selection for one KV head: each of the `queries.len() / (rows * d)`
    /// selections sums its `rows` query rows, ranks the clusters of the index (`centroids`
    /// `[k, d]`, `sizes`, `offsets` `[k]` into `members`) and takes `count` ids, the last
    /// cluster cut. Returns each selection's ids in rank order.
    #[allow(clippy::too_many_arguments)]
    pub fn select(
        &self,
        queries: &[f32],
        rows: usize,
        d: usize,
        centroids: &[f32],
        sizes: &[u32],
        offsets: &[u32],
        members: &[u32],
        count: usize,
    ) -> Result<Vec<Vec<u32>>, KernelError> {
        let k = sizes.len();
        let selections = queries.len() / (rows * d).max(1);
        if k == 0 || k > SELECT_MAX_CLUSTERS || d == 0 || d > SELECT_MAX_D {
            return Err(KernelError::Shape(format!(
                "{k} clusters of dimension {d}: at most {SELECT_MAX_CLUSTERS} of at most {SELECT_MAX_D}"
            )));
        }
        if queries.len() != selections * rows * d || centroids.len() != k * d || offsets.len() < k {
            return Err(KernelError::Shape(format!(
                "queries {} centroids {} offsets {}",
                queries.len(),
                centroids.len(),
                offsets.len()
            )));
        }
        let total: usize = sizes.iter().map(|&s| s as usize).sum();
        if count > total || members.len() < total {
            return Err(KernelError::Shape(format!("count {count} of {total} clustered tokens")));
        }
        let s = &self.stream;
        let driver = KernelError::Driver;
        let q_dev = s.clone_htod(queries).map_err(driver)?;
        let c_dev = s.clone_htod(centroids).map_err(driver)?;
        let sizes_dev = s.clone_htod(sizes).map_err(driver)?;
        let offsets_dev = s.clone_htod(&offsets[..k]).map_err(driver)?;
        let members_dev = s.clone_htod(members).map_err(driver)?;
        let stride = count.max(1);
        let mut out = s.alloc_zeros::<u32>(selections * stride).map_err(driver)?;
        let f = self.function("select", "clusterkv_select")?;
        let (rows_i, d_i, k_i, count_i, stride_i) =
            (rows as i32, d as i32, k as i32, count as i32, stride as i32);
        let (zero, per_head) = (0i64, selections as i32);
        let mut launch = s.launch_builder(&f);
        launch.arg(&q_dev).arg(&rows_i).arg(&d_i).arg(&c_dev).arg(&zero).arg(&per_head);
        launch.arg(&sizes_dev).arg(&offsets_dev).arg(&members_dev).arg(&zero).arg(&zero);
        launch.arg(&k_i).arg(&count_i).arg(&mut out).arg(&stride_i);
        let grid = LaunchConfig {
            grid_dim: (selections as u32, 1, 1),
            block_dim: (1024, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the arguments match `clusterkv_select` in order and type; one head (all
        // strides 0); k <= 4096 and d <= 256 as its shared arrays need; offsets and sizes
        // index inside members (count <= their total was checked).
        #[allow(unsafe_code)]
        unsafe { launch.launch(grid) }.map_err(driver)?;
        let flat = s.clone_dtoh(&out).map_err(driver)?;
        Ok(flat.chunks(stride).map(|c| c[..count].to_vec()).collect())
    }

    /// k-means of one head's keys (`[n, d]` f16) from the initial centroids `[k, d]`, as
    /// `ckv_cluster::kmeans` runs it: assign, then update and re-assign until no label
    /// changes or `max_iters` rounds; the returned centroids are the means of the returned
    /// labels. Returns `(labels, centroids, iterations)`.
    pub fn kmeans(
        &self,
        keys: &[f16],
        d: usize,
        initial: &[f32],
        max_iters: usize,
    ) -> Result<(Vec<u32>, Vec<f32>, usize), KernelError> {
        let (n, k) = (keys.len() / d.max(1), initial.len() / d.max(1));
        if d == 0
            || k == 0
            || k > SELECT_MAX_CLUSTERS
            || n < k
            || keys.len() != n * d
            || initial.len() != k * d
        {
            return Err(KernelError::Shape(format!("{n} rows into {k} clusters of dimension {d}")));
        }
        let s = &self.stream;
        let driver = KernelError::Driver;
        let keys_dev = s.clone_htod(keys).map_err(driver)?;
        let mut x = s.alloc_zeros::<f32>(n * d).map_err(driver)?;
        let mut xn = s.alloc_zeros::<f32>(n * d).map_err(driver)?;
        let mut centroids = s.clone_htod(initial).map_err(driver)?;
        let mut cn = s.alloc_zeros::<f32>(k * d).map_err(driver)?;
        let mut labels = s.clone_htod(&vec![u32::MAX; n]).map_err(driver)?;
        let mut sizes = s.alloc_zeros::<u32>(k).map_err(driver)?;
        let mut offsets = s.alloc_zeros::<u32>(k).map_err(driver)?;
        let mut members = s.alloc_zeros::<u32>(n).map_err(driver)?;
        let (n_i, k_i, d_i) = (n as i32, k as i32, d as i32);
        let one = |blocks: usize, threads: u32, shared: usize| LaunchConfig {
            grid_dim: (blocks as u32, 1, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: shared as u32,
        };
        let normalize = self.function("kmeans", "kmeans_normalize")?;
        let assign = self.function("kmeans", "kmeans_assign")?;
        let count = self.function("kmeans", "kmeans_sizes")?;
        let list = self.function("kmeans", "kmeans_members")?;
        let update = self.function("kmeans", "kmeans_update")?;
        // SAFETY (every launch below): the arguments match the kernels of `kmeans.cu` in
        // order and type, for one head (blockIdx.y = 0) of n rows, k <= 4096 clusters and
        // dimension d; the buffers have the sizes the kernels index.
        #[allow(unsafe_code)]
        unsafe {
            let mut l = s.launch_builder(&normalize);
            l.arg(&keys_dev).arg(&n_i).arg(&d_i).arg(&mut x).arg(&mut xn);
            l.launch(one(n.div_ceil(4), 128, 0)).map_err(driver)?;
            // The initial unit centroids: an update with every cluster empty keeps them.
            let mut l = s.launch_builder(&update);
            l.arg(&x).arg(&n_i).arg(&k_i).arg(&d_i).arg(&sizes).arg(&offsets).arg(&members);
            l.arg(&mut centroids).arg(&mut cn);
            l.launch(one(k, 128, 0)).map_err(driver)?;
        }
        let assign_step = |labels: &mut cudarc::driver::CudaSlice<u32>,
                           cn: &cudarc::driver::CudaSlice<f32>| {
            let mut changed = s.alloc_zeros::<u32>(1).map_err(driver)?;
            let shared = (ASSIGN_ROWS + ASSIGN_CENTROIDS) * d * 4;
            // SAFETY: as above; dynamic shared memory of (32 + 32) * d floats.
            #[allow(unsafe_code)]
            unsafe {
                let mut l = s.launch_builder(&assign);
                l.arg(&xn).arg(&n_i).arg(cn).arg(&k_i).arg(&d_i).arg(labels).arg(&mut changed);
                l.launch(one(n.div_ceil(ASSIGN_ROWS), 256, shared)).map_err(driver)?;
            }
            Ok::<u32, KernelError>(s.clone_dtoh(&changed).map_err(driver)?[0])
        };
        let update_step = |labels: &cudarc::driver::CudaSlice<u32>,
                           sizes: &mut cudarc::driver::CudaSlice<u32>,
                           offsets: &mut cudarc::driver::CudaSlice<u32>,
                           members: &mut cudarc::driver::CudaSlice<u32>,
                           centroids: &mut cudarc::driver::CudaSlice<f32>,
                           cn: &mut cudarc::driver::CudaSlice<f32>| {
            // SAFETY: as above.
            #[allow(unsafe_code)]
            unsafe {
                let mut l = s.launch_builder(&count);
                l.arg(labels).arg(&n_i).arg(&k_i).arg(&mut *sizes).arg(&mut *offsets);
                l.launch(one(1, 1024, 0)).map_err(driver)?;
                let mut l = s.launch_builder(&list);
                l.arg(labels).arg(&n_i).arg(&k_i).arg(&*offsets).arg(&mut *members);
                l.launch(one(k, 256, 0)).map_err(driver)?;
                let mut l = s.launch_builder(&update);
                l.arg(&x).arg(&n_i).arg(&k_i).arg(&d_i).arg(&*sizes).arg(&*offsets).arg(&*members);
                l.arg(centroids).arg(cn);
                l.launch(one(k, 128, 0)).map_err(driver)?;
            }
            Ok::<(), KernelError>(())
        };
        let mut dirty = assign_step(&mut labels, &cn)? > 0;
        let mut iterations = 0;
        while dirty && iterations < max_iters {
            update_step(&labels, &mut sizes, &mut offsets, &mut members, &mut centroids, &mut cn)?;
            dirty = assign_step(&mut labels, &cn)? > 0;
            iterations += 1;
        }
        if dirty {
            update_step(&labels, &mut sizes, &mut offsets, &mut members, &mut centroids, &mut cn)?;
        }
        Ok((s.clone_dtoh(&labels).map_err(driver)?, s.clone_dtoh(&centroids).map_err(driver)?, iterations))
    }
}
