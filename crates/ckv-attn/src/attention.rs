//! Decode attention of one query row over stored key/value rows: dense (every row) or
//! sparse (the rows of a selection), with one implementation so that a sparse step over
//! every id is bitwise the dense step.

use ckv_cluster::{Element, axpy, dot};

/// Attention of the query `q` (`d` values) over the key/value rows `rows` of `keys` and
/// `values` (`[n, d]` each): an exact, numerically stable softmax of `scale * q · k`
/// (maximum subtracted, f32 accumulation) over those rows, weighted sum of their values
/// into `out` (`d` values). `probs` is scratch; it ends holding the probabilities in the
/// order of `rows`.
///
/// # Panics
/// If a row index is out of range or `out.len() != q.len()`; the pipeline checks both
/// before calling.
pub fn attend_rows<E: Element>(
    q: &[f32],
    keys: &[E],
    values: &[E],
    rows: impl Iterator<Item = usize> + Clone,
    scale: f32,
    probs: &mut Vec<f32>,
    out: &mut [f32],
) {
    let d = q.len();
    assert_eq!(out.len(), d, "output row length");
    probs.clear();
    probs.extend(rows.clone().map(|r| scale * dot(q, &keys[r * d..(r + 1) * d])));
    let max = probs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for p in probs.iter_mut() {
        *p = (*p - max).exp();
        sum += *p;
    }
    let inv = if sum > 0.0 { 1.0 / sum } else { 0.0 };
    out.fill(0.0);
    for (p, r) in probs.iter_mut().zip(rows) {
        *p *= inv;
        axpy(*p, &values[r * d..(r + 1) * d], out);
    }
}

/// Dense decode attention: `q` over every row of `keys`/`values`.
pub fn dense_attention<E: Element>(
    q: &[f32],
    keys: &[E],
    values: &[E],
    scale: f32,
    probs: &mut Vec<f32>,
    out: &mut [f32],
) {
    let n = keys.len() / q.len().max(1);
    attend_rows(q, keys, values, 0..n, scale, probs, out);
}

/// Sparse decode attention: `q` over the rows `ids` only.
pub fn sparse_attention<E: Element>(
    q: &[f32],
    keys: &[E],
    values: &[E],
    ids: &[u32],
    scale: f32,
    probs: &mut Vec<f32>,
    out: &mut [f32],
) {
    attend_rows(q, keys, values, ids.iter().map(|&i| i as usize), scale, probs, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_plain_softmax() {
        let d = 3;
        let q = [0.5f32, -1.0, 2.0];
        let keys: Vec<f32> = (0..5 * d).map(|i| (i as f32 * 0.7).sin()).collect();
        let values: Vec<f32> = (0..5 * d).map(|i| (i as f32 * 0.3).cos()).collect();
        let mut probs = Vec::new();
        let mut out = [0.0f32; 3];
        dense_attention(&q, &keys, &values, 0.5, &mut probs, &mut out);
        let s: Vec<f64> = keys
            .chunks(d)
            .map(|k| 0.5 * k.iter().zip(&q).map(|(a, b)| (*a as f64) * (*b as f64)).sum::<f64>())
            .collect();
        let z: f64 = s.iter().map(|x| x.exp()).sum();
        for j in 0..d {
            let want: f64 = s.iter().zip(values.chunks(d)).map(|(x, v)| x.exp() / z * v[j] as f64).sum();
            assert!((out[j] as f64 - want).abs() < 1e-6, "{} vs {want}", out[j]);
        }
        assert!((probs.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        let mut sparse = [0.0f32; 3];
        sparse_attention(&q, &keys, &values, &[0, 1, 2, 3, 4], 0.5, &mut probs, &mut sparse);
        assert_eq!(sparse, out);
    }

    #[test]
    fn large_scores_do_not_overflow() {
        let q = [1000.0f32];
        let keys = [1.0f32, 2.0];
        let values = [3.0f32, 5.0];
        let mut probs = Vec::new();
        let mut out = [0.0f32];
        dense_attention(&q, &keys, &values, 1.0, &mut probs, &mut out);
        assert_eq!(out, [5.0]);
    }
}
