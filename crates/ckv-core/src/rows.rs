//! The row kernels of decode attention and selection: scores of a few query rows against
//! stored rows, and weighted sums of stored rows. Each stored row is read once for all the
//! query rows of a call (a GQA group reads its KV once).
//!
//! On x86-64 CPUs the rows are converted and multiplied 16 lanes at a time with AVX-512F,
//! or 8 with AVX2 + FMA + F16C (the widest the CPU has, checked once at run time);
//! elsewhere a portable path built on [`dot`] and [`axpy`] runs. All compute the same sums
//! in `f32`; their rounding differs. Within one process every call takes the same path, so
//! equal inputs always give equal bits.

use half::f16;

use crate::{Element, axpy, dot};

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod x86;

/// Stored rows by element type, for kernels written once per type.
#[derive(Debug, Clone, Copy)]
pub enum RowData<'a> {
    /// `f32` rows.
    F32(&'a [f32]),
    /// `f16` rows.
    F16(&'a [f16]),
}

/// The kernels a call runs: the portable ones, or x86-64 SIMD at a level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Portable,
    #[cfg(target_arch = "x86_64")]
    X86(x86::Level),
}

/// The widest path this CPU runs.
fn best() -> Path {
    #[cfg(target_arch = "x86_64")]
    if let Some(&level) = x86::levels().last() {
        return Path::X86(level);
    }
    Path::Portable
}

/// The instructions the row kernels run with on this CPU: `"avx512f"`, `"avx2+fma+f16c"` or
/// `"portable"`.
pub fn simd_level() -> &'static str {
    match best() {
        Path::Portable => "portable",
        #[cfg(target_arch = "x86_64")]
        Path::X86(level) => level.name(),
    }
}

/// Checks the shapes shared by both kernels and returns `(g, n)`: the number of query rows
/// and of ids.
fn shapes(d: usize, queries: usize, per_query: usize, what: &str, n: usize) -> (usize, usize) {
    assert!(d > 0, "row dimension must be positive");
    assert_eq!(queries % d, 0, "query rows must have {d} values each");
    let g = queries / d;
    assert_eq!(per_query, g * n, "{what} must hold {g} x {n} values");
    (g, n)
}

/// `scores[j * n + i] = scale * (queries[j] · rows[ids[i]])` for the `g` query rows of
/// `queries` (`[g, d]`) and the `n` row indices `ids` into `rows` (`[_, d]`); `scores`
/// holds `g * n` values, query-major.
///
/// # Panics
/// If `d == 0`, a length does not match, or an id is out of range; the pipeline checks
/// all of them before calling.
pub fn score_rows<E: Element>(
    queries: &[f32],
    d: usize,
    rows: &[E],
    ids: impl ExactSizeIterator<Item = usize> + Clone,
    scale: f32,
    scores: &mut [f32],
) {
    let (g, n) = shapes(d, queries.len(), scores.len(), "scores", ids.len());
    if g * n > 0 {
        score_rows_on(best(), queries, d, rows, ids, scale, scores);
    }
}

/// [`score_rows`] on `path`, on checked shapes.
fn score_rows_on<E: Element>(
    path: Path,
    queries: &[f32],
    d: usize,
    rows: &[E],
    ids: impl Iterator<Item = usize> + Clone,
    scale: f32,
    scores: &mut [f32],
) {
    match path {
        Path::Portable => portable_score_rows(queries, d, rows, ids, scale, scores),
        #[cfg(target_arch = "x86_64")]
        Path::X86(level) => match E::row_data(rows) {
            RowData::F32(rows) => x86::score_rows(level, queries, d, rows, ids, scale, scores),
            RowData::F16(rows) => x86::score_rows(level, queries, d, rows, ids, scale, scores),
        },
    }
}

/// [`score_rows`] without SIMD intrinsics, on checked shapes.
fn portable_score_rows<E: Element>(
    queries: &[f32],
    d: usize,
    rows: &[E],
    ids: impl Iterator<Item = usize>,
    scale: f32,
    scores: &mut [f32],
) {
    let n = scores.len() / (queries.len() / d);
    for (i, id) in ids.enumerate() {
        let row = &rows[id * d..(id + 1) * d];
        for (j, q) in queries.chunks_exact(d).enumerate() {
            scores[j * n + i] = scale * dot(q, row);
        }
    }
}

/// `out[j] += sum_i weights[j * n + i] * rows[ids[i]]` for `g` output rows (`out` is
/// `[g, d]`) and the `n` row indices `ids` into `rows`; `weights` holds `g * n` values,
/// query-major.
///
/// # Panics
/// If `d == 0`, a length does not match, or an id is out of range.
pub fn weigh_rows<E: Element>(
    weights: &[f32],
    d: usize,
    rows: &[E],
    ids: impl ExactSizeIterator<Item = usize> + Clone,
    out: &mut [f32],
) {
    let (g, n) = shapes(d, out.len(), weights.len(), "weights", ids.len());
    if g * n > 0 {
        weigh_rows_on(best(), weights, d, rows, ids, out);
    }
}

/// [`weigh_rows`] on `path`, on checked shapes.
fn weigh_rows_on<E: Element>(
    path: Path,
    weights: &[f32],
    d: usize,
    rows: &[E],
    ids: impl Iterator<Item = usize> + Clone,
    out: &mut [f32],
) {
    match path {
        Path::Portable => portable_weigh_rows(weights, d, rows, ids, out),
        #[cfg(target_arch = "x86_64")]
        Path::X86(level) => match E::row_data(rows) {
            RowData::F32(rows) => x86::weigh_rows(level, weights, d, rows, ids, out),
            RowData::F16(rows) => x86::weigh_rows(level, weights, d, rows, ids, out),
        },
    }
}

