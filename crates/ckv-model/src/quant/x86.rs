//! AVX2 forms of the integer dot products: 32 products of unsigned weight values with
//! signed activations per `vpmaddubsw`, summed to 32-bit lanes, scaled per block in `f32`.
//!
//! Weight values are unsigned (the offsets of Q4_0, Q5_0 and Q6_K come back through the
//! activations' sums), at most 63, so a pair of products never saturates 16 bits
//! (`2 * 63 * 127`). Q8_0's signed weights go through the sign trick: `|w| * sign(w) a`.

#![allow(unsafe_code)]

use std::arch::x86_64::*;
use std::sync::OnceLock;

use super::GgmlType;
use super::blocks::{k4, k4_scales, k6, q5_high};
use super::dot::DotKernel;
use super::q8::{Q8Block, Q8KBlock};

/// The AVX2 kernel of `dtype`, when this CPU has AVX2, FMA and F16C (checked once).
pub(super) fn kernel(dtype: GgmlType) -> Option<DotKernel> {
    static AVX2: OnceLock<bool> = OnceLock::new();
    if !*AVX2.get_or_init(|| {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    }) {
        return None;
    }
    // SAFETY of every kernel below: AVX2, FMA and F16C were just checked; each reads whole blocks
    // of `row` and `acts`, zipped, so never past either.
    // SAFETY of every kernel below: AVX2, FMA and F16C were just checked; each reads whole
    // blocks of `row` and indexes the activations (bounds-checked).
    macro_rules! pair {
        ($variant:ident, $f:ident) => {
            DotKernel::$variant {
                one: |w, a| unsafe { $f::<1>(w, [a])[0] },
                four: |w, a| unsafe { $f::<4>(w, a) },
            }
        };
    }
    Some(match dtype {
        GgmlType::Q4_0 => pair!(Q8, q4_0),
        GgmlType::Q4_1 => pair!(Q8, q4_1),
        GgmlType::Q5_0 => pair!(Q8, q5_0),
        GgmlType::Q5_1 => pair!(Q8, q5_1),
        GgmlType::Q8_0 => pair!(Q8, q8_0),
        GgmlType::Q4_K => pair!(Q8K, q4_k),
        GgmlType::Q5_K => pair!(Q8K, q5_k),
        GgmlType::Q6_K => pair!(Q8K, q6_k),
        _ => return None,
    })
}

/// The f16 at `bytes[at..at + 2]`, as `f32` (one F16C instruction, inline).
#[inline(always)]
unsafe fn half_at(bytes: &[u8], at: usize) -> f32 {
    // SAFETY: F16C (caller's contract).
    unsafe {
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(u16::from_le_bytes([bytes[at], bytes[at + 1]]) as i32)))
    }
}

/// Asks for the two weight rows after `row` (the rows a tile computes next lie right after
/// it in memory): weights stream from memory, and the hardware prefetcher stops at page
/// boundaries.
#[inline(always)]
fn prefetch_next_rows(row: &[u8]) {
    let start = row.as_ptr().wrapping_add(row.len());
    for offset in (0..2 * row.len()).step_by(64) {
        // SAFETY: SSE is part of x86-64; a prefetch never faults nor changes memory, whatever
        // the address (computed with wrapping arithmetic, never dereferenced).
        unsafe { _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(offset).cast::<i8>()) };
    }
}

/// `Σ` of the 8 lanes.
#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    // SAFETY: AVX (caller's contract).
    unsafe {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }
}

/// Unsigned `u` times signed `s`, byte by byte, summed in fours to 8 `i32` lanes.
#[inline(always)]
unsafe fn dot_u8_i8(u: __m256i, s: __m256i) -> __m256i {
    // SAFETY: AVX2 (caller's contract).
    unsafe { _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)) }
}

/// The 32 nibbles of the 16 bytes at `p`: low nibbles first (elements 0..16), then high.
#[inline(always)]
unsafe fn nibbles32(p: *const u8) -> __m256i {
    // SAFETY: 16 readable bytes and AVX2 (caller's contract).
    unsafe {
        let x = _mm_loadu_si128(p.cast());
        let m = _mm_set1_epi8(0x0F);
        _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16::<4>(x), m), _mm_and_si128(x, m))
    }
}

