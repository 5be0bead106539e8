//! Decode attention of a group of query rows over stored key/value rows: dense (every row)
//! or sparse (the rows of a selection), with one implementation so that a sparse step over
//! every id is bitwise the dense step. The query rows of a group share one read of the
//! rows (the GQA group of a KV head, when they attend to the same ids).

use ckv_core::{Element, ParamError, ValueError, score_rows, softmax, standard_slice, weigh_rows};
use ndarray::{Array2, ArrayView2};

use crate::AttnError;

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

/// [`dense_attention`] on `ndarray` views: the query rows `queries` `[g, d]` over every row
/// of `keys` and `values` (`[n, d]` each, f16 or f32), all in standard (row-major,
/// contiguous) layout, read in place. Returns the outputs `[g, d]`, bitwise those of the
/// slice form. Values are not checked (the pipeline checks them when they are stored).
///
/// ```
/// use ckv_attn::dense_attention_view;
/// use half::f16;
/// use ndarray::{Array2, array};
///
/// let keys = Array2::from_shape_fn((5, 2), |(i, j)| f16::from_f32((i + j) as f32 / 4.0));
/// let values = Array2::from_shape_fn((5, 2), |(i, j)| f16::from_f32(if j == 0 { i as f32 } else { 1.0 }));
/// let out = dense_attention_view(array![[1.0f32, 0.0]].view(), keys.view(), values.view(), 1.0)?;
/// assert_eq!(out.dim(), (1, 2));
/// assert_eq!(out[[0, 1]], 1.0); // the weights sum to 1
/// # Ok::<(), ckv_attn::AttnError>(())
/// ```
///
/// # Errors
/// [`AttnError::Param`] if `d == 0`; [`AttnError::Value`] with
/// [`ViewShape`](ValueError::ViewShape) if `keys` is not `[_, d]` or `values` not the shape
/// of `keys`, or [`NotContiguous`](ValueError::NotContiguous), naming the view.
pub fn dense_attention_view<E: Element>(
    queries: ArrayView2<'_, f32>,
    keys: ArrayView2<'_, E>,
    values: ArrayView2<'_, E>,
    scale: f32,
) -> Result<Array2<f32>, AttnError> {
    let (q, d, k, v) = attention_views(&queries, &keys, &values)?;
    let mut out = Array2::zeros(queries.raw_dim());
    let slice = out.as_slice_mut().expect("a new array is in standard layout");
    dense_attention(q, d, k, v, scale, &mut Vec::new(), slice);
    Ok(out)
}

/// [`sparse_attention`] on `ndarray` views (see [`dense_attention_view`]): the query rows
/// `queries` `[g, d]` over the rows `ids` of `keys` and `values` only. Returns the outputs
/// `[g, d]`, bitwise those of the slice form.
///
/// # Errors
/// Those of [`dense_attention_view`], and [`AttnError::Param`] (name `"ids"`) for the first
/// id that is not a row of `keys`.
pub fn sparse_attention_view<E: Element>(
    queries: ArrayView2<'_, f32>,
    keys: ArrayView2<'_, E>,
    values: ArrayView2<'_, E>,
    ids: &[u32],
    scale: f32,
) -> Result<Array2<f32>, AttnError> {
    let (q, d, k, v) = attention_views(&queries, &keys, &values)?;
    let n = keys.nrows();
    if let Some((at, id)) = ids.iter().enumerate().find(|&(_, &id)| id as usize >= n) {
        return Err(ParamError::new("ids", format!("{id} (at {at})"), format!("row ids below {n}")).into());
    }
    let mut out = Array2::zeros(queries.raw_dim());
    let slice = out.as_slice_mut().expect("a new array is in standard layout");
    sparse_attention(q, d, k, v, ids, scale, &mut Vec::new(), slice);
    Ok(out)
}

/// The checked slices of the views of an attention call, and `d`.
type Views<'a, E> = (&'a [f32], usize, &'a [E], &'a [E]);

