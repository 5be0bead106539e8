//! The kernels over host slices, one call each: what the GPU tests hold against the CPU
//! path. Each uploads its inputs, runs the device-resident code the decode step runs, and
//! downloads the result.

use cudarc::driver::CudaSlice;
use half::f16;

use super::decode::{ATTENTION_SHAPES, Selection};
use super::{Gpu, driver};
use crate::{IndexParts, KernelError};

impl Gpu {
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
        let rows = keys.len() / d;
        if keys.len() != values.len() || keys.len() != rows * d || ids.is_some_and(|ids| ids.len() != n) {
            return Err(KernelError::Shape(format!("{n} ids over {rows} key rows")));
        }
        if let Some(&bad) = ids.and_then(|ids| ids.iter().find(|&&i| i as usize >= rows)) {
            return Err(KernelError::Shape(format!("id {bad} beyond {rows} rows")));
        }
        if ids.is_none() && n > rows {
            return Err(KernelError::Shape(format!("{n} rows asked of {rows}")));
        }
        let mut kv = self.kv(1, d, rows)?;
        self.upload_kv(&mut kv, &[(keys, values)])?;
        let mut scratch = self.scratch()?;
        let s = &self.stream;
        scratch.queries = s.clone_htod(queries).map_err(driver)?;
        scratch.query_values = queries.len();
        scratch.n_ids = s.clone_htod(&[n as i32]).map_err(driver)?;
        if let Some(ids) = ids {
            scratch.ids = s.clone_htod(ids).map_err(driver)?;
        }
        self.attention_into(kv.rows(), 1, 1, g, ids.is_some(), n, chunk_len, scale, &mut scratch)?;
        let mut out = vec![0.0; g * d];
        self.read_output(&scratch, &mut out)?;
        Ok(out)
    }

    /// ClusterKV's selection for one KV head: each of the `queries.len() / (rows * d)`
    /// selections sums its `rows` query rows, ranks the clusters of `index` and takes
    /// `count` ids, the last cluster cut (any number of clusters; the index's centroids are
    /// f16). Returns each selection's ids in rank order.
    pub fn select(
        &self,
        queries: &[f32],
        rows: usize,
        index: IndexParts<'_>,
        d: usize,
        count: usize,
    ) -> Result<Vec<Vec<u32>>, KernelError> {
        let lists = queries.len() / (rows * d).max(1);
        if lists == 0 || queries.len() != lists * rows * d {
            return Err(KernelError::Shape(format!(
                "{} query values in rows of {rows} x {d}",
                queries.len()
            )));
        }
        let device_index = self.upload_index(&[index], d)?;
        let queries: CudaSlice<f32> = self.stream.clone_htod(queries).map_err(driver)?;
        let stride = count.max(1);
        let mut ids = self.stream.alloc_zeros::<u32>(lists * stride).map_err(driver)?;
        let selection = Selection { rows, lists, chosen: count, stride, offset: 0 };
        let mut scratch = self.scratch()?;
        self.launch_select(&device_index, &queries, &selection, &mut ids, &mut scratch.ranking)?;
        let flat = self.stream.clone_dtoh(&ids).map_err(driver)?;
        Ok(flat.chunks(stride).map(|c| c[..count].to_vec()).collect())
    }

    /// k-means of one head's keys (`[n, d]` f16) from the initial centroids `[k, d]`: see
    /// [`Gpu::cluster`]. Returns `(labels, centroids, iterations)`, the centroids in f32.
    pub fn kmeans(
        &self,
        keys: &[f16],
        d: usize,
        initial: &[f32],
        max_iters: usize,
    ) -> Result<(Vec<u32>, Vec<f32>, usize), KernelError> {
        let n = keys.len() / d.max(1);
        if d == 0 || keys.len() != n * d {
            return Err(KernelError::Shape(format!("{} key values in rows of {d}", keys.len())));
        }
        let mut kv = self.kv(1, d, n)?;
        self.upload_kv(&mut kv, &[(keys, keys)])?;
        let clustering = self.cluster(&kv, 0..n, initial, max_iters)?;
        let labels = self.download_labels(&clustering, 0)?;
        let centroids = self.download_centroids(&clustering, 0)?;
        Ok((labels, centroids, clustering.iterations))
    }
}