/// `0x10` in byte `e` where bit `e` of `bits` is set, else 0.
#[inline(always)]
unsafe fn fifth_bits(bits: u32) -> __m256i {
    // SAFETY: AVX2 (caller's contract).
    unsafe {
        // Byte e takes byte e / 8 of `bits` (the shuffle works per 128-bit lane, both lanes
        // hold all four bytes), then keeps bit e % 8.
        let spread = _mm256_shuffle_epi8(
            _mm256_set1_epi32(bits as i32),
            _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0),
        );
        let mask = _mm256_set1_epi64x(0x8040201008040201u64 as i64);
        let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, mask), mask);
        _mm256_and_si256(set, _mm256_set1_epi8(0x10))
    }
}

/// The 32-blocks against `R` rows of activations: `Σ_b scale_b * (w_b · a_b) + offset_b *
/// s_b` for each row, where `values` unpacks a block's 32 values (once for all rows) and
/// `coefs` gives `(scale, offset)` from its bytes. `SIGNED` values (Q8_0) go through the
/// sign trick.
#[inline(always)]
unsafe fn blocks32<const R: usize, const SIGNED: bool>(
    row: &[u8],
    acts: [&[Q8Block]; R],
    block_bytes: usize,
    values: impl Fn(&[u8]) -> __m256i,
    coefs: impl Fn(&[u8]) -> (f32, f32),
) -> [f32; R] {
    // SAFETY: AVX2, FMA and F16C (caller's contract); `values` reads inside its block.
    unsafe {
        prefetch_next_rows(row);
        let mut acc = [_mm256_setzero_ps(); R];
        let mut offsets = [0.0f32; R];
        for (i, b) in row.chunks_exact(block_bytes).enumerate() {
            let w = values(b);
            let u = if SIGNED { _mm256_abs_epi8(w) } else { w };
            let (scale, offset) = coefs(b);
            for r in 0..R {
                let a = &acts[r][i];
                let x = _mm256_loadu_si256(a.qs.as_ptr().cast());
                let x = if SIGNED { _mm256_sign_epi8(x, w) } else { x };
                let sum = _mm256_cvtepi32_ps(dot_u8_i8(u, x));
                acc[r] = _mm256_fmadd_ps(sum, _mm256_set1_ps(scale * a.d), acc[r]);
                offsets[r] += offset * a.s;
            }
        }
        std::array::from_fn(|r| hsum(acc[r]) + offsets[r])
    }
}

/// The 32 values of a Q4 block whose nibbles start at byte `at`.
#[inline(always)]
unsafe fn q4_values(b: &[u8], at: usize) -> __m256i {
    // SAFETY: AVX2 (caller's contract); 16 bytes at `at` inside the block.
    unsafe { nibbles32(b[at..at + 16].as_ptr()) }
}

