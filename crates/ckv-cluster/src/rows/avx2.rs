//! AVX2 + FMA + F16C versions of the row kernels: two stored rows at a time against up to
//! four query rows, eight lanes at a time, the remainder of an odd `d` in scalar code.

use std::arch::x86_64::*;
use std::sync::OnceLock;

use half::f16;

use crate::Element;

/// Whether this CPU has AVX2, FMA and F16C (checked once).
pub(super) fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    })
}

/// Element types loaded eight lanes at a time.
pub(super) trait Lanes: Element {
    /// Eight values starting at `src`, as `f32`.
    ///
    /// # Safety
    /// AVX2 and F16C are available and `src` points to eight readable elements.
    unsafe fn load8(src: *const Self) -> __m256;
}

impl Lanes for f32 {
    #[inline(always)]
    unsafe fn load8(src: *const Self) -> __m256 {
        // SAFETY: the caller guarantees eight readable values and AVX.
        unsafe { _mm256_loadu_ps(src) }
    }
}

impl Lanes for f16 {
    #[inline(always)]
    unsafe fn load8(src: *const Self) -> __m256 {
        // SAFETY: the caller guarantees eight readable values (16 bytes) and F16C.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(src.cast())) }
    }
}

/// Sum of the eight lanes, in a fixed order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// Scores of the `R` rows against the `Q` query rows of `q` (`[Q, d]`), written to
/// `scores[(j0 + j) * n + i + r]`.
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
fn score_tile<L: Lanes, const R: usize, const Q: usize>(
    q: &[f32],
    d: usize,
    rows: [&[L]; R],
    scale: f32,
    scores: &mut [f32],
    n: usize,
    i: usize,
    j0: usize,
) {
    let q = &q[..Q * d];
    let lanes = d / 8 * 8;
    let mut acc = [[_mm256_setzero_ps(); Q]; R];
    for o in (0..lanes).step_by(8) {
        for (row, acc) in rows.iter().zip(acc.iter_mut()) {
            debug_assert_eq!(row.len(), d);
            // SAFETY: o + 8 <= d = row.len(); AVX2 + F16C are enabled here.
            let k = unsafe { L::load8(row.as_ptr().add(o)) };
            for (j, a) in acc.iter_mut().enumerate() {
                // SAFETY: j * d + o + 8 <= Q * d = q.len().
                let qv = unsafe { _mm256_loadu_ps(q.as_ptr().add(j * d + o)) };
                *a = _mm256_fmadd_ps(qv, k, *a);
            }
        }
    }
    for r in 0..R {
        for j in 0..Q {
            let mut s = hsum(acc[r][j]);
            for e in lanes..d {
                s += q[j * d + e] * rows[r][e].to_f32();
            }
            scores[(j0 + j) * n + i + r] = scale * s;
        }
    }
}

/// `out[j] += sum_r w[r][j] * rows[r]` for the `Q` output rows of `out` (`[Q, d]`).
#[target_feature(enable = "avx2,fma,f16c")]
fn weigh_tile<L: Lanes, const R: usize, const Q: usize>(
    w: [[f32; Q]; R],
    d: usize,
    rows: [&[L]; R],
    out: &mut [f32],
) {
    let out = &mut out[..Q * d];
    let lanes = d / 8 * 8;
    let mut wv = [[_mm256_setzero_ps(); Q]; R];
    for (wv, w) in wv.iter_mut().zip(&w) {
        for (v, &x) in wv.iter_mut().zip(w) {
            *v = _mm256_set1_ps(x);
        }
    }
    for o in (0..lanes).step_by(8) {
        let mut acc = [_mm256_setzero_ps(); Q];
        for (j, a) in acc.iter_mut().enumerate() {
            // SAFETY: j * d + o + 8 <= Q * d = out.len().
            *a = unsafe { _mm256_loadu_ps(out.as_ptr().add(j * d + o)) };
        }
        for r in 0..R {
            // SAFETY: o + 8 <= d = rows[r].len(); AVX2 + F16C are enabled here.
            let v = unsafe { L::load8(rows[r].as_ptr().add(o)) };
            for j in 0..Q {
                acc[j] = _mm256_fmadd_ps(wv[r][j], v, acc[j]);
            }
        }
        for (j, a) in acc.iter().enumerate() {
            // SAFETY: as for the loads above.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(j * d + o), *a) };
        }
    }
    for e in lanes..d {
        for j in 0..Q {
            for r in 0..R {
                out[j * d + e] += w[r][j] * rows[r][e].to_f32();
            }
        }
    }
}

