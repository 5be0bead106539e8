//! Decode attention of a group of query rows over stored key/value rows: dense (every row)
//! or sparse (the rows of a selection), with one implementation so that a sparse step over
//! every id is bitwise the dense step. The query rows of a group share one read of the
//! rows (the GQA group of a KV head, when they attend to the same ids).

use ckv_cluster::{Element, score_rows, softmax, weigh_rows};

/// Attention of the `g` query rows of `queries` (`[g, d]`) over the key/value rows `rows`
/// of `keys` and `values` (`[_, d]` each): for each query row an exact, numerically stable
/// softmax of `scale * q · k` (maximum subtracted, f32 accumulation) over those rows, and
/// the weighted sum of their values into its row of `out` (`[g, d]`). `probs` is scratch;
/// it ends holding the probabilities, `[g, n]` query-major, in the order of `rows`.
///
/// # Panics
/// If `d == 0`, `queries` or `out` is not `[g, d]`, or a row index is out of range; the
/// pipeline checks all of them before calling.
#[allow(clippy::too_many_arguments)]
pub fn attend_rows<E: Element>(
    queries: &[f32],
    d: usize,
    keys: &[E],
    values: &[E],
    rows: impl ExactSizeIterator<Item = usize> + Clone,
    scale: f32,
    probs: &mut Vec<f32>,
    out: &mut [f32],
) {
    assert_eq!(out.len(), queries.len(), "output rows");
    let n = rows.len();
    probs.clear();
    probs.resize(queries.len() / d.max(1) * n, 0.0);
    score_rows(queries, d, keys, rows.clone(), scale, probs);
    if n > 0 {
        probs.chunks_exact_mut(n).for_each(softmax);
    }
    out.fill(0.0);
    weigh_rows(probs, d, values, rows, out);
}

/// Dense decode attention: the query rows `queries` (`[g, d]`) over every row of
/// `keys`/`values`.
pub fn dense_attention<E: Element>(
    queries: &[f32],
    d: usize,
    keys: &[E],
    values: &[E],
    scale: f32,
    probs: &mut Vec<f32>,
    out: &mut [f32],
) {
    let n = keys.len() / d.max(1);
    attend_rows(queries, d, keys, values, 0..n, scale, probs, out);
}

/// Sparse decode attention: the query rows `queries` (`[g, d]`) over the rows `ids` only.
#[allow(clippy::too_many_arguments)]
pub fn sparse_attention<E: Element>(
    queries: &[f32],
    d: usize,
    keys: &[E],
    values: &[E],
    ids: &[u32],
    scale: f32,
    probs: &mut Vec<f32>,
    out: &mut [f32],
) {
    attend_rows(queries, d, keys, values, ids.iter().map(|&i| i as usize), scale, probs, out);
}

/// The selections of one GQA group at one step, as [`select_group`](ckv_select::select_group)
/// leaves them: one sorted id list for the whole group, or one per query row.
#[derive(Debug, Clone, Copy)]
pub struct Selected<'a> {
    /// The id lists.
    pub lists: &'a [Vec<u32>],
    /// Tokens stored (`t + 1`): a list this long holds every token.
    pub context: usize,
}

impl Selected<'_> {
    /// The list the whole group shares: there is one, or every list holds every token.
    pub fn shared(&self) -> Option<&[u32]> {
        if self.lists.len() == 1 || self.lists.iter().all(|l| l.len() == self.context) {
            self.lists.first().map(Vec::as_slice)
        } else {
            None
        }
    }
}

/// Attention of a GQA group's query rows (`[g, d]`) after selection: a shared list is read
/// once for the whole group, otherwise each query row attends to its own list. `observe`
/// gets each (ids, probabilities) pair, one per query row, in order.
#[allow(clippy::too_many_arguments)]
pub fn attend_selected<E: Element>(
    queries: &[f32],
    d: usize,
    keys: &[E],
    values: &[E],
    selected: Selected<'_>,
    scale: f32,
    probs: &mut Vec<f32>,
    out: &mut [f32],
    mut observe: impl FnMut(&[u32], &[f32]),
) {
    if let Some(ids) = selected.shared() {
        sparse_attention(queries, d, keys, values, ids, scale, probs, out);
        for p in probs.chunks_exact(ids.len().max(1)) {
            observe(ids, p);
        }
        return;
    }
    for ((q, o), ids) in queries.chunks_exact(d).zip(out.chunks_exact_mut(d)).zip(selected.lists) {
        sparse_attention(q, d, keys, values, ids, scale, probs, o);
        observe(ids, probs);
    }
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
        dense_attention(&q, d, &keys, &values, 0.5, &mut probs, &mut out);
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
        sparse_attention(&q, d, &keys, &values, &[0, 1, 2, 3, 4], 0.5, &mut probs, &mut sparse);
        assert_eq!(sparse, out);
    }

    proptest::proptest! {
        /// A group of query rows attends bitwise as each row alone, and as the `f64`
        /// definition within rounding; any group size, odd dims, empty and repeated ids.
        #[test]
        fn group_equals_each_row_alone(
            g in 1usize..9,
            d in 1usize..40,
            total in 1usize..50,
            picks in proptest::collection::vec(0usize..1000, 0..60),
            seed in 0usize..1000,
        ) {
            let val = |i: usize, salt: usize| ((i * 7919 + salt * 104_729) % 2003) as f32 / 500.0 - 2.0;
            let q: Vec<f32> = (0..g * d).map(|i| val(i, seed)).collect();
            let keys: Vec<half::f16> = (0..total * d).map(|i| half::f16::from_f32(val(i, seed + 1))).collect();
            let values: Vec<half::f16> = (0..total * d).map(|i| half::f16::from_f32(val(i, seed + 2))).collect();
            let ids: Vec<u32> = picks.iter().map(|&p| (p % total) as u32).collect();
            let (mut probs, mut out) = (Vec::new(), vec![f32::NAN; g * d]);
            sparse_attention(&q, d, &keys, &values, &ids, 0.3, &mut probs, &mut out);
            let mut one = vec![f32::NAN; d];
            for j in 0..g {
                let mut p1 = Vec::new();
                sparse_attention(&q[j * d..(j + 1) * d], d, &keys, &values, &ids, 0.3, &mut p1, &mut one);
                proptest::prop_assert_eq!(&one[..], &out[j * d..(j + 1) * d]);
                proptest::prop_assert_eq!(&p1[..], &probs[j * ids.len()..(j + 1) * ids.len()]);
                let s: Vec<f64> = ids
                    .iter()
                    .map(|&r| {
                        let k = &keys[r as usize * d..(r as usize + 1) * d];
                        0.3 * (0..d).map(|e| q[j * d + e] as f64 * k[e].to_f64()).sum::<f64>()
                    })
                    .collect();
                let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                for e in 0..d {
                    let want: f64 = if ids.is_empty() {
                        0.0
                    } else {
                        s.iter()
                            .zip(&ids)
                            .map(|(x, &r)| (x - m).exp() / z * values[r as usize * d + e].to_f64())
                            .sum()
                    };
                    proptest::prop_assert!((one[e] as f64 - want).abs() < 1e-5, "{} vs {}", one[e], want);
                }
            }
        }
    }

    #[test]
    fn large_scores_do_not_overflow() {
        let q = [1000.0f32];
        let keys = [1.0f32, 2.0];
        let values = [3.0f32, 5.0];
        let mut probs = Vec::new();
        let mut out = [0.0f32];
        dense_attention(&q, 1, &keys, &values, 1.0, &mut probs, &mut out);
        assert_eq!(out, [5.0]);
    }
}
