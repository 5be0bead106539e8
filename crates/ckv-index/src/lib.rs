//! The cluster index of ClusterKV: stage 2 of cluster -> **index** -> select -> attend.
//!
//! One [`ClusterIndex`] per (sequence, layer, KV head) stores the clustered keys in a CSR
//! layout: centroids `[C, d]` (f32, and rounded to f16: the copy a decode step scores, half
//! the bytes), sizes `[C]`, offsets `[C + 1]` (prefix sums of the sizes) and members `[n]`
//! (absolute token ids grouped by cluster, ascending inside each cluster). The prompt's
//! clustering builds it; every decode window's clustering is appended to it; old clusters are
//! never re-clustered. [`ClusterIndex::centroids_view`] and
//! [`ClusterIndex::centroids_f16_view`] give the centroids as `ndarray` views `[C, d]`.
//!
//! ```
//! use ckv_core::ParamGuard;
//! use ckv_cluster::{kmeans, ClusterParams};
//! use ckv_index::ClusterIndex;
//!
//! let d = 2;
//! let keys = [1.0f32, 0.0, 0.9, 0.1, 0.0, 1.0, 0.1, 0.9];
//! let params = ClusterParams::new(2).seed(7).validate().unwrap();
//! let clustering = kmeans(&params, &keys, d).unwrap();
//! let mut index = ClusterIndex::new(d).unwrap();
//! // The four rows are the tokens 16..20 (after a sink of 16 tokens).
//! index.append(&clustering, 16).unwrap();
//! assert_eq!(index.n_clusters(), 2);
//! assert_eq!(index.n_tokens(), 4);
//! let mut all: Vec<u32> = (0..2).flat_map(|c| index.members_of(c).to_vec()).collect();
//! all.sort();
//! assert_eq!(all, vec![16, 17, 18, 19]);
//! ```

use ckv_cluster::Clustering;
use half::f16;
use ndarray::ArrayView2;

/// Errors of the cluster index.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum IndexError {
    /// A head dimension of 0.
    #[error(transparent)]
    Param(#[from] ckv_core::ParamError),
    /// A clustering of another head dimension was appended.
    #[error("clustering has head dimension {given}, the index has {expected}")]
    DimMismatch {
        /// The index's head dimension.
        expected: usize,
        /// The clustering's head dimension.
        given: usize,
    },
    /// Token ids would not fit in `u32`.
    #[error("token id {first_token} + {rows} rows overflows u32")]
    TokenOverflow {
        /// The first token id of the appended rows.
        first_token: u32,
        /// The number of appended rows.
        rows: usize,
    },
}

/// The CSR index of the clustered keys of one (sequence, layer, KV head).
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterIndex {
    d: usize,
    centroids: Vec<f32>,
    centroids_f16: Vec<f16>,
    sizes: Vec<u32>,
    offsets: Vec<u32>,
    members: Vec<u32>,
}

impl ClusterIndex {
    /// An empty index for keys of head dimension `d`.
    pub fn new(d: usize) -> Result<Self, IndexError> {
        if d == 0 {
            return Err(IndexError::Param(ckv_core::ParamError::zero_dim()));
        }
        Ok(Self {
            d,
            centroids: Vec::new(),
            centroids_f16: Vec::new(),
            sizes: Vec::new(),
            offsets: vec![0],
            members: Vec::new(),
        })
    }

    /// Appends the clusters of `clustering`, whose row `i` is the token `first_token + i`.
    ///
    /// The new clusters get the ids `n_clusters()..n_clusters() + clustering.n_clusters()`;
    /// their members are listed in ascending token order. A [`Clustering`] is consistent by
    /// construction (labels, sizes and centroids agree), so only how it relates to this index
    /// is checked; an error leaves the index unchanged.
    ///
    /// # Errors
    /// [`IndexError::DimMismatch`] if the clustering's `d` is not the index's,
    /// [`IndexError::TokenOverflow`] if `first_token + rows` does not fit in `u32`.
    pub fn append(&mut self, clustering: &Clustering, first_token: u32) -> Result<(), IndexError> {
        if clustering.d() != self.d {
            return Err(IndexError::DimMismatch { expected: self.d, given: clustering.d() });
        }
        let rows = clustering.n_rows();
        if first_token.checked_add(u32::try_from(rows).unwrap_or(u32::MAX)).is_none() {
            return Err(IndexError::TokenOverflow { first_token, rows });
        }
        // Counting sort of the rows by label; stable, so members ascend inside a cluster.
        let (sizes, labels, centroids) = (clustering.sizes(), clustering.labels(), clustering.centroids());
        let base = self.members.len();
        let mut cursor = Vec::with_capacity(sizes.len());
        let mut next = base;
        for &size in sizes {
            cursor.push(next);
            next += size as usize;
        }
        self.members.resize(next, 0);
        for (row, &label) in labels.iter().enumerate() {
            let slot = &mut cursor[label as usize];
            // `first_token + rows` fits in u32 (checked above).
            self.members[*slot] = first_token + row as u32;
            *slot += 1;
        }
        self.centroids.extend_from_slice(centroids);
        self.centroids_f16.extend(centroids.iter().map(|&c| f16::from_f32(c)));
        let mut end = *self.offsets.last().unwrap_or(&0);
        for &size in sizes {
            end += size;
            self.sizes.push(size);
            self.offsets.push(end);
        }
        Ok(())
    }

    /// Head dimension of the keys.
    pub fn d(&self) -> usize {
        self.d
    }

