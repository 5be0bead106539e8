//! x86-64 row kernels, written once over the vector width: AVX2 + FMA + F16C (8 lanes) and
//! AVX-512F (16 lanes). Two stored rows at a time against up to four query rows; the
//! remainder of `d` in scalar code. Softmax uses AVX2 on both levels.

use std::arch::x86_64::*;
use std::sync::OnceLock;

use half::f16;

use crate::Element;

/// A level of x86-64 vector instructions the kernels are compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Level {
    /// AVX2, FMA and F16C: 8 lanes.
    Avx2,
    /// AVX-512F on top of those: 16 lanes.
    Avx512,
}

impl Level {
    /// Its name, as the bench prints it.
    pub(super) fn name(self) -> &'static str {
        match self {
            Level::Avx2 => "avx2+fma+f16c",
            Level::Avx512 => "avx512f",
        }
    }
}

/// The levels this CPU runs, narrowest first (checked once).
pub(super) fn levels() -> &'static [Level] {
    static LEVELS: OnceLock<Vec<Level>> = OnceLock::new();
    LEVELS.get_or_init(|| {
        let mut levels = Vec::new();
        if is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
        {
            levels.push(Level::Avx2);
            if is_x86_feature_detected!("avx512f") {
                levels.push(Level::Avx512);
            }
        }
        levels
    })
}

/// A vector width and its operations.
///
/// # Safety
/// Every method needs the CPU features of its level; callers run inside a function compiled
/// for them (the `#[target_feature]` entry points below) and pass pointers to enough
/// readable (or writable) values.
pub(super) trait Simd {
    /// `f32` lanes.
    const LANES: usize;
    /// The register type.
    type V: Copy;
    /// All lanes zero.
    unsafe fn zero() -> Self::V;
    /// All lanes `x`.
    unsafe fn splat(x: f32) -> Self::V;
    /// `LANES` values from `src`.
    unsafe fn load(src: *const f32) -> Self::V;
    /// `LANES` `f16` values from `src`, converted.
    unsafe fn load_f16(src: *const f16) -> Self::V;
    /// Stores `LANES` values to `dst`.
    unsafe fn store(dst: *mut f32, v: Self::V);
    /// `a * b + c`, fused.
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// Sum of the lanes, in a fixed order.
    unsafe fn hsum(v: Self::V) -> f32;
}

/// 8 lanes: AVX2, FMA, F16C.
pub(super) struct Avx2;

impl Simd for Avx2 {
    const LANES: usize = 8;
    type V = __m256;
    #[inline(always)]
    unsafe fn zero() -> __m256 {
        // SAFETY: AVX (trait contract).
        unsafe { _mm256_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> __m256 {
        // SAFETY: AVX (trait contract).
        unsafe { _mm256_set1_ps(x) }
    }
    #[inline(always)]
    unsafe fn load(src: *const f32) -> __m256 {
        // SAFETY: eight readable values and AVX (trait contract).
        unsafe { _mm256_loadu_ps(src) }
    }
    #[inline(always)]
    unsafe fn load_f16(src: *const f16) -> __m256 {
        // SAFETY: eight readable values (16 bytes) and F16C (trait contract).
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(src.cast())) }
    }
    #[inline(always)]
    unsafe fn store(dst: *mut f32, v: __m256) {
        // SAFETY: eight writable values and AVX (trait contract).
        unsafe { _mm256_storeu_ps(dst, v) }
    }
    #[inline(always)]
    unsafe fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
        // SAFETY: FMA (trait contract).
        unsafe { _mm256_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        // SAFETY: AVX (trait contract).
        unsafe {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
        }
    }
}

/// 16 lanes: AVX-512F.
pub(super) struct Avx512;

