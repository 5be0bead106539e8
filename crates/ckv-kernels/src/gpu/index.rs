//! Cluster indexes on the device: uploaded from the CPU's CSR layout, or built on the GPU
//! by k-means over a range of a device KV.

use std::ops::Range;

use cudarc::driver::{CudaSlice, PushKernelArg, sys};
use half::f16;

use super::{Gpu, driver, grid, int};
use crate::{DeviceKv, KernelError};

/// Largest head dimension of the selection kernel's shared query.
pub(super) const MAX_D: usize = 256;

/// Rows of a k-means assignment block and centroids per shared-memory tile, and rows per
/// block of the member count (`kmeans.cu`).
const ASSIGN_ROWS: usize = 64;
const ASSIGN_CENTROIDS: usize = 32;
const COUNT_ROWS: usize = 1024;

/// Bytes of dynamic shared memory of a k-means assignment block for rows of `dp` halves (the
/// head dimension rounded up to 16): its rows and a tile of centroids, `dp + 8` halves apart.
/// Over the 48 KiB a kernel gets without opting in for d > 240 (`cluster` opts in).
fn assign_shared_bytes(dp: usize) -> usize {
    (ASSIGN_ROWS + ASSIGN_CENTROIDS) * (dp + 8) * size_of::<f16>()
}

/// One head's cluster index in the CSR layout of `ckv_index::ClusterIndex`.
#[derive(Debug, Clone, Copy)]
pub struct IndexParts<'a> {
    /// Centroids `[clusters, d]` rounded to f16 (`ClusterIndex::centroids_f16`), what the
    /// selection scores.
    pub centroids: &'a [f16],
    /// Members per cluster `[clusters]`.
    pub sizes: &'a [u32],
    /// Where each cluster's members start (at least `clusters` values; a trailing total is
    /// ignored).
    pub offsets: &'a [u32],
    /// Token ids, grouped by cluster.
    pub members: &'a [u32],
}

/// The cluster index of every KV head of a sequence on the device; every head has the same
/// number of clusters (any number) and of clustered tokens, as ClusterKV's clusterings give
/// them. Centroids are held in f16 (`[heads, clusters, d]`), as the selection reads them.
pub struct DeviceIndex {
    pub(super) centroids: CudaSlice<f16>,
    pub(super) sizes: CudaSlice<u32>,
    pub(super) offsets: CudaSlice<u32>,
    pub(super) members: CudaSlice<u32>,
    heads: usize,
    clusters: usize,
    tokens: usize,
    d: usize,
}

impl DeviceIndex {
    /// KV heads.
    pub fn heads(&self) -> usize {
        self.heads
    }

    /// Clusters per head.
    pub fn clusters(&self) -> usize {
        self.clusters
    }

    /// Clustered tokens per head.
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// Head dimension.
    pub fn d(&self) -> usize {
        self.d
    }
}

/// A k-means run on the GPU: the index it built and every token's label.
pub struct DeviceClustering {
    /// The index: centroids are the means of their members' keys, rounded to f16.
    pub index: DeviceIndex,
    /// Labels `[heads, tokens]`.
    labels: CudaSlice<u32>,
    /// The centroids in f32 `[heads, clusters, d]`, as k-means computed them.
    centroids: CudaSlice<f32>,
    /// Update rounds run (the most of any head).
    pub iterations: usize,
}

/// Host copies of one head of a device index: f16 centroids, sizes, offsets, members.
pub type IndexDownload = (Vec<f16>, Vec<u32>, Vec<u32>, Vec<u32>);