/// The 32 values of a Q5 block: fifth bits at `high`, nibbles at `high + 4`.
#[inline(always)]
unsafe fn q5_values(b: &[u8], high: usize) -> __m256i {
    // SAFETY: AVX2 (caller's contract); 20 bytes at `high` inside the block.
    unsafe { _mm256_or_si256(q4_values(b, high + 4), fifth_bits(q5_high(b, high))) }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_0<const R: usize>(row: &[u8], acts: [&[Q8Block]; R]) -> [f32; R] {
    // SAFETY: compiled for AVX2, FMA and F16C; 18-byte blocks, values at 2..18.
    unsafe {
        let d = |b: &[u8]| half_at(b, 0);
        blocks32::<R, false>(row, acts, 18, |b| q4_values(b, 2), |b| (d(b), -8.0 * d(b)))
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_1<const R: usize>(row: &[u8], acts: [&[Q8Block]; R]) -> [f32; R] {
    // SAFETY: compiled for AVX2, FMA and F16C; 20-byte blocks, values at 4..20.
    unsafe { blocks32::<R, false>(row, acts, 20, |b| q4_values(b, 4), |b| (half_at(b, 0), half_at(b, 2))) }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q5_0<const R: usize>(row: &[u8], acts: [&[Q8Block]; R]) -> [f32; R] {
    // SAFETY: compiled for AVX2, FMA and F16C; 22-byte blocks, fifth bits at 2..6, values at
    // 6..22.
    unsafe {
        let d = |b: &[u8]| half_at(b, 0);
        blocks32::<R, false>(row, acts, 22, |b| q5_values(b, 2), |b| (d(b), -16.0 * d(b)))
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q5_1<const R: usize>(row: &[u8], acts: [&[Q8Block]; R]) -> [f32; R] {
    // SAFETY: compiled for AVX2, FMA and F16C; 24-byte blocks, fifth bits at 4..8, values at
    // 8..24.
    unsafe { blocks32::<R, false>(row, acts, 24, |b| q5_values(b, 4), |b| (half_at(b, 0), half_at(b, 2))) }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_0<const R: usize>(row: &[u8], acts: [&[Q8Block]; R]) -> [f32; R] {
    // SAFETY: compiled for AVX2, FMA and F16C; 34-byte blocks, values at 2..34.
    unsafe {
        let values = |b: &[u8]| _mm256_loadu_si256(b[2..34].as_ptr().cast());
        blocks32::<R, true>(row, acts, 34, values, |b| (half_at(b, 0), 0.0))
    }
}

/// Q4_K and Q5_K against `R` rows: per super-block, the sub-scaled sums in `i32`, then
/// `d * sum - dmin * Σ_j m_j Σ a_j` in `f32`. `HIGH` is Q5_K (fifth bits at `k4::Q5_HIGH`).
#[inline(always)]
unsafe fn k4_blocks<const R: usize, const HIGH: bool>(
    row: &[u8],
    acts: [&[Q8KBlock]; R],
    block_bytes: usize,
    values: usize,
) -> [f32; R] {
    // SAFETY: AVX2, FMA and F16C (caller's contract); every load is inside a block: 32 value
    // bytes at `values + 32 j` (j < 4) and the 32 fifth-bit bytes.
    unsafe {
        prefetch_next_rows(row);
        let mut acc = [_mm256_setzero_ps(); R];
        let mut mins_total = [0.0f32; R];
        let m4 = _mm256_set1_epi8(0x0F);
        let one = _mm256_set1_epi8(1);
        for (i, b) in row.chunks_exact(block_bytes).enumerate() {
            let scales = k4_scales(&b[k4::SCALES..k4::SCALES + 12]);
            let bits = if HIGH {
                _mm256_loadu_si256(b[k4::Q5_HIGH..].as_ptr().cast())
            } else {
                _mm256_setzero_si256()
            };
            let mut sum = [_mm256_setzero_si256(); R];
            for j in 0..4 {
                let q = _mm256_loadu_si256(b[values + 32 * j..].as_ptr().cast());
                let mut lo = _mm256_and_si256(q, m4);
                let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4);
                if HIGH {
                    let shift = |k: i32| _mm_cvtsi32_si128(k);
                    let bit_lo = _mm256_and_si256(_mm256_srl_epi16(bits, shift(2 * j as i32)), one);
                    let bit_hi = _mm256_and_si256(_mm256_srl_epi16(bits, shift(2 * j as i32 + 1)), one);
                    lo = _mm256_or_si256(lo, _mm256_slli_epi16::<4>(bit_lo));
                    hi = _mm256_or_si256(hi, _mm256_slli_epi16::<4>(bit_hi));
                }
                let sc_lo = _mm256_set1_epi16(scales[2 * j].0 as i16);
                let sc_hi = _mm256_set1_epi16(scales[2 * j + 1].0 as i16);
                for r in 0..R {
                    let a = &acts[r][i];
                    let x_lo = _mm256_loadu_si256(a.qs[64 * j..].as_ptr().cast());
                    let x_hi = _mm256_loadu_si256(a.qs[64 * j + 32..].as_ptr().cast());
                    let p_lo = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, x_lo), sc_lo);
                    let p_hi = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, x_hi), sc_hi);
                    sum[r] = _mm256_add_epi32(sum[r], _mm256_add_epi32(p_lo, p_hi));
                }
            }
            let (d, dmin) = (half_at(b, 0), half_at(b, 2));
            for r in 0..R {
                let a = &acts[r][i];
                let mins: i32 = (0..8)
                    .map(|j| scales[j].1 as i32 * (a.sums[2 * j] as i32 + a.sums[2 * j + 1] as i32))
                    .sum();
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum[r]), _mm256_set1_ps(d * a.d), acc[r]);
                mins_total[r] += dmin * a.d * mins as f32;
            }
        }
        std::array::from_fn(|r| hsum(acc[r]) - mins_total[r])
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_k<const R: usize>(row: &[u8], acts: [&[Q8KBlock]; R]) -> [f32; R] {
    // SAFETY: compiled for AVX2, FMA and F16C.
    unsafe { k4_blocks::<R, false>(row, acts, 144, k4::Q4_VALUES) }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q5_k<const R: usize>(row: &[u8], acts: [&[Q8KBlock]; R]) -> [f32; R] {
    // SAFETY: compiled for AVX2, FMA and F16C.
    unsafe { k4_blocks::<R, true>(row, acts, 176, k4::Q5_VALUES) }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6_k<const R: usize>(row: &[u8], acts: [&[Q8KBlock]; R]) -> [f32; R] {
    // SAFETY: compiled for AVX2, FMA and F16C; loads at LOW + 64 half (+ 32) and HIGH + 32
    // half, 32 bytes each, inside the 210-byte block.
    unsafe {
        prefetch_next_rows(row);
        let mut acc = [_mm256_setzero_ps(); R];
        let mut offsets = [0.0f32; R];
        let (m4, m2) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(3));
        for (i, b) in row.chunks_exact(210).enumerate() {
            let mut sum = [_mm256_setzero_si256(); R];
            let sc = |s: usize| b[k6::SCALES + s] as i8 as i16;
            for half in 0..2 {
                let low0 = _mm256_loadu_si256(b[k6::LOW + 64 * half..].as_ptr().cast());
                let low1 = _mm256_loadu_si256(b[k6::LOW + 64 * half + 32..].as_ptr().cast());
                let high = _mm256_loadu_si256(b[k6::HIGH + 32 * half..].as_ptr().cast());
                let high_at = |k: i32| {
                    let bits = _mm256_and_si256(_mm256_srl_epi16(high, _mm_cvtsi32_si128(k)), m2);
                    _mm256_slli_epi16::<4>(bits)
                };
                let quarters = [
                    _mm256_or_si256(_mm256_and_si256(low0, m4), high_at(0)),
                    _mm256_or_si256(_mm256_and_si256(low1, m4), high_at(2)),
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(low0), m4), high_at(4)),
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(low1), m4), high_at(6)),
                ];
                for (quarter, q) in quarters.into_iter().enumerate() {
                    let at = 128 * half + 32 * quarter;
                    let sub = at / 16;
                    let scales = _mm256_set_m128i(_mm_set1_epi16(sc(sub + 1)), _mm_set1_epi16(sc(sub)));
                    for r in 0..R {
                        let x = _mm256_loadu_si256(acts[r][i].qs[at..].as_ptr().cast());
                        sum[r] =
                            _mm256_add_epi32(sum[r], _mm256_madd_epi16(_mm256_maddubs_epi16(q, x), scales));
                    }
                }
            }
            let d = half_at(b, k6::D);
            for r in 0..R {
                let a = &acts[r][i];
                let offset: i32 = (0..16).map(|s| sc(s) as i32 * a.sums[s] as i32).sum();
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum[r]), _mm256_set1_ps(d * a.d), acc[r]);
                offsets[r] += 32.0 * d * a.d * offset as f32;
            }
        }
        std::array::from_fn(|r| hsum(acc[r]) - offsets[r])
    }
}