/// The rows of `R` ids (each checked against `rows`).
#[inline(always)]
fn pick<L, const R: usize>(rows: &[L], d: usize, ids: [usize; R]) -> [&[L]; R] {
    ids.map(|id| &rows[id * d..(id + 1) * d])
}

/// Scores of `R` rows (ids starting at position `i`) against every query row.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn score_rows_of<L: Lanes, const R: usize>(
    queries: &[f32],
    d: usize,
    rows: [&[L]; R],
    scale: f32,
    scores: &mut [f32],
    i: usize,
) {
    let g = queries.len() / d;
    let n = scores.len() / g;
    for j0 in (0..g).step_by(4) {
        let q = &queries[j0 * d..];
        match g - j0 {
            1 => score_tile::<L, R, 1>(q, d, rows, scale, scores, n, i, j0),
            2 => score_tile::<L, R, 2>(q, d, rows, scale, scores, n, i, j0),
            3 => score_tile::<L, R, 3>(q, d, rows, scale, scores, n, i, j0),
            _ => score_tile::<L, R, 4>(q, d, rows, scale, scores, n, i, j0),
        }
    }
}

/// Adds `R` weighted rows (ids starting at position `i`) to every output row.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn weigh_rows_of<L: Lanes, const R: usize>(
    weights: &[f32],
    d: usize,
    rows: [&[L]; R],
    out: &mut [f32],
    i: usize,
) {
    let g = out.len() / d;
    let n = weights.len() / g;
    for j0 in (0..g).step_by(4) {
        let o = &mut out[j0 * d..];
        match g - j0 {
            1 => weigh_tile::<L, R, 1>(tile_weights(weights, n, i, j0), d, rows, o),
            2 => weigh_tile::<L, R, 2>(tile_weights(weights, n, i, j0), d, rows, o),
            3 => weigh_tile::<L, R, 3>(tile_weights(weights, n, i, j0), d, rows, o),
            _ => weigh_tile::<L, R, 4>(tile_weights(weights, n, i, j0), d, rows, o),
        }
    }
}

/// The weights of rows `i..i + R` for output rows `j0..j0 + Q` (`weights` is `[g, n]`).
#[inline(always)]
fn tile_weights<const R: usize, const Q: usize>(
    weights: &[f32],
    n: usize,
    i: usize,
    j0: usize,
) -> [[f32; Q]; R] {
    let mut w = [[0.0; Q]; R];
    for (r, wr) in w.iter_mut().enumerate() {
        for (j, x) in wr.iter_mut().enumerate() {
            *x = weights[(j0 + j) * n + i + r];
        }
    }
    w
}

/// Rows fetched ahead of the one being computed, into the L2 cache (whose queue holds more
/// misses than the L1's): random rows (a selection) come from memory with many misses in
/// flight instead of a few.
const AHEAD: usize = 16;

/// Asks the cache for the row `id` of `rows` (every 64-byte line of it).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn prefetch_row<L>(rows: &[L], d: usize, id: usize) {
    let row = &rows[id * d..(id + 1) * d];
    for offset in (0..std::mem::size_of_val(row)).step_by(64) {
        // SAFETY: offset is inside the row; a prefetch never faults nor changes memory.
        unsafe { _mm_prefetch::<_MM_HINT_T1>(row.as_ptr().cast::<i8>().add(offset)) };
    }
}

/// [`super::score_rows`], to call once [`available`] said yes; shapes are checked by the
/// caller.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn score_rows<L: Lanes>(
    queries: &[f32],
    d: usize,
    rows: &[L],
    ids: impl Iterator<Item = usize> + Clone,
    scale: f32,
    scores: &mut [f32],
) {
    let mut ahead = ids.clone().skip(AHEAD);
    let mut ids = ids.enumerate();
    while let Some((i, a)) = ids.next() {
        for id in ahead.by_ref().take(2) {
            prefetch_row(rows, d, id);
        }
        match ids.next() {
            Some((_, b)) => score_rows_of::<L, 2>(queries, d, pick(rows, d, [a, b]), scale, scores, i),
            None => score_rows_of::<L, 1>(queries, d, pick(rows, d, [a]), scale, scores, i),
        }
    }
}