impl Gpu {
    /// Uploads the index of every head (any number of clusters); they must agree in
    /// clusters, tokens and `d`.
    pub fn upload_index(&self, heads: &[IndexParts<'_>], d: usize) -> Result<DeviceIndex, KernelError> {
        let first = heads.first().ok_or_else(|| KernelError::Shape("an index of no heads".into()))?;
        let (clusters, tokens) = (first.sizes.len(), first.members.len());
        if clusters == 0 || d == 0 || d > MAX_D {
            return Err(KernelError::Shape(format!(
                "{clusters} clusters of dimension {d}: at least one, of dimension at most {MAX_D}"
            )));
        }
        for (h, p) in heads.iter().enumerate() {
            let total: usize = p.sizes.iter().map(|&s| s as usize).sum();
            let bad_offset = p.offsets.iter().zip(p.sizes).any(|(&o, &s)| o as usize + s as usize > tokens);
            if p.sizes.len() != clusters
                || p.centroids.len() != clusters * d
                || p.offsets.len() < clusters
                || p.members.len() != tokens
                || total != tokens
                || bad_offset
            {
                return Err(KernelError::Shape(format!(
                    "head {h}: {} clusters, {} centroid values, {} offsets, {} members (sizes sum to \
                     {total}) against {clusters} clusters of {tokens} tokens, d {d}",
                    p.sizes.len(),
                    p.centroids.len(),
                    p.offsets.len(),
                    p.members.len()
                )));
            }
        }
        let s = &self.stream;
        let flat = |part: &dyn Fn(&IndexParts<'_>) -> Vec<u32>| -> Vec<u32> {
            heads.iter().flat_map(part).collect()
        };
        let centroids: Vec<f16> = heads.iter().flat_map(|p| p.centroids.iter().copied()).collect();
        // A device buffer is never empty: an index of no tokens keeps one unused member.
        let mut members = flat(&|p| p.members.to_vec());
        if members.is_empty() {
            members.push(0);
        }
        Ok(DeviceIndex {
            centroids: s.clone_htod(&centroids).map_err(driver)?,
            sizes: s.clone_htod(&flat(&|p| p.sizes.to_vec())).map_err(driver)?,
            offsets: s.clone_htod(&flat(&|p| p.offsets[..clusters].to_vec())).map_err(driver)?,
            members: s.clone_htod(&members).map_err(driver)?,
            heads: heads.len(),
            clusters,
            tokens,
            d,
        })
    }

    /// Host copies of head `head` of an index: f16 centroids, sizes, offsets, members.
    pub fn download_index(&self, index: &DeviceIndex, head: usize) -> Result<IndexDownload, KernelError> {
        if head >= index.heads {
            return Err(KernelError::Shape(format!("head {head} of {}", index.heads)));
        }
        let (k, n, d) = (index.clusters, index.tokens, index.d);
        let s = &self.stream;
        Ok((
            s.clone_dtoh(&index.centroids.slice(head * k * d..(head + 1) * k * d)).map_err(driver)?,
            s.clone_dtoh(&index.sizes.slice(head * k..(head + 1) * k)).map_err(driver)?,
            s.clone_dtoh(&index.offsets.slice(head * k..(head + 1) * k)).map_err(driver)?,
            s.clone_dtoh(&index.members.slice(head * n..(head + 1) * n)).map_err(driver)?,
        ))
    }

    /// The f32 centroids of head `head` of a clustering, `[clusters, d]`: the means k-means
    /// computed, before the index's rounding to f16.
    pub fn download_centroids(
        &self,
        clustering: &DeviceClustering,
        head: usize,
    ) -> Result<Vec<f32>, KernelError> {
        let index = &clustering.index;
        if head >= index.heads {
            return Err(KernelError::Shape(format!("head {head} of {}", index.heads)));
        }
        let per_head = index.clusters * index.d;
        self.stream
            .clone_dtoh(&clustering.centroids.slice(head * per_head..(head + 1) * per_head))
            .map_err(driver)
    }

    /// The labels of head `head` of a clustering.
    pub fn download_labels(
        &self,
        clustering: &DeviceClustering,
        head: usize,
    ) -> Result<Vec<u32>, KernelError> {
        let n = clustering.index.tokens;
        if head >= clustering.index.heads {
            return Err(KernelError::Shape(format!("head {head} of {}", clustering.index.heads)));
        }
        self.stream.clone_dtoh(&clustering.labels.slice(head * n..(head + 1) * n)).map_err(driver)
    }

    /// k-means of the keys of `tokens` of every head of `kv`, as `ckv_cluster::kmeans` runs
    /// it: rows normalised; assign by best cosine (ties to the lower id), then update each
    /// non-empty centroid to the mean of its members' raw keys (f32 sums in member order)
    /// and re-assign, until no label of any head changes or `max_iters` rounds. `initial`
    /// holds the starting centroids `[heads, k, d]`; `d` is at most 256. Members are token
    /// ids, ascending within each cluster. The cosines are tensor-core products of f16 unit
    /// vectors with f32 sums: a row whose two best centroids are within about 2e-3 of each
    /// other may take either, where the CPU's f32 products pick one. Any number of clusters;
    /// the index holds the final centroids rounded to f16 (nearest, ties to even, as
    /// `half::f16::from_f32`), the clustering keeps them in f32 too.
    pub fn cluster(
        &self,
        kv: &DeviceKv,
        tokens: Range<usize>,
        initial: &[f32],
        max_iters: usize,
    ) -> Result<DeviceClustering, KernelError> {
        let (heads, d, n) = (kv.heads(), kv.d(), tokens.len());
        let k = initial.len() / (heads * d);
        if k == 0 || d > MAX_D || n < k || initial.len() != heads * k * d || tokens.end > kv.len() {
            return Err(KernelError::Shape(format!(
                "tokens {tokens:?} of {} into {k} clusters ({} initial values) of dimension {d}, {heads} heads",
                kv.len(),
                initial.len()
            )));
        }
        let s = &self.stream;
        let dp = d.next_multiple_of(16);
        let blocks = n.div_ceil(COUNT_ROWS);
        let mut x = s.alloc_zeros::<f32>(heads * n * d).map_err(driver)?;
        let mut xn = s.alloc_zeros::<f16>(heads * n * dp).map_err(driver)?;
        let mut centroids = s.clone_htod(initial).map_err(driver)?;
        let mut cn = s.alloc_zeros::<f16>(heads * k * dp).map_err(driver)?;
        let mut labels = s.clone_htod(&vec![u32::MAX; heads * n]).map_err(driver)?;
        let mut counts = s.alloc_zeros::<u32>(heads * k * blocks).map_err(driver)?;
        let mut sizes = s.alloc_zeros::<u32>(heads * k).map_err(driver)?;
        let mut offsets = s.alloc_zeros::<u32>(heads * k).map_err(driver)?;
        let mut members = s.alloc_zeros::<u32>(heads * n).map_err(driver)?;
        let mut changed = s.alloc_zeros::<u32>(heads).map_err(driver)?;
        let (n_i, k_i, d_i, dp_i, blocks_i) = (
            int("tokens", n)?,
            int("clusters", k)?,
            int("d", d)?,
            int("padded d", dp)?,
            int("blocks", blocks)?,
        );
        let first = u32::try_from(tokens.start).map_err(|_| KernelError::Shape(format!("{tokens:?}")))?;
        let stride = kv.head_stride() as i64;
        let normalize = self.function("kmeans", "kmeans_normalize")?;
        let assign = self.function("kmeans", "kmeans_assign")?;
        let count = self.function("kmeans", "kmeans_block_counts")?;
        let scan = self.function("kmeans", "kmeans_scan")?;
        let scatter = self.function("kmeans", "kmeans_scatter")?;
        let update = self.function("kmeans", "kmeans_update")?;
        let shared = assign_shared_bytes(dp);
        // Beyond 48 KiB (d > 240) a launch fails unless the kernel opts in.
        assign
            .set_attribute(
                sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                int("assignment shared bytes", shared)?,
            )
            .map_err(driver)?;
        let keys = kv.keys.slice(tokens.start * d..);
        // SAFETY (every launch below): the arguments match the kernels of `kmeans.cu` in
        // order and type, for `heads` heads (blockIdx.y, or blockIdx.x for kmeans_scan) of
        // n rows, k clusters of dimension d (padded to dp); the buffers have the sizes the
        // kernels index (beyond 4096 clusters the count adds into `counts`, [heads, k,
        // blocks], and the scatter advances it in place); the assignment's dynamic shared
        // memory is `assign_shared_bytes(dp)`, which `assign` is allowed above (at most 50688
        // bytes for d <= 256, below every supported architecture's opt-in limit).
        // The members of the current labels: counts per block, their scan, the scatter.
        let list = |labels: &CudaSlice<u32>,
                    counts: &mut CudaSlice<u32>,
                    sizes: &mut CudaSlice<u32>,
                    offsets: &mut CudaSlice<u32>,
                    members: &mut CudaSlice<u32>| {
            #[allow(unsafe_code)]
            unsafe {
                let mut l = s.launch_builder(&count);
                l.arg(labels).arg(&n_i).arg(&k_i).arg(&mut *counts);
                l.launch(grid(blocks, heads, 256, 0)).map_err(driver)?;
                let mut l = s.launch_builder(&scan);
                l.arg(&mut *counts).arg(&n_i).arg(&k_i).arg(&blocks_i).arg(sizes).arg(offsets);
                l.launch(grid(heads, 1, 1024, 0)).map_err(driver)?;
                let mut l = s.launch_builder(&scatter);
                l.arg(labels).arg(&n_i).arg(&k_i).arg(&mut *counts).arg(&first).arg(members);
                l.launch(grid(blocks, heads, 32, 0)).map_err(driver)?;
            }
            Ok::<(), KernelError>(())
        };
        // Every non-empty centroid to the mean of its members; the unit copies.
        let mean = |x: &CudaSlice<f32>,
                    sizes: &CudaSlice<u32>,
                    offsets: &CudaSlice<u32>,
                    members: &CudaSlice<u32>,
                    centroids: &mut CudaSlice<f32>,
                    cn: &mut CudaSlice<f16>| {
            #[allow(unsafe_code)]
            unsafe {
                let mut l = s.launch_builder(&update);
                l.arg(x).arg(&n_i).arg(&k_i).arg(&d_i).arg(&dp_i).arg(&first).arg(sizes).arg(offsets);
                l.arg(members).arg(centroids).arg(cn);
                l.launch(grid(k, heads, 128, 0)).map_err(driver)?;
            }
            Ok::<(), KernelError>(())
        };
        let mut round = |first_round: bool| -> Result<bool, KernelError> {
            if first_round {
                #[allow(unsafe_code)]
                unsafe {
                    let mut l = s.launch_builder(&normalize);
                    l.arg(&keys).arg(&stride).arg(&n_i).arg(&d_i).arg(&dp_i).arg(&mut x).arg(&mut xn);
                    l.launch(grid(n.div_ceil(4), heads, 128, 0)).map_err(driver)?;
                }
            } else {
                list(&labels, &mut counts, &mut sizes, &mut offsets, &mut members)?;
            }
            // Sizes are all zero in the first round: the update keeps the initial
            // centroids and computes their unit copies.
            mean(&x, &sizes, &offsets, &members, &mut centroids, &mut cn)?;
            #[allow(unsafe_code)]
            unsafe {
                s.memset_zeros(&mut changed).map_err(driver)?;
                let mut l = s.launch_builder(&assign);
                l.arg(&xn).arg(&n_i).arg(&cn).arg(&k_i).arg(&dp_i).arg(&mut labels).arg(&mut changed);
                l.launch(grid(n.div_ceil(ASSIGN_ROWS), heads, 128, shared)).map_err(driver)?;
            }
            Ok(s.clone_dtoh(&changed).map_err(driver)?.iter().any(|&c| c > 0))
        };
        let mut dirty = round(true)?;
        let mut iterations = 0;
        while dirty && iterations < max_iters {
            dirty = round(false)?;
            iterations += 1;
        }
        // The index of the final labels: sizes, members, and centroids as their means.
        list(&labels, &mut counts, &mut sizes, &mut offsets, &mut members)?;
        if dirty {
            mean(&x, &sizes, &offsets, &members, &mut centroids, &mut cn)?;
        }
        // The f16 copy the selection reads.
        let len = heads * k * d;
        let mut rounded = s.alloc_zeros::<f16>(len).map_err(driver)?;
        let to_f16 = self.function("kmeans", "kmeans_centroids_f16")?;
        let len_i = len as i64;
        let mut l = s.launch_builder(&to_f16);
        l.arg(&centroids).arg(&len_i).arg(&mut rounded);
        // SAFETY: the arguments match `kmeans_centroids_f16`; both buffers hold `len` values
        // and the kernel's grid-stride loop stays below `len`.
        #[allow(unsafe_code)]
        unsafe { l.launch(grid(len.div_ceil(256).min(4096), 1, 256, 0)) }.map_err(driver)?;
        let index =
            DeviceIndex { centroids: rounded, sizes, offsets, members, heads, clusters: k, tokens: n, d };
        Ok(DeviceClustering { index, labels, centroids, iterations })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dynamic shared memory a kernel gets without opting in.
    const DEFAULT_DYNAMIC_SHARED: usize = 48 * 1024;

    /// The least shared memory per block that any architecture the kernels take (compute
    /// capability 8.0 and newer) lets a kernel opt into: 99 KiB, on 8.6 and 8.9.
    const MIN_OPT_IN_SHARED: usize = 99 * 1024;

    /// The assignment of every head dimension `cluster` takes fits the opt-in limit of
    /// every supported architecture; from d = 241 on it needs the opt-in.
    #[test]
    fn assignment_shared_memory_fits_after_opting_in() {
        let bytes = |d: usize| assign_shared_bytes(d.next_multiple_of(16));
        assert_eq!(bytes(240), 96 * 248 * 2);
        assert!(bytes(240) <= DEFAULT_DYNAMIC_SHARED);
        assert!(bytes(241) > DEFAULT_DYNAMIC_SHARED);
        assert_eq!(bytes(MAX_D), 50688);
        assert!((1..=MAX_D).all(|d| bytes(d) <= MIN_OPT_IN_SHARED));
    }
}