impl Simd for Avx512 {
    const LANES: usize = 16;
    type V = __m512;
    #[inline(always)]
    unsafe fn zero() -> __m512 {
        // SAFETY: AVX-512F (trait contract).
        unsafe { _mm512_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> __m512 {
        // SAFETY: AVX-512F (trait contract).
        unsafe { _mm512_set1_ps(x) }
    }
    #[inline(always)]
    unsafe fn load(src: *const f32) -> __m512 {
        // SAFETY: sixteen readable values and AVX-512F (trait contract).
        unsafe { _mm512_loadu_ps(src) }
    }
    #[inline(always)]
    unsafe fn load_f16(src: *const f16) -> __m512 {
        // SAFETY: sixteen readable values (32 bytes) and AVX-512F (trait contract).
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(src.cast())) }
    }
    #[inline(always)]
    unsafe fn store(dst: *mut f32, v: __m512) {
        // SAFETY: sixteen writable values and AVX-512F (trait contract).
        unsafe { _mm512_storeu_ps(dst, v) }
    }
    #[inline(always)]
    unsafe fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
        // SAFETY: AVX-512F (trait contract).
        unsafe { _mm512_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    unsafe fn hsum(v: __m512) -> f32 {
        // SAFETY: AVX-512F (trait contract).
        unsafe {
            let lo = _mm512_castps512_ps256(v);
            let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
            Avx2::hsum(_mm256_add_ps(lo, hi))
        }
    }
}

/// Element types the kernels load: `f32` as is, `f16` converted.
pub(super) trait Lanes: Element {
    /// `S::LANES` values from `src`, as `f32`.
    ///
    /// # Safety
    /// As for [`Simd`].
    unsafe fn load<S: Simd>(src: *const Self) -> S::V;
}

impl Lanes for f32 {
    #[inline(always)]
    unsafe fn load<S: Simd>(src: *const Self) -> S::V {
        // SAFETY: the caller's contract.
        unsafe { S::load(src) }
    }
}

impl Lanes for f16 {
    #[inline(always)]
    unsafe fn load<S: Simd>(src: *const Self) -> S::V {
        // SAFETY: the caller's contract.
        unsafe { S::load_f16(src) }
    }
}

/// Scores of the `R` rows against the `Q` query rows of `q` (`[Q, d]`), written to
/// `scores[(j0 + j) * n + i + r]`.
///
/// # Safety
/// As for [`Simd`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn score_tile<S: Simd, L: Lanes, const R: usize, const Q: usize>(
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
    let lanes = d / S::LANES * S::LANES;
    // SAFETY (this block): the caller's features; every pointer is at most `o + LANES <= d`
    // values into a row (`d` long) or a query row of `q` (`Q * d` long).
    unsafe {
        let mut acc = [[S::zero(); Q]; R];
        for o in (0..lanes).step_by(S::LANES) {
            for (row, acc) in rows.iter().zip(acc.iter_mut()) {
                debug_assert_eq!(row.len(), d);
                let k = L::load::<S>(row.as_ptr().add(o));
                for (j, a) in acc.iter_mut().enumerate() {
                    *a = S::fma(S::load(q.as_ptr().add(j * d + o)), k, *a);
                }
            }
        }
        for (r, row) in rows.iter().enumerate() {
            for j in 0..Q {
                let mut s = S::hsum(acc[r][j]);
                for e in lanes..d {
                    s += q[j * d + e] * row[e].to_f32();
                }
                scores[(j0 + j) * n + i + r] = scale * s;
            }
        }
    }
}

