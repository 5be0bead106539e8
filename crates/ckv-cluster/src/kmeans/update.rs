//! Update step: every non-empty cluster's centroid becomes the mean of its members.

use rayon::prelude::*;

/// Reusable buffers of the update step (counting sort of row ids by label).
#[derive(Debug)]
pub(crate) struct UpdateScratch {
    /// Row ids sorted by label, ascending within a label.
    order: Vec<usize>,
    /// `offsets[j]..offsets[j + 1]` is cluster `j`'s range in `order`.
    offsets: Vec<usize>,
}

impl UpdateScratch {
    /// Buffers for `n` rows and `k` clusters.
    pub(crate) fn new(n: usize, k: usize) -> Self {
        Self { order: vec![0; n], offsets: vec![0; k + 1] }
    }
}

/// Recomputes `sizes` from `labels` and sets every non-empty cluster's centroid to the mean of
/// its members' raw rows `x` (accumulated in `f64` in ascending row order, so the result does
/// not depend on the thread count). Empty clusters keep their centroid.
pub(crate) fn update(
    x: &[f32],
    d: usize,
    labels: &[u32],
    centroids: &mut [f32],
    sizes: &mut [u32],
    scratch: &mut UpdateScratch,
) {
    let k = sizes.len();
    debug_assert_eq!(centroids.len(), k * d);
    debug_assert_eq!(x.len(), labels.len() * d);
    debug_assert_eq!(scratch.order.len(), labels.len());
    debug_assert_eq!(scratch.offsets.len(), k + 1);

    // Counting sort of row ids by label (stable: ascending row order within a cluster).
    sizes.fill(0);
    for &l in labels {
        sizes[l as usize] += 1;
    }
    let offsets = &mut scratch.offsets;
    offsets[0] = 0;
    for j in 0..k {
        offsets[j + 1] = offsets[j] + sizes[j] as usize;
    }
    // Use the tail `offsets[1..]` as write cursors shifted by one cluster: after the fill,
    // cursor j (stored at offsets[j + 1]) has advanced from start(j) to end(j).
    for j in (1..=k).rev() {
        offsets[j] = offsets[j - 1];
    }
    for (i, &l) in labels.iter().enumerate() {
        let slot = &mut offsets[l as usize + 1];
        scratch.order[*slot] = i;
        *slot += 1;
    }
    let order = &scratch.order;
    let offsets = &scratch.offsets;

    centroids.par_chunks_mut(d).enumerate().for_each_init(
        || vec![0.0f64; d],
        |acc, (j, c)| {
            let members = &order[offsets[j]..offsets[j + 1]];
            if members.is_empty() {
                return;
            }
            acc.fill(0.0);
            for &i in members {
                for (a, &v) in acc.iter_mut().zip(&x[i * d..(i + 1) * d]) {
                    *a += f64::from(v);
                }
            }
            let count = members.len() as f64;
            for (c, &a) in c.iter_mut().zip(acc.iter()) {
                *c = (a / count) as f32;
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn means_sizes_and_empty_cluster() {
        let d = 2;
        let x = [1.0f32, 2.0, 3.0, 4.0, -1.0, 0.5, 5.0, 6.0, 0.0, 0.0];
        let labels = [2u32, 0, 2, 2, 0];
        let mut centroids = vec![7.0f32; 3 * d];
        let mut sizes = vec![99u32; 3];
        let mut scratch = UpdateScratch::new(5, 3);
        update(&x, d, &labels, &mut centroids, &mut sizes, &mut scratch);
        assert_eq!(sizes, [2, 0, 3]);
        assert_eq!(&centroids[0..2], &[1.5, 2.0]);
        assert_eq!(&centroids[2..4], &[7.0, 7.0], "empty cluster keeps its centroid");
        assert_eq!(&centroids[4..6], &[5.0 / 3.0, 8.5 / 3.0]);
        assert_eq!(scratch.order, [1, 4, 0, 2, 3]);
        assert_eq!(scratch.offsets, [0, 2, 2, 5]);
    }
}
