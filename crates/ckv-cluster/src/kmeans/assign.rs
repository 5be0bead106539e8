//! Assignment step: label every row with its most cosine-similar centroid.

use rayon::prelude::*;

/// Rows per assignment block. Blocks are the unit of parallel work, and the block
/// partition is fixed, so labels and objective do not depend on the thread count.
pub(crate) const BLOCK_ROWS: usize = 256;

/// What one assignment step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct AssignOutcome {
    /// Number of rows whose label changed.
    pub(crate) changed: usize,
    /// Objective of the new labels with the given centroids.
    pub(crate) objective: f64,
}

/// Index of the largest value; ties go to the lowest index.
#[inline]
pub(crate) fn argmax(s: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_v = s[0];
    for (j, &v) in s.iter().enumerate().skip(1) {
        if v > best_v {
            best_v = v;
            best = j;
        }
    }
    best as u32
}

/// `a · b` accumulated in `f64`.
#[inline]
fn dot_f64(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| f64::from(x) * f64::from(y)).sum()
}

/// Objective contribution of one block: `sum_i x_i · cn[label_i]`, in row order.
fn block_objective(x: &[f32], labels: &[u32], cn: &[f32], d: usize) -> f64 {
    x.chunks_exact(d)
        .zip(labels)
        .map(|(row, &l)| {
            let l = l as usize;
            dot_f64(row, &cn[l * d..(l + 1) * d])
        })
        .sum()
}

/// Re-labels every row with `argmax_j xn_i · cn_j` (ties to the lower id) and returns how many
/// labels changed plus the objective `sum_i x_i · cn[label_i]` of the new labels (per block in
/// `f64`, blocks summed in order).
///
/// `x` are the raw rows, `xn` their unit copies, `cn` the unit centroids, all row-major with
/// dimension `d`; `labels` has one entry per row (any value before the first call).
pub(crate) fn assign(x: &[f32], xn: &[f32], cn: &[f32], d: usize, labels: &mut [u32]) -> AssignOutcome {
    let k = cn.len() / d;
    debug_assert_eq!(x.len(), labels.len() * d);
    debug_assert_eq!(xn.len(), x.len());
    let per_block: Vec<(usize, f64)> = labels
        .par_chunks_mut(BLOCK_ROWS)
        .zip(xn.par_chunks(BLOCK_ROWS * d))
        .zip(x.par_chunks(BLOCK_ROWS * d))
        .map_init(Vec::<f32>::new, |sims, ((labels, xn), x)| {
            let m = labels.len();
            sims.resize(m * k, 0.0);
            let sims = &mut sims[..m * k];
            ckv_core::matmul_nt(xn, cn, d, sims);
            let mut changed = 0usize;
            for (l, s) in labels.iter_mut().zip(sims.chunks_exact(k)) {
                let best = argmax(s);
                if *l != best {
                    *l = best;
                    changed += 1;
                }
            }
            (changed, block_objective(x, labels, cn, d))
        })
        .collect();
    let mut out = AssignOutcome { changed: 0, objective: 0.0 };
    for (changed, objective) in per_block {
        out.changed += changed;
        out.objective += objective;
    }
    out
}

/// Objective `sum_i x_i · cn[label_i]` of fixed labels, with the same blocking and summation
/// order as [`assign`].
pub(crate) fn objective(x: &[f32], cn: &[f32], d: usize, labels: &[u32]) -> f64 {
    let per_block: Vec<f64> = labels
        .par_chunks(BLOCK_ROWS)
        .zip(x.par_chunks(BLOCK_ROWS * d))
        .map(|(labels, x)| block_objective(x, labels, cn, d))
        .collect();
    per_block.into_iter().sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kmeans::normalize::normalize_rows;

    #[test]
    fn argmax_ties_go_low() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
        assert_eq!(argmax(&[0.0, 0.0]), 0);
        assert_eq!(argmax(&[-1.0, -0.5]), 1);
    }

    #[test]
    fn assign_brute_force_and_objective() {
        // Several blocks, last one partial.
        let (n, k, d) = (BLOCK_ROWS * 2 + 13, 6, 5);
        let x: Vec<f32> = (0..n * d).map(|i| ((i * 2654435761) % 1009) as f32 / 500.0 - 1.0).collect();
        let c: Vec<f32> = x[..k * d].to_vec();
        let mut xn = vec![0.0; n * d];
        let mut cn = vec![0.0; k * d];
        normalize_rows(&x, &mut xn, d);
        normalize_rows(&c, &mut cn, d);
        let mut labels = vec![u32::MAX; n];
        let out = assign(&x, &xn, &cn, d, &mut labels);
        assert_eq!(out.changed, n);
        let mut want_obj = 0.0f64;
        for i in 0..n {
            let cos = |j: usize| -> f32 { (0..d).map(|p| xn[i * d + p] * cn[j * d + p]).sum() };
            let l = labels[i] as usize;
            for j in 0..k {
                assert!(cos(j) <= cos(l) + 1e-5, "row {i}: {j} beats {l}");
            }
            want_obj += dot_f64(&x[i * d..(i + 1) * d], &cn[l * d..(l + 1) * d]);
        }
        assert!((out.objective - want_obj).abs() < 1e-9 * want_obj.abs().max(1.0));
        assert_eq!(objective(&x, &cn, d, &labels), out.objective);
        // A second pass with the same centroids changes nothing.
        let again = assign(&x, &xn, &cn, d, &mut labels);
        assert_eq!(again, AssignOutcome { changed: 0, ..out });
    }
}