    /// Number of clusters.
    pub fn n_clusters(&self) -> usize {
        self.sizes.len()
    }

    /// Number of clustered tokens.
    pub fn n_tokens(&self) -> usize {
        self.members.len()
    }

    /// All centroids, `[C, d]` row-major.
    pub fn centroids(&self) -> &[f32] {
        &self.centroids
    }

    /// All centroids rounded to f16 (nearest, as `half` rounds), `[C, d]` row-major: what a
    /// decode step scores, so that ranking reads half the bytes of the f32 centroids.
    pub fn centroids_f16(&self) -> &[f16] {
        &self.centroids_f16
    }

    /// All centroids as a `[C, d]` view of [`centroids`](Self::centroids) (no copy).
    pub fn centroids_view(&self) -> ArrayView2<'_, f32> {
        ArrayView2::from_shape((self.n_clusters(), self.d), &self.centroids).expect("centroids are [C, d]")
    }

    /// The f16 centroids as a `[C, d]` view of [`centroids_f16`](Self::centroids_f16) (no
    /// copy).
    pub fn centroids_f16_view(&self) -> ArrayView2<'_, f16> {
        ArrayView2::from_shape((self.n_clusters(), self.d), &self.centroids_f16)
            .expect("centroids are [C, d]")
    }

    /// The centroid of cluster `c`.
    ///
    /// # Panics
    /// If `c >= n_clusters()`.
    pub fn centroid(&self, c: usize) -> &[f32] {
        &self.centroids[c * self.d..(c + 1) * self.d]
    }

    /// Cluster sizes, `[C]`.
    pub fn sizes(&self) -> &[u32] {
        &self.sizes
    }

    /// Prefix sums of the sizes, `[C + 1]`, starting at 0.
    pub fn offsets(&self) -> &[u32] {
        &self.offsets
    }

    /// Token ids grouped by cluster, `[n]`.
    pub fn members(&self) -> &[u32] {
        &self.members
    }

    /// The token ids of cluster `c`, ascending.
    ///
    /// # Panics
    /// If `c >= n_clusters()`.
    pub fn members_of(&self, c: usize) -> &[u32] {
        &self.members[self.offsets[c] as usize..self.offsets[c + 1] as usize]
    }

    /// Heap memory held by the index, in bytes.
    pub fn memory_bytes(&self) -> usize {
        self.centroids.capacity() * size_of::<f32>()
            + self.centroids_f16.capacity() * size_of::<f16>()
            + (self.sizes.capacity() + self.offsets.capacity() + self.members.capacity()) * size_of::<u32>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clustering(labels: Vec<u32>, k: usize, d: usize) -> Clustering {
        let mut sizes = vec![0u32; k];
        for &l in &labels {
            sizes[l as usize] += 1;
        }
        Clustering::from_parts(d, labels, (0..k * d).map(|i| i as f32).collect(), sizes).unwrap()
    }

    #[test]
    fn append_builds_csr_and_keeps_token_order() {
        let mut index = ClusterIndex::new(2).unwrap();
        index.append(&clustering(vec![1, 0, 1, 1, 0], 3, 2), 10).unwrap();
        assert_eq!(index.sizes(), &[2, 3, 0]);
        assert_eq!(index.offsets(), &[0, 2, 5, 5]);
        assert_eq!(index.members(), &[11, 14, 10, 12, 13]);
        index.append(&clustering(vec![0, 0], 1, 2), 15).unwrap();
        assert_eq!(index.n_clusters(), 4);
        assert_eq!(index.members_of(3), &[15, 16]);
        assert_eq!(index.centroid(3), &[0.0, 1.0]);
        let rounded: Vec<f32> = index.centroids_f16().iter().map(|c| c.to_f32()).collect();
        assert_eq!(rounded, index.centroids());
        assert_eq!(index.n_tokens(), 7);
        assert!(index.memory_bytes() >= (8 * 4) + (4 + 5 + 7) * 4);
    }

    #[test]
    fn views_are_the_slices() {
        let mut index = ClusterIndex::new(3).unwrap();
        assert_eq!(index.centroids_view().shape(), &[0, 3]);
        index.append(&clustering(vec![1, 0, 1, 1, 0], 2, 3), 0).unwrap();
        index.append(&clustering(vec![0, 0], 1, 3), 5).unwrap();
        let (view, half) = (index.centroids_view(), index.centroids_f16_view());
        assert_eq!((view.shape(), half.shape()), (&[3, 3][..], &[3, 3][..]));
        assert_eq!(view.as_slice(), Some(index.centroids()));
        assert_eq!(half.as_slice(), Some(index.centroids_f16()));
        for c in 0..index.n_clusters() {
            assert_eq!(view.row(c).as_slice(), Some(index.centroid(c)));
        }
    }

    #[test]
    fn rejects_clusterings_that_do_not_fit() {
        assert_eq!(ClusterIndex::new(0), Err(IndexError::Param(ckv_core::ParamError::zero_dim())));
        let mut index = ClusterIndex::new(2).unwrap();
        let wrong_d = clustering(vec![0], 1, 3);
        assert_eq!(index.append(&wrong_d, 0), Err(IndexError::DimMismatch { expected: 2, given: 3 }));
        assert!(matches!(
            index.append(&clustering(vec![0, 0], 1, 2), u32::MAX - 1),
            Err(IndexError::TokenOverflow { .. })
        ));
        // Errors leave the index unchanged.
        assert_eq!(index, ClusterIndex::new(2).unwrap());
    }
}