/// [`super::weigh_rows`], to call once [`available`] said yes; shapes are checked by the
/// caller.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn weigh_rows<L: Lanes>(
    weights: &[f32],
    d: usize,
    rows: &[L],
    ids: impl Iterator<Item = usize> + Clone,
    out: &mut [f32],
) {
    let mut ahead = ids.clone().skip(AHEAD);
    let mut ids = ids.enumerate();
    while let Some((i, a)) = ids.next() {
        for id in ahead.by_ref().take(2) {
            prefetch_row(rows, d, id);
        }
        match ids.next() {
            Some((_, b)) => weigh_rows_of::<L, 2>(weights, d, pick(rows, d, [a, b]), out, i),
            None => weigh_rows_of::<L, 1>(weights, d, pick(rows, d, [a]), out, i),
        }
    }
}

/// `exp(x)` on eight lanes: `2^k * p(r)` with `x = k ln 2 + r`, `|r| <= ln 2 / 2`, and a
/// degree-6 polynomial for `e^r` (relative error about 2e-7). Inputs are clamped to
/// `[-87.3, 88.3]`: below, the result is about 1e-38 instead of a smaller number or zero.
#[target_feature(enable = "avx2,fma,f16c")]
fn exp8(x: __m256) -> __m256 {
    let x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3)), _mm256_set1_ps(88.3));
    let k = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
    ));
    // r = x - k ln 2, with ln 2 split in two for accuracy.
    let r = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693_359_4), x);
    let r = _mm256_fnmadd_ps(k, _mm256_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm256_set1_ps(1.987_569_1e-4);
    for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 5e-1] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let e_r = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0));
    let two_k = _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)));
    _mm256_mul_ps(e_r, _mm256_castsi256_ps(two_k))
}

/// [`super::softmax`] with [`exp8`]; the last partial group of eight goes through a padded
/// register.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn softmax(x: &mut [f32]) {
    let lanes = x.len() / 8 * 8;
    let (body, rest) = x.split_at_mut(lanes);
    let mut max = _mm256_set1_ps(f32::NEG_INFINITY);
    for c in body.chunks_exact(8) {
        // SAFETY: c holds eight values.
        max = _mm256_max_ps(max, unsafe { _mm256_loadu_ps(c.as_ptr()) });
    }
    let mut buf = [0.0f32; 8];
    // SAFETY: buf holds eight values.
    unsafe { _mm256_storeu_ps(buf.as_mut_ptr(), max) };
    let m = buf.iter().chain(rest.iter()).fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let mv = _mm256_set1_ps(m);
    let mut sum = _mm256_setzero_ps();
    for c in body.chunks_exact_mut(8) {
        // SAFETY: c holds eight values.
        unsafe {
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), mv));
            sum = _mm256_add_ps(sum, e);
            _mm256_storeu_ps(c.as_mut_ptr(), e);
        }
    }
    let mut total = hsum(sum);
    if !rest.is_empty() {
        buf = [m; 8];
        buf[..rest.len()].copy_from_slice(rest);
        // SAFETY: buf holds eight values.
        unsafe { _mm256_storeu_ps(buf.as_mut_ptr(), exp8(_mm256_sub_ps(_mm256_loadu_ps(buf.as_ptr()), mv))) };
        rest.copy_from_slice(&buf[..rest.len()]);
        total += rest.iter().sum::<f32>();
    }
    let inv = if total > 0.0 { 1.0 / total } else { 0.0 };
    let iv = _mm256_set1_ps(inv);
    for c in body.chunks_exact_mut(8) {
        // SAFETY: c holds eight values.
        unsafe { _mm256_storeu_ps(c.as_mut_ptr(), _mm256_mul_ps(_mm256_loadu_ps(c.as_ptr()), iv)) };
    }
    for v in rest {
        *v *= inv;
    }
}