/// `out[j] += sum_r w[r][j] * rows[r]` for the `Q` output rows of `out` (`[Q, d]`).
///
/// # Safety
/// As for [`Simd`].
#[inline(always)]
unsafe fn weigh_tile<S: Simd, L: Lanes, const R: usize, const Q: usize>(
    w: [[f32; Q]; R],
    d: usize,
    rows: [&[L]; R],
    out: &mut [f32],
) {
    let out = &mut out[..Q * d];
    let lanes = d / S::LANES * S::LANES;
    // SAFETY (this block): the caller's features; every pointer is at most `o + LANES <= d`
    // values into a row (`d` long) or an output row of `out` (`Q * d` long).
    unsafe {
        let mut wv = [[S::zero(); Q]; R];
        for (wv, w) in wv.iter_mut().zip(&w) {
            for (v, &x) in wv.iter_mut().zip(w) {
                *v = S::splat(x);
            }
        }
        for o in (0..lanes).step_by(S::LANES) {
            let mut acc = [S::zero(); Q];
            for (j, a) in acc.iter_mut().enumerate() {
                *a = S::load(out.as_ptr().add(j * d + o));
            }
            for (row, wv) in rows.iter().zip(&wv) {
                let v = L::load::<S>(row.as_ptr().add(o));
                for (a, &w) in acc.iter_mut().zip(wv) {
                    *a = S::fma(w, v, *a);
                }
            }
            for (j, a) in acc.iter().enumerate() {
                S::store(out.as_mut_ptr().add(j * d + o), *a);
            }
        }
    }
    for e in lanes..d {
        for j in 0..Q {
            for (row, w) in rows.iter().zip(&w) {
                out[j * d + e] += w[j] * row[e].to_f32();
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
///
/// # Safety
/// As for [`Simd`].
#[inline(always)]
unsafe fn score_rows_of<S: Simd, L: Lanes, const R: usize>(
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
        // SAFETY: the caller's contract.
        unsafe {
            match g - j0 {
                1 => score_tile::<S, L, R, 1>(q, d, rows, scale, scores, n, i, j0),
                2 => score_tile::<S, L, R, 2>(q, d, rows, scale, scores, n, i, j0),
                3 => score_tile::<S, L, R, 3>(q, d, rows, scale, scores, n, i, j0),
                _ => score_tile::<S, L, R, 4>(q, d, rows, scale, scores, n, i, j0),
            }
        }
    }
}

/// Adds `R` weighted rows (ids starting at position `i`) to every output row.
///
/// # Safety
/// As for [`Simd`].
#[inline(always)]
unsafe fn weigh_rows_of<S: Simd, L: Lanes, const R: usize>(
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
        // SAFETY: the caller's contract.
        unsafe {
            match g - j0 {
                1 => weigh_tile::<S, L, R, 1>(tile_weights(weights, n, i, j0), d, rows, o),
                2 => weigh_tile::<S, L, R, 2>(tile_weights(weights, n, i, j0), d, rows, o),
                3 => weigh_tile::<S, L, R, 3>(tile_weights(weights, n, i, j0), d, rows, o),
                _ => weigh_tile::<S, L, R, 4>(tile_weights(weights, n, i, j0), d, rows, o),
            }
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
#[inline(always)]
fn prefetch_row<L>(rows: &[L], d: usize, id: usize) {
    let row = &rows[id * d..(id + 1) * d];
    for offset in (0..std::mem::size_of_val(row)).step_by(64) {
        // SAFETY: SSE is part of x86-64; offset is inside the row; a prefetch never faults
        // nor changes memory.
        unsafe { _mm_prefetch::<_MM_HINT_T1>(row.as_ptr().cast::<i8>().add(offset)) };
    }
}

/// The driver of [`super::score_rows`] at one level: rows in pairs, fetched ahead.
///
/// # Safety
/// As for [`Simd`].
#[inline(always)]
unsafe fn score_rows_with<S: Simd, L: Lanes>(
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
        // SAFETY: the caller's contract.
        unsafe {
            match ids.next() {
                Some((_, b)) => score_rows_of::<S, L, 2>(queries, d, pick(rows, d, [a, b]), scale, scores, i),
                None => score_rows_of::<S, L, 1>(queries, d, pick(rows, d, [a]), scale, scores, i),
            }
        }
    }
}

/// The driver of [`super::weigh_rows`] at one level: rows in pairs, fetched ahead.
///
/// # Safety
/// As for [`Simd`].
#[inline(always)]
unsafe fn weigh_rows_with<S: Simd, L: Lanes>(
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
        // SAFETY: the caller's contract.
        unsafe {
            match ids.next() {
                Some((_, b)) => weigh_rows_of::<S, L, 2>(weights, d, pick(rows, d, [a, b]), out, i),
                None => weigh_rows_of::<S, L, 1>(weights, d, pick(rows, d, [a]), out, i),
            }
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn score_rows_avx2<L: Lanes>(
    queries: &[f32],
    d: usize,
    rows: &[L],
    ids: impl Iterator<Item = usize> + Clone,
    scale: f32,
    scores: &mut [f32],
) {
    // SAFETY: compiled for AVX2, FMA and F16C.
    unsafe { score_rows_with::<Avx2, L>(queries, d, rows, ids, scale, scores) }
}

#[target_feature(enable = "avx512f,avx2,fma,f16c")]
fn score_rows_avx512<L: Lanes>(
    queries: &[f32],
    d: usize,
    rows: &[L],
    ids: impl Iterator<Item = usize> + Clone,
    scale: f32,
    scores: &mut [f32],
) {
    // SAFETY: compiled for AVX-512F.
    unsafe { score_rows_with::<Avx512, L>(queries, d, rows, ids, scale, scores) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn weigh_rows_avx2<L: Lanes>(
    weights: &[f32],
    d: usize,
    rows: &[L],
    ids: impl Iterator<Item = usize> + Clone,
    out: &mut [f32],
) {
    // SAFETY: compiled for AVX2, FMA and F16C.
    unsafe { weigh_rows_with::<Avx2, L>(weights, d, rows, ids, out) }
}

#[target_feature(enable = "avx512f,avx2,fma,f16c")]
fn weigh_rows_avx512<L: Lanes>(
    weights: &[f32],
    d: usize,
    rows: &[L],
    ids: impl Iterator<Item = usize> + Clone,
    out: &mut [f32],
) {
    // SAFETY: compiled for AVX-512F.
    unsafe { weigh_rows_with::<Avx512, L>(weights, d, rows, ids, out) }
}

/// [`super::score_rows`] at `level`, one of [`levels`]; shapes are checked by the caller.
pub(super) fn score_rows<L: Lanes>(
    level: Level,
    queries: &[f32],
    d: usize,
    rows: &[L],
    ids: impl Iterator<Item = usize> + Clone,
    scale: f32,
    scores: &mut [f32],
) {
    assert!(levels().contains(&level), "{level:?} is not available on this CPU");
    // SAFETY: the CPU has the level's features (checked above).
    unsafe {
        match level {
            Level::Avx2 => score_rows_avx2(queries, d, rows, ids, scale, scores),
            Level::Avx512 => score_rows_avx512(queries, d, rows, ids, scale, scores),
        }
    }
}

/// [`super::weigh_rows`] at `level`, one of [`levels`]; shapes are checked by the caller.
pub(super) fn weigh_rows<L: Lanes>(
    level: Level,
    weights: &[f32],
    d: usize,
    rows: &[L],
    ids: impl Iterator<Item = usize> + Clone,
    out: &mut [f32],
) {
    assert!(levels().contains(&level), "{level:?} is not available on this CPU");
    // SAFETY: the CPU has the level's features (checked above).
    unsafe {
        match level {
            Level::Avx2 => weigh_rows_avx2(weights, d, rows, ids, out),
            Level::Avx512 => weigh_rows_avx512(weights, d, rows, ids, out),
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
fn softmax_avx2(x: &mut [f32]) {
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
    // SAFETY: compiled for AVX2.
    let mut total = unsafe { Avx2::hsum(sum) };
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

/// [`super::softmax`] with AVX2, when [`levels`] is not empty.
pub(super) fn softmax(x: &mut [f32]) {
    assert!(!levels().is_empty(), "AVX2 is not available on this CPU");
    // SAFETY: the CPU has AVX2, FMA and F16C (checked above).
    unsafe { softmax_avx2(x) }
}