/// [`weigh_rows`] without SIMD intrinsics, on checked shapes.
fn portable_weigh_rows<E: Element>(
    weights: &[f32],
    d: usize,
    rows: &[E],
    ids: impl Iterator<Item = usize>,
    out: &mut [f32],
) {
    let n = weights.len() / (out.len() / d);
    for (i, id) in ids.enumerate() {
        let row = &rows[id * d..(id + 1) * d];
        for (j, o) in out.chunks_exact_mut(d).enumerate() {
            axpy(weights[j * n + i], row, o);
        }
    }
}

/// In-place, numerically stable softmax of one row of scores: `x_i <- exp(x_i - max) / sum`
/// in `f32`. The SIMD path's `exp` is a polynomial (relative error about 2e-7) that stops
/// at about 1e-38 for arguments below -87.3 instead of going to zero.
pub fn softmax(scores: &mut [f32]) {
    match best() {
        Path::Portable => portable_softmax(scores),
        #[cfg(target_arch = "x86_64")]
        Path::X86(_) => x86::softmax(scores),
    }
}

/// [`softmax`] with the standard library's `exp`.
fn portable_softmax(scores: &mut [f32]) {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    let inv = if sum > 0.0 { 1.0 / sum } else { 0.0 };
    for s in scores.iter_mut() {
        *s *= inv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The plain definition in `f64`.
    fn reference<E: Element>(
        q: &[f32],
        d: usize,
        rows: &[E],
        ids: &[usize],
        w: &[f32],
    ) -> (Vec<f64>, Vec<f64>) {
        let (g, n) = (q.len() / d, ids.len());
        let mut s = vec![0.0; g * n];
        let mut o = vec![0.0; g * d];
        for (i, &id) in ids.iter().enumerate() {
            let row = &rows[id * d..(id + 1) * d];
            for j in 0..g {
                s[j * n + i] = (0..d).map(|e| q[j * d + e] as f64 * row[e].to_f32() as f64).sum::<f64>();
                for e in 0..d {
                    o[j * d + e] += w[j * n + i] as f64 * row[e].to_f32() as f64;
                }
            }
        }
        (s, o)
    }

    fn check<E: Element>(g: usize, d: usize, total: usize, ids: &[usize], seed: u64) {
        let val = |i: usize, salt: u64| ((i as u64 * 2654435761 + salt * 97) % 2001) as f32 / 1000.0 - 1.0;
        let q: Vec<f32> = (0..g * d).map(|i| val(i, seed)).collect();
        let rows: Vec<E> = (0..total * d).map(|i| E::from_f32(val(i, seed + 1))).collect();
        let w: Vec<f32> = (0..g * ids.len()).map(|i| val(i, seed + 2)).collect();
        let (want_s, want_o) = reference(&q, d, &rows, ids, &w);
        let mut s = vec![f32::NAN; g * ids.len()];
        let mut o = vec![0.25f32; g * d];
        for path in paths() {
            s.fill(f32::NAN);
            o.fill(0.25);
            score_rows_on(path, &q, d, &rows, ids.iter().copied(), 0.5, &mut s);
            weigh_rows_on(path, &w, d, &rows, ids.iter().copied(), &mut o);
            for (got, want) in s.iter().zip(&want_s) {
                assert!(
                    (*got as f64 - 0.5 * want).abs() <= 1e-5 * (1.0 + want.abs()),
                    "{path:?}: {got} vs {want}"
                );
            }
            for (got, want) in o.iter().zip(&want_o) {
                assert!(
                    (*got as f64 - 0.25 - want).abs() <= 1e-5 * (1.0 + want.abs()),
                    "{path:?}: {got} vs {want}"
                );
            }
        }
    }

    /// Every path this CPU runs: the portable one and each x86-64 level.
    fn paths() -> Vec<Path> {
        let mut paths = vec![Path::Portable];
        #[cfg(target_arch = "x86_64")]
        paths.extend(x86::levels().iter().map(|&l| Path::X86(l)));
        paths
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Every group size, odd and even dims, any ids (repeats included), both types.
        #[test]
        fn match_the_definition(
            g in 1usize..10,
            d in 1usize..70,
            total in 1usize..40,
            picks in proptest::collection::vec(0usize..1000, 0..40),
            seed in 0u64..1000,
        ) {
            let ids: Vec<usize> = picks.iter().map(|p| p % total).collect();
            check::<f32>(g, d, total, &ids, seed);
            check::<f16>(g, d, total, &ids, seed);
        }
    }

    proptest! {
        /// Both paths agree with an `f64` softmax, for any length and spread of scores.
        #[test]
        fn softmax_matches_the_definition(
            x in proptest::collection::vec(-200.0f32..200.0, 0..70),
        ) {
            let m = x.iter().copied().fold(f64::NEG_INFINITY, |a, b| a.max(b as f64));
            let z: f64 = x.iter().map(|&v| (v as f64 - m).exp()).sum();
            for portable in [false, true] {
                let mut y = x.clone();
                if portable { portable_softmax(&mut y) } else { softmax(&mut y) }
                for (got, v) in y.iter().zip(&x) {
                    let want = (*v as f64 - m).exp() / z;
                    // `x - max` is rounded to f32 first: half an ulp of it is a relative
                    // error of `exp`.
                    let rounding = (*v as f64 - m).abs() * f32::EPSILON as f64;
                    let tol = (1e-6 + rounding) * want + 1e-30;
                    prop_assert!((*got as f64 - want).abs() <= tol, "{} vs {}", got, want);
                }
            }
        }
    }

    #[test]
    fn head_dim_128_group_of_four() {
        let ids: Vec<usize> = (0..37).rev().collect();
        check::<f16>(4, 128, 40, &ids, 3);
        check::<f32>(4, 128, 40, &ids, 4);
    }
}