/// Checks the views of an attention call: `queries` `[g, d]`, `keys` `[n, d]`, `values` the
/// shape of `keys`, `d >= 1`, all in standard layout.
fn attention_views<'a, E>(
    queries: &ArrayView2<'a, f32>,
    keys: &ArrayView2<'a, E>,
    values: &ArrayView2<'a, E>,
) -> Result<Views<'a, E>, AttnError> {
    let d = queries.ncols();
    if d == 0 {
        return Err(ParamError::zero_dim().into());
    }
    let shape = |what, view: &[usize], expected: [usize; 2]| {
        if view == expected {
            Ok(())
        } else {
            Err(ValueError::ViewShape { what, expected: expected.to_vec(), given: view.to_vec() })
        }
    };
    shape("keys", keys.shape(), [keys.nrows(), d])?;
    shape("values", values.shape(), [keys.nrows(), d])?;
    Ok((
        standard_slice("queries", queries)?,
        d,
        standard_slice("keys", keys)?,
        standard_slice("values", values)?,
    ))
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

/// Scratch of [`attend_selected`], reused from step to step so that a warm step allocates
/// nothing.
#[derive(Debug, Clone, Default)]
pub struct AttnScratch {
    /// Probabilities of the last row (or the group) attended, as `attend_rows` leaves them.
    probs: Vec<f32>,
    /// The union of a group's lists.
    union: Vec<u32>,
    /// Every row's scores over the union, `[g, U]`.
    scores: Vec<f32>,
    /// Every row's weights over the union, `[g, U]`: its probabilities, zero where its list
    /// lacks the id.
    weights: Vec<f32>,
    /// KV rows the last call read.
    rows_read: usize,
}

impl AttnScratch {
    /// KV rows the last [`attend_selected`] read: the shared list, the union, or every list.
    pub fn rows_read(&self) -> usize {
        self.rows_read
    }

    /// Scratch for groups of `g` rows attending to at most `n` ids each.
    pub fn with_capacity(g: usize, n: usize) -> Self {
        Self {
            probs: Vec::with_capacity(g * n),
            union: Vec::with_capacity(g * n),
            scores: Vec::with_capacity(g * g * n),
            weights: Vec::with_capacity(g * g * n),
            rows_read: 0,
        }
    }
}

/// Attention of a GQA group's query rows (`[g, d]`) after selection: a shared list is read
/// once for the whole group. Lists of their own (PerQueryHead) are read once too, as their
/// union, when they overlap enough that scoring every row over the union costs at most
/// twice the rows' own scores (`g * |union| <= 2 * sum |list|`): each row's softmax is over
/// its own list and its weights are zero elsewhere, so the result is bitwise that of each
/// row attending alone (the fallback). `observe` gets each (ids, probabilities) pair, one
/// per query row, in order.
#[allow(clippy::too_many_arguments)]
pub fn attend_selected<E: Element>(
    queries: &[f32],
    d: usize,
    keys: &[E],
    values: &[E],
    selected: Selected<'_>,
    scale: f32,
    scratch: &mut AttnScratch,
    out: &mut [f32],
    mut observe: impl FnMut(&[u32], &[f32]),
) {
    let probs = &mut scratch.probs;
    if let Some(ids) = selected.shared() {
        sparse_attention(queries, d, keys, values, ids, scale, probs, out);
        for p in probs.chunks_exact(ids.len().max(1)) {
            observe(ids, p);
        }
        scratch.rows_read = ids.len();
        return;
    }
    let g = selected.lists.len();
    union_of(selected.lists, &mut scratch.union);
    let listed: usize = selected.lists.iter().map(Vec::len).sum();
    if g * scratch.union.len() > 2 * listed {
        scratch.rows_read = listed;
        for ((q, o), ids) in queries.chunks_exact(d).zip(out.chunks_exact_mut(d)).zip(selected.lists) {
            sparse_attention(q, d, keys, values, ids, scale, probs, o);
            observe(ids, probs);
        }
        return;
    }
    let AttnScratch { probs, union, scores, weights, rows_read } = scratch;
    let u = union.len();
    *rows_read = u;
    let rows = || union.iter().map(|&i| i as usize);
    scores.clear();
    scores.resize(g * u, 0.0);
    score_rows(queries, d, keys, rows(), scale, scores);
    weights.clear();
    weights.resize(g * u, 0.0);
    for ((ids, row_scores), row_weights) in
        selected.lists.iter().zip(scores.chunks_exact(u)).zip(weights.chunks_exact_mut(u))
    {
        // The row's own scores, in its list's order (a sorted subset of the union).
        probs.clear();
        probs.extend(positions(union, ids).map(|p| row_scores[p]));
        softmax(probs);
        for (p, &prob) in positions(union, ids).zip(probs.iter()) {
            row_weights[p] = prob;
        }
        observe(ids, probs);
    }
    out.fill(0.0);
    weigh_rows(weights, d, values, rows(), out);
}

/// The positions in `union` of the ids of `ids`, a sorted subset of the sorted `union`.
fn positions<'a>(union: &'a [u32], ids: &'a [u32]) -> impl Iterator<Item = usize> + 'a {
    let mut at = 0;
    ids.iter().map(move |id| {
        while union[at] != *id {
            at += 1;
        }
        at
    })
}

/// The sorted union of sorted, distinct id lists, into `union`.
fn union_of(lists: &[Vec<u32>], union: &mut Vec<u32>) {
    union.clear();
    let mut heads = [0usize; 16];
    if lists.len() > heads.len() {
        // Wider groups than any model has: sort the concatenation.
        union.extend(lists.iter().flatten());
        union.sort_unstable();
        union.dedup();
        return;
    }
    let heads = &mut heads[..lists.len()];
    loop {
        let next = lists.iter().zip(heads.iter()).filter_map(|(l, &h)| l.get(h)).min().copied();
        let Some(id) = next else { return };
        union.push(id);
        for (l, h) in lists.iter().zip(heads.iter_mut()) {
            if l.get(*h) == Some(&id) {
                *h += 1;
            }
        }
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

    /// `g` query rows and `total` f16 key and value rows of dimension `d`, from `seed`.
    fn group_data(
        g: usize,
        d: usize,
        total: usize,
        seed: usize,
    ) -> (Vec<f32>, Vec<half::f16>, Vec<half::f16>) {
        let val = |i: usize, salt: usize| ((i * 7919 + salt * 104_729) % 2003) as f32 / 500.0 - 2.0;
        let rows = |salt| (0..total * d).map(|i| half::f16::from_f32(val(i, salt))).collect();
        ((0..g * d).map(|i| val(i, seed)).collect(), rows(seed + 1), rows(seed + 2))
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
            let (q, keys, values) = group_data(g, d, total, seed);
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

    proptest::proptest! {
        /// Lists of their own, read once as their union or each alone, give bitwise what
        /// each row gives attending alone, and observe each row's own probabilities.
        #[test]
        fn own_lists_equal_each_row_alone(
            g in 1usize..6,
            d in 1usize..20,
            total in 1usize..80,
            picks in proptest::collection::vec(proptest::collection::btree_set(0u32..80, 0..40), 6),
            seed in 0usize..1000,
        ) {
            let (q, keys, values) = group_data(g, d, total, seed);
            // Overlapping lists (a shared core) or disjoint ones, by the seed.
            let lists: Vec<Vec<u32>> = picks[..g]
                .iter()
                .map(|set| {
                    let mut ids: Vec<u32> = set.iter().map(|&p| p % total as u32).collect();
                    if seed % 2 == 0 {
                        ids.extend(0..(total as u32).min(10));
                    }
                    // The current token, as every step's list holds it.
                    ids.push(total as u32 - 1);
                    ids.sort_unstable();
                    ids.dedup();
                    ids
                })
                .collect();
            let selected = Selected { lists: &lists, context: total + 1 };
            let mut scratch = AttnScratch::default();
            let mut out = vec![f32::NAN; g * d];
            let mut seen = Vec::new();
            attend_selected(&q, d, &keys, &values, selected, 0.3, &mut scratch, &mut out, |ids, p| {
                seen.push((ids.to_vec(), p.to_vec()));
            });
            proptest::prop_assert_eq!(seen.len(), g);
            for (j, ids) in lists.iter().enumerate() {
                let (mut p1, mut one) = (Vec::new(), vec![f32::NAN; d]);
                sparse_attention(&q[j * d..(j + 1) * d], d, &keys, &values, ids, 0.3, &mut p1, &mut one);
                proptest::prop_assert_eq!(&one[..], &out[j * d..(j + 1) * d], "row {}", j);
                proptest::prop_assert_eq!(&seen[j].0, ids);
                proptest::prop_assert_eq!(&seen[j].1, &p1);
            }
        }
    }

    proptest::proptest! {
        /// The view forms give bitwise the outputs of the slice forms, f16 and f32 rows.
        #[test]
        fn views_equal_slices(
            g in 1usize..6,
            d in 1usize..20,
            total in 1usize..50,
            picks in proptest::collection::vec(0usize..1000, 0..40),
            seed in 0usize..1000,
        ) {
            let (q, keys, values) = group_data(g, d, total, seed);
            fn view(rows: &[half::f16], total: usize, d: usize) -> ndarray::ArrayView2<'_, half::f16> {
                ndarray::ArrayView2::from_shape((total, d), rows).unwrap()
            }
            let q_view = ndarray::ArrayView2::from_shape((g, d), &q[..]).unwrap();
            let (mut probs, mut out) = (Vec::new(), vec![0.0f32; g * d]);
            dense_attention(&q, d, &keys, &values, 0.3, &mut probs, &mut out);
            let got = dense_attention_view(q_view, view(&keys, total, d), view(&values, total, d), 0.3).unwrap();
            proptest::prop_assert_eq!(got.as_slice().unwrap(), &out[..]);
            let ids: Vec<u32> = picks.iter().map(|&p| (p % total) as u32).collect();
            sparse_attention(&q, d, &keys, &values, &ids, 0.3, &mut probs, &mut out);
            let got = sparse_attention_view(q_view, view(&keys, total, d), view(&values, total, d), &ids, 0.3).unwrap();
            proptest::prop_assert_eq!(got.as_slice().unwrap(), &out[..]);
            let wide = |rows: &[half::f16]| -> Vec<f32> { rows.iter().map(|v| v.to_f32()).collect() };
            let (k32, v32) = (wide(&keys), wide(&values));
            dense_attention(&q, d, &k32, &v32, 0.3, &mut probs, &mut out);
            let k32_view = ndarray::ArrayView2::from_shape((total, d), &k32[..]).unwrap();
            let v32_view = ndarray::ArrayView2::from_shape((total, d), &v32[..]).unwrap();
            let got = dense_attention_view(q_view, k32_view, v32_view, 0.3).unwrap();
            proptest::prop_assert_eq!(got.as_slice().unwrap(), &out[..]);
        }
    }

    #[test]
    fn views_of_the_wrong_shape_or_layout_are_errors() {
        use ndarray::{Array2, s};
        let (q, k, v) =
            (Array2::<f32>::ones((2, 4)), Array2::<f32>::ones((6, 4)), Array2::<f32>::ones((6, 4)));
        let shape = |what, expected: &[usize], given: &[usize]| {
            Err(AttnError::Value(ValueError::ViewShape {
                what,
                expected: expected.to_vec(),
                given: given.to_vec(),
            }))
        };
        let k3 = Array2::<f32>::ones((6, 3));
        assert_eq!(dense_attention_view(q.view(), k3.view(), v.view(), 1.0), shape("keys", &[6, 4], &[6, 3]));
        let v5 = Array2::<f32>::ones((5, 4));
        assert_eq!(
            dense_attention_view(q.view(), k.view(), v5.view(), 1.0),
            shape("values", &[6, 4], &[5, 4])
        );
        let err =
            dense_attention_view(q.view(), k.slice(s![..;2, ..]), v.slice(s![..;2, ..]), 1.0).unwrap_err();
        let want = ValueError::NotContiguous { what: "keys", shape: vec![3, 4], strides: vec![8, 1] };
        assert_eq!(err, AttnError::Value(want));
        let qt = Array2::<f32>::ones((4, 4));
        let err = dense_attention_view(qt.t(), k.view(), v.view(), 1.0).unwrap_err();
        assert!(
            matches!(err, AttnError::Value(ValueError::NotContiguous { what: "queries", .. })),
            "{err:?}"
        );
        let err = sparse_attention_view(q.view(), k.view(), v.view(), &[0, 5, 6], 1.0).unwrap_err();
        assert!(matches!(err, AttnError::Param(ParamError { name: "ids", .. })), "{err:?}");
        assert!(err.to_string().contains("6 (at 2)") && err.to_string().contains("below 6"), "{err}");
        let empty = Array2::<f32>::zeros((2, 0));
        let err = dense_attention_view(empty.view(), empty.view(), empty.view(), 1.0).unwrap_err();
        assert_eq!(err, AttnError::Param(ParamError::zero_dim()));
    }

    #[test]
    fn union_merges_sorted_lists() {
        let mut union = Vec::new();
        union_of(&[vec![1, 4, 9], vec![], vec![0, 4, 5, 9, 12]], &mut union);
        assert_eq!(union, [0, 1, 4, 5, 9, 12]);
        let wide: Vec<Vec<u32>> = (0..20).map(|i| vec![i % 7, 30 + i]).collect();
        union_of(&wide, &mut union);
        assert_eq!(union.len(), 7 + 20);
        assert!(union.windows(2).all(|w| w[0] < w[1]));
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
